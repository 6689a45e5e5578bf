"""The model description the panel shows, built from a model file's header.

Only what the header states: the mapping, the stages, how many cases it was trained and validated on, how long
each stage trained, and the held-out evaluation (the numbers MODEL_CARD.md reports, rounded by
``MedSynthLogic.model_summary.held_out_figures`` as ``medsynth info`` rounds them). No
file-system path from the header reaches the panel (headers may name the folders they were built in), and the
description links to the model card, where the protocol and the limits are.
"""

from __future__ import annotations

import html
import logging
import os
import re
from pathlib import Path
from typing import Any, List, Mapping, Optional

from .i18n import tr as _

MODEL_CARD_URL = "https://github.com/medsynth/SlicerMedSynth/blob/main/MODEL_CARD.md"


def describe_model_file(path: "Optional[str | os.PathLike]" = None) -> str:
    """The description of a model file (default: the bundled model), or why there is none."""
    from MedSynthLogic.errors import MedSynthError
    from MedSynthLogic.model_header import bundled_model_path, read_header

    model = Path(path) if path is not None else bundled_model_path()
    try:
        header = read_header(model)
    except (MedSynthError, OSError) as exc:
        return _esc(_("No model information: {error}").format(error=exc))
    try:
        return describe_model(header, model.name)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:  # the panel's label must not crash on a header
        logging.warning("MedSynth: the header of %s has an unexpected form: %r", model, exc)
        return _esc(_("No model information: the header of {name} has an unexpected form.").format(name=model.name))


def describe_model(header: Mapping[str, Any], file_name: str) -> str:
    """Rich text (Qt's HTML subset) describing the model in ``header``; ``file_name`` is shown as its name."""
    config = header.get("model_config") or {}
    training = header.get("training") or {}
    stages = header.get("stages", config.get("stages", "?"))
    prior = config.get("prior") if isinstance(config.get("prior"), Mapping) else None
    names = {"name": f"<b>{_esc(file_name)}</b>", "source": _esc(config.get("source_name", "T1ce")),
             "target": _esc(config.get("target_name", "T2")), "stages": _esc(stages)}
    if prior:
        line = _("{name}: {source} → {target}, {stages} auto-context stage(s) on top of a frozen {prior_stages}-stage "
                 "model whose synthesis they refine.").format(prior_stages=_esc(prior.get("stages", "?")), **names)
    else:
        line = _("{name}: {source} → {target}, {stages} auto-context stage(s).").format(**names)
    lines = [line]
    data = _data_line(training.get("data") or {})
    if data:
        lines.append(data)
    schedule = _schedule_line(training)
    if schedule:
        lines.append(schedule)
    lines.append(_metrics_line(header.get("metrics") or {}))
    if header.get("error_map"):
        fitted_on = (header["error_map"].get("fitted_on") or {}) if isinstance(header["error_map"], dict) else {}
        validation = fitted_on.get("validation_cases") or []
        if validation:  # fit-error-map --cases named some: the panel said "its training cases" all the same
            lines.append(_("Uncertainty map: its expected error per voxel (a learned error map fitted on {n} cases, "
                           "{k} of them its validation cases).").format(n=len(fitted_on.get("cases") or []),
                                                                        k=len(validation)))
        else:
            lines.append(_("Uncertainty map: its expected error per voxel (a learned error map fitted on its training "
                           "cases)."))
    if header.get("created"):
        lines.append(_("Created {date}.").format(date=_esc(str(header["created"])[:10])))
    lines.append(_("Research use only, not for diagnosis.") + f' <a href="{MODEL_CARD_URL}">' + _("Model card") + "</a>.")
    return "<br>".join(line for line in lines if line)


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=False)


def _without_paths(text: str) -> str:
    """Drop parenthesised remarks and any word that looks like a path (it would name a folder of the build machine)."""
    text = re.sub(r"\s*\([^)]*\)", "", str(text))
    return " ".join(word for word in text.split() if "/" not in word and "\\" not in word).strip()


def _data_line(data: Mapping[str, Any]) -> str:
    from MedSynthLogic.model_summary import case_count

    if isinstance(data, str):
        return _("Training data: {data}.").format(data=_esc(_without_paths(data)))
    name = _without_paths(data.get("dataset", "")) if data.get("dataset") else ""
    counts: List[str] = []
    if data.get("train_cases"):
        counts.append(_("{count} training cases").format(count=case_count(data["train_cases"])))
    if data.get("val_cases"):
        counts.append(_("{count} held out for validation").format(count=case_count(data["val_cases"])))
    if not (name or counts):
        return ""
    name = name or _("paired cases")
    if counts:
        return _esc(_("Trained on {name}: {counts}.").format(name=name, counts=", ".join(counts)))
    return _esc(_("Trained on {name}.").format(name=name))


def _schedule_line(training: Mapping[str, Any]) -> str:
    """How long each stage trained: a list of entries in the shipped files (trained in several runs), the stage
    count and ``iterations_per_stage`` in a file that ``medsynth train`` wrote in one run."""
    trained = training.get("stages_trained")
    if not isinstance(trained, list):
        iterations = training.get("iterations_per_stage")
        if not iterations:
            return ""
        if isinstance(trained, int) and not isinstance(trained, bool):
            return _esc(_("Training: {iterations} iterations per stage, {stages} stage(s).").format(
                iterations=iterations, stages=trained))
        return _esc(_("Training: {iterations} iterations per stage.").format(iterations=iterations))
    parts = []
    for entry in (entry for entry in trained if isinstance(entry, Mapping)):
        stages = entry.get("stages")
        label = _stage_label(stages if isinstance(stages, list) else [stages] if stages is not None else [])
        if entry.get("iterations_trained") and entry.get("iterations_planned"):
            amount = _("{trained} of {planned} planned iterations").format(
                trained=entry["iterations_trained"], planned=entry["iterations_planned"])
        elif entry.get("iterations_per_stage"):
            amount = _("{iterations} iterations each").format(iterations=entry["iterations_per_stage"])
        else:
            continue
        parts.append(f"{label}: {amount}")
    return _esc(_("Training: {parts}.").format(parts="; ".join(parts))) if parts else ""


def _stage_label(stages: List[Any]) -> str:
    if not stages:
        return _("stages")
    if len(stages) == 1:
        return _("stage {stage}").format(stage=stages[0])
    return _("stages {first}–{last}").format(first=stages[0], last=stages[-1])


def _metrics_line(metrics: Mapping[str, Any]) -> str:
    from MedSynthLogic.model_summary import held_out_figures

    held_out = held_out_figures(metrics)
    if held_out is not None:
        return _esc(_("Held-out evaluation inside the brain, {count} cases: {figures}.").format(
            count=held_out[0], figures=held_out[1]))
    if metrics.get("psnr") is not None:
        return _esc(_("Validation during training only (patches, not a held-out evaluation): PSNR {psnr} dB.").format(
            psnr=f"{float(metrics['psnr']):.2f}"))
    return _("No evaluation in the model file.")
