"""An inference copy of a ``UNet3D``: each block's second norm folded into its first convolution, activations fused.

Why: in eval mode the U-Net's instance norms use running statistics, so each is a per-channel affine map, and a
residual block's ``norm2`` follows ``conv1`` directly: it folds into ``conv1``'s weights exactly as batch norm does
(``torch.nn.utils.fusion.fuse_conv_bn_weights``), and the leaky ReLU after it becomes ``conv1``'s oneDNN post-op
(``fused_conv.FusedConv3d``). Every other convolution becomes a ``FusedConv3d`` without activation, which keeps its
weight in the compute dtype. ``norm1`` (on the residual stream, before zero padding) cannot fold and stays. The copy
gives the model's eval-mode output to float rounding; the caller's model is left untouched.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from .fused_conv import FusedConv3d
from .models import LEAKY_SLOPE, InstanceNorm3dKeepingLayout, ResidualBlock, TrilinearUp, UNet3D, layout_for


def _fold_norm(conv: nn.Conv3d, norm: nn.Module) -> nn.Conv3d:
    """``conv`` followed by ``norm`` (an eval-mode instance norm with running statistics, or Identity) as one convolution."""
    if isinstance(norm, nn.Identity):
        return conv
    if not (isinstance(norm, InstanceNorm3dKeepingLayout) and norm.track_running_stats and norm.affine):
        raise ValueError(f"unet_folding: cannot fold a {type(norm).__name__} into a convolution")
    folded = copy.deepcopy(conv)
    weight, bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias
    )
    folded.weight, folded.bias = weight, bias
    return folded


class FoldedResidualBlock(nn.Module):
    """``ResidualBlock.forward`` in eval mode with ``norm2`` folded into ``conv1`` and both activations after it fused."""

    def __init__(self, block: ResidualBlock) -> None:
        super().__init__()
        self.norm1 = block.norm1
        self.conv1 = FusedConv3d(_fold_norm(block.conv1, block.norm2), "leaky_relu", LEAKY_SLOPE)
        self.conv2 = FusedConv3d(block.conv2, "none")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layout = layout_for(x)
        h = self.norm1(x)
        h = F.leaky_relu(h, LEAKY_SLOPE, inplace=h is not x)
        h = self.conv1(h).contiguous(memory_format=layout)
        h = self.conv2(h).contiguous(memory_format=layout)
        return h.add_(x)


def inference_copy(unet: UNet3D) -> UNet3D:
    """A copy of ``unet`` in eval mode for ``torch.inference_mode``: same output, fewer passes over the activations."""
    out = copy.deepcopy(unet).eval()
    for p in out.parameters():
        p.requires_grad_(False)
    out.stem = FusedConv3d(out.stem, "none")
    out.head = FusedConv3d(out.head, "none")
    for i, down in enumerate(out.downs):
        out.downs[i] = FusedConv3d(down, "none")
    for up in out.ups:
        if isinstance(up, TrilinearUp):
            up.conv = FusedConv3d(up.conv, "none")
    for level in list(out.encoders) + list(out.decoders):
        for j, block in enumerate(level):
            level[j] = FoldedResidualBlock(block)
    return out


__all__ = ["FoldedResidualBlock", "inference_copy"]
