"""The ``--prior-model`` of a training: a trained model file whose synthesis the new stage 0 refines.

Auto-context across generator kinds: the prior (the paper's FCN, say) stays frozen; its configuration becomes
``ModelConfig.prior`` and its weights travel in the new model file, so inference runs it first, exactly as here.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from ..config import ModelConfig
from ..errors import UsageError
from ..models import PRIOR_PREFIX, AutoContextChain, generators_state, prior_state, sub_state
from .resume import Start


def open_prior_model(path: Optional[os.PathLike | str]) -> Any:
    """The prior model file, loaded and verified (None without one)."""
    if path is None:
        return None
    from ..model_file import load_model

    loaded = load_model(path, stages=None)
    if loaded.config.prior is not None:
        raise UsageError(f"The prior model {path} has a prior of its own.", "Use a model trained without --prior-model.")
    return loaded


def with_prior(model_cfg: ModelConfig, prior: Any) -> ModelConfig:
    """``model_cfg`` with the prior's configuration (checked: same pair and normalisation).

    A config that names a prior already must name this one, and one without a prior file must not name any: the
    prior's weights come from its file, never from a random start.
    """
    if prior is None:
        if model_cfg.prior is not None:
            raise UsageError("The model config has a prior model but no --prior-model file gives its weights.",
                             "Pass --prior-model with the file the config's prior came from.")
        return model_cfg
    if model_cfg.prior is not None and model_cfg.prior != prior.config:
        raise UsageError(f"The model config's prior differs from the --prior-model file {prior.path}.",
                         "Use the prior's own configuration (`medsynth info --json`) or leave it out of the config.")
    return dataclasses.replace(model_cfg, prior=prior.config)


def check_same_prior(chain: AutoContextChain, start: Start) -> None:
    """Refuse to go on from a checkpoint or model file whose prior weights are not the ``--prior-model`` file's:
    the stages trained so far learned to refine that prior, and a replaced file would silently change it."""
    if chain.prior is None:
        return
    if start.checkpoint is not None:
        theirs = prior_state(start.checkpoint["generators"])
    elif start.model is not None:
        theirs = prior_state(generators_state(start.model.chain))
    else:
        return
    if not _same_weights(theirs, prior_state(generators_state(chain))):
        raise UsageError(
            f"The --prior-model file differs from the prior this run started with ({start.resumed_from}).",
            "Pass the prior model file the run was started with, or start a new run.",
        )


def _same_weights(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> bool:
    """The same names holding the same values (compared in float32 on the CPU, wherever each was kept)."""
    return a.keys() == b.keys() and all(torch.equal(a[k].float().cpu(), b[k].float().cpu()) for k in a)


def prior_record(prior: Any) -> Optional[Dict[str, Any]]:
    """What the new model file's training record says about its prior: which file, which weights, how good."""
    if prior is None:
        return None
    from ..model_summary import all_training_cases

    header = prior.header
    return {
        "file": prior.path.name if prior.path is not None else None,
        "tensors_sha256": header.get("tensors_sha256"),
        "generator_kind": prior.config.generator.kind,
        "stages": prior.config.stages,
        "metrics": header.get("metrics", {}),
        "train_cases": all_training_cases(header),  # the refiner's synthesis is built on them too
    }


def with_prior_cases(refiner: os.PathLike | str, prior: os.PathLike | str, out: os.PathLike | str,
                     overwrite: bool = False) -> Path:
    """A copy of a refiner file whose prior record names the prior's training cases, read from the prior's own file
    (files before session 42 record none, so ``evaluate`` cannot tell which cases its synthesis has seen). The prior
    file must be the one the refiner holds (the same tensors); the generators and everything else are unchanged
    (``created`` too; ``modified`` records the change)."""
    from ..model_file import load_model, save_model
    from ..model_summary import all_training_cases

    ref, held = load_model(refiner, stages=None), open_prior_model(prior)
    if ref.config.prior is None:
        raise UsageError(f"{refiner} refines no prior model.", "Pass a model trained with --prior-model.")
    mine, theirs = sub_state(generators_state(ref.chain), PRIOR_PREFIX), generators_state(held.chain)
    if not _same_weights(mine, theirs):
        raise UsageError(f"{prior} is not the prior model {refiner} holds.", "Pass the prior file it was trained on.")
    cases = all_training_cases(held.header)
    if cases is None:
        raise UsageError(f"{prior} does not name its training cases either.")
    training = dict(ref.header.get("training") or {})
    training["prior_model"] = {**dict(training.get("prior_model") or {}), "train_cases": cases}
    return save_model(out, ref.chain, ref.config, training, ref.header.get("metrics"), overwrite=overwrite,
                      error_map=ref.error_map, inputs=(refiner, prior), created=ref.header.get("created"))
