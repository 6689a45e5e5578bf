"""One source ``Volume`` → its synthetic ``Volume``: the model's own normalisation around the array engine.

Below the file and folder layer (:mod:`.inference`) and the uncertainty map (:mod:`.uncertainty`), which both call
:func:`synthesize_volume`; above :mod:`.tiled_synthesis`, which sees only normalised arrays.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Union

import numpy as np
import torch

from .errors import GeometryError, InputImageError, UsageError
from .model_file import LoadedModel
from .tiled_synthesis import CancelFn, SynthesisOptions, synthesize_array

if TYPE_CHECKING:
    from .volume_io import Volume

ProgressFn = Optional[Callable[[Dict[str, Any]], None]]

__all__ = ["synthesize_volume", "check_receptive_field", "mask_on_grid", "as_loaded_model", "MIN_EDGE"]

#: Thinnest source edge accepted: a U-Net sees far more than this, but a thinner volume is not a brain scan.
MIN_EDGE = 32


def mask_on_grid(mask: Union["Volume", np.ndarray, None], source: "Volume") -> Optional[np.ndarray]:
    """A given mask as booleans on the source's grid, refused if it lies on another grid; ``None`` stays ``None``."""
    if mask is None:
        return None
    if hasattr(mask, "array") and hasattr(mask, "spacing"):
        from .volume_io import same_grid

        diffs = same_grid(mask, source)
        if diffs:
            raise GeometryError("The mask is not on the source's grid: " + "; ".join(diffs) + ".", "Resample the mask to the source first.")
        arr = np.asarray(mask.array)
    else:
        arr = np.asarray(mask)
    if arr.shape != source.shape:
        raise GeometryError(f"The mask's shape {arr.shape} differs from the source's {source.shape}.")
    return arr > 0


def synthesize_volume(
    model: Union[LoadedModel, str, "os.PathLike[str]"],
    source: "Volume",
    mask: Union["Volume", np.ndarray, None] = None,
    stages: Optional[int] = None,
    device: Union[str, torch.device] = "auto",
    flip_tta: bool = False,
    tile: Optional[int] = None,
    progress: ProgressFn = None,
    cancel: CancelFn = None,
    precision: str = "auto",
) -> "Volume":
    """A source ``Volume`` → the synthetic target ``Volume`` in target units on exactly the source's grid.

    The source is normalised with the model's own normalisation (so training and inference agree); the mask is
    ``mask`` (a Volume on the same grid, nonzero = brain, or a boolean array) or the model's threshold mask of the
    source. Outside the mask the output is what 0 network units denormalise to (0 for MR; the window's lower
    end, e.g. −1000 HU, for CT).

    A source stored in another axis order than the training data's runs in that order and comes back in its own
    (:mod:`.orientation`), so the same brain gives the same synthesis however its file orders the voxels.
    """
    from .normalisation import brain_mask, denormalise_output, normalise_source
    from .orientation import axis_order

    from .volume_io import as_volume

    model, source = as_loaded_model(model), as_volume(source)
    norm_cfg = model.config.normalisation
    check_receptive_field(model, source)
    mask_arr = mask_on_grid(mask, source)
    order = axis_order(source.direction)
    if not order.is_identity:
        canonical = synthesize_volume(model, order.volume(source), None if mask_arr is None else order.forward(mask_arr),
                                      stages, device, flip_tta, tile, progress, cancel, precision)
        return source.with_array(order.inverse(canonical.array))
    if mask_arr is None:
        mask_arr = brain_mask(source.array, norm_cfg.mask_threshold)
    if not mask_arr.any() and not np.any(source.array):
        raise InputImageError("The source is empty: every voxel is 0.",
                              "Check that the right image was exported (an empty series or a failed conversion).")
    if not mask_arr.any():
        raise InputImageError(
            "The brain mask is empty: no voxel of the source is above the mask threshold "
            f"({norm_cfg.mask_threshold:g}) or inside the given mask.",
            "Pass a skull-stripped source or a brain mask (--mask).",
        )
    normalised, _ = normalise_source(source.array, mask_arr, norm_cfg)
    options = SynthesisOptions(stages, device, flip_tta, tile, progress, cancel, precision)
    out = synthesize_array(model.chain, normalised, mask_arr, **options.keywords())
    return source.with_array(np.asarray(denormalise_output(out, norm_cfg), dtype=np.float32))


def as_loaded_model(model: Union[LoadedModel, str, "os.PathLike[str]"], stages: Optional[int] = None) -> LoadedModel:
    """``model`` itself, or the model file it names loaded (its first ``stages`` generators; None: all), so every
    synthesis entry point takes either."""
    from .model_file import load_model

    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, (str, os.PathLike)):
        return load_model(model, device="cpu", stages=stages)
    raise UsageError(f"Expected a model (load_model(path)) or a model file's path, got {type(model).__name__}.",
                     "Pass MedSynthLogic.model_file.load_model(path), or the path itself.")


def check_receptive_field(model: LoadedModel, source: "Volume") -> None:
    """Refuse a volume thinner than one generator's receptive field (at most ``MIN_EDGE``) along any axis.

    Tiled synthesis would still run (the border is edge-padded), but every output voxel would then be computed
    mostly from repeated border voxels: a plausible-looking image that no training patch resembled. Such a
    volume is a thumbnail, a few slices or a wrong file, so saying so beats returning it.
    """
    field = min(model.config.generator.receptive_field, MIN_EDGE)
    if min(source.shape) < field:
        raise InputImageError(
            f"The source is too small to synthesize: {source.shape[::-1]} voxels (x, y, z), but the model's "
            f"receptive field needs at least {field} voxels along each axis.",
            "Use the full 3D brain volume (about 1 mm voxels), not a crop, a thumbnail or a few slices.",
        )
