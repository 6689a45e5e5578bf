"""One training run's surroundings: its folder, where its events go, its clock and history, its checkpoints."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from .. import checkpoint as ckpt
from ..atomic import make_output_folder
from .. import distributed as dist_utils
from ..config import ModelConfig, TrainConfig
from ..models import AutoContextChain
from ..progress import CallbackList, CsvLogger, Event, checkpoint_event
from ..stage_trainer import StageTrainer
from .monitor import Stopper, plot_quietly
from .state import checkpoint_state

Callback = Callable[[Event], None]


@dataclass
class Session:
    """The run folder and the state every stage shares; :meth:`save` writes a checkpoint on rank 0, all ranks wait."""

    model_cfg: ModelConfig
    train_cfg: TrainConfig
    ctx: dist_utils.DistContext
    run_dir: Path
    emit: Callback
    stopper: Stopper
    keep: int
    keep_every: int
    metrics: Dict[str, Any] = field(default_factory=dict)
    elapsed_before: float = 0.0
    t_start: float = 0.0
    stop_after: Optional[int] = None
    data: Dict[str, Any] = field(default_factory=dict)
    ran: int = 0
    patches_seen: int = 0
    stages_from_file: int = 0  # leading stages taken from an --init-model file, not trained in this run
    stages_from_path: Optional[str] = None  # that file (a resume's "resumed_from" is its checkpoint instead)
    init_model_cases: Optional[List[str]] = field(default_factory=list)  # its cases (None: it does not name them)
    prior_record: Optional[Dict[str, Any]] = None  # the prior model a refiner trains on (training.prior.prior_record)

    def slice_over(self) -> bool:
        """Whether this call has run the ``stop_after`` iterations it was asked for (a slice of a long schedule)."""
        return self.stop_after is not None and self.ran >= self.stop_after

    def carry_history(self, state: Optional[Dict[str, Any]], retrain_from: Optional[int] = None) -> None:
        """Start the clock, going on from the validation results and time of the checkpoint a run starts from.

        ``retrain_from``: this run retrains that stage and later ones, which the checkpoint had already trained
        (``--start-stage``): their validation results are left out (the new model would report the replaced
        stages' as its own when it does not validate them again) and the time is the checkpoint's share of
        iterations before that stage (the checkpoint does not record the time at a stage's end)."""
        if state is not None:
            metrics = json.loads(state.get("metrics", "{}"))
            elapsed = float(state.get("elapsed_s", 0.0))
            if retrain_from is not None:
                metrics = {k: v for k, v in metrics.items() if not k.startswith("stage") or not k[5:].isdigit()
                           or int(k[5:]) < retrain_from}
                iterations = int(json.loads(state.get("train_config") or "{}").get("iterations") or self.train_cfg.iterations)
                reached = int(state["stage"]) * iterations + int(state["iteration"])
                elapsed *= min(1.0, retrain_from * iterations / reached) if reached > 0 else 0.0
            self.metrics = metrics
            self.elapsed_before = elapsed
            self.stages_from_file = int(state.get("stages_from_file", 0))
            if retrain_from is not None:  # a stage that came from a model file and is trained again is this run's
                self.stages_from_file = min(self.stages_from_file, retrain_from)
            from_file = self.stages_from_file > 0
            self.stages_from_path = (state.get("stages_from_path") or None) if from_file else None
            self.init_model_cases = json.loads(state.get("init_model_cases") or "[]") if from_file else []
            self.prior_record = json.loads(state.get("prior_record") or "null") or self.prior_record
        self.t_start = time.perf_counter()

    def elapsed(self) -> float:
        """Training time so far, across resumes."""
        return self.elapsed_before + time.perf_counter() - self.t_start

    def save(self, chain: AutoContextChain, stage: int, iteration: int, stage_done: bool, trainer: StageTrainer, reason: str) -> None:
        """A checkpoint at ``iteration`` of ``stage``, keeping the newest ``keep`` and every ``keep_every``-th."""
        if self.ctx.is_main:
            state = checkpoint_state(self.model_cfg, self.train_cfg, chain, stage, iteration, stage_done, trainer,
                                     self.elapsed(), self.metrics, self.data, self.ctx.world_size, self.patches_seen,
                                     self.stages_from_file, self.stages_from_path, self.init_model_cases,
                                     self.prior_record)
            path = ckpt.save_checkpoint(self.run_dir / ckpt.checkpoint_name(stage, iteration), state)
            ckpt.prune_checkpoints(self.run_dir, keep=self.keep, keep_every=self.keep_every)
            self.emit(checkpoint_event(path, stage, iteration, reason))
        dist_utils.barrier(self.ctx)

    def plot(self) -> None:
        """The loss curves beside the CSV log (rank 0)."""
        if self.ctx.is_main:
            plot_quietly(self.run_dir / "training_log.csv", self.run_dir / "loss_curves.png")


def open_session(
    model_cfg: ModelConfig, train_cfg: TrainConfig, ctx: dist_utils.DistContext, out: Path,
    run_dir: Optional[os.PathLike | str], callback: Optional[Callback], stop_event: Optional[threading.Event], keep: int,
    keep_every: int = 0,
) -> Session:
    """The run folder (default ``<out stem>_run/``), created by rank 0; events go to ``callback`` and its CSV log."""
    folder = Path(run_dir) if run_dir is not None else out.with_name(out.name.split(".")[0] + "_run")
    if ctx.is_main:
        make_output_folder(folder)
    dist_utils.barrier(ctx)
    emit = CallbackList([callback, CsvLogger(folder / "training_log.csv")] if ctx.is_main else [])
    return Session(model_cfg, train_cfg, ctx, folder, emit, Stopper(stop_event, ctx), keep, keep_every)
