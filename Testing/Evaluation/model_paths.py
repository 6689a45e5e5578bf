"""Which file each committed evaluation report scored, today: docs/evaluation/MODEL_PATHS.md.

A report's ``metrics.json`` records the model (or lookup) path as it was when it was scored. Many of those were a
run's scratch files, never committed; others were committed files that a later session replaced under the same name
(the default model, the candidate), so the path now names another model. Reports written since session 41 record
the tensors' SHA-256 (``model_sha256``); for the older ones this script reads the git history: the file at that path
in the commit that last wrote the report, identified by its tensors' SHA-256 (a model file) or its git blob (a lookup), and
where that same file is today, if anywhere.

Run from the repository root (needs its git history):
    python Testing/Evaluation/model_paths.py > docs/evaluation/MODEL_PATHS.md
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from safetensors.torch import load  # noqa: E402

from MedSynthLogic.error_map import TENSOR_PREFIX  # noqa: E402
from MedSynthLogic.errors import MedSynthError  # noqa: E402
from MedSynthLogic.model_file import tensors_sha256  # noqa: E402
from MedSynthLogic.model_header import read_header  # noqa: E402

#: How a report's scored file stands today (the words of the table's third column start with these).
TODAY_SAME = "the same file today"
TODAY_MOVED = "now at"
TODAY_HISTORY = "replaced since; in git history"
TODAY_NOT_KEPT = "not kept"


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout


def recorded_path(report: Dict) -> Optional[str]:
    """The path the report names (model or lookup), relative to the repository where it was inside it."""
    path = report.get("model") or report.get("lookup")
    if not isinstance(path, str):
        return None
    for prefix in (str(REPO) + "/", "/work/main/"):
        if path.startswith(prefix):
            return path[len(prefix):]
    return path


def identity(commit: str, path: str) -> Optional[str]:
    """A model file's tensors SHA-256 (its header's), or another file's git blob id, at ``commit``."""
    try:
        blob = git("rev-parse", f"{commit}:{path}").strip()
    except subprocess.CalledProcessError:
        return None
    if not path.endswith(".safetensors"):
        return "blob " + blob
    data = subprocess.run(["git", "cat-file", "blob", blob], cwd=REPO, capture_output=True, check=True).stdout
    tensors = {name: value for name, value in load(data).items() if not name.startswith(TENSOR_PREFIX)}  # fitted later
    return "tensors " + tensors_sha256(tensors)


def files_today() -> Dict[str, str]:
    """identity → path of every model and lookup file committed at HEAD."""
    today = {}
    for path in git("ls-files", "*.safetensors", "docs/evaluation/*.json").split():
        if path.endswith("metrics.json"):
            continue
        key = identity("HEAD", path)
        if key is not None:
            today.setdefault(key, path)
    return today


@functools.lru_cache(maxsize=None)
def files_in_history() -> Dict[str, Tuple[str, str]]:
    """identity → (commit, path) of every earlier version of the model files committed at HEAD, the newest first
    (a default replaced under its name is still in the history)."""
    found: Dict[str, Tuple[str, str]] = {}
    for commit, path in model_versions():
        key = identity(commit, path)
        if key is not None:
            found.setdefault(key, (commit, path))
    return found


def model_versions() -> List[Tuple[str, str]]:
    """(commit, path) of every version of the model files committed at HEAD, each path's newest first."""
    return [(commit, path) for path in git("ls-files", "*.safetensors").split()
            for commit in git("log", "--format=%H", "--", path).split()]


def header_figure(commit: str, path: str) -> Optional[float]:
    """The mean validation PSNR a model file's header cites (its ``metrics.evaluation``), at ``commit``."""
    data = subprocess.run(["git", "cat-file", "blob", f"{commit}:{path}"], cwd=REPO, capture_output=True, check=True).stdout
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / Path(path).name
        copy.write_bytes(data)
        try:
            evaluation = (read_header(copy).get("metrics") or {}).get("evaluation") or {}
        except MedSynthError:  # a file of an older format
            return None
    mean = ((evaluation.get("summary") or {}).get("psnr") or {}).get("mean")
    return None if mean is None else float(mean)


def cited_figures() -> Dict[float, Tuple[str, str]]:
    """A committed model file's header figures (mean validation PSNR) → (commit, path) where it cites them, HEAD
    first, then the earlier versions of the same paths (a default replaced under its name): the report they came
    from scored it."""
    cited: Dict[float, Tuple[str, str]] = {}
    paths = git("ls-files", "*.safetensors").split()
    for path in paths:
        mean = header_figure("HEAD", path)
        if mean is not None:
            cited[mean] = ("HEAD", path)
    for commit, path in model_versions():
        mean = header_figure(commit, path)
        if mean is not None:
            cited.setdefault(mean, (commit, path))
    return cited


def status(report_file: Path, today: Dict[str, str], cited: Dict[float, Tuple[str, str]]) -> Tuple[str, str]:
    """(the recorded path, how it stands today) for one report."""
    report = json.loads(report_file.read_text(encoding="utf-8"))
    path = recorded_path(report)
    mean = ((report.get("summary") or {}).get("psnr") or {}).get("mean")
    if path is None:
        return "—", "no model path recorded"
    if report.get("model_sha256"):
        key = "tensors " + str(report["model_sha256"])
        if key in today:
            return path, f"{TODAY_MOVED} `{today[key]}` (SHA-256 recorded)"
        earlier = files_in_history().get(key)
        if earlier is not None:
            return path, f"{TODAY_HISTORY}: `git show {earlier[0][:10]}:{earlier[1]}` (SHA-256 recorded)"
        return path, f"{TODAY_NOT_KEPT} (SHA-256 recorded)"
    written = git("log", "-1", "--format=%H", "--", str(report_file.relative_to(REPO))).split()
    key = identity(written[0], path) if written and not Path(path).is_absolute() else None
    if key is None and mean is not None and float(mean) in cited:
        commit, where = cited[float(mean)]
        if commit == "HEAD":
            return path, f"{TODAY_MOVED} `{where}`, whose header cites these figures"
        return path, f"{TODAY_HISTORY}: `git show {commit[:10]}:{where}`, whose header cited these figures"
    if key is None:
        return path, f"{TODAY_NOT_KEPT} (a run's scratch file, never committed)"
    if identity("HEAD", path) == key:
        return path, TODAY_SAME
    if key in today:
        return path, f"{TODAY_MOVED} `{today[key]}`"
    return path, f"{TODAY_HISTORY}: `git show {written[0][:10]}:{path}`"


def main() -> None:
    today, cited = files_today(), cited_figures()
    rows: List[str] = []
    for report_file in sorted((REPO / "docs" / "evaluation").rglob("metrics.json")):
        path, now = status(report_file, today, cited)
        rows.append(f"| `{report_file.parent.relative_to(REPO / 'docs' / 'evaluation')}` | `{path}` | {now} |")
    print("# What each evaluation report scored, today\n")
    print("Generated by `python Testing/Evaluation/model_paths.py > docs/evaluation/MODEL_PATHS.md` from the git")
    print("history. A report's `metrics.json` names the file as it was when it was scored; many were a run's scratch")
    print("files, and the default model and the candidate were replaced under the same names, so a path can name")
    print("another model today. The file a report scored is identified in the commit that last wrote the report (a model")
    print("file by the SHA-256 of its synthesis tensors, without an error map fitted later; a lookup by its content),")
    print("or, for a scratch file, by a committed model's header citing the report's figures (today's or an earlier")
    print("version's); reports written since")
    print("session 41 record the SHA-256 themselves (`model_sha256`). A report's figures stay what was measured; only")
    print("the file's whereabouts changed.\n")
    print("| report folder | path recorded | that file today |")
    print("|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
