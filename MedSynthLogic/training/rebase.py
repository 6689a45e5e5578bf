"""Model files re-based for a fine-tuning that changes what the weights sit on: another source normalisation, another
prior model, or the later stages of another file.

``--init-model`` accepts only a file of the training's own configuration (``state.open_init_model``), so a trained
model is moved onto the new setting first, weights unchanged, and the run then starts from it. Each function writes
a complete file through ``save_model`` (atomic, refusing to overwrite unless asked) and records in the training
record what it was made from, so the provenance of the fine-tuned model stays readable (``medsynth info``).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Dict

from ..config import IntensityConfig, ModelConfig
from ..errors import UsageError
from ..model_summary import all_training_cases
from ..models import AutoContextChain
from .prior import prior_record

REBASE_KEY = "rebased"


def _record(loaded: Any, what: Dict[str, Any]) -> Dict[str, Any]:
    """The loaded file's training record with what was re-based added (measured metrics belong to the source file)."""
    training = dict(loaded.header.get("training", {}))
    training[REBASE_KEY] = list(training.get(REBASE_KEY, [])) + [what]
    return training


def renormalised_model_file(
    model: os.PathLike | str, out: os.PathLike | str, source: IntensityConfig, overwrite: bool = False
) -> Path:
    """A copy of a plain model file whose source is normalised by ``source`` instead: the starting point for
    fine-tuning the same weights under another normalisation (e.g. the in-brain median instead of the 99.5th
    percentile). The weights are unchanged, so the copy synthesises well only after that fine-tuning."""
    from ..model_file import load_model, save_model

    loaded = load_model(model, stages=None)
    if loaded.config.prior is not None:
        raise UsageError(f"{model} refines a prior model; its normalisation is its prior's.",
                         "Re-normalise the prior, then move the refiner onto it with rebased_refiner_file.")
    norm = dataclasses.replace(loaded.config.normalisation, source=source)
    cfg = dataclasses.replace(loaded.config, normalisation=norm)
    what = {"op": "source normalisation", "from": Path(model).name, "source": dataclasses.asdict(source)}
    return save_model(out, loaded.chain, cfg, _record(loaded, what), overwrite=overwrite, inputs=(model,))


def rebased_refiner_file(
    refiner: os.PathLike | str, prior: os.PathLike | str, out: os.PathLike | str, overwrite: bool = False
) -> Path:
    """The refiner's stages on top of another prior model (its configuration, weights and normalisation): the
    starting point for fine-tuning a refiner on a re-trained prior, which ``--prior-model`` would otherwise refuse
    (the refiner's file names the prior it was trained on)."""
    from ..model_file import load_model, save_model

    ref = load_model(refiner, stages=None)
    new = load_model(prior, stages=None)
    if ref.config.prior is None:
        raise UsageError(f"{refiner} has no prior model to replace.", "Pass a model trained with --prior-model.")
    if new.config.prior is not None:
        raise UsageError(f"The prior model {prior} has a prior of its own.", "Use a model trained without --prior-model.")
    cfg = dataclasses.replace(ref.config, normalisation=new.config.normalisation, prior=new.config)
    chain = AutoContextChain(cfg)
    chain.stages.load_state_dict(ref.chain.stages.state_dict())
    chain.prior.load_state_dict(new.chain.state_dict())
    training = _record(ref, {"op": "prior", "from": Path(refiner).name, "prior": Path(prior).name,
                             "replaced_prior_model": ref.header.get("training", {}).get("prior_model")})
    training["prior_model"] = prior_record(new)  # what evaluate reads: the old prior's cases would be checked instead
    return save_model(out, chain, cfg, training, overwrite=overwrite, inputs=(refiner, prior))


def extended_model_file(
    model: os.PathLike | str, donor: os.PathLike | str, out: os.PathLike | str, overwrite: bool = False
) -> Path:
    """``model``'s stages followed by ``donor``'s later ones (same configuration but the stage count): with
    ``--init-model`` and ``--start-stage`` = ``model``'s stage count, a run fine-tunes the donor's next stage from
    its own weights on top of the stages fine-tuned before it, one stage at a time."""
    from ..model_file import load_model, save_model

    head = load_model(model, stages=None)
    tail = load_model(donor, stages=None)
    same = dataclasses.replace(head.config, stages=tail.config.stages)
    if same != tail.config:
        raise UsageError(f"{model} and {donor} differ in more than their stage count.",
                         "Extend a model only with stages of a file of its own configuration.")
    if tail.stages <= head.stages:
        raise UsageError(f"{donor} has {tail.stages} stage(s), no more than {model}'s {head.stages}; nothing to add.")
    cfg: ModelConfig = tail.config
    chain = AutoContextChain(cfg)
    for k, gen in enumerate(chain.stages):
        source = head.chain if k < head.stages else tail.chain
        gen.load_state_dict(source.stages[k].state_dict())
    what = {"op": "stages", "from": Path(model).name, "stages_from": Path(donor).name, "first_donor_stage": head.stages}
    training = _record(head, what)
    donor_cases = all_training_cases(tail.header)  # the donor's stages learned from its cases
    if donor_cases is None:
        training["inherited_cases_unknown"] = list(training.get("inherited_cases_unknown") or []) + [Path(donor).name]
    elif donor_cases:
        training["inherited_train_cases"] = sorted(set(training.get("inherited_train_cases") or []) | set(donor_cases))
    return save_model(out, chain, cfg, training, overwrite=overwrite, inputs=(model, donor))
