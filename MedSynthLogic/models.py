"""The paper's networks as ``nn.Module``s, sized by :mod:`MedSynthLogic.config`."""

from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn

from .config import DiscriminatorConfig, GeneratorConfig, ModelConfig


class Generator(nn.Module):
    """9-layer dilated 3D FCN with valid convolutions (32³ in, 16³ out by default).

    Because every convolution is valid, the network is a sliding-window function: any input larger than the
    receptive field gives an output smaller by ``config.shrink`` per axis, which is what makes tiled
    whole-volume inference exact. With ``residual`` the centre of the source (channel 0) is added to the
    output (the paper's long-term residual unit), so the network learns the difference to the source.
    """

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        layers: List[nn.Module] = []
        channels = config.in_channels
        last = len(config.filters) - 1
        for i, (out, k, d) in enumerate(zip(config.filters, config.kernels, config.dilations)):
            conv = nn.Conv3d(channels, out, kernel_size=k, dilation=d, padding=0, bias=(i == last or not config.batch_norm))
            layers.append(conv)
            if i != last:
                if config.batch_norm:
                    layers.append(nn.BatchNorm3d(out))
                layers.append(nn.ReLU(inplace=True))
            channels = out
        self.body = nn.Sequential(*layers)
        self.halo = config.halo

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if self.config.residual:
            h = self.halo
            out = out + x[:, :1, h : x.shape[2] - h, h : x.shape[3] - h, h : x.shape[4] - h]
        return out


class Discriminator(nn.Module):
    """3D CNN that tells real target patches from synthetic ones; returns one logit per patch.

    The logit (not the sigmoid) is returned so the BCE is computed with ``BCEWithLogitsLoss``, which is the
    same function as sigmoid + BCE but numerically stable and safe under mixed precision.
    """

    def __init__(self, config: DiscriminatorConfig, patch: int, in_channels: int = 1) -> None:
        super().__init__()
        layers: List[nn.Module] = []
        channels = in_channels
        size = patch
        for out in config.channels:
            layers += [nn.Conv3d(channels, out, 3, padding=1), nn.BatchNorm3d(out), nn.ReLU(inplace=True), nn.MaxPool3d(2)]
            channels = out
            size //= 2
        if size < 1:
            raise ValueError(f"A {patch}³ patch is too small for {len(config.channels)} pooling stages.")
        layers += [nn.Conv3d(channels, config.last_conv, 3, padding=1), nn.BatchNorm3d(config.last_conv), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        fcs: List[nn.Module] = []
        width = config.last_conv * size**3
        for units in config.fully_connected:
            fcs += [nn.Linear(width, units), nn.ReLU(inplace=True)]
            width = units
        fcs.append(nn.Linear(width, 1))
        self.classifier = nn.Sequential(*fcs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class AutoContextChain(nn.Module):
    """The auto-context model: one generator per stage; stage k sees [source, synthesis of stage k−1].

    ``forward`` on a patch runs the chain the way training sees it (each later stage's context is the previous
    stage's output on the same, larger, input); whole-volume inference runs the stages one after another over
    the volume instead (see :mod:`MedSynthLogic.inference`).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.stages = nn.ModuleList(Generator(config.stage_generator(k)) for k in range(config.stages))

    def __len__(self) -> int:
        return len(self.stages)


@torch.no_grad()
def init_from_previous_stage(gen: Generator, previous: Generator) -> None:
    """Start an auto-context stage as a copy of the stage before it, so it begins where that stage ended.

    Every parameter is copied; the first convolution's weights for the extra context channel start at zero,
    so the new stage initially computes exactly what the previous one did and training can only refine it.
    """
    src = previous.state_dict()
    for name, tensor in gen.state_dict().items():
        old = src[name]
        if old.shape == tensor.shape:
            tensor.copy_(old)
        elif tensor.dim() == 5 and old.shape[1] <= tensor.shape[1] and old.shape[0] == tensor.shape[0]:
            tensor.zero_()
            tensor[:, : old.shape[1]].copy_(old)
        else:
            raise ValueError(f"Cannot initialise {name}: shapes {tuple(old.shape)} and {tuple(tensor.shape)} differ.")


def build_generators(config: ModelConfig) -> AutoContextChain:
    """All stages' generators for ``config``."""
    return AutoContextChain(config)


def build_discriminator(config: ModelConfig) -> Discriminator:
    """A discriminator for target patches of ``config``."""
    return Discriminator(config.discriminator, config.target_patch)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def conv_flops_per_voxel(config: GeneratorConfig) -> float:
    """Multiply-adds ×2 per output voxel of the generator (for throughput reports)."""
    flops = 0.0
    channels = config.in_channels
    for out, k in zip(config.filters, config.kernels):
        flops += 2.0 * channels * out * k**3
        channels = out
    return flops


def generators_state(chain: AutoContextChain, stages: Sequence[int] | None = None) -> dict:
    """A flat state dict ``stage{k}.<param>`` for the selected stages (what model files hold)."""
    state = {}
    for k, gen in enumerate(chain.stages):
        if stages is None or k in stages:
            for name, tensor in gen.state_dict().items():
                state[f"stage{k}.{name}"] = tensor
    return state
