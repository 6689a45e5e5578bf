"""A convolution and the activation after it, run as one oneDNN call on the CPU at inference.

Why: in a whole-volume FCN synthesis in bf16 on the 2-core AVX-512 BF16 machine, the ReLUs alone took about a third
of the convolutions' time (2.2 of 7.2 s, cProfile of ``medsynth synthesize``): each reads and writes a 64-channel
activation that the convolution has just written. oneDNN applies the ReLU while it writes the convolution's output
(a "post-op"), which PyTorch exposes as ``torch.ops.mkldnn._convolution_pointwise`` (the op its own compiler emits
for this fusion). The same call with no activation still saves autocast's weight cast on every call, since the
weight is kept in the compute dtype. Where that op, the CPU or the layout is missing, the module runs the plain calls.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn


def _pointwise_op() -> Optional[object]:
    """PyTorch's fused oneDNN convolution + element-wise op, or None in a build without it."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._convolution_pointwise
    except (AttributeError, RuntimeError):
        return None


#: The activations a ``FusedConv3d`` can apply: oneDNN's post-op names.
ACTIVATIONS = ("none", "relu", "leaky_relu")


class FusedConv3d(nn.Module):
    """``act(conv(x))`` for inference only (no gradients), from an eval-mode ``nn.Conv3d`` (norms already folded in).

    ``activation``: ``"none"``, ``"relu"`` or ``"leaky_relu"`` (with ``slope``). The fused call is taken for a
    channels-last 3D input on the CPU whose edges are at least the kernel; its dtype is the CPU autocast dtype when
    autocast is on (so the module behaves like the layers it replaces under ``torch.autocast``), else the input's.
    The weight is kept once per dtype. Any other input takes the plain path.
    """

    def __init__(self, conv: nn.Conv3d, activation: str = "relu", slope: float = 0.0) -> None:
        super().__init__()
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("FusedConv3d needs an ungrouped convolution with numeric zero padding")
        if activation not in ACTIVATIONS:
            raise ValueError(f"FusedConv3d: unknown activation {activation!r}; one of {', '.join(ACTIVATIONS)}")
        self.conv = conv
        self.activation = activation
        self.slope = float(slope)
        self._weights: Dict[torch.dtype, tuple] = {}
        self._op = _pointwise_op()

    def _fused_weights(self, dtype: torch.dtype) -> tuple:
        if dtype not in self._weights:
            w = self.conv.weight.detach().to(dtype).contiguous(memory_format=torch.channels_last_3d)
            b = None if self.conv.bias is None else self.conv.bias.detach().to(dtype)
            self._weights[dtype] = (w, b)
        return self._weights[dtype]

    def _can_fuse(self, x: torch.Tensor) -> bool:
        return (
            self._op is not None
            and x.device.type == "cpu"
            and x.dim() == 5
            and not torch.is_grad_enabled()
            and x.is_contiguous(memory_format=torch.channels_last_3d)
            and min(x.shape[2:]) >= max(self.conv.kernel_size)
        )

    def _plain(self, x: torch.Tensor) -> torch.Tensor:
        """The two calls; the activation in place when no gradient is recorded (``y`` is fresh), as ``models.act_fresh``."""
        y = self.conv(x)
        inplace = not torch.is_grad_enabled()
        if self.activation == "relu":
            return F.relu(y, inplace=inplace)
        if self.activation == "leaky_relu":
            return F.leaky_relu(y, self.slope, inplace=inplace)
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._can_fuse(x):
            return self._plain(x)
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        if dtype not in (torch.float32, torch.bfloat16):
            return self._plain(x)
        w, b = self._fused_weights(dtype)
        c = self.conv
        scalars: List[float] = [self.slope] if self.activation == "leaky_relu" else []
        try:
            return self._op(  # type: ignore[operator]
                x.to(dtype), w, b, list(c.padding), list(c.stride), list(c.dilation), c.groups, self.activation, scalars, ""
            )
        except (RuntimeError, TypeError):
            # the op is internal to PyTorch: a build whose signature or kernels differ falls back for good
            self._op = None
            return self._plain(x)


__all__ = ["ACTIVATIONS", "FusedConv3d"]
