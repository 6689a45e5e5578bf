"""Figures of the reliability tests (inputs tried, faults injected, runs resumed, files lost).

The tests call :func:`record`; when ``MEDSYNTH_RELIABILITY_REPORT`` names a file, each call appends one JSON
line to it, otherwise nothing happens. Appending lines (not rewriting a JSON document) keeps the figures of
every test file without a conftest hook. ``python Testing/Python/_reliability.py REPORT.jsonl`` prints the
Markdown of Testing/Reliability.md from such a file, so the published figures are the measured ones.
"""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List

ENV = "MEDSYNTH_RELIABILITY_REPORT"


def record(kind: str, **fields: Any) -> None:
    """Append ``{"kind": kind, **fields}`` to the report file, if one was asked for."""
    target = os.environ.get(ENV)
    if not target:
        return
    with open(target, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"kind": kind, **fields}, ensure_ascii=False, default=str) + "\n")


def _load(path: Path) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(path: Path) -> str:
    """The Markdown report: the bad-input table, the fuzzing counts and the fault-injection figures."""
    rows = _load(path)
    cases = [r for r in rows if r["kind"] == "bad_input"]
    fuzz = [r for r in rows if r["kind"] == "fuzz"]
    faults = [r for r in rows if r["kind"] == "fault"]
    lost = sum(int(r.get("files_lost", 0)) for r in rows)
    out = ["| input | command | exit code | message (start) |", "|---|---|---|---|"]
    for r in cases:
        out.append(f"| {_cell(r['case'])} | `{_cell(r['command'])}` | {r['exit_code']} | {_cell(r['message'])} |")
    table = "\n".join(out)
    fuzz_by: Dict[str, int] = defaultdict(int)
    for r in fuzz:
        fuzz_by[r["target"]] += int(r["examples"])
    fuzz_lines = "\n".join(f"| {_cell(t)} | {n} |" for t, n in sorted(fuzz_by.items()))
    by_fault: Dict[str, Dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in faults:
        for key in ("injected", "resumed", "files_lost"):
            by_fault[r["fault"]][key] += int(r.get(key, 0))
    fault_lines = "\n".join(
        f"| {_cell(f)} | {v['injected']} | {v['resumed']} | {v['files_lost']} |" for f, v in sorted(by_fault.items())
    )
    totals = {
        "inputs": len(cases) + sum(fuzz_by.values()),
        "faults": sum(v["injected"] for v in by_fault.values()),
        "resumed": sum(v["resumed"] for v in by_fault.values()),
    }
    return f"""## Measured figures

| inputs tried | faults injected | runs resumed | files lost |
|---|---|---|---|
| {totals['inputs']} ({len(cases)} hand-made: {sum(1 for r in cases if r['exit_code'])} bad, {sum(1 for r in cases if not r['exit_code'])} valid controls; + {sum(fuzz_by.values())} fuzzed files) | {totals['faults']} | {totals['resumed']} | {lost} |

### Bad inputs (each a real `python -m MedSynthLogic.cli` process unless marked in-process)

{table}

### Fuzzing (hypothesis): examples per reader, every one ending in the reader's own error type

| reader | examples |
|---|---|
{fuzz_lines}

### Faults injected

| fault | injected | runs resumed | files lost |
|---|---|---|---|
{fault_lines}
"""


if __name__ == "__main__":
    sys.stdout.write(render(Path(sys.argv[1])))
