"""Which files of a folder a batch synthesis reads, and what it calls its outputs.

A BraTS case folder holds t1, t1ce, t2, flair and seg; synthesizing "every .nii.gz" in it ran the model on all
five and saved a synthetic T2 under the name ``…_t1ce.nii.gz``. So a folder source is read by name: only the
model's source sequence (``<case>/<case>_t1ce.nii.gz`` or ``<case>_t1ce.nii.gz``, the suffix being the model's
``source_name`` in lower case) or what ``--pattern`` matches, and each output is
``<case>_synthetic_<target>.<ext>`` (``<target>`` from the model's ``target_name``). Under BraTS naming a
``<case>_mask`` image beside a source is its brain (or head) mask, as ``prepare`` and ``evaluate`` read it: a
model trained on head masks synthesized a folder without them (a review: up to 2307 HU apart from ``evaluate``'s).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Union

from .dataset_cases import IMAGE_SUFFIXES, case_glob, image_ending, image_stem, pattern_regex
from .errors import InputImageError, OutputError, UsageError
from .volume_io import WRITABLE_SUFFIXES

PathLike = Union[str, os.PathLike]

__all__ = ["Source", "find_sources", "output_name", "check_output_folder", "image_stem", "IMAGE_SUFFIXES"]


@dataclass(frozen=True)
class Source:
    """One source image of a batch and the case id its output is named after."""

    case_id: str
    path: Path
    mask: Optional[Path] = None


def _brats_sources(folder: Path, suffix: str) -> List[Source]:
    """``<case>/<case>_<suffix>.<ext>`` and ``<case>_<suffix>.<ext>`` (case-insensitive suffix)."""
    found = []
    for path in sorted(list(folder.glob("*/*")) + list(folder.glob("*"))):
        stem = image_stem(path.name)
        if not path.is_file() or not image_ending(path.name) or not stem.lower().endswith("_" + suffix):
            continue
        case = stem[: -len(suffix) - 1]
        nested = path.parent != folder
        if case and (not nested or path.parent.name == case):
            found.append(Source(case, path, _mask_beside(path.parent, case)))
    return found


def _mask_beside(folder: Path, case: str) -> Optional[Path]:
    """``<case>_mask.<ext>`` in ``folder`` (any image extension; ``mask`` in lower case, as ``prepare`` finds it, so
    synthesis never reads a mask that training did not); two are refused."""
    masks = [folder / f"{case}_mask{ending}" for ending in IMAGE_SUFFIXES if (folder / f"{case}_mask{ending}").is_file()]
    if len(masks) > 1:
        raise UsageError(f"Case {case} has {len(masks)} mask files: {', '.join(p.name for p in masks)}.",
                         "Keep one <case>_mask image beside the source.")
    return masks[0] if masks else None


def _pattern_sources(folder: Path, pattern: str, suffix: str) -> List[Source]:
    """Files matching a glob; ``{case}`` in it names the case, else the file name without ``_<suffix>.<ext>``."""
    regex = pattern_regex(pattern) if "{case}" in pattern else None
    found = []
    for path in sorted(folder.glob(case_glob(pattern))):
        if not path.is_file():
            continue
        if regex is not None:
            match = regex.match(path.relative_to(folder).as_posix())
            if not match:
                continue
            case = match.group("case")
        else:
            case = image_stem(path.name)
            if case.lower().endswith("_" + suffix) and len(case) > len(suffix) + 1:
                case = case[: -len(suffix) - 1]
        found.append(Source(case, path))
    return found


def find_sources(folder: PathLike, source_name: str = "T1ce", pattern: Optional[str] = None) -> List[Source]:
    """The source images of ``folder``, sorted by case id; refuses an empty result and clashing case ids.

    Without ``pattern``: BraTS naming, ``<case>/<case>_<source>.nii.gz`` or a flat ``<case>_<source>.nii.gz``
    (any image extension), where ``<source>`` is ``source_name`` in lower case, so t1, t2, flair and seg are
    left alone. With ``pattern`` (a glob relative to ``folder``, e.g. ``'*.nii.gz'`` or
    ``'{case}/*T1C*.nii.gz'``): every file it matches; ``{case}`` names the case, otherwise the file name does.
    """
    root = Path(folder)
    if not root.is_dir():
        raise InputImageError(f"The input folder {root} does not exist.", "Check the path.")
    suffix = source_name.lower()
    if pattern:
        sources = _pattern_sources(root, pattern, suffix)
        if not sources:
            raise InputImageError(f"No files matching {pattern!r} in {root}.", "Check the folder or pass another --pattern.")
    else:
        sources = _brats_sources(root, suffix)
        if not sources:
            raise InputImageError(
                f"No files matching <case>/<case>_{suffix}.nii.gz or <case>_{suffix}.nii.gz in {root}: "
                f"a folder source is read by name, so only {source_name} images are synthesized.",
                "Check the folder, or pass --pattern (e.g. --pattern '*.nii.gz' to take every file in it).",
            )
    by_case: Dict[str, List[Path]] = {}
    for s in sources:
        by_case.setdefault(s.case_id, []).append(s.path)
    clashes = {case: paths for case, paths in by_case.items() if len(paths) > 1}
    if clashes:
        listed = "; ".join(f"{case}: {', '.join(str(p.relative_to(root)) for p in paths)}" for case, paths in sorted(clashes.items()))
        raise UsageError(
            f"Several source files would give the same output name ({listed}).",
            "Pass a --pattern that matches one file per case, e.g. '{case}/{case}_t1ce.nii.gz'.",
        )
    return sorted(sources, key=lambda s: s.case_id)


def output_name(source: Source, target_name: str = "T2") -> str:
    """``<case>_synthetic_<target>`` with the source's extension when MedSynth writes it, else ``.nii.gz``."""
    suffix = image_ending(source.path.name)
    ext = suffix if suffix in WRITABLE_SUFFIXES else ".nii.gz"
    target = re.sub(r"\W+", "_", target_name.strip().lower()) or "target"
    return f"{source.case_id}_synthetic_{target}{ext}"


def check_output_folder(out_dir: PathLike, in_dir: PathLike) -> Path:
    """Refuse, before any work, an output for a folder source that is not a folder (exit 7).

    A name ending in an image extension (``out.nii.gz``) would become a folder of that name holding the
    results, which is never what was meant; an existing file cannot hold them; the input folder would have its
    sources mixed with results.
    """
    out, src = Path(out_dir), Path(in_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(
            f"The output {out} is a file, but the source {src} is a folder: the results need an output folder.",
            "Give a folder (it is created if missing), e.g. synthetic_t2/.",
        )
    if not out.exists() and image_ending(out.name):
        raise OutputError(
            f"The output {out} is a file name, but the source {src} is a folder: the results need an output folder.",
            "Give a folder (it is created if missing), or pass a single source file to write one output file.",
        )
    if out.resolve() == src.resolve():
        raise OutputError(
            f"The output folder {out} is the input folder: results would be mixed with the sources.",
            "Choose another output folder.",
        )
    return out
