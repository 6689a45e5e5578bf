"""How the ``medsynth`` command shows progress events: a bar on a terminal, plain lines in a log, JSON lines.

A run under ``nohup`` or with stderr in a log file gets a line at the start and end of each task and at each
tenth at most every few seconds, so a log says how far a run got; a terminal gets a tqdm bar. JSON lines go to stdout for a reading program (the Slicer module); when
that program goes away (``medsynth … --progress json | head``) the run stops as cancelled, without a traceback.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from typing import Any, Dict, Optional, TextIO, Tuple

from .errors import Cancelled, MedSynthError
from .progress import Event, JsonLinesReporter, error_event

MODES = ("auto", "bar", "plain", "json", "none")
PLAIN_STEP = 10  # percent between two plain lines of one task …
PLAIN_MIN_S = 5.0  # … and seconds, so a quick task logs only its start and its end


def reader_gone(exc: OSError) -> bool:
    """Whether a failed write to stdout/stderr means the pipe's reader has left: a BrokenPipeError, or on Windows
    the EINVAL its pipes raise instead (CPython issue 79935), which ended a child of a crashed Slicer with a
    traceback rather than as stopped. An EINVAL that names a file (an invalid output name on Windows) is not one."""
    if isinstance(exc, BrokenPipeError):
        return True
    return os.name == "nt" and exc.errno == errno.EINVAL and exc.filename is None


def silence(stream: TextIO) -> None:
    """Point ``stream`` (stdout or stderr) at /dev/null, so nothing written later, nor the flush at exit, hits a
    closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def describe(event: Event) -> str:
    """A short label of a progress event: its task, stage k/K, split and case when present."""
    text = str(event.get("task", "work"))
    if event.get("stages"):
        text += f" stage {int(event.get('stage', 0)) + 1}/{event['stages']}"
    if event.get("split"):
        text += f" ({event['split']})"
    if event.get("case"):
        text += f" {event['case']}"
    return text


def fraction_of(event: Event) -> float:
    """The event's fraction done in [0, 1] (``fraction`` when given, else done/total)."""
    if event.get("fraction") is not None:
        return min(max(float(event["fraction"]), 0.0), 1.0)
    total = event.get("total") or 0
    return min(float(event.get("done", 0)) / total, 1.0) if total else 1.0


class Reporter:
    """Sends progress events to a tqdm bar or plain lines on stderr, to JSON lines on stdout, or nowhere.

    ``auto`` is a bar when stderr is a terminal and plain lines otherwise (logs, nohup).
    """

    def __init__(self, mode: str, stdout: Optional[TextIO] = None, stderr: Optional[TextIO] = None) -> None:
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        if mode == "auto":
            mode = "bar" if self.stderr.isatty() else "plain"
        self.mode = mode
        self._json = JsonLinesReporter(self.stdout)
        self._bars: Dict[str, Any] = {}
        self._shown: Dict[str, Tuple[float, float]] = {}
        self._started: Dict[str, float] = {}

    def __call__(self, event: Event) -> None:
        kind = event.get("event")
        if self.mode == "json":
            self._write_json(event)
        elif self.mode in ("bar", "plain") and kind == "progress":
            (self._bar if self.mode == "bar" else self._plain)(event)
        elif self.mode in ("bar", "plain") and kind in ("iteration", "validation"):
            self._line(_training_line(event))
        elif self.mode in ("bar", "plain") and kind == "stage" and event.get("resumed_from"):
            self._line(f"stage {event['stage'] + 1}/{event['stages']} goes on from {event['resumed_from']} at iteration "
                       f"{event.get('iteration', 0)}")
        elif self.mode in ("bar", "plain") and kind == "stage" and event.get("earlier_stages_from"):
            earlier = "stage 1 comes" if event["stage"] == 1 else f"stages 1–{event['stage']} come"
            self._line(f"stage {event['stage'] + 1}/{event['stages']} is trained from its first iteration; {earlier} from "
                       f"{event['earlier_stages_from']}")
        if kind == "warning" and self.mode != "json":
            self._line(f"medsynth: warning: {event.get('message')}")

    def _write_json(self, event: Event) -> None:
        try:
            self._json(event)
        except OSError as exc:
            if not reader_gone(exc):
                raise
            self._reader_gone(self.stdout)

    def _line(self, text: str) -> None:
        try:
            self.stderr.write(text + "\n")
            self.stderr.flush()
        except OSError as exc:
            if not reader_gone(exc):
                raise
            self._reader_gone(self.stderr)

    def _reader_gone(self, stream: TextIO) -> None:
        """The reader of the progress output left: nothing more can be shown, so stop the work rather than run on
        unseen (`medsynth … | head`)."""
        self.mode = "none"
        if stream is sys.stdout or stream is sys.stderr:
            silence(stream)
        raise Cancelled("Stopped: the program reading the progress output closed the pipe.") from None

    def _bar(self, event: Event) -> None:
        from tqdm import tqdm

        task = str(event.get("task", ""))
        percent = round(100.0 * fraction_of(event), 1)
        bar = self._bars.get(task)
        if bar is not None and (bar.disable or percent < bar.n):
            bar.close()
            bar = None
        if bar is None:
            bar = self._bars[task] = tqdm(total=100, file=self.stderr, leave=True,
                                          bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]")
        bar.set_description_str(describe(event), refresh=False)
        bar.n = percent
        bar.refresh()
        if percent >= 100:
            bar.close()
            self._bars.pop(task, None)

    def _plain(self, event: Event) -> None:
        task = str(event.get("task", ""))
        percent = 100.0 * fraction_of(event)
        now = time.monotonic()
        last = self._shown.get(task)
        if last is None or percent < last[0]:
            self._started[task] = now
        elif last[0] >= 100 or (percent < 100 and (int(percent // PLAIN_STEP) == int(last[0] // PLAIN_STEP)
                                                     or now - last[1] < PLAIN_MIN_S)):
            return
        self._shown[task] = (percent, now)
        self._line(f"medsynth: {describe(event)}: {percent:3.0f}% ({now - self._started[task]:.0f} s)")

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()


def failure_event(exc: MedSynthError) -> Event:
    """The error event of a command that failed with ``exc``: its message with the CLI's advice, exit code, type,
    and, when the error names its situation, ``reason`` and ``problem`` (the message alone) for front ends that
    word their own advice (the Slicer panel)."""
    advice = {"reason": exc.reason, "problem": exc.message} if exc.reason else {}
    return error_event(str(exc), exc.exit_code, type=type(exc).__name__, **advice)


def _training_line(event: Event) -> str:
    if event.get("event") == "iteration":
        losses = " ".join(f"{k}={v:.4g}" for k, v in event.get("losses", {}).items() if v is not None)
        stage = event.get("stage")  # 0-based in events, 1-based on screen as in every other line
        shown = stage + 1 if isinstance(stage, int) else stage
        return f"stage {shown} it {event.get('iteration')}/{event.get('iterations')} {losses}"
    psnr, ssim = event.get("psnr"), event.get("ssim")
    loss = event.get("val_loss")
    text = f"validation: loss {loss:.4g}" if isinstance(loss, (int, float)) else f"validation: loss {loss}"
    if psnr is not None and ssim is not None:
        text += f", PSNR {psnr:.2f} dB, SSIM {ssim:.4f}"
    return text
