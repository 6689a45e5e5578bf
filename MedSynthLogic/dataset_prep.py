"""``medsynth prepare``: find paired cases, normalise them, sample patches and write HDF5 patch files.

Output folder: ``train.h5`` and ``val.h5`` (schema in :mod:`MedSynthLogic.h5data` and ``docs/ARCHITECTURE.md``)
and ``manifest.json`` (splits, per-case paths, shapes, normalisation, patch counts, timings, seed).

Choices worth knowing:

* The split is by case (never by patch), so no validation patch shares a subject with training.
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

import csv as csv_module
import hashlib
import json
import logging
import os
import re
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .atomic import atomic_path, atomic_write_text
from .config import ModelConfig, to_dict
from .errors import DataError, GeometryError, MedSynthError, OutputError, UsageError
from .progress import progress_event

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
BRATS_PATTERN = "{case}/{case}_{suffix}.nii*"
OUTPUT_FILES = ("train.h5", "val.h5", "manifest.json")
MANIFEST_FORMAT = "medsynth-manifest"
EXTRACT_CHUNK = 512

__all__ = ["Case", "find_cases", "split_cases", "prepare_dataset", "BRATS_PATTERN"]


@dataclass(frozen=True)
class Case:
    """One subject: a source and a target volume, optionally a brain mask and a tumour segmentation."""

    case_id: str
    source: Path
    target: Path
    mask: Optional[Path] = None
    seg: Optional[Path] = None


# --------------------------------------------------------------------------------------------- discovery


def _pattern_regex(pattern: str) -> "re.Pattern[str]":
    """A regex for a glob with ``{case}``: ``*``/``?`` stay within one path part, repeated ``{case}`` must agree."""
    out = []
    seen = False
    for token in re.split(r"(\{case\}|\*\*|\*|\?)", pattern):
        if token == "{case}":
            out.append("(?P=case)" if seen else "(?P<case>[^/]+?)")
            seen = True
        elif token == "**":
            out.append(".*")
        elif token == "*":
            out.append("[^/]*")
        elif token == "?":
            out.append("[^/]")
        else:
            out.append(re.escape(token))
    return re.compile("^" + "".join(out) + "$")


def _match_pattern(folder: Path, pattern: str) -> Dict[str, List[Path]]:
    """case id → files under ``folder`` matching ``pattern`` (which must contain ``{case}``)."""
    if "{case}" not in pattern:
        raise UsageError(f"The pattern {pattern!r} must contain {{case}} where the case id goes.")
    regex = _pattern_regex(pattern)
    found: Dict[str, List[Path]] = {}
    for path in sorted(folder.glob(pattern.replace("{case}", "*"))):
        if not path.is_file():
            continue
        m = regex.match(path.relative_to(folder).as_posix())
        if m:
            found.setdefault(m.group("case"), []).append(path)
    return found


def _single(case_id: str, files: Optional[List[Path]], role: str, ambiguous: List[str]) -> Optional[Path]:
    if not files:
        return None
    if len(files) > 1:
        ambiguous.append(f"{case_id} ({role}: {', '.join(f.name for f in files)})")
    return files[0]


def find_cases(
    folder: Optional[PathLike],
    source_suffix: str = "t1ce",
    target_suffix: str = "t2",
    source_pattern: Optional[str] = None,
    target_pattern: Optional[str] = None,
    csv: Optional[PathLike] = None,
    skip_incomplete: bool = False,
    pattern: Optional[str] = None,
) -> List[Case]:
    """The paired cases of a data folder, sorted by case id.

    Three ways to describe the pairs:

    * BraTS naming (default): ``<case>/<case>_<source_suffix>.nii.gz`` and ``…_<target_suffix>``, with
      ``_seg`` and ``_mask`` picked up when present.
    * ``source_pattern`` and ``target_pattern``: globs relative to ``folder`` containing ``{case}``, e.g.
      ``"{case}/*T1*.nii.gz"``; or one ``pattern`` with ``{case}`` and ``{suffix}`` that is filled with the two
      suffixes, e.g. ``"{case}_{suffix}.nii.gz"`` for a flat folder.
    * ``csv``: a file with header ``case,source,target[,mask][,seg]``; relative paths are resolved against the
      CSV's folder.

    A case missing its partner makes the whole call fail with a ``DataError`` listing the incomplete cases,
    because silently training on fewer subjects than intended is worse; ``skip_incomplete=True`` skips them.
    """
    if csv is not None:
        return _cases_from_csv(Path(csv), skip_incomplete)
    if folder is None:
        raise UsageError("Give a data folder or a CSV of cases.")
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"The data folder {root} does not exist or is not a folder.", "Check the path.")
    extra: Dict[str, Dict[str, List[Path]]] = {}
    if source_pattern or target_pattern:
        if not (source_pattern and target_pattern):
            raise UsageError("Give both a source pattern and a target pattern (each with {case}).")
        src_pat, tgt_pat = source_pattern, target_pattern
        how = f"files matching {source_pattern!r} and {target_pattern!r}"
    else:
        base = pattern or BRATS_PATTERN
        if "{suffix}" not in base:
            raise UsageError(f"The pattern {base!r} must contain {{suffix}} (or use source and target patterns).")
        src_pat = base.replace("{suffix}", source_suffix)
        tgt_pat = base.replace("{suffix}", target_suffix)
        for role in ("seg", "mask"):
            if role not in (source_suffix, target_suffix):
                extra[role] = _match_pattern(root, base.replace("{suffix}", role))
        how = f"files named like {src_pat!r} and {tgt_pat!r}"
    sources = _match_pattern(root, src_pat)
    targets = _match_pattern(root, tgt_pat)
    if sources and targets and set(sources) == set(targets) and src_pat == tgt_pat:
        raise UsageError("The source and target patterns are the same; they must pick different files.")
    ids = sorted(set(sources) | set(targets))
    if not ids:
        raise DataError(
            f"No cases found in {root}: looked for {how}.",
            "For BraTS naming put each case in <case>/<case>_t1ce.nii.gz + <case>/<case>_t2.nii.gz; otherwise "
            "use --source-pattern/--target-pattern with {case}, or --csv.",
        )
    cases: List[Case] = []
    incomplete: List[str] = []
    ambiguous: List[str] = []
    for cid in ids:
        s = _single(cid, sources.get(cid), "source", ambiguous)
        t = _single(cid, targets.get(cid), "target", ambiguous)
        if s is not None and t is not None and s == t:
            ambiguous.append(f"{cid} (the same file {s.name} matches source and target)")
        if s is None or t is None:
            incomplete.append(f"{cid} (no {'source' if s is None else 'target'})")
            continue
        mask = _single(cid, extra.get("mask", {}).get(cid), "mask", ambiguous)
        seg = _single(cid, extra.get("seg", {}).get(cid), "seg", ambiguous)
        cases.append(Case(cid, s, t, mask, seg))
    if ambiguous:
        raise DataError(
            "Several files match for case(s): " + "; ".join(ambiguous) + ".",
            "Make the patterns more specific so each picks one file per case.",
        )
    return _finish(cases, incomplete, skip_incomplete, str(root))


def _finish(cases: List[Case], incomplete: List[str], skip_incomplete: bool, where: str) -> List[Case]:
    if incomplete and not skip_incomplete:
        raise DataError(
            f"{len(incomplete)} case(s) in {where} are incomplete: " + ", ".join(incomplete) + ".",
            "Add the missing files, remove those cases, or pass --skip-incomplete to leave them out.",
        )
    if incomplete:
        log.warning("Skipping %d incomplete case(s): %s", len(incomplete), ", ".join(incomplete))
    if not cases:
        raise DataError(f"No complete cases in {where}.", "Each case needs a source and a target volume.")
    return sorted(cases, key=lambda c: c.case_id)


def _cases_from_csv(path: Path, skip_incomplete: bool) -> List[Case]:
    if not path.is_file():
        raise DataError(f"The case list {path} does not exist.", "Check the --csv path.")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"Cannot read the case list {path}: {exc}.") from exc
    table = [r for r in csv_module.reader(text.splitlines()) if any(cell.strip() for cell in r)]
    header = [h.strip().lower() for h in table[0]] if table else []
    missing_cols = [c for c in ("case", "source", "target") if c not in header]
    if missing_cols:
        raise DataError(
            f"The case list {path} lacks the column(s) {', '.join(missing_cols)}.",
            "The first line must be a header: case,source,target[,mask][,seg].",
        )
    rows = [dict(zip(header, (cell.strip() for cell in r))) for r in table[1:]]
    base = path.parent
    cases: List[Case] = []
    incomplete: List[str] = []
    seen: Dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        cid = row.get("case", "")
        if not cid:
            raise DataError(f"{path} line {line}: the case id is empty.")
        if cid in seen:
            raise DataError(f"{path}: case {cid} appears on lines {seen[cid]} and {line}.", "Case ids must be unique.")
        seen[cid] = line

        def resolve(key: str) -> Optional[Path]:
            value = row.get(key, "")
            if not value:
                return None
            p = Path(value).expanduser()
            return p if p.is_absolute() else base / p

        paths = {k: resolve(k) for k in ("source", "target", "mask", "seg")}
        absent = [k for k, p in paths.items() if (k in ("source", "target") and p is None) or (p is not None and not p.is_file())]
        if absent:
            incomplete.append(f"{cid} (" + ", ".join(f"{k} {paths[k] if paths[k] else 'not given'} missing" for k in absent) + ")")
            continue
        cases.append(Case(cid, paths["source"], paths["target"], paths["mask"], paths["seg"]))  # type: ignore[arg-type]
    if not rows:
        raise DataError(f"The case list {path} has no cases.", "Add one line per case below the header.")
    return _finish(cases, incomplete, skip_incomplete, str(path))


# --------------------------------------------------------------------------------------------- split


def _case_key(seed: int, case_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{case_id}".encode("utf-8")).digest()[:8], "big")


def select_cases(cases: Sequence[Case], wanted: Sequence[str], what: str = "Case") -> List[Case]:
    """The cases named in ``wanted``, in that order; an unknown id is an error, never silently dropped.

    A typo in a case list would otherwise shrink a training set or a validation report without a word.
    """
    by_id = {c.case_id: c for c in cases}
    ids = list(dict.fromkeys(wanted))
    unknown = [w for w in ids if w not in by_id]
    if unknown:
        raise UsageError(
            f"{what}(s) not found: {', '.join(unknown)}.",
            f"Known cases: {', '.join(sorted(by_id)[:20])}{' …' if len(by_id) > 20 else ''}.",
        )
    return [by_id[w] for w in ids]


def split_cases(
    cases: Sequence[Case],
    val_cases: Optional[Sequence[str]] = None,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> Tuple[List[Case], List[Case]]:
    """(train, val) by case: the given ``val_cases`` ids, or ``round(n · val_fraction)`` cases picked by a seeded hash.

    Hashing each id (rather than shuffling the list) makes the split depend only on the ids and the seed, not
    on discovery order; adding a case never moves another between splits unless the val count changes.
    With a nonzero fraction and at least two cases, at least one case goes to each split.
    """
    by_id = {c.case_id: c for c in cases}
    if len(by_id) != len(cases):
        raise DataError("Case ids must be unique.")
    if val_cases is not None:
        val_ids = [c.case_id for c in select_cases(cases, val_cases, "Validation case")]
        if len(val_ids) == len(by_id):
            raise UsageError("Every case is a validation case; leave at least one for training.")
        val_set = set(val_ids)
    else:
        if not 0.0 <= val_fraction < 1.0:
            raise UsageError(f"val_fraction must be in [0, 1), got {val_fraction}.")
        n = len(cases)
        k = int(round(n * val_fraction))
        if val_fraction > 0 and n >= 2:
            k = min(max(k, 1), n - 1)
        ranked = sorted(by_id, key=lambda cid: (_case_key(seed, cid), cid))
        val_set = set(ranked[:k])
    train = sorted((c for c in cases if c.case_id not in val_set), key=lambda c: c.case_id)
    val = sorted((c for c in cases if c.case_id in val_set), key=lambda c: c.case_id)
    return train, val


# --------------------------------------------------------------------------------------------- prepare


def _check_outputs(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise OutputError(f"The output {out} is a file, not a folder.", "Choose a folder for the patch files.")
    existing = [name for name in OUTPUT_FILES if (out / name).exists()]
    if existing and not overwrite:
        raise OutputError(
            f"The output folder {out} already holds {', '.join(existing)}.",
            "Pass --overwrite to replace them or choose another folder.",
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"Cannot create the output folder {out}: {exc.strerror}.", "Choose a folder you can write to.") from exc
    if not os.access(out, os.W_OK):
        raise OutputError(f"The output folder {out} is not writable.", "Choose a folder you can write to.")


def _in_case(case_id: str, exc: MedSynthError) -> MedSynthError:
    """The same error type, its message prefixed by the case, so a failure in case 37 of 200 is findable."""
    return type(exc)(f"Case {case_id}: {exc.message}", exc.hint)


def _load_case(case: Case, model_cfg: ModelConfig, geometry: str) -> Dict[str, Any]:
    """Read, align, mask and normalise one case (unpadded, float32)."""
    from .normalisation import brain_mask, normalise_source, normalise_target
    from .volume_io import align_pair, read_volume, resample_like, same_grid

    norm = model_cfg.normalisation
    t0 = time.perf_counter()
    source, target, notes = align_pair(read_volume(case.source), read_volume(case.target), policy=geometry)
    if case.mask is not None:
        mvol = read_volume(case.mask)
        diffs = same_grid(source, mvol)
        if diffs:
            if geometry == "refuse":
                raise GeometryError("The mask is not on the source grid: " + "; ".join(diffs) + ".", "Resample it first or allow resampling.")
            mvol = resample_like(mvol, source)
            notes.append("Resampled the mask onto the source grid: " + "; ".join(diffs) + ".")
            mask = mvol.array > 0.5
        else:
            mask = mvol.array > 0
    else:
        mask = brain_mask(source.array, norm.mask_threshold)
    if not mask.any():
        raise DataError(
            "The brain mask is empty.",
            "Check the mask file, or the mask threshold for skull-stripped sources (voxels above it are brain).",
        )
    t1 = time.perf_counter()
    src, src_tr = normalise_source(source.array, mask, norm)
    tgt, tgt_tr = normalise_target(target.array, mask, norm)
    t2 = time.perf_counter()
    return {
        "source": src,
        "target": tgt,
        "mask": mask,
        "source_transform": src_tr.to_dict(),
        "target_transform": tgt_tr.to_dict(),
        "geometry": {"spacing": list(source.spacing), "origin": list(source.origin), "direction": list(source.direction)},
        "notes": notes,
        "read_s": t1 - t0,
        "normalise_s": t2 - t1,
    }


def _case_rng(seed: int, case_id: str) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, _case_key(0, case_id) & 0xFFFFFFFF])


def _check_case_id(case_id: str) -> None:
    if not case_id or "/" in case_id or case_id in (".", "..") or case_id != case_id.strip():
        raise DataError(f"The case id {case_id!r} cannot name an HDF5 group.", "Use case ids without '/' or surrounding spaces.")


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
    from .h5data import PatchFileWriter
    from .patches import extract_patches, flip_patches, pad_volume, sample_corners

    started = time.perf_counter()
    cases = list(cases)
    if not cases:
        raise DataError("There are no cases to prepare.", "Check the data folder or CSV.")
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
    out = Path(out_dir)
    _check_outputs(out, overwrite)
    train, val = split_cases(cases, val_cases=val_cases, val_fraction=val_fraction, seed=seed)
    splits = {"train": train, "val": val}
    k = int(patches_per_case)
    copies = 1 if flip_axis is None else 2
    S, T, halo = model_cfg.source_patch, model_cfg.target_patch, model_cfg.generator.halo
    cfg_dict = to_dict(model_cfg)
    total = len(cases)
    emit = progress or (lambda event: None)
    emit(progress_event("prepare", 0, total, case=None))
    case_entries: Dict[str, Dict[str, Any]] = {}
    done = 0
    with ExitStack() as stack:
        writers: Dict[str, PatchFileWriter] = {}
        for name, members in splits.items():
            if not members:
                continue
            tmp = stack.enter_context(atomic_path(out / f"{name}.h5"))
            writers[name] = PatchFileWriter(
                tmp,
                len(members) * k * copies,
                S,
                T,
                cfg_dict,
                [c.case_id for c in members],
                halo,
                flip_axis=2 if flip_axis is None else flip_axis,
                seed=seed,
                compression=compression,
                volume_dtype=volume_dtype,
                attrs={"split": name, "patches_per_case": k, "inside_fraction": float(inside_fraction), "flipped_copy": int(copies == 2)},
            )
            stack.callback(_close_quietly, writers[name])
        for name, members in splits.items():
            for case in members:
                t_case = time.perf_counter()
                try:
                    data = _load_case(case, model_cfg, geometry)
                except MedSynthError as exc:
                    raise _in_case(case.case_id, exc) from exc
                t_sample = time.perf_counter()
                src_p = pad_volume(data["source"], halo)
                tgt_p = pad_volume(data["target"], halo)
                mask_p = pad_volume(data["mask"].astype(np.uint8), halo, mode="constant")
                rng = _case_rng(seed, case.case_id)
                try:
                    corner_sets = [sample_corners(mask_p, k, S, rng, inside_fraction) for _ in range(copies)]
                except DataError as exc:
                    raise _in_case(case.case_id, exc) from exc
                t_sample = time.perf_counter() - t_sample
                t_extract = 0.0
                t_write = time.perf_counter()
                writer = writers[name]
                writer.add_volume(
                    case.case_id,
                    src_p,
                    tgt_p,
                    mask_p,
                    data["source_transform"],
                    data["target_transform"],
                    attrs={"shape": list(data["source"].shape), **data["geometry"]},
                )
                t_write = time.perf_counter() - t_write
                for copy, corners in enumerate(corner_sets):
                    for a in range(0, k, EXTRACT_CHUNK):
                        c = corners[a : a + EXTRACT_CHUNK]
                        t0 = time.perf_counter()
                        sp = extract_patches(src_p, c, S)
                        tp = extract_patches(tgt_p, c + halo, T)
                        if copy == 1:
                            sp, tp = flip_patches(sp, flip_axis), flip_patches(tp, flip_axis)  # type: ignore[arg-type]
                        t1 = time.perf_counter()
                        writer.add_patches(case.case_id, sp, tp, c, np.full(len(c), copy, np.uint8))
                        t_extract += t1 - t0
                        t_write += time.perf_counter() - t1
                inside = np.concatenate(corner_sets) + S // 2
                case_entries[case.case_id] = {
                    "split": name,
                    "source": str(Path(case.source).resolve()),
                    "target": str(Path(case.target).resolve()),
                    "mask": str(Path(case.mask).resolve()) if case.mask else None,
                    "seg": str(Path(case.seg).resolve()) if case.seg else None,
                    "shape": list(data["source"].shape),
                    "padded_shape": list(src_p.shape),
                    **data["geometry"],
                    "mask_voxels": int(data["mask"].sum()),
                    "patches": k * copies,
                    "patches_original": k,
                    "patches_flipped": k * (copies - 1),
                    "patches_centred_in_mask": int(mask_p[tuple(inside.T)].astype(bool).sum()),
                    "normalisation": {"source": data["source_transform"], "target": data["target_transform"]},
                    "notes": data["notes"],
                    "timings": {
                        "read_s": round(data["read_s"], 3),
                        "normalise_s": round(data["normalise_s"], 3),
                        "pad_sample_s": round(t_sample, 3),
                        "extract_s": round(t_extract, 3),
                        "write_s": round(t_write, 3),
                        "total_s": round(time.perf_counter() - t_case, 3),
                    },
                }
                del data, src_p, tgt_p, mask_p
                done += 1
                emit(progress_event("prepare", done, total, case=case.case_id))
        for w in writers.values():
            w.close()
    if not val and overwrite and (out / "val.h5").exists():
        (out / "val.h5").unlink()
    manifest = {
        "format": MANIFEST_FORMAT,
        "format_version": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seed": int(seed),
        "patches_per_case": k,
        "flip_axis": flip_axis,
        "flip_corners": "independent",
        "inside_fraction": float(inside_fraction),
        "geometry": geometry,
        "source_patch": S,
        "target_patch": T,
        "pad": halo,
        "compression": compression,
        "volume_dtype": volume_dtype,
        "model_config": cfg_dict,
        "files": {name: f"{name}.h5" for name in splits if splits[name]},
        "splits": {name: [c.case_id for c in members] for name, members in splits.items()},
        "counts": {name: len(members) * k * copies for name, members in splits.items()},
        "cases": {cid: case_entries[cid] for cid in sorted(case_entries)},
        "timings": {"total_s": round(time.perf_counter() - started, 3)},
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2))
    return manifest


def _close_quietly(writer: Any) -> None:
    """Close a writer left open by an error (its temporary file is then removed by ``atomic_path``)."""
    try:
        if writer.f.id.valid:
            writer.f.close()
    except Exception:
        pass

