"""What an ended job leaves for the panel: its result loaded (the synthetic volume into the scene, the evaluation's
report read) and the sentence the panel shows. The controller decides when a job has ended; this module, what its
end means.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict

from . import synthesis
from .i18n import tr as _


@dataclass
class JobOutcome:
    """How a job ended: ``state`` is MedSynthLogic.jobs' FINISHED, FAILED or CANCELLED."""

    kind: str
    state: str
    message: str
    result: Any = None


def settle_in(settings: Any, outcome: JobOutcome) -> None:
    """A finished job's result into the panel's settings: the synthesis becomes the output volume, a trained model
    the model to synthesize with, prepared data the data folder to train on."""
    from MedSynthLogic import jobs

    if outcome.state != jobs.FINISHED:
        return
    if outcome.kind == "synthesize":
        settings.outputVolume = outcome.result
    elif outcome.kind == "train":
        settings.model, settings.modelPath = synthesis.OTHER_MODEL, Path(outcome.result)
    elif outcome.kind == "prepare":
        settings.dataDir = Path(outcome.result)


def synthesis_outcome(scene: Any, elapsed_s: float, context: Dict[str, Any]) -> JobOutcome:
    """Load a finished synthesis (and its uncertainty map) into ``scene``; a file that cannot be read is a failed
    outcome the panel shows, not an exception in its timer, and an input removed while it ran ends it as cancelled
    (a review: the result came "finished" off its place, linked to a node gone)."""
    from MedSynthLogic import jobs
    from MedSynthLogic.errors import MedSynthError
    from MedSynthLogic.volume_io import read_volume

    request, header = context["request"], context["header"]
    if context["input"].GetScene() is not scene:  # its grid survives; its place, link and transform do not
        return JobOutcome("synthesize", jobs.CANCELLED, _(
            "The input volume was removed from the scene while the synthesis ran, so its result was not added: it "
            "could no longer be shown beside its input, linked to it or placed under its transform. Load the input "
            "again and synthesize it."))
    try:
        node = synthesis.store_result(scene, context["input"], context["output_node"],
                                      read_volume(context["output_path"]), synthesis.pair_names(header)[1])
    except (MedSynthError, OSError) as exc:
        return JobOutcome("synthesize", jobs.FAILED, _("Could not load the synthetic image: {error}").format(error=exc))
    done = _("Done in {seconds} s.").format(seconds=f"{elapsed_s:.0f}")
    if context["uncertainty_path"] is not None:  # the image is in the scene by now: a failed map must not orphan it
        try:
            synthesis.show_uncertainty(scene, context["uncertainty_path"], node,
                                       title=synthesis.uncertainty_title(request, header))
        except (MedSynthError, OSError) as exc:
            done += " " + _("The uncertainty map could not be shown: {error}").format(error=exc)
    return JobOutcome("synthesize", jobs.FINISHED, done, node)


def evaluation_outcome(elapsed_s: float, report_dir: Path) -> JobOutcome:
    """The report's mean figures and where it is; what makes them no held-out, accepted result comes first."""
    from MedSynthLogic import jobs

    try:
        report = json.loads((Path(report_dir) / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return JobOutcome("evaluate", jobs.FAILED, _("The evaluation ended, but its report could not be read: "
                                                     "{error}").format(error=exc))
    message = "\n".join([*report.get("notes", []), evaluation_summary(report.get("summary") or {}),
                         _("Finished in {seconds} s; the report is in {folder}.").format(
                             seconds=f"{elapsed_s:.0f}", folder=report_dir)])
    return JobOutcome("evaluate", jobs.FINISHED, message, report)


def stopped_evaluation_note(report_dir: Path) -> str:
    """What a stopped or failed evaluation kept: the report of the cases it scored, and that Evaluate goes on from
    it ("" where it scored none)."""
    from MedSynthLogic.evaluation_resume import STOPPED, read_report

    record = (read_report(report_dir) or {}).get(STOPPED)
    if not isinstance(record, dict):
        return ""
    return _("The report of the {done} of {total} cases scored is in {folder}; Evaluate goes on from it.").format(
        done=record.get("after"), total=record.get("of"), folder=report_dir)


def evaluation_summary(summary: Dict[str, Any]) -> str:
    """One line of an evaluation's mean figures (brain, then tumour), as ``metrics.md`` names them."""
    parts = []
    for key, label, unit, digits in (("psnr", _("PSNR"), " dB", 2), ("ssim", _("SSIM"), "", 3),
                                     ("psnr_tumour", _("tumour PSNR"), " dB", 2)):
        stats = summary.get(key) or {}
        if isinstance(stats.get("mean"), (int, float)):
            parts.append(f"{label} {stats['mean']:.{digits}f}{unit} (n={stats.get('n', '?')})")
    return _("Mean over the validation cases, inside the brain: {figures}").format(figures=", ".join(parts) or "—")


def remember_checkpoint(context: Dict[str, Any], event: Dict[str, Any]) -> None:
    """Keep, in a training job's ``context``, the newest checkpoint it wrote and the one it resumed from: what a
    stop leaves to resume from."""
    if event.get("event") == "checkpoint":
        context["checkpoint"] = event
    elif event.get("event") == "stage" and event.get("resumed_from") and "resumed_from" not in context:
        context["resumed_from"] = str(event["resumed_from"])


def stopped_training_message(context: Dict[str, Any]) -> str:
    """What a stopped training kept, from the checkpoints it reported: it said "the last checkpoint is kept" also when
    it was stopped before its first one (a review, session 42), where Resume starts the run again."""
    written = context.get("checkpoint")
    if written:
        return _("Stopped; its newest checkpoint is {name} (stage {stage}, iteration {iteration}): Resume goes on from "
                 "there.").format(name=Path(str(written.get("path", ""))).name, stage=int(written.get("stage", 0)) + 1,
                                  iteration=written.get("iteration"))
    if context.get("resumed_from"):
        return _("Stopped before a new checkpoint: Resume goes on from {name} again.").format(
            name=Path(context["resumed_from"]).name)
    return _("Stopped before its first checkpoint: nothing of this run was kept, and Resume starts it again.")
