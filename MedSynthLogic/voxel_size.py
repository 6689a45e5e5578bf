"""Which voxel size the networks see: a source's own, or the model's training one it is resampled to.

The networks count voxels, not millimetres, so a source whose voxels are far from the training size is synthesized
resampled to it (:mod:`.volume_synthesis`). Torch-free, because the Slicer panel's time estimate asks too, before
PyTorch is installed.
"""

from __future__ import annotations

from typing import Sequence, Tuple

#: A source whose voxel size differs from the model's training one by more than this fraction on some axis is
#: synthesized resampled to the training size (a 256-matrix 0.94 mm scan is not; a 0.5 or 0.8 mm one is).
RESAMPLE_ABOVE = 0.1


def needs_resampling(spacing: Sequence[float], trained: Sequence[float]) -> bool:
    """Whether a voxel size differs from the model's training one by more than ``RESAMPLE_ABOVE`` on some axis
    (both in the same axis order)."""
    return any(abs(float(s) - float(t)) > RESAMPLE_ABOVE * float(t) for s, t in zip(spacing, trained))


def resampled_size(size: Sequence[int], spacing: Sequence[float], trained: Sequence[float]) -> Tuple[int, ...]:
    """The number of voxels along each axis once resampled to ``trained`` (the same extent in mm; at least 1)."""
    return tuple(max(1, int(round(int(n) * float(s) / float(t)))) for n, s, t in zip(size, spacing, trained))


def size_seen(size: Sequence[int], spacing: Sequence[float], trained: Sequence[float]) -> Tuple[int, ...]:
    """The voxels along each axis that the networks see: ``size`` itself, or its resampling to ``trained`` when the
    synthesis resamples (all three in the same axis order)."""
    if needs_resampling(spacing, trained):
        return resampled_size(size, spacing, trained)
    return tuple(int(n) for n in size)


def describe(spacing: Sequence[float]) -> str:
    """A voxel size as the messages write it: "0.9 × 1.1 × 1.6 mm"."""
    return " × ".join(f"{float(v):.3g}" for v in spacing) + " mm"
