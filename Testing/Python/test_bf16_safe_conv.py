"""BF16SafeConv3d: the convolutions that leave CPU bf16 autocast where oneDNN's bf16 weight gradient is wrong.

oneDNN's ``jit_bf16:avx512_core_bf16`` backward_weights returns a different, often huge, weight gradient on every
call when an input edge is 2 and the kernel 3 (``Testing/Training/bf16_conv_bug.py``); the paper's D meets that
shape at its last convolution. These tests check that such inputs run in float32, bit for bit repeatable, while
larger inputs keep the bf16 path.
"""

from __future__ import annotations

import torch
from torch import nn

from MedSynthLogic.config import GeneratorConfig, ModelConfig
from MedSynthLogic.models import BF16SafeConv3d, build_discriminator, build_generator


def _pair(cin: int = 8, cout: int = 8):
    torch.manual_seed(0)
    safe = BF16SafeConv3d(cin, cout, 3, padding=1)
    plain = nn.Conv3d(cin, cout, 3, padding=1)
    plain.load_state_dict(safe.state_dict())
    return safe, plain


def test_small_inputs_leave_bf16_autocast_and_match_float32():
    safe, plain = _pair()
    x = torch.randn(4, 8, 2, 2, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = safe(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, plain(x), rtol=1e-5, atol=1e-6)


def test_large_inputs_keep_the_bf16_path():
    safe, _ = _pair()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = safe(torch.randn(1, 8, 6, 6, 6))
    assert y.dtype == torch.bfloat16


def test_weight_gradient_of_a_two_voxel_input_repeats_exactly_and_matches_float32():
    safe, plain = _pair(16, 16)
    x = torch.randn(4, 16, 2, 3, 3)
    plain(x).sum().backward()
    grads = []
    for _ in range(4):
        safe.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = safe(x)
        out.float().sum().backward()
        grads.append(safe.weight.grad.clone())
    assert all(torch.equal(g, grads[0]) for g in grads)
    torch.testing.assert_close(grads[0], plain.weight.grad, rtol=1e-5, atol=1e-5)


def test_every_convolution_with_a_kernel_above_2_is_the_safe_one():
    nets = [
        build_generator(GeneratorConfig()),
        build_discriminator(ModelConfig()),
        build_generator(GeneratorConfig(kind="unet3d", residual=False)),
        build_discriminator(ModelConfig(generator=GeneratorConfig(kind="unet3d", residual=False), source_patch=96)),
    ]
    convs = [m for net in nets for m in net.modules() if isinstance(m, nn.Conv3d) and max(m.kernel_size) > 2]
    assert convs and all(isinstance(m, BF16SafeConv3d) for m in convs)


def test_paper_discriminator_in_bf16_gives_float32_at_its_two_voxel_convolution():
    disc = build_discriminator(ModelConfig())
    seen = {}
    last = [m for m in disc.modules() if isinstance(m, BF16SafeConv3d)][-1]
    last.register_forward_hook(lambda mod, inp, out: seen.update(edge=inp[0].shape[-1], dtype=out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = disc(torch.rand(4, 1, 16, 16, 16))
    assert seen == {"edge": 2, "dtype": torch.float32} and torch.isfinite(logits.float()).all()
