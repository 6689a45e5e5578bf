"""Files → :class:`.volume.Volume`: read 3D scalar images with their exact geometry, refusing unusable ones.

Every way an input can be unusable is turned into an :class:`InputImageError` that says what to do, because
these files come from users. SimpleITK is the reader; where it cannot be imported, NIfTI files are read with
nibabel and converted to the same geometry, so the core still works in a minimal environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from .errors import InputImageError, ResourceError
from .volume import NIFTI_SUFFIXES, Mat9, Vec3, Volume, image_suffix, sitk_module

MAX_AXIS = 2048
MAX_VOXELS = 2**31
MAX_ABS_VALUE = 1e30
#: Host bytes per voxel that reading needs at most: the file's voxels (up to 8 bytes) plus their float32 copy.
#: A volume that needs more than the RAM available is refused before anything is allocated.
READ_BYTES_PER_VOXEL = 12


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
    sitk = sitk_module()
    if sitk is not None:
        return _read_sitk(sitk, p, max_axis, max_voxels)
    if image_suffix(p) in NIFTI_SUFFIXES:
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


def _header_shape(path: Path) -> Optional[Tuple[List[int], int]]:
    """The size along each axis and the values per voxel a file's header declares, without reading its voxels; None
    where the header cannot be read (then :func:`read_volume` says why when the file is read)."""
    sitk = sitk_module()
    try:
        if sitk is not None:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            return [int(s) for s in reader.GetSize()], int(reader.GetNumberOfComponents())
        import nibabel as nib

        return [int(s) for s in nib.load(str(path)).shape], 1
    except Exception:  # any unreadable header: the real read reports it with its own message
        return None


def header_voxels(path: str | os.PathLike) -> Optional[int]:
    """The voxel count a file's header declares, without reading its voxels; None where the header cannot be read
    (then :func:`read_volume` says why when the file is read)."""
    shape = _header_shape(Path(path))
    return None if shape is None else int(np.prod(shape[0], dtype=np.int64))


def available_ram() -> int:
    """Bytes of RAM available now (MemAvailable; Windows: the available physical memory), or total physical RAM
    where neither can be read (an 8 GiB guess as the last resort: Windows always got it before)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if os.name == "nt":
        windows = _windows_available_ram()
        if windows:
            return windows
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _windows_available_ram() -> int:
    """``GlobalMemoryStatusEx``'s available physical memory in bytes (0 when the call fails)."""
    import ctypes

    class MemoryStatus(ctypes.Structure):
        _fields_ = [("dwLength", ctypes.c_ulong), ("dwMemoryLoad", ctypes.c_ulong),
                    ("ullTotalPhys", ctypes.c_ulonglong), ("ullAvailPhys", ctypes.c_ulonglong),
                    ("ullTotalPageFile", ctypes.c_ulonglong), ("ullAvailPageFile", ctypes.c_ulonglong),
                    ("ullTotalVirtual", ctypes.c_ulonglong), ("ullAvailVirtual", ctypes.c_ulonglong),
                    ("ullAvailExtendedVirtual", ctypes.c_ulonglong)]

    status = MemoryStatus()
    status.dwLength = ctypes.sizeof(MemoryStatus)
    try:
        ok = ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status))  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        return 0
    return int(status.ullAvailPhys) if ok else 0


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


def header_problem(path: str | os.PathLike) -> Optional[InputImageError]:
    """What makes a file no 3D scalar volume, read from its header alone (a 2D or 4D image, several values per
    voxel), as :func:`read_volume` would refuse it; None when the header reads as one or cannot be read. For a reader
    that says only that it failed (Slicer's storage node)."""
    p = Path(path)
    shape = _header_shape(p)
    if shape is None:  # an unreadable header: the reader's own failure stands
        return None
    return _shape_problem(p, *shape)


def _shape_problem(p: Path, size: Sequence[int], components: int) -> Optional[InputImageError]:
    """Why a header's size and values per voxel make no 3D scalar volume (a trailing axis of 1 counts as 3D); None
    when they make one."""
    size = list(size[:3]) if len(size) == 4 and size[3] == 1 else list(size)
    if len(size) != 3:
        return _wrong_dims(p, len(size), size)
    return _multi_component(p, components) if components != 1 else None


def _check_scalar_dtype(p: Path, dtype: Any) -> None:
    """Refuse a nibabel voxel type of several values (an RGB record, a complex number): not a grey-level image."""
    dtype = np.dtype(dtype)
    if dtype.names is not None or dtype.kind == "c":
        raise _multi_component(p, len(dtype.names or ()) or 2)


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
    problem = _shape_problem(p, size, reader.GetNumberOfComponents())
    if problem is not None:
        raise problem
    _check_size(p, size[:3], max_axis, max_voxels)
    check_nifti_complete(p)
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
    _check_scalar_dtype(p, img.get_data_dtype())
    _check_size(p, shape, max_axis, max_voxels)
    check_nifti_complete(p)
    try:
        data = np.asanyarray(img.dataobj).reshape(shape)
    except Exception as exc:
        raise _corrupt(p, exc) from exc
    spacing, origin, direction = _ras_affine_to_lps(np.asarray(img.affine, dtype=np.float64))
    return Volume(_to_float32(p, data.transpose(2, 1, 0)), spacing=spacing, origin=origin, direction=direction)


def volume_from_nibabel(image: Any) -> Volume:
    """A nibabel image (``nib.load(...)`` or one made in memory) as a :class:`Volume`: its array turned from
    nibabel's (x, y, z) to this project's (z, y, x) and its RAS affine to ITK/LPS geometry. ``Volume(img.get_fdata())``
    would be read transposed, with no geometry to say so (a BraTS case then scored up to 1.7 dB lower)."""
    shape = tuple(int(n) for n in image.shape)
    name = Path(getattr(image, "get_filename", lambda: None)() or "the nibabel image")
    _check_scalar_dtype(name, image.get_data_dtype())  # an RGB image: a TypeError traceback before
    data = np.asanyarray(image.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputImageError(f"A volume must be 3D; this nibabel image has the shape {shape}.",
                              "Pass one 3D image (one volume of a 4D series, one component of a vector image).")
    spacing, origin, direction = _ras_affine_to_lps(np.asarray(image.affine, dtype=np.float64))
    return Volume(_to_float32(name, np.asarray(data).transpose(2, 1, 0)), spacing=spacing, origin=origin,
                  direction=direction)


def nifti_parts(p: Path) -> Tuple[Path, Path] | None:
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


def check_nifti_complete(p: Path) -> None:
    """Refuse a truncated NIfTI/Analyze file or one with NaN/Inf voxels.

    ITK's NIfTI reader silently pads a truncated file with zeros and turns NaN into 0, so both would reach the
    network unnoticed; this streams the voxel data once (about 0.2 s for a BraTS volume).
    """
    import struct
    import zlib

    parts = nifti_parts(p)
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
        "Re-export the image from its source; NaN usually comes from a failed processing step. If they are only the "
        "background around a skull-stripped brain (some tools write it as NaN), set them to 0 and pass the file again.",
    )


def _ras_affine_to_lps(affine: np.ndarray) -> Tuple[Vec3, Vec3, Mat9]:
    """Split a NIfTI (RAS) voxel-to-world affine into ITK (LPS) spacing, origin and direction."""
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    linear = lps[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    spacing = np.where(spacing > 0, spacing, 1.0)
    direction = linear / spacing
    return tuple(spacing.tolist()), tuple(lps[:3, 3].tolist()), tuple(direction.reshape(9).tolist())  # type: ignore[return-value]


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


__all__ = ["MAX_AXIS", "MAX_VOXELS", "available_ram", "check_nifti_complete", "header_problem", "nifti_parts",
           "read_volume", "volume_from_nibabel"]
