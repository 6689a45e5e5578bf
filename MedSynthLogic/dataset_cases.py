"""Which cases a data folder holds, and how they split: BraTS naming, a ``{case}`` glob or a CSV; ids by choice
or by a seeded hash.

The split is by case (never by patch), so no validation patch shares a subject with training. Every choice
here depends only on the case ids and the seed, never on discovery order.
"""

from __future__ import annotations

import csv as csv_module
import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from .errors import DataError, UsageError

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
BRATS_PATTERN = "{case}/{case}_{suffix}.nii*"
#: File endings read as images in a folder (the formats SimpleITK reads that MedSynth documents).
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".hdr")

__all__ = ["BRATS_PATTERN", "IMAGE_SUFFIXES", "Case", "CaseFiles", "case_glob", "case_key", "companion_t1", "find_cases", "image_ending",
           "image_stem", "pattern_regex", "select_cases",
           "split_cases"]


@dataclass(frozen=True)
class Case:
    """One subject: a source and a target volume, optionally a brain mask and a tumour segmentation."""

    case_id: str
    source: Path
    target: Path
    mask: Optional[Path] = None
    seg: Optional[Path] = None


def case_id_problem(case_id: str) -> Optional[str]:
    """Why ``case_id`` cannot name a case's files and HDF5 group (``<out>/<case>.png``, ``/volumes/<case>``), or None.

    A CSV may give any text: ``siteA/Case0`` failed after that case's synthesis, ``../Case0`` wrote beside the report.
    """
    if not case_id:
        return "is empty"
    if "/" in case_id or "\\" in case_id or case_id in (".", ".."):
        return "would name a path, not a file"
    if case_id != case_id.strip():
        return "has surrounding spaces"
    return None


# --------------------------------------------------------------------------------------------- discovery


def pattern_regex(pattern: str) -> "re.Pattern[str]":
    """A regex for a glob with ``{case}``: ``*``/``?`` stay within one path part, repeated ``{case}`` must agree.
    It is matched against ``/``-separated paths, so a Windows pattern's ``\\`` is read as ``/``."""
    pattern = _slashes(pattern)
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


def case_glob(pattern: str) -> str:
    """The glob that finds every case's file of a ``{case}`` pattern (``{case}`` becomes ``*``). A ``*`` or ``?``
    right beside ``{case}`` is refused: where the id ends would be a guess (``'*{case}_T1w'`` read sub-01 as case
    "1"), and pathlib refused the ``**`` it made with a traceback."""
    if re.search(r"[*?]\{case\}|\{case\}[*?]", pattern):
        raise UsageError(f"In the pattern {pattern!r} a wildcard touches {{case}}, so where the case id starts or ends "
                         "is ambiguous.", "Put the fixed text around the id in the pattern, e.g. "
                         "'sub-{case}_T1w.nii.gz' or '{case}/*T1*.nii.gz'.")
    return _slashes(pattern).replace("{case}", "*")


def _slashes(pattern: str) -> str:
    """A pattern with Windows' separators as ``/`` (there only: elsewhere ``\\`` may be part of a name); a user's
    ``{case}\\{case}_t1ce.nii.gz`` found files with glob but matched none, so every case was skipped."""
    return pattern.replace("\\", "/") if os.name == "nt" else pattern


def _match_pattern(folder: Path, pattern: str) -> Dict[str, List[Path]]:
    """case id → files under ``folder`` matching ``pattern`` (which must contain ``{case}``)."""
    if "{case}" not in pattern:
        raise UsageError(f"The pattern {pattern!r} must contain {{case}} where the case id goes.")
    regex = pattern_regex(pattern)
    found: Dict[str, List[Path]] = {}
    for path in sorted(folder.glob(case_glob(pattern))):
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
    only: Optional[Sequence[str]] = None,
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
    ``only``: the case ids the caller will select (``--cases``); another case's missing partner is no error then.
    """
    if csv is not None:
        return _cases_from_csv(Path(csv), skip_incomplete, only)
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
            f"For BraTS naming put each case in <case>/<case>_{source_suffix}.nii.gz + "
            f"<case>/<case>_{target_suffix}.nii.gz, or pass the folder's --source-suffix/--target-suffix "
            "(or --source-pattern/--target-pattern with {case}, or --csv, for any other layout).",
        )
    cases: List[Case] = []
    incomplete: List[str] = []
    ambiguous: List[str] = []
    if not (source_pattern or target_pattern or pattern):
        incomplete += _unnamed_case_folders(root, ids, source_suffix, target_suffix, only)
    for cid in ids:
        wanted = only is None or cid in only  # a case left out of the selection is not judged
        problems: List[str] = []
        s = _single(cid, sources.get(cid), "source", problems)
        t = _single(cid, targets.get(cid), "target", problems)
        if s is not None and t is not None and s == t:
            problems.append(f"{cid} (the same file {s.name} matches source and target)")
        if s is not None and t is not None:
            mask = _single(cid, extra.get("mask", {}).get(cid), "mask", problems)
            seg = _single(cid, extra.get("seg", {}).get(cid), "seg", problems)
        if not wanted:
            if s is not None and t is not None and not problems:
                cases.append(Case(cid, s, t, mask, seg))  # still listed among the folder's known cases
            continue
        ambiguous.extend(problems)
        if s is None or t is None:
            role, looked = ("source", src_pat) if s is None else ("target", tgt_pat)
            incomplete.append(f"{cid} (no {role} matching {looked.replace('{case}', cid)!r})")
            continue
        cases.append(Case(cid, s, t, mask, seg))
    if ambiguous:
        raise DataError(
            "Several files match for case(s): " + "; ".join(ambiguous) + ".",
            "Make the patterns more specific so each picks one file per case.",
        )
    return _finish(cases, incomplete, skip_incomplete, str(root), named=only is not None)


def _unnamed_case_folders(root: Path, ids: Sequence[str], source_suffix: str, target_suffix: str,
                          only: Optional[Sequence[str]]) -> List[str]:
    """Sub-folders named like a case whose files BraTS naming misses only by case or format (``<case>_T1CE.nii.gz``,
    ``<case>_t1ce.mha``): they were left out without a word, while ``synthesize`` on the same folder read them (a
    data review, session 42). A folder of other images (``synthesize``'s own output folder) is not a case."""
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in ids):
        if only is not None and folder.name not in only:
            continue
        wanted = {f"{folder.name}_{suffix}".lower() for suffix in (source_suffix, target_suffix)}
        near = sorted(p.name for p in folder.iterdir() if p.is_file() and image_stem(p.name).lower() in wanted)
        if near:
            found.append(f"{folder.name} (holds {', '.join(near)} but no {folder.name}_{source_suffix}.nii.gz or "
                         f"{folder.name}_{target_suffix}.nii.gz: BraTS naming matches the suffix as written and NIfTI "
                         "files only)")
    return found


def image_ending(name: str) -> str:
    """A file name's image ending in lower case (``.nii.gz`` …, one of ``IMAGE_SUFFIXES``), or "" for no image."""
    lower = name.lower()
    return next((suffix for suffix in IMAGE_SUFFIXES if lower.endswith(suffix)), "")


def image_stem(name: str) -> str:
    """A file name without its image ending (``case_t1ce.nii.gz`` → ``case_t1ce``); other names unchanged."""
    return name[: len(name) - len(image_ending(name))]


def _finish(cases: List[Case], incomplete: List[str], skip_incomplete: bool, where: str, named: bool = False) -> List[Case]:
    """``named``: ``incomplete`` lists only cases the caller selects by id, which are never skipped: leaving out a
    case the user asked for by name would score or fit fewer cases than asked, or call it "not found"."""
    if named and incomplete:
        raise DataError(f"{len(incomplete)} of the cases asked for in {where} are incomplete: " + ", ".join(incomplete) + ".",
                        "Add the missing files, or leave those cases out of --cases.")
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


def _cases_from_csv(path: Path, skip_incomplete: bool, only: Optional[Sequence[str]] = None) -> List[Case]:
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
    owner: Dict[Path, str] = {}  # a source or target file → the case that names it
    for line, row in enumerate(rows, start=2):
        cid = row.get("case", "")
        if not cid:
            raise DataError(f"{path} line {line}: the case id is empty.")
        if cid in seen:
            raise DataError(f"{path}: case {cid} appears on lines {seen[cid]} and {line}.", "Case ids must be unique.")
        problem = case_id_problem(cid)
        if problem:
            raise DataError(f"{path} line {line}: the case id {cid!r} {problem}.",
                            "Use case ids without '/', '\\' or surrounding spaces, and not '.' or '..'.")
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
            if only is None or cid in only:
                incomplete.append(f"{cid} (" + ", ".join(f"{k} {paths[k] if paths[k] else 'not given'} missing" for k in absent) + ")")
            continue
        _check_own_files(path, line, cid, paths["source"], paths["target"], owner)  # type: ignore[arg-type]
        cases.append(Case(cid, paths["source"], paths["target"], paths["mask"], paths["seg"]))  # type: ignore[arg-type]
    if not rows:
        raise DataError(f"The case list {path} has no cases.", "Add one line per case below the header.")
    return _finish(cases, incomplete, skip_incomplete, str(path), named=only is not None)


# --------------------------------------------------------------------------------------------- split


def _check_own_files(csv_path: Path, line: int, case_id: str, source: Path, target: Path, owner: Dict[Path, str]) -> None:
    """A row whose source is its target (an identity mapping to learn), or a file that another row names too (one
    subject under two ids, which the split can put in training and validation both), is refused, as the patterns
    refuse one file matching source and target."""
    source_file, target_file = source.resolve(), target.resolve()
    if source_file == target_file:
        raise DataError(f"{csv_path} line {line}: case {case_id} names the same file {source} as source and target.",
                        "Give the source and the target volume of that case.")
    for role, file in (("source", source_file), ("target", target_file)):
        if file in owner:
            raise DataError(f"{csv_path} line {line}: the {role} {file} of case {case_id} is also named by case "
                            f"{owner[file]}.", "List each subject once: two ids of one subject can land in training "
                            "and validation both.")
        owner[file] = case_id


def companion_t1(source: PathLike) -> Optional[Path]:
    """The non-contrast T1 beside a T1ce source, when the names say which is which (BraTS: ``…_t1ce.nii.gz`` →
    ``…_t1.nii.gz``); None when the source's name has no ``t1ce`` or no such file exists. The likeliest wrong pick
    for a T1ce, so the studies and the error map's fit use it as a shifted source."""
    path = Path(source)
    if "t1ce" not in path.name:
        return None
    t1 = path.with_name(path.name.replace("t1ce", "t1"))
    return t1 if t1.is_file() else None


def case_key(seed: int, case_id: str) -> int:
    """A stable 64-bit hash of ``(seed, case_id)``: the split's ranking and each case's own RNG seed."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{case_id}".encode("utf-8")).digest()[:8], "big")


@dataclass(frozen=True)
class CaseFiles:
    """How a data folder names its pairs when it does not follow BraTS naming: two ``{case}`` globs or a CSV, as
    ``--source-pattern``/``--target-pattern``/``--csv`` of every command that reads cases (prepare, evaluate,
    fit-lookup, fit-error-map), and ``--skip-incomplete`` (each of them offers it: an incomplete case's error names
    it). All None: BraTS naming with the pair's suffixes."""

    source_pattern: Optional[str] = None
    target_pattern: Optional[str] = None
    csv: Optional[PathLike] = None
    skip_incomplete: bool = False

    def find(self, folder: Optional[PathLike], source_suffix: str = "t1ce", target_suffix: str = "t2",
             only: Optional[Sequence[str]] = None) -> List[Case]:
        """:func:`find_cases` of ``folder`` as these options describe it (``only``: the ids that will be selected)."""
        return find_cases(folder, source_suffix, target_suffix, source_pattern=self.source_pattern,
                          target_pattern=self.target_pattern, csv=self.csv, skip_incomplete=self.skip_incomplete,
                          only=only)


def select_cases(cases: Sequence[Case], wanted: Sequence[str], what: str = "Case", where: str = "") -> List[Case]:
    """The cases named in ``wanted``, in that order; an unknown id is an error, never silently dropped (``where``:
    the folder they were looked for in, for the message).

    A typo in a case list would otherwise shrink a training set or a validation report without a word.
    """
    by_id = {c.case_id: c for c in cases}
    ids = list(dict.fromkeys(wanted))
    unknown = [w for w in ids if w not in by_id]
    if unknown:
        raise UsageError(
            f"{what}(s) not found{f' in {where}' if where else ''}: {', '.join(unknown)}.",
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
        ranked = sorted(by_id, key=lambda cid: (case_key(seed, cid), cid))
        val_set = set(ranked[:k])
    train = sorted((c for c in cases if c.case_id not in val_set), key=lambda c: c.case_id)
    val = sorted((c for c in cases if c.case_id in val_set), key=lambda c: c.case_id)
    if not train:  # one case and a fraction above ½: prepare wrote val.h5 alone, and train failed later
        raise UsageError(f"val_fraction {val_fraction:g} of {len(cases)} case(s) leaves no case for training.",
                         "Give more cases, or a lower --val-fraction (0 keeps every case for training).")
    return train, val
