"""The input checks (MedSynthLogic.input_checks): the sequence rule, skull-stripping, spacing, and the expectations
read from the model header. On the phantom always; on every real BraTS case where ../shared is present."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from MedSynthLogic.config import InputExpectations, ModelConfig, from_dict, to_dict
from MedSynthLogic.errors import InputImageError
from MedSynthLogic.input_checks import (
    LABEL_MAP, METADATA_KEY, T1_WEIGHTED, T2_WEIGHTED, check_source, checks_metadata, checks_run, classify_sequence,
    refuse_or_warn, sequence_kind,
)
from MedSynthLogic.phantom import make_phantom
from MedSynthLogic.volume import Volume

CFG = ModelConfig()


def codes(findings):
    return [f.code for f in findings]


@pytest.mark.parametrize("shape", [(24, 28, 24), (48, 56, 48), (96, 112, 96)])
@pytest.mark.parametrize("seed", [0, 1])
def test_the_phantom_pair_is_told_apart_at_every_test_size(shape, seed):
    p = make_phantom(shape=shape, seed=seed)
    assert classify_sequence(p.t1ce.array, p.mask).kind == T1_WEIGHTED
    assert classify_sequence(p.t2.array, p.mask).kind == T2_WEIGHTED
    assert classify_sequence(p.labels.astype(np.float32), p.labels > 0).kind == LABEL_MAP
    assert check_source(p.t1ce, CFG) == []
    assert codes(check_source(p.t2, CFG)) == ["sequence"]
    assert codes(check_source(p.t1ce.with_array(p.labels.astype(np.float32)), CFG)) == ["label_map"]


def test_the_rule_does_not_depend_on_the_intensity_scale(phantom):
    for factor in (1e-3, 1.0, 1e3):
        assert check_source(phantom.t1ce.with_array(np.round(phantom.t1ce.array * factor, 6)), CFG) == []
        assert codes(check_source(phantom.t2.with_array(phantom.t2.array * factor), CFG)) == ["sequence"]


def test_a_noisy_background_is_not_skull_stripped_unless_a_mask_is_given(phantom):
    rng = np.random.default_rng(0)
    noisy = phantom.t1ce.with_array(phantom.t1ce.array + rng.uniform(1, 20, phantom.t1ce.shape).astype(np.float32))
    assert "skull_stripped" in codes(check_source(noisy, CFG))
    assert "skull_stripped" not in codes(check_source(noisy, CFG, mask=phantom.mask))
    assert checks_run(CFG, mask_given=True) == ["sequence", "negative_values", "spacing"]
    assert checks_run(CFG, mask_given=False) == ["sequence", "skull_stripped", "negative_values", "spacing"]


@pytest.mark.parametrize("spacing, expected", [
    ((1.0, 1.0, 1.0), []),
    ((0.9, 0.9, 1.4), []),
    ((1.0, 1.0, 5.0), ["spacing", "anisotropy"]),
    ((2.0, 2.0, 2.0), ["spacing"]),
    ((0.5, 0.5, 1.2), ["anisotropy"]),
])
def test_spacing(phantom, spacing, expected):
    assert codes(check_source(dataclasses.replace(phantom.t1ce, spacing=spacing), CFG)) == expected


def test_expectations_come_from_the_header_and_old_headers_get_the_t1ce_defaults():
    old = to_dict(CFG)
    del old["input"]
    cfg = from_dict(ModelConfig, old)
    assert cfg.input == dataclasses.replace(InputExpectations(), sequence="T1ce") and cfg.input.skull_stripped
    tight = from_dict(ModelConfig, {**to_dict(CFG), "input": {"spacing_mm": [0.5, 0.5, 0.5], "spacing_tolerance_mm": 0.1}})
    assert tight.input.spacing_mm == (0.5, 0.5, 0.5)
    assert codes(check_source(make_phantom(shape=(48, 56, 48)).t1ce, tight)) == ["spacing"]


def test_a_source_the_rule_does_not_know_gets_no_sequence_check(phantom):
    """An MR→CT or CT→MR model: the sequence check runs only for known, agreeing sequence names."""
    ct_source = ModelConfig(source_name="CT", target_name="MR")
    assert ct_source.input.sequence == "CT"
    assert check_source(phantom.t2, ct_source) == [] and "sequence" not in checks_run(ct_source, False)
    old_ct_header = ModelConfig(source_name="CT", target_name="MR", input=InputExpectations(sequence="T1ce"))
    assert check_source(phantom.t2, old_ct_header) == [] and "sequence" not in checks_run(old_ct_header, False)
    t1_to_ct = ModelConfig(source_name="T1", target_name="CT", input=InputExpectations(sequence="T1"))
    assert codes(check_source(phantom.t2, t1_to_ct)) == ["sequence"]
    t2_model = ModelConfig(source_name="T2", target_name="T1", input=InputExpectations(sequence="T2"))
    assert codes(check_source(phantom.t1ce, t2_model)) == ["sequence"] and check_source(phantom.t2, t2_model) == []
    names_only = from_dict(ModelConfig, {"source_name": "T1", "target_name": "FLAIR"})  # a config naming its pair
    assert names_only.input.sequence == "T1" and codes(check_source(phantom.t2, names_only)) == ["sequence"]
    assert sequence_kind("T1-CE") == T1_WEIGHTED and sequence_kind("FLAIR") == T2_WEIGHTED and sequence_kind("CT") is None
    seven_tesla = ModelConfig(source_name="T1_3T", target_name="T1_7T")
    assert sequence_kind("T1_3T") == T1_WEIGHTED and sequence_kind("MPRAGE 7T") == T1_WEIGHTED
    assert codes(check_source(phantom.t2, seven_tesla)) == ["sequence"]  # a T2 used to pass a 3T→7T model
    assert sequence_kind("PD") is None and sequence_kind("T1 T2") is None


def test_a_flair_model_gets_no_sequence_check(phantom):
    """The rule reads half the BraTS FLAIRs as T1-weighted, so a FLAIR→T2 model refused half its own inputs (and
    prepare trained it on cases synthesize then refused); a T1ce model still refuses the FLAIRs the rule catches."""
    flair_model = ModelConfig(source_name="FLAIR", target_name="T2")
    assert flair_model.input.sequence == "FLAIR" and "sequence" not in checks_run(flair_model, False)
    assert check_source(phantom.t1ce, flair_model) == []  # a T1-weighted-looking image: a FLAIR with little oedema
    named = ModelConfig(source_name="T2-FLAIR", target_name="T1", input=InputExpectations(sequence="T2-FLAIR"))
    assert "sequence" not in checks_run(named, False)


@pytest.mark.brats
def test_a_flair_to_t2_model_accepts_every_brats_flair(brats_dir):
    from MedSynthLogic.volume_io import read_volume

    flair_model = ModelConfig(source_name="FLAIR", target_name="T2")
    cases = sorted(p for p in brats_dir.iterdir() if (p / f"{p.name}_flair.nii.gz").is_file())
    assert cases
    for case in cases:
        assert check_source(read_volume(case / f"{case.name}_flair.nii.gz"), flair_model) == [], case.name


def test_a_model_for_whole_heads_gets_no_histogram_rule(phantom):
    """The rule reads a skull-stripped brain's histogram; inside a head mask scalp and marrow make a T1 look
    T2-weighted (t2_score 1.6 on a whole-head phantom T1), so a model that takes whole heads does not run it."""
    head = ModelConfig(source_name="T1", target_name="CT",
                       input=InputExpectations(sequence="T1", skull_stripped=False))
    assert "sequence" not in checks_run(head, mask_given=True)
    assert check_source(phantom.t2, head, mask=phantom.mask) == []


def test_refuse_or_warn(phantom):
    findings = check_source(phantom.t2, CFG)
    with pytest.raises(InputImageError) as err:
        refuse_or_warn(findings, force=False, source="case_t2.nii.gz")
    assert err.value.exit_code == 3
    assert "case_t2.nii.gz does not look like the input this model expects" in str(err.value)
    assert "T2-weighted" in str(err.value) and "--force" in str(err.value)
    assert "field of view cuts off much of the brain" in str(err.value)  # a cut T1ce reads T2-weighted too (a review)
    said = []
    refuse_or_warn(findings, force=True, warn=said.append, source="case_t2.nii.gz")
    assert len(said) == 1 and "--force" in said[0] and "unreliable" in said[0]
    with pytest.warns(UserWarning, match="T2-weighted"):
        refuse_or_warn(findings, force=True)
    refuse_or_warn([], force=False)  # nothing failed: nothing happens


def test_the_record_written_with_the_output(phantom):
    passed = checks_metadata([], False, CFG, mask_given=False)
    assert json.loads(passed[METADATA_KEY])["passed"] is True
    assert passed["ITK_FileNotes"] == "MedSynth synthetic T2; input checks passed"
    warned = checks_metadata([], False, CFG, mask_given=False, notes=["its name 'x_t1' names a T1"])
    assert warned["ITK_FileNotes"] == "MedSynth synthetic T2; input checks passed, 1 warning"
    assert json.loads(warned[METADATA_KEY])["notes"] == ["its name 'x_t1' names a T1"]
    forced = checks_metadata(check_source(phantom.t2, CFG), True, CFG, mask_given=False)
    record = json.loads(forced[METADATA_KEY])
    assert record["forced"] is True and record["findings"][0]["code"] == "sequence"
    assert record["findings"][0]["measured"]["kind"] == T2_WEIGHTED
    assert len(forced["ITK_FileNotes"]) < 80 and "FAILED, forced: sequence" in forced["ITK_FileNotes"]


@pytest.mark.brats
def test_real_brats_t1ce_accepted_t2_and_label_maps_refused(brats_dir):
    """The BraTS rows of docs/evaluation/INPUT_CHECKS.md: every T1ce passes, every T2 and seg is refused, and at
    least half of the FLAIRs are (a FLAIR with little oedema passes: the documented limit of the rule)."""
    from MedSynthLogic.volume_io import read_volume

    cases = sorted(p for p in brats_dir.iterdir() if (p / f"{p.name}_t1ce.nii.gz").is_file())
    assert cases
    flair_refused = [codes(check_source(read_volume(case / f"{case.name}_flair.nii.gz"), CFG)) == ["sequence"]
                     for case in cases]
    assert sum(flair_refused) >= len(cases) / 2, flair_refused
    for case in cases:
        t1ce = read_volume(case / f"{case.name}_t1ce.nii.gz")
        assert check_source(t1ce, CFG) == [], case.name
        assert codes(check_source(read_volume(case / f"{case.name}_t2.nii.gz"), CFG)) == ["sequence"], case.name
        assert codes(check_source(read_volume(case / f"{case.name}_seg.nii.gz"), CFG)) == ["label_map"], case.name


def test_a_z_scored_mr_source_is_named_as_such_and_ct_may_be_negative(phantom):
    """Negative voxels mean an already normalised image for an MR model (not a "T2-weighted" verdict), while a CT
    source (window normalisation) is negative in air and fat by nature."""
    from MedSynthLogic.config import IntensityConfig, NormalisationConfig

    brain = phantom.t1ce.array > 0
    zscored = phantom.t1ce.array.copy()
    zscored[brain] = (zscored[brain] - zscored[brain].mean()) / zscored[brain].std()
    findings = check_source(phantom.t1ce.with_array(zscored), CFG)
    assert codes(findings) == ["negative_values"] and "intensity-normalised" in findings[0].message
    assert 0.2 < findings[0].measured["negative_fraction"] < 0.8
    ct = ModelConfig(source_name="CT", target_name="MR",
                     normalisation=NormalisationConfig(source=IntensityConfig(mode="window")))
    assert "negative_values" not in codes(check_source(phantom.t1ce.with_array(zscored), ct))
    assert "negative_values" not in checks_run(ct, False)


def test_a_bright_rim_left_by_skull_stripping_is_named_as_such_not_as_a_t2():
    """Scalp fat around a T1 brain made the sequence rule say "T2-weighted", which sends the user to look for
    another sequence; the fix is another skull-strip, so the finding says that. (The phantom at its full size: in
    the tests' small one a 3-voxel shell is 29 % of the brain, so no ratio can reach 4.)"""
    from scipy import ndimage

    from MedSynthLogic.input_checks import bright_rim_ratio

    phantom = make_phantom(seed=0)
    t1ce = phantom.t1ce.array
    rim = ndimage.binary_dilation(t1ce > 0, iterations=3) & ~(t1ce > 0)
    ringed = t1ce.copy()
    ringed[rim] = 1.3 * np.percentile(t1ce[t1ce > 0], 99)
    findings = check_source(phantom.t1ce.with_array(ringed), CFG)
    assert codes(findings) == ["skull_stripped"] and "incompletely skull-stripped" in findings[0].message
    assert findings[0].measured["bright_rim_ratio"] >= 4.0 > bright_rim_ratio(t1ce, t1ce > 0, phantom.t1ce.spacing)
    assert classify_sequence(ringed, ringed > 0).kind == T2_WEIGHTED  # what the finding used to say
    assert check_source(phantom.t1ce.with_array(ringed), CFG, mask=phantom.mask) == []  # the rim is outside
    assert codes(check_source(phantom.t2, CFG)) == ["sequence"]
    half = ringed.copy()
    half[: half.shape[0] // 2][rim[: half.shape[0] // 2]] = 0.0  # the upper half of the rim only
    assert classify_sequence(half, half > 0).kind == T1_WEIGHTED  # the sequence rule alone let it through
    findings = check_source(phantom.t1ce.with_array(half), CFG)
    assert codes(findings) == ["skull_stripped"] and "T2-weighted" not in findings[0].message


def test_a_bright_rim_is_judged_in_millimetres_not_voxels():
    """A scalp is millimetres thick whatever the voxel size. Counted in voxels, the shell of a 1.5 mm image reached
    4.5 mm into the brain and the same 3 mm rim read 33 % lower (3.99), below the threshold: the source passed."""
    from scipy import ndimage

    from MedSynthLogic.input_checks import bright_rim_ratio

    phantom = make_phantom(seed=0)
    t1ce = phantom.t1ce.array
    rim = ndimage.binary_dilation(t1ce > 0, iterations=3) & ~(t1ce > 0)
    ringed = t1ce.copy()
    ringed[rim] = 1.3 * np.percentile(t1ce[t1ce > 0], 99)
    coarse = ndimage.zoom(ringed, 1 / 1.5, order=0)
    spacing = tuple(1.5 * s for s in phantom.t1ce.spacing)
    at_1mm = bright_rim_ratio(ringed, ringed > 0, phantom.t1ce.spacing)
    at_1_5mm = bright_rim_ratio(coarse, coarse > 0, spacing)
    assert abs(at_1_5mm / at_1mm - 1.0) < 0.15
    findings = check_source(Volume(coarse, spacing, phantom.t1ce.origin, phantom.t1ce.direction), CFG)
    assert codes(findings) == ["skull_stripped"] and "3 mm of the edge" in findings[0].message


def test_the_rim_ratio_of_an_empty_or_tiny_brain_is_neutral():
    from MedSynthLogic.input_checks import bright_rim_ratio

    assert bright_rim_ratio(np.zeros((8, 8, 8), np.float32), np.zeros((8, 8, 8), bool), (1, 1, 1)) == 1.0
    assert bright_rim_ratio(np.ones((8, 8, 8), np.float32), np.ones((8, 8, 8), bool), (1, 1, 1)) == 1.0


def test_the_messages_name_the_models_threshold_and_voxel_size_not_a_t1ce_default():
    """An MR→CT walk-through: a CT-source model (mask threshold −500) was told its background "(0)" was faint values
    near 0; a CT given to an MR model was called z-scored with "source > 0"; the hints said "about 1 mm" for a 2 mm
    model."""
    from MedSynthLogic.config import NormalisationConfig
    from MedSynthLogic.input_checks import HINTS

    p = make_phantom(shape=(32, 36, 32), seed=0)
    ct_source = dataclasses.replace(CFG, source_name="CT", target_name="T1",
                                    normalisation=NormalisationConfig(mask_threshold=-500.0),
                                    input=InputExpectations(sequence="MR"))
    (head,) = [f for f in check_source(p.t1ce.with_array(p.t1ce.array + 1.0), ct_source) if f.code == "skull_stripped"]
    assert "at most -500, the model's brain mask threshold" in head.message and "near 0" not in head.message
    ct = p.t1ce.with_array(np.where(p.t1ce.array > 0, 40.0, -1000.0).astype(np.float32))
    mr_t1 = dataclasses.replace(CFG, source_name="T1", target_name="CT", input=InputExpectations(sequence="MR"))
    negative = [f for f in check_source(ct, mr_t1) if f.code == "negative_values"]
    assert negative and "a CT in HU" in negative[0].message and "source > 0" in negative[0].message
    assert not any("1 mm" in hint for hint in HINTS.values())


def test_an_int16_image_whose_brightest_voxels_wrapped_around_is_refused_and_an_undershoot_is_not(phantom):
    """A T1ce scaled past 32767 and stored as int16 turns its enhancing rim into -32000s: 0.05 % of the voxels, under
    the 1 % that the negative-values rule asked, so nothing fired and the brain mask (source > 0) left holes there
    (a review). A resampling's small undershoot around the brain stays accepted."""
    from MedSynthLogic.input_checks import check_source

    source = phantom.t1ce.array.astype(np.float32)
    brain = source > 0
    scaled = source / np.percentile(source[brain], 99.95) * 33000.0  # the top 0.05 % past int16's range
    wrapped = scaled.round().astype(np.int64)
    wrapped = ((wrapped + 32768) % 65536 - 32768).astype(np.float32)  # stored as int16, read back
    assert 0 < np.count_nonzero(wrapped < 0) < 0.01 * np.count_nonzero(wrapped)
    findings = check_source(phantom.t1ce.with_array(wrapped), ModelConfig())
    assert [f.code for f in findings] == ["negative_values"] and "wrapped around" in findings[0].message
    undershoot = scaled.copy()
    edge = brain & ~np.roll(brain, 1, axis=2)
    outside = np.flatnonzero(np.roll(edge, -1, axis=2) & ~brain)[:200]  # a few voxels just outside the brain
    undershoot.flat[outside] = -0.05 * np.percentile(scaled[brain], 99)
    assert not check_source(phantom.t1ce.with_array(undershoot), ModelConfig())
    assert not check_source(phantom.t1ce.with_array(scaled), ModelConfig())


def test_a_label_map_resampled_linearly_is_still_a_label_map(phantom):
    """One linear reslice gives a segmentation fractional values at its label borders: the integer rule no longer
    fired, and it passed every check as a T1ce (a review, on a BraTS segmentation). Most of the brain still holds one
    of a few values; no MR image of the 14 BraTS cases comes near (LABEL_TOP_FRACTION's measurement)."""
    from scipy import ndimage

    from MedSynthLogic.input_checks import LABEL_TOP_FRACTION, check_source

    brain = phantom.t1ce.array > 0
    labels = np.where(brain, 1.0 + (phantom.t2.array > np.percentile(phantom.t2.array[brain], 70)), 0.0)
    for moved in (ndimage.zoom(labels, (1, 1.1, 1.1), order=1), ndimage.shift(labels, (0, 0.5, 0.5), order=1)):
        assert not np.all(moved == np.round(moved))
        vol = Volume(moved.astype(np.float32), (1.0, 1.0, 1.0))
        findings = check_source(vol, ModelConfig())
        assert [f.code for f in findings] == ["label_map"], findings
        assert findings[0].measured["top_values_fraction"] >= LABEL_TOP_FRACTION
        assert "holds one of 8 values" in findings[0].message
    assert not check_source(phantom.t1ce, ModelConfig())


def test_a_brain_probability_map_is_no_t1ce(phantom):
    """A smoothed brain mask (floats 0–1, most of the brain at 1) was read as T1-weighted and passed, with only a note
    that it might be a T1 without contrast (a review). Its commonest value is its brightest; BraTS MR images put
    theirs at most at 0.82 of the range (MAP_MODE_POSITION's measurement)."""
    from scipy import ndimage

    from MedSynthLogic.input_checks import check_source

    brain = (phantom.t1ce.array > 0).astype(np.float32)
    for sigma in (1, 2, 3):
        smooth = ndimage.gaussian_filter(brain, sigma)
        smooth[smooth < 0.05] = 0
        findings = check_source(phantom.t1ce.with_array(smooth.astype(np.float32)), ModelConfig())
        assert [f.code for f in findings] == ["label_map"] and "probability map" in findings[0].message
    assert classify_sequence(phantom.t1ce.array, phantom.t1ce.array > 0).kind == T1_WEIGHTED
