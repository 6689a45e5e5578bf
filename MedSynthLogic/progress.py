"""Progress events: plain dicts that the CLI prints as JSON lines and Slicer reads from a pipe.

Every long task reports through one callable ``callback(event: dict)``; keeping events plain data means the same
stream serves the terminal, the Slicer module (via ``jobs.py``), a CSV log and a loss-curve plot.
"""

from __future__ import annotations

import csv
import json
import math
import os
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, TextIO

from .atomic import atomic_path

Event = Dict[str, Any]
Callback = Callable[[Event], None]

LOSS_KEYS = ("g", "d", "l2", "gdl", "g_adv")
CSV_FIELDS = ("kind", "stage", "iteration", "g", "d", "l2", "gdl", "g_adv", "lr", "time", "val_loss", "psnr", "ssim")


def progress_event(task: str, done: int, total: int, stage: Optional[int] = None, stages: Optional[int] = None) -> Event:
    """Generic fraction-done event (synthesis, preparation)."""
    event: Event = {"event": "progress", "task": task}
    if stage is not None:
        event["stage"] = stage
    if stages is not None:
        event["stages"] = stages
    event.update(done=int(done), total=int(total), fraction=(float(done) / total) if total else 1.0)
    return event


def iteration_event(
    stage: int,
    iteration: int,
    iterations: int,
    losses: Mapping[str, float],
    lr_g: float,
    eta_s: Optional[float] = None,
    patches_per_s: Optional[float] = None,
    **extra: Any,
) -> Event:
    """One training step's losses; ``iteration`` counts completed iterations of ``stage``."""
    event: Event = {
        "event": "iteration",
        "stage": int(stage),
        "iteration": int(iteration),
        "iterations": int(iterations),
        "losses": {k: float(v) for k, v in losses.items()},
        "lr_g": float(lr_g),
        "eta_s": None if eta_s is None else float(eta_s),
    }
    if patches_per_s is not None:
        event["patches_per_s"] = float(patches_per_s)
    event.update(extra)
    return event


def validation_event(
    stage: int, iteration: int, val_loss: Optional[float], psnr: Optional[float] = None, ssim: Optional[float] = None, **extra: Any
) -> Event:
    """Validation loss on held-out patches plus whole-volume PSNR/SSIM inside the mask."""
    event: Event = {"event": "validation", "stage": int(stage), "iteration": int(iteration), "val_loss": val_loss, "psnr": psnr, "ssim": ssim}
    event.update(extra)
    return event


def stage_event(stage: int, stages: int, status: str, **extra: Any) -> Event:
    """A stage started ("start") or finished ("end")."""
    event: Event = {"event": "stage", "stage": int(stage), "stages": int(stages), "status": status}
    event.update(extra)
    return event


def checkpoint_event(path: os.PathLike | str, stage: int, iteration: int, reason: str = "periodic") -> Event:
    return {"event": "checkpoint", "path": str(path), "stage": int(stage), "iteration": int(iteration), "reason": reason}


def done_event(output: os.PathLike | str, **extra: Any) -> Event:
    event: Event = {"event": "done", "output": str(output)}
    event.update(extra)
    return event


def error_event(message: str, exit_code: int) -> Event:
    return {"event": "error", "message": message, "exit_code": int(exit_code)}


def _json_safe(value: Any) -> Any:
    """NaN/inf are not JSON; a reader on the other end of a pipe must be able to parse every line."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):
        return _json_safe(value.item())
    return value


class JsonLinesReporter:
    """Writes one JSON object per line and flushes, so a parent process sees each event at once."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        line = json.dumps(_json_safe(event), allow_nan=False, separators=(",", ":"))
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()


class CallbackList:
    """Fans one event out to several callbacks (reporter, CSV log, a Slicer progress bar …); None entries are skipped."""

    def __init__(self, callbacks: Iterable[Optional[Callback]] = ()) -> None:
        self.callbacks: List[Callback] = [cb for cb in callbacks if cb is not None]

    def append(self, callback: Optional[Callback]) -> None:
        if callback is not None:
            self.callbacks.append(callback)

    def __call__(self, event: Event) -> None:
        for cb in self.callbacks:
            cb(event)

    def __len__(self) -> int:
        return len(self.callbacks)


class CsvLogger:
    """Appends iteration and validation events as rows of one CSV, so a run can be inspected or plotted later.

    Rows are appended and flushed one by one (a crash loses at most the row being written); a resumed run
    appends to the same file. Other events are ignored, so the logger can sit in a :class:`CallbackList`.
    """

    def __init__(self, path: os.PathLike | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists() or self.path.stat().st_size == 0:
            with open(self.path, "w", newline="", encoding="utf-8") as fh:
                csv.writer(fh).writerow(CSV_FIELDS)

    def log_iteration(self, stage: int, iteration: int, losses: Mapping[str, float], lr: float, time_s: float) -> None:
        row = {"kind": "iteration", "stage": stage, "iteration": iteration, "lr": lr, "time": round(float(time_s), 3)}
        row.update({k: losses.get(k) for k in LOSS_KEYS})
        self._write(row)

    def log_validation(self, stage: int, iteration: int, val_loss: Optional[float], psnr: Optional[float], ssim: Optional[float], time_s: float) -> None:
        self._write({"kind": "validation", "stage": stage, "iteration": iteration, "val_loss": val_loss, "psnr": psnr, "ssim": ssim, "time": round(float(time_s), 3)})

    def __call__(self, event: Event) -> None:
        kind = event.get("event")
        if kind == "iteration":
            self.log_iteration(event["stage"], event["iteration"], event.get("losses", {}), event.get("lr_g", float("nan")), event.get("time_s", 0.0))
        elif kind == "validation":
            self.log_validation(event["stage"], event["iteration"], event.get("val_loss"), event.get("psnr"), event.get("ssim"), event.get("time_s", 0.0))

    def _write(self, row: Mapping[str, Any]) -> None:
        values = []
        for name in CSV_FIELDS:
            v = row.get(name)
            if v is None or (isinstance(v, float) and not math.isfinite(v)):
                values.append("")
            elif isinstance(v, float):
                values.append(f"{v:.6g}")
            else:
                values.append(v)
        with open(self.path, "a", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerow(values)
            fh.flush()


def read_log(csv_path: os.PathLike | str) -> List[Dict[str, Any]]:
    """Rows of a :class:`CsvLogger` file with numbers parsed (empty cells become None)."""
    rows = []
    with open(csv_path, newline="", encoding="utf-8") as fh:
        for raw in csv.DictReader(fh):
            row: Dict[str, Any] = {"kind": raw.get("kind")}
            for name in CSV_FIELDS[1:]:
                cell = raw.get(name, "")
                row[name] = None if cell in ("", None) else (int(cell) if name in ("stage", "iteration") else float(cell))
            rows.append(row)
    return rows


def plot_losses(csv_path: os.PathLike | str, png_path: os.PathLike | str) -> Path:
    """Draw training losses and validation loss/PSNR per stage into a PNG, written atomically.

    The x axis is the global step (stages laid end to end), so a multi-stage run reads left to right.
    When a resumed run repeated some iterations, the last row for a (stage, iteration) wins.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    rows = read_log(csv_path)
    it_rows: Dict[tuple, Dict[str, Any]] = {}
    val_rows: Dict[tuple, Dict[str, Any]] = {}
    for row in rows:
        if row["stage"] is None or row["iteration"] is None:
            continue
        key = (row["stage"], row["iteration"])
        (it_rows if row["kind"] == "iteration" else val_rows)[key] = row
    stage_len: Dict[int, int] = {}
    for stage, it in list(it_rows) + list(val_rows):
        stage_len[stage] = max(stage_len.get(stage, 0), it)
    offsets: Dict[int, int] = {}
    total = 0
    for stage in sorted(stage_len):
        offsets[stage] = total
        total += stage_len[stage]

    fig = Figure(figsize=(10, 6), dpi=100)
    ax_loss = fig.add_subplot(2, 1, 1)
    ax_val = fig.add_subplot(2, 1, 2)
    keys = sorted(it_rows)
    x = [offsets[s] + i for s, i in keys]
    for name in LOSS_KEYS:
        ys = [it_rows[k][name] for k in keys]
        if any(v is not None for v in ys):
            ax_loss.plot(x, [float("nan") if v is None else v for v in ys], label=name, linewidth=1)
    vkeys = sorted(val_rows)
    vx = [offsets[s] + i for s, i in vkeys]
    if vkeys:
        vloss = [val_rows[k]["val_loss"] for k in vkeys]
        ax_loss.plot(vx, [float("nan") if v is None else v for v in vloss], "o-", label="val_loss", linewidth=1.5)
        psnr = [val_rows[k]["psnr"] for k in vkeys]
        if any(v is not None for v in psnr):
            ax_val.plot(vx, [float("nan") if v is None else v for v in psnr], "o-", label="PSNR (dB)")
        ssim = [val_rows[k]["ssim"] for k in vkeys]
        if any(v is not None for v in ssim):
            ax_ssim = ax_val.twinx()
            ax_ssim.plot(vx, [float("nan") if v is None else v for v in ssim], "s--", color="tab:red", label="SSIM")
            ax_ssim.set_ylabel("SSIM")
            lines = ax_val.get_lines() + ax_ssim.get_lines()
            ax_val.legend(lines, [line.get_label() for line in lines], loc="lower right", fontsize=8)
        elif ax_val.get_lines():
            ax_val.legend(loc="lower right", fontsize=8)
    for stage, off in offsets.items():
        if off > 0:
            ax_loss.axvline(off, color="grey", linestyle=":", linewidth=1)
            ax_val.axvline(off, color="grey", linestyle=":", linewidth=1)
    ax_loss.set_ylabel("loss")
    plotted = [it_rows[k][n] for k in keys for n in LOSS_KEYS if it_rows[k][n] is not None]
    if plotted and min(plotted) > 0:
        ax_loss.set_yscale("log")
    ax_loss.legend(loc="upper right", fontsize=8)
    ax_loss.set_title("MedSynth training")
    ax_val.set_xlabel("iteration (all stages)")
    ax_val.set_ylabel("PSNR (dB)")
    fig.tight_layout()
    png = Path(png_path)
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png")
    return png
