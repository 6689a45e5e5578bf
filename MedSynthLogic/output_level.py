"""``medsynth fit-level``: fit a model's output level on its training cases and write the model file with it.

The level (:class:`~.config.OutputLevel`) is the median, over the training cases, of the in-brain 99.5th percentile
of the model's own synthesis: the brightness its training targets were scaled to, as the model reproduces it. A
file with a level scales every synthesis to it (:func:`~.normalisation.apply_output_level`), which removes the
case-to-case swing in overall brightness without touching the weights. Fit it on training cases only: on the cases
a model is scored on, it would borrow their answers.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Sequence, Union

import numpy as np

from .config import OutputLevel
from .errors import UsageError
from .model_file import LoadedModel, load_model, save_model
from .progress import progress_event

if TYPE_CHECKING:
    from .dataset_prep import Case

PathLike = Union[str, "os.PathLike[str]"]
ProgressFn = Optional[Callable[[dict], None]]

__all__ = ["fit_output_level", "write_model_with_level"]


def fit_output_level(
    model: LoadedModel, cases: Sequence[Case], percentile: float = 99.5, device: str = "auto", precision: str = "auto",
    progress: ProgressFn = None,
) -> Dict[str, Any]:
    """The level of ``model`` (all its loaded stages) on ``cases``: ``{"value", "stages", "percentile", "per_case"}``.

    Each case's source is synthesized with any level the file already has switched off; ``per_case`` holds each
    synthesis's in-brain ``percentile`` in network units, ``value`` their median.
    """
    from .normalisation import brain_mask
    from .volume_io import read_volume
    from .volume_synthesis import synthesize_volume

    norm = model.config.normalisation
    if norm.target.mode == "window":
        raise UsageError("An output level applies to MR targets; this model's target is a window (CT) unit.",
                         "Use the model as it is.")
    if not cases:
        raise UsageError("fit-level needs at least one training case.", "Pass --cases with the model's training cases.")
    plain = dataclasses.replace(model, config=dataclasses.replace(model.config, output_level=OutputLevel()))
    per_case: Dict[str, float] = {}
    for i, case in enumerate(cases):
        source = read_volume(case.source)
        mask = brain_mask(source.array, norm.mask_threshold)
        synthetic = synthesize_volume(plain, source, mask=mask, device=device, precision=precision)
        values = synthetic.array[mask] / np.float32(norm.output_scale)
        per_case[case.case_id] = float(np.percentile(values, percentile)) if values.size else 0.0
        if progress:
            progress(progress_event("fit-level", i + 1, len(cases), case=case.case_id))
    value = float(np.median(list(per_case.values())))
    if not value > 0:
        raise UsageError("The model's synthesis is 0 throughout the brain of these cases; no level can be fitted.")
    return {"value": value, "stages": model.stages, "percentile": float(percentile), "per_case": per_case}


def write_model_with_level(model_path: PathLike, out: PathLike, fit: Dict[str, Any], command: str = "",
                           overwrite: bool = False) -> Path:
    """``model_path``'s weights and header with the fitted level, written to ``out`` (atomically).

    The header records the fit (cases, per-case values, command) under ``training.output_level_fit``. A held-out
    evaluation already in it measured the file without the level, so it moves to
    ``metrics.evaluation_without_level``: ``medsynth info`` must not show it as this file's quality.
    """
    loaded = load_model(model_path)
    if fit["stages"] != loaded.stages:
        raise UsageError(f"The level was fitted with {fit['stages']} stage(s); {model_path} has {loaded.stages}.",
                         "Fit it on the same file with all its stages.")
    level = OutputLevel(value=fit["value"], stages=fit["stages"], percentile=fit["percentile"])
    cfg = dataclasses.replace(loaded.config, output_level=level)
    training = dict(loaded.header.get("training") or {})
    training["output_level_fit"] = {**fit, "from_file": Path(model_path).name, "command": command}
    metrics = dict(loaded.header.get("metrics") or {})
    if "evaluation" in metrics:
        metrics["evaluation_without_level"] = metrics.pop("evaluation")
    return save_model(out, loaded.chain, cfg, training=training, metrics=metrics, overwrite=overwrite)
