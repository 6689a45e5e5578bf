"""A stopped evaluation's report, and going on from it.

An evaluation of many cases can take hours. When it stops (Cancel, SIGTERM, ``--stop-file``, a case that fails),
``medsynth evaluate`` writes the report of the cases it has scored, marked ``stopped``, instead of losing them;
``--resume`` then scores only the cases left, with the same predictor and settings, and writes the report an
uninterrupted run would have written. What must match is recorded in the stopped report itself.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Union

from .errors import OutputError, UsageError

PathLike = Union[str, "os.PathLike[str]"]

#: The report key that marks a stopped evaluation (its value: :func:`stopped_record`).
STOPPED = "stopped"


class KeptCases(NamedTuple):
    """What a stopped report hands on to the run that resumes it: its rows, in the order they were scored, and the
    per-case records and files that belong to them."""

    rows: List[Dict[str, Any]]
    refused: Dict[str, List[str]]
    resampled: Dict[str, List[str]]
    written: List[str]


def file_sha256(path: PathLike) -> str:
    """The SHA-256 of a file's bytes: what identifies a lookup (a model file carries its own ``tensors_sha256``)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def stopped_record(settings: Dict[str, Any], planned: Sequence[str], scored: int, reason: str) -> Dict[str, Any]:
    """The ``stopped`` entry of a report: how far it got, why it stopped, and what a resumed run must repeat."""
    return {"after": scored, "of": len(planned), "reason": reason, "cases_planned": list(planned),
            "settings": settings}


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


def is_stopped(out_dir: PathLike) -> bool:
    """True where ``out_dir`` holds a stopped evaluation's report (what ``--resume`` goes on from)."""
    report = read_report(out_dir)
    return report is not None and isinstance(report.get(STOPPED), dict)


def kept_cases(out_dir: PathLike, settings: Dict[str, Any], planned: Sequence[str],
               files: Dict[str, Dict[str, str]]) -> KeptCases:
    """The scored cases of the stopped report in ``out_dir``, refused unless this run is that run again: the same
    predictor and settings, the same cases in the same order, and the same files for each kept case."""
    out = Path(out_dir)
    report = read_report(out)
    if report is None:
        raise UsageError(f"--resume goes on from a stopped evaluation, but {out} holds no report (metrics.json).",
                         "Leave out --resume, or pass the --out of the stopped evaluation.")
    record = report.get(STOPPED)
    if not isinstance(record, dict):
        raise OutputError(f"{out} holds a finished evaluation's report: there is nothing to resume.",
                          "Pass --overwrite to replace it, or choose another --out.", reason="output_exists")
    changed = [f"{key}: {record.get('settings', {}).get(key)!r} then, {value!r} now"
               for key, value in settings.items() if record.get("settings", {}).get(key) != value]
    if changed:
        raise UsageError(f"The stopped evaluation in {out} ran with other settings ({'; '.join(changed)}): one report "
                         "must score every case the same way.",
                         "Resume with the same predictor and options, or pass --overwrite to start again.", reason="evaluation_changed")
    if list(record.get("cases_planned") or []) != list(planned):
        raise UsageError(f"The stopped evaluation in {out} planned other cases ({len(record.get('cases_planned') or [])}"
                         f" then, {len(planned)} now).",
                         "Resume with the same case list (--cases, --manifest or data folder), or pass --overwrite.", reason="evaluation_changed")
    rows = [row for row in report.get("cases") or [] if isinstance(row, dict)]
    ids = [row.get("case") for row in rows]
    if ids != list(planned[:len(ids)]):
        raise UsageError(f"The report in {out} does not hold the first cases it planned, in order.",
                         "Pass --overwrite to start the evaluation again.", reason="evaluation_changed")
    moved = [case for case in ids if (report.get("files") or {}).get(case) != files.get(case)]
    if moved:
        raise UsageError(f"The files of {', '.join(moved)} are not those the stopped evaluation scored.",
                         "Resume with the same data, or pass --overwrite to score every case again.", reason="evaluation_changed")
    kept = set(ids)

    def of_kept(key: str) -> Dict[str, List[str]]:
        return {case: notes for case, notes in (report.get(key) or {}).items() if case in kept}

    written = [name for name in report.get("written") or [] if isinstance(name, str)]
    return KeptCases(rows, of_kept("input_checks_failed"), of_kept("resampled"), written)
