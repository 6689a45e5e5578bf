"""Intensities ↔ network units.

MR intensities have no absolute unit, so each MR volume is divided by a robust maximum (a percentile inside the
brain) and clipped; CT has a physical unit (HU), so a fixed window is mapped to [0, 1]. The fitted transform is
stored (``to_dict``) with the data and the model so training and inference apply exactly the same mapping.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np

from .config import IntensityConfig, NormalisationConfig
from .errors import InputImageError, UsageError


def brain_mask(arr: np.ndarray, threshold: float = 0.0) -> np.ndarray:
    """Voxels above ``threshold``: BraTS-style inputs are skull-stripped, so the brain is what is not background."""
    return np.asarray(arr) > threshold


@dataclass(frozen=True)
class IntensityTransform:
    """A fitted intensity mapping.

    ``percentile`` mode: network = clip(raw / scale, clip_min, clip_max), ``scale`` being the configured percentile
    of the raw values inside the mask; ``median`` mode likewise with ``scale`` = median / ``median_value``. ``window`` mode: network = clip((raw − window_min) / (window_max −
    window_min), 0, 1). :meth:`inverse` undoes the scaling (and the window); clipped values cannot be recovered.
    """

    mode: str
    scale: float = 1.0
    clip_min: float = 0.0
    clip_max: float = 1.0
    window_min: float = -1000.0
    window_max: float = 2000.0

    def __post_init__(self) -> None:
        if self.mode not in ("percentile", "median", "window"):
            raise UsageError(f"Unknown intensity mode {self.mode!r}; use 'percentile', 'median' or 'window'.")
        if self.mode != "window" and not (np.isfinite(self.scale) and self.scale > 0):
            raise UsageError(f"A percentile transform needs a positive scale, got {self.scale}.")
        if self.mode == "window" and not self.window_max > self.window_min:
            raise UsageError("window_max must be larger than window_min.")

    @classmethod
    def fit(cls, cfg: IntensityConfig, arr: np.ndarray, mask: Optional[np.ndarray] = None) -> "IntensityTransform":
        """Fit to one volume: percentile (median) mode measures that percentile inside ``mask`` (all voxels if None)."""
        if cfg.mode == "window":
            return cls("window", 1.0, 0.0, 1.0, float(cfg.window_min), float(cfg.window_max))
        values = np.asarray(arr)[mask] if mask is not None else np.asarray(arr).ravel()
        level = 50.0 if cfg.mode == "median" else cfg.percentile
        measured = float(np.percentile(values, level)) if values.size else 0.0
        if not measured > 0:
            raise InputImageError(
                f"The image is empty or all zero inside the brain mask (its {level:g}th percentile is "
                f"{measured:g}), so it cannot be normalised.",
                "Check that you chose the right, skull-stripped volume and that the mask covers the brain.",
            )
        scale = measured / cfg.median_value if cfg.mode == "median" else measured
        return cls(cfg.mode, scale, float(cfg.clip_min), float(cfg.clip_max), float(cfg.window_min), float(cfg.window_max))

    def forward(self, arr: np.ndarray) -> np.ndarray:
        """Raw intensities → network units (float32)."""
        a = np.asarray(arr, dtype=np.float32)
        if self.mode == "window":
            out = (a - np.float32(self.window_min)) / np.float32(self.window_max - self.window_min)
            return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)
        return np.clip(a / np.float32(self.scale), self.clip_min, self.clip_max).astype(np.float32, copy=False)

    def inverse(self, arr: np.ndarray) -> np.ndarray:
        """Network units → raw intensities (float32): HU in window mode, this volume's scale in percentile mode."""
        a = np.asarray(arr, dtype=np.float32)
        if self.mode == "window":
            return (a * np.float32(self.window_max - self.window_min) + np.float32(self.window_min)).astype(np.float32)
        return (a * np.float32(self.scale)).astype(np.float32, copy=False)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready form, stored in HDF5 attributes and model files."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "IntensityTransform":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"Unknown intensity transform setting(s): {', '.join(unknown)}.")
        return cls(**data)


def _apply(arr: np.ndarray, mask: Optional[np.ndarray], icfg: IntensityConfig,
           fit_mask: Optional[np.ndarray] = None) -> Tuple[np.ndarray, IntensityTransform]:
    transform = IntensityTransform.fit(icfg, arr, mask if fit_mask is None else fit_mask)
    out = transform.forward(arr)
    if mask is not None:
        out = np.where(mask, out, np.float32(0.0)).astype(np.float32, copy=False)
    return out, transform


def normalise_source(
    arr: np.ndarray, mask: Optional[np.ndarray], cfg: NormalisationConfig
) -> Tuple[np.ndarray, IntensityTransform]:
    """Source volume → network units (float32, 0 outside ``mask``), with the fitted transform."""
    return _apply(arr, mask, cfg.source)


def normalise_target(
    arr: np.ndarray, mask: Optional[np.ndarray], cfg: NormalisationConfig, fit_mask: Optional[np.ndarray] = None
) -> Tuple[np.ndarray, IntensityTransform]:
    """Target volume → network units (float32, 0 outside ``mask``), with the fitted transform (kept for metrics).

    ``fit_mask``: the voxels the transform is fitted on, when not all of ``mask`` holds target data (a resampled
    target that does not reach part of the brain holds only its background there, as ``evaluate`` leaves out)."""
    return _apply(arr, mask, cfg.target, fit_mask)


def denormalise_output(arr: np.ndarray, cfg: NormalisationConfig) -> np.ndarray:
    """Network output → the unit written to disk (float32).

    Percentile mode: network units × ``cfg.output_scale`` (an arbitrary MR unit; 1000 ≈ the 99.5th percentile of
    T2 inside the brain). Window mode: the target window's unit, e.g. HU for CT.

    The output never goes below the lowest value a training target could hold (``clip_min``; the window's bottom):
    a linear last layer can undershoot a little at dark edges, and a negative MR magnitude is not an image value.
    A window's top bounds it too (a CT model wrote 2158 HU for a 2000 HU window); an MR image has no such top.
    """
    t = cfg.target
    a = np.asarray(arr, dtype=np.float32)
    a = np.clip(a, 0.0, 1.0) if t.mode == "window" else np.maximum(a, np.float32(t.clip_min))
    if t.mode == "window":
        return (a * np.float32(t.window_max - t.window_min) + np.float32(t.window_min)).astype(np.float32)
    return (a * np.float32(cfg.output_scale)).astype(np.float32, copy=False)


__all__ = ["brain_mask", "IntensityTransform", "normalise_source", "normalise_target", "denormalise_output"]
