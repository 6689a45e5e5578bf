"""What one progress event of a ``medsynth`` child means for the panel: a percentage, a status line, a log line.

Kept as a pure function of the event so the panel's reaction to every event kind is tested without Qt.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from .i18n import tr as _

#: How the CLI's last stderr line starts when it fails (``MedSynthLogic.cli``).
CLI_ERROR_PREFIX = "medsynth: error: "


@dataclass(frozen=True)
class PanelUpdate:
    """What to show for one event; None leaves that part of the panel as it is."""

    percent: Optional[int] = None
    status: Optional[str] = None
    log: Optional[str] = None


def describe_event(event: Mapping[str, Any], task: Optional[str] = None) -> PanelUpdate:
    """The panel update for one JSON-lines event (see docs/ARCHITECTURE.md, "Progress events") of a ``task``
    ("synthesize", "prepare", "train", "evaluate") job."""
    kind = event.get("event")
    handler = {
        "progress": _progress,
        "iteration": _iteration,
        "validation": _validation,
        "stage": _stage_change,
        "checkpoint": lambda e: PanelUpdate(log=_("Checkpoint saved: {name}").format(name=Path(str(e.get("path", ""))).name)),
        "metrics": _metrics,
        "warning": _warning,
        "error": lambda e: PanelUpdate(log=error_text(e, task) if e.get("type") == "Cancelled"  # asked for
                                       else _("Error: {message}").format(message=error_text(e, task))),
        "done": lambda e: PanelUpdate(percent=100, log=_("Finished.")),
        "log": _log_line,
    }.get(kind)
    return handler(event) if handler else PanelUpdate()


def error_text(event: Mapping[str, Any], task: Optional[str] = None) -> str:
    """What went wrong, with the panel's own advice where the error names a situation (its ``reason``): the
    child's advice names command-line options, which the panel has as buttons and fields."""
    advice = panel_advice(str(event.get("reason") or ""), task)
    if advice and event.get("problem"):
        return f"{event['problem']} {advice}"
    return f"{event.get('message', '')} {event.get('hint') or ''}".strip()


def panel_advice(reason: str, task: Optional[str] = None) -> str:
    """The panel's words for what to do about an error ``reason`` (``MedSynthLogic.errors.REASONS``); "" for none."""
    if reason == "output_exists":
        if task == "prepare":
            return _("Choose another prepared data folder, or move the files out of this one.")
        if task == "train":
            return _("Choose another output model file, or move the existing one away.")
        if task == "evaluate":
            return _("Choose another evaluation report folder, or move the earlier report out of this one.")
        return _("Choose another output, or move the existing one away.")
    advice = {
        "model_written": lambda: _("That run has finished and written its model: choose another output model file "
                                   "to train again."),
        "run_folder_in_use": lambda: _("Press Resume to continue that run, or choose another run folder."),
        "schedule_changed": lambda: _("Resume with the stopped run's settings, or choose another run folder for a "
                                      "new run."),
        "model_config_changed": lambda: _("Resume with the stopped run's settings, or choose another run folder for "
                                          "a new run."),
        "evaluation_changed": lambda: _("The report folder holds a stopped evaluation of another model or data: "
                                        "choose another evaluation report folder, or move that report away."),
        "data_changed": lambda: _("Resume with the prepared data folder that run was trained on, or choose another run "
                                  "folder for a new run."),
        "stopped": lambda: _("Press Resume to go on from it."),
        "data_for_another_model": lambda: _("Prepare the case folder again for the chosen generator (Prepare data) "
                                            "into another prepared data folder, or pick the generator it was "
                                            "prepared for."),
        "device_unavailable": lambda: _("Pick 'auto' or 'cpu' as the device."),
        "out_of_memory": lambda: _("Pick 'cpu' as the device, or close other programs."),
    }.get(reason)
    return advice() if advice else ""


def _log_line(event: Mapping[str, Any]) -> PanelUpdate:
    """A line of the child's stderr. Its closing "medsynth: error: …" repeats the error event, which the log shows
    already (when no event came, the outcome's message is read from stderr instead)."""
    line = str(event.get("line", ""))
    return PanelUpdate() if line.startswith(CLI_ERROR_PREFIX) else PanelUpdate(log=line)


def _stage(event: Mapping[str, Any]) -> int:
    """Stages are 0-based in events and 1-based on screen."""
    return int(event.get("stage", 0) or 0) + 1


def _stage_change(event: Mapping[str, Any]) -> PanelUpdate:
    """A stage's start or end; a resumed start says from where (a real resume and a fresh start read alike)."""
    text = _("Auto-context stage {stage} of {stages}: {status}").format(
        stage=_stage(event), stages=event.get("stages", "?"), status=event.get("status", ""))
    if event.get("resumed_from"):
        text += " " + _("(resumed from {name}, iteration {iteration})").format(
            name=Path(str(event["resumed_from"])).name, iteration=event.get("iteration", 0))
    elif event.get("earlier_stages_from"):
        text += " " + _("(the earlier stages from {name})").format(name=Path(str(event["earlier_stages_from"])).name)
    return PanelUpdate(log=text)


def _warning(event: Mapping[str, Any]) -> PanelUpdate:
    text = _("Warning: {message}").format(message=event.get("message", ""))
    return PanelUpdate(status=text, log=text)


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
    task = event.get("task")
    if task == "synthesize" and event.get("stages"):
        status = _("Synthesizing: stage {stage} of {stages}").format(stage=_stage(event), stages=event["stages"])
    elif task == "prepare":
        case = event.get("case")
        status = _("Preparing data: {done} of {total} cases").format(done=event.get("done", 0), total=event.get("total", "?"))
        status += f" ({case})" if case else ""
    elif task == "evaluate":
        status = _("Evaluating: {done} of {total} cases done").format(done=event.get("done", 0), total=event.get("total", "?"))
        status += f" ({event['case']})" if event.get("case") else ""
    elif task == "context":  # a training's step inside a stage: the bar stays the whole run's (it jumped to 100 % and back)
        status = _("Stage {stage} of {stages}: synthesizing its input from the earlier stages, {done} of {total} cases "
                   "({split})").format(stage=_stage(event), stages=event.get("stages", "?"), done=event.get("done", 0),
                                       total=event.get("total", "?"), split=event.get("split", ""))
        return PanelUpdate(status=status)
    else:
        status = _("Working ({task})…").format(task=task) if task else _("Working…")  # a task without words of its own
    return PanelUpdate(percent=percent, status=status)


def _iteration(event: Mapping[str, Any]) -> PanelUpdate:
    total = max(1, int(event.get("iterations") or 1))
    iteration = int(event.get("iteration", 0) or 0)
    losses = event.get("losses") or {}
    try:
        g_loss = f"{float(losses.get('g')):.4g}"
    except (TypeError, ValueError):
        g_loss = "?"
    stages = int(event.get("stages") or 0)
    if stages > 1:  # the bar spans the whole run (it restarted at 0 for every stage)
        status = _("Training stage {stage} of {stages}, iteration {iteration}/{total}, G loss {g_loss}").format(
            stage=_stage(event), stages=stages, iteration=iteration, total=total, g_loss=g_loss)
        percent = _percent((_stage(event) - 1) * total + iteration, stages * total)
    else:
        status = _("Training stage {stage}, iteration {iteration}/{total}, G loss {g_loss}").format(
            stage=_stage(event), iteration=iteration, total=total, g_loss=g_loss)
        percent = _percent(iteration, total)
    if event.get("eta_s") is not None:
        status += _(", about {minutes} min left").format(minutes=f"{float(event['eta_s']) / 60.0:.0f}")
    return PanelUpdate(percent=percent, status=status)


def _metrics(event: Mapping[str, Any]) -> PanelUpdate:
    figures = ", ".join(f"{key} {float(value):.4g}" for key, value in (event.get("metrics") or {}).items())
    return PanelUpdate(log=_("Metrics: {figures}").format(figures=figures))


def _validation(event: Mapping[str, Any]) -> PanelUpdate:
    parts = [_("Validation, stage {stage}, iteration {iteration}:").format(stage=_stage(event), iteration=event.get("iteration"))]
    for key, label, unit in (("psnr", "PSNR", " dB"), ("ssim", "SSIM", "")):
        if event.get(key) is not None:
            parts.append(f"{label} {float(event[key]):.3g}{unit}")
    return PanelUpdate(log=" ".join(parts))
