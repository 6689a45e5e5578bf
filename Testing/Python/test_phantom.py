"""phantom: determinism, value ranges, labels, contrasts from the signal equations, and a non-trivial T1ce→T2 map."""

from __future__ import annotations

import time

import numpy as np
import pytest

from MedSynthLogic.phantom import (
    CSF,
    GM,
    NECROSIS,
    OEDEMA,
    WM,
    ENHANCING,
    make_phantom,
    spin_echo,
    spoiled_gradient_echo,
    tissue_summary,
)
from MedSynthLogic.volume_io import read_volume, same_grid, write_volume

SMALL = (48, 56, 48)


def test_same_seed_identical_different_seed_differs() -> None:
    a, b, c = make_phantom(SMALL, seed=3), make_phantom(SMALL, seed=3), make_phantom(SMALL, seed=4)
    np.testing.assert_array_equal(a.t1ce.array, b.t1ce.array)
    np.testing.assert_array_equal(a.t2.array, b.t2.array)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.t1ce.array, c.t1ce.array)
    assert not np.array_equal(a.labels, c.labels)


def test_types_ranges_and_geometry(phantom) -> None:
    p = phantom
    assert p.t1ce.shape == p.t2.shape == p.mask.shape == p.labels.shape == SMALL
    assert p.t1ce.array.dtype == p.t2.array.dtype == np.float32
    assert p.mask.dtype == bool and p.labels.dtype == np.uint8
    for vol in (p.t1ce, p.t2):
        assert np.isfinite(vol.array).all() and vol.array.min() >= 0
        assert np.all(vol.array[~p.mask] == 0) and np.all(vol.array[p.mask] > 0)
    assert same_grid(p.t1ce, p.t2) == []
    assert 0.1 < p.mask.mean() < 0.5
    assert np.all(p.labels[~p.mask] == 0)


def test_brats_labels_present_and_nested(phantom) -> None:
    labels = phantom.labels
    assert set(np.unique(labels).tolist()) == {0, 1, 2, 4}
    assert (labels == 2).sum() > (labels == 4).sum() > 0 and (labels == 1).sum() > 0
    # the necrotic core is surrounded by enhancing rim: its centre of mass sits inside the tumour core
    core = np.argwhere(labels == 1).mean(axis=0).round().astype(int)
    assert labels[tuple(core)] in (1, 4)


def test_spacing_and_shape_follow_arguments() -> None:
    p = make_phantom((20, 24, 16), spacing=(1.5, 1.2, 2.0), seed=1)
    assert p.t1ce.shape == (20, 24, 16) and p.t1ce.spacing == (1.5, 1.2, 2.0)
    np.testing.assert_allclose(p.t1ce.origin, [-(16 - 1) / 2 * 1.5, -(24 - 1) / 2 * 1.2, -(20 - 1) / 2 * 2.0])
    with pytest.raises(ValueError):
        make_phantom((4, 24, 16))


def test_signal_equations() -> None:
    # spin echo with TR >> T1 and TE = T2 gives PD/e; GRE at the Ernst angle is the known maximum
    assert spin_echo(np.array(1.0), np.array(1.0), np.array(100.0), tr=1e6, te=100.0) == pytest.approx(np.exp(-1))
    t1, tr = 900.0, 20.0
    ernst = np.rad2deg(np.arccos(np.exp(-tr / t1)))
    s = [spoiled_gradient_echo(1.0, t1, 1e9, tr, 0.0, a) for a in (ernst - 3, ernst, ernst + 3)]
    assert s[1] > s[0] and s[1] > s[2]
    # gadolinium shortens T1, which brightens a T1-weighted GRE
    assert spoiled_gradient_echo(1.0, 500.0, 1e9, 20, 0, 25) > spoiled_gradient_echo(1.0, 1500.0, 1e9, 20, 0, 25)


def test_tissue_contrasts_are_those_of_real_scans() -> None:
    s = tissue_summary(make_phantom(seed=0))
    t1, t2 = ({k: v[m] for k, v in s.items()} for m in ("t1ce", "t2"))
    assert t1["white matter"] > t1["grey matter"] > t1["CSF"]  # T1-weighted order
    assert t2["CSF"] > t2["grey matter"] > t2["white matter"]  # T2-weighted order
    assert t1["enhancing tumour"] > 1.5 * t1["white matter"]  # contrast enhancement
    # oedema: almost white matter in T1ce, far brighter in T2
    assert abs(t1["oedema"] / t1["white matter"] - 1) < 0.15
    assert t2["oedema"] > 1.8 * t2["white matter"]


def test_t1ce_to_t2_is_not_a_function_of_intensity(phantom) -> None:
    """The best 1-D lookup (mean T2 per T1ce bin) leaves most variance; knowing the tissue explains most."""
    m = phantom.mask
    a, b, tissue = phantom.t1ce.array[m], phantom.t2.array[m], phantom.tissue[m]
    edges = np.quantile(a, np.linspace(0, 1, 65))
    idx = np.clip(np.searchsorted(edges, a) - 1, 0, 63)
    lookup = np.bincount(idx, b, 64) / np.maximum(np.bincount(idx, minlength=64), 1)
    r2_intensity = 1 - np.var(b - lookup[idx]) / np.var(b)
    per_tissue = np.bincount(tissue, b, 8) / np.maximum(np.bincount(tissue, minlength=8), 1)
    r2_tissue = 1 - np.var(b - per_tissue[tissue]) / np.var(b)
    assert r2_intensity < 0.5 < 0.75 < r2_tissue
    oedema, wm = tissue == OEDEMA, tissue == WM
    assert np.median(b[oedema]) > 1.8 * np.median(b[wm])
    assert {CSF, GM, WM, OEDEMA, ENHANCING, NECROSIS} <= set(np.unique(tissue).tolist())


def test_fast_enough() -> None:
    make_phantom(seed=0)
    start = time.perf_counter()
    make_phantom(seed=1)
    assert time.perf_counter() - start < 1.5  # target ≈0.25 s on 2 cores; slack for busy CI machines


def test_round_trips_through_files(tmp_path, phantom) -> None:
    write_volume(phantom.t2, tmp_path / "t2.nii.gz")
    np.testing.assert_array_equal(read_volume(tmp_path / "t2.nii.gz").array, phantom.t2.array)
