"""Large training crops cut on the fly from the normalised volumes that ``medsynth prepare`` stores.

The U-Net learns from context a 32³ patch cannot hold, so its samples are crops of ``size``³ voxels (e.g. 96³)
cut from whole volumes kept in memory, with a left–right flip half of the time and the brain mask for a masked
loss; optionally rotated and zoomed (:mod:`.spatial_augment`) and with the source's intensities changed
(:mod:`.intensity_augment`). A batch is a pure function of (seed, stage, iteration, rank), like the patch batches: nothing to save in a
checkpoint, and a resumed run sees exactly the crops an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from .errors import DataError
from .intensity_augment import IntensityAugment
from .patches import cut_window
from .spatial_augment import SpatialAugment, resample_crop


#: Seed word that separates the intensity augmentation's random stream from the crops'.
AUGMENT_STREAM = 1
#: Seed word of the spatial augmentation's stream: the crops' centres and flips stay those of a run without it.
SPATIAL_STREAM = 2
#: Seed word of the alternate-source draws (``TrainConfig.alt_source_p``): the other draws stay those of a run without.
ALT_SOURCE_STREAM = 3
#: gamma → (case id → the auto-context input computed for that contrast of the source, on the padded grid).
ContextByGamma = Mapping[float, Mapping[str, np.ndarray]]


def iteration_stream(seed: int, stage: int, iteration: int, rank: int, *word: int) -> np.random.Generator:
    """The random stream of (seed, stage, iteration, rank), optionally separated by a seed word: what makes a batch a
    pure function of its iteration, for the crops and for the patches' augmentation alike."""
    return np.random.default_rng([int(seed), int(stage), int(iteration), int(rank), *word])


@dataclass(frozen=True)
class CropVolume:
    """One case on its original (unpadded) grid: source, target and mask, plus an optional context channel."""

    source: np.ndarray
    target: np.ndarray
    mask: np.ndarray
    context: Optional[np.ndarray] = None
    #: The context computed for other contrasts of the source, in the order of ``CropBatches.variant_gammas``.
    variants: Tuple[np.ndarray, ...] = ()
    #: The same case's other real contrast (``TrainConfig.alt_source_data``) and the context computed from it.
    alt_source: Optional[np.ndarray] = None
    alt_context: Optional[np.ndarray] = None

    @property
    def alternate(self) -> Tuple[np.ndarray, ...]:
        """The channels a crop takes instead of the source's (and context's) when it draws the alternate source."""
        if self.alt_source is None:
            return ()
        return (self.alt_source,) + ((self.alt_context,) if self.alt_context is not None else ())


def crop_volumes(
    volumes: Mapping[str, Mapping[str, object]],
    context: Optional[Mapping[str, np.ndarray]] = None,
    variants: Optional[ContextByGamma] = None,
    alt_volumes: Optional[Mapping[str, Mapping[str, object]]] = None,
    alt_context: Optional[Mapping[str, np.ndarray]] = None,
) -> Dict[str, CropVolume]:
    """``h5data.load_volumes`` entries (padded by their ``pad``) → unpadded :class:`CropVolume`s.

    ``context`` (case id → previous-stage synthesis on the same padded grid) becomes each case's second channel;
    ``variants`` (gamma → such a mapping, computed for that contrast of the source) its alternatives;
    ``alt_volumes`` (the alternate source's ``load_volumes``) and ``alt_context`` (its context) the other contrast.
    """
    out: Dict[str, CropVolume] = {}
    for cid, vol in volumes.items():
        pad = int(vol["pad"])  # type: ignore[arg-type]
        inner = tuple(slice(pad, n - pad) for n in np.shape(vol["source"]))
        ctx = None if context is None else np.asarray(context[cid], dtype=np.float32)[inner]
        alternatives = tuple(np.asarray(by_case[cid], dtype=np.float32)[inner] for by_case in (variants or {}).values())
        alt_src = alt_ctx = None
        if alt_volumes is not None:
            if np.shape(alt_volumes[cid]["source"]) != np.shape(vol["source"]):
                raise DataError(f"Case {cid}'s alternate source has the shape {np.shape(alt_volumes[cid]['source'])}, "
                                f"its source {np.shape(vol['source'])}.",
                                "Prepare both from co-registered volumes of the same cases with the same model config.")
            alt_src = np.asarray(alt_volumes[cid]["source"], dtype=np.float32)[inner]
            alt_ctx = None if alt_context is None else np.asarray(alt_context[cid], dtype=np.float32)[inner]
        out[cid] = CropVolume(
            np.asarray(vol["source"], dtype=np.float32)[inner],
            np.asarray(vol["target"], dtype=np.float32)[inner],
            np.asarray(vol["mask"], dtype=bool)[inner],
            ctx,
            alternatives,
            alt_src,
            alt_ctx,
        )
    return out


def nearest_gamma(gamma: float, gammas: Sequence[float]) -> int:
    """The index of the gamma in ``gammas`` nearest ``gamma`` on a log scale (contrast changes compose as products)."""
    return int(np.argmin([abs(np.log(gamma) - np.log(g)) for g in gammas]))


class CropBatches:
    """Random brain-centred crops of ``size``³: ``batch(i)`` → (source (B, C, s, s, s), target (B, 1, …), mask (B, 1, …)).

    Each crop is centred on a random brain voxel of a random case (so every crop holds brain, near the edge too)
    and flipped along ``flip_axis`` with probability ½ (never with ``flip_axis`` None: data prepared without the
    flipped copy). With an enabled ``spatial`` it is cut rotated and zoomed
    around that centre; with an enabled ``augment`` the source channel's intensities are then changed. Each draws
    from a stream of its own, so the centres and flips stay those of a run without it. With ``variant_gammas`` (the
    gammas of each volume's ``variants``) the context channel is the one computed for the contrast nearest the
    crop's drawn gamma (:func:`nearest_gamma`; the plain context is gamma 1). With ``alt_p`` > 0 a crop takes the
    case's alternate source and its context (:attr:`CropVolume.alternate`) instead, with that probability, drawn from
    a stream of its own before the intensity augmentation, which then changes whichever source the crop holds.
    """

    def __init__(
        self,
        volumes: Mapping[str, CropVolume],
        size: int,
        per_rank: int,
        seed: int,
        stage: int,
        rank: int = 0,
        flip_axis: Optional[int] = 2,
        augment: Optional[IntensityAugment] = None,
        spatial: Optional[SpatialAugment] = None,
        variant_gammas: Sequence[float] = (),
        alt_p: float = 0.0,
    ) -> None:
        if not volumes:
            raise DataError("There are no training volumes to cut crops from.", "Run `medsynth prepare` on at least one case.")
        self.ids: List[str] = sorted(volumes)
        self.volumes = volumes
        self.size, self.per_rank = int(size), int(per_rank)
        self.seed, self.stage, self.rank = int(seed), int(stage), int(rank)
        self.flip_axis = None if flip_axis is None else int(flip_axis)
        self.augment = augment if augment is not None and augment.enabled else None
        self.spatial = spatial if spatial is not None and spatial.enabled else None
        self.variant_gammas = tuple(float(g) for g in variant_gammas)
        if self.variant_gammas and (self.augment is None or any(
                v.context is None or len(v.variants) != len(self.variant_gammas) for v in volumes.values())):
            raise DataError("Contexts for other contrasts need the intensity augmentation and one context per gamma "
                            "for every volume.", "Set aug_gamma_sd > 0, or aug_context_gammas to [].")
        self.alt_p = float(alt_p)
        if self.alt_p > 0 and (self.variant_gammas or any(
                v.alt_source is None or (v.context is None) != (v.alt_context is None) for v in volumes.values())):
            raise DataError("Crops from an alternate source need it, and its context where the source has one, for "
                            "every volume, and no contexts for other contrasts.",
                            "Set alt_source_data to a folder prepared from the same cases, and aug_context_gammas to [].")
        self._float_masks = {cid: v.mask.astype(np.float32) for cid, v in volumes.items()} if self.spatial is not None else {}
        self._brain = {cid: np.argwhere(v.mask) for cid, v in volumes.items()}
        empty = [cid for cid, idx in self._brain.items() if len(idx) == 0]
        if empty:
            raise DataError(f"The brain mask of case(s) {', '.join(empty)} is empty.", "Check those cases and re-run `medsynth prepare`.")

    def sample(
        self, rng: np.random.Generator, spatial_rng: np.random.Generator, alternate: bool = False
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One crop: (source channels (C, s, s, s), target (1, …), mask (1, …)) as float32; ``spatial_rng`` draws its
        rotation and zoom when the spatial augmentation is on; ``alternate``: the source channels are the case's
        alternate source and its context (:attr:`CropVolume.alternate`), cut at the same place."""
        cid = self.ids[int(rng.integers(len(self.ids)))]
        vol = self.volumes[cid]
        brain = self._brain[cid]
        centre = brain[int(rng.integers(len(brain)))]
        if alternate:
            channels = list(vol.alternate)
        else:
            channels = [vol.source] + ([vol.context] if vol.context is not None else []) + list(vol.variants)
        if self.spatial is not None:
            cut = resample_crop(channels + [vol.target, self._float_masks[cid]], centre, self.size, self.spatial.draw(spatial_rng))
            src, tgt, mask = cut[:-2], cut[-2:-1], (cut[-1:] > 0.5).astype(np.float32)
        else:
            corner = [int(c) - self.size // 2 for c in centre]
            window = [(c, c + self.size) for c in corner]
            src = np.stack([cut_window(c, window, "constant") for c in channels])
            tgt = cut_window(vol.target, window, "constant")[None]
            mask = cut_window(vol.mask, window, "constant")[None].astype(np.float32)
        if rng.random() < 0.5 and self.flip_axis is not None:  # drawn either way: the later draws stay the same
            axis = self.flip_axis + 1
            src, tgt, mask = (np.flip(a, axis=axis) for a in (src, tgt, mask))
        return np.ascontiguousarray(src), np.ascontiguousarray(tgt), np.ascontiguousarray(mask)

    def _stream(self, iteration: int, *word: int) -> np.random.Generator:
        return iteration_stream(self.seed, self.stage, iteration, self.rank, *word)

    def batch(self, iteration: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batch of ``iteration`` for this rank."""
        rng, spatial_rng = self._stream(iteration), self._stream(iteration, SPATIAL_STREAM)
        alt_rng = self._stream(iteration, ALT_SOURCE_STREAM) if self.alt_p > 0 else None
        samples = [self.sample(rng, spatial_rng, alt_rng is not None and alt_rng.random() < self.alt_p)
                   for _ in range(self.per_rank)]
        if self.augment is not None:
            aug_rng = self._stream(iteration, AUGMENT_STREAM)
            for i, (src, tgt, mask) in enumerate(samples):
                src[0], gamma = self.augment.changed(src[0], aug_rng)
                if self.variant_gammas:
                    pick = 1 + nearest_gamma(gamma, (1.0,) + self.variant_gammas)
                    samples[i] = (np.ascontiguousarray(src[[0, pick]]), tgt, mask)
        return tuple(torch.from_numpy(np.stack([s[i] for s in samples])) for i in range(3))  # type: ignore[return-value]
