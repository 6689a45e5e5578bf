"""Patch sampling and extraction: equal to naive slicing, centred in the mask, flips are flips."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from MedSynthLogic.errors import DataError
from MedSynthLogic.patches import (
    centre_crop,
    extract_patches,
    flip_patches,
    pad_volume,
    sample_centres,
    sample_corners,
)


def naive_extract(vol, corners, size):
    return np.stack([vol[:, z : z + size, y : y + size, x : x + size] for z, y, x in corners])


def test_extract_equals_naive_slicing_on_random_corners():
    rng = np.random.default_rng(1)
    vol = rng.normal(size=(2, 23, 19, 27)).astype(np.float32)
    size = 8
    hi = np.array(vol.shape[1:]) - size
    corners = rng.integers(0, hi + 1, size=(50, 3))
    corners[0] = 0
    corners[1] = hi
    got = extract_patches(vol, corners, size)
    assert got.shape == (50, 2, size, size, size)
    assert got.flags.c_contiguous
    np.testing.assert_array_equal(got, naive_extract(vol, corners, size))


@settings(max_examples=30, deadline=None)
@given(
    shape=st.tuples(st.integers(5, 14), st.integers(5, 14), st.integers(5, 14)),
    size=st.integers(1, 5),
    seed=st.integers(0, 2**31 - 1),
)
def test_extract_property(shape, size, seed):
    rng = np.random.default_rng(seed)
    vol = rng.integers(0, 1000, size=(1,) + shape).astype(np.float32)
    corners = rng.integers(0, np.array(shape) - size + 1, size=(7, 3))
    np.testing.assert_array_equal(extract_patches(vol, corners, size), naive_extract(vol, corners, size))


def test_extract_accepts_3d_and_rejects_out_of_range():
    vol = np.arange(6 * 6 * 6, dtype=np.float32).reshape(6, 6, 6)
    p = extract_patches(vol, [[1, 2, 3]], 3)
    np.testing.assert_array_equal(p[0, 0], vol[1:4, 2:5, 3:6])
    with pytest.raises(ValueError):
        extract_patches(vol, [[4, 0, 0]], 3)
    with pytest.raises(ValueError):
        extract_patches(vol, [[-1, 0, 0]], 3)
    assert extract_patches(vol, np.zeros((0, 3), int), 3).shape == (0, 1, 3, 3, 3)


def test_pad_volume_edge_and_channels():
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    p = pad_volume(a, 2)
    assert p.shape == (6, 7, 8)
    np.testing.assert_array_equal(p[2:-2, 2:-2, 2:-2], a)
    assert p[0, 0, 0] == a[0, 0, 0] and p[-1, -1, -1] == a[-1, -1, -1]
    c = pad_volume(a[None], 1)
    assert c.shape == (1, 4, 5, 6)
    assert pad_volume(a, 1, mode="constant")[0].sum() == 0


def test_centre_crop_matches_target_region():
    """The T³ centre of the S³ patch at corner c is the original-grid region [c, c+T)."""
    rng = np.random.default_rng(2)
    orig = rng.normal(size=(20, 21, 22)).astype(np.float32)
    halo, S = 3, 10
    T = S - 2 * halo
    padded = pad_volume(orig, halo)
    corners = rng.integers(0, np.array(padded.shape) - S + 1, size=(20, 3))
    crops = centre_crop(extract_patches(padded, corners, S), T)
    for (z, y, x), crop in zip(corners, crops):
        np.testing.assert_array_equal(crop[0], orig[z : z + T, y : y + T, x : x + T])


def test_sample_corners_centres_inside_mask_and_valid():
    rng = np.random.default_rng(3)
    mask = np.zeros((40, 44, 36), bool)
    mask[12:30, 10:25, 8:20] = True
    size = 12
    corners = sample_corners(mask, 500, size, rng)
    assert corners.shape == (500, 3)
    assert corners.min() >= 0
    assert np.all(corners <= np.array(mask.shape) - size)
    centres = corners + size // 2
    assert mask[tuple(centres.T)].all()
    # Enough mask voxels: no duplicates (drawn without replacement).
    assert len(np.unique(corners, axis=0)) == 500


def test_sample_corners_inside_fraction_and_determinism():
    mask = np.zeros((30, 30, 30), bool)
    mask[10:14, 10:14, 10:14] = True
    a = sample_corners(mask, 200, 8, np.random.default_rng(5), inside_fraction=0.5)
    b = sample_corners(mask, 200, 8, np.random.default_rng(5), inside_fraction=0.5)
    np.testing.assert_array_equal(a, b)
    inside = mask[tuple((a + 4).T)].sum()
    assert inside >= 100  # 100 forced inside, the uniform ones rarely hit the 64-voxel mask
    assert inside < 200
    assert np.all(a <= 22) and a.min() >= 0


def test_sample_corners_mask_edges_and_errors():
    mask = np.zeros((20, 20, 20), bool)
    mask[0, 0, 0] = True  # centre impossible for size 6 (needs centre >= 3)
    with pytest.raises(DataError):
        sample_corners(mask, 5, 6, np.random.default_rng(0))
    with pytest.raises(DataError):
        sample_corners(np.ones((4, 20, 20), bool), 5, 6, np.random.default_rng(0))
    mask[10, 10, 10] = True
    c = sample_corners(mask, 4, 6, np.random.default_rng(0))  # more than voxels → with replacement
    np.testing.assert_array_equal(c, np.full((4, 3), 7))


def test_sample_centres_margin():
    mask = np.ones((10, 10, 10), bool)
    c = sample_centres(mask, 300, np.random.default_rng(0), margin=2)
    assert c.min() >= 2 and c.max() <= 7


def test_flipped_patches_are_flips_of_the_region():
    rng = np.random.default_rng(4)
    vol = rng.normal(size=(1, 16, 17, 18)).astype(np.float32)
    corners = rng.integers(0, 8, size=(10, 3))
    p = extract_patches(vol, corners, 6)
    for axis in (0, 1, 2):
        f = flip_patches(p, axis)
        for i, (z, y, x) in enumerate(corners):
            region = vol[0, z : z + 6, y : y + 6, x : x + 6]
            np.testing.assert_array_equal(f[i, 0], np.flip(region, axis=axis))
    sel = np.array([True, False] * 5)
    g = flip_patches(p, 2, sel)
    np.testing.assert_array_equal(g[1], p[1])
    np.testing.assert_array_equal(g[0], np.flip(p[0], axis=-1))
    # A patch of the flipped volume at the mirrored corner is the flip of the original patch.
    fv = np.flip(vol, axis=3)
    mirrored = corners.copy()
    mirrored[:, 2] = vol.shape[3] - 6 - corners[:, 2]
    np.testing.assert_array_equal(extract_patches(fv, mirrored, 6), flip_patches(p, 2))
