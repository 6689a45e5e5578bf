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
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, TextIO

Event = Dict[str, Any]
Callback = Callable[[Event], None]

LOSS_KEYS = ("g", "d", "l2", "l1", "gdl", "g_adv")
CSV_FIELDS = ("kind", "stage", "iteration", "g", "d", "l2", "l1", "gdl", "g_adv", "lr", "time", "val_loss", "psnr", "ssim")


def progress_event(
    task: str,
    done: int,
    total: int,
    stage: Optional[int] = None,
    stages: Optional[int] = None,
    fraction: Optional[float] = None,
    **extra: Any,
) -> Event:
    """Generic fraction-done event (synthesis, preparation, evaluation).

    ``fraction`` defaults to done/total; pass it when it covers more than done/total do (all stages of a
    synthesis, or the cases of an evaluation around one case's synthesis). ``extra`` adds keys such as ``case``.
    """
    event: Event = {"event": "progress", "task": task}
    if stage is not None:
        event["stage"] = stage
    if stages is not None:
        event["stages"] = stages
    if fraction is None:
        fraction = (float(done) / total) if total else 1.0
    event.update(done=int(done), total=int(total), fraction=float(fraction))
    event.update(extra)
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


def done_event(output: Optional[os.PathLike | str] = None, **extra: Any) -> Event:
    """The command finished; ``output`` is its one output file (several go in ``extra``, e.g. ``outputs``)."""
    event: Event = {"event": "done"}
    if output is not None:
        event["output"] = str(output)
    event.update(extra)
    return event


def error_event(message: str, exit_code: int, **extra: Any) -> Event:
    """The command failed with ``exit_code`` (see errors.py); always the last event of a run."""
    event: Event = {"event": "error", "message": message, "exit_code": int(exit_code)}
    event.update(extra)
    return event


def warning_event(task: str, message: str, **extra: Any) -> Event:
    """Something the user should know that does not stop the work (a fallback to the CPU, a forced input check)."""
    event: Event = {"event": "warning", "task": task, "message": message}
    event.update(extra)
    return event


def metrics_event(metrics: Mapping[str, float]) -> Event:
    """Quality figures of a finished result (the demo's PSNR/SSIM/MAE)."""
    return {"event": "metrics", "metrics": {k: float(v) for k, v in metrics.items()}}


def log_event(stream: str, line: str) -> Event:
    """A child process's line that is not a JSON event (stderr text), as the job runner passes it on."""
    return {"event": "log", "stream": stream, "line": line}


def exit_event(returncode: Optional[int], state: str) -> Event:
    """A child process ended (the job runner's last event): its exit code and the job's state."""
    return {"event": "exit", "returncode": returncode, "state": state}


def json_safe(value: Any) -> Any:
    """``value`` as JSON can hold it: NaN/inf → null (not JSON: a reader on the other end of a pipe, or of a report,
    must be able to parse it), paths → text, numpy scalars → Python numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):
        return json_safe(value.item())
    return value


class JsonLinesReporter:
    """Writes one JSON object per line and flushes, so a parent process sees each event at once."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        line = json.dumps(json_safe(event), allow_nan=False, separators=(",", ":"))
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
    A file another program holds (a spreadsheet locks an open CSV on Windows: the file cannot be opened) keeps its
    rows in memory, with one warning, and writes them at the next event that finds it free: the log must not end the
    training. Rows still held when the run ends are lost from the CSV (the events themselves were shown). A write
    that fails once the file is open (a full disk) still ends the run, as any other full disk does.
    """

    def __init__(self, path: os.PathLike | str) -> None:
        self.path = Path(path)
        self._pending: List[List[Any]] = []
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
        if kind not in ("iteration", "validation"):
            if self._pending:  # a checkpoint, the end of a stage: a chance to write what was held back
                self._flush()
            return
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
        self._pending.append(values)
        self._flush()

    def _flush(self) -> None:
        try:
            fh = open(self.path, "a", newline="", encoding="utf-8")
        except OSError as exc:  # held by another program: nothing was written, so nothing is written twice
            if len(self._pending) == 1:
                warnings.warn(f"Cannot open the training log {self.path} ({exc.strerror or exc}); its rows are kept "
                              "and written at the next event that finds it free (close it in other programs).",
                              RuntimeWarning, stacklevel=3)
            return
        with fh:
            csv.writer(fh).writerows(self._pending)
            fh.flush()
        self._pending.clear()


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
