"""Fit a model's learned error map (:mod:`.error_map`) on its own training cases and store it in a copy of its file.

Files → arrays → the model's synthesis and disagreement parts (:func:`.uncertainty.synthesize_with_uncertainty`) →
feature rows and |error| per brain voxel (``medsynth evaluate``'s unit) → a sample of each case's voxels → the fitted
map → the model file with it. The cases default to the model's training cases (:func:`training_cases_of`): the
validation cases stay unseen, so the map can be scored on them (``Testing/Evaluation/uncertainty_vs_error.py``).

A map fitted only on the cases as they are has never met a source unlike them, and a T1 given as the T1ce raised
the real error while the map fell (``docs/evaluation/uncertainty/error_map_under_shift.md``). ``variants`` adds, per
case, sources it may meet in use (:data:`VARIANTS`), each scored against the case's own target inside the brain mask
of its T1ce, as ``error_map_under_shift.py`` scores them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .atomic import check_output_path
from .case_reading import read_case
from .dataset_cases import Case, CaseFiles, companion_t1
from .dataset_prep import select_cases, target_background
from .error_map import FEATURES, IMAGE_FEATURES, fit_error_map
from .errors import MedSynthError, UsageError
from .source_names import T1CE, file_suffixes, named_sequence
from .metrics import normalise_for_metrics, scale_prediction
from .model_file import load_model, with_error_map
from .model_summary import listed_training_cases
from .source_shifts import contrast_in_brain, t1_in_place
from .uncertainty import error_map_rows, synthesize_with_uncertainty
from .volume import Volume

PathLike = Union[str, os.PathLike]

__all__ = ["VARIANTS", "GAMMA_RANGE", "fit_error_map_for", "training_cases_of", "variant_sources"]

#: Sources besides each case's own that a map can be fitted on: ``t1``, the case's non-contrast T1 (the likeliest
#: wrong pick, :func:`.dataset_cases.companion_t1`); ``contrast``, its T1ce through a gamma drawn per case.
VARIANTS = ("t1", "contrast")
#: The contrast variant's gamma, log-uniform in this range, on [0, the brain's maximum] (input_shift.py's form).
GAMMA_RANGE = (0.7, 1.4)


def training_cases_of(header: Mapping[str, Any], available: Sequence[str]) -> List[str]:
    """The cases of ``available`` the model was trained on, from its header: the ``train_cases`` it lists, or, for a
    model from ``medsynth train`` (which records only their number), every available case but its validation
    cases (``val_case_ids``). UsageError when the header says neither."""
    listed = listed_training_cases(header)
    if listed:
        return listed
    data = header.get("training", {}).get("data", {})
    held_out = data.get("val_case_ids", data.get("val_cases"))
    if not isinstance(held_out, list):
        raise UsageError("The model's header names neither its training nor its validation cases.",
                         "Name the cases to fit the error map on (--cases).")
    held = set(held_out)
    return [c for c in available if c not in held]


def _check_variants(variants: Sequence[str]) -> None:
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise UsageError(f"Unknown error-map variant(s): {', '.join(unknown)}.", f"Choose among {', '.join(VARIANTS)}.")


def variant_sources(case: Case, source: Volume, mask: np.ndarray, variants: Sequence[str],
                    rng: np.random.Generator) -> Dict[str, Tuple[Volume, Dict[str, Any]]]:
    """Variant name → (its source on ``source``'s grid, zero outside ``mask``; what was drawn for it), for each of
    ``variants`` the case has (``t1`` needs its T1 file beside the T1ce)."""
    _check_variants(variants)
    out: Dict[str, Tuple[Volume, Dict[str, Any]]] = {}
    for name in variants:
        if name == "t1":
            t1 = companion_t1(case.source)
            if t1 is not None:
                out[name] = (t1_in_place(t1, source, mask), {"file": t1.name})
        else:
            gamma = float(np.exp(rng.uniform(np.log(GAMMA_RANGE[0]), np.log(GAMMA_RANGE[1]))))
            out[name] = (source.with_array(contrast_in_brain(source.array, mask, gamma)), {"gamma": round(gamma, 4)})
    return out


def fit_error_map_for(model_path: PathLike, cases_dir: PathLike, out: PathLike, cases: Optional[Sequence[str]] = None,
                      voxels_per_case: int = 300_000, seed: int = 0, device: str = "cpu", overwrite: bool = False,
                      variants: Sequence[str] = (), image_features: bool = False,
                      report: Callable[[str], None] = print, source_suffix: Optional[str] = None,
                      target_suffix: Optional[str] = None, files: Optional[CaseFiles] = None) -> Path:
    """Fit the error map of the model in ``model_path`` on ``cases`` (default: its training cases) of ``cases_dir``
    and write the model with it to ``out``; ``voxels_per_case`` brain voxels of each case and of each of its
    ``variants`` (:data:`VARIANTS`), drawn with ``seed``; ``image_features``: the map also reads
    :data:`.error_map.IMAGE_FEATURES`. The files are the model's pair in BraTS naming unless the suffixes or
    ``files`` (``{case}`` patterns, a CSV) say otherwise."""
    if int(voxels_per_case) < 1:
        raise UsageError(f"voxels_per_case must be at least 1, got {voxels_per_case}.")
    _check_variants(variants)
    check_output_path(out, overwrite=overwrite, inputs=(model_path,))  # before the long part, not after it
    model = load_model(model_path)
    if model.config.normalisation.target.mode != "percentile":
        raise UsageError(
            f"A learned error map is fitted in the unit of a percentile-normalised target (×output_scale); this "
            f"model's {model.config.target_name} uses {model.config.normalisation.target.mode!r} normalisation, "
            "and a map fitted so came out a third of the real error in HU.",
            "Use --uncertainty without a learned map (the flip and stage disagreement, in the output's own unit).")
    named = {n.kind for n in map(named_sequence, (model.config.source_name, model.config.input.sequence)) if n}
    if "t1" in variants and named and T1CE not in named:  # it said "no T1 beside the T1ce" of a T1 source
        raise UsageError(f"The t1 variant shows a T1ce model the non-contrast T1 given in its place; this model's source "
                         f"is {model.config.source_name}, not a T1ce.", "Fit without --variants t1.")
    source_suffix, target_suffix = file_suffixes(model.config, source_suffix, target_suffix)
    found = (files or CaseFiles()).find(cases_dir, source_suffix, target_suffix, only=list(cases) if cases else None)
    ids = list(cases) if cases else training_cases_of(model.header, [c.case_id for c in found])
    data = model.header.get("training", {}).get("data", {})
    held_out = data.get("val_case_ids", data.get("val_cases")) if isinstance(data, dict) else None
    on_validation = [c for c in ids if isinstance(held_out, list) and c in held_out]
    if on_validation:  # said and recorded: the file must not call its map fitted on training cases
        report(f"warning: {len(on_validation)} of the cases to fit on ({', '.join(on_validation)}) are the model's "
               "validation cases: the map learns their errors, so they no longer measure it (or the model) unseen")
    norm = model.config.normalisation
    scale, percentile = float(norm.output_scale), float(norm.target.percentile)
    rng = np.random.default_rng(seed)
    names = FEATURES + IMAGE_FEATURES if image_features else FEATURES
    rows, errors = [], []
    drawn: Dict[str, Dict[str, Any]] = {}
    for case in select_cases(found, ids, where=str(cases_dir)):
        try:
            read = read_case(case, norm.mask_threshold, tumour=False, target_fill=target_background(norm.target))
        except MedSynthError as exc:
            raise exc.in_case(case.case_id) from exc
        for note in read.notes:  # a warning, as fit-lookup and evaluate give it
            report(f"warning: {case.case_id}: {note}")
        source, mask, scored = read.source, read.mask, read.scored  # as evaluate reads it: its mask, on its grid
        reference = normalise_for_metrics(read.target.array, scored, percentile)  # evaluate's reference, voxel for voxel
        extra = variant_sources(case, source, mask, variants, rng)
        if "t1" in variants and "t1" not in extra:  # found by name only: a T1ce source beside its T1
            raise UsageError(f"The t1 variant needs the non-contrast T1 beside each case's T1ce; {case.case_id} "
                             f"has none beside {case.source.name} (looked for the name with t1ce → t1).",
                             "Fit without --variants t1, or on cases in BraTS naming with their _t1 files.")
        drawn[case.case_id] = {name: info for name, (_, info) in extra.items()}
        for name, shifted in [("as given", source)] + [(name, vol) for name, (vol, _) in extra.items()]:
            result = synthesize_with_uncertainty(model, shifted, mask=mask, device=device, precision="fp32")
            error = np.abs(scale_prediction(result.synthesis.array, mask, scale) - reference)[scored]
            features = error_map_rows(names, result.synthesis.array, shifted.array, result.flip, result.stages, mask,
                                      scale)[scored[mask]]  # built over the brain mask, as synthesis builds them
            pick = rng.choice(len(error), size=min(len(error), int(voxels_per_case)), replace=False)
            rows.append(features[pick])
            errors.append(error[pick].astype(np.float32))
            report(f"{case.case_id} ({name}): mean |error| {float(error.mean()):.4f} over {len(error)} brain voxels")
    fitted = fit_error_map(np.concatenate(rows), np.concatenate(errors), seed=seed,
                           fitted_on={"cases": ids, "voxels_per_case": int(voxels_per_case), "seed": int(seed),
                                      **({"variants": drawn} if variants else {}),
                                      **({"validation_cases": on_validation} if on_validation else {})}, names=names)
    return with_error_map(model_path, out, fitted, overwrite=overwrite)
