"""How far does the synthesis fall when the T1ce is not like the training cases'? Shifted sources, measured.

usage: python Testing/Evaluation/input_shift.py CASES_DIR OUT_DIR --cases A,B,C --model LABEL=FILE [--model ...]
       [--lookup LABEL=FILE ...] [--precision fp32]

The held-out scans MedSynth meets come from other scanners and pipelines; the input checks let most of them through.
Each shift below is a pure function of the case's own T1ce (nothing is fitted), applied inside the T1ce's brain mask,
which stays the scoring mask for every row so the rows compare like with like:

- ``gamma 0.8`` / ``gamma 1.25``: brain intensities mapped through x**gamma on [0, brain max] (another contrast);
- ``bias field ±20 %``: multiplied by 1 + 0.2·u, u linear from −1 to 1 across the brain's left–right extent;
- ``noise 5 %``: Gaussian noise of sd 5 % of the brain's median (seed 0), negatives set to 0;
- ``3 mm slices``: a 3-voxel box average along the slice axis (array axis 0), i.e. thick slices resampled to 1 mm;
- ``T1 instead of T1ce``: the case's non-contrast T1 (the file named like the source with ``t1ce`` → ``t1``), the
  likeliest wrong pick in Slicer's volume selector.

Every row is scored by ``medsynth evaluate``'s protocol (``metrics.evaluate_pairs``), and says whether
``input_checks.check_source`` accepts the shifted file for the first model and whether
``enhancement.enhancement_notes`` warns that it shows no contrast agent. Writes OUT_DIR/input_shift.json (every
case) and OUT_DIR/INPUT_SHIFT.md (means).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
from scipy import ndimage

from MedSynthLogic.baselines import IntensityLookup
from MedSynthLogic.case_reading import read_case
from MedSynthLogic.dataset_cases import companion_t1
from MedSynthLogic.dataset_prep import find_cases, select_cases, target_background
from MedSynthLogic.enhancement import enhancement_notes
from MedSynthLogic.input_checks import check_source
from MedSynthLogic.metrics import score_pair, scored_results, scoring_of
from MedSynthLogic.model_file import load_model
from MedSynthLogic.progress import json_safe
from MedSynthLogic.source_shifts import contrast_in_brain, t1_in_place
from MedSynthLogic.volume_synthesis import synthesize_volume

Shift = Callable[[np.ndarray, np.ndarray], np.ndarray]
COLUMNS = ("psnr", "ssim", "psnr_tumour", "psnr_calibrated")


def _gamma(g: float) -> Shift:
    def shift(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return contrast_in_brain(x, mask, g)
    return shift


def _bias(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    cols = np.flatnonzero(mask.any(axis=(0, 1)))
    u = np.clip((np.arange(x.shape[2]) - cols[0]) / max(cols[-1] - cols[0], 1) * 2.0 - 1.0, -1.0, 1.0)
    return np.where(mask, x * (1.0 + 0.2 * u)[None, None, :], 0.0)


def _noise(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    sd = 0.05 * float(np.median(x[mask]))
    noisy = x + np.random.default_rng(0).normal(0.0, sd, x.shape)
    return np.where(mask, np.clip(noisy, 0.0, None), 0.0)


def _thick(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.where(mask, ndimage.uniform_filter1d(x.astype(np.float64), 3, axis=0, mode="nearest"), 0.0)


SHIFTS: Dict[str, Optional[Shift]] = {
    "none": lambda x, mask: x,
    "gamma 0.8": _gamma(0.8),
    "gamma 1.25": _gamma(1.25),
    "bias field ±20 %": _bias,
    "noise 5 %": _noise,
    "3 mm slices": _thick,
    "T1 instead of T1ce": None,  # another file, not a function of the T1ce
}


def shifted_sources(case, mask: np.ndarray, source) -> Dict[str, object]:
    """Shift name → shifted source Volume (absent when the case has no such file)."""
    out = {}
    for name, fn in SHIFTS.items():
        if fn is not None:
            out[name] = source.with_array(fn(source.array, mask).astype(np.float32))
            continue
        t1 = companion_t1(case.source)
        if t1 is not None:
            out[name] = t1_in_place(t1, source, mask)
    return out


def measure(cases_dir: Path, cases: List[str], models: Dict[str, str], lookups: Dict[str, str],
            precision: str) -> Tuple[Dict[str, Dict[str, dict]], Dict[str, Dict[str, str]]]:
    """(predictor → shift → scored results, case → shift → input-check verdict for the first model).

    Each case is read as ``evaluate`` reads it (``read_case``: its mask file, a target on another grid resampled and
    scored only where it has data, the segmentation on the source's grid) and each predictor is scored at its own
    normalisation's percentile and scale (``scoring_of``), so the unshifted row is what ``evaluate`` reports."""
    loaded = {label: load_model(path) for label, path in models.items()}
    tables = {label: IntensityLookup.load(path) for label, path in lookups.items()}
    first = next(iter(loaded.values()))
    norm = first.config.normalisation
    scoring = {**{label: scoring_of(m.config.normalisation) for label, m in loaded.items()},
               **{label: scoring_of(t.normalisation) for label, t in tables.items()}}
    rows: Dict[str, Dict[str, list]] = {label: {} for label in scoring}
    verdicts: Dict[str, Dict[str, str]] = {}
    for case in select_cases(find_cases(cases_dir), cases, f"Case in {cases_dir}"):
        read = read_case(case, norm.mask_threshold, target_fill=target_background(norm.target))
        source, target, mask = read.source, read.target, read.mask
        verdicts[case.case_id] = {}
        for shift, shifted in shifted_sources(case, mask, source).items():
            findings = check_source(shifted, first.config)
            verdict = "refused: " + ", ".join(f.code for f in findings) if findings else "accepted"
            if enhancement_notes(shifted, first.config, mask=mask, findings=findings):
                verdict += ", warned: no sign of enhancement"
            verdicts[case.case_id][shift] = verdict
            for label in scoring:
                if label in loaded:
                    pred = synthesize_volume(loaded[label], shifted, mask=mask, device="cpu", precision=precision)
                else:
                    pred = shifted.with_array(tables[label].apply(shifted.array, mask))
                rows[label].setdefault(shift, []).append(
                    score_pair(case.case_id, pred, target, read.scored, read.tumour, *scoring[label]))
            print(case.case_id, shift, verdicts[case.case_id][shift], flush=True)
    results = {label: {shift: scored_results(cases_scored, *scoring[label]) for shift, cases_scored in by_shift.items()}
               for label, by_shift in rows.items()}
    return results, verdicts


def markdown(results: Dict[str, Dict[str, dict]], verdicts: Dict[str, Dict[str, str]]) -> str:
    """One table per predictor: a row per shift, the mean of each column over the cases, its change from no shift."""
    lines = []
    for label, by_shift in results.items():
        lines += [f"### {label}", "", "| source | cases | PSNR (dB) | SSIM | tumour PSNR | PSNR after gain/offset | input checks |",
                  "|---|---|---|---|---|---|---|"]
        base = {row["case"]: row for row in by_shift["none"]["cases"]}
        for shift, result in by_shift.items():
            s = result["summary"]
            cells = []
            for key in COLUMNS:
                if key not in s:
                    cells.append("")
                    continue
                fmt = ".3f" if key == "ssim" else ".2f"
                # the change over this row's own cases (a T1 exists for some cases only), as a mean of case changes
                changes = [row[key] - base[row["case"]][key] for row in result["cases"]
                           if row.get(key) is not None and base[row["case"]].get(key) is not None]
                delta = "" if shift == "none" or not changes else f" ({float(np.mean(changes)):+{fmt}})"
                cells.append(f"{s[key]['mean']:{fmt}}{delta}")
            said = sorted({verdicts[c["case"]][shift] for c in result["cases"]})
            lines.append(f"| {shift} | {len(result['cases'])} | " + " | ".join(cells) + f" | {'; '.join(said)} |")
        lines.append("")
    return "\n".join(lines)


def _pairs(values: List[str], flag: str) -> Dict[str, str]:
    out = {}
    for value in values:
        label, sep, path = value.partition("=")
        if not sep or not label or not path:
            raise SystemExit(f"{flag} takes LABEL=FILE, not {value!r}")
        out[label] = path
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases_dir", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--cases", required=True)
    ap.add_argument("--model", action="append", required=True, help="LABEL=FILE; the first one's input checks are reported")
    ap.add_argument("--lookup", action="append", default=[], help="LABEL=FILE from medsynth fit-lookup")
    ap.add_argument("--precision", default="fp32")
    args = ap.parse_args()
    results, verdicts = measure(args.cases_dir, args.cases.split(","), _pairs(args.model, "--model"),
                                _pairs(args.lookup, "--lookup"), args.precision)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "input_shift.json").write_text(json.dumps(json_safe({"results": results, "input_checks": verdicts}),
                                                              indent=1, allow_nan=False), encoding="utf-8")
    intro = (f"# Shifted sources\n\n`python Testing/Evaluation/input_shift.py` on {', '.join(verdicts)} "
             f"(precision {args.precision}; the shifts: its docstring). Means over the cases; in brackets the change "
             "from the unshifted source.\n\n")
    (args.out_dir / "INPUT_SHIFT.md").write_text(intro + markdown(results, verdicts), encoding="utf-8")


if __name__ == "__main__":
    main()
