"""What a source must be before any synthesis runs: big enough for the networks to see it whole, not empty.

Torch-free, so the Slicer panel asks it before it launches a synthesis without loading PyTorch into Slicer's own
process (``volume_synthesis`` imports torch, and the panel's import of it did, on every first Synthesize).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Tuple, Union

import numpy as np

from .errors import InputImageError
from .voxel_size import size_seen

if TYPE_CHECKING:
    from .config import ModelConfig
    from .model_file import LoadedModel
    from .volume_io import Volume

__all__ = ["MIN_EDGE", "brain_region", "check_not_empty", "check_receptive_field"]

#: Thinnest source edge accepted: a U-Net sees far more than this, but a thinner volume is not a brain scan.
MIN_EDGE = 32


def brain_region(source: "Volume", mask: Optional[np.ndarray], threshold: float) -> np.ndarray:
    """The region synthesized: the given mask, else the source above ``threshold``; refused when empty (an all-zero
    source, an empty mask file, a source with nothing above the threshold). A folder's synthesis asks it of every
    file before the first, so it cannot stop part-way on one of them."""
    from .normalisation import brain_mask

    given = mask is not None
    region = mask if given else brain_mask(source.array, threshold)
    if region.any():
        return region
    check_not_empty(source)
    if given:
        raise InputImageError("The given brain mask is empty: none of its voxels is nonzero.",
                              "Check the mask file: the brain must be its nonzero voxels, on the source's grid.")
    raise InputImageError(
        f"The brain mask is empty: no voxel of the source is above the mask threshold ({threshold:g}).",
        "Pass a skull-stripped source or a brain mask (--mask).",
    )


def check_not_empty(source: "Volume") -> None:
    """Refuse a source whose every voxel is 0 (an empty series, a failed conversion): it holds no brain. The panel
    asks before it launches the synthesis, which would refuse it only once PyTorch is loaded."""
    if not np.any(source.array):
        raise InputImageError("The source is empty: every voxel is 0.",
                              "Check that the right image was exported (an empty series or a failed conversion).")


def check_receptive_field(model: Union[LoadedModel, "ModelConfig"], source: "Volume") -> None:
    """Refuse a volume thinner than one generator's receptive field (at most ``MIN_EDGE``) along any axis.

    Tiled synthesis would still run (the border is edge-padded), but every output voxel would then be computed
    mostly from repeated border voxels: a plausible-looking image that no training patch resembled. Such a
    volume is a thumbnail, a few slices or a wrong file, so saying so beats returning it.
    """
    config = getattr(model, "config", model)  # a model, or the configuration of one (the panel has only its header)
    field = min(config.generator.receptive_field, MIN_EDGE)
    seen = _shape_seen(config, source)
    if min(seen) < field:
        resampled = f" once resampled to the model's voxel size, {seen[::-1]}" if seen != tuple(source.shape) else ""
        raise InputImageError(
            f"The source is too small to synthesize: {source.shape[::-1]} voxels (x, y, z){resampled}, but the "
            f"model's receptive field needs at least {field} voxels along each axis.",
            "Use the full 3D brain volume (about 1 mm voxels), not a crop, a thumbnail or a few slices.",
        )


def _shape_seen(config: "ModelConfig", source: "Volume") -> Tuple[int, ...]:
    """The (z, y, x) size the networks see: the source's, or that of its resampling to the training voxel size (in
    the file's axis order; the check only compares its smallest edge)."""
    from .orientation import axis_order

    order = axis_order(source.direction)
    trained = order.inverse_spacing(tuple(float(v) for v in config.input.spacing_mm))
    return size_seen(source.shape[::-1], source.spacing, trained)[::-1]
