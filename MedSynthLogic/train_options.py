"""The ``medsynth prepare``, ``train`` and ``evaluate`` argument lists built from configs and paths (what the Slicer
module runs); the options themselves are defined with every other subcommand's in :mod:`.options`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

if TYPE_CHECKING:
    from .config import ModelConfig, TrainConfig


def train_argument_list(
    model_config: "ModelConfig",
    train_config: "TrainConfig",
    data_dir: "str | os.PathLike",
    out_model: "str | os.PathLike",
    config_dir: "str | os.PathLike",
    run_dir: "Optional[str | os.PathLike]" = None,
    device: str = "auto",
    resume: bool = False,
    progress: str = "json",
    prior_model: "Optional[str | os.PathLike]" = None,
) -> List[str]:
    """The ``medsynth train`` arguments that run exactly these configs (the Slicer module's train command).

    Both configs are written as JSON into ``config_dir`` and passed with ``--model-config``/``--train-config``,
    so every setting reaches the trainer through the same loader as a hand-written config file and no flag is
    spelled twice; only what is not a config (paths, device, resume, progress, the prior model's file) is a flag.
    """
    from .errors import UsageError

    if model_config.prior is not None and prior_model is None:
        raise UsageError("The model config refines a prior model; pass the prior's file (prior_model) too.")

    model_path = write_config(model_config, Path(config_dir) / "model_config.json")
    train_path = write_config(train_config, Path(config_dir) / "train_config.json")
    args = ["train", "--data", os.fspath(data_dir), "--out", os.fspath(out_model),
            "--model-config", str(model_path), "--train-config", str(train_path),
            "--device", device, "--progress", progress]
    if run_dir is not None:
        args += ["--run-dir", os.fspath(run_dir)]
    if resume:
        args.append("--resume")
    if prior_model is not None:
        args += ["--prior-model", os.fspath(prior_model)]
    return args


def prepare_argument_list(
    cases_dir: "str | os.PathLike",
    data_dir: "str | os.PathLike",
    model_config: "ModelConfig",
    config_dir: "str | os.PathLike",
    patches_per_case: int = 1000,
    val_fraction: float = 0.2,
    progress: str = "json",
) -> List[str]:
    """The ``medsynth prepare`` arguments that store the cases as ``model_config`` will train on them.

    ``train`` refuses data whose patch size or normalisation is not its model config's, so the config is written into
    ``config_dir`` and passed with ``--config``, as for :func:`train_argument_list`.
    """
    config_path = write_config(model_config, Path(config_dir) / "model_config.json")
    return ["prepare", os.fspath(cases_dir), os.fspath(data_dir), "--config", str(config_path),
            "--patches-per-case", str(int(patches_per_case)), "--val-fraction", repr(float(val_fraction)),
            "--progress", progress]


def evaluate_argument_list(
    model: "str | os.PathLike",
    data_dir: "str | os.PathLike",
    out_dir: "str | os.PathLike",
    device: str = "auto",
    progress: str = "json",
    resume: bool = False,
) -> List[str]:
    """The ``medsynth evaluate`` arguments that score ``model`` on the validation cases of a prepared data folder
    (its ``manifest.json`` records them and their files), the report in ``out_dir``: the cases no training saw;
    ``resume`` goes on from a stopped evaluation's report there."""
    return ["evaluate", "--manifest", os.fspath(Path(data_dir) / "manifest.json"), "--model", os.fspath(model),
            "--out", os.fspath(out_dir), "--device", device, "--progress", progress, *(["--resume"] if resume else [])]


def write_config(config: object, path: Path) -> Path:
    """A config dataclass as the JSON file its loader reads; returns ``path``."""
    from .config import to_dict

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_dict(config), indent=2), encoding="utf-8")
    return path
