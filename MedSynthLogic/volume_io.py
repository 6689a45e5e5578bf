"""Files ↔ :class:`Volume`: the one import for reading, writing and aligning 3D scalar images.

The work is in three modules, each with one job: :mod:`.volume` (the in-memory image, its grid comparisons and
resampling), :mod:`.volume_read` (files → Volume, refusing unusable inputs) and :mod:`.volume_write`
(Volume → files, atomically). Callers import from here, so that split stays an internal matter.
"""

from __future__ import annotations

from .volume import (
    IDENTITY, NIFTI_SUFFIXES, Mat9, Vec3, Volume, align_pair, as_volume, ensure_not_empty, field_of_view_on_grid,
    region_on_grid, resample_like, same_grid,
)
from .volume_read import MAX_AXIS, MAX_VOXELS, available_ram, header_voxels, read_volume, volume_from_nibabel
from .volume_write import TWO_FILE_SUFFIXES, WRITABLE_SUFFIXES, check_image_output, write_volume

__all__ = [
    "IDENTITY",
    "MAX_AXIS",
    "MAX_VOXELS",
    "NIFTI_SUFFIXES",
    "TWO_FILE_SUFFIXES",
    "WRITABLE_SUFFIXES",
    "Mat9",
    "Vec3",
    "Volume",
    "align_pair",
    "as_volume",
    "available_ram",
    "check_image_output",
    "ensure_not_empty",
    "field_of_view_on_grid",
    "header_voxels",
    "read_volume",
    "region_on_grid",
    "resample_like",
    "same_grid",
    "volume_from_nibabel",
    "write_volume",
]
