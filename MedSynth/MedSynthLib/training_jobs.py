"""Training, data preparation and evaluation from the panel: the configs from the panel's settings, the ``prepare``
and ``evaluate`` arguments, and the panel's values of each generator kind's recipe.

The argument lists themselves come from the core (``train_options``), so the panel never spells a flag.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from MedSynthLogic.recipes import RECIPE_KINDS, recipe

from .i18n import tr as _

#: The generator kinds the panel trains, in its list's order (the paper's FCN first).
GENERATOR_KINDS = list(RECIPE_KINDS)


@dataclass(frozen=True)
class PrepareRequest:
    """A folder of paired cases (BraTS naming) to turn into a prepared data folder for the model config that will
    train on it (``None``: the paper's)."""

    cases_dir: Path
    data_dir: Path
    patches_per_case: int = 1000
    val_fraction: float = 0.2
    model_config: Optional[Any] = None


@dataclass(frozen=True)
class TrainingRequest:
    """A training run the panel starts: its configs, folders and device, and the model file whose synthesis its first
    stage refines (a ``unet3d_refiner`` recipe's bundled FCN; None otherwise)."""

    model_config: Any
    train_config: Any
    data_dir: Path
    out_model: Path
    run_dir: Optional[Path] = None
    device: str = "auto"
    resume: bool = False
    prior_model: Optional[Path] = None

    def arguments(self, config_dir: "str | os.PathLike") -> List[str]:
        """``medsynth train`` arguments that run exactly this request (configs written into ``config_dir``)."""
        from MedSynthLogic.train_options import train_argument_list

        return train_argument_list(self.model_config, self.train_config, self.data_dir, self.out_model, config_dir,
                                   run_dir=self.run_dir, device=self.device, resume=self.resume,
                                   prior_model=self.prior_model)


@dataclass(frozen=True)
class EvaluationRequest:
    """Score a trained model file on the validation cases of the prepared data folder it was trained from (the
    manifest that ``prepare`` wrote records them), the report (``metrics.json``, ``metrics.md``) in ``report_dir``."""

    model: Path
    data_dir: Path
    report_dir: Path
    device: str = "auto"
    resume: bool = False

    def arguments(self) -> List[str]:
        """``medsynth evaluate`` arguments that run exactly this request."""
        from MedSynthLogic.train_options import evaluate_argument_list

        return evaluate_argument_list(self.model, self.data_dir, self.report_dir, device=self.device,
                                      resume=self.resume)


def evaluation_request(settings: Any) -> EvaluationRequest:
    """The 'Evaluate' request of the panel's settings: the training section's output model file and prepared data
    folder (what was just trained, on the cases set aside from it), its device, and the report folder. A report
    folder that holds a stopped evaluation's report is gone on from (a click on Evaluate after Stop continues)."""
    from MedSynthLogic.evaluation_resume import is_stopped

    report_dir = full_path(settings.evalDir, _("the evaluation report folder"))
    return EvaluationRequest(full_path(settings.outputModelPath, _("the output model file")),
                             full_path(settings.dataDir, _("the prepared data folder")), report_dir,
                             str(settings.trainDevice), resume=is_stopped(report_dir))


def is_set(path: "Optional[os.PathLike]") -> bool:
    """Whether a path parameter holds a real choice (the parameter node wrapper's empty value is ``Path()``, ".")."""
    return path is not None and str(path) not in ("", ".")


def training_request(settings: Any, resume: bool = False) -> TrainingRequest:
    """The 'Train'/'Resume' request of the panel's settings: :func:`training_configs` and, for a refiner, the bundled
    model its recipe refines."""
    from MedSynthLogic.bundled_models import models_dir

    model_config, train_config = training_configs(settings)
    prior = recipe(str(settings.generatorKind)).prior_model
    return TrainingRequest(model_config, train_config, full_path(settings.dataDir, _("the prepared data folder")),
                           full_path(settings.outputModelPath, _("the output model file")),
                           full_path(settings.runDir, _("the run folder")), str(settings.trainDevice), resume,
                           None if prior is None else models_dir() / prior)


def full_path(value: "str | os.PathLike", what: str) -> Path:
    """``value`` as a Path, refused unless absolute: a path typed as "models/t2.safetensors" would be taken from the
    child's working folder (the extension's), not from where the user thinks."""
    path = Path(value).expanduser()
    if not path.is_absolute():
        raise ValueError(_("Give the full path of {what} (\"{path}\" is relative): choose it with the button beside "
                           "the field.").format(what=what, path=value))
    return path


def recipe_settings(kind: str) -> Dict[str, Any]:
    """The panel's values of a generator kind's recipe: what the panel shows when the user picks that kind."""
    r = recipe(kind)
    return {
        "iterations": r.train.iterations, "batchSize": r.train.batch_size, "lrG": r.train.lr_g, "lrD": r.train.lr_d,
        "lambdaAdv": r.model.loss.lambda_adv, "lambdaL2": r.model.loss.lambda_l2, "lambdaGdl": r.model.loss.lambda_gdl,
        "trainStages": r.model.stages, "residual": r.model.generator.residual, "patchesPerCase": r.patches_per_case,
    }


def apply_recipe(settings: Any, kind: str) -> None:
    """Set the panel's settings to a generator kind's recipe (what the user then sees and may change)."""
    for name, value in recipe_settings(kind).items():
        setattr(settings, name, value)


def prepare_request(settings: Any) -> PrepareRequest:
    """The 'Prepare data' request of the panel's settings, for the model config that their training will use."""
    model_config, _train_config = training_configs(settings)
    return PrepareRequest(full_path(settings.casesDir, _("the folder of cases")),
                          full_path(settings.dataDir, _("the prepared data folder")), int(settings.patchesPerCase),
                          model_config=model_config)


def training_configs(settings: Any) -> Tuple[Any, Any]:
    """``(ModelConfig, TrainConfig)`` from the panel's settings (the parameter node or any object with its fields):
    the chosen kind's recipe with the panel's values in place of its own.

    Loss weights and residual learning belong to the architecture (``ModelConfig``); the schedule, learning rates,
    batch size and precision to the run (``TrainConfig``). What the panel does not show (crop size, normalisation,
    optimiser, augmentation) stays the recipe's.
    """
    r = recipe(str(settings.generatorKind))
    stages = int(settings.trainStages)
    model_config = dataclasses.replace(
        r.model,
        generator=dataclasses.replace(r.model.generator, residual=bool(settings.residual)),
        loss=dataclasses.replace(r.model.loss, lambda_adv=float(settings.lambdaAdv), lambda_l2=float(settings.lambdaL2),
                                 lambda_gdl=float(settings.lambdaGdl)),
        stages=stages,
    )
    train_config = dataclasses.replace(
        r.train, stages=stages, iterations=int(settings.iterations), batch_size=int(settings.batchSize),
        lr_g=float(settings.lrG), lr_d=float(settings.lrD), precision=str(settings.trainPrecision),
    )
    return model_config, train_config


def prepare_arguments(request: PrepareRequest, config_dir: "str | os.PathLike") -> List[str]:
    """``medsynth prepare`` arguments with JSON progress (one event per prepared case) that store the cases as the
    request's model config trains on them (``train`` refuses another patch size or normalisation)."""
    from MedSynthLogic.config import ModelConfig
    from MedSynthLogic.train_options import prepare_argument_list

    config = request.model_config if request.model_config is not None else ModelConfig()
    return prepare_argument_list(request.cases_dir, request.data_dir, config, config_dir,
                                 patches_per_case=request.patches_per_case, val_fraction=request.val_fraction)
