"""How much a unet3d synthesis depends on the frame's margin, and what a smaller frame would save (a script, not a test).

The U-Net runs once per stage over the brain box grown by ``unet_inference.MARGIN`` voxels. A smaller margin
means fewer voxels and a faster synthesis, the one large lever left for the ≤ 10 s target. It is free only if the
output stays the same. It need not: the receptive field (202 voxels) spans the whole frame, so where the zero
padding starts reaches every voxel. This script measures both on one case, with a real model file:
the time per margin, and the agreement of each margin's output with the default margin's inside the brain mask.

Use a training case: the agreement is a property of the inference, and the validation cases stay for scoring.

    python Testing/Benchmarks/unet_frame_margin.py MODEL.safetensors T1CE.nii.gz --margins 16,8,0
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from MedSynthLogic.left_right import LeftRight  # noqa: E402
from MedSynthLogic.model_file import load_model  # noqa: E402
from MedSynthLogic.normalisation import brain_mask, normalise_source  # noqa: E402
from MedSynthLogic.tiled_synthesis import mask_bbox  # noqa: E402
from MedSynthLogic.unet_inference import MARGIN, frame_of, synthesize_unet  # noqa: E402
from MedSynthLogic.volume_io import read_volume  # noqa: E402
from _machine import cpu_model, ram_gib  # noqa: E402


def agreement(out: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> Dict[str, float]:
    """Differences inside ``mask``, relative to the reference's peak there (network units)."""
    peak = float(ref[mask].max())
    diff = np.abs(out - ref)[mask]
    mse = float(np.mean(diff.astype(np.float64) ** 2))
    return {
        "max_rel": float(diff.max()) / peak,
        "mean_rel": float(diff.mean()) / peak,
        "psnr_db": 10 * np.log10(peak**2 / mse) if mse > 0 else float("inf"),
        "frac_over_1pct": float(np.mean(diff > 0.01 * peak)),
    }


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a unet3d model file")
    parser.add_argument("source", help="a skull-stripped T1ce (use a training case)")
    parser.add_argument("--margins", default=f"{MARGIN},8,0", help="comma-separated; the first is the reference")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    model = load_model(args.model, device="cpu")
    if model.config.generator.kind != "unet3d":
        parser.error(f"{args.model} holds a {model.config.generator.kind} model; this script measures unet3d frames.")
    source = read_volume(args.source)
    mask = brain_mask(source.array, model.config.normalisation.mask_threshold)
    src, _ = normalise_source(source.array, mask, model.config.normalisation)
    src = np.ascontiguousarray(src, dtype=np.float32)
    box = mask_bbox(mask)
    multiple = model.config.generator.size_multiple
    margins = [int(m) for m in args.margins.split(",")]
    print(f"# python Testing/Benchmarks/unet_frame_margin.py {args.model} {args.source} --margins {args.margins}")
    print(f"machine: nproc={os.cpu_count()}, cpu={cpu_model()}, torch={torch.__version__}, ram_gib={ram_gib()}, "
          f"loadavg_start={os.getloadavg()}")
    print(f"model: {model.config.generator.kind}, {len(model.chain.stages)} stages; source {source.shape}, "
          f"mask box {[b - a for a, b in box]}")
    outs = {}
    for m in margins:
        frame = frame_of(box, src.shape, multiple, m)
        start = time.perf_counter()
        outs[m] = synthesize_unet(model.chain, src, mask, box, len(model.chain.stages), torch.device("cpu"), "fp32",
                                  LeftRight.PLAIN, lambda *_: None, None, margin=m)
        seconds = time.perf_counter() - start
        mvox = np.prod([b - a for a, b in frame]) / 1e6
        print(f"margin {m:2d}: frame {[b - a for a, b in frame]} = {mvox:.2f} Mvox per stage, {seconds:.1f} s", flush=True)
    ref = margins[0]
    for m in margins[1:]:
        a = agreement(outs[m], outs[ref], mask)
        print(f"margin {m} against {ref}, inside the mask: PSNR of agreement {a['psnr_db']:.1f} dB, "
              f"max |d| {a['max_rel']:.2e} and mean |d| {a['mean_rel']:.2e} of the peak, "
              f"{100 * a['frac_over_1pct']:.1f} % of voxels differ by more than 1 % of the peak")
    print(f"loadavg_end={os.getloadavg()}")


if __name__ == "__main__":
    main()
