"""The extension's CMake lists ship every file the module needs (slicerMacroBuildScriptedModule installs only what
is listed): every .py under MedSynth/ and MedSynthLogic/, the .ui, the icons, requirements.txt and the bundled
models. The directories are globbed at test time, so a new MedSynthLogic/foo.py that is not listed fails here."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Set

import pytest

REPO = Path(__file__).resolve().parents[2]
TOP = REPO / "CMakeLists.txt"
MODULE_DIR = REPO / "MedSynth"
MODULE_CMAKE = MODULE_DIR / "CMakeLists.txt"
CORE = REPO / "MedSynthLogic"


def _strip_comments(text: str) -> str:
    out = []
    for line in text.splitlines():
        in_string = False
        for i, ch in enumerate(line):
            if ch == '"':
                in_string = not in_string
            elif ch == "#" and not in_string:
                line = line[:i]
                break
        out.append(line)
    return "\n".join(out)


def _commands(text: str) -> List[tuple]:
    """(command name lower-cased, [arguments]) for every command call; handles quoted arguments."""
    text = _strip_comments(text)
    calls = []
    for match in re.finditer(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(", text):
        depth, i = 1, match.end()
        while depth and i < len(text):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        body = text[match.end(): i - 1]
        args = [a[1:-1] if a.startswith('"') else a for a in re.findall(r'"[^"]*"|[^\s"]+', body)]
        calls.append((match.group(1).lower(), args))
    return calls


def _expand(args: List[str], variables: Dict[str, List[str]]) -> List[str]:
    out: List[str] = []
    for arg in args:
        whole = re.fullmatch(r"\$\{([A-Za-z0-9_]+)\}", arg)
        if whole and whole.group(1) in variables:
            out.extend(variables[whole.group(1)])
            continue
        out.append(re.sub(r"\$\{([A-Za-z0-9_]+)\}", lambda m: " ".join(variables.get(m.group(1), [m.group(0)])), arg))
    return out


def _scripted_modules(path: Path) -> Dict[str, Dict[str, List[str]]]:
    """NAME → {"SCRIPTS": [...], "RESOURCES": [...], "dir": folder} for each slicerMacroBuildScriptedModule call."""
    variables: Dict[str, List[str]] = {}
    modules: Dict[str, Dict[str, List[str]]] = {}
    for name, args in _commands(path.read_text(encoding="utf-8")):
        if name == "set" and args:
            variables[args[0]] = _expand(args[1:], variables)
        elif name == "slicermacrobuildscriptedmodule":
            args = _expand(args, variables)
            info: Dict[str, List[str]] = {"SCRIPTS": [], "RESOURCES": []}
            key = None
            for arg in args:
                if arg in ("NAME", "SCRIPTS", "RESOURCES"):
                    key = arg
                elif arg in ("WITH_GENERIC_TESTS", "WITH_SUBDIR", "VERBOSE"):
                    key = None
                elif key == "NAME":
                    info["NAME"] = [arg]
                elif key:
                    info[key].append(arg)
            modules[info["NAME"][0]] = info
    return modules


def _listed(path: Path) -> Set[Path]:
    """Every file the CMake file gives to slicerMacroBuildScriptedModule, as absolute paths."""
    files = set()
    for info in _scripted_modules(path).values():
        for entry in info["SCRIPTS"]:
            entry = entry if entry.endswith(".py") else entry + ".py"
            files.add((path.parent / entry).resolve())
        for entry in info["RESOURCES"]:
            files.add((path.parent / entry).resolve())
    return files


def _shipped() -> Set[Path]:
    """What must be installed: found by globbing now, not by a list kept in this test."""
    found: Set[Path] = set()
    for root in (MODULE_DIR, CORE):
        for p in root.rglob("*.py"):
            if "__pycache__" in p.parts or "Testing" in p.relative_to(root).parts:
                continue
            found.add(p.resolve())
    found |= {p.resolve() for p in CORE.glob("py.typed")}
    for pattern in ("Resources/UI/*.ui", "Resources/Icons/*.png", "Resources/*.txt"):
        found |= {p.resolve() for p in MODULE_DIR.glob(pattern)}
    found |= {p.resolve() for p in (REPO / "Resources").glob("*.txt")}
    models = REPO / "Resources" / "Models"
    if models.is_dir():
        found |= {p.resolve() for p in models.iterdir() if p.is_file() and not p.name.startswith(".")}
    return found


def _all_listed() -> Set[Path]:
    return _listed(TOP) | _listed(MODULE_CMAKE)


def test_top_level_follows_the_extension_template():
    calls = _commands(TOP.read_text(encoding="utf-8"))
    names = [c[0] for c in calls]
    assert names[0] == "cmake_minimum_required" and "project" in names
    sets = {args[0]: args[1:] for name, args in calls if name == "set" and args}
    for var in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert sets.get(var) and sets[var][0], var
    assert sets["EXTENSION_DEPENDS"] == ["PyTorch"]
    assert ("find_package", ["Slicer", "REQUIRED"]) in calls
    assert ("include", ["${Slicer_USE_FILE}"]) in calls
    assert ("add_subdirectory", ["MedSynth"]) in calls
    order = [c for c in calls if c[0] == "include"]
    assert order[-2:] == [("include", ["${Slicer_EXTENSION_GENERATE_CONFIG}"]), ("include", ["${Slicer_EXTENSION_CPACK}"])]


def test_module_cmake_builds_the_module_and_its_test():
    calls = _commands(MODULE_CMAKE.read_text(encoding="utf-8"))
    modules = _scripted_modules(MODULE_CMAKE)
    assert list(modules) == ["MedSynth"]
    scripts = modules["MedSynth"]["SCRIPTS"]
    assert scripts[0] == "MedSynth.py"
    assert all(s.startswith("MedSynthLib/") for s in scripts[1:]) and "MedSynthLib/__init__.py" in scripts
    assert ("slicer_add_python_unittest", ["SCRIPT", "${MODULE_NAME}.py"]) in calls


def test_core_package_installed_as_a_package_next_to_the_module():
    """The core is built from the top-level folder so relative paths keep ``MedSynthLogic/`` as a package."""
    modules = _scripted_modules(TOP)
    assert "MedSynthLogic" in modules
    scripts = modules["MedSynthLogic"]["SCRIPTS"]
    assert "MedSynthLogic/__init__.py" in scripts
    assert all(s.startswith("MedSynthLogic/") for s in scripts)
    assert not any(".." in Path(s).parts for s in _all_listed() | set(map(Path, scripts)))


def test_every_shipped_file_is_listed():
    missing = sorted(str(p.relative_to(REPO)) for p in _shipped() - _all_listed())
    assert not missing, (
        "not listed in CMakeLists.txt (MedSynthLogic, Resources) or MedSynth/CMakeLists.txt, so a built "
        f"extension would lack them: {missing}"
    )


def test_every_listed_file_exists():
    listed = _all_listed()
    models = {p for p in listed if p.parent == (REPO / "Resources" / "Models").resolve()}
    absent = sorted(str(p.relative_to(REPO)) for p in listed - models if not p.is_file())
    assert not absent, f"listed in CMake but missing (the configure step would fail): {absent}"


def test_bundled_model_is_listed_where_model_file_looks():
    model_file = pytest.importorskip("MedSynthLogic.model_file")
    expected = (REPO / "Resources" / "Models" / model_file.BUNDLED_NAME).resolve()
    assert expected in _listed(TOP), "the bundled model must be installed as Resources/Models/<name> next to MedSynthLogic/"
    if not expected.is_file():
        pytest.skip(f"{expected.relative_to(REPO)} is not in this checkout yet; configuring the extension needs it")


def test_a_skipped_self_test_is_not_run_and_the_licence_is_ours():
    """slicer.testing.runUnitTest counts a skip as a success: unittest's summary of a run that passed with a skip
    must match the CTest SKIP_REGULAR_EXPRESSION, and a run with a failure must not (CTest skips on a match whatever
    the exit code); the package must ship the project's LICENSE, not Slicer's (UseSlicer.cmake's default)."""
    cmake = _strip_comments(MODULE_CMAKE.read_text(encoding="utf-8"))
    (pattern,) = re.findall(r'SKIP_REGULAR_EXPRESSION "([^"]+)"', cmake)
    pattern = pattern.replace("\\\\", "\\")  # the CMake string's escapes: \\( is the regex \(
    assert re.search(pattern, "Ran 4 tests in 31.2s\n\nOK (skipped=1)")
    assert not re.search(pattern, "Ran 4 tests in 31.2s\n\nFAILED (failures=1, skipped=1)")  # a failure beside it fails
    assert not re.search(pattern, "Ran 4 tests in 31.2s\n\nOK")
    top = _strip_comments(TOP.read_text(encoding="utf-8"))
    assert "set(EXTENSION_LICENSE_FILE ${CMAKE_CURRENT_SOURCE_DIR}/LICENSE)" in top
    assert top.index("EXTENSION_LICENSE_FILE") < top.index("include(${Slicer_USE_FILE})")
    assert "Apache License" in (REPO / "LICENSE").read_text(encoding="utf-8")
