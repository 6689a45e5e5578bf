"""Notes for a brain cut by the image's edge and for a given mask that does not fit the source (never refusals)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from MedSynthLogic.brain_coverage import EDGE_AREA_MAX_MM2, coverage_notes
from MedSynthLogic.config import ModelConfig


def test_a_whole_brain_and_its_own_mask_get_no_note(phantom):
    assert coverage_notes(phantom.t1ce, ModelConfig()) == []
    assert coverage_notes(phantom.t1ce, ModelConfig(), mask=phantom.t1ce.array > 0) == []


def test_a_brain_cut_at_mid_brain_is_named_by_its_side_but_not_at_the_inferior_edge(phantom):
    """Canonical (z, y, x) runs along +S, +P, +L: a crop keeping the low x half cuts the brain at the left edge."""
    array = phantom.t1ce.array
    half = dataclasses.replace(phantom.t1ce, array=np.ascontiguousarray(array[:, :, : array.shape[2] // 2]))
    (note,) = coverage_notes(half, ModelConfig())
    assert note.startswith("the brain reaches the image's left (") and "field of view cuts it" in note
    below = dataclasses.replace(phantom.t1ce, array=np.ascontiguousarray(array[array.shape[0] // 3:]))
    assert np.count_nonzero(below.array[0]) > EDGE_AREA_MAX_MM2  # 1 mm voxels
    assert coverage_notes(below, ModelConfig()) == [], "BraTS brains leave the image at the inferior edge: no note"


def test_another_patients_mask_is_noted_a_dilated_one_or_a_heads_is_not(phantom):
    from scipy.ndimage import binary_dilation

    brain = phantom.t1ce.array > 0
    (note,) = [n for n in coverage_notes(phantom.t1ce, ModelConfig(), mask=np.roll(brain, 4, axis=2))
               if "given brain mask" in n]
    assert note.startswith("the given brain mask does not fit this image:") and "lies where the source is empty" in note
    assert coverage_notes(phantom.t1ce, ModelConfig(), mask=binary_dilation(brain, iterations=2)) == []
    head = phantom.t1ce.with_array(np.where(brain, phantom.t1ce.array, 50.0).astype(np.float32))  # no empty background
    assert [n for n in coverage_notes(head, ModelConfig(), mask=brain) if "given brain mask" in n] == []


def test_a_nifti_whose_readers_disagree_on_its_placement_is_noted(phantom, tmp_path):
    """qform and sform that disagree (ITK reads one, nibabel the other), or neither set: the synthetic image would
    not lie on its source in every tool. Files written by MedSynth, with both agreeing, get no note."""
    import nibabel as nib

    from MedSynthLogic.nifti_orientation import orientation_notes
    from MedSynthLogic.volume_io import write_volume

    good = write_volume(phantom.t1ce, tmp_path / "good.nii.gz")
    assert orientation_notes(good) == []
    image = nib.load(str(good))
    turned = image.affine.copy()
    turned[:3, 3] += 30.0

    def saved(name, qform, qcode, sform, scode):
        copy = nib.Nifti1Image(np.asarray(image.dataobj), image.affine)
        copy.set_qform(qform, code=qcode)
        copy.set_sform(sform, code=scode)
        nib.save(copy, str(tmp_path / name))
        return tmp_path / name

    (note,) = orientation_notes(saved("disagree.nii.gz", image.affine, 1, turned, 2))
    assert "qform and sform disagree (by up to 30.0 mm" in note
    (note,) = orientation_notes(saved("neither.nii.gz", None, 0, None, 0))
    assert "states no orientation" in note
    assert orientation_notes(tmp_path / "not_nifti.nrrd") == []


@pytest.mark.parametrize("perm, flips", [((2, 0, 1), (False, False, False)), ((1, 2, 0), (True, False, True))])
def test_the_cut_side_is_named_in_patient_terms_whatever_the_files_axis_order(phantom, perm, flips):
    """The same left-cut brain stored sagittal-first or coronal-first, some axes reversed: still the left edge."""
    import SimpleITK as sitk

    from MedSynthLogic.volume import Volume, to_sitk_image

    array = phantom.t1ce.array
    half = dataclasses.replace(phantom.t1ce, array=np.ascontiguousarray(array[:, :, array.shape[2] // 2:]))
    image = sitk.Flip(sitk.PermuteAxes(to_sitk_image(sitk, half), list(perm)), list(flips), flipAboutOrigin=False)
    stored = Volume(sitk.GetArrayFromImage(image).astype(np.float32), image.GetSpacing(), image.GetOrigin(),
                    image.GetDirection())
    assert stored.shape != half.shape
    (note,) = coverage_notes(stored, ModelConfig())
    assert note.startswith("the brain reaches the image's right (")  # x (index 2) runs towards the patient's left
    assert note.split("(")[0] == coverage_notes(half, ModelConfig())[0].split("(")[0]
