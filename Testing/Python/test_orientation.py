"""Voxel axis order: every volume meets a network in its training data's order, and comes back in its own."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from MedSynthLogic.orientation import axis_order, orientation_code
from MedSynthLogic.volume import Volume

from _models import random_chain

sitk = pytest.importorskip("SimpleITK")

ALL_ORDERS = [(perm, flips) for perm in itertools.permutations(range(3))
              for flips in itertools.product([False, True], repeat=3)]


def _stored(image, perm, flips):
    """The same world image stored in another axis order and sense (SimpleITK keeps the geometry exact)."""
    return sitk.Flip(sitk.PermuteAxes(image, list(perm)), list(flips), flipAboutOrigin=False)


def _volume(image) -> Volume:
    return Volume(sitk.GetArrayFromImage(image), image.GetSpacing(), image.GetOrigin(), image.GetDirection())


@pytest.fixture(scope="module")
def lopsided_image():
    """A small image with different spacing per axis and a non-zero origin, so a wrong axis or sign shows."""
    array = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 2.0, 3.0))
    image.SetOrigin((10.0, -20.0, 30.0))
    return image


@pytest.mark.parametrize("perm,flips", ALL_ORDERS)
def test_each_of_the_48_orders_becomes_the_one_simpleitk_calls_lps(lopsided_image, perm, flips):
    stored = _stored(lopsided_image, perm, flips)
    volume = _volume(stored)
    order = axis_order(volume.direction)
    canonical = order.volume(volume)
    reference = sitk.DICOMOrient(stored, "LPS")
    np.testing.assert_array_equal(canonical.array, sitk.GetArrayFromImage(reference))
    np.testing.assert_allclose(canonical.spacing, reference.GetSpacing())
    np.testing.assert_allclose(canonical.origin, reference.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(canonical.direction, reference.GetDirection(), atol=1e-12)
    np.testing.assert_array_equal(order.inverse(canonical.array), volume.array)
    assert order.is_identity == (orientation_code(volume.direction) == "LPS")
    assert orientation_code(volume.direction) == sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(
        stored.GetDirection())


def test_an_oblique_scan_keeps_its_obliquity_and_gets_three_distinct_axes():
    c, s = np.cos(np.radians(45.0)), np.sin(np.radians(45.0))
    at_45 = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)  # a tie between x and y for both index axes
    order = axis_order(at_45)
    assert sorted(order.axes) == [0, 1, 2]
    tilted = (np.cos(0.3), 0.0, np.sin(0.3), 0.0, 1.0, 0.0, -np.sin(0.3), 0.0, np.cos(0.3))
    assert axis_order(tilted).is_identity
    volume = Volume(np.zeros((4, 5, 6), np.float32), direction=tuple(-v for v in tilted))
    canonical = axis_order(volume.direction).volume(volume)
    np.testing.assert_allclose(np.abs(canonical.direction), np.abs(tilted), atol=1e-12)  # still 0.3 rad off axis


@pytest.mark.parametrize("perm,flips", [((2, 0, 1), (False, False, False)), ((0, 1, 2), (False, True, False)),
                                        ((1, 2, 0), (True, False, True))])
def test_the_same_brain_stored_another_way_gives_the_same_synthesis_and_uncertainty(phantom, tiny_model_config,
                                                                                    tmp_path, perm, flips):
    """Before, a sagittal-first file gave another synthesis (SSIM 0.64 → 0.58 on a BraTS case, ORIENTATION.md)."""
    from MedSynthLogic.inference import synthesize_volume
    from MedSynthLogic.model_file import load_model, save_model
    from MedSynthLogic.uncertainty import synthesize_with_uncertainty
    from MedSynthLogic.volume import to_sitk_image

    save_model(tmp_path / "m.safetensors", random_chain(tiny_model_config), tiny_model_config)
    model = load_model(tmp_path / "m.safetensors")
    image = to_sitk_image(sitk, phantom.t1ce)
    stored = _stored(image, perm, flips)
    mask = _stored(to_sitk_image(sitk, phantom.t1ce.with_array(phantom.mask.astype(np.float32))), perm, flips)

    def back(array: np.ndarray) -> np.ndarray:
        """An array on the stored grid, put back on the phantom's own grid (exact: nearest neighbour on voxels)."""
        moved = sitk.GetImageFromArray(np.ascontiguousarray(array))
        moved.CopyInformation(stored)
        return sitk.GetArrayFromImage(sitk.Resample(moved, image, sitk.Transform(), sitk.sitkNearestNeighbor, -1.0))

    plain = synthesize_volume(model, phantom.t1ce, mask=phantom.mask, device="cpu")
    other = synthesize_volume(model, _volume(stored), mask=_volume(mask), device="cpu", flip_tta=True)
    np.testing.assert_allclose(back(other.array),
                               synthesize_volume(model, phantom.t1ce, mask=phantom.mask, device="cpu",
                                                 flip_tta=True).array, atol=1e-5)
    naive = synthesize_volume(model, Volume(sitk.GetArrayFromImage(stored)), mask=sitk.GetArrayFromImage(mask),
                              device="cpu")  # the stored array taken as it comes: what synthesis did before
    assert np.abs(back(naive.array) - plain.array).max() > 1e-2
    with_map = synthesize_with_uncertainty(model, _volume(stored), mask=_volume(mask), device="cpu")
    reference = synthesize_with_uncertainty(model, phantom.t1ce, mask=phantom.mask, device="cpu")
    np.testing.assert_allclose(back(with_map.synthesis.array), reference.synthesis.array, atol=1e-5)
    np.testing.assert_allclose(back(with_map.uncertainty.array), reference.uncertainty.array, atol=1e-5)
    np.testing.assert_allclose(back(with_map.flip), reference.flip, atol=1e-5)
    assert with_map.synthesis.direction == tuple(stored.GetDirection())


def test_prepare_stores_a_case_in_the_order_synthesis_runs_in(phantom, tmp_path):
    """Training saw the same order as synthesis: a case stored sagittal-first is prepared as the LPS one."""
    import h5py

    from MedSynthLogic.config import ModelConfig
    from MedSynthLogic.dataset_cases import find_cases
    from MedSynthLogic.dataset_prep import prepare_dataset
    from MedSynthLogic.volume import to_sitk_image

    roots = {}
    for name, perm in (("lps", (0, 1, 2)), ("sagittal", (2, 0, 1))):
        folder = tmp_path / name / "cases" / "case1"
        folder.mkdir(parents=True)
        for role, volume in (("t1ce", phantom.t1ce), ("t2", phantom.t2)):
            sitk.WriteImage(_stored(to_sitk_image(sitk, volume), perm, (False, perm != (0, 1, 2), False)),
                            str(folder / f"case1_{role}.nii.gz"))
        prepare_dataset(find_cases(tmp_path / name / "cases"), tmp_path / name / "data", ModelConfig(),
                        patches_per_case=4, val_fraction=0.0)
        roots[name] = tmp_path / name / "data"
    with h5py.File(roots["lps"] / "train.h5") as a, h5py.File(roots["sagittal"] / "train.h5") as b:
        np.testing.assert_array_equal(a["source"][...], b["source"][...])
        np.testing.assert_array_equal(a["target"][...], b["target"][...])
    notes = json.loads((roots["sagittal"] / "manifest.json").read_text())["cases"]["case1"]["notes"]
    assert any("Reordered the voxel axes from" in note and "to LPS" in note for note in notes)


def test_the_spacing_check_reads_the_voxel_size_along_the_models_axes(phantom):
    """A model trained on 1 × 1 × 3 mm (thick axial slices) expects 3 mm along z however the file orders its axes."""
    import dataclasses

    from MedSynthLogic.config import InputExpectations, ModelConfig
    from MedSynthLogic.input_checks import check_source
    from MedSynthLogic.volume import to_sitk_image

    cfg = ModelConfig(input=InputExpectations(spacing_mm=(1.0, 1.0, 3.0), max_anisotropy=4.0))
    axial = dataclasses.replace(phantom.t1ce, spacing=(1.0, 1.0, 3.0))
    stored = _stored(to_sitk_image(sitk, axial), (2, 0, 1), (False, False, False))
    assert stored.GetSpacing() == (3.0, 1.0, 1.0)
    assert "spacing" not in [f.code for f in check_source(_volume(stored), cfg)]
    assert "spacing" in [f.code for f in check_source(phantom.t1ce, cfg)]
    order = axis_order(_volume(stored).direction)
    assert order.spacing((3.0, 1.0, 1.0)) == (1.0, 1.0, 3.0) and order.inverse_spacing((1.0, 1.0, 3.0)) == (3.0, 1.0, 1.0)
