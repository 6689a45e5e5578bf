"""What the probe scripts share: reading a case as `medsynth evaluate` does, and the Markdown table they write
(one row per case, one column per variant, cells PSNR / SSIM)."""

from __future__ import annotations

from typing import Any, Dict, Tuple

import numpy as np


def read_scored_case(case: Any, mask_threshold: float = 0.0) -> Tuple[Any, np.ndarray, np.ndarray]:
    """A case's source ``Volume``, its brain mask and its reference T2 in the metrics' unit, on the source's grid:
    what `medsynth evaluate` scores against, so a probe's unadjusted column matches the evaluation."""
    from MedSynthLogic.case_reading import read_case
    from MedSynthLogic.metrics import normalise_for_metrics

    read = read_case(case, mask_threshold, tumour=False)  # a case's mask file, files on another grid: as evaluate
    return read.source, read.mask, normalise_for_metrics(read.target.array, read.mask)


def markdown(results: Dict[str, Dict[str, Tuple[float, float]]]) -> str:
    """case → variant → (PSNR, SSIM) as a table with a mean row, so every probe reports in the same form."""
    names = list(next(iter(results.values())))
    lines = ["| case | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for case, row in results.items():
        lines.append(f"| {case} | " + " | ".join(f"{row[n][0]:.2f} / {row[n][1]:.3f}" for n in names) + " |")
    mean = {n: np.mean([row[n] for row in results.values()], axis=0) for n in names}
    lines.append("| **mean** | " + " | ".join(f"**{mean[n][0]:.2f} / {mean[n][1]:.3f}**" for n in names) + " |")
    return "\n".join(lines) + "\n\nCells: brain PSNR (dB) / SSIM.\n"


def score(case: str, variants: Dict[str, np.ndarray], ref: np.ndarray, mask: np.ndarray) -> Dict[str, Tuple[float, float]]:
    """variant → (PSNR, SSIM) by ``medsynth evaluate``'s protocol, printed as it comes (probes run for minutes)."""
    from MedSynthLogic.metrics import psnr, ssim3d

    row = {name: (psnr(v, ref, mask), ssim3d(v, ref, mask)) for name, v in variants.items()}
    print(case, {k: f"{p:.2f} dB / {s:.3f}" for k, (p, s) in row.items()}, flush=True)
    return row
