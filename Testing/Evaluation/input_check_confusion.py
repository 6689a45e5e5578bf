"""Measure the input checks (MedSynthLogic.input_checks) on every sequence of the BraTS cases and on the phantom.

Writes docs/evaluation/INPUT_CHECKS.md: the sequence rule's confusion table (true sequence × what the rule
says), what the bundled T1ce model does with each file (accept or refuse, and why), the per-file statistics,
and the other checks on altered phantoms (noisy background, 5 mm slices, rescaled intensities).

    python Testing/Evaluation/input_check_confusion.py [--brats ../shared/data/brats18] [--out docs/evaluation/INPUT_CHECKS.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from MedSynthLogic.config import ModelConfig, from_dict  # noqa: E402
from MedSynthLogic.input_checks import (  # noqa: E402
    LABEL_MAP, T1_WEIGHTED, T2_WEIGHTED, T2_SCORE_THRESHOLD, check_source, classify_sequence,
)
from MedSynthLogic.model_file import bundled_model_path, read_header  # noqa: E402
from MedSynthLogic.phantom import make_phantom  # noqa: E402
from MedSynthLogic.source_names import name_notes  # noqa: E402
from MedSynthLogic.volume_io import Volume, read_volume  # noqa: E402

SEQUENCES = ("t1", "t1ce", "t2", "flair", "seg")
KINDS = (T1_WEIGHTED, T2_WEIGHTED, LABEL_MAP, "unknown")


@dataclasses.dataclass
class Row:
    source: str
    case: str
    sequence: str
    kind: str
    t2_score: str
    outcome: str
    bright_tail: str = ""
    name_note: bool = False


def judge(source: str, case: str, sequence: str, vol: Volume, cfg: ModelConfig, name: str = "") -> Row:
    guess = classify_sequence(vol.array, vol.array > cfg.normalisation.mask_threshold)
    findings = check_source(vol, cfg)
    outcome = "refused: " + ", ".join(f.code for f in findings) if findings else "accepted"
    score = "" if guess.t2_score is None else f"{guess.t2_score:.3f}"
    brain = vol.array[vol.array > cfg.normalisation.mask_threshold]
    tail = f"{np.percentile(brain, 99.5) / np.median(brain):.2f}" if brain.size else ""
    return Row(source, case, sequence, guess.kind, score, outcome, tail, bool(name_notes(name, cfg)))


def brats_rows(folder: Path, cfg: ModelConfig) -> List[Row]:
    rows = []
    for case in sorted(p for p in folder.iterdir() if p.is_dir()):
        for seq in SEQUENCES:
            path = case / f"{case.name}_{seq}.nii.gz"
            if path.is_file():
                rows.append(judge("BraTS", case.name, seq, read_volume(path), cfg, name=path.name))
                print(rows[-1], flush=True)
    return rows


def phantom_rows(cfg: ModelConfig) -> List[Row]:
    rows = []
    for seed in range(3):
        p = make_phantom(seed=seed)
        labels = p.t1ce.with_array(p.labels.astype(np.float32))
        for seq, vol in (("t1ce", p.t1ce), ("t2", p.t2), ("seg", labels)):
            rows.append(judge("phantom", f"seed {seed}", seq, vol, cfg))
    return rows


def altered_rows(cfg: ModelConfig) -> List[Row]:
    """The other checks: what a non-skull-stripped head, thick slices or another intensity scale do."""
    p = make_phantom(seed=0)
    rng = np.random.default_rng(0)
    noisy = p.t1ce.array + np.abs(rng.normal(0, 0.02 * float(np.percentile(p.t1ce.array, 99)), p.t1ce.shape)).astype(np.float32)
    cases = {
        "background with scanner noise (not skull-stripped)": p.t1ce.with_array(noisy),
        "5 mm slices (spacing 1 × 1 × 5 mm)": dataclasses.replace(p.t1ce, spacing=(1.0, 1.0, 5.0)),
        "2 mm voxels (spacing 2 × 2 × 2 mm)": dataclasses.replace(p.t1ce, spacing=(2.0, 2.0, 2.0)),
        "intensities × 1000, rounded to integers": p.t1ce.with_array(np.round(p.t1ce.array * 1000)),
        "intensities ÷ 1000": p.t1ce.with_array(p.t1ce.array / 1000),
    }
    return [judge("phantom seed 0, altered", name, "t1ce", vol, cfg) for name, vol in cases.items()]


def confusion(rows: List[Row]) -> str:
    counts: Dict[str, Counter] = {seq: Counter() for seq in SEQUENCES}
    refused: Counter = Counter()
    noted: Counter = Counter()
    for r in rows:
        counts[r.sequence][r.kind] += 1
        refused[r.sequence] += r.outcome != "accepted"
        noted[r.sequence] += r.name_note
    lines = ["| true sequence | files | " + " | ".join(KINDS) + " | refused by the T1ce model | warned by its file name |",
             "|---|---|" + "---|" * (len(KINDS) + 2)]
    for seq in SEQUENCES:
        n = sum(counts[seq].values())
        if n:
            lines.append(f"| {seq} | {n} | " + " | ".join(str(counts[seq][k]) for k in KINDS)
                         + f" | {refused[seq]} | {noted[seq]} |")
    return "\n".join(lines)


def margins(rows: List[Row]) -> str:
    """How close the BraTS T1ce and T2 come to the threshold (a small margin means a new site may cross it)."""
    score = {seq: [float(r.t2_score) for r in rows if r.sequence == seq and r.t2_score] for seq in ("t1ce", "t2", "flair")}
    if not score["t1ce"] or not score["t2"]:
        return ""
    return (f"Highest T1ce `t2_score` {max(score['t1ce']):.3f}, lowest T2 {min(score['t2']):.3f} (threshold "
            f"{T2_SCORE_THRESHOLD}, midway): a T1ce from another scanner or pipeline may still cross it (then "
            f"`--force`). FLAIR spans {min(score['flair']):.3f} to {max(score['flair']):.3f}, across the threshold: "
            f"a FLAIR with little oedema looks T1-weighted to this rule.")


def leave_one_case_out(rows: List[Row]) -> str:
    """The threshold re-chosen without each case (midway between the others' highest T1ce and lowest T2), then
    applied to that case: a held-out estimate of the rule's errors, where the table above is in-sample."""
    score = {(r.case, r.sequence): float(r.t2_score) for r in rows if r.t2_score}
    cases = sorted({case for case, seq in score if seq == "t1ce"})
    wrong = Counter()
    for held in cases:
        t1ce = [v for (c, q), v in score.items() if q == "t1ce" and c != held]
        t2 = [v for (c, q), v in score.items() if q == "t2" and c != held]
        if not t1ce or not t2:
            return ""
        cut = 0.5 * (max(t1ce) + min(t2))
        wrong["t1ce refused"] += score.get((held, "t1ce"), -1e9) >= cut
        wrong["t2 accepted"] += score.get((held, "t2"), 1e9) < cut
        wrong["flair caught"] += score.get((held, "flair"), -1e9) >= cut
    return (f"Leave one case out (threshold re-chosen midway without the case, then applied to it): "
            f"{wrong['t1ce refused']} of {len(cases)} T1ce refused, {wrong['t2 accepted']} T2 accepted, "
            f"{wrong['flair caught']} FLAIRs caught.")


def t1_against_t1ce(rows: List[Row]) -> str:
    """Whether the brightest voxels (contrast agent in vessels and enhancing tissue) could tell a T1ce from a T1:
    the checks do not try, and this says why."""
    tail = {seq: [float(r.bright_tail) for r in rows if r.sequence == seq and r.bright_tail] for seq in ("t1", "t1ce")}
    if not tail["t1"] or not tail["t1ce"]:
        return ""
    lo, hi = min(tail["t1ce"]), max(tail["t1"])
    return (f"T1 against T1ce: the brain's 99.5th percentile / median spans {min(tail['t1']):.2f}–{hi:.2f} for the T1 "
            f"and {lo:.2f}–{max(tail['t1ce']):.2f} for the T1ce; {sum(v >= lo for v in tail['t1'])} T1 lie at or above "
            f"the lowest T1ce and {sum(v <= hi for v in tail['t1ce'])} T1ce at or below the highest T1. No threshold "
            "separates them, so the checks accept a non-contrast T1 (what it costs: "
            "[input_shift/INPUT_SHIFT.md](input_shift/INPUT_SHIFT.md)).")


def table(rows: List[Row]) -> str:
    lines = ["| source | case | file | rule says | t2_score | p99.5 / median | bundled model |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r.source} | {r.case} | {r.sequence} | {r.kind} | {r.t2_score} | {r.bright_tail} | {r.outcome} |"
              for r in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brats", type=Path, default=REPO.parent / "shared" / "data" / "brats18")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "evaluation" / "INPUT_CHECKS.md")
    args = parser.parse_args()
    cfg = from_dict(ModelConfig, read_header(bundled_model_path())["model_config"])
    t0 = time.monotonic()
    brats = brats_rows(args.brats, cfg) if args.brats.is_dir() else []
    phantom = phantom_rows(cfg)
    altered = altered_rows(cfg)
    seconds = time.monotonic() - t0
    n_cases = len({r.case for r in brats})
    text = f"""# Input checks, measured

Written by `Testing/Evaluation/input_check_confusion.py` ({seconds:.0f} s on a 2-core CPU). Every file below went
through `MedSynthLogic.input_checks.check_source` with the expectations in the bundled model's header (T1ce,
skull-stripped, 1 mm ± {cfg.input.spacing_tolerance_mm:g} mm, anisotropy ≤ {cfg.input.max_anisotropy:g}), which is what
`medsynth synthesize` runs before any compute. The rule is in the docstring of `MedSynthLogic/input_checks.py`:
label map if at most 64 distinct integer values inside the brain; else T2-weighted if `t2_score` ≥
{T2_SCORE_THRESHOLD}, else T1-weighted. `t2_score` adds two statistics of the brain: the fraction of voxels brighter than the
histogram's mode − the mode's position in the 0.5–99.5 percentile range, and the bright tail (95th percentile /
median − 1). The rule and its threshold were chosen on these same {n_cases} BraTS cases, so the BraTS table is a
training-set figure, not a held-out one.

## Sequence rule: confusion table (BraTS 2018, {n_cases} cases)

{confusion(brats) if brats else "(the BraTS folder was not found: no real data measured)"}

{margins(brats)}

{leave_one_case_out(brats)}

{t1_against_t1ce(brats)}

"Warned by its file name": `MedSynthLogic.source_names.name_notes` on the file's name (`<case>_<sequence>.nii.gz`), the
one hint for a T1 given as the T1ce; a warning, never a refusal. BraTS names are its easy case: a clinic's series
descriptions vary, and a T1 named like a T1ce, or named nothing, passes silently.

## Phantom (`make_phantom`, default shape, seeds 0–2)

{confusion(phantom)}

## Other checks on altered phantoms

"rule says" is the sequence rule on the voxels above 0; when the background is not 0 that is the whole volume, so
`check_source` then reports only the skull-stripping finding and does not judge the sequence.

{table(altered)}

## Every file

{table(brats + phantom)}
"""
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
