"""What a source's name says about its sequence (MedSynthLogic.source_names): a hint for a T1 picked instead
of the T1ce, which the sequence check cannot tell apart. A note, never a refusal."""

from __future__ import annotations


import pytest

from MedSynthLogic.config import InputExpectations, ModelConfig
from MedSynthLogic.errors import UsageError
from MedSynthLogic.source_names import display_name, file_suffixes, name_notes, named_sequence
from _models import random_chain
from _notes import assert_note_flows

T1CE_MODEL = ModelConfig()


@pytest.mark.parametrize("name, kind, explicit", [
    ("Brats18_2013_20_1_t1ce", "T1ce", True),
    ("Brats18_2013_20_1_t1", "T1", False),
    ("Brats18_TCIA02_370_1_t2", "T2", True),
    ("Brats18_TCIA02_370_1_flair", "FLAIR", True),
    ("BraTS-GLI-00000-000-t1n", "T1", True),
    ("BraTS-GLI-00000-000-t1c", "T1ce", True),
    ("BraTS-GLI-00000-000-t2w", "T2", True),
    ("BraTS-GLI-00000-000-t2f", "FLAIR", True),
    ("5: AX T1 POST GAD", "T1ce", True),
    ("AX T1 +C", "T1ce", True),
    ("T1 C+", "T1ce", True),
    ("MPRAGE post", "T1ce", True),
    ("T1 with contrast", "T1ce", True),
    ("Sag T1 pre", "T1", True),
    ("T1 without contrast", "T1", True),
    ("t1_mprage_sag_p2_iso", "T1", False),
    ("3: Ax T1 FLAIR", "T1", False),
    ("AX T2 FLAIR", "FLAIR", True),
    ("T2W_TSE", "T2", True),
])
def test_names_of_brats_files_and_dicom_series(name, kind, explicit):
    named = named_sequence(name)
    assert named is not None and (named.kind, named.explicit) == (kind, explicit)


@pytest.mark.parametrize("name", ["MRHead", "MRBrainTumor1", "source", "Brats18_x_seg", "T10 vertebra",
                                  "case_t1ce synthetic T2", "T1 pre and post", "image_0001",
                                  "T1map_3T", "MP2RAGE_T1map", "T1 map", "qT1", "T2star", "T1rho"])
def test_names_that_name_no_single_sequence_say_nothing(name):
    assert named_sequence(name) is None
    assert name_notes(name, T1CE_MODEL) == []


def test_display_name_drops_the_folder_and_the_image_extension():
    assert display_name("/data/c/Brats18_1_t1.nii.gz") == "Brats18_1_t1"
    assert display_name("AX T1 POST") == "AX T1 POST"
    assert display_name("x/scan.nrrd") == "scan"
    assert display_name("T1 SE AX +C/FS") == "T1 SE AX +C/FS"
    assert named_sequence(display_name("T1 SE AX +C/FS")).kind == "T1ce"


def test_a_t1ce_model_gets_a_note_for_a_named_t1_t2_or_flair_and_none_for_a_t1ce():
    bare = name_notes("/data/Brats18_2013_20_1_t1.nii.gz", T1CE_MODEL)
    assert len(bare) == 1 and "'Brats18_2013_20_1_t1'" in bare[0] and "without saying contrast-enhanced" in bare[0]
    assert "cannot tell a T1 from a T1ce" in bare[0]
    assert "says a T1 without contrast" in name_notes("Sag T1 pre", T1CE_MODEL)[0]
    assert name_notes("AX T2", T1CE_MODEL) == ["its name 'AX T2' names a T2, and the model expects a T1ce"]
    assert "names a FLAIR" in name_notes("Brats18_x_flair.nii.gz", T1CE_MODEL)[0]
    for fine in ("Brats18_2013_20_1_t1ce.nii.gz", "AX T1 POST GAD", "", None):
        assert name_notes(fine, T1CE_MODEL) == []


def test_the_expected_sequence_is_the_models_own():
    t1_model = ModelConfig(source_name="T1", input=InputExpectations(sequence="T1"))
    assert name_notes("Sag T1 pre", t1_model) == [] and name_notes("Brats18_1_t1", t1_model) == []
    assert name_notes("Brats18_1_t1ce", t1_model) == ["its name 'Brats18_1_t1ce' names a T1ce, and the model expects a T1"]
    ct_model = ModelConfig(source_name="MR", target_name="CT")  # not a sequence named here: no note
    assert name_notes("Brats18_1_t2", ct_model) == []
    disagreeing = ModelConfig(source_name="T2", input=InputExpectations(sequence="T1ce"))
    assert name_notes("Brats18_1_t1", disagreeing) == []


def test_synthesize_file_warns_about_the_name_and_records_it(tmp_path, phantom, tiny_model_config):
    """A phantom T1ce saved under a BraTS T1's name passes every intensity check, is synthesized, and the note
    reaches the progress stream (or Python's warnings) and the output's header."""
    from MedSynthLogic.model_file import save_model
    from MedSynthLogic.volume_io import write_volume

    model = tmp_path / "model.safetensors"
    save_model(model, random_chain(tiny_model_config), tiny_model_config)
    named_t1 = tmp_path / "case_t1.nii.gz"
    write_volume(phantom.t1ce, named_t1)
    named_t1ce = tmp_path / "case_t1ce.nii.gz"
    write_volume(phantom.t1ce, named_t1ce)
    assert_note_flows(model, named_t1, named_t1ce, tmp_path, "name", "names a T1 without saying contrast-enhanced", "T1ce")


def test_file_suffixes_follow_the_configs_names_and_refuse_another_pair():
    """The suffixes pick the files and the config names the model: they must not disagree."""
    assert file_suffixes(ModelConfig()) == ("t1ce", "t2")
    t1_flair = ModelConfig(source_name="T1", target_name="FLAIR")
    assert file_suffixes(t1_flair) == ("t1", "flair")
    assert file_suffixes(ModelConfig(), "t1c", "t2w") == ("t1c", "t2w")  # BraTS 2023 names of the same pair
    assert file_suffixes(ModelConfig(source_name="CT", target_name="MR"), "ct", "t1") == ("ct", "t1")  # not judged
    with pytest.raises(UsageError, match=r"source files \(suffix 't1'\) hold a T1.*names its source T1ce") as err:
        file_suffixes(ModelConfig(), "t1", "flair")
    assert '"source_name"' in err.value.hint and err.value.exit_code == 2
    with pytest.raises(UsageError, match="target files"):
        file_suffixes(t1_flair, None, "t2")


def test_a_model_of_quantitative_t1_maps_accepts_its_own_inputs(phantom):
    """A T1 map (CSF brightest) was read as a T1-weighted name and refused as T2-weighted by its own model (a review)."""
    import dataclasses

    from MedSynthLogic.config import ModelConfig
    from MedSynthLogic.input_checks import check_source

    t1map = phantom.t2  # a T1 map's histogram is T2-like: long T1 where T2 is long
    for name in ("T1map_3T", "MP2RAGE_T1map"):
        cfg = dataclasses.replace(ModelConfig(source_name=name, target_name="T1map_7T"),
                                  input=dataclasses.replace(ModelConfig().input, sequence=name))
        assert [f.code for f in check_source(t1map, cfg)] == []
    t1_model = ModelConfig(source_name="T1_3T", target_name="T1_7T")
    t1_model = dataclasses.replace(t1_model, input=dataclasses.replace(ModelConfig().input, sequence="T1_3T"))
    assert [f.code for f in check_source(t1map, t1_model)] == ["sequence"], "a T1-weighted model still checks"
