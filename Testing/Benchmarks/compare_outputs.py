"""How far two syntheses of the same source are from each other inside the brain (e.g. fp32 against bf16).

The brain is the source's non-zero voxels (BraTS is skull-stripped); the peak is the first output's 99.5th
percentile there, as the evaluation normalises the target.

    python Testing/Benchmarks/compare_outputs.py fp32.nii.gz bf16.nii.gz SOURCE_T1CE.nii.gz
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from MedSynthLogic.metrics import mae, psnr  # noqa: E402
from MedSynthLogic.volume_io import read_volume  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("first")
    p.add_argument("second")
    p.add_argument("source", help="the source both were synthesised from (its non-zero voxels are the brain)")
    args = p.parse_args()
    a, b = read_volume(args.first).array, read_volume(args.second).array
    brain = read_volume(args.source).array > 0
    peak = float(np.percentile(a[brain], 99.5))
    d = (a.astype(np.float64) - b)[brain]
    print(f"brain voxels {int(brain.sum())}, peak (99.5th percentile of the first) {peak:.4g}")
    print(f"PSNR of the second against the first {psnr(b, a, brain, data_range=peak):.2f} dB; mean |difference| "
          f"{mae(b, a, brain) / peak:.2%} of the peak, largest {np.abs(d).max() / peak:.2%}; "
          f"{np.mean(np.abs(d) > 0.01 * peak):.2%} of the brain's voxels differ by more than 1 % of the peak")
    return 0


if __name__ == "__main__":
    sys.exit(main())
