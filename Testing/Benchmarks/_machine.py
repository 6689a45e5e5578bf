"""What a benchmark ran on: read once here so every result file names the machine the same way."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Optional


def _proc_line(path: str, prefix: str) -> Optional[str]:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what platform knows."""
    line = _proc_line("/proc/cpuinfo", "model name")
    return line.split(":", 1)[1].strip() if line else (platform.processor() or platform.machine() or "unknown")


def cpu_flags() -> str:
    """The CPU's feature flags (for the SIMD features that decide convolution speed), or ''."""
    line = _proc_line("/proc/cpuinfo", "flags")
    return line.split(":", 1)[1] if line else ""


def simd_flags() -> str:
    """The SIMD features among the CPU's flags that decide convolution speed here (AVX2, AVX-512, bf16), or ''."""
    flags = f" {cpu_flags()} "
    return " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f} " in flags)


def ram_gib() -> Optional[float]:
    """Total RAM in GiB, or None where /proc/meminfo is absent."""
    line = _proc_line("/proc/meminfo", "MemTotal")
    return round(int(line.split()[1]) / 2**20, 1) if line else None
