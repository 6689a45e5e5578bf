"""Can the shipped model's PSNR be raised without retraining? Test-time adjustments, measured case by case.

usage: python Testing/Evaluation/test_time_adjustments.py CASES_DIR MODEL OUT.md --cases A,B,C --train-cases D,E,...

Each adjustment uses only the source and statistics of the training cases, never the case's own T2:
- ``source median-matched``: the normalised T1ce rescaled so that its median in the brain equals the training cases'
  mean median (the T1ce's 99.5th percentile follows the enhancing tumour, so its scale varies between cases);
- ``output / own 99.5th pct``: the synthesis divided by its own 99.5th percentile in the brain, as the reference is;
- ``output quantile-matched``: the synthesis's brain histogram mapped onto the training T2s' mean quantile function
  (undoing the regression to the mean that ERROR_BREAKDOWN.md shows).
Metrics are `medsynth evaluate`'s protocol (brain-mask PSNR and SSIM).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List

import numpy as np

from MedSynthLogic.dataset_prep import find_cases, select_cases
from MedSynthLogic.inference import synthesize_array
from MedSynthLogic.metrics import normalise_for_metrics
from MedSynthLogic.model_file import load_model
from MedSynthLogic.normalisation import brain_mask, normalise_source
from MedSynthLogic.volume_io import read_volume

from case_table import markdown, score  # beside this script

QUANTILES = np.linspace(0.0, 100.0, 201)


def adjustments(cases_dir: Path, model_path: str, cases: List[str], train_cases: List[str]) -> Dict[str, Dict[str, tuple]]:
    """case → adjustment → (PSNR, SSIM)."""
    model = load_model(model_path)
    norm = model.config.normalisation
    files = {c.case_id: c for c in select_cases(find_cases(cases_dir), cases + train_cases, f"Case in {cases_dir}")}
    sources = {}
    for case in cases + train_cases:
        raw = read_volume(files[case].source).array
        mask = brain_mask(raw, norm.mask_threshold)
        sources[case] = (normalise_source(raw, mask, norm)[0], mask)
    median = {c: float(np.median(s[m])) for c, (s, m) in sources.items()}
    train_median = float(np.mean([median[c] for c in train_cases]))
    quantile_fn = np.mean(
        [np.percentile(normalise_for_metrics(read_volume(files[c].target).array, sources[c][1])[sources[c][1]], QUANTILES) for c in train_cases],
        axis=0,
    )
    out: Dict[str, Dict[str, tuple]] = {}
    for case in cases:
        src, mask = sources[case]
        ref = normalise_for_metrics(read_volume(files[case].target).array, mask)
        plain = np.clip(synthesize_array(model.chain, src, mask), 0.0, 1.0)
        matched_src = np.where(mask, np.clip(src * (train_median / median[case]), norm.source.clip_min, norm.source.clip_max), 0.0)
        variants = {
            "none": plain,
            "source median-matched": np.clip(synthesize_array(model.chain, matched_src.astype(np.float32), mask), 0.0, 1.0),
            "output / own 99.5th pct": np.where(mask, np.clip(plain / np.percentile(plain[mask], 99.5), 0.0, 1.0), 0.0),
            "output quantile-matched": np.where(mask, np.interp(plain, np.percentile(plain[mask], QUANTILES), quantile_fn), 0.0),
        }
        out[case] = score(case, variants, ref, mask)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases_dir", type=Path)
    ap.add_argument("model")
    ap.add_argument("out", type=Path)
    ap.add_argument("--cases", required=True)
    ap.add_argument("--train-cases", required=True)
    args = ap.parse_args()
    train_cases = args.train_cases.split(",")
    results = adjustments(args.cases_dir, args.model, args.cases.split(","), train_cases)
    intro = (
        f"# Test-time adjustments of `{Path(args.model).name}`\n\n`python Testing/Evaluation/test_time_adjustments.py`"
        f" on {', '.join(results)} (see its docstring); every adjustment uses only the source and the training cases"
        f" ({len(train_cases)}), never the case's own T2.\n\n"
    )
    args.out.write_text(intro + markdown(results), encoding="utf-8")


if __name__ == "__main__":
    main()
