"""A stopped evaluation's report, and going on from it.

An evaluation of many cases can take hours. When it stops (Cancel, SIGTERM, ``--stop-file``, a case that fails),
``medsynth evaluate`` writes the report of the cases it has scored, marked ``stopped``, instead of losing them;
``--resume`` then scores only the cases left, with the same predictor and settings, and writes the report an
uninterrupted run would have written. What must match is recorded in the stopped report itself.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Union

from .errors import OutputError, UsageError

PathLike = Union[str, "os.PathLike[str]"]

#: The report key that marks a stopped evaluation (its value: :func:`stopped_record`).
STOPPED = "stopped"


class KeptCases(NamedTuple):
    """What a stopped report hands on to the run that resumes it: its rows, in the order they were scored, the
    per-case records and files that belong to them, and what an ``--overwrite`` run it stopped had not yet taken
    away of the report it replaces (``replaced``: the resumed run finishes that)."""

    rows: List[Dict[str, Any]]
    refused: Dict[str, List[str]]
    resampled: Dict[str, List[str]]
    written: List[str]
    replaced: List[str]


NOTHING_KEPT = KeptCases([], {}, {}, [], [])


def case_files(case: Any) -> Dict[str, List[Any]]:
    """Each file a case is scored from (source, target, mask, segmentation) as [its resolved path, size, modification
    time]: a resumed run must find the kept cases' files as they were scored (another spelling of the same path is
    the same file; a file replaced since, or a segmentation added, is not)."""
    stamps = {}
    for role in ("source", "target", "mask", "seg"):
        path = getattr(case, role, None)
        if path is not None:
            try:
                stat = Path(path).stat()
                stamps[role] = [os.path.normcase(str(Path(path).resolve())), stat.st_size, stat.st_mtime_ns]
            except OSError:
                stamps[role] = [os.path.normcase(str(Path(path).absolute())), None, None]
    return stamps


def file_sha256(path: PathLike) -> str:
    """The SHA-256 of a file's bytes: what identifies a lookup (a model file carries its own ``tensors_sha256``)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def stopped_record(settings: Dict[str, Any], planned: Sequence[str], rows: Sequence[Dict[str, Any]], reason: str,
                   files: Dict[str, Dict[str, List[Any]]], replaced: Sequence[str]) -> Dict[str, Any]:
    """The ``stopped`` entry of a report: how far it got, why it stopped, and what a resumed run must repeat: the
    settings, the cases in order, the kept cases' ``files`` (:func:`case_files`), the replaced report's files still
    to take away, and the rows' non-finite values (strict JSON writes them as null; a perfect case's PSNR is inf)."""
    nonfinite = {row["case"]: {key: repr(value) for key, value in row.items()
                               if isinstance(value, float) and not math.isfinite(value)} for row in rows}
    return {"after": len(rows), "of": len(planned), "reason": reason, "cases_planned": list(planned),
            "settings": settings, "files": {row["case"]: files.get(row["case"]) for row in rows},
            "replaced": list(replaced), "nonfinite": {case: values for case, values in nonfinite.items() if values}}


def stopped_note(record: Dict[str, Any]) -> str:
    """The sentence a stopped report's Markdown puts first, so nobody cites its summary as the whole evaluation."""
    return (f"Stopped after {record['after']} of {record['of']} cases ({record['reason']}): the summary covers those "
            f"{record['after']} only. Run the same command with --resume to score the other "
            f"{record['of'] - record['after']}.")


def read_report(out_dir: PathLike) -> Optional[Dict[str, Any]]:
    """The report in ``out_dir`` (None where there is none or it cannot be read as one)."""
    try:
        report = json.loads((Path(out_dir) / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def plain_names(listed: Any) -> List[str]:
    """The file names a report lists (``written``, a stopped run's ``replaced``), plain names only: what an
    evaluation takes away or keeps must lie in its own folder, whatever a hand-edited report says."""
    return [name for name in (listed if isinstance(listed, list) else [])
            if isinstance(name, str) and name and Path(name).name == name and name not in (".", "..")]


def _unreadable(out: Path, detail: str) -> OutputError:
    return OutputError(f"The report in {out} cannot be read as a stopped evaluation's ({detail}).",
                       "Pass --overwrite to score every case again, or choose another --out.", reason="output_exists")


def is_stopped(out_dir: PathLike) -> bool:
    """True where ``out_dir`` holds a stopped evaluation's report (what ``--resume`` goes on from)."""
    report = read_report(out_dir)
    return report is not None and isinstance(report.get(STOPPED), dict)


#: Settings a stopped report written before they were recorded lacks: taken as this run's, so such a report (which
#: the panel resumes by itself) still goes on. ``medsynth_version`` came in session 47, at version 0.1.0.
LATER_SETTINGS = frozenset({"medsynth_version"})


def kept_cases(out_dir: PathLike, settings: Dict[str, Any], planned: Sequence[str],
               files: Dict[str, Dict[str, List[Any]]]) -> KeptCases:
    """The scored cases of the stopped report in ``out_dir``, refused unless this run is that run again: the same
    predictor and settings, a case list that begins with the kept cases in their order (the cases after them may
    change), and each kept case's files as they were scored (``files``: :func:`case_files` of every planned case)."""
    out = Path(out_dir)
    if not (out / "metrics.json").exists():
        raise UsageError(f"--resume goes on from a stopped evaluation, but {out} holds no report (metrics.json).",
                         "Leave out --resume, or pass the --out of the stopped evaluation.")
    report = read_report(out)
    if report is None:
        raise _unreadable(out, "metrics.json is not a JSON object")
    record = report.get(STOPPED)
    if record is None:
        raise OutputError(f"{out} holds a finished evaluation's report: there is nothing to resume.",
                          "Pass --overwrite to replace it, or choose another --out.", reason="output_exists")
    try:
        then, scored, stamps = dict(record["settings"]), list(record["cases_planned"]), dict(record["files"])
        rows = [dict(row) for row in report["cases"]]
        ids = [str(row["case"]) for row in rows]
        notes = {key: {str(case): list(values) for case, values in dict(report.get(key) or {}).items()}
                 for key in ("input_checks_failed", "resampled")}
        nonfinite = {str(case): {str(k): float(v) for k, v in dict(values).items()}
                     for case, values in dict(record.get("nonfinite") or {}).items()}
        written, replaced = plain_names(report.get("written")), plain_names(record.get("replaced"))
    except (KeyError, TypeError, ValueError) as exc:
        raise _unreadable(out, f"{type(exc).__name__}: {exc}") from exc
    changed = [f"{key}: {then.get(key)!r} then, {value!r} now" for key, value in settings.items()
               if then.get(key, value if key in LATER_SETTINGS else None) != value]
    if changed:
        raise UsageError(f"The stopped evaluation in {out} ran with other settings ({'; '.join(changed)}): one report "
                         "must score every case the same way.",
                         "Resume with the same predictor and options, or pass --overwrite to start again.",
                         reason="evaluation_changed")
    if ids != scored[:len(ids)]:
        raise _unreadable(out, "its rows are not the first cases it planned, in order")
    if ids != list(planned[:len(ids)]):  # the cases after them may change: a case that failed can be left out
        raise UsageError(f"The stopped evaluation in {out} scored {', '.join(ids)} first; the cases planned now begin "
                         f"with other cases ({', '.join(planned[:len(ids)])}).",
                         "Resume with a case list that begins with the cases it scored (the rest may change: leave "
                         "out a case that failed), or pass --overwrite.", reason="evaluation_changed")
    moved = [case for case in ids if stamps.get(case) != files.get(case)]
    if moved:
        raise UsageError(f"The files of {', '.join(moved)} are not those the stopped evaluation scored (another file, "
                         "a changed one, or a mask or segmentation added or taken away).",
                         "Resume with the same data, or pass --overwrite to score every case again.",
                         reason="evaluation_changed")
    for row in rows:
        row.update(nonfinite.get(row["case"], {}))
    kept = set(ids)
    return KeptCases(rows, *({case: v for case, v in notes[key].items() if case in kept}
                             for key in ("input_checks_failed", "resampled")), written, replaced)
