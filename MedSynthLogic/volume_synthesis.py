"""One source ``Volume`` → its synthetic ``Volume``: the model's own normalisation around the array engine.

Below the file and folder layer (:mod:`.inference`) and the uncertainty map (:mod:`.uncertainty`), which both call
:func:`synthesize_volume`; above :mod:`.tiled_synthesis`, which sees only normalised arrays.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple, Union

import numpy as np
import torch

from .errors import GeometryError, UsageError
from .model_file import LoadedModel
from .progress import warning_event
from .source_requirements import brain_region, check_receptive_field
from .tiled_synthesis import CancelFn, SynthesisOptions, synthesize_array
from .voxel_size import describe as describe_voxels
from .voxel_size import needs_resampling, resampled_size

if TYPE_CHECKING:
    from .volume_io import Volume

ProgressFn = Optional[Callable[[Dict[str, Any]], None]]

__all__ = ["synthesize_volume", "mask_on_grid", "as_loaded_model", "resampled_to_training", "resampled_back"]

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
        raise GeometryError(f"The mask's size {arr.shape[::-1]} voxels (x, y, z) differs from the source's "
                            f"{source.shape[::-1]}.", "Resample the mask to the source first.")
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
    (:mod:`.orientation`), so the same brain gives the same synthesis however its file orders the voxels; one of
    another voxel size is resampled to the model's (:mod:`.voxel_size`). The image itself is not checked (a T2
    comes back as a "synthetic T2"): call ``input_checks.check_source`` first, or ``inference.synthesize_file``.
    """
    from .normalisation import denormalise_output, normalise_source
    from .orientation import axis_order

    from .volume_io import as_volume

    model, source = as_loaded_model(model), as_volume(source)
    norm_cfg = model.config.normalisation
    mask_arr = mask_on_grid(mask, source)
    check_receptive_field(model, source)  # before any reordering or resampling, so it names the file's own size
    order = axis_order(source.direction)
    if not order.is_identity:
        canonical = synthesize_volume(model, order.volume(source), None if mask_arr is None else order.forward(mask_arr),
                                      stages, device, flip_tta, tile, progress, cancel, precision)
        return source.with_array(order.inverse(canonical.array))
    trained = tuple(float(v) for v in model.config.input.spacing_mm)
    if needs_resampling(source.spacing, trained):
        return _synthesize_resampled(model, source, mask_arr, stages, device, flip_tta, tile, progress, cancel, precision)
    mask_arr = brain_region(source, mask_arr, norm_cfg.mask_threshold)
    normalised, _ = normalise_source(source.array, mask_arr, norm_cfg)
    options = SynthesisOptions(stages, device, flip_tta, tile, progress, cancel, precision)
    out = synthesize_array(model.chain, normalised, mask_arr, **options.keywords())
    return source.with_array(np.asarray(denormalise_output(out, norm_cfg), dtype=np.float32))


def _synthesize_resampled(model: LoadedModel, source: "Volume", mask: Optional[np.ndarray], *options: Any) -> "Volume":
    """Synthesize on a copy of the source resampled to the model's training voxel size (linear), then resample the
    result back onto the source's grid; outside the source's mask the output is the background value, as ever.

    The networks count voxels, not millimetres: a 0.5 mm T1ce showed them half the anatomy they were trained on
    (docs/evaluation/input_checks/RESAMPLING.md)."""
    on_grid, grid_mask = resampled_to_training(model, source, mask, options[4])
    return resampled_back(model, source, mask, synthesize_volume(model, on_grid, grid_mask, *options), grid_mask)


def resampled_to_training(model: LoadedModel, source: "Volume", mask: Optional[np.ndarray], progress: ProgressFn
                          ) -> Tuple["Volume", Optional[np.ndarray]]:
    """The source (and a given mask) resampled to the model's training voxel size, with a warning event saying so.

    The grid starts at the source's first voxel edge, so both cover the same extent, and the edge values extend to
    the fraction of a voxel where their ends differ (a brain reaching the image's edge came back 0 there). A given
    mask keeps the coarse voxels it mostly covers, or, for a mask too thin for any, every one it touches."""
    from .volume import IDENTITY, Volume, resample_like

    trained = tuple(float(v) for v in model.config.input.spacing_mm)
    shape_xyz = resampled_size(source.shape[::-1], source.spacing, trained)
    offset = 0.5 * (np.asarray(trained) - np.asarray(source.spacing))  # along the source's own axes
    shift = np.asarray(source.direction, np.float64).reshape(3, 3) @ offset
    grid = Volume(np.zeros(shape_xyz[::-1], np.float32), trained, tuple(np.asarray(source.origin) + shift),
                  source.direction)
    # Both grids share the source's direction, so the resampling is a scaling along its axes: done on axis-aligned
    # copies, an oblique direction's rounding cannot put values of 1e-7 in the background, which the threshold mask
    # read as brain (an oblique 1×1×3 mm source gave another synthesis than the same voxels stored aligned).
    flat_grid = Volume(grid.array, trained, tuple(offset), IDENTITY)

    def on_grid(array: np.ndarray) -> np.ndarray:
        return resample_like(Volume(array, source.spacing, (0.0, 0.0, 0.0), IDENTITY), flat_grid, True).array

    coarse_mask = None
    if mask is not None:
        cover = on_grid(mask.astype(np.float32))
        coarse_mask = cover > 0.5 if np.any(cover > 0.5) else cover > 0
    if progress:
        progress(warning_event("synthesize", f"the source's voxels ({describe_voxels(source.spacing)}) differ from the "
                               f"{describe_voxels(trained)} the model was trained on: it is synthesized resampled to those and the "
                               "result resampled back to the source's grid"))
    return grid.with_array(on_grid(source.array)), coarse_mask


def resampled_back(model: LoadedModel, source: "Volume", mask: Optional[np.ndarray], result: "Volume",
                   covered: Optional[np.ndarray], background: Optional[float] = None) -> "Volume":
    """A result computed on the training grid, back on the source's grid; outside the source's mask (given, else its
    threshold mask) the ``background`` (default: what 0 network units denormalise to; 0 for a map).

    With a given mask (``covered``: its coarse copy) only the coarse voxels inside it are interpolated from (a
    weighted mean): outside it the coarse result is background, not the tissue the source holds there, and the mask's
    rim read half its value. Without one the plain interpolation keeps the skull-stripped brain's partial-volume rim,
    as the source has it."""
    from .normalisation import brain_mask, denormalise_output
    from .volume import resample_like

    norm_cfg = model.config.normalisation
    inside = mask if mask is not None else brain_mask(source.array, norm_cfg.mask_threshold)
    if background is None:
        background = float(np.asarray(denormalise_output(np.zeros(1, np.float32), norm_cfg)).reshape(-1)[0])
    back = resample_like(result, source, True).array
    if covered is not None:
        total = resample_like(result.with_array(np.where(covered, result.array, 0).astype(np.float32)), source,
                              True).array
        share = resample_like(result.with_array(covered.astype(np.float32)), source, True).array
        back = np.where(share > 1e-3, total / np.maximum(share, 1e-3), back)
    return source.with_array(np.where(inside, back, background).astype(np.float32))


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
