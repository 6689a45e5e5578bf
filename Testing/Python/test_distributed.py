"""A real 2-process gloo run under torchrun: it finishes, rank 0 writes the model, both ranks end identical."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from MedSynthLogic import distributed as du

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_single_process_context_is_a_no_op(monkeypatch):
    import torch

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = du.init_distributed(torch.device("cpu"))
    assert not ctx.enabled and ctx.is_main
    assert du.any_rank(True, ctx) and not du.any_rank(False, ctx)
    du.barrier(ctx)
    du.cleanup(ctx)
    m = torch.nn.Linear(2, 2)
    assert du.wrap_ddp(m, ctx) is m and du.unwrap(m) is m


def test_batches_are_disjoint_shards_of_one_global_stream():
    from MedSynthLogic.batch_sources import IterationBatches

    single = IterationBatches(10, 4, 0, 0, 0, 5, du.DistContext(world_size=1))
    r0 = IterationBatches(10, 2, 0, 0, 0, 5, du.DistContext(rank=0, world_size=2))
    r1 = IterationBatches(10, 2, 0, 0, 0, 5, du.DistContext(rank=1, world_size=2))
    for it in range(5):
        assert r0.indices(it) + r1.indices(it) == single.indices(it)
    flat = [i for b in single for i in b]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))


@pytest.mark.slow
def test_torchrun_two_process_gloo(tmp_path):
    from MedSynthLogic.config import DiscriminatorConfig, GeneratorConfig, ModelConfig, to_dict
    from MedSynthLogic.model_file import load_model
    from test_training import make_phantom_data

    cfg = ModelConfig(
        generator=GeneratorConfig(filters=(4, 4, 4, 8, 8, 8, 4, 4, 1)),
        discriminator=DiscriminatorConfig(channels=(4, 8, 8), last_conv=8, fully_connected=(16, 8)),
        stages=2,
    )
    data = make_phantom_data(tmp_path / "phantom", cfg, n_cases=2, shape=(36, 40, 36), patches_per_case=16)
    (tmp_path / "model.json").write_text(json.dumps(to_dict(cfg)))
    digests = tmp_path / "digests"
    out = tmp_path / "ddp.safetensors"
    env = dict(os.environ, MEDSYNTH_RANK_DIGEST_DIR=str(digests), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
        "-m", "MedSynthLogic.training", "--data", str(data), "--out", str(out), "--model-config", str(tmp_path / "model.json"),
        "--device", "cpu", "--iterations", "3", "--batch-size", "2", "--val-every", "3", "--log-every", "1", "--checkpoint-every", "2",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert events[-1]["event"] == "done" and sum(e["event"] == "done" for e in events) == 1  # rank 0 only
    its = [e for e in events if e["event"] == "iteration"]
    assert len(its) == 6 and its[0]["patches_per_s"] > 0
    for stage in (0, 1):
        d0 = (digests / f"stage{stage}_rank0.txt").read_text()
        d1 = (digests / f"stage{stage}_rank1.txt").read_text()
        assert d0 == d1, f"ranks diverged in stage {stage}"
    model = load_model(out)
    assert len(model.chain.stages) == 2 and model.header["training"]["world_size"] == 2
    assert model.header["training"]["patches_seen"] == 2 * 3 * 2 * 2
