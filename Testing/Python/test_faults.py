"""Faults: training killed (SIGTERM, SIGKILL) and resumed, synthesis cancelled, disk full, GPU out of memory.

The property behind every test: a fault never loses finished work and never leaves a half-written file. After
each kill every checkpoint in the run folder loads and ``--resume`` finishes the run; a cancelled synthesis
leaves nothing; a full disk gives exit code 7 with the earlier files byte-identical. The kills use real
processes and signals; their moments are seeded random delays after a checkpoint event, so the test does
not depend on timing to find something to check.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pytest
import torch

from _reliability import record
from MedSynthLogic import checkpoint as ckpt
from MedSynthLogic.errors import OutputError, ResourceError

REPO = Path(__file__).resolve().parents[2]
#: Iterations per stage: ~25 ms each for the tiny model, so a run lasts seconds and a kill lands inside it.
ITERATIONS = 120
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _tiny_config():
    """The conftest ``tiny_model_config``, as a plain function for module-scoped setup."""
    from MedSynthLogic.config import DiscriminatorConfig, GeneratorConfig, ModelConfig

    gen = GeneratorConfig(filters=(4, 4, 4, 8, 8, 8, 4, 4, 1))
    disc = DiscriminatorConfig(channels=(4, 8, 8), last_conv=8, fully_connected=(16, 8))
    return ModelConfig(generator=gen, discriminator=disc, stages=2)


def _snapshot(folder: Path) -> Dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


class Child:
    """A CLI process whose JSON-lines stdout is read line by line (the events say when a checkpoint exists)."""

    def __init__(self, argv: List[str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "MedSynthLogic.cli", *argv], cwd=REPO, env=CHILD_ENV,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.events: List[dict] = []

    def wait_for(self, predicate, timeout: float = 120.0) -> Optional[dict]:
        """Read events until one satisfies ``predicate`` (returned) or the process ends (None)."""
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                return None
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            self.events.append(event)
            if predicate(event):
                return event
        raise AssertionError(f"no matching event within {timeout} s; events so far: {self.events[-5:]}")

    def finish(self, timeout: float = 180.0) -> tuple:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err


# ------------------------------------------------------------------------------------------ training kills


@pytest.fixture(scope="module")
def train_data(tmp_path_factory) -> Dict[str, Path]:
    from test_training import make_phantom_data

    from MedSynthLogic.config import to_dict

    root = tmp_path_factory.mktemp("fault data")
    cfg = _tiny_config()
    data = make_phantom_data(root, cfg, n_cases=2, shape=(32, 36, 32), patches_per_case=16)
    config = root / "model_config.json"
    config.write_text(json.dumps(to_dict(cfg)), encoding="utf-8")
    return {"data": data, "config": config}


def _train_argv(train_data: Dict[str, Path], out: Path, resume: bool) -> List[str]:
    argv = ["train", "--data", str(train_data["data"]), "--out", str(out), "--model-config", str(train_data["config"]),
            "--iterations", str(ITERATIONS), "--batch-size", "2", "--checkpoint-every", "2", "--val-every", "0", "--log-every", "1",
            "--device", "cpu", "--precision", "fp32", "--progress", "json", "--keep-checkpoints", "3"]
    return argv + (["--resume"] if resume else [])


def _check_run_folder(run: Path) -> List[tuple]:
    """Every checkpoint loads (none half-written); temporary files are never taken for checkpoints."""
    found = ckpt.list_checkpoints(run)
    for p in found:
        state = ckpt.load_checkpoint(p)  # raises ModelFileError for a half-written or damaged file
        assert (int(state["stage"]), int(state["iteration"])) == tuple(
            int(v) for v in (ckpt.read_checkpoint_header(p)["stage"], ckpt.read_checkpoint_header(p)["iteration"]))
    leftovers = [p.name for p in run.iterdir() if ".tmp" in p.name]
    assert not any(p.name in leftovers for p in found)
    if found:
        assert ckpt.latest_checkpoint(run) == found[-1]
    return [(int(ckpt.read_checkpoint_header(p)["stage"]), int(ckpt.read_checkpoint_header(p)["iteration"])) for p in found]


def test_training_killed_at_random_points_always_resumes(tmp_path, train_data):
    """Four kills (SIGTERM and SIGKILL alternating, seeded random moments), each run resumed, then finished."""
    from MedSynthLogic.model_file import load_model

    rng = random.Random(20240611)
    out = tmp_path / "run with spaces" / "model.safetensors"
    out.parent.mkdir()
    run = out.parent / "model_run"
    kills = [signal.SIGTERM, signal.SIGKILL, signal.SIGTERM, signal.SIGKILL]
    progress: List[tuple] = []
    resumed = 0
    for n, sig in enumerate(kills):
        before = progress[-1] if progress else (-1, -1)
        child = Child(_train_argv(train_data, out, resume=n > 0))
        resumed += n > 0

        def newer_checkpoint(event: dict) -> bool:
            return event.get("event") == "checkpoint" and (event["stage"], event["iteration"]) > before

        first = child.wait_for(newer_checkpoint)
        assert first is not None, child.finish()
        time.sleep(rng.uniform(0.0, 1.5))
        child.proc.send_signal(sig)
        code, _, err = child.finish()
        assert "Traceback" not in err, err
        if sig == signal.SIGTERM:
            # SIGTERM: the run writes a checkpoint at the iteration it stopped and exits "cancelled";
            # a run that happened to finish first exits 0.
            assert code in (130, 0), (code, err)
        else:
            assert code == -signal.SIGKILL, (code, err)
        states = _check_run_folder(run)
        assert states and states[-1] >= (first["stage"], first["iteration"])
        progress.append(states[-1])
        record("fault", fault=f"training killed with {signal.Signals(sig).name}", injected=1, resumed=int(n > 0),
               files_lost=0)
        if code == 0 or states[-1] == (1, ITERATIONS):
            break
    code, _, err = Child(_train_argv(train_data, out, resume=True)).finish()
    resumed += 1
    assert code == 0, err
    model = load_model(out)
    assert model.stages == 2
    assert progress == sorted(progress) and len(set(progress)) == len(progress)  # every resumed run moved on
    assert _check_run_folder(run)[-1] == (1, ITERATIONS)
    record("fault", fault="training run resumed to the end after the kills", injected=0, resumed=1, files_lost=0)
    assert resumed == len(progress)  # every kill was followed by a resumed run (the last one to the end)


def test_a_stop_file_stops_training_as_sigterm_does(tmp_path, train_data):
    """On Windows the panel's Stop cannot signal its child (CTRL_BREAK reaches only processes on the caller's
    console): the child was killed after 30 s without its stop checkpoint. With --stop-file the file's appearance
    stops it exactly as SIGTERM does: a checkpoint at the iteration reached, exit 130, and --resume goes on."""
    stop = tmp_path / "STOP"
    out = tmp_path / "model.safetensors"
    child = Child(_train_argv(train_data, out, resume=False) + ["--stop-file", str(stop)])
    event = child.wait_for(lambda e: e.get("event") == "iteration" and e.get("iteration", 0) >= 3)
    assert event is not None, child.finish()
    stop.touch()
    code, _, err = child.finish(timeout=120)
    assert code == 130 and "Traceback" not in err, (code, err)
    assert "--resume" in err and not out.exists()
    stopped_at = _check_run_folder(tmp_path / "model_run")[-1]
    assert stopped_at[1] >= 3 and stopped_at[1] < ITERATIONS, stopped_at
    stop.unlink()
    code, _, err = Child(_train_argv(train_data, out, resume=True)).finish(timeout=300)
    assert code == 0 and out.is_file(), err
    record("fault", fault="training stopped by its --stop-file", injected=1, resumed=1, files_lost=0)


def test_kill_during_checkpoint_write_leaves_previous_checkpoint(tmp_path):
    """SIGKILL in the middle of writing a checkpoint (half the bytes on disk): the file never appears under its
    name, the previous checkpoint is still the newest complete one, and the temporary file is ignored."""
    state = {"stage": 0, "iteration": 2, "w": torch.arange(50000, dtype=torch.float32)}
    first = ckpt.save_checkpoint(tmp_path / ckpt.checkpoint_name(0, 2), state)
    before = first.read_bytes()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        import builtins

        real_open = builtins.open

        class HalfThenDie:
            def __init__(self, fh) -> None:
                self.fh = fh

            def __enter__(self):
                return self

            def __exit__(self, *exc) -> None:
                self.fh.close()

            def write(self, data: bytes) -> int:
                self.fh.write(data[: len(data) // 2])
                self.fh.flush()
                os.kill(os.getpid(), signal.SIGKILL)
                return 0

            def __getattr__(self, name):
                return getattr(self.fh, name)

        def dying_open(path, mode="r", *args, **kwargs):
            fh = real_open(path, mode, *args, **kwargs)
            return HalfThenDie(fh) if "w" in mode and ".tmp" in str(path) else fh

        builtins.open = dying_open
        ckpt.save_checkpoint(tmp_path / ckpt.checkpoint_name(0, 4), {**state, "iteration": 4})
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == [first.name]
    assert ckpt.latest_checkpoint(tmp_path) == first and first.read_bytes() == before
    assert ckpt.load_checkpoint(first)["iteration"] == 2
    assert any(".tmp" in p.name for p in tmp_path.iterdir())  # the torso is there, and is not a checkpoint
    record("fault", fault="SIGKILL half-way through writing a checkpoint", injected=1, resumed=0, files_lost=0)


# ------------------------------------------------------------------------------------------ cancel synthesis


def test_synthesis_cancelled_mid_volume_stops_promptly_and_leaves_nothing(tmp_path):
    from MedSynthLogic.model_file import save_model
    from MedSynthLogic.models import build_generators
    from MedSynthLogic.phantom import make_phantom
    from MedSynthLogic.volume_io import write_volume

    cfg = _tiny_config()
    torch.manual_seed(0)
    save_model(tmp_path / "model.safetensors", build_generators(cfg).eval(), cfg)
    write_volume(make_phantom(shape=(96, 112, 96), seed=1).t1ce, tmp_path / "t1ce.nii.gz")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    child = Child(["synthesize", str(tmp_path / "t1ce.nii.gz"), str(out_dir / "t2.nii.gz"), "--model",
                   str(tmp_path / "model.safetensors"), "--device", "cpu", "--tile", "16", "--progress", "json"])
    event = child.wait_for(lambda e: e.get("event") == "progress" and e.get("done", 0) > 0)
    assert event is not None and event["fraction"] < 0.9, (event, child.finish())
    t0 = time.monotonic()
    child.proc.send_signal(signal.SIGTERM)
    code, out, err = child.finish(timeout=30)
    elapsed = time.monotonic() - t0
    assert code == 130, (code, err)
    assert elapsed < 10, elapsed
    assert "Traceback" not in err and "cancelled" in err.lower()
    assert list(out_dir.iterdir()) == []
    assert json.loads(out.strip().splitlines()[-1])["event"] == "error"
    record("fault", fault="synthesis cancelled (SIGTERM) mid-volume", injected=1, resumed=0, files_lost=0)


def test_prepare_cancelled_mid_way_leaves_no_hidden_temporary_files(tmp_path):
    """SIGTERM (the panel's Cancel) ended ``prepare`` without unwinding: its half-written train.h5 and val.h5 stayed in
    the output folder as hidden temporary files (gigabytes on real data), one pair more at every retry."""
    from MedSynthLogic.phantom import make_phantom
    from MedSynthLogic.volume_io import write_volume

    for seed in range(6):
        case = tmp_path / "cases" / f"case_{seed}"
        case.mkdir(parents=True)
        phantom = make_phantom(shape=(64, 72, 64), seed=seed)
        write_volume(phantom.t1ce, case / f"case_{seed}_t1ce.nii.gz")
        write_volume(phantom.t2, case / f"case_{seed}_t2.nii.gz")
    out = tmp_path / "data"
    child = Child(["prepare", str(tmp_path / "cases"), str(out), "--patches-per-case", "300", "--val-fraction", "0.2",
                   "--progress", "json"])
    event = child.wait_for(lambda e: e.get("event") == "progress" and e.get("done", 0) >= 1)
    assert event is not None and event["done"] < event["total"], (event, child.finish())
    child.proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    child.proc.send_signal(signal.SIGTERM)  # a second one (an impatient user, a scheduler) must not cut the clean-up
    code, _, err = child.finish(timeout=60)
    assert code == 130, (code, err)
    assert "Traceback" not in err
    assert (sorted(p.name for p in out.iterdir()) if out.exists() else []) == []
    record("fault", fault="prepare cancelled (SIGTERM) mid-way", injected=1, resumed=0, files_lost=0)


# ---------------------------------------------------------------------------------------------- disk full


@pytest.fixture()
def small_disk(tmp_path):
    """A 256 KiB tmpfs, so writes really fail with ENOSPC; skipped where mounting is not permitted."""
    mount = tmp_path / "small disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.decode(errors='replace').strip() or done.returncode}); "
                    "the simulated ENOSPC test covers the same paths")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def _noise_volume(shape=(64, 64, 64)):
    from MedSynthLogic.volume_io import Volume

    return Volume(np.random.default_rng(0).random(shape, dtype=np.float32) * 1000)


def _write_each_kind(folder: Path, big: bool) -> Dict[str, object]:
    """Try a volume, a model and a checkpoint; return what each raised (or None)."""
    from MedSynthLogic.model_file import save_model
    from MedSynthLogic.models import build_generators
    from MedSynthLogic.volume_io import write_volume

    cfg = _tiny_config()
    outcome: Dict[str, object] = {}
    attempts = {
        "volume": lambda: write_volume(_noise_volume((64, 64, 64) if big else (8, 8, 8)), folder / "new.nii.gz"),
        "model": lambda: save_model(folder / "new.safetensors", build_generators(cfg), cfg,
                                    training={"padding": "x" * (400_000 if big else 10)}),
        "checkpoint": lambda: ckpt.save_checkpoint(folder / ckpt.checkpoint_name(0, 9),
                                                   {"w": torch.rand(100_000 if big else 10)}),
    }
    for name, attempt in attempts.items():
        try:
            attempt()
            outcome[name] = None
        except Exception as exc:  # collected and asserted on by the caller
            outcome[name] = exc
    return outcome


def _assert_disk_full_handled(folder: Path, keep: Dict[str, str], outcome: Dict[str, object]) -> None:
    for name, exc in outcome.items():
        assert isinstance(exc, OutputError), (name, repr(exc))
        assert "No space" in str(exc) and exc.exit_code == 7, (name, str(exc))
    assert _snapshot(folder) == keep  # earlier files byte-identical, nothing new, no temporary files


def test_disk_full_on_a_real_small_filesystem(small_disk):
    from MedSynthLogic.volume_io import write_volume

    write_volume(_noise_volume((16, 16, 16)), small_disk / "previous.nii.gz")
    ckpt.save_checkpoint(small_disk / ckpt.checkpoint_name(0, 2), {"w": torch.zeros(10)})
    keep = _snapshot(small_disk)
    outcome = _write_each_kind(small_disk, big=True)
    _assert_disk_full_handled(small_disk, keep, outcome)
    assert ckpt.latest_checkpoint(small_disk).name == ckpt.checkpoint_name(0, 2)
    record("fault", fault="disk full (256 KiB tmpfs): volume, model, checkpoint", injected=len(outcome), resumed=0,
           files_lost=0)


def test_disk_full_through_the_cli(small_disk, tmp_path):
    from MedSynthLogic.model_file import save_model
    from MedSynthLogic.models import build_generators
    from MedSynthLogic.volume_io import Volume, write_volume

    cfg = _tiny_config()
    torch.manual_seed(0)
    save_model(tmp_path / "model.safetensors", build_generators(cfg).eval(), cfg)
    src = np.random.default_rng(1).random((64, 64, 64), dtype=np.float32) * 1000 + 1  # noise: compresses badly
    write_volume(Volume(src), tmp_path / "t1ce.nii.gz")
    (small_disk / "previous result.txt").write_text("keep me", encoding="utf-8")
    keep = _snapshot(small_disk)
    done = subprocess.run([sys.executable, "-m", "MedSynthLogic.cli", "synthesize", str(tmp_path / "t1ce.nii.gz"),
                           str(small_disk / "t2.nii.gz"), "--model", str(tmp_path / "model.safetensors"), "--device", "cpu",
                           "--force"],  # noise is no skull-stripped brain: the input checks would refuse it first
                          cwd=REPO, env=CHILD_ENV, capture_output=True, text=True, timeout=180)
    assert done.returncode == 7, done.stderr
    assert "No space" in done.stderr and "Traceback" not in done.stderr
    assert _snapshot(small_disk) == keep
    record("fault", fault="disk full during `medsynth synthesize`", injected=1, resumed=0, files_lost=0)


def test_disk_full_simulated(tmp_path, monkeypatch):
    """ENOSPC from the kernel at fsync (where network and full disks report it): same outcome on any machine."""
    from MedSynthLogic.volume_io import write_volume

    write_volume(_noise_volume((16, 16, 16)), tmp_path / "previous.nii.gz")
    keep = _snapshot(tmp_path)

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    outcome = _write_each_kind(tmp_path, big=False)
    monkeypatch.undo()
    _assert_disk_full_handled(tmp_path, keep, outcome)
    record("fault", fault="disk full simulated (ENOSPC at fsync): volume, model, checkpoint", injected=len(outcome),
           resumed=0, files_lost=0)


# ------------------------------------------------------------------------------------------- GPU memory


def _reference_and_chain(seed: int = 0):
    from MedSynthLogic.inference import synthesize_array
    from MedSynthLogic.models import build_generators

    torch.manual_seed(seed)
    chain = build_generators(_tiny_config()).eval()
    source = np.random.default_rng(seed).random((30, 34, 28), dtype=np.float32)
    return chain, source, synthesize_array(chain, source, None, stages=2, device="cpu", tile=64)


def test_gpu_out_of_memory_with_auto_falls_back_to_cpu_with_a_warning(monkeypatch):
    """With --device auto, a GPU that is out of memory even at the smallest tile gives way to the CPU (with a
    warning event saying so); asked for explicitly, it is a ResourceError. The "GPU" is a meta-device stand-in
    whose tiles always raise torch.cuda.OutOfMemoryError; tile halving itself is tested in test_inference."""
    from MedSynthLogic import tiled_synthesis
    from MedSynthLogic.inference import synthesize_array

    chain, source, reference = _reference_and_chain()
    gpu = torch.device("meta")
    monkeypatch.setattr(tiled_synthesis, "resolve_device", lambda d: torch.device("cpu") if d == "cpu" else gpu)
    original = tiled_synthesis._StageRunner.__call__
    tried: List[tuple] = []

    def oom_on_gpu(self, batch, flip):
        if self.device.type != "cpu":
            tried.append(batch.shape[2] - 2 * self.halo)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(self, batch, flip)

    monkeypatch.setattr(tiled_synthesis._StageRunner, "__call__", oom_on_gpu)
    monkeypatch.setattr(tiled_synthesis, "MIN_TILE", 4)
    events: List[dict] = []
    out = synthesize_array(chain, source, None, stages=2, device="auto", tile=32, progress=events.append)
    np.testing.assert_allclose(out, reference, atol=1e-5)
    assert tried and tried == sorted(tried, reverse=True) and min(tried) < 8  # halved before giving up
    warnings = [e for e in events if e["event"] == "warning"]
    assert len(warnings) == 1 and "Falling back to the CPU" in warnings[0]["message"]
    fractions = [e["fraction"] for e in events if e["event"] == "progress"]
    assert fractions == sorted(fractions)
    with pytest.raises(ResourceError, match="out of memory") as info:
        synthesize_array(chain, source, None, stages=2, device="cuda", tile=32)
    assert info.value.exit_code == 8 and info.value.reason == "out_of_memory"
    record("fault", fault="GPU out of memory at every tile size (simulated)", injected=2, resumed=0, files_lost=0)
