"""Security: no code path unpickles or runs a shell, and the Slicer module's background jobs pass user paths
as arguments, so spaces, quotes, ``$`` and non-ASCII characters in them are data, never syntax.

``test_model_file.py`` and ``test_checkpoint.py`` show malicious pickles are refused without running; the
static checks here keep anyone from adding a way around that, in the core and in the Slicer module alike.
"""

from __future__ import annotations

import ast
import time
from pathlib import Path
from typing import Iterator, List

import numpy as np
import torch

from _reliability import record

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("MedSynthLogic", "MedSynth")
# Modules whose only purpose is deserialising code-bearing data.
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}
# Calls that hand a string to a shell.
SHELL_CALLS = {("os", "system"), ("os", "popen"), ("subprocess", "getoutput"), ("subprocess", "getstatusoutput")}


def _python_files() -> Iterator[Path]:
    for folder in SOURCES:
        yield from sorted((REPO / folder).rglob("*.py"))


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _problems(src: Path, root: Path = REPO) -> List[str]:
    tree = ast.parse(src.read_text(encoding="utf-8"))
    where = src.relative_to(root)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"{where}:{node.lineno} imports {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.append(f"{where}:{node.lineno} imports from {node.module}")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            keywords = {k.arg: k.value for k in node.keywords}
            if tuple(name.rsplit(".", 1)) in SHELL_CALLS:
                found.append(f"{where}:{node.lineno} calls {name} (a shell string)")
            shell = keywords.get("shell")
            if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
                found.append(f"{where}:{node.lineno} passes shell={ast.unparse(shell)} to {name}")
            if name in ("eval", "exec"):
                found.append(f"{where}:{node.lineno} calls {name}")
            if name.endswith("torch.load"):
                ok = isinstance(keywords.get("weights_only"), ast.Constant) and keywords["weights_only"].value is True
                if not ok:
                    found.append(f"{where}:{node.lineno} calls torch.load without weights_only=True")
            if name.endswith(("numpy.load", "np.load")) and not (
                isinstance(keywords.get("allow_pickle"), ast.Constant) and keywords["allow_pickle"].value is False
            ):
                found.append(f"{where}:{node.lineno} calls {name} without allow_pickle=False")
    return found


def test_no_unpickling_shell_or_eval_in_core_and_slicer_module():
    files = list(_python_files())
    assert any(f.parent.name == "MedSynth" for f in files) and any(f.parent.name == "MedSynthLogic" for f in files)
    problems = [p for f in files for p in _problems(f)]
    assert not problems, "\n".join(problems)


def test_the_checker_sees_what_it_forbids(tmp_path):
    """The scanner flags each forbidden pattern (so a silent scanner cannot pass the test above)."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pickle\nimport os, subprocess, torch\nfrom marshal import loads\n"
        "os.system('ls ' + x)\nsubprocess.run(cmd, shell=True)\nsubprocess.Popen(c, shell=flag)\n"
        "torch.load(f)\ntorch.load(f, weights_only=False)\neval(s)\nimport numpy as np\nnp.load(p)\n",
        encoding="utf-8",
    )
    problems = _problems(bad, root=tmp_path)
    assert len(problems) == 9, problems


def test_slicer_job_runs_the_real_cli_on_awkward_paths(tmp_path):
    """The Slicer module's path: jobs.Job + python_command with folder and file names holding spaces, quotes,
    ``$HOME``, ``;`` and non-ASCII characters, end to end through `medsynth synthesize`."""
    from MedSynthLogic import jobs
    from MedSynthLogic.config import DiscriminatorConfig, GeneratorConfig, ModelConfig
    from MedSynthLogic.model_file import save_model
    from MedSynthLogic.models import build_generators
    from MedSynthLogic.phantom import make_phantom
    from MedSynthLogic.volume_io import read_volume, write_volume

    cfg = ModelConfig(generator=GeneratorConfig(filters=(4, 4, 4, 8, 8, 8, 4, 4, 1)),
                      discriminator=DiscriminatorConfig(channels=(4, 8, 8), last_conv=8, fully_connected=(16, 8)), stages=2)
    folder = tmp_path / "Patient données ü 日本" / "it's $HOME; rm -rf x"
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    model = save_model(folder / "modèle tiny.safetensors", build_generators(cfg).eval(), cfg)
    source = write_volume(make_phantom(shape=(24, 28, 24), seed=3).t1ce, folder / "T1ce `scan` ø.nii.gz")
    output = folder / "synthèse \"T2\" ü.nii.gz"
    job = jobs.Job(jobs.python_command(["synthesize", source, output, "--model", model, "--progress", "json"]),
                   env=jobs.child_environment()).start()
    events: List[dict] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (events and events[-1].get("event") == "exit"):
        events.extend(job.poll())
        time.sleep(0.02)
    assert job.state == jobs.FINISHED, job.stderr_tail()
    done = [e for e in events if e.get("event") == "done"]
    assert done and done[0]["output"] == str(output)
    out = read_volume(output)
    assert out.shape == read_volume(source).shape and np.isfinite(out.array).all()
    assert sorted(p.name for p in folder.iterdir()) == sorted([model.name, source.name, output.name])
    assert not (tmp_path / "x").exists()
    record("bad_input", case="spaces, quotes, $HOME, ; and non-ASCII in every path, via the Slicer job runner (valid)",
           id="slicer-job-awkward-paths", command="jobs.Job(python_command(['synthesize', …]))", exit_code=0,
           message="(synthesised, as it should be)", files_lost=0)
