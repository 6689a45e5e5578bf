"""The ``medsynth`` command end to end: real subprocesses on real files (phantom cases, a tiny model).

One module-scoped workspace writes three phantom cases in BraTS naming, runs ``prepare`` and ``train`` once, and
the tests below run every other subcommand on what those wrote. Error and fault cases are covered by
test_bad_inputs.py / test_faults.py; here only the ``--progress json`` error contract is checked once.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pytest
from MedSynthLogic.demo import write_paired_cases

CASES = ("case0", "case1", "case2")
SHAPE = (40, 48, 40)
REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "Resources" / "Models" / "medsynth_t1ce_t2.safetensors"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _medsynth_command() -> List[str]:
    """The installed ``medsynth`` entry point next to this interpreter, else ``python -m MedSynthLogic.cli``."""
    exe = Path(sys.executable).with_name("medsynth")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "MedSynthLogic.cli"]


def _env() -> Dict[str, str]:
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def medsynth(*args: object, cwd: Optional[Path] = None, expect: Optional[int] = 0, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``medsynth ARGS`` in a subprocess; fail with its output when the exit code is not ``expect``."""
    proc = subprocess.run(
        _medsynth_command() + [str(a) for a in args],
        cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout,
    )
    if expect is not None and proc.returncode != expect:
        pytest.fail(
            f"medsynth {' '.join(map(str, args))} exited {proc.returncode}, expected {expect}\n"
            f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
        )
    return proc


def json_lines(stdout: str) -> List[dict]:
    """Every non-empty stdout line parsed as JSON (a line that is not JSON fails the test)."""
    events = []
    for line in stdout.splitlines():
        if line.strip():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                pytest.fail(f"stdout line is not JSON: {line!r}")
    return events


def tiny_config_dict() -> dict:
    """The ``tiny_model_config`` fixture's ModelConfig as JSON (module-scoped fixtures cannot request it)."""
    from MedSynthLogic.config import DiscriminatorConfig, GeneratorConfig, ModelConfig, to_dict

    gen = GeneratorConfig(filters=(4, 4, 4, 8, 8, 8, 4, 4, 1))
    disc = DiscriminatorConfig(channels=(4, 8, 8), last_conv=8, fully_connected=(16, 8))
    return to_dict(ModelConfig(generator=gen, discriminator=disc, stages=2))


def assert_png(path: Path, min_size: int = 200) -> np.ndarray:
    """``path`` is a PNG that PIL decodes, at least ``min_size`` pixels a side and not one flat colour."""
    from PIL import Image

    assert path.read_bytes()[:8] == PNG_MAGIC, f"{path} is not a PNG"
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB"), dtype=np.float32)
    assert min(rgb.shape[:2]) >= min_size, f"{path} is only {rgb.shape[1]}x{rgb.shape[0]} pixels"
    assert rgb.std() > 10, f"{path} is nearly one flat colour"
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 50, f"{path} has too few colours to hold images"
    return rgb


def assert_same_geometry(output: Path, source: Path) -> None:
    """The output file has exactly the source file's size, origin, spacing and direction (as SimpleITK reads them)."""
    import SimpleITK as sitk

    out, src = sitk.ReadImage(str(output)), sitk.ReadImage(str(source))
    assert out.GetSize() == src.GetSize()
    assert out.GetOrigin() == src.GetOrigin()
    assert out.GetSpacing() == src.GetSpacing()
    assert out.GetDirection() == src.GetDirection()


def read_array(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def assert_synthetic_t2(output: Path, source: Path) -> np.ndarray:
    """Geometry of the source; values finite, never negative, non-zero on most brain voxels (a tiny model trained for
    a few iterations predicts 0, the output's floor, on some), exactly zero outside."""
    assert_same_geometry(output, source)
    out, mask = read_array(output), read_array(source) > 0
    assert np.isfinite(out).all()
    assert np.all(out[~mask] == 0), "synthesis leaks outside the brain mask"
    assert np.all(out[mask] >= 0), "negative synthetic T2 voxels"
    assert np.count_nonzero(out[mask]) >= 0.5 * mask.sum(), "synthesis is zero inside the brain mask"
    return out


@dataclass
class Workspace:
    """Files written once per module: phantom cases, the tiny config, prepared data and a trained tiny model."""

    root: Path
    data: Path
    config: Path
    prepared: Path
    model: Path
    run_dir: Path
    prepare_stdout: str = ""
    train_events: List[dict] = field(default_factory=list)
    train_stdout: str = ""

    def t1ce(self, case: str) -> Path:
        return self.data / case / f"{case}_t1ce.nii.gz"

    def t2(self, case: str) -> Path:
        return self.data / case / f"{case}_t2.nii.gz"


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    """Three phantom cases, ``medsynth prepare`` (case2 for validation) and a 2-stage ``medsynth train``."""
    root = tmp_path_factory.mktemp("cli")
    w = Workspace(root, root / "data", root / "tiny.json", root / "prepared", root / "tiny.safetensors", root / "tiny_run")
    write_paired_cases(w.data, CASES, shape=SHAPE)
    w.config.write_text(json.dumps(tiny_config_dict(), indent=2), encoding="utf-8")
    w.prepare_stdout = medsynth(
        "prepare", w.data, w.prepared, "--config", w.config, "--patches-per-case", 12, "--val-cases", "case2",
        "--progress", "none",
    ).stdout
    proc = medsynth(
        "train", "--data", w.prepared, "--out", w.model, "--model-config", w.config, "--iterations", 2,
        "--batch-size", 4, "--val-every", 2, "--checkpoint-every", 1, "--log-every", 1, "--num-workers", 0,
        "--seed", 0, "--device", "cpu", "--progress", "json",
    )
    w.train_stdout = proc.stdout
    w.train_events = json_lines(proc.stdout)
    return w


# --- help, version, usage -------------------------------------------------------------------------------------

KEY_OPTIONS = {
    "synthesize": ("source", "output", "--model", "--stages", "--mask", "--flip-tta", "--tile", "--precision", "--pattern", "--force", "--progress"),
    "prepare": ("data", "out", "--config", "--patches-per-case", "--val-cases", "--val-fraction", "--csv", "--progress"),
    "train": ("--data", "--out", "--model-config", "--iterations", "--batch-size", "--resume", "--run-dir", "--progress"),
    "export": ("checkpoint", "out", "--stages", "--overwrite"),
    "evaluate": ("data", "--out", "--model", "--lookup", "--cases", "--manifest", "--figures", "--flip-tta", "--csv",
                 "--source-pattern"),
    "fit-lookup": ("data", "out", "--cases", "--bins", "--config", "--csv", "--source-pattern"),
    "fit-error-map": ("data", "model", "out", "--cases", "--voxels-per-case", "--seed", "--variants", "--image-features",
                      "--overwrite", "--csv", "--source-pattern", "--source-suffix"),
    "demo": ("--out", "--model", "--stages", "--device"),
    "info": ("model",),
}


def test_help_of_medsynth_and_every_subcommand():
    from MedSynthLogic.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    assert set(sub.choices) == set(KEY_OPTIONS), "a subcommand was added or removed: update KEY_OPTIONS"
    argvs = [["--help"]] + [[name, "--help"] for name in KEY_OPTIONS]
    procs = [
        subprocess.Popen(_medsynth_command() + argv, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for argv in argvs
    ]
    outputs = {}
    for argv, proc in zip(argvs, procs):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"medsynth {' '.join(argv)} exited {proc.returncode}: {err}"
        outputs[argv[0]] = out
    for name in KEY_OPTIONS:
        assert name in outputs["--help"]
    assert "exit codes" in outputs["--help"]
    for name, options in KEY_OPTIONS.items():
        text = outputs[name]
        assert f"usage: medsynth {name}" in text
        for option in options:
            assert option in text, f"'medsynth {name} --help' does not mention {option}"


def test_options_are_defined_in_one_place():
    """Every subcommand's options (and the torchrun entry's) are in options.py; no other module adds any."""
    others = [p.name for p in (REPO / "MedSynthLogic").glob("*.py")
              if p.name != "options.py" and "add_argument(" in p.read_text(encoding="utf-8")]
    assert others == [], f"options defined outside MedSynthLogic/options.py: {others}"


def test_parser_does_not_import_torch():
    code = ("import sys; from MedSynthLogic.cli import build_parser; build_parser(); "
            "print('torch' in sys.modules, 'numpy' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False False", "building the parser imports torch or numpy: 'medsynth --help' becomes slow"


def test_no_command_exits_2_with_usage():
    proc = medsynth(expect=2)
    assert "usage: medsynth" in proc.stderr
    assert proc.stdout == ""


def test_version():
    from MedSynthLogic import __version__

    proc = medsynth("--version")
    assert proc.stdout.strip() == f"medsynth {__version__}"


# --- prepare, train, info -------------------------------------------------------------------------------------


def test_config_file_is_the_tiny_fixture(ws, tiny_model_config):
    from MedSynthLogic.config import to_dict

    assert json.loads(ws.config.read_text(encoding="utf-8")) == to_dict(tiny_model_config)


def test_prepare_writes_patch_files_and_manifest(ws):
    import h5py

    assert {p.name for p in ws.prepared.iterdir()} >= {"train.h5", "val.h5", "manifest.json"}
    manifest = json.loads((ws.prepared / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["splits"] == {"train": ["case0", "case1"], "val": ["case2"]}
    assert manifest["counts"] == {"train": 2 * 2 * 12, "val": 2 * 12}
    assert manifest["model_config"] == tiny_config_dict()
    for name, n in (("train.h5", 48), ("val.h5", 24)):
        with h5py.File(ws.prepared / name, "r") as f:
            assert f.attrs["format"] == "medsynth-patches"
            assert f["source"].shape == (n, 1, 32, 32, 32)
            assert f["target"].shape == (n, 1, 16, 16, 16)
    assert "prepared 3 cases" in ws.prepare_stdout


def test_train_reports_json_events_and_writes_model_and_run_folder(ws):
    events = ws.train_events
    kinds = [e["event"] for e in events]
    assert {"iteration", "validation", "stage", "checkpoint", "done"} <= set(kinds)
    assert "error" not in kinds
    assert kinds[-1] == "done" and kinds.count("done") == 1
    assert Path(events[-1]["output"]) == ws.model
    iterations = [e for e in events if e["event"] == "iteration"]
    assert sorted({(e["stage"], e["iteration"]) for e in iterations}) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    for e in iterations:
        assert e["iterations"] == 2
        assert {"g", "d", "l2", "gdl"} <= set(e["losses"])
        assert all(math.isfinite(v) for v in e["losses"].values())
    validations = [e for e in events if e["event"] == "validation"]
    assert [v["stage"] for v in validations] == [0, 1]
    assert all(math.isfinite(v["val_loss"]) and math.isfinite(v["psnr"]) for v in validations)
    stages = [(e["stage"], e["status"]) for e in events if e["event"] == "stage"]
    assert stages == [(0, "start"), (0, "end"), (1, "start"), (1, "end")]
    assert ws.model.is_file()
    assert (ws.run_dir / "training_log.csv").is_file()
    assert len((ws.run_dir / "training_log.csv").read_text(encoding="utf-8").splitlines()) > 4
    assert_png(ws.run_dir / "loss_curves.png")
    assert sorted(ws.run_dir.glob("ckpt_*.pt"))


def test_info_prints_the_model_header_with_json(ws):
    header = json.loads(medsynth("info", ws.model, "--json").stdout)
    assert header["format"] == "medsynth-model"
    assert header["stages"] == 2
    assert header["model_config"] == tiny_config_dict()
    assert header["training"]


def test_info_prints_a_short_summary(ws):
    text = medsynth("info", ws.model).stdout
    lines = text.splitlines()
    assert lines[0] == f"MedSynth model {ws.model.name}" and len(lines) <= 12
    fields = {line.split("  ")[1].strip(): line for line in lines[1:-1]}
    assert set(fields) == {"mapping", "architecture", "stages", "training data", "training", "validation", "uncertainty",
                           "created"}
    assert "no learned error map" in fields["uncertainty"]
    assert "T1ce -> T2" in fields["mapping"]
    assert "filters 4-4-4-8-8-8-4-4-1" in fields["architecture"]
    assert "2 auto-context stage(s)" in fields["stages"]
    assert "2 training cases" in fields["training data"] and "1 validation case;" in fields["training data"]
    assert "2 iterations per stage" in fields["training"]
    assert "during training (last stage): PSNR" in fields["validation"]
    assert fields["created"].split()[1][:2] == "20"
    assert lines[-1] == "The full header: medsynth info --json"
    assert "{" not in text, "the summary is not JSON"


def test_the_slicer_panel_describes_a_model_that_medsynth_train_wrote(ws):
    """The panel shows this description after Train and for any model picked as "Other model file"; a header
    written by one ``medsynth train`` run (its stage count, not the shipped files' list of runs) used to crash it."""
    sys.path.insert(0, str(REPO / "MedSynth"))
    from MedSynthLib import model_info

    text = model_info.describe_model_file(ws.model)
    assert f"<b>{ws.model.name}</b>: T1ce → T2, 2 auto-context stage(s)." in text
    assert "Training: 2 iterations per stage, 2 stage(s)." in text
    assert "2 training cases" in text and "Validation during training only" in text


@pytest.mark.skipif(not BUNDLED.is_file(), reason=f"bundled model {BUNDLED} is absent")
def test_info_of_the_bundled_model_shows_its_held_out_figures():
    """The figures `medsynth info` prints are those of the committed report the header names."""
    from MedSynthLogic.model_file import read_header

    text = medsynth("info").stdout
    named = read_header(BUNDLED)["metrics"]["evaluation"]["report"]
    report = json.loads((REPO / named).read_text(encoding="utf-8"))
    psnr = report["summary"]["psnr"]
    assert f"held-out, 3 cases, inside the brain: PSNR {psnr['mean']:.2f} ± {psnr['std']:.2f} dB" in text


@pytest.mark.parametrize("command", sorted(KEY_OPTIONS))
def test_help_states_every_default(command):
    """Every option has a help line, and every optional one that takes a value says its default."""
    from MedSynthLogic.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    for action in sub.choices[command]._actions:
        name = action.option_strings[-1] if action.option_strings else action.dest
        assert action.help, f"{command} {name} has no help line"
        if action.option_strings and action.nargs != 0 and not action.required:
            assert "default" in action.help, f"{command} {name} does not say its default: {action.help!r}"


def test_train_help_shows_the_config_defaults():
    text = " ".join(medsynth("train", "--help").stdout.split())
    for shown in ("--iterations N iterations per stage (default: 2000", "--batch-size N", "(default: 32",
                  "--lambda-adv X", "(default: 0.05", "--keep-checkpoints KEEP_CHECKPOINTS", "(default: 3)"):
        assert shown in text, shown


def test_train_resume_of_a_finished_run_never_rewrites_the_model(ws):
    """The model exists once its run finished; --resume then refuses (7) and leaves it as it was, unless --overwrite."""
    import shutil

    model, run_dir = ws.root / "finished.safetensors", ws.root / "finished_run"
    shutil.copyfile(ws.model, model)
    shutil.copytree(ws.run_dir, run_dir)
    before = model.read_bytes()
    argv = ["train", "--data", ws.prepared, "--out", model, "--run-dir", run_dir, "--model-config", ws.config,
            "--iterations", 2, "--batch-size", 4, "--num-workers", 0, "--device", "cpu", "--resume"]
    proc = medsynth(*argv, expect=7)
    assert f"The model {model} exists already." in proc.stderr and "--overwrite" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert model.read_bytes() == before
    event = json_lines(medsynth(*argv, "--progress", "json", expect=7).stdout)[-1]
    assert event["event"] == "error" and event["reason"] == "model_written" and "--overwrite" in event["message"]
    assert event["problem"] == f"The model {model} exists already."
    sys.path.insert(0, str(REPO / "MedSynth"))
    from MedSynthLib.events import describe_event

    shown = describe_event(event, "train").log  # the Slicer panel has no --overwrite: it names its own field
    assert shown.startswith(f"Error: The model {model} exists already. That run has finished") and "--" not in shown
    medsynth(*argv, "--overwrite", "--progress", "none")
    from MedSynthLogic.model_file import read_header

    assert read_header(model)["tensors_sha256"] == read_header(ws.model)["tensors_sha256"]


def test_train_stop_after_exits_0_with_a_checkpoint_and_resume_finishes(ws):
    model, run_dir = ws.root / "sliced.safetensors", ws.root / "sliced_run"
    argv = ["train", "--data", ws.prepared, "--out", model, "--run-dir", run_dir, "--model-config", ws.config,
            "--iterations", 3, "--batch-size", 4, "--num-workers", 0, "--device", "cpu"]
    proc = medsynth(*argv, "--stop-after", 2, "--progress", "json")
    events = json_lines(proc.stdout)
    assert events[-1] == {"event": "done", "stopped_after": 2}
    assert [e["iteration"] for e in events if e["event"] == "checkpoint"] == [2]
    assert not model.exists()
    proc = medsynth(*argv, "--resume", "--stop-after", 2)  # the slice's own count, and where the run now stands
    assert "stopped after 2 iterations of this call, as --stop-after asked; the run is at stage 2, iteration 1 (" in proc.stdout
    proc = medsynth(*argv, "--resume", "--stop-after", 100)
    assert f"wrote model {model}" in proc.stdout and model.exists()


# --- synthesize -----------------------------------------------------------------------------------------------


def test_synthesize_keeps_an_oblique_anisotropic_geometry(ws):
    from MedSynthLogic.phantom import make_phantom
    from MedSynthLogic.volume_io import Volume, write_volume

    c, s = math.cos(0.3), math.sin(0.3)
    direction = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)
    p = make_phantom(shape=(36, 44, 40), spacing=(0.9, 1.1, 1.6), seed=7)
    source = ws.root / "oblique_t1ce.nii.gz"
    write_volume(Volume(p.t1ce.array, (0.9, 1.1, 1.6), (12.5, -30.25, 41.0), direction), source)
    out = ws.root / "oblique_synthetic.nii.gz"
    refused = medsynth("synthesize", source, out, "--model", ws.model, expect=3)  # 1.6 mm is > 0.5 mm from 1 mm
    assert "voxel size 0.9 × 1.1 × 1.6 mm is not within 0.5 mm" in refused.stderr and "--force" in refused.stderr
    assert not out.exists()
    proc = medsynth("synthesize", source, out, "--model", ws.model, "--progress", "json", "--force")
    events = json_lines(proc.stdout)
    assert events[-1] == {"event": "done", "output": str(out)}
    assert any(e["event"] == "progress" for e in events)
    warnings = [e for e in events if e["event"] == "warning"]
    assert len(warnings) == 2 and warnings[0]["input_checks"] == ["spacing"] and "--force" in warnings[0]["message"]
    assert "synthesized resampled to those" in warnings[1]["message"], "and it runs at the training voxel size"
    assert_synthetic_t2(out, source)


def test_synthesize_records_the_input_checks_in_the_output_header(ws):
    """NIfTI keeps the short note (descrip); NRRD keeps the whole JSON record as well."""
    import SimpleITK as sitk

    nii, nrrd = ws.root / "checked.nii.gz", ws.root / "checked.nrrd"
    medsynth("synthesize", ws.t1ce("case0"), nii, "--model", ws.model)
    medsynth("synthesize", ws.t2("case0"), nrrd, "--model", ws.model, "--force")
    assert sitk.ReadImage(str(nii)).GetMetaData("descrip") == "MedSynth synthetic T2; input checks passed"
    image = sitk.ReadImage(str(nrrd))
    record = json.loads(image.GetMetaData("medsynth_input_checks"))
    assert record["passed"] is False and record["forced"] is True
    assert [f["code"] for f in record["findings"]] == ["sequence"]
    assert record["checks"] == ["sequence", "skull_stripped", "negative_values", "spacing"]
    assert "FAILED, forced: sequence" in image.GetMetaData("ITK_FileNotes")


@pytest.fixture(scope="module")
def batch(ws) -> Path:
    """``medsynth synthesize CASES OUT`` over the BraTS-named case folders (each with t1ce, t2 and seg), in float32
    (``auto`` is bf16 on some CPUs; the tests below compare other options against this output)."""
    out = ws.root / "batch_out"
    proc = medsynth("synthesize", ws.data, out, "--model", ws.model, "--precision", "fp32")
    assert "wrote 3 synthetic volumes" in proc.stdout
    return out


def test_synthesize_folder_takes_only_the_t1ce_of_each_case(ws, batch):
    assert sorted(p.name for p in batch.iterdir()) == [f"{c}_synthetic_t2.nii.gz" for c in CASES]
    for case in CASES:
        assert_synthetic_t2(batch / f"{case}_synthetic_t2.nii.gz", ws.t1ce(case))


def test_synthesize_folder_with_a_pattern(ws, batch):
    """A flat folder of differently named files: --pattern picks them, the case id is the file name."""
    folder, out = ws.root / "flat_in", ws.root / "flat_out"
    folder.mkdir()
    for case in CASES[:2]:
        (folder / f"{case}.nii.gz").write_bytes(ws.t1ce(case).read_bytes())
        (folder / f"{case}_notes.txt").write_text("not an image", encoding="utf-8")
    missing = medsynth("synthesize", folder, out, "--model", ws.model, expect=3)
    assert "No files matching <case>/<case>_t1ce.nii.gz" in missing.stderr and "--pattern" in missing.stderr
    assert not out.exists()
    medsynth("synthesize", folder, out, "--model", ws.model, "--pattern", "*.nii.gz", "--precision", "fp32")
    assert sorted(p.name for p in out.iterdir()) == ["case0_synthetic_t2.nii.gz", "case1_synthetic_t2.nii.gz"]
    assert np.array_equal(read_array(out / "case0_synthetic_t2.nii.gz"), read_array(batch / "case0_synthetic_t2.nii.gz"))


def test_synthesize_stages_and_flip_tta_change_the_output(ws, batch):
    source = ws.t1ce("case2")
    one, tta = ws.root / "case2_stage1.nii.gz", ws.root / "case2_tta.nii.gz"
    proc = medsynth("synthesize", source, one, "--model", ws.model, "--stages", 1, "--precision", "fp32", "--progress", "json")
    assert {e.get("stages") for e in json_lines(proc.stdout) if e["event"] == "progress"} == {1}
    medsynth("synthesize", source, tta, "--model", ws.model, "--flip-tta", "--precision", "fp32", "--progress", "none")
    default = read_array(batch / "case2_synthetic_t2.nii.gz")
    one_stage, flipped = (assert_synthetic_t2(p, source) for p in (one, tta))
    assert not np.array_equal(default, one_stage), "--stages 1 gave the 2-stage result"
    assert not np.array_equal(default, flipped), "--flip-tta changed nothing"


def test_synthesize_bf16_is_close_to_fp32(ws, batch):
    """--precision bf16 (the fast CPU path) stays within a few per cent of the fp32 synthesis."""
    source = ws.t1ce("case2")
    out = ws.root / "case2_bf16.nii.gz"
    medsynth("synthesize", source, out, "--model", ws.model, "--precision", "bf16", "--progress", "none")
    fp32, bf16 = read_array(batch / "case2_synthetic_t2.nii.gz"), assert_synthetic_t2(out, source)
    assert np.abs(fp32 - bf16).max() <= 0.05 * max(float(np.abs(fp32).max()), 1e-6)


# --- evaluate, fit-lookup, export -----------------------------------------------------------------------------


def _check_report(out: Path, cases: Sequence[str]) -> dict:
    report = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert [c["case"] for c in report["cases"]] == list(cases)
    for row in report["cases"]:
        for key in ("psnr", "ssim", "mae", "psnr_tumour", "ssim_tumour", "mae_tumour"):
            assert isinstance(row[key], float) and math.isfinite(row[key]), (key, row)
        assert row["tumour_voxels"] > 0
    md = (out / "metrics.md").read_text(encoding="utf-8")
    for text in ("psnr", "ssim", "mae", "psnr_tumour", "mean ± std", *cases):
        assert text in md
    return report


def test_evaluate_with_figures(ws):
    out = ws.root / "evaluation"
    proc = medsynth("evaluate", ws.data, "--model", ws.model, "--cases", "case1,case2", "--out", out, "--figures",
                    "--precision", "fp32", "--progress", "json")
    events = json_lines(proc.stdout)
    progress = [e for e in events if e["event"] == "progress"]
    assert {e["task"] for e in progress} == {"evaluate"}
    fractions = [e["fraction"] for e in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    for i, case in enumerate(("case1", "case2")):  # the bar moves within each case, not only between cases
        inside = [e for e in progress if e["case"] == case and i / 2 < e["fraction"] < (i + 1) / 2]
        assert inside, f"no progress within {case}: {progress}"
        assert [e["done"] for e in progress if e["case"] == case][-1] == i + 1
    assert events[-1]["event"] == "done" and set(events[-1]["summary"]) >= {"psnr", "ssim", "mae", "psnr_tumour"}
    report = _check_report(out, ["case1", "case2"])
    assert report["model"] == str(ws.model) and report["precision"] == "float32", "the report says what it computed in"
    for case in ("case1", "case2"):
        assert_png(out / f"{case}.png")


def test_evaluate_says_when_it_scores_the_models_own_training_cases(ws):
    """case0 trained the tiny model: its figures are no held-out result, and the report used to say nothing."""
    out = ws.root / "evaluation_training_case"
    proc = medsynth("evaluate", ws.data, "--model", ws.model, "--cases", "case0, case2", "--out", out, "--progress", "plain")
    assert ("medsynth: warning: 1 of the 2 scored cases (case0) are among the model's training cases: their figures "
            "are not held-out results") in proc.stderr
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8"))["training_cases_scored"] == ["case0"]
    held_out = ws.root / "evaluation_held_out"
    proc = medsynth("evaluate", ws.data, "--model", ws.model, "--cases", "case2", "--out", held_out, "--progress", "plain")
    assert "training cases" not in proc.stderr
    assert "training_cases_scored" not in json.loads((held_out / "metrics.json").read_text(encoding="utf-8"))


def test_evaluate_a_manifest_alone_scores_the_files_it_records(ws):
    """Without DATA, --manifest's validation cases are read from the files prepare recorded, in any layout."""
    out = ws.root / "evaluation_from_manifest"
    proc = medsynth("evaluate", "--manifest", ws.prepared / "manifest.json", "--model", ws.model, "--out", out,
                    "--progress", "none")
    report = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert [row["case"] for row in report["cases"]] == ["case2"]
    assert report["files"]["case2"]["source"] == str(ws.data / "case2" / "case2_t1ce.nii.gz")
    assert "1 of the" not in proc.stderr
    usage = medsynth("evaluate", "--manifest", ws.prepared / "manifest.json", "--source-suffix", "t1ce", "--out",
                     ws.root / "no_report", expect=2)  # a CSV names its own files: --csv alone needs no DATA
    assert "--source-suffix describe a data folder, but none was given" in usage.stderr
    nothing = medsynth("evaluate", "--out", ws.root / "no_report", expect=2)
    assert "give a data folder, or --manifest" in nothing.stderr
    assert not (ws.root / "no_report").exists()


def test_fit_lookup_then_evaluate_the_lookup(ws):
    lookup = ws.root / "lookup.json"
    medsynth("fit-lookup", ws.data, lookup, "--cases", "case0,case1", "--bins", 64, "--config", ws.config)
    data = json.loads(lookup.read_text(encoding="utf-8"))
    assert data["kind"] == "intensity-lookup" and len(data["values"]) == 64 and data["fitted_on"] == ["case0", "case1"]
    out = ws.root / "evaluation_lookup"
    proc = medsynth("evaluate", ws.data, "--lookup", lookup, "--cases", "case2", "--out", out, "--label", "lookup",
                    "--progress", "plain")
    assert "fitted on" not in proc.stderr
    report = _check_report(out, ["case2"])
    assert report["label"] == "lookup"
    assert report["cases"][0]["psnr"] > 12, "a lookup fitted on phantoms should fit another phantom well"
    # a case the lookup was fitted on is no held-out result: said as a model's training case is
    proc = medsynth("evaluate", ws.data, "--lookup", lookup, "--cases", "case1,case2", "--out", ws.root / "lookup_own",
                    "--progress", "plain")
    assert ("1 of the 2 scored cases (case1) are among the cases the lookup was fitted on") in proc.stderr
    assert json.loads((ws.root / "lookup_own" / "metrics.json").read_text(encoding="utf-8"))["training_cases_scored"] == ["case1"]


def test_evaluate_fit_lookup_and_fit_error_map_read_a_folder_in_another_layout(ws):
    """Only prepare used to read a non-BraTS folder: a flat sub-<case>_T1w / _T2w folder (and a CSV of it) now
    gives evaluate, fit-lookup and fit-error-map the same cases as the BraTS folder does."""
    flat = ws.root / "flat"
    flat.mkdir()
    rows = ["case,source,target"]
    for case in CASES:
        for kind, name in (("t1ce", "T1w"), ("t2", "T2w")):
            (flat / f"sub-{case}_{name}.nii.gz").symlink_to(ws.data / case / f"{case}_{kind}.nii.gz")
        rows.append(f"{case},sub-{case}_T1w.nii.gz,sub-{case}_T2w.nii.gz")
    (flat / "cases.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    patterns = ("--source-pattern", "sub-{case}_T1w.nii.gz", "--target-pattern", "sub-{case}_T2w.nii.gz")
    scores = []
    for data, layout, out in ((ws.data, (), "eval_brats"), (flat, patterns, "eval_flat")):
        medsynth("evaluate", data, *layout, "--model", ws.model, "--cases", "case2", "--out", ws.root / out,
                 "--precision", "fp32", "--progress", "none")
        scores.append(json.loads((ws.root / out / "metrics.json").read_text(encoding="utf-8"))["cases"][0]["psnr"])
    assert scores[0] == scores[1]  # the patterns pick no _seg: the flat folder's report has no tumour figures
    medsynth("evaluate", "--csv", flat / "cases.csv", "--skip-incomplete", "--model", ws.model, "--cases", "case2",
             "--out", ws.root / "eval_csv", "--precision", "fp32", "--progress", "none")  # the flag was refused without DATA
    assert json.loads((ws.root / "eval_csv" / "metrics.json").read_text(encoding="utf-8"))["cases"][0]["psnr"] == scores[0]
    medsynth("fit-lookup", flat, ws.root / "flat_lookup.json", "--csv", flat / "cases.csv", "--config", ws.config)
    assert json.loads((ws.root / "flat_lookup.json").read_text(encoding="utf-8"))["kind"] == "intensity-lookup"
    out = ws.root / "flat_error_map.safetensors"
    proc = medsynth("fit-error-map", flat, ws.model, out, *patterns, "--cases", "case0", "--voxels-per-case", 500,
                    "--progress", "none")
    assert "case0 (as given): mean |error|" in proc.stdout and out.is_file()
    refused = medsynth("fit-error-map", flat, ws.model, ws.root / "no.safetensors", *patterns, "--cases", "case0",
                       "--variants", "t1", "--progress", "none", expect=2)
    assert "The t1 variant needs the non-contrast T1 beside each case's T1ce" in refused.stderr  # not silently dropped


def test_fit_error_map_then_synthesize_with_it(ws):
    """The map is fitted on the model's own training cases (its header's), stored in a copy of the model whose
    synthesis is unchanged, and becomes the --uncertainty map; an existing output is refused before any work."""
    import SimpleITK as sitk

    from MedSynthLogic.model_file import load_model

    out = ws.root / "tiny_error_map.safetensors"
    proc = medsynth("fit-error-map", ws.data, ws.model, out, "--voxels-per-case", 3000, "--variants", " contrast",
                    "--image-features", "--progress", "none")
    for line in ("case0 (as given): mean |error|", "case0 (contrast)", "case1 (as given)", "case1 (contrast)"):
        assert line in proc.stdout
    assert "case2" not in proc.stdout
    info = medsynth("info", out).stdout
    assert ("learned error map (expected |error| per voxel), fitted on 2 cases and their shifted sources (contrast); "
            "it also reads the whole source (thin bright, bright tail)") in info
    fitted = load_model(out).error_map
    assert fitted is not None and fitted.fitted_on["cases"] == ["case0", "case1"] and fitted.fitted_on["voxels"] == 12000
    gammas = [fitted.fitted_on["variants"][c]["contrast"]["gamma"] for c in ("case0", "case1")]
    assert len(set(gammas)) == 2, "a gamma drawn per case, recorded in the header"
    assert len(fitted.features) == 9 and fitted.image_features == ("thin bright", "bright tail")
    source = ws.data / "case2" / "case2_t1ce.nii.gz"
    medsynth("synthesize", source, ws.root / "plain.nii.gz", "--model", ws.model, "--device", "cpu")
    medsynth("synthesize", source, ws.root / "mapped.nii.gz", "--model", out, "--device", "cpu",
             "--uncertainty", ws.root / "mapped_unc.nii.gz")
    plain, mapped = (sitk.GetArrayFromImage(sitk.ReadImage(str(ws.root / n))) for n in ("plain.nii.gz", "mapped.nii.gz"))
    np.testing.assert_array_equal(plain, mapped)
    unc = sitk.GetArrayFromImage(sitk.ReadImage(str(ws.root / "mapped_unc.nii.gz")))
    brain = sitk.GetArrayFromImage(sitk.ReadImage(str(source))) > 0
    assert unc.min() >= 0 and np.all(unc[~brain] == 0) and unc[brain].max() > 0
    refused = medsynth("fit-error-map", ws.data, ws.model, out, "--progress", "none", expect=7, timeout=60)
    assert "exists" in refused.stderr and "case0" not in refused.stdout


def _script(name: str, *args: object) -> str:
    proc = subprocess.run([sys.executable, str(REPO / "Testing" / "Evaluation" / name), *map(str, args)],
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def _table_cell(md: str, case: str, column: int) -> str:
    row = next(line for line in md.splitlines() if line.startswith(f"| {case} |"))
    return row.split("|")[column + 1].strip()


def test_the_report_scripts_measure_what_medsynth_evaluate_measures(ws):
    """error_breakdown.py, test_time_adjustments.py and output_level.py feed MODEL_CARD.md: their unadjusted PSNR must
    be evaluate's."""
    out = ws.root / "evaluation_saved"
    medsynth("evaluate", ws.data, "--model", ws.model, "--cases", "case1,case2", "--out", out, "--save-predictions",
             "--device", "cpu")
    psnr = {c["case"]: c["psnr"] for c in _check_report(out, ["case1", "case2"])["cases"]}
    _script("error_breakdown.py", ws.data, out, out / "breakdown.md")
    _script("test_time_adjustments.py", ws.data, ws.model, out / "adjustments.md", "--cases", "case1,case2",
            "--train-cases", "case0")
    _script("output_level.py", ws.data, out / "level.md", "--cases", "case1,case2", "--predictions", f"tiny={out}")
    breakdown = (out / "breakdown.md").read_text(encoding="utf-8")
    adjustments = (out / "adjustments.md").read_text(encoding="utf-8")
    level = (out / "level.md").read_text(encoding="utf-8")
    assert "source median-matched" in adjustments and "output quantile-matched" in adjustments
    for case, value in psnr.items():
        assert float(_table_cell(breakdown, case, 1)) == pytest.approx(value, abs=0.006)
        unadjusted = _table_cell(adjustments, case, 1).split("/")
        assert float(unadjusted[0]) == pytest.approx(value, abs=0.006)
        assert -1 <= float(unadjusted[1]) <= 1
        for column in (2, 3, 4):
            assert math.isfinite(float(_table_cell(adjustments, case, column).split("/")[0]))
        assert float(_table_cell(level, case, 1).split("/")[0]) == pytest.approx(value, abs=0.006)
        assert math.isfinite(float(_table_cell(level, case, 2).split("/")[0]))


def test_input_shift_scores_the_unshifted_row_as_evaluate_does_and_every_shift_moves_it(ws, tmp_path):
    """input_shift.py feeds MODEL_CARD.md: its "none" row must be evaluate's, a shifted source must change the
    synthesis, and a case's T1 beside its T1ce is found (only case1 gets one here, so that row has one case)."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(ws.data, data)
    shutil.copy(data / "case1" / "case1_t1ce.nii.gz", data / "case1" / "case1_t1.nii.gz")
    out = ws.root / "evaluation_fp32"
    medsynth("evaluate", data, "--model", ws.model, "--cases", "case1,case2", "--out", out, "--device", "cpu",
             "--precision", "fp32")
    psnr = {c["case"]: c["psnr"] for c in _check_report(out, ["case1", "case2"])["cases"]}
    lookup = ws.root / "shift_lookup.json"
    medsynth("fit-lookup", data, lookup, "--cases", "case0", "--bins", 64, "--config", ws.config)
    shifted = tmp_path / "shift"
    _script("input_shift.py", data, shifted, "--cases", "case1,case2", "--model", f"tiny={ws.model}",
            "--lookup", f"lookup={lookup}")
    report = json.loads((shifted / "input_shift.json").read_text(encoding="utf-8"))
    tiny = report["results"]["tiny"]
    assert {c["case"]: c["psnr"] for c in tiny["none"]["cases"]} == pytest.approx(psnr, abs=1e-6)
    assert [c["case"] for c in tiny["T1 instead of T1ce"]["cases"]] == ["case1"]
    assert tiny["T1 instead of T1ce"]["cases"][0]["psnr"] == pytest.approx(psnr["case1"], abs=1e-6), \
        "case1's T1 is a copy of its T1ce here"
    for shift in ("gamma 0.8", "gamma 1.25", "bias field ±20 %", "noise 5 %", "3 mm slices"):
        assert tiny[shift]["cases"][0]["psnr"] != pytest.approx(psnr["case1"], abs=1e-4), shift
        assert set(report["results"]["lookup"][shift]["cases"][0]) >= {"psnr", "ssim"}
    verdicts = report["input_checks"]["case1"]
    assert verdicts["none"] == "accepted" and set(verdicts) == set(tiny)
    assert all(v == "accepted" or v.startswith("refused: ") for v in verdicts.values()), verdicts
    md = (shifted / "INPUT_SHIFT.md").read_text(encoding="utf-8")
    assert "### tiny" in md and "### lookup" in md and "| gamma 0.8 | 2 |" in md


@pytest.mark.parametrize("command", ["fit-lookup", "evaluate"])
def test_a_misspelt_case_id_is_refused_not_skipped(ws, command):
    out = ws.root / f"typo_{command}"
    args = [ws.data, out] if command == "fit-lookup" else [ws.data, "--out", out, "--model", ws.model]
    proc = medsynth(command, *args, "--cases", "case0,case9", expect=2)
    assert "case9" in proc.stderr and "not found" in proc.stderr and "case0, case1" in proc.stderr
    assert not out.exists()


def test_export_a_checkpoint_gives_a_loadable_model(ws):
    from safetensors.numpy import load_file

    from MedSynthLogic.model_file import load_model

    checkpoints = sorted(ws.run_dir.glob("ckpt_*.pt"))
    last = checkpoints[-1]
    out = ws.root / "exported.safetensors"
    medsynth("export", last, out)
    loaded = load_model(out)
    assert len(loaded.chain.stages) == 2
    assert loaded.header["model_config"] == tiny_config_dict()
    exported, trained = load_file(str(out)), load_file(str(ws.model))
    assert exported.keys() == trained.keys()
    for name in trained:
        np.testing.assert_array_equal(exported[name], trained[name], err_msg=name)


def test_bundled_model_export_script_records_provenance_and_evaluation(ws):
    """The script that seals Resources/Models puts the committed provenance and a measured report in the header."""
    from MedSynthLogic.model_file import read_header

    last = sorted(ws.run_dir.glob("ckpt_*.pt"))[-1]
    evaluation = ws.root / "evaluation_for_export"
    medsynth("evaluate", ws.data, "--model", ws.model, "--cases", "case2", "--out", evaluation)
    out = ws.root / "bundled_like.safetensors"
    script = REPO / "Testing" / "Training" / "export_bundled_model.py"
    proc = subprocess.run([sys.executable, str(script), str(last), str(out), "--evaluation", str(evaluation / "metrics.json")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    header = read_header(out)
    provenance = json.loads((REPO / "Testing" / "Training" / "bundled_provenance.json").read_text(encoding="utf-8"))
    for key, value in provenance.items():
        assert header["training"][key] == value
    assert header["training"]["checkpoint_iteration"] > 0 and header["training"]["exported_from_checkpoint"] == last.name
    measured = json.loads((evaluation / "metrics.json").read_text(encoding="utf-8"))
    assert header["metrics"]["evaluation"]["cases"] == ["case2"]
    assert header["metrics"]["evaluation"]["summary"]["psnr"]["mean"] == pytest.approx(measured["summary"]["psnr"]["mean"])
    from_file = ws.root / "bundled_from_file.safetensors"
    proc = subprocess.run([sys.executable, str(script), str(ws.model), str(from_file), "--evaluation",
                           str(evaluation / "metrics.json")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    restamped, original = read_header(from_file), read_header(ws.model)
    assert restamped["training"]["exported_from_model"] == ws.model.name
    assert all(restamped["training"][k] == v for k, v in provenance.items())
    assert restamped["training"]["train_config"] == original["training"]["train_config"], "the file's own record stays"
    assert restamped["metrics"]["evaluation"]["cases"] == ["case2"]
    assert restamped["tensors_sha256"] == original["tensors_sha256"], "the weights are the file's, unchanged"


# --- demo -----------------------------------------------------------------------------------------------------


def _check_demo(out: Path) -> None:
    names = ("phantom_t1ce.nii.gz", "phantom_t2.nii.gz", "phantom_synthetic_t2.nii.gz", "phantom_side_by_side.png")
    assert all((out / n).is_file() for n in names)
    assert_synthetic_t2(out / "phantom_synthetic_t2.nii.gz", out / "phantom_t1ce.nii.gz")
    assert_same_geometry(out / "phantom_t2.nii.gz", out / "phantom_t1ce.nii.gz")
    rgb = assert_png(out / "phantom_side_by_side.png", min_size=400)
    assert rgb.shape[1] > rgb.shape[0] * 0.8, "three panels side by side should make a wide-ish figure"


def test_demo_with_a_tiny_model_runs_again_into_the_same_folder(ws):
    out = ws.root / "demo"
    for _ in range(2):
        proc = medsynth("demo", "--out", out, "--model", ws.model, "--stages", 1, "--device", "cpu", "--progress", "json")
        events = json_lines(proc.stdout)
        assert events[-1]["event"] == "done"
        assert set(events[-1]["outputs"]) == {"t1ce", "t2", "synthetic_t2", "figure"}
        metrics = [e for e in events if e["event"] == "metrics"]
        assert len(metrics) == 1 and {"psnr", "ssim", "mae"} <= set(metrics[0]["metrics"])
        _check_demo(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["phantom_t1ce.nii.gz", "phantom_t2.nii.gz", "phantom_synthetic_t2.nii.gz", "phantom_side_by_side.png"])


def test_demo_cases_are_paired_data_that_prepare_and_evaluate_read(tmp_path, capsys):
    """A researcher's trial needs paired cases in a layout prepare reads; the demo wrote one flat pair beside its own
    synthesis, which prepare refused (a walkthrough, session 44)."""
    from MedSynthLogic.cli import main
    from MedSynthLogic.dataset_prep import find_cases

    assert main(["demo", "--cases", "3", "--out", str(tmp_path / "trial")]) == 0
    assert f"cases: {tmp_path / 'trial' / 'cases'}" in capsys.readouterr().out
    found = find_cases(tmp_path / "trial" / "cases")
    assert [c.case_id for c in found] == ["phantom0", "phantom1", "phantom2"] and all(c.seg is not None for c in found)
    (tmp_path / "trial" / "cases" / "phantom2" / "notes.txt").write_text("mine", encoding="utf-8")
    assert main(["demo", "--cases", "2", "--out", str(tmp_path / "trial")]) == 0  # fewer: the demo's own extra case goes
    assert [c.case_id for c in find_cases(tmp_path / "trial" / "cases", skip_incomplete=True)] == ["phantom0", "phantom1"]
    assert [p.name for p in (tmp_path / "trial" / "cases" / "phantom2").iterdir()] == ["notes.txt"]  # the user's stays
    (tmp_path / "busy" / "cases").mkdir(parents=True)
    (tmp_path / "busy" / "cases" / "phantom0").write_text("a file", encoding="utf-8")
    assert main(["demo", "--cases", "2", "--out", str(tmp_path / "busy")]) == 7  # was a FileExistsError traceback
    assert "phantom0 is a file" in capsys.readouterr().err
    assert main(["demo", "--cases", "1", "--out", str(tmp_path / "one")]) == 2
    assert main(["demo", "--cases", "2", "--stages", "1", "--out", str(tmp_path / "two")]) == 2
    assert "--cases 4, for example" in capsys.readouterr().err and not (tmp_path / "one").exists()
    assert main(["demo", "--cases", "2", "--device", "cpu", "--out", str(tmp_path / "three")]) == 2  # was ignored
    assert "--device do not apply" in capsys.readouterr().err and not (tmp_path / "three").exists()


def test_demo_output_is_ignored_by_git():
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    proc = subprocess.run(["git", "check-ignore", "-q", "medsynth_demo/phantom_synthetic_t2.nii.gz"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, "README's `medsynth demo --out medsynth_demo` output would show up in `git status`"


@pytest.mark.slow
@pytest.mark.skipif(not BUNDLED.is_file(), reason=f"bundled model {BUNDLED} is absent")
def test_demo_with_the_bundled_model(tmp_path):
    out = tmp_path / "demo"
    proc = medsynth("demo", "--out", out, "--device", "cpu")
    assert "phantom_side_by_side.png" in proc.stdout
    _check_demo(out)


# --- the JSON error contract ----------------------------------------------------------------------------------


def test_json_progress_ends_with_one_error_event(ws):
    out = ws.root / "never_written.nii.gz"
    proc = medsynth("synthesize", ws.root / "missing_t1ce.nii.gz", out, "--model", ws.model, "--progress", "json",
                    expect=None)
    assert proc.returncode not in (0, 1)
    events = json_lines(proc.stdout)
    errors = [e for e in events if e["event"] == "error"]
    assert len(errors) == 1 and events[-1] is errors[0]
    assert errors[0]["exit_code"] == proc.returncode
    assert "missing_t1ce" in errors[0]["message"]
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_progress_is_plain_lines_when_stderr_is_a_log(ws):
    """Without a terminal (nohup, a log file) the default progress is plain lines on stderr, not nothing."""
    out = ws.root / "logged_synthetic.nii.gz"
    proc = medsynth("synthesize", ws.t1ce("case1"), out, "--model", ws.model)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("medsynth: synthesize")]
    assert lines and lines[0].startswith("medsynth: synthesize stage 1/2:   0%"), proc.stderr
    assert lines[-1].startswith("medsynth: synthesize stage 2/2: 100%"), proc.stderr
    assert "\r" not in proc.stderr, "a log gets lines, not a redrawn bar"
    assert proc.stdout.strip() == f"wrote {out}"


def test_readme_exit_code_table_lists_every_exit_code():
    import re

    from MedSynthLogic import errors

    codes = {0, 1} | {cls.exit_code for cls in vars(errors).values()
                      if isinstance(cls, type) and issubclass(cls, errors.MedSynthError)}
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("| exit | meaning |"):].split("\n\n")[0]
    assert {int(n) for n in re.findall(r"^\| (\d+) \|", table, flags=re.M)} == codes


def test_json_progress_into_a_closed_pipe_ends_without_a_traceback(ws):
    """`medsynth … --progress json | head -n 1`: the run stops as cancelled (130), quietly, and writes nothing."""
    out, err = ws.root / "piped_synthetic.nii.gz", ws.root / "piped_stderr.txt"
    command = " ".join(f"'{a}'" for a in _medsynth_command() + [
        "synthesize", str(ws.t1ce("case0")), str(out), "--model", str(ws.model), "--tile", "4", "--progress", "json"])
    script = f"{command} 2>'{err}' | head -n 1; echo \"exit=${{PIPESTATUS[0]}}\""
    proc = subprocess.run(["bash", "-c", script], env=_env(), capture_output=True, text=True, timeout=300)
    first, status = proc.stdout.splitlines()
    assert json.loads(first)["event"] == "progress"
    stderr = err.read_text(encoding="utf-8")
    assert status == "exit=130", stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr and "BrokenPipeError" not in stderr, stderr
    assert stderr.strip() == "medsynth: error: Stopped: the program reading the progress output closed the pipe."
    assert not out.exists()


def test_plain_progress_into_a_closed_pipe_ends_without_a_traceback(ws):
    """`medsynth … 2>&1 | head -n 1`: the plain progress lines' reader leaves; the run stops as cancelled (130)."""
    out = ws.root / "piped_plain_synthetic.nii.gz"
    command = " ".join(f"'{a}'" for a in _medsynth_command() + [
        "synthesize", str(ws.t1ce("case0")), str(out), "--model", str(ws.model), "--tile", "4"])
    script = f"{command} 2>&1 | head -n 1; echo \"exit=${{PIPESTATUS[0]}}\""
    proc = subprocess.run(["bash", "-c", script], env=_env(), capture_output=True, text=True, timeout=300)
    first, status = proc.stdout.splitlines()
    assert first.startswith("medsynth: synthesize stage 1/2:   0%")
    assert status == "exit=130" and proc.stderr == ""
    assert not out.exists()


# --- real data ------------------------------------------------------------------------------------------------

BRATS_CASE = "Brats18_TCIA02_370_1"
LOOKUP_FLOOR_DB = 14.0


@pytest.mark.brats
@pytest.mark.slow
@pytest.mark.skipif(not BUNDLED.is_file(), reason=f"bundled model {BUNDLED} is absent")
def test_bundled_model_on_a_real_brats_case(brats_dir, tmp_path):
    from MedSynthLogic.metrics import evaluate_case
    from MedSynthLogic.model_file import read_header

    case = brats_dir / BRATS_CASE
    if not case.is_dir():
        pytest.skip(f"{case} is absent")
    source, target = case / f"{BRATS_CASE}_t1ce.nii.gz", case / f"{BRATS_CASE}_t2.nii.gz"
    out = tmp_path / f"{BRATS_CASE}_synthetic_t2.nii.gz"
    medsynth("synthesize", source, out, "--device", "cpu", "--progress", "none")
    pred = assert_synthetic_t2(out, source)
    scale = read_header(BUNDLED)["model_config"]["normalisation"]["output_scale"]
    scores = evaluate_case(pred, read_array(target), read_array(source) > 0, pred_scale=scale)
    assert scores["psnr"] > LOOKUP_FLOOR_DB, scores


def test_a_stop_file_is_refused_on_a_worker_thread(capsys):
    """Off the main thread no SIGTERM handler can be set, so the file's SIGTERM would end the host (Slicer)."""
    import threading

    from MedSynthLogic import cli

    codes = []
    worker = threading.Thread(target=lambda: codes.append(cli.main(["info", "--stop-file", "never-created"])))
    worker.start()
    worker.join(timeout=60)
    assert codes == [2] and "runs as a process of its own" in capsys.readouterr().err


@pytest.mark.parametrize("argv, hint", [
    (["prepare", "cases", "out"], "Each case is read whole"),
    (["synthesize", "a.nii.gz", "b.nii.gz"], "smaller --tile"),
    (["train", "--data", "d", "--out", "m.safetensors"], "smaller --batch-size"),
])
def test_running_out_of_memory_names_what_that_command_can_change(argv, hint, monkeypatch, capsys):
    """prepare, which has no --tile, was told to use a smaller --tile (a data review, session 42)."""
    from MedSynthLogic import cli

    def out_of_memory(args, report):
        raise MemoryError

    monkeypatch.setitem(cli.HANDLERS, argv[0], out_of_memory)
    assert cli.main(argv) == 8
    err = capsys.readouterr().err
    assert hint in err and ("--tile" in err) == (hint == "smaller --tile")


def test_a_gpu_out_of_memory_in_evaluate_still_suggests_the_cpu(monkeypatch, capsys):
    from MedSynthLogic import cli

    def out_of_gpu_memory(args, report):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setitem(cli.HANDLERS, "evaluate", out_of_gpu_memory)
    assert cli.main(["evaluate", "data", "--out", "report"]) == 8
    assert "Run it with --device cpu" in capsys.readouterr().err


def test_prepare_with_suffixes_no_name_reader_knows_says_which_pair_it_records(tmp_path, phantom, capsys):
    """`--source-suffix mr --target-suffix ct` without a config made a model that called itself T1ce→T2 without a
    word (a review); a suffix the reader knows is refused when it disagrees (source_names.check_pair_suffixes)."""
    from MedSynthLogic import cli
    from MedSynthLogic.volume_io import write_volume

    (tmp_path / "c0").mkdir()
    write_volume(phantom.t1ce, tmp_path / "c0" / "c0_mr.nii.gz")
    write_volume(phantom.t2, tmp_path / "c0" / "c0_ct.nii.gz")
    assert cli.main(["prepare", str(tmp_path), str(tmp_path / "out"), "--source-suffix", "mr", "--target-suffix", "ct",
                     "--val-fraction", "0", "--patches-per-case", "2", "--progress", "plain"]) == 0
    err = capsys.readouterr().err
    assert "the source files (suffix 'mr') are recorded as the default config's source, T1ce" in err
    assert "the target files (suffix 'ct') are recorded as the default config's target, T2" in err


def test_an_unreadable_source_is_refused_before_torch_loads(tmp_path):
    """The source is read before the model: a missing or broken file took 3 s of torch import to be refused."""
    (tmp_path / "broken.nii.gz").write_bytes(b"not an image")
    for source, code in (("missing.nii.gz", 3), ("broken.nii.gz", 3)):
        probe = ("import sys; from MedSynthLogic.cli import main; "
                 f"rc = main(['synthesize', {str(tmp_path / source)!r}, {str(tmp_path / 'out.nii.gz')!r}, "
                 "'--progress', 'none']); print(rc, 'torch' in sys.modules)")
        done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.stdout.split() == [str(code), "False"], done.stdout + done.stderr


def test_the_demos_score_is_evaluates_for_a_model_of_another_target_percentile(tmp_path, tiny_model_config):
    """The demo scored every model at the 99.5th percentile; evaluate scores at the model's own (review 53)."""
    import dataclasses

    from MedSynthLogic.config import IntensityConfig
    from MedSynthLogic.demo import run_demo
    from MedSynthLogic.metrics import evaluate_case
    from MedSynthLogic.model_file import save_model
    from MedSynthLogic.phantom import make_phantom
    from MedSynthLogic.volume_io import read_volume
    from _models import random_chain

    norm = dataclasses.replace(tiny_model_config.normalisation, target=IntensityConfig(percentile=90.0, clip_max=1.0))
    cfg = dataclasses.replace(tiny_model_config, normalisation=norm, stages=1)
    model = save_model(tmp_path / "p90.safetensors", random_chain(cfg), cfg)
    events = []
    paths = run_demo(tmp_path / "demo", str(model), device="cpu", progress=events.append)
    phantom = make_phantom()
    expected = evaluate_case(read_volume(paths["synthetic_t2"]).array, phantom.t2.array, phantom.mask, phantom.labels,
                             percentile=90.0, pred_scale=norm.output_scale)
    shown = [e for e in events if e["event"] == "metrics"][0]["metrics"]
    assert shown["psnr"] == pytest.approx(expected["psnr"], abs=1e-6)
