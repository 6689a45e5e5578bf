"""Pilot behind the unet3d default ``norm="instance"``: training loss on phantom crops, with and without norm.

Same small U-Net (channels 4-8-8), same crops (2 phantoms, 32³, batch 2, seeded), plain Adam on the masked L2,
150 steps; prints the mean training loss over each 25 steps. Phantoms only: the choice was made before any
real-data training, and no validation case is involved.

    python Testing/Training/pilot_unet_norm.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from MedSynthLogic.config import GeneratorConfig  # noqa: E402
from MedSynthLogic.crops import CropBatches, CropVolume  # noqa: E402
from MedSynthLogic.models import build_generator  # noqa: E402
from MedSynthLogic.phantom import make_phantom  # noqa: E402

STEPS = 150


def phantom_crops() -> CropBatches:
    volumes = {}
    for seed in range(2):
        p = make_phantom(shape=(40, 48, 40), seed=seed)
        src = p.t1ce.array / np.percentile(p.t1ce.array[p.mask], 99.5)
        tgt = np.clip(p.t2.array / np.percentile(p.t2.array[p.mask], 99.5), 0, 1)
        volumes[str(seed)] = CropVolume((src * p.mask).astype(np.float32), (tgt * p.mask).astype(np.float32), p.mask)
    return CropBatches(volumes, 32, 2, seed=0, stage=0)


def losses(norm: str, lr: float, crops: CropBatches) -> list:
    torch.manual_seed(0)
    net = build_generator(GeneratorConfig(kind="unet3d", unet_channels=(4, 8, 8), residual=False, norm=norm))
    opt = torch.optim.Adam(net.parameters(), lr)
    out = []
    for i in range(STEPS):
        src, tgt, mask = crops.batch(i)
        loss = (((net(src) - tgt) ** 2) * mask).sum() / mask.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append(float(loss.detach()))
    return out


def main() -> int:
    torch.set_num_threads(2)
    crops = phantom_crops()
    for norm, lr in (("instance", 3e-3), ("none", 3e-3), ("none", 1e-3)):
        values = losses(norm, lr, crops)
        means = [round(float(np.mean(values[i : i + 25])), 4) for i in range(0, STEPS, 25)]
        print(f"norm={norm:8s} lr={lr:g}: mean masked L2 per 25 steps {means}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
