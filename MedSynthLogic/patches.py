"""Vectorised patch sampling and extraction on padded volumes.

Conventions (shared by ``dataset_prep``, ``h5data`` and the trainer):

* Volumes are padded by the generator halo ``h`` on every side (:func:`pad_volume`, edge mode), so an
  ``S``³ source patch whose ``T``³ centre (``T = S - 2h``) touches the image border is still fully defined,
  exactly as at inference time where the whole volume is padded the same way.
* A patch is identified by the (z, y, x) *corner* of its ``S``³ source cube in the padded grid. Its centre
  voxel is ``corner + S // 2`` in the padded grid, and its ``T``³ target cube covers
  ``[corner, corner + T)`` in the original (unpadded) grid.
* Valid corners are ``0 <= corner <= padded_shape - S`` per axis. (A ``unet3d`` patch file may record negative
  corners: ``dataset_prep.fill_to_patch`` cuts a volume shorter than the crop with zeros around it.)

Extraction uses ``sliding_window_view`` plus advanced indexing, so cutting thousands of patches is one numpy
operation that copies only the requested voxels, with no Python loop over patches or voxels.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .errors import DataError

__all__ = [
    "pad_volume",
    "valid_corner_range",
    "sample_corners",
    "sample_centres",
    "extract_patches",
    "centre_crop",
    "flip_patches",
]


def pad_volume(arr: np.ndarray, halo: int, mode: str = "edge") -> np.ndarray:
    """Pad the last three (spatial) axes by ``halo`` voxels each side, so border patches are valid.

    Edge mode repeats the border voxel, matching what tiled inference does, so training and inference see
    the same kind of context at the image border. Leading (channel) axes are not padded.
    """
    arr = np.asarray(arr)
    if arr.ndim < 3:
        raise ValueError(f"pad_volume needs at least 3 axes, got shape {arr.shape}.")
    if halo < 0:
        raise ValueError(f"halo must be >= 0, got {halo}.")
    if halo == 0:
        return arr.copy()
    widths = [(0, 0)] * (arr.ndim - 3) + [(halo, halo)] * 3
    if mode == "constant":
        return np.pad(arr, widths, mode="constant", constant_values=0)
    return np.pad(arr, widths, mode=mode)


def cut_window(arr: np.ndarray, window: Sequence[Sequence[int]], mode: str = "edge") -> np.ndarray:
    """``arr`` over the half-open ``window`` ((start, stop) per axis), which may pass its edges: beyond them the
    border voxels are repeated (``edge``, as inference pads a volume) or zeros (``constant``, background)."""
    inner = tuple(slice(max(a, 0), min(b, n)) for (a, b), n in zip(window, arr.shape))
    pad = [(max(0, -a), max(0, b - n)) for (a, b), n in zip(window, arr.shape)]
    block = arr[inner]
    if any(p != (0, 0) for p in pad):
        block = np.pad(block, pad, mode=mode)
    return np.ascontiguousarray(block)


def valid_corner_range(padded_shape: Sequence[int], size: int) -> np.ndarray:
    """Largest valid corner per axis (inclusive); negative means the volume is smaller than a patch."""
    return np.asarray(padded_shape[-3:], dtype=np.int64) - int(size)


def sample_corners(
    mask_padded: np.ndarray,
    n: int,
    size: int,
    rng: np.random.Generator,
    inside_fraction: float = 1.0,
) -> np.ndarray:
    """Draw ``n`` corners of ``size``³ patches in the padded grid, most of them centred in the brain mask.

    ``round(n * inside_fraction)`` corners have their centre voxel (``corner + size // 2``) on a nonzero
    voxel of ``mask_padded`` (drawn without replacement while there are enough mask voxels, so patches
    do not repeat); the rest are uniform over all valid corners, so the network also sees background and
    the skull-stripping edge. Returns int64 ``(n, 3)`` (z, y, x), sorted for cache-friendly extraction.
    """
    mask = np.asarray(mask_padded)
    if mask.ndim != 3:
        raise ValueError(f"mask_padded must be 3D (Z, Y, X), got shape {mask.shape}.")
    if not 0.0 <= inside_fraction <= 1.0:
        raise ValueError(f"inside_fraction must be in [0, 1], got {inside_fraction}.")
    n = int(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}.")
    hi = valid_corner_range(mask.shape, size)
    if np.any(hi < 0):
        raise DataError(
            f"The padded volume {tuple(mask.shape)} is smaller than a {size}³ patch.",
            "Use larger volumes or a smaller source_patch.",
        )
    n_inside = int(round(n * inside_fraction))
    n_any = n - n_inside
    corners = np.empty((n, 3), dtype=np.int64)
    if n_inside:
        half = size // 2
        # Centres allowed by the corner range: [half, hi + half] per axis. Restrict the mask to that box.
        box = mask[half : hi[0] + half + 1, half : hi[1] + half + 1, half : hi[2] + half + 1]
        flat = np.flatnonzero(box)
        if flat.size == 0:
            raise DataError(
                "The brain mask is empty where patches can be centred.",
                "Check the mask (or the mask threshold for skull-stripped images).",
            )
        pick = rng.choice(flat.size, size=n_inside, replace=n_inside > flat.size)
        centres = np.stack(np.unravel_index(flat[pick], box.shape), axis=1)
        # A centre at box index b is padded index b + half, so its corner is b itself.
        corners[:n_inside] = centres
    if n_any:
        corners[n_inside:] = rng.integers(0, hi + 1, size=(n_any, 3))
    order = np.lexsort((corners[:, 2], corners[:, 1], corners[:, 0]))
    return corners[order]


def sample_centres(mask: np.ndarray, n: int, rng: np.random.Generator, margin: int = 0) -> np.ndarray:
    """Draw ``n`` voxel centres (z, y, x) inside ``mask`` at least ``margin`` voxels from the border: the corners
    :func:`sample_corners` draws for a window of ``2 · margin + 1``, moved to the window's centre."""
    mask = np.asarray(mask)
    size = 2 * int(margin) + 1
    return sample_corners(mask, n, size, rng, inside_fraction=1.0) + margin


def _as_channels(vol: np.ndarray) -> np.ndarray:
    vol = np.asarray(vol)
    if vol.ndim == 3:
        return vol[None]
    if vol.ndim != 4:
        raise ValueError(f"Expected a volume (C, Z, Y, X) or (Z, Y, X), got shape {vol.shape}.")
    return vol


def extract_patches(vol: np.ndarray, corners: Union[np.ndarray, Sequence[Sequence[int]]], size: int) -> np.ndarray:
    """Cut ``size``³ cubes at ``corners`` from ``vol`` (C, Z, Y, X) → (n, C, size, size, size), one numpy op.

    A 3D ``vol`` is treated as one channel. Corners out of range raise ``ValueError`` (a bug in the caller,
    not a data problem), instead of the silent wrap-around negative indices would give.
    """
    v = _as_channels(vol)
    c = np.asarray(corners, dtype=np.int64).reshape(-1, 3)
    hi = valid_corner_range(v.shape, size)
    if c.size and (np.any(c < 0) or np.any(c > hi)):
        bad = c[np.any((c < 0) | (c > hi), axis=1)][0]
        raise ValueError(f"Patch corner {tuple(int(x) for x in bad)} is outside [0, {tuple(int(x) for x in hi)}] for size {size}.")
    if np.any(hi < 0):
        raise ValueError(f"Volume {v.shape[1:]} is smaller than a {size}³ patch.")
    windows = sliding_window_view(v, (size, size, size), axis=(1, 2, 3))
    out = windows[:, c[:, 0], c[:, 1], c[:, 2]]
    return np.ascontiguousarray(np.moveaxis(out, 1, 0))


def centre_crop(patches: np.ndarray, out_size: int) -> np.ndarray:
    """The central ``out_size``³ of each patch (last three axes): the voxels the generator predicts."""
    size = patches.shape[-1]
    if patches.shape[-3:] != (size, size, size):
        raise ValueError(f"centre_crop needs cubic patches, got {patches.shape[-3:]}.")
    if not 0 < out_size <= size:
        raise ValueError(f"out_size must be in [1, {size}], got {out_size}.")
    a = (size - out_size) // 2
    b = a + out_size
    return patches[..., a:b, a:b, a:b]


def flip_patches(patches: np.ndarray, flip_axis: int, flipped: Optional[np.ndarray] = None) -> np.ndarray:
    """Flip patches (…, Z, Y, X) along the volume axis ``flip_axis`` (0=z, 1=y, 2=x).

    With ``flipped`` (bool per patch) only those patches are flipped; the others are returned unchanged.
    """
    if flip_axis not in (0, 1, 2):
        raise ValueError(f"flip_axis must be 0, 1 or 2, got {flip_axis}.")
    axis = patches.ndim - 3 + flip_axis
    if flipped is None:
        return np.flip(patches, axis=axis).copy()
    out = np.array(patches, copy=True)
    sel = np.asarray(flipped, dtype=bool)
    if sel.any():
        out[sel] = np.flip(out[sel], axis=axis)
    return out
