""":class:`.volume.Volume` → files: atomic writes with the exact geometry and header notes, outputs checked first.

A written file is read back (its header, or a streaming pass for NIfTI) because ITK's NIfTI writer reports a
full disk only on the console, which would otherwise publish a truncated result.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from .atomic import (as_output_error, atomic_path, check_output_name, check_output_path, replace_file, short_write_error,
                     sync_file)
from .errors import InputImageError, OutputError
from .volume import NIFTI_SUFFIXES, Volume, image_suffix, sitk_module, to_sitk_image
from .volume_read import check_nifti_complete, nifti_parts

# Formats that keep the header and the voxels in two files; both must be written before either is visible.
TWO_FILE_SUFFIXES = {".hdr": ".img", ".mhd": ".raw"}
#: Output formats a synthesis may be written as (checked before any work, so a long run never ends in a refusal).
WRITABLE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".hdr")


def check_image_output(path: str | os.PathLike, overwrite: bool = False, inputs: Sequence[str | os.PathLike] = ()) -> Path:
    """Refuse (``OutputError``) an image output that cannot be written, before any work is done.

    On top of :func:`check_output_path` (exists, equals an input, folder missing or unwritable): an existing
    folder, and a name without one of :data:`WRITABLE_SUFFIXES` (the writer would fail only at the end, and its
    message would name a temporary file).
    """
    out = check_output_name(path)
    if out.is_dir():
        raise OutputError(
            f"The output {out} is a folder; a single source needs an output file name.",
            f"Give a file name, e.g. {out / 'synthetic_t2.nii.gz'}.",
        )
    if image_suffix(out) not in WRITABLE_SUFFIXES:
        what = f"extension {image_suffix(out)!r}" if image_suffix(out) else "no image extension"
        raise OutputError(
            f"The output {out} has {what}; MedSynth writes {', '.join(WRITABLE_SUFFIXES)}.",
            "End the output name with .nii.gz (or another of these).",
        )
    written = out.name[len(out.name) - len(image_suffix(out)):]
    if written != image_suffix(out):  # ITK picks its writer by the lower-case ending: OUT.NII.GZ failed at the end
        raise OutputError(f"The output {out} ends in {written!r}; the image writers know the ending only in lower case.",
                          f"Name it {out.name[: len(out.name) - len(written)]}{image_suffix(out)}.")
    return check_output_path(out, overwrite=overwrite, inputs=tuple(inputs))


def write_volume(
    vol: Volume,
    path: str | os.PathLike,
    overwrite: bool = False,
    inputs: Sequence[str | os.PathLike] = (),
    metadata: Optional[Dict[str, str]] = None,
) -> Path:
    """Write ``vol`` as float32 with its geometry, atomically: the path holds the old file or the complete new one.

    Refuses (``OutputError``) an existing file unless ``overwrite``, any path among ``inputs``, a folder and an
    unknown extension. ``metadata`` (key → text) goes into the image header: every key in NRRD/MetaImage, and
    ``ITK_FileNotes`` as NIfTI's 80-character ``descrip``, the only free text NIfTI keeps.
    Two-file formats (.hdr/.img, .mhd/.raw) are written into a temporary folder beside the target and moved
    in data-file-first, so a reader never sees a header without its voxels.
    """
    out = check_image_output(path, overwrite=overwrite, inputs=tuple(inputs))
    suffix = image_suffix(out)
    sitk = sitk_module()
    if sitk is None and suffix not in NIFTI_SUFFIXES:
        raise OutputError(
            f"Cannot write {out}: SimpleITK is not installed and only NIfTI can be written without it.",
            "Install SimpleITK or write a .nii.gz file.",
        )
    if suffix in TWO_FILE_SUFFIXES:
        companion = out.with_suffix(TWO_FILE_SUFFIXES[suffix])
        check_output_path(companion, overwrite=overwrite, inputs=tuple(inputs))
        _write_two_files(sitk, vol, out, companion, metadata or {})
        return out
    with atomic_path(out) as tmp:
        _write_one(sitk, vol, tmp, out, metadata or {})
    return out


def _write_one(sitk: Any, vol: Volume, path: Path, shown: Path, metadata: Dict[str, str]) -> None:
    """Write ``vol`` to ``path`` (a temporary name); messages name ``shown``, the file the user asked for."""
    if sitk is None:
        import nibabel as nib

        affine = _lps_to_ras_affine(vol)
        img = nib.Nifti1Image(np.ascontiguousarray(vol.array.transpose(2, 1, 0)), affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        if "ITK_FileNotes" in metadata:
            img.header["descrip"] = metadata["ITK_FileNotes"].encode("ascii", "replace")[:79]
        nib.save(img, str(path))
        return
    image = to_sitk_image(sitk, vol)
    for key, value in metadata.items():
        image.SetMetaData(key, value)
    try:
        sitk.WriteImage(image, str(path), useCompression=image_suffix(path) in (".mha", ".nrrd"))
    except RuntimeError as exc:
        if any(words in str(exc).lower() for words in ("no space", "space left")):  # not any path with "space" in it
            raise OSError(28, f"No space left on device: {exc}") from exc
        detail = " ".join(str(exc).replace(str(path), str(shown)).split())[:300]
        raise OutputError(f"Cannot write {shown}: {detail}", "Choose another path or format.") from exc
    _verify_written(sitk, path, vol.shape, shown)


def _verify_written(sitk: Any, path: Path, shape: Tuple[int, int, int], shown: Path) -> None:
    """Raise OutputError if the file just written is incomplete.

    ITK's NIfTI writer only prints "wrote only 0 of N bytes" when the disk is full and returns normally, which
    would publish a truncated result; checking the file costs one streaming pass for NIfTI (about 0.2 s for a
    BraTS volume) and a header read for the other formats.
    """
    try:
        if nifti_parts(path) is not None:
            check_nifti_complete(path)
            return
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        size = tuple(reader.GetSize())[::-1]
    except InputImageError as exc:
        raise short_write_error(shown, exc.message.replace(str(path), str(shown))) from exc
    except RuntimeError as exc:
        raise short_write_error(shown, " ".join(str(exc).replace(str(path), str(shown)).split())[:200]) from exc
    if size != tuple(shape):
        raise short_write_error(shown, f"its header says {size[::-1]} voxels, not {tuple(shape)[::-1]}")


def _write_two_files(sitk: Any, vol: Volume, header: Path, data: Path, metadata: Dict[str, str]) -> None:
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{header.name}.", suffix=".tmp", dir=header.parent))
    try:
        _write_one(sitk, vol, tmpdir / header.name, header, metadata)
        for part in (data, header):
            sync_file(tmpdir / part.name)
            replace_file(tmpdir / part.name, part)
    except OSError as exc:
        error = as_output_error(exc, header)
        if error is None:
            raise
        raise error from exc
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _lps_to_ras_affine(vol: Volume) -> np.ndarray:
    direction = np.asarray(vol.direction, dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(vol.spacing)
    affine[:3, 3] = vol.origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


__all__ = ["TWO_FILE_SUFFIXES", "WRITABLE_SUFFIXES", "check_image_output", "write_volume"]
