"""The ``medsynth`` command: synthesize, prepare, train, evaluate, demo, info.

User mistakes end with a one-line message and a documented exit code (see :mod:`MedSynthLogic.errors`),
never a traceback. ``--progress json`` prints one JSON event per line on stdout, which is what the Slicer
module and other tools read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from . import __version__
from .errors import Cancelled, MedSynthError, ResourceError, UsageError
from .progress import done_event, error_event
from .reporting import MODES, Reporter, silence_stdout

EXIT_CODES = """exit codes: 0 success, 1 internal error (a bug: please report it), 2 usage, 3 bad input image,
4 geometry mismatch, 5 bad data folder or HDF5 file, 6 bad model file, 7 output cannot be written,
8 out of memory or device missing, 9 training diverged (NaN loss), 130 cancelled"""


def _add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--progress", choices=MODES, default="auto",
                   help="progress display: a bar or plain lines on stderr, JSON lines on stdout, or none "
                   "(default auto: a bar on a terminal, plain lines in a log)")


def _cancel_on_signals() -> Callable[[], bool]:
    """A cancel flag set by SIGTERM, so a killed synthesis stops between tiles and leaves no output."""
    import signal
    import threading

    flag = threading.Event()

    def handler(signum, frame):  # noqa: ARG001
        flag.set()

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:
        pass
    return flag.is_set


def cmd_synthesize(args: argparse.Namespace, report: Reporter) -> int:
    from .inference import synthesize_file, synthesize_folder
    from .model_file import bundled_model_path, load_model

    model_path = Path(args.model) if args.model else bundled_model_path()
    model = load_model(model_path, device="cpu", stages=args.stages)
    cancel = _cancel_on_signals()
    source = Path(args.source)
    common = dict(stages=args.stages, device=args.device, flip_tta=args.flip_tta, progress=report, cancel=cancel,
                  precision=args.precision)
    if args.tile is not None:
        common["tile"] = args.tile
    if source.is_dir():
        outputs = synthesize_folder(model, source, Path(args.output), pattern=args.pattern, overwrite=args.overwrite, **common)
        report(done_event(outputs=[str(p) for p in outputs]))
        if report.mode != "json":
            print(f"wrote {len(outputs)} synthetic volumes to {args.output}")
    else:
        out = synthesize_file(model, source, Path(args.output), mask_path=args.mask, overwrite=args.overwrite, **common)
        report(done_event(out))
        if report.mode != "json":
            print(f"wrote {out}")
    return 0


def cmd_prepare(args: argparse.Namespace, report: Reporter) -> int:
    from .config import ModelConfig, load_json_config
    from .dataset_prep import find_cases, prepare_dataset

    model_cfg = load_json_config(args.config, ModelConfig)
    cases = find_cases(
        args.data,
        source_suffix=args.source_suffix,
        target_suffix=args.target_suffix,
        source_pattern=args.source_pattern,
        target_pattern=args.target_pattern,
        csv=args.csv,
        skip_incomplete=args.skip_incomplete,
    )
    val_cases = [c for c in args.val_cases.split(",") if c] if args.val_cases else None
    manifest = prepare_dataset(
        cases,
        args.out,
        model_cfg,
        patches_per_case=args.patches_per_case,
        val_cases=val_cases,
        val_fraction=args.val_fraction,
        seed=args.seed,
        inside_fraction=args.inside_fraction,
        geometry=args.geometry,
        progress=report,
        overwrite=args.overwrite,
    )
    report(done_event(args.out))
    if report.mode != "json":
        splits = manifest.get("splits", {})
        print(f"prepared {len(cases)} cases into {args.out}: " + ", ".join(f"{k}: {len(v)} cases" for k, v in splits.items()))
    return 0


def cmd_train(args: argparse.Namespace, report: Reporter) -> int:
    from .training import train_from_args

    out = train_from_args(args, callback=report)
    report(done_event(out))
    if report.mode != "json":
        print(f"wrote model {out}")
    return 0


def cmd_export(args: argparse.Namespace, report: Reporter) -> int:
    from .training import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out, stages=args.stages, overwrite=args.overwrite)
    report(done_event(out))
    if report.mode != "json":
        print(f"wrote model {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace, report: Reporter) -> int:
    from .evaluation import cases_to_evaluate, evaluate_cases

    cases = cases_to_evaluate(args.data, case_ids=[c for c in (args.cases or "").split(",") if c], manifest=args.manifest,
                              source_suffix=args.source_suffix, target_suffix=args.target_suffix)
    summary = evaluate_cases(cases, args.out, model=args.model, lookup=args.lookup, stages=args.stages,
                             flip_tta=args.flip_tta, device=args.device, figures=args.figures,
                             save_predictions=args.save_predictions, label=args.label, target_name=args.target_suffix,
                             progress=report)["summary"]
    report(done_event(args.out, summary=summary))
    if report.mode != "json":
        for name, stats in summary.items():
            print(f"{name}: {stats['mean']:.4f} ± {stats['std']:.4f}")
    return 0


def cmd_fit_lookup(args: argparse.Namespace, report: Reporter) -> int:
    from .baselines import fit_intensity_lookup
    from .config import ModelConfig, load_json_config
    from .dataset_prep import find_cases, select_cases
    from .normalisation import brain_mask
    from .volume_io import align_pair, read_volume

    cfg = load_json_config(args.config, ModelConfig).normalisation
    cases = find_cases(args.data, source_suffix=args.source_suffix, target_suffix=args.target_suffix)
    if args.cases:
        cases = select_cases(cases, [c for c in args.cases.split(",") if c])

    def pairs():
        for case in cases:
            source, target, _ = align_pair(read_volume(case.source), read_volume(case.target), policy="resample")
            yield source.array, target.array, brain_mask(source.array, cfg.mask_threshold)

    lookup = fit_intensity_lookup(pairs(), cfg, bins=args.bins)
    lookup.save(args.out)
    report(done_event(args.out, cases=[c.case_id for c in cases]))
    if report.mode != "json":
        print(f"fitted a {args.bins}-bin intensity lookup on {len(cases)} cases: {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace, report: Reporter) -> int:
    from .demo import run_demo

    outputs = run_demo(Path(args.out), model_path=args.model, device=args.device, stages=args.stages, progress=report)
    report(done_event(outputs={k: str(v) for k, v in outputs.items()}))
    if report.mode != "json":
        for name, path in outputs.items():
            print(f"{name}: {path}")
    return 0


def cmd_info(args: argparse.Namespace, report: Reporter) -> int:
    from .model_file import bundled_model_path, read_header

    from .model_summary import summarize_header

    path = Path(args.model) if args.model else bundled_model_path()
    header = read_header(path)
    print(json.dumps(header, indent=2) if args.json else summarize_header(header, path.name))
    return 0


def _command(sub: argparse._SubParsersAction, name: str, help: str) -> argparse.ArgumentParser:
    """A subcommand with the exit-code table in its --help and the shared --progress option."""
    p = sub.add_parser(name, help=help, epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_progress(p)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medsynth",
        description="Synthesize a T2-weighted brain MRI from a T1ce (3D adversarial FCN with auto-context, Nie et al. 2018).",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"medsynth {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = _command(sub, "synthesize", "synthesize a T2 from a T1ce volume (or every volume in a folder)")
    p.add_argument("source", help="T1ce volume (nii, nii.gz, mha, mhd, nrrd, hdr) or a folder of them")
    p.add_argument("output", help="output volume path (or folder, for a folder source)")
    p.add_argument("--model", help="model file (.safetensors); default: the bundled T1ce→T2 model")
    p.add_argument("--stages", type=int, default=None, help="auto-context stages to run (default: all in the model)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to run (default: CUDA if present)")
    p.add_argument("--mask", help="brain mask volume (default: source > 0, for skull-stripped input)")
    p.add_argument("--flip-tta", action="store_true", help="average with the left-right flipped synthesis")
    p.add_argument("--tile", type=int, default=None, help="output tile edge in voxels (default: chosen per device)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="arithmetic: auto = fp16 on CUDA, fp32 on the CPU; bf16 is ~2x faster on CPUs with AVX512-BF16")
    p.add_argument("--pattern", default="*.nii.gz", help="file pattern for a folder source (default: *.nii.gz)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=cmd_synthesize)

    p = _command(sub, "prepare", "turn a folder of paired volumes into HDF5 patch files")
    p.add_argument("data", help="folder of paired cases (BraTS naming <case>/<case>_t1ce.nii.gz + _t2), or see --csv")
    p.add_argument("out", help="output folder for train.h5, val.h5 and manifest.json")
    p.add_argument("--source-suffix", default="t1ce", help="BraTS-style suffix of the source (default t1ce)")
    p.add_argument("--target-suffix", default="t2", help="BraTS-style suffix of the target (default t2)")
    p.add_argument("--source-pattern", help="glob for sources with {case}, e.g. '{case}/*T1*.nii.gz'")
    p.add_argument("--target-pattern", help="glob for targets with {case}")
    p.add_argument("--csv", help="CSV with columns case,source,target[,mask][,seg]")
    p.add_argument("--skip-incomplete", action="store_true", help="skip cases without a partner instead of failing")
    p.add_argument("--patches-per-case", type=int, default=1000, help="patches sampled per case (the flipped copy adds as many)")
    p.add_argument("--val-cases", help="comma-separated case ids for validation (default: --val-fraction of the cases)")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--inside-fraction", type=float, default=0.9, help="fraction of patches centred inside the brain mask")
    p.add_argument("--geometry", choices=("resample", "refuse"), default="resample",
                   help="what to do with a target on another grid than its source")
    p.add_argument("--config", help="ModelConfig JSON (architecture, patch size, normalisation); default: the paper's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_prepare)

    p = _command(sub, "train", "train the adversarial model and its auto-context stages")
    from .train_options import add_train_arguments

    add_train_arguments(p)
    p.set_defaults(func=cmd_train)

    p = _command(sub, "export", "write a model file from a training checkpoint (after Stop or a cut-short run)")
    p.add_argument("checkpoint", help="checkpoint (.pt) from a training run folder")
    p.add_argument("out", help="model file to write (.safetensors)")
    p.add_argument("--stages", type=int, default=None, help="stages to export (default: the completed ones)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_export)

    p = _command(sub, "evaluate", "PSNR, SSIM and MAE inside the brain and the tumour")
    from .evaluation import add_evaluate_arguments

    add_evaluate_arguments(p)
    p.set_defaults(func=cmd_evaluate)

    p = _command(sub, "fit-lookup", "fit the 1-D intensity lookup baseline on training cases")
    p.add_argument("data", help="folder of cases with BraTS naming")
    p.add_argument("out", help="output JSON file")
    p.add_argument("--cases", help="comma-separated case ids to fit on (default: all)")
    p.add_argument("--bins", type=int, default=256)
    p.add_argument("--source-suffix", default="t1ce")
    p.add_argument("--target-suffix", default="t2")
    p.add_argument("--config", help="ModelConfig JSON whose normalisation to use")
    p.set_defaults(func=cmd_fit_lookup)

    p = _command(sub, "demo", "phantom T1ce → synthetic T2 with the bundled model, plus a side-by-side PNG")
    p.add_argument("--out", default="medsynth_demo",
                   help="output folder; the demo's four phantom_* files in it are replaced on every run (default: ./medsynth_demo)")
    p.add_argument("--model", help="model file (default: the bundled model)")
    p.add_argument("--stages", type=int, default=None, help="auto-context stages to run (default: all in the model)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to run (default: auto, CUDA if present)")
    p.set_defaults(func=cmd_demo)

    p = _command(sub, "info", "summarize a model file: mapping, architecture, stages, training data, metrics, date")
    p.add_argument("model", nargs="?", help="model file (default: the bundled model)")
    p.add_argument("--json", action="store_true", help="print the whole header as JSON instead of the summary")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one ``medsynth`` command; returns its exit code (see README)."""
    try:
        return _run(argv)
    except BrokenPipeError:
        # stdout's reader left (`medsynth info | head`) after the work was done: what it read is all it wanted.
        silence_stdout()
        return 0


def _run(argv: Optional[Sequence[str]]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return UsageError.exit_code
    report = Reporter(getattr(args, "progress", "none"))
    try:
        return int(args.func(args, report) or 0)
    except MedSynthError as exc:
        return _fail(report, exc)
    except KeyboardInterrupt:
        return _fail(report, Cancelled("Interrupted."))
    except MemoryError:
        return _fail(report, ResourceError("Out of memory.", "Use a smaller --tile or a machine with more memory."))
    except RuntimeError as exc:
        if "out of memory" in str(exc).lower():
            return _fail(report, ResourceError(f"Out of memory: {exc}", "Use a smaller --tile or --device cpu."))
        raise
    finally:
        report.close()


def _fail(report: Reporter, exc: MedSynthError) -> int:
    try:
        report(error_event(str(exc), exc.exit_code, type=type(exc).__name__))
    except Cancelled:
        pass  # the JSON reader is gone; stderr still gets the message
    sys.stderr.write(f"medsynth: error: {exc}\n")
    return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
