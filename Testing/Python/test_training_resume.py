"""Where a training run starts (``training.resume.decide_start``), each rule without a training run."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from MedSynthLogic.config import ModelConfig, to_dict
from MedSynthLogic.errors import DataError, UsageError
from MedSynthLogic.training.resume import Start, decide_start

CFG = ModelConfig(stages=3)
RUN = Path("run")
CKPT = Path("run/ckpt.pt")


def _checkpoint(stage: int, iteration: int, done: bool, cfg: ModelConfig = CFG):
    return lambda: (CKPT, {"model_config": json.dumps(to_dict(cfg)), "stage": stage, "iteration": iteration, "stage_done": done})


def _model(stages: int, **training):
    return lambda: SimpleNamespace(stages=stages, header={"training": training})


def _none():
    return None


def _never():
    raise AssertionError("this reader must not be called")


def _decide(start_stage=0, resume=False, init_model=None, checkpoint=_never, model=_never) -> Start:
    return decide_start(CFG, start_stage, resume, init_model, RUN, checkpoint, model)


def test_fresh_start_reads_nothing():
    assert _decide() == Start(0)
    assert _decide(resume=True, checkpoint=_none) == Start(0)


def test_resume_from_a_mid_stage_checkpoint_continues_that_stage():
    start = _decide(resume=True, checkpoint=_checkpoint(1, 40, False))
    assert (start.stage, start.iteration, start.continues, start.resumed_from) == (1, 40, True, str(CKPT))
    assert start.checkpoint["stage"] == 1 and start.model is None


def test_resume_from_a_stage_end_checkpoint_starts_the_next_stage():
    start = _decide(resume=True, checkpoint=_checkpoint(1, 100, True))
    assert (start.stage, start.iteration, start.continues) == (2, 0, False)
    assert start.checkpoint is not None and start.resumed_from == str(CKPT)


def test_start_stage_takes_the_earlier_stages_from_a_checkpoint():
    start = _decide(start_stage=2, checkpoint=_checkpoint(1, 100, True))
    assert (start.stage, start.iteration, start.continues, start.checkpoint is not None) == (2, 0, False, True)
    # a later checkpoint retrains from start_stage without --resume, and continues with it
    assert _decide(start_stage=1, checkpoint=_checkpoint(2, 5, False)).stage == 1
    assert _decide(start_stage=1, resume=True, checkpoint=_checkpoint(2, 5, False)) == Start(
        2, 5, checkpoint=_checkpoint(2, 5, False)()[1], continues=True, resumed_from=str(CKPT))


def test_start_stage_with_init_model_takes_the_earlier_stages_from_the_model_file():
    start = _decide(start_stage=1, init_model="one.safetensors", model=_model(1))
    assert (start.stage, start.iteration, start.model_stage, start.checkpoint) == (1, 0, False, None)
    assert start.model.stages == 1 and start.resumed_from == "one.safetensors"
    # --resume with a checkpoint past start_stage continues the run instead
    start = _decide(start_stage=1, resume=True, init_model="one.safetensors", checkpoint=_checkpoint(1, 2, False))
    assert (start.stage, start.iteration, start.continues, start.model) == (1, 2, True, None)


def test_init_model_continues_a_stage_it_holds_part_trained():
    model = _model(1, checkpoint_stage=0, checkpoint_iteration=3, checkpoint_stage_done=False)
    start = _decide(init_model="candidate.safetensors", model=model)
    assert (start.stage, start.iteration, start.model_stage, start.continues) == (0, 3, True, False)
    # a finished stage (or a file without a checkpoint record) starts that stage's weights at iteration 0
    done = _model(2, checkpoint_stage=1, checkpoint_iteration=9, checkpoint_stage_done=True)
    assert (_decide(start_stage=1, init_model="m", model=done).iteration, _decide(start_stage=1, init_model="m", model=_model(2)).iteration) == (0, 0)


def test_errors():
    with pytest.raises(DataError, match="keeps the first 1 stage.s., but run holds no checkpoint"):
        _decide(start_stage=1, checkpoint=_none)
    with pytest.raises(DataError, match=r"has 1 stage.s. trained; --start-stage 2 keeps the first 2"):
        _decide(start_stage=2, checkpoint=_checkpoint(1, 5, False))
    with pytest.raises(UsageError, match=r"different model config \(stages 2 → 3\)") as refused:  # exits 2 as a
        _decide(resume=True, checkpoint=_checkpoint(0, 5, False, ModelConfig(stages=2)))  # changed schedule does
    assert refused.value.reason == "model_config_changed"
    from MedSynthLogic.config import LossConfig

    with pytest.raises(UsageError, match=r"model config \(loss\.lambda_gdl 0\.2 → 1\.0\)"):  # nested, named
        _decide(resume=True, checkpoint=_checkpoint(0, 5, False, ModelConfig(stages=3, loss=LossConfig(lambda_gdl=0.2))))
    with pytest.raises(UsageError, match="has 1 stage.*--start-stage 2 needs 2"):
        _decide(start_stage=2, init_model="one.safetensors", model=_model(1))


def test_the_patch_count_goes_on_from_the_checkpoint_whatever_the_number_of_processes():
    from MedSynthLogic.config import TrainConfig
    from MedSynthLogic.training.resume import changed_world_size, patches_before

    cfg = TrainConfig(iterations=10, batch_size=2)
    mid = Start(1, 4, checkpoint={"stage": 1, "iteration": 4, "stage_done": False, "world_size": 3, "patches_seen": 84},
                continues=True, resumed_from="run/ckpt.pt")
    assert patches_before(mid, cfg, world_size=1) == 84  # 10·2·3 + 4·2·3, drawn by 3 processes
    assert "written by 3 process(es) and this run has 1: the global batch changes from 6 to 2" in changed_world_size(mid, cfg, 1)
    assert changed_world_size(mid, cfg, 3) is None
    old = Start(1, 4, checkpoint={"stage": 1, "iteration": 4, "stage_done": False}, continues=True)
    assert patches_before(old, cfg, world_size=2) == (10 + 4) * 2 * 2 and changed_world_size(old, cfg, 2) is None
    retrain = Start(1, checkpoint={"stage": 2, "iteration": 3, "stage_done": False, "patches_seen": 999})
    assert patches_before(retrain, cfg, world_size=1) == 10 * 2  # stage 1 retrained: the later count does not apply
    next_stage = Start(2, checkpoint={"stage": 1, "iteration": 10, "stage_done": True, "patches_seen": 50})
    assert patches_before(next_stage, cfg, world_size=4) == 50
    assert patches_before(Start(0), cfg, world_size=4) == 0


def test_every_process_refuses_an_existing_model_at_once(tmp_path, monkeypatch):
    """Only rank 0 used to check: the others waited for it in the process group until torchrun killed them."""
    from MedSynthLogic.errors import OutputError
    from MedSynthLogic.options import build_torchrun_parser
    from MedSynthLogic.training.command import train_from_args

    (tmp_path / "m.safetensors").write_bytes(b"x")
    monkeypatch.setenv("RANK", "2")
    args = build_torchrun_parser("train").parse_args(["--data", str(tmp_path), "--out", str(tmp_path / "m.safetensors")])
    with pytest.raises(OutputError, match="exists already"):
        train_from_args(args)


def test_a_lost_process_is_told_apart_from_other_errors():
    from MedSynthLogic.distributed import lost_contact

    assert lost_contact(RuntimeError("[gloo/transport/tcp/pair.cc:537] Read error: Connection reset by peer."))
    assert lost_contact(RuntimeError("NCCL communicator was aborted on rank 1."))
    assert not lost_contact(RuntimeError("CUDA out of memory"))
