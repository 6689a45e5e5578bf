"""Would a fixed output level per model remove the per-case brightness error? Measured on training cases only.

usage: python Testing/Evaluation/output_level.py CASES_DIR OUT.md --cases A,B,... --predictions NAME=DIR [NAME=DIR ...]
       [--output-scale 1000]

Each DIR holds ``<case>_synthetic_t2.nii.gz`` as ``medsynth evaluate --save-predictions`` writes them. Variant
``level`` multiplies a case's synthesis by c / (its own in-brain 99.5th percentile), with c the median of that
percentile over the *other* cases (leave-one-out: the constant a model file fitted on its training cases would
hold). Unlike dividing by the synthesis's own percentile (TEST_TIME_ADJUSTMENTS.md), it keeps each model's overall
level and removes only the case-to-case spread of its bright tail. Metrics: ``medsynth evaluate``'s protocol.
Measured in session 22: it raised all three models on their training cases and lowered all three on the
validation cases, so no model file carries such a level (docs/evaluation/output_level/README.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from MedSynthLogic.dataset_prep import find_cases, select_cases
from MedSynthLogic.metrics import scale_prediction
from MedSynthLogic.volume_io import read_volume

from case_table import markdown, read_scored_case, score  # beside this script

PERCENTILE = 99.5


def levelled(preds: Dict[str, np.ndarray], masks: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Each case's synthesis scaled so its in-brain percentile equals the median of the other cases'."""
    tails = {c: float(np.percentile(p[masks[c]], PERCENTILE)) for c, p in preds.items()}
    out = {}
    for case, pred in preds.items():
        others = [t for c, t in tails.items() if c != case]
        out[case] = pred * (float(np.median(others)) / tails[case])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--cases", required=True)
    parser.add_argument("--predictions", nargs="+", required=True, help="NAME=DIR of saved syntheses")
    parser.add_argument("--output-scale", type=float, default=1000.0)
    args = parser.parse_args()
    cases = select_cases(find_cases(args.cases_dir), args.cases.split(","), f"Case in {args.cases_dir}")
    refs: Dict[str, np.ndarray] = {}
    masks: Dict[str, np.ndarray] = {}
    for case in cases:
        _, masks[case.case_id], refs[case.case_id] = read_scored_case(case)
    sections: List[str] = [f"# Output level per model, on {len(cases)} training cases\n",
                           "`python Testing/Evaluation/output_level.py` (see its docstring).\n"]
    for spec in args.predictions:
        name, folder = spec.split("=", 1)
        preds = {c: read_volume(Path(folder) / f"{c}_synthetic_t2.nii.gz").array.astype(np.float32) for c in refs}
        variants: Dict[str, Dict[str, np.ndarray]] = {"none": preds, "level": levelled(preds, masks)}
        rows: Dict[str, Dict[str, Tuple[float, float]]] = {}
        for c in refs:
            unit = {v: scale_prediction(variants[v][c], masks[c], args.output_scale) for v in variants}
            rows[c] = score(c, unit, refs[c], masks[c])
        sections += [f"## {name}\n", markdown(rows)]
    args.out.write_text("\n".join(sections), encoding="utf-8")


if __name__ == "__main__":
    main()
