"""Which of the panel's buttons may be pressed, why the others may not, and what its path fields show.

A review of the panel against Slicer's sources found Prepare and Train disabled without a word, and every folder
button showing Slicer's working folder while its parameter was unset: the parameter node wrapper stores an unset
``Path`` as ".", and ``ctkDirectoryButton`` shows "." as the folder Slicer runs in (``ctkPathLineEdit`` shows the
"." itself). The widget applies what these functions say after every parameter change.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from .i18n import tr as _
from .synthesis import OTHER_MODEL
from .training_jobs import is_set

#: Folder buttons → the parameter each shows.
FOLDER_BUTTONS = {"casesDirButton": "casesDir", "dataDirButton": "dataDir", "runDirButton": "runDir",
                  "evalDirButton": "evalDir"}
#: File fields (``ctkPathLineEdit``) → the parameter each shows.
PATH_FIELDS = {"modelPathLineEdit": "modelPath", "outputModelPathLineEdit": "outputModelPath"}


@dataclass(frozen=True)
class ButtonStates:
    """``enabled``: button name → whether it may be pressed; ``hint``: what the training section still needs
    (preparation, training, then evaluation); ``synthesis_hint``: why Synthesize waits, when its model file field
    shows a name it did not pass on (the panel shows it where the time estimate goes)."""

    enabled: Dict[str, bool]
    hint: str
    synthesis_hint: str = ""


def button_states(settings: Any, running_kind: Optional[str], texts: Optional[Mapping[str, str]] = None) -> ButtonStates:
    """The buttons for the panel's ``settings`` (its parameter node, or None) while a job of ``running_kind`` runs
    (None: nothing runs). Cancel belongs to a synthesis; Stop to a preparation, a training or an evaluation.
    ``texts``: what the file fields show (field name → text); a parameter whose field shows a name it does not hold
    (:func:`unapplied_path_fields`) counts as not chosen: the job would use the earlier file."""
    busy = running_kind is not None
    unapplied = unapplied_path_fields(settings, texts or {})
    output_model = (_("an output model file name ending in .safetensors") if "outputModelPath" in unapplied
                    else _("the output model file"))
    prepare_needs = _missing(settings, (("casesDir", _("the folder of cases")),
                                        ("dataDir", _("the prepared data folder"))))
    train_needs = _missing(settings, (("dataDir", _("the prepared data folder")), ("runDir", _("the run folder")),
                                      ("outputModelPath", output_model)), unapplied)
    evaluate_needs = _missing(settings, (("outputModelPath", output_model),
                                         ("dataDir", _("the prepared data folder")),
                                         ("evalDir", _("the evaluation report folder"))), unapplied)
    can_train = settings is not None and not train_needs and not busy
    other_model_unapplied = "modelPath" in unapplied and getattr(settings, "model", None) == OTHER_MODEL
    enabled = {
        "synthesizeButton": bool(settings is not None and settings.inputVolume) and not busy and not other_model_unapplied,
        "prepareButton": settings is not None and not prepare_needs and not busy,
        "startTrainingButton": can_train,
        "resumeTrainingButton": can_train,
        "evaluateButton": settings is not None and not evaluate_needs and not busy,
        "cancelButton": running_kind == "synthesize",
        "stopTrainingButton": running_kind in ("prepare", "train", "evaluate"),
    }
    hints = []
    if prepare_needs:
        hints.append(_("To prepare data, choose {items}.").format(items=_join(prepare_needs)))
    if train_needs:
        hints.append(_("To train, choose {items}.").format(items=_join(train_needs)))
    if evaluate_needs and not train_needs:  # the training's own needs first: evaluation scores what it wrote
        hints.append(_("To evaluate the trained model, choose {items}.").format(items=_join(evaluate_needs)))
    waiting = _("To synthesize with another model file, give a name ending in .safetensors.") if other_model_unapplied else ""
    return ButtonStates(enabled, " ".join(hints) if settings is not None else "", waiting)


def folder_text(value: Any) -> str:
    """What a folder button shows: the chosen folder, or a request to choose one (never the working folder)."""
    return str(value) if is_set(value) else _("Choose a folder…")


def unset_path_fields(settings: Any) -> List[str]:
    """The file fields whose parameter is unset, which must show nothing rather than "."."""
    if settings is None:
        return []
    return [field for field, name in PATH_FIELDS.items() if not is_set(getattr(settings, name))]


def reset_unknown_choices(settings: Any, choices: Dict[str, List[str]]) -> List[str]:
    """Set each listed parameter whose saved value is not among its ``choices`` to the first choice (every list's
    default); returns the names reset. A scene saved by another MedSynth version may hold a model, generator kind or
    device this one does not offer: the wrapper reads it, but the list widget refuses to show it and the panel failed
    to connect."""
    reset = []
    for name, allowed in choices.items():
        if getattr(settings, name) not in allowed:
            setattr(settings, name, allowed[0])
            reset.append(name)
    return reset


def unapplied_path_fields(settings: Any, texts: Mapping[str, str]) -> List[str]:
    """The parameters whose file field (``texts``: field name → its text) shows a name the parameter does not hold.

    ``ctkPathLineEdit`` passes its text on only while it matches the field's name filter (``*.safetensors``): after
    "/runs/a.safetensors" was edited to "/runs/b" the field showed the one while the parameter kept the other, and
    Evaluate scored the old model (a review). An empty field is ``clearPath``'s."""
    if settings is None:
        return []
    unapplied = []
    for field, name in PATH_FIELDS.items():
        text = (texts.get(field) or "").strip()
        if text and text != "." and Path(text) != Path(getattr(settings, name) or ""):
            unapplied.append(name)
    return unapplied


def _missing(settings: Any, needed: "tuple[tuple[str, str], ...]", unapplied: Sequence[str] = ()) -> List[str]:
    if settings is None:
        return [label for _name, label in needed]
    return [label for name, label in needed if not is_set(getattr(settings, name)) or name in unapplied]


def _join(items: List[str]) -> str:
    return items[0] if len(items) == 1 else _("{first} and {last}").format(first=", ".join(items[:-1]), last=items[-1])
