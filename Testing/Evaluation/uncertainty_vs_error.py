"""Does the uncertainty map say where the synthesis is wrong? Measured against the real error, case by case.

usage: python Testing/Evaluation/uncertainty_vs_error.py CASES_DIR OUT_DIR [--model MODEL] [--cases A,B,C] [--figures]

For each case (default: the model header's validation cases) the model synthesizes the T2 with its uncertainty map
(its learned error map's expected error when the model file holds one, else the RMS of the parts; both are scored)
(``MedSynthLogic.uncertainty.synthesize_with_uncertainty``, CPU, at the default precision: bf16 on CPUs with AVX-512
BF16 or AMX), and inside the brain (each case read as `medsynth evaluate` reads it: its mask file or T1ce > 0, where the
target has data) the map and each of its parts are compared with the absolute error |synthesis − real T2| in
`medsynth evaluate`'s unit (reference / its percentile of the model's normalisation in the brain, prediction / the
output scale, both clipped to [0, 1]):
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

from MedSynthLogic.case_reading import read_case
from MedSynthLogic.dataset_prep import find_cases, select_cases, target_background
from MedSynthLogic.figures import comparison_figure, focus_point
from MedSynthLogic.metrics import normalise_for_metrics, scale_prediction
from MedSynthLogic.model_file import bundled_model_path, load_model, read_header
from MedSynthLogic.uncertainty import combine_parts, synthesize_with_uncertainty

PREDICTORS = ("map", "rms", "flip", "stages", "edge")
NAMES = {
    "map": "uncertainty map (what --uncertainty writes)",
    "rms": "RMS of both parts (the map of a model without a learned error map)",
    "flip": "flip part only",
    "stages": "last-two-stages part only",
    "edge": "closeness to the brain's edge (no model; reference)",
}


def score(predictor: np.ndarray, error: np.ndarray) -> Dict[str, float]:
    """Correlations with the error, and the error's mean in the predictor's top decile against the rest: exactly the
    tenth of the voxels it ranks highest (a threshold at its 90th percentile took every tied voxel: all of them for a
    map of zeros, 10.8 % for the integer edge distances of the reports before session 48)."""
    k = max(1, int(np.ceil(0.1 * predictor.size)))
    top = np.zeros(predictor.size, dtype=bool)
    top[np.argpartition(-predictor, k - 1)[:k]] = True
    return {
        "pearson": float(np.corrcoef(predictor, error)[0, 1]),
        "spearman": float(stats.spearmanr(predictor, error).statistic),
        "mae_top_decile": float(error[top].mean()),
        "mae_rest": float(error[~top].mean()),
        "top_fraction": float(top.mean()),
    }


def evaluate_case(model, case) -> Dict[str, object]:
    norm = model.config.normalisation
    read = read_case(case, norm.mask_threshold, target_fill=target_background(norm.target))
    source, mask, brain = read.source, read.mask, read.scored  # the map is scored where the target has data
    scale = float(norm.output_scale)
    start = time.perf_counter()
    result = synthesize_with_uncertainty(model, source, mask=mask, device="cpu")
    seconds = time.perf_counter() - start
    reference = normalise_for_metrics(read.target.array, brain, float(norm.target.percentile))
    prediction = scale_prediction(result.synthesis.array, mask, scale)
    error = np.abs(prediction - reference)
    parts = {
        "map": result.uncertainty.array / scale,
        "rms": combine_parts(result.flip, result.stages) / scale,
        "flip": result.flip / scale,
        **({"stages": result.stages / scale} if result.stages is not None else {}),  # a one-stage model has no such part
        "edge": -ndimage.distance_transform_edt(mask).astype(np.float32),
    }
    scores = {name: score(parts[name][brain], error[brain]) for name in PREDICTORS if name in parts}
    return {
        "case": case.case_id,
        "seconds": round(seconds, 1),
        "mae": float(error[brain].mean()),
        "map_mean": float(parts["map"][brain].mean()),
        "scores": scores,
        "arrays": (result.synthesis.array / scale, reference, error, parts["map"], brain, source.spacing,
                   read.tumour),
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
    rows = ["| predictor | case | Pearson r | Spearman ρ | MAE, map's top decile | MAE, other 90 % | ratio (mean row: of the cases' ratios) |",
            "|---|---|---|---|---|---|---|"]
    for name in (p for p in PREDICTORS if p in results[0]["scores"]):
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
    data = read_header(args.model).get("training", {}).get("data", {})
    ids = args.cases.split(",") if args.cases else data.get("val_case_ids", data.get("val_cases"))
    if not ids:
        raise SystemExit(f"{args.model} names no validation cases: pass --cases")
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
