"""The shifted sources (fit-error-map's variants, the input-shift evaluation): the case's T1 in the T1ce's place."""

from __future__ import annotations

import numpy as np

from MedSynthLogic.source_shifts import t1_in_place
from MedSynthLogic.volume_io import Volume, write_volume


def test_a_t1_on_another_grid_is_resampled_onto_the_t1ces(tmp_path):
    """The T1ce was resampled onto the T1's grid instead, so a T1 stored 3 mm to the side came back 3 voxels off
    (and one of another size failed with a numpy broadcast error): a review, session 47."""
    source = Volume(np.zeros((12, 14, 16), np.float32))
    t1 = np.zeros((12, 14, 16), np.float32)
    t1[:, :, 2] = 100.0  # x = 5 mm in the world: the T1's origin is 3 mm further along x
    write_volume(Volume(t1, origin=(3.0, 0.0, 0.0)), tmp_path / "t1.nii.gz")
    placed = t1_in_place(tmp_path / "t1.nii.gz", source, np.ones(source.shape, bool))
    assert placed.shape == source.shape and placed.origin == source.origin
    assert np.allclose(placed.array[:, :, 5], 100.0) and np.allclose(np.delete(placed.array, 5, axis=2), 0.0)
    smaller = Volume(np.full((10, 14, 16), 50.0, np.float32))
    write_volume(smaller, tmp_path / "t1_small.nii.gz")
    assert t1_in_place(tmp_path / "t1_small.nii.gz", source, np.ones(source.shape, bool)).shape == source.shape
