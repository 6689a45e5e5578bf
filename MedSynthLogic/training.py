"""``medsynth train``: the adversarial training loop of Nie et al. with auto-context (ACM) stages.

Stage k trains generator k and a fresh discriminator. Stage 0 sees source patches; stage k > 0 sees
``[source, synthesis of stages 0..k−1]``, where that synthesis is computed over every stored volume with the
already trained (frozen, eval-mode) earlier stages, exactly as whole-volume inference will compute it, then
edge-padded onto the padded grid the patch corners refer to.

Every iteration: D is updated with BCE(real→1, fake→0) on detached synthesis, then G with
λ_adv·BCE(D(G(x))→1) + λ_l2·L2 + λ_gdl·GDL. Batches are a pure function of (seed, stage, iteration, rank),
so a run stopped at any checkpoint and resumed gives bit-identical weights to one never stopped (CPU), and
under ``torchrun`` each rank reads its own share of every global batch. On CUDA the loop runs under autocast
(bf16 where supported, else fp16 with a GradScaler).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from . import checkpoint as ckpt
from . import distributed as dist_utils
from .atomic import check_output_path
from .config import ModelConfig, TrainConfig, from_dict, load_json_config, to_dict
from .errors import Cancelled, DataError, ModelFileError, TrainingDiverged, UsageError
from .losses import generator_loss
from .batch_sources import CropSource, PatchSource
from .models import AutoContextChain, build_discriminator, build_generator, build_generators, generators_state, init_from_previous_stage
from .stage_trainer import StageTrainer, amp_settings
from .figures import plot_losses
from .progress import (
    progress_event,
    CallbackList,
    CsvLogger,
    Event,
    checkpoint_event,
    iteration_event,
    stage_event,
    validation_event,
)
from .options import build_torchrun_parser, config_overrides

Callback = Callable[[Event], None]
PREPARE_HINT = "Run `medsynth prepare <cases> <data_dir>` first to create train.h5, val.h5 and manifest.json."
VAL_PATCHES = 256


@dataclass
class TrainingPlan:
    """What a run will do, checked before any work starts so a bad data folder fails in a second, not in hours."""

    data_dir: Path
    train_h5: Path
    val_h5: Optional[Path]
    manifest: Dict[str, Any]
    n_train: int
    n_val: int
    train_cases: List[str]
    val_cases: List[str]
    source_patch: int
    target_patch: int
    stages: int
    iterations: int
    batch_size: int
    warnings: List[str] = field(default_factory=list)

    def summary(self) -> Dict[str, Any]:
        """The data part of the model file's training record."""
        return {
            "data_dir": str(self.data_dir),
            "train_patches": self.n_train,
            "val_patches": self.n_val,
            "train_cases": len(self.train_cases),
            "val_cases": len(self.val_cases),
            "val_case_ids": list(self.val_cases),
            "source_patch": self.source_patch,
            "target_patch": self.target_patch,
            "manifest": {k: v for k, v in self.manifest.items() if k not in ("cases", "splits")},
        }


def plan_training(data_dir: os.PathLike | str, model_cfg: ModelConfig, train_cfg: TrainConfig) -> TrainingPlan:
    """Check the data folder against the configs; raise DataError/UsageError with what to do."""
    from .h5data import patch_file_info

    if train_cfg.iterations < 1 or train_cfg.batch_size < 1:
        raise UsageError("iterations and batch_size must be at least 1.")
    if train_cfg.log_every < 1 or train_cfg.val_every < 0 or train_cfg.checkpoint_every < 0:
        raise UsageError("log_every must be ≥ 1; val_every and checkpoint_every ≥ 0 (0 = only at stage end).")
    d = Path(data_dir)
    if not d.is_dir():
        raise DataError(f"The data folder {d} does not exist.", PREPARE_HINT)
    train_h5 = d / "train.h5"
    if not train_h5.is_file():
        raise DataError(f"{train_h5} is missing.", PREPARE_HINT)
    info = patch_file_info(train_h5)
    _check_patch_sizes(info, model_cfg, train_h5)
    manifest: Dict[str, Any] = {}
    if (d / "manifest.json").is_file():
        try:
            manifest = json.loads((d / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{d / 'manifest.json'} is not readable JSON ({exc}).", PREPARE_HINT) from exc
    warnings: List[str] = []
    val_h5: Optional[Path] = d / "val.h5"
    n_val, val_cases = 0, []
    if val_h5.is_file():
        vinfo = patch_file_info(val_h5)
        _check_patch_sizes(vinfo, model_cfg, val_h5)
        n_val, val_cases = vinfo["n_patches"], list(vinfo["case_ids"])
    else:
        val_h5 = None
        warnings.append("no val.h5: training runs without validation")
    return TrainingPlan(
        data_dir=d,
        train_h5=train_h5,
        val_h5=val_h5,
        manifest=manifest,
        n_train=info["n_patches"],
        n_val=n_val,
        train_cases=list(info["case_ids"]),
        val_cases=val_cases,
        source_patch=info["source_patch"],
        target_patch=info["target_patch"],
        stages=model_cfg.stages,
        iterations=train_cfg.iterations,
        batch_size=train_cfg.batch_size,
        warnings=warnings,
    )


def _check_patch_sizes(info: Dict[str, Any], cfg: ModelConfig, path: Path) -> None:
    if info["source_patch"] != cfg.source_patch or info["target_patch"] != cfg.target_patch:
        raise DataError(
            f"{path} holds {info['source_patch']}³→{info['target_patch']}³ patches but the model needs "
            f"{cfg.source_patch}³→{cfg.target_patch}³.",
            "Re-run `medsynth prepare` with the same model config as `medsynth train`.",
        )
    if info["channels"] != 1:
        raise DataError(f"{path} stores {info['channels']}-channel source patches; expected 1.", PREPARE_HINT)
    stored = (info.get("model_config") or {}).get("normalisation")
    if stored is not None and stored != to_dict(cfg.normalisation):
        raise DataError(
            f"{path} was normalised with {json.dumps(stored)} but the model config asks for "
            f"{json.dumps(to_dict(cfg.normalisation))}; a model must be trained with the normalisation it will be applied with.",
            "Re-run `medsynth prepare` with the same model config as `medsynth train`.",
        )
    if info.get("pad", cfg.generator.halo) != cfg.generator.halo:
        raise DataError(
            f"{path} volumes are padded by {info['pad']} voxels but the generator's halo is {cfg.generator.halo}.",
            "Re-run `medsynth prepare` with the same model config as `medsynth train`.",
        )


def _resolve(device: str | torch.device) -> torch.device:
    from .devices import resolve_device

    return resolve_device(str(device))


def _rng_state() -> Dict[str, Any]:
    """All RNG states as tensors/numbers so the checkpoint loads with ``weights_only=True``."""
    py = random.getstate()
    npst = np.random.get_state()
    state: Dict[str, Any] = {
        "python_version": int(py[0]),
        "python_state": torch.tensor(py[1], dtype=torch.int64),
        "python_gauss": py[2],
        "numpy_keys": torch.from_numpy(npst[1].astype(np.int64)),
        "numpy_pos": int(npst[2]),
        "numpy_has_gauss": int(npst[3]),
        "numpy_gauss": float(npst[4]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate((state["python_version"], tuple(int(v) for v in state["python_state"].tolist()), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], state["numpy_has_gauss"], state["numpy_gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _whole_volume(
    chain: AutoContextChain, source: np.ndarray, mask: Optional[np.ndarray], stages: int, device: torch.device, cancel: Optional[threading.Event] = None
) -> np.ndarray:
    """Stage-by-stage synthesis of an unpadded normalised source (network units), exactly as inference runs it.

    fp32 on every device: the context a later stage learns from must be the function itself, not a
    half-precision approximation of it. ``mask`` None gives the raw, unmasked synthesis (auto-context input).
    """
    from .inference import synthesize_array

    was_training = [g.training for g in chain.stages]
    chain.eval()
    try:
        out = synthesize_array(chain, source, mask, stages, device, cancel=cancel, precision="fp32")
    finally:
        for g, t in zip(chain.stages, was_training):
            g.train(t)
    return np.asarray(out, dtype=np.float32)


def _crop(arr: np.ndarray, pad: int) -> np.ndarray:
    return arr[pad:-pad, pad:-pad, pad:-pad] if pad > 0 else arr


def build_context(
    chain: AutoContextChain,
    h5_path: Path,
    stages: int,
    device: torch.device,
    cancel: Optional[threading.Event] = None,
    progress: Optional[Callable[[int, int], None]] = None,
) -> Dict[str, np.ndarray]:
    """Synthesis of stages 0..stages−1 for every volume of a patch file, edge-padded onto its padded grid.

    The earlier stages run over the unpadded source exactly as inference runs them: the FCN's raw, unmasked
    synthesis (what inference feeds its stage k), the U-Net's synthesis inside the brain mask (what inference
    feeds the U-Net's stage k); padding by the halo in edge mode then gives the context inference feeds stage k at
    the image border, on the grid the patch corners refer to. ``progress(done, total)`` is called per case.
    """
    from .h5data import patch_file_info, load_volumes
    from .patches import pad_volume

    masked = chain.config.generator.kind == "unet3d"
    context: Dict[str, np.ndarray] = {}
    ids = patch_file_info(h5_path)["case_ids"]
    for i, cid in enumerate(ids):
        if cancel is not None and cancel.is_set():
            raise Cancelled("Training was stopped while building the auto-context inputs.")
        vol = load_volumes(h5_path, cases=[cid])[cid]
        pad = vol["pad"]
        mask = _crop(vol["mask"], pad) if masked else None
        syn = _whole_volume(chain, _crop(vol["source"], pad), mask, stages, device, cancel)
        context[cid] = pad_volume(syn, pad, mode="edge").astype(np.float32)
        if progress is not None:
            progress(i + 1, len(ids))
    return context


def _context_with_progress(
    chain: AutoContextChain, plan: TrainingPlan, stage: int, stages: int, device: torch.device,
    cancel: Optional[threading.Event], emit: Callback, split: str,
) -> Dict[str, np.ndarray]:
    """build_context for one split, reporting each finished case (it takes minutes on a CPU)."""
    path = plan.train_h5 if split == "train" else plan.val_h5
    emit(progress_event("context", 0, 1, stage=stage, stages=stages, split=split))

    def report(done: int, total: int) -> None:
        emit(progress_event("context", done, total, stage=stage, stages=stages, split=split))

    return build_context(chain, path, stage, device, cancel, report)


def _batch_source(
    plan: TrainingPlan, model_cfg: ModelConfig, train_cfg: TrainConfig, stage: int, start: int,
    context_train: Optional[Dict[str, np.ndarray]], context_val: Optional[Dict[str, np.ndarray]], ctx: dist_utils.DistContext,
) -> Any:
    """The batches of the generator kind: patches for the paper's FCN, crops of whole volumes for the U-Net."""
    if model_cfg.generator.kind == "unet3d":
        return CropSource(plan.train_h5, context_train, model_cfg, train_cfg, stage, ctx)
    return PatchSource(plan.train_h5, plan.val_h5, context_train, context_val, train_cfg, stage, start, ctx)


class _LossLog:
    """Averages the losses over ``log_every`` iterations and makes the iteration event with rate and ETA."""

    def __init__(self, cfg: TrainConfig, ctx: dist_utils.DistContext, total_iterations: int, stage: int, time_offset: float) -> None:
        self.cfg, self.ctx, self.total, self.stage, self.offset = cfg, ctx, total_iterations, stage, time_offset
        self.sums: Dict[str, float] = {}
        self.count = 0
        self.window_t, self.window_n = time.perf_counter(), 0

    def add(self, losses: Dict[str, float], done: int, lr: float) -> Optional[Event]:
        for key, v in losses.items():
            self.sums[key] = self.sums.get(key, 0.0) + v
        self.count += 1
        self.window_n += 1
        if done % self.cfg.log_every and done != self.cfg.iterations:
            return None
        now = time.perf_counter()
        rate = self.window_n / max(now - self.window_t, 1e-9)
        self.window_t, self.window_n = now, 0
        avg = dist_utils.mean_over_ranks({k: v / self.count for k, v in self.sums.items()}, self.ctx)
        self.sums, self.count = {}, 0
        remaining = self.total - (self.stage * self.cfg.iterations + done)
        return iteration_event(self.stage, done, self.cfg.iterations, avg, lr, eta_s=remaining / rate,
                               patches_per_s=rate * self.cfg.batch_size * self.ctx.world_size, time_s=self.offset + now)


def _check_finite(losses: Dict[str, float], stage: int, it: int, run_dir: Path, ctx: dist_utils.DistContext) -> None:
    """Stop with TrainingDiverged before a NaN/inf loss can reach a checkpoint that rotates the good ones out."""
    if dist_utils.any_rank(not all(np.isfinite(v) for v in losses.values()), ctx):
        last = ckpt.latest_checkpoint(run_dir)
        raise TrainingDiverged(
            f"A training loss became NaN or infinite at stage {stage}, iteration {it + 1} "
            f"({', '.join(f'{k}={v:g}' for k, v in losses.items())}); no checkpoint was written after it.",
            (f"Resume from {last.name} with a lower learning rate or --precision fp32." if last is not None
             else "Start again with a lower learning rate or --precision fp32."),
        )


def _volume_metrics(pred: np.ndarray, target: np.ndarray, mask: np.ndarray, cfg: ModelConfig) -> Tuple[float, float]:
    """PSNR and SSIM inside the brain mask, in network units (the target's range is [0, clip_max])."""
    from .metrics import psnr, ssim3d

    tcfg = cfg.normalisation.target
    data_range = tcfg.clip_max - tcfg.clip_min if tcfg.mode == "percentile" else 1.0
    return float(psnr(pred, target, mask, data_range)), float(ssim3d(pred, target, mask, data_range))


class _Stopper:
    """Combines the caller's stop_event with DDP agreement, so every rank stops at the same iteration."""

    def __init__(self, event: Optional[threading.Event], ctx: dist_utils.DistContext) -> None:
        self.event, self.ctx = event, ctx

    def __call__(self) -> bool:
        flag = self.event is not None and self.event.is_set()
        return dist_utils.any_rank(flag, self.ctx)


def install_signal_handlers(stop_event: threading.Event) -> Callable[[], None]:
    """Make SIGTERM/SIGINT set ``stop_event`` (checkpoint, then stop); returns a function restoring the old handlers.

    Only the main thread may install handlers; elsewhere (Slicer, a worker thread) this does nothing and the
    caller stops training through ``stop_event`` directly. A second SIGINT interrupts at once.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old: Dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        if stop_event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop_event.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        old[sig] = signal.signal(sig, handler)

    def restore() -> None:
        for sig, h in old.items():
            signal.signal(sig, h)

    return restore


def _checkpoint_state(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    chain: AutoContextChain,
    stage: int,
    iteration: int,
    stage_done: bool,
    trainer: StageTrainer,
    elapsed_s: float,
    metrics: Dict[str, Any],
) -> Dict[str, Any]:
    state = {
        "format": "medsynth-training-state",
        "model_config": json.dumps(to_dict(model_cfg)),
        "train_config": json.dumps(to_dict(train_cfg)),
        "stage": int(stage),
        "iteration": int(iteration),
        "stage_done": bool(stage_done),
        "generators": {k: v.detach().cpu() for k, v in generators_state(chain, stages=range(stage + 1)).items()},
        "rng": _rng_state(),
        "elapsed_s": float(elapsed_s),
        "metrics": json.dumps(metrics),
    }
    state.update(trainer.state_dict())
    return state


def _load_generators(chain: AutoContextChain, state: Dict[str, Any], upto: int) -> None:
    for k in range(upto + 1):
        prefix = f"stage{k}."
        sd = {name[len(prefix):]: t for name, t in state["generators"].items() if name.startswith(prefix)}
        if not sd:
            raise ModelFileError(f"The checkpoint lacks the weights of stage {k}.")
        chain.stages[k].load_state_dict(sd)


def _load_generators_from_model(
    chain: AutoContextChain, path: os.PathLike | str, model_cfg: ModelConfig, stages: int
) -> Optional[Tuple[Dict[str, torch.Tensor], int]]:
    """Copy the first ``stages`` generators of a model file into ``chain`` (to add auto-context stages to a model).

    When the file also holds stage ``stages`` (e.g. a candidate exported mid-stage with ``medsynth export``), its
    weights are returned with the iteration to continue from (the exported checkpoint's, or 0), so a run can go on
    from a committed model file on a machine without the run folder.
    """
    from .model_file import load_model

    loaded = load_model(path, stages=None)
    theirs, ours = to_dict(loaded.config), to_dict(model_cfg)
    differ = sorted(k for k in ("generator", "normalisation", "source_patch") if theirs[k] != ours[k])
    if differ:
        raise ModelFileError(
            f"The model file {path} differs from this training's model config in {', '.join(differ)}.",
            "Train with the model file's own configuration (`medsynth info` shows it), changing only the stage count.",
        )
    if loaded.stages < max(stages, 1):
        raise UsageError(f"The model file {path} has {loaded.stages} stage(s); start_stage {stages} needs {max(stages, 1)}.")
    for k in range(stages):
        chain.stages[k].load_state_dict(loaded.chain.stages[k].state_dict())
    if loaded.stages <= stages:
        return None
    record = loaded.header.get("training", {})
    partial = record.get("checkpoint_stage") == stages and not record.get("checkpoint_stage_done", True)
    return loaded.chain.stages[stages].state_dict(), int(record.get("checkpoint_iteration", 0)) if partial else 0


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def train(
    data_dir: os.PathLike | str,
    out_model: os.PathLike | str,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    device: str | torch.device = "auto",
    resume: bool = False,
    run_dir: Optional[os.PathLike | str] = None,
    callback: Optional[Callback] = None,
    stop_event: Optional[threading.Event] = None,
    start_stage: int = 0,
    command: Optional[Sequence[str]] = None,
    keep_checkpoints: int = 3,
    init_model: Optional[os.PathLike | str] = None,
) -> Path:
    """Train all auto-context stages and write the model file; returns its path.

    ``resume`` continues from the newest complete checkpoint in ``run_dir`` (default ``<out stem>_run/``)
    and starts afresh when there is none. ``start_stage`` > 0 retrains from that stage on, taking the earlier
    stages from the newest checkpoint that holds them, or from the model file ``init_model`` (to add stages to a
    trained model); when ``init_model`` also holds stage ``start_stage``, that stage starts from its weights at
    the iteration it was exported at (fresh optimisers), so a schedule continues from a committed candidate on a new
    machine; with ``resume`` a run that already reached ``start_stage`` continues. ``stop_event`` (or SIGTERM/SIGINT with
    :func:`install_signal_handlers`) writes a checkpoint and raises :class:`Cancelled`.
    """
    out = check_output_path(out_model, overwrite=True)
    plan = plan_training(data_dir, model_cfg, train_cfg)
    if not 0 <= start_stage < model_cfg.stages:
        raise UsageError(f"start_stage must be in 0..{model_cfg.stages - 1}.")
    ctx = dist_utils.init_distributed(_resolve(device))
    try:
        return _train(plan, out, model_cfg, train_cfg, ctx, resume, run_dir, callback, stop_event, start_stage, command,
                      keep_checkpoints, init_model)
    finally:
        dist_utils.cleanup(ctx)


def _train(
    plan: TrainingPlan,
    out: Path,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    ctx: dist_utils.DistContext,
    resume: bool,
    run_dir_arg: Optional[os.PathLike | str],
    callback: Optional[Callback],
    stop_event: Optional[threading.Event],
    start_stage: int,
    command: Optional[Sequence[str]],
    keep: int,
    init_model: Optional[os.PathLike | str] = None,
) -> Path:
    from .h5data import load_volumes

    dev = ctx.device
    main = ctx.is_main
    run_dir = Path(run_dir_arg) if run_dir_arg is not None else out.with_name(out.name.split(".")[0] + "_run")
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    dist_utils.barrier(ctx)
    emit = CallbackList([callback, CsvLogger(run_dir / "training_log.csv")] if main else [])
    csv_path, png_path = run_dir / "training_log.csv", run_dir / "loss_curves.png"
    stopper = _Stopper(stop_event, ctx)
    amp_dtype = amp_settings(dev, train_cfg.precision)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    random.seed(train_cfg.seed)
    np.random.seed(train_cfg.seed)
    torch.manual_seed(train_cfg.seed)
    chain = build_generators(model_cfg)
    state: Optional[Dict[str, Any]] = None
    first_stage, first_iteration = start_stage, 0
    resumed_from: Optional[str] = None
    if resume or (start_stage > 0 and init_model is None):
        found = ckpt.latest_checkpoint(run_dir)
        if found is not None:
            state = ckpt.load_checkpoint(found)
            if from_dict(ModelConfig, json.loads(state["model_config"])) != model_cfg:
                raise ModelFileError(f"The checkpoint {found} was made with a different model config.", "Use another --run-dir or the same config.")
            resumed_from = str(found)
    # --resume continues a run that already reached start_stage; otherwise start_stage retrains from there
    continuing = state is not None and resume and int(state["stage"]) >= start_stage
    elapsed_before = 0.0
    metrics: Dict[str, Any] = {}
    init_stage: Optional[Tuple[Dict[str, torch.Tensor], int]] = None
    if init_model is not None and not continuing:
        init_stage = _load_generators_from_model(chain, init_model, model_cfg, start_stage)
        resumed_from, state = str(init_model), None
    elif start_stage > 0 and not continuing:
        if state is None:
            raise DataError(f"start_stage {start_stage} needs the earlier stages, but {run_dir} holds no checkpoint.",
                            "Resume the run that trained them, or pass --init-model with a model file that has them.")
    if state is not None:
        ck_stage, ck_it, done = state["stage"], state["iteration"], state["stage_done"]
        metrics = json.loads(state.get("metrics", "{}"))
        elapsed_before = float(state.get("elapsed_s", 0.0))
        if start_stage > 0 and not continuing:
            if ck_stage + (1 if done else 0) < start_stage:
                raise DataError(f"The newest checkpoint has stages 0..{ck_stage - (0 if done else 1)} trained; start_stage {start_stage} needs 0..{start_stage - 1}.")
            _load_generators(chain, state, start_stage - 1)
            state = None
        else:
            _load_generators(chain, state, ck_stage if done else ck_stage - 1)
            if done:
                first_stage, state = ck_stage + 1, None
            else:
                first_stage, first_iteration = ck_stage, ck_it
    for k in range(first_stage):
        chain.stages[k].to(dev).eval()

    t_start = time.perf_counter()
    total_iterations = train_cfg.iterations * model_cfg.stages
    val_volumes: Dict[str, Dict[str, Any]] = {}
    if main and plan.val_h5 is not None and train_cfg.val_volumes > 0 and train_cfg.val_every > 0:
        val_volumes = load_volumes(plan.val_h5, cases=plan.val_cases[: train_cfg.val_volumes])

    for stage in range(first_stage, model_cfg.stages):
        emit(stage_event(stage, model_cfg.stages, "start"))
        context_train = context_val = None
        if stage > 0:
            context_train = _context_with_progress(chain, plan, stage, model_cfg.stages, dev, stop_event, emit, "train")
            if plan.val_h5 is not None:
                context_val = _context_with_progress(chain, plan, stage, model_cfg.stages, dev, stop_event, emit, "val")
        torch.manual_seed(train_cfg.seed * 1000 + stage)
        gen = build_generator(model_cfg.stage_generator(stage))
        if stage > 0 and train_cfg.init_from_previous:
            init_from_previous_stage(gen, chain.stages[stage - 1])
        start_it = 0
        if init_stage is not None and stage == first_stage:
            gen.load_state_dict(init_stage[0])
            start_it, init_stage = init_stage[1], None
        chain.stages[stage] = gen.to(dev).train()
        trainer = StageTrainer(gen, build_discriminator(model_cfg).to(dev).train(), model_cfg, train_cfg, ctx)
        if state is not None and stage == first_stage:
            gen.load_state_dict({n[len(f"stage{stage}."):]: t for n, t in state["generators"].items() if n.startswith(f"stage{stage}.")})
            trainer.load_state_dict(state)
            _set_rng_state(state["rng"])
            start_it, state = first_iteration, None
        source = _batch_source(plan, model_cfg, train_cfg, stage, start_it, context_train, context_val, ctx)

        def save(iteration: int, stage_done: bool, reason: str) -> None:
            if main:
                st = _checkpoint_state(model_cfg, train_cfg, chain, stage, iteration, stage_done, trainer,
                                       elapsed_before + time.perf_counter() - t_start, metrics)
                path = ckpt.save_checkpoint(run_dir / ckpt.checkpoint_name(stage, iteration), st)
                ckpt.prune_checkpoints(run_dir, keep=keep)
                emit(checkpoint_event(path, stage, iteration, reason))
            dist_utils.barrier(ctx)

        log = _LossLog(train_cfg, ctx, total_iterations, stage, elapsed_before - t_start)
        for it in range(start_it, train_cfg.iterations):
            src, tgt, mask = (None if t is None else t.to(dev, non_blocking=True) for t in source.batch(it))
            losses = trainer.step(src, tgt, mask, it)
            _check_finite(losses, stage, it, run_dir, ctx)
            done = it + 1
            event = log.add(losses, done, trainer.lr_g)
            if event is not None:
                emit(event)
            if train_cfg.val_every > 0 and (done % train_cfg.val_every == 0 or done == train_cfg.iterations):
                if main:
                    result = _validate(chain, stage, trainer, source, val_volumes, model_cfg, train_cfg, dev)
                    if result is not None:
                        metrics[f"stage{stage}"] = dict(result, iteration=done)
                        emit(validation_event(stage, done, result.get("val_loss"), result.get("psnr"), result.get("ssim"),
                                              time_s=elapsed_before + time.perf_counter() - t_start))
                        _plot(csv_path, png_path)
                dist_utils.barrier(ctx)
            if stopper():
                save(done, done == train_cfg.iterations, "stop")
                raise Cancelled(f"Training stopped at stage {stage}, iteration {done}; resume with --resume.")
            if train_cfg.checkpoint_every > 0 and done % train_cfg.checkpoint_every == 0 and done < train_cfg.iterations:
                save(done, False, "periodic")
        dist_utils.broadcast_buffers(gen, ctx)
        dist_utils.broadcast_buffers(trainer.disc, ctx)
        trainer.finish()
        gen.eval()
        save(train_cfg.iterations, True, "stage_end")
        dist_utils.write_rank_digest([gen, trainer.disc], ctx, f"stage{stage}")
        emit(stage_event(stage, model_cfg.stages, "end"))
        if main:
            _plot(csv_path, png_path)
        source.close()

    wall = elapsed_before + time.perf_counter() - t_start
    if main:
        from .model_file import save_model

        training = {
            "data": plan.summary(),
            "train_config": to_dict(train_cfg),
            "iterations_per_stage": train_cfg.iterations,
            "stages_trained": model_cfg.stages,
            "patches_seen": total_iterations * train_cfg.batch_size * ctx.world_size,
            "generator_kind": model_cfg.generator.kind,
            "wall_time_s": round(wall, 1),
            "device": _device_name(dev),
            "world_size": ctx.world_size,
            "precision": str(amp_dtype).replace("torch.", "") if amp_dtype is not None else "float32",
            "torch_version": torch.__version__,
            "resumed_from": resumed_from,
            "command": list(command) if command else None,
        }
        chain.cpu()
        save_model(out, chain, model_cfg, training, _final_metrics(metrics, model_cfg.stages))
        chain.to(dev)
    dist_utils.barrier(ctx)
    return out


def export_checkpoint(
    checkpoint: os.PathLike | str,
    out_model: os.PathLike | str,
    stages: Optional[int] = None,
    training: Optional[Dict[str, Any]] = None,
    overwrite: bool = False,
    evaluation: Optional[Dict[str, Any]] = None,
) -> Path:
    """Write a model file from a training checkpoint's completed stages (e.g. after Stop, or a run cut short).

    Only stages whose training finished are exported unless ``stages`` asks for a partly trained last stage
    too (its EMA weights when the run keeps one, as a finished stage would be); the header records which
    checkpoint, stage and iteration the weights come from.
    """
    from .model_file import save_model

    state = ckpt.load_checkpoint(checkpoint)
    model_cfg = from_dict(ModelConfig, json.loads(state["model_config"]))
    train_cfg = json.loads(state["train_config"])
    complete = int(state["stage"]) + (1 if state["stage_done"] else 0)
    n = complete if stages is None else int(stages)
    if n < 1 or n > int(state["stage"]) + 1:
        raise UsageError(
            f"The checkpoint holds {complete} completed stage(s) (stage {state['stage']} at iteration {state['iteration']}); "
            f"cannot export {n}."
        )
    export_cfg = dataclasses.replace(model_cfg, stages=n)
    chain = build_generators(export_cfg)
    _load_generators(chain, state, n - 1)
    partial_ema = "ema" in state and not state["stage_done"] and n - 1 == int(state["stage"])
    if partial_ema:
        prefix = "module."
        chain.stages[n - 1].load_state_dict({k[len(prefix):]: v for k, v in state["ema"].items() if k.startswith(prefix)})
    check_output_path(out_model, overwrite=overwrite)
    record = {
        "exported_from_checkpoint": Path(checkpoint).name,
        "checkpoint_stage": int(state["stage"]),
        "checkpoint_iteration": int(state["iteration"]),
        "checkpoint_stage_done": bool(state["stage_done"]),
        "exported_ema": bool(partial_ema),
        "train_config": train_cfg,
        "wall_time_s": round(float(state["elapsed_s"]), 1),
        "exported_with_torch": torch.__version__,
    }
    record.update(training or {})
    metrics = _final_metrics(json.loads(state.get("metrics") or "{}"), n)
    if evaluation:
        metrics["evaluation"] = evaluation
    return save_model(out_model, chain, export_cfg, record, metrics)


def _final_metrics(metrics: Dict[str, Any], stages: int) -> Dict[str, Any]:
    """Per-stage validation results, with the last stage's also at the top level (what `medsynth info` shows)."""
    out: Dict[str, Any] = {"validation": metrics}
    last = metrics.get(f"stage{stages - 1}")
    if last:
        out.update({k: v for k, v in last.items() if k in ("psnr", "ssim", "val_loss")})
    return out


def _plot(csv_path: Path, png_path: Path) -> None:
    """The loss plot is a convenience: a plotting failure must never end a training run."""
    try:
        plot_losses(csv_path, png_path)
    except Exception:
        pass


@torch.no_grad()
def _validate(
    chain: AutoContextChain,
    stage: int,
    trainer: StageTrainer,
    source: Any,
    volumes: Dict[str, Dict[str, Any]],
    cfg: ModelConfig,
    train_cfg: TrainConfig,
    dev: torch.device,
) -> Optional[Dict[str, float]]:
    """PSNR/SSIM of stages 0..stage on whole validation volumes, with the weights that will be exported (the EMA).

    ``val_loss``: the generator loss on up to 256 fixed validation patches (the FCN's patch files), or the
    masked pixel loss of the whole volumes (the U-Net, which has no patches to spare).
    """
    if source.val is None and not volumes:
        return None
    gen = trainer.eval_generator()
    trained = chain.stages[stage]
    chain.stages[stage] = gen
    gen.eval()
    try:
        result: Dict[str, float] = {}
        if source.val is not None:
            result["val_loss"] = _patch_loss(gen, source.val, cfg, train_cfg, dev, trainer.amp_dtype)
        scores, losses = [], []
        for vol in volumes.values():
            pad = vol["pad"]
            src_v, tgt_v, mask_v = _crop(vol["source"], pad), _crop(vol["target"], pad), _crop(vol["mask"], pad)
            pred_v = _whole_volume(chain, src_v, mask_v, stage + 1, dev)
            scores.append(_volume_metrics(pred_v, tgt_v, mask_v, cfg))
            losses.append(float(np.mean((pred_v[mask_v] - tgt_v[mask_v]) ** 2)))
        if scores:
            result["psnr"] = float(np.mean([s[0] for s in scores]))
            result["ssim"] = float(np.mean([s[1] for s in scores]))
            result.setdefault("val_loss", float(np.mean(losses)))
        return result
    finally:
        chain.stages[stage] = trained
        trained.train()


def _patch_loss(gen: nn.Module, val_ds: Any, cfg: ModelConfig, train_cfg: TrainConfig, dev: torch.device, amp_dtype: Optional[torch.dtype]) -> float:
    n = min(len(val_ds), VAL_PATCHES)
    total, seen = 0.0, 0
    for start in range(0, n, train_cfg.batch_size):
        src, tgt = val_ds.read_batch(list(range(start, min(n, start + train_cfg.batch_size))))
        src, tgt = src.to(dev), tgt.to(dev)
        with torch.autocast(device_type=dev.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            pred = gen(src)
        loss, _ = generator_loss(pred.float(), tgt, None, cfg.loss)
        total += float(loss) * len(src)
        seen += len(src)
    return total / max(seen, 1)


def configs_from_args(args: argparse.Namespace) -> Tuple[ModelConfig, TrainConfig]:
    """ModelConfig and TrainConfig from the JSON files and the command-line overrides."""
    model_overrides, train_overrides = config_overrides(args)
    model_cfg = load_json_config(args.model_config, ModelConfig, model_overrides)
    train_cfg = load_json_config(args.train_config, TrainConfig, {**train_overrides, "stages": model_cfg.stages})
    return model_cfg, train_cfg


def train_from_args(
    args: argparse.Namespace, callback: Optional[Callback] = None, stop_event: Optional[threading.Event] = None
) -> Path:
    """Run :func:`train` from parsed :func:`add_train_arguments` options; SIGTERM/SIGINT checkpoint and stop."""
    model_cfg, train_cfg = configs_from_args(args)
    out = Path(args.out)
    if out.exists() and not args.overwrite and dist_utils.int_env("RANK", 0) == 0:
        # --resume too: the model exists once its run finished, and resuming a finished run must not rewrite it.
        from .errors import OutputError

        hint = "Pass --overwrite to replace it, or choose another --out."
        if args.resume:
            hint = "A run that wrote its model has nothing to resume; pass --overwrite to write it again, or another --out."
        raise OutputError(f"The model {out} exists already.", hint)
    stop = stop_event or threading.Event()
    restore = install_signal_handlers(stop)
    try:
        return train(
            args.data,
            out,
            model_cfg,
            train_cfg,
            device=args.device,
            resume=args.resume,
            run_dir=args.run_dir,
            callback=callback,
            stop_event=stop,
            start_stage=args.start_stage,
            command=list(sys.argv),
            keep_checkpoints=args.keep_checkpoints,
            init_model=args.init_model,
        )
    finally:
        restore()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m MedSynthLogic.training`` (what torchrun launches): JSON-lines events from rank 0 on stdout."""
    from .errors import MedSynthError
    from .progress import JsonLinesReporter, done_event, error_event

    args = build_torchrun_parser(__doc__.splitlines()[0]).parse_args(argv)
    report = JsonLinesReporter(sys.stdout) if args.progress == "json" else None
    try:
        out = train_from_args(args, callback=report)
    except MedSynthError as exc:
        if report is not None:
            report(error_event(str(exc), exc.exit_code))
        sys.stderr.write(f"medsynth train: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        if report is not None:
            report(error_event("Interrupted.", Cancelled.exit_code))
        return Cancelled.exit_code
    if report is not None and dist_utils.int_env("RANK", 0) == 0:
        report(done_event(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
