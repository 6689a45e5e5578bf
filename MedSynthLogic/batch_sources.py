"""Where a stage's training batches come from, one class per generator kind, all with ``batch(iteration)``.

``PatchSource`` (the paper's FCN): shuffled 32³→16³ patches of the HDF5 patch file, no mask (the paper's loss
covers the whole patch), the source channel optionally changed by the intensity augmentation (off by default: the
paper's method). ``CropSource`` (the U-Net): large brain-centred crops cut on the fly from the stored
volumes, with the brain mask. Both are pure functions of (seed, stage, iteration, rank), so resuming is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np
import torch

from . import distributed as dist_utils
from .config import ModelConfig, TrainConfig
from .crops import AUGMENT_STREAM, ContextByGamma, CropBatches, crop_volumes, iteration_stream
from .intensity_augment import IntensityAugment, augment_of
from .spatial_augment import spatial_augment_of

Batch = Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]


@dataclass(frozen=True)
class AlternateSource:
    """Another real source contrast of the training cases: its patch file and the context computed from it."""

    train_h5: Path
    context: Optional[Mapping[str, np.ndarray]] = None


class IterationBatches:
    """Batch indices as a pure function of (seed, stage, iteration, rank): nothing to save, exact on resume.

    The global stream walks seeded permutations of the N patches epoch after epoch (sampling without
    replacement, like a shuffling DataLoader); iteration i takes the next ``per_rank × world_size`` positions
    and rank r takes its contiguous share (a DistributedSampler without its state). As a batch sampler it
    feeds a DataLoader with workers; with no workers the trainer reads ``indices(i)`` directly.
    """

    def __init__(self, n: int, per_rank: int, seed: int, stage: int, start: int, stop: int, ctx: dist_utils.DistContext) -> None:
        self.n, self.per_rank, self.seed, self.stage = int(n), int(per_rank), int(seed), int(stage)
        self.start, self.stop, self.ctx = int(start), int(stop), ctx
        self._perms: Dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = np.random.default_rng([self.seed, self.stage, epoch]).permutation(self.n)
        return self._perms[epoch]

    def indices(self, iteration: int) -> List[int]:
        global_batch = self.per_rank * self.ctx.world_size
        first = iteration * global_batch + self.ctx.rank * self.per_rank
        pos = np.arange(first, first + self.per_rank, dtype=np.int64)
        epochs, offsets = np.divmod(pos, self.n)
        out = np.empty(self.per_rank, np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self._perm(int(e))[offsets[sel]]
        return out.tolist()

    def __iter__(self) -> Iterator[List[int]]:
        for it in range(self.start, self.stop):
            yield self.indices(it)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def _batches(dataset: Any, sampler: IterationBatches, num_workers: int, pin: bool) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """An iterator of (source, target) batches in sampler order; workers prefetch without changing the order."""
    if num_workers <= 0:
        for idx in sampler:
            yield dataset.read_batch(idx)
        return
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin, persistent_workers=False, prefetch_factor=4)
    yield from loader


class PatchSource:
    """The patch files of ``medsynth prepare``; ``batch(i)`` must be called for consecutive i from ``start``.

    With an enabled ``augment`` each patch's source channel is changed with draws from the stream of (seed, stage,
    iteration, rank, ``AUGMENT_STREAM``), so the patches are those of a run without it and resuming stays exact; an
    auto-context channel is the previous stage's synthesis of the unchanged source and is left as it is."""

    def __init__(
        self,
        train_h5: Path,
        val_h5: Optional[Path],
        context_train: Optional[Mapping[str, np.ndarray]],
        context_val: Optional[Mapping[str, np.ndarray]],
        cfg: TrainConfig,
        stage: int,
        start: int,
        ctx: dist_utils.DistContext,
        augment: Optional[IntensityAugment] = None,
    ) -> None:
        from .h5data import PatchDataset

        self.train = PatchDataset(train_h5, context=context_train)
        self.val = PatchDataset(val_h5, context=context_val) if val_h5 is not None else None
        sampler = IterationBatches(len(self.train), cfg.batch_size, cfg.seed, stage, start, cfg.iterations, ctx)
        self._batches = _batches(self.train, sampler, cfg.num_workers, ctx.device.type == "cuda")
        self.augment = augment if augment is not None and augment.enabled else None
        self.seed, self.stage, self.rank = cfg.seed, stage, ctx.rank

    def batch(self, iteration: int) -> Batch:
        src, tgt = next(self._batches)
        if self.augment is not None:
            rng = iteration_stream(self.seed, self.stage, iteration, self.rank, AUGMENT_STREAM)
            src = src.clone()
            for sample in src:
                sample[0] = torch.from_numpy(self.augment(sample[0].numpy(), rng))
        return src, tgt, None

    def close(self) -> None:
        self.train.close()
        if self.val is not None:
            self.val.close()


class CropSource:
    """Crops of the training volumes (and, from stage 1 on, of the previous stage's synthesis as a second channel)."""

    val = None

    def __init__(
        self,
        train_h5: Path,
        context_train: Optional[Mapping[str, np.ndarray]],
        model_cfg: ModelConfig,
        cfg: TrainConfig,
        stage: int,
        ctx: dist_utils.DistContext,
        variants: Optional[ContextByGamma] = None,
        alternate: Optional[AlternateSource] = None,
    ) -> None:
        from .h5data import load_volumes, patch_file_info

        info = patch_file_info(train_h5)
        flip_axis = info["flip_axis"] if info["flipped_copy"] else None  # prepared without flips: the crops too
        alt_volumes = load_volumes(alternate.train_h5) if alternate is not None else None
        volumes = crop_volumes(load_volumes(train_h5), context_train, variants, alt_volumes,
                               alternate.context if alternate is not None else None)
        self.crops = CropBatches(volumes, model_cfg.source_patch, cfg.batch_size, cfg.seed, stage, ctx.rank, flip_axis,
                                 augment_of(cfg, model_cfg), spatial_augment_of(cfg), tuple(variants or ()),
                                 cfg.alt_source_p if alternate is not None else 0.0)

    def batch(self, iteration: int) -> Batch:
        return self.crops.batch(iteration)

    def close(self) -> None:
        self.crops.volumes = {}


def batch_source(
    train_h5: Path, val_h5: Optional[Path], context_train: Optional[Mapping[str, np.ndarray]], context_val: Optional[Mapping[str, np.ndarray]],
    model_cfg: ModelConfig, cfg: TrainConfig, stage: int, start: int, ctx: dist_utils.DistContext,
    variants: Optional[ContextByGamma] = None,
    alternate: Optional[AlternateSource] = None,
) -> "PatchSource | CropSource":
    """The batches of the generator kind: patches for the paper's FCN, crops of whole volumes for the U-Net (which
    alone takes ``variants``, the context for other contrasts: ``TrainConfig.aug_context_gammas``, and
    ``alternate``, another real contrast: ``TrainConfig.alt_source_data``)."""
    if model_cfg.generator.kind == "unet3d":
        return CropSource(train_h5, context_train, model_cfg, cfg, stage, ctx, variants, alternate)
    return PatchSource(train_h5, val_h5, context_train, context_val, cfg, stage, start, ctx, augment_of(cfg, model_cfg))
