"""Does a U-Net's eval mode (instance norm with running statistics) fit its training crops as its training mode does?

usage: python Testing/Evaluation/unet_norm_modes.py MODEL PATCH_FILE [--cases 4] [--crops 8] [--seed 123] [--out FILE]

``unet3d`` trains its instance norms on each crop's own statistics and synthesizes with their running averages
(so a tile equals the whole volume). If the two disagreed, a model could fit its crops in training and still
synthesize badly. This cuts the same brain-centred training crops (``CropBatches``, first stage, no context) from
the first ``--cases`` training volumes of ``PATCH_FILE`` (``medsynth prepare``'s ``train.h5``) and reports the
masked L2 of the model's first stage on them in both modes, with the PSNR that L2 means (data range 1).
"""

from __future__ import annotations

import argparse
import copy
import math
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from MedSynthLogic.crops import CropBatches, crop_volumes
from MedSynthLogic.h5data import load_volumes, patch_file_info
from MedSynthLogic.model_file import load_model


def masked_l2(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean squared error over the mask, as the training loss computes it."""
    return float(((pred - target) ** 2 * mask).sum() / mask.sum())


def compare_modes(model_path: Path, patch_file: Path, cases: int, crops: int, seed: int, size: Optional[int]) -> Dict[str, List[float]]:
    """Masked L2 per crop: eval mode (running statistics) and training mode (each crop's own statistics)."""
    net = load_model(model_path, stages=1).chain.stages[0].eval()
    per_crop = copy.deepcopy(net).train()  # a copy: training mode updates the running statistics it reads
    info = patch_file_info(patch_file)
    volumes = crop_volumes(load_volumes(patch_file, sorted(info["case_ids"])[:cases]))
    edge = size or info["source_patch"]
    batches = CropBatches(volumes, edge, 1, seed=seed, stage=0)
    out: Dict[str, List[float]] = {"running statistics (eval)": [], "per-crop statistics (training)": []}
    with torch.no_grad():
        for i in range(crops):
            src, tgt, mask = batches.batch(i)
            out["running statistics (eval)"].append(masked_l2(net(src), tgt, mask))
            out["per-crop statistics (training)"].append(masked_l2(per_crop(src), tgt, mask))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("patch_file", type=Path)
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--crops", type=int, default=8)
    ap.add_argument("--seed", type=int, default=123)
    ap.add_argument("--size", type=int, default=None, help="crop edge (default: the patch file's source_patch)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    result = compare_modes(args.model, args.patch_file, args.cases, args.crops, args.seed, args.size)
    lines = [f"model {args.model}, {args.crops} crops from the first {args.cases} training volumes of {args.patch_file}, seed {args.seed}"]
    for name, values in result.items():
        mean = float(np.mean(values))
        lines.append(f"{name}: masked L2 {mean:.5f} (PSNR {10 * math.log10(1 / mean):.2f} dB); per crop " + " ".join(f"{v:.4f}" for v in values))
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
