"""Device choice: one place that turns "auto"/"cpu"/"cuda[:N]" into a torch.device with a clear error."""

from __future__ import annotations

import re

import torch

from .errors import ResourceError, UsageError

_CUDA = re.compile(r"^cuda(?::(\d+))?$")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cpu``; ``cuda`` / ``cuda:N`` (``ResourceError`` if absent); ``mps``.

    Asking for a GPU explicitly never silently falls back to the CPU, because a CPU run can be 100× slower.
    """
    key = (name or "auto").strip().lower()
    if key == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if key == "cpu":
        return torch.device("cpu")
    match = _CUDA.match(key)
    if match:
        if not torch.cuda.is_available():
            raise ResourceError(
                "A CUDA GPU was requested but none is available to PyTorch.",
                "Use --device cpu (or auto), or install a CUDA build of PyTorch matching your driver "
                f"(this PyTorch {torch.__version__} has CUDA {torch.version.cuda or 'none'}).",
            )
        index = int(match.group(1) or 0)
        count = torch.cuda.device_count()
        if index >= count:
            raise ResourceError(f"GPU cuda:{index} was requested but only {count} GPU(s) are visible.", "Use cuda:0 … cuda:{count - 1}.")
        return torch.device(f"cuda:{index}")
    if key == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ResourceError("Apple MPS was requested but is not available.", "Use --device cpu or auto.")
        return torch.device("mps")
    raise UsageError(f"Unknown device {name!r}.", "Use auto, cpu, cuda, cuda:N or mps.")


__all__ = ["resolve_device"]
