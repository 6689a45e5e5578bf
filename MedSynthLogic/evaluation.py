"""``medsynth evaluate``: synthesize held-out cases with a model (or a baseline) and score them.

Metrics follow one protocol (see :mod:`MedSynthLogic.metrics`): inside the brain mask, and inside the tumour
when a segmentation is present, on intensities each divided by their own 99.5th percentile in the mask.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from .progress import progress_event


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="folder of cases with BraTS naming (<case>/<case>_t1ce.nii.gz, _t2, optional _seg)")
    p.add_argument("--out", required=True, help="folder for metrics.json, metrics.md (and figures with --figures)")
    p.add_argument("--model", help="model file (default: bundled)")
    p.add_argument("--lookup", help="evaluate a 1-D intensity lookup (from 'medsynth fit-lookup') instead of a model")
    p.add_argument("--cases", help="comma-separated case ids (default: every case in the folder)")
    p.add_argument("--manifest", help="use the validation cases listed in this manifest.json (from 'medsynth prepare')")
    p.add_argument("--source-suffix", default="t1ce")
    p.add_argument("--target-suffix", default="t2")
    p.add_argument("--stages", type=int, default=None, help="auto-context stages to run (default: all)")
    p.add_argument("--flip-tta", action="store_true")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--figures", action="store_true", help="save T1ce | synthetic | real | error PNGs per case")
    p.add_argument("--save-predictions", action="store_true", help="save the synthetic volumes too")
    p.add_argument("--label", default="", help="a name for this row in the report (e.g. 'L2 only')")


def _select_cases(args: argparse.Namespace):
    import json

    from .dataset_prep import find_cases, select_cases

    cases = find_cases(args.data, source_suffix=args.source_suffix, target_suffix=args.target_suffix)
    wanted: Optional[List[str]] = None
    if args.cases:
        wanted = [c for c in args.cases.split(",") if c]
    elif args.manifest:
        manifest = json.loads(Path(args.manifest).read_text(encoding="utf-8"))
        wanted = list(manifest["splits"]["val"])
    if wanted is not None:
        cases = select_cases(cases, wanted, f"Case in {args.data}")
    return cases


def evaluate_command(args: argparse.Namespace, progress: Optional[Callable[[dict], None]] = None) -> Dict[str, dict]:
    """Run the evaluation the CLI describes; returns the summary (metric → mean/std)."""
    from .baselines import IntensityLookup
    from .figures import comparison_figure, metric_unit_ranges
    from .inference import synthesize_volume
    from .metrics import evaluate_pairs, scale_prediction, write_report
    from .model_file import bundled_model_path, load_model
    from .normalisation import brain_mask
    from .volume_io import align_pair, read_volume, write_volume

    cases = _select_cases(args)
    lookup = IntensityLookup.load(args.lookup) if args.lookup else None
    model = None if lookup else load_model(Path(args.model) if args.model else bundled_model_path(), stages=args.stages)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    norm = lookup.normalisation if lookup else model.config.normalisation
    mask_threshold, mask_scale = norm.mask_threshold, norm.output_scale
    entries = []
    for i, case in enumerate(cases):
        source = read_volume(case.source)
        source, target, _ = align_pair(source, read_volume(case.target), policy="resample")
        seg = read_volume(case.seg).array.astype(np.uint8) if case.seg else None
        mask = brain_mask(source.array, mask_threshold)
        if lookup is not None:
            pred = source.with_array(lookup.apply(source.array, mask))
        else:
            pred = synthesize_volume(model, source, mask=mask, stages=args.stages, device=args.device, flip_tta=args.flip_tta,
                                     progress=within_case(progress, i, len(cases), case.case_id))
        entries.append((case.case_id, pred, target, mask, seg))
        if args.save_predictions:
            write_volume(pred, out / f"{case.case_id}_synthetic_{args.target_suffix}.nii.gz", overwrite=True)
        if args.figures:
            err = np.abs(scale_prediction(pred.array, mask, mask_scale) - _unit(target.array, mask))
            ranges = (
                metric_unit_ranges("synthetic T2", "real T2", target.array, mask, mask_scale)
                if norm.target.mode == "percentile" else None
            )
            comparison_figure(
                out / f"{case.case_id}.png",
                [("T1ce", source.array), ("synthetic T2", pred.array), ("real T2", target.array), ("|error| (0–0.5, normalised)", err)],
                mask=mask, spacing=source.spacing, title=f"{case.case_id} {args.label}".strip(), ranges=ranges,
            )
        if progress:
            progress(progress_event("evaluate", i + 1, len(cases), case=case.case_id))
    results = evaluate_pairs(entries, pred_scale=norm.output_scale if norm.target.mode == "percentile" else None)
    results["label"] = args.label
    results["model"] = str(args.lookup or args.model or bundled_model_path())
    results["stages"] = args.stages
    results["flip_tta"] = bool(args.flip_tta)
    write_report(results, out / "metrics.json", out / "metrics.md")
    return results["summary"]


def within_case(
    progress: Optional[Callable[[dict], None]], index: int, count: int, case_id: str
) -> Optional[Callable[[dict], None]]:
    """Turn one case's synthesis events into evaluate events whose fraction moves within the case.

    A case takes tens of seconds on a CPU; without this the evaluation shows nothing between two cases.
    Other events (a warning about a CPU fallback) pass through unchanged.
    """
    if progress is None:
        return None

    def forward(event: dict) -> None:
        if event.get("event") != "progress":
            progress(event)
            return
        within = float(event.get("fraction", 0.0))
        progress(progress_event("evaluate", index, count, fraction=(index + within) / count, case=case_id))

    return forward


def _unit(arr: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Divide by the 99.5th percentile inside the mask and clip to [0, 1]: the metrics' intensity unit."""
    from .metrics import normalise_for_metrics

    return normalise_for_metrics(arr, mask)
