"""Model files out of training: the finished run's, one from a checkpoint (``medsynth export``), a refiner's blend
with its prior, and the weight average of runs that share a start."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch

from .. import checkpoint as ckpt
from ..atomic import check_output_path
from ..config import ModelConfig, TrainConfig, from_dict, to_dict
from ..distributed import DistContext
from ..errors import UsageError
from ..model_summary import AVERAGE_KEY, BLEND_KEY
from ..models import PRIOR_PREFIX, AutoContextChain, build_generators, generators_state, scale_refinement, sub_state
from .plan import TrainingPlan
from .state import load_generators


def write_trained_model(
    out: Path, chain: AutoContextChain, model_cfg: ModelConfig, train_cfg: TrainConfig, plan: TrainingPlan, ctx: DistContext,
    wall_s: float, patches_seen: int, amp_dtype: Optional[torch.dtype], resumed_from: Optional[str], command: Optional[Sequence[str]], metrics: Dict[str, Any],
    prior: Optional[Dict[str, Any]] = None, stages_from_file: int = 0, stages_from_path: Optional[str] = None,
    init_model_cases: Optional[Sequence[str]] = (),
) -> None:
    """The model file of a finished run, with its training record (data, schedule, hardware, time, provenance);
    ``patches_seen`` counts every patch this run drew, across resumes with other numbers of processes;
    ``stages_from_file``: leading stages taken from an ``--init-model`` file, not counted as trained here;
    ``init_model_cases``: the cases that file's weights were trained on (``evaluate`` counts them as seen)."""
    from ..model_file import save_model

    training = {
        "data": plan.summary(),
        "train_config": to_dict(train_cfg),
        "iterations_per_stage": train_cfg.iterations,
        "stages_trained": model_cfg.stages - int(stages_from_file),
        **({"stages_from_file": int(stages_from_file), "stages_from_path": stages_from_path} if stages_from_file else {}),
        "patches_seen": int(patches_seen),
        "generator_kind": model_cfg.generator.kind,
        "wall_time_s": round(wall_s, 1),
        "device": device_name(ctx.device),
        "world_size": ctx.world_size,
        "precision": str(amp_dtype).replace("torch.", "") if amp_dtype is not None else "float32",
        "torch_version": torch.__version__,
        "resumed_from": resumed_from,
        "command": list(command) if command else None,
    }
    if prior is not None:
        training["prior_model"] = prior
    training.update(_inherited(init_model_cases, stages_from_path))
    chain.cpu()
    save_model(out, chain, model_cfg, training, final_metrics(metrics, model_cfg.stages))
    chain.to(ctx.device)


def _inherited(cases: Optional[Sequence[str]], path: Optional[str]) -> Dict[str, Any]:
    """The record of the cases an ``--init-model`` file's weights learned from: named, or that file named as one whose
    cases are unknown (an empty list said nothing, and evaluate called them held out)."""
    if cases is None:
        return {"inherited_cases_unknown": [Path(str(path or "the --init-model file")).name]}
    return {"inherited_train_cases": list(cases)} if cases else {}


def device_name(device: torch.device) -> str:
    """The hardware line of the training record."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def export_checkpoint(
    checkpoint: os.PathLike | str,
    out_model: os.PathLike | str,
    stages: Optional[int] = None,
    training: Optional[Dict[str, Any]] = None,
    overwrite: bool = False,
    evaluation: Optional[Dict[str, Any]] = None,
) -> Path:
    """Write a model file from a training checkpoint's completed stages (e.g. after Stop, or a run cut short).

    Only stages whose training finished are exported unless ``stages`` asks for a partly trained last stage
    too (its EMA weights when the run keeps one, as a finished stage would be); the header records which
    checkpoint, stage and iteration the weights come from.
    """
    from ..model_file import save_model

    state = ckpt.load_checkpoint(checkpoint)
    model_cfg = from_dict(ModelConfig, json.loads(state["model_config"]))
    train_cfg = json.loads(state["train_config"])
    complete = int(state["stage"]) + (1 if state["stage_done"] else 0)
    n = complete if stages is None else int(stages)
    if n < 1 or n > int(state["stage"]) + 1:
        if state["stage_done"]:  # its last stage finished: there is no stage in progress to offer
            where, hint = f"stage {complete} finished", f"Pass --stages 1 to {complete}."
        else:
            where = f"stage {int(state['stage']) + 1} at iteration {state['iteration']}"
            hint = (f"Pass --stages {int(state['stage']) + 1} for the stages up to the one in progress (its weights at "
                    f"iteration {state['iteration']})" + (f", or --stages {complete} for the completed ones only."
                                                          if complete else "."))
        raise UsageError(f"The checkpoint holds {complete} completed stage(s) ({where}); cannot export {n}.", hint)
    export_cfg = dataclasses.replace(model_cfg, stages=n)
    chain = build_generators(export_cfg)
    load_generators(chain, state, n - 1)
    partial_ema = "ema" in state and not state["stage_done"] and n - 1 == int(state["stage"])
    if partial_ema:
        chain.stages[n - 1].load_state_dict(sub_state(state["ema"], "module."))
    check_output_path(out_model, overwrite=overwrite, inputs=(checkpoint,))
    record = {
        "exported_from_checkpoint": Path(checkpoint).name,
        "checkpoint_stage": int(state["stage"]),
        "checkpoint_iteration": int(state["iteration"]),
        "checkpoint_stage_done": bool(state["stage_done"]),
        "exported_ema": bool(partial_ema),
        "train_config": train_cfg,
        "generator_kind": model_cfg.generator.kind,
        "wall_time_s": round(float(state["elapsed_s"]), 1),
        "exported_with_torch": torch.__version__,
    }
    if n <= complete:  # every stage it holds finished its schedule, as a finished run's file says (`medsynth info`)
        record["iterations_per_stage"] = train_cfg.get("iterations")
    data = json.loads(state.get("data") or "{}")  # checkpoints before 2026-12-06 do not hold it
    if data:
        record["data"] = data
    # where the weights came from besides this run, as the finished run's file says it (checkpoints since session 43)
    taken = int(state.get("stages_from_file", 0))
    record["stages_trained"] = n - min(taken, n)
    if taken:
        record.update(stages_from_file=min(taken, n), stages_from_path=state.get("stages_from_path") or None)
    record.update(_inherited(json.loads(state.get("init_model_cases") or "[]"), state.get("stages_from_path")))
    prior = json.loads(state.get("prior_record") or "null")
    if prior:
        record["prior_model"] = prior
    record.update(training or {})
    metrics = final_metrics(json.loads(state.get("metrics") or "{}"), n)
    if evaluation:
        metrics["evaluation"] = evaluation
    return save_model(out_model, chain, export_cfg, record, metrics, inputs=(checkpoint,))


def final_metrics(metrics: Dict[str, Any], stages: int) -> Dict[str, Any]:
    """Per-stage validation results, with the last stage's also at the top level (what `medsynth info` shows)."""
    out: Dict[str, Any] = {"validation": metrics}
    last = metrics.get(f"stage{stages - 1}")
    if last:
        out.update({k: v for k, v in last.items() if k in ("psnr", "ssim", "val_loss")})
    return out


def blend_model_file(model: os.PathLike | str, out: os.PathLike | str, weight: float = 0.5, overwrite: bool = False) -> Path:
    """A copy of a refiner model file (one stage on top of a prior model) whose correction is scaled by ``weight``:
    0.5 synthesises the mean of the prior's synthesis and the refiner's. The training record is kept with what was
    blended added; the measured metrics are dropped, since they belong to the unblended model."""
    from ..model_file import load_model, save_model

    loaded = load_model(model, stages=None)
    if loaded.config.prior is None or loaded.stages != 1:
        raise UsageError(f"{model} is not one stage on top of a prior model; only such a refiner can be blended.",
                         "Pass a model trained with --prior-model and one stage.")
    scale_refinement(loaded.chain.stages[0], weight)
    training = dict(loaded.header.get("training", {}))
    earlier = training.get(BLEND_KEY)  # a blend of a blend scales the correction twice: its record says the product
    steps = list(earlier.get("steps", [earlier])) if isinstance(earlier, dict) else []
    steps.append({"weight": float(weight), "from": Path(model).name})
    training[BLEND_KEY] = {"weight": float(math.prod(step["weight"] for step in steps)), "from": steps[0]["from"],
                           **({"steps": steps} if len(steps) > 1 else {})}
    return save_model(out, loaded.chain, loaded.config, training, overwrite=overwrite, inputs=(model,))


def average_model_files(models: Sequence[os.PathLike | str], out: os.PathLike | str, overwrite: bool = False) -> Path:
    """A model file whose weights are the uniform mean of several files' (a "model soup", Wortsman et al. 2022).

    Averaging weights only makes sense for runs fine-tuned from one starting model (e.g. two seeds of one refiner);
    the files must share the architecture, and a prior model, if they have one, must be the same in each, since the
    mean of two different priors is neither. The first file's training record is kept with the sources added; the
    measured metrics are dropped, since they belong to the sources."""
    from ..model_file import load_model, save_model

    if len(models) < 2:
        raise UsageError(f"Averaging needs at least two model files, not {len(models)}.")
    loaded = [load_model(m, stages=None) for m in models]
    first = loaded[0]
    for path, other in zip(models[1:], loaded[1:]):
        if to_dict(other.config) != to_dict(first.config):
            raise UsageError(f"{path} and {models[0]} have different architectures or settings; only runs of one "
                             "model config can be averaged.")
    states = [generators_state(m.chain) for m in loaded]
    mean = {}
    for name, tensor in states[0].items():
        if name.startswith(PRIOR_PREFIX):
            if not all(torch.equal(tensor, s[name]) for s in states[1:]):
                raise UsageError(f"The model files hold different prior models ({name} differs); average only runs "
                                 "trained on the same prior.")
            continue
        mean[name] = torch.stack([s[name].float() for s in states]).mean(0).to(tensor.dtype)  # counters are integers
    for k, gen in enumerate(first.chain.stages):
        gen.load_state_dict(sub_state(mean, f"stage{k}."))
    training = dict(first.header.get("training", {}))
    earlier = training.get(AVERAGE_KEY)
    training[AVERAGE_KEY] = {"from": [Path(m).name for m in models], **({"earlier": earlier} if earlier else {})}
    _record_every_sources_cases(training, models, [m.header for m in loaded])
    return save_model(out, first.chain, first.config, training, overwrite=overwrite, inputs=tuple(models))


def _record_every_sources_cases(training: Dict[str, Any], paths: Sequence[os.PathLike | str],
                                headers: Sequence[Dict[str, Any]]) -> None:
    """The averaged weights learned from every source's cases: they go into ``inherited_train_cases`` (``evaluate``
    calls them not held out), and a validation case another source trained on is no validation case any more; a
    source that does not name its cases is recorded as such (``inherited_cases_unknown``). The first file's record
    alone had called the second file's training cases held out."""
    from ..model_summary import all_training_cases

    cases = [all_training_cases(h) for h in headers]
    unknown = [Path(p).name for p, c in zip(paths, cases) if c is None]
    if unknown:
        training["inherited_cases_unknown"] = list(training.get("inherited_cases_unknown") or []) + unknown
    seen = sorted(set().union(*[c for c in cases if c is not None]))
    if seen:
        training["inherited_train_cases"] = seen
    data = dict(training.get("data") or {})
    for key in ("val_case_ids", "val_cases"):
        if isinstance(data.get(key), list):
            data[key] = [c for c in data[key] if c not in set(seen)]
    training["data"] = data
