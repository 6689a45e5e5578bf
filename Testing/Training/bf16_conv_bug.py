"""Reproduces the oneDNN bf16 bug behind the NaN of CPU bf16 training, and checks that ``BF16SafeConv3d`` avoids it.

For each shape, one 3D convolution's forward + backward runs ``--repeats`` times on the same input under CPU bf16
autocast, with ``nn.Conv3d`` and with ``models.BF16SafeConv3d``. A correct kernel gives the same weight gradient every
time; the script prints how many repeats gave a gradient over 100× the first one's largest value ("garbage") and the
largest difference between repeats relative to the first gradient's largest value ("spread"). On a CPU without
AVX-512 BF16 autocast is emulated by other kernels, so the bug may not show there.

    python Testing/Training/bf16_conv_bug.py --repeats 20
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from MedSynthLogic.models import BF16SafeConv3d  # noqa: E402

#: (in channels, out channels, batch, spatial shape): the paper's D at its last convolution (16³ patches → 2³ after
#: three poolings; batch 2×64 = real and fake), small variants, and shapes with every edge ≥ 3 for contrast.
SHAPES = [
    (128, 256, 128, (2, 2, 2)),
    (32, 32, 1, (2, 2, 2)),
    (16, 16, 4, (2, 3, 3)),
    (1, 16, 4, (2, 2, 2)),
    (32, 32, 16, (1, 1, 1)),
    (128, 128, 1, (3, 3, 3)),
    (128, 128, 1, (6, 6, 6)),
    (64, 128, 2, (4, 4, 4)),
]


def repeat_gradients(conv: nn.Module, batch: int, shape: Tuple[int, ...], repeats: int) -> Tuple[int, float, str]:
    """(garbage repeats, relative spread, output dtype) of the weight gradient over ``repeats`` identical calls."""
    torch.manual_seed(0)
    x = torch.randn(batch, conv.in_channels, *shape)
    grads, out_dtype = [], ""
    for _ in range(repeats):
        conv.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(x)
        out_dtype = str(y.dtype).replace("torch.", "")
        (y.float() * 1e-3).sum().backward()
        grads.append(conv.weight.grad.detach().double().clone())
    first = float(grads[0].abs().max())
    garbage = sum(float(g.abs().max()) > 100 * first for g in grads)
    spread = max(float((g - grads[0]).abs().max()) for g in grads) / max(first, 1e-30)
    return garbage, spread, out_dtype


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, avx512_bf16 in /proc/cpuinfo: {'avx512_bf16' in flags}")
    print(f"{'cin':>4} {'cout':>4} {'batch':>5} {'spatial':>10} | nn.Conv3d: garbage/{args.repeats}, spread, out | BF16SafeConv3d: garbage, spread, out")
    for cin, cout, batch, shape in SHAPES:
        torch.manual_seed(1)
        plain = nn.Conv3d(cin, cout, 3, padding=1)
        safe = BF16SafeConv3d(cin, cout, 3, padding=1)
        safe.load_state_dict(plain.state_dict())
        g0, s0, d0 = repeat_gradients(plain, batch, shape, args.repeats)
        g1, s1, d1 = repeat_gradients(safe, batch, shape, args.repeats)
        print(f"{cin:>4} {cout:>4} {batch:>5} {str(shape):>10} | {g0:>3} {s0:9.3g} {d0:>8} | {g1:>3} {s1:9.3g} {d1:>8}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
