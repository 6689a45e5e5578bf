"""Which of the panel's buttons may be pressed, why the others may not, and what its path fields show.

A review of the panel against Slicer's sources found Prepare and Train disabled without a word, and every folder
button showing Slicer's working folder while its parameter was unset: the parameter node wrapper stores an unset
``Path`` as ".", and ``ctkDirectoryButton`` shows "." as the folder Slicer runs in (``ctkPathLineEdit`` shows the
"." itself). The widget applies what these functions say after every parameter change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from .i18n import tr as _
from .training_jobs import is_set

#: Folder buttons → the parameter each shows.
FOLDER_BUTTONS = {"casesDirButton": "casesDir", "dataDirButton": "dataDir", "runDirButton": "runDir",
                  "evalDirButton": "evalDir"}
#: File fields (``ctkPathLineEdit``) → the parameter each shows.
PATH_FIELDS = {"modelPathLineEdit": "modelPath", "outputModelPathLineEdit": "outputModelPath"}


@dataclass(frozen=True)
class ButtonStates:
    """``enabled``: button name → whether it may be pressed; ``hint``: what the training section still needs
    (preparation, training, then evaluation)."""

    enabled: Dict[str, bool]
    hint: str


def button_states(settings: Any, running_kind: Optional[str]) -> ButtonStates:
    """The buttons for the panel's ``settings`` (its parameter node, or None) while a job of ``running_kind`` runs
    (None: nothing runs). Cancel belongs to a synthesis; Stop to a preparation, a training or an evaluation."""
    busy = running_kind is not None
    prepare_needs = _missing(settings, (("casesDir", _("the folder of cases")),
                                        ("dataDir", _("the prepared data folder"))))
    train_needs = _missing(settings, (("dataDir", _("the prepared data folder")), ("runDir", _("the run folder")),
                                      ("outputModelPath", _("the output model file"))))
    evaluate_needs = _missing(settings, (("outputModelPath", _("the output model file")),
                                         ("dataDir", _("the prepared data folder")),
                                         ("evalDir", _("the evaluation report folder"))))
    can_train = settings is not None and not train_needs and not busy
    enabled = {
        "synthesizeButton": bool(settings is not None and settings.inputVolume) and not busy,
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
    return ButtonStates(enabled, " ".join(hints) if settings is not None else "")


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


def _missing(settings: Any, needed: "tuple[tuple[str, str], ...]") -> List[str]:
    if settings is None:
        return [label for _name, label in needed]
    return [label for name, label in needed if not is_set(getattr(settings, name))]


def _join(items: List[str]) -> str:
    return items[0] if len(items) == 1 else _("{first} and {last}").format(first=", ".join(items[:-1]), last=items[-1])
