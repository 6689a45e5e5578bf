"""Watching a run as it goes: averaged losses with rate and ETA, the NaN guard, the agreed stop, the loss plot."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence

import numpy as np
import torch

from .. import checkpoint as ckpt
from .. import distributed as dist_utils
from ..config import TrainConfig
from ..errors import TrainingDiverged
from ..figures import plot_losses
from ..progress import Event, iteration_event


class LossLog:
    """Averages the losses over ``log_every`` iterations and makes the iteration event with rate and ETA."""

    def __init__(self, cfg: TrainConfig, ctx: dist_utils.DistContext, total_iterations: int, stage: int, time_offset: float) -> None:
        self.cfg, self.ctx, self.total, self.stage, self.offset = cfg, ctx, total_iterations, stage, time_offset
        self.sums: Dict[str, float] = {}
        self.count = 0
        self.window_t, self.window_n = time.perf_counter(), 0

    def exclude(self, seconds: float) -> None:
        """Leave a pause (validation, a checkpoint) out of the rate: it fell in one short window and made that
        window's patches/s several times too low and its ETA as many times too long."""
        self.window_t += seconds

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
                               patches_per_s=rate * self.cfg.batch_size * self.ctx.world_size, time_s=self.offset + now,
                               stages=self.total // max(1, self.cfg.iterations))


def weights_finite(modules: Iterable[torch.nn.Module]) -> bool:
    """Whether every parameter of ``modules`` is finite: one norm over them all (about 1 ms for the 3.5 M of the
    default U-Net; a NaN or inf in any of them makes it NaN or inf)."""
    params = [p.detach() for m in modules for p in m.parameters()]
    if not params:
        return True
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch ≥ 2.6
        norm = torch.nn.utils.get_total_norm(params)
    else:
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.float()) for p in params]))
    return bool(torch.isfinite(norm))


def check_finite(losses: Dict[str, float], stage: int, it: int, run_dir: Path, ctx: dist_utils.DistContext,
                 modules: Sequence[torch.nn.Module] = ()) -> None:
    """Stop with TrainingDiverged before a NaN/inf loss or weight can reach a checkpoint that rotates the good ones
    out. The losses are those before the step: an infinite gradient under a finite loss (which gradient clipping turns
    into NaN) leaves NaN in the weights only, so ``modules`` (G and D) are checked after it."""
    finite_losses = all(np.isfinite(v) for v in losses.values())
    if dist_utils.any_rank(not (finite_losses and weights_finite(modules)), ctx):
        last = ckpt.latest_checkpoint(run_dir)
        what = "A training loss" if not finite_losses else "The weights (after a finite loss's step)"
        raise TrainingDiverged(
            f"{what} became NaN or infinite at stage {stage + 1}, iteration {it + 1} "
            f"({', '.join(f'{k}={v:g}' for k, v in losses.items())}); no checkpoint was written after it.",
            (f"Export it (`medsynth export {last} OUT.safetensors`) and start a new run from it with `--init-model "
             f"OUT.safetensors --start-stage {stage}` and a lower learning rate (lr_g in the train config) or "
             "--precision fp32; --resume would refuse both, as it refuses any change of schedule."
             if last is not None else "Start again with a lower learning rate or --precision fp32."),
        )


class Stopper:
    """Combines the caller's stop_event with DDP agreement, so every rank stops at the same iteration."""

    def __init__(self, event: Optional[threading.Event], ctx: dist_utils.DistContext) -> None:
        self.event, self.ctx = event, ctx

    def __call__(self) -> bool:
        flag = self.event is not None and self.event.is_set()
        return dist_utils.any_rank(flag, self.ctx)


def plot_quietly(csv_path: Path, png_path: Path) -> None:
    """The loss plot is a convenience: a plotting failure must never end a training run."""
    try:
        plot_losses(csv_path, png_path)
    except Exception:
        pass
