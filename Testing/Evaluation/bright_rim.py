"""Measure the bright-rim statistic of MedSynthLogic.input_checks (``bright_rim_ratio``) on every BraTS sequence and
on BraTS T1ce given a rim of bright tissue around the brain, as an incomplete skull-strip leaves scalp fat or
marrow (bright in T1): whole rims 2 and 4 voxels wide, the upper half and the upper quarter of a 3-voxel rim, at
the 99th percentile of the brain ×1.3 and ×0.8, with 10 % noise.

Writes docs/evaluation/input_checks/BRIGHT_RIM.md: per file kind, the sequence rule's verdict and the range of the
ratio, so the threshold ``RIM_RATIO_MIN`` can be read against both sides.

    python Testing/Evaluation/bright_rim.py [--brats ../shared/data/brats18] [--out docs/evaluation/input_checks/BRIGHT_RIM.md]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from MedSynthLogic.input_checks import RIM_RATIO_MIN, RIM_WIDTH_MM, bright_rim_ratio, classify_sequence  # noqa: E402
from MedSynthLogic.volume_io import read_volume  # noqa: E402

SEQUENCES = ("t1", "t1ce", "t2", "flair")
RIMS = {  # name: (width in voxels, share of the rim kept from the top down, brightness × the brain's 99th percentile)
    "a whole rim, 4 voxels, ×1.3": (4, 1.0, 1.3),
    "a whole rim, 2 voxels, ×1.3": (2, 1.0, 1.3),
    "a whole rim, 3 voxels, ×0.8": (3, 1.0, 0.8),
    "the upper half of a 3-voxel rim, ×1.3": (3, 0.5, 1.3),
    "the upper quarter of a 3-voxel rim, ×1.3": (3, 0.25, 1.3),
}


def with_rim(array: np.ndarray, width: int, share: float, brightness: float, seed: int = 0) -> np.ndarray:
    """``array`` with bright voxels in a shell ``width`` voxels thick around its non-zero brain, kept from the top
    (highest z) down to ``share`` of the brain's height."""
    brain = array > 0
    rim = ndimage.binary_dilation(brain, iterations=width) & ~brain
    z = np.flatnonzero(brain.any(axis=(1, 2)))
    rim[: int(z[-1] - share * (z[-1] - z[0]))] = False
    out = array.copy()
    level = float(np.percentile(array[brain], 99)) * brightness
    out[rim] = level * (1.0 + 0.1 * np.random.default_rng(seed).standard_normal(int(rim.sum())))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--brats", type=Path, default=REPO.parent / "shared" / "data" / "brats18")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "evaluation" / "input_checks" / "BRIGHT_RIM.md")
    args = parser.parse_args()
    t0 = time.perf_counter()
    results: Dict[str, List[Tuple[str, str, float]]] = defaultdict(list)
    cases = sorted(p.name for p in args.brats.iterdir() if p.is_dir())
    for case in cases:
        for seq in SEQUENCES:
            volume = read_volume(args.brats / case / f"{case}_{seq}.nii.gz")
            array, spacing = volume.array, volume.spacing
            kinds = {seq: array}
            if seq == "t1ce":
                kinds.update({f"T1ce with {name}": with_rim(array, *rim) for name, rim in RIMS.items()})
            for kind, arr in kinds.items():
                brain = arr > 0
                results[kind].append((case, classify_sequence(arr, brain).kind, bright_rim_ratio(arr, brain, spacing)))
        print(case, flush=True)
    lines = [
        "# The bright-rim statistic on BraTS",
        "",
        f"Made by `python Testing/Evaluation/bright_rim.py` ({time.strftime('%Y-%m-%d')}, {len(cases)} cases, "
        f"{time.perf_counter() - t0:.0f} s). `bright_rim_ratio`: the share of the brain's brightest 5 % lying within "
        f"{RIM_WIDTH_MM:g} mm of the brain's edge, over that shell's share of the brain (1: no preference for the edge). "
        f"A source (not a label map, no mask given) is refused as incompletely skull-stripped when the ratio is at least "
        f"`RIM_RATIO_MIN` = {RIM_RATIO_MIN:g}; before, the sequence rule's verdict (column 2) was all it got. Rims "
        "are added to the BraTS T1ce (`with_rim` in the script); no real incompletely skull-stripped scan was at hand.",
        "",
        "| file | sequence rule: T1-weighted / T2-weighted | ratio min | median | max | at or above the threshold |",
        "|---|---|---|---|---|---|",
    ]
    for kind, rows in results.items():
        ratios = np.array([r for _, _, r in rows])
        t1 = sum(k == "T1-weighted" for _, k, _ in rows)
        t2 = sum(k == "T2-weighted" for _, k, _ in rows)
        lines.append(f"| {kind} | {t1} / {t2} | {ratios.min():.2f} | {np.median(ratios):.2f} | {ratios.max():.2f} | "
                     f"{int((ratios >= RIM_RATIO_MIN).sum())} of {len(rows)} |")
    lines += ["", "Per file (case: verdict, ratio):", ""]
    for kind, rows in results.items():
        lines.append(f"- {kind}: " + "; ".join(f"{c[8:]} {k.split('-')[0]} {r:.2f}" for c, k, r in rows))
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
