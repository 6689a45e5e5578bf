"""How the command shows progress: plain lines in a log, a bar on a terminal, JSON lines until the reader leaves.

In-process checks of :class:`MedSynthLogic.reporting.Reporter`; the same behaviour through real subprocesses and
pipes is in test_cli.py.
"""

from __future__ import annotations

import io
import json

import pytest

from MedSynthLogic import reporting
from MedSynthLogic.errors import Cancelled
from MedSynthLogic.progress import iteration_event, progress_event, stage_event, validation_event, warning_event


class Clock:
    """A fake ``time.monotonic`` the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _synthesis(stages: int = 2, tiles: int = 10):
    for stage in range(stages):
        for done in range(1, tiles + 1):
            yield progress_event("synthesize", done, tiles, stage=stage, stages=stages,
                                 fraction=(stage + done / tiles) / stages)


def test_auto_is_plain_lines_when_stderr_is_not_a_terminal():
    assert reporting.Reporter("auto", stderr=io.StringIO()).mode == "plain"


def _plain_lines(monkeypatch, tiles: int, seconds_per_tile: float) -> list:
    """The plain lines of a 2-stage synthesis whose tiles each take ``seconds_per_tile`` (on a fake clock)."""
    clock = Clock()
    monkeypatch.setattr(reporting.time, "monotonic", clock)
    err = io.StringIO()
    report = reporting.Reporter("plain", stderr=err)
    report(progress_event("synthesize", 0, tiles, stage=0, stages=2, fraction=0.0))
    for event in _synthesis(tiles=tiles):
        clock.now += seconds_per_tile
        report(event)
    return err.getvalue().splitlines()


def test_plain_lines_of_a_quick_task_are_its_start_and_its_end(monkeypatch):
    assert _plain_lines(monkeypatch, tiles=10, seconds_per_tile=0.01) == [
        "medsynth: synthesize stage 1/2:   0% (0 s)", "medsynth: synthesize stage 2/2: 100% (0 s)"]


def test_plain_lines_of_a_slow_task_mark_every_tenth(monkeypatch):
    lines = _plain_lines(monkeypatch, tiles=20, seconds_per_tile=3.0)
    percents = [int(line.split(":")[2].split("%")[0]) for line in lines]
    assert percents[0] == 0 and percents[-1] == 100
    assert len(percents) == 11 and percents == sorted(percents)
    assert "stage 2/2" in lines[-1]


def test_plain_lines_start_again_for_a_new_run_of_a_task(monkeypatch):
    monkeypatch.setattr(reporting.time, "monotonic", Clock())
    err = io.StringIO()
    report = reporting.Reporter("plain", stderr=err)
    for case in ("a", "b"):
        report(progress_event("prepare", 0, 2, case=case))
        report(progress_event("prepare", 2, 2, case=case))
    assert len(err.getvalue().splitlines()) == 4


def test_training_lines_and_warnings_in_plain_mode():
    err = io.StringIO()
    report = reporting.Reporter("plain", stderr=err)
    report(iteration_event(0, 5, 10, {"g": 1.25, "d": 0.5}, 1e-4))
    report(warning_event("synthesize", "GPU out of memory. Falling back to the CPU (slower)."))
    report(stage_event(1, 3, "start"))
    report(stage_event(1, 3, "start", resumed_from="run/ckpt_s01_it000000040.pt", iteration=40))
    report(stage_event(2, 3, "start", earlier_stages_from="two_stages.safetensors"))
    report(validation_event(1, 40, 0.06297801161805788, psnr=17.123, ssim=0.51234))
    assert err.getvalue().splitlines() == [
        "stage 1 it 5/10 g=1.25 d=0.5", "medsynth: warning: GPU out of memory. Falling back to the CPU (slower).",
        "stage 2/3 goes on from run/ckpt_s01_it000000040.pt at iteration 40",
        "stage 3/3 is trained from its first iteration; stages 1–2 come from two_stages.safetensors",
        "validation: loss 0.06298, PSNR 17.12 dB, SSIM 0.5123",
    ]


def test_bar_mode_draws_one_bar_per_task_to_the_end():
    err = io.StringIO()
    report = reporting.Reporter("bar", stderr=err)
    for event in _synthesis():
        report(event)
    report.close()
    text = err.getvalue()
    assert "synthesize stage 2/2: 100%" in text and "Traceback" not in text


def test_json_mode_writes_parseable_lines_and_nothing_on_stderr():
    out, err = io.StringIO(), io.StringIO()
    report = reporting.Reporter("json", stdout=out, stderr=err)
    report(progress_event("evaluate", 0, 2, fraction=0.25, case="c0"))
    report(warning_event("synthesize", "slow"))
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["progress", "warning"] and events[0]["case"] == "c0"
    assert err.getvalue() == ""


def test_json_mode_stops_as_cancelled_when_the_reader_closes_the_pipe():
    class ClosedPipe(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    report = reporting.Reporter("json", stdout=ClosedPipe(), stderr=io.StringIO())
    with pytest.raises(Cancelled, match="closed the pipe"):
        report(progress_event("synthesize", 1, 4))
    assert report.mode == "none"
    report(progress_event("synthesize", 2, 4))  # later events (the error event) go nowhere, quietly


def test_a_label_names_the_split_so_train_and_validation_context_read_apart():
    event = progress_event("context", 1, 2, stage=1, stages=2, split="val")
    assert reporting.describe(event) == "context stage 2/2 (val)"
    assert reporting.describe(progress_event("synthesize", 1, 2, stage=0, stages=1)) == "synthesize stage 1/1"
