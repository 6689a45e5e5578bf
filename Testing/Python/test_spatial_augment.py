"""Spatial augmentation of the U-Net's training crops: the identity is the plain cut, a quarter turn is a quarter
turn, every channel and the mask move together, and a batch is still a pure function of its iteration."""

from __future__ import annotations

import numpy as np
import pytest

from MedSynthLogic.config import TrainConfig
from MedSynthLogic.crops import CropBatches, CropVolume
from MedSynthLogic.errors import UsageError
from MedSynthLogic.patches import cut_window
from MedSynthLogic.spatial_augment import SpatialAugment, resample_crop, spatial_augment_of


def _volume(shape=(30, 34, 26), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, 1.0, shape).astype(np.float32)


def _volumes(context: bool = False) -> dict:
    out = {}
    for i, cid in enumerate(("a", "b")):
        mask = np.zeros((40, 44, 36), bool)
        mask[6:34, 8:38, 5:31] = True
        source = np.where(mask, _volume(mask.shape, i) + 0.1, 0).astype(np.float32)
        target = np.where(mask, _volume(mask.shape, 10 + i), 0).astype(np.float32)
        out[cid] = CropVolume(source, target, mask, source * 0.7 if context else None)
    return out


@pytest.mark.parametrize("centre", [(15, 17, 13), (2, 30, 1)])
def test_the_identity_map_gives_the_plain_cut_with_zeros_beyond_the_volume(centre):
    vol = _volume()
    size = 12
    window = [(c - size // 2, c - size // 2 + size) for c in centre]
    got = resample_crop([vol, 2 * vol], centre, size, np.eye(3))
    assert got.shape == (2, size, size, size) and got.dtype == np.float32
    np.testing.assert_allclose(got[0], cut_window(vol, window, "constant"), atol=1e-5)
    np.testing.assert_allclose(got[1], 2 * cut_window(vol, window, "constant"), atol=1e-5)


def test_a_quarter_turn_in_the_y_x_plane_is_a_rotation_of_the_plain_cut():
    vol = _volume()
    centre, size = (15, 17, 13), 9  # odd size: the crop's centre voxel is the centre, so the turn maps voxels onto voxels
    plain = resample_crop([vol], centre, size, np.eye(3))[0]
    quarter = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=float)  # crop (y, x) offset → volume (−x, y)
    turned = resample_crop([vol], centre, size, quarter)[0]
    np.testing.assert_allclose(turned, np.rot90(plain, k=-1, axes=(1, 2)), atol=1e-5)
    assert not np.allclose(turned, plain)


def test_a_zoom_magnifies_around_the_centre():
    z = np.arange(30, dtype=np.float32)[:, None, None] * np.ones((1, 34, 26), np.float32)  # value = z index
    got = resample_crop([z], (15, 17, 13), 8, np.eye(3) / 2.0)[0]  # zoom 2: half a voxel per crop voxel
    np.testing.assert_allclose(got[:, 4, 4], 15 + (np.arange(8) - 4) / 2.0, atol=1e-5)


def test_draws_stay_within_the_configured_spread_and_zero_spread_is_off():
    aug = SpatialAugment(rotate_deg=10, zoom_sd=0.1)
    rng = np.random.default_rng(0)
    for _ in range(50):
        m = aug.draw(rng)
        zoom = 1.0 / np.cbrt(np.linalg.det(m))
        rotation = m * zoom
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-9)
        angle = np.degrees(np.arccos(np.clip((np.trace(rotation) - 1) / 2, -1, 1)))
        assert angle <= 10 * np.sqrt(3) + 1e-6 and 0.5 < zoom < 2.0
    assert not SpatialAugment().enabled and SpatialAugment(rotate_deg=5).enabled
    np.testing.assert_allclose(SpatialAugment(zoom_sd=0.0, rotate_deg=0.0).draw(rng), np.eye(3))


def test_train_config_carries_the_spreads_and_refuses_bad_ones():
    assert spatial_augment_of(TrainConfig(aug_rotate_deg=15, aug_zoom_sd=0.1)) == SpatialAugment(15, 0.1)
    assert not spatial_augment_of(TrainConfig()).enabled
    for bad in ({"aug_rotate_deg": -1}, {"aug_rotate_deg": 200}, {"aug_zoom_sd": -0.1}):
        with pytest.raises(UsageError, match="aug_rotate_deg"):
            TrainConfig(**bad)


def test_augmented_crops_keep_centres_flips_and_mask_and_are_pure_functions_of_the_iteration():
    volumes = _volumes(context=True)
    plain = CropBatches(volumes, 16, 3, seed=5, stage=1)
    turned = CropBatches(volumes, 16, 3, seed=5, stage=1, spatial=SpatialAugment(rotate_deg=20, zoom_sd=0.1))
    assert CropBatches(volumes, 16, 3, seed=5, stage=1, spatial=SpatialAugment()).spatial is None
    for it in (0, 4):
        src0, tgt0, m0 = (t.numpy() for t in plain.batch(it))
        src1, tgt1, m1 = (t.numpy() for t in turned.batch(it))
        assert src1.shape == src0.shape and tgt1.shape == tgt0.shape and m1.shape == m0.shape
        assert set(np.unique(m1)) <= {0.0, 1.0}
        assert not np.allclose(src1, src0), "the crops are rotated"
        np.testing.assert_allclose(src1[:, 1], 0.7 * src1[:, 0], atol=1e-5)  # the context channel moved with the source
        assert np.all(src1[:, 0][m1[:, 0] == 1] > 0.05), "inside the moved mask lies moved brain"
        again = [t.numpy() for t in turned.batch(it)]
        assert all(np.array_equal(a, b) for a, b in zip(again, (src1, tgt1, m1))), "pure function of the iteration (resume)"
