"""The panel's words go through Slicer's translation: every message is an extractable literal, each file is its
own translation context, and a translation that loses a placeholder is not used (Slicer's own rule)."""

from __future__ import annotations

import ast
import sys
import types
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "MedSynth"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

from MedSynthLib import estimate, i18n, synthesis  # noqa: E402
from MedSynthLib.events import describe_event  # noqa: E402

TRANSLATED_FILES = [MODULE_DIR / "MedSynth.py", *sorted((MODULE_DIR / "MedSynthLib").glob("*.py"))]


@pytest.fixture
def slicer_translation(monkeypatch: pytest.MonkeyPatch) -> List[Tuple[str, str]]:
    """A stand-in for Slicer's ``slicer.i18n`` (absent from slicer-core) with a French catalogue; records each
    lookup as (context, English text)."""
    catalogue: Dict[Tuple[str, str], str] = {
        ("MedSynthLib.events", "Finished."): "Terminé.",
        ("MedSynthLib.events", "Checkpoint saved: {name}"): "Point de reprise enregistré : {name}",
        ("MedSynthLib.estimate", "benchmark rate of an NVIDIA H100"): "vitesse mesurée sur une NVIDIA H100",
        ("MedSynthLib.estimate", "Estimated time: about {seconds} s ({basis})."):
            "Durée estimée : environ {secondes} s ({basis}).",
    }
    lookups: List[Tuple[str, str]] = []

    def get_context(source_file: str) -> str:
        path = Path(source_file)
        return f"{path.parent.name}.{path.stem}" if (path.parent / "__init__.py").is_file() else path.stem

    def translate(context: str, text: str) -> str:
        lookups.append((context, text))
        return catalogue.get((context, text), text)

    fake = types.ModuleType("slicer.i18n")
    fake.getContext = get_context
    fake.translate = translate
    monkeypatch.setitem(sys.modules, "slicer.i18n", fake)
    return lookups


def test_outside_slicer_the_english_text_is_returned_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "slicer.i18n", None)  # as in slicer-core and plain Python: no such module
    assert i18n.tr("Finished.") == "Finished."
    assert describe_event({"event": "checkpoint", "path": "/runs/a/stage0.pt"}).log == "Checkpoint saved: stage0.pt"


def test_each_message_is_looked_up_in_its_own_files_context(slicer_translation: List[Tuple[str, str]]) -> None:
    assert describe_event({"event": "done"}).log == "Terminé."
    assert describe_event({"event": "checkpoint", "path": "/runs/a/stage0.pt"}).log == \
        "Point de reprise enregistré : stage0.pt"
    assert estimate.RateBook(cpu_bf16=False).rate("cuda")[1] == "vitesse mesurée sur une NVIDIA H100"
    assert ("MedSynthLib.events", "Finished.") in slicer_translation
    assert ("MedSynthLib.estimate", "benchmark rate of an NVIDIA H100") in slicer_translation
    message = synthesis.findings_message([types.SimpleNamespace(message="x")], force=False)
    assert ("MedSynthLib.synthesis", "If it is not the {source} volume, pick that one; or tick 'Force (skip input "
            "checks)' to synthesize anyway.") in slicer_translation
    assert "If it is not the T1ce volume" in message


def test_a_translation_that_loses_a_placeholder_is_not_used(slicer_translation: List[Tuple[str, str]]) -> None:
    text = estimate.Estimate(30.0, "a basis").text()
    assert text == "Estimated time: about 30 s (a basis)."


def _translation_calls(path: Path) -> List[ast.Call]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in ("_", "tr")]


@pytest.mark.parametrize("path", TRANSLATED_FILES, ids=lambda p: p.name)
def test_every_translated_text_is_a_plain_literal_that_lupdate_can_extract(path: Path) -> None:
    for call in _translation_calls(path):
        args = call.args
        literal = len(args) == 1 and isinstance(args[0], ast.Constant) and isinstance(args[0].value, str)
        assert literal, f"{path.name}:{call.lineno}: _() needs one string literal (not an f-string or a variable)"


def test_every_panel_logic_file_with_messages_uses_the_translation() -> None:
    """Each MedSynthLib module that raises or returns a sentence for the user imports the translation function."""
    for name in ("controller", "dependencies", "estimate", "events", "model_info", "synthesis"):
        source = (MODULE_DIR / "MedSynthLib" / f"{name}.py").read_text(encoding="utf-8")
        assert "from .i18n import tr as _" in source, name
        assert _translation_calls(MODULE_DIR / "MedSynthLib" / f"{name}.py"), name


def test_a_progress_of_a_task_without_words_of_its_own_is_still_said_through_the_translation():
    """The fallback was an f-string outside ``_()``: the one status line a translation could not reach (a review)."""
    update = describe_event({"event": "progress", "task": "uncertainty", "done": 1, "total": 4})
    assert update.status == "Working (uncertainty)…" and update.percent == 25
    assert describe_event({"event": "progress", "done": 1, "total": 2}).status == "Working…"  # not "Working (working)…"
