"""Files ↔ :class:`Volume`: read and write 3D scalar images with their exact geometry.

Arrays are float32 in z, y, x order (SimpleITK's ``GetArrayFromImage`` order); geometry is ITK/LPS with
``spacing`` and ``origin`` as (x, y, z) and ``direction`` as a row-major 3×3. Every way an input can be unusable
is turned into an :class:`InputImageError` that says what to do, because these files come from users.
SimpleITK is the reader; where it cannot be imported, NIfTI files are read with nibabel and converted to the
same geometry, so the core still works in a minimal environment.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .atomic import as_output_error, atomic_path, check_output_path, short_write_error
from .errors import GeometryError, InputImageError, OutputError, ResourceError, UsageError

Vec3 = Tuple[float, float, float]
Mat9 = Tuple[float, float, float, float, float, float, float, float, float]

MAX_AXIS = 2048
MAX_VOXELS = 2**31
MAX_ABS_VALUE = 1e30
#: Host bytes per voxel that reading needs at most: the file's voxels (up to 8 bytes) plus their float32 copy.
#: A volume that needs more than the RAM available is refused before anything is allocated.
READ_BYTES_PER_VOXEL = 12
IDENTITY: Mat9 = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Formats that keep the header and the voxels in two files; both must be written before either is visible.
TWO_FILE_SUFFIXES = {".hdr": ".img", ".mhd": ".raw"}
#: Output formats a synthesis may be written as (checked before any work, so a long run never ends in a refusal).
WRITABLE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".hdr")


@dataclass(frozen=True)
class Volume:
    """A 3D scalar image: float32 ``array`` (z, y, x) plus ITK/LPS geometry ((x, y, z) tuples, row-major direction)."""

    array: np.ndarray
    spacing: Vec3 = (1.0, 1.0, 1.0)
    origin: Vec3 = (0.0, 0.0, 0.0)
    direction: Mat9 = IDENTITY

    def __post_init__(self) -> None:
        arr = np.asarray(self.array)
        if arr.ndim != 3:
            raise InputImageError(f"A volume must be 3D, got an array of shape {arr.shape}.")
        if arr.dtype != np.float32:
            arr = arr.astype(np.float32)
        object.__setattr__(self, "array", arr)
        object.__setattr__(self, "spacing", _tuple(self.spacing, 3, "spacing"))
        object.__setattr__(self, "origin", _tuple(self.origin, 3, "origin"))
        object.__setattr__(self, "direction", _tuple(self.direction, 9, "direction"))
        if any(s <= 0 for s in self.spacing):
            raise InputImageError(f"Voxel spacing must be positive, got {self.spacing}.")

    @property
    def shape(self) -> Tuple[int, int, int]:
        """Array shape (z, y, x)."""
        return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]

    def with_array(self, array: np.ndarray) -> "Volume":
        """A volume on the same grid with other voxel values (e.g. a synthesis of this source)."""
        arr = np.asarray(array)
        if arr.shape != self.array.shape:
            raise GeometryError(f"Array shape {arr.shape} does not match the volume's grid {self.array.shape}.")
        return dataclasses.replace(self, array=arr)


def _tuple(values: Sequence[float], n: int, what: str) -> tuple:
    out = tuple(float(v) for v in values)
    if len(out) != n:
        raise InputImageError(f"Volume {what} must have {n} values, got {len(out)}.")
    return out


def ensure_not_empty(vol: Volume, what: str) -> None:
    """Refuse an all-zero volume: it has no brain to normalise or learn from (usually a wrong or blank file)."""
    if not np.any(vol.array):
        raise InputImageError(
            f"The {what} is empty (every voxel is 0).",
            "Check that you chose the right file; a blank export or a failed skull-strip gives an empty image.",
        )


def _sitk() -> Any:
    """SimpleITK, or None where it cannot be imported (then NIfTI falls back to nibabel)."""
    try:
        import SimpleITK as sitk
    except ImportError:
        return None
    return sitk


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


# ----------------------------------------------------------------------------------------------- reading


def read_volume(path: str | os.PathLike, max_axis: int = MAX_AXIS, max_voxels: int = MAX_VOXELS) -> Volume:
    """Read a 3D scalar image in any format SimpleITK reads, keeping origin/spacing/direction exactly.

    Refuses (``InputImageError``) a missing or corrupt file, 2D/4D or multi-component images, non-finite
    values, values above 1e30 and volumes beyond ``max_axis`` voxels per axis or ``max_voxels`` in all; a volume
    that would not fit in the RAM available is a ``ResourceError``. Sizes are checked from the header, before any
    voxel is allocated. Integer voxels are cast to float32 (large integers lose only their lowest digits).
    """
    p = Path(path)
    if not p.exists():
        raise InputImageError(f"The image file {p} does not exist.", "Check the path and the spelling.")
    if p.is_dir():
        raise InputImageError(
            f"{p} is a folder, not an image file.",
            "Choose a single volume file (.nii.gz, .nrrd, .mha …); convert DICOM series in 3D Slicer first.",
        )
    sitk = _sitk()
    if sitk is not None:
        return _read_sitk(sitk, p, max_axis, max_voxels)
    if _suffix(p) in NIFTI_SUFFIXES:
        return _read_nibabel(p, max_axis, max_voxels)
    raise InputImageError(
        f"Cannot read {p}: SimpleITK is not installed and only NIfTI (.nii, .nii.gz) can be read without it.",
        "Install SimpleITK (pip install SimpleITK) or convert the image to NIfTI.",
    )


def _corrupt(p: Path, exc: BaseException) -> InputImageError:
    detail = " ".join(str(exc).split())
    if len(detail) > 300:
        detail = detail[:300] + " …"
    return InputImageError(
        f"Cannot read {p}: the file is not a readable image or is damaged ({type(exc).__name__}: {detail}).",
        "Check that the file is complete (not truncated by a download or copy) and is in a format such as "
        ".nii.gz, .nrrd, .mha/.mhd or .hdr/.img; re-export it if needed.",
    )


def _check_size(p: Path, size_xyz: Sequence[int], max_axis: int, max_voxels: int) -> None:
    n = int(np.prod([int(s) for s in size_xyz], dtype=np.int64))
    if max(size_xyz) > max_axis or n > max_voxels:
        raise InputImageError(
            f"{p} is too large: {tuple(size_xyz)} voxels (limit {max_axis} per axis and {max_voxels} in all).",
            "Crop or downsample the volume first (brain MRI needs about 1 mm voxels).",
        )
    if min(size_xyz) < 2:
        raise InputImageError(
            f"{p} is a 2D image (size {tuple(size_xyz)}): a single slice cannot be synthesised in 3D.",
            "Use the full 3D volume.",
        )
    needed, available = n * READ_BYTES_PER_VOXEL, available_ram()
    if needed > available:
        raise ResourceError(
            f"Not enough memory to read {p}: {tuple(size_xyz)} voxels need about {needed / 2**30:.1f} GiB, "
            f"{available / 2**30:.1f} GiB is available.",
            "Close other programs, use a machine with more memory, or crop/downsample the volume first.",
        )


def available_ram() -> int:
    """Bytes of RAM available now (MemAvailable), or total physical RAM where /proc is absent."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _wrong_dims(p: Path, ndim: int, size: Sequence[int]) -> InputImageError:
    if ndim < 3:
        return InputImageError(
            f"{p} is a {ndim}D image (size {tuple(size)}); MedSynth needs a 3D volume.",
            "Use the full 3D volume, not a single slice or screenshot.",
        )
    return InputImageError(
        f"{p} is a {ndim}D image (size {tuple(size)}), e.g. a time series or several volumes in one file.",
        "Extract the single 3D volume you want (e.g. in 3D Slicer or with fslroi) and use that.",
    )


def _multi_component(p: Path, n: int) -> InputImageError:
    return InputImageError(
        f"{p} has {n} values per voxel (a colour/RGB or vector image); MedSynth needs a scalar (grey-level) volume.",
        "Use the original grey-level scan, not a colour rendering or a displacement field.",
    )


def _read_sitk(sitk: Any, p: Path, max_axis: int, max_voxels: int) -> Volume:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        reader.ReadImageInformation()
    except Exception as exc:  # SimpleITK raises RuntimeError for anything from a bad header to an unknown format
        raise _corrupt(p, exc) from exc
    size = list(reader.GetSize())
    if len(size) == 4 and size[3] == 1:
        size = size[:3]
    if len(size) != 3:
        raise _wrong_dims(p, len(size), size)
    if reader.GetNumberOfComponents() != 1:
        raise _multi_component(p, reader.GetNumberOfComponents())
    _check_size(p, size, max_axis, max_voxels)
    _check_nifti_complete(p)
    try:
        img = reader.Execute()
    except Exception as exc:
        raise _corrupt(p, exc) from exc
    if img.GetDimension() == 4:
        img = img[:, :, :, 0]
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise _multi_component(p, img.GetNumberOfComponentsPerPixel())
    arr = sitk.GetArrayFromImage(img)
    return Volume(
        _to_float32(p, arr),
        spacing=tuple(img.GetSpacing()),
        origin=tuple(img.GetOrigin()),
        direction=tuple(img.GetDirection()),
    )


def _read_nibabel(p: Path, max_axis: int, max_voxels: int) -> Volume:
    try:
        import nibabel as nib
    except ImportError as exc:
        raise InputImageError(
            f"Cannot read {p}: neither SimpleITK nor nibabel is installed.", "Install SimpleITK (pip install SimpleITK)."
        ) from exc
    try:
        img = nib.load(str(p))
        shape = list(img.shape)
    except Exception as exc:
        raise _corrupt(p, exc) from exc
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise _wrong_dims(p, len(shape), shape)
    if img.get_data_dtype().names is not None or img.get_data_dtype().kind == "c":
        raise _multi_component(p, len(img.get_data_dtype().names or ()) or 2)
    _check_size(p, shape, max_axis, max_voxels)
    _check_nifti_complete(p)
    try:
        data = np.asanyarray(img.dataobj).reshape(shape)
    except Exception as exc:
        raise _corrupt(p, exc) from exc
    spacing, origin, direction = _ras_affine_to_lps(np.asarray(img.affine, dtype=np.float64))
    return Volume(_to_float32(p, data.transpose(2, 1, 0)), spacing=spacing, origin=origin, direction=direction)


def _nifti_parts(p: Path) -> Tuple[Path, Path] | None:
    """(header file, voxel file) of a NIfTI/Analyze image, or None for other formats."""
    name = p.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return p, p
    for hdr_ext, img_exts in ((".hdr", (".img", ".img.gz")), (".hdr.gz", (".img.gz", ".img"))):
        if name.endswith(hdr_ext):
            stem = p.name[: -len(hdr_ext)]
            for ext in img_exts:
                if (p.parent / (stem + ext)).exists():
                    return p, p.parent / (stem + ext)
            return None
    for img_ext in (".img", ".img.gz"):
        if name.endswith(img_ext):
            stem = p.name[: -len(img_ext)]
            for ext in (".hdr", ".hdr.gz"):
                if (p.parent / (stem + ext)).exists():
                    return p.parent / (stem + ext), p
    return None


def _open_maybe_gz(path: Path) -> Any:
    import gzip

    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _scan_data(path: Path, offset: int, float_dtype: np.dtype | None) -> Tuple[int, int]:
    """Stream the (decompressed) file: (bytes after ``offset``, non-finite voxels if ``float_dtype``).

    A truncated or damaged gzip stream raises (EOFError, zlib.error, OSError).
    """
    total = 0
    bad = 0
    step = (1 << 24) if float_dtype is None else (1 << 24) - (1 << 24) % float_dtype.itemsize
    with _open_maybe_gz(path) as fh:
        skipped = len(fh.read(offset)) if offset else 0
        if skipped < offset:
            return 0, 0
        while True:
            chunk = fh.read(step)
            if not chunk:
                return total, bad
            total += len(chunk)
            if float_dtype is not None:
                usable = len(chunk) - len(chunk) % float_dtype.itemsize
                values = np.frombuffer(chunk[:usable], dtype=float_dtype)
                bad += int(values.size - np.count_nonzero(np.isfinite(values)))


def _check_nifti_complete(p: Path) -> None:
    """Refuse a truncated NIfTI/Analyze file or one with NaN/Inf voxels.

    ITK's NIfTI reader silently pads a truncated file with zeros and turns NaN into 0, so both would reach the
    network unnoticed; this streams the voxel data once (about 0.2 s for a BraTS volume).
    """
    import struct
    import zlib

    parts = _nifti_parts(p)
    if parts is None:
        return
    header_path, data_path = parts
    try:
        with _open_maybe_gz(header_path) as fh:
            head = fh.read(540)
        for endian in ("<", ">"):
            sizeof_hdr = struct.unpack(endian + "i", head[:4])[0]
            if sizeof_hdr in (348, 540):
                break
        else:
            return
        if sizeof_hdr == 348:
            datatype, bitpix = struct.unpack(endian + "2h", head[70:74])
            dims = struct.unpack(endian + "8h", head[40:56])
            vox_offset = int(struct.unpack(endian + "f", head[108:112])[0])
        else:
            datatype, bitpix = struct.unpack(endian + "2h", head[12:16])
            dims = struct.unpack(endian + "8q", head[16:80])
            vox_offset = int(struct.unpack(endian + "q", head[168:176])[0])
        ndim = int(dims[0])
        if not 1 <= ndim <= 7 or bitpix <= 0:
            return
        needed = int(np.prod([max(int(d), 1) for d in dims[1 : ndim + 1]], dtype=np.int64)) * bitpix // 8
        offset = max(vox_offset, sizeof_hdr) if data_path == header_path else max(vox_offset, 0)
        float_dtype = {16: np.dtype(endian + "f4"), 64: np.dtype(endian + "f8")}.get(int(datatype))
        have, non_finite = _scan_data(data_path, offset, float_dtype)
    except EOFError as exc:
        raise InputImageError(
            f"Cannot read {data_path}: the compressed file is truncated (it ends before its end-of-stream marker).",
            "The download or copy was interrupted; copy the complete file again.",
        ) from exc
    except (OSError, zlib.error, struct.error) as exc:
        raise _corrupt(data_path, exc) from exc
    if have < needed:
        raise InputImageError(
            f"Cannot read {data_path}: the file is truncated ({have} bytes of image data, {needed} expected).",
            "The download or copy was interrupted; copy the complete file again.",
        )
    if non_finite:
        raise _non_finite(p, non_finite)


def _non_finite(p: Path, count: int) -> InputImageError:
    return InputImageError(
        f"{p} contains {count} voxels that are NaN or infinite.",
        "Re-export the image from its source; NaN usually comes from a failed processing step.",
    )


def _ras_affine_to_lps(affine: np.ndarray) -> Tuple[Vec3, Vec3, Mat9]:
    """Split a NIfTI (RAS) voxel-to-world affine into ITK (LPS) spacing, origin and direction."""
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    linear = lps[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    spacing = np.where(spacing > 0, spacing, 1.0)
    direction = linear / spacing
    return tuple(spacing.tolist()), tuple(lps[:3, 3].tolist()), tuple(direction.reshape(9).tolist())  # type: ignore[return-value]


def _lps_to_ras_affine(vol: Volume) -> np.ndarray:
    direction = np.asarray(vol.direction, dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(vol.spacing)
    affine[:3, 3] = vol.origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def _to_float32(p: Path, arr: np.ndarray) -> np.ndarray:
    """Cast voxels to float32, refusing non-finite or absurdly large values (a sign of a wrong data type)."""
    if arr.dtype.kind == "c" or arr.dtype.names is not None:
        raise _multi_component(p, 2)
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        if not finite.all():
            raise _non_finite(p, int(arr.size - np.count_nonzero(finite)))
    if arr.size and arr.dtype.kind in "fiu":
        big = max(abs(float(arr.max())), abs(float(arr.min())))
        if big > MAX_ABS_VALUE:
            raise InputImageError(
                f"{p} contains a voxel value of {big:.3g}, beyond any image intensity.",
                "The file is probably corrupt or stored with a wrong data type; re-export it.",
            )
    return np.ascontiguousarray(arr, dtype=np.float32)


# ----------------------------------------------------------------------------------------------- writing


def _to_sitk(sitk: Any, vol: Volume) -> Any:
    img = sitk.GetImageFromArray(np.ascontiguousarray(vol.array, dtype=np.float32), isVector=False)
    img.SetSpacing(vol.spacing)
    img.SetOrigin(vol.origin)
    img.SetDirection(vol.direction)
    return img


def _from_sitk(sitk: Any, img: Any) -> Volume:
    return Volume(
        sitk.GetArrayFromImage(img).astype(np.float32, copy=False),
        spacing=tuple(img.GetSpacing()),
        origin=tuple(img.GetOrigin()),
        direction=tuple(img.GetDirection()),
    )


def check_image_output(path: str | os.PathLike, overwrite: bool = False, inputs: Sequence[str | os.PathLike] = ()) -> Path:
    """Refuse (``OutputError``) an image output that cannot be written, before any work is done.

    On top of :func:`check_output_path` (exists, equals an input, folder missing or unwritable): an existing
    folder, and a name without one of :data:`WRITABLE_SUFFIXES` (the writer would fail only at the end, and its
    message would name a temporary file).
    """
    out = Path(path)
    if out.is_dir():
        raise OutputError(
            f"The output {out} is a folder; a single source needs an output file name.",
            f"Give a file name, e.g. {out / 'synthetic_t2.nii.gz'}.",
        )
    if _suffix(out) not in WRITABLE_SUFFIXES:
        what = f"extension {_suffix(out)!r}" if _suffix(out) else "no image extension"
        raise OutputError(
            f"The output {out} has {what}; MedSynth writes {', '.join(WRITABLE_SUFFIXES)}.",
            "End the output name with .nii.gz (or another of these).",
        )
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
    suffix = _suffix(out)
    sitk = _sitk()
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
    image = _to_sitk(sitk, vol)
    for key, value in metadata.items():
        image.SetMetaData(key, value)
    try:
        sitk.WriteImage(image, str(path), useCompression=_suffix(path) in (".mha", ".nrrd"))
    except RuntimeError as exc:
        if "space" in str(exc).lower():
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
        if _nifti_parts(path) is not None:
            _check_nifti_complete(path)
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
            with open(tmpdir / part.name, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmpdir / part.name, part)
    except OSError as exc:
        error = as_output_error(exc, header)
        if error is None:
            raise
        raise error from exc
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- geometry


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def same_grid(a: Volume, b: Volume, tol: float = 1e-3) -> List[str]:
    """The ways the grids of ``a`` and ``b`` differ (size, spacing, origin, direction, with values); empty if none.

    Sizes are reported in (x, y, z) order like the other geometry, so they match what viewers show.
    """
    diffs: List[str] = []
    if a.shape != b.shape:
        diffs.append(f"size differs: {a.shape[::-1]} vs {b.shape[::-1]} voxels (x, y, z)")
    pairs = (("spacing", a.spacing, b.spacing), ("origin", a.origin, b.origin), ("direction", a.direction, b.direction))
    for name, va, vb in pairs:
        if np.max(np.abs(np.subtract(va, vb))) > tol:
            diffs.append(f"{name} differs: {_fmt(va)} vs {_fmt(vb)}")
    return diffs


def resample_like(moving: Volume, reference: Volume) -> Volume:
    """``moving`` linearly resampled onto ``reference``'s grid (physical space), 0 outside ``moving``."""
    sitk = _sitk()
    if sitk is not None:
        out = sitk.Resample(
            _to_sitk(sitk, moving), _to_sitk(sitk, reference), sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32
        )
        return reference.with_array(sitk.GetArrayFromImage(out).astype(np.float32, copy=False))
    return reference.with_array(_resample_scipy(moving, reference))


def _index_to_world(vol: Volume) -> Tuple[np.ndarray, np.ndarray]:
    matrix = np.asarray(vol.direction, dtype=np.float64).reshape(3, 3) * np.asarray(vol.spacing)
    return matrix, np.asarray(vol.origin, dtype=np.float64)


def _resample_scipy(moving: Volume, reference: Volume) -> np.ndarray:
    """Linear resampling without SimpleITK, slab by slab so memory stays bounded."""
    from scipy.ndimage import map_coordinates

    m_ref, o_ref = _index_to_world(reference)
    m_mov, o_mov = _index_to_world(moving)
    # continuous moving index (x, y, z) = inv(M_mov) @ (M_ref @ i_ref + o_ref - o_mov)
    combined = np.linalg.solve(m_mov, m_ref)
    offset = np.linalg.solve(m_mov, o_ref - o_mov)
    nz, ny, nx = reference.shape
    limits = np.asarray(moving.shape[::-1], dtype=np.float64) - 0.5
    out = np.empty(reference.shape, dtype=np.float32)
    yy, xx = np.meshgrid(np.arange(ny, dtype=np.float64), np.arange(nx, dtype=np.float64), indexing="ij")
    for z in range(nz):
        idx = np.stack([xx.ravel(), yy.ravel(), np.full(xx.size, float(z))])
        cont = combined @ idx + offset[:, None]
        # like ITK: points within half a voxel of the grid are inside (edge voxels repeat), the rest are 0
        inside = np.all((cont > -0.5) & (cont < limits[:, None]), axis=0)
        values = map_coordinates(moving.array, cont[::-1], order=1, mode="nearest")
        out[z] = np.where(inside, values, np.float32(0.0)).reshape(ny, nx)
    return out


def align_pair(source: Volume, target: Volume, policy: str = "resample") -> Tuple[Volume, Volume, List[str]]:
    """Put ``target`` on ``source``'s grid: unchanged if already there, resampled, or refused (``GeometryError``).

    Returns (source, target on the source grid, messages describing what was done).
    """
    if policy not in ("resample", "refuse"):
        raise UsageError(f"Unknown grid policy {policy!r}; use 'resample' or 'refuse'.")
    diffs = same_grid(source, target)
    if not diffs:
        return source, target, []
    if policy == "refuse":
        raise GeometryError(
            "The source and target are not on the same voxel grid: " + "; ".join(diffs) + ".",
            "Register/resample them onto one grid first, or allow resampling (--geometry resample).",
        )
    resampled = resample_like(target, source)
    if not np.any(resampled.array):
        raise GeometryError(
            "The target does not overlap the source in physical space: " + "; ".join(diffs) + ".",
            "Check that both images are of the same subject and session and were not re-oriented separately.",
        )
    return source, resampled, ["Resampled the target onto the source grid (linear): " + "; ".join(diffs) + "."]


__all__ = [
    "Volume",
    "read_volume",
    "write_volume",
    "ensure_not_empty",
    "same_grid",
    "resample_like",
    "align_pair",
]
