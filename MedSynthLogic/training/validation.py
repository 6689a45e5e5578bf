"""Validation during training: whole validation volumes through stages 0..k, and the FCN's fixed patch loss."""

from __future__ import annotations

import sys
import threading
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..config import ModelConfig, TrainConfig
from ..errors import Cancelled
from ..losses import generator_loss
from ..models import AutoContextChain
from ..stage_trainer import StageTrainer
from .context import unpad, whole_volume
from .plan import TrainingPlan

VAL_PATCHES = 256


def validation_volumes(plan: TrainingPlan, train_cfg: TrainConfig) -> Dict[str, Dict[str, Any]]:
    """The first ``val_volumes`` validation cases, loaded once for the whole run (none without validation)."""
    from ..h5data import load_volumes

    if plan.val_h5 is None or train_cfg.val_volumes <= 0 or train_cfg.val_every <= 0:
        return {}
    return load_volumes(plan.val_h5, cases=plan.val_cases[: train_cfg.val_volumes])


def validation_due(train_cfg: TrainConfig, done: int) -> bool:
    """Validate every ``val_every`` iterations and at the stage's end (never with ``val_every`` 0)."""
    return train_cfg.val_every > 0 and (done % train_cfg.val_every == 0 or done == train_cfg.iterations)


@torch.no_grad()
def validate(
    chain: AutoContextChain,
    stage: int,
    trainer: StageTrainer,
    source: Any,
    volumes: Dict[str, Dict[str, Any]],
    cfg: ModelConfig,
    train_cfg: TrainConfig,
    dev: torch.device,
    cancel: Optional[threading.Event] = None,
) -> Optional[Dict[str, float]]:
    """PSNR/SSIM of stages 0..stage on whole validation volumes, with the weights that will be exported (the EMA).

    ``val_loss``: the generator loss on up to 256 fixed validation patches (the FCN's patch files), or the
    masked pixel loss of the whole volumes (the U-Net, which has no patches to spare). None when ``cancel`` is set
    meanwhile: a stop waits for no validation (whole volumes take minutes on a CPU, and the panel ends a training
    that has not checkpointed within its grace time, losing the work since the last checkpoint).
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
            if cancel is not None and cancel.is_set():
                return None
            pad = vol["pad"]
            src_v, tgt_v, mask_v = unpad(vol["source"], pad), unpad(vol["target"], pad), unpad(vol["mask"], pad)
            try:
                pred_v = whole_volume(chain, src_v, mask_v, stage + 1, dev, cancel=cancel)
            except Cancelled:
                return None
            scores.append(validation_scores(pred_v, tgt_v, mask_v, cfg))
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
    """The generator loss on the first ``VAL_PATCHES`` validation patches: the same fixed set at every validation."""
    n = min(len(val_ds), int(sys.modules[__package__].VAL_PATCHES))  # the package's, which a test may lower
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


def validation_scores(pred: np.ndarray, target: np.ndarray, mask: np.ndarray, cfg: ModelConfig) -> Tuple[float, float]:
    """PSNR and SSIM inside the brain mask, in network units.

    The prediction is clipped to the range a target can hold, as ``evaluate`` clips the written volume: an
    unclipped overshoot scored several dB below what the user's evaluation of the same weights reports.
    """
    from ..metrics import psnr, ssim3d

    tcfg = cfg.normalisation.target
    low, high = (tcfg.clip_min, tcfg.clip_max) if tcfg.mode != "window" else (0.0, 1.0)
    clipped = np.clip(pred, np.float32(low), np.float32(high))
    data_range = high - low if tcfg.mode == "percentile" else 1.0
    return float(psnr(clipped, target, mask, data_range)), float(ssim3d(clipped, target, mask, data_range))
