"""Random rotations and zooms of the U-Net's training crops, so that 11 cases teach shapes rather than 11 layouts.

A U-Net that sees 202 voxels sees a whole brain's layout, and with 11 training cases it can fit each case's
layout instead of the local T1ce→T2 relation: its second stage raised the fit to the training cases and not the
held-out score (MODEL_CARD.md). Random rotations and isotropic zooms of every crop are the standard remedy
(nnU-Net trains with them by default). ``SpatialAugment`` draws one rotation and one zoom per crop, and
:func:`resample_crop` cuts that crop straight from the whole volume, so the rotated corners hold real anatomy,
not the zeros a rotated cube would bring in. Every channel (source, auto-context, target) is resampled by the
same map, trilinearly; the brain mask by the same map and then thresholded at ½, so it stays a 0/1 mask.

Angles are applied in voxel space: the stored volumes are on their source grid, isotropic (1 mm) for BraTS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial.transform import Rotation

from .config import check_spatial_spreads

if TYPE_CHECKING:
    from .config import TrainConfig


@dataclass(frozen=True)
class SpatialAugment:
    """Per crop: each of the three Euler angles uniform in ±``rotate_deg`` degrees, and ln(zoom) ~ N(0, ``zoom_sd``).

    A zoom above 1 shows the anatomy larger. Both 0 (the default) is no augmentation.
    """

    rotate_deg: float = 0.0
    zoom_sd: float = 0.0

    def __post_init__(self) -> None:
        check_spatial_spreads(self.rotate_deg, self.zoom_sd)

    @property
    def enabled(self) -> bool:
        """Whether any change is drawn at all."""
        return self.rotate_deg > 0 or self.zoom_sd > 0

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """The 3×3 map from a crop voxel's offset (z, y, x) from the crop's centre to its offset in the volume."""
        angles = rng.uniform(-self.rotate_deg, self.rotate_deg, size=3) if self.rotate_deg > 0 else np.zeros(3)
        zoom = float(np.exp(rng.normal(0.0, self.zoom_sd))) if self.zoom_sd > 0 else 1.0
        rotation = Rotation.from_euler("zyx", angles, degrees=True).as_matrix()
        return (rotation / zoom).astype(np.float64)


def spatial_augment_of(train_cfg: "TrainConfig") -> SpatialAugment:
    """A run's spatial augmentation, from its TrainConfig (``aug_rotate_deg``, ``aug_zoom_sd``)."""
    return SpatialAugment(train_cfg.aug_rotate_deg, train_cfg.aug_zoom_sd)


def resample_crop(arrays: Sequence[np.ndarray], centre: Sequence[int], size: int, matrix: np.ndarray) -> np.ndarray:
    """Cut a ``size``³ crop of each (Z, Y, X) array around ``centre``, mapped by ``matrix``: (len(arrays), s, s, s) float32.

    Crop voxel j (per axis) sits at offset ``j − size // 2`` from the centre, as in an unrotated cut, so the
    identity map gives exactly the cut window of ``patches.cut_window`` (zeros beyond the volume). The arrays
    share one grid (computed once) and are read in place, never stacked into a copy of the whole volume.
    """
    shape = np.shape(arrays[0])
    offsets = np.arange(size, dtype=np.float64) - size // 2
    grid = np.stack(np.meshgrid(offsets, offsets, offsets, indexing="ij")).reshape(3, -1)
    points = np.asarray(matrix, dtype=np.float64) @ grid + np.asarray(centre, dtype=np.float64)[:, None]
    extent = np.maximum(np.asarray(shape, dtype=np.float64) - 1.0, 1.0)[:, None]
    normalised = (2.0 * points / extent - 1.0)[::-1]  # grid_sample wants (x, y, z) = the array's axes reversed
    sample_grid = torch.from_numpy(np.ascontiguousarray(normalised.T, dtype=np.float32)).reshape(1, size, size, size, 3)
    out = np.empty((len(arrays), size, size, size), dtype=np.float32)
    for i, arr in enumerate(arrays):
        vol = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None, None]
        out[i] = F.grid_sample(vol, sample_grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0, 0].numpy()
    return out
