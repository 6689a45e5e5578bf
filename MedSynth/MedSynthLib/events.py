"""What one progress event of a ``medsynth`` child means for the panel: a percentage, a status line, a log line.

Kept as a pure function of the event so the panel's reaction to every event kind is tested without Qt.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional


@dataclass(frozen=True)
class PanelUpdate:
    """What to show for one event; None leaves that part of the panel as it is."""

    percent: Optional[int] = None
    status: Optional[str] = None
    log: Optional[str] = None


def describe_event(event: Mapping[str, Any]) -> PanelUpdate:
    """The panel update for one JSON-lines event (see docs/ARCHITECTURE.md, "Progress events")."""
    kind = event.get("event")
    handler = {
        "progress": _progress,
        "iteration": _iteration,
        "validation": _validation,
        "stage": lambda e: PanelUpdate(log=f"Auto-context stage {_stage(e)} of {e.get('stages', '?')}: {e.get('status', '')}"),
        "checkpoint": lambda e: PanelUpdate(log=f"Checkpoint saved: {Path(str(e.get('path', ''))).name}"),
        "metrics": _metrics,
        "warning": lambda e: PanelUpdate(status=f"Warning: {e.get('message', '')}", log=f"Warning: {e.get('message', '')}"),
        "error": lambda e: PanelUpdate(log=f"Error: {e.get('message', '')} {e.get('hint') or ''}".rstrip()),
        "done": lambda e: PanelUpdate(percent=100, log="Finished."),
        "log": lambda e: PanelUpdate(log=str(e.get("line", ""))),
    }.get(kind)
    return handler(event) if handler else PanelUpdate()


def _stage(event: Mapping[str, Any]) -> int:
    """Stages are 0-based in events and 1-based on screen."""
    return int(event.get("stage", 0) or 0) + 1


def _percent(done: Any, total: Any) -> Optional[int]:
    try:
        fraction = float(done) / float(total)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return int(round(100 * max(0.0, min(1.0, fraction))))


def _progress(event: Mapping[str, Any]) -> PanelUpdate:
    if event.get("fraction") is not None:
        percent = _percent(event.get("fraction"), 1.0)
    else:
        percent = _percent(event.get("done"), event.get("total"))
    task = event.get("task") or "working"
    if task == "synthesize" and event.get("stages"):
        status = f"Synthesizing: stage {_stage(event)} of {event['stages']}"
    elif task == "prepare":
        case = event.get("case")
        status = f"Preparing data: {event.get('done', 0)} of {event.get('total', '?')} cases" + (f" ({case})" if case else "")
    else:
        status = f"{str(task).capitalize()}…"
    return PanelUpdate(percent=percent, status=status)


def _iteration(event: Mapping[str, Any]) -> PanelUpdate:
    total = max(1, int(event.get("iterations") or 1))
    iteration = int(event.get("iteration", 0) or 0)
    losses = event.get("losses") or {}
    try:
        g_loss = f"{float(losses.get('g')):.4g}"
    except (TypeError, ValueError):
        g_loss = "?"
    status = f"Training stage {_stage(event)}, iteration {iteration}/{total}, G loss {g_loss}"
    if event.get("eta_s") is not None:
        status += f", about {float(event['eta_s']) / 60.0:.0f} min left"
    return PanelUpdate(percent=_percent(iteration, total), status=status)


def _metrics(event: Mapping[str, Any]) -> PanelUpdate:
    figures = ", ".join(f"{key} {float(value):.4g}" for key, value in (event.get("metrics") or {}).items())
    return PanelUpdate(log=f"Metrics: {figures}")


def _validation(event: Mapping[str, Any]) -> PanelUpdate:
    parts = [f"Validation, stage {_stage(event)}, iteration {event.get('iteration')}:"]
    for key, label, unit in (("psnr", "PSNR", " dB"), ("ssim", "SSIM", "")):
        if event.get(key) is not None:
            parts.append(f"{label} {float(event[key]):.3g}{unit}")
    return PanelUpdate(log=" ".join(parts))
