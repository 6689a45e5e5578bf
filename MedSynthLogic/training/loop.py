"""``train``: the auto-context stages one after another, each a loop of StageTrainer steps.

Stage k trains generator k and a fresh discriminator. Stage 0 sees source patches (with a prior model,
``[source, the prior's synthesis]``); stage k > 0 sees ``[source, synthesis of stages 0..k−1]``, computed over
every stored volume with the already trained (frozen, eval-mode) earlier stages exactly as whole-volume inference
computes it. Batches are a pure function of (seed, stage, iteration, rank), so a run stopped at any checkpoint and
resumed gives bit-identical weights to one never stopped (CPU), and under ``torchrun`` each rank reads its own share
of every global batch.
"""

from __future__ import annotations

import dataclasses
import os
import random
import threading
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch

from .. import distributed as dist_utils
from ..atomic import check_output_path
from ..batch_sources import AlternateSource, batch_source
from ..checkpoint import latest_checkpoint
from ..config import ModelConfig, TrainConfig
from ..devices import resolve_device
from ..errors import Cancelled, OutputError, ResourceError, UsageError
from ..intensity_augment import augment_of
from ..models import (
    AutoContextChain,
    build_discriminator,
    build_generator,
    build_generators,
    init_from_previous_stage,
    start_as_context,
)
from ..model_summary import all_training_cases
from ..progress import stage_event, validation_event, warning_event
from ..stage_trainer import StageTrainer, amp_settings
from .context import alt_source_context, contrast_contexts, stage_context
from .export import write_trained_model
from .monitor import LossLog, check_finite
from .plan import TrainingPlan, plan_training
from .resume import (
    Start, changed_world_size, decide_start, goes_on, patches_before, refuse_changed_data, refuse_changed_schedule,
    refuse_earlier_run, refuse_split_start, set_aside_later_checkpoints,
)
from .run_lock import acquire_run_folder, release_run_folder
from .session import Callback, Session, open_session
from .prior import check_same_prior, open_prior_model, prior_record, with_prior
from .state import latest_state, load_checkpoint_stage, load_earlier_stages, load_model_stage, open_init_model
from .validation import validate, validation_due, validation_volumes


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
    keep_every: int = 0,
    init_model: Optional[os.PathLike | str] = None,
    stop_after: Optional[int] = None,
    prior_model: Optional[os.PathLike | str] = None,
) -> Optional[Path]:
    """Train all auto-context stages and write the model file; returns its path.

    ``resume`` continues from the newest complete checkpoint in ``run_dir`` (default ``<out stem>_run/``)
    and starts afresh when there is none; without ``resume``, a run from stage 0 refuses a run folder that already
    holds checkpoints (they would be replaced). ``start_stage`` > 0 retrains from that stage on, taking the earlier
    stages from the newest checkpoint that holds them, or from the model file ``init_model`` (to add stages to a
    trained model); when ``init_model`` also holds stage ``start_stage``, that stage starts from its weights at
    the iteration it was exported at (fresh optimisers), so a schedule continues from a committed candidate on a new
    machine; with ``resume`` a run that already reached ``start_stage`` continues. ``stop_event`` (or SIGTERM/SIGINT with
    :func:`install_signal_handlers`) writes a checkpoint and raises :class:`Cancelled`. ``stop_after`` N runs N
    iterations of the schedule, writes a checkpoint and returns None, so a schedule longer than a job's time limit
    runs as a series of calls with ``resume`` (the same weights as one uninterrupted run). The run folder keeps the
    newest ``keep_checkpoints`` checkpoints and, with ``keep_every`` N > 0, those at every N-th iteration of a stage.
    ``prior_model``: a model file whose synthesis stage 0 sees beside the source (frozen; saved with this model).
    """
    out = check_output_path(out_model, overwrite=True)
    prior = open_prior_model(prior_model)
    model_cfg = with_prior(model_cfg, prior)
    train_cfg = dataclasses.replace(train_cfg, stages=model_cfg.stages)  # the model config's are trained and recorded
    plan = plan_training(data_dir, model_cfg, train_cfg)
    if not 0 <= start_stage < model_cfg.stages:
        last = model_cfg.stages - 1
        raise UsageError(f"--start-stage must be in 0..{last}: it is the number of stages kept"
                         + (f", so --start-stage {last} keeps stages 1..{last} and retrains stage {last + 1} of "
                            f"{last + 1}." if last > 0 else f"; a {model_cfg.stages}-stage model keeps none (0)."))
    if keep_checkpoints < 1:
        raise UsageError(f"--keep-checkpoints must be at least 1, not {keep_checkpoints}: the newest checkpoint is "
                         "what --resume goes on from.")
    if stop_after is not None and stop_after < 1:
        raise UsageError(f"stop_after must be at least 1 iteration, not {stop_after}.")
    if keep_every < 0:
        raise UsageError(f"keep_every must be 0 (off) or a number of iterations, not {keep_every}.")
    ctx = dist_utils.init_distributed(resolve_device(str(device)))
    lock, folder = None, None
    try:
        session = open_session(model_cfg, train_cfg, ctx, out, run_dir, callback, stop_event, keep_checkpoints, keep_every)
        folder = session.run_dir
        lock = _lock_run_folder(session.run_dir, ctx)
        session.stop_after, session.data = stop_after, plan.summary()
        session.prior_record = prior_record(prior)
        if not resume and (start_stage == 0 or init_model is not None):  # the folder's checkpoints are not read
            refuse_earlier_run(session.run_dir)
        for message in plan.warnings:
            session.emit(warning_event("train", message))
        amp_dtype = amp_settings(ctx.device, train_cfg.precision)
        chain = _seeded_chain(model_cfg, train_cfg, ctx.device)
        if prior is not None:
            chain.prior.load_state_dict(prior.chain.state_dict())
            chain.prior.to(ctx.device)
        start = decide_start(model_cfg, start_stage, resume, init_model, session.run_dir,
                             lambda: latest_state(session.run_dir), lambda: open_init_model(init_model, model_cfg))
        refuse_split_start(start, ctx)
        check_same_prior(chain, start)
        if resume:
            refuse_changed_schedule(train_cfg, start)
            refuse_changed_data(plan.summary(), start)
        load_earlier_stages(chain, start)
        if not resume and start.stage > 0 and start.checkpoint is not None:  # retraining from a stage of this folder
            dist_utils.barrier(ctx)  # every rank has read it
            aside = set_aside_later_checkpoints(session.run_dir, start.stage) if ctx.is_main else None
            if aside is not None:
                session.emit(warning_event("train", f"The run folder's checkpoints of stage {start.stage + 1} and later "
                                                    f"were moved to {aside}: this run retrains those stages."))
                moved = aside / Path(str(start.resumed_from)).name
                if moved.is_file():  # the model's record names where it is now
                    start = dataclasses.replace(start, resumed_from=str(moved))
        for k in range(start.stage):
            chain.stages[k].to(ctx.device).eval()
        session.carry_history(start.checkpoint, None if goes_on(start) else start.stage)
        if start.checkpoint is None and start.model is not None:
            session.stages_from_file, session.stages_from_path = start.stage, start.resumed_from
            session.init_model_cases = all_training_cases(start.model.header)  # None: that file does not name them
        session.patches_seen = patches_before(start, train_cfg, ctx.world_size)
        moved = changed_world_size(start, train_cfg, ctx.world_size) if resume else None
        if moved:
            session.emit(warning_event("train", moved))
        val_volumes = validation_volumes(plan, train_cfg) if ctx.is_main else {}
        first: Optional[Start] = start
        resumed_from, stages = start.resumed_from, range(start.stage, model_cfg.stages)
        del start  # only the first stage starts from it; past that, its checkpoint or model file can go
        for stage in stages:
            if session.slice_over() or not _train_stage(session, plan, chain, stage, first, val_volumes):
                return None
            first = None
        if ctx.is_main:
            write_trained_model(out, chain, model_cfg, train_cfg, plan, ctx, session.elapsed(), session.patches_seen, amp_dtype,
                                resumed_from, command, session.metrics, session.prior_record, session.stages_from_file,
                                session.stages_from_path, session.init_model_cases)
        dist_utils.barrier(ctx)
        return out
    except RuntimeError as exc:  # anywhere a collective waits: opening the folder, the lock, the model file's barrier
        if ctx.enabled and dist_utils.lost_contact(exc):
            raise _lost_contact(exc, ctx, folder) from exc
        raise
    finally:
        release_run_folder(lock)
        dist_utils.cleanup(ctx)


def _lost_contact(exc: RuntimeError, ctx: dist_utils.DistContext, folder: Optional[Path]) -> ResourceError:
    """The one message of a rank whose collective failed because another rank stopped or died (exit 8); it names a
    checkpoint to resume from only when the run folder holds one."""
    newest = latest_checkpoint(folder) if folder is not None and folder.is_dir() else None
    hint = (f"Find why in that process's log; the newest checkpoint is {newest}: run the same command with --resume."
            if newest is not None else "Find why in that process's log; no checkpoint was written yet.")
    return ResourceError(f"Process {ctx.rank} of {ctx.world_size} lost contact with another process of this run, "
                         f"which stopped or died ({str(exc).splitlines()[0][:200]}).", hint)


def _lock_run_folder(run_dir: Path, ctx: dist_utils.DistContext) -> Any:
    """Rank 0 locks the run folder (``run_lock``); every rank refuses when it is in use, as every rank refuses an
    existing model (a rank left to its first collective would hang, or report a lost process)."""
    lock, refusal = None, None
    if ctx.is_main:
        try:
            lock = acquire_run_folder(run_dir)
        except OutputError as exc:
            refusal = exc
    if dist_utils.any_rank(refusal is not None, ctx):
        raise refusal or OutputError(f"The run folder {run_dir} is in use by another training (process 0 found it).",
                                     "Wait for it to end or stop it, or pass another --run-dir.",
                                     reason="run_folder_in_use")
    return lock


def _seeded_chain(model_cfg: ModelConfig, train_cfg: TrainConfig, device: torch.device) -> AutoContextChain:
    """The generators as the seed makes them, with the fast CUDA kernels on (TF32, cuDNN autotuning)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    random.seed(train_cfg.seed)
    np.random.seed(train_cfg.seed)
    torch.manual_seed(train_cfg.seed)
    return build_generators(model_cfg)


def _train_stage(
    s: Session, plan: TrainingPlan, chain: AutoContextChain, stage: int, start: Optional[Start], val_volumes: Dict[str, Dict[str, Any]]
) -> bool:
    """One stage from its first iteration (0, or where ``start`` says) to its end checkpoint; False: the slice ended first."""
    cfg, tcfg, ctx, dev = s.model_cfg, s.train_cfg, s.ctx, s.ctx.device
    resumed: Dict[str, Any] = {}
    if start and start.resumed_from and (start.continues or start.model_stage):
        resumed = {"resumed_from": start.resumed_from, "iteration": start.iteration}
    elif start and start.resumed_from:  # only the stages before this one come from there; this one starts afresh
        resumed = {"earlier_stages_from": start.resumed_from}
    s.emit(stage_event(stage, cfg.stages, "start", **resumed))
    patch_loss = tcfg.val_every > 0 and cfg.generator.kind != "unet3d"  # the U-Net validates on whole volumes only
    context_train, context_val = stage_context(chain, plan, stage, cfg.stages, dev, s.stopper.event, s.emit, patch_loss)
    variants = contrast_contexts(chain, plan, stage, cfg.stages, dev, tcfg.aug_context_gammas,
                                 augment_of(tcfg, cfg).pivot, s.stopper.event, s.emit)
    alternate = None
    if plan.alt_train_h5 is not None:
        alternate = AlternateSource(plan.alt_train_h5,
                                    alt_source_context(chain, plan, stage, cfg.stages, dev, s.stopper.event, s.emit))
    torch.manual_seed(tcfg.seed * 1000 + stage)
    gen = build_generator(cfg.stage_generator(stage))
    if stage > 0 and tcfg.init_from_previous:
        init_from_previous_stage(gen, chain.stages[stage - 1])
    elif stage == 0 and cfg.generator.residual_from == "context" and tcfg.init_from_previous:
        start_as_context(gen)
    load_model_stage(gen, start)
    chain.stages[stage] = gen.to(dev).train()
    trainer = StageTrainer(gen, build_discriminator(cfg).to(dev).train(), cfg, tcfg, ctx)
    load_checkpoint_stage(gen, trainer, start)
    first = start.iteration if start is not None else 0
    source = batch_source(plan.train_h5, plan.val_h5, context_train, context_val, cfg, tcfg, stage, first, ctx, variants,
                          alternate)
    log = LossLog(tcfg, ctx, tcfg.iterations * cfg.stages, stage, s.elapsed_before - s.t_start)
    if 0 < first == tcfg.iterations and validation_due(tcfg, first):  # stopped in the stage's last validation: redo it
        _validate(s, chain, stage, trainer, source, val_volumes, first)
    for it in range(first, tcfg.iterations):
        src, tgt, mask = (None if t is None else t.to(dev, non_blocking=True) for t in source.batch(it))
        losses = trainer.step(src, tgt, mask, it)
        check_finite(losses, stage, it, s.run_dir, ctx, (gen, trainer.disc))
        done = it + 1
        s.ran += 1
        s.patches_seen += tcfg.batch_size * ctx.world_size
        event = log.add(losses, done, trainer.lr_g)
        if event is not None:
            s.emit(event)
        if validation_due(tcfg, done):
            paused = time.perf_counter()
            _validate(s, chain, stage, trainer, source, val_volumes, done)
            log.exclude(time.perf_counter() - paused)
        if s.stopper():  # even after the last iteration the stage is not done: its end (the EMA's weights) runs on resume
            s.save(chain, stage, done, False, trainer, "stop")
            raise Cancelled(f"Training stopped at stage {stage + 1}, iteration {done}; its checkpoint is in {s.run_dir}.",
                            "Run the same command with --resume to go on.", reason="stopped")
        if s.slice_over() and done < tcfg.iterations:
            s.save(chain, stage, done, False, trainer, "stop_after")
            source.close()
            return False
        if tcfg.checkpoint_every > 0 and done % tcfg.checkpoint_every == 0 and done < tcfg.iterations:
            paused = time.perf_counter()
            s.save(chain, stage, done, False, trainer, "periodic")
            log.exclude(time.perf_counter() - paused)
    dist_utils.broadcast_buffers(gen, ctx)
    dist_utils.broadcast_buffers(trainer.disc, ctx)
    trainer.finish()
    gen.eval()
    s.save(chain, stage, tcfg.iterations, True, trainer, "stage_end")
    dist_utils.write_rank_digest([gen, trainer.disc], ctx, f"stage{stage}")
    s.emit(stage_event(stage, cfg.stages, "end"))
    s.plot()
    source.close()
    return True


def _validate(s: Session, chain: AutoContextChain, stage: int, trainer: StageTrainer, source: Any,
              val_volumes: Dict[str, Dict[str, Any]], done: int) -> None:
    """Validate on rank 0, record the result for the model file and report it; the other ranks wait."""
    if s.ctx.is_main:
        result = validate(chain, stage, trainer, source, val_volumes, s.model_cfg, s.train_cfg, s.ctx.device,
                          cancel=s.stopper.event)
        if result is not None:
            s.metrics[f"stage{stage}"] = dict(result, iteration=done)
            s.emit(validation_event(stage, done, result.get("val_loss"), result.get("psnr"), result.get("ssim"), time_s=s.elapsed()))
            s.plot()
    dist_utils.barrier(s.ctx)
