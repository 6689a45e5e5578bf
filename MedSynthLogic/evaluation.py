"""``medsynth evaluate`` as a library: synthesize held-out cases with a model (or a baseline) and score them.

Metrics follow one protocol (see :mod:`MedSynthLogic.metrics`): inside the brain mask, and inside the tumour
when a segmentation is present; the reference divided by its own 99.5th percentile in the mask, the prediction by
the model's output scale (its unit: 1 = the training targets' 99.5th percentile), both clipped to [0, 1].
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from . import __version__
from .atomic import as_output_error, make_output_folder, replace_file
from .case_reading import CaseOnSourceGrid, read_case
from .errors import Cancelled, DataError, MedSynthError, OutputError, UsageError
from .evaluation_resume import (NOTHING_KEPT, STOPPED, case_files, file_sha256, is_stopped, kept_cases, plain_names,
                                read_report, stopped_note, stopped_record)
from .progress import progress_event, warning_event

if TYPE_CHECKING:
    from .config import ModelConfig
    from .dataset_cases import CaseFiles
    from .dataset_prep import Case

PathLike = Union[str, "os.PathLike[str]"]
ProgressFn = Optional[Callable[[dict], None]]


def cases_to_evaluate(
    data_dir: Optional[PathLike],
    case_ids: Optional[Sequence[str]] = None,
    manifest: Optional[PathLike] = None,
    source_suffix: Optional[str] = None,
    target_suffix: Optional[str] = None,
    model: Optional[PathLike] = None,
    lookup: Optional[PathLike] = None,
    files: Optional["CaseFiles"] = None,
) -> List[Case]:
    """The cases of ``data_dir`` to score: ``case_ids`` (in that order), else the validation split of a
    ``manifest.json`` written by ``prepare_dataset``, else every case; an unknown id is refused, never skipped.
    The files' suffixes default to the pair that ``model`` or ``lookup`` scores (:func:`scored_pair`); ``files``
    describes a folder in another layout (``{case}`` patterns or a CSV). Without ``data_dir`` the cases' files are
    the ones the manifest records, so a folder in any layout is scored as ``prepare`` read it."""
    from .dataset_cases import CaseFiles
    from .dataset_prep import select_cases
    from .source_names import file_suffixes

    wanted: Optional[List[str]] = list(case_ids) if case_ids else None
    if data_dir is None:
        if manifest is None:
            raise UsageError("Nothing to evaluate: give a data folder, or --manifest to score the cases it records.",
                             "For example: medsynth evaluate DATA --out REPORT, or medsynth evaluate --manifest "
                             "prepared/manifest.json --out REPORT.")
        recorded = _read_manifest(Path(manifest))
        _check_manifest_pair(recorded, Path(manifest), scored_pair(model, lookup))
        chosen = select_cases(_recorded_cases(recorded, Path(manifest)),
                              wanted if wanted is not None else _validation_split(recorded, Path(manifest)),
                              where=f"the manifest {manifest}")
        _check_recorded_files(chosen, Path(manifest))
        return chosen
    source_suffix, target_suffix = file_suffixes(scored_pair(model, lookup), source_suffix, target_suffix)
    if wanted is None and manifest is not None:
        wanted = _validation_split(_read_manifest(Path(manifest)), Path(manifest))
    cases = (files or CaseFiles()).find(data_dir, source_suffix, target_suffix, only=wanted)
    if wanted is not None:
        cases = select_cases(cases, wanted, where=str(data_dir))
    return cases


def _read_manifest(manifest: Path) -> Dict[str, Any]:
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"Cannot read the manifest {manifest}: {exc.strerror or exc}.", "Pass the manifest.json that `medsynth prepare` wrote.") from exc
    except ValueError as exc:
        raise DataError(f"{manifest} is not a manifest (not JSON).", "Pass the manifest.json that `medsynth prepare` wrote.") from exc
    if not isinstance(data, dict):
        raise DataError(f"{manifest} is not a manifest (no JSON object).", "Pass the manifest.json that `medsynth prepare` wrote.")
    return data


def _validation_split(recorded: Dict[str, Any], manifest: Path) -> List[str]:
    try:
        val = [str(c) for c in recorded["splits"]["val"]]
    except (KeyError, TypeError) as exc:
        raise DataError(f"{manifest} is not a manifest with a validation split (splits.val).",
                        "Pass the manifest.json that `medsynth prepare` wrote, or --cases.") from exc
    if not val:  # prepare --val-fraction 0: it said "nothing to evaluate" only after loading the model
        raise DataError(f"The manifest {manifest} records no validation cases (prepared with --val-fraction 0?).",
                        "Name the cases to score with --cases.")
    return val


def _recorded_cases(recorded: Dict[str, Any], manifest: Path) -> List[Case]:
    """Every case whose files the manifest (``recorded``, read from ``manifest``) names; a case without a source or
    target entry is refused."""
    from .dataset_cases import Case

    entries = recorded.get("cases")
    if not isinstance(entries, dict) or not entries:
        raise DataError(f"{manifest} records no case files (cases).",
                        "Pass the data folder as well: medsynth evaluate DATA --manifest MANIFEST --out REPORT.")
    cases = []
    for cid, entry in entries.items():
        paths = {key: entry.get(key) if isinstance(entry, dict) else None for key in ("source", "target", "mask", "seg")}
        if not paths["source"] or not paths["target"]:
            raise DataError(f"The manifest {manifest} records no source or target file for case {cid}.",
                            "Pass the data folder as well: medsynth evaluate DATA --manifest MANIFEST --out REPORT.")
        cases.append(Case(str(cid), *(Path(paths[key]) if paths[key] else None for key in ("source", "target", "mask", "seg"))))
    return cases


def _check_manifest_pair(recorded: Dict[str, Any], manifest: Path, scored: "ModelConfig") -> None:
    """Refuse a manifest prepared for another pair: its recorded files would be scored against the wrong target."""
    config = recorded.get("model_config")
    names = (config.get("source_name"), config.get("target_name")) if isinstance(config, dict) else (None, None)
    if None not in names and tuple(names) != (scored.source_name, scored.target_name):
        raise DataError(f"The manifest {manifest} was prepared for {names[0]}→{names[1]}, but the model scores "
                        f"{scored.source_name}→{scored.target_name}.",
                        "Evaluate a model of that pair, or pass a data folder (and its layout options) instead.",
                        reason="data_for_another_model")


def _check_recorded_files(cases: Sequence[Case], manifest: Path) -> None:
    """Refuse recorded cases whose files have moved since ``prepare`` (another machine, a renamed folder)."""
    for case in cases:
        for path in (case.source, case.target, case.mask, case.seg):
            if path is not None and not Path(path).is_file():
                raise DataError(f"The manifest {manifest} records {path} for case {case.case_id}, which is not there.",
                                "Pass the data folder as well: medsynth evaluate DATA --manifest MANIFEST --out REPORT.")


def check_report_folder(out_dir: PathLike, overwrite: bool = False) -> None:
    """Refuse an ``out_dir`` that is a file, or that holds an earlier report (``metrics.json``) without ``overwrite``
    (``evaluate_cases`` passes ``resume`` for it: a stopped report is then checked by ``kept_cases``)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file; the report needs a folder.", "Choose a folder name.")
    if (out / "metrics.json").exists() and not overwrite:
        if is_stopped(out):
            raise OutputError(f"{out} holds the report of a stopped evaluation (metrics.json).",
                              "Pass --resume to score the cases it has not scored, --overwrite to start again, or "
                              "choose another --out.", reason="output_exists")
        raise OutputError(f"{out} holds the report of an earlier evaluation (metrics.json).",
                          "Pass --overwrite to replace it, or choose another --out.", reason="output_exists")


def scored_pair(model: Optional[PathLike] = None, lookup: Optional[PathLike] = None) -> "ModelConfig":
    """The config whose pair an evaluation scores: the model file's (header only; default the bundled model), or
    a lookup's (the names ``fit-lookup`` recorded; T1ce→T2 for a file from before). Its names give the files'
    default suffixes."""
    from .baselines import IntensityLookup
    from .config import ModelConfig
    from .model_file import LoadedModel, bundled_model_path, read_config

    if isinstance(model, LoadedModel):
        return model.config
    if lookup:
        fitted = IntensityLookup.load(lookup)
        return ModelConfig(source_name=fitted.names[0], target_name=fitted.names[1], normalisation=fitted.normalisation)
    return read_config(Path(model) if model else bundled_model_path())


def evaluate_cases(
    cases: Sequence[Case],
    out_dir: PathLike,
    model: Optional[PathLike] = None,
    lookup: Optional[PathLike] = None,
    stages: Optional[int] = None,
    flip_tta: bool = False,
    device: str = "auto",
    precision: str = "auto",
    figures: bool = False,
    save_predictions: bool = False,
    label: str = "",
    target_name: Optional[str] = None,
    progress: ProgressFn = None,
    overwrite: bool = False,
    resume: bool = False,
) -> Dict[str, Any]:
    """Synthesize every case with ``model`` (a model file, default the bundled one, or a loaded model) or apply an
    intensity ``lookup`` instead,
    score it, and write ``metrics.json``/``metrics.md`` (and per-case PNGs with ``figures``, the synthetic volumes,
    named ``<case>_synthetic_<target_name>.nii.gz``, with ``save_predictions``; ``target_name`` defaults to the
    model's target in lower case) into ``out_dir``.

    Returns the report (per-case rows and ``summary``: metric → mean/std/n; ``precision``: the arithmetic the
    synthesis ran in, since ``auto`` depends on the machine). The model or lookup is loaded before ``out_dir`` is
    created, so a bad file leaves nothing behind; a folder holding an earlier report is refused without
    ``overwrite`` (an evaluation can take hours, and its report is what a study cites). A stop or a failing case
    writes the report of the cases scored so far, marked ``stopped``; ``resume`` scores only the rest
    (:mod:`MedSynthLogic.evaluation_resume`).
    """
    if resume and overwrite:
        raise UsageError("--resume keeps a stopped evaluation's scored cases and --overwrite replaces them: pass one.",
                         "Pass --resume to go on, or --overwrite to start again.")
    if not cases:  # it failed in the report's writing, after the model was loaded and --out created
        raise DataError("There are no cases to evaluate.", "Name them with --cases, or give a folder that holds them.")
    check_report_folder(out_dir, overwrite or resume)
    if lookup and (stages is not None or flip_tta):  # the report recorded them as if they had been applied
        raise UsageError("A lookup has no auto-context stages and no flip averaging: --stages and --flip-tta apply to "
                         "a model only.", "Leave them out with --lookup.")
    from .baselines import IntensityLookup
    from .devices import arithmetic_name, resolve_device
    from .metrics import scored_results, scoring_of, scoring_protocol, write_report
    from .model_file import LoadedModel, bundled_model_path, load_model

    scorer = IntensityLookup.load(lookup) if lookup else None
    if scorer is None and isinstance(model, LoadedModel):
        loaded, model = model, model.path
    else:
        loaded = None if scorer else load_model(Path(model) if model else bundled_model_path(), stages=stages)
    norm = scorer.normalisation if scorer else loaded.config.normalisation
    names = (loaded.config.source_name, loaded.config.target_name) if loaded else scorer.names
    target_name = target_name or names[1].lower()
    written = _files_written(cases, target_name, save_predictions, figures)
    scoring = scoring_of(norm)
    settings = {"predictor_sha256": file_sha256(lookup) if scorer else loaded.header.get("tensors_sha256"),
                "stages": stages, "flip_tta": bool(flip_tta),
                "precision": None if scorer else arithmetic_name(device, precision), "label": label,
                "protocol": scoring_protocol(*scoring), "target_name": target_name,
                "figures": bool(figures), "save_predictions": bool(save_predictions),
                "device": None if scorer else resolve_device(device).type,
                "medsynth_version": __version__}  # rows scored by two versions' code are not one report
    planned = [case.case_id for case in cases]
    files = {case.case_id: {"source": str(case.source), "target": str(case.target)} for case in cases}
    stamps = {case.case_id: case_files(case) for case in cases}
    kept = kept_cases(out_dir, settings, planned, stamps) if resume else NOTHING_KEPT
    _refuse_earlier_files(out_dir, [name for name in written if name not in kept.written + kept.replaced], overwrite)
    earlier = _earlier_files(out_dir) if overwrite else kept.replaced
    out = make_output_folder(out_dir)
    trained_on = _training_cases_scored(loaded, cases, progress) if scorer is None else _fitting_cases_scored(scorer, cases, progress)
    unrecorded = _unrecorded_cases(loaded, progress) if scorer is None else []
    rows, refused, resampled = list(kept.rows), dict(kept.refused), dict(kept.resampled)
    done = list(kept.written) or ["metrics.json", "metrics.md"]
    if kept.rows and progress:
        progress(warning_event("evaluate", f"resuming: {len(kept.rows)} of {len(cases)} cases kept from the stopped "
                               "report, the rest scored now"))

    def report(stop: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        results = scored_results(rows, *scoring)
        results.update(label=label, model=str(lookup or model or bundled_model_path()), stages=stages, flip_tta=bool(flip_tta),
                       precision=settings["precision"], medsynth_version=__version__,
                       **({"model_sha256": settings["predictor_sha256"]} if loaded is not None else {}),
                       **({"lookup_sha256": settings["predictor_sha256"]} if scorer is not None else {}),
                       files=files,
                       **({"training_cases_scored": trained_on} if trained_on else {}),
                       **({"training_cases_unknown": True} if trained_on is None else {}),
                       **({"training_cases_unrecorded": unrecorded} if unrecorded else {}),
                       **({"input_checks_failed": refused} if refused else {}),
                       **({"resampled": resampled} if resampled else {}),
                       **({"resumed_after": len(kept.rows)} if kept.rows and stop is None else {}),
                       **({STOPPED: stop} if stop else {}), written=done if stop else written)
        notes = ([stopped_note(stop)] if stop else []) + _report_notes(trained_on, refused, resampled, unrecorded)
        if notes:
            results["notes"] = notes
        write_report(results, out / "metrics.json", out / "metrics.md")
        return results

    staging = out / PENDING_FOLDER  # a case's files wait here until it is scored: a stop takes away only these
    try:
        for i, case in enumerate(cases[len(kept.rows):], start=len(kept.rows)):
            stamps[case.case_id] = case_files(case)  # as it is read, not as it is when the run stops
            scored = _scored_case(case, i, len(cases), loaded, scorer, norm, scoring,
                                  dict(stages=stages, device=device, flip_tta=flip_tta, precision=precision), progress)
            pending = []
            if save_predictions:
                from .volume_io import write_volume

                pending.append(f"{case.case_id}_synthetic_{target_name}.nii.gz")
                write_volume(scored.pred, make_output_folder(staging) / pending[-1], overwrite=True)
            if figures:
                pending.append(f"{case.case_id}.png")
                _case_figure(make_output_folder(staging) / pending[-1], scored.read, scored.pred, scoring,
                             f"{case.case_id} {label}".strip(), names)
            _move_case_files(staging, out, pending)
            rows.append(scored.row)  # only now: a stopped report's case has its files, so a resumed run need not redo it
            done += pending
            refused.update(scored.refused)
            resampled.update({case.case_id: list(scored.read.notes)} if scored.read.notes else {})
            if progress:
                progress(progress_event("evaluate", i + 1, len(cases), case=case.case_id))
        results = report()
    except BaseException as exc:  # Cancel, SIGTERM, a failing case: hours of scored cases are kept, not lost
        shutil.rmtree(staging, ignore_errors=True)  # a stray file of no scored case would block the next run
        if len(rows) == len(cases):  # every case scored (a stop in the last event or in the report's own writing)
            _write_stopped_report(report, None, out, progress)
        elif rows:
            reason = "stopped" if isinstance(exc, (Cancelled, KeyboardInterrupt)) else f"failed: {exc}"
            _write_stopped_report(report, stopped_record(settings, planned, rows, reason, stamps, earlier), out, progress)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    _take_away(out, [name for name in earlier if name not in written], progress)
    return results


def _move_case_files(staging: Path, out: Path, names: Sequence[str]) -> None:
    """A scored case's files into the report folder, all or none: what stands in the way of one (a folder of its
    name, a file open elsewhere) is an ``OutputError`` naming it, and the case's files moved before it are taken
    back out, so the stopped report's folder holds no file it does not list and ``--resume`` can go on."""
    moved: List[Path] = []
    for name in names:
        try:
            replace_file(staging / name, out / name)
        except OSError as exc:
            for done in moved:
                done.unlink(missing_ok=True)
            raise (as_output_error(exc, out / name) or OutputError(
                f"Cannot put {name} into the report folder {out}: {exc.strerror or exc}.",
                f"Move or remove what is at {out / name} and run again with --resume.")) from exc
        moved.append(out / name)


#: The hidden folder inside a report folder where the case being scored writes its prediction and figure.
PENDING_FOLDER = ".medsynth-pending"


def _take_away(out: Path, names: Sequence[str], progress: ProgressFn) -> None:
    """Remove what the evaluation that ``--overwrite`` replaced wrote and this one has not written again (figures and
    predictions it would otherwise leave beside the new report as if they were its own), and say which."""
    gone = [name for name in names if (out / name).exists()]
    for name in gone:
        try:
            (out / name).unlink(missing_ok=True)
        except OSError as exc:
            raise (as_output_error(exc, out / name) or OutputError(
                f"Cannot take away {out / name}, a file of the replaced evaluation: {exc.strerror or exc}.",
                "Remove it by hand; the new report is complete.")) from exc
    if gone and progress:
        progress(warning_event("evaluate", f"--overwrite took away {len(gone)} file(s) of the replaced evaluation that "
                               f"this one does not write: {', '.join(gone[:5])}{', …' if len(gone) > 5 else ''}"))


class ScoredCase(NamedTuple):
    """One case's outcome: its row, its prediction and the case as read (for its figure), and what synthesize
    would have refused in its source."""

    row: Dict[str, Any]
    pred: Any
    read: CaseOnSourceGrid
    refused: Dict[str, List[str]]


def _scored_case(case: Case, index: int, count: int, loaded: Any, scorer: Any, norm: Any, scoring: Tuple[Any, ...],
                 synthesis: Dict[str, Any], progress: ProgressFn) -> ScoredCase:
    """Read, synthesize (or look up) and score one case. An error names the case: case 37 of 200 must be findable."""
    from .dataset_prep import target_background
    from .inference import synthesize_volume
    from .metrics import score_pair

    try:
        read = read_case(case, norm.mask_threshold, target_fill=target_background(norm.target))
        for note in read.notes:
            if progress:
                progress(warning_event("evaluate", f"{case.case_id}: {note}"))
        refused = {}
        if loaded is not None:  # said before the case's minutes of synthesis, not after
            refused = _input_checks_failed(loaded, case, read.source, read.mask, progress)
        if scorer is not None:
            pred = read.source.with_array(scorer.apply(read.source.array, read.mask))
        else:
            pred = synthesize_volume(loaded, read.source, mask=read.mask, **synthesis,
                                     progress=within_case(progress, index, count, case.case_id))
        row = score_pair(case.case_id, pred, read.target, read.scored, read.tumour, *scoring)
    except Cancelled:
        raise
    except MedSynthError as exc:
        raise exc.in_case(case.case_id) from exc
    return ScoredCase(row, pred, read, refused)


def _write_stopped_report(report: Callable[[Optional[Dict[str, Any]]], Any], record: Optional[Dict[str, Any]],
                          out: Path, progress: ProgressFn) -> None:
    """Write the report of the cases scored before a stop (``record`` None: all of them, the finished report); a
    failure to write it must not hide why the run stopped."""
    try:
        report(record)
    except (MedSynthError, OSError) as exc:
        if progress:
            progress(warning_event("evaluate", f"the report of the cases scored could not be written: {exc}"))
        return
    if progress:
        said = stopped_note(record) if record else "Every case was scored before the stop: the report is complete."
        progress(warning_event("evaluate", f"{said} The report: {out / 'metrics.md'}."))


def _files_written(cases: Sequence[Case], target_name: str, save_predictions: bool, figures: bool) -> List[str]:
    """The names an evaluation writes into its folder (recorded in its report as ``written``)."""
    names = ["metrics.json", "metrics.md"]
    for case in cases:
        names += [f"{case.case_id}_synthetic_{target_name}.nii.gz"] if save_predictions else []
        names += [f"{case.case_id}.png"] if figures else []
    return names


def _earlier_files(out_dir: PathLike) -> List[str]:
    """What the evaluation that ``--overwrite`` replaces wrote (its report's ``written``; none for a report from
    before it was recorded): its figures and volumes of cases this one does not score would otherwise stand beside
    the new report as if they were its own. Plain names only, so a hand-edited report cannot reach outside."""
    report = read_report(out_dir) or {}
    stopped = report.get(STOPPED) if isinstance(report.get(STOPPED), dict) else {}
    return plain_names(report.get("written")) + plain_names(stopped.get("replaced"))  # a stopped --overwrite's too


def _refuse_earlier_files(out_dir: PathLike, names: Sequence[str], overwrite: bool) -> None:
    """Refuse, without ``overwrite``, an ``out_dir`` holding any file this evaluation would write: an earlier
    synthesis folder's volumes or an earlier report's figures were replaced silently, and a stopped evaluation's
    predictions would stand beside another predictor's report. (``metrics.json``: ``check_report_folder``.)"""
    out = Path(out_dir)
    there = [name for name in names if name != "metrics.json" and (out / name).exists()]
    if there and not overwrite:
        raise OutputError(f"{out} holds {len(there)} file(s) this evaluation would replace ({', '.join(there[:3])}"
                          f"{', …' if len(there) > 3 else ''}).", "Pass --overwrite to replace them, or choose another --out.",
                          reason="output_exists")


def _input_checks_failed(loaded: Any, case: Case, source: Any, mask: np.ndarray, progress: ProgressFn) -> Dict[str, List[str]]:
    """The checks ``synthesize`` would refuse this case's source for ({case: [messages]}, empty when it passes).

    ``evaluate`` scores such a case anyway (a study may want to know what a refused input costs), but says so: a
    score the clinician's path would never produce must not pass silently into a table.
    """
    from .input_checks import check_source

    findings = check_source(source, loaded.config, mask=mask if case.mask else None)
    if not findings:
        return {}
    messages = [f.message for f in findings]
    if progress:
        progress(warning_event("evaluate", f"{case.case_id}: synthesize would refuse this source ({'; '.join(messages)}); "
                               "it is scored anyway and listed in the report"))
    return {case.case_id: messages}


def _report_notes(trained_on: Optional[List[str]], refused: Dict[str, List[str]],
                  resampled: Dict[str, List[str]], unrecorded: Sequence[str] = ()) -> List[str]:
    """Sentences the Markdown report puts above its table: what makes a figure in it no held-out, accepted result."""
    notes = []
    if unrecorded:
        notes.append(f"The model's file does not name the training cases of {', '.join(unrecorded)}, whose weights its "
                     "synthesis uses: check that the scored cases are not among them.")
    if trained_on:
        notes.append(f"Not held out: {', '.join(trained_on)} (among the predictor's own training or fitting cases).")
    if trained_on is None:
        notes.append("The predictor's file does not name its training (or fitting) cases: check that the scored cases are "
                     "not among them.")
    for case_id, messages in refused.items():
        notes.append(f"{case_id}: synthesize would refuse this source ({'; '.join(messages)}); scored anyway.")
    for case_id, messages in resampled.items():
        notes.append(f"{case_id}: {' '.join(messages)}")
    return notes


def _training_cases_scored(loaded: Any, cases: Sequence[Case], progress: ProgressFn) -> Optional[List[str]]:
    """The scored cases that the model's header lists as its training cases (see :func:`_own_cases_scored`); a
    header that gives only their number (files trained before session 38) cannot tell."""
    from .model_summary import all_training_cases, earlier_training_cases

    if loaded is None:
        return []
    # a refiner's synthesis is built on its prior's training cases too, a run from --init-model on that file's
    earlier = earlier_training_cases(loaded.header)
    return _own_cases_scored(all_training_cases(loaded.header), cases, progress,
                             "the model's training cases (those of the model it was built on too)" if earlier
                             else "the model's training cases",
                             "the model file does not name its training cases (files written before session 38 record "
                             "at most their number)")


def _unrecorded_cases(loaded: Any, progress: ProgressFn) -> List[str]:
    """Whose training cases the model learned from without its file naming them (a refiner's prior, an
    ``--init-model`` file): warned about, while the cases it does name are still checked."""
    from .model_summary import unrecorded_training_cases

    unrecorded = unrecorded_training_cases(loaded.header) if loaded is not None else []
    if unrecorded and progress:
        progress(warning_event("evaluate", f"the model file does not name the training cases of {', '.join(unrecorded)}:"
                               " check yourself that the scored cases are not among them"))
    return unrecorded


def _fitting_cases_scored(lookup: Any, cases: Sequence[Case], progress: ProgressFn) -> Optional[List[str]]:
    """As :func:`_training_cases_scored`, for a lookup: the scored cases it was fitted on (``fit-lookup`` fits on every
    case of its folder unless ``--cases`` names some)."""
    return _own_cases_scored(lookup.fitted_on, cases, progress, "the cases the lookup was fitted on",
                             "the lookup file does not name the cases it was fitted on (older files)")


def _own_cases_scored(listed: Optional[Sequence[str]], cases: Sequence[Case], progress: ProgressFn, whose: str,
                      unnamed: str) -> Optional[List[str]]:
    """The scored cases among ``listed`` (a predictor's own cases), with a warning: their figures are no held-out
    result. None, with a warning too, when the file does not list them (``unnamed`` says so)."""
    if listed is None:
        if progress:
            progress(warning_event("evaluate", f"{unnamed}: check yourself that the scored cases are not among them"))
        return None
    seen = [case.case_id for case in cases if case.case_id in set(listed)]
    if seen and progress:
        progress(warning_event("evaluate", f"{len(seen)} of the {len(cases)} scored cases ({', '.join(seen)}) are among "
                               f"{whose}: their figures are not held-out results"))
    return seen


def _case_figure(path: Path, read: CaseOnSourceGrid, pred: Any, scoring: Tuple[Any, ...], title: str,
                 names: Tuple[str, str]) -> None:
    """Source | synthetic | real | error map, the error exactly what the metrics read (``metrics.metric_images``,
    0–0.5 of their unit; the figure had its own scaling, which drew a perfect median-mode synthesis with 10 %
    error); ``names``: the pair's."""
    from .figures import comparison_figure, metric_unit_ranges
    from .metrics import metric_images
    from .orientation import axis_order

    source_name, target_name = names
    percentile, pred_scale, window = scoring
    pn, tn = metric_images(pred.array, read.target.array, read.scored, percentile, pred_scale, window)
    err = np.abs(pn - tn)
    if pred_scale is not None:
        ranges = metric_unit_ranges(f"synthetic {target_name}", f"real {target_name}", read.target.array, read.scored,
                                    pred_scale, percentile)
    elif window is not None:  # both in the target's window: per-image windows made a CT pair incomparable
        ranges = {f"synthetic {target_name}": window, f"real {target_name}": window}
    else:
        ranges = None
    order = axis_order(read.source.direction)  # the rows are axial, coronal and sagittal in the order models see (LPS)
    comparison_figure(
        path,
        [(source_name, order.forward(read.source.array)), (f"synthetic {target_name}", order.forward(pred.array)),
         (f"real {target_name}", order.forward(read.target.array)), ("|error| (0–0.5, normalised)", order.forward(err))],
        mask=order.forward(read.mask), spacing=order.spacing(read.source.spacing), title=title, ranges=ranges,
    )


def within_case(
    progress: Optional[Callable[[dict], None]], index: int, count: int, case_id: str
) -> Optional[Callable[[dict], None]]:
    """Turn one case's synthesis events into evaluate events whose fraction moves within the case.

    A case takes tens of seconds on a CPU; without this the evaluation shows nothing between two cases.
    Other events (a warning about a CPU fallback) pass through unchanged.
    """
    if progress is None:
        return None

    def forward(event: dict) -> None:
        if event.get("event") != "progress":
            progress(event)
            return
        within = float(event.get("fraction", 0.0))
        progress(progress_event("evaluate", index, count, fraction=(index + within) / count, case=case_id))

    return forward
