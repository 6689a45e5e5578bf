"""Training: plan checks, a short run whose validation loss falls, exact resume, stop, ACM stages."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch

from MedSynthLogic import checkpoint as ckpt
from MedSynthLogic.config import TrainConfig
from MedSynthLogic.errors import Cancelled, DataError, ModelFileError, OutputError, UsageError


def make_phantom_data(root: Path, model_cfg, n_cases: int = 3, shape=(40, 44, 40), patches_per_case: int = 64,
                      flip_axis: Optional[int] = 2) -> Path:
    """A prepared data folder (train.h5 with n−1 cases, val.h5 with one) from small phantoms."""
    from MedSynthLogic.dataset_prep import Case, prepare_dataset
    from MedSynthLogic.phantom import make_phantom
    from MedSynthLogic.volume_io import write_volume

    root.mkdir(parents=True, exist_ok=True)
    cases = []
    for s in range(n_cases):
        p = make_phantom(shape=shape, seed=s)
        write_volume(p.t1ce, root / f"c{s}_t1ce.nii.gz")
        write_volume(p.t2, root / f"c{s}_t2.nii.gz")
        cases.append(Case(f"c{s}", root / f"c{s}_t1ce.nii.gz", root / f"c{s}_t2.nii.gz"))
    prepare_dataset(cases, root / "data", model_cfg, patches_per_case=patches_per_case, val_cases=[f"c{n_cases - 1}"], seed=0,
                    flip_axis=flip_axis)
    return root / "data"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from MedSynthLogic.config import DiscriminatorConfig, GeneratorConfig, ModelConfig

    cfg = ModelConfig(
        generator=GeneratorConfig(filters=(4, 4, 4, 8, 8, 8, 4, 4, 1)),
        discriminator=DiscriminatorConfig(channels=(4, 8, 8), last_conv=8, fully_connected=(16, 8)),
        stages=2,
    )
    return make_phantom_data(tmp_path_factory.mktemp("phantom"), cfg)


@pytest.fixture(autouse=True)
def few_val_patches(monkeypatch):
    from MedSynthLogic import training

    monkeypatch.setattr(training, "VAL_PATCHES", 32)


@pytest.fixture()
def deterministic():
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


def _cfg(**kw) -> TrainConfig:
    base = dict(iterations=8, batch_size=4, val_every=0, checkpoint_every=0, log_every=1, val_volumes=1, precision="fp32", num_workers=0)
    base.update(kw)
    return TrainConfig(**base)


def _one_stage(cfg):
    import dataclasses

    return dataclasses.replace(cfg, stages=1)


def test_bf16_training_on_the_cpu_learns_and_says_so(tmp_path, data_dir, tiny_model_config):
    """--precision bf16 runs the CPU step under bfloat16 autocast (the speed-up for CPU-only training)."""
    from MedSynthLogic.errors import UsageError
    from MedSynthLogic.model_file import read_header
    from MedSynthLogic.stage_trainer import amp_settings
    from MedSynthLogic.training import train

    assert amp_settings(torch.device("cpu"), "bf16") == torch.bfloat16
    assert amp_settings(torch.device("cpu"), "auto") is None
    with pytest.raises(UsageError, match="fp16 training needs a CUDA GPU"):
        amp_settings(torch.device("cpu"), "fp16")
    with pytest.raises(UsageError, match="Unknown precision"):
        amp_settings(torch.device("cpu"), "half")
    events = []
    out = train(data_dir, tmp_path / "m.safetensors", _one_stage(tiny_model_config),
                _cfg(iterations=30, val_every=10, log_every=10, lr_g=1e-2, precision="bf16"), device="cpu",
                callback=events.append)
    vals = [e["val_loss"] for e in events if e["event"] == "validation"]
    assert vals[-1] < vals[0] and all(np.isfinite(vals))
    assert read_header(out)["training"]["precision"] == "bfloat16"


def test_a_nan_loss_stops_training_and_keeps_the_good_checkpoints(tmp_path, data_dir, tiny_model_config, monkeypatch):
    """Divergence must not overwrite good checkpoints with NaN weights (keep-checkpoints would rotate them out)."""
    from MedSynthLogic import training
    from MedSynthLogic.stage_trainer import StageTrainer
    from MedSynthLogic.errors import TrainingDiverged

    real_step, calls = StageTrainer.step, []

    def step(self, *args, **kwargs):
        losses = real_step(self, *args, **kwargs)
        calls.append(1)
        return dict(losses, l2=float("nan")) if len(calls) == 5 else losses

    monkeypatch.setattr(StageTrainer, "step", step)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="stage 1, iteration 5") as info:
        training.train(data_dir, tmp_path / "m.safetensors", _one_stage(tiny_model_config),
                       _cfg(iterations=8, checkpoint_every=2), device="cpu", run_dir=run, keep_checkpoints=5)
    assert info.value.exit_code == 9 and ckpt.checkpoint_name(0, 4) in info.value.hint
    assert "--init-model" in info.value.hint and "--start-stage 0" in info.value.hint  # --resume refuses a new lr
    assert sorted(p.name for p in run.glob("ckpt_*.pt")) == [ckpt.checkpoint_name(0, 2), ckpt.checkpoint_name(0, 4)]
    assert not (tmp_path / "m.safetensors").exists()


def test_nan_weights_under_a_finite_loss_stop_training_before_the_checkpoint(tmp_path, data_dir, tiny_model_config,
                                                                              monkeypatch):
    """The losses are taken before the step: an infinite gradient under a finite loss, turned into NaN by gradient
    clipping, left NaN weights only, and a checkpoint at that iteration stored them as the newest (a review)."""
    from MedSynthLogic import training
    from MedSynthLogic.errors import TrainingDiverged
    from MedSynthLogic.stage_trainer import StageTrainer

    real_step, calls = StageTrainer.step, []

    def step(self, *args, **kwargs):
        losses = real_step(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 4:
            with torch.no_grad():
                next(self.gen.parameters()).view(-1)[0] = float("nan")
        return losses

    monkeypatch.setattr(StageTrainer, "step", step)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="The weights .* iteration 4"):
        training.train(data_dir, tmp_path / "m.safetensors", _one_stage(tiny_model_config),
                       _cfg(iterations=8, checkpoint_every=2), device="cpu", run_dir=run, keep_checkpoints=1)
    assert sorted(p.name for p in run.glob("ckpt_*.pt")) == [ckpt.checkpoint_name(0, 2)]


def test_keep_every_keeps_the_named_points_that_rotation_would_delete(tmp_path, data_dir, tiny_model_config):
    """An evaluation plan names iterations in advance; rotating to the newest one must not delete them first."""
    from MedSynthLogic import training

    run = tmp_path / "run"
    training.train(data_dir, tmp_path / "m.safetensors", _one_stage(tiny_model_config),
                   _cfg(iterations=8, checkpoint_every=2), device="cpu", run_dir=run, keep_checkpoints=1, keep_every=4)
    assert sorted(p.name for p in run.glob("ckpt_*.pt")) == [ckpt.checkpoint_name(0, 4), ckpt.checkpoint_name(0, 8)]
    with pytest.raises(UsageError, match="keep_every"):
        training.train(data_dir, tmp_path / "n.safetensors", _one_stage(tiny_model_config), _cfg(iterations=2),
                       device="cpu", run_dir=tmp_path / "run2", keep_every=-1)


def test_plan_refuses_missing_data_and_wrong_patch_size(tmp_path, data_dir, tiny_model_config):
    import dataclasses

    from MedSynthLogic.training import plan_training, train

    with pytest.raises(DataError, match="medsynth prepare"):
        plan_training(tmp_path, tiny_model_config, _cfg())
    with pytest.raises(DataError, match="medsynth prepare"):
        train(tmp_path, tmp_path / "m.safetensors", tiny_model_config, _cfg(), device="cpu")
    wrong = dataclasses.replace(tiny_model_config, source_patch=34)
    with pytest.raises(DataError, match="patches"):
        plan_training(data_dir, wrong, _cfg())
    renamed = dataclasses.replace(tiny_model_config, source_name="T1", target_name="FLAIR")
    with pytest.raises(DataError, match="prepared as T1ce→T2 but the model config names T1→FLAIR"):
        plan_training(data_dir, renamed, _cfg())
    plan = plan_training(data_dir, tiny_model_config, _cfg())
    assert plan.n_train == 256 and plan.n_val == 128 and plan.val_cases == ["c2"]


def test_plan_refuses_files_of_two_prepare_runs(tmp_path, data_dir, tiny_model_config):
    """An ``--overwrite`` that stopped between its renames leaves train.h5 of one run beside val.h5 or the manifest
    of another: training on both would validate on other cases, normalised otherwise. The same run's files pass."""
    import json
    import shutil

    from MedSynthLogic.training import plan_training

    mixed = tmp_path / "mixed"
    shutil.copytree(data_dir, mixed)
    plan_training(mixed, tiny_model_config, _cfg())
    other = make_phantom_data(tmp_path / "other", tiny_model_config, patches_per_case=8)
    shutil.copy(other / "val.h5", mixed / "val.h5")
    with pytest.raises(DataError, match="different `medsynth prepare` runs .*--overwrite"):
        plan_training(mixed, tiny_model_config, _cfg())
    shutil.copy(data_dir / "val.h5", mixed / "val.h5")
    manifest = json.loads((mixed / "manifest.json").read_text())
    manifest["prepare_run"] = json.loads((other / "manifest.json").read_text())["prepare_run"]
    (mixed / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="different `medsynth prepare` runs"):
        plan_training(mixed, tiny_model_config, _cfg())
    del manifest["prepare_run"]  # a manifest of an older prepare beside files with an id: also a mix
    (mixed / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="manifest.json without an id"):
        plan_training(mixed, tiny_model_config, _cfg())
    (mixed / "manifest.json").unlink()  # training runs without a manifest, as before
    assert plan_training(mixed, tiny_model_config, _cfg()).n_val == 128


def test_a_python_callers_train_config_records_the_stages_the_model_config_trains(tmp_path, data_dir, tiny_model_config):
    """``train()`` trains the model config's stages; a TrainConfig's own (3 by default) was recorded beside them in
    the model file as if it had been trained (the CLI replaced it, the Python API did not: a review)."""
    from MedSynthLogic.model_header import read_header
    from MedSynthLogic.training import train

    one = _one_stage(tiny_model_config)
    header = read_header(train(data_dir, tmp_path / "m.safetensors", one, _cfg(iterations=1, stages=3), device="cpu"))
    assert header["training"]["train_config"]["stages"] == 1 == header["model_config"]["stages"]


def test_a_run_shorter_than_its_adversarial_warm_up_is_warned(tmp_path, data_dir, tiny_model_config):
    """The warning reaches the user (a "warning" event, which the CLI and the panel show) before any iteration."""
    from MedSynthLogic.training import plan_training, train

    assert tiny_model_config.loss.lambda_adv > 0
    assert not plan_training(data_dir, tiny_model_config, _cfg(adversarial=True, warmup_iterations=7)).warnings
    events = []
    train(data_dir, tmp_path / "m.safetensors", _one_stage(tiny_model_config),
          _cfg(iterations=2, adversarial=True, warmup_iterations=5), device="cpu", callback=events.append)
    warnings = [e for e in events if e["event"] == "warning"]
    assert len(warnings) == 1 and "waits for 5 warm-up iterations per stage and this run has 2" in warnings[0]["message"]
    assert events.index(warnings[0]) < min(i for i, e in enumerate(events) if e["event"] == "iteration")


@pytest.mark.parametrize("setting", [
    dict(aug_rotate_deg=10.0), dict(aug_zoom_sd=0.1), dict(aug_context_gammas=(0.8,), aug_gamma_sd=0.2),
])
def test_a_run_of_the_papers_fcn_refuses_augmentation_it_would_ignore(tmp_path, data_dir, tiny_model_config, setting):
    from MedSynthLogic.training import plan_training, train

    with pytest.raises(UsageError, match=next(iter(setting))):
        plan_training(data_dir, tiny_model_config, _cfg(**setting))
    with pytest.raises(UsageError, match="nie2018"):
        train(data_dir, tmp_path / "m.safetensors", tiny_model_config, _cfg(**setting), device="cpu")
    assert not (tmp_path / "m.safetensors").exists()


def test_the_papers_fcn_takes_intensity_augmentation_on_its_patches_source_only(data_dir, tiny_model_config):
    import torch

    from MedSynthLogic.batch_sources import batch_source
    from MedSynthLogic.distributed import DistContext
    from MedSynthLogic.training import plan_training

    cfg = _cfg(aug_gamma_sd=0.2, aug_noise_sd=0.1, aug_slab_max=3, seed=3)
    plan = plan_training(data_dir, tiny_model_config, cfg)
    ctx = DistContext(device=torch.device("cpu"))

    def batches(train_cfg, start, n):
        source = batch_source(plan.train_h5, None, None, None, tiny_model_config, train_cfg, 0, start, ctx)
        try:
            return [source.batch(i) for i in range(start, start + n)]
        finally:
            source.close()

    plain, changed = batches(_cfg(seed=3), 0, 3), batches(cfg, 0, 3)
    for (src0, tgt0, _), (src1, tgt1, _) in zip(plain, changed):
        assert torch.equal(tgt0, tgt1), "the same patches, the target untouched"
        assert not torch.allclose(src0, src1) and torch.all(src1[src0 == 0] == 0)
    resumed = batches(cfg, 2, 1)[0]
    assert torch.equal(resumed[0], changed[2][0]), "a resumed run sees the same changes"


def test_short_run_validation_loss_falls(tmp_path, data_dir, tiny_model_config):
    from MedSynthLogic.model_file import read_header
    from MedSynthLogic.training import train

    events = []
    out = train(data_dir, tmp_path / "m.safetensors", _one_stage(tiny_model_config),
                _cfg(iterations=30, batch_size=4, val_every=10, log_every=10, lr_g=1e-2), device="cpu", callback=events.append)
    vals = [e for e in events if e["event"] == "validation"]
    assert [v["iteration"] for v in vals] == [10, 20, 30]
    assert vals[-1]["val_loss"] < vals[0]["val_loss"]
    assert all(np.isfinite(v["psnr"]) and -1 <= v["ssim"] <= 1 for v in vals)
    its = [e for e in events if e["event"] == "iteration"]
    assert len(its) == 3 and {"g", "d", "l2", "gdl", "g_adv"} <= set(its[0]["losses"]) and its[-1]["eta_s"] == 0 and its[-1]["stages"] == 1
    run = tmp_path / "m_run"
    assert (run / "training_log.csv").is_file() and (run / "loss_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert ckpt.latest_checkpoint(run).name == ckpt.checkpoint_name(0, 30)
    header = read_header(out)
    assert header["training"]["iterations_per_stage"] == 30 and header["training"]["data"]["train_patches"] == 256
    assert header["training"]["data"]["mask_files"] == 0, "the phantom cases have no mask files"


def test_resume_is_bit_identical(tmp_path, data_dir, tiny_model_config, deterministic):
    """N iterations straight equal N/2, stop, resume N/2, across an auto-context stage boundary."""
    from MedSynthLogic.training import train

    cfg = _cfg(iterations=6, batch_size=2, warmup_iterations=2, lr_decay_every=4, checkpoint_every=4)
    straight = train(data_dir, tmp_path / "a.safetensors", tiny_model_config, cfg, device="cpu")

    stop = threading.Event()

    def stop_in_stage1(event):
        if event["event"] == "iteration" and event["stage"] == 1 and event["iteration"] == 3:
            stop.set()

    with pytest.raises(Cancelled):
        train(data_dir, tmp_path / "b.safetensors", tiny_model_config, cfg, device="cpu", callback=stop_in_stage1, stop_event=stop)
    latest = ckpt.latest_checkpoint(tmp_path / "b_run")
    assert latest.name == ckpt.checkpoint_name(1, 3)
    assert not (tmp_path / "b.safetensors").exists()
    resumed = train(data_dir, tmp_path / "b.safetensors", tiny_model_config, cfg, device="cpu", resume=True)

    from safetensors.torch import load_file

    a, b = load_file(straight), load_file(resumed)
    assert a.keys() == b.keys() and any(k.startswith("stage1.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the stage-1 discriminator and optimizers match too
    sa = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "a_run"))
    sb = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "b_run"))
    for k in sa["discriminator"]:
        assert torch.equal(sa["discriminator"][k], sb["discriminator"][k]), k
    assert torch.equal(sa["opt_g"]["state"][0]["exp_avg"], sb["opt_g"]["state"][0]["exp_avg"])


def test_stop_after_runs_a_schedule_as_slices_equal_to_one_run(tmp_path, data_dir, tiny_model_config, deterministic):
    """Slices of 6 (ends exactly at stage 0's end), 4 (into stage 1), then the rest give one run's weights."""
    from MedSynthLogic.training import train

    cfg = _cfg(iterations=6, batch_size=2, warmup_iterations=2, lr_decay_every=4, checkpoint_every=4)
    straight = train(data_dir, tmp_path / "a.safetensors", tiny_model_config, cfg, device="cpu")
    out, run = tmp_path / "b.safetensors", tmp_path / "b_run"
    with pytest.raises(UsageError, match="at least 1 iteration"):
        train(data_dir, out, tiny_model_config, cfg, device="cpu", stop_after=0)
    assert train(data_dir, out, tiny_model_config, cfg, device="cpu", stop_after=6) is None
    assert ckpt.latest_checkpoint(run).name == ckpt.checkpoint_name(0, 6) and not out.exists()
    assert train(data_dir, out, tiny_model_config, cfg, device="cpu", resume=True, stop_after=4) is None
    assert ckpt.latest_checkpoint(run).name == ckpt.checkpoint_name(1, 4) and not out.exists()
    assert train(data_dir, out, tiny_model_config, cfg, device="cpu", resume=True, stop_after=100) == out

    from safetensors.torch import load_file

    a, b = load_file(straight), load_file(out)
    assert a.keys() == b.keys() and any(k.startswith("stage1.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_on_data_prepared_again_with_another_split_is_refused(tmp_path, tiny_model_config):
    """A data folder prepared again (here with c0 as validation instead of c2) used to be resumed silently: the
    model's record then called cases it had trained on validation cases."""
    from MedSynthLogic.dataset_prep import Case, prepare_dataset
    from MedSynthLogic.training import train

    cfg = _one_stage(tiny_model_config)
    data = make_phantom_data(tmp_path / "cases", cfg, patches_per_case=16)
    out = tmp_path / "m.safetensors"
    assert train(data, out, cfg, _cfg(), device="cpu", stop_after=2) is None
    cases = [Case(f"c{s}", tmp_path / "cases" / f"c{s}_t1ce.nii.gz", tmp_path / "cases" / f"c{s}_t2.nii.gz") for s in range(3)]
    prepare_dataset(cases, data, cfg, patches_per_case=16, val_cases=["c0"], seed=0, overwrite=True)
    with pytest.raises(UsageError, match=r"data folder has changed.*val_case_ids \['c2'\] → \['c0'\]") as refused:
        train(data, out, cfg, _cfg(), device="cpu", resume=True)
    assert refused.value.reason == "data_changed" and not out.exists()


@pytest.mark.parametrize("val_every", [0, 4])
def test_the_validation_patches_context_is_built_only_when_the_patch_loss_reads_it(tmp_path, data_dir, tiny_model_config,
                                                                                  val_every):
    """Stage 2 used to synthesize every validation volume as its validation patches' context even with --val-every 0
    (about 31 s on five small cases), and for the U-Net, which validates on whole volumes only. The weights and the
    validation losses stayed the same (a 2-stage FCN and U-Net, each with validation every 4 iterations and with
    none, compared with the commit before: identical tensor digests and losses)."""
    from MedSynthLogic.training import train

    events = []
    train(data_dir, tmp_path / "m.safetensors", tiny_model_config, _cfg(iterations=4, val_every=val_every), device="cpu",
          callback=events.append)
    splits = {e.get("split") for e in events if e["event"] == "progress" and e.get("task") == "context"}
    assert splits == ({"train", "val"} if val_every else {"train"})


def test_stop_event_writes_loadable_checkpoint_and_corrupt_is_refused(tmp_path, data_dir, tiny_model_config):
    from MedSynthLogic.training import train

    stop = threading.Event()
    stop.set()
    events = []
    with pytest.raises(Cancelled):
        train(data_dir, tmp_path / "m.safetensors", _one_stage(tiny_model_config), _cfg(), device="cpu", stop_event=stop, callback=events.append)
    path = ckpt.latest_checkpoint(tmp_path / "m_run")
    assert [e["path"] for e in events if e["event"] == "checkpoint"] == [str(path)]
    state = ckpt.load_checkpoint(path)
    assert state["stage"] == 0 and state["iteration"] == 1 and not state["stage_done"]
    assert json.loads(state["model_config"])["stages"] == 1
    assert set(state["rng"]) >= {"python_state", "numpy_keys", "torch"}
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError):
        ckpt.load_checkpoint(path)
    assert ckpt.latest_checkpoint(tmp_path / "m_run") is None


def test_a_fresh_run_refuses_a_run_folder_with_checkpoints_and_resume_takes_it(tmp_path, data_dir, tiny_model_config):
    """Forgetting --resume, or reusing --run-dir for another run, must not replace the earlier run's checkpoints."""
    from MedSynthLogic.training import train

    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        train(data_dir, tmp_path / "m.safetensors", _one_stage(tiny_model_config), _cfg(), device="cpu", stop_event=stop)
    kept = ckpt.latest_checkpoint(tmp_path / "m_run")
    before = kept.read_bytes()
    for out, run_dir in ((tmp_path / "m.safetensors", None), (tmp_path / "other.safetensors", tmp_path / "m_run")):
        with pytest.raises(OutputError, match="--resume") as err:
            train(data_dir, out, _one_stage(tiny_model_config), _cfg(), device="cpu", run_dir=run_dir)
        assert err.value.exit_code == 7 and kept.name in str(err.value)
    assert kept.read_bytes() == before and not (tmp_path / "other.safetensors").exists()
    events = []
    with pytest.raises(UsageError, match=r"another schedule \(iterations 8 → 2\)"):
        train(data_dir, tmp_path / "m.safetensors", _one_stage(tiny_model_config), _cfg(iterations=2), device="cpu",
              resume=True)
    with pytest.raises(UsageError, match="--keep-checkpoints must be at least 1"):
        train(data_dir, tmp_path / "m.safetensors", _one_stage(tiny_model_config), _cfg(), device="cpu", resume=True,
              keep_checkpoints=0)
    out = train(data_dir, tmp_path / "m.safetensors", _one_stage(tiny_model_config), _cfg(log_every=2), device="cpu",
                resume=True, callback=events.append)
    assert out is not None and out.exists()
    starts = [e for e in events if e["event"] == "stage" and e["status"] == "start"]
    assert starts == [{"event": "stage", "stage": 0, "stages": 1, "status": "start", "resumed_from": str(kept), "iteration": 1}]


def test_two_stage_model_file(tmp_path, data_dir, tiny_model_config):
    from MedSynthLogic.model_file import load_model
    from MedSynthLogic.training import train

    events = []
    out = train(data_dir, tmp_path / "acm.safetensors", tiny_model_config, _cfg(iterations=3, batch_size=2, val_every=3, adversarial=False),
                device="cpu", callback=events.append, command=["medsynth", "train"])
    loaded = load_model(out)
    assert len(loaded.chain.stages) == 2 and loaded.chain.stages[1].config.in_channels == 2
    assert loaded.header["training"]["command"] == ["medsynth", "train"]
    assert [e["stage"] for e in events if e["event"] == "stage" and e["status"] == "end"] == [0, 1]
    assert "d" not in [e for e in events if e["event"] == "iteration"][0]["losses"]
    assert set(loaded.header["metrics"]["validation"]) == {"stage0", "stage1"}


def test_a_stop_while_building_the_context_says_what_to_do(data_dir, tiny_model_config):
    """A stop that came during the stage-k synthesis of the auto-context inputs said only "Synthesis cancelled.":
    nothing of the checkpoints kept or of --resume."""
    from MedSynthLogic.errors import Cancelled
    from MedSynthLogic.models import build_generators
    from MedSynthLogic.training import build_context

    class StopInside:
        """Not set at the per-case check, set once the synthesis asks."""

        def __init__(self) -> None:
            self.asked = 0

        def is_set(self) -> bool:
            self.asked += 1
            return self.asked > 1

    chain = build_generators(tiny_model_config).eval()
    with pytest.raises(Cancelled, match="while building the auto-context inputs") as stopped:
        build_context(chain, data_dir / "train.h5", 1, torch.device("cpu"), cancel=StopInside())
    assert "--resume" in stopped.value.hint and stopped.value.exit_code == 130


def test_context_is_previous_stage_on_padded_grid(data_dir, tiny_model_config):
    """Stage-1 patches carry the stage-0 synthesis cut at the same corner as the source (and flipped with it)."""
    from MedSynthLogic.h5data import PatchDataset, load_volumes
    from MedSynthLogic.models import build_generators
    from MedSynthLogic.training import build_context

    torch.manual_seed(0)
    chain = build_generators(tiny_model_config).eval()
    ctx = build_context(chain, data_dir / "train.h5", 1, torch.device("cpu"))
    vols = load_volumes(data_dir / "train.h5")
    for cid, arr in ctx.items():
        assert arr.shape == vols[cid]["source"].shape
    ds = PatchDataset(data_dir / "train.h5", context=ctx)
    unflipped = np.flatnonzero(~ds.flipped)[:8]
    src, _ = ds.read_batch(unflipped)
    assert src.shape[1] == 2
    pad = vols["c0"]["pad"]
    with torch.no_grad():
        direct = chain.stages[0](src[:, :1]).numpy()
    inner = src[:, 1:, pad:-pad, pad:-pad, pad:-pad].numpy()
    # context inside the patch centre equals stage 0 applied to the patch itself (valid convs are exact)
    np.testing.assert_allclose(inner, direct, atol=2e-3)


def _stage_weights(chain, k):
    return {n: t.clone() for n, t in chain.stages[k].state_dict().items()}


def test_init_model_adds_a_stage_and_keeps_the_earlier_ones(tmp_path, data_dir, tiny_model_config):
    """--init-model + --start-stage: a trained 1-stage model file becomes stage 0 of a 2-stage model, untouched."""
    from MedSynthLogic.model_file import load_model
    from MedSynthLogic.training import train

    one = train(data_dir, tmp_path / "one.safetensors", _one_stage(tiny_model_config), _cfg(iterations=2), device="cpu")
    before = _stage_weights(load_model(one).chain, 0)
    events = []
    two = train(data_dir, tmp_path / "two.safetensors", tiny_model_config, _cfg(iterations=3), device="cpu",
                start_stage=1, init_model=one, callback=events.append)
    assert [e["stage"] for e in events if e["event"] == "stage" and e["status"] == "start"] == [1]
    start = next(e for e in events if e["event"] == "stage")  # stage 1 is new: it used to "go on from" the file
    assert start.get("earlier_stages_from") == str(one) and "resumed_from" not in start
    loaded = load_model(two)
    assert loaded.stages == 2
    after = _stage_weights(loaded.chain, 0)
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert loaded.header["training"]["resumed_from"] == str(one)
    # stage 0 came from the file: the record counts the one stage and the patches this run trained (3 iterations of 4)
    training = loaded.header["training"]
    assert (training["stages_trained"], training["stages_from_file"], training["patches_seen"]) == (1, 1, 3 * 4)
    # an init file that gives only the number of its cases: the new file says whose cases it cannot name
    from MedSynthLogic.model_file import save_model
    from MedSynthLogic.model_summary import unrecorded_training_cases

    counted = save_model(tmp_path / "counted.safetensors", load_model(one).chain, load_model(one).config,
                         training={"data": {"train_cases": 9}})
    three = train(data_dir, tmp_path / "three.safetensors", tiny_model_config, _cfg(iterations=1), device="cpu",
                  start_stage=1, init_model=counted, run_dir=tmp_path / "run3")
    assert unrecorded_training_cases(load_model(three).header) == ["counted.safetensors"]


def test_init_model_refuses_what_cannot_be_extended(tmp_path, data_dir, tiny_model_config):
    import dataclasses

    from MedSynthLogic.config import GeneratorConfig
    from MedSynthLogic.errors import UsageError
    from MedSynthLogic.training import train

    one = train(data_dir, tmp_path / "one.safetensors", _one_stage(tiny_model_config), _cfg(iterations=1), device="cpu")
    three = dataclasses.replace(tiny_model_config, stages=3)
    with pytest.raises(UsageError, match="has 1 stage"):
        train(data_dir, tmp_path / "b.safetensors", three, _cfg(), device="cpu", start_stage=2, init_model=one)
    wider = dataclasses.replace(tiny_model_config, generator=GeneratorConfig(filters=(4, 4, 4, 8, 8, 8, 4, 8, 1)))
    with pytest.raises(ModelFileError, match="differs from this training's model config in generator"):
        train(data_dir, tmp_path / "c.safetensors", wider, _cfg(), device="cpu", start_stage=1, init_model=one)
    assert not (tmp_path / "c.safetensors").exists()
    from MedSynthLogic.training.state import open_init_model

    other_pair = dataclasses.replace(tiny_model_config, source_name="T1", target_name="FLAIR")
    with pytest.raises(ModelFileError, match="in source_name, target_name"):  # used to become its stage 0 silently
        open_init_model(one, other_pair)
    other_patch = dataclasses.replace(tiny_model_config, source_patch=tiny_model_config.source_patch + 2)
    with pytest.raises(ModelFileError, match="in source_patch"):  # the FCN's patch fixes its output geometry
        open_init_model(one, other_patch)


def test_init_model_continues_a_stage_exported_mid_way(tmp_path, data_dir, tiny_model_config):
    """A candidate exported from a stopped run continues on a machine without the run folder: --init-model with
    --start-stage 0 takes the exported weights and goes on at the exported iteration (the schedule continues)."""
    from MedSynthLogic.model_file import load_model
    from MedSynthLogic.training import export_checkpoint, train

    stop = threading.Event()

    def stop_at_3(event):
        if event["event"] == "iteration" and event["iteration"] == 3:
            stop.set()

    with pytest.raises(Cancelled):
        train(data_dir, tmp_path / "a.safetensors", tiny_model_config, _cfg(iterations=6), device="cpu",
              run_dir=tmp_path / "run", callback=stop_at_3, stop_event=stop)
    with pytest.raises(UsageError, match="0 completed stage") as no_stages:  # what the README's "after Stop" gives
        export_checkpoint(ckpt.latest_checkpoint(tmp_path / "run"), tmp_path / "candidate.safetensors")
    assert no_stages.value.hint == "Pass --stages 1 for the stages up to the one in progress (its weights at iteration 3)."
    candidate = export_checkpoint(ckpt.latest_checkpoint(tmp_path / "run"), tmp_path / "candidate.safetensors", stages=1)
    exported = _stage_weights(load_model(candidate).chain, 0)
    data = load_model(candidate).header["training"]["data"]  # what `medsynth info` shows as its training data
    assert data["train_cases"] == 2 and data["val_case_ids"] == ["c2"]
    assert "iterations_per_stage" not in load_model(candidate).header["training"]  # its stage 1 ran 3 of 6
    assert (data["source"], data["target"]) == ("<case>_t1ce.nii.gz", "<case>_t2.nii.gz")
    events = []
    out = train(data_dir, tmp_path / "b.safetensors", tiny_model_config, _cfg(iterations=6), device="cpu",
                run_dir=tmp_path / "fresh", init_model=candidate, callback=events.append)
    steps = [e["iteration"] for e in events if e["event"] == "iteration" and e["stage"] == 0]
    assert steps[0] == 4 and steps[-1] == 6
    assert load_model(out).header["training"]["resumed_from"] == str(candidate)
    assert not all(torch.equal(exported[n], _stage_weights(load_model(out).chain, 0)[n]) for n in exported)
    finished = ckpt.latest_checkpoint(tmp_path / "fresh")  # its last stage finished: no stage "in progress" to offer
    with pytest.raises(UsageError, match=r"holds 2 completed stage\(s\) \(stage 2 finished\); cannot export 3") as more:
        export_checkpoint(finished, tmp_path / "three.safetensors", stages=3)
    assert more.value.hint == "Pass --stages 1 to 2."
    finished_export = load_model(export_checkpoint(finished, tmp_path / "two.safetensors")).header["training"]
    assert finished_export["iterations_per_stage"] == 6  # as the finished run's file says it; `info` showed none


def test_resume_continues_a_stopped_start_stage_run(tmp_path, data_dir, tiny_model_config):
    """Calling the same --start-stage command again with --resume continues the stage instead of restarting it."""
    from MedSynthLogic.training import train

    from MedSynthLogic.model_file import load_model, save_model

    trained = load_model(train(data_dir, tmp_path / "trained.safetensors", _one_stage(tiny_model_config),
                               _cfg(iterations=2), device="cpu"))
    record = dict(trained.header["training"], data={"train_case_ids": ["elsewhere_7"]})  # trained on other cases
    one = save_model(tmp_path / "one.safetensors", trained.chain, trained.config, record)
    stop = threading.Event()

    def stop_after_two(event):
        if event["event"] == "iteration" and event["iteration"] == 2:
            stop.set()

    kw = dict(device="cpu", start_stage=1, init_model=one, run_dir=tmp_path / "run")
    with pytest.raises(Cancelled):
        train(data_dir, tmp_path / "two.safetensors", tiny_model_config, _cfg(iterations=5), stop_event=stop,
              callback=stop_after_two, **kw)
    events = []
    two = train(data_dir, tmp_path / "two.safetensors", tiny_model_config, _cfg(iterations=5), resume=True,
                callback=events.append, **kw)
    assert [e["iteration"] for e in events if e["event"] == "iteration"] == [3, 4, 5]
    from MedSynthLogic.model_file import read_header

    training = read_header(two)["training"]  # the resume keeps knowing that stage 0 came from the file
    assert (training["stages_trained"], training["stages_from_file"], training["patches_seen"]) == (1, 1, 5 * 4)
    assert training["stages_from_path"] == str(one) and training["resumed_from"] != str(one)  # the checkpoint resumed
    # stage 0's cases are this model's too, through the resume (evaluate called them held out: a review, session 43)
    from MedSynthLogic.model_summary import all_training_cases

    assert training["inherited_train_cases"] == ["elsewhere_7"]
    own = training["data"]["train_case_ids"]
    assert "elsewhere_7" not in own and all_training_cases(read_header(two)) == sorted(own + ["elsewhere_7"])


def test_start_stage_from_a_checkpoint_retrains_only_the_later_stages(tmp_path, data_dir, tiny_model_config):
    from MedSynthLogic.model_file import load_model
    from MedSynthLogic.training import train

    first = train(data_dir, tmp_path / "m.safetensors", tiny_model_config, _cfg(iterations=2), device="cpu")
    before = load_model(first).chain
    with pytest.raises(DataError, match="holds no checkpoint"):
        train(data_dir, tmp_path / "x.safetensors", tiny_model_config, _cfg(), device="cpu", start_stage=1, run_dir=tmp_path / "empty")
    again = train(data_dir, tmp_path / "m.safetensors", tiny_model_config, _cfg(iterations=2, seed=5), device="cpu", start_stage=1)
    after = load_model(again).chain
    b0, a0 = _stage_weights(before, 0), _stage_weights(after, 0)
    assert all(torch.equal(b0[n], a0[n]) for n in b0)
    b1, a1 = _stage_weights(before, 1), _stage_weights(after, 1)
    assert not all(torch.equal(b1[n], a1[n]) for n in b1)


def test_retraining_a_stage_does_not_report_the_replaced_stages_validation_or_time(tmp_path, data_dir, tiny_model_config):
    """`--start-stage 1` from a checkpoint of stage 2's end carried that checkpoint's validation of stage 2 and its
    whole time: the new model, retrained without validation, reported the replaced stage's PSNR as its own (a review)."""
    from MedSynthLogic.model_header import read_header
    from MedSynthLogic.training import train

    first = read_header(train(data_dir, tmp_path / "m.safetensors", tiny_model_config, _cfg(iterations=2, val_every=2),
                              device="cpu"))
    assert set(first["metrics"]["validation"]) == {"stage0", "stage1"} and "psnr" in first["metrics"]
    again = read_header(train(data_dir, tmp_path / "m.safetensors", tiny_model_config, _cfg(iterations=2, seed=5),
                              device="cpu", start_stage=1))
    assert set(again["metrics"]["validation"]) == {"stage0"} and "psnr" not in again["metrics"]
    assert again["metrics"]["validation"]["stage0"] == first["metrics"]["validation"]["stage0"]
    assert again["training"]["wall_time_s"] < first["training"]["wall_time_s"]


def test_retraining_a_stage_taken_from_a_model_file_counts_it_as_trained(tmp_path, data_dir, tiny_model_config):
    """A run whose first two stages came from a model file, retrained from stage 2 (`--start-stage 1`) in its folder,
    still said two stages came from that file (and named its cases): the retrained stage was counted as the file's."""
    import dataclasses

    from MedSynthLogic.model_header import read_header
    from MedSynthLogic.training import train

    three = dataclasses.replace(tiny_model_config, stages=3)
    donor = train(data_dir, tmp_path / "donor.safetensors", three, _cfg(iterations=1), device="cpu")
    run = tmp_path / "run"
    first = read_header(train(data_dir, tmp_path / "a.safetensors", three, _cfg(iterations=1), device="cpu",
                              start_stage=2, init_model=donor, run_dir=run))
    assert first["training"]["stages_from_file"] == 2 and first["training"]["stages_trained"] == 1
    again = read_header(train(data_dir, tmp_path / "b.safetensors", three, _cfg(iterations=1, seed=3), device="cpu",
                              start_stage=1, run_dir=run))
    assert again["training"]["stages_from_file"] == 1 and again["training"]["stages_trained"] == 2
    assert again["training"]["stages_from_path"] == first["training"]["stages_from_path"]


def test_retraining_a_later_stage_in_its_folder_sets_the_old_checkpoints_aside(tmp_path, data_dir, tiny_model_config):
    """The old run's later checkpoints sorted after the new run's: pruning deleted each new one as it was written,
    and --resume went on from the old run (a review). They move to superseded_1/, kept; the new run resumes."""
    from MedSynthLogic.training import train

    run = tmp_path / "run"
    train(data_dir, tmp_path / "m.safetensors", tiny_model_config, _cfg(iterations=2, checkpoint_every=1), device="cpu",
          run_dir=run)
    old = sorted(p.name for p in run.glob("ckpt_s01_*.pt"))
    assert old
    stop, events = threading.Event(), []

    def stop_after_two(event):
        events.append(event)
        if event["event"] == "iteration" and event["iteration"] == 2:
            stop.set()

    kw = dict(device="cpu", start_stage=1, run_dir=run, keep_checkpoints=1)
    cfg = _cfg(iterations=4, checkpoint_every=1, seed=5)
    with pytest.raises(Cancelled):
        train(data_dir, tmp_path / "n.safetensors", tiny_model_config, cfg, stop_event=stop, callback=stop_after_two, **kw)
    assert sorted(p.name for p in (run / "superseded_1").glob("*.pt")) == old
    assert any(e["event"] == "warning" and "superseded_1" in e["message"] for e in events)
    assert [p.name for p in run.glob("ckpt_s01_*.pt")] == [ckpt.checkpoint_name(1, 2)]
    resumed = []
    train(data_dir, tmp_path / "n.safetensors", tiny_model_config, cfg, resume=True, callback=resumed.append, **kw)
    assert [e["iteration"] for e in resumed if e["event"] == "iteration"] == [3, 4]
    again = train(data_dir, tmp_path / "p.safetensors", tiny_model_config, _cfg(iterations=2, seed=6), device="cpu",
                  start_stage=1, run_dir=run)  # the new run's own checkpoints set aside in their turn
    from MedSynthLogic.model_file import read_header

    kept = Path(read_header(again)["training"]["resumed_from"])
    assert kept.parent == run / "superseded_2" and kept.is_file()  # the record names where its earlier stage is now
    with pytest.raises(OutputError, match="already holds checkpoints"):  # a model file's stages: the folder is not read
        train(data_dir, tmp_path / "o.safetensors", tiny_model_config, cfg, device="cpu", start_stage=1, run_dir=run,
              init_model=tmp_path / "m.safetensors")


def test_a_validation_pause_is_left_out_of_the_rate_and_eta(monkeypatch):
    """A 30 s validation inside a 2-iteration window made that line say 0.26 patches/s instead of 4."""
    from MedSynthLogic.distributed import DistContext
    from MedSynthLogic.training import monitor

    clock = [100.0]
    monkeypatch.setattr(monitor.time, "perf_counter", lambda: clock[0])
    log = monitor.LossLog(TrainConfig(iterations=10, log_every=2, batch_size=4), DistContext(), 10, 0, 0.0)
    clock[0] += 1.0
    assert log.add({"g": 1.0}, 1, 1e-3) is None
    clock[0] += 30.0 + 1.0  # a validation of 30 s, then the second iteration
    log.exclude(30.0)
    event = log.add({"g": 1.0}, 2, 1e-3)
    assert event["patches_per_s"] == pytest.approx(2 * 4 / 2.0) and event["eta_s"] == pytest.approx(8 * 1.0)


def test_one_training_at_a_time_in_a_run_folder(tmp_path, data_dir, tiny_model_config):
    """Two trainings in one run folder (a run and, while it trained, the same command with --resume) both ran to the
    end: interleaved checkpoints, every CSV row twice, two model writes. A held lock refuses the second; the system
    drops a killed holder's lock (no stale lock to guess at: a lock file naming this very process is no holder)."""
    import json
    import os
    import socket
    import subprocess
    import sys
    import textwrap

    from MedSynthLogic.errors import OutputError
    from MedSynthLogic.training import train
    from MedSynthLogic.training.run_lock import LOCK_NAME, acquire_run_folder, release_run_folder

    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from MedSynthLogic.training.run_lock import acquire_run_folder
        held = acquire_run_folder(r"{run}")
        print("held", flush=True)
        time.sleep(120)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputError, match=rf"is in use by another training \(process {holder.pid} on ") as refused:
            train(data_dir, tmp_path / "m.safetensors", _one_stage(tiny_model_config), _cfg(iterations=2), device="cpu",
                  run_dir=run)
        assert refused.value.exit_code == 7 and refused.value.reason == "run_folder_in_use"
        assert not list(run.glob("ckpt_*.pt")) and not (tmp_path / "m.safetensors").exists()
    finally:
        holder.kill()
        holder.wait()
    # killed: its lock went with it, though its file still names it; one naming this process (a restarted container
    # reuses pids) is no holder either
    (run / LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    out = train(data_dir, tmp_path / "m.safetensors", _one_stage(tiny_model_config), _cfg(iterations=2), device="cpu",
                run_dir=run)
    assert out.is_file()
    mine = acquire_run_folder(run)
    release_run_folder(mine)
    release_run_folder(acquire_run_folder(run))  # released: taken again at once


def test_validation_scores_clip_an_overshoot_as_evaluate_clips_the_written_volume():
    """An overshoot above the target's top is clipped before scoring: it cannot cost more than the clipped error."""
    from MedSynthLogic.config import ModelConfig
    from MedSynthLogic.metrics import psnr
    from MedSynthLogic.training.validation import validation_scores

    rng = np.random.default_rng(0)
    target = rng.uniform(0.2, 1.0, size=(16, 16, 16)).astype(np.float32)
    mask = np.ones(target.shape, bool)
    pred = target.copy()
    pred[:8] = 3.0  # far above clip_max 1.0
    cfg = ModelConfig()
    score, _ = validation_scores(pred, target, mask, cfg)
    assert score == pytest.approx(psnr(np.minimum(pred, 1.0), target, mask, 1.0))
    assert score > psnr(pred, target, mask, 1.0) + 3.0


def test_a_stop_during_validation_does_not_wait_for_it(tmp_path, data_dir, tiny_model_config, monkeypatch):
    """Whole validation volumes take minutes on a CPU; a stop waited for them, and the panel's grace time ran out and
    killed the training without its checkpoint. Now the validation is abandoned (no result) and the stop checkpoints."""
    from MedSynthLogic.training import train, validation

    stop, synthesized = threading.Event(), []
    real = validation.whole_volume

    def stop_while_validating(chain, source, mask, stages, device, cancel=None):
        stop.set()  # the user presses Stop while the first validation volume is synthesized
        synthesized.append(cancel is stop)
        return real(chain, source, mask, stages, device, cancel=cancel)

    monkeypatch.setattr(validation, "whole_volume", stop_while_validating)
    events = []
    with pytest.raises(Cancelled, match="Training stopped at stage 1, iteration 2"):
        train(data_dir, tmp_path / "m.safetensors", _one_stage(tiny_model_config), _cfg(val_every=2),
              device="cpu", stop_event=stop, callback=events.append)
    assert synthesized == [True]  # the synthesis was given the stop event, and raised Cancelled at once
    assert not [e for e in events if e["event"] == "validation"]
    assert ckpt.checkpoint_iteration(ckpt.latest_checkpoint(tmp_path / "m_run")) == (0, 2)


def test_a_stop_in_a_stages_last_validation_resumes_to_the_uninterrupted_weights(tmp_path, data_dir, tiny_model_config,
                                                                                  deterministic, monkeypatch):
    """A stop during the validation after a stage's last iteration checkpointed the stage as done without its end
    (the EMA's weights copied into G): the resumed run kept the raw weights for good, and the stage's final figures
    were lost (a DDP review, session 42: 144 of 164 tensors differed). Now the stage ends on resume, after the
    abandoned validation runs again."""
    from safetensors.torch import load_file

    from MedSynthLogic.model_file import read_header
    from MedSynthLogic.training import train, validation

    cfg = _cfg(iterations=4, batch_size=2, val_every=4, ema_decay=0.9)
    straight = train(data_dir, tmp_path / "a.safetensors", tiny_model_config, cfg, device="cpu")
    stop, real = threading.Event(), validation.whole_volume

    def stop_while_validating(chain, source, mask, stages, device, cancel=None):
        stop.set()
        return real(chain, source, mask, stages, device, cancel=cancel)

    monkeypatch.setattr(validation, "whole_volume", stop_while_validating)
    with pytest.raises(Cancelled, match="stage 1, iteration 4"):
        train(data_dir, tmp_path / "b.safetensors", tiny_model_config, cfg, device="cpu", stop_event=stop)
    monkeypatch.setattr(validation, "whole_volume", real)
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "b_run"))
    assert (state["stage"], state["iteration"], state["stage_done"]) == (0, 4, False)
    resumed = train(data_dir, tmp_path / "b.safetensors", tiny_model_config, cfg, device="cpu", resume=True)
    a, b = load_file(straight), load_file(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    figures = [read_header(path)["metrics"]["validation"]["stage0"] for path in (straight, resumed)]
    assert figures[0] == figures[1] and figures[0]["iteration"] == 4
