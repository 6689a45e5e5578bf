"""Random changes of a training crop's source intensities, so a model meets other scanners' and pipelines' contrast.

The normalised T1ce of another preprocessing pipeline differs from the training cases' in contrast (a different
gamma), in slow intensity drifts (a bias field that skull stripping and N4 left behind) and in overall scale (a
normalisation reference that moved). ``IntensityAugment`` draws one of each per crop and applies them to the
source channel only: the target is the real T2 and stays as it is, and so does an auto-context channel (the
previous stage's synthesis of the unchanged source). All three are multiplicative or powers, so the background
stays exactly 0, and the contrast change pivots on ``pivot`` (the normalised source's median in the brain), so
the normalisation's anchor stays where it was on average.

Every draw comes from the generator it is given; :class:`crops.CropBatches` gives it a stream of its own, so the
crops are the same with and without augmentation, and a resumed run sees the same changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Tuple

import numpy as np

from .config import check_augment_spreads
from .errors import UsageError

if TYPE_CHECKING:
    from .config import ModelConfig, TrainConfig


@dataclass(frozen=True)
class IntensityAugment:
    """Per crop: ``x → scale · pivot · (x / pivot)^gamma · field``.

    ``gamma_sd``: standard deviation of ln(gamma); ``field_sd``: of each coefficient of ln(field), a polynomial of
    degree ≤ 2 in the crop's coordinates scaled to [−1, 1] (a smooth drift over the crop); ``scale_sd``: of ln(scale).
    All 0 (the default) is no augmentation.
    """

    gamma_sd: float = 0.0
    field_sd: float = 0.0
    scale_sd: float = 0.0
    pivot: float = 0.5

    def __post_init__(self) -> None:
        check_augment_spreads(self.gamma_sd, self.field_sd, self.scale_sd)
        if self.pivot <= 0:
            raise UsageError(f"The intensity augmentation's pivot must be > 0, not {self.pivot}.")

    @property
    def enabled(self) -> bool:
        """Whether any change is drawn at all."""
        return max(self.gamma_sd, self.field_sd, self.scale_sd) > 0

    def __call__(self, source: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A changed copy of ``source`` (a float32 crop of any shape, ≥ 0); the same ``rng`` state gives the same copy."""
        return self.changed(source, rng)[0]

    def changed(self, source: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, float]:
        """``__call__``'s copy and the gamma it drew (the same draws), so a context can be matched to the contrast."""
        gamma = float(np.exp(rng.normal(0.0, self.gamma_sd))) if self.gamma_sd > 0 else 1.0
        scale = float(np.exp(rng.normal(0.0, self.scale_sd))) if self.scale_sd > 0 else 1.0
        out = change_contrast(source, gamma, self.pivot)
        if self.field_sd > 0:
            out *= smooth_field(source.shape, rng, self.field_sd)
        return (out * np.float32(scale)).astype(np.float32, copy=False), gamma


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
    return IntensityAugment(train_cfg.aug_gamma_sd, train_cfg.aug_field_sd, train_cfg.aug_scale_sd, pivot)
