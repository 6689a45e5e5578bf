"""Does the uncertainty map say where the synthesis is wrong? Measured against the real error, case by case.

usage: python Testing/Evaluation/uncertainty_vs_error.py CASES_DIR OUT_DIR [--model MODEL] [--cases A,B,C] [--figures]

For each case (default: the model header's validation cases) the model synthesizes the T2 with its uncertainty map
(its learned error map's expected error when the model file holds one, else the RMS of the parts; both are scored)
(``MedSynthLogic.uncertainty.synthesize_with_uncertainty``, CPU, fp32), and inside the brain mask (T1ce > 0) the map
and each of its parts are compared with the absolute error |synthesis − real T2| in `medsynth evaluate`'s unit
(reference / its 99.5th percentile in the brain, prediction / the output scale, both clipped to [0, 1]):
Pearson and Spearman correlation, and the mean absolute error in the map's top decile against the other 90 %.
A model-free predictor, closeness to the brain mask's edge (minus the distance to the outside), is scored the
same way: the map is only worth computing if it beats that. Writes OUT_DIR/uncertainty_table.md, OUT_DIR/uncertainty.json
and, with --figures, OUT_DIR/uncertainty/<case>.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
from scipy import ndimage, stats

from MedSynthLogic.dataset_prep import find_cases, select_cases
from MedSynthLogic.figures import comparison_figure, focus_point
from MedSynthLogic.metrics import normalise_for_metrics, scale_prediction
from MedSynthLogic.model_file import bundled_model_path, load_model, read_header
from MedSynthLogic.normalisation import brain_mask
from MedSynthLogic.uncertainty import combine_parts, synthesize_with_uncertainty
from MedSynthLogic.volume_io import read_volume

PREDICTORS = ("map", "rms", "flip", "stages", "edge")
NAMES = {
    "map": "uncertainty map (what --uncertainty writes)",
    "rms": "RMS of both parts (the map of a model without a learned error map)",
    "flip": "flip part only",
    "stages": "last-two-stages part only",
    "edge": "closeness to the brain's edge (no model; reference)",
}


def score(predictor: np.ndarray, error: np.ndarray) -> Dict[str, float]:
    """Correlations with the error, and the error's mean in the predictor's top decile against the rest."""
    top = predictor >= np.percentile(predictor, 90.0)
    return {
        "pearson": float(np.corrcoef(predictor, error)[0, 1]),
        "spearman": float(stats.spearmanr(predictor, error).statistic),
        "mae_top_decile": float(error[top].mean()),
        "mae_rest": float(error[~top].mean()),
        "top_fraction": float(top.mean()),
    }


def evaluate_case(model, case) -> Dict[str, object]:
    source = read_volume(case.source)
    target = read_volume(case.target).array
    brain = brain_mask(source.array, model.config.normalisation.mask_threshold)
    scale = float(model.config.normalisation.output_scale)
    start = time.perf_counter()
    result = synthesize_with_uncertainty(model, source, device="cpu")
    seconds = time.perf_counter() - start
    reference = normalise_for_metrics(target, brain)
    prediction = scale_prediction(result.synthesis.array, brain, scale)
    error = np.abs(prediction - reference)
    parts = {
        "map": result.uncertainty.array / scale,
        "rms": combine_parts(result.flip, result.stages) / scale,
        "flip": result.flip / scale,
        "stages": result.stages / scale,
        "edge": -ndimage.distance_transform_edt(brain).astype(np.float32),
    }
    scores = {name: score(parts[name][brain], error[brain]) for name in PREDICTORS}
    return {
        "case": case.case_id,
        "seconds": round(seconds, 1),
        "mae": float(error[brain].mean()),
        "map_mean": float(parts["map"][brain].mean()),
        "scores": scores,
        "arrays": (result.synthesis.array / scale, reference, error, parts["map"], brain, source.spacing,
                   read_volume(case.seg).array if case.seg else None),
    }


def figure(path: Path, case_id: str, arrays) -> None:
    synthesis, reference, error, unc, brain, spacing, seg = arrays
    comparison_figure(
        path,
        [("synthetic T2", synthesis), ("real T2", reference), ("|error|", error), ("|uncertainty map|", unc)],
        mask=brain, centre=focus_point(brain, seg), spacing=spacing, error_max=0.25,
        ranges={"synthetic T2": (0.0, 1.0), "real T2": (0.0, 1.0)},
        title=f"{case_id}: error and uncertainty map, both 0-0.25 (1 = the T2's 99.5th percentile)",
    )


def table(results: List[Dict[str, object]]) -> str:
    rows = ["| predictor | case | Pearson r | Spearman ρ | MAE, map's top decile | MAE, other 90 % | ratio |",
            "|---|---|---|---|---|---|---|"]
    for name in PREDICTORS:
        for r in results:
            s = r["scores"][name]
            rows.append(f"| {NAMES[name]} | {r['case']} | {s['pearson']:.3f} | {s['spearman']:.3f} | "
                        f"{s['mae_top_decile']:.3f} | {s['mae_rest']:.3f} | {s['mae_top_decile'] / s['mae_rest']:.2f} |")
        mean = {k: float(np.mean([r["scores"][name][k] for r in results])) for k in ("pearson", "spearman", "mae_top_decile", "mae_rest")}
        ratio = float(np.mean([r["scores"][name]["mae_top_decile"] / r["scores"][name]["mae_rest"] for r in results]))
        rows.append(f"| **{NAMES[name]}** | **mean** | **{mean['pearson']:.3f}** | **{mean['spearman']:.3f}** | "
                    f"**{mean['mae_top_decile']:.3f}** | **{mean['mae_rest']:.3f}** | **{ratio:.2f}** |")
    return "\n".join(rows)


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--model", default=str(bundled_model_path()))
    parser.add_argument("--cases", help="comma-separated case ids (default: the model's validation cases)")
    parser.add_argument("--figures", action="store_true")
    args = parser.parse_args(argv)
    ids = args.cases.split(",") if args.cases else read_header(args.model)["training"]["data"]["val_cases"]
    model = load_model(args.model)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for case in select_cases(find_cases(args.cases_dir), ids, f"Case in {args.cases_dir}"):
        r = evaluate_case(model, case)
        if args.figures:
            (args.out_dir / "uncertainty").mkdir(exist_ok=True)
            figure(args.out_dir / "uncertainty" / f"{case.case_id}.png", case.case_id, r["arrays"])
        del r["arrays"]
        results.append(r)
        print(json.dumps(r), flush=True)
    (args.out_dir / "uncertainty.json").write_text(json.dumps({"model": Path(args.model).name, "cases": results}, indent=2) + "\n")
    (args.out_dir / "uncertainty_table.md").write_text(table(results) + "\n", encoding="utf-8")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
