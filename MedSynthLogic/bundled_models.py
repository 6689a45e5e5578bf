"""Where the models shipped with MedSynth lie, and which they are, without importing torch.

The Slicer panel lists them before PyTorch may be installed, so this module only reads the folder. The default
comes first; the others (e.g. the paper's 3-stage FCN once a U-Net is the default) stay one click away.
"""

from __future__ import annotations

from pathlib import Path
from typing import List

#: File name of the paper's 3-stage FCN in :func:`models_dir` (what a ``unet3d_refiner`` recipe refines).
PAPER_FCN_NAME = "medsynth_t1ce_t2_nie2018.safetensors"
#: File name of the default model in :func:`models_dir`.
DEFAULT_NAME = "medsynth_t1ce_t2.safetensors"


def models_dir() -> Path:
    """``Resources/Models`` beside the package: the repository root in a checkout, qt-scripted-modules in Slicer."""
    return Path(__file__).resolve().parents[1] / "Resources" / "Models"


def bundled_model_files(folder: "Path | None" = None) -> List[Path]:
    """The ``.safetensors`` files in ``folder`` (default :func:`models_dir`), the default model first, then by name;
    hidden files are left out (a write killed half-way leaves its ``.name.XXXX.tmp.safetensors``, ``atomic``)."""
    folder = models_dir() if folder is None else Path(folder)
    if not folder.is_dir():
        return []
    files = (p for p in folder.glob("*.safetensors") if p.is_file() and not p.name.startswith("."))
    return sorted(files, key=lambda p: (p.name != DEFAULT_NAME, p.name))
