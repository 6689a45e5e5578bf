"""Progress events: JSON lines a parent process can parse, CSV logs, loss plots, callback fan-out."""

from __future__ import annotations

import io
import json
from pathlib import Path

from MedSynthLogic import figures, progress


def test_json_lines_one_object_per_line_and_flushed():
    class Stream(io.StringIO):
        flushes = 0

        def flush(self):
            Stream.flushes += 1
            super().flush()

    stream = Stream()
    rep = progress.JsonLinesReporter(stream)
    rep(progress.iteration_event(0, 10, 100, {"g": 1.5, "d": float("nan")}, 1e-4, eta_s=3.0))
    rep(progress.checkpoint_event("/tmp/x.pt", 0, 10))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and Stream.flushes >= 2
    first = json.loads(lines[0])
    assert first["event"] == "iteration" and first["losses"]["g"] == 1.5 and first["losses"]["d"] is None
    assert json.loads(lines[1]) == {"event": "checkpoint", "path": "/tmp/x.pt", "stage": 0, "iteration": 10, "reason": "periodic"}


def test_event_helpers_follow_contract():
    ev = progress.progress_event("synthesize", 12, 40, stage=1, stages=3)
    assert ev == {"event": "progress", "task": "synthesize", "stage": 1, "stages": 3, "done": 12, "total": 40, "fraction": 0.3}
    assert progress.validation_event(0, 200, 0.1, 25.0, 0.8)["event"] == "validation"
    assert progress.done_event("m.safetensors") == {"event": "done", "output": "m.safetensors"}
    assert progress.error_event("bad", 5) == {"event": "error", "message": "bad", "exit_code": 5}
    assert progress.warning_event("synthesize", "slow", source="a.nii") == {
        "event": "warning", "task": "synthesize", "message": "slow", "source": "a.nii"}


def test_callback_list_fans_out_and_skips_none():
    got_a, got_b = [], []
    cbs = progress.CallbackList([got_a.append, None, got_b.append])
    cbs({"event": "x"})
    assert got_a == got_b == [{"event": "x"}] and len(cbs) == 2


def test_a_log_held_open_elsewhere_keeps_its_rows_and_never_ends_the_run(tmp_path, monkeypatch):
    """Windows: a spreadsheet holding the CSV made the append a PermissionError that ended the training."""
    import builtins
    import warnings

    log = progress.CsvLogger(tmp_path / "log.csv")
    real_open, held = builtins.open, [True]

    def open_unless_held(path, mode="r", *args, **kwargs):
        if held[0] and Path(path) == tmp_path / "log.csv" and "a" in mode:
            raise PermissionError(13, "The process cannot access the file", str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_unless_held)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for it in (1, 2, 3):
            log(progress.iteration_event(0, it, 5, {"g": 1.0}, 1e-3))
    assert len(caught) == 1 and "kept and written at the next event that finds it free" in str(caught[0].message)
    held[0] = False
    log({"event": "checkpoint", "path": "ckpt.pt"})  # the next event of any kind writes what was held back
    log(progress.iteration_event(0, 4, 5, {"g": 1.0}, 1e-3))
    assert [row["iteration"] for row in progress.read_log(tmp_path / "log.csv")] == [1, 2, 3, 4]  # each row once


def test_csv_logger_and_plot(tmp_path):
    log = progress.CsvLogger(tmp_path / "log.csv")
    for stage in range(2):
        for it in range(1, 21):
            log(progress.iteration_event(stage, it, 20, {"g": 1.0 / it, "d": 1.3, "l2": 0.5 / it, "gdl": 0.1, "g_adv": 0.7}, 1e-3, time_s=it))
        log(progress.validation_event(stage, 20, 0.2, 24.0 + stage, 0.7, time_s=20))
    log({"event": "checkpoint", "path": "x"})
    progress.CsvLogger(tmp_path / "log.csv")  # reopening (resume) must not repeat the header
    rows = progress.read_log(tmp_path / "log.csv")
    assert len(rows) == 42
    assert rows[0]["kind"] == "iteration" and rows[0]["stage"] == 0 and rows[0]["iteration"] == 1 and rows[0]["g"] == 1.0
    assert rows[20]["kind"] == "validation" and rows[20]["psnr"] == 24.0 and rows[20]["l2"] is None
    png = figures.plot_losses(tmp_path / "log.csv", tmp_path / "loss.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.csv", "loss.png"]
