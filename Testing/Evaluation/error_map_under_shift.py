"""Does the learned error map see a shifted source? Its mean and the real error, per shift of input_shift.py.

The learned error map (MedSynthLogic.error_map) was fitted on the model's own training cases, unshifted. A clinician
reads its brightness as "expect this much error here"; a source unlike those cases (another contrast, noise, thick
slices, a T1 given as the T1ce) raises the real error, and the map is only a guide there if its mean rises with it.
For each validation case (default: the model header's) and each shift of ``input_shift.shifted_sources``, the model
synthesizes with its map (``synthesize_with_uncertainty``) and, inside the brain mask of the unshifted source,
the real mean |error| (`medsynth evaluate`'s unit) is set beside the map's mean and their Pearson r.

    python Testing/Evaluation/error_map_under_shift.py CASES_DIR OUT_DIR [--model MODEL] [--cases A,B,C]

Writes OUT_DIR/error_map_under_shift.md and .json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from MedSynthLogic.dataset_prep import find_cases, select_cases  # noqa: E402
from MedSynthLogic.metrics import normalise_for_metrics, scale_prediction  # noqa: E402
from MedSynthLogic.model_file import LoadedModel, bundled_model_path, load_model  # noqa: E402
from MedSynthLogic.normalisation import brain_mask  # noqa: E402
from MedSynthLogic.uncertainty import synthesize_with_uncertainty  # noqa: E402
from MedSynthLogic.volume_io import align_pair, read_volume  # noqa: E402
from input_shift import shifted_sources  # noqa: E402


def measure(cases_dir: Path, model: LoadedModel, cases: List[str]) -> List[Dict[str, object]]:
    norm = model.config.normalisation
    scale = float(norm.output_scale)
    rows = []
    for case in select_cases(find_cases(cases_dir), cases, f"Case in {cases_dir}"):
        source, target, _ = align_pair(read_volume(case.source), read_volume(case.target), policy="resample")
        mask = brain_mask(source.array, norm.mask_threshold)
        reference = normalise_for_metrics(target.array, mask)
        for shift, shifted in shifted_sources(case, mask, source).items():
            result = synthesize_with_uncertainty(model, shifted, mask=mask, device="cpu")
            error = np.abs(scale_prediction(result.synthesis.array, mask, scale) - reference)[mask]
            expected = result.uncertainty.array[mask] / np.float32(scale)
            rows.append({"case": case.case_id, "shift": shift, "real": float(error.mean()),
                         "expected": float(expected.mean()), "pearson": float(np.corrcoef(expected, error)[0, 1])})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(rows: List[Dict[str, object]]) -> str:
    shifts = list(dict.fromkeys(str(r["shift"]) for r in rows))
    base = {r["case"]: r for r in rows if r["shift"] == "none"}
    lines = ["| shift | real mean \\|error\\| | map's mean | map / real | real, change from none | map, change from none "
             "| Pearson r | cases |", "|---|---|---|---|---|---|---|---|"]
    for shift in shifts:
        sel = [r for r in rows if r["shift"] == shift]
        real = float(np.mean([r["real"] for r in sel]))
        expected = float(np.mean([r["expected"] for r in sel]))
        d_real = float(np.mean([r["real"] - base[r["case"]]["real"] for r in sel]))
        d_expected = float(np.mean([r["expected"] - base[r["case"]]["expected"] for r in sel]))
        lines.append(f"| {shift} | {real:.4f} | {expected:.4f} | {expected / real:.2f} | {d_real:+.4f} | "
                     f"{d_expected:+.4f} | {np.mean([r['pearson'] for r in sel]):.3f} | {len(sel)} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--model", default=str(bundled_model_path()))
    parser.add_argument("--cases", default=None, help="comma-separated case ids (default: the header's validation cases)")
    args = parser.parse_args()
    model = load_model(args.model)  # read and verified once, for its header and every case
    if model.error_map is None:
        raise SystemExit(f"{args.model} holds no learned error map (medsynth fit-error-map makes one).")
    cases = args.cases.split(",") if args.cases else list(model.header["training"]["data"]["val_cases"])
    args.out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    rows = measure(args.cases_dir, model, cases)
    (args.out_dir / "error_map_under_shift.json").write_text(json.dumps({"model": args.model, "rows": rows}, indent=1))
    text = (f"Written by `Testing/Evaluation/error_map_under_shift.py` ({time.monotonic() - t0:.0f} s, CPU, precision "
            f"auto) for `{Path(args.model).name}` on {', '.join(cases)}; means over the cases.\n\n{markdown(rows)}\n")
    (args.out_dir / "error_map_under_shift.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
