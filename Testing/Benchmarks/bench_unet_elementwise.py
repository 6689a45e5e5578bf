"""Why the U-Net's eval forward uses batch norm and in-place activations (a script, not a test).

Times the per-voxel passes of one full-resolution activation of a whole-volume U-Net forward (16 channels over the
176×208×176 frame of a BraTS brain, channels-last, bf16 by default): the per-channel affine map of an eval-mode
instance norm done as ``addcmul`` with broadcast factors, as two ops, and as eval-mode ``batch_norm``; a leaky ReLU
and an addition, each into a new tensor and in place. On the CPU a new tensor of this size costs its page faults,
which is most of what an elementwise pass costs.

    python Testing/Benchmarks/bench_unet_elementwise.py [--dtype bf16|fp32] [--shape 16,176,208,176]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import cpu_model, simd_flags  # noqa: E402


def best_of(fn: Callable[[], torch.Tensor], repeats: int) -> float:
    """Best wall time of ``repeats`` calls after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--shape", default="16,176,208,176", help="C,Z,Y,X of the activation")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    c, *spatial = (int(v) for v in args.shape.split(","))
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, c, *spatial, generator=g).to(dtype).contiguous(memory_format=torch.channels_last_3d)
    mean, var = torch.randn(c, generator=g), torch.rand(c, generator=g) + 0.5
    weight, bias = torch.rand(c, generator=g), torch.randn(c, generator=g)
    scale = weight * torch.rsqrt(var + 1e-5)
    shift = bias - mean * scale
    s5, h5 = scale.to(dtype).view(1, -1, 1, 1, 1), shift.to(dtype).view(1, -1, 1, 1, 1)
    scratch = x.clone()
    rows = {
        "affine as addcmul (new tensor)": lambda: torch.addcmul(h5, x, s5),
        "affine as mul, then add_ (new tensor)": lambda: (x * s5).add_(h5),
        "affine as eval batch_norm (new tensor)": lambda: F.batch_norm(x, mean, var, weight, bias, False, 0.0, 1e-5),
        "leaky_relu (new tensor)": lambda: F.leaky_relu(x, 0.1),
        "leaky_relu_ (in place)": lambda: F.leaky_relu_(scratch, 0.1),
        "x + y (new tensor)": lambda: x + scratch,
        "add_ (in place)": lambda: scratch.add_(x),
    }
    print(f"# cpu={cpu_model()} simd={simd_flags()} torch={torch.__version__} threads={args.threads}")
    print(f"# activation (1, {c}, {', '.join(map(str, spatial))}) {args.dtype}, channels-last, "
          f"{x.numel() * x.element_size() / 2**20:.0f} MiB; best of {args.repeats}")
    with torch.inference_mode():
        for name, fn in rows.items():
            print(f"{name:40s} {1e3 * best_of(fn, args.repeats):8.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
