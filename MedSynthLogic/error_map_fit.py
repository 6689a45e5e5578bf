"""Fit a model's learned error map (:mod:`.error_map`) on its own training cases and store it in a copy of its file.

Files → arrays → the model's synthesis and disagreement parts (:func:`.uncertainty.synthesize_with_uncertainty`) →
feature rows and |error| per brain voxel (``medsynth evaluate``'s unit) → a sample of each case's voxels → the fitted
map → the model file with it. The cases default to the model's training cases (:func:`training_cases_of`): the
validation cases stay unseen, so the map can be scored on them (``Testing/Evaluation/uncertainty_vs_error.py``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional, Sequence, Union

import numpy as np

from .atomic import check_output_path
from .dataset_prep import find_cases, select_cases
from .error_map import error_features, fit_error_map
from .errors import UsageError
from .metrics import normalise_for_metrics, scale_prediction
from .model_file import load_model, with_error_map
from .normalisation import brain_mask
from .uncertainty import synthesize_with_uncertainty
from .volume_io import read_volume

PathLike = Union[str, os.PathLike]

__all__ = ["fit_error_map_for", "training_cases_of"]


def training_cases_of(header: Mapping[str, Any], available: Sequence[str]) -> List[str]:
    """The cases of ``available`` the model was trained on, from its header: the ``train_cases`` it lists, or, for a
    model from ``medsynth train`` (which records only their number), every available case but its validation
    cases (``val_case_ids``). UsageError when the header says neither."""
    data = header.get("training", {}).get("data", {})
    listed = data.get("train_cases")
    if isinstance(listed, list) and listed:
        return [str(c) for c in listed]
    held_out = data.get("val_case_ids", data.get("val_cases"))
    if not isinstance(held_out, list):
        raise UsageError("The model's header names neither its training nor its validation cases.",
                         "Name the cases to fit the error map on (--cases).")
    held = set(held_out)
    return [c for c in available if c not in held]


def fit_error_map_for(model_path: PathLike, cases_dir: PathLike, out: PathLike, cases: Optional[Sequence[str]] = None,
                      voxels_per_case: int = 300_000, seed: int = 0, device: str = "cpu", overwrite: bool = False,
                      report: Callable[[str], None] = print) -> Path:
    """Fit the error map of the model in ``model_path`` on ``cases`` (default: its training cases) of ``cases_dir``
    and write the model with it to ``out``; ``voxels_per_case`` brain voxels of each case, drawn with ``seed``."""
    if int(voxels_per_case) < 1:
        raise UsageError(f"voxels_per_case must be at least 1, got {voxels_per_case}.")
    check_output_path(out, overwrite=overwrite, inputs=(model_path,))  # before the long part, not after it
    model = load_model(model_path)
    found = find_cases(cases_dir)
    ids = list(cases) if cases else training_cases_of(model.header, [c.case_id for c in found])
    scale = float(model.config.normalisation.output_scale)
    rng = np.random.default_rng(seed)
    rows, errors = [], []
    for case in select_cases(found, ids, f"Case in {cases_dir}"):
        source, target = read_volume(case.source), read_volume(case.target).array
        mask = brain_mask(source.array, model.config.normalisation.mask_threshold)
        result = synthesize_with_uncertainty(model, source, device=device, precision="fp32")
        error = np.abs(scale_prediction(result.synthesis.array, mask, scale) - normalise_for_metrics(target, mask))[mask]
        features = error_features(result.synthesis.array, source.array, result.flip, result.stages, mask, scale)
        pick = rng.choice(len(error), size=min(len(error), int(voxels_per_case)), replace=False)
        rows.append(features[pick])
        errors.append(error[pick].astype(np.float32))
        report(f"{case.case_id}: mean |error| {float(error.mean()):.4f} over {len(error)} brain voxels")
    fitted = fit_error_map(np.concatenate(rows), np.concatenate(errors), seed=seed,
                           fitted_on={"cases": ids, "voxels_per_case": int(voxels_per_case), "seed": int(seed)})
    return with_error_map(model_path, out, fitted, overwrite=overwrite)
