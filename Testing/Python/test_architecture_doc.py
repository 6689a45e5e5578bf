"""docs/ARCHITECTURE.md stays true: every module its tables list exists, and every public name a table lists in
backticks exists in that module (read from the source, nothing is imported).

The doc's convention, which this test reads: in the "public API" column a bare name in backticks is a public name
of the row's module (``name(args)`` a function or class, ``Class.attr`` checks ``Class``); ``module.name`` is a name
of another listed module; a leading dot marks an attribute or method, quotes a value, and a name that is a
parameter of a call on the same row is that parameter. Tokens that are not names (paths, commands) are skipped.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "ARCHITECTURE.md"
PACKAGES = (REPO / "MedSynthLogic", REPO / "MedSynth" / "MedSynthLib")
IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def _cells(line: str) -> List[str]:
    """A table row's cells, split on the pipes outside backticks."""
    cells, current, in_code = [], [], False
    for ch in line.strip().strip("|"):
        if ch == "`":
            in_code = not in_code
        if ch == "|" and not in_code:
            cells.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    cells.append("".join(current).strip())
    return cells


def _rows(text: str) -> Iterator[Tuple[str, str]]:
    """(module, API cell) of each module table row: first cell a backticked ``name.py``, ``package/`` or
    ``package/name.py`` (module ``package.name``)."""
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        cells = _cells(line)
        match = re.match(rf"`({IDENT}(?:/{IDENT})*)(\.py|/)`", cells[0])
        if match and len(cells) >= 3:
            yield match.group(1).replace("/", "."), cells[2]


def _module_file(name: str) -> Optional[Path]:
    relative = name.replace(".", "/")
    for package in PACKAGES:
        for path in (package / f"{relative}.py", package / relative / "__init__.py"):
            if path.is_file():
                return path
    return None


def _defined(path: Path) -> Set[str]:
    """Top-level names of a module: definitions, assignments and imports (re-exports count)."""
    names: Set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def _parameters(tokens: List[str]) -> Set[str]:
    """The words inside the calls written on a row (``f(a, b=1)`` → a, b): a bare one of these is a parameter."""
    params: Set[str] = set()
    for token in tokens:
        if "(" in token:
            params.update(re.findall(IDENT, token[token.index("(") + 1 :]))
    return params


def _references(api: str) -> Iterator[Tuple[Optional[str], str, str]]:
    """(qualifier or None, name, token) of each name a row's API cell lists."""
    tokens = re.findall(r"`([^`]+)`", api)
    params = _parameters(tokens)
    for token in tokens:
        match = re.match(rf"({IDENT})(?:\.({IDENT}))?", token)
        if not match or token.startswith("_") or re.search(r"\.(py|md|json|csv|png|h5|gz|txt)$", token):
            continue  # not a name, a private one, or a file
        rest = token[match.end():]
        if rest and not rest.startswith(("(", " ->", "/", ".")):
            continue  # a command, a parameter with its default, a file pattern: not a name
        head, attr = match.group(1), match.group(2)
        if attr is None and not rest and head in params:
            continue
        yield head, attr or "", token


def _problems() -> List[str]:
    text = DOC.read_text(encoding="utf-8")
    rows = list(_rows(text))
    files: Dict[str, Optional[Path]] = {name: _module_file(name) for name, _ in rows}
    problems = [f"`{name}` is in the table but not in the code" for name, path in files.items() if path is None]
    for module, api in rows:
        path = files[module]
        if path is None:
            continue
        own = _defined(path)
        for head, attr, token in _references(api):
            if head in own:
                continue
            if head in files and files[head] is not None:
                if attr and attr not in _defined(files[head]):  # type: ignore[arg-type]
                    problems.append(f"{module} row: `{token}`: {head} has no {attr}")
                continue
            if attr and token.startswith(f"{head}.{attr}"):
                continue  # an outside library's name (torch.load, slicer.mrmlScene)
            problems.append(f"{module} row: `{token}`: no {head} in {path.relative_to(REPO)}")
    return problems


def test_every_module_and_public_name_in_the_architecture_tables_exists() -> None:
    assert _problems() == []


def test_every_core_module_is_in_the_table() -> None:
    """A new module has a row (its job and its public names), so the doc never falls behind the code."""
    listed = {name for name, _ in _rows(DOC.read_text(encoding="utf-8"))}
    present = {p.stem for p in (REPO / "MedSynthLogic").glob("*.py") if p.stem != "__init__"}
    present |= {p.name for p in (REPO / "MedSynthLogic").iterdir() if (p / "__init__.py").is_file()}
    present |= {p.stem for p in (REPO / "MedSynth" / "MedSynthLib").glob("*.py") if p.stem != "__init__"}
    assert sorted(present - listed) == []


def test_the_reader_finds_names_and_skips_what_is_not_one() -> None:
    """The parsing rules themselves, on a made-up row."""
    api = ('`f(a, mask=None) -> int`, `Thing.attr`, `other.g`, `.method()`, `"value"`, `mask`, `x=1`, `medsynth train`, '
           '`<case>_t2.nii.gz`, `jobs.py`, `a|b`')
    refs = [(head, attr) for head, attr, _ in _references(api)]
    assert refs == [("f", ""), ("Thing", "attr"), ("other", "g")]
    assert _cells("| `a.py` | job | `x` or `\"a\"|\"b\"` |") == ["`a.py`", "job", "`x` or `\"a\"|\"b\"`"]
    assert [m for m, _ in _rows("| `a.py` | j | x |\n| `pkg/` (package) | j | x |\n| `pkg/b.py` | j | x |")] == ["a", "pkg", "pkg.b"]


def _logic_imports() -> Dict[str, Set[str]]:
    """Module (``training`` for the package) → the MedSynthLogic modules it imports, read from the source."""
    root = REPO / "MedSynthLogic"
    units = {path.stem: [path] for path in root.glob("*.py") if path.stem != "__init__"}
    units["training"] = sorted((root / "training").glob("*.py"))
    imports: Dict[str, Set[str]] = {}
    for unit, files in units.items():
        found: Set[str] = set()
        for path in files:
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not isinstance(node, ast.ImportFrom):
                    continue
                inside_training = path.parent.name == "training"
                if node.level == (2 if inside_training else 1):
                    found |= {node.module.split(".")[0]} if node.module else {alias.name for alias in node.names}
                elif node.level == 0 and (node.module or "").startswith("MedSynthLogic."):
                    found.add(node.module.split(".")[1])
        imports[unit] = (found & set(units)) - {unit}
    return imports


def test_the_module_map_puts_every_module_above_what_it_imports():
    """"Each line imports only from the lines below it": two imports within a line and a missing module had made
    it untrue (a review, session 42)."""
    block = DOC.read_text(encoding="utf-8").split("## Module map", 1)[1].split("```", 2)[1]
    line_of = {}
    for number, line in enumerate(block.strip().splitlines()):
        for name in re.findall(rf"\b({IDENT})(?:\.py)?\b", re.sub(r"\(faces[^)]*\)", "", line)):
            line_of.setdefault(name, number)
    imports = _logic_imports()
    assert set(imports) <= set(line_of), f"not in the module map: {sorted(set(imports) - set(line_of))}"
    upward = [f"{unit} → {used}" for unit, used_set in imports.items() for used in used_set
              if line_of[used] <= line_of[unit]]
    assert not upward, f"imports from its own line or a line above: {upward}"
