"""The ``medsynth train`` options, kept free of torch so ``medsynth --help`` and light commands start fast."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

if TYPE_CHECKING:
    from .config import ModelConfig, TrainConfig


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The `train` options, shared by `medsynth train` and `python -m MedSynthLogic.training` (torchrun)."""
    parser.add_argument("--data", required=True, help="folder written by `medsynth prepare` (train.h5, val.h5, manifest.json)")
    parser.add_argument("--out", required=True, help="model file to write (.safetensors)")
    parser.add_argument("--model-config", default=None, help="ModelConfig JSON (default: the paper's architecture)")
    parser.add_argument("--train-config", default=None, help="TrainConfig JSON; the options below override it")
    parser.add_argument("--stages", type=int, default=None, help="auto-context stages (model config)")
    parser.add_argument("--iterations", type=int, default=None, help="iterations per stage")
    parser.add_argument("--batch-size", type=int, default=None, help="patches per iteration and per process")
    parser.add_argument("--lr-g", type=float, default=None)
    parser.add_argument("--lr-d", type=float, default=None)
    parser.add_argument("--no-adversarial", action="store_true", help="train G with L2+GDL only (ablation)")
    parser.add_argument("--lambda-adv", type=float, default=None, help="λ1, weight of the adversarial term")
    parser.add_argument("--lambda-l2", type=float, default=None, help="λ2, weight of the L2 term")
    parser.add_argument("--lambda-gdl", type=float, default=None, help="λ3, weight of the gradient-difference term")
    parser.add_argument("--no-residual", action="store_true", help="no long-term residual (source not added to the output)")
    parser.add_argument("--warmup-iterations", type=int, default=None, help="iterations per stage without the adversarial term")
    parser.add_argument("--val-every", type=int, default=None)
    parser.add_argument("--checkpoint-every", type=int, default=None)
    parser.add_argument("--log-every", type=int, default=None)
    parser.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (0 reads in the training process)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--precision", default=None, choices=("auto", "fp32", "bf16", "fp16"),
                        help="auto (default): bf16/fp16 autocast on a GPU, float32 on the CPU; bf16 also speeds up "
                        "CPUs with AVX-512 BF16 or AMX (experimental on the CPU)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (under torchrun each rank takes its LOCAL_RANK GPU)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the run folder")
    parser.add_argument("--run-dir", default=None, help="checkpoints, CSV log and loss plot (default: <out stem>_run/)")
    parser.add_argument("--start-stage", type=int, default=0, help="retrain from this stage on (earlier stages from the newest checkpoint)")
    parser.add_argument("--init-model", default=None,
                        help="with --start-stage N: take stages 0..N-1 from this model file (e.g. add a stage to a trained model)")
    parser.add_argument("--keep-checkpoints", type=int, default=3)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing model file")
    return parser


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
