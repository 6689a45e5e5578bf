"""Training state in and out of checkpoints and model files: what a run saves, and what a start restores."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .. import checkpoint as ckpt
from ..config import ModelConfig, TrainConfig, to_dict
from ..errors import ModelFileError
from ..models import AutoContextChain, generators_state, load_prior_state, sub_state
from ..stage_trainer import StageTrainer
from .resume import Start


def rng_state() -> Dict[str, Any]:
    """All RNG states as tensors/numbers so the checkpoint loads with ``weights_only=True``."""
    py = random.getstate()
    npst = np.random.get_state()
    state: Dict[str, Any] = {
        "python_version": int(py[0]),
        "python_state": torch.tensor(py[1], dtype=torch.int64),
        "python_gauss": py[2],
        "numpy_keys": torch.from_numpy(npst[1].astype(np.int64)),
        "numpy_pos": int(npst[2]),
        "numpy_has_gauss": int(npst[3]),
        "numpy_gauss": float(npst[4]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Put back the RNG states of :func:`rng_state`, so a resumed run draws what the uninterrupted one would."""
    random.setstate((state["python_version"], tuple(int(v) for v in state["python_state"].tolist()), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], state["numpy_has_gauss"], state["numpy_gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():  # a cluster job may resume with fewer GPUs visible
        for device, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)


def checkpoint_state(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    chain: AutoContextChain,
    stage: int,
    iteration: int,
    stage_done: bool,
    trainer: StageTrainer,
    elapsed_s: float,
    metrics: Dict[str, Any],
    data: Optional[Dict[str, Any]] = None,
    world_size: int = 1,
    patches_seen: int = 0,
    stages_from_file: int = 0,
    stages_from_path: Optional[str] = None,
    init_model_cases: Optional[Sequence[str]] = (),
    prior_record: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """The checkpoint (format ``medsynth-training-state``): generators 0..stage, the trainer's state, RNG, history,
    ``data`` (the plan's summary of the training data), so a model exported from it says what it learned from, and
    the number of processes that wrote it with the patches drawn so far (a resume may have another number), and
    where its weights came from besides this run (an ``--init-model`` file, a prior model), which an export keeps."""
    state = {
        "format": "medsynth-training-state",
        "model_config": json.dumps(to_dict(model_cfg)),
        "train_config": json.dumps(to_dict(train_cfg)),
        "stage": int(stage),
        "iteration": int(iteration),
        "stage_done": bool(stage_done),
        "generators": {k: v.detach().cpu() for k, v in generators_state(chain, stages=range(stage + 1)).items()},
        "rng": rng_state(),
        "elapsed_s": float(elapsed_s),
        "metrics": json.dumps(metrics),
        "data": json.dumps(data or {}),
        "world_size": int(world_size),
        "patches_seen": int(patches_seen),
        "stages_from_file": int(stages_from_file),
        "stages_from_path": stages_from_path or "",
        "init_model_cases": json.dumps(None if init_model_cases is None else list(init_model_cases)),
        "prior_record": json.dumps(prior_record),  # an export of this checkpoint says what the refiner sits on
    }
    state.update(trainer.state_dict())
    return state


def stage_weights(state: Dict[str, Any], stage: int) -> Dict[str, torch.Tensor]:
    """Generator ``stage``'s weights from a checkpoint's ``generators``."""
    return sub_state(state["generators"], f"stage{stage}.")


def load_generators(chain: AutoContextChain, state: Dict[str, Any], upto: int) -> None:
    """Generators 0..upto of a checkpoint into ``chain``."""
    for k in range(upto + 1):
        sd = stage_weights(state, k)
        if not sd:
            raise ModelFileError(f"The checkpoint lacks the weights of stage {k + 1}.")
        chain.stages[k].load_state_dict(sd)
    load_prior_state(chain, state["generators"])


def latest_state(run_dir: Path) -> Optional[Tuple[Path, Dict[str, Any]]]:
    """The newest complete checkpoint of a run folder, loaded, or None."""
    found = ckpt.latest_checkpoint(run_dir)
    return None if found is None else (found, ckpt.load_checkpoint(found))


def open_init_model(path: os.PathLike | str, model_cfg: ModelConfig) -> Any:
    """The ``--init-model`` file, refused when it differs from this training's model in more than the stage count.

    A ``unet3d`` model's ``source_patch`` is only its training crop (the network is the same at any size), so a run
    may go on from it with larger or smaller crops; the FCN's patch size fixes its geometry and must match."""
    from ..model_file import load_model

    loaded = load_model(path, stages=None)
    theirs, ours = to_dict(loaded.config), to_dict(model_cfg)
    keys = ("generator", "normalisation", "prior", "source_name", "target_name")
    if model_cfg.generator.kind != "unet3d":
        keys += ("source_patch",)
    differ = sorted(k for k in keys if theirs.get(k) != ours.get(k))  # a T1ce→T2 stage is no T1→FLAIR stage
    if differ:
        raise ModelFileError(
            f"The model file {path} differs from this training's model config in {', '.join(differ)}.",
            "Train with the model file's own configuration (`medsynth info` shows it), changing only the stage count.",
        )
    return loaded


def load_earlier_stages(chain: AutoContextChain, start: Start) -> None:
    """Generators 0..start.stage−1 from the checkpoint or model file the run starts from."""
    if start.checkpoint is not None:
        load_generators(chain, start.checkpoint, start.stage - 1)
    elif start.model is not None:
        for k in range(start.stage):
            chain.stages[k].load_state_dict(start.model.chain.stages[k].state_dict())


def load_model_stage(gen: nn.Module, start: Optional[Start]) -> None:
    """The first stage's generator from the model file that holds it (before the trainer copies G into its EMA)."""
    if start is not None and start.model_stage:
        gen.load_state_dict(start.model.chain.stages[start.stage].state_dict())


def load_checkpoint_stage(gen: nn.Module, trainer: StageTrainer, start: Optional[Start]) -> None:
    """G, D, optimisers and RNG of a stage the checkpoint holds mid-way."""
    if start is not None and start.continues:
        gen.load_state_dict(stage_weights(start.checkpoint, start.stage))
        trainer.load_state_dict(start.checkpoint)
        set_rng_state(start.checkpoint["rng"])
