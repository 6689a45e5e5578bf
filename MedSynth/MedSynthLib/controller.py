"""The panel's logic without Qt: start one background ``medsynth`` job at a time, turn its events into panel
updates, and finish it (load the synthetic volume, feed the loss plot, clean the temporary files).

The job runner is injected: the panel uses ``start_cli_job`` (a ``MedSynthLogic.jobs.Job`` running
``PythonSlicer -m MedSynthLogic.cli``); tests pass a fake whose job replays scripted events.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import synthesis
from .estimate import Estimate, RateBook
from .events import PanelUpdate, describe_event, error_text
from .i18n import tr as _
from .outcomes import (JobOutcome, evaluation_outcome, remember_checkpoint, stopped_evaluation_note, stopped_training_message,
                       synthesis_outcome)
from .training_jobs import EvaluationRequest, PrepareRequest, TrainingRequest, prepare_arguments

#: ``runner(args) -> started job`` with ``poll()``, ``cancel(timeout)``, ``running``, ``state``,
#: ``error_message`` and ``elapsed_s`` (``MedSynthLogic.jobs.Job``'s interface).
JobRunner = Callable[[Sequence[str]], Any]


def start_cli_job(args: Sequence[str]) -> Any:
    """Start ``medsynth <args>`` in a child process with Slicer's start-up environment (outside Slicer: ours), in the
    folder that holds ``MedSynthLogic``: ``python -m`` puts its working folder first on the module path, and Slicer's
    (a user's home, a download folder) might hold a ``torch`` or ``MedSynthLogic`` of its own."""
    from MedSynthLogic import jobs

    slicer = sys.modules.get("slicer")
    base = slicer.util.startupEnvironment() if getattr(slicer, "app", None) is not None else None
    stop_file = Path(tempfile.gettempdir()) / f"MedSynth-stop-{uuid.uuid4().hex}"  # Cancel's way in on Windows
    return jobs.Job(jobs.python_command([*args, "--stop-file", stop_file]), cwd=jobs.PACKAGE_PARENT,
                    env=jobs.child_environment(base=base), stop_file=stop_file).start()


@dataclass
class SynthesisPlan:
    """Decided before launching: the input check's findings, whether they block, the time estimate, and the notes
    on the input's name and on its contrast enhancement (never blocking: the panel asks before it starts)."""

    findings: List[Any]
    blocked: bool
    message: str
    estimate: Estimate
    notes: List[str] = field(default_factory=list)
    #: The question before an earlier synthesis of the same input is replaced (``synthesis.replacement_question``).
    replaces: str = ""

    @property
    def needs_confirmation(self) -> bool:
        """Not blocked, but a forced finding or a note (name, enhancement) to see before the work starts."""
        return not self.blocked and bool(self.findings or self.notes)

    @property
    def questions(self) -> List[str]:
        """What the panel asks, in turn, before it starts (each OK or Cancel): the findings and notes, then whether
        an earlier synthesis may be replaced; none when blocked."""
        if self.blocked:
            return []
        return ([self.message] if self.needs_confirmation else []) + ([self.replaces] if self.replaces else [])


@dataclass
class RunningJob:
    job: Any
    kind: str
    context: Dict[str, Any] = field(default_factory=dict)


class MedSynthController:
    """One background job at a time for the panel; Qt-free, so it is tested against real MRML with a fake runner."""

    def __init__(self, scene: Any, runner: Optional[JobRunner] = None, temp_root: Optional[str] = None,
                 input_checker: Optional[synthesis.InputChecker] = None) -> None:
        self.scene = scene
        self.runner = runner or start_cli_job
        self.temp_root = temp_root
        self.input_checker = input_checker or synthesis.default_input_checker()
        self.rates = RateBook()
        self.current: Optional[RunningJob] = None
        self.training_plot: Any = None

    @property
    def busy(self) -> bool:
        """A job was started and its end has not been collected by ``poll`` yet (its result is still to load)."""
        return self.current is not None

    @property
    def kind(self) -> Optional[str]:
        return self.current.kind if self.current is not None else None

    # ------------------------------------------------------------------ synthesis
    def plan_synthesis(self, input_node: Any, request: synthesis.SynthesisRequest, output_node: Any = None) -> SynthesisPlan:
        """Check the input against the model and estimate the time, before anything is launched; ``output_node``:
        the panel's output volume, asked about when it holds an earlier synthesis of this input."""
        from MedSynthLogic import mrml
        from MedSynthLogic.model_header import read_header

        if input_node is None:
            raise ValueError(_("Select the input volume (the T1ce for the default model) first."))
        volume = mrml.volume_from_node(input_node)
        header = read_header(synthesis.model_path(request))
        available = int(header.get("stages") or 1)
        if request.stages and int(request.stages) > available:
            raise ValueError(_("The model has {stages} auto-context stage(s): set 'Auto-context stages' to {stages} or "
                               "fewer (0 runs them all).").format(stages=available))
        synthesis.check_size(volume, header)
        findings = synthesis.check_input(volume, header, self.input_checker)
        sequence_notes = synthesis.check_name(input_node.GetName() or "", header)
        sequence_notes += synthesis.check_enhancement(volume, header, findings)
        other_notes = synthesis.check_transform(input_node) + synthesis.check_coverage(volume, header)
        notes = sequence_notes + other_notes
        blocked = bool(findings) and not request.force
        source_name = synthesis.pair_names(header)[0]
        # The notes first: the findings' message ends with the one question (with Force) or the refusal.
        parts = [synthesis.notes_message(sequence_notes, ask=not findings, source_name=source_name,
                                         other=other_notes)] if notes else []
        parts += [synthesis.findings_message(findings, request.force, source_name)] if findings else []
        return SynthesisPlan(findings, blocked, "\n".join(parts), self.estimate(input_node, request, header), notes,
                             synthesis.replacement_question(input_node, output_node))

    def estimate(self, input_node: Any, request: synthesis.SynthesisRequest,
                 header: Optional[Dict[str, Any]] = None) -> Estimate:
        """How long synthesizing ``input_node`` will take (see ``MedSynthLib.estimate``); ``header``: the chosen
        model's, when the caller has read it already."""
        from MedSynthLogic import mrml
        from MedSynthLogic.model_header import read_header

        if input_node is None:
            raise ValueError(_("Select the input volume (the T1ce for the default model) first."))
        mrml.check_has_voxels(input_node)
        header = read_header(synthesis.model_path(request)) if header is None else header
        shape = synthesis.shape_seen(input_node.GetImageData().GetDimensions(), mrml.node_spacing(input_node), header)
        stages = synthesis.stages_to_run(request, header)
        return self.rates.estimate(shape, stages, synthesis.passes_to_run(request, stages), request.device)

    def estimate_text(self, settings: Any) -> str:
        """The panel's estimate line for its ``settings`` (a parameter node); empty when it cannot be estimated yet
        (no image, an unreadable model file)."""
        from MedSynthLogic.errors import MedSynthError

        try:
            return self.estimate(settings.inputVolume, synthesis.SynthesisRequest.from_settings(settings)).text()
        except (MedSynthError, OSError, ValueError):
            return ""

    def start_synthesis(self, input_node: Any, request: synthesis.SynthesisRequest, output_node: Any = None) -> None:
        """Write the input to a temporary file and start ``medsynth synthesize`` on it."""
        from MedSynthLogic import mrml
        from MedSynthLogic.model_header import read_header

        self._refuse_if_busy()
        if input_node is None:
            raise ValueError(_("Select the input volume (the T1ce for the default model) first."))
        mrml.check_has_voxels(input_node)
        synthesis.check_output_node(input_node, output_node)
        header = read_header(synthesis.model_path(request))
        work_dir = Path(tempfile.mkdtemp(prefix="MedSynth-", dir=self.temp_root))
        try:  # a neutral name: the child's name note must not read ours
            source = mrml.save_volume_node(input_node, work_dir / "source.nii.gz")
        except Exception:
            _remove(work_dir)
            raise
        output, uncertainty = work_dir / "synthetic_t2.nii.gz", work_dir / "uncertainty.nii.gz"
        context = {"input": input_node, "output_node": output_node, "output_path": output, "work_dir": work_dir,
                   "request": request, "header": header,
                   "shape": synthesis.shape_seen(input_node.GetImageData().GetDimensions(), mrml.node_spacing(input_node), header),
                   "uncertainty_path": uncertainty if request.uncertainty else None}
        self._start("synthesize", synthesis.synthesize_arguments(source, output, request, uncertainty), context)

    # ------------------------------------------------------------------ training and preparation
    def start_training(self, request: TrainingRequest) -> Any:
        """Start ``medsynth train`` with exactly the request's configs; returns the live loss plot (a ``TrainingPlot``)."""
        from MedSynthLogic import mrml

        self._refuse_if_busy()
        config_dir = Path(tempfile.mkdtemp(prefix="MedSynth-train-", dir=self.temp_root))
        args = request.arguments(config_dir)
        self.training_plot = mrml.TrainingPlot(self.scene, iterations_per_stage=request.train_config.iterations)
        try:
            self._start("train", args, {"work_dir": config_dir, "out_model": Path(request.out_model)})
        except Exception:
            self._drop_empty_plot()
            raise
        return self.training_plot

    def _drop_empty_plot(self) -> None:
        """A training that ended before its first loss leaves no empty chart behind (a second try would add another)."""
        if self.training_plot is not None and self.training_plot.number_of_rows == 0:
            self.training_plot.remove()
            self.training_plot = None

    def start_prepare(self, request: PrepareRequest) -> None:
        """Start ``medsynth prepare`` on a folder of cases, in the background, with one progress event per case."""
        self._refuse_if_busy()
        config_dir = Path(tempfile.mkdtemp(prefix="MedSynth-prepare-", dir=self.temp_root))
        self._start("prepare", prepare_arguments(request, config_dir), {"work_dir": config_dir,
                                                                         "data_dir": Path(request.data_dir)})

    def start_evaluation(self, request: EvaluationRequest) -> None:
        """Start ``medsynth evaluate`` of a model file on the validation cases of a prepared data folder."""
        self._refuse_if_busy()
        self._start("evaluate", request.arguments(), {"report_dir": Path(request.report_dir)})

    # ------------------------------------------------------------------ running
    def poll(self) -> Tuple[List[PanelUpdate], Optional[JobOutcome]]:
        """Panel updates for the events since the last call, and the outcome once the job has ended."""
        running = self.current
        if running is None:
            return [], None
        updates: List[PanelUpdate] = []
        outcome: Optional[JobOutcome] = None
        for event in running.job.poll():
            if event.get("event") == "exit":
                outcome = self._finish_reporting_errors(running)
                continue
            if running.kind == "train":
                remember_checkpoint(running.context, event)
            try:
                if running.kind == "train" and self.training_plot is not None:
                    self.training_plot.add_event(event)
                updates.append(describe_event(event, running.kind))
            except Exception as exc:  # one unreadable event must not leave the panel busy: the exit comes only once
                logging.exception("MedSynth: could not show a progress event")
                updates.append(PanelUpdate(log=_("Could not read a progress event ({error}): {event}").format(
                    error=exc, event=event)))
        return updates, outcome

    def _finish_reporting_errors(self, running: RunningJob) -> JobOutcome:
        """The job's outcome; an unexpected error while loading its result becomes a failed outcome the panel shows
        (it escaped the timer's slot, and the panel never heard that the job had ended)."""
        from MedSynthLogic import jobs

        try:
            return self._finish(running)
        except Exception as exc:
            logging.exception("MedSynth: could not finish the job")
            return JobOutcome(running.kind, jobs.FAILED, _("The job ended, but its result could not be loaded: {error}")
                              .format(error=exc))

    #: How long Stop waits for a training to checkpoint before ending it: a U-Net iteration on a 2-core CPU can take
    #: longer than the 30 s it waited, and the kill then lost the work since the last checkpoint (a review, session 42).
    TRAINING_STOP_WAIT_S = 600.0

    def stop_wait_s(self) -> float:
        """How long stopping the running job waits for it before ending it: a training saves its checkpoint first."""
        return self.TRAINING_STOP_WAIT_S if self.kind == "train" else 5.0

    def cancel(self, timeout: float = 5.0, background: bool = False) -> None:
        """Cancel (synthesis, preparation) or stop (training keeps its last checkpoint) the running job;
        ``background``: without waiting for it here (a training saves its checkpoint first, which can take a
        minute the panel must not freeze for); :meth:`poll` collects its end either way."""
        if self.current is None:
            return
        if background:
            threading.Thread(target=self.current.job.cancel, kwargs={"timeout": timeout}, daemon=True).start()
        else:
            self.current.job.cancel(timeout=timeout)

    def discard(self, kinds: Tuple[str, ...] = ("synthesize", "prepare", "train", "evaluate"), background: bool = False) -> bool:
        """Stop a running job of ``kinds`` and forget it with its temporary folder (the input image): the scene
        closes, or the application quits, so its result must not land in another scene. A training's loss plot
        belonged to the closing scene and is let go. ``background``: stop it on a thread (a scene close must not
        freeze the panel for the child's grace time; at quit the caller waits). Returns whether a job was discarded."""
        self.training_plot = None
        running = self.current
        if running is None or running.kind not in kinds:
            return False
        wait = self.stop_wait_s()  # at quit, 5 s then a kill lost a training's work since its last checkpoint
        self.current = None

        def stop() -> None:
            running.job.cancel(timeout=wait)
            _remove(running.context.get("work_dir"))  # after the child stopped reading it

        if background:
            threading.Thread(target=stop, daemon=True).start()
        else:
            stop()
        return True

    def _refuse_if_busy(self) -> None:
        if self.busy:
            raise RuntimeError(_("Another MedSynth job is running; wait for it or cancel it first."))

    def _start(self, kind: str, args: List[str], context: Dict[str, Any]) -> None:
        try:
            job = self.runner(args)
        except Exception:
            _remove(context.get("work_dir"))
            raise
        self.current = RunningJob(job, kind, context)

    def _finish(self, running: RunningJob) -> JobOutcome:
        from MedSynthLogic import jobs

        self.current = None
        job, kind, context = running.job, running.kind, running.context
        try:
            last = getattr(job, "last_error", None)
            refused = (last or {}).get("reason") == "evaluation_changed"  # the kept report is not one Evaluate goes on from
            kept = stopped_evaluation_note(context["report_dir"]) if kind == "evaluate" and not refused else ""
            if job.state == jobs.CANCELLED:
                message = _("Cancelled.") if kind != "train" else stopped_training_message(context)
                return JobOutcome(kind, jobs.CANCELLED, " ".join(filter(None, (message, kept))))
            if job.state != jobs.FINISHED:
                if kind == "train":
                    self._drop_empty_plot()
                message = error_text(last, kind) if last else job.error_message
                return JobOutcome(kind, jobs.FAILED, "\n".join(filter(None, (message or _("The process failed."), kept))))
            if kind == "synthesize":
                outcome = synthesis_outcome(self.scene, job.elapsed_s, context)
                if outcome.state == jobs.FINISHED:
                    request, header = context["request"], context["header"]
                    stages = synthesis.stages_to_run(request, header)
                    self.rates.record(request.device, context["shape"], stages,
                                      synthesis.passes_to_run(request, stages), job.elapsed_s)
                return outcome
            if kind == "evaluate":
                return evaluation_outcome(job.elapsed_s, context["report_dir"])
            result = context.get("out_model") or context.get("data_dir")
            message = _("Finished in {seconds} s: {result}").format(seconds=f"{job.elapsed_s:.0f}", result=result)
            return JobOutcome(kind, jobs.FINISHED, message, result)
        finally:
            _remove(context.get("work_dir"))


def _remove(folder: Optional[Path]) -> None:
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
