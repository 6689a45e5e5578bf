"""Synthesis of files and folders: the layer between images on disk and the volume synthesis.

It checks the source before any compute (:mod:`.input_checks`) and every output before the first synthesis, then
leaves the volume to :func:`.volume_synthesis.synthesize_volume` (normalisation) or, for an uncertainty map, to
:mod:`.uncertainty`. ``synthesize_volume`` and :func:`.tiled_synthesis.synthesize_array` (with its tile constants)
are re-exported here as the public API.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Union

import numpy as np
import torch

from .atomic import make_output_folder
from .errors import InputImageError, OutputError
from .model_file import LoadedModel
from .progress import warning_event
from .tiled_synthesis import (
    CPU_TILE,
    CUDA_TILE,
    MIN_TILE,
    CancelFn,
    SynthesisOptions,
    default_tile,
    mask_bbox,
    synthesize_array,
)
from .uncertainty import check_uncertainty_path, synthesize_with_uncertainty, uncertainty_metadata
from .source_requirements import brain_region, check_receptive_field
from .volume_synthesis import as_loaded_model, synthesize_volume

if TYPE_CHECKING:
    from .volume_io import Volume

PathLike = Union[str, os.PathLike]
ProgressFn = Optional[Callable[[Dict[str, Any]], None]]

__all__ = [
    "synthesize_array",
    "synthesize_volume",
    "synthesize_file",
    "synthesize_folder",
    "SynthesisOptions",
    "default_tile",
    "mask_bbox",
    "CPU_TILE",
    "CUDA_TILE",
    "MIN_TILE",
]


def synthesize_file(
    model: Union[LoadedModel, PathLike],
    source_path: PathLike,
    output_path: PathLike,
    overwrite: bool = False,
    mask_path: Optional[PathLike] = None,
    stages: Optional[int] = None,
    device: Union[str, torch.device] = "auto",
    flip_tta: bool = False,
    tile: Optional[int] = None,
    progress: ProgressFn = None,
    cancel: CancelFn = None,
    precision: str = "auto",
    uncertainty_path: Optional[PathLike] = None,
    force: bool = False,
    source_volume: Optional["Volume"] = None,
) -> Path:
    """Read a source image, synthesize, write the result atomically with the source's geometry; returns the path.
    ``source_volume``: the file at ``source_path`` already read (the CLI reads it before loading the model and torch,
    so an unreadable file is refused at once).

    The output is checked before any work (exists without ``overwrite``, equals an input, a folder, an unknown
    extension) so a long run never ends in a refusal. ``uncertainty_path``: also write the uncertainty map
    (:mod:`.uncertainty`) there. The source is checked against the model's input expectations
    (:mod:`.input_checks`) before any compute: a failed check is an ``InputImageError`` unless ``force``, which
    turns it into a warning event; either way the outcome is recorded in the output's header.
    """
    from .volume_io import check_image_output, read_volume, write_volume

    inputs = tuple(p for p in (source_path, mask_path) if p is not None)
    check_image_output(output_path, overwrite=overwrite, inputs=inputs)
    if uncertainty_path is not None:
        check_uncertainty_path(uncertainty_path, output_path, overwrite=overwrite, inputs=inputs)
    loaded = as_loaded_model(model, stages)
    source = read_volume(source_path) if source_volume is None else source_volume
    mask = mask_for(source, mask_path, progress)
    checks = _checked_source(loaded, source, mask, force, progress, source_path)
    options = SynthesisOptions(stages, device, flip_tta, tile, progress, cancel, precision).keywords()
    if uncertainty_path is None:
        vol = synthesize_volume(loaded, source, mask=mask, **options)
        return write_volume(vol, output_path, overwrite=overwrite, inputs=inputs, metadata=checks)
    result = synthesize_with_uncertainty(loaded, source, mask=mask, **options)
    written = write_volume(result.synthesis, output_path, overwrite=overwrite, inputs=inputs, metadata=checks)
    write_volume(result.uncertainty, uncertainty_path, overwrite=overwrite, inputs=inputs + (output_path,),
                 metadata=uncertainty_metadata(loaded, stages))  # after the synthesis, the product, is safe
    return written


def mask_for(source: "Volume", mask_path: Optional[PathLike], progress: ProgressFn = None) -> Optional[np.ndarray]:
    """The mask file's region on the source's grid (None without one), read as ``prepare`` and ``evaluate`` read it
    (``volume.region_on_grid``): a mask on another grid, e.g. stored in the other voxel order, is resampled with a
    warning. Synthesis refused it, so a folder whose masks ``prepare`` had taken stopped part-way."""
    from .volume_io import read_volume, region_on_grid

    if mask_path is None:
        return None
    region, diffs = region_on_grid(read_volume(mask_path), source)
    if diffs:
        text = f"{mask_path}: the mask is on another grid than the source ({'; '.join(diffs)}): resampled onto it"
        if progress is not None:
            progress(warning_event("synthesize", text, source=str(mask_path)))
        else:
            warnings.warn(text, UserWarning, stacklevel=3)
    return region


def _checked_source(model: LoadedModel, source: "Volume", mask: Optional["Volume"], force: bool, progress: ProgressFn,
                    name: Any) -> Dict[str, str]:
    """Check the source before any compute: refuse it (exit 3) or, with ``force``, emit a warning event.

    Returns the header entries that record the checks with the output. The receptive-field check comes first so
    a thumbnail gets that message rather than a guess about its sequence. What the file's name says
    (:func:`.source_names.name_notes`, e.g. a T1 named where the model expects the T1ce) and a T1ce source without
    any sign of contrast agent (:func:`.enhancement.enhancement_notes`) are only ever warnings; so are a brain cut
    by the image's edge or a given mask that does not fit (:func:`.brain_coverage.coverage_notes`) and a NIfTI
    placement that readers disagree on (:func:`.nifti_orientation.orientation_notes`), and no mask for a model trained
    inside mask files (:func:`.model_summary.mask_file_note`).
    """
    from .brain_coverage import coverage_notes
    from .enhancement import enhancement_notes
    from .input_checks import check_source, checks_metadata, refuse_or_warn
    from .model_summary import mask_file_note
    from .nifti_orientation import orientation_notes
    from .source_names import name_notes

    check_receptive_field(model, source)
    findings = check_source(source, model.config, mask=mask)

    def warn(message: str) -> None:
        if progress is not None:
            progress(warning_event("synthesize", message, source=str(name), input_checks=[f.code for f in findings]))

    refuse_or_warn(findings, force, warn if progress is not None else None, source=name)
    notes = {"name": name_notes(str(name), model.config),
             "enhancement": enhancement_notes(source, model.config, mask=mask, findings=findings),
             "coverage": coverage_notes(source, model.config, mask=mask),
             "orientation": orientation_notes(name)}
    for check, texts in notes.items():
        for note in texts:
            text = f"{name}: {note}. Synthesizing it as the model's {model.config.source_name}."
            if progress is not None:
                progress(warning_event("synthesize", text, source=str(name), input_checks=[check]))
            else:
                warnings.warn(text, UserWarning, stacklevel=3)
    unmasked = mask_file_note(model.header) if mask is None else None
    if unmasked is not None:
        if progress is not None:
            progress(warning_event("synthesize", f"{name}: {unmasked}.", source=str(name), input_checks=["mask"]))
        else:
            warnings.warn(f"{name}: {unmasked}.", UserWarning, stacklevel=3)
    return checks_metadata(findings, force, model.config, mask is not None,
                           notes=[note for texts in notes.values() for note in texts] + ([unmasked] if unmasked else []))


def synthesize_folder(
    model: Union[LoadedModel, PathLike],
    in_dir: PathLike,
    out_dir: PathLike,
    pattern: Optional[str] = None,
    overwrite: bool = False,
    stages: Optional[int] = None,
    device: Union[str, torch.device] = "auto",
    flip_tta: bool = False,
    tile: Optional[int] = None,
    progress: ProgressFn = None,
    cancel: CancelFn = None,
    precision: str = "auto",
    force: bool = False,
) -> List[Path]:
    """Synthesize the source images of ``in_dir`` into ``out_dir`` as ``<case>_synthetic_<target>.nii.gz``.

    Only the model's source sequence is read: BraTS naming (``<case>/<case>_t1ce.nii.gz`` or a flat
    ``<case>_t1ce.nii.gz``, with a ``<case>_mask`` image beside it as its mask) or what ``pattern`` matches
    (:func:`.folder_sources.find_sources`). The model is loaded once.
    Every output and every source (the input checks, see :func:`synthesize_file`) is checked before the first
    synthesis, and the output folder is created only then, so a refused batch leaves nothing behind and a long
    one does not stop half-way on a name clash; progress events carry ``file`` and ``files`` (1-based index and
    count).
    """
    from .atomic import check_output_path
    from .input_checks import check_source, refuse_or_warn
    from .folder_sources import check_output_folder, find_sources, output_name
    from .volume_io import read_volume

    src_dir = Path(in_dir)
    if not src_dir.is_dir():
        raise InputImageError(f"The input folder {src_dir} does not exist.")
    dst_dir = check_output_folder(out_dir, src_dir)
    loaded = as_loaded_model(model, stages)
    sources = find_sources(src_dir, loaded.config.source_name, pattern)
    targets = [dst_dir / output_name(s, loaded.config.target_name) for s in sources]
    if dst_dir.is_dir():
        for src, dst in zip(sources, targets):
            check_output_path(dst, overwrite=overwrite, inputs=tuple(p for p in (src.path, src.mask) if p))
    else:
        _check_creatable(dst_dir)
    for src in sources:  # refusals before any compute; with force, each file's own run below warns once
        volume = read_volume(src.path)
        check_receptive_field(loaded, volume)
        mask = mask_for(volume, src.mask, lambda event: None)  # said once, by the file's own run below
        try:
            brain_region(volume, mask, loaded.config.normalisation.mask_threshold)
        except InputImageError as exc:
            raise InputImageError(f"{src.path}: {exc.message}", exc.hint, reason=exc.reason) from exc
        if not force:
            refuse_or_warn(check_source(volume, loaded.config, mask=mask), False, source=src.path)
    make_output_folder(dst_dir)
    options = SynthesisOptions(stages, device, flip_tta, tile, progress, cancel, precision)
    written = []
    for i, (src, dst) in enumerate(zip(sources, targets), start=1):

        def tagged(event: Dict[str, Any], _i: int = i, _src: Path = src.path) -> None:
            if progress is not None:
                progress({**event, "file": _i, "files": len(sources), "source": str(_src)})

        per_file = dataclasses.replace(options, progress=tagged).keywords()
        written.append(synthesize_file(loaded, src.path, dst, overwrite=overwrite, mask_path=src.mask, force=force,
                                       **per_file))
    return written


def _check_creatable(folder: Path) -> None:
    """Refuse an output folder that cannot be created (its nearest existing parent is not a writable folder)."""
    parent = folder.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise OutputError(f"Cannot create the output folder {folder}: {parent} is not a writable folder.",
                          "Choose a folder you can write to.")
