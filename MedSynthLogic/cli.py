"""The ``medsynth`` command: synthesize, prepare, train, evaluate, demo, info.

User mistakes end with a one-line message and a documented exit code (see :mod:`MedSynthLogic.errors`),
never a traceback. ``--progress json`` prints one JSON event per line on stdout, which is what the Slicer
module and other tools read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence

from .errors import Cancelled, MedSynthError, ResourceError, UsageError
from .progress import done_event, log_event, warning_event
from .reporting import Reporter, failure_event, reader_gone, silence

if TYPE_CHECKING:
    from .dataset_cases import CaseFiles

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
    from .folder_sources import check_output_folder
    from .volume_io import check_image_output, read_volume

    source = Path(args.source)
    if source.is_dir() and args.uncertainty:
        raise UsageError("--uncertainty needs a single source file, not a folder.", "Run one file at a time with --uncertainty.")
    if source.is_dir() and args.mask:
        raise UsageError("--mask needs a single source file, not a folder: one mask cannot fit every case.",
                         "Put each case's mask beside its source as <case>_mask.nii.gz (BraTS naming), or run one file "
                         "at a time with --mask.")
    volume = None
    if source.is_dir():
        check_output_folder(args.output, source)
    else:
        check_image_output(args.output, overwrite=args.overwrite, inputs=(source, args.mask))
        volume = read_volume(source)  # an unreadable file is refused before torch loads (about 3 s on these CPUs)
    from .inference import synthesize_file, synthesize_folder
    from .model_file import bundled_model_path, load_model

    model_path = Path(args.model) if args.model else bundled_model_path()
    model = load_model(model_path, device="cpu", stages=args.stages)
    cancel = _cancel_on_signals()
    common = dict(stages=args.stages, device=args.device, flip_tta=args.flip_tta, progress=report, cancel=cancel,
                  precision=args.precision, force=args.force)
    if args.tile is not None:
        common["tile"] = args.tile
    if source.is_dir():
        outputs = synthesize_folder(model, source, Path(args.output), pattern=args.pattern, overwrite=args.overwrite, **common)
        report(done_event(outputs=[str(p) for p in outputs]))
        if report.mode != "json":
            print(f"wrote {len(outputs)} synthetic volume{'' if len(outputs) == 1 else 's'} to {args.output}")
    else:
        out = synthesize_file(model, source, Path(args.output), mask_path=args.mask, overwrite=args.overwrite,
                              uncertainty_path=args.uncertainty, source_volume=volume, **common)
        report(done_event(out, **({"uncertainty": args.uncertainty} if args.uncertainty else {})))
        if report.mode != "json":
            print(f"wrote {out}" + (f" and the uncertainty map {args.uncertainty}" if args.uncertainty else ""))
    return 0


def cmd_prepare(args: argparse.Namespace, report: Reporter) -> int:
    from .config import ModelConfig, load_json_config
    from .dataset_prep import prepare_dataset
    from .source_names import file_suffixes

    model_cfg = load_json_config(args.config, ModelConfig)
    _warn_default_pair(args, report, "prepare", model_cfg)
    source_suffix, target_suffix = file_suffixes(model_cfg, args.source_suffix, args.target_suffix)
    cases = _case_files(args).find(args.data, source_suffix, target_suffix)
    val_cases = _case_list(args.val_cases, "--val-cases")
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

    newest: Dict[str, Any] = {}

    def remember_checkpoints(event: Dict[str, Any]) -> None:  # where a --stop-after slice leaves the run
        if event.get("event") == "checkpoint":
            newest.update(event)
        report(event)

    out = train_from_args(args, callback=remember_checkpoints)
    if out is None:
        report(done_event(None, stopped_after=args.stop_after))
        if report.mode != "json":
            where = (f"the run is at stage {int(newest['stage']) + 1}, iteration {newest['iteration']} "
                     f"({newest['path']})" if newest else "the newest checkpoint in the run folder holds them")
            print(f"stopped after {args.stop_after} iterations of this call, as --stop-after asked; {where}: run the same "
                  "command with --resume to go on")
        return 0
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

    layout = [opt for opt, value in (("--source-pattern", args.source_pattern), ("--target-pattern", args.target_pattern),
                                     ("--source-suffix", args.source_suffix), ("--target-suffix", args.target_suffix),
                                     ("--skip-incomplete", args.skip_incomplete and not args.csv)) if value]
    if args.model and args.lookup:  # the lookup was scored and --model ignored, the report naming the lookup as the model
        raise UsageError("Give --model or --lookup, not both: each report scores one predictor.",
                         "Run evaluate once with --model and once with --lookup, into two --out folders.")
    if args.data is None and layout:
        raise UsageError(f"{', '.join(layout)} describe a data folder, but none was given.",
                         "Pass the folder: medsynth evaluate DATA ... (without DATA, --manifest's recorded files are used).")
    # a CSV names its own files (relative ones from its folder): it needs no data folder
    data = args.data if args.data is not None or not args.csv else os.path.dirname(os.path.abspath(args.csv))
    # the suffixes default to the scored pair's names in lower case, in cases_to_evaluate and evaluate_cases alike
    cases = cases_to_evaluate(data, case_ids=_case_list(args.cases), manifest=args.manifest,
                              source_suffix=args.source_suffix, target_suffix=args.target_suffix, model=args.model,
                              lookup=args.lookup, files=_case_files(args))
    summary = evaluate_cases(cases, args.out, model=args.model, lookup=args.lookup, stages=args.stages,
                             flip_tta=args.flip_tta, device=args.device, precision=args.precision, figures=args.figures,
                             save_predictions=args.save_predictions, label=args.label, target_name=args.target_suffix,
                             progress=report, overwrite=args.overwrite, resume=args.resume)["summary"]
    report(done_event(args.out, summary=summary))
    if report.mode != "json":
        for name, stats in summary.items():
            print(f"{name}: {stats['mean']:.4f} ± {stats['std']:.4f} (n={stats.get('n')})")
    return 0


def cmd_fit_lookup(args: argparse.Namespace, report: Reporter) -> int:
    from .atomic import check_output_path
    from .baselines import fit_intensity_lookup
    from .config import ModelConfig, load_json_config
    from .dataset_prep import select_cases, target_background
    from .case_reading import read_case
    from .source_names import file_suffixes

    model_cfg = load_json_config(args.config, ModelConfig)
    _warn_default_pair(args, report, "fit-lookup", model_cfg)
    cfg = model_cfg.normalisation
    source_suffix, target_suffix = file_suffixes(model_cfg, args.source_suffix, args.target_suffix)
    wanted = _case_list(args.cases)
    cases = _case_files(args).find(args.data, source_suffix, target_suffix, only=wanted)
    if wanted is not None:
        cases = select_cases(cases, wanted, where=str(args.data))
    check_output_path(args.out, overwrite=args.overwrite, inputs=[p for c in cases for p in (c.source, c.target, c.mask)])

    def pairs():  # the region evaluate scores: the case's mask file where it has one, every file on the source grid
        for case in cases:
            try:
                read = read_case(case, cfg.mask_threshold, tumour=False, target_fill=target_background(cfg.target))
            except MedSynthError as exc:
                raise exc.in_case(case.case_id) from exc
            for note in read.notes:
                report(warning_event("fit-lookup", f"{case.case_id}: {note}"))
            yield read.source.array, read.target.array, read.mask, read.scored

    lookup = fit_intensity_lookup(pairs(), cfg, bins=args.bins, names=(model_cfg.source_name, model_cfg.target_name),
                                  fitted_on=[c.case_id for c in cases])
    lookup.save(args.out)
    report(done_event(args.out, cases=[c.case_id for c in cases]))
    if report.mode != "json":
        print(f"fitted a {args.bins}-bin intensity lookup on {len(cases)} cases: {args.out}")
    return 0


def cmd_fit_error_map(args: argparse.Namespace, report: Reporter) -> int:
    from .error_map_fit import fit_error_map_for

    def line(text: str) -> None:
        if report.mode == "json":  # a warning as the event front ends show (the panel), not as a log line
            warned = text.startswith("warning: ")
            report(warning_event("fit-error-map", text[len("warning: "):]) if warned else log_event("stdout", text))
        else:
            print(text, flush=True)

    cases = _case_list(args.cases)
    out = fit_error_map_for(args.model, args.data, args.out, cases=cases, voxels_per_case=args.voxels_per_case,
                            seed=args.seed, device=args.device, overwrite=args.overwrite,
                            variants=[v.strip() for v in args.variants.split(",") if v.strip()], image_features=args.image_features,
                            report=line, source_suffix=args.source_suffix, target_suffix=args.target_suffix,
                            files=_case_files(args))
    report(done_event(out))
    if report.mode != "json":
        print(f"wrote {out}: {args.model} with a learned error map (medsynth synthesize --uncertainty uses it)")
    return 0


def cmd_demo(args: argparse.Namespace, report: Reporter) -> int:
    from .demo import run_demo, write_demo_cases

    if args.cases is not None and (args.model or args.stages is not None or args.device is not None):
        raise UsageError("--cases writes data and synthesizes nothing: --model, --stages and --device do not apply.",
                         "Leave them out with --cases.")
    if args.cases is not None:
        outputs = {"cases": write_demo_cases(Path(args.out), args.cases)}
    else:
        outputs = run_demo(Path(args.out), model_path=args.model, device=args.device or "auto", stages=args.stages,
                           progress=report)
    report(done_event(outputs={k: str(v) for k, v in outputs.items()}))
    if report.mode != "json":
        for name, path in outputs.items():
            print(f"{name}: {path}")
    return 0


def cmd_info(args: argparse.Namespace, report: Reporter) -> int:
    from .model_header import bundled_model_path, read_header
    from .model_summary import summarize_header

    path = Path(args.model) if args.model else bundled_model_path()
    header = read_header(path)
    print(json.dumps(header, indent=2) if args.json else summarize_header(header, path.name))
    return 0


#: The function that runs each subcommand; the options of each are in :mod:`.options`.
HANDLERS = {
    "synthesize": cmd_synthesize,
    "prepare": cmd_prepare,
    "train": cmd_train,
    "export": cmd_export,
    "evaluate": cmd_evaluate,
    "fit-lookup": cmd_fit_lookup,
    "fit-error-map": cmd_fit_error_map,
    "demo": cmd_demo,
    "info": cmd_info,
}


def build_parser() -> argparse.ArgumentParser:
    """The ``medsynth`` argument parser (imports no torch: ``medsynth --help`` is instant)."""
    from .options import build_parser as build

    return build(HANDLERS)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one ``medsynth`` command; returns its exit code (see README)."""
    try:
        return _run(argv)
    except OSError as exc:
        if not reader_gone(exc):
            raise
        # The reader of stdout left (`medsynth info | head`): like a command killed by SIGPIPE, not a success.
        silence(sys.stdout)
        return Cancelled.exit_code


def _run(argv: Optional[Sequence[str]]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return UsageError.exit_code
    report = Reporter(getattr(args, "progress", "none"))
    restore, watching = _interrupt_on_sigterm(), None
    try:
        watching = _stop_when_file_appears(getattr(args, "stop_file", None))
        return int(args.func(args, report) or 0)
    except MedSynthError as exc:
        return _fail(report, exc)
    except KeyboardInterrupt:
        return _fail(report, Cancelled("Interrupted."))
    except MemoryError:
        return _fail(report, ResourceError("Out of memory.", _memory_hint(args, device_memory=False),
                                           reason="out_of_memory"))
    except RuntimeError as exc:
        if "out of memory" in str(exc).lower():
            return _fail(report, ResourceError(f"Out of memory: {exc}", _memory_hint(args, device_memory=True),
                                               reason="out_of_memory"))
        raise
    finally:
        if watching is not None:
            try:
                watching.stop()
            except KeyboardInterrupt:  # the stop file appeared as the command ended: there is nothing left to stop
                pass
        restore()
        report.close()


def _memory_hint(args: argparse.Namespace, device_memory: bool) -> str:
    """What the command that ran out of memory can change (``device_memory``: the GPU's ran out): prepare had been
    told to use a --tile it does not have."""
    otherwise = "or --device cpu" if device_memory else "or a machine with more memory"
    if hasattr(args, "tile"):  # a U-Net's windows reach its whole field: on a brain-sized volume a tile cannot help
        return (f"Use a smaller --tile {otherwise} (a smaller tile lowers the memory of the paper's FCN; a U-Net "
                "model's tiles must each see its whole receptive field, so on a brain-sized volume they cannot).")
    if args.command == "train":
        return f"Use a smaller --batch-size {otherwise}."
    if args.command == "prepare":
        return "Each case is read whole: resample very large volumes first, or use a machine with more memory."
    if device_memory and hasattr(args, "device"):
        return "Run it with --device cpu, or on a machine with more memory."
    return "Use a machine with more memory."


def _interrupt_on_sigterm() -> Callable[[], None]:
    """Make SIGTERM (the panel's Cancel, a scheduler's stop) raise KeyboardInterrupt, so a command's own clean-up runs:
    Python's default ends the process at once, and a cancelled ``prepare`` left gigabytes of hidden temporary HDF5
    files in its output folder. ``synthesize`` and ``train`` install their own handlers over this one. Returns the
    function that restores the previous handler (off the main thread, where handlers cannot be set: nothing)."""
    import signal

    received = []

    def interrupt(signum: int, frame: Any) -> None:  # noqa: ARG001
        if not received:  # once: a second SIGTERM must not cut the clean-up the first one started
            received.append(signum)
            raise KeyboardInterrupt

    previous = {}
    for signum in (signal.SIGTERM, *([signal.SIGBREAK] if hasattr(signal, "SIGBREAK") else [])):  # Windows' Ctrl-Break
        try:
            previous[signum] = signal.signal(signum, interrupt)
        except ValueError:  # off the main thread
            return lambda: None

    def restore() -> None:
        for signum, handler in previous.items():
            if handler is not None:  # a handler not set from Python: nothing to put back
                signal.signal(signum, handler)

    return restore


class _StopWatch:
    """The end of a ``--stop-file`` watch: :meth:`stop` waits for a signal being sent, so none arrives once the
    command's SIGTERM handler is restored (the default action would end the process without its clean-up)."""

    def __init__(self) -> None:
        import threading

        self.lock, self.done = threading.Lock(), threading.Event()

    def stop(self) -> None:
        with self.lock:
            self.done.set()


def _stop_when_file_appears(path: Optional[str], every_s: float = 0.5) -> _StopWatch:
    """Watch for ``--stop-file`` on a thread and, once it exists, send this process's main thread SIGTERM, so the
    command stops exactly as a signal would stop it (a training checkpoints first). On Windows Slicer cannot signal
    its child (its CTRL_BREAK reaches only processes on its own console, which a GUI has not): the panel creates the
    file instead. A file there before the start is refused (it would stop every later run at once). Returns what
    ends the watch."""
    import signal
    import threading

    watch_state = _StopWatch()
    done = watch_state.done
    if not path:
        return watch_state
    if threading.current_thread() is not threading.main_thread():  # no handler here: SIGTERM would end the host
        raise UsageError("--stop-file works only when medsynth runs as a process of its own, not on a worker thread.",
                         "Start it as a child process (python -m MedSynthLogic.cli ...), or stop it with a cancel callback.")
    if os.path.exists(path):
        raise UsageError(f"The stop file {path} exists already: the command would stop at once.",
                         "Delete it (it is what stopped the last run), or pass another --stop-file.")
    main = threading.main_thread().ident

    def watch() -> None:
        while not done.wait(every_s):
            if not os.path.exists(path):
                continue
            with watch_state.lock:
                if done.is_set():  # the command ended meanwhile: its handler may be gone
                    return
                if hasattr(signal, "pthread_kill"):
                    signal.pthread_kill(main, signal.SIGTERM)  # also wakes a main thread blocked in a call
                else:
                    signal.raise_signal(signal.SIGTERM)
            return

    threading.Thread(target=watch, name="medsynth-stop-file", daemon=True).start()
    return watch_state


def _case_list(text: Optional[str], option: str = "--cases") -> Optional[List[str]]:
    """Comma-separated case ids, spaces around each ignored ("a, b" named " b", which no folder holds); None when
    the option was not given. Given but naming no case (``--cases "$UNSET"``) is refused: it used to mean every
    case, training cases included."""
    if text is None:
        return None
    cases = [case.strip() for case in text.split(",") if case.strip()]
    if not cases:
        raise UsageError(f"{option} {text!r} names no case.", f"Give comma-separated case ids, or leave {option} out.")
    return cases


def _warn_default_pair(args: argparse.Namespace, report: Reporter, command: str, model_cfg: Any) -> None:
    """Without ``--config`` the default pair (T1ce→T2) is used; file suffixes are checked against it, but files
    picked by pattern or CSV are not: a CT target fitted a percentile-normalised "T1ce→T2" lookup without a word."""

    picked = [opt for opt, value in (("--source-pattern", args.source_pattern), ("--target-pattern", args.target_pattern),
                                     ("--csv", args.csv)) if value]
    if args.config is None and picked:
        report(warning_event(command, f"{', '.join(picked)} pick the files, but without --config they are read as the "
                             f"default pair, {model_cfg.source_name}→{model_cfg.target_name}, with its normalisation: "
                             "pass --config with the pair's names (and a window normalisation for a CT)"))
    from .source_names import named_sequence

    for role, suffix, name in (("source", args.source_suffix, model_cfg.source_name),
                               ("target", args.target_suffix, model_cfg.target_name)):
        # a suffix the name reader knows is checked against the config (source_names.check_pair_suffixes); one it
        # does not ("mr", "ct", "pd") made a model that called itself T1ce→T2 without a word (a review)
        if suffix and suffix.lower() != name.lower() and named_sequence(suffix) is None:
            report(warning_event(command, f"the {role} files (suffix '{suffix}') are recorded as the "
                                 f"{'default ' if args.config is None else ''}config's {role}, {name}: its name goes "
                                 "into the model, its input checks and its output names; if they hold another image, "
                                 f"set \"{role}_name\" in {'a' if args.config is None else 'the'} --config"))


def _case_files(args: argparse.Namespace) -> "CaseFiles":
    """The data folder's layout options (BraTS naming when none is given)."""
    from .dataset_cases import CaseFiles

    return CaseFiles(args.source_pattern, args.target_pattern, args.csv, args.skip_incomplete)


def _fail(report: Reporter, exc: MedSynthError) -> int:
    try:
        report(failure_event(exc))
    except Cancelled:
        pass  # the JSON reader is gone; stderr still gets the message
    try:
        sys.stderr.write(f"medsynth: error: {exc}\n")
        sys.stderr.flush()
    except OSError as gone:
        if not reader_gone(gone):
            raise
        silence(sys.stderr)
    return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
