"""What a training run will do, checked against the data folder before any work starts."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..config import ModelConfig, TrainConfig, to_dict
from ..errors import DataError, UsageError
from ..intensity_augment import IntensityAugment

PREPARE_HINT = "Run `medsynth prepare <cases> <data_dir>` first to create train.h5, val.h5 and manifest.json."


@dataclass
class TrainingPlan:
    """What a run will do, checked before any work starts so a bad data folder fails in a second, not in hours."""

    data_dir: Path
    train_h5: Path
    val_h5: Optional[Path]
    manifest: Dict[str, Any]
    n_train: int
    n_val: int
    train_cases: List[str]
    val_cases: List[str]
    source_patch: int
    target_patch: int
    stages: int
    iterations: int
    batch_size: int
    warnings: List[str] = field(default_factory=list)
    #: The alternate source's patch file (``TrainConfig.alt_source_data``), or None.
    alt_train_h5: Optional[Path] = None

    def summary(self) -> Dict[str, Any]:
        """The data part of the model file's training record; ``source`` / ``target``: the pair's file names (the
        first case's, its id written ``<case>``), which `medsynth info` shows."""
        cases = self.manifest.get("cases") or {}
        first = min(cases) if cases else None
        files = {role: Path(str(cases[first][role])).name.replace(first, "<case>")
                 for role in ("source", "target") if first and isinstance(cases[first], dict) and cases[first].get(role)}
        return {
            "data_dir": str(self.data_dir),
            "train_patches": self.n_train,
            "val_patches": self.n_val,
            "train_cases": len(self.train_cases),
            "train_case_ids": list(self.train_cases),
            "val_cases": len(self.val_cases),
            "val_case_ids": list(self.val_cases),
            # training cases with a mask file: a synthesis without one reads a threshold mask it was not trained on
            "mask_files": sum(1 for c in self.train_cases if isinstance(cases.get(c), dict) and cases[c].get("mask")),
            "source_patch": self.source_patch,
            "target_patch": self.target_patch,
            "manifest": {k: v for k, v in self.manifest.items() if k not in ("cases", "splits")},
            **files,
        }


def plan_training(data_dir: os.PathLike | str, model_cfg: ModelConfig, train_cfg: TrainConfig) -> TrainingPlan:
    """Check the data folder against the configs; raise DataError/UsageError with what to do."""
    from ..h5data import patch_file_info

    if train_cfg.log_every < 1 or train_cfg.val_every < 0 or train_cfg.checkpoint_every < 0:
        raise UsageError("log_every must be ≥ 1; val_every and checkpoint_every ≥ 0 (0 = only at stage end).")
    check_augmentation_applies(model_cfg, train_cfg)
    d = Path(data_dir)
    if not d.is_dir():
        raise DataError(f"The data folder {d} does not exist.", PREPARE_HINT)
    train_h5 = d / "train.h5"
    if not train_h5.is_file():
        raise DataError(f"{train_h5} is missing.", PREPARE_HINT)
    info = patch_file_info(train_h5)
    check_patch_sizes(info, model_cfg, train_h5)
    manifest: Dict[str, Any] = {}
    if (d / "manifest.json").is_file():
        try:
            manifest = json.loads((d / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{d / 'manifest.json'} is not readable JSON ({exc}).", PREPARE_HINT) from exc
    warnings: List[str] = []
    val_h5: Optional[Path] = d / "val.h5"
    n_val, val_cases = 0, []
    if val_h5.is_file():
        vinfo = patch_file_info(val_h5)
        check_patch_sizes(vinfo, model_cfg, val_h5)
        n_val, val_cases = vinfo["n_patches"], list(vinfo["case_ids"])
    else:
        val_h5 = None
        warnings.append("no val.h5: training runs without validation")
    runs = {"train.h5": info["prepare_run"], **({"val.h5": vinfo["prepare_run"]} if val_h5 is not None else {})}
    if (d / "manifest.json").is_file():
        runs["manifest.json"] = str(manifest.get("prepare_run", ""))
    check_one_prepare_run(d, runs)
    if train_cfg.adversarial and model_cfg.loss.lambda_adv > 0 and train_cfg.warmup_iterations >= train_cfg.iterations:
        warnings.append(f"the adversarial term waits for {train_cfg.warmup_iterations} warm-up iterations per stage and "
                        f"this run has {train_cfg.iterations}, so it trains without it: give more iterations than the "
                        "warm-up for the paper's adversarial method")
    if model_cfg.generator.kind == "unet3d" and train_cfg.num_workers > 0:
        warnings.append(f"num_workers {train_cfg.num_workers} is not used by a unet3d run: its crops are cut and "
                        "augmented in the training process, between iterations (set it to 0)")
    alt_h5 = check_alt_source(train_cfg, model_cfg, list(info["case_ids"])) if train_cfg.alt_source_p > 0 else None
    return TrainingPlan(
        data_dir=d,
        train_h5=train_h5,
        val_h5=val_h5,
        manifest=manifest,
        n_train=info["n_patches"],
        n_val=n_val,
        train_cases=list(info["case_ids"]),
        val_cases=val_cases,
        source_patch=info["source_patch"],
        target_patch=info["target_patch"],
        stages=model_cfg.stages,
        iterations=train_cfg.iterations,
        batch_size=train_cfg.batch_size,
        warnings=warnings,
        alt_train_h5=alt_h5,
    )


def check_one_prepare_run(data_dir: Path, runs: Dict[str, str]) -> None:
    """Refuse a data folder whose files come from different ``medsynth prepare`` runs.

    ``runs`` maps each present file to the run id it records (empty: written before ids existed). A prepare writes
    the same id into all its files, so when one file has an id every other file must have it too: a mix is what an
    ``--overwrite`` that stopped between its renames leaves, and its splits may hold other cases, normalised otherwise.
    """
    if not any(runs.values()) or len(set(runs.values())) == 1:
        return
    said = ", ".join(f"{name} {run[:8] or 'without an id (an older prepare)'}" for name, run in sorted(runs.items()))
    raise DataError(f"The data folder {data_dir} holds files of different `medsynth prepare` runs ({said}).",
                    "Run the same `medsynth prepare … --overwrite` into this folder again (a prepare that stopped "
                    "while it published its files leaves such a mix), or prepare into a new folder.")


def check_alt_source(train_cfg: TrainConfig, model_cfg: ModelConfig, case_ids: List[str]) -> Path:
    """The alternate source's train.h5, refused unless it holds exactly the training cases, made with the same model
    config: a crop swaps its source for the same case's, voxel for voxel (a nie2018 run refuses ``alt_source_p`` in
    :func:`check_augmentation_applies`, which runs first)."""
    from ..h5data import patch_file_info

    path = Path(train_cfg.alt_source_data) / "train.h5"
    if not path.is_file():
        raise DataError(f"The alternate source's {path} is missing.",
                        "Run `medsynth prepare` on the same cases with --source-pattern for the other contrast and "
                        "the same --val-cases and model config.")
    info = patch_file_info(path)
    check_patch_sizes(info, model_cfg, path)
    if sorted(info["case_ids"]) != sorted(case_ids):
        raise DataError(f"{path} holds the cases {sorted(info['case_ids'])}, the training data {sorted(case_ids)}.",
                        "Prepare the alternate source from the same cases with the same --val-cases.")
    return path


#: The IntensityAugment settings (TrainConfig's aug_ + name): changes of a patch's source intensities, which the
#: paper's FCN's patches take too.
PATCH_AUGMENTATIONS = frozenset(f.name for f in fields(IntensityAugment) if f.name != "pivot")


def check_augmentation_applies(model_cfg: ModelConfig, train_cfg: TrainConfig) -> None:
    """Refuse augmentation settings that a run would ignore: the U-Net's crops are cut, rotated and given contexts
    for other contrasts on the fly, the paper's FCN trains on stored patches whose contexts are fixed, so a nie2018
    run takes the intensity changes (:data:`PATCH_AUGMENTATIONS`) and would silently ignore the rest, and the
    crops' alternate source (``alt_source_p``) too."""
    asked = [f.name for f in fields(train_cfg) if f.name.startswith("aug_") and getattr(train_cfg, f.name)
             and f.name[len("aug_"):] not in PATCH_AUGMENTATIONS] + (["alt_source_p"] if train_cfg.alt_source_p else [])
    if asked and model_cfg.generator.kind != "unet3d":
        raise UsageError(
            f"The augmentation settings {', '.join(sorted(asked))} apply to the U-Net's crops only; the paper's FCN "
            "(nie2018) trains on stored 32³ patches, whose intensities alone can be changed.",
            "Set them to 0 (aug_context_gammas to []) for a nie2018 model, or train a unet3d model.")


def check_patch_sizes(info: Dict[str, Any], cfg: ModelConfig, path: Path) -> None:
    """A patch file made with another model config would train a model that cannot be applied as configured."""
    if info["source_patch"] != cfg.source_patch or info["target_patch"] != cfg.target_patch:
        raise DataError(
            f"{path} holds {info['source_patch']}³→{info['target_patch']}³ patches but the model needs "
            f"{cfg.source_patch}³→{cfg.target_patch}³.",
            "Re-run `medsynth prepare` with the same model config as `medsynth train`.", reason="data_for_another_model",
        )
    if info["channels"] != 1:
        raise DataError(f"{path} stores {info['channels']}-channel source patches; expected 1.", PREPARE_HINT)
    prepared = info.get("model_config") or {}
    pair = (prepared.get("source_name", cfg.source_name), prepared.get("target_name", cfg.target_name))
    if pair != (cfg.source_name, cfg.target_name):
        raise DataError(
            f"{path} was prepared as {pair[0]}→{pair[1]} but the model config names {cfg.source_name}→{cfg.target_name}; "
            "the model file would carry the wrong names, input checks and labels.",
            "Pass the --model-config that `medsynth prepare` was given (its source_name and target_name).",
            reason="data_for_another_model",
        )
    stored = prepared.get("normalisation")
    if stored is not None and stored != to_dict(cfg.normalisation):
        asked = to_dict(cfg.normalisation)
        differ = ", ".join(f"{key} {json.dumps(stored.get(key))} there, {json.dumps(asked.get(key))} in the model config"
                           for key in sorted(set(stored) | set(asked)) if stored.get(key) != asked.get(key))
        raise DataError(
            f"{path} was normalised otherwise than the model config asks ({differ}); a model must be trained with the "
            "normalisation it will be applied with.",
            "Re-run `medsynth prepare` with the same model config as `medsynth train`.", reason="data_for_another_model",
        )
    if info.get("pad", cfg.generator.halo) != cfg.generator.halo:
        raise DataError(
            f"{path} volumes are padded by {info['pad']} voxels but the generator's halo is {cfg.generator.halo}.",
            "Re-run `medsynth prepare` with the same model config as `medsynth train`.", reason="data_for_another_model",
        )
