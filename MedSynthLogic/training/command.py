"""``medsynth train``: the adversarial training loop of Nie et al. with auto-context (ACM) stages.

The command layer: configs from the parsed options, SIGTERM/SIGINT as a checkpoint-and-stop, and ``main`` for
``python -m MedSynthLogic.training`` (what torchrun launches), which reports JSON-lines events from rank 0.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from .. import distributed as dist_utils
from ..config import ModelConfig, TrainConfig, json_setting, load_json_config
from ..errors import Cancelled, UsageError
from ..options import build_torchrun_parser, config_overrides
from .loop import train
from .session import Callback


def install_signal_handlers(stop_event: threading.Event) -> Callable[[], None]:
    """Make SIGTERM/SIGINT (and Windows' Ctrl-Break, SIGBREAK, whose default ends the process at once) set
    ``stop_event`` (checkpoint, then stop); returns a function restoring the old handlers.

    Only the main thread may install handlers; elsewhere (Slicer, a worker thread) this does nothing and the
    caller stops training through ``stop_event`` directly. A second SIGINT interrupts at once.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old: Dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        if stop_event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop_event.set()

    for sig in (signal.SIGTERM, signal.SIGINT, *([signal.SIGBREAK] if hasattr(signal, "SIGBREAK") else [])):
        old[sig] = signal.signal(sig, handler)

    def restore() -> None:
        for sig, h in old.items():
            signal.signal(sig, h)

    return restore


def configs_from_args(args: argparse.Namespace) -> Tuple[ModelConfig, TrainConfig]:
    """ModelConfig and TrainConfig from the JSON files and the command-line overrides."""
    model_overrides, train_overrides = config_overrides(args)
    if getattr(args, "prior_model", None):
        from ..model_file import read_header

        model_overrides["prior"] = read_header(args.prior_model)["model_config"]
    model_cfg = load_json_config(args.model_config, ModelConfig, model_overrides)
    train_cfg = load_json_config(args.train_config, TrainConfig, {**train_overrides, "stages": model_cfg.stages})
    written = json_setting(args.train_config, "stages")
    if written is not None and model_overrides.get("stages") is None and written != model_cfg.stages:
        # the model config decides: the train file's value was replaced without a word (a config review)
        raise UsageError(f"The train config {args.train_config} sets stages {written}, the model config "
                         f"{model_cfg.stages}: the model config's is the one trained.",
                         "Remove stages from the train config, set it in the model config, or pass --stages.")
    return model_cfg, train_cfg


def train_from_args(
    args: argparse.Namespace, callback: Optional[Callback] = None, stop_event: Optional[threading.Event] = None
) -> Optional[Path]:
    """Run :func:`train` from parsed :func:`add_train_arguments` options; SIGTERM/SIGINT checkpoint and stop.

    None: ``--stop-after`` ended this call with a checkpoint before the schedule's end.
    """
    from ..atomic import check_output_path

    model_cfg, train_cfg = configs_from_args(args)
    data = Path(args.data)
    # --overwrite must never let the model replace what trains it (the next run found no readable train.h5)
    out = check_output_path(args.out, overwrite=True, inputs=(data / "train.h5", data / "val.h5", data / "manifest.json",
                                                              args.init_model, args.prior_model))
    if out.exists() and not args.overwrite:
        # --resume too: the model exists once its run finished, and resuming a finished run must not rewrite it.
        # Every rank refuses at once: a rank left waiting for rank 0 would hang until torchrun kills it.
        from ..errors import OutputError

        hint, reason = "Pass --overwrite to replace it, or choose another --out.", "output_exists"
        if args.resume:
            hint = "A run that wrote its model has nothing to resume; pass --overwrite to write it again, or another --out."
            reason = "model_written"
        raise OutputError(f"The model {out} exists already.", hint, reason=reason)
    stop = stop_event or threading.Event()
    restore = install_signal_handlers(stop)
    try:
        return train(
            args.data,
            out,
            model_cfg,
            train_cfg,
            device=args.device,
            resume=args.resume,
            run_dir=args.run_dir,
            callback=callback,
            stop_event=stop,
            start_stage=args.start_stage,
            command=list(sys.argv),
            keep_checkpoints=args.keep_checkpoints,
            keep_every=args.keep_every,
            init_model=args.init_model,
            prior_model=args.prior_model,
            stop_after=args.stop_after,
        )
    finally:
        restore()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m MedSynthLogic.training`` (what torchrun launches): JSON-lines events from rank 0 only on stdout,
    so a job reports one error or one ``done``; each process names itself on stderr when it fails."""
    from ..errors import MedSynthError
    from ..progress import done_event, error_event
    from ..reporting import Reporter, failure_event

    args = build_torchrun_parser(__doc__.splitlines()[0]).parse_args(argv)
    rank = dist_utils.int_env("RANK", 0)
    report = Reporter(args.progress) if args.progress != "none" and rank == 0 else None
    try:
        out = train_from_args(args, callback=report)
    except MedSynthError as exc:
        if report is not None:  # one error event per job; every process still says on stderr why it ended
            report(failure_event(exc))
        where = "" if rank == 0 else f" (process {rank})"
        sys.stderr.write(f"medsynth train{where}: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        if report is not None:
            report(error_event("Interrupted.", Cancelled.exit_code))
        return Cancelled.exit_code
    if report is not None:
        report(done_event(out) if out is not None else done_event(None, stopped_after=args.stop_after))
    return 0
