"""Does the bright-rim check hold at other voxel sizes? BraTS T1 and T1ce, and T1ce given a rim, at 1.0, 1.4, 0.7 mm.

The threshold of ``bright_rim_ratio`` was drawn on 1 mm cases (docs/evaluation/input_checks/BRIGHT_RIM.md). Its
shell was first counted in voxels (3); a review (session 45) saw the ratio of a synthetic rim fall by about 40 % at
1.4 mm, so the shell is now measured in millimetres (``RIM_WIDTH_MM``). Here each image is given its rim at 1 mm
(``with_rim`` of ``bright_rim.py``: a rim of fixed millimetres, as a scalp is), then resampled to the voxel size as
if skull-stripped there (``stripped_at``), and measured three ways: the ratio with the former 3-voxel shell
(``ratio_in_voxels``, kept here for the comparison), the ratio as the check reads it now, and whether
``input_checks.check_source`` with the bundled model's config refuses it for a bright rim. A clean T1 or T1ce should
not be refused; every rimmed T1ce should.

    python Testing/Evaluation/bright_rim_voxel_size.py CASES_DIR [OUT.md]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bright_rim import RIMS, with_rim  # noqa: E402
from scipy import ndimage  # noqa: E402

from MedSynthLogic.input_checks import (  # noqa: E402
    RIM_RATIO_MIN, TAIL_PERCENTILE, bright_rim_ratio, brain_box, check_source)
from MedSynthLogic.model_file import read_config  # noqa: E402
from MedSynthLogic.model_header import bundled_model_path  # noqa: E402
from MedSynthLogic.volume import Volume  # noqa: E402
from MedSynthLogic.volume_io import read_volume  # noqa: E402

SIZES_MM = (1.0, 1.4, 0.7)
#: The rims of bright_rim.py kept here: the narrowest, the faintest and the smallest share of the edge.
KEPT_RIMS = ("a whole rim, 2 voxels, ×1.3", "a whole rim, 3 voxels, ×0.8", "the upper quarter of a 3-voxel rim, ×1.3")


def stripped_at(volume: Volume, mm: float) -> Volume:
    """``volume`` (1 mm) resampled to ``mm`` on every axis as if skull-stripped there: the image linearly, its
    non-zero mask by nearest neighbour, the image then cut by that mask (linear interpolation alone would blur the
    stripped edge into a ring of faint voxels that no stripping tool leaves), its spacing set to match."""
    if mm == 1.0:
        return volume
    array = ndimage.zoom(volume.array, 1.0 / mm, order=1).astype(np.float32)
    array *= ndimage.zoom((volume.array > 0).astype(np.uint8), 1.0 / mm, order=0)
    return Volume(array, tuple(mm * s for s in volume.spacing), volume.origin, volume.direction)


def ratio_in_voxels(array: np.ndarray, mask: np.ndarray, width: int = 3) -> float:
    """``bright_rim_ratio`` as it was before session 46: its shell ``width`` voxels deep, whatever their size."""
    arr, brain = brain_box(array.astype(np.float32), mask)
    shell = brain & ~ndimage.binary_erosion(brain, iterations=width)
    bright = brain & (arr >= np.percentile(arr[brain], TAIL_PERCENTILE))
    return float((bright & shell).sum() / bright.sum() / (shell.sum() / brain.sum()))


def rim_refused(volume: Volume, config) -> bool:
    """Whether the input checks refuse ``volume`` for bright tissue along its brain's edge."""
    return any(f.code == "skull_stripped" and "bright_rim_ratio" in f.measured for f in check_source(volume, config))


def main(argv: list | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cases", type=Path, help="folder of BraTS cases (<case>/<case>_t1.nii.gz and _t1ce)")
    p.add_argument("out", type=Path, nargs="?", help="markdown to write (default: print only)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    config = read_config(bundled_model_path())
    # (image kind, mm) -> [(3-voxel ratio, 3-mm ratio, refused)]
    results: Dict[Tuple[str, float], List[Tuple[float, float, bool]]] = defaultdict(list)
    folders = sorted(d for d in args.cases.iterdir() if (d / f"{d.name}_t1ce.nii.gz").is_file())
    for folder in folders:
        images = {"t1": read_volume(folder / f"{folder.name}_t1.nii.gz")}
        t1ce = read_volume(folder / f"{folder.name}_t1ce.nii.gz")
        images["t1ce"] = t1ce
        for name in KEPT_RIMS:
            images[f"T1ce with {name}"] = Volume(with_rim(t1ce.array, *RIMS[name]), t1ce.spacing, t1ce.origin,
                                                 t1ce.direction)
        for kind, volume in images.items():
            for mm in SIZES_MM:
                resized = stripped_at(volume, mm)
                brain = resized.array > 0
                in_voxels = ratio_in_voxels(resized.array, brain)
                in_mm = bright_rim_ratio(resized.array, brain, resized.spacing)
                results[(kind, mm)].append((in_voxels, in_mm, rim_refused(resized, config)))
        print(folder.name, f"{time.perf_counter() - t0:.0f} s", flush=True)
    lines = [
        "| image | voxel size | ratio, shell of 3 voxels (before): min / median / max | shell of 3 mm (now): min / median / max "
        f"| refused for a bright rim (threshold {RIM_RATIO_MIN:g}) |",
        "|---|---|---|---|---|",
    ]
    for (kind, mm), rows in results.items():
        in_voxels = np.array([r[0] for r in rows])
        in_mm = np.array([r[1] for r in rows])
        lines.append(f"| {kind} | {mm} mm | {in_voxels.min():.2f} / {np.median(in_voxels):.2f} / {in_voxels.max():.2f} | "
                     f"{in_mm.min():.2f} / {np.median(in_mm):.2f} / {in_mm.max():.2f} | "
                     f"{sum(r[2] for r in rows)} of {len(rows)} |")
    lines += ["", f"{len(folders)} cases, {time.perf_counter() - t0:.0f} s."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
