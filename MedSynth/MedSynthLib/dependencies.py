"""Make torch and the packages of ``Resources/requirements.txt`` importable in Slicer, asking the user first.

Never at import time. torch comes from the PyTorch extension (it picks the wheel matching the GPU driver); the rest
through ``slicer.packaging.pip_ensure`` (Slicer ≥ 5.12) or ``slicer.util.pip_install``, with numpy, scipy and SimpleITK
pinned to the versions Slicer ships so installing never replaces them. A failed install (pip's non-zero exit, which
Slicer raises as ``CalledProcessError``) becomes a ``RuntimeError`` with what to do, which the panel shows.
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

from .i18n import tr as _

#: Packages Slicer already ships; never reinstalled (pinned to the running versions while installing the rest).
PROTECTED_PACKAGES = ("numpy", "scipy", "SimpleITK")
#: Distribution names whose import name differs.
IMPORT_NAMES = {"scikit-image": "skimage"}
#: The requirements a synthesis imports besides torch (the model file); the others (HDF5, SSIM, figures, progress bars)
#: only preparing, training and evaluating need, so a clinician's first Synthesize does not install them.
SYNTHESIS_REQUIREMENTS = ("safetensors",)


def requirements_path(module_dir: Path) -> Path:
    """``Resources/requirements.txt``: the installed one beside the core package, or the source checkout's."""
    import MedSynthLogic

    core_parent = Path(MedSynthLogic.__file__).resolve().parents[1]
    for candidate in (Path(module_dir) / "Resources" / "requirements.txt", core_parent / "Resources" / "requirements.txt"):
        if candidate.is_file():
            return candidate
    raise RuntimeError(_("Resources/requirements.txt is missing from the MedSynth installation."))


def package_name(spec: str) -> str:
    """The distribution name of a requirement specifier."""
    return re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0]


def requirement_lines(requirements: Path, only: Optional[Sequence[str]] = None) -> List[str]:
    """The requirement specifiers of the file, without comments; ``only``: just these packages (by name)."""
    lines = (line.split("#", 1)[0].strip() for line in Path(requirements).read_text(encoding="utf-8").splitlines())
    return [spec for spec in lines if spec and not spec.startswith("-") and (only is None or package_name(spec) in only)]


def missing_requirements(requirements: Path, only: Optional[Sequence[str]] = None) -> List[str]:
    """The requirement lines (of ``only``'s packages, if given) whose package cannot be imported here."""
    missing = []
    for spec in requirement_lines(requirements, only):
        name = package_name(spec)
        if importlib.util.find_spec(IMPORT_NAMES.get(name, name.replace("-", "_"))) is None:
            missing.append(spec)
    return missing


def protected_constraints_file(folder: Path) -> Path:
    """A pip constraints file pinning Slicer's own numpy, scipy and SimpleITK, so installing never replaces them."""
    lines = []
    for name in PROTECTED_PACKAGES:
        try:
            lines.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    path = Path(folder) / "MedSynth-constraints.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def torch_importable() -> bool:
    return importlib.util.find_spec("torch") is not None


def missing_packages(requirements: Path, only: Optional[Sequence[str]] = None) -> List[str]:
    """torch, when it cannot be imported, and the requirement lines (of ``only``'s packages) that cannot."""
    return ([] if torch_importable() else ["torch"]) + missing_requirements(requirements, only)


def ensure_torch(ask_confirmation: bool = True) -> bool:
    """torch through the PyTorch extension; False when the user declines."""
    if torch_importable():
        return True
    try:
        import PyTorchUtils
    except ImportError as exc:
        raise RuntimeError(_("Install the 'PyTorch' extension from the Extensions Manager and restart Slicer.")) from exc
    torch_logic = PyTorchUtils.PyTorchUtilsLogic()
    if torch_logic.torchInstalled():
        return True
    with installing("PyTorch"):
        return torch_logic.installTorch(askConfirmation=ask_confirmation, torchVersionRequirement=">=2.0") is not None


class InstallFailed(RuntimeError):
    """A failed installation, said with what to do; ``shown_by_slicer``: Slicer has already shown its own dialog."""

    def __init__(self, message: str, shown_by_slicer: bool = False) -> None:
        super().__init__(message)
        self.shown_by_slicer = shown_by_slicer


def shown_by_slicer(exc: BaseException) -> bool:
    """Whether Slicer already showed the user this failure (then the panel says it in its status line, not in a
    second dialog)."""
    return bool(getattr(exc, "shown_by_slicer", False))


@contextlib.contextmanager
def installing(what: str) -> Iterator[None]:
    """Turn a failed pip run into an :class:`InstallFailed` that says what failed and what to do (the Qt slot would
    swallow it). Slicer 5.12 and later show "Package installation failed." with pip's log, then raise
    ``CalledProcessError(code, "pip install")`` (``slicer.packaging._pip_install_with_dialog``); earlier versions and
    other pip runs raise with the argument list and show nothing."""
    try:
        yield
    except OSError as exc:
        raise InstallFailed(_("Installing {what} failed: {error}. Check that Slicer's folder can be written to, then "
                              "press the button again.").format(what=what, error=exc)) from exc
    except subprocess.CalledProcessError as exc:
        raise InstallFailed(_("Installing {what} failed (pip exited with {code}). The Python console shows pip's "
                              "output; check the internet connection (or the proxy), then press the button again.").format(
            what=what, code=exc.returncode), shown_by_slicer=exc.cmd == "pip install") from exc


def ensure_dependencies(requirements: Path, temp_folder: Path, ask_confirmation: bool = True,
                        only: Optional[Sequence[str]] = None) -> bool:
    """torch, then the requirements (``only``: just these packages, e.g. ``SYNTHESIS_REQUIREMENTS``); returns False
    when the user declines either."""
    import slicer

    if not ensure_torch(ask_confirmation):
        return False
    constraints = protected_constraints_file(temp_folder)
    try:
        import slicer.packaging as packaging
    except ImportError:
        packaging = None
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        try:
            with installing(_("MedSynth's Python packages")):
                packaging.pip_ensure(requirement_lines(requirements, only), constraints=str(constraints),
                                     prompt_install=ask_confirmation, requester="MedSynth")
        except RuntimeError as exc:
            if "declined" in str(exc):  # Slicer's "User declined package installation"
                return False
            raise
        return True
    missing = missing_requirements(requirements, only)
    if not missing:
        return True
    message = _("MedSynth needs these Python packages, which will be downloaded and installed now:") + "\n" + "\n".join(missing)
    if ask_confirmation and not slicer.util.confirmOkCancelDisplay(message):
        return False
    with installing(_("MedSynth's Python packages")):
        slicer.util.pip_install(["-c", str(constraints), *missing])
    return True
