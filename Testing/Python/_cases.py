"""Case folders shared by the test files (imported as a plain module, like ``_models``)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def write_cases(data: Path, cases: Sequence[str], shape: Sequence[int] = (32, 36, 32)) -> Path:
    """Phantom cases (one seed each, in order) as ``<case>/<case>_t1ce.nii.gz``, ``_t2`` and ``_seg`` (BraTS
    labels): the layout ``evaluate``, ``prepare`` and ``fit-lookup`` read. Returns ``data``."""
    from MedSynthLogic.phantom import make_phantom
    from MedSynthLogic.volume_io import write_volume

    for seed, case in enumerate(cases):
        p = make_phantom(shape=tuple(shape), seed=seed)
        folder = data / case
        folder.mkdir(parents=True, exist_ok=True)
        write_volume(p.t1ce, folder / f"{case}_t1ce.nii.gz")
        write_volume(p.t2, folder / f"{case}_t2.nii.gz")
        write_volume(p.t1ce.with_array(p.labels.astype(np.float32)), folder / f"{case}_seg.nii.gz")
    return data
