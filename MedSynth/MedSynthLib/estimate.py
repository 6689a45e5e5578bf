"""How long a synthesis will take, said before it starts.

Time = start-up + voxels × stages × passes × seconds per voxel-stage, where passes is 2 with flip averaging and
about 3 with the uncertainty map (``synthesis.passes_to_run``).

Where the rates come from (until this computer has measured its own, see ``RateBook``):

- CPU without native bf16, where synthesis runs in float32: ``Testing/Benchmarks/results/avx2_real_synthesize.txt``,
  a 2-core AMD EPYC with AVX2 only (session 40): the default model (4 voxel-stages) on a 240×240×155 BraTS T1ce
  (8.93 Mvox) in 50.8 s for the whole process → (50.8 − start-up) / (8.93e6 × 4) = 1.31 µs per voxel-stage; the
  paper's FCN alone (3) took 42.2 s there, this rate says 39 s. (The rate of ``inference_cpu.txt``, 23.7 s for 3
  stages in float32 on an AVX-512 EPYC, said 35 s for the default where the AVX2 CPU took 51 s.)
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
STARTUP_SECONDS = 4.0
CPU_SECONDS_PER_VOXEL_STAGE = (50.8 - STARTUP_SECONDS) / (BENCHMARK_VOXELS * 4)
GPU_SECONDS_PER_VOXEL_STAGE = 0.2 / (BENCHMARK_VOXELS * 3)
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
        basis = (_("benchmark rate of a 2-core CPU computing in float32; a GPU, if present, is much faster") if key == "auto"
                 else _("benchmark rate of a 2-core CPU computing in float32"))
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
