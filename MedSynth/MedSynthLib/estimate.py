"""How long a synthesis will take, said before it starts.

Time = start-up + voxels × stages × passes × seconds per voxel-stage, where passes is 2 with flip averaging and
about 3 with the uncertainty map (``synthesis.passes_to_run``).

Where the rates come from (until this computer has measured its own, see ``RateBook``):

- CPU: ``Testing/Benchmarks/results/inference_cpu.txt``, the quiet run: a 240×240×155 BraTS T1ce (8.93 Mvox),
  3 stages, in 23.7 s on a 2-core AMD EPYC with torch 2.13 → 23.7 / (8.93e6 × 3) = 0.88 µs per voxel-stage.
  That is float32, what a synthesis computes on CPUs without native bf16 (``avx2_fp32_synthesize.txt``: the default
  held to AVX2 takes 32.8 s; this rate says 35 s).
- CPU with native bf16 (AVX-512 BF16 or AMX), where synthesis runs in bf16:
  ``Testing/Benchmarks/results/fused_inference_synthesize.txt``: the default model (a U-Net stage on the 3-stage FCN,
  4 voxel-stages) in 8.6 s for the whole process on a 2-core Intel Xeon → (8.6 − start-up) / (8.93e6 × 4).
- GPU: ``Testing/Benchmarks/results/inference_cuda.txt``: the same volume size, 3 stages, in 0.2 s on an NVIDIA
  H100 (fp32, tile 192) → 7.5 ns per voxel-stage.
- Start-up: 3.7–4.0 s to start Python, import torch and load the bundled model, timed on the same 2-core machine.

The time depends on the brain's bounding box rather than on the whole grid, and on the machine, so the figure is
a rough guide; after the first synthesis the panel uses the rate measured on this computer instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Sequence

from MedSynthLogic.cpu_features import cpu_has_native_bf16

from .i18n import tr as _

BENCHMARK_VOXELS = 240 * 240 * 155
CPU_SECONDS_PER_VOXEL_STAGE = 23.7 / (BENCHMARK_VOXELS * 3)
GPU_SECONDS_PER_VOXEL_STAGE = 0.2 / (BENCHMARK_VOXELS * 3)
STARTUP_SECONDS = 4.0
CPU_BF16_SECONDS_PER_VOXEL_STAGE = (8.6 - STARTUP_SECONDS) / (BENCHMARK_VOXELS * 4)
BENCHMARK_RATES: Dict[str, float] = {"cpu": CPU_SECONDS_PER_VOXEL_STAGE, "cpu-bf16": CPU_BF16_SECONDS_PER_VOXEL_STAGE,
                                     "cuda": GPU_SECONDS_PER_VOXEL_STAGE}


@dataclass(frozen=True)
class Estimate:
    seconds: float
    basis: str

    def text(self) -> str:
        """One line for the panel, e.g. "about 30 s (benchmark rate of a 2-core CPU)"."""
        seconds = self.seconds
        if seconds < 90:
            return _("Estimated time: about {seconds} s ({basis}).").format(seconds=f"{seconds:.0f}", basis=self.basis)
        return _("Estimated time: about {minutes} min ({basis}).").format(minutes=f"{seconds / 60.0:.1f}", basis=self.basis)


@dataclass
class RateBook:
    """Seconds per voxel-stage per device: the benchmark's until a finished synthesis measured this computer's.

    ``cpu_bf16``: whether this CPU synthesizes in bf16 (``--precision auto``), which picks the CPU benchmark rate.
    """

    measured: Dict[str, float] = field(default_factory=dict)
    cpu_bf16: bool = field(default_factory=cpu_has_native_bf16)

    def rate(self, device: str) -> tuple:
        key = "cuda" if device.startswith("cuda") else device
        if key in self.measured:
            return self.measured[key], _("rate measured on this computer by the last synthesis")
        if key == "cuda":
            return BENCHMARK_RATES["cuda"], _("benchmark rate of an NVIDIA H100")
        if self.cpu_bf16:
            basis = (_("benchmark rate of a 2-core CPU computing in bf16; a GPU, if present, is much faster") if key == "auto"
                     else _("benchmark rate of a 2-core CPU computing in bf16"))
            return BENCHMARK_RATES["cpu-bf16"], basis
        basis = (_("benchmark rate of a 2-core CPU; a GPU, if present, is much faster") if key == "auto"
                 else _("benchmark rate of a 2-core CPU"))
        return BENCHMARK_RATES["cpu"], basis

    def record(self, device: str, shape: Sequence[int], stages: int, passes: float, elapsed_s: float) -> None:
        """Learn this computer's rate from a finished synthesis (start-up time taken off)."""
        work = _voxel_stages(shape, stages, passes)
        if work > 0 and elapsed_s > STARTUP_SECONDS:
            self.measured["cuda" if device.startswith("cuda") else device] = (elapsed_s - STARTUP_SECONDS) / work

    def estimate(self, shape: Sequence[int], stages: int, passes: float, device: str) -> Estimate:
        """``passes``: whole-chain passes (1; 2 with flip averaging; see ``synthesis.passes_to_run``)."""
        rate, basis = self.rate(device)
        return Estimate(STARTUP_SECONDS + _voxel_stages(shape, stages, passes) * rate, basis)


def _voxel_stages(shape: Sequence[int], stages: int, passes: float) -> float:
    voxels = 1.0
    for size in shape:
        voxels *= int(size)
    return voxels * max(1, int(stages)) * max(1.0, float(passes))
