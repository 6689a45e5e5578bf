"""unet_folding.inference_copy: the U-Net with each block's norm2 folded into conv1 gives the eval-mode output.

Random weights and random running statistics everywhere, so a folding error (wrong channel axis, the norm's eps,
the bias) shows; float32 must agree to rounding, bf16 to bf16's precision. The caller's model stays untouched.
"""

from __future__ import annotations

import pytest
import torch

from MedSynthLogic import fused_conv
from MedSynthLogic.models import InstanceNorm3dKeepingLayout, build_generators
from MedSynthLogic.unet_folding import FoldedResidualBlock, inference_copy

from test_unet import randomise, small_unet


def _unet(norm: str = "instance", upsample: str = "trilinear"):
    chain = build_generators(small_unet(unet_channels=(4, 8, 8), unet_upsample=upsample, norm=norm))
    randomise(chain, scale=0.3)
    g = torch.Generator().manual_seed(1)
    for m in chain.modules():
        if isinstance(m, InstanceNorm3dKeepingLayout):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 2 + 0.1)
    return chain.stages[0].train()


def _input() -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    return torch.randn(1, 1, 24, 16, 32, generator=g).contiguous(memory_format=torch.channels_last_3d)


@pytest.mark.parametrize("norm,upsample", [("instance", "trilinear"), ("instance", "transpose"), ("none", "trilinear")])
def test_inference_copy_gives_the_eval_output(norm, upsample):
    unet = _unet(norm, upsample)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    folded = inference_copy(unet)
    assert unet.training, "the caller's model changed mode"
    assert sum(isinstance(m, FoldedResidualBlock) for m in folded.modules()) == 5
    x = _input()
    with torch.inference_mode():
        got = folded(x)
        unet.eval()
        want = unet(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got_bf16 = folded(x).float()
            want_bf16 = unet(x).float()
    peak = float(want.abs().max())
    assert peak > 0.1, "weights should give a non-trivial output"
    assert float((got - want).abs().max()) <= 1e-5 * peak
    # in bf16 the folded copy rounds elsewhere: it must stay as close to float32 as the model itself does
    assert float((got_bf16 - want).abs().mean()) <= 1.5 * float((want_bf16 - want).abs().mean())
    for k, v in unet.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed"


@pytest.mark.skipif(fused_conv.FusedConv3d(torch.nn.Conv3d(1, 1, 3))._op is None, reason="no oneDNN fused convolution")
def test_the_copy_runs_its_convolutions_fused():
    folded = inference_copy(_unet())
    fused = [m for m in folded.modules() if isinstance(m, fused_conv.FusedConv3d)]
    calls = []
    for m in fused:
        op = m._op
        m._op = lambda *a, _op=op: calls.append(a[7]) or _op(*a)
    with torch.inference_mode():
        folded(_input())
    # stem, head, 2 downs, 2 trilinear ups, and conv1 (with the leaky ReLU) + conv2 of 5 blocks
    assert len(calls) == len(fused) == 16
    assert calls.count("leaky_relu") == 5


def test_a_norm_that_cannot_fold_is_refused():
    unet = _unet()
    unet.encoders[0][0].norm2 = torch.nn.BatchNorm3d(4, track_running_stats=False)
    with pytest.raises(ValueError, match="cannot fold a BatchNorm3d"):
        inference_copy(unet)
