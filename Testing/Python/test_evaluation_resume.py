"""A stopped evaluation keeps the cases it scored, and ``--resume`` goes on from them to the report an uninterrupted
run writes (an evaluation of many cases can take hours)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from MedSynthLogic.errors import Cancelled, DataError, OutputError, UsageError
from MedSynthLogic.evaluation import cases_to_evaluate, evaluate_cases
from MedSynthLogic.demo import write_paired_cases


@pytest.fixture(scope="module")
def cases_dir(tmp_path_factory) -> Path:
    """Three phantom cases in BraTS naming, with segmentations."""
    return write_paired_cases(tmp_path_factory.mktemp("resume"), ("a", "b", "c"), shape=(24, 28, 24))


def _lookup(cases_dir: Path, path: Path, bins: int = 32) -> Path:
    from MedSynthLogic.baselines import fit_intensity_lookup
    from MedSynthLogic.config import ModelConfig
    from MedSynthLogic.normalisation import brain_mask
    from MedSynthLogic.volume_io import read_volume

    cfg = ModelConfig().normalisation
    src = read_volume(cases_dir / "a" / "a_t1ce.nii.gz").array
    fit_intensity_lookup([(src, read_volume(cases_dir / "a" / "a_t2.nii.gz").array, brain_mask(src, cfg.mask_threshold))],
                         cfg, bins=bins).save(path)
    return path


@pytest.fixture(scope="module")
def lookup(cases_dir, tmp_path_factory) -> Path:
    return _lookup(cases_dir, tmp_path_factory.mktemp("lookup") / "lookup.json")


def _stop_after(cases_done: int):
    """A progress callback that cancels, as the panel's Cancel does, once ``cases_done`` cases are scored."""
    def progress(event: dict) -> None:
        if event.get("event") == "progress" and event.get("done") == cases_done:
            raise Cancelled("Cancelled.")
    return progress


def _report(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text(encoding="utf-8"))


def test_a_stopped_evaluation_keeps_its_cases_and_resume_ends_as_an_uninterrupted_run(cases_dir, lookup, tmp_path):
    cases = cases_to_evaluate(cases_dir)
    whole = evaluate_cases(cases, tmp_path / "whole", lookup=lookup, figures=True, save_predictions=True)
    out = tmp_path / "stopped"
    with pytest.raises(Cancelled):
        evaluate_cases(cases, out, lookup=lookup, figures=True, save_predictions=True, progress=_stop_after(2))
    stopped = _report(out)
    assert [row["case"] for row in stopped["cases"]] == ["a", "b"]
    assert stopped["stopped"]["after"] == 2 and stopped["stopped"]["of"] == 3 and stopped["stopped"]["reason"] == "stopped"
    assert stopped["written"] == ["metrics.json", "metrics.md", "a_synthetic_t2.nii.gz", "a.png",
                                  "b_synthetic_t2.nii.gz", "b.png"]
    assert "Stopped after 2 of 3 cases" in (out / "metrics.md").read_text(encoding="utf-8")
    with pytest.raises(OutputError, match="stopped evaluation") as refused:  # a plain re-run says how to go on
        evaluate_cases(cases, out, lookup=lookup, figures=True, save_predictions=True)
    assert "--resume" in refused.value.hint

    events = []
    resumed = evaluate_cases(cases, out, lookup=lookup, figures=True, save_predictions=True, resume=True,
                             progress=events.append)
    assert [(e["done"], e["case"]) for e in events if e["event"] == "progress"] == [(3, "c")]  # a and b not redone
    assert resumed["cases"] == json.loads(json.dumps(whole["cases"])) and resumed["summary"] == whole["summary"]
    assert resumed["written"] == whole["written"] and resumed["resumed_after"] == 2 and "stopped" not in resumed
    assert sorted(p.name for p in out.iterdir()) == sorted(whole["written"])
    assert "Stopped" not in (out / "metrics.md").read_text(encoding="utf-8")
    with pytest.raises(OutputError, match="finished evaluation"):
        evaluate_cases(cases, out, lookup=lookup, figures=True, save_predictions=True, resume=True)


def test_a_case_that_fails_keeps_the_cases_before_it_and_resume_goes_on_once_it_is_mended(cases_dir, lookup, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(cases_dir, data)
    good = (data / "b" / "b_t2.nii.gz").read_bytes()
    from MedSynthLogic.volume_io import read_volume, write_volume

    t2 = read_volume(data / "b" / "b_t2.nii.gz")
    write_volume(t2.with_array(np.zeros_like(t2.array)), data / "b" / "b_t2.nii.gz", overwrite=True)
    out = tmp_path / "out"
    with pytest.raises(DataError, match="b"):
        evaluate_cases(cases_to_evaluate(data), out, lookup=lookup)
    stopped = _report(out)
    assert [row["case"] for row in stopped["cases"]] == ["a"] and stopped["stopped"]["reason"].startswith("failed: ")
    (data / "b" / "b_t2.nii.gz").write_bytes(good)
    resumed = evaluate_cases(cases_to_evaluate(data), out, lookup=lookup, resume=True)
    assert [row["case"] for row in resumed["cases"]] == ["a", "b", "c"]
    assert resumed["summary"] == evaluate_cases(cases_to_evaluate(cases_dir), tmp_path / "whole", lookup=lookup)["summary"]


def test_a_stop_inside_the_first_case_writes_no_report_and_one_after_it_keeps_it(cases_dir, lookup, tmp_path,
                                                                                    tiny_model_config):
    import dataclasses

    from MedSynthLogic.model_file import save_model
    from _models import random_chain

    cfg = dataclasses.replace(tiny_model_config, stages=1)
    model = save_model(tmp_path / "m.safetensors", random_chain(cfg), cfg)
    cases = cases_to_evaluate(cases_dir, model=model)

    def stop_in_synthesis(event: dict) -> None:
        if event.get("event") == "progress" and event.get("done") == 0:  # case a's synthesis, tile by tile
            raise KeyboardInterrupt  # what SIGTERM becomes in the CLI
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        evaluate_cases(cases, out, model=model, device="cpu", progress=stop_in_synthesis)
    assert not (out / "metrics.json").exists()  # nothing scored: nothing to keep, and a plain re-run is not refused
    with pytest.raises(UsageError, match="holds no report"):
        evaluate_cases(cases, out, model=model, device="cpu", resume=True)

    def stop_after_the_first(event: dict) -> None:
        if event.get("event") == "progress" and event.get("done") == 1:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        evaluate_cases(cases, out, model=model, device="cpu", progress=stop_after_the_first)
    assert _report(out)["stopped"]["after"] == 1  # the case's progress event comes after the case is kept


def test_resume_refuses_a_stopped_report_of_another_medsynth_version(cases_dir, lookup, tmp_path, monkeypatch):
    """After an upgrade a resume mixed rows scored by two versions' code into what reads as one run (review 53)."""
    from MedSynthLogic import evaluation

    out = tmp_path / "out"
    with pytest.raises(Cancelled):
        evaluate_cases(cases_to_evaluate(cases_dir), out, lookup=lookup, progress=_stop_after(1))
    assert _report(out)["medsynth_version"] == evaluation.__version__
    monkeypatch.setattr(evaluation, "__version__", "99.0")
    with pytest.raises(UsageError, match="medsynth_version"):
        evaluate_cases(cases_to_evaluate(cases_dir), out, lookup=lookup, resume=True)
    report = _report(out)  # one stopped before the version was recorded (the panel resumes it by itself): goes on
    del report["stopped"]["settings"]["medsynth_version"]
    (out / "metrics.json").write_text(json.dumps(report), encoding="utf-8")
    assert len(evaluate_cases(cases_to_evaluate(cases_dir), out, lookup=lookup, resume=True)["cases"]) == 3


def test_resume_may_leave_out_the_cases_after_those_it_kept(cases_dir, lookup, tmp_path):
    """A case that fails for good (its reference 0 at its percentile: the error says to leave it out) could only be
    left out by scoring every case again (--overwrite): the plan had to be the stopped one exactly."""
    out = tmp_path / "out"
    with pytest.raises(Cancelled):
        evaluate_cases(cases_to_evaluate(cases_dir), out, lookup=lookup, progress=_stop_after(1))
    scored = _report(out)["cases"][0]
    results = evaluate_cases(cases_to_evaluate(cases_dir, case_ids=["a", "c"]), out, lookup=lookup, resume=True)
    assert [row["case"] for row in results["cases"]] == ["a", "c"] and results["cases"][0] == scored
    assert "stopped" not in _report(out)


def test_resume_refuses_another_predictor_other_settings_or_other_cases(cases_dir, lookup, tmp_path):
    cases = cases_to_evaluate(cases_dir)
    out = tmp_path / "out"
    with pytest.raises(Cancelled):
        evaluate_cases(cases, out, lookup=lookup, progress=_stop_after(1))
    other = _lookup(cases_dir, tmp_path / "other.json", bins=16)
    with pytest.raises(UsageError, match="predictor_sha256") as refused:
        evaluate_cases(cases, out, lookup=other, resume=True)
    assert refused.value.reason == "evaluation_changed"  # the panel words its own advice (it has no --overwrite)
    with pytest.raises(UsageError, match="figures"):
        evaluate_cases(cases, out, lookup=lookup, figures=True, resume=True)
    with pytest.raises(UsageError, match="label"):
        evaluate_cases(cases, out, lookup=lookup, label="another", resume=True)
    with pytest.raises(UsageError, match="other cases"):
        evaluate_cases(cases_to_evaluate(cases_dir, case_ids=["b", "c"]), out, lookup=lookup, resume=True)
    with pytest.raises(UsageError, match="pass one"):
        evaluate_cases(cases, out, lookup=lookup, resume=True, overwrite=True)
    assert _report(out)["stopped"]["after"] == 1  # every refusal left the stopped report as it was


def test_resume_takes_the_same_files_by_another_path_and_refuses_changed_or_added_ones(cases_dir, lookup, tmp_path,
                                                                                         monkeypatch):
    import os
    import shutil

    data = tmp_path / "data"
    shutil.copytree(cases_dir, data)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(Cancelled):  # a relative data folder, resumed by its absolute path: the same files
        evaluate_cases(cases_to_evaluate(Path("data")), out, lookup=lookup, progress=_stop_after(1))
    (out / "kept.json").write_bytes((out / "metrics.json").read_bytes())
    seg = data / "a" / "a_seg.nii.gz"
    seg.rename(tmp_path / "a_seg.nii.gz")  # the segmentation taken away: the kept row's tumour figures would not hold
    with pytest.raises(UsageError, match="files of a are not those") as refused:
        evaluate_cases(cases_to_evaluate(data), out, lookup=lookup, resume=True)
    assert refused.value.reason == "evaluation_changed"
    (tmp_path / "a_seg.nii.gz").rename(seg)
    stat = (data / "a" / "a_t2.nii.gz").stat()
    shutil.copyfile(data / "b" / "b_t2.nii.gz", data / "a" / "a_t2.nii.gz")  # another target under the same name
    with pytest.raises(UsageError, match="files of a are not those"):
        evaluate_cases(cases_to_evaluate(data), out, lookup=lookup, resume=True)
    shutil.copyfile(cases_dir / "a" / "a_t2.nii.gz", data / "a" / "a_t2.nii.gz")
    os.utime(data / "a" / "a_t2.nii.gz", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    resumed = evaluate_cases(cases_to_evaluate(data), out, lookup=lookup, resume=True)
    assert resumed["resumed_after"] == 1
    assert resumed["summary"] == evaluate_cases(cases_to_evaluate(data), tmp_path / "whole", lookup=lookup)["summary"]


@pytest.mark.parametrize("edit, problem", [
    (lambda r: r["stopped"].update(settings=None), "cannot be read as a stopped evaluation's"),
    (lambda r: r.update(resampled=["x"]), "cannot be read as a stopped evaluation's"),
    (lambda r: r["stopped"].pop("cases_planned"), "cannot be read as a stopped evaluation's"),
    (lambda r: r["cases"].reverse(), "cannot be read as a stopped evaluation's"),
])
def test_a_hand_edited_stopped_report_is_refused_with_a_message_not_a_traceback(cases_dir, lookup, tmp_path, edit,
                                                                                 problem):
    out = tmp_path / "out"
    with pytest.raises(Cancelled):
        evaluate_cases(cases_to_evaluate(cases_dir), out, lookup=lookup, progress=_stop_after(2))
    report = _report(out)
    edit(report)
    (out / "metrics.json").write_text(json.dumps(report), encoding="utf-8")
    with pytest.raises(OutputError, match=problem):
        evaluate_cases(cases_to_evaluate(cases_dir), out, lookup=lookup, resume=True)
    (out / "metrics.json").write_text("{truncated", encoding="utf-8")
    with pytest.raises(OutputError, match="cannot be read"):  # it said "holds no report"
        evaluate_cases(cases_to_evaluate(cases_dir), out, lookup=lookup, resume=True)


def test_a_stopped_overwrite_resumes_and_takes_away_what_the_replaced_report_wrote(cases_dir, lookup, tmp_path):
    cases = cases_to_evaluate(cases_dir)
    out = tmp_path / "out"
    evaluate_cases(cases_to_evaluate(cases_dir, case_ids=["a", "b", "c"]), out, lookup=lookup, figures=True)
    evaluate_cases(cases_to_evaluate(cases_dir, case_ids=["c", "b", "a"]), tmp_path / "x", lookup=lookup, figures=True)
    with pytest.raises(Cancelled):  # replacing a finished report of other cases' figures, stopped after one case
        evaluate_cases(cases_to_evaluate(cases_dir, case_ids=["a", "b"]), out, lookup=lookup, figures=True,
                       overwrite=True, progress=_stop_after(1))
    resumed = evaluate_cases(cases_to_evaluate(cases_dir, case_ids=["a", "b"]), out, lookup=lookup, figures=True,
                             resume=True)  # was refused: b.png is the replaced report's
    assert [row["case"] for row in resumed["cases"]] == ["a", "b"]
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "metrics.json", "metrics.md"]  # c.png taken away
    assert len(cases) == 3


def test_an_infinite_psnr_survives_the_stop(cases_dir, lookup, tmp_path, monkeypatch):
    """Strict JSON writes inf as null; a kept perfect case must not come back as a missing figure."""
    from MedSynthLogic import metrics

    real = metrics.evaluate_case

    def perfect_a(pred, target, *args, **kwargs):
        row = real(pred, target, *args, **kwargs)
        return {**row, "psnr": float("inf")} if perfect_a.first else row
    perfect_a.first = True
    monkeypatch.setattr(metrics, "evaluate_case", perfect_a)

    def stop_after_a(event):
        if event.get("event") == "progress":
            perfect_a.first = False
        _stop_after(1)(event)
    out = tmp_path / "out"
    with pytest.raises(Cancelled):
        evaluate_cases(cases_to_evaluate(cases_dir), out, lookup=lookup, progress=stop_after_a)
    assert _report(out)["cases"][0]["psnr"] is None
    resumed = evaluate_cases(cases_to_evaluate(cases_dir), out, lookup=lookup, resume=True)
    assert resumed["cases"][0]["psnr"] == float("inf")
    assert "∞" in (out / "metrics.md").read_text(encoding="utf-8")


def test_a_stop_once_every_case_is_scored_writes_the_finished_report(cases_dir, lookup, tmp_path, monkeypatch):
    out = tmp_path / "out"
    with pytest.raises(Cancelled):  # the last case's progress event
        evaluate_cases(cases_to_evaluate(cases_dir), out, lookup=lookup, progress=_stop_after(3))
    assert "stopped" not in _report(out) and len(_report(out)["cases"]) == 3
    from MedSynthLogic import metrics

    real, calls = metrics.write_report, []

    def interrupted_once(*args, **kwargs):  # SIGTERM while the finished report is written
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr("MedSynthLogic.metrics.write_report", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        evaluate_cases(cases_to_evaluate(cases_dir), tmp_path / "again", lookup=lookup)
    assert len(_report(tmp_path / "again")["cases"]) == 3 and "stopped" not in _report(tmp_path / "again")


def test_a_model_evaluation_resumes_and_another_model_is_refused(cases_dir, tmp_path, tiny_model_config):
    import dataclasses

    from MedSynthLogic.model_file import save_model
    from _models import random_chain

    cfg = dataclasses.replace(tiny_model_config, stages=1)
    first = save_model(tmp_path / "m.safetensors", random_chain(cfg, seed=0), cfg)
    second = save_model(tmp_path / "n.safetensors", random_chain(cfg, seed=1), cfg)
    cases = cases_to_evaluate(cases_dir, case_ids=["a", "b"], model=first)
    whole = evaluate_cases(cases, tmp_path / "whole", model=first, device="cpu")
    out = tmp_path / "out"
    with pytest.raises(Cancelled):
        evaluate_cases(cases, out, model=first, device="cpu", progress=_stop_after(1))
    with pytest.raises(UsageError, match="predictor_sha256"):
        evaluate_cases(cases, out, model=second, device="cpu", resume=True)
    resumed = evaluate_cases(cases, out, model=first, device="cpu", resume=True)
    assert resumed["cases"] == json.loads(json.dumps(whole["cases"])) and resumed["model_sha256"] == whole["model_sha256"]


def test_the_command_line_resumes(cases_dir, lookup, tmp_path, capsys):
    from MedSynthLogic.cli import main

    out = tmp_path / "out"
    with pytest.raises(Cancelled):
        evaluate_cases(cases_to_evaluate(cases_dir), out, lookup=lookup, progress=_stop_after(1))
    assert main(["evaluate", str(cases_dir), "--lookup", str(lookup), "--out", str(out)]) != 0
    assert "--resume" in capsys.readouterr().err
    assert main(["evaluate", str(cases_dir), "--lookup", str(lookup), "--out", str(out), "--resume"]) == 0
    assert [row["case"] for row in _report(out)["cases"]] == ["a", "b", "c"]


def test_a_stop_between_a_cases_files_and_its_row_leaves_no_stray_file(cases_dir, lookup, tmp_path, monkeypatch):
    """A prediction written for a case that was then not scored blocked the next run: --resume found no report, and
    without it the stray file was refused as one this evaluation would replace."""
    from MedSynthLogic import evaluation

    real = evaluation._case_figure

    def stopped_after_bs_prediction(path, *args, **kwargs):
        if path.name == "b.png":
            raise KeyboardInterrupt
        return real(path, *args, **kwargs)
    monkeypatch.setattr(evaluation, "_case_figure", stopped_after_bs_prediction)
    for case_ids, out in ((["b", "c"], tmp_path / "first"), (["a", "b", "c"], tmp_path / "later")):
        with pytest.raises(KeyboardInterrupt):
            evaluate_cases(cases_to_evaluate(cases_dir, case_ids=case_ids), out, lookup=lookup, figures=True,
                           save_predictions=True)
        assert not (out / "b_synthetic_t2.nii.gz").exists() and not (out / "b.png").exists()
    assert not (tmp_path / "first" / "metrics.json").exists()
    assert _report(tmp_path / "later")["written"] == ["metrics.json", "metrics.md", "a_synthetic_t2.nii.gz", "a.png"]
    monkeypatch.setattr(evaluation, "_case_figure", real)
    evaluate_cases(cases_to_evaluate(cases_dir, case_ids=["b", "c"]), tmp_path / "first", lookup=lookup, figures=True,
                   save_predictions=True)
    resumed = evaluate_cases(cases_to_evaluate(cases_dir), tmp_path / "later", lookup=lookup, figures=True,
                             save_predictions=True, resume=True)
    assert resumed["resumed_after"] == 1


def test_overwrite_says_which_files_of_the_replaced_evaluation_it_takes_away(cases_dir, lookup, tmp_path):
    out = tmp_path / "out"
    evaluate_cases(cases_to_evaluate(cases_dir, case_ids=["a", "b"]), out, lookup=lookup, save_predictions=True)
    events = []
    evaluate_cases(cases_to_evaluate(cases_dir, case_ids=["b"]), out, lookup=lookup, overwrite=True,
                   progress=events.append)
    said = [e["message"] for e in events if e["event"] == "warning" and "--overwrite took away" in e["message"]]
    assert said == ["--overwrite took away 2 file(s) of the replaced evaluation that this one does not write: "
                    "a_synthetic_t2.nii.gz, b_synthetic_t2.nii.gz"]
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "metrics.md"]


def test_a_stopped_overwrite_leaves_the_report_it_replaces_whole_until_a_case_is_scored(cases_dir, lookup, tmp_path,
                                                                                        monkeypatch):
    """A stop in the first case of an --overwrite run took away that case's prediction and figure of the standing
    report, which still listed them; a case's files now wait in a hidden folder until it is scored."""
    from MedSynthLogic import evaluation

    out = tmp_path / "out"
    evaluate_cases(cases_to_evaluate(cases_dir, case_ids=["a", "b"]), out, lookup=lookup, figures=True,
                   save_predictions=True)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupted(path, *args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(evaluation, "_case_figure", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluate_cases(cases_to_evaluate(cases_dir, case_ids=["a", "b"]), out, lookup=lookup, figures=True,
                       save_predictions=True, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no hidden folder left either


def test_overwrite_after_a_stopped_overwrite_takes_away_what_both_replaced(cases_dir, lookup, tmp_path):
    out = tmp_path / "out"
    evaluate_cases(cases_to_evaluate(cases_dir, case_ids=["a", "b"]), out, lookup=lookup, figures=True)
    with pytest.raises(Cancelled):
        evaluate_cases(cases_to_evaluate(cases_dir, case_ids=["a", "b"]), out, lookup=lookup, overwrite=True,
                       progress=_stop_after(1))
    evaluate_cases(cases_to_evaluate(cases_dir, case_ids=["a", "b"]), out, lookup=lookup, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "metrics.md"]  # a.png and b.png stood beside it


def test_a_hand_edited_stopped_report_cannot_take_away_a_file_outside_its_folder(cases_dir, lookup, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(Cancelled):
        evaluate_cases(cases_to_evaluate(cases_dir), out, lookup=lookup, progress=_stop_after(1))
    (tmp_path / "outside.png").write_bytes(b"the user's")
    report = _report(out)
    report["stopped"]["replaced"] = ["../outside.png", "metrics.md/..", 7]
    (out / "metrics.json").write_text(json.dumps(report), encoding="utf-8")
    evaluate_cases(cases_to_evaluate(cases_dir), out, lookup=lookup, resume=True)
    assert (tmp_path / "outside.png").read_bytes() == b"the user's"
