"""The generator families and discriminators as ``nn.Module``s, sized by :mod:`MedSynthLogic.config`.

``nie2018``: the paper's FCN (``Generator``) and D (``Discriminator``); ``unet3d``: a residual 3D U-Net
(``UNet3D``) with a patch D (``PatchDiscriminator``). ``build_generator`` picks by ``GeneratorConfig.kind``.
"""

from __future__ import annotations

from typing import List, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import DiscriminatorConfig, GeneratorConfig, ModelConfig
from .errors import UsageError


def residual_channel(config: GeneratorConfig) -> int:
    """The input channel the long residual adds: the source (0) or the context, the synthesis before this stage (1)."""
    return 1 if config.residual_from == "context" else 0


class BF16SafeConv3d(nn.Conv3d):
    """``nn.Conv3d`` (same parameters and state-dict keys) that runs in float32 when CPU bf16 autocast meets a small input.

    oneDNN's bf16 weight gradient (``jit_bf16:avx512_core_bf16`` backward_weights, torch 2.13) is wrong, and differs
    from call to call, when an input edge is 2 and the kernel 3 (``Testing/Training/bf16_conv_bug.py``: values up to
    1e37 in a third of the calls). The paper's D meets it at its last convolution (16³ → 2³ after three poolings), which
    made CPU bf16 training diverge to NaN. Inputs with an edge smaller than the kernel therefore leave autocast; they are
    tiny, so float32 costs nothing there, and every other input still runs in bf16.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and min(x.shape[2:]) < max(self.kernel_size):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


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
            conv = BF16SafeConv3d(channels, out, kernel_size=k, dilation=d, padding=0, bias=(i == last or not config.batch_norm))
            layers.append(conv)
            if i != last:
                if config.batch_norm:
                    layers.append(nn.BatchNorm3d(out))
                layers.append(nn.ReLU(inplace=True))
            channels = out
        self.body = nn.Sequential(*layers)
        self.halo = config.halo

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.add_residual(x, self.body(x))

    def add_residual(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out`` (what a copy of ``body`` gave for ``x``) plus the long residual, if the config has one.

        Public so whole-volume inference, which runs a BatchNorm-folded copy of ``body``, applies the same rule.
        """
        if not self.config.residual:
            return out
        h, c = self.halo, residual_channel(self.config)
        return out + x[:, c : c + 1, h : x.shape[2] - h, h : x.shape[3] - h, h : x.shape[4] - h]


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
            layers += [BF16SafeConv3d(channels, out, 3, padding=1), nn.BatchNorm3d(out), nn.ReLU(inplace=True), nn.MaxPool3d(2)]
            channels = out
            size //= 2
        if size < 1:
            raise ValueError(f"A {patch}³ patch is too small for {len(config.channels)} pooling stages.")
        layers += [BF16SafeConv3d(channels, config.last_conv, 3, padding=1), nn.BatchNorm3d(config.last_conv), nn.ReLU(inplace=True)]
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


#: The U-Net's activation layout on the CPU: oneDNN's 3D convolutions run 16-channel 96³ crops ~1.6× faster
#: (forward + backward) in channels-last than in NCDHW (Testing/Benchmarks/results/training_cpu_unet_layout.txt).
CPU_LAYOUT = torch.channels_last_3d


def layout_for(x: torch.Tensor) -> torch.memory_format:
    """The U-Net's activation layout for an input: channels-last on the CPU; NCDHW elsewhere (untested on GPUs)."""
    return CPU_LAYOUT if x.device.type == "cpu" else torch.contiguous_format


class InstanceNorm3dKeepingLayout(nn.InstanceNorm3d):
    """``nn.InstanceNorm3d`` (same parameters, buffers and state-dict keys) whose output keeps the input's layout.

    PyTorch's instance norm returns NCDHW whatever it is given, which would hand every following convolution the
    slow layout. Copying its output back to channels-last is not safe: its backward then receives a channels-last
    gradient for an NCDHW output and returns a wrong input gradient (torch 2.13 CPU; relative error above 100 %,
    ``Testing/Python/test_unet.py``). So training mode computes the per-sample statistics itself (layout-agnostic
    reductions, in float32), applies them as one per-channel affine pass in the input's dtype and layout, and
    updates the running statistics as PyTorch does.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training and self.track_running_stats and self.affine:
            return self.eval_affine(x)
        if not self.training and self.track_running_stats:
            return super().forward(x)
        if self.training and x.shape[0] == 1 and (self.momentum is not None or not self.track_running_stats):
            return self.single_sample(x)
        var, mean = torch.var_mean(x.float(), dim=tuple(range(2, x.dim())), unbiased=False, keepdim=True)
        if self.training and self.track_running_stats:
            self._update_running_stats(mean, var, x[0, 0].numel())
        scale = torch.rsqrt(var + self.eps)
        shift = -mean * scale
        if self.affine:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            scale, shift = scale * self.weight.view(shape), shift * self.weight.view(shape) + self.bias.view(shape)
        return torch.addcmul(shift.to(x.dtype), x, scale.to(x.dtype))

    def single_sample(self, x: torch.Tensor) -> torch.Tensor:
        """Training on one sample (the U-Net's batch of one crop): instance norm is then batch norm in training mode,
        statistics and running update included, and PyTorch's fused batch-norm kernels keep the layout and run forward
        and backward ~15× faster than the general path below (Testing/Benchmarks/results/unet_train_norm.txt)."""
        running = self.track_running_stats
        return F.batch_norm(x, self.running_mean if running else None, self.running_var if running else None,
                            self.weight, self.bias, True, self.momentum if running else 0.0, self.eps)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, n: int) -> None:
        """PyTorch's rule for instance norm: the batch mean of the per-sample statistics (variance unbiased),
        momentum-averaged (``momentum=None`` keeps them, and ``num_batches_tracked`` is not counted)."""
        factor = self.momentum if self.momentum is not None else 0.0
        self.running_mean.lerp_(mean.mean(0).flatten(), factor)
        self.running_var.lerp_(var.mean(0).flatten() * n / max(n - 1, 1), factor)

    def eval_affine(self, x: torch.Tensor) -> torch.Tensor:
        """Eval mode with running statistics is one per-channel affine map: a single pass that keeps the layout.

        PyTorch's own eval path repeats the statistics per sample and copies its input and output, which took
        about a quarter of a U-Net forward on the CPU. Batch norm in eval mode is exactly this map, and its CPU
        kernel keeps channels-last and the input's dtype (applying the statistics in float32) and runs ~3× faster
        than ``addcmul`` with broadcast per-channel factors (Testing/Benchmarks/results/unet_eval_elementwise.txt).
        """
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


#: Slope of the U-Net's leaky ReLUs.
LEAKY_SLOPE = 0.1


def act_fresh(h: torch.Tensor) -> torch.Tensor:
    """The U-Net's activation of a tensor that its forward made and reads only here: in place when no gradient
    is recorded. On the CPU a new full-resolution activation costs its page faults; in place it runs ~8× faster."""
    return F.leaky_relu_(h, LEAKY_SLOPE) if not torch.is_grad_enabled() else F.leaky_relu(h, LEAKY_SLOPE)


def add_fresh(h: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``h + other`` for an ``h`` that the U-Net's forward made and reads only here: into ``h`` when no gradient is recorded."""
    return h.add_(other) if not torch.is_grad_enabled() else h + other


def _norm(kind: str, channels: int) -> nn.Module:
    """Instance norm keeps running statistics so eval is a per-voxel affine map (tiles then equal whole volumes)."""
    if kind == "instance":
        return InstanceNorm3dKeepingLayout(channels, affine=True, track_running_stats=True)
    return nn.Identity()


class ResidualBlock(nn.Module):
    """Pre-activation block x + conv(act(conv(act(x)))); the second conv starts at zero, so a new block is the identity.

    Starting every block as the identity is what lets a U-Net without normalisation train stably from the start.
    """

    def __init__(self, channels: int, norm: str) -> None:
        super().__init__()
        self.norm1, self.norm2 = _norm(norm, channels), _norm(norm, channels)
        self.conv1 = BF16SafeConv3d(channels, channels, 3, padding=1)
        self.conv2 = BF16SafeConv3d(channels, channels, 3, padding=1)
        self.act = nn.LeakyReLU(LEAKY_SLOPE)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layout = layout_for(x)  # small convolutions take PyTorch's native path, which answers in NCDHW
        h = self.norm1(x)
        h = self.conv1(act_fresh(h) if h is not x else self.act(h)).contiguous(memory_format=layout)
        h = self.conv2(act_fresh(self.norm2(h))).contiguous(memory_format=layout)
        return add_fresh(h, x)


class TrilinearUp(nn.Module):
    """Doubles each edge by trilinear interpolation after a 1³ convolution: one smooth map for all 8 children.

    The convolution runs at the coarse level (it commutes with the interpolation, whose weights sum to 1), so this
    costs an eighth of a transposed 2³ convolution.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.conv(x), scale_factor=2, mode="trilinear", align_corners=False)


def _up(kind: str, in_channels: int, out_channels: int) -> nn.Module:
    """One upward join of ``GeneratorConfig.unet_upsample``'s kind (a transposed convolution keeps old files' keys)."""
    if kind == "trilinear":
        return TrilinearUp(in_channels, out_channels)
    return nn.ConvTranspose3d(in_channels, out_channels, 2, stride=2)


class UNet3D(nn.Module):
    """Residual 3D U-Net with "same" padding: a crop gives an output of its own size (edges multiples of ``size_multiple``).

    Levels are joined by stride-2 2³ convolutions down and transposed 2³ convolutions or trilinear interpolation up
    (``unet_upsample``), with additive skips (half the decoder cost of concatenation). With ``residual`` the source
    (channel 0) is added to the output.
    """

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        widths = config.unet_channels

        def blocks(c: int) -> nn.Sequential:
            return nn.Sequential(*[ResidualBlock(c, config.norm) for _ in range(config.unet_blocks)])

        self.stem = BF16SafeConv3d(config.in_channels, widths[0], 3, padding=1)
        self.encoders = nn.ModuleList(blocks(c) for c in widths)
        self.downs = nn.ModuleList(nn.Conv3d(a, b, 2, stride=2) for a, b in zip(widths[:-1], widths[1:]))
        self.ups = nn.ModuleList(_up(config.unet_upsample, b, a) for a, b in zip(widths[:-1], widths[1:]))
        self.decoders = nn.ModuleList(blocks(c) for c in widths[:-1])
        self.act = nn.LeakyReLU(LEAKY_SLOPE)
        self.head = nn.Conv3d(widths[0], 1, 1)
        self.halo = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.config.size_multiple
        if any(n % m for n in x.shape[2:]):
            raise ValueError(f"A unet3d input's edges must be multiples of {m}, got {tuple(x.shape[2:])}.")
        layout = layout_for(x)
        h = self.stem(x).contiguous(memory_format=layout)
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            h = encoder(h)
            skips.append(h)
            h = down(self.act(h)).contiguous(memory_format=layout)
        h = self.encoders[-1](h)
        for i in range(len(self.ups) - 1, -1, -1):
            up = self.ups[i](act_fresh(h)).contiguous(memory_format=layout)
            h = self.decoders[i](add_fresh(up, skips[i]))
        out = self.head(act_fresh(h))
        if self.config.residual:
            c = residual_channel(self.config)
            out = out + x[:, c : c + 1]
        return out


class PatchDiscriminator(nn.Module):
    """Fully-convolutional D for large crops: stride-2 4³ convolutions, then one logit per patch of the crop."""

    def __init__(self, config: DiscriminatorConfig, in_channels: int = 1) -> None:
        super().__init__()
        layers: List[nn.Module] = []
        channels = in_channels
        for out in config.patch_channels:
            layers += [BF16SafeConv3d(channels, out, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            channels = out
        layers.append(BF16SafeConv3d(channels, 1, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def build_generator(config: GeneratorConfig) -> nn.Module:
    """The generator network of ``config.kind``."""
    return UNet3D(config) if config.kind == "unet3d" else Generator(config)


class AutoContextChain(nn.Module):
    """The auto-context model: one generator per stage; stage k sees [source, synthesis of stage k−1].

    ``forward`` on a patch runs the chain the way training sees it (each later stage's context is the previous
    stage's output on the same, larger, input); whole-volume inference runs the stages one after another over
    the volume instead (see :mod:`MedSynthLogic.inference`).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.stages = nn.ModuleList(build_generator(config.stage_generator(k)) for k in range(config.stages))
        self.prior = None if config.prior is None else AutoContextChain(config.prior)
        if self.prior is not None:
            self.prior.requires_grad_(False)
            self.prior.eval()

    def __len__(self) -> int:
        return len(self.stages)

    def train(self, mode: bool = True) -> "AutoContextChain":
        """Set the stages' mode; a prior model stays in eval mode (it is frozen: its BatchNorm statistics too)."""
        super().train(mode)
        if self.prior is not None:
            self.prior.eval()
        return self


def output_layer(gen: nn.Module) -> nn.Conv3d:
    """A generator's last convolution, the linear layer whose output the long residual is added to."""
    return [m for m in gen.modules() if isinstance(m, nn.Conv3d)][-1]


@torch.no_grad()
def start_as_context(gen: nn.Module) -> None:
    """Zero a generator's output layer, so that with ``residual_from`` "context" it starts as exactly its context:
    a stage on top of a prior model begins as that model and training can only refine it."""
    last = output_layer(gen)
    last.weight.zero_()
    if last.bias is not None:
        last.bias.zero_()


@torch.no_grad()
def scale_refinement(gen: nn.Module, weight: float) -> None:
    """Scale what a generator adds to its context by ``weight``: with ``residual_from`` "context" its output becomes
    context + weight·(correction), so 0.5 makes a refiner the mean of its prior's synthesis and its own (a two-model
    average; for run P+ it recovered most, not all, of the refiner's validation loss: MODEL_CARD.md). The output
    layer is linear, so scaling its weights and bias is exact."""
    config = getattr(gen, "config", None)
    if config is None or not config.residual or config.residual_from != "context":
        raise UsageError("Only a generator that adds its context (residual_from 'context') refines a synthesis to scale.")
    if not 0.0 <= weight <= 1.0:
        raise UsageError(f"The refinement weight must be in [0, 1], not {weight}.")
    last = output_layer(gen)
    last.weight.mul_(weight)
    if last.bias is not None:
        last.bias.mul_(weight)


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


def build_discriminator(config: ModelConfig) -> nn.Module:
    """A discriminator for target patches of ``config``: the paper's for the FCN, a patch D for the U-Net's crops."""
    if config.generator.kind == "unet3d":
        return PatchDiscriminator(config.discriminator)
    return Discriminator(config.discriminator, config.target_patch)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def conv_flops_per_voxel(config: GeneratorConfig) -> float:
    """Multiply-adds ×2 per output voxel of the generator (for throughput reports)."""
    if config.kind == "unet3d":
        return _measured_flops_per_voxel(build_generator(config), config)
    flops = 0.0
    channels = config.in_channels
    for out, k in zip(config.filters, config.kernels):
        flops += 2.0 * channels * out * k**3
        channels = out
    return flops


def _measured_flops_per_voxel(net: nn.Module, config: GeneratorConfig) -> float:
    """Count each convolution's multiply-adds on one small input (hooks), per output voxel."""
    macs = [0.0]

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        k = float(torch.tensor(module.kernel_size).prod())
        if isinstance(module, nn.ConvTranspose3d):
            macs[0] += inputs[0][0].numel() * module.out_channels * k
        else:
            macs[0] += output[0].numel() * module.in_channels * k

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]
    size = 2 * config.size_multiple
    try:
        with torch.no_grad():
            net(torch.zeros(1, config.in_channels, size, size, size))
    finally:
        for h in handles:
            h.remove()
    return 2.0 * macs[0] / size**3


PRIOR_PREFIX = "prior."


def generators_state(chain: AutoContextChain, stages: Sequence[int] | None = None) -> dict:
    """A flat state dict ``stage{k}.<param>`` for the selected stages, and ``prior.stage{k}.<param>`` for every
    stage of a prior model (what model files and checkpoints hold)."""
    state = {}
    for k, gen in enumerate(chain.stages):
        if stages is None or k in stages:
            for name, tensor in gen.state_dict().items():
                state[f"stage{k}.{name}"] = tensor
    if chain.prior is not None:
        state.update({PRIOR_PREFIX + name: t for name, t in generators_state(chain.prior).items()})
    return state


def prior_state(state: Mapping[str, torch.Tensor]) -> dict:
    """The prior model's entries (``prior.stage{k}.<param>``) of a flat state dict, so callers compare or copy the
    frozen prior without knowing how its names are spelled."""
    return {name: t for name, t in state.items() if name.startswith(PRIOR_PREFIX)}


def sub_state(state: Mapping[str, torch.Tensor], prefix: str) -> dict:
    """The entries of a flat state dict under ``prefix`` (e.g. ``stage1.``), with it removed: one generator's
    ``load_state_dict`` input."""
    return {name[len(prefix):]: t for name, t in state.items() if name.startswith(prefix)}


def load_prior_state(chain: AutoContextChain, state: Mapping[str, torch.Tensor]) -> None:
    """The prior model's weights (``prior.stage{k}.<param>``) of a flat state dict into ``chain.prior``."""
    if chain.prior is None:
        return
    for k, gen in enumerate(chain.prior.stages):
        prefix = f"{PRIOR_PREFIX}stage{k}."
        gen.load_state_dict(sub_state(state, prefix))
