"""PyTorch's instance norm returns a wrong input gradient when its output's gradient arrives channels-last.

This is what broke every U-Net trained from commit efe84af until 2026-12-03: ``InstanceNorm3dKeepingLayout`` then
copied PyTorch's (NCDHW) instance-norm output back to channels-last, so the gradient reaching that output was
channels-last. The gradient of an NCDHW input must not depend on the layout of the incoming gradient; here it
does, in float64 too (so it is not rounding), for a batch of one sample. ``InstanceNorm3dKeepingLayout`` no longer
calls PyTorch's instance norm in training; ``Testing/Python/test_unet.py`` checks its gradients in both layouts.

    python Testing/Training/instance_norm_grad_bug.py
"""

from __future__ import annotations

import platform

import torch
import torch.nn.functional as F


def gradient_gap(shape: tuple, dtype: torch.dtype = torch.float64, seed: int = 0) -> float:
    """‖g_NCDHW − g_channels-last‖ / ‖g_NCDHW‖ for the input gradient of ``F.instance_norm`` on an NCDHW input."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, dtype=dtype, generator=gen)
    dy = torch.randn(shape, dtype=dtype, generator=gen)
    grads = []
    for layout in (torch.contiguous_format, torch.channels_last_3d):
        xi = x.clone().requires_grad_(True)
        F.instance_norm(xi).backward(dy.contiguous(memory_format=layout))
        grads.append(xi.grad)
    return float((grads[0] - grads[1]).norm() / grads[0].norm())


def main() -> int:
    print(f"torch {torch.__version__}, {platform.machine()}, CPU")
    for shape in [(1, 4, 8, 8, 8), (1, 16, 24, 24, 24), (2, 4, 8, 8, 8), (2, 16, 24, 24, 24)]:
        print(f"input {shape}, float64: relative gap between the input gradients = {gradient_gap(shape):.3g}"
              "   (0 is right: the incoming gradient's layout must not matter)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
