"""Could an "unusual intensity profile" note flag the contrast change that costs the default 1.5 dB (gamma 1.25)?

For each BraTS case the T1ce's brain is normalised as the default model normalises it, and the 10th–90th
percentiles of that profile are compared, leave-one-out, with the range of the other cases' (the range a note would
have to use: with 14 cases there is no distribution to fit). A shifted source (input_shift.py's contrast changes and
the case's T1 in place of the T1ce) would be flagged when any of its percentiles leaves that range. Writes
docs/evaluation/input_checks/INTENSITY_PROFILE.md.

    python Testing/Evaluation/intensity_profile_spread.py [--brats ../shared/data/brats18] [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from MedSynthLogic.config import ModelConfig, from_dict  # noqa: E402
from MedSynthLogic.dataset_cases import find_cases  # noqa: E402
from MedSynthLogic.model_file import bundled_model_path, read_header  # noqa: E402
from MedSynthLogic.normalisation import brain_mask, normalise_source  # noqa: E402
from MedSynthLogic.volume_io import read_volume  # noqa: E402
from input_shift import shifted_sources  # noqa: E402

PERCENTILES = (10, 25, 50, 75, 90)
SHIFTS = ("none", "gamma 0.8", "gamma 1.25", "T1 instead of T1ce")


def profiles(brats: Path) -> Dict[str, Dict[str, np.ndarray]]:
    """case → shift → the normalised brain's percentiles."""
    norm = from_dict(ModelConfig, read_header(bundled_model_path())["model_config"]).normalisation
    out: Dict[str, Dict[str, np.ndarray]] = {}
    for case in find_cases(brats):
        source = read_volume(case.source)
        mask = brain_mask(source.array, norm.mask_threshold)
        out[case.case_id] = {}
        for shift, shifted in shifted_sources(case, mask, source).items():
            if shift in SHIFTS:
                normalised, _ = normalise_source(shifted.array, mask, norm)
                out[case.case_id][shift] = np.percentile(normalised[mask], PERCENTILES)
    return out


def leave_one_out(table: Dict[str, Dict[str, np.ndarray]]) -> Dict[str, List[int]]:
    """shift → per case, how many percentiles leave the other cases' unshifted range."""
    counts: Dict[str, List[int]] = {shift: [] for shift in SHIFTS}
    for case, rows in table.items():
        others = np.stack([r["none"] for c, r in table.items() if c != case])
        low, high = others.min(axis=0), others.max(axis=0)
        for shift, values in rows.items():
            counts[shift].append(int(((values < low) | (values > high)).sum()))
    return counts


def report(table: Dict[str, Dict[str, np.ndarray]], counts: Dict[str, List[int]], brats: Path) -> str:
    cols = " | ".join(f"p{p}" for p in PERCENTILES)
    lines = [
        "# Intensity profile of the T1ce: spread between cases against a contrast change", "",
        f"`python Testing/Evaluation/intensity_profile_spread.py --brats {brats}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}): "
        "the brain's percentiles after the default model's normalisation (the T1ce divided by its 99.5th percentile "
        "in the brain). A source counts as flagged when any percentile leaves the range of the other 13 cases' "
        "unshifted T1ce (leave-one-out).", "",
        "| shift | flagged cases | median shift of p50 against the same case |", "|---|---|---|",
    ]
    for shift in SHIFTS:
        deltas = [rows[shift][2] - rows["none"][2] for rows in table.values() if shift in rows]
        flagged = sum(1 for n in counts[shift] if n)
        lines.append(f"| {shift} | {flagged} of {len(counts[shift])} | {np.median(deltas):+.3f} |")
    spread = np.stack([rows["none"] for rows in table.values()])
    lines += ["", f"Between cases the unshifted p50 spans {spread[:, 2].min():.3f}–{spread[:, 2].max():.3f}.", "",
              f"| case | shift | {cols} |", "|---|---|" + "---|" * len(PERCENTILES)]
    for case, rows in table.items():
        for shift, values in rows.items():
            lines.append(f"| {case} | {shift} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    return "\n".join(lines) + "\n"


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--brats", type=Path, default=REPO.parent / "shared" / "data" / "brats18")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "evaluation" / "input_checks" / "INTENSITY_PROFILE.md")
    args = p.parse_args(argv)
    table = profiles(args.brats)
    text = report(table, leave_one_out(table), args.brats)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
