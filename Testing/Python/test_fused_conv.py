"""FusedConv3d: a convolution and its activation as one oneDNN call at inference, giving what the two calls give.

The fused op is PyTorch's own (``torch.ops.mkldnn._convolution_pointwise``); these tests check that the module takes
it where it should, that its output equals the two separate calls in float32 and under bf16 autocast, and that every
input it cannot take (gradients on, default layout, an edge smaller than the kernel) goes the plain way.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from MedSynthLogic import fused_conv
from MedSynthLogic.config import GeneratorConfig, ModelConfig
from MedSynthLogic.models import AutoContextChain
from MedSynthLogic.tiled_synthesis import synthesize_array

HAS_FUSED = fused_conv.FusedConv3d(nn.Conv3d(1, 1, 3))._op is not None
needs_fused = pytest.mark.skipif(not HAS_FUSED, reason="this torch build has no oneDNN fused convolution")


def _conv(dilation: int = 2) -> nn.Conv3d:
    torch.manual_seed(0)
    return nn.Conv3d(8, 16, 3, dilation=dilation).eval().to(memory_format=torch.channels_last_3d)


def _input(edge: int = 12) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 8, edge, edge, edge).contiguous(memory_format=torch.channels_last_3d)


class _Counting:
    """Wraps the fused op and counts its calls."""

    def __init__(self, op) -> None:
        self.op, self.calls = op, 0

    def __call__(self, *args):
        self.calls += 1
        return self.op(*args)


PLAIN = {
    "none": lambda y: y,
    "relu": torch.relu,
    "leaky_relu": lambda y: torch.nn.functional.leaky_relu(y, 0.1),
}


@needs_fused
@pytest.mark.parametrize("activation", sorted(PLAIN))
@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_fused_equals_conv_then_activation(dtype, activation):
    conv = _conv()
    fused = fused_conv.FusedConv3d(conv, activation, slope=0.1)
    counter = _Counting(fused._op)
    fused._op = counter
    x = _input()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
        want = PLAIN[activation](conv(x))
        got = fused(x)
    assert counter.calls == 1
    assert got.dtype == want.dtype
    # the op refused (and the module fell back for good, _op None) where oneDNN has no kernel: bf16 on a CPU without
    # AVX-512 BF16, which --precision auto never asks for; there the plain path's layout is the plain convolution's
    assert fused._op is None or got.is_contiguous(memory_format=torch.channels_last_3d)
    assert fused._op is not None or dtype is not None
    tol = dict(rtol=1e-5, atol=1e-5) if dtype is None else dict(rtol=1.6e-2, atol=1e-2)
    torch.testing.assert_close(got, want, **tol)
    assert (float(got.min()) == 0.0) == (activation == "relu")


def _refusing(*args):
    raise AssertionError("the fused op was called for an input it cannot take")


@pytest.mark.parametrize(
    "case",
    ["grad", "default_layout", "small_edge"],
)
def test_inputs_the_fused_op_cannot_take_go_the_plain_way(case):
    conv = _conv(dilation=1)
    fused = fused_conv.FusedConv3d(conv, "relu")
    fused._op = _refusing
    x = _input(edge=2 if case == "small_edge" else 8)
    if case == "default_layout":
        x = x.contiguous()
    if case == "small_edge":
        conv.padding = (1, 1, 1)
    with torch.set_grad_enabled(case == "grad"):
        got = fused(x)
        want = torch.relu(conv(x))
    torch.testing.assert_close(got, want)


def test_an_op_that_fails_is_dropped_for_the_plain_path():
    """The fused op is internal to PyTorch; if another build's signature differs, the module falls back for good."""
    conv = _conv()
    fused = fused_conv.FusedConv3d(conv, "relu")
    calls = []

    def changed(*args):
        calls.append(1)
        raise TypeError("_convolution_pointwise() takes other arguments")

    fused._op = changed
    x = _input()
    with torch.inference_mode():
        first, second = fused(x), fused(x)
        want = torch.relu(conv(x))
    assert calls == [1]
    torch.testing.assert_close(first, want)
    torch.testing.assert_close(second, want)


def test_grouped_convolutions_and_unknown_activations_are_refused():
    with pytest.raises(ValueError, match="ungrouped"):
        fused_conv.FusedConv3d(nn.Conv3d(4, 4, 3, groups=2))
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        fused_conv.FusedConv3d(nn.Conv3d(4, 4, 3), "gelu")


@needs_fused
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_whole_volume_synthesis_is_unchanged_by_the_fusion(monkeypatch, precision):
    """The FCN runner with and without the fusion gives the same volume, to float32 rounding.

    (oneDNN may pick another float32 kernel for the fused call: last-bit differences in a few % of the voxels.)
    """
    torch.manual_seed(0)
    chain = AutoContextChain(ModelConfig(generator=GeneratorConfig(filters=[8, 8, 8, 8, 8, 8, 8, 8, 1]), stages=2)).eval()
    source = np.random.default_rng(0).standard_normal((40, 36, 44)).astype(np.float32)
    fused = synthesize_array(chain, source, None, stages=2, precision=precision)
    monkeypatch.setattr(fused_conv, "_pointwise_op", lambda: None)
    plain = synthesize_array(chain, source, None, stages=2, precision=precision)
    np.testing.assert_allclose(fused, plain, rtol=1e-5, atol=1e-5)
