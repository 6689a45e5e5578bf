"""Device choice: one place that turns "auto"/"cpu"/"cuda[:N]" into a torch.device with a clear error."""

from __future__ import annotations

import re
from typing import Optional, Union

import torch

from .cpu_features import CPU_BF16_FLAGS, cpu_has_native_bf16
from .errors import ResourceError, UsageError

_CUDA = re.compile(r"^cuda(?::(\d+))?$")


def resolve_device(name: Union[str, torch.device] = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cpu``; ``cuda`` / ``cuda:N`` (``ResourceError`` if absent); ``mps``.

    Asking for a GPU explicitly never silently falls back to the CPU, because a CPU run can be 100× slower.
    A ``torch.device`` is already resolved and is returned as it is.
    """
    if isinstance(name, torch.device):
        return name
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
                f"(this PyTorch {torch.__version__} has CUDA {torch.version.cuda or 'none'}).", reason="device_unavailable",
            )
        index = int(match.group(1) or 0)
        count = torch.cuda.device_count()
        if index >= count:
            raise ResourceError(f"GPU cuda:{index} was requested but only {count} GPU(s) are visible.",
                                f"Use cuda:0 … cuda:{count - 1}.", reason="device_unavailable")
        return torch.device(f"cuda:{index}")
    if key == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ResourceError("Apple MPS was requested but is not available.", "Use --device cpu or auto.",
                                reason="device_unavailable")
        return torch.device("mps")
    raise UsageError(f"Unknown device {name!r}.", "Use auto, cpu, cuda, cuda:N or mps.")


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def autocast_dtype(
    device: torch.device,
    precision: str = "auto",
    cuda_auto: torch.dtype = torch.float16,
    cpu_auto: Optional[torch.dtype] = None,
) -> Optional[torch.dtype]:
    """The autocast dtype for ``precision`` on ``device`` (None: plain float32).

    ``auto`` is ``cpu_auto`` on the CPU (float32 unless the caller says otherwise) and ``cuda_auto`` on a GPU;
    ``bf16`` works on both (fast on CPUs with AVX-512 BF16 or AMX, emulated and slow elsewhere); ``fp16`` on the
    CPU (emulated, far slower than float32) and ``bf16`` on a GPU without bf16 are refused rather than silently run
    in another precision.
    """
    if precision not in PRECISIONS:
        raise UsageError(f"Unknown precision {precision!r}.", f"Use one of {', '.join(PRECISIONS)}.")
    if precision == "fp32":
        return None
    if precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ResourceError("This GPU does not support bfloat16.", "Use --precision fp16 or fp32.")
        return torch.bfloat16
    if precision == "fp16":
        if device.type == "cpu":  # emulated there: the phantom ran for 13 minutes instead of 6 s
            raise UsageError("fp16 is a GPU precision: on the CPU it is emulated and runs many times slower than fp32.",
                             "Use --precision auto (bf16 where this CPU computes it natively) or fp32 on the CPU.")
        return torch.float16
    return cuda_auto if device.type == "cuda" else cpu_auto if device.type == "cpu" else None


def synthesis_dtype(device: torch.device, precision: str = "auto") -> Optional[torch.dtype]:
    """The autocast dtype of a synthesis: ``auto`` is bf16 on CPUs with native bf16, float32 on other CPUs.

    On such a CPU bf16 halves a whole-volume synthesis and changes a trained model's output by about 0.3 % of its
    peak (Testing/Benchmarks/results/unet_bf16_agreement.txt); elsewhere bf16 is emulated and slower than float32.
    Training keeps ``auto`` = float32 on the CPU: its bf16 is a measured choice per run, not a default.
    """
    cpu_auto = torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else None
    return autocast_dtype(device, precision, cpu_auto=cpu_auto)


def arithmetic_name(device: Union[str, torch.device], precision: str = "auto") -> str:
    """What a synthesis with ``precision`` on ``device`` computes in ("bfloat16", "float16" or "float32"), for reports."""
    dtype = synthesis_dtype(resolve_device(device), precision)
    return str(dtype or torch.float32).replace("torch.", "")


__all__ = ["CPU_BF16_FLAGS", "PRECISIONS", "arithmetic_name", "autocast_dtype", "cpu_has_native_bf16", "resolve_device",
           "synthesis_dtype"]
