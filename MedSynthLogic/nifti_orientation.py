"""Where a NIfTI file says its image lies, and whether image readers agree about it: notes, never refusals.

A NIfTI header holds two placements, the qform and the sform, each with a code saying whether it is set. Readers
choose between them differently: ITK (so SimpleITK, MedSynth and Slicer) took the qform of a file whose codes were
1 and 2, nibabel-based tools the sform. When the two disagree, the synthetic image (written with the placement MedSynth
read, in both forms) lies elsewhere than its source in half the tools; a file with neither set gets a placement
invented by each reader. A hostile-input walk-through wrote both files without a word; the user now hears about it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Union

import numpy as np

from .volume import NIFTI_SUFFIXES, image_suffix, sitk_module

#: Largest difference (mm, in the affine's entries) between the sform and the placement read that counts as agreement.
AFFINE_TOLERANCE_MM = 0.01


def orientation_notes(path: Union[str, "os.PathLike[str]"]) -> List[str]:
    """The sentences for a NIfTI file whose placement readers disagree on; empty for any other file, or without
    SimpleITK (nibabel, the fallback reader, reads the sform itself)."""
    p = Path(path)
    sitk = sitk_module()
    if sitk is None or image_suffix(p) not in NIFTI_SUFFIXES:
        return []
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        reader.ReadImageInformation()
        header = {key: reader.GetMetaData(key) for key in reader.GetMetaDataKeys()}
    except RuntimeError:
        return []  # read_volume says what is wrong with the file
    qform, sform = int(float(header.get("qform_code", 0))), int(float(header.get("sform_code", 0)))
    if qform == 0 and sform == 0:
        return ["the NIfTI file states no orientation (its qform and sform codes are 0): each tool invents one, and "
                "the synthetic image is written with the one MedSynth assumed, so another tool may show it flipped "
                "against the source; re-export the source with its orientation"]
    if sform == 0:
        return []
    read = _affine(np.asarray(reader.GetDirection()).reshape(3, 3), reader.GetSpacing(), reader.GetOrigin())
    try:
        rows = np.array([[float(v) for v in header[f"srow_{axis}"].split()] for axis in "xyz"])
    except (KeyError, ValueError):
        return []
    stated = np.diag([-1.0, -1.0, 1.0]) @ rows  # RAS → the LPS that ITK's placement is in
    gap = float(np.max(np.abs(stated - read)))
    if gap <= AFFINE_TOLERANCE_MM:
        return []
    return [f"the NIfTI file's qform and sform disagree (by up to {gap:.1f} mm in its affine): MedSynth, ITK and "
            "Slicer place it by the qform, nibabel-based tools by the sform, so in those the synthetic image will not "
            "lie on its source; re-export the source so that both agree"]


def _affine(direction: np.ndarray, spacing: "tuple[float, ...]", origin: "tuple[float, ...]") -> np.ndarray:
    """The 3 × 4 voxel-to-world matrix (LPS) of ITK's placement."""
    return np.hstack([direction * np.asarray(spacing, dtype=np.float64), np.asarray(origin, dtype=np.float64)[:, None]])
