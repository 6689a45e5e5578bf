"""Where the synthetic T2's error is: brain edge, tumour, bright fluid; and how it depends on the true intensity.

usage: python Testing/Evaluation/error_breakdown.py CASES_DIR PREDICTIONS_DIR OUT.md

PREDICTIONS_DIR holds ``<case>_synthetic_t2.nii.gz`` from ``medsynth evaluate --save-predictions``. The unit is the
evaluation protocol's (reference / its 99.5th percentile in the brain mask, prediction / the model's output scale,
both clipped to [0, 1]). The table says which regions a better model must fix; MODEL_CARD.md quotes it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from MedSynthLogic.config import NormalisationConfig
from MedSynthLogic.dataset_prep import find_cases, select_cases
from MedSynthLogic.metrics import normalise_for_metrics, psnr, scale_prediction
from MedSynthLogic.normalisation import brain_mask
from MedSynthLogic.volume_io import read_volume

EDGE_VOXELS = 3
BRIGHT = 0.6
OUTPUT_SCALE = NormalisationConfig().output_scale  # the bundled models' unit


def breakdown(source: np.ndarray, target: np.ndarray, pred: np.ndarray, seg: np.ndarray | None) -> dict:
    """PSNR inside/at the edge of the mask, squared-error shares of three regions, signed error by true-intensity decile."""
    brain = brain_mask(source, 0.0)
    t = normalise_for_metrics(target, brain)
    p = scale_prediction(pred, brain, OUTPUT_SCALE)
    se = (p - t) ** 2
    total = se[brain].sum()
    interior = ndimage.binary_erosion(brain, iterations=EDGE_VOXELS)
    edge = brain & ~interior
    tumour = (seg > 0) & brain if seg is not None else np.zeros_like(brain)
    bright = brain & (t > BRIGHT) & ~tumour
    signed = (p - t)[brain]
    edges = np.quantile(t[brain], np.linspace(0, 1, 11))
    decile = np.clip(np.searchsorted(edges, t[brain], side="right") - 1, 0, 9)
    return {
        "psnr": psnr(p, t, brain),
        "psnr_interior": psnr(p, t, interior),
        "psnr_edge": psnr(p, t, edge),
        "edge": (edge.sum() / brain.sum(), se[edge].sum() / total),
        "tumour": (tumour.sum() / brain.sum(), se[tumour].sum() / total),
        "bright": (bright.sum() / brain.sum(), se[bright].sum() / total),
        "bias_lowest_decile": float(signed[decile == 0].mean()),
        "bias_highest_decile": float(signed[decile == 9].mean()),
        "correlation": float(np.corrcoef(p[brain], t[brain])[0, 1]),
    }


def main(argv: list[str]) -> int:
    cases_dir, pred_dir, out = Path(argv[0]), Path(argv[1]), Path(argv[2])
    rows = [
        "| case | PSNR | PSNR interior | PSNR edge band | edge band: voxels / squared error | tumour: voxels / squared error "
        "| bright fluid (T2 > 0.6, not tumour): voxels / squared error | mean error, darkest tenth of true T2 "
        "| mean error, brightest tenth | correlation |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    predictions = sorted(pred_dir.glob("*_synthetic_t2.nii.gz"))
    ids = [p.name.replace("_synthetic_t2.nii.gz", "") for p in predictions]
    for case, pred_path in zip(select_cases(find_cases(cases_dir), ids, f"Case in {cases_dir}"), predictions):
        r = breakdown(read_volume(case.source).array, read_volume(case.target).array,
                      read_volume(pred_path).array, read_volume(case.seg).array if case.seg else None)
        share = lambda k: f"{100 * r[k][0]:.0f} % / {100 * r[k][1]:.0f} %"  # noqa: E731
        rows.append(f"| {case.case_id} | {r['psnr']:.2f} | {r['psnr_interior']:.2f} | {r['psnr_edge']:.2f} | {share('edge')} | {share('tumour')} "
                    f"| {share('bright')} | {r['bias_lowest_decile']:+.3f} | {r['bias_highest_decile']:+.3f} | {r['correlation']:.2f} |")
        print(rows[-1], flush=True)
    note = (f"\nEdge band: the outer {EDGE_VOXELS} voxels of the brain mask. Errors are prediction − reference in the "
            "evaluation unit (1 = the reference's 99.5th percentile).\n")
    out.write_text("\n".join(rows) + "\n" + note, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
