"""What this CPU computes natively, read without importing torch (the Slicer panel asks before torch is installed)."""

from __future__ import annotations

import functools
from pathlib import Path

#: CPU flags of native bf16 arithmetic (oneDNN's fast bf16 kernels need one of them).
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively, from /proc/cpuinfo (False where that file is missing: macOS, Windows)."""
    try:
        words = set(Path("/proc/cpuinfo").read_text(errors="replace").split())
    except OSError:
        return False
    return any(flag in words for flag in CPU_BF16_FLAGS)


__all__ = ["CPU_BF16_FLAGS", "cpu_has_native_bf16"]
