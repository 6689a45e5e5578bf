"""The options of every ``medsynth`` subcommand, in one place, free of torch so ``medsynth --help`` is instant.

What each subcommand takes and its defaults live here; :mod:`.cli` maps each subcommand to the function that runs
it, and ``python -m MedSynthLogic.training`` (torchrun) reuses :func:`add_train_arguments`. Every help line states
its default.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable, Dict, Mapping, Tuple

from . import __version__
from .reporting import MODES

EXIT_CODES = """exit codes: 0 success, 1 internal error (a bug: please report it), 2 usage, 3 bad input image,
4 geometry mismatch, 5 bad data folder or HDF5 file, 6 bad model file, 7 output cannot be written,
8 out of memory or device missing, 9 training diverged (NaN loss), 130 cancelled"""
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SYNTHESIS_PRECISION_HELP = ("arithmetic: auto = fp16 on CUDA, bf16 on CPUs with AVX-512 BF16 or AMX (about 2x faster, "
                            "0.3%% of the peak from fp32), fp32 on other CPUs (default: auto)")


def add_progress_argument(p: argparse.ArgumentParser) -> None:
    """``--progress``, shared by every subcommand."""
    p.add_argument("--progress", choices=MODES, default="auto",
                   help="progress display: a bar or plain lines on stderr, JSON lines on stdout, or none "
                   "(default auto: a bar on a terminal, plain lines in a log)")


def add_stop_file_argument(p: argparse.ArgumentParser) -> None:
    """``--stop-file``, shared by every subcommand: how a front end stops a child where signals cannot reach it."""
    p.add_argument("--stop-file", default=None,
                   help="stop as SIGTERM would (a training writes its checkpoint first) once this file exists: how "
                   "Slicer's panel stops a command on Windows, where it cannot signal one (default: none)")


def add_synthesize_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="the model's source volume, a T1ce for the bundled model (nii, nii.gz, mha, mhd, "
                   "nrrd, hdr), or a folder of them")
    p.add_argument("output", help="output volume path (or folder, for a folder source)")
    p.add_argument("--model", help="model file (.safetensors) (default: the bundled T1ce→T2 model)")
    p.add_argument("--stages", type=int, default=None, help="auto-context stages to run (default: all in the model)")
    p.add_argument("--device", default="auto", choices=DEVICES, help="where to run (default: auto, CUDA if present)")
    p.add_argument("--mask", help="brain mask volume of a single source file (default: source above the model's mask "
                   "threshold, 0 for a skull-stripped MR source; a folder source uses each case's <case>_mask image "
                   "beside it under BraTS naming)")
    p.add_argument("--flip-tta", action="store_true", help="average with the left-right flipped synthesis")
    p.add_argument("--uncertainty", metavar="UNC_FILE",
                   help="also write an uncertainty map there, in the output's unit: the model's learned expected "
                   "error when its file holds one (medsynth fit-error-map), else the flip and last-stage "
                   "disagreement; about 3x the time (default: none)")
    p.add_argument("--tile", type=int, default=None, help="output tile edge in voxels (default: chosen per device)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help=SYNTHESIS_PRECISION_HELP)
    p.add_argument("--pattern", default=None,
                   help="glob of the sources in a folder source, {case} naming the case, e.g. '*.nii.gz' or "
                   "'{case}/*T1C*.nii.gz' (default: BraTS naming with the model's source name in lower case, "
                   "<case>/<case>_t1ce.nii.gz or <case>_t1ce.nii.gz for the bundled model)")
    p.add_argument("--force", action="store_true",
                   help="synthesize even when the source fails the input checks (sequence, skull-stripped, spacing); "
                   "they become a warning, recorded in the output's header (default: refuse, exit 3)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def add_prepare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="folder of paired cases (BraTS naming <case>/<case>_t1ce.nii.gz + _t2), or see --csv")
    p.add_argument("out", help="output folder for train.h5, val.h5 and manifest.json")
    _add_suffixes(p, "the --config")
    _add_case_files(p)
    p.add_argument("--patches-per-case", type=int, default=1000,
                   help="patches sampled per case; the flipped copy adds as many (default: 1000)")
    p.add_argument("--val-cases", help="comma-separated case ids for validation (default: --val-fraction of the cases)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="fraction of the cases held out for validation when --val-cases is not given (default: 0.2)")
    p.add_argument("--inside-fraction", type=float, default=0.9,
                   help="fraction of patches centred inside the brain mask (default: 0.9)")
    p.add_argument("--geometry", choices=("resample", "refuse"), default="resample",
                   help="what to do with a target on another grid than its source (default: resample)")
    p.add_argument("--config", help="ModelConfig JSON: architecture, patch size, normalisation (default: the paper's)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the split and the patch positions (default: 0)")
    p.add_argument("--overwrite", action="store_true", help="replace the patch files of an earlier run in OUT")


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
                        f"AVX-512 BF16 or AMX 2-2.5x (G only; losses and D stay float32) (default: {config_default('train', 'precision')}, "
                        "or the --train-config value)")
    parser.add_argument("--device", default="auto",
                        help="auto, cpu, cuda or cuda:N; under torchrun each rank takes its LOCAL_RANK GPU (default: auto)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest checkpoint in the run folder; never replaces an existing "
                        "--out model without --overwrite")
    parser.add_argument("--run-dir", default=None, help="checkpoints, CSV log and loss plot; a run from stage 0 without --resume refuses a folder that "
                        "already holds checkpoints (default: <out stem>_run/ beside --out)")
    parser.add_argument("--start-stage", type=int, default=0,
                        help="keep the first N stages (from the newest checkpoint, or --init-model) and train stage N+1 on; "
                        "stages count from 1 in every message, so 1 keeps stage 1 and retrains stage 2 (default: 0)")
    parser.add_argument("--init-model", default=None,
                        help="with --start-stage N: take stages 1..N from this model file, e.g. to add a stage to a "
                        "trained model; if the file also holds stage N+1 (a candidate exported mid-stage), it goes on "
                        "from its weights at the exported iteration (default: none)")
    parser.add_argument("--prior-model", default=None,
                        help="a trained model file (e.g. the paper's FCN) whose synthesis stage 1 sees beside the source "
                        "and refines: auto-context across generator kinds; it stays frozen and travels in the new model "
                        "file (default: none)")
    parser.add_argument("--keep-checkpoints", type=int, default=3, help="newest checkpoints kept in the run folder, at least 1 (default: 3)")
    parser.add_argument("--keep-every", type=int, default=0, metavar="N",
                        help="also keep the checkpoints at every N-th iteration of a stage, e.g. the points an evaluation "
                        "plan names (default: 0, none)")
    parser.add_argument("--stop-after", type=int, default=None, metavar="N",
                        help="run N iterations of the schedule, write a checkpoint and exit with 0, so a long schedule "
                        "runs as a series of calls with --resume, e.g. under a job time limit (default: run to the end)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing model file")
    return parser


def build_torchrun_parser(description: str) -> argparse.ArgumentParser:
    """``python -m MedSynthLogic.training`` (what torchrun launches): the train options, JSON progress by default."""
    parser = argparse.ArgumentParser(prog="python -m MedSynthLogic.training", description=description)
    add_train_arguments(parser)
    parser.add_argument("--progress", choices=("json", "plain", "none"), default="json",
                        help="JSON lines on stdout from rank 0, plain lines on its stderr as `medsynth train` "
                        "prints them, or none (default: json)")
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


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint (.pt) from a training run folder")
    p.add_argument("out", help="model file to write (.safetensors)")
    p.add_argument("--stages", type=int, default=None, help="stages to export (default: the completed ones)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model file")


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", nargs="?", help="folder of cases with BraTS naming (<case>/<case>_t1ce.nii.gz, _t2, "
                   "optional _seg), or see --csv and --source-pattern (default: the files --manifest records)")
    p.add_argument("--out", required=True, help="folder for metrics.json, metrics.md (and figures with --figures)")
    p.add_argument("--model", help="model file (default: the bundled model)")
    p.add_argument("--lookup", help="evaluate a 1-D intensity lookup (from 'medsynth fit-lookup') instead of a model "
                   "(default: none, the model is evaluated)")
    p.add_argument("--cases", help="comma-separated case ids (default: --manifest's validation cases, else every case)")
    p.add_argument("--manifest", help="score the validation cases of this manifest.json from 'medsynth prepare', read "
                   "from the files it records unless DATA is given (default: none)")
    _add_suffixes(p, "the model or the lookup file")
    _add_case_files(p)
    p.add_argument("--stages", type=int, default=None, help="auto-context stages to run (default: all in the model)")
    p.add_argument("--flip-tta", action="store_true", help="average with the left-right flipped synthesis")
    p.add_argument("--device", default="auto", choices=DEVICES, help="where to run (default: auto, CUDA if present)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help=SYNTHESIS_PRECISION_HELP)
    p.add_argument("--figures", action="store_true", help="save source | synthetic | real | error PNGs per case")
    p.add_argument("--save-predictions", action="store_true", help="save the synthetic volumes too")
    p.add_argument("--label", default="", help="a name for this row in the report, e.g. 'L2 only' (default: none)")
    p.add_argument("--overwrite", action="store_true", help="replace the report of an earlier evaluation in --out")
    p.add_argument("--resume", action="store_true", help="go on from a stopped evaluation's report in --out: score only "
                   "the cases it has not scored, with the same predictor and options")


def add_fit_lookup_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="folder of cases with BraTS naming, or see --csv and --source-pattern")
    p.add_argument("out", help="output JSON file")
    p.add_argument("--cases", help="comma-separated case ids to fit on (default: all)")
    p.add_argument("--bins", type=int, default=256, help="intensity bins of the lookup, at least 2 (default: 256)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    _add_suffixes(p, "the --config")
    _add_case_files(p)
    p.add_argument("--config", help="ModelConfig JSON whose normalisation to use (default: the paper's)")


def add_fit_error_map_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="folder of cases with BraTS naming, or see --csv and --source-pattern (the model's "
                   "training cases among them)")
    p.add_argument("model", help="model file to fit the error map for")
    p.add_argument("out", help="output model file: the model with its error map")
    p.add_argument("--cases", help="comma-separated case ids to fit on (default: the model header's training cases)")
    p.add_argument("--voxels-per-case", type=int, default=300_000, help="brain voxels sampled per case (default: 300000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the voxel sample and the fit (default: 0)")
    p.add_argument("--variants", default="",
                   help="comma-separated sources to fit on besides each case's own: t1 (its non-contrast T1, "
                   "found by name), contrast (its T1ce through a gamma drawn in 0.7-1.4) (default: none)")
    p.add_argument("--image-features", action="store_true",
                   help="the map also reads two values of the whole source, the enhancement note's thin-bright and "
                   "bright-tail statistics (default: voxel features only)")
    p.add_argument("--device", default="cpu", choices=DEVICES,
                   help="where the model runs (default: cpu, which reproduces a map fitted here; cuda is faster but "
                   "runs its float32 convolutions in TF32 by default, so its map differs slightly)")
    _add_suffixes(p, "the model")
    _add_case_files(p)
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="medsynth_demo",
                   help="output folder; the demo's four phantom_* files in it are replaced on every run (default: ./medsynth_demo)")
    p.add_argument("--model", help="model file (default: the bundled model)")
    p.add_argument("--stages", type=int, default=None, help="auto-context stages to run (default: all in the model)")
    p.add_argument("--device", default=None, choices=DEVICES, help="where to run (default: auto, CUDA if present)")
    p.add_argument("--cases", type=int, default=None, metavar="N",
                   help="instead of the synthesis: write N paired phantom cases (T1ce, T2, tumour labels) in BraTS "
                   "layout into OUT/cases, to try prepare, train and evaluate on (replaced on every run; default: none, the "
                   "synthesis demo)")


def add_info_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="model file (default: the bundled model)")
    p.add_argument("--json", action="store_true", help="print the whole header as JSON instead of the summary")


def _add_case_files(p: argparse.ArgumentParser) -> None:
    """A data folder in another layout than BraTS naming (``dataset_cases.CaseFiles``)."""
    p.add_argument("--source-pattern", help="glob for sources with {case}, e.g. '{case}/*T1*.nii.gz' or "
                   "'sub-{case}_T1w.nii.gz' (default: BraTS naming)")
    p.add_argument("--target-pattern", help="glob for targets with {case} (default: BraTS naming)")
    p.add_argument("--csv", help="CSV with columns case,source,target[,mask][,seg] (default: find the files in DATA)")
    p.add_argument("--skip-incomplete", action="store_true",
                   help="leave out, with a warning, the cases without a partner instead of failing (default: fail)")


def _add_suffixes(p: argparse.ArgumentParser, whose: str) -> None:
    """The pair's file suffixes; by default the names of the pair that ``whose`` names, in lower case."""
    p.add_argument("--source-suffix", default=None,
                   help=f"BraTS-style file suffix of the source; refused when it names another sequence than {whose} "
                   f"(default: the source name of {whose} in lower case: t1ce for the T1ce→T2 default)")
    p.add_argument("--target-suffix", default=None,
                   help=f"BraTS-style file suffix of the target (default: the target name of {whose} in lower case: t2)")


#: (name, one-line help, options) of every subcommand, in the order --help lists them.
COMMANDS: Tuple[Tuple[str, str, Callable[[argparse.ArgumentParser], Any]], ...] = (
    ("synthesize", "synthesize a T2 from a T1ce volume, or another pair with its --model (or every volume in a folder)",
     add_synthesize_arguments),
    ("prepare", "turn a folder of paired volumes into HDF5 patch files", add_prepare_arguments),
    ("train", "train the adversarial model and its auto-context stages", add_train_arguments),
    ("export", "write a model file from a training checkpoint (after Stop or a cut-short run)", add_export_arguments),
    ("evaluate", "PSNR, SSIM and MAE inside the brain and the tumour", add_evaluate_arguments),
    ("fit-lookup", "fit the 1-D intensity lookup baseline on training cases", add_fit_lookup_arguments),
    ("fit-error-map", "fit a model's learned error map (--uncertainty) on its training cases", add_fit_error_map_arguments),
    ("demo", "phantom T1ce → synthetic T2 with the bundled model, plus a side-by-side PNG", add_demo_arguments),
    ("info", "summarize a model file: mapping, architecture, stages, training data, metrics, date", add_info_arguments),
)


def build_parser(handlers: Mapping[str, Callable[..., int]]) -> argparse.ArgumentParser:
    """The ``medsynth`` parser; ``handlers`` maps each subcommand name to the function that runs it (``args.func``)."""
    missing = [name for name, _help, _add in COMMANDS if name not in handlers]
    if missing:
        raise ValueError(f"no handler for medsynth {', '.join(missing)}")
    parser = argparse.ArgumentParser(
        prog="medsynth",
        description="Synthesize a T2-weighted brain MRI from a T1ce (3D adversarial FCN with auto-context, Nie et al. 2018).",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"medsynth {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, text, add_arguments in COMMANDS:
        p = sub.add_parser(name, help=text, epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
        add_progress_argument(p)
        add_stop_file_argument(p)
        add_arguments(p)
        p.set_defaults(func=handlers[name])
    return parser
