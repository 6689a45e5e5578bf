"""What a source's voxel size does to the synthesis: a BraTS T1ce (1 mm) resampled to 0.5 mm, synthesized by the
default model with and without MedSynth's resampling to the training voxel size, scored on the 1 mm grid against
the real T2 (evaluate's protocol, fp32).

Full volume: the 1 mm source, and the 0.5 mm one (resampled inside to 1 mm and back). A central 100 × 100 × 80 mm
block of both: also the 0.5 mm block synthesized as it is (``voxel_size.RESAMPLE_ABOVE`` set to infinity, the behaviour before
session 39), which on the full 0.5 mm volume takes a quarter of an hour on 2 cores.

    python Testing/Evaluation/voxel_size_resampling.py [--brats ../shared/data/brats18] [--case Brats18_CBICA_ALU_1]
        [--out docs/evaluation/input_checks/RESAMPLING.md]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from MedSynthLogic import volume_synthesis, voxel_size  # noqa: E402
from MedSynthLogic.metrics import evaluate_case  # noqa: E402
from MedSynthLogic.model_file import bundled_model_path, load_model  # noqa: E402
from MedSynthLogic.normalisation import brain_mask  # noqa: E402
from MedSynthLogic.volume import Volume, resample_like  # noqa: E402
from MedSynthLogic.volume_io import read_volume  # noqa: E402


def grid(like: Volume, spacing: float, shape_zyx, origin) -> Volume:
    return Volume(np.zeros(shape_zyx, np.float32), (spacing,) * 3, origin, like.direction)


def block(volume: Volume, centre_zyx, size_mm=(80, 100, 100)) -> Volume:
    """A box of ``size_mm`` (z, y, x) around the voxel ``centre_zyx`` of ``volume``, cut by index (axis-aligned)."""
    half = [int(round(m / (2 * volume.spacing[2 - a]))) for a, m in enumerate(size_mm)]
    lo = [c - h for c, h in zip(centre_zyx, half)]
    sl = tuple(slice(a, a + 2 * h) for a, h in zip(lo, half))
    world = np.asarray(volume.direction).reshape(3, 3) @ (np.asarray(lo[::-1], float) * np.asarray(volume.spacing))
    return Volume(np.ascontiguousarray(volume.array[sl]), volume.spacing, tuple(np.asarray(volume.origin) + world),
                  volume.direction)


def score(pred: Volume, source_1mm: Volume, t2: Volume, seg: Volume, model) -> dict:
    on1 = pred if pred.shape == source_1mm.shape and pred.spacing == source_1mm.spacing else resample_like(pred, source_1mm)
    mask = brain_mask(source_1mm.array, model.config.normalisation.mask_threshold)
    m = evaluate_case(on1.array, t2.array, mask, seg.array.astype(np.uint8), pred_scale=model.config.normalisation.output_scale)
    return {k: round(float(m[k]), 3) for k in ("psnr", "ssim", "psnr_tumour") if k in m}


def run(model, source, t2_grid, seg, ref_source) -> dict:
    start = time.perf_counter()
    pred = volume_synthesis.synthesize_volume(model, source, device="cpu", precision="fp32")
    out = score(pred, ref_source, resample_like(t2_grid, ref_source), resample_like(seg, ref_source), model)
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--brats", default=str(REPO.parent / "shared" / "data" / "brats18"))
    ap.add_argument("--case", default="Brats18_CBICA_ALU_1")
    ap.add_argument("--out", default=str(REPO / "docs" / "evaluation" / "input_checks" / "RESAMPLING.md"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    root = Path(args.brats) / args.case / args.case
    src, t2, seg = (read_volume(f"{root}_{s}.nii.gz") for s in ("t1ce", "t2", "seg"))
    model = load_model(bundled_model_path())
    fine = resample_like(src, grid(src, 0.5, tuple(2 * n for n in src.shape), tuple(o - 0.25 for o in src.origin)))
    centre = tuple(int(v) for v in np.round(np.argwhere(src.array > 0).mean(axis=0)))
    src_block = block(src, centre)
    fine_block = block(fine, tuple(2 * c for c in centre))
    rows = {
        "1 mm source (full volume)": run(model, src, t2, seg, src),
        "0.5 mm source, resampled to 1 mm inside (full volume)": run(model, fine, t2, seg, src),
        "1 mm source (central block)": run(model, src_block, t2, seg, src_block),
        "0.5 mm source, resampled to 1 mm inside (central block)": run(model, fine_block, t2, seg, src_block),
    }
    voxel_size.RESAMPLE_ABOVE = float("inf")
    rows["0.5 mm source as it is, no resampling (central block; before session 39)"] = run(model, fine_block, t2, seg,
                                                                                          src_block)
    lines = ["# A source's voxel size: resampled to the training one, or not", "",
             f"Written by `Testing/Evaluation/voxel_size_resampling.py` on {args.case} (a held-out case), default model "
             f"(`{bundled_model_path().name}`), fp32, 2-core CPU shared with other work (times are indicative). "
             "The 0.5 mm source is the 1 mm T1ce resampled linearly to 0.5 mm; every synthesis is scored on the 1 mm "
             "grid against the real T2, inside the brain (evaluate's protocol; the block: its own brain voxels).", "",
             "| source | PSNR (dB) | SSIM | tumour PSNR (dB) | seconds |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r.get('psnr_tumour', float('nan')):.2f} | {r['seconds']} |")
    r = list(rows.values())
    lines += ["", f"Against the 1 mm source, in PSNR: the resampled 0.5 mm source {r[1]['psnr'] - r[0]['psnr']:+.2f} dB "
              f"on the full volume; on the central block {r[3]['psnr'] - r[2]['psnr']:+.2f} dB resampled and "
              f"{r[4]['psnr'] - r[2]['psnr']:+.2f} dB as it is. The block, cut through the brain on every side, loses more "
              "either way (why was not measured); synthesized as it is, the networks see half the anatomy in their view "
              "that they were trained on.",
              "", "```json", json.dumps(rows, indent=1), "```", ""]
    Path(args.out).write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
