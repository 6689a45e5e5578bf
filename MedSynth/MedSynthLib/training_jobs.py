"""Training and data preparation from the panel: the configs from the panel's settings, the ``prepare`` arguments.

The ``train`` argument list itself comes from the core (``train_options.train_argument_list``), so the panel never
spells a training flag.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Tuple


@dataclass(frozen=True)
class PrepareRequest:
    """A folder of paired cases (BraTS naming) to turn into a prepared data folder."""

    cases_dir: Path
    data_dir: Path
    patches_per_case: int = 1000
    val_fraction: float = 0.2


def training_configs(settings: Any) -> Tuple[Any, Any]:
    """``(ModelConfig, TrainConfig)`` from the panel's settings (the parameter node or any object with its fields).

    Loss weights and residual learning belong to the architecture (``ModelConfig``); the schedule, learning rates,
    batch size and precision to the run (``TrainConfig``).
    """
    from MedSynthLogic.config import GeneratorConfig, LossConfig, ModelConfig, TrainConfig

    model_config = ModelConfig(
        generator=GeneratorConfig(residual=bool(settings.residual)),
        loss=LossConfig(lambda_adv=float(settings.lambdaAdv), lambda_l2=float(settings.lambdaL2),
                        lambda_gdl=float(settings.lambdaGdl)),
        stages=int(settings.trainStages),
    )
    train_config = TrainConfig(
        stages=int(settings.trainStages), iterations=int(settings.iterations), batch_size=int(settings.batchSize),
        lr_g=float(settings.lrG), lr_d=float(settings.lrD), precision=str(settings.trainPrecision),
    )
    return model_config, train_config


def prepare_arguments(request: PrepareRequest) -> List[str]:
    """``medsynth prepare`` arguments with JSON progress (one event per prepared case)."""
    return [
        "prepare", os.fspath(request.cases_dir), os.fspath(request.data_dir),
        "--patches-per-case", str(int(request.patches_per_case)),
        "--val-fraction", repr(float(request.val_fraction)),
        "--progress", "json",
    ]
