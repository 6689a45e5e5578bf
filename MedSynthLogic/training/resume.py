"""Where a run starts: which stage and iteration, and from what (a checkpoint, a model file, or nothing).

The rules live in one function, :func:`decide_start`, which reads a checkpoint or a model file only through the
readers it is given, so each case is a unit test without a training run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from .. import checkpoint as ckpt
from .. import distributed as dist_utils
from ..config import ModelConfig, TrainConfig, from_dict, to_dict
from ..errors import DataError, OutputError, UsageError

FoundCheckpoint = Optional[Tuple[Path, Dict[str, Any]]]


@dataclass(frozen=True)
class Start:
    """The first stage to train and its first iteration; stages 0..stage−1 come from ``checkpoint`` or ``model``.

    ``checkpoint`` (a training state) also brings the validation history and elapsed time; with ``continues``
    it holds ``stage`` itself mid-way (G, D, optimisers, RNG). ``model_stage``: the model file holds ``stage``'s
    generator, which starts from those weights (fresh optimisers) at ``iteration``.
    """

    stage: int
    iteration: int = 0
    checkpoint: Optional[Dict[str, Any]] = None
    model: Optional[Any] = None
    continues: bool = False
    model_stage: bool = False
    resumed_from: Optional[str] = None


def decide_start(
    model_cfg: ModelConfig,
    start_stage: int,
    resume: bool,
    init_model: Optional[os.PathLike | str],
    run_dir: Path,
    read_checkpoint: Callable[[], FoundCheckpoint],
    read_model: Callable[[], Any],
) -> Start:
    """The start of a run (see :func:`MedSynthLogic.training.train` for what the options mean).

    ``read_checkpoint()`` gives the newest checkpoint of the run folder as (path, state) or None; it is called
    only with ``resume`` or a ``start_stage`` > 0 without ``init_model``. ``read_model()`` gives the
    ``init_model`` file (a ``LoadedModel``, checked against the config), called only when that file is used.
    """
    found = read_checkpoint() if resume or (start_stage > 0 and init_model is None) else None
    if found is not None and from_dict(ModelConfig, json.loads(found[1]["model_config"])) != model_cfg:
        raise UsageError(f"The checkpoint {found[0]} was made with a different model config "
                         f"({_config_changes(json.loads(found[1]['model_config']), json.loads(json.dumps(to_dict(model_cfg))))}).",
                         "Resume with that run's model config, or use another --run-dir.", reason="model_config_changed")
    # --resume continues a run that already reached start_stage; otherwise start_stage retrains from there
    continuing = found is not None and resume and int(found[1]["stage"]) >= start_stage
    if init_model is not None and not continuing:
        return _from_model(read_model(), init_model, start_stage)
    if found is None:
        if start_stage > 0:
            raise DataError(f"--start-stage {start_stage} keeps the first {start_stage} stage(s), but {run_dir} holds no checkpoint.",
                            "Resume the run that trained them, or pass --init-model with a model file that has them.")
        return Start(0)
    path, state = found
    stage, iteration, done = int(state["stage"]), int(state["iteration"]), bool(state["stage_done"])
    if not continuing:
        if stage + (1 if done else 0) < start_stage:
            raise DataError(f"The newest checkpoint has {stage + (1 if done else 0)} stage(s) trained; "
                            f"--start-stage {start_stage} keeps the first {start_stage}.",
                            f"Pass --start-stage {stage + (1 if done else 0)} or less, or resume the run that trained them.")
        return Start(start_stage, checkpoint=state, resumed_from=str(path))
    if done:
        return Start(stage + 1, checkpoint=state, resumed_from=str(path))
    return Start(stage, iteration, checkpoint=state, continues=True, resumed_from=str(path))


def _from_model(model: Any, path: os.PathLike | str, start_stage: int) -> Start:
    """Stages 0..start_stage−1 from a model file; stage start_stage too when the file holds it (e.g. exported mid-stage)."""
    if model.stages < max(start_stage, 1):
        raise UsageError(f"The model file {path} has {model.stages} stage(s); --start-stage {start_stage} needs {max(start_stage, 1)}.")
    holds_stage = model.stages > start_stage
    record = model.header.get("training", {})
    partial = record.get("checkpoint_stage") == start_stage and not record.get("checkpoint_stage_done", True)
    iteration = int(record.get("checkpoint_iteration", 0)) if holds_stage and partial else 0
    return Start(start_stage, iteration, model=model, model_stage=holds_stage, resumed_from=str(path))


#: TrainConfig fields a resumed run may change: they decide what is logged, validated and kept, not the weights.
RESUMABLE_CHANGES = frozenset({"val_every", "checkpoint_every", "log_every", "num_workers", "val_volumes",
                               "stages"})  # the model config's stages, compared with it (a Python caller's were 3)


def _config_changes(saved: Dict[str, Any], now: Dict[str, Any], prefix: str = "") -> str:
    """What differs between two config dicts, nested keys dotted: "loss.lambda_gdl 1.0 → 0.2" (the refusal said only
    "a different model config", leaving the user to diff two JSON files)."""
    parts = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = _config_changes(a, b, f"{prefix}{key}.")
            parts += [inner] if inner else []
        elif a != b:
            parts.append(f"{prefix}{key} {a!r} → {b!r}")
    return ", ".join(parts)


def refuse_changed_schedule(train_cfg: TrainConfig, start: Start) -> None:
    """``--resume`` continues a run as if it had never stopped, which a changed schedule (iterations, learning
    rates, losses, augmentation, seed) would silently break: refused, naming what changed."""
    if start.checkpoint is None or "train_config" not in start.checkpoint:
        return
    saved = {**to_dict(TrainConfig()), **json.loads(start.checkpoint["train_config"])}  # older checkpoints: defaults
    now = to_dict(train_cfg)
    shown = _config_changes({k: v for k, v in saved.items() if k not in RESUMABLE_CHANGES},
                            {k: v for k, v in now.items() if k not in RESUMABLE_CHANGES})
    if shown:
        raise UsageError(
            f"The run in {start.resumed_from} was trained with another schedule ({shown}); --resume would not go on "
            "as that run would have.",
            "Resume with its train config, or start a new run from an export of it (`medsynth export`, then "
            "--init-model).", reason="schedule_changed",
        )


#: The data summary entries a resumed run must find unchanged (``TrainingPlan.summary``): another split would move
#: cases the run has trained on into its validation, or change what it samples from.
SAME_DATA = ("val_case_ids", "train_case_ids", "train_cases", "train_patches")


def refuse_changed_data(data: Dict[str, Any], start: Start) -> None:
    """``--resume`` on a data folder prepared again since the run stopped (another split or other patches) is
    refused, naming what changed: the record would call training cases validation cases."""
    if start.checkpoint is None or not start.checkpoint.get("data"):
        return
    saved = json.loads(start.checkpoint["data"])
    changed = [k for k in SAME_DATA if k in saved and saved[k] != data.get(k)]
    if changed:
        shown = ", ".join(f"{k} {saved[k]!r} → {data.get(k)!r}" for k in changed)
        raise UsageError(
            f"The data folder has changed since the run in {start.resumed_from} stopped ({shown}); --resume would go "
            "on with other cases than it trained and validated on.",
            "Resume on the data that run was trained on, or start a new run in another --run-dir.",
            reason="data_changed",
        )


def refuse_earlier_run(run_dir: Path) -> None:
    """A run starting at stage 0 without ``resume`` must not write into another run's folder: its checkpoints would
    replace the older ones of the same names, and pruning would count the older run's later ones as newer."""
    found = ckpt.latest_checkpoint(run_dir, verify=False)
    if found is not None:
        raise OutputError(
            f"The run folder {run_dir} already holds checkpoints of an earlier run (newest: {found.name}).",
            "Add --resume to continue that run, pass another --run-dir, or move that folder away first.",
            reason="run_folder_in_use",
        )


def set_aside_later_checkpoints(run_dir: Path, start_stage: int) -> Optional[Path]:
    """Move the run folder's checkpoints of stage ``start_stage`` or later into a new ``superseded_N/`` folder inside
    it, once a run retraining from that stage has read the earlier stages: left in place they sort after the new
    run's checkpoints, so pruning deleted each new one as it was written and ``--resume`` went on from the old run.
    Kept, not deleted (they are the user's work). Returns the folder, or None when there was nothing to move."""
    later = [p for p in ckpt.list_checkpoints(run_dir) if ckpt.checkpoint_iteration(p)[0] >= start_stage]
    if not later:
        return None
    n = 1
    while (run_dir / f"superseded_{n}").exists():
        n += 1
    aside = run_dir / f"superseded_{n}"
    aside.mkdir()
    for p in later:
        os.replace(p, aside / p.name)
    return aside


def goes_on(start: Start) -> bool:
    """Whether the run goes on exactly where its checkpoint ended: mid-stage, or at the stage after a finished one
    (not a retraining of stages that checkpoint had already passed)."""
    state = start.checkpoint
    return state is not None and (start.continues or (bool(state.get("stage_done")) and int(state["stage"]) + 1 == start.stage))


def patches_before(start: Start, train_cfg: TrainConfig, world_size: int) -> int:
    """Patches the schedule drew before this call: the checkpoint's own count when the run goes on from it (so a
    resume with another number of processes still counts right), else what an uninterrupted run would have drawn."""
    state = start.checkpoint
    if state is None and start.model is not None:
        return 0  # the stages before came from another run's model file: its patches are not this run's
    if goes_on(start) and "patches_seen" in state:  # type: ignore[operator]
        return int(state["patches_seen"])
    return (start.stage * train_cfg.iterations + start.iteration) * train_cfg.batch_size * world_size


def changed_world_size(start: Start, train_cfg: TrainConfig, world_size: int) -> Optional[str]:
    """A warning when ``--resume`` goes on with another number of processes than wrote the checkpoint: the global
    batch changes, so the run no longer follows the one it continues (allowed: a cluster job may get fewer GPUs)."""
    saved = None if start.checkpoint is None else start.checkpoint.get("world_size")
    if saved is None or int(saved) == world_size:
        return None
    b = train_cfg.batch_size
    return (f"{start.resumed_from} was written by {int(saved)} process(es) and this run has {world_size}: the global "
            f"batch changes from {b * int(saved)} to {b * world_size} patches, so the run goes on from there but no "
            "longer follows an uninterrupted one")


def refuse_split_start(start: Start, ctx: dist_utils.DistContext) -> None:
    """Every rank reads the run folder itself: ranks on nodes that do not share it would each go on from their own
    checkpoint (or from none) and train different models under one DDP job, so they must agree before training."""
    mine = f"stage {start.stage + 1}, iteration {start.iteration}, from " + (
        Path(start.resumed_from).name if start.resumed_from else "no checkpoint")
    found = dist_utils.values_on_ranks(mine, ctx)
    if len(set(found)) > 1:
        raise UsageError(
            "The processes of this run found different starting points in its run folder: "
            + "; ".join(f"rank {r}: {v}" for r, v in enumerate(found)) + ".",
            "Give every node the same run folder (a shared file system) or copy the newest checkpoint to each "
            "node's folder before --resume.",
        )
