"""Intensity augmentation of the training crops and patches: what it changes, what it must leave alone."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from MedSynthLogic.config import IntensityConfig, ModelConfig, NormalisationConfig, TrainConfig
from MedSynthLogic.crops import AUGMENT_STREAM, CropBatches, CropVolume, nearest_gamma
from MedSynthLogic.errors import DataError, UsageError
from MedSynthLogic.intensity_augment import IntensityAugment, add_noise, augment_of, change_contrast, smooth_field, thick_slices


def crop_test_volumes(context: bool = False) -> dict:
    """Two random cases with a box-shaped brain (and a context of 0.7× the source): the crop tests' volumes."""
    rng = np.random.default_rng(0)
    out = {}
    for cid in ("a", "b"):
        mask = np.zeros((40, 44, 36), bool)
        mask[6:34, 8:38, 5:31] = True
        source = np.where(mask, rng.uniform(0.1, 2.0, mask.shape), 0).astype(np.float32)
        target = np.where(mask, rng.uniform(0.0, 1.0, mask.shape), 0).astype(np.float32)
        out[cid] = CropVolume(source, target, mask, source * 0.7 if context else None)
    return out


def _numpy(batch: tuple) -> list:
    return [t.numpy() for t in batch]


def test_augmented_crops_change_only_the_source_channel_and_keep_the_background_zero():
    volumes = crop_test_volumes(context=True)
    plain = CropBatches(volumes, 16, 3, seed=5, stage=1)
    changed = CropBatches(volumes, 16, 3, seed=5, stage=1, augment=IntensityAugment(0.3, 0.2, 0.2))
    for it in (0, 7):
        (src0, tgt0, m0), (src1, tgt1, m1) = _numpy(plain.batch(it)), _numpy(changed.batch(it))
        assert np.array_equal(tgt0, tgt1) and np.array_equal(m0, m1), "augmentation must not move the crops"
        assert np.array_equal(src0[:, 1], src1[:, 1]), "the auto-context channel is not a T1ce: left alone"
        assert not np.allclose(src0[:, 0], src1[:, 0])
        assert np.all(src1[:, 0][src0[:, 0] == 0] == 0) and np.isfinite(src1).all()
        assert np.array_equal(_numpy(changed.batch(it))[0], src1), "a batch is a pure function of its iteration (resume)"
    assert not np.allclose(_numpy(changed.batch(0))[0], _numpy(changed.batch(1))[0])


def test_disabled_augmentation_is_no_augmentation():
    volumes = crop_test_volumes()
    plain = CropBatches(volumes, 16, 2, seed=1, stage=0)
    off = CropBatches(volumes, 16, 2, seed=1, stage=0, augment=IntensityAugment())
    assert off.augment is None
    assert all(np.array_equal(a, b) for a, b in zip(_numpy(plain.batch(3)), _numpy(off.batch(3))))


def test_gamma_pivots_on_the_normalised_median_and_keeps_the_order():
    x = np.linspace(0.0, 3.0, 301, dtype=np.float32)
    aug = IntensityAugment(gamma_sd=0.5, pivot=0.5)
    y = aug(x, np.random.default_rng(3))
    assert y[0] == 0 and np.isclose(y[50], 0.5, atol=1e-6), "0 and the pivot stay where they are"
    assert np.all(np.diff(y) > 0), "a contrast change, not a reordering of intensities"
    assert not np.allclose(y, x)


def test_bias_field_is_smooth_and_centred():
    field = smooth_field((32, 32, 32), np.random.default_rng(4), 0.1)
    assert field.shape == (32, 32, 32) and field.min() > 0
    assert abs(float(np.log(field).mean())) < 0.1, "no constant term: the overall level is the scale's job"
    step = np.abs(np.diff(np.log(field), axis=0)).max()
    assert step < 0.05, "a drift over the crop, not voxel noise"


def test_run_config_sets_the_augmentation_and_refuses_negative_spreads():
    cfg = ModelConfig(normalisation=NormalisationConfig(source=IntensityConfig(mode="median", median_value=0.4, clip_max=3.0)))
    aug = augment_of(TrainConfig(aug_gamma_sd=0.1, aug_field_sd=0.05), cfg)
    assert aug.enabled and aug.pivot == 0.4 and aug.scale_sd == 0
    assert augment_of(TrainConfig(aug_scale_sd=0.1), ModelConfig()).pivot == 0.5, "percentile mode: 0.5"
    assert not augment_of(TrainConfig(), cfg).enabled, "off unless a run asks for it"
    with pytest.raises(UsageError):
        TrainConfig(aug_scale_sd=-0.1)


def test_changed_is_the_call_with_the_gamma_it_drew():
    aug = IntensityAugment(0.3, 0.2, 0.2, pivot=0.7)
    crop = crop_test_volumes()["a"].source[:16, :16, :16]
    out, gamma = aug.changed(crop, np.random.default_rng(3))
    assert np.array_equal(out, aug(crop, np.random.default_rng(3)))
    assert gamma == pytest.approx(float(np.exp(np.random.default_rng(3).normal(0.0, 0.3))))
    only_gamma = IntensityAugment(0.3, pivot=0.7)
    assert np.array_equal(only_gamma(crop, np.random.default_rng(3)), change_contrast(crop, gamma, 0.7))


def _with_variants(gammas: tuple) -> dict:
    """Volumes whose plain context is 1 in the brain and whose context for gammas[k] is k + 2 there."""
    return {cid: dataclasses.replace(v, context=v.mask * np.float32(1.0),
                                     variants=tuple(v.mask * np.float32(k + 2) for k in range(len(gammas))))
            for cid, v in crop_test_volumes().items()}


def test_a_crop_gets_the_context_of_the_contrast_nearest_its_drawn_gamma():
    gammas = (0.7, 1.5)
    batches = CropBatches(_with_variants(gammas), 16, 4, seed=5, stage=0, augment=IntensityAugment(0.5),
                          variant_gammas=gammas)
    seen = set()
    for it in range(6):
        src, _, _ = _numpy(batches.batch(it))
        assert src.shape[1] == 2, "the variants are alternatives of one context channel, not extra channels"
        draws = np.random.default_rng([5, 0, it, 0, AUGMENT_STREAM])
        for crop in src:
            gamma = float(np.exp(draws.normal(0.0, 0.5)))
            want = 1 + nearest_gamma(gamma, (1.0,) + gammas)
            assert crop[1].max() == want, (gamma, crop[1].max())
            seen.add(want)
    assert seen == {1, 2, 3}, "every context is used over 24 crops with sd 0.5"
    assert nearest_gamma(1.24, (1.0, 0.7, 1.5)) == 2 and nearest_gamma(0.84, (1.0, 0.7, 1.5)) == 0  # log scale


def test_contexts_for_other_contrasts_need_the_augmentation_and_a_context_per_gamma():
    with pytest.raises(DataError, match="aug_gamma_sd"):
        CropBatches(_with_variants((0.7,)), 16, 2, seed=0, stage=0, variant_gammas=(0.7,))
    with pytest.raises(DataError, match="one context per gamma"):
        CropBatches(_with_variants((0.7,)), 16, 2, seed=0, stage=0, augment=IntensityAugment(0.2), variant_gammas=(0.7, 1.5))
    for bad in ({"aug_context_gammas": (1.0,), "aug_gamma_sd": 0.2}, {"aug_context_gammas": (0.8,)},
                {"aug_context_gammas": (-0.5,), "aug_gamma_sd": 0.2}):
        with pytest.raises(UsageError, match="aug_context_gammas"):
            TrainConfig(**bad)
    assert TrainConfig(aug_context_gammas=(0.8, 1.25), aug_gamma_sd=0.2).aug_context_gammas == (0.8, 1.25)


def test_thick_slices_average_along_one_axis_inside_the_brain_only():
    crop = crop_test_volumes()["a"].source[:16, :16, :16]
    slab = thick_slices(crop, 3, axis=1)
    inside = crop[:, 1:-1, :] > 0
    mean3 = (crop[:, :-2, :] + crop[:, 1:-1, :] + crop[:, 2:, :]) / 3
    assert np.allclose(slab[:, 1:-1, :][inside], mean3[inside], atol=1e-6)
    assert np.all(slab[crop == 0] == 0), "the background stays 0"
    layered = np.broadcast_to(np.arange(1, 17, dtype=np.float32)[:, None, None], (16, 16, 16))
    assert np.array_equal(thick_slices(layered, 4, axis=2), layered), "constant along the axis: unchanged"
    assert np.array_equal(thick_slices(crop, 1, axis=0), crop)


def test_noise_is_added_in_the_brain_and_the_background_stays_zero():
    crop = crop_test_volumes()["a"].source[:16, :16, :16]
    noisy = add_noise(crop, 0.1, np.random.default_rng(2))
    brain = crop > 0
    assert np.all(noisy[~brain] == 0) and noisy.min() >= 0
    assert 0.07 < float(np.std((noisy - crop)[brain & (crop > 0.5)])) < 0.13


def test_slab_and_noise_come_after_the_other_draws():
    crop = crop_test_volumes()["a"].source[:16, :16, :16]
    base = IntensityAugment(0.3, 0.2, 0.2, pivot=0.7)
    degraded = IntensityAugment(0.3, 0.2, 0.2, pivot=0.7, noise_sd=0.1, slab_max=4)
    out0, gamma0 = base.changed(crop, np.random.default_rng(8))
    out1, gamma1 = degraded.changed(crop, np.random.default_rng(8))
    assert gamma0 == gamma1 and not np.allclose(out0, out1), "the contrast draws are those of a run without them"
    assert np.all(out1[crop == 0] == 0) and np.isfinite(out1).all()
    assert IntensityAugment(slab_max=2).enabled and not IntensityAugment(slab_max=1).enabled
    assert augment_of(TrainConfig(aug_noise_sd=0.05, aug_slab_max=3), ModelConfig()).slab_max == 3
    for bad in ({"aug_noise_sd": -0.1}, {"aug_slab_max": -1}, {"aug_slab_max": 12}, {"aug_slab_max": 2.5}):
        with pytest.raises(UsageError, match="aug_"):
            TrainConfig(**bad)
