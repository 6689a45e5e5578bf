"""normalisation: percentile and window modes, round trips, guards, and the output unit."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from MedSynthLogic.config import IntensityConfig, NormalisationConfig
from MedSynthLogic.errors import InputImageError, UsageError
from MedSynthLogic.normalisation import (
    IntensityTransform,
    brain_mask,
    denormalise_output,
    normalise_source,
    normalise_target,
)


def _brain(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    arr = np.zeros((10, 12, 14), np.float32)
    arr[2:8, 3:9, 3:11] = rng.uniform(100, 900, (6, 6, 8))
    return arr


def test_brain_mask_is_threshold() -> None:
    arr = _brain()
    mask = brain_mask(arr)
    assert mask.dtype == bool and mask.sum() == 6 * 6 * 8
    assert brain_mask(arr, threshold=500).sum() < mask.sum()


def test_percentile_mode_divides_by_percentile_inside_mask_and_clips() -> None:
    arr = _brain()
    mask = brain_mask(arr)
    cfg = NormalisationConfig()
    out, t = normalise_source(arr, mask, cfg)
    p = np.percentile(arr[mask], 99.5)
    assert t.mode == "percentile" and t.scale == pytest.approx(p)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[mask], np.clip(arr[mask] / p, 0, 2.0), rtol=1e-6)
    assert np.all(out[~mask] == 0)
    tgt, tt = normalise_target(arr, mask, cfg)
    assert tgt.max() == pytest.approx(1.0)  # target clip_max is 1
    np.testing.assert_allclose(tt.inverse(tgt)[mask & (arr <= p)], arr[mask & (arr <= p)], rtol=1e-5)


def test_outside_mask_is_zero_and_background_does_not_shift_the_scale() -> None:
    arr = _brain()
    arr_noise = arr + np.float32(5000.0) * (arr == 0)  # bright junk outside the brain
    mask = brain_mask(arr)
    a, ta = normalise_source(arr, mask, NormalisationConfig())
    b, tb = normalise_source(arr_noise, mask, NormalisationConfig())
    assert ta.scale == tb.scale
    np.testing.assert_array_equal(a, b)


def test_empty_brain_is_refused() -> None:
    arr = np.zeros((4, 5, 6), np.float32)
    with pytest.raises(InputImageError, match="empty or all zero"):
        normalise_source(arr, brain_mask(arr), NormalisationConfig())
    with pytest.raises(InputImageError, match="all zero"):
        normalise_source(arr, np.ones_like(arr, bool), NormalisationConfig())
    neg = -np.ones((4, 5, 6), np.float32)
    with pytest.raises(InputImageError):
        normalise_target(neg, None, NormalisationConfig())


def test_window_mode_ct() -> None:
    hu = np.array([-2000, -1000, 0, 500, 2000, 3000], np.float32).reshape(1, 2, 3)
    cfg = NormalisationConfig(target=IntensityConfig(mode="window", window_min=-1000, window_max=2000))
    out, t = normalise_target(hu, None, cfg)
    np.testing.assert_allclose(out.ravel(), [0, 0, 1 / 3, 0.5, 1, 1], atol=1e-6)
    np.testing.assert_allclose(t.inverse(out).ravel(), [-1000, -1000, 0, 500, 2000, 2000], atol=1e-3)
    np.testing.assert_allclose(denormalise_output(out, cfg).ravel(), [-1000, -1000, 0, 500, 2000, 2000], atol=1e-3)


def test_denormalise_output_percentile_uses_output_scale() -> None:
    cfg = NormalisationConfig(output_scale=1000.0)
    out = denormalise_output(np.array([0.0, 0.5, 1.0]), cfg)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0, 500, 1000])


def test_denormalise_output_never_goes_below_what_a_training_target_held() -> None:
    """A linear last layer undershoots a little at dark edges (983 voxels down to -128 in a BraTS synthesis); the
    written image keeps the training targets' floor: 0 for MR, the window's bottom for CT."""
    out = denormalise_output(np.array([-0.13, -0.0, 0.2], np.float32), NormalisationConfig(output_scale=1000.0))
    np.testing.assert_allclose(out, [0, 0, 200])
    ct = NormalisationConfig(target=IntensityConfig(mode="window", window_min=-1000, window_max=2000))
    np.testing.assert_allclose(denormalise_output(np.array([-0.1, 0.5, 1.05], np.float32), ct), [-1000, 500, 2000],
                               atol=1e-3)


def test_transform_dict_round_trip_is_json() -> None:
    arr = _brain()
    _, t = normalise_source(arr, brain_mask(arr), NormalisationConfig())
    data = json.loads(json.dumps(t.to_dict()))
    assert IntensityTransform.from_dict(data) == t
    with pytest.raises(UsageError, match="Unknown intensity transform"):
        IntensityTransform.from_dict({**data, "gamma": 2})
    with pytest.raises(UsageError):
        IntensityTransform("percentile", scale=0.0)
    with pytest.raises(UsageError):
        IntensityTransform("log")


@settings(max_examples=60, deadline=None)
@given(
    lo=st.floats(-5000, 1000),
    width=st.floats(1, 6000),
    values=st.lists(st.floats(0, 1), min_size=1, max_size=50),
)
def test_property_window_forward_inverse(lo: float, width: float, values: list) -> None:
    t = IntensityTransform.fit(IntensityConfig(mode="window", window_min=lo, window_max=lo + width), np.zeros(1))
    raw = np.float32(lo) + np.asarray(values, np.float32) * np.float32(width)
    back = t.inverse(t.forward(raw))
    np.testing.assert_allclose(back, raw, atol=1e-3 * max(1.0, width, abs(lo)))
    units = t.forward(raw * 10 + 1e5)
    assert units.min() >= 0 and units.max() <= 1


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), scale=st.floats(1e-3, 1e6))
def test_property_percentile_is_scale_invariant(seed: int, scale: float) -> None:
    arr = _brain(seed % 1000)
    mask = brain_mask(arr)
    a, _ = normalise_source(arr, mask, NormalisationConfig())
    b, tb = normalise_source((arr * np.float32(scale)).astype(np.float32), mask, NormalisationConfig())
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(tb.inverse(b)[mask & (b < 2)], (arr * np.float32(scale))[mask & (b < 2)], rtol=1e-4)
