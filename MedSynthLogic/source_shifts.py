"""Sources unlike a model's training cases, made from a case's own files: what the shift studies measure the model
on and what an error map can be fitted on (``fit-error-map --variants``).

Both keep the T1ce's brain mask (0 outside it), so a shifted source is scored in the same voxels as the unshifted
one: a contrast change of the brain's intensities, and the case's non-contrast T1 (the likeliest wrong pick for the
T1ce in Slicer's volume selector) brought onto the T1ce's grid.
"""

from __future__ import annotations

import os
from typing import Union

import numpy as np

from .intensity_augment import change_contrast
from .volume import Volume, align_pair
from .volume_io import read_volume

__all__ = ["contrast_in_brain", "t1_in_place"]


def contrast_in_brain(array: np.ndarray, mask: np.ndarray, gamma: float) -> np.ndarray:
    """The brain's intensities through ``x**gamma`` on [0, the brain's maximum] (which stays), 0 outside ``mask``."""
    return np.where(mask, change_contrast(array, gamma, float(array[mask].max())), 0.0).astype(np.float32)


def t1_in_place(t1_path: Union[str, os.PathLike], source: Volume, mask: np.ndarray) -> Volume:
    """The case's T1 at ``t1_path`` (:func:`.dataset_cases.companion_t1` finds it beside the T1ce) on ``source``'s
    grid, 0 outside ``mask``."""
    _, other, _ = align_pair(source, read_volume(t1_path), policy="resample")  # the T1 onto the T1ce's grid
    return source.with_array(np.where(mask, other.array, 0.0).astype(np.float32))
