"""Collect docs/evaluation/<row>/metrics.json into one Markdown table (docs/evaluation/SUMMARY.md).

The rows and their descriptions are listed here, so the table in MODEL_CARD.md is generated from measured files,
never typed by hand.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROWS = [
    ("baseline_lookup", "1-D intensity lookup T1ce→T2 (256 bins, fitted on the 11 training cases)"),
    ("baseline_lookup_median", "the same lookup, T1ce divided by its median instead of its 99.5th percentile"),
    ("run1_stage0_l2", "run 1, generator only, L2"),
    ("run1_stage0_l2_gdl", "run 1, generator only, L2 + GDL"),
    ("run1_stage0_l2_gdl_adv", "run 1, L2 + GDL + adversarial (λ1 = 0.05), stage 1 of the ACM"),
    ("run1_stage0_no_residual", "run 1, L2 + GDL + adversarial, without the long-term residual"),
    ("run1_acm_2stages", "run 1, + ACM stage 2"),
    ("run1_acm_3stages", "run 1, + ACM stage 3"),
    ("bundled_stage1", "the paper's FCN (run 2, λ1 = 0.01), stage 1 only"),
    ("bundled_2stages", "the paper's FCN, stages 1–2 (H100; the model shipped until stage 3 was trained)"),
    ("bundled", "the paper's 3-stage FCN (stage 3 trained on the CPU; the default until session 26, now "
                "`medsynth_t1ce_t2_nie2018.safetensors`)"),
    ("bundled_flip_tta", "the paper's 3-stage FCN, with flip averaging"),
    ("bundled_plus_stage4", "the 3-stage FCN + a 4th stage (CPU, 602 iterations; not shipped, MODEL_CARD.md)"),
    ("unet3d_ablation/prior_fcn_q_blend", "the Q blend (the 3-stage FCN + one U-Net stage trained on the CPU with the "
                                          "full loss, blended 0.5; the default in sessions 26–27)"),
    ("unet3d_ablation/prior_fcn_l2_blend", "the L2-only blend (the same with a U-Net stage trained with the L2 loss "
                                           "alone, run S, seed 0; the default in sessions 28–30)"),
    ("unet3d_ablation/default_l2_blend_flip", "the L2-only blend with flip averaging (`--flip-tta`, 1.7× the time)"),
    ("unet3d_ablation/prior_fcn_l2_seed2_blend", "the L2-only seed-2 blend, the default in sessions 31–44 (the same "
                                                 "recipe with seed 2, run W; MODEL_CARD.md)"),
    ("unet3d_ablation/default_l2_seed2_blend_flip", "the L2-only seed-2 blend with flip averaging (`--flip-tta`, 1.7× "
                                                    "the time; session 32)"),
    ("unet3d_ablation/prior_fcn_l2_seed2_lowlr_blend", "the Z blend, the default in session 45 (run W's refiner "
                                                       "trained 3000 more iterations at a peak learning rate of 1e-4, "
                                                       "seed 4; MODEL_CARD.md)"),
    ("unet3d_ablation/prior_fcn_l2_seed2_lowlr2_blend", "**the default since session 46: the Z2 blend** (run Z's refiner "
                                                        "trained 3000 more iterations the same way, seed 5; a tie with "
                                                        "the Z blend; MODEL_CARD.md)"),
    ("unet3d_ablation/prior_fcn_l2_crop128_blend", "the Z3 blend (run Z2's refiner trained 1200 more iterations on "
                                                   "128³ crops, seed 6; not shipped: PSNR below the default; session "
                                                   "47)"),
    ("unet3d_ablation/median_fcn", "the paper's 3-stage FCN fine-tuned on the CPU (30 min) on a T1ce divided by its "
                                   "in-brain median instead of its 99.5th percentile (session 30; reported)"),
    ("unet3d_ablation/median_aug_fcn", "the same fine-tuning with the patches' T1ce augmented (gamma, noise, thick "
                                       "slices; session 31; reported)"),
    ("unet3d_ablation/median_chain_blend", "the median chain blend (that FCN + half of a U-Net stage fine-tuned on it; "
                                           "not shipped: it missed its rule's shifted-source half, MODEL_CARD.md)"),
    ("unet3d_ablation/median_aug_chain_blend", "the augmented median chain blend (the augmented FCN + half of a U-Net "
                                               "stage fine-tuned on it; session 32; not shipped, below the default)"),
    ("unet3d_ablation/prior_fcn_l2_alt_t1_blend", "the T1-mixed blend (W's refiner fine-tuned with a quarter of its "
                                                  "crops from each case's T1; session 32; not shipped: SSIM under its "
                                                  "rule's floor)"),
    ("unet3d_ablation/prior_fcn_l2_alt_t1_p50_blend", "the half-T1 blend (X's refiner fine-tuned with half of its crops "
                                                      "from each case's T1; session 33; not shipped: below the "
                                                      "default)"),
    ("unet3d_ablation/prior_fcn_l2_contrast_blend", "the contrast-context blend (run S's refiner trained on with its "
                                                    "prior's synthesis also for other contrasts, run V; session 29; not "
                                                    "shipped: it missed its rule's shifted-source half)"),
]
METRICS = ["psnr", "ssim", "mae", "psnr_tumour", "ssim_tumour", "mae_tumour", "psnr_calibrated"]


def main(folder: str = "docs/evaluation") -> int:
    root = Path(folder)
    lines = [
        "| model | PSNR (dB) | SSIM | MAE | tumour PSNR | tumour SSIM | tumour MAE | PSNR after gain/offset ¹ |",
        "|---|---|---|---|---|---|---|---|",
    ]
    protocol, case_sets = "", {}
    for name, text in ROWS:
        path = root / name / "metrics.json"
        if not path.is_file():
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        protocol = protocol or data.get("protocol", "")
        case_sets[name] = tuple(c["case"] for c in data["cases"])
        cells = []
        for metric in METRICS:
            stats = data["summary"].get(metric)
            digits = 2 if "psnr" in metric else 3
            cells.append("–" if not stats or stats.get("mean") is None else f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}")
        lines.append(f"| {text} | " + " | ".join(cells) + " |")
    if not case_sets:
        raise SystemExit(f"No report of ROWS is under {root}.")
    if len(set(map(frozenset, case_sets.values()))) > 1:  # one table compares models on the same cases only
        raise SystemExit("The rows were scored on different cases: " + "; ".join(
            f"{name}: {', '.join(ids)}" for name, ids in case_sets.items()))
    first = next(iter(case_sets.values()))
    cases, n = ", ".join(first), len(first)
    out = "\n".join(lines) + (
        f"\n\nMean ± std over the validation cases ({cases}; std: the population standard deviation, ddof 0, "
        f"which reads {100 * (1 - ((n - 1) / n) ** 0.5):.0f} % below the sample SD for {n} cases). Protocol: "
        f"{protocol}." + (" Since 2026-12-07 `evaluate` reads both images as 0 outside the mask for SSIM; on these "
                          "cases that moves a case's SSIM by at most 3e-5 (the lookup, measured), so these figures, "
                          "computed before, stand." if "0 outside the mask" not in protocol else "") + "\n\n"
        "¹ A diagnostic, not a score: the PSNR left after the best per-case gain and offset (least squares inside the "
        "mask). The gap to PSNR is the error due to the case's overall brightness and contrast relative to its T2's "
        "99.5th percentile, which a model that sees only a neighbourhood of the T1ce cannot know; what remains is "
        "error in the structure.\n"
    )
    (root / "SUMMARY.md").write_text(out, encoding="utf-8")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
