"""Which files a folder synthesis reads (MedSynthLogic.folder_sources), without a model: names only."""

from __future__ import annotations

from pathlib import Path

import pytest

from MedSynthLogic.errors import InputImageError, OutputError, UsageError
from MedSynthLogic.folder_sources import Source, check_output_folder, find_sources, output_name


def touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def test_brats_naming_takes_only_the_source_sequence(tmp_path):
    touch(tmp_path, *(f"B_1/B_1_{s}.nii.gz" for s in ("t1", "t1ce", "t2", "flair", "seg")),
          "A_2/A_2_t1ce.nii.gz", "flat_t1ce.nrrd", "other/A_2_t1ce.nii.gz", "notes_t1ce.txt")
    found = find_sources(tmp_path)
    assert [(s.case_id, s.path.relative_to(tmp_path).as_posix()) for s in found] == [
        ("A_2", "A_2/A_2_t1ce.nii.gz"), ("B_1", "B_1/B_1_t1ce.nii.gz"), ("flat", "flat_t1ce.nrrd")]
    assert [s.case_id for s in find_sources(tmp_path, source_name="T2")] == ["B_1"]


def test_a_folder_without_sources_is_refused_with_what_was_looked_for(tmp_path):
    touch(tmp_path, "c/c_t2.nii.gz", "c/c_seg.nii.gz")
    with pytest.raises(InputImageError, match=r"<case>/<case>_t1ce.nii.gz.*--pattern"):
        find_sources(tmp_path)
    with pytest.raises(InputImageError, match=r"No files matching '\*.mha'"):
        find_sources(tmp_path, pattern="*.mha")


def test_patterns(tmp_path):
    touch(tmp_path, "p1/scan_T1C.nii.gz", "p1/scan_T2.nii.gz", "p2/scan_T1C.nii.gz", "x_t1ce.nii.gz", "y.nii.gz")
    assert [(s.case_id, s.path.name) for s in find_sources(tmp_path, pattern="{case}/*T1C*.nii.gz")] == [
        ("p1", "scan_T1C.nii.gz"), ("p2", "scan_T1C.nii.gz")]
    assert [s.case_id for s in find_sources(tmp_path, pattern="*.nii.gz")] == ["x", "y"]
    with pytest.raises(UsageError, match="a wildcard touches {case}"):  # used to be a '**' traceback from pathlib
        find_sources(tmp_path, pattern="p{case}*/*T1C*.nii.gz")
    with pytest.raises(UsageError, match="same output name"):
        find_sources(tmp_path, pattern="*/*.nii.gz")  # scan_T1C in p1 and in p2: two files, one output name


def test_output_names_and_folders(tmp_path):
    assert output_name(Source("c1", tmp_path / "c1_t1ce.nii.gz")) == "c1_synthetic_t2.nii.gz"
    assert output_name(Source("c1", tmp_path / "c1_t1ce.mha"), "CT") == "c1_synthetic_ct.mha"
    assert output_name(Source("c1", tmp_path / "c1_t1ce.nhdr"), "T2") == "c1_synthetic_t2.nii.gz"
    src = tmp_path / "cases"
    src.mkdir()
    (tmp_path / "file.txt").write_text("x", encoding="utf-8")
    assert check_output_folder(tmp_path / "results", src) == tmp_path / "results"
    for bad, message in ((tmp_path / "out.nii.gz", "is a file name"), (tmp_path / "file.txt", "is a file"),
                         (src, "is the input folder")):
        with pytest.raises(OutputError, match=message):
            check_output_folder(bad, src)
    assert not (tmp_path / "out.nii.gz").exists() and not (tmp_path / "results").exists()
