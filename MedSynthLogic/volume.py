"""The in-memory image: :class:`Volume` (voxels plus ITK/LPS geometry), its grid comparisons and resampling.

Arrays are float32 in z, y, x order (SimpleITK's ``GetArrayFromImage`` order); geometry is ITK/LPS with
``spacing`` and ``origin`` as (x, y, z) and ``direction`` as a row-major 3×3. The SimpleITK bridge lives here
because reading, writing and resampling all cross it; where SimpleITK cannot be imported, resampling uses scipy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Sequence, Tuple

import numpy as np

from .errors import GeometryError, InputImageError, UsageError

Vec3 = Tuple[float, float, float]
Mat9 = Tuple[float, float, float, float, float, float, float, float, float]

IDENTITY: Mat9 = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
NIFTI_SUFFIXES = (".nii", ".nii.gz")


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
        if abs(float(np.linalg.det(np.asarray(self.direction).reshape(3, 3)))) < 1e-3:
            raise InputImageError(f"The direction {self.direction} is singular: two voxel axes point the same way.",
                                  "Give the direction cosines of three independent axes (row-major 3×3).")

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


def as_volume(source: Any) -> "Volume":
    """``source`` when it is a :class:`Volume` with finite voxels; a clear error for what a Python user passes by
    mistake (a bare array, whose axis order and geometry nothing would know) or NaN/infinite voxels, which
    ``read_volume`` refuses in files and which left holes or a misleading "empty image" message."""
    if not isinstance(source, Volume):
        raise UsageError(
            f"Expected a Volume, got {type(source).__name__}.",
            "Wrap a (z, y, x) array as Volume(array, spacing=(x, y, z) mm, origin=..., direction=...), or read a file "
            "with volume_io.read_volume; from nibabel use volume_io.volume_from_nibabel(image) (its arrays are x, y, z).")
    bad = int(source.array.size - np.count_nonzero(np.isfinite(source.array)))
    if bad:
        raise InputImageError(f"The source holds {bad} voxels that are NaN or infinite.",
                              "Replace them (e.g. with 0, or the mean of their neighbours) before synthesizing.")
    return source


def ensure_not_empty(vol: Volume, what: str) -> None:
    """Refuse an all-zero volume: it has no brain to normalise or learn from (usually a wrong or blank file)."""
    if not np.any(vol.array):
        raise InputImageError(
            f"The {what} is empty (every voxel is 0).",
            "Check that you chose the right file; a blank export or a failed skull-strip gives an empty image.",
        )


def sitk_module() -> Any:
    """SimpleITK, or None where it cannot be imported (then NIfTI falls back to nibabel)."""
    try:
        import SimpleITK as sitk
    except ImportError:
        return None
    return sitk


def image_suffix(path: Path) -> str:
    """The lower-case image extension, ``.nii.gz`` counted as one."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def to_sitk_image(sitk: Any, vol: Volume) -> Any:
    """``vol`` as a SimpleITK image with its geometry."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(vol.array, dtype=np.float32), isVector=False)
    img.SetSpacing(vol.spacing)
    img.SetOrigin(vol.origin)
    img.SetDirection(vol.direction)
    return img


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


def resample_like(moving: Volume, reference: Volume, extrapolate: bool = False, fill: float = 0.0) -> Volume:
    """``moving`` linearly resampled onto ``reference``'s grid (physical space), ``fill`` outside ``moving`` (with
    ``extrapolate``, the nearest edge value there: for a grid that covers the same extent but ends a fraction of a
    voxel further out). ``fill``: the image's background, e.g. a CT's air (−1000 HU), where 0 would be soft tissue."""
    sitk = sitk_module()
    if sitk is not None:
        out = sitk.Resample(
            to_sitk_image(sitk, moving), to_sitk_image(sitk, reference), sitk.Transform(), sitk.sitkLinear, float(fill),
            sitk.sitkFloat32, extrapolate,
        )
        return reference.with_array(sitk.GetArrayFromImage(out).astype(np.float32, copy=False))
    return reference.with_array(_resample_scipy(moving, reference, extrapolate, fill))


def _index_to_world(vol: Volume) -> Tuple[np.ndarray, np.ndarray]:
    matrix = np.asarray(vol.direction, dtype=np.float64).reshape(3, 3) * np.asarray(vol.spacing)
    return matrix, np.asarray(vol.origin, dtype=np.float64)


def _resample_scipy(moving: Volume, reference: Volume, extrapolate: bool = False, fill: float = 0.0) -> np.ndarray:
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
        out[z] = (values if extrapolate else np.where(inside, values, np.float32(fill))).reshape(ny, nx)
    return out


def region_on_grid(labels: Volume, reference: Volume) -> Tuple[np.ndarray, List[str]]:
    """``labels > 0`` on ``reference``'s grid, and the ways the two grids differed (empty: read as it is). Off the
    grid the region is resampled as a region (its fraction inside, linearly, over 0.5), so a mask or a segmentation
    reads the same in ``prepare`` and ``evaluate`` whatever its label values."""
    diffs = same_grid(labels, reference)
    if not diffs:
        return labels.array > 0, []
    return resample_like(labels.with_array((labels.array > 0).astype(np.float32)), reference).array > 0.5, diffs


def field_of_view_on_grid(volume: Volume, reference: Volume) -> np.ndarray:
    """Where ``volume`` holds data on ``reference``'s grid: a target resampled onto the source's grid holds only its
    fill beyond it, which ``prepare`` warns about and ``evaluate`` does not score."""
    return region_on_grid(volume.with_array(np.ones(volume.shape, np.float32)), reference)[0]


def align_pair(source: Volume, target: Volume, policy: str = "resample", fill: float = 0.0) -> Tuple[Volume, Volume, List[str]]:
    """Put ``target`` on ``source``'s grid: unchanged if already there, resampled (``fill`` where it does not reach:
    its background), or refused (``GeometryError``).

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
    resampled = resample_like(target, source, fill=fill)
    if not np.any(resampled.array != np.float32(fill)):
        raise GeometryError(
            "The target does not overlap the source in physical space: " + "; ".join(diffs) + ".",
            "Check that both images are of the same subject and session and were not re-oriented separately.",
        )
    return source, resampled, ["Resampled the target onto the source grid (linear): " + "; ".join(diffs) + "."]


__all__ = [
    "IDENTITY",
    "Mat9",
    "NIFTI_SUFFIXES",
    "Vec3",
    "Volume",
    "align_pair",
    "ensure_not_empty",
    "image_suffix",
    "region_on_grid",
    "resample_like",
    "same_grid",
    "sitk_module",
    "to_sitk_image",
]
