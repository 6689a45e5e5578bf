"""Does the enhancement note hold at other voxel sizes? Each BraTS case's T1 and T1ce at 1.0, 1.4 and 0.7 mm.

The note's smoothing and top-hat are sized for the 1 mm cases its thresholds were drawn on; a review (session 45)
found that read in a source's own voxels a T1 at 1.4 mm escaped the note in 7 of 14 cases and a T1ce at 0.7 mm got
it in 3. Here each image is resampled linearly (``scipy.ndimage.zoom``, order 1) to the voxel size, its spacing set
to match, and passed through ``MedSynthLogic.enhancement.enhancement_notes`` as synthesis passes a source; the table
counts the notes (a T1 should get it, a T1ce should not). The 1.4 mm row is a downsampling (detail lost, as in a
coarser acquisition); the 0.7 mm row an upsampling of the 1 mm image (no detail added).

    python Testing/Evaluation/enhancement_voxel_size.py CASES_DIR [OUT.md]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from MedSynthLogic.config import ModelConfig  # noqa: E402
from MedSynthLogic.enhancement import enhancement_notes  # noqa: E402
from MedSynthLogic.volume import Volume  # noqa: E402
from MedSynthLogic.volume_io import read_volume  # noqa: E402

SIZES_MM = (1.0, 1.4, 0.7)
SEQUENCES = ("t1", "t1ce")


def at_voxel_size(volume: Volume, mm: float) -> Volume:
    """``volume`` (1 mm) resampled linearly to ``mm`` on every axis, with its spacing set to match."""
    if mm == 1.0:
        return volume
    array = ndimage.zoom(volume.array, 1.0 / mm, order=1).astype(np.float32)
    return Volume(array, tuple(mm * s for s in volume.spacing), volume.origin, volume.direction)


def main(argv: list | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cases", type=Path, help="folder of BraTS cases (<case>/<case>_t1.nii.gz and _t1ce)")
    p.add_argument("out", type=Path, nargs="?", help="markdown table to write (default: print only)")
    args = p.parse_args(argv)
    config = ModelConfig()
    noted: Dict[Tuple[str, float], int] = {}
    rows = []
    folders = sorted(d for d in args.cases.iterdir() if (d / f"{d.name}_t1ce.nii.gz").is_file())
    for folder in folders:
        cells = []
        for seq in SEQUENCES:
            volume = read_volume(folder / f"{folder.name}_{seq}.nii.gz")
            for mm in SIZES_MM:
                note = bool(enhancement_notes(at_voxel_size(volume, mm), config))
                noted[(seq, mm)] = noted.get((seq, mm), 0) + note
                cells.append("note" if note else "–")
        rows.append(f"| {folder.name} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    head = "| case | " + " | ".join(f"{s.upper() if s == 't1' else 'T1ce'} {mm} mm" for s in SEQUENCES for mm in SIZES_MM) + " |"
    total = "| **noted** | " + " | ".join(f"{noted[(s, mm)]} of {len(folders)}" for s in SEQUENCES for mm in SIZES_MM) + " |"
    table = "\n".join([head, "|---" * (1 + len(SEQUENCES) * len(SIZES_MM)) + "|", *rows, total]) + "\n"
    print(total)
    if args.out is not None:
        args.out.write_text(table, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
