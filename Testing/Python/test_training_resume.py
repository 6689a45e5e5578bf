"""Where a training run starts (``training.resume.decide_start``), each rule without a training run."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from MedSynthLogic.config import ModelConfig, to_dict
from MedSynthLogic.errors import DataError, ModelFileError, UsageError
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
    with pytest.raises(DataError, match="needs the earlier stages, but run holds no checkpoint"):
        _decide(start_stage=1, checkpoint=_none)
    with pytest.raises(DataError, match=r"has stages 0\.\.0 trained; start_stage 2 needs 0\.\.1"):
        _decide(start_stage=2, checkpoint=_checkpoint(1, 5, False))
    with pytest.raises(ModelFileError, match="different model config"):
        _decide(resume=True, checkpoint=_checkpoint(0, 5, False, ModelConfig(stages=2)))
    with pytest.raises(UsageError, match="has 1 stage.*start_stage 2 needs 2"):
        _decide(start_stage=2, init_model="one.safetensors", model=_model(1))
