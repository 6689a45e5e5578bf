"""Random changes of a training crop's source intensities, so a model meets other scanners' and pipelines' contrast.

The normalised T1ce of another preprocessing pipeline differs from the training cases' in contrast (a different
gamma), in slow intensity drifts (a bias field that skull stripping and N4 left behind) and in overall scale (a
normalisation reference that moved); another scanner's may be noisier, or acquired in thick slices and resampled
(a blur along one axis). ``IntensityAugment`` draws one of each per crop and applies them to the source channel
only: the target is the real T2 and stays as it is, and so does an auto-context channel (the previous stage's
synthesis of the unchanged source). The first three are multiplicative or powers, and the slab average and the noise
change only voxels where the source is > 0 (the brain mask is applied after resampling, as a skull stripping of the
thick-slice scan would), so the background stays exactly 0; the contrast change pivots on ``pivot`` (the normalised
source's median in the brain), so the normalisation's anchor stays where it was on average.

Every draw comes from the generator it is given; :class:`crops.CropBatches` and the paper's patch batches
(:class:`batch_sources.PatchSource`) give it a stream of its own, so the crops are the same with and without
augmentation, and a resumed run sees the same changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Tuple

import numpy as np
from scipy import ndimage

from .config import check_augment_spreads
from .errors import UsageError

if TYPE_CHECKING:
    from .config import ModelConfig, TrainConfig


@dataclass(frozen=True)
class IntensityAugment:
    """Per crop: ``x → scale · pivot · (x / pivot)^gamma · field``, then a slab average and noise.

    ``gamma_sd``: standard deviation of ln(gamma); ``field_sd``: of each coefficient of ln(field), a polynomial of
    degree ≤ 2 in the crop's coordinates scaled to [−1, 1] (a smooth drift over the crop); ``scale_sd``: of ln(scale).
    ``slab_max``: the crop's brain is averaged over a box of 1 to ``slab_max`` voxels (uniformly; 1 = unchanged)
    along one random axis, as thick slices resampled to the voxel grid are; ``noise_sd``: Gaussian noise of standard
    deviation ``pivot · noise_sd · u`` (u uniform in [0, 1], so clean crops stay common) is added where the source is > 0.
    All 0 (the default) is no augmentation.
    """

    gamma_sd: float = 0.0
    field_sd: float = 0.0
    scale_sd: float = 0.0
    pivot: float = 0.5
    noise_sd: float = 0.0
    slab_max: int = 0

    def __post_init__(self) -> None:
        check_augment_spreads(self.gamma_sd, self.field_sd, self.scale_sd, self.noise_sd, self.slab_max)
        if self.pivot <= 0:
            raise UsageError(f"The intensity augmentation's pivot must be > 0, not {self.pivot}.")

    @property
    def enabled(self) -> bool:
        """Whether any change is drawn at all."""
        return max(self.gamma_sd, self.field_sd, self.scale_sd, self.noise_sd) > 0 or self.slab_max > 1

    def __call__(self, source: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A changed copy of ``source`` (a float32 crop of any shape, ≥ 0); the same ``rng`` state gives the same copy."""
        return self.changed(source, rng)[0]

    def changed(self, source: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, float]:
        """``__call__``'s copy and the gamma it drew (the same draws), so a context can be matched to the contrast.

        The slab and noise draws come after the others, so a run without them draws what it drew before they existed."""
        gamma = float(np.exp(rng.normal(0.0, self.gamma_sd))) if self.gamma_sd > 0 else 1.0
        scale = float(np.exp(rng.normal(0.0, self.scale_sd))) if self.scale_sd > 0 else 1.0
        out = change_contrast(source, gamma, self.pivot)
        if self.field_sd > 0:
            out *= smooth_field(source.shape, rng, self.field_sd)
        out = (out * np.float32(scale)).astype(np.float32, copy=False)
        if self.slab_max > 1:
            out = thick_slices(out, int(rng.integers(1, self.slab_max + 1)), int(rng.integers(out.ndim)))
        if self.noise_sd > 0:
            out = add_noise(out, self.pivot * self.noise_sd * float(rng.random()), rng)
        return out, gamma


def thick_slices(source: np.ndarray, width: int, axis: int) -> np.ndarray:
    """``source`` averaged over ``width`` voxels along ``axis`` (edges repeated) where it is > 0: slices ``width``
    times as thick, resampled back to the voxel grid, the background left at 0. Width 1 is a copy."""
    if width <= 1:
        return source.astype(np.float32, copy=True)
    blurred = ndimage.uniform_filter1d(source.astype(np.float32), width, axis=axis, mode="nearest")
    return np.where(source > 0, blurred, source).astype(np.float32, copy=False)


def add_noise(source: np.ndarray, sd: float, rng: np.random.Generator) -> np.ndarray:
    """``source`` plus Gaussian noise of ``sd`` where it is > 0, clipped at 0: a noisier scan with the same background."""
    noisy = source + rng.normal(0.0, sd, source.shape).astype(np.float32)
    return np.where(source > 0, np.maximum(noisy, 0.0), source).astype(np.float32, copy=False)


def change_contrast(source: np.ndarray, gamma: float, pivot: float) -> np.ndarray:
    """``pivot · (x / pivot)^gamma`` of a normalised source clipped at 0 (a float32 copy): the augmentation's contrast
    change, also applied to whole volumes to compute a context for that contrast (``training.context``)."""
    out = np.maximum(source.astype(np.float32, copy=True), 0.0)
    if gamma != 1.0:
        out = pivot * np.power(out / pivot, gamma, dtype=np.float32)
    return out


def smooth_field(shape: tuple, rng: np.random.Generator, sd: float) -> np.ndarray:
    """exp of a random polynomial of degree ≤ 2 over a grid of ``shape`` scaled to [−1, 1] per axis (no constant term)."""
    axes = np.meshgrid(*[np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape], indexing="ij", sparse=True)
    terms = list(axes) + [a * a - np.float32(1 / 3) for a in axes]
    terms += [axes[i] * axes[j] for i in range(len(axes)) for j in range(i + 1, len(axes))]
    log_field = sum(np.float32(rng.normal(0.0, sd)) * t for t in terms)
    return np.exp(np.broadcast_to(log_field, shape)).astype(np.float32)


def augment_of(train_cfg: "TrainConfig", model_cfg: "ModelConfig") -> IntensityAugment:
    """A run's augmentation: its TrainConfig's standard deviations, pivoting on the median that the model's source
    normalisation sets (``median`` mode), else on 0.5."""
    source = model_cfg.normalisation.source
    pivot = source.median_value if source.mode == "median" else 0.5
    return IntensityAugment(train_cfg.aug_gamma_sd, train_cfg.aug_field_sd, train_cfg.aug_scale_sd, pivot,
                            train_cfg.aug_noise_sd, train_cfg.aug_slab_max)
