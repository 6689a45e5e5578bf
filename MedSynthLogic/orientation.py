"""The voxel order a model sees: every volume is turned to the order of its training data before it meets a network.

A 3D network is not blind to orientation: the same brain stored sagittal-first, or with its rows front-to-back,
gives another synthesis (``docs/evaluation/ORIENTATION.md``), and a flip meant as left-right mirrors some other axis.
Files straight from a scanner or from Slicer's DICOM import come in any of the 48 axis orders, so the array is
transposed and flipped (no interpolation: exactly invertible) until its axes run as closely as the direction cosines
allow along +x, +y, +z of ITK's LPS world (numpy order z, y, x): the order of the BraTS files every bundled model was
trained on. An oblique scan keeps its obliquity; only the axis order and sense change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np

from .volume import Mat9, Volume

__all__ = ["AxisOrder", "axis_order", "orientation_code"]

_LETTERS = (("L", "R"), ("P", "A"), ("S", "I"))


@dataclass(frozen=True)
class AxisOrder:
    """How to bring an array stored with some direction into the canonical order, and back.

    ``axes``: for each canonical numpy axis (z, y, x), the stored array's axis that becomes it; ``flips``: which
    canonical axes then run backwards and are reversed.
    """

    axes: Tuple[int, int, int]
    flips: Tuple[bool, bool, bool]

    @property
    def is_identity(self) -> bool:
        """Whether the stored array is already in the canonical order (nothing to do)."""
        return self.axes == (0, 1, 2) and not any(self.flips)

    def forward(self, array: np.ndarray) -> np.ndarray:
        """A stored array in the canonical order (a view where numpy allows)."""
        out = np.transpose(array, self.axes)
        flipped = tuple(axis for axis, flip in enumerate(self.flips) if flip)
        return np.flip(out, axis=flipped) if flipped else out

    def inverse(self, array: np.ndarray) -> np.ndarray:
        """A canonical-order array back in the stored order: ``inverse(forward(a)) == a`` exactly."""
        flipped = tuple(axis for axis, flip in enumerate(self.flips) if flip)
        out = np.flip(array, axis=flipped) if flipped else array
        return np.ascontiguousarray(np.transpose(out, np.argsort(self.axes)))

    def spacing(self, spacing: Tuple[float, float, float]) -> Tuple[float, float, float]:
        """A stored voxel size (x, y, z) as the canonical axes see it: what a model's expected spacing refers to."""
        return tuple(float(spacing[i]) for i in self._index_axes())  # type: ignore[return-value]

    def inverse_spacing(self, spacing: Tuple[float, float, float]) -> Tuple[float, float, float]:
        """A canonical voxel size (x, y, z) along the stored axes: ``inverse_spacing(spacing(s)) == s``."""
        out = [0.0, 0.0, 0.0]
        for canonical, stored in enumerate(self._index_axes()):
            out[stored] = float(spacing[canonical])
        return tuple(out)  # type: ignore[return-value]

    def _index_axes(self) -> list:
        """For each canonical index axis (x, y, z), the stored index axis that becomes it."""
        return [2 - self.axes[2 - c] for c in range(3)]

    def volume(self, volume: Volume) -> Volume:
        """``volume`` in the canonical order with the geometry that keeps every voxel where it was in the world."""
        direction = np.asarray(volume.direction, dtype=np.float64).reshape(3, 3)
        spacing = np.asarray(volume.spacing, dtype=np.float64)
        shape_xyz = np.asarray(volume.shape[::-1])
        index_axes = self._index_axes()
        signs = np.array([-1.0 if self.flips[2 - c] else 1.0 for c in range(3)])
        new_direction = direction[:, index_axes] * signs
        first = np.zeros(3)
        for c in range(3):
            if self.flips[2 - c]:
                first[index_axes[c]] = shape_xyz[index_axes[c]] - 1
        origin = np.asarray(volume.origin, dtype=np.float64) + direction @ (first * spacing)
        return Volume(np.ascontiguousarray(self.forward(volume.array)), spacing=self.spacing(volume.spacing),
                      origin=tuple(origin.tolist()), direction=tuple(new_direction.reshape(9).tolist()))


def axis_order(direction: Mat9) -> AxisOrder:
    """The transpose and flips that bring an array with this (row-major, LPS) direction into the canonical order.

    Each world axis takes the stored index axis most nearly parallel to it (an assignment, so an oblique scan near
    45° still gets three distinct axes).
    """
    from scipy.optimize import linear_sum_assignment

    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)  # d[world, index axis]
    worlds, index_axes = linear_sum_assignment(-np.abs(d))
    index_of = dict(zip(worlds.tolist(), index_axes.tolist()))
    axes = tuple(2 - index_of[2 - n] for n in range(3))  # numpy axis n is world axis 2 - n
    flips = tuple(bool(d[2 - n, index_of[2 - n]] < 0) for n in range(3))
    return AxisOrder(axes, flips)  # type: ignore[arg-type]


def orientation_code(direction: Mat9) -> str:
    """Where the stored index axes (x, y, z) point in LPS terms, e.g. "LPS" (the canonical order) or "ASL" (sagittal)."""
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    letters = []
    for axis in range(3):
        world = int(np.argmax(np.abs(d[:, axis])))
        letters.append(_LETTERS[world][0 if d[world, axis] > 0 else 1])
    return "".join(letters)

