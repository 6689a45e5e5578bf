"""An uncertainty map beside the synthesis: where two things the model should agree on do not.

Two disagreements are measured, each by re-running :func:`.tiled_synthesis.synthesize_array` (never by changing it):

- **flip**: ``|S(x) − mirror(S(mirror(x)))|``, the plain synthesis against the synthesis of the left–right (array
  axis 2) mirrored source, mirrored back (each network window mirrored in place, :mod:`.left_right`, so a model
  that treats both sides alike has no flip part at all). Brains are nearly symmetric and training saw both
  orientations, so a model that is sure of a voxel gives it the same value both ways.
- **stages**: ``|S_n(x) − S_(n−1)(x)|``, the last auto-context stage against the one before it. Where the last
  stage still moves the image a lot, the chain has not settled. For a one-stage model on a prior model, the
  stage against the prior's synthesis it refines; absent for a plain one-stage model.

The map is the root mean square of the available parts, ``sqrt((flip² + stages²) / 2)`` (just ``flip`` for one
stage), in the synthetic image's own unit (for the bundled model: 1000 = the T2's 99.5th percentile in the
brain; HU for a CT target), and 0 outside the brain mask. That is a disagreement, not an error estimate. A model
file that holds a learned error map (:mod:`.error_map`, fitted to that model's error on its training cases) gives
instead its **expected absolute error** per voxel, from the same parts plus the source and the synthesis, in the
same unit. How well either predicts the real error is measured in docs/evaluation/UNCERTAINTY.md.

Cost: the main synthesis plus one pass per part (plus one plain pass when the main synthesis is flip-averaged),
so about three times a plain synthesis for the bundled model.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from .enhancement import enhancement_stats
from .error_map import FEATURES, IMAGE_FEATURES, error_features
from .errors import OutputError
from .tiled_synthesis import SynthesisOptions, synthesize_array
from .volume_synthesis import as_loaded_model, mask_on_grid, resampled_back, resampled_to_training, synthesize_volume
from .voxel_size import needs_resampling

if TYPE_CHECKING:
    import torch

    from .model_file import LoadedModel
    from .orientation import AxisOrder
    from .volume_io import Volume

PathLike = Union[str, os.PathLike]
ProgressFn = Optional[Callable[[Dict[str, Any]], None]]

__all__ = ["UncertainSynthesis", "combine_parts", "error_map_rows", "image_feature_values", "synthesize_with_uncertainty",
           "check_uncertainty_path", "uncertainty_metadata"]


@dataclasses.dataclass
class UncertainSynthesis:
    """The synthesis and its uncertainty map (both ``Volume`` on the source's grid, same unit), with the parts."""

    synthesis: "Volume"
    uncertainty: "Volume"
    flip: np.ndarray
    stages: Optional[np.ndarray]

    def restored(self, source: "Volume", order: "AxisOrder") -> "UncertainSynthesis":
        """This result, computed in the canonical axis order (:mod:`.orientation`), on ``source``'s own grid."""
        return UncertainSynthesis(
            synthesis=source.with_array(order.inverse(self.synthesis.array)),
            uncertainty=source.with_array(order.inverse(self.uncertainty.array)),
            flip=order.inverse(self.flip),
            stages=None if self.stages is None else order.inverse(self.stages),
        )


    def resampled(self, model: "LoadedModel", source: "Volume", mask: Optional[np.ndarray], grid: "Volume",
                  covered: Optional[np.ndarray]) -> "UncertainSynthesis":
        """This result, computed on the training grid ``grid`` (inside ``covered``, a given mask's coarse copy), on
        ``source``'s own grid (0 outside the brain for the map and its parts)."""
        def back(array: np.ndarray) -> np.ndarray:
            return resampled_back(model, source, mask, grid.with_array(array), covered, background=0.0).array

        return UncertainSynthesis(
            synthesis=resampled_back(model, source, mask, self.synthesis, covered),
            uncertainty=source.with_array(back(self.uncertainty.array)),
            flip=back(self.flip),
            stages=None if self.stages is None else back(self.stages),
        )


def image_feature_values(source: np.ndarray, mask: np.ndarray) -> Tuple[float, ...]:
    """The source's values of :data:`.error_map.IMAGE_FEATURES`, in that order: the enhancement note's statistics of
    those names; 0 for each when too little brain is left to measure them."""
    stats = enhancement_stats(source, mask)
    if stats is None:
        return (0.0,) * len(IMAGE_FEATURES)
    return tuple(float(getattr(stats, name.replace(" ", "_"))) for name in IMAGE_FEATURES)


def error_map_rows(names: Sequence[str], synthesis: np.ndarray, source: np.ndarray, flip: np.ndarray,
                   stages: Optional[np.ndarray], mask: np.ndarray, scale: float) -> np.ndarray:
    """The feature rows a map reading ``names`` (one of :data:`.error_map.FEATURE_SETS`) needs: the voxel features,
    and the image's when it reads them; the one place both the fit and the synthesis build them."""
    image = image_feature_values(source, mask) if len(names) > len(FEATURES) else ()
    return error_features(synthesis, source, flip, stages, mask, scale, image=image)


def combine_parts(flip: np.ndarray, stages: Optional[np.ndarray]) -> np.ndarray:
    """The map from its parts: their root mean square (so it stays in their unit), or ``flip`` alone."""
    flip = np.asarray(flip, dtype=np.float32)
    if stages is None:
        return flip.copy()
    stages = np.asarray(stages, dtype=np.float32)
    return np.sqrt(0.5 * (flip * flip + stages * stages)).astype(np.float32)


def check_uncertainty_path(
    path: PathLike, output_path: PathLike, overwrite: bool = False, inputs: Sequence[PathLike] = ()
) -> Path:
    """Refuse, before any work, an uncertainty path that is the synthesis's own path, an input, exists, a folder, or
    has no image ending the writer knows (it was refused only after every pass, with nothing written)."""
    from .atomic import same_place
    from .volume_io import check_image_output

    if Path(path).is_dir():  # check_image_output's words would offer the synthesis's own name for the map
        raise OutputError(f"The uncertainty map's path {path} is a folder.",
                          f"Give the map a file name, e.g. {Path(path) / 'uncertainty.nii.gz'}.")
    if same_place(path, output_path):
        raise OutputError(
            f"The uncertainty map and the synthetic image would both be written to {path}.",
            "Give the uncertainty map its own file name.",
        )
    return check_image_output(path, overwrite=overwrite, inputs=tuple(inputs))


class _PassProgress:
    """Relays one pass's progress events as part of several: fraction rescaled, task named after the pass."""

    def __init__(self, callback: ProgressFn, index: int, passes: int, task: str) -> None:
        self.callback, self.index, self.passes, self.task = callback, index, passes, task

    def __call__(self, event: Dict[str, Any]) -> None:
        if self.callback is None:
            return
        if event.get("event") != "progress":
            self.callback(event)
            return
        fraction = (self.index + float(event.get("fraction", 0.0))) / self.passes
        self.callback({**event, "task": self.task, "pass": self.index + 1, "passes": self.passes, "fraction": round(fraction, 6)})


def uncertainty_metadata(model: "LoadedModel", stages: Optional[int] = None) -> Dict[str, str]:
    """The header note of an uncertainty map file: what it holds and in which unit (NIfTI's 80-character
    description), so the file says so when it is opened apart from its synthesis."""
    learned = model.error_map is not None and (stages is None or int(stages) == model.config.stages)
    what = "expected |error|" if learned else "flip/stage disagreement"
    return {"ITK_FileNotes": f"MedSynth {what} of the synthetic {model.config.target_name}, in its unit"[:79]}


def _mask_of(model: "LoadedModel", source: "Volume", mask: Union["Volume", np.ndarray, None]) -> np.ndarray:
    """The brain mask synthesize_volume uses (given mask > 0, else the model's threshold mask of the source)."""
    from .normalisation import brain_mask

    if mask is None:
        return brain_mask(source.array, model.config.normalisation.mask_threshold)
    return np.asarray(getattr(mask, "array", mask)) > 0


def synthesize_with_uncertainty(
    model: "LoadedModel",
    source: "Volume",
    mask: Union["Volume", np.ndarray, None] = None,
    stages: Optional[int] = None,
    device: Union[str, "torch.device"] = "auto",
    flip_tta: bool = False,
    tile: Optional[int] = None,
    progress: ProgressFn = None,
    cancel: Any = None,
    precision: str = "auto",
) -> UncertainSynthesis:
    """``synthesize_volume``'s result (same arguments, same checks) plus the uncertainty map described above.

    The synthesis is exactly what ``synthesize_volume`` returns for these arguments; the parts always compare
    plain (not flip-averaged) passes, so ``flip_tta`` changes the synthesis, not the map. A learned error map is
    used for the model's full chain only (``stages`` None or all of them): it was fitted for that synthesis.
    """
    from .normalisation import denormalise_output, normalise_source
    from .orientation import axis_order

    from .volume_io import as_volume

    model, source = as_loaded_model(model), as_volume(source)
    order = axis_order(source.direction)
    if not order.is_identity:  # the mirrored pass must mirror left-right, whatever the file's axis order
        mask_arr = mask_on_grid(mask, source)
        result = synthesize_with_uncertainty(model, order.volume(source), None if mask_arr is None else order.forward(mask_arr),
                                             stages, device, flip_tta, tile, progress, cancel, precision)
        return result.restored(source, order)
    if needs_resampling(source.spacing, tuple(float(v) for v in model.config.input.spacing_mm)):
        mask_arr = mask_on_grid(mask, source)  # the whole map on the training grid, then back: one interpolation
        on_grid, grid_mask = resampled_to_training(model, source, mask_arr, progress)
        result = synthesize_with_uncertainty(model, on_grid, grid_mask, stages, device, flip_tta, tile, progress,
                                             cancel, precision)
        return result.resampled(model, source, mask_arr, on_grid, grid_mask)
    chain = model.chain
    n = len(chain.stages) if stages is None else int(stages)
    # the synthesis before the last stage: the stage before it, or for a one-stage model on a prior, the prior's
    previous_of: Optional[Tuple[Any, Optional[int]]] = (chain, n - 1) if n >= 2 else (chain.prior, None) if chain.prior is not None else None
    extra = ["mirrored"] + (["plain"] if flip_tta else []) + (["previous stage"] if previous_of else [])
    passes = 1 + len(extra)
    options = SynthesisOptions(stages, device, flip_tta, tile, _PassProgress(progress, 0, passes, "synthesize"),
                               cancel, precision)
    synthesis = synthesize_volume(model, source, mask=mask, **options.keywords())
    mask_arr = _mask_of(model, source, mask)
    norm_cfg = model.config.normalisation
    normalised, _ = normalise_source(source.array, mask_arr, norm_cfg)

    def run(index: int, name: str, n_stages: Optional[int], of: Any = chain, mirrored: bool = False) -> np.ndarray:
        """One pass (not flip-averaged) of ``n_stages`` stages of ``of``, with its own share of the progress."""
        part = dataclasses.replace(options, stages=n_stages, flip_tta=False,
                                   progress=_PassProgress(progress, index, passes, f"uncertainty ({name})"))
        out = synthesize_array(of, normalised, mask_arr, **part.keywords(), mirrored=mirrored)
        return np.asarray(denormalise_output(out, norm_cfg), dtype=np.float32)

    index = {name: i + 1 for i, name in enumerate(extra)}
    mirrored = run(index["mirrored"], "mirrored", n, mirrored=True)
    plain = run(index["plain"], "plain", n) if flip_tta else synthesis.array
    flip = np.abs(plain - mirrored) * mask_arr
    stage_part = None
    if previous_of is not None:
        previous = run(index["previous stage"], "previous stage", previous_of[1], previous_of[0])
        stage_part = np.abs(plain - previous) * mask_arr
    if model.error_map is not None and n == model.config.stages:
        scale = float(norm_cfg.output_scale)
        rows = error_map_rows(model.error_map.features, plain, source.array, flip, stage_part, mask_arr, scale)
        combined = np.zeros(mask_arr.shape, dtype=np.float32)
        combined[mask_arr] = model.error_map.predict(rows) * np.float32(scale)
    else:
        combined = combine_parts(flip, stage_part) * mask_arr
    return UncertainSynthesis(
        synthesis=synthesis,
        uncertainty=source.with_array(combined.astype(np.float32)),
        flip=flip.astype(np.float32),
        stages=None if stage_part is None else stage_part.astype(np.float32),
    )
