"""How bright is each case's reference T2 on the scale the metrics use, and can the T1ce tell?

usage: python Testing/Evaluation/target_brightness.py CASES_DIR OUT.md --cases A,B,...   (training cases only)

The protocol divides the real T2 by its own 99.5th percentile in the brain, a whole-brain statistic that a 96³
training crop does not see. This reports, per case, the median of that normalised T2 in the brain (its overall
brightness) and a few whole-brain statistics of the median-normalised T1ce, and for each statistic how well a line
fitted on the other cases predicts a case's brightness (leave-one-out RMSE), against predicting the mean.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from MedSynthLogic.dataset_prep import find_cases, select_cases

from case_table import read_scored_case  # beside this script

SOURCE_STATS = {
    "T1ce 99.5th pct / median": lambda s: float(np.percentile(s, 99.5)),
    "fraction of T1ce < 0.6 × median": lambda s: float(np.mean(s < 0.6)),
    "T1ce 5th pct / median": lambda s: float(np.percentile(s, 5)),
    "T1ce sd / median": lambda s: float(np.std(s)),
}


def case_rows(cases_dir: Path, cases: List[str]) -> Dict[str, Dict[str, float]]:
    """case → {"T2 median": …, statistic: …}."""
    files = {c.case_id: c for c in select_cases(find_cases(cases_dir), cases, f"Case in {cases_dir}")}
    rows = {}
    for case in cases:
        source, mask, ref = read_scored_case(files[case])
        t1 = source.array[mask].astype(np.float64)
        t1 /= np.median(t1)
        rows[case] = {"T2 median": float(np.median(ref[mask]))}
        rows[case].update({name: f(t1) for name, f in SOURCE_STATS.items()})
    return rows


def loo_rmse(y: np.ndarray, x: Optional[np.ndarray]) -> float:
    """Leave-one-out RMSE of a line in ``x`` (or of the mean when ``x`` is None) predicting ``y``."""
    errors = []
    for i in range(len(y)):
        rest = np.arange(len(y)) != i
        if x is None:
            errors.append(y[rest].mean() - y[i])
        else:
            slope, offset = np.polyfit(x[rest], y[rest], 1)
            errors.append(slope * x[i] + offset - y[i])
    return float(np.sqrt(np.mean(np.square(errors))))


def markdown(rows: Dict[str, Dict[str, float]]) -> str:
    names = list(next(iter(rows.values())))
    lines = ["| case | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {case} | " + " | ".join(f"{row[n]:.3f}" for n in names) + " |" for case, row in rows.items()]
    y = np.array([row["T2 median"] for row in rows.values()])
    lines += ["", f"T2 median over the cases: mean {y.mean():.3f}, sd {y.std(ddof=1):.3f}, range {y.min():.3f}–{y.max():.3f}.",
              "", "| predictor of the T2 median | Pearson r | leave-one-out RMSE |", "|---|---|---|",
              f"| the other cases' mean | – | {loo_rmse(y, None):.4f} |"]
    for name in SOURCE_STATS:
        x = np.array([row[name] for row in rows.values()])
        lines.append(f"| a line in {name} | {np.corrcoef(x, y)[0, 1]:+.2f} | {loo_rmse(y, x):.4f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--cases", required=True)
    args = ap.parse_args()
    rows = case_rows(args.cases_dir, args.cases.split(","))
    intro = ("# The reference T2's brightness per case\n\n`python Testing/Evaluation/target_brightness.py` on "
             f"{len(rows)} cases (see its docstring). T2: divided by its 99.5th percentile in the brain, as the metrics"
             " do; T1ce: divided by its median in the brain, as the U-Net's input is.\n\n")
    args.out.write_text(intro + markdown(rows), encoding="utf-8")


if __name__ == "__main__":
    main()
