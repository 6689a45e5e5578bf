"""The ``medsynth train`` options, kept free of torch so ``medsynth --help`` and light commands start fast."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

if TYPE_CHECKING:
    from .config import ModelConfig, TrainConfig


#: Options that set one config field: (flag, "model" or "train", dotted field, type, help). Their default is the
#: field's value in the config file given (--model-config/--train-config), else the dataclass default shown in --help.
CONFIG_OPTIONS: Tuple[Tuple[str, str, str, type, str], ...] = (
    ("--stages", "model", "stages", int, "auto-context stages"),
    ("--iterations", "train", "iterations", int, "iterations per stage"),
    ("--batch-size", "train", "batch_size", int, "patches per iteration and per process"),
    ("--lr-g", "train", "lr_g", float, "generator learning rate (Adam)"),
    ("--lr-d", "train", "lr_d", float, "discriminator learning rate (Adam)"),
    ("--lambda-adv", "model", "loss.lambda_adv", float, "λ1, weight of the adversarial term"),
    ("--lambda-l2", "model", "loss.lambda_l2", float, "λ2, weight of the L2 term"),
    ("--lambda-gdl", "model", "loss.lambda_gdl", float, "λ3, weight of the gradient-difference term"),
    ("--warmup-iterations", "train", "warmup_iterations", int, "iterations per stage without the adversarial term"),
    ("--val-every", "train", "val_every", int, "iterations between validations (0: none)"),
    ("--checkpoint-every", "train", "checkpoint_every", int, "iterations between checkpoints (0: only at stage ends)"),
    ("--log-every", "train", "log_every", int, "iterations between logged losses"),
    ("--num-workers", "train", "num_workers", int, "DataLoader workers (0 reads in the training process)"),
    ("--seed", "train", "seed", int, "random seed of weights and batches"),
)
#: Switches that turn a config field off: (flag, "model" or "train", dotted field, help).
CONFIG_SWITCHES: Tuple[Tuple[str, str, str, str], ...] = (
    ("--no-adversarial", "train", "adversarial", "train G with L2+GDL only (ablation); default: adversarial"),
    ("--no-residual", "model", "generator.residual",
     "no long-term residual (source not added to the output); default: residual"),
)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def config_default(kind: str, field: str) -> Any:
    """The dataclass default of a ``model`` (ModelConfig) or ``train`` (TrainConfig) field, e.g. "loss.lambda_l2"."""
    from .config import ModelConfig, TrainConfig

    value: Any = ModelConfig() if kind == "model" else TrainConfig()
    for part in field.split("."):
        value = getattr(value, part)
    return value


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The `train` options, shared by `medsynth train` and `python -m MedSynthLogic.training` (torchrun).

    Every help line states its default; config-backed options default to None here so that a value in a
    --model-config/--train-config file is kept unless the option is given.
    """
    parser.add_argument("--data", required=True, help="folder written by `medsynth prepare` (train.h5, val.h5, manifest.json)")
    parser.add_argument("--out", required=True, help="model file to write (.safetensors)")
    parser.add_argument("--model-config", default=None,
                        help="ModelConfig JSON: architecture, normalisation, loss weights (default: the paper's)")
    parser.add_argument("--train-config", default=None,
                        help="TrainConfig JSON; the options below override it (default: the defaults shown below)")
    for flag, kind, field, kind_type, text in CONFIG_OPTIONS:
        parser.add_argument(flag, type=kind_type, default=None, metavar="N" if kind_type is int else "X",
                            help=f"{text} (default: {config_default(kind, field)}, or the --{kind}-config value)")
    for flag, _kind, _field, text in CONFIG_SWITCHES:
        parser.add_argument(flag, action="store_true", help=text)
    parser.add_argument("--precision", default=None, choices=PRECISIONS,
                        help="auto: bf16/fp16 autocast on a GPU, float32 on the CPU; bf16 also speeds up CPUs with "
                        f"AVX-512 BF16 or AMX (experimental on the CPU) (default: {config_default('train', 'precision')}, "
                        "or the --train-config value)")
    parser.add_argument("--device", default="auto",
                        help="auto, cpu, cuda or cuda:N; under torchrun each rank takes its LOCAL_RANK GPU (default: auto)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest checkpoint in the run folder; never replaces an existing "
                        "--out model without --overwrite")
    parser.add_argument("--run-dir", default=None, help="checkpoints, CSV log and loss plot (default: <out stem>_run/ beside --out)")
    parser.add_argument("--start-stage", type=int, default=0,
                        help="retrain from this stage on, earlier stages from the newest checkpoint (default: 0)")
    parser.add_argument("--init-model", default=None,
                        help="with --start-stage N: take stages 0..N-1 from this model file, e.g. to add a stage to a "
                        "trained model (default: none)")
    parser.add_argument("--keep-checkpoints", type=int, default=3, help="newest checkpoints kept in the run folder (default: 3)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing model file")
    return parser


def config_overrides(args: argparse.Namespace) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The (ModelConfig, TrainConfig) overrides the parsed options ask for: dotted field → value (None: keep)."""
    overrides: Dict[str, Dict[str, Any]] = {"model": {}, "train": {}}
    for flag, kind, field, _type, _text in CONFIG_OPTIONS:
        overrides[kind][field] = getattr(args, _dest(flag), None)
    for flag, kind, field, _text in CONFIG_SWITCHES:
        overrides[kind][field] = False if getattr(args, _dest(flag), False) else None
    overrides["train"]["precision"] = getattr(args, "precision", None)
    return overrides["model"], overrides["train"]


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


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
) -> List[str]:
    """The ``medsynth train`` arguments that run exactly these configs (the Slicer module's train command).

    Both configs are written as JSON into ``config_dir`` and passed with ``--model-config``/``--train-config``,
    so every setting reaches the trainer through the same loader as a hand-written config file and no flag is
    spelled twice; only what is not a config (paths, device, resume, progress) is a flag.
    """
    from .config import to_dict

    folder = Path(config_dir)
    folder.mkdir(parents=True, exist_ok=True)
    model_path, train_path = folder / "model_config.json", folder / "train_config.json"
    model_path.write_text(json.dumps(to_dict(model_config), indent=2), encoding="utf-8")
    train_path.write_text(json.dumps(to_dict(train_config), indent=2), encoding="utf-8")
    args = ["train", "--data", os.fspath(data_dir), "--out", os.fspath(out_model),
            "--model-config", str(model_path), "--train-config", str(train_path),
            "--device", device, "--progress", progress]
    if run_dir is not None:
        args += ["--run-dir", os.fspath(run_dir)]
    if resume:
        args.append("--resume")
    return args
