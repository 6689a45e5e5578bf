"""``medsynth demo``: the whole job on data the project makes itself (the phantom), no downloads, no BraTS."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import numpy as np

from .atomic import check_output_path
from .errors import OutputError, UsageError
from .progress import metrics_event


def run_demo(
    out_dir: Path,
    model_path: Optional[str] = None,
    device: str = "auto",
    stages: Optional[int] = None,
    progress: Optional[Callable[[dict], None]] = None,
) -> Dict[str, Path]:
    """Write the phantom's T1ce and T2, synthesize a T2 from the T1ce, and save a side-by-side PNG.

    The four files are the demo's own and are replaced on every run, so the demo can always be run again into the
    same folder (each is still written atomically: a run cut short leaves the previous file whole).
    """
    from .figures import comparison_figure, metric_unit_ranges
    from .inference import synthesize_volume
    from .metrics import evaluate_case, scoring_of
    from .model_file import bundled_model_path, load_model
    from .phantom import make_phantom
    from .volume_io import write_volume

    _check_demo_folder(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "t1ce": out_dir / "phantom_t1ce.nii.gz",
        "t2": out_dir / "phantom_t2.nii.gz",
        "synthetic_t2": out_dir / "phantom_synthetic_t2.nii.gz",
        "figure": out_dir / "phantom_side_by_side.png",
    }
    for path in paths.values():
        check_output_path(path, overwrite=True)
    phantom = make_phantom()
    write_volume(phantom.t1ce, paths["t1ce"], overwrite=True)
    write_volume(phantom.t2, paths["t2"], overwrite=True)
    model = load_model(Path(model_path) if model_path else bundled_model_path(), device="cpu", stages=stages)
    synthetic = synthesize_volume(model, phantom.t1ce, mask=phantom.mask, stages=stages, device=device, progress=progress)
    write_volume(synthetic, paths["synthetic_t2"], overwrite=True)
    scores = evaluate_case(synthetic.array, phantom.t2.array, phantom.mask, phantom.labels,
                           *scoring_of(model.config.normalisation))  # evaluate's scoring, for any target mode
    comparison_figure(
        paths["figure"],
        [("T1ce (phantom)", phantom.t1ce.array), ("synthetic T2", synthetic.array), ("real T2 (phantom)", phantom.t2.array)],
        mask=phantom.mask,
        spacing=phantom.t1ce.spacing,
        title=f"MedSynth demo: PSNR {scores['psnr']:.1f} dB, SSIM {scores['ssim']:.3f} inside the brain",
        ranges=metric_unit_ranges("synthetic T2", "real T2 (phantom)", phantom.t2.array, phantom.mask,
                                  model.config.normalisation.output_scale,
                                  percentile=model.config.normalisation.target.percentile)
        if model.config.normalisation.target.mode == "percentile" else None,
    )
    if progress:
        progress(metrics_event({k: v for k, v in scores.items() if np.isscalar(v)}))
    return paths


def _check_demo_folder(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"The demo output {out_dir} is a file, not a folder.", "Pass --out with a folder name.")


#: How many paired phantom cases ``medsynth demo --cases`` writes at most (each takes a few seconds and ~2 MB).
MAX_DEMO_CASES = 40


def write_paired_cases(folder: Path, case_ids: Sequence[str], shape: Sequence[int] = (96, 112, 96)) -> Path:
    """Phantom cases (the n-th with seed n) as ``<case>/<case>_t1ce.nii.gz``, ``_t2`` and ``_seg`` (BraTS labels) in
    ``folder``: paired data in the layout ``prepare``, ``train``, ``evaluate`` and ``fit-lookup`` read, to try the
    researcher's path before real data are at hand. The files are the demo's own and are replaced on every run."""
    from .phantom import make_phantom
    from .volume_io import write_volume

    for place in [folder] + [folder / case for case in case_ids]:
        if place.exists() and not place.is_dir():
            raise OutputError(f"{place} is a file, where the demo's cases need a folder.",
                              "Move that file away, or pass another --out.")
    for seed, case in enumerate(case_ids):
        p = make_phantom(shape=tuple(shape), seed=seed)
        (folder / case).mkdir(parents=True, exist_ok=True)
        write_volume(p.t1ce, folder / case / f"{case}_t1ce.nii.gz", overwrite=True)
        write_volume(p.t2, folder / case / f"{case}_t2.nii.gz", overwrite=True)
        write_volume(p.t1ce.with_array(p.labels.astype(np.float32)), folder / case / f"{case}_seg.nii.gz", overwrite=True)
    return folder


def write_demo_cases(out_dir: Path, count: int) -> Path:
    """``medsynth demo --cases N``: N paired phantom cases ``phantom0``… in ``out_dir/cases``."""
    if not 2 <= int(count) <= MAX_DEMO_CASES:
        raise UsageError(f"--cases {count}: a trial needs at least 2 cases (one to train on, one to validate), at most "
                         f"{MAX_DEMO_CASES}.", "Pass --cases 4, for example.")
    _check_demo_folder(out_dir)
    folder = write_paired_cases(out_dir / "cases", [f"phantom{n}" for n in range(int(count))])
    for extra in sorted(folder.glob("phantom*")):  # an earlier, larger --cases: prepare would read those cases too
        number = extra.name[len("phantom"):]
        if number.isdigit() and int(number) >= int(count) and extra.is_dir():
            for own in ("t1ce", "t2", "seg"):  # the demo's own files only; the folder goes once it is empty
                (extra / f"{extra.name}_{own}.nii.gz").unlink(missing_ok=True)
            if not any(extra.iterdir()):
                extra.rmdir()
    return folder
