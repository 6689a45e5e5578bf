"""Paired comparison of two runs' logged training losses, iteration by iteration.

usage: python Testing/Training/compare_training_logs.py RUN_A/training_log.csv RUN_B/training_log.csv
           [--stage 0] [--first 301] [--last 600] [--column l2]

Runs with the same seed cut the same crops at the same (stage, iteration) (``CropBatches``), so the ratio of their
logged 10-iteration means, row by row, removes the crop-to-crop spread a comparison of means would carry. Prints the
number of paired rows, the median and quartiles of A / B, and each run's mean. Where a log holds a row twice (a run
resumed from an earlier checkpoint) the later row counts.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Dict

import numpy as np


def logged(path: Path, stage: int, first: int, last: int, column: str) -> Dict[int, float]:
    """iteration → logged value of ``column`` for ``stage``'s iteration rows in [first, last]."""
    out: Dict[int, float] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["kind"] != "iteration" or int(row["stage"]) != stage or not row.get(column):
                continue
            it = int(row["iteration"])
            if first <= it <= last:
                out[it] = float(row[column])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("log_a", type=Path)
    ap.add_argument("log_b", type=Path)
    ap.add_argument("--stage", type=int, default=0, help="0-based stage (default 0)")
    ap.add_argument("--first", type=int, default=301)
    ap.add_argument("--last", type=int, default=600)
    ap.add_argument("--column", default="l2")
    args = ap.parse_args()
    a = logged(args.log_a, args.stage, args.first, args.last, args.column)
    b = logged(args.log_b, args.stage, args.first, args.last, args.column)
    common = sorted(set(a) & set(b))
    if not common:
        raise SystemExit(f"No iteration in {args.first}–{args.last} of stage {args.stage} is logged in both files.")
    ratio = np.array([a[i] / b[i] for i in common])
    q1, med, q3 = np.percentile(ratio, [25, 50, 75])
    print(f"{len(common)} paired rows, stage {args.stage}, iterations {common[0]}–{common[-1]}, column {args.column}")
    print(f"A / B: median {med:.3f} (quartiles {q1:.3f}–{q3:.3f}); A / B < 1 in {int((ratio < 1).sum())} of {len(ratio)} rows")
    print(f"mean A {np.mean([a[i] for i in common]):.5f} ({args.log_a}); mean B {np.mean([b[i] for i in common]):.5f} ({args.log_b})")


if __name__ == "__main__":
    main()
