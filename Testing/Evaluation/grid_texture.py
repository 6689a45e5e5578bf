"""Does a synthesis carry a grid texture, and of which period? Power-spectrum peaks along each axis inside the brain.

usage: python Testing/Evaluation/grid_texture.py CASES_DIR CASE OUT.txt MODEL [MODEL ...] [--window 64]

The U-Net's error maps show a dotted texture. A transposed 2³ convolution gives each of a coarse voxel's 8 children
its own weights, so a U-Net that joins its levels that way can print a grid of period 2 (and 4, 8 from deeper levels)
over the output. Along each axis this takes ``window``-voxel lines through the brain's bounding box (8 voxels in from
its faces), Hann-windows them and averages their power spectra, then reports the power at the grid's frequencies
(N/2, N/4, N/8 for periods 2, 4, 8) divided by the mean of the two bins either side: about 1 or below for a smooth
spectrum, well above 1 for a grid. The real T2 is the control. Run it on a training case, not a validation case.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List

import numpy as np
import torch

from MedSynthLogic.dataset_prep import find_cases, select_cases
from MedSynthLogic.inference import synthesize_volume
from MedSynthLogic.model_file import load_model
from MedSynthLogic.normalisation import brain_mask
from MedSynthLogic.volume_io import read_volume

PERIODS = (2, 4, 8)


def inner_box(mask: np.ndarray) -> tuple:
    """The mask's bounding box, 8 voxels in from each face, so the lines cross brain rather than its edge."""
    idx = [np.nonzero(mask.any(axis=tuple(j for j in range(3) if j != i)))[0] for i in range(3)]
    return tuple(slice(i[0] + 8, i[-1] - 8) for i in idx)


def peak_ratios(block: np.ndarray, axis: int, window: int) -> List[float]:
    """Power at the frequency of each period in ``PERIODS`` over the mean power of its neighbouring bins."""
    lines = np.moveaxis(block, axis, -1)
    centre = lines.shape[-1] // 2
    lines = lines[..., centre - window // 2:centre + window // 2]
    lines = lines - lines.mean(axis=-1, keepdims=True)
    power = (np.abs(np.fft.rfft(lines * np.hanning(window), axis=-1)) ** 2).reshape(-1, window // 2 + 1).mean(axis=0)
    ratios = []
    for period in PERIODS:
        k = window // period
        neighbours = [power[j] for j in (k - 2, k - 1, k + 1, k + 2) if 0 < j < len(power)]
        ratios.append(float(power[k] / np.mean(neighbours)))
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases_dir", type=Path)
    parser.add_argument("case")
    parser.add_argument("out", type=Path)
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--window", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(2)
    (case,) = select_cases(find_cases(args.cases_dir), [args.case], f"Case in {args.cases_dir}")
    source, reference = read_volume(case.source), read_volume(case.target).array
    mask = brain_mask(source.array)
    box = inner_box(mask)
    rows = [("real T2", reference)]
    for path in args.models:
        rows.append((path.name, synthesize_volume(load_model(path), source, device="cpu").array))
    header = "image".ljust(36) + " | ".join(" ".join(f"{a}:N/{p}".rjust(7) for p in PERIODS) for a in "zyx")
    lines = [f"Grid texture on {case.case_id} (`python Testing/Evaluation/grid_texture.py {args.cases_dir} {args.case} {args.out} "
             + " ".join(str(m) for m in args.models) + f" --window {args.window}`): power at the grid frequency over its "
             "neighbours' mean; axes z, y, x.", "", header]
    for name, volume in rows:
        scaled = volume / np.percentile(volume[mask], 99.5)
        cells = [" ".join(f"{r:7.2f}" for r in peak_ratios(scaled[box], axis, args.window)) for axis in range(3)]
        lines.append(name[:35].ljust(36) + " | ".join(cells))
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
