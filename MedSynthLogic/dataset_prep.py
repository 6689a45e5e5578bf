"""``medsynth prepare``: normalise paired cases, sample patches and write HDF5 patch files.

The cases come from :mod:`.dataset_cases` (``find_cases``, ``select_cases``, ``split_cases``, re-exported here).

Output folder: ``train.h5`` and ``val.h5`` (schema in :mod:`MedSynthLogic.h5data` and ``docs/ARCHITECTURE.md``)
and ``manifest.json`` (splits, per-case paths, shapes, normalisation, patch counts, timings, seed).

Choices worth knowing:

* Each case gets ``patches_per_case`` samples of the original and as many of the copy flipped along
  ``flip_axis``. The flipped samples use their *own* independently drawn corners (more distinct regions than
  mirroring the same corners); their ``corner`` is stored in the unflipped padded grid and the sample is the
  cube at that corner flipped, which is how auto-context stages rebuild them.
* Volumes are padded by the generator halo with edge values (as at inference), patches are cut from the
  padded grid, and the normalised padded volumes are stored as float16 (half the size; error ≤ 1e-3 in
  network units) for auto-context stages and whole-volume validation.
* Every case draws from its own RNG seeded by ``(seed, sha256(case_id))``, so a case's patches do not depend
  on which other cases are present or their order.
"""


from __future__ import annotations

import json
import os
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .atomic import atomic_path, atomic_write_text, make_output_folder, stale_temporaries
from .config import ModelConfig, to_dict
from .dataset_cases import BRATS_PATTERN, Case, case_id_problem, case_key, find_cases, select_cases, split_cases
from .errors import DataError, GeometryError, InputImageError, MedSynthError, OutputError, UsageError
from .progress import progress_event, warning_event
from .voxel_size import describe as describe_voxels

PathLike = Union[str, os.PathLike]
OUTPUT_FILES = ("train.h5", "val.h5", "manifest.json")
MANIFEST_FORMAT = "medsynth-manifest"
EXTRACT_CHUNK = 512
#: Host bytes per voxel (of a case's largest file) that preparing the case needs at its peak: the files, their
#: float32 copies, the aligned, normalised and padded volumes and the mask. Measured: a 512×512×300 case took
#: 2.1 GB (27 B/voxel, a review, session 42); a 400³ float32 pair peaked 1.02 GB above a 200³ one (19 B/voxel).
PREPARE_BYTES_PER_VOXEL = 27

__all__ = ["BRATS_PATTERN", "Case", "find_cases", "prepare_dataset", "select_cases", "split_cases"]


def _check_outputs(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise OutputError(f"The output {out} is a file, not a folder.", "Choose a folder for the patch files.")
    existing = [name for name in OUTPUT_FILES if (out / name).exists()]
    if existing and not overwrite:
        raise OutputError(
            f"The output folder {out} already holds {', '.join(existing)}.",
            "Pass --overwrite to replace them or choose another folder.", reason="output_exists",
        )
    make_output_folder(out)
    if not os.access(out, os.W_OK):
        raise OutputError(f"The output folder {out} is not writable.", "Choose a folder you can write to.")


def _load_case(case: Case, model_cfg: ModelConfig, geometry: str) -> Dict[str, Any]:
    """Read, align, mask and normalise one case (unpadded, float32)."""
    from .normalisation import brain_mask, normalise_source, normalise_target
    from .orientation import axis_order, orientation_code
    from .volume_io import align_pair, field_of_view_on_grid, read_volume, region_on_grid, same_grid

    norm = model_cfg.normalisation
    t0 = time.perf_counter()
    raw_target = read_volume(case.target)
    source, target, notes = align_pair(read_volume(case.source), raw_target, policy=geometry,
                                       fill=target_background(norm.target))
    resampled = list(notes)  # said as warnings too, as evaluate says them
    if case.mask is not None:
        mvol = read_volume(case.mask)
        if geometry == "refuse" and same_grid(source, mvol):
            raise GeometryError("The mask is not on the source grid: " + "; ".join(same_grid(source, mvol)) + ".",
                                "Resample it first or allow resampling.")
        mask, diffs = region_on_grid(mvol, source)
        if diffs:
            notes.append("Resampled the mask onto the source grid: " + "; ".join(diffs) + ".")
    else:
        mask = brain_mask(source.array, norm.mask_threshold)
    coverage = []
    with_target = None  # the brain voxels the target reaches, when not all: its transform is fitted on them
    if resampled:  # where the target's field of view does not reach, it holds only its background
        with_target = mask & field_of_view_on_grid(raw_target, source)
        missed = int(np.count_nonzero(mask) - np.count_nonzero(with_target))
        if not missed:
            with_target = None
        elif not with_target.any():
            raise DataError("The target's field of view does not reach the brain mask: there is nothing to learn from.",
                            "Check that the target belongs to this case and lies in the same space as the source.")
        else:  # the mask stays: it also normalises the source and bounds the context, as in synthesis
            coverage.append(f"the target's field of view misses {missed} of the brain mask's {int(mask.sum())} voxels "
                            f"({100.0 * missed / mask.sum():.1f} %), where training learns the target's background as "
                            "brain: leave that case out, or give a mask file (or crop the source) inside the target's "
                            "field of view")
    if resampled and np.prod(raw_target.spacing) < 0.7 * np.prod(source.spacing):  # e.g. 3T (1 mm) → 7T (0.7 mm)
        coverage.append(f"the target's voxels ({describe_voxels(raw_target.spacing)}) are finer than the source's "
                        f"({describe_voxels(source.spacing)}) and were resampled onto the source's grid, so the model "
                        "learns and synthesizes at the source's resolution: to keep the target's, resample the sources "
                        "onto the targets' grid before prepare and set the config's input.spacing_mm to it")
    del raw_target
    if case.seg is not None:  # the manifest records it for evaluate: one it cannot read must fail here, not after training
        _, seg_diffs = region_on_grid(read_volume(case.seg), source)
        if seg_diffs:
            notes.append("The segmentation is on another grid than the source (evaluate resamples it): "
                         + "; ".join(seg_diffs) + ".")
    if not mask.any():
        raise DataError(
            "The brain mask is empty.",
            "Check the mask file, or the mask threshold for skull-stripped sources (voxels above it are brain).",
        )
    order = axis_order(source.direction)
    if not order.is_identity:  # trained in the order every synthesis runs in (orientation.py)
        notes.append(f"Reordered the voxel axes from {orientation_code(source.direction)} to LPS, the order models "
                     "see every volume in.")
        source, target, mask = order.volume(source), order.volume(target), np.ascontiguousarray(order.forward(mask))
        if with_target is not None:
            with_target = np.ascontiguousarray(order.forward(with_target))
    warnings = (coverage + source_warnings(source, mask, model_cfg, name=str(case.source), mask_given=case.mask is not None)
                + target_warnings(target.array, mask, norm.target))
    t1 = time.perf_counter()
    src, src_tr = normalise_source(source.array, mask, norm)
    tgt, tgt_tr = normalise_target(target.array, mask, norm, fit_mask=with_target)
    t2 = time.perf_counter()
    return {
        "source": src,
        "target": tgt,
        "mask": mask,
        "source_transform": src_tr.to_dict(),
        "target_transform": tgt_tr.to_dict(),
        "geometry": {"spacing": list(source.spacing), "origin": list(source.origin), "direction": list(source.direction)},
        "notes": notes + warnings,
        "warnings": [note.rstrip(".") for note in resampled] + warnings,
        "read_s": t1 - t0,
        "normalise_s": t2 - t1,
    }


#: Target tissue outside the mask, as a share of the mask's size, above which prepare warns (BraTS: at most 3.3 %).
OUTSIDE_TARGET_MAX = 0.10


def source_warnings(source: Any, mask: np.ndarray, model_cfg: ModelConfig, name: Optional[str] = None,
                    mask_given: bool = False) -> List[str]:
    """The input checks' word on a source that is another sequence or a label map (a FLAIR listed as the T1), or,
    without a mask file (``mask_given``), one that is not skull-stripped while the model expects it: prepare goes on,
    since a study may mean it, but says so, because ``synthesize`` refuses such an image for this model.
    Also a source file whose ``name`` says another sequence (``--source-pattern '{case}/*_t1.nii.gz'`` for a FLAIR
    model: the histogram rule cannot tell every such pair apart), and a voxel size unlike the config's
    ``input.spacing_mm``, to which synthesis resamples every source."""
    from .input_checks import check_source
    from .source_names import name_notes
    from .source_requirements import check_receptive_field
    from .voxel_size import describe, needs_resampling

    out = [f"the source does not look like the model's input: {finding.message}; `medsynth synthesize` refuses such "
           "a source for this model"
           for finding in check_source(source, model_cfg, mask=mask if mask_given else None)
           if finding.code in ("sequence", "label_map", "skull_stripped")]  # a head trained as if it were a brain
    out += [f"the source file: {note}" for note in name_notes(name, model_cfg)]
    try:  # a U-Net trains on a volume shorter than its crop (fill_to_patch), but none may be applied to one this thin
        check_receptive_field(model_cfg, source)
    except InputImageError as exc:
        out.append(f"{exc.message.rstrip('.')}: training takes it, but `medsynth synthesize` and `evaluate` refuse it")
    trained = tuple(model_cfg.input.spacing_mm)
    if needs_resampling(tuple(source.spacing), trained):
        out.append(f"its voxels ({describe(source.spacing)}) are not the {describe(trained)} of the config's "
                   "input.spacing_mm: training sees them as "
                   "they are, while `medsynth synthesize` resamples every source to input.spacing_mm; set it to your "
                   "data's voxel size (x, y, z in the LPS order models see)")
    return out


def target_background(target_cfg: Any) -> float:
    """The value a target holds where it has no tissue: a window's bottom (a CT's air), else 0. A target resampled
    onto the source's grid is filled with it where it does not reach (0 HU would be soft tissue)."""
    return float(target_cfg.window_min) if target_cfg.mode == "window" else 0.0


#: A target this low outside the brain is air in Hounsfield units: an MR magnitude image has no such values.
CT_AIR_HU = -500.0


def target_warnings(target: np.ndarray, mask: np.ndarray, target_cfg: Any) -> List[str]:
    """What the user must hear about a target before training on it: tissue outside the mask, which training never
    sees and synthesis leaves at the background (a CT's skull under an MR brain mask), and negative values under an
    MR normalisation, which clips them to 0 (a CT in HU needs ``window``)."""
    out: List[str] = []
    window = target_cfg.mode == "window"
    floor = target_cfg.window_min + 0.1 * (target_cfg.window_max - target_cfg.window_min) if window else 0.0
    outside = int(np.count_nonzero((target > floor) & ~mask))
    if outside > OUTSIDE_TARGET_MAX * max(int(mask.sum()), 1):
        out.append(f"{outside} target voxels outside the mask ({100 * outside / max(int(mask.sum()), 1):.0f}% of the "
                   "mask's size) hold tissue: training never sees them and the synthesis leaves them at the background "
                   "value; give a mask that covers them (a head mask: <case>_mask or the --csv mask column) if the model "
                   "should synthesize them")
    negative = float(np.mean(target[mask] < 0)) if mask.any() else 0.0
    air = float(np.mean(target[~mask] <= CT_AIR_HU)) if (~mask).any() else 0.0
    if not window and (negative > 0.01 or air > 0.5):  # a brain CT is >= 0 HU inside an MR brain mask; its air is not
        if negative > 0.01:
            where = (f"{100 * negative:.0f}% of the target's voxels in the mask are negative, and its normalisation "
                     f"({target_cfg.mode}) clips them to 0")
        else:
            where = (f"{100 * air:.0f}% of the target's voxels outside the mask are at or below {CT_AIR_HU:g} (air in "
                     f"HU): it looks like a CT, which its normalisation ({target_cfg.mode}) reads as an MR image")
        out.append(f"{where}: a CT in Hounsfield units needs \"mode\": \"window\" in the config's target normalisation")
    return out


def _case_rng(seed: int, case_id: str) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, case_key(0, case_id) & 0xFFFFFFFF])


def _check_case_id(case_id: str) -> None:
    problem = case_id_problem(case_id)
    if problem:
        raise DataError(f"The case id {case_id!r} {problem}.", "Use case ids without '/', '\\' or surrounding spaces.")


@dataclass(frozen=True)
class _Plan:
    """The settings every step of :func:`prepare_dataset` reads, checked once."""

    model_cfg: ModelConfig
    patches_per_case: int
    copies: int
    flip_axis: Optional[int]
    inside_fraction: float
    seed: int
    geometry: str
    compression: str
    volume_dtype: str
    #: Written into every file of this run, so files of two runs (an ``--overwrite`` that stopped between its
    #: renames) are refused by ``train`` instead of trained on together.
    run_id: str

    @property
    def halo(self) -> int:
        return self.model_cfg.generator.halo


def prepare_dataset(
    cases: Sequence[Case],
    out_dir: PathLike,
    model_cfg: ModelConfig,
    patches_per_case: int = 1000,
    val_cases: Optional[Sequence[str]] = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    flip_axis: Optional[int] = 2,
    inside_fraction: float = 0.9,
    geometry: str = "resample",
    progress: Optional[Callable[[Dict[str, Any]], None]] = None,
    overwrite: bool = False,
    compression: str = "lzf",
    volume_dtype: str = "float16",
) -> Dict[str, Any]:
    """Write ``train.h5``, ``val.h5`` (when there are validation cases) and ``manifest.json`` to ``out_dir``.

    Per case: read and align the pair, mask (given file or ``brain_mask`` of the source), normalise with
    ``model_cfg.normalisation``, pad by the generator halo, sample ``patches_per_case`` corners
    (``inside_fraction`` centred in the mask), and write the S³ source and the T³ target patches of the
    original and of the copy flipped along ``flip_axis`` (``None``: no flipped copy). Files are written
    atomically; existing outputs are refused unless ``overwrite``. Returns the manifest dict.
    """
    started = time.perf_counter()
    cases = list(cases)
    _check_arguments(cases, patches_per_case, flip_axis, inside_fraction, geometry, compression, seed)
    plan = _Plan(model_cfg, int(patches_per_case), 1 if flip_axis is None else 2, flip_axis, inside_fraction,
                 seed, geometry, compression, volume_dtype, uuid.uuid4().hex)
    out = Path(out_dir)
    train, val = split_cases(cases, val_cases=val_cases, val_fraction=val_fraction, seed=seed)  # before the folder exists
    check_prepare_memory(cases)
    _check_outputs(out, overwrite)
    splits = {"train": train, "val": val}
    emit = progress or (lambda event: None)
    stale = stale_temporaries(out, OUTPUT_FILES)
    if stale:  # not removed: another prepare may be writing into this folder right now
        size = sum(path.stat().st_size for path in stale) / 2**20
        emit(warning_event("prepare", f"{out} holds {len(stale)} temporary file(s) ({size:.0f} MiB) that a prepare "
                           f"ended outright (out of memory, killed) left behind: {', '.join(p.name for p in stale)}. "
                           "Delete them unless another prepare is writing into this folder now"))
    emit(progress_event("prepare", 0, len(cases), case=None))
    case_entries: Dict[str, Dict[str, Any]] = {}
    done = 0
    with ExitStack() as stack:
        writers = _open_writers(stack, out, splits, plan)
        for name, members in splits.items():
            for case in members:
                case_entries[case.case_id] = _write_case(writers[name], case, plan, name)
                for message in case_entries[case.case_id].pop("warnings"):
                    emit(warning_event("prepare", f"{case.case_id}: {message}.", case=case.case_id))
                done += 1
                emit(progress_event("prepare", done, len(cases), case=case.case_id))
        for w in writers.values():
            w.close()
    if not val and overwrite and (out / "val.h5").exists():
        (out / "val.h5").unlink()
    manifest = _manifest(plan, splits, case_entries, time.perf_counter() - started)
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2))
    return manifest


def _check_arguments(cases: List[Case], patches_per_case: int, flip_axis: Optional[int], inside_fraction: float,
                     geometry: str, compression: str, seed: int = 0) -> None:
    """Refuse bad arguments before any file is touched."""
    if not cases:
        raise DataError("There are no cases to prepare.", "Check the data folder or CSV.")
    if not 0 <= int(seed) < 2**32:  # numpy refused a negative one after the folder existed; 2³² drew seed 0's patches
        raise UsageError(f"The seed must be in [0, 2³²), got {seed}.")
    for c in cases:
        _check_case_id(c.case_id)
    if int(patches_per_case) < 1:
        raise UsageError(f"patches_per_case must be at least 1, got {patches_per_case}.")
    if flip_axis not in (None, 0, 1, 2):
        raise UsageError(f"flip_axis must be 0 (z), 1 (y), 2 (x) or None, got {flip_axis}.")
    if not 0.0 <= inside_fraction <= 1.0:
        raise UsageError(f"inside_fraction must be in [0, 1], got {inside_fraction}.")
    if geometry not in ("resample", "refuse"):
        raise UsageError(f"Unknown geometry policy {geometry!r}; use 'resample' or 'refuse'.")
    if compression not in ("lzf", "gzip"):
        raise UsageError(f"compression must be 'lzf' or 'gzip', got {compression!r}.")


def check_prepare_memory(cases: Sequence[Case]) -> None:
    """Refuse, before any case is read, a dataset whose largest case would not fit in the RAM available now.

    Each file's own read is checked too (``volume_read``), but only for that file: a case needs about
    ``PREPARE_BYTES_PER_VOXEL`` per voxel of its largest file, and the system ending prepare for memory half-way
    leaves nothing to say what happened.
    """
    from .errors import ResourceError
    from .volume_io import available_ram, header_voxels

    largest, voxels = None, 0
    for case in cases:
        counts = [header_voxels(p) for p in (case.source, case.target, case.mask, case.seg) if p is not None]
        most = max((c for c in counts if c is not None), default=0)
        if most > voxels:
            largest, voxels = case, most
    needed, available = voxels * PREPARE_BYTES_PER_VOXEL, available_ram()
    if largest is not None and needed > available:
        raise ResourceError(
            f"Not enough memory to prepare case {largest.case_id}: its largest image has {voxels:,} voxels, and "
            f"preparing it needs about {_size_text(needed)}; {_size_text(available)} is available.",
            "Close other programs, use a machine with more memory, or crop/downsample that case's images first.",
        )


def _size_text(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.1f} GiB" if n_bytes >= 2**30 / 10 else f"{n_bytes / 2**20:.1f} MiB"


def _open_writers(stack: ExitStack, out: Path, splits: Dict[str, List[Case]], plan: _Plan) -> Dict[str, Any]:
    """One patch-file writer per non-empty split, each on a temporary file published only when the stack exits cleanly."""
    from .h5data import PatchFileWriter

    k, copies, cfg = plan.patches_per_case, plan.copies, plan.model_cfg
    writers: Dict[str, Any] = {}
    for name, members in splits.items():
        if not members:
            continue
        tmp = stack.enter_context(atomic_path(out / f"{name}.h5"))
        writers[name] = PatchFileWriter(
            tmp,
            len(members) * k * copies,
            cfg.source_patch,
            cfg.target_patch,
            to_dict(cfg),
            [c.case_id for c in members],
            plan.halo,
            flip_axis=2 if plan.flip_axis is None else plan.flip_axis,
            seed=plan.seed,
            compression=plan.compression,
            volume_dtype=plan.volume_dtype,
            attrs={"split": name, "patches_per_case": k, "inside_fraction": float(plan.inside_fraction),
                   "flipped_copy": int(copies == 2), "prepare_run": plan.run_id},
        )
        stack.callback(_close_quietly, writers[name])
    return writers


def _write_case(writer: Any, case: Case, plan: _Plan, split: str) -> Dict[str, Any]:
    """Load, pad and sample one case, write its volumes and patches; returns its manifest entry."""
    from .patches import pad_volume, sample_corners

    t_case = time.perf_counter()
    try:
        data = _load_case(case, plan.model_cfg, plan.geometry)
    except MedSynthError as exc:
        raise exc.in_case(case.case_id) from exc
    t_sample = time.perf_counter()
    halo, S = plan.halo, plan.model_cfg.source_patch
    src_p = pad_volume(data["source"], halo)
    tgt_p = pad_volume(data["target"], halo)
    mask_p = pad_volume(data["mask"].astype(np.uint8), halo, mode="constant")
    t_write = time.perf_counter()
    writer.add_volume(case.case_id, src_p, tgt_p, mask_p, data["source_transform"], data["target_transform"],
                      attrs={"shape": list(data["source"].shape), **data["geometry"]})
    t_write = time.perf_counter() - t_write
    padded_shape, shift = src_p.shape, np.zeros(3, np.int64)
    if plan.model_cfg.generator.kind == "unet3d":  # its crops pass a short volume's edges with zeros: so may its patches
        (src_p, tgt_p, mask_p), shift = fill_to_patch([src_p, tgt_p, mask_p], S)
    rng = _case_rng(plan.seed, case.case_id)
    try:
        corner_sets = [sample_corners(mask_p, plan.patches_per_case, S, rng, plan.inside_fraction) for _ in range(plan.copies)]
    except DataError as exc:
        raise exc.in_case(case.case_id) from exc
    t_sample = time.perf_counter() - t_sample - t_write
    t_extract, t_patches = _write_patches(writer, case.case_id, src_p, tgt_p, corner_sets, plan, shift)
    inside = np.concatenate(corner_sets) + S // 2
    timings = {"read_s": data["read_s"], "normalise_s": data["normalise_s"], "pad_sample_s": t_sample,
               "extract_s": t_extract, "write_s": t_write + t_patches, "total_s": time.perf_counter() - t_case}
    return _case_entry(case, data, padded_shape, int(mask_p[tuple(inside.T)].astype(bool).sum()), plan, split, timings)


def fill_to_patch(volumes: List[np.ndarray], size: int) -> Tuple[List[np.ndarray], np.ndarray]:
    """``volumes`` (one grid) with zeros added evenly on both sides of each axis shorter than ``size``, and the
    (z, y, x) voxels added before the first: a U-Net crops volumes smaller than its crop this way in training."""
    short = np.maximum(int(size) - np.asarray(volumes[0].shape[-3:], dtype=np.int64), 0)
    before = short // 2
    if not short.any():
        return volumes, before
    widths = [(int(b), int(n - b)) for b, n in zip(before, short)]
    return [np.pad(v, widths, mode="constant") for v in volumes], before


def _write_patches(writer: Any, case_id: str, src_p: np.ndarray, tgt_p: np.ndarray, corner_sets: List[np.ndarray],
                   plan: _Plan, shift: np.ndarray) -> Tuple[float, float]:
    """Cut and write the patches at each copy's corners (copy 1 flipped), in chunks; returns (extract s, write s).

    ``shift``: voxels :func:`fill_to_patch` added before the stored volume, taken off the recorded corners (which
    then may be negative: the cube passes the volume's edge)."""
    from .patches import extract_patches, flip_patches

    S, T, halo = plan.model_cfg.source_patch, plan.model_cfg.target_patch, plan.halo
    t_extract = t_write = 0.0
    for copy, corners in enumerate(corner_sets):
        for a in range(0, plan.patches_per_case, EXTRACT_CHUNK):
            c = corners[a : a + EXTRACT_CHUNK]
            t0 = time.perf_counter()
            sp = extract_patches(src_p, c, S)
            tp = extract_patches(tgt_p, c + halo, T)
            if copy == 1:
                sp, tp = flip_patches(sp, plan.flip_axis), flip_patches(tp, plan.flip_axis)  # type: ignore[arg-type]
            t1 = time.perf_counter()
            writer.add_patches(case_id, sp, tp, c - shift, np.full(len(c), copy, np.uint8))
            t_extract += t1 - t0
            t_write += time.perf_counter() - t1
    return t_extract, t_write


def _recorded_path(path: Path) -> str:
    """The absolute name the user's folder gives a file; symbolic links are kept, since a linked dataset's targets
    (a content store, a hashed cache) would say nothing about the case."""
    return os.path.abspath(path)


def _case_entry(case: Case, data: Dict[str, Any], padded_shape: Tuple[int, ...], centred: int, plan: _Plan, split: str,
                timings: Dict[str, float]) -> Dict[str, Any]:
    """The manifest's record of one case: its files, grid, patch counts, normalisation and timings."""
    k, copies = plan.patches_per_case, plan.copies
    return {
        "split": split,
        "source": _recorded_path(case.source),
        "target": _recorded_path(case.target),
        "mask": _recorded_path(case.mask) if case.mask else None,
        "seg": _recorded_path(case.seg) if case.seg else None,
        "shape": list(data["source"].shape),
        "padded_shape": list(padded_shape),
        **data["geometry"],
        "mask_voxels": int(data["mask"].sum()),
        "patches": k * copies,
        "patches_original": k,
        "patches_flipped": k * (copies - 1),
        "patches_centred_in_mask": centred,
        "normalisation": {"source": data["source_transform"], "target": data["target_transform"]},
        "notes": data["notes"],
        "warnings": data["warnings"],
        "timings": {key: round(value, 3) for key, value in timings.items()},
    }


def _manifest(plan: _Plan, splits: Dict[str, List[Case]], case_entries: Dict[str, Dict[str, Any]],
              total_s: float) -> Dict[str, Any]:
    """``manifest.json``: how the patch files were made (settings, splits, counts) and every case's record."""
    k, copies, cfg = plan.patches_per_case, plan.copies, plan.model_cfg
    return {
        "format": MANIFEST_FORMAT,
        "format_version": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "prepare_run": plan.run_id,
        "seed": int(plan.seed),
        "patches_per_case": k,
        "flip_axis": plan.flip_axis,
        "flip_corners": "independent",
        "inside_fraction": float(plan.inside_fraction),
        "geometry": plan.geometry,
        "source_patch": cfg.source_patch,
        "target_patch": cfg.target_patch,
        "pad": plan.halo,
        "compression": plan.compression,
        "volume_dtype": plan.volume_dtype,
        "model_config": to_dict(cfg),
        "files": {name: f"{name}.h5" for name in splits if splits[name]},
        "splits": {name: [c.case_id for c in members] for name, members in splits.items()},
        "counts": {name: len(members) * k * copies for name, members in splits.items()},
        "cases": {cid: case_entries[cid] for cid in sorted(case_entries)},
        "timings": {"total_s": round(total_s, 3)},
    }


def _close_quietly(writer: Any) -> None:
    """Close a writer left open by an error (its temporary file is then removed by ``atomic_path``)."""
    try:
        if writer.f.id.valid:
            writer.f.close()
    except Exception:
        pass

