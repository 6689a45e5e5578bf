"""The shell helpers the training scripts share (``Testing/Training/run_common.sh``): how a resumed slice is sized
and when a run resumes.

A wrong count there would train an ablation past the iteration it is compared at, which no Python test would see.
"""
import shutil
import subprocess
from pathlib import Path

import pytest

COMMON = Path(__file__).resolve().parents[1] / "Training" / "run_common.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not on this machine")


def _train_stage1_to(run_dir: Path, at: int, *checkpoints: str) -> str:
    """The command line ``train_stage1_to`` runs (MEDSYNTH=echo), with these checkpoint files in ``run_dir``."""
    run_dir.mkdir(exist_ok=True)
    for name in checkpoints:
        (run_dir / name).touch()
    script = f'set -euo pipefail; HERE=x; . "{COMMON}"; MEDSYNTH=echo; train_stage1_to "{run_dir}" {at} --data d'
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_a_new_run_trains_all_iterations_without_resume(tmp_path: Path) -> None:
    assert _train_stage1_to(tmp_path / "run", 963) == f"train --data d --run-dir {tmp_path / 'run'} --stop-after 963"


def test_a_resumed_run_trains_only_what_is_left_of_stage_1(tmp_path: Path) -> None:
    line = _train_stage1_to(tmp_path / "run", 963, "ckpt_s00_it000000250.pt", "ckpt_s00_it000000500.pt",
                            "ckpt_s01_it000000900.pt")
    assert line == f"train --data d --run-dir {tmp_path / 'run'} --stop-after 463 --resume"


def test_a_run_at_its_iteration_trains_nothing(tmp_path: Path) -> None:
    assert _train_stage1_to(tmp_path / "run", 963, "ckpt_s00_it000000963.pt") == ""


@pytest.mark.parametrize("checkpoints, want", [((), ""), (("ckpt_s02_it000000050.pt",), "--resume"),
                                               (("notes.txt",), "")])
def test_a_run_resumes_only_when_its_folder_holds_a_checkpoint(tmp_path: Path, checkpoints: tuple, want: str) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in checkpoints:
        (run_dir / name).touch()
    script = f'set -euo pipefail; HERE=x; . "{COMMON}"; resume=($(resume_flag "{run_dir}")); echo "${{resume[@]:-}}"'
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == want
