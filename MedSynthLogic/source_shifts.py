"""Sources unlike a model's training cases, made from a case's own files: what the shift studies measure the model
on and what an error map can be fitted on (``fit-error-map --variants``).

Both keep the T1ce's brain mask (0 outside it), so a shifted source is scored in the same voxels as the unshifted
one: a contrast change of the brain's intensities, and the case's non-contrast T1 (the likeliest wrong pick for the
T1ce in Slicer's volume selector) brought onto the T1ce's grid.
"""

from __future__ import annotations

import os
from typing import Optional, Union

import numpy as np

from .dataset_cases import companion_t1
from .intensity_augment import change_contrast
from .volume import Volume, align_pair
from .volume_io import read_volume

__all__ = ["contrast_in_brain", "t1_in_place"]


def contrast_in_brain(array: np.ndarray, mask: np.ndarray, gamma: float) -> np.ndarray:
    """The brain's intensities through ``x**gamma`` on [0, the brain's maximum] (which stays), 0 outside ``mask``."""
    return np.where(mask, change_contrast(array, gamma, float(array[mask].max())), 0.0).astype(np.float32)


def t1_in_place(source_path: Union[str, os.PathLike], source: Volume, mask: np.ndarray) -> Optional[Volume]:
    """The case's T1 (found by name beside the T1ce at ``source_path``) on ``source``'s grid, 0 outside ``mask``;
    None when there is no such file."""
    t1 = companion_t1(source_path)
    if t1 is None:
        return None
    other, _, _ = align_pair(read_volume(t1), source, policy="resample")
    return source.with_array(np.where(mask, other.array, 0.0).astype(np.float32))
