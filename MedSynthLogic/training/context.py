"""The auto-context input of stage k: the synthesis of stages 0..k−1, computed exactly as inference computes it."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import Cancelled, UsageError
from ..models import AutoContextChain
from ..progress import Event, progress_event
from .plan import TrainingPlan

Callback = Callable[[Event], None]
Context = Optional[Dict[str, np.ndarray]]


def whole_volume(
    chain: AutoContextChain, source: np.ndarray, mask: Optional[np.ndarray], stages: int, device: torch.device, cancel: Optional[threading.Event] = None
) -> np.ndarray:
    """Stage-by-stage synthesis of an unpadded normalised source (network units), exactly as inference runs it.

    fp32 on every device: the context a later stage learns from must be the function itself, not a
    half-precision approximation of it. ``mask`` None gives the raw, unmasked synthesis (auto-context input).
    """
    from ..inference import synthesize_array

    was_training = [g.training for g in chain.stages]
    chain.eval()
    try:
        out = synthesize_array(chain, source, mask, stages, device, cancel=cancel, precision="fp32")
    finally:
        for g, t in zip(chain.stages, was_training):
            g.train(t)
    return np.asarray(out, dtype=np.float32)


def unpad(arr: np.ndarray, pad: int) -> np.ndarray:
    """A stored volume without the halo ``medsynth prepare`` padded it by."""
    return arr[pad:-pad, pad:-pad, pad:-pad] if pad > 0 else arr


def build_context(
    chain: AutoContextChain,
    h5_path: Path,
    stages: int,
    device: torch.device,
    cancel: Optional[threading.Event] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    gamma: float = 1.0,
    pivot: float = 0.5,
) -> Dict[str, np.ndarray]:
    """Synthesis of stages 0..stages−1 for every volume of a patch file, edge-padded onto its padded grid.

    The earlier stages run over the unpadded source exactly as inference runs them: the FCN's raw, unmasked
    synthesis (what inference feeds its stage k), the U-Net's synthesis inside the brain mask (what inference
    feeds the U-Net's stage k) and, for ``stages`` 0, a prior model's synthesis inside the brain mask (what
    inference feeds stage 0 of a model with a prior); padding by the halo in edge mode then gives the context
    inference feeds stage k at the image border, on the grid the patch corners refer to. ``progress(done, total)``
    is called per case. ``gamma`` ≠ 1: the synthesis of the source's contrast changed as the intensity augmentation
    changes it (``intensity_augment.change_contrast`` about ``pivot``).
    """
    from ..intensity_augment import change_contrast
    from ..h5data import load_volumes, patch_file_info
    from ..patches import pad_volume

    from_prior = stages == 0
    if from_prior:
        chain, stages = chain.prior, len(chain.prior.stages)
    masked = from_prior or chain.config.generator.kind == "unet3d"
    context: Dict[str, np.ndarray] = {}
    ids = patch_file_info(h5_path)["case_ids"]
    for i, cid in enumerate(ids):
        if cancel is not None and cancel.is_set():
            raise _stopped()
        vol = load_volumes(h5_path, cases=[cid])[cid]
        pad = vol["pad"]
        mask = unpad(vol["mask"], pad) if masked else None
        source = unpad(vol["source"], pad)
        if gamma != 1.0:
            source = change_contrast(source, gamma, pivot)
        try:
            syn = whole_volume(chain, source, mask, stages, device, cancel)
        except Cancelled as exc:  # the synthesis's own words ("Synthesis cancelled.") said nothing of the run
            raise _stopped() from exc
        context[cid] = pad_volume(syn, pad, mode="edge").astype(np.float32)
        if progress is not None:
            progress(i + 1, len(ids))
    return context


def stage_context(
    chain: AutoContextChain, plan: TrainingPlan, stage: int, stages: int, device: torch.device,
    cancel: Optional[threading.Event], emit: Callback, with_val: bool = True,
) -> Tuple[Context, Context]:
    """The (train, val) context of ``stage`` (None for stage 0 without a prior model: it sees the source alone).
    ``with_val`` False leaves the validation patches' context out: only the paper's FCN reads it, for its patch loss,
    and only when it validates (it costs a synthesis of every validation volume per stage)."""
    if stage == 0 and chain.prior is None:
        return None, None
    train = _split_context(chain, plan.train_h5, stage, stages, device, cancel, emit, "train")
    val = None
    if plan.val_h5 is not None and with_val:
        val = _split_context(chain, plan.val_h5, stage, stages, device, cancel, emit, "val")
    return train, val


def contrast_contexts(
    chain: AutoContextChain, plan: TrainingPlan, stage: int, stages: int, device: torch.device, gammas: Sequence[float],
    pivot: float, cancel: Optional[threading.Event], emit: Callback,
) -> Optional[Dict[float, Dict[str, np.ndarray]]]:
    """The training cases' context for each of ``gammas`` (``TrainConfig.aug_context_gammas``), or None when there
    is none to vary (no gammas, or stage 0 without a prior model). Each costs what the plain context costs."""
    if not gammas or (stage == 0 and chain.prior is None):
        return None
    if chain.config.generator.kind != "unet3d":
        raise UsageError("aug_context_gammas applies to the U-Net's crops only (the paper's FCN trains on patches).",
                         "Set aug_context_gammas to [] for a nie2018 model.")
    return {float(g): _split_context(chain, plan.train_h5, stage, stages, device, cancel, emit, f"train, gamma {g:g}",
                                     gamma=float(g), pivot=pivot) for g in gammas}


def alt_source_context(
    chain: AutoContextChain, plan: TrainingPlan, stage: int, stages: int, device: torch.device,
    cancel: Optional[threading.Event], emit: Callback,
) -> Context:
    """The training cases' context computed from the alternate source (``TrainConfig.alt_source_data``), or None
    without one (or for stage 0 without a prior model). It costs what the plain context costs."""
    if plan.alt_train_h5 is None or (stage == 0 and chain.prior is None):
        return None
    return _split_context(chain, plan.alt_train_h5, stage, stages, device, cancel, emit, "train, alternate source")


def _split_context(
    chain: AutoContextChain, path: Path, stage: int, stages: int, device: torch.device,
    cancel: Optional[threading.Event], emit: Callback, split: str, gamma: float = 1.0, pivot: float = 0.5,
) -> Dict[str, np.ndarray]:
    """build_context for one split, reporting each finished case (it takes minutes on a CPU)."""
    emit(progress_event("context", 0, 1, stage=stage, stages=stages, split=split))

    def report(done: int, total: int) -> None:
        emit(progress_event("context", done, total, stage=stage, stages=stages, split=split))

    return build_context(chain, path, stage, device, cancel, report, gamma, pivot)


def _stopped() -> Cancelled:
    return Cancelled("Training was stopped while building the auto-context inputs; the checkpoints written so far are "
                     "kept.", "Run the same command with --resume to go on.", reason="stopped")
