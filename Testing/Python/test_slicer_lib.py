"""MedSynth/MedSynthLib, the Slicer module's Qt-free helpers: the panel's logic with a fake job runner against the
real MRML of ``slicer-core``, the events → panel updates, the model description against MODEL_CARD.md, the time
estimate, the sample data, the installer's pure parts, and the argument lists parsed by the real ``medsynth`` parser.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "MedSynth"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

from MedSynthLib import dependencies, estimate, model_info, sample_data  # noqa: E402
from MedSynthLib import synthesis as synthesis_module  # noqa: E402
from MedSynthLib.events import describe_event  # noqa: E402
from MedSynthLib.synthesis import (  # noqa: E402
    OTHER_MODEL, SYNTHETIC_OF, SynthesisRequest, chosen_model_path, findings_message, model_choices, notes_message,
    synthesize_arguments,
)
from MedSynthLib.training_jobs import (  # noqa: E402
    GENERATOR_KINDS, PrepareRequest, TrainingRequest, apply_recipe, prepare_arguments, prepare_request, recipe_settings,
    training_configs, training_request,
)
from MedSynthLogic import jobs  # noqa: E402
from MedSynthLogic import mrml as mrml_module  # noqa: E402
from MedSynthLogic.cli import build_parser  # noqa: E402
from MedSynthLogic.config import ModelConfig, TrainConfig, load_json_config  # noqa: E402
from MedSynthLogic.model_file import bundled_model_path, read_header  # noqa: E402
from MedSynthLogic.train_options import train_argument_list  # noqa: E402


# ---------------------------------------------------------------------------------------------------------- fakes
class FakeJob:
    """Replays scripted events; ``on_finish`` runs before the exit event (e.g. writes the child's output)."""

    def __init__(self, args, events, state=jobs.FINISHED, on_finish=None, error=None):
        self.args, self.events, self.final_state, self.on_finish = list(args), list(events), state, on_finish
        self.running, self.state, self.elapsed_s, self.error_message = True, jobs.RUNNING, 12.0, error
        self.cancelled_with = None
        self.last_error = next((event for event in reversed(self.events) if event.get("event") == "error"), None)

    def poll(self) -> List[Dict[str, Any]]:
        if not self.running:
            return []
        if self.on_finish:
            self.on_finish(self.args)
        self.running, self.state = False, self.final_state
        return self.events + [{"event": "exit", "returncode": 0, "state": self.final_state}]

    def cancel(self, timeout: float = 5.0) -> None:
        self.cancelled_with, self.final_state = timeout, jobs.CANCELLED


class FakeRunner:
    def __init__(self, **job_kwargs):
        self.job_kwargs, self.jobs = job_kwargs, []

    def __call__(self, args):
        self.jobs.append(FakeJob(args, **self.job_kwargs))
        return self.jobs[-1]


@pytest.fixture()
def slicer_mod():
    return pytest.importorskip("slicer", reason="slicer-core (pip install slicer-core) is needed for MRML tests")


@pytest.fixture()
def scene(slicer_mod):
    return slicer_mod.vtkMRMLScene()


@pytest.fixture()
def phantom_node(scene, tmp_path, phantom):
    from MedSynthLogic import mrml
    from MedSynthLogic.volume_io import write_volume

    path = write_volume(phantom.t1ce, tmp_path / "phantom_t1ce.nii.gz")
    return mrml.load_volume_file(scene, path)


def _controller(scene, runner, tmp_path, checker=None):
    from MedSynthLib.controller import MedSynthController

    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return MedSynthController(scene, runner=runner, temp_root=str(work), input_checker=checker or no_findings)


def no_findings(volume, model_config, mask=None):
    return []


def _write_output_like_input(args):
    """What a real ``medsynth synthesize SOURCE OUTPUT`` leaves behind: a volume on the source's grid."""
    from MedSynthLogic.volume_io import read_volume, write_volume

    source = read_volume(args[1])
    write_volume(source.with_array(source.array * 0.5), args[2])


# ---------------------------------------------------------------------------------------------------------- events
def test_events_become_panel_updates():
    """Events as the core's constructors (``MedSynthLogic.progress``) build them."""
    from MedSynthLogic import progress as ev

    update = describe_event(ev.progress_event("synthesize", 3, 10, stage=1, stages=3, fraction=0.5))
    assert (update.percent, update.status) == (50, "Synthesizing: stage 2 of 3")
    update = describe_event(ev.progress_event("prepare", 1, 4, case="c1"))
    assert update.percent == 25 and update.status == "Preparing data: 1 of 4 cases (c1)"
    update = describe_event(ev.iteration_event(0, 50, 200, {"g": 0.1234567}, lr_g=1e-4, eta_s=120))
    assert update.percent == 25 and "iteration 50/200" in update.status and "0.1235" in update.status
    assert "2 min left" in update.status
    # a 3-stage run's bar spans the run: it restarted at 0 for every stage
    update = describe_event(ev.iteration_event(1, 50, 200, {"g": 0.1}, lr_g=1e-4, stages=3))
    assert update.percent == 42 and update.status.startswith("Training stage 2 of 3, iteration 50/200")
    assert "PSNR 17.1 dB" in describe_event(ev.validation_event(0, 200, 0.02, psnr=17.1, ssim=0.5)).log
    assert describe_event(ev.stage_event(1, 3, "end")).log == "Auto-context stage 2 of 3: end"
    assert describe_event(ev.log_event("stderr", "hello")).log == "hello"
    assert describe_event(ev.warning_event("synthesize", "GPU full")).status == "Warning: GPU full"
    assert describe_event(ev.error_event("bad", 3, hint="fix")).log == "Error: bad fix"
    assert describe_event(ev.checkpoint_event("/x/run/ckpt_s00.pt", 0, 10)).log == "Checkpoint saved: ckpt_s00.pt"
    assert describe_event(ev.metrics_event({"psnr": 15.08})).log == "Metrics: psnr 15.08"
    assert describe_event(ev.done_event("out.nii.gz")).percent == 100
    assert describe_event({"event": "unknown"}) == describe_event({})


# ---------------------------------------------------------------------------------------------------------- estimate
def test_estimate_reproduces_the_benchmark_and_learns_this_computer():
    book = estimate.RateBook(cpu_bf16=False)
    brats = (155, 240, 240)
    cpu = book.estimate(brats, 4, 1, "cpu")  # the default model on the AVX2 CPU: 50.8 s (avx2_real_synthesize.txt)
    assert cpu.seconds == pytest.approx(50.8)
    assert book.estimate(brats, 4, 2, "cpu").seconds == pytest.approx(estimate.STARTUP_SECONDS + 2 * (50.8 - 4.0))
    assert book.estimate(brats, 3, 1, "cpu").seconds == pytest.approx(42.2, abs=4.0)  # the paper's FCN there
    assert book.estimate(brats, 3, 1, "cuda").seconds == pytest.approx(estimate.STARTUP_SECONDS + 0.2)
    assert "GPU" in book.estimate(brats, 3, 1, "auto").basis
    assert "about 51 s" in cpu.text() and "float32" in cpu.basis
    book.record("cpu", brats, 3, 1, elapsed_s=estimate.STARTUP_SECONDS + 47.4)
    again = book.estimate(brats, 3, 1, "cpu")
    assert again.seconds == pytest.approx(estimate.STARTUP_SECONDS + 47.4) and "measured on this computer" in again.basis
    assert "min" in book.estimate((400, 512, 512), 3, 1, "cpu").text()


def test_estimate_on_a_cpu_with_native_bf16_uses_the_bf16_benchmark():
    """Synthesis runs in bf16 there (``--precision auto``), about 4x faster than the float32 rate says."""
    brats, default_stages = (155, 240, 240), 4
    bf16 = estimate.RateBook(cpu_bf16=True).estimate(brats, default_stages, 1, "cpu")
    fp32 = estimate.RateBook(cpu_bf16=False).estimate(brats, default_stages, 1, "cpu")
    assert bf16.seconds == pytest.approx(8.6) and "bf16" in bf16.basis
    assert fp32.seconds == pytest.approx(50.8) and "bf16" not in fp32.basis
    gpu = estimate.RateBook(cpu_bf16=True).estimate(brats, 3, 1, "cuda")
    assert gpu.seconds == pytest.approx(estimate.STARTUP_SECONDS + 0.2) and "H100" in gpu.basis
    auto = estimate.RateBook(cpu_bf16=True).estimate(brats, default_stages, 1, "auto")
    assert auto.seconds == bf16.seconds and "GPU" in auto.basis


def test_estimate_counts_the_stages_of_a_prior_model_too(scene, phantom_node, tmp_path):
    """A model on a prior runs the prior's stages first: a 1-stage U-Net on a 3-stage FCN costs four stages."""
    from MedSynthLogic.config import GeneratorConfig
    from MedSynthLogic.model_file import save_model
    from MedSynthLogic.models import build_generators

    prior = ModelConfig(generator=GeneratorConfig(filters=(4, 1), kernels=(3, 1), dilations=(1, 1)), stages=3,
                        source_patch=6)
    refiner = ModelConfig(generator=GeneratorConfig(kind="unet3d", unet_channels=(2, 4), residual_from="context"),
                          normalisation=prior.normalisation, stages=1, source_patch=8, prior=prior)
    path = save_model(tmp_path / "on_prior.safetensors", build_generators(refiner), refiner)
    controller = _controller(scene, FakeRunner(events=[]), tmp_path)
    shape = tuple(reversed(phantom_node.GetImageData().GetDimensions()))
    expected = controller.rates.estimate(shape, 4, 1, "cpu").seconds
    assert controller.estimate(phantom_node, SynthesisRequest(model_path=path, device="cpu")).seconds == expected
    alone = save_model(tmp_path / "fcn.safetensors", build_generators(prior), prior)
    assert controller.estimate(phantom_node, SynthesisRequest(model_path=alone, device="cpu")).seconds == (
        controller.rates.estimate(shape, 3, 1, "cpu").seconds)
    # the map costs the mirrored pass and the chain without its last stage, as MedSynthLogic.uncertainty runs them
    with_map = controller.estimate(phantom_node, SynthesisRequest(model_path=path, device="cpu", uncertainty=True))
    assert with_map.seconds == controller.rates.estimate(shape, 4, 1 + 1 + 3 / 4, "cpu").seconds


def test_estimate_counts_the_voxels_the_networks_see_after_resampling(scene, phantom_node, tmp_path):
    """A 0.5 mm node is synthesized resampled to the model's 1 mm: an eighth of its voxels, which the estimate counts
    (it counted all of them, eight times the work)."""
    controller = _controller(scene, FakeRunner(events=[]), tmp_path)
    shape = tuple(reversed(phantom_node.GetImageData().GetDimensions()))
    at_1mm = controller.estimate(phantom_node, SynthesisRequest(device="cpu")).seconds
    assert at_1mm == controller.rates.estimate(shape, 4, 1, "cpu").seconds
    phantom_node.SetSpacing(0.5, 0.5, 0.5)
    halved = tuple(max(1, round(n / 2)) for n in shape)
    assert controller.estimate(phantom_node, SynthesisRequest(device="cpu")).seconds == (
        controller.rates.estimate(halved, 4, 1, "cpu").seconds)
    phantom_node.SetSpacing(0.95, 1.0, 1.0)
    assert controller.estimate(phantom_node, SynthesisRequest(device="cpu")).seconds == at_1mm



def test_a_finished_synthesis_teaches_the_rate_of_the_voxels_the_networks_saw(scene, phantom_node, tmp_path):
    """The rate book learned from the node's own size while the estimate counted the resampled one: after one 0.5 mm
    synthesis every later estimate ran eight times too short. Now the next estimate for the same node is the time
    that synthesis took."""
    runner = FakeRunner(events=[], on_finish=_write_output_like_input)
    controller = _controller(scene, runner, tmp_path)
    phantom_node.SetSpacing(0.5, 0.5, 0.5)
    request = SynthesisRequest(device="cpu", force=True)
    controller.start_synthesis(phantom_node, request)
    _, outcome = controller.poll()
    assert outcome.state == jobs.FINISHED and "cpu" in controller.rates.measured
    assert controller.estimate(phantom_node, request).seconds == pytest.approx(runner.jobs[0].elapsed_s)

# ---------------------------------------------------------------------------------------------------------- model description
def _model_card_bundled_row() -> List[str]:
    for line in (REPO / "MODEL_CARD.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("| **bundled model"):  # the one bold bundled row: what Slicer and the CLI use
            return [cell.strip() for cell in line.strip("|").split("|")]
    raise AssertionError("MODEL_CARD.md has no bundled-model row")


def test_bundled_model_description_matches_the_model_card():
    text = model_info.describe_model_file(None)
    row = _model_card_bundled_row()
    psnr, ssim, mae = row[1], row[2], row[3]
    assert f"PSNR {psnr} dB" in text and f"SSIM {ssim}" in text and f"MAE {mae}" in text, (text, row)
    assert f'<a href="{model_info.MODEL_CARD_URL}">' in text
    header = read_header(bundled_model_path())
    assert f"{len(header['training']['data']['train_cases'])} training cases" in text
    without_link = text.replace(model_info.MODEL_CARD_URL, "")
    assert "shared" not in without_link and "/" not in re.sub(r"</?\w+>", "", without_link)
    assert "not for diagnosis" in text
    assert "Uncertainty map: its expected error per voxel" in text, "the default holds a learned error map"


def test_model_description_hides_paths_and_labels_training_metrics():
    header = {"stages": 2, "model_config": {"source_name": "T1", "target_name": "CT"},
              "training": {"data": {"dataset": "my data /home/me/secret (copied from C:\\cases)", "train_cases": ["a"]}},
              "metrics": {"psnr": 21.234}}
    text = model_info.describe_model(header, "mine.safetensors")
    assert "/home" not in text and "C:" not in text and "my data" in text and "1 training cases" in text
    assert "T1 → CT" in text and "Validation during training only" in text and "21.23 dB" in text
    assert "No model information" in model_info.describe_model_file(Path("/nonexistent/model.safetensors"))
    assert "on top of" not in text and "Uncertainty map" not in text
    header["model_config"]["prior"] = {"stages": 3}
    assert "2 auto-context stage(s) on top of a frozen 3-stage model" in model_info.describe_model(header, "m")


def test_a_model_header_of_an_unexpected_form_gives_a_line_not_a_crash(tmp_path, monkeypatch):
    """The description is set from a Qt timer slot after Train: an odd header must not raise there."""
    odd = {"stages": 1, "training": {"stages_trained": [{"stages": 0, "iterations_per_stage": 5}, "x"],
                                     "data": ["not", "a", "mapping"]}}
    monkeypatch.setattr("MedSynthLogic.model_header.read_header", lambda path: odd)
    text = model_info.describe_model_file(tmp_path / "odd.safetensors")
    assert text == "No model information: the header of odd.safetensors has an unexpected form."
    odd["training"]["data"] = {}
    assert "Training: stage 0: 5 iterations each." in model_info.describe_model_file(tmp_path / "odd.safetensors")


def test_the_model_description_says_when_its_error_map_learned_from_validation_cases():
    header = {"model_config": {"source_name": "T1ce", "target_name": "T2"}, "stages": 1, "training": {}, "metrics": {},
              "error_map": {"fitted_on": {"cases": ["c0", "c1"], "validation_cases": ["c0"]}}}
    assert "fitted on 2 cases, 1 of them its validation cases" in model_info.describe_model(header, "m.safetensors")
    del header["error_map"]["fitted_on"]["validation_cases"]
    assert "fitted on its training cases" in model_info.describe_model(header, "m.safetensors")


def test_model_list_offers_every_shipped_model_default_first_then_another_file(tmp_path):
    """The panel's model list: when another kind becomes the default, the paper's FCN file stays one click away."""
    from MedSynthLogic.bundled_models import DEFAULT_NAME, bundled_model_files

    # a hidden .….tmp.safetensors is what a write killed half-way leaves (atomic_path): no model to offer
    for name in ("zz_nie2018_fcn.safetensors", DEFAULT_NAME, "aa_unet.safetensors", "notes.txt",
                 ".aa_unet.safetensors.i1aas45k.tmp.safetensors"):
        (tmp_path / name).write_bytes(b"")
    assert [f.name for f in bundled_model_files(tmp_path)] == [DEFAULT_NAME, "aa_unet.safetensors", "zz_nie2018_fcn.safetensors"]
    assert bundled_model_files(tmp_path / "missing") == []
    choices = model_choices()
    assert choices[0] == DEFAULT_NAME and choices[-1] == OTHER_MODEL
    assert chosen_model_path(choices[0], tmp_path / "ignored.safetensors") is None  # the default: bundled_model_path()
    assert chosen_model_path("zz_nie2018_fcn.safetensors", None).name == "zz_nie2018_fcn.safetensors"
    assert chosen_model_path(OTHER_MODEL, Path(".")) is None  # the wrapper's empty path: the default model
    mine = tmp_path / "mine.safetensors"
    args = synthesize_arguments("in.nii.gz", "out.nii.gz", SynthesisRequest(model_path=chosen_model_path(OTHER_MODEL, mine)))
    assert args[args.index("--model") + 1] == str(mine)


# ---------------------------------------------------------------------------------------------------------- argument lists
def test_train_argument_list_runs_exactly_the_configs(tmp_path):
    model_cfg, train_cfg = training_configs(SimpleNamespace(
        generatorKind="nie2018", residual=False, lambdaAdv=0.02, lambdaL2=1.5, lambdaGdl=0.5, trainStages=2,
        iterations=7, batchSize=4, lrG=1e-3, lrD=2e-4, trainPrecision="bf16"))
    args = train_argument_list(model_cfg, train_cfg, tmp_path / "data dir", tmp_path / "m.safetensors",
                               tmp_path / "cfg", run_dir=tmp_path / "run", device="cpu", resume=True)
    parsed = build_parser().parse_args(args)
    assert parsed.command == "train" and parsed.resume and parsed.device == "cpu" and parsed.progress == "json"
    assert Path(parsed.data) == tmp_path / "data dir" and Path(parsed.run_dir) == tmp_path / "run"
    assert load_json_config(parsed.model_config, ModelConfig) == model_cfg
    assert load_json_config(parsed.train_config, TrainConfig) == train_cfg
    assert model_cfg.generator.residual is False and model_cfg.loss.lambda_l2 == 1.5 and model_cfg.stages == 2
    assert (train_cfg.iterations, train_cfg.batch_size, train_cfg.precision, train_cfg.stages) == (7, 4, "bf16", 2)


def test_train_argument_list_passes_a_prior_models_file(tmp_path):
    from MedSynthLogic.config import GeneratorConfig
    from MedSynthLogic.errors import UsageError
    from MedSynthLogic.model_file import save_model
    from MedSynthLogic.models import build_generators
    from MedSynthLogic.training.command import configs_from_args

    prior = tmp_path / "fcn.safetensors"
    save_model(prior, build_generators(ModelConfig(stages=1)), ModelConfig(stages=1))
    refiner = ModelConfig(generator=GeneratorConfig(kind="unet3d", residual_from="context"), source_patch=96,
                          prior=ModelConfig(stages=1))
    with pytest.raises(UsageError, match="prior"):
        train_argument_list(refiner, TrainConfig(), tmp_path / "d", tmp_path / "m.safetensors", tmp_path / "cfg")
    args = train_argument_list(refiner, TrainConfig(), tmp_path / "d", tmp_path / "m.safetensors", tmp_path / "cfg",
                               prior_model=prior)
    assert args[args.index("--prior-model") + 1] == str(prior)
    assert configs_from_args(build_parser().parse_args(args))[0] == refiner


def test_the_refiner_recipe_trains_on_the_bundled_fcn_from_the_panel(tmp_path):
    """The panel's unet3d_refiner request passes the bundled FCN as the prior, and its arguments give the trainer the
    recipe's configs with that FCN as their prior."""
    from MedSynthLogic.bundled_models import PAPER_FCN_NAME, models_dir
    from MedSynthLogic.recipes import recipe
    from MedSynthLogic.training.command import configs_from_args

    fcn = models_dir() / PAPER_FCN_NAME
    settings = SimpleNamespace(generatorKind="unet3d_refiner", trainPrecision="auto", dataDir=tmp_path / "d",
                               outputModelPath=tmp_path / "m.safetensors", runDir=tmp_path / "run", trainDevice="cpu",
                               **recipe_settings("unet3d_refiner"))
    request = training_request(settings, resume=True)
    assert request.prior_model == fcn and request.resume and request.run_dir == tmp_path / "run"
    model_cfg, train_cfg = configs_from_args(build_parser().parse_args(request.arguments(tmp_path / "cfg")))
    assert model_cfg.prior is not None and model_cfg.prior.generator.kind == "nie2018"
    assert dataclasses.replace(model_cfg, prior=None) == recipe("unet3d_refiner").model
    assert train_cfg == recipe("unet3d_refiner").train
    settings.generatorKind = "unet3d"
    assert training_request(settings).prior_model is None


@pytest.mark.parametrize("kind", ["nie2018", "unet3d", "unet3d_refiner"])
def test_a_generator_kinds_panel_values_train_its_recipe(kind):
    """Picking a kind fills the panel with its recipe's values; unchanged, they give back exactly the recipe's configs
    (what the panel does not show, such as the U-Net's crops and normalisation, is the recipe's too)."""
    from MedSynthLogic.recipes import recipe

    settings = SimpleNamespace(generatorKind=kind, trainPrecision="auto")
    apply_recipe(settings, kind)
    assert training_configs(settings) == (recipe(kind).model, recipe(kind).train)
    assert recipe_settings("unet3d")["batchSize"] == 1 and recipe_settings("nie2018")["batchSize"] == 32


def test_panel_prepares_the_data_its_generator_kind_trains_on(tmp_path):
    """``train`` refuses data stored for another patch size or normalisation, so 'Prepare data' must store the cases
    as the chosen kind trains on them: the panel's unet3d preparation passes the unet3d run's data check."""
    from MedSynthLogic.cli import main
    from MedSynthLogic.errors import DataError
    from MedSynthLogic.training.plan import plan_training
    from MedSynthLogic.demo import write_paired_cases

    write_paired_cases(tmp_path / "cases", ("a", "b"), shape=(96, 104, 96))  # a 96³ crop fits
    settings = SimpleNamespace(generatorKind="unet3d", trainPrecision="auto", casesDir=tmp_path / "cases",
                               dataDir=tmp_path / "unet3d", **recipe_settings("unet3d"))
    model_cfg, train_cfg = training_configs(settings)
    papers = PrepareRequest(tmp_path / "cases", tmp_path / "paper", patches_per_case=1)
    for kind, request in (("unet3d", prepare_request(settings)), ("paper", papers)):
        args = prepare_arguments(request, tmp_path / f"{kind}_config")
        assert main(args[:-2] + ["--progress", "none"]) == 0
    assert plan_training(tmp_path / "unet3d", model_cfg, train_cfg).source_patch == 96
    with pytest.raises(DataError, match="prepare"):
        plan_training(tmp_path / "paper", model_cfg, train_cfg)


def test_prepare_and_synthesize_arguments_parse(tmp_path):
    parsed = build_parser().parse_args(prepare_arguments(PrepareRequest(tmp_path / "cases", tmp_path / "data", 50),
                                                         tmp_path / "config"))
    assert (parsed.command, parsed.patches_per_case, parsed.progress) == ("prepare", 50, "json")
    assert load_json_config(parsed.config, ModelConfig) == ModelConfig()
    request = SynthesisRequest(model_path=tmp_path / "m.safetensors", stages=2, device="cpu", flip_tta=True, force=True)
    args = synthesize_arguments(tmp_path / "in put.nii.gz", tmp_path / "out.nii.gz", request)
    assert args[-1] == "--force" and "--flip-tta" in args and args[args.index("--stages") + 1] == "2"
    known = build_parser().parse_known_args(args)[1]
    assert set(known) <= {"--force"}, known  # --force is the input checks' override (issue 13), added to the CLI there
    assert "--force" not in synthesize_arguments("a", "b", SynthesisRequest())


# ---------------------------------------------------------------------------------------------------------- controller
def test_input_check_blocks_before_anything_starts(scene, phantom_node, tmp_path):
    seen = []

    def checker(volume, model_config, mask=None):
        seen.append((volume.shape, model_config.source_name))
        return [SimpleNamespace(code="sequence", message="looks like a T2, not a T1ce")]

    runner = FakeRunner(events=[])
    controller = _controller(scene, runner, tmp_path, checker)
    plan = controller.plan_synthesis(phantom_node, SynthesisRequest())
    assert plan.blocked and "looks like a T2" in plan.message and "Force" in plan.message and not runner.jobs
    assert seen == [(tuple(reversed(phantom_node.GetImageData().GetDimensions())), "T1ce")]
    forced = controller.plan_synthesis(phantom_node, SynthesisRequest(force=True))
    assert not forced.blocked and "anyway" in forced.message and forced.estimate.seconds > estimate.STARTUP_SECONDS
    phantom_node.SetName("case_t2")  # a name note as well: the one dialog asks once
    forced = controller.plan_synthesis(phantom_node, SynthesisRequest(force=True))
    assert forced.notes and forced.message.count("Synthesize it anyway?") == 1 and forced.needs_confirmation
    assert forced.message.endswith("Synthesize it anyway? The result is unreliable.")
    assert not _controller(scene, runner, tmp_path).plan_synthesis(phantom_node, SynthesisRequest()).findings
    assert findings_message([SimpleNamespace(code="x", message="m")], force=False).count("- m") == 1
    both = notes_message(["named T2"], other=["the field of view cuts the brain"])
    assert both.index("may not be the sequence") < both.index("- named T2") < both.index("Before it is synthesized")
    assert both.endswith("if it is the wrong one.)")
    cut = notes_message([], other=["the field of view cuts the brain"])  # a review: filed under the sequence heading
    assert "sequence" not in cut and "pick" not in cut and cut.endswith("Synthesize it anyway?")


def test_real_input_check_refuses_the_phantoms_t2_before_launching(scene, tmp_path):
    """With the core's ``input_checks.check_source``: the phantom's T1ce passes, its T2 is refused (Force: warned)."""
    checks = pytest.importorskip("MedSynthLogic.input_checks")
    from MedSynthLib.controller import MedSynthController

    t1ce, t2 = sample_data.load_phantom_pair(scene, tmp_path / "cache")
    runner = FakeRunner(events=[])
    controller = MedSynthController(scene, runner=runner, temp_root=str(tmp_path), input_checker=checks.check_source)
    assert not controller.plan_synthesis(t1ce, SynthesisRequest()).findings
    plan = controller.plan_synthesis(t2, SynthesisRequest())
    assert plan.blocked and [f.code for f in plan.findings] == ["sequence"] and "T2-weighted" in plan.message
    assert not controller.plan_synthesis(t2, SynthesisRequest(force=True)).blocked and not runner.jobs


def test_a_node_named_as_another_sequence_asks_before_launching_and_never_blocks(scene, tmp_path):
    """The node's name is a hint for a T1 picked instead of the T1ce (the sequence check passes both)."""
    checks = pytest.importorskip("MedSynthLogic.input_checks")
    from MedSynthLib.controller import MedSynthController

    t1ce, t2 = sample_data.load_phantom_pair(scene, tmp_path / "cache")
    runner = FakeRunner(events=[])
    controller = MedSynthController(scene, runner=runner, temp_root=str(tmp_path), input_checker=checks.check_source)
    sample = controller.plan_synthesis(t1ce, SynthesisRequest())
    assert not sample.notes and not sample.needs_confirmation and sample.message == ""
    t1ce.SetName("7: Sag T1 pre")
    plan = controller.plan_synthesis(t1ce, SynthesisRequest())
    assert not plan.blocked and plan.needs_confirmation and not plan.findings and len(plan.notes) == 1
    assert "'7: Sag T1 pre' says a T1 without contrast" in plan.message and "Synthesize it anyway?" in plan.message
    t2.SetName("AX T2")
    refused = controller.plan_synthesis(t2, SynthesisRequest())
    assert refused.blocked and not refused.needs_confirmation and "names a T2" in refused.message
    assert "Synthesize it anyway?" not in refused.message and not runner.jobs


def test_a_t1ce_node_without_enhancement_asks_before_launching_and_never_blocks(scene, tmp_path):
    """A source meant as the T1ce without any sign of contrast agent: a note from its intensities, whatever its
    name, shown and asked about before the job starts."""
    import numpy as np

    checks = pytest.importorskip("MedSynthLogic.input_checks")
    from MedSynthLib.controller import MedSynthController
    from MedSynthLogic import mrml

    t1ce, _ = sample_data.load_phantom_pair(scene, tmp_path / "cache")
    volume = mrml.volume_from_node(t1ce)
    flat = volume.with_array(np.minimum(volume.array, np.float32(1.2 * np.median(volume.array[volume.array > 0]))))
    node = mrml.node_from_volume(scene, flat, "AX T1 POST GAD", reference=t1ce)
    controller = MedSynthController(scene, runner=FakeRunner(events=[]), temp_root=str(tmp_path),
                                    input_checker=checks.check_source)
    plan = controller.plan_synthesis(node, SynthesisRequest())
    assert not plan.blocked and plan.needs_confirmation and not plan.findings and len(plan.notes) == 1
    assert "no sign of contrast enhancement" in plan.message and "Synthesize it anyway?" in plan.message


def test_another_pairs_model_names_its_result_and_its_messages_by_its_pair(scene, phantom_node, tmp_path,
                                                                          tiny_model_config):
    """A T1→FLAIR model's result is "<input> synthetic FLAIR", and a refusal asks for its T1, not a T1ce."""
    import dataclasses

    from MedSynthLogic.model_file import save_model
    from _models import random_chain

    cfg = dataclasses.replace(tiny_model_config, stages=1, source_name="T1", target_name="FLAIR")
    model = save_model(tmp_path / "t1_flair.safetensors", random_chain(cfg), cfg)
    refused = findings_message([SimpleNamespace(code="sequence", message="m")], force=False, source_name="T1")
    assert "If it is not the T1 volume" in refused and "the sequence the model expects" in refused  # its hint
    spacing = findings_message([SimpleNamespace(code="spacing", message="its voxel size 1.6 mm is not …"),
                                SimpleNamespace(code="skull_stripped", message="…")], force=False)
    assert "Resample Scalar Volume" in spacing and "SwissSkullStripper" in spacing and "--mask" in spacing  # a review:
    assert max(spacing.index("Resample"), spacing.index("Skull-strip")) < spacing.index("Force")  # only "pick the T1ce"
    runner = FakeRunner(events=[], on_finish=_write_output_like_input)
    controller = _controller(scene, runner, tmp_path)
    controller.start_synthesis(phantom_node, SynthesisRequest(model_path=model, device="cpu"))
    _, outcome = controller.poll()
    assert outcome.state == jobs.FINISHED and outcome.result.GetName() == f"{phantom_node.GetName()} synthetic FLAIR"


def test_synthesis_job_loads_the_result_side_by_side(scene, phantom_node, tmp_path):
    from MedSynthLogic import mrml

    runner = FakeRunner(events=[{"event": "progress", "task": "synthesize", "stage": 0, "stages": 3, "fraction": 0.3},
                                {"event": "log", "stream": "stderr", "line": "a message"}],
                        on_finish=_write_output_like_input)
    controller = _controller(scene, runner, tmp_path)
    controller.start_synthesis(phantom_node, SynthesisRequest(device="cpu", force=True))
    assert controller.busy and controller.kind == "synthesize"
    with pytest.raises(RuntimeError, match="running"):
        controller.start_prepare(PrepareRequest(tmp_path, tmp_path))
    args = runner.jobs[0].args
    assert args[0] == "synthesize" and "--force" in args and Path(args[1]).is_file()
    updates, outcome = controller.poll()
    assert [u.percent for u in updates][0] == 30 and updates[1].log == "a message"
    assert outcome.state == jobs.FINISHED and outcome.kind == "synthesize"
    node = outcome.result
    assert node.GetName() == f"{phantom_node.GetName()} synthetic T2"
    np.testing.assert_array_equal(mrml.node_ijk_to_ras(node), mrml.node_ijk_to_ras(phantom_node))
    assert mrml.slice_composite_node(scene, "Yellow").GetBackgroundVolumeID() == node.GetID()
    assert not Path(args[1]).parent.exists(), "the temporary folder must be removed"
    assert "cpu" in controller.rates.measured and not controller.busy and controller.poll() == ([], None)


def test_the_overlay_legend_says_what_the_map_holds(tmp_path, tiny_model_config):
    """A model file with a learned error map gives an expected error (with all its stages), any other a disagreement."""
    error_map = pytest.importorskip("MedSynthLogic.error_map")

    from MedSynthLib.synthesis import uncertainty_title
    from MedSynthLogic.model_file import save_model, with_error_map
    from _models import random_chain

    plain = save_model(tmp_path / "plain.safetensors", random_chain(tiny_model_config), tiny_model_config)
    rows = np.random.default_rng(0).normal(size=(500, len(error_map.FEATURES))).astype(np.float32)
    mapped = with_error_map(plain, tmp_path / "mapped.safetensors", error_map.fit_error_map(rows, np.abs(rows[:, 0]), epochs=1))
    with_map, without = read_header(mapped), read_header(plain)
    assert uncertainty_title(SynthesisRequest(model_path=mapped), with_map).startswith("Expected |error|")
    assert uncertainty_title(SynthesisRequest(model_path=mapped, stages=2), with_map).startswith("Expected |error|")
    assert "disagreement" in uncertainty_title(SynthesisRequest(model_path=mapped, stages=1), with_map)
    assert "disagreement" in uncertainty_title(SynthesisRequest(model_path=plain), without)
    assert "disagreement" in uncertainty_title(SynthesisRequest(), {})


def test_uncertainty_map_is_overlaid_on_the_result(scene, phantom_node, tmp_path):
    from MedSynthLogic import mrml
    from MedSynthLogic.volume_io import read_volume, write_volume

    def write_both(args):
        _write_output_like_input(args)
        source = read_volume(args[1])
        write_volume(source.with_array((source.array > 0) * 7.0), args[args.index("--uncertainty") + 1])

    runner = FakeRunner(events=[], on_finish=write_both)
    controller = _controller(scene, runner, tmp_path)
    request = SynthesisRequest(uncertainty=True)
    assert controller.estimate(phantom_node, request).seconds > controller.estimate(
        phantom_node, SynthesisRequest(flip_tta=True)).seconds  # the mirrored pass and the chain before its last stage
    controller.start_synthesis(phantom_node, request)
    outcome = controller.poll()[1]
    assert outcome.state == jobs.FINISHED, outcome.message
    foreground = scene.GetNodeByID(mrml.slice_composite_node(scene, "Yellow").GetForegroundVolumeID())
    assert foreground.GetName() == f"{outcome.result.GetName()} uncertainty"
    assert "--uncertainty" not in synthesize_arguments("a", "b", SynthesisRequest(), "u.nii.gz")


def test_a_map_that_cannot_be_shown_keeps_the_synthetic_image_as_the_result(scene, phantom_node, tmp_path):
    """The image was already in the scene when the map failed: the outcome said "failed", the panel never took the
    node as its output, and the next Synthesize made a second "synthetic T2_1" beside the orphan (a review)."""
    from MedSynthLogic import mrml
    from MedSynthLogic.volume import Volume
    from MedSynthLogic.volume_io import read_volume, write_volume

    def write_both(args):
        _write_output_like_input(args)
        source = read_volume(args[1])
        write_volume(Volume(np.ones((5, 6, 7), np.float32), source.spacing, source.origin, source.direction),
                     args[args.index("--uncertainty") + 1])  # another grid: the overlay refuses it

    controller = _controller(scene, FakeRunner(events=[], on_finish=write_both), tmp_path)
    controller.start_synthesis(phantom_node, SynthesisRequest(uncertainty=True))
    outcome = controller.poll()[1]
    assert outcome.state == jobs.FINISHED and outcome.result is not None and outcome.result.GetScene() is scene
    assert "uncertainty map could not be shown" in outcome.message and "shape (5, 6, 7)" in outcome.message
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 2  # the input and the result, no map
    assert not mrml.slice_composite_node(scene, "Yellow").GetForegroundVolumeID()


def test_a_start_that_fails_before_the_child_leaves_no_temporary_folder(scene, phantom_node, tmp_path, monkeypatch):
    from MedSynthLogic import mrml

    runner = FakeRunner(events=[])
    controller = _controller(scene, runner, tmp_path)
    from MedSynthLogic.errors import InputImageError

    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InputImageError, match="has no image data"):
        controller.start_synthesis(empty, SynthesisRequest())

    def full_disk(node, path, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mrml, "save_volume_node", full_disk)
    with pytest.raises(OSError, match="No space left"):
        controller.start_synthesis(phantom_node, SynthesisRequest())
    assert not runner.jobs and not list((tmp_path / "work").glob("MedSynth-*"))


def test_errors_the_panel_can_act_on_get_its_own_advice_instead_of_command_line_options(scene, tmp_path):
    from MedSynthLib.events import error_text
    from MedSynthLogic.errors import REASONS, OutputError

    exists = OutputError("The output folder /d already holds train.h5.", "Pass --overwrite to replace them.",
                         reason="output_exists")
    event = {"event": "error", "message": str(exists), "problem": exists.message, "reason": exists.reason,
             "type": "OutputError"}
    assert describe_event(event, "prepare").log == ("Error: The output folder /d already holds train.h5. Choose "
                                                    "another prepared data folder, or move the files out of this one.")
    assert "output model file" in error_text(event, "train")
    stopped = {"event": "error", "message": "Training stopped at stage 1, iteration 18; its checkpoint is in /r. Run "
               "the same command with --resume to go on.", "problem": "Training stopped at stage 1, iteration 18; "
               "its checkpoint is in /r.", "reason": "stopped", "type": "Cancelled"}
    assert describe_event(stopped, "train").log == ("Training stopped at stage 1, iteration 18; its checkpoint is in "
                                                    "/r. Press Resume to go on from it.")
    for reason in sorted(REASONS):  # every reason the core can name has the panel's words, none with an option
        advice = error_text({"event": "error", "problem": "P.", "reason": reason, "message": "P. --x"}, "train")
        assert advice.startswith("P. ") and "--" not in advice, reason
    assert error_text({"event": "error", "message": "Odd.", "hint": "Do this."}) == "Odd. Do this."
    assert describe_event({"event": "log", "line": "medsynth: error: Synthesis cancelled."}).log is None  # said once
    assert describe_event({"event": "log", "line": "loading model"}).log == "loading model"
    with pytest.raises(ValueError, match="unknown error reason"):
        OutputError("x", reason="no_such_reason")
    runner = FakeRunner(events=[event], state=jobs.FAILED, error=str(exists))
    controller = _controller(scene, runner, tmp_path)
    controller.start_prepare(PrepareRequest(tmp_path / "cases", tmp_path / "d", 4, 0.2, ModelConfig()))
    outcome = controller.poll()[1]
    assert outcome.state == jobs.FAILED and outcome.message.endswith("move the files out of this one.")


def test_failed_and_cancelled_jobs_clean_up(scene, phantom_node, tmp_path):
    runner = FakeRunner(events=[{"event": "error", "message": "bad input"}], state=jobs.FAILED, error="bad input")
    controller = _controller(scene, runner, tmp_path)
    controller.start_synthesis(phantom_node, SynthesisRequest())
    updates, outcome = controller.poll()
    assert updates[0].log == "Error: bad input" and outcome.state == jobs.FAILED and outcome.message == "bad input"
    assert not Path(runner.jobs[0].args[1]).parent.exists()
    controller.start_synthesis(phantom_node, SynthesisRequest())
    controller.cancel(timeout=3)
    assert runner.jobs[1].cancelled_with == 3
    assert controller.poll()[1].state == jobs.CANCELLED and scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 1


def test_an_unreadable_event_or_result_does_not_leave_the_panel_busy(scene, phantom_node, tmp_path, monkeypatch):
    """An event the panel could not read raised out of poll() before the exit event of the same batch, which a job
    reports only once: every button stayed disabled until Slicer restarted. Now it is a log line, and an unexpected
    error while loading a result is a failed outcome."""
    bad = {"event": "iteration", "iterations": "x", "iteration": 1}
    controller = _controller(scene, FakeRunner(events=[bad]), tmp_path)
    controller.start_prepare(PrepareRequest(tmp_path / "cases", tmp_path / "data", 10))
    updates, outcome = controller.poll()
    assert outcome is not None and outcome.state == jobs.FINISHED and not controller.busy
    assert any("Could not read a progress event" in (u.log or "") for u in updates)

    def broken(*args, **kwargs):
        raise ValueError("no such node")

    monkeypatch.setattr(synthesis_module, "store_result", broken)
    controller = _controller(scene, FakeRunner(events=[], on_finish=_write_output_like_input), tmp_path)
    controller.start_synthesis(phantom_node, SynthesisRequest(device="cpu", force=True))
    _, outcome = controller.poll()
    assert outcome.state == jobs.FAILED and "no such node" in outcome.message and not controller.busy


def test_the_output_never_replaces_the_input_another_image_or_another_patients_synthesis(
        scene, phantom_node, tmp_path, phantom):
    """The panel keeps the last result as its output: the next patient's synthesis goes into a new volume, and
    neither the input, a scan loaded from a file, nor an image made in the session may be written over."""
    from MedSynthLogic import mrml
    from MedSynthLogic.volume_io import write_volume

    runner = FakeRunner(events=[], on_finish=_write_output_like_input)
    controller = _controller(scene, runner, tmp_path)
    with pytest.raises(ValueError, match="is the input volume"):
        controller.start_synthesis(phantom_node, SynthesisRequest(), phantom_node)
    write_volume(phantom.t2, tmp_path / "case_t2.nii.gz")
    acquired = mrml.load_volume_file(scene, tmp_path / "case_t2.nii.gz")
    with pytest.raises(ValueError, match="loaded from"):
        controller.start_synthesis(phantom_node, SynthesisRequest(), acquired)
    registered = mrml.node_from_volume(scene, mrml.volume_from_node(acquired), "case t2 registered")  # no file
    with pytest.raises(ValueError, match="'case t2 registered' holds an image that MedSynth did not make"):
        controller.start_synthesis(phantom_node, SynthesisRequest(), registered)
    assert not runner.jobs
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "new volume")
    controller.start_synthesis(phantom_node, SynthesisRequest(), empty)
    assert controller.poll()[1].result is empty and empty.GetImageData() is not None
    controller.start_synthesis(phantom_node, SynthesisRequest())
    first = controller.poll()[1].result
    controller.start_synthesis(phantom_node, SynthesisRequest(), first)  # the same input again: same node, same name
    assert controller.poll()[1].result is first and first.GetName() == f"{phantom_node.GetName()} synthetic T2"
    other = mrml.node_from_volume(scene, mrml.volume_from_node(phantom_node), "patient B t1ce", reference=phantom_node)
    kept = mrml.volume_from_node(first).array.copy()
    controller.start_synthesis(other, SynthesisRequest(), first)
    second = controller.poll()[1].result
    assert second is not first and second.GetName() == "patient B t1ce synthetic T2"
    assert first.GetName() == f"{phantom_node.GetName()} synthetic T2" and first.GetAttribute(SYNTHETIC_OF) == phantom_node.GetID()
    np.testing.assert_array_equal(mrml.volume_from_node(first).array, kept)


def test_a_synthesis_that_would_replace_an_earlier_one_of_the_same_input_asks_first(scene, phantom_node, tmp_path):
    """The panel makes each result its output, so pressing Synthesize again (other stages, flip averaging) replaced
    the first image and its uncertainty map without a word (a review); the plan now carries the question. Another
    input's synthesis, an empty volume or none are not asked about: nothing of theirs is replaced."""
    from MedSynthLogic import mrml

    controller = _controller(scene, FakeRunner(events=[], on_finish=_write_output_like_input), tmp_path)
    assert controller.plan_synthesis(phantom_node, SynthesisRequest()).replaces == ""
    controller.start_synthesis(phantom_node, SynthesisRequest())
    first = controller.poll()[1].result
    plan = controller.plan_synthesis(phantom_node, SynthesisRequest(), first)
    assert plan.replaces.startswith(f"The output volume '{first.GetName()}' holds an earlier synthesis of "
                                    f"'{phantom_node.GetName()}'") and "Create new volume" in plan.replaces
    assert "saved as" not in plan.replaces
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")  # as File › Save leaves it
    storage.SetFileName(str(tmp_path / "kept_t2.nii.gz"))
    first.SetAndObserveStorageNodeID(storage.GetID())
    assert "kept_t2.nii.gz: saving the scene" in controller.plan_synthesis(phantom_node, SynthesisRequest(), first).replaces
    other = mrml.node_from_volume(scene, mrml.volume_from_node(phantom_node), "patient B t1ce", reference=phantom_node)
    assert controller.plan_synthesis(other, SynthesisRequest(), first).replaces == ""  # store_result makes a new node
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "new volume")
    assert controller.plan_synthesis(phantom_node, SynthesisRequest(), empty).replaces == ""


def test_a_new_synthesis_removes_the_uncertainty_map_of_the_old_one(scene, phantom_node, tmp_path):
    from MedSynthLogic import mrml
    from MedSynthLogic.volume_io import read_volume, write_volume

    def write_both(args):
        _write_output_like_input(args)
        if "--uncertainty" in args:
            source = read_volume(args[1])
            write_volume(source.with_array((source.array > 0) * 7.0), args[args.index("--uncertainty") + 1])

    controller = _controller(scene, FakeRunner(events=[], on_finish=write_both), tmp_path)
    controller.start_synthesis(phantom_node, SynthesisRequest(uncertainty=True))
    result = controller.poll()[1].result
    volumes = scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
    maps = [m for m in (volumes.GetItemAsObject(i) for i in range(volumes.GetNumberOfItems()))
            if m.GetAttribute(mrml.UNCERTAINTY_OF) == result.GetID()]
    assert len(maps) == 1
    controller.start_synthesis(phantom_node, SynthesisRequest(), result)
    assert controller.poll()[1].result is result
    assert scene.GetNodeByID(maps[0].GetID()) is None and scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 2
    assert not mrml.slice_composite_node(scene, "Yellow").GetForegroundVolumeID()


def test_a_closing_scene_discards_the_running_synthesis_and_its_input_copy(scene, phantom_node, tmp_path):
    runner = FakeRunner(events=[], on_finish=_write_output_like_input)
    controller = _controller(scene, runner, tmp_path)
    controller.start_synthesis(phantom_node, SynthesisRequest())
    work = Path(runner.jobs[0].args[1]).parent
    assert controller.discard(kinds=("synthesize",)) is True
    assert runner.jobs[0].cancelled_with == 5.0 and not work.exists() and not controller.busy
    assert controller.poll() == ([], None) and scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 1
    assert controller.discard() is False


def test_a_scene_close_stops_the_synthesis_without_freezing_the_panel(scene, phantom_node, tmp_path):
    """Closing the scene waited in the GUI thread for the child's grace time (up to 5 s and the readers' 4 s)."""
    import threading
    import time

    release = threading.Event()
    runner = FakeRunner(events=[])
    controller = _controller(scene, runner, tmp_path)
    controller.start_synthesis(phantom_node, SynthesisRequest())
    job, work = runner.jobs[0], Path(runner.jobs[0].args[1]).parent
    job.cancel = lambda timeout=5.0: (release.wait(10), setattr(job, "cancelled_with", timeout))
    t0 = time.monotonic()
    assert controller.discard(kinds=("synthesize",), background=True) is True
    assert time.monotonic() - t0 < 1.0 and not controller.busy and work.exists()  # its input copy stays until it stops
    release.set()
    deadline = time.monotonic() + 10
    while work.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert job.cancelled_with == 5.0 and not work.exists()


def test_stopping_a_training_does_not_wait_in_the_panel_and_too_many_stages_are_refused(scene, phantom_node, tmp_path):
    import time

    runner = FakeRunner(events=[])
    controller = _controller(scene, runner, tmp_path)
    with pytest.raises(ValueError, match="auto-context stage"):
        controller.plan_synthesis(phantom_node, SynthesisRequest(stages=9))
    controller.start_synthesis(phantom_node, SynthesisRequest())
    controller.cancel(timeout=30, background=True)
    deadline = time.monotonic() + 5
    while runner.jobs[0].cancelled_with is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert runner.jobs[0].cancelled_with == 30 and controller.poll()[1].state == jobs.CANCELLED


def test_quitting_during_a_training_gives_it_time_to_checkpoint(scene, tmp_path):
    """At quit the panel discards its job: a training got 5 s and then a kill, losing its work since the last
    checkpoint (a U-Net iteration alone can take longer); it gets as long as Stop gives it (a review)."""
    from MedSynthLib.controller import MedSynthController

    runner = FakeRunner(events=[])
    controller = _controller(scene, runner, tmp_path)
    controller.start_training(TrainingRequest(ModelConfig(stages=1), TrainConfig(stages=1, iterations=20),
                                              tmp_path / "data", tmp_path / "m.safetensors", tmp_path / "run",
                                              device="cpu"))
    assert controller.stop_wait_s() == MedSynthController.TRAINING_STOP_WAIT_S
    assert controller.discard() is True and runner.jobs[0].cancelled_with == MedSynthController.TRAINING_STOP_WAIT_S


def test_training_job_feeds_the_loss_plot(scene, tmp_path):
    events = [{"event": "iteration", "stage": 0, "iteration": i, "iterations": 20, "losses": {"g": 1.0 / i, "d": 0.5}}
              for i in (10, 20)] + [{"event": "validation", "stage": 0, "iteration": 20, "psnr": 15.0, "ssim": 0.4}]
    runner = FakeRunner(events=events)
    controller = _controller(scene, runner, tmp_path)
    plot = controller.start_training(TrainingRequest(ModelConfig(stages=1), TrainConfig(stages=1, iterations=20),
                                                     tmp_path / "data", tmp_path / "m.safetensors", tmp_path / "run",
                                                     device="cpu"))
    config = Path(runner.jobs[0].args[runner.jobs[0].args.index("--model-config") + 1])
    assert config.is_file() and controller.kind == "train"
    updates, outcome = controller.poll()
    assert plot.number_of_rows == 2 and plot.value(1, "val_psnr") == 15.0
    assert updates[1].percent == 100 and "PSNR 15" in updates[2].log
    assert outcome.result == tmp_path / "m.safetensors" and not config.exists()


def test_a_training_that_fails_before_its_first_loss_leaves_no_empty_chart(scene, tmp_path):
    failure = {"event": "error", "message": "A CUDA GPU was requested but none is available.", "type": "ResourceError"}
    request = TrainingRequest(ModelConfig(stages=1), TrainConfig(stages=1, iterations=20), tmp_path / "data",
                              tmp_path / "m.safetensors", tmp_path / "run", device="cuda")
    controller = _controller(scene, FakeRunner(events=[failure], state=jobs.FAILED), tmp_path)
    for _attempt in range(2):
        controller.start_training(request)
        assert scene.GetNumberOfNodesByClass("vtkMRMLPlotChartNode") == 1
        assert controller.poll()[1].state == jobs.FAILED
    for kind in ("vtkMRMLPlotChartNode", "vtkMRMLPlotSeriesNode", "vtkMRMLTableNode"):
        assert scene.GetNumberOfNodesByClass(kind) == 0, kind

    def no_process(args):
        raise OSError("cannot start")

    with pytest.raises(OSError):
        _controller(scene, no_process, tmp_path).start_training(request)
    assert scene.GetNumberOfNodesByClass("vtkMRMLPlotChartNode") == 0


def test_the_panel_evaluates_what_it_trained_on_the_cases_set_aside(scene, tmp_path):
    """Evaluate: the output model file on the prepared data's validation cases, progress per case, and the report's
    notes and mean figures at the end; the hint says what evaluation still needs once training has what it needs."""
    from MedSynthLib.panel_state import button_states
    from MedSynthLib.training_jobs import evaluation_request

    trained = _settings(dataDir=tmp_path / "data", runDir=tmp_path / "run", outputModelPath=tmp_path / "m.safetensors")
    assert button_states(trained, None).hint == ("To prepare data, choose the folder of cases. To evaluate the trained "
                                                 "model, choose the evaluation report folder.")
    trained.evalDir, trained.trainDevice = tmp_path / "report", "cpu"
    assert button_states(trained, None).enabled["evaluateButton"]
    request = evaluation_request(trained)
    parsed = build_parser().parse_args(request.arguments())
    assert (parsed.command, parsed.manifest, parsed.model, parsed.out, parsed.device, parsed.progress) == (
        "evaluate", str(tmp_path / "data" / "manifest.json"), str(tmp_path / "m.safetensors"), str(tmp_path / "report"),
        "cpu", "json")
    report = {"summary": {"psnr": {"mean": 19.2912, "std": 0.5, "n": 3}, "ssim": {"mean": 0.6161, "n": 3},
                          "psnr_tumour": {"mean": 16.5, "n": 2}},
              "notes": ["Not held out: c1 (among the predictor's own training or fitting cases)."]}

    def write_report(args):
        out = Path(args[args.index("--out") + 1])
        out.mkdir()
        (out / "metrics.json").write_text(json.dumps(report), encoding="utf-8")

    events = [{"event": "progress", "task": "evaluate", "done": 0, "total": 2, "fraction": 0.25, "case": "c1"}]
    controller = _controller(scene, FakeRunner(events=events, on_finish=write_report), tmp_path)
    controller.start_evaluation(request)
    updates, outcome = controller.poll()
    assert [(u.percent, u.status) for u in updates] == [(25, "Evaluating: 0 of 2 cases done (c1)")]
    assert outcome.state == jobs.FINISHED and outcome.result == report
    assert outcome.message.splitlines()[:2] == [
        "Not held out: c1 (among the predictor's own training or fitting cases).",
        "Mean over the validation cases, inside the brain: PSNR 19.29 dB (n=3), SSIM 0.616 (n=3), tumour PSNR 16.50 dB (n=2)"]
    assert str(tmp_path / "report") in outcome.message.splitlines()[2]
    controller = _controller(scene, FakeRunner(events=[]), tmp_path)  # a child that wrote no report
    controller.start_evaluation(dataclasses.replace(request, report_dir=tmp_path / "unwritten"))
    assert controller.poll()[1].state == jobs.FAILED
    with pytest.raises(ValueError, match="relative"):
        evaluation_request(_settings(dataDir=Path("data"), outputModelPath=tmp_path / "m", evalDir=tmp_path / "r"))


def test_a_stopped_panel_evaluation_says_what_it_kept_and_evaluate_goes_on_from_it(scene, tmp_path):
    """Stop keeps the report of the cases scored (the CLI writes it); the panel says so, and the next Evaluate
    passes --resume, so the cases already scored are not synthesized again."""
    from MedSynthLib.training_jobs import evaluation_request

    settings = _settings(dataDir=tmp_path / "data", runDir=tmp_path / "run", outputModelPath=tmp_path / "m.safetensors",
                         evalDir=tmp_path / "report")
    assert "--resume" not in evaluation_request(settings).arguments()

    def stopped_report(args):
        out = Path(args[args.index("--out") + 1])
        out.mkdir(exist_ok=True)
        (out / "metrics.json").write_text(json.dumps({"stopped": {"after": 1, "of": 3}}), encoding="utf-8")

    for state, first_line in ((jobs.CANCELLED, "Cancelled."), (jobs.FAILED, "The process failed.")):
        controller = _controller(scene, FakeRunner(events=[], state=state, on_finish=stopped_report), tmp_path)
        controller.start_evaluation(evaluation_request(settings))
        outcome = controller.poll()[1]
        assert outcome.state == state and outcome.message.startswith(first_line)
        assert f"The report of the 1 of 3 cases scored is in {tmp_path / 'report'}" in outcome.message
    parsed = build_parser().parse_args(evaluation_request(settings).arguments())
    assert parsed.resume and parsed.out == str(tmp_path / "report")
    refused = {"event": "error", "message": "The stopped evaluation ran with other settings. Resume with …",
               "problem": "The stopped evaluation ran with other settings.", "exit_code": 2,
               "reason": "evaluation_changed"}  # e.g. the output model was trained again since: no going on from it
    controller = _controller(scene, FakeRunner(events=[refused], state=jobs.FAILED), tmp_path)
    controller.start_evaluation(evaluation_request(settings))
    outcome = controller.poll()[1]
    assert "choose another evaluation report folder" in outcome.message and "goes on from it" not in outcome.message


def test_prepare_job_reports_cases(scene, tmp_path):
    events = [{"event": "progress", "task": "prepare", "done": d, "total": 2, "case": f"c{d}"} for d in (1, 2)]
    runner = FakeRunner(events=events)
    controller = _controller(scene, runner, tmp_path)
    controller.start_prepare(PrepareRequest(tmp_path / "cases", tmp_path / "data", 10))
    updates, outcome = controller.poll()
    assert [u.status for u in updates] == ["Preparing data: 1 of 2 cases (c1)", "Preparing data: 2 of 2 cases (c2)"]
    assert outcome.kind == "prepare" and outcome.result == tmp_path / "data"


def test_real_child_process_synthesizes_into_the_scene(scene, tmp_path, slicer_mod, monkeypatch):
    """The default runner: a real ``python -m MedSynthLogic.cli synthesize --force --uncertainty`` child, its JSON
    events, the result and the uncertainty overlay in the scene, and the rate it measured.

    A run shorter than the assumed start-up time rightly measures no rate, and this tiny one can be (CI failed on a
    quiet machine): with no start-up assumed, any run records one, so the check does not depend on the machine's speed.
    """
    pytest.importorskip("torch")
    from MedSynthLib import estimate
    from MedSynthLib.controller import MedSynthController, start_cli_job
    from MedSynthLogic import mrml
    from MedSynthLogic.phantom import make_phantom
    from MedSynthLogic.volume_io import write_volume

    monkeypatch.setattr(estimate, "STARTUP_SECONDS", 0.0)
    source = mrml.load_volume_file(scene, write_volume(make_phantom(shape=(40, 48, 40)).t1ce, tmp_path / "p.nii.gz"))
    controller = MedSynthController(scene, runner=start_cli_job, temp_root=str(tmp_path), input_checker=no_findings)
    cli_has_force = not build_parser().parse_known_args(["synthesize", "a", "b", "--force"])[1]
    request = SynthesisRequest(device="cpu", stages=1, force=cli_has_force, uncertainty=True)  # any default has 1
    controller.start_synthesis(source, request)
    updates, outcome = _run_to_end(controller)
    assert outcome.state == jobs.FINISHED, outcome.message
    assert any(u.percent is not None for u in updates)
    assert outcome.result.GetImageData().GetDimensions() == source.GetImageData().GetDimensions()
    overlay = scene.GetNodeByID(mrml.slice_composite_node(scene, "Yellow").GetForegroundVolumeID())
    assert overlay.GetName() == f"{outcome.result.GetName()} uncertainty"
    assert "cpu" in controller.rates.measured


def _run_to_end(controller, timeout: float = 300.0):
    updates, outcome = [], None
    controller.current.job.wait(timeout=timeout)
    for _ in range(200):
        new, outcome = controller.poll()
        updates += new
        if outcome is not None:
            return updates, outcome
        controller.current.job.wait(timeout=0.1)
    raise AssertionError(f"no outcome; updates: {updates}")


def test_real_child_process_prepares_a_case_folder(scene, tmp_path):
    """``medsynth prepare`` from the panel's arguments, in a real child, reporting each case."""
    pytest.importorskip("h5py")
    from MedSynthLogic.phantom import make_phantom
    from MedSynthLogic.volume_io import write_volume

    from MedSynthLib.controller import MedSynthController, start_cli_job

    for seed, case in enumerate(("case_a", "case_b")):
        phantom = make_phantom(shape=(40, 48, 40), seed=seed)
        (tmp_path / "cases" / case).mkdir(parents=True)
        write_volume(phantom.t1ce, tmp_path / "cases" / case / f"{case}_t1ce.nii.gz")
        write_volume(phantom.t2, tmp_path / "cases" / case / f"{case}_t2.nii.gz")
    controller = MedSynthController(scene, runner=start_cli_job, temp_root=str(tmp_path), input_checker=no_findings)
    controller.start_prepare(PrepareRequest(tmp_path / "cases", tmp_path / "data", patches_per_case=8, val_fraction=0.5))
    updates, outcome = _run_to_end(controller)
    assert outcome.state == jobs.FINISHED, outcome.message
    assert outcome.result == tmp_path / "data" and (tmp_path / "data" / "manifest.json").is_file()
    assert any(u.status and u.status.startswith("Preparing data: 2 of 2 cases") for u in updates), updates


def test_the_child_runs_in_the_packages_folder_and_relative_paths_are_refused(tmp_path, monkeypatch):
    """The child inherited Slicer's working folder, first on its module path under ``python -m`` (a ``torch`` folder
    there would shadow the real one); a relative output path then landed wherever that was."""
    from MedSynthLib.controller import start_cli_job

    monkeypatch.chdir(tmp_path)
    (tmp_path / "MedSynthLogic").mkdir()
    (tmp_path / "MedSynthLogic" / "__init__.py").write_text("raise ImportError('the shadowing copy')\n")
    job = start_cli_job(["--help"])
    assert job.wait(timeout=60) == 0, job.stderr_tail()
    assert job.cwd == jobs.PACKAGE_PARENT
    settings = SimpleNamespace(**{**recipe_settings(GENERATOR_KINDS[0]), "generatorKind": GENERATOR_KINDS[0],
                                  "trainPrecision": "auto", "trainDevice": "cpu", "casesDir": Path("cases"),
                                  "dataDir": tmp_path / "data", "runDir": tmp_path / "run",
                                  "outputModelPath": Path("models/t2.safetensors")})
    with pytest.raises(ValueError, match="full path of the output model file"):
        training_request(settings)
    with pytest.raises(ValueError, match="full path of the folder of cases"):
        prepare_request(settings)
    typed = SimpleNamespace(model=OTHER_MODEL, modelPath=Path("my_model.safetensors"), stages=0, device="cpu",
                            flipTTA=False, force=False, uncertainty=False)
    with pytest.raises(ValueError, match="full path of the model file"):  # read here from one folder, there another
        SynthesisRequest.from_settings(typed)


# ---------------------------------------------------------------------------------------------------------- sample data
def test_phantom_sample_is_generated_once_and_loads(scene, tmp_path):
    paths = sample_data.write_phantom_pair(tmp_path / "cache")
    assert [p.name for p in paths] == list(sample_data.FILES.values()) and all(p.is_file() for p in paths)
    stamps = [p.stat().st_mtime_ns for p in paths]
    t1ce, t2 = sample_data.load_phantom_pair(scene, tmp_path / "cache")
    assert [p.stat().st_mtime_ns for p in paths] == stamps, "cached files are reused, not regenerated"
    assert (t1ce.GetName(), t2.GetName()) == tuple(sample_data.FILES)
    assert t1ce.GetImageData().GetDimensions() == (96, 112, 96)[::-1]
    # the files are named after the generator's source: an upgraded phantom is never read from an old cache
    import hashlib

    from MedSynthLogic import phantom

    tag = hashlib.sha256(Path(phantom.__file__).read_bytes()).hexdigest()[:8]
    assert all(name == f"{node}".replace("_t", f"_{tag}_t") + ".nii.gz" for node, name in sample_data.FILES.items())


def test_phantom_is_registered_with_sample_data(tmp_path):
    class FakeSampleDataLogic:
        registered: List[Dict[str, Any]] = []
        loaded: List[Any] = []

        @staticmethod
        def registerCustomSampleDataSource(**kwargs):
            FakeSampleDataLogic.registered.append(kwargs)

        def downloadFromSource(self, source):
            FakeSampleDataLogic.loaded.append(source)
            return ["nodes"]

    sample_data.register_phantom_sample(FakeSampleDataLogic, tmp_path / "cache", "icon.png")
    (kwargs,) = FakeSampleDataLogic.registered
    # SampleData.downloadSample reads the URIs without the customDownloader: the files must be there already
    assert all(Path(uri[len("file://"):]).is_file() for uri in kwargs["uris"])
    # no file type: Slicer 5.6 knows only loadFileType (a TypeError then), >= 5.8 reads it from the file name
    assert "loadFileTypes" not in kwargs and "loadFileType" not in kwargs
    assert kwargs["category"] == "MedSynth" and kwargs["sampleName"] == "MedSynthPhantom"
    assert kwargs["fileNames"] == list(sample_data.FILES.values()) and kwargs["nodeNames"] == list(sample_data.FILES)
    assert all(uri.startswith("file://") and uri.endswith(name) for uri, name in zip(kwargs["uris"], kwargs["fileNames"]))
    source = SimpleNamespace(sampleName="MedSynthPhantom")
    assert kwargs["customDownloader"](source) == ["nodes"] and FakeSampleDataLogic.loaded == [source]
    assert all((tmp_path / "cache" / name).is_file() for name in kwargs["fileNames"])

    class ListingSampleDataLogic(FakeSampleDataLogic):  # as Slicer's: it lists what was registered
        @staticmethod
        def sampleDataSourcesByCategory(category):
            return [SimpleNamespace(sampleName=k["sampleName"]) for k in FakeSampleDataLogic.registered
                    if k["category"] == category]

    for _ in range(2):  # a second registration (Reload and Test, the self-test) listed the sample twice
        sample_data.register_phantom_sample(ListingSampleDataLogic, tmp_path / "cache", "icon.png")
    assert sample_data.registered_names(ListingSampleDataLogic) == ["MedSynthPhantom"]


def test_a_scripted_phantom_sample_loads_after_the_download_cache_was_cleared(slicer_mod, tmp_path, monkeypatch):
    """``SampleData.downloadSample`` copies a source's URIs into the download cache where a file is missing there,
    as Slicer's ``downloadFile`` does (imitated here); the URIs named the cache's own files, so after Settings → Cache
    → Clear cache a script's ``downloadSample("MedSynthPhantom")`` failed until Slicer restarted."""
    import urllib.request

    cache = tmp_path / "SlicerIO"
    cache_manager = SimpleNamespace(GetRemoteCacheDirectory=lambda: str(cache))
    monkeypatch.setattr(slicer_mod, "app", SimpleNamespace(temporaryPath=str(tmp_path / "Slicer-user")), raising=False)
    monkeypatch.setattr(slicer_mod, "mrmlScene", SimpleNamespace(GetCacheManager=lambda: cache_manager), raising=False)

    class CopyingSampleDataLogic:
        registered: List[Dict[str, Any]] = []

        @staticmethod
        def registerCustomSampleDataSource(**kwargs):
            CopyingSampleDataLogic.registered.append(kwargs)

        def downloadFromSource(self, source):
            folder = Path(slicer_mod.mrmlScene.GetCacheManager().GetRemoteCacheDirectory())
            folder.mkdir(exist_ok=True)
            for uri, name in zip(source.uris, source.fileNames):
                if not (folder / name).exists():
                    urllib.request.urlretrieve(uri, folder / name)
            return [(folder / name).read_bytes() for name in source.fileNames]

    monkeypatch.setitem(sys.modules, "SampleData", SimpleNamespace(SampleDataLogic=CopyingSampleDataLogic))
    sample_data.register_in_slicer(None, environ={})
    (kwargs,) = CopyingSampleDataLogic.registered
    source = SimpleNamespace(**kwargs)
    first = CopyingSampleDataLogic().downloadFromSource(source)
    assert sorted(path.name for path in cache.iterdir()) == sorted(kwargs["fileNames"])
    shutil.rmtree(cache)  # Clear cache: the whole folder goes
    assert CopyingSampleDataLogic().downloadFromSource(source) == first
    shutil.rmtree(tmp_path / "Slicer-user")  # the temporary folder gone too: the button generates the files again
    shutil.rmtree(cache)
    assert kwargs["customDownloader"](source) == first


def test_a_users_case_folder_becomes_a_sample(tmp_path, phantom):
    from MedSynthLogic.volume_io import write_volume

    case = tmp_path / "Brats18_X_1"
    case.mkdir()
    assert sample_data.case_source_arguments(case) is None
    write_volume(phantom.t1ce, case / "Brats18_X_1_t1ce.nii.gz")
    write_volume(phantom.t2, case / "Brats18_X_1_t2.nii.gz")
    (case / "Brats18_X_1_flair.nii.gz").write_bytes(b"not used")
    kwargs = sample_data.case_source_arguments(case)
    assert kwargs["sampleName"] == "Brats18_X_1" and kwargs["nodeNames"] == ["Brats18_X_1_t1ce", "Brats18_X_1_t2"]
    assert [Path(uri[len("file://"):]).name for uri in kwargs["uris"]] == kwargs["fileNames"]


# ---------------------------------------------------------------------------------------------------------- installer
def test_installer_finds_missing_packages_and_pins_slicers_own(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("numpy>=1  # shipped\nscikit-image\nsurely-not-installed-medsynth-pkg==1.0\n\n")
    missing = dependencies.missing_requirements(requirements)
    assert "surely-not-installed-medsynth-pkg==1.0" in missing and not any(m.startswith("numpy") for m in missing)
    pins = dependencies.protected_constraints_file(tmp_path).read_text().split()
    assert any(pin.startswith("numpy==") for pin in pins) and any(pin.startswith("scipy==") for pin in pins)
    assert dependencies.requirements_path(MODULE_DIR) == REPO / "Resources" / "requirements.txt"


SYNTHESIS_WITHOUT = """
import importlib.abc, sys
class Unimportable(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in sys.argv[1].split(","):
            raise ImportError("not installed: " + name)
sys.meta_path.insert(0, Unimportable())
from MedSynthLogic.cli import main
from MedSynthLogic.metrics import normalise_for_metrics, psnr, scale_prediction
from MedSynthLogic.volume_read import read_volume
code = main(["synthesize", sys.argv[2], sys.argv[3], "--uncertainty", sys.argv[4], "--progress", "none"])
reference = read_volume(sys.argv[5]).array
brain = reference > 0
print("exit", code, psnr(scale_prediction(read_volume(sys.argv[3]).array, brain, 1000.0),
                         normalise_for_metrics(reference, brain), brain))
"""


def test_a_synthesis_needs_only_torch_and_the_synthesis_requirements(phantom, tmp_path):
    """The panel's Synthesize installs torch and ``SYNTHESIS_REQUIREMENTS`` only (a clinician's first click
    installed the HDF5, SSIM, plotting and progress-bar packages too), and the self-test skips only without those: a
    synthesis with its input checks and error map, and the self-test's PSNR, must run with the others unimportable."""
    import subprocess

    from MedSynthLogic.volume_write import write_volume

    requirements = dependencies.requirements_path(MODULE_DIR)
    lines = dependencies.requirement_lines(requirements)
    synthesis = dependencies.requirement_lines(requirements, dependencies.SYNTHESIS_REQUIREMENTS)
    assert synthesis == ["safetensors>=0.4"] and len(lines) > len(synthesis)
    others = [dependencies.IMPORT_NAMES.get(n, n.replace("-", "_")) for n in map(dependencies.package_name, lines)
              if n not in dependencies.SYNTHESIS_REQUIREMENTS]
    assert "skimage" in others and "h5py" in others
    write_volume(phantom.t1ce, tmp_path / "t1ce.nii.gz")
    write_volume(phantom.t2, tmp_path / "t2.nii.gz")
    paths = [str(tmp_path / name) for name in ("t1ce.nii.gz", "synthetic.nii.gz", "error.nii.gz", "t2.nii.gz")]
    run = subprocess.run([sys.executable, "-c", SYNTHESIS_WITHOUT, ",".join(others), *paths], capture_output=True,
                         text=True, timeout=600, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    last = run.stdout.splitlines()[-1].split() if run.stdout.strip() else []
    assert run.returncode == 0 and last[:2] == ["exit", "0"], run.stderr[-3000:]
    assert float(last[2]) > 10.0  # the phantom's synthesis is a T2, not an empty or failed image
    assert not dependencies.missing_packages(requirements, dependencies.SYNTHESIS_REQUIREMENTS)


def test_synthesize_asks_pip_for_the_synthesis_requirements_only(slicer_mod, tmp_path, monkeypatch):
    """Slicer ≥ 5.12's ``pip_ensure`` gets the synthesis lines for Synthesize and every line for training; before
    5.12 ``pip_install`` only the missing ones of those (a comment after a line no longer reaches pip)."""
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("h5py>=3.7  # HDF5\nsafetensors>=0.4\nsurely-not-installed-medsynth-pkg==1.0\n")
    monkeypatch.setattr(dependencies, "ensure_torch", lambda ask_confirmation=True: True)
    asked = []
    packaging = SimpleNamespace(pip_ensure=lambda reqs, **kwargs: asked.append(list(reqs)))
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    monkeypatch.setattr(slicer_mod, "packaging", packaging, raising=False)
    assert dependencies.ensure_dependencies(requirements, tmp_path, False, dependencies.SYNTHESIS_REQUIREMENTS)
    assert dependencies.ensure_dependencies(requirements, tmp_path, False)
    assert asked == [["safetensors>=0.4"], ["h5py>=3.7", "safetensors>=0.4", "surely-not-installed-medsynth-pkg==1.0"]]
    monkeypatch.setitem(sys.modules, "slicer.packaging", SimpleNamespace())
    monkeypatch.setattr(slicer_mod, "packaging", SimpleNamespace(), raising=False)
    installed = []
    monkeypatch.setattr(slicer_mod.util, "pip_install", lambda args: installed.append(args[2:]), raising=False)
    assert dependencies.ensure_dependencies(requirements, tmp_path, False, ("safetensors", "h5py"))
    assert dependencies.ensure_dependencies(requirements, tmp_path, False)
    assert installed == [["surely-not-installed-medsynth-pkg==1.0"]]


def test_a_failed_install_says_what_failed_and_a_declined_one_is_no_error(slicer_mod, tmp_path, monkeypatch):
    """Slicer's pip_install raises CalledProcessError on pip's non-zero exit; the panel caught only RuntimeError, so
    a failed install left the button's slot with no dialog at all."""
    import subprocess

    requirements = tmp_path / "requirements.txt"
    requirements.write_text("surely-not-installed-medsynth-pkg==1.0\n")
    monkeypatch.setattr(dependencies, "ensure_torch", lambda ask_confirmation=True: True)

    def pip_fails(args):
        raise subprocess.CalledProcessError(1, ["pip", "install", *args])

    monkeypatch.setattr(slicer_mod.util, "pip_install", pip_fails, raising=False)
    with pytest.raises(RuntimeError, match=r"Installing MedSynth's Python packages failed \(pip exited with 1\)") as failed:
        dependencies.ensure_dependencies(requirements, tmp_path, ask_confirmation=False)
    assert not dependencies.shown_by_slicer(failed.value)  # Slicer before 5.12 showed nothing: the panel must
    def packaging_raising(exc):
        return SimpleNamespace(load_requirements=lambda path: [],
                               pip_ensure=lambda *a, **k: (_ for _ in ()).throw(exc))

    declined = packaging_raising(RuntimeError("User declined package installation"))  # Slicer 5.12's words
    monkeypatch.setitem(sys.modules, "slicer.packaging", declined)
    monkeypatch.setattr(slicer_mod, "packaging", declined, raising=False)
    assert dependencies.ensure_dependencies(requirements, tmp_path, ask_confirmation=True) is False
    busy = packaging_raising(RuntimeError("A non-blocking pip_install is already in progress."))
    monkeypatch.setitem(sys.modules, "slicer.packaging", busy)
    monkeypatch.setattr(slicer_mod, "packaging", busy, raising=False)
    with pytest.raises(RuntimeError, match="already in progress"):  # no longer taken for a decline
        dependencies.ensure_dependencies(requirements, tmp_path, ask_confirmation=True)


def test_a_pip_failure_slicer_showed_is_not_shown_twice(slicer_mod, tmp_path, monkeypatch):
    """Slicer 5.12 and later show their own "Package installation failed." dialog with pip's log and then raise
    CalledProcessError(code, "pip install"); the panel showed a second dialog over it. Now the failure says Slicer
    showed it (the panel puts it in its status line); a failure Slicer did not show, or a disk error, still gets one."""
    import subprocess

    requirements = tmp_path / "requirements.txt"
    requirements.write_text("surely-not-installed-medsynth-pkg==1.0\n")
    monkeypatch.setattr(dependencies, "ensure_torch", lambda ask_confirmation=True: True)
    for error, shown in ((subprocess.CalledProcessError(1, "pip install"), True),
                         (subprocess.CalledProcessError(1, ["python", "-m", "pip", "install"]), False),
                         (PermissionError(13, "Permission denied"), False)):
        failing = SimpleNamespace(load_requirements=lambda path: [],
                                  pip_ensure=lambda *a, exc=error, **k: (_ for _ in ()).throw(exc))
        monkeypatch.setitem(sys.modules, "slicer.packaging", failing)
        monkeypatch.setattr(slicer_mod, "packaging", failing, raising=False)
        with pytest.raises(dependencies.InstallFailed) as failed:
            dependencies.ensure_dependencies(requirements, tmp_path, ask_confirmation=False)
        assert dependencies.shown_by_slicer(failed.value) is shown
        assert "press the button again" in str(failed.value)
        if isinstance(error, OSError):
            assert "Permission denied" in str(failed.value) and "internet" not in str(failed.value)


# ---------------------------------------------------------------------------------------------------------- panel state
def _settings(**values):
    base = dict(inputVolume=None, casesDir=Path(), dataDir=Path(), runDir=Path(), outputModelPath=Path(),
                modelPath=Path(), evalDir=Path(), trainDevice="auto")
    return SimpleNamespace(**{**base, **values})


def test_the_panel_says_why_prepare_and_train_cannot_start():
    """Prepare and Train stayed disabled without a word; the hint names what each still needs."""
    from MedSynthLib.panel_state import button_states

    states = button_states(_settings(), None)
    assert not states.enabled["prepareButton"] and not states.enabled["startTrainingButton"]
    assert "To prepare data, choose the folder of cases and the prepared data folder." in states.hint
    assert "To train, choose the prepared data folder, the run folder and the output model file." in states.hint
    ready = _settings(casesDir=Path("/c"), dataDir=Path("/d"), runDir=Path("/r"), outputModelPath=Path("/m.safetensors"),
                      evalDir=Path("/e"))
    states = button_states(ready, None)
    assert states.hint == "" and states.enabled["prepareButton"] and states.enabled["resumeTrainingButton"]
    assert not states.enabled["cancelButton"] and not states.enabled["stopTrainingButton"]
    assert button_states(_settings(runDir=Path("/r")), None).hint.endswith(
        "To train, choose the prepared data folder and the output model file.")


def test_a_file_field_showing_a_name_its_parameter_does_not_hold_blocks_what_would_use_the_old_file():
    """ctkPathLineEdit passes its text on only while it matches ``*.safetensors``: "/runs/a.safetensors" edited to
    "/runs/b" showed the one while the parameter kept the other, and Evaluate scored (and Train refused) the old
    file (a review). The buttons that would read it wait for a valid name; the hint says what is wanted."""
    from MedSynthLib.panel_state import button_states, unapplied_path_fields
    from MedSynthLib.synthesis import OTHER_MODEL

    ready = _settings(inputVolume=object(), casesDir=Path("/c"), dataDir=Path("/d"), runDir=Path("/r"),
                      outputModelPath=Path("/runs/a.safetensors"), evalDir=Path("/e"), model=OTHER_MODEL,
                      modelPath=Path("/m/x.safetensors"))
    shown = {"outputModelPathLineEdit": "/runs/a.safetensors", "modelPathLineEdit": "/m/x.safetensors"}
    assert unapplied_path_fields(ready, shown) == [] and unapplied_path_fields(None, shown) == []
    assert unapplied_path_fields(ready, {**shown, "outputModelPathLineEdit": ""}) == []  # clearPath's
    edited = {**shown, "outputModelPathLineEdit": "/runs/b"}
    assert unapplied_path_fields(ready, edited) == ["outputModelPath"]
    states = button_states(ready, None, edited)
    assert not states.enabled["startTrainingButton"] and not states.enabled["evaluateButton"]
    assert states.enabled["prepareButton"] and states.enabled["synthesizeButton"]
    assert "To train, choose an output model file name ending in .safetensors." in states.hint
    other = {**shown, "modelPathLineEdit": "/m/y"}
    assert unapplied_path_fields(ready, other) == ["modelPath"]
    assert not button_states(ready, None, other).enabled["synthesizeButton"]
    assert button_states(ready, None, other).synthesis_hint == ("To synthesize with another model file, give a name "
                                                                "ending in .safetensors.")
    assert button_states(ready, None, shown).synthesis_hint == ""
    assert button_states(ready, None, shown).enabled["synthesizeButton"]
    bundled = SimpleNamespace(**{**vars(ready), "model": "medsynth_t1ce_t2.safetensors"})  # the field is not read
    assert button_states(bundled, None, other).enabled["synthesizeButton"]


def test_a_running_preparation_is_stopped_from_the_training_section():
    """While Prepare ran, only the synthesis section's Cancel ("Stop the running synthesis") could stop it."""
    from MedSynthLib.panel_state import button_states

    ready = _settings(inputVolume=object(), casesDir=Path("/c"), dataDir=Path("/d"), runDir=Path("/r"),
                      outputModelPath=Path("/m.safetensors"), evalDir=Path("/e"))
    for kind, cancel, stop in (("synthesize", True, False), ("prepare", False, True), ("train", False, True),
                               ("evaluate", False, True)):
        enabled = button_states(ready, kind).enabled
        assert (enabled["cancelButton"], enabled["stopTrainingButton"]) == (cancel, stop), kind
        assert not any(enabled[b] for b in ("synthesizeButton", "prepareButton", "startTrainingButton", "evaluateButton"))
    assert not any(button_states(None, None).enabled.values())


def test_unset_folders_and_files_do_not_show_the_working_folder():
    """The wrapper stores an unset Path as ".", which ctkDirectoryButton showed as Slicer's working folder."""
    from MedSynthLib.panel_state import folder_text, unset_path_fields

    assert folder_text(Path()) == folder_text(None) == "Choose a folder…"
    assert folder_text(Path("/data/prepared")) == str(Path("/data/prepared"))
    assert unset_path_fields(_settings(modelPath=Path("/m.safetensors"))) == ["outputModelPathLineEdit"]
    assert unset_path_fields(None) == []


def test_the_panel_states_name_widgets_of_the_ui_bound_to_those_parameters():
    import xml.etree.ElementTree as ET

    from MedSynthLib.panel_state import FOLDER_BUTTONS, PATH_FIELDS, button_states

    widgets = {w.get("name"): w for w in ET.parse(MODULE_DIR / "Resources" / "UI" / "MedSynth.ui").getroot().iter("widget")}
    for name in [*button_states(None, None).enabled, "trainingHintLabel"]:
        assert name in widgets, name
    for name, parameter in {**FOLDER_BUTTONS, **PATH_FIELDS}.items():
        bound = [p.find("string").text for p in widgets[name].findall("property") if p.get("name") == "SlicerParameterName"]
        assert bound == [parameter], (name, bound)


def test_a_scene_saved_by_another_version_gets_the_default_for_an_unknown_choice():
    """The list widgets refuse a value they lack: a saved generator kind or device this version does not offer broke
    the panel's connection (only the model was repaired)."""
    from MedSynthLib.panel_state import reset_unknown_choices

    settings = SimpleNamespace(model="a retired model", device="mps", generatorKind="nie2018")
    reset = reset_unknown_choices(settings, {"model": ["default", "fcn"], "device": ["auto", "cuda", "cpu"],
                                             "generatorKind": ["nie2018", "unet3d"]})
    assert reset == ["model", "device"]
    assert (settings.model, settings.device, settings.generatorKind) == ("default", "auto", "nie2018")


def test_the_estimate_line_is_empty_until_it_can_be_estimated(scene, phantom_node, tmp_path):
    controller = _controller(scene, FakeRunner(events=[]), tmp_path)
    settings = SimpleNamespace(inputVolume=phantom_node, model=model_choices()[0], modelPath=Path(), device="cpu",
                               stages=0, flipTTA=False, uncertainty=False, force=False)
    assert "s" in controller.estimate_text(settings)
    settings.inputVolume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "no image")
    assert controller.estimate_text(settings) == ""


# ---------------------------------------------------------------------------------------------------------- shape of the module
def test_module_is_thin_and_functions_are_short():
    module = MODULE_DIR / "MedSynth.py"  # 400 until session 48, whose widget wiring (questions in turn, the chart
    assert len(module.read_text(encoding="utf-8").splitlines()) <= 420  # after polling, a quit's note) needs Qt
    for path in [module, *sorted((MODULE_DIR / "MedSynthLib").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                assert length <= 80, f"{path.name}:{node.name} is {length} lines"


def test_input_selector_starts_empty():
    import xml.etree.ElementTree as ET

    root = ET.parse(MODULE_DIR / "Resources" / "UI" / "MedSynth.ui").getroot()
    selector = next(w for w in root.iter("widget") if w.get("name") == "inputSelector")
    none_enabled = next(p for p in selector.findall("property") if p.get("name") == "noneEnabled")
    assert none_enabled.find("bool").text == "true"
    assert "GetFirstNodeByClass" not in module_source()


def module_source() -> str:
    return (MODULE_DIR / "MedSynth.py").read_text(encoding="utf-8")


def test_in_process_synthesis_checks_its_input_as_the_panel_does(scene, phantom_node, tmp_path, phantom,
                                                                   tiny_model_config):
    """Scripts and the self-test synthesize in Slicer's process: the same input checks, Force, and output rules."""
    import dataclasses

    from MedSynthLib.synthesis import synthesize_in_process
    from MedSynthLogic import mrml
    from MedSynthLogic.errors import InputImageError
    from MedSynthLogic.model_file import save_model
    from _models import random_chain

    cfg = dataclasses.replace(tiny_model_config, stages=1)
    request = SynthesisRequest(model_path=save_model(tmp_path / "m.safetensors", random_chain(cfg), cfg), device="cpu")
    result = synthesize_in_process(scene, phantom_node, request)
    assert result.GetName() == f"{phantom_node.GetName()} synthetic T2"
    np.testing.assert_array_equal(mrml.node_ijk_to_ras(result), mrml.node_ijk_to_ras(phantom_node))
    t2 = mrml.node_from_volume(scene, phantom.t2, "case T2", reference=phantom_node)
    with pytest.raises(InputImageError, match="T2-weighted"):
        synthesize_in_process(scene, t2, request)
    with pytest.warns(UserWarning, match="T2-weighted"):
        synthesize_in_process(scene, t2, dataclasses.replace(request, force=True))
    with pytest.raises(ValueError, match="is the input volume"):
        synthesize_in_process(scene, phantom_node, request, phantom_node)


def test_a_sagittal_first_node_gets_the_synthesis_of_the_same_brain_stored_axially(scene, phantom_node, tmp_path,
                                                                                   phantom, tiny_model_config):
    """Slicer's DICOM import keeps the acquisition's axis order; the node's IJK→RAS carries it to the network's order
    and back (orientation.py), so a sagittal series gets the axial one's synthesis, voxel for voxel."""
    import dataclasses

    import SimpleITK as sitk

    from MedSynthLib.synthesis import synthesize_in_process
    from MedSynthLogic import mrml
    from MedSynthLogic.model_file import save_model
    from MedSynthLogic.orientation import axis_order
    from MedSynthLogic.volume import Volume, to_sitk_image
    from _models import random_chain

    cfg = dataclasses.replace(tiny_model_config, stages=1)
    request = SynthesisRequest(model_path=save_model(tmp_path / "m.safetensors", random_chain(cfg), cfg), device="cpu")
    stored = sitk.PermuteAxes(to_sitk_image(sitk, phantom.t1ce), [2, 0, 1])
    sagittal = Volume(sitk.GetArrayFromImage(stored), stored.GetSpacing(), stored.GetOrigin(), stored.GetDirection())
    node = mrml.node_from_volume(scene, sagittal, "sagittal T1ce")
    axial = mrml.volume_from_node(synthesize_in_process(scene, phantom_node, request))
    result = mrml.volume_from_node(synthesize_in_process(scene, node, request))
    order = axis_order(result.direction)
    assert not order.is_identity and result.shape == sagittal.shape
    np.testing.assert_allclose(order.forward(result.array), axial.array, atol=1e-4)


BEFORE_THE_INSTALLER = '''
import importlib.abc, sys
class NotInstalledYet(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "safetensors", "h5py", "scipy", "skimage", "matplotlib", "tqdm"}:
            raise ModuleNotFoundError(f"import of {name} halted: not installed yet")
sys.meta_path.insert(0, NotInstalledYet())
sys.path[:0] = [sys.argv[1] + "/MedSynth", sys.argv[1]]
import slicer, vtk
from MedSynthLib.controller import MedSynthController
from MedSynthLib.model_info import describe_model_file
from MedSynthLib.synthesis import SynthesisRequest
scene = slicer.vtkMRMLScene()
node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "t1ce")
image = vtk.vtkImageData()
image.SetDimensions(40, 48, 30)
image.AllocateScalars(vtk.VTK_FLOAT, 1)
image.GetPointData().GetScalars().Fill(0.0)
node.SetAndObserveImageData(image)
print(MedSynthController(scene, temp_root=sys.argv[2]).estimate(node, SynthesisRequest()).text())
print(describe_model_file())
'''


def test_the_panel_describes_the_model_and_estimates_before_pytorch_is_installed(slicer_mod, tmp_path):
    """The panel fills its model description and time estimate when it opens, before the installer has put torch,
    safetensors, h5py or scikit-image into Slicer's Python: reading the model file's header imported torch, and the
    ModuleNotFoundError escaped setup() and every later parameter change."""
    import subprocess

    proc = subprocess.run([sys.executable, "-c", BEFORE_THE_INSTALLER, str(REPO), str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    estimate_line, description = proc.stdout.strip().splitlines()[-2:]
    assert estimate_line.startswith("Estimated time: about")
    assert description.startswith("<b>medsynth_t1ce_t2.safetensors</b>: T1ce → T2") and "PSNR" in description


NO_TORCH_IN_SLICER = '''
import importlib.abc, sys
class NotInSlicer(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ModuleNotFoundError(f"import of {name} in Slicer's own process")
sys.meta_path.insert(0, NotInSlicer())
sys.path[:0] = [sys.argv[1] + "/MedSynth", sys.argv[1]]
import slicer
from MedSynthLib.controller import MedSynthController
from MedSynthLib.synthesis import SynthesisRequest
from MedSynthLogic import mrml
from MedSynthLogic.phantom import make_phantom
scene = slicer.vtkMRMLScene()
node = mrml.node_from_volume(scene, make_phantom(shape=(48, 56, 48), seed=0).t1ce, "t1ce")
plan = MedSynthController(scene, temp_root=sys.argv[2]).plan_synthesis(node, SynthesisRequest())
print("planned", plan.blocked, "torch" in sys.modules)
'''


def test_the_panels_checks_before_a_synthesis_leave_pytorch_out_of_slicer(slicer_mod, tmp_path):
    """PyTorch belongs in the synthesis's own process: the size check imported ``volume_synthesis``, which imports
    torch, so the first Synthesize of every session loaded it (and its CUDA libraries) into Slicer (a review)."""
    import subprocess

    proc = subprocess.run([sys.executable, "-c", NO_TORCH_IN_SLICER, str(REPO), str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "planned False False"


def test_a_single_slice_is_refused_before_the_launch_and_an_empty_node_is_named(scene, tmp_path, slicer_mod):
    """One slice passed the panel's plan with an 'about 4 s' estimate; the child then refused it, naming the
    temporary file it had been given. A node without image data was told to select an input, which it was."""
    import vtk

    from MedSynthLogic.errors import InputImageError

    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "one slice")
    image = vtk.vtkImageData()
    image.SetDimensions(64, 64, 1)
    image.AllocateScalars(vtk.VTK_FLOAT, 1)
    image.GetPointData().GetScalars().Fill(100.0)
    node.SetAndObserveImageData(image)
    runner = FakeRunner(events=[])
    controller = _controller(scene, runner, tmp_path)
    with pytest.raises(InputImageError, match=r"too small to synthesize: \(64, 64, 1\) voxels"):
        controller.plan_synthesis(node, SynthesisRequest())
    assert not runner.jobs
    image.SetDimensions(64, 64, 64)
    image.AllocateScalars(vtk.VTK_FLOAT, 1)
    image.GetPointData().GetScalars().Fill(0.0)
    node.SetAndObserveImageData(image)  # every voxel 0: "Input check passed", then the child refused it (a review)
    with pytest.raises(InputImageError, match="The source is empty: every voxel is 0"):
        controller.plan_synthesis(node, SynthesisRequest())
    assert not runner.jobs
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "no image")
    with pytest.raises(InputImageError, match="has no image data"):
        controller.estimate(empty, SynthesisRequest())
    import vtk

    empty.SetAndObserveImageData(vtk.vtkImageData())  # an image of no voxels: a Python error before
    for call in (controller.estimate, controller.plan_synthesis, controller.start_synthesis):
        with pytest.raises(InputImageError, match="has no voxels"):
            call(empty, SynthesisRequest())
    assert controller.estimate_text(SimpleNamespace(inputVolume=empty, modelPath=Path(), model="", stages=0,
                                                    device="cpu", flipTTA=False, force=False, uncertainty=False)) == ""


# ---------------------------------------------------------------------------------------------------------- scene changes
def _node_with(scene, slicer_mod, array, ijk_to_ras, name):
    import vtk

    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(ijk_to_ras[r][c]))
    node.SetIJKToRASMatrix(matrix)
    slicer_mod.util.updateVolumeFromArray(node, np.ascontiguousarray(array, dtype=np.float32))
    node.CreateDefaultDisplayNodes()
    return node


@pytest.mark.parametrize("previous_result", [False, True])
def test_an_output_volume_deleted_while_synthesizing_gets_a_new_node(scene, phantom_node, tmp_path, previous_result):
    """The output selector's "Delete current Volume" (or the Data module) while the job ran: the result was thrown
    away with "'NoneType' object has no attribute 'AutoWindowLevelOff'" (a review, session 42)."""
    controller = _controller(scene, FakeRunner(events=[], on_finish=_write_output_like_input), tmp_path)
    if previous_result:  # the panel's usual case: the last result is the output
        controller.start_synthesis(phantom_node, SynthesisRequest())
        output = controller.poll()[1].result
    else:
        output = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Volume")
    controller.start_synthesis(phantom_node, SynthesisRequest(), output)
    scene.RemoveNode(output)
    outcome = controller.poll()[1]
    assert outcome.state == jobs.FINISHED, outcome.message
    assert outcome.result.GetScene() is scene and "synthetic T2" in outcome.result.GetName()


def test_an_input_deleted_while_synthesizing_ends_the_job_without_a_misplaced_result(scene, phantom_node, tmp_path):
    """The input under a registration transform, removed while the job ran: the result came "finished" without the
    transform (a removed node has no parent), linked to a node no longer there (a review, session 45)."""
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    phantom_node.SetAndObserveTransformNodeID(transform.GetID())
    controller = _controller(scene, FakeRunner(events=[], on_finish=_write_output_like_input), tmp_path)
    volumes = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    controller.start_synthesis(phantom_node, SynthesisRequest())
    scene.RemoveNode(phantom_node)
    outcome = controller.poll()[1]
    assert outcome.state == jobs.CANCELLED and "removed from the scene" in outcome.message and outcome.result is None
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == volumes - 1 and not controller.busy


def test_a_saved_scene_added_to_another_keeps_its_synthetic_volume_linked_to_its_own_input(slicer_mod, tmp_path, phantom):
    """MRML renames clashing IDs when a scene is added (File › Add Data of a .mrml) and remaps node references, not
    attributes: the "synthetic of" ID then named another patient's volume, whose synthesis went into the first
    patient's synthetic T2 node (a review, session 42). The link is a node reference now, for the map too."""
    from MedSynthLogic import mrml
    from MedSynthLogic.volume_io import write_volume

    first = slicer_mod.vtkMRMLScene()
    controller = _controller(first, FakeRunner(events=[], on_finish=_write_output_like_input), tmp_path)
    pad = first.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "pad")
    b = mrml.load_volume_file(first, write_volume(phantom.t1ce, tmp_path / "B_t1ce.nii.gz"))
    controller.start_synthesis(b, SynthesisRequest())
    synthetic_b = controller.poll()[1].result
    storage = synthetic_b.CreateDefaultStorageNode()
    first.AddNode(storage)
    synthetic_b.SetAndObserveStorageNodeID(storage.GetID())
    storage.SetFileName(str(tmp_path / "B_synthetic.nrrd"))
    storage.WriteData(synthetic_b)
    first.RemoveNode(pad)
    first.SetURL(str(tmp_path / "B.mrml"))
    first.SetRootDirectory(str(tmp_path))
    assert first.Commit()

    second = slicer_mod.vtkMRMLScene()  # patient A is open: two volumes, so B's IDs clash
    mrml.load_volume_file(second, write_volume(phantom.t1ce, tmp_path / "A_t1ce.nii.gz"))
    a_t1 = mrml.load_volume_file(second, write_volume(phantom.t1ce.with_array(phantom.t1ce.array * 1.3), tmp_path / "A_t1.nii.gz"))
    second.SetURL(str(tmp_path / "B.mrml"))
    second.Import()
    imported = second.GetFirstNodeByName("B_t1ce synthetic T2")
    assert imported.GetNodeReferenceID(synthesis_module.SYNTHETIC_OF_ROLE) == second.GetFirstNodeByName("B_t1ce").GetID()
    before = slicer_mod.util.arrayFromVolume(imported).copy()
    again = _controller(second, FakeRunner(events=[], on_finish=_write_output_like_input), tmp_path)
    again.start_synthesis(a_t1, SynthesisRequest(), imported)  # the output selector still on B's synthetic T2
    result = again.poll()[1].result
    assert result is not imported and np.array_equal(slicer_mod.util.arrayFromVolume(imported), before)


def test_a_parent_transform_that_reorients_the_input_reaches_the_synthesis(slicer_mod, tmp_path, phantom):
    """A volume whose header is wrong, its orientation fixed by a transform in the Transforms module, not hardened:
    the child read the stored header only, so the network saw the anatomy in the wrong axis order (28.6 % of the
    voxels differed from the hardened volume's synthesis, by up to 535; a review, session 42). The result stays on
    the node's own grid under the same transform."""
    import vtk

    from MedSynthLib.controller import MedSynthController, start_cli_job

    scene = slicer_mod.vtkMRMLScene()
    base = np.diag([-1.0, -1.0, 1.0, 1.0])
    array = phantom.t1ce.array
    stored = np.ascontiguousarray(np.transpose(array, (2, 1, 0))[::-1])  # sagittal-first, the header says axial
    true = np.eye(4)
    true[:3, 0], true[:3, 1], true[:3, 2] = base[:3, 2], base[:3, 1], -base[:3, 0]
    true[:3, 3] = base[:3, 0] * (array.shape[2] - 1)
    transformed = _node_with(scene, slicer_mod, stored, base, "T1ce")
    fix = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "fix orientation")
    matrix, parent = vtk.vtkMatrix4x4(), true @ np.linalg.inv(base)
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, parent[r, c])
    fix.SetMatrixTransformToParent(matrix)
    transformed.SetAndObserveTransformNodeID(fix.GetID())
    hardened = _node_with(scene, slicer_mod, stored, true, "T1ce hardened")
    controller = MedSynthController(scene, runner=start_cli_job, temp_root=str(tmp_path), input_checker=no_findings)
    results = []
    for node in (transformed, hardened):
        controller.start_synthesis(node, SynthesisRequest(device="cpu", force=True))
        outcome = _run_to_end(controller)[1]
        assert outcome.state == jobs.FINISHED, outcome.message
        results.append(outcome.result)
    np.testing.assert_allclose(*(slicer_mod.util.arrayFromVolume(node) for node in results), atol=1e-2)
    assert results[0].GetParentTransformNode() is fix
    np.testing.assert_array_equal(mrml_module.node_ijk_to_ras(results[0]), base)
    assert not controller.plan_synthesis(transformed, SynthesisRequest(force=True)).notes
    grid = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")
    transformed.SetAndObserveTransformNodeID(grid.GetID())
    warped = controller.plan_synthesis(transformed, SynthesisRequest(force=True))
    assert any("non-linear transform" in note for note in warped.notes) and warped.needs_confirmation
    assert "may not be the sequence" not in warped.message and "pick the" not in warped.message  # not a sequence note
    assert warped.message.startswith("Before it is synthesized, note:") and warped.message.endswith("anyway?")


def test_the_estimate_counts_the_voxel_size_a_parent_transform_gives(slicer_mod, scene, tmp_path):
    """A 0.5 mm header scaled ×2 by a transform reaches the synthesis as 1 mm (not resampled): the estimate counted
    the 0.5 mm resampling and said about 10 s where the hardened volume says 51 s (a diff review, session 42)."""
    import vtk

    controller = _controller(scene, FakeRunner(events=[]), tmp_path)
    array = np.zeros((155, 240, 240), np.float32)
    half, one = np.diag([-0.5, -0.5, 0.5, 1.0]), np.diag([-1.0, -1.0, 1.0, 1.0])
    scaled = _node_with(scene, slicer_mod, array, half, "scaled")
    hardened = _node_with(scene, slicer_mod, array, one, "hardened")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "x2")
    matrix = vtk.vtkMatrix4x4()
    for axis in range(3):
        matrix.SetElement(axis, axis, 2.0)
    transform.SetMatrixTransformToParent(matrix)
    scaled.SetAndObserveTransformNodeID(transform.GetID())
    request = SynthesisRequest(device="cpu")
    assert mrml_module.node_spacing(scaled) == pytest.approx((1.0, 1.0, 1.0))
    assert controller.estimate(scaled, request).seconds == pytest.approx(controller.estimate(hardened, request).seconds)


@pytest.mark.parametrize("events, said", [
    ([], "Stopped before its first checkpoint: nothing of this run was kept, and Resume starts it again."),
    ([{"event": "stage", "stage": 0, "stages": 2, "status": "start", "resumed_from": "/r/ckpt_s00_it000000010.pt",
       "iteration": 10}], "Stopped before a new checkpoint: Resume goes on from ckpt_s00_it000000010.pt again."),
    ([{"event": "checkpoint", "path": "/r/ckpt_s01_it000000004.pt", "stage": 1, "iteration": 4, "reason": "stop"}],
     "Stopped; its newest checkpoint is ckpt_s01_it000000004.pt (stage 2, iteration 4): Resume goes on from there."),
])
def test_a_stopped_training_says_what_it_kept(scene, tmp_path, events, said):
    """A Stop said "the last checkpoint is kept" also when none was written (a training-panel review, session 42),
    and it killed a training whose iteration took more than its 30 s wait: it now waits TRAINING_STOP_WAIT_S."""
    runner = FakeRunner(events=events)
    controller = _controller(scene, runner, tmp_path)
    controller.start_training(TrainingRequest(ModelConfig(stages=2), TrainConfig(stages=2, iterations=20),
                                              tmp_path / "data", tmp_path / "m.safetensors", tmp_path / "run", device="cpu"))
    controller.cancel(timeout=controller.TRAINING_STOP_WAIT_S)
    outcome = controller.poll()[1]
    assert outcome.state == jobs.CANCELLED and outcome.message == said
    assert runner.jobs[0].cancelled_with == controller.TRAINING_STOP_WAIT_S >= 300


def test_a_later_stages_context_step_keeps_the_runs_progress_bar():
    """The trainer's "context" progress (the earlier stages' synthesis over the training volumes) moved the bar meant
    for the whole run to that step's own 0–100 % and back (a training-panel review, session 42)."""
    update = describe_event({"event": "progress", "task": "context", "done": 3, "total": 11, "stage": 1, "stages": 3,
                             "split": "train"}, "train")
    assert update.percent is None
    assert update.status == "Stage 2 of 3: synthesizing its input from the earlier stages, 3 of 11 cases (train)"


def test_a_resumed_stage_says_where_it_goes_on_from():
    """A real resume and a fresh start both logged "Auto-context stage 1 of N: start" (a training-panel review)."""
    resumed = describe_event({"event": "stage", "stage": 0, "stages": 2, "status": "start",
                              "resumed_from": "/run/ckpt_s00_it000000011.pt", "iteration": 11}, "train")
    assert resumed.log == "Auto-context stage 1 of 2: start (resumed from ckpt_s00_it000000011.pt, iteration 11)"
    fresh = describe_event({"event": "stage", "stage": 0, "stages": 2, "status": "start"}, "train")
    assert fresh.log == "Auto-context stage 1 of 2: start"


def test_a_finished_job_settles_its_result_into_the_panel_settings_and_a_failed_one_does_not():
    """What onJobEnded did in the widget, now where it can be tested: the synthesis becomes the output, a trained
    model the model to synthesize with, prepared data the data folder to train on."""
    from MedSynthLib.outcomes import JobOutcome, settle_in
    from MedSynthLib.synthesis import OTHER_MODEL
    from MedSynthLogic import jobs

    settings = _settings(outputVolume=None, model="medsynth_t1ce_t2.safetensors")
    settle_in(settings, JobOutcome("train", jobs.FAILED, "no", "/runs/m.safetensors"))
    settle_in(settings, JobOutcome("prepare", jobs.CANCELLED, "stopped", "/data/p"))
    assert settings.model == "medsynth_t1ce_t2.safetensors" and settings.dataDir == Path()
    node = object()
    for outcome in (JobOutcome("synthesize", jobs.FINISHED, "done", node),
                    JobOutcome("train", jobs.FINISHED, "done", "/runs/m.safetensors"),
                    JobOutcome("prepare", jobs.FINISHED, "done", "/data/p"),
                    JobOutcome("evaluate", jobs.FINISHED, "done", "/reports/r")):
        settle_in(settings, outcome)
    assert settings.outputVolume is node and (settings.model, settings.modelPath) == (OTHER_MODEL, Path("/runs/m.safetensors"))
    assert settings.dataDir == Path("/data/p") and settings.evalDir == Path()


def test_the_panel_asks_its_questions_in_turn_and_none_when_blocked():
    from MedSynthLib.controller import SynthesisPlan

    estimate = SimpleNamespace(text=lambda: "about 5 s")
    assert SynthesisPlan([], False, "", estimate).questions == []
    noted = SynthesisPlan([], False, "a note", estimate, ["note"], replaces="replace it?")
    assert noted.questions == ["a note", "replace it?"]
    assert SynthesisPlan([], False, "", estimate, [], replaces="replace it?").questions == ["replace it?"]
    assert SynthesisPlan(["finding"], True, "refused", estimate, [], replaces="replace it?").questions == []


def test_the_self_tests_psnr_scores_the_phantom_as_evaluate_does(scene, phantom):
    """The module's self-test asks it of the bundled model's synthesis of the sample phantom."""
    from MedSynthLib.sample_data import phantom_psnr
    from MedSynthLogic import mrml
    from MedSynthLogic.metrics import normalise_for_metrics, psnr, scale_prediction

    t2 = mrml.node_from_volume(scene, phantom.t2, "phantom_t2")
    rng = np.random.default_rng(0)
    noisy_array = (phantom.t2.array * (1 + 0.05 * rng.standard_normal(phantom.t2.array.shape))).astype(np.float32)
    noisy = mrml.node_from_volume(scene, phantom.t2.with_array(noisy_array), "noisy")
    brain = phantom.t2.array > 0
    expected = psnr(scale_prediction(noisy_array.astype(np.float64), brain, 1000.0),
                    normalise_for_metrics(phantom.t2.array.astype(np.float64), brain), brain)
    assert phantom_psnr(noisy, t2) == pytest.approx(expected) and 15 < expected < 60
