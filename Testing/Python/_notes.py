"""The path every non-refusing note takes through ``synthesize_file``, shared by the name and enhancement tests."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest


def assert_note_flows(model: Path, noted: Path, plain: Path, tmp_path: Path, check: str, says: str, recorded: str) -> None:
    """``noted`` is synthesized with one warning event of ``check`` saying ``says`` (a Python warning without
    progress) and the note recorded in the output's header (holding ``recorded``); ``plain`` without any warning."""
    import SimpleITK as sitk

    from MedSynthLogic.inference import synthesize_file

    events = []
    out = synthesize_file(model, noted, tmp_path / "out.nrrd", device="cpu", stages=1, progress=events.append)
    said = [e for e in events if e["event"] == "warning"]
    assert len(said) == 1 and said[0]["input_checks"] == [check] and says in said[0]["message"]
    record = json.loads(sitk.ReadImage(str(out)).GetMetaData("medsynth_input_checks"))
    assert record["passed"] is True and len(record["notes"]) == 1 and recorded in record["notes"][0]
    with pytest.warns(UserWarning, match=says):
        synthesize_file(model, noted, tmp_path / "out2.nii.gz", device="cpu", stages=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        synthesize_file(model, plain, tmp_path / "out3.nii.gz", device="cpu", stages=1)
    assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(out)))).all()
