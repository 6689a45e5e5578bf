"""Configuration dataclasses: architecture, intensity normalisation, losses and training.

They are plain data, serialised to JSON in model files, checkpoints and HDF5 attributes, so a model file
carries everything needed to rebuild and apply it, and other pairs (T1→T2, MR→CT, 3T→7T) are a matter of
configuration.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Type, TypeVar

from .errors import UsageError

T = TypeVar("T")


def check_augment_spreads(gamma_sd: float, field_sd: float, scale_sd: float, noise_sd: float, slab_max: int) -> None:
    """Refuse negative intensity-augmentation spreads where a run's configuration is read, not at its first crop."""
    if min(gamma_sd, field_sd, scale_sd, noise_sd) < 0:
        raise UsageError("The intensity augmentation's standard deviations must be ≥ 0.",
                         "Set aug_gamma_sd, aug_field_sd, aug_scale_sd and aug_noise_sd to 0 (off) or small positive "
                         "values such as 0.1.")
    if not (isinstance(slab_max, int) and 0 <= slab_max <= 9):
        raise UsageError(f"aug_slab_max must be a whole number of voxels from 0 to 9, not {slab_max!r}.",
                         "Set it to 0 (off) or e.g. 4 (slabs of 1–4 voxels: slices up to 4 times as thick).")


def check_spatial_spreads(rotate_deg: float, zoom_sd: float) -> None:
    """Refuse spatial-augmentation spreads that are negative or beyond a half turn where a run's configuration is read."""
    if not (0 <= rotate_deg <= 180 and 0 <= zoom_sd <= 1):
        raise UsageError("The spatial augmentation's spreads are out of range (aug_rotate_deg 0–180, aug_zoom_sd 0–1).",
                         "Set aug_rotate_deg and aug_zoom_sd to 0 (off) or small values such as 10 and 0.1.")


GENERATOR_KINDS = ("nie2018", "unet3d")
NORMS = ("none", "instance")
UPSAMPLES = ("transpose", "trilinear")
RESIDUAL_FROM = ("source", "context")


@dataclass(frozen=True)
class GeneratorConfig:
    """One auto-context stage's generator; ``kind`` chooses the family, the other fields size it.

    ``nie2018`` (default, the paper's 9-layer 3D FCN): valid convolutions only, so a patch of ``source_patch``
    gives ``target_patch``. Filters 32,32,32,64,64,64,32,32,1; dilation 1 in the first and last layers and 2
    elsewhere; one large 5³ kernel up front and three dilated 3³ kernels, the rest 1³, which shrinks 32³ to 16³
    (receptive field 17³). Every layer but the last is conv+BN+ReLU; the last is linear.

    ``unet3d``: a residual 3D U-Net with one resolution level per entry of ``unet_channels`` (``unet_blocks``
    residual blocks per level, stride-2 convolutions down, transposed convolutions up, additive skips), "same"
    padding so a crop gives an output of its own size. It sees ``receptive_field`` voxels (202 with the default
    5 levels) for about 110 kFLOP per output voxel, against the FCN's 17 voxels. ``norm`` "instance" (default)
    normalises each crop's features during training, which needs no batch, and keeps running statistics that
    inference uses, so a trained stage is a fixed function and tiles equal a whole volume; "none" is plain
    residual blocks (on phantom crops it learned about half as fast: Testing/Training/UNET_RECIPE.md).
    ``unet_upsample`` "transpose" (default; every model file before it) joins levels upward by transposed 2³
    convolutions, which give each of a coarse voxel's 8 children its own weights and so can leave a period-2 grid
    in the output; "trilinear" interpolates instead (after a 1³ convolution at the coarse level), which cannot.
    ``residual_from`` "context" adds the context channel (the synthesis before this stage) instead of the source,
    so a stage on top of a prior model learns a correction to that model's synthesis rather than to the T1ce.
    """

    in_channels: int = 1
    filters: Tuple[int, ...] = (32, 32, 32, 64, 64, 64, 32, 32, 1)
    kernels: Tuple[int, ...] = (5, 3, 3, 3, 1, 1, 1, 1, 1)
    dilations: Tuple[int, ...] = (1, 2, 2, 2, 2, 2, 2, 2, 1)
    residual: bool = True
    batch_norm: bool = True
    kind: str = "nie2018"
    unet_channels: Tuple[int, ...] = (16, 32, 64, 128, 128)
    unet_blocks: int = 1
    norm: str = "instance"
    unet_upsample: str = "transpose"
    residual_from: str = "source"

    def __post_init__(self) -> None:
        if self.kind not in GENERATOR_KINDS:
            raise UsageError(f"Unknown generator kind {self.kind!r}; use one of {', '.join(GENERATOR_KINDS)}.")
        if self.norm not in NORMS:
            raise UsageError(f"Unknown generator norm {self.norm!r}; use one of {', '.join(NORMS)}.")
        if self.residual_from not in RESIDUAL_FROM:
            raise UsageError(f"Unknown residual_from {self.residual_from!r}; use one of {', '.join(RESIDUAL_FROM)}.")
        if self.unet_upsample not in UPSAMPLES:
            raise UsageError(f"Unknown unet_upsample {self.unet_upsample!r}; use one of {', '.join(UPSAMPLES)}.")
        if self.kind == "unet3d" and (len(self.unet_channels) < 2 or min(self.unet_channels) < 1 or self.unet_blocks < 1):
            raise UsageError("A unet3d generator needs at least 2 levels of positive widths and unet_blocks ≥ 1.")
        n = len(self.filters)
        if not (len(self.kernels) == len(self.dilations) == n) or n < 1:
            raise UsageError("Generator filters, kernels and dilations must have the same length.")
        if self.filters[-1] != 1:
            raise UsageError("The generator's last layer must have 1 filter (one output image).")
        if any(k < 1 or k % 2 == 0 for k in self.kernels):
            raise UsageError("Generator kernels must be odd positive integers.")
        if any(f < 1 for f in self.filters) or any(d < 1 for d in self.dilations):
            raise UsageError(f"Generator filters and dilations must be ≥ 1, got filters {list(self.filters)} and "
                             f"dilations {list(self.dilations)}.")

    @property
    def shrink(self) -> int:
        """Voxels lost along each axis by the valid convolutions (0 for the padded U-Net)."""
        if self.kind == "unet3d":
            return 0
        return sum(d * (k - 1) for k, d in zip(self.kernels, self.dilations))

    @property
    def halo(self) -> int:
        """Voxels of context a valid-convolution generator needs on each side of an output voxel (0 for the U-Net)."""
        return self.shrink // 2

    @property
    def size_multiple(self) -> int:
        """An input edge must be a multiple of this (the U-Net's total downsampling; 1 for the FCN)."""
        return 2 ** (len(self.unet_channels) - 1) if self.kind == "unet3d" else 1

    @property
    def receptive_field(self) -> int:
        """Edge of the input cube that one output voxel depends on."""
        if self.kind != "unet3d":
            return self.shrink + 1
        levels, per_block = len(self.unet_channels), 2 * 2 * self.unet_blocks
        field, jump = 1 + 2, 1
        for level in range(levels):
            field += per_block * jump
            if level < levels - 1:
                field += jump
                jump *= 2
        reach_up = 1 if self.unet_upsample == "trilinear" else 0  # interpolation reads a coarse neighbour
        for level in range(levels - 2, -1, -1):
            field += reach_up * jump
            jump //= 2
            field += per_block * jump
        return field

    @property
    def tile_halo(self) -> int:
        """Context on each side of an inference tile that makes tiles equal a whole-volume run.

        The receptive radius, rounded up to ``size_multiple`` so tiles stay on the U-Net's downsampling grid.
        """
        radius = self.receptive_field // 2
        m = self.size_multiple
        return -(-radius // m) * m

    def output_size(self, input_size: int) -> int:
        return input_size - self.shrink


@dataclass(frozen=True)
class DiscriminatorConfig:
    """The paper's D: 3 stages of conv3³+BN+ReLU+max-pool, one conv, then fully connected layers ending in one logit.

    A ``unet3d`` generator's large crops get a fully-convolutional patch D instead (``patch_channels``:
    stride-2 4³ convolutions, then one logit per patch), which judges local texture at any crop size.
    """

    channels: Tuple[int, ...] = (32, 64, 128)
    last_conv: int = 256
    fully_connected: Tuple[int, ...] = (512, 128)
    patch_channels: Tuple[int, ...] = (16, 32, 64)

    def __post_init__(self) -> None:
        widths = (*self.channels, self.last_conv, *self.fully_connected, *self.patch_channels)
        if any(w < 1 for w in widths) or not self.channels or not self.patch_channels:
            raise UsageError("The discriminator's channels, last_conv, fully_connected and patch_channels must be "
                             f"widths ≥ 1, got {list(widths)}.")


@dataclass(frozen=True)
class IntensityConfig:
    """How one modality is mapped to network units.

    ``percentile`` (MR): divide by the given percentile inside the brain mask, then clip to [clip_min, clip_max].
    ``median`` (MR): scale so the median inside the brain mask becomes ``median_value``, then clip; the median
    follows normal tissue, where the percentile follows enhancing tumour and vessels.
    ``window`` (CT): map the fixed window [window_min, window_max] (e.g. HU) to [0, 1] and clip.
    """

    mode: str = "percentile"
    percentile: float = 99.5
    clip_min: float = 0.0
    clip_max: float = 1.0
    window_min: float = -1000.0
    window_max: float = 2000.0
    median_value: float = 0.5

    def __post_init__(self) -> None:
        if self.mode not in ("percentile", "median", "window"):
            raise UsageError(f"Unknown intensity mode {self.mode!r}; use 'percentile' or 'median' (MR) or 'window' (CT).")
        if self.mode == "median" and not self.median_value > 0:
            raise UsageError("median_value must be positive.")
        if self.mode == "window" and self.window_max <= self.window_min:
            raise UsageError("window_max must be larger than window_min.")
        if not 0 < self.percentile <= 100:
            raise UsageError("percentile must be in (0, 100].")
        if not self.clip_min < self.clip_max:
            raise UsageError(f"clip_min ({self.clip_min:g}) must be below clip_max ({self.clip_max:g}): every voxel "
                             "would be one value.")


@dataclass(frozen=True)
class NormalisationConfig:
    """Normalisation of source and target, stored in every model file so training and inference agree.

    The brain mask is ``source > mask_threshold`` (skull-stripped input) unless a mask is given.
    A synthetic image in ``percentile`` mode is written as network units × ``output_scale``
    (1000 = the 99.5th percentile of a typical T2 inside the brain); in ``window`` mode it is mapped back
    to the window's unit (HU for CT).
    """

    source: IntensityConfig = IntensityConfig(clip_max=2.0)
    target: IntensityConfig = IntensityConfig(clip_max=1.0)
    mask_threshold: float = 0.0
    output_scale: float = 1000.0

    def __post_init__(self) -> None:
        if not self.output_scale > 0:
            raise UsageError(f"output_scale must be positive, got {self.output_scale:g}: the synthesis is written as "
                             "network units × output_scale (0 writes an empty image).")


@dataclass(frozen=True)
class LossConfig:
    """G loss = lambda_adv·BCE(D(G(x))→1) + lambda_l2·pixel + lambda_gdl·GDL (the paper's λ1, λ2, λ3).

    ``pixel`` is the paper's L2 (which predicts the mean, what PSNR rewards) or L1 (the median).
    """

    lambda_adv: float = 0.05
    lambda_l2: float = 1.0
    lambda_gdl: float = 1.0
    pixel: str = "l2"

    def __post_init__(self) -> None:
        if self.pixel not in ("l2", "l1"):
            raise UsageError(f"Unknown pixel loss {self.pixel!r}; use 'l2' or 'l1'.")
        weights = (self.lambda_adv, self.lambda_l2, self.lambda_gdl)
        if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
            raise UsageError(f"The loss weights lambda_adv, lambda_l2 and lambda_gdl must be ≥ 0 with one above 0, got "
                             f"{list(weights)}: a negative weight trains against its term, all 0 trains nothing.")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that controls one training run.

    The defaults are the paper's recipe as first run here (Adam, step decay). For the U-Net's long CPU runs:
    ``optimizer`` "adamw" with ``weight_decay``, ``lr_schedule`` "cosine" (linear warm-up over ``lr_warmup``
    iterations, then cosine to 0 at ``iterations``: a pure function of the iteration, so resuming is exact),
    ``grad_clip`` (max gradient norm, 0 = off) and ``ema_decay`` (exponential moving average of G's weights,
    used for validation and export; 0 = off). ``aug_gamma_sd``, ``aug_field_sd``, ``aug_scale_sd``: random
    contrast, bias-field and scale changes of the training crops' or patches' source (:mod:`.intensity_augment`; 0 = off);
    ``aug_noise_sd`` (sd, relative to the normalised median, of the largest noise added in the brain) and
    ``aug_slab_max`` (thick slices: an average over 1 to that many voxels along one random axis) degrade it as other
    scanners do. These five apply to both generator kinds; the rest to the U-Net's crops only.
    ``aug_rotate_deg``, ``aug_zoom_sd``: random rotations (each Euler angle within ± degrees) and isotropic zooms
    (sd of ln zoom) of those crops, all channels and the mask alike (:mod:`.spatial_augment`; 0 = off).
    ``aug_context_gammas``: contrasts (gamma ≠ 1) at which the auto-context input (the previous stage's or the prior
    model's synthesis) is also computed for the training cases; each augmented crop then gets the one whose gamma is
    nearest its own drawn gamma (1 included), so the stage learns what its context does when the contrast changes
    (:mod:`.training.context`; empty = off; needs ``aug_gamma_sd`` > 0).
    ``alt_source_data``, ``alt_source_p``: a second ``medsynth prepare`` folder of the same cases with another real
    source contrast (BraTS: each case's T1, ``--source-pattern '{case}/{case}_t1.nii.gz'``); each U-Net crop takes its
    source, and the context computed from it, from there with probability ``alt_source_p`` (0 = off), so the stage
    learns from a real contrast change rather than a synthetic one (U-Net only; not with ``aug_context_gammas``).
    """

    stages: int = 3
    iterations: int = 2000
    batch_size: int = 32
    lr_g: float = 5e-4
    lr_d: float = 1e-4
    betas: Tuple[float, float] = (0.5, 0.999)
    lr_decay_every: int = 0
    lr_decay_gamma: float = 0.5
    adversarial: bool = True
    warmup_iterations: int = 0
    val_every: int = 200
    checkpoint_every: int = 500
    log_every: int = 10
    seed: int = 0
    precision: str = "auto"
    num_workers: int = 0
    val_volumes: int = 2
    init_from_previous: bool = True
    optimizer: str = "adam"
    weight_decay: float = 0.0
    lr_schedule: str = "step"
    lr_warmup: int = 0
    grad_clip: float = 0.0
    ema_decay: float = 0.0
    aug_gamma_sd: float = 0.0
    aug_field_sd: float = 0.0
    aug_scale_sd: float = 0.0
    aug_noise_sd: float = 0.0
    aug_slab_max: int = 0
    aug_rotate_deg: float = 0.0
    aug_zoom_sd: float = 0.0
    aug_context_gammas: Tuple[float, ...] = ()
    alt_source_data: str = ""
    alt_source_p: float = 0.0

    def __post_init__(self) -> None:
        check_augment_spreads(self.aug_gamma_sd, self.aug_field_sd, self.aug_scale_sd, self.aug_noise_sd, self.aug_slab_max)
        check_spatial_spreads(self.aug_rotate_deg, self.aug_zoom_sd)
        if any(not (g > 0 and g != 1.0) for g in self.aug_context_gammas) or (self.aug_context_gammas and self.aug_gamma_sd <= 0):
            raise UsageError(f"aug_context_gammas {list(self.aug_context_gammas)} must be gammas > 0 other than 1, with "
                             "aug_gamma_sd > 0.", "Use e.g. [0.8, 1.25] with aug_gamma_sd 0.2, or [] (off).")
        if not 0.0 <= self.alt_source_p < 1.0 or (self.alt_source_p > 0) != bool(self.alt_source_data):
            raise UsageError(f"alt_source_p {self.alt_source_p} must be in [0, 1), and above 0 exactly when "
                             "alt_source_data names a prepared data folder.",
                             "Set both (e.g. 0.25 and the folder of `medsynth prepare --source-pattern …`) or neither.")
        if self.alt_source_p > 0 and self.aug_context_gammas:
            raise UsageError("alt_source_p and aug_context_gammas cannot be combined (the alternate source has no "
                             "contexts for other contrasts).", "Set aug_context_gammas to [] or alt_source_p to 0.")
        if self.optimizer not in ("adam", "adamw"):
            raise UsageError(f"Unknown optimizer {self.optimizer!r}; use 'adam' or 'adamw'.")
        if self.lr_schedule not in ("step", "cosine"):
            raise UsageError(f"Unknown lr_schedule {self.lr_schedule!r}; use 'step' or 'cosine'.")
        if not 0.0 <= self.ema_decay < 1.0:
            raise UsageError("ema_decay must be in [0, 1).")
        self._check_ranges()

    def _check_ranges(self) -> None:
        """Values that would end in a traceback from torch, or train wrongly without a word (a config review)."""
        if self.iterations < 1 or self.batch_size < 1:
            raise UsageError(f"iterations ({self.iterations}) and batch_size ({self.batch_size}) must be at least 1.")
        if not (self.lr_g >= 0 and self.lr_d >= 0):
            raise UsageError(f"The learning rates lr_g ({self.lr_g:g}) and lr_d ({self.lr_d:g}) must be ≥ 0.")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise UsageError(f"betas {list(self.betas)} must each be in [0, 1).")
        if not 0.0 < self.lr_decay_gamma <= 1.0:
            raise UsageError(f"lr_decay_gamma ({self.lr_decay_gamma:g}) must be in (0, 1]: a negative one turns every "
                             "other period into gradient ascent.")
        counts = {"lr_decay_every": self.lr_decay_every, "lr_warmup": self.lr_warmup, "num_workers": self.num_workers,
                  "val_volumes": self.val_volumes, "warmup_iterations": self.warmup_iterations,
                  "seed": self.seed}  # numpy refuses a negative one at the first batch, after the contexts were built
        negative = [f"{name} ({value})" for name, value in counts.items() if value < 0]
        if negative or not (self.weight_decay >= 0 and self.grad_clip >= 0):
            raise UsageError("These settings must be ≥ 0: " + ", ".join(negative + [
                f"{name} ({value:g})" for name, value in (("weight_decay", self.weight_decay),
                                                         ("grad_clip", self.grad_clip)) if not value >= 0]) + ".")
        if self.weight_decay > 0 and self.optimizer != "adamw":
            raise UsageError(f"weight_decay ({self.weight_decay:g}) acts with optimizer 'adamw' only; with "
                             f"{self.optimizer!r} it would be ignored.", "Set \"optimizer\": \"adamw\", or weight_decay 0.")
        if self.lr_decay_every > 0 and self.lr_schedule != "step":
            raise UsageError(f"lr_decay_every ({self.lr_decay_every}) acts with lr_schedule 'step' only; the "
                             f"{self.lr_schedule!r} schedule would ignore it.", "Set lr_decay_every 0, or the 'step' schedule.")
        if self.lr_warmup > 0 and self.lr_schedule != "cosine":
            raise UsageError(f"lr_warmup ({self.lr_warmup}) acts with lr_schedule 'cosine' only; with "
                             f"{self.lr_schedule!r} it would be ignored.", "Set \"lr_schedule\": \"cosine\", or lr_warmup 0.")


@dataclass(frozen=True)
class InputExpectations:
    """What a source image must look like for this model; ``input_checks.check_source`` refuses anything else.

    It lives in the model header because it is a fact about the training data: an MR→CT model states its own.
    ``sequence``: the MR contrast trained on (T1ce for the bundled model); empty, it is the model's ``source_name``
    (filled in by :class:`ModelConfig`), so a config that names another pair checks its own source. The sequence
    check runs only when this and ``source_name`` both name a sequence the rule knows (T1, T1ce, T2, FLAIR and
    spellings of them) and agree, so a source the rule cannot judge (CT, PD, "MR") gets no sequence check.
    ``skull_stripped``: the background must be 0, because the brain mask is ``source > mask_threshold``
    (not checked when a brain mask is given); at least ``min_background_fraction`` of the voxels must be 0.
    ``spacing_mm``: the training voxel size (x, y, z); every axis may differ from it by ``spacing_tolerance_mm``,
    and the largest spacing may be at most ``max_anisotropy`` times the smallest.
    """

    sequence: str = ""
    skull_stripped: bool = True
    min_background_fraction: float = 0.2
    spacing_mm: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    spacing_tolerance_mm: float = 0.5
    max_anisotropy: float = 2.0

    def __post_init__(self) -> None:
        if len(self.spacing_mm) != 3 or min(self.spacing_mm) <= 0:
            raise UsageError("input.spacing_mm must be three positive voxel sizes (x, y, z) in mm.")
        if self.spacing_tolerance_mm < 0 or self.max_anisotropy < 1:
            raise UsageError("input.spacing_tolerance_mm must be ≥ 0 and input.max_anisotropy ≥ 1.")
        if not 0 <= self.min_background_fraction < 1:
            raise UsageError("input.min_background_fraction must be in [0, 1).")


@dataclass(frozen=True)
class ModelConfig:
    """The architecture part of a model file: everything needed to rebuild the networks.

    ``prior``: the configuration of a frozen, already trained model (the paper's FCN, say) whose synthesis is
    stage 0's context, so the stages of this model refine it (auto-context across generator kinds); its weights
    travel in the same model file.
    """

    generator: GeneratorConfig = GeneratorConfig()
    discriminator: DiscriminatorConfig = DiscriminatorConfig()
    normalisation: NormalisationConfig = NormalisationConfig()
    loss: LossConfig = LossConfig()
    stages: int = 3
    source_patch: int = 32
    source_name: str = "T1ce"
    target_name: str = "T2"
    input: InputExpectations = InputExpectations()
    prior: Optional["ModelConfig"] = None

    def __post_init__(self) -> None:
        if not (self.source_name.strip() and self.target_name.strip()):
            raise UsageError("source_name and target_name must name the pair (e.g. \"T1\", \"FLAIR\"): they pick the "
                             "files (their lower case is the file suffix) and name the outputs.")
        if not self.input.sequence:
            object.__setattr__(self, "input", dataclasses.replace(self.input, sequence=self.source_name))
        if self.stages < 1:
            raise UsageError("A model needs at least one stage.")
        if self.prior is not None:
            self._check_prior(self.prior)
            if self.generator.kind != "unet3d":
                raise UsageError("A prior model is refined by a unet3d generator only.", "Set generator.kind to 'unet3d'.")
        if self.source_patch % self.generator.size_multiple:
            raise UsageError(
                f"source_patch {self.source_patch} must be a multiple of {self.generator.size_multiple} for this "
                f"{len(self.generator.unet_channels)}-level U-Net."
            )
        if self.source_patch - self.generator.shrink < 1:
            raise UsageError(
                f"source_patch {self.source_patch} is smaller than the generator's receptive field "
                f"{self.generator.shrink + 1}."
            )

    @property
    def target_patch(self) -> int:
        return self.generator.output_size(self.source_patch)

    def _check_prior(self, prior: "ModelConfig") -> None:
        """A prior must be a plain model of the same pair and units: its synthesis is this model's stage-0 context."""
        if prior.prior is not None:
            raise UsageError("A prior model cannot itself have a prior.", "Use a model trained without --prior-model.")
        if prior.normalisation != self.normalisation:
            raise UsageError(
                "The prior model normalises its images differently from this model's configuration.",
                "Copy the prior's normalisation (`medsynth info --json` shows it) into the model config.",
            )
        if (prior.source_name, prior.target_name) != (self.source_name, self.target_name):
            raise UsageError(
                f"The prior model maps {prior.source_name}→{prior.target_name}, this model {self.source_name}→{self.target_name}."
            )

    def stage_generator(self, stage: int) -> GeneratorConfig:
        """Stage 0 sees the source (and, with a prior model, its synthesis); each later stage the source and the
        previous stage's synthesis. A generator adding its context (``residual_from`` "context") needs a prior at
        stage 0; the config alone may lack it (``medsynth prepare`` reads it before ``--prior-model`` adds one)."""
        if stage == 0 and self.prior is None and self.generator.residual_from == "context":
            raise UsageError(
                "generator.residual_from 'context' needs a prior model: stage 0 has no context without one.",
                "Pass --prior-model, or set residual_from to 'source'.",
            )
        return dataclasses.replace(self.generator, in_channels=1 if stage == 0 and self.prior is None else 2)


def to_dict(obj: Any) -> Dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))


def from_dict(cls: Type[T], data: Dict[str, Any]) -> T:
    """Rebuild a (nested) config dataclass from a dict, refusing unknown keys with a clear message."""
    if not isinstance(data, dict):
        raise UsageError(f"{cls.__name__} must be a JSON object, got {type(data).__name__}.")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        import difflib

        guesses = {u: difflib.get_close_matches(u, list(known), n=1) for u in unknown}
        meant = [f"{u} → {g[0]}" for u, g in guesses.items() if g]
        raise UsageError(f"Unknown {cls.__name__} setting(s): {', '.join(unknown)}.",
                         f"Did you mean {', '.join(meant)}?" if meant else f"Known settings: {', '.join(known)}.")
    kwargs = {}
    hints = _resolved_types(cls)
    for name, value in data.items():
        typ = _unwrap_optional(hints[name])
        if value is None and typ is not hints[name]:
            kwargs[name] = None
        elif dataclasses.is_dataclass(typ):
            try:
                kwargs[name] = from_dict(typ, value)
            except UsageError as exc:  # "generator": "unet3d" said only "GeneratorConfig must be a JSON object"
                raise UsageError(f"In {name!r}: {exc.message}", exc.hint) from exc
        else:
            kwargs[name] = _typed(value, typ, f"{cls.__name__}.{name}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise UsageError(f"Bad {cls.__name__} settings: {exc}.") from exc


def _typed(value: Any, typ: Any, where: str) -> Any:
    """``value`` as the field's type, or a UsageError naming the setting: JSON's "false" is a true string, so an
    unchecked ``{"adversarial": "false"}`` trained adversarially, and ``"iterations": "2"`` ended in a traceback.
    Whole floats are taken for ints (``32.0``), ints for floats; lists become tuples, element by element."""
    import typing

    def refuse(expected: str) -> UsageError:
        hint = ("Write it in the JSON in quotes." if typ is str else "Write it as a JSON list [..]."
                if typing.get_origin(typ) is tuple else "Write it in the JSON without quotes: true/false, or a number.")
        return UsageError(f"{where} must be {expected}, got {json.dumps(value)}.", hint)

    if typ is bool:
        if not isinstance(value, bool):
            raise refuse("true or false")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not value.is_integer()):
            raise refuse("a whole number")
        return int(value)
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise refuse("a finite number")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise refuse("a text in quotes")
        return value
    if typing.get_origin(typ) is tuple:
        if not isinstance(value, (list, tuple)):
            raise refuse("a list")
        args = typing.get_args(typ)
        kinds = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(kinds) != len(value):
            raise refuse(f"a list of {len(kinds)}")
        return tuple(_typed(v, k, f"{where}[{i}]") for i, (v, k) in enumerate(zip(value, kinds)))
    return tuple(value) if isinstance(value, list) else value


def _unwrap_optional(typ: Any) -> Any:
    """``X`` for ``Optional[X]``; any other type unchanged."""
    import typing

    args = [a for a in typing.get_args(typ) if a is not type(None)]
    return args[0] if typing.get_origin(typ) is typing.Union and len(args) == 1 else typ


def _resolved_types(cls: type) -> Dict[str, Any]:
    import typing

    return typing.get_type_hints(cls)


def load_json_config(path: Optional[str | Path], cls: Type[T], overrides: Optional[Dict[str, Any]] = None) -> T:
    """Read a config JSON file (or the defaults when ``path`` is None) and apply flat overrides."""
    data: Any = {} if path is None else _read_json(path)
    if not isinstance(data, dict):
        return from_dict(cls, data)  # refuses it with the clear message
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(data, key, value)
    try:
        return from_dict(cls, data)
    except UsageError as exc:
        if path is None:
            raise
        raise UsageError(f"{path}: {exc.message}", exc.hint) from exc


def _read_json(path: str | Path) -> Any:
    """A config file's JSON, refusing what would silently mislead: a key written twice (the last one won: a
    5000-iteration run for a file that also said 2) and NaN or Infinity (Python reads them; no setting takes them).
    A UTF-8 byte-order mark is read past; a file in another encoding is refused with what to do."""
    def no_duplicates(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
        keys = [k for k, _ in pairs]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise UsageError(f"Config file {path} writes {', '.join(twice)} more than once.", "Keep one of each.")
        return dict(pairs)

    def no_constant(name: str) -> Any:
        raise UsageError(f"Config file {path} holds {name}, which no setting takes.", "Write a finite number.")

    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise UsageError(f"Config file {path} does not exist.") from exc
    except IsADirectoryError as exc:
        raise UsageError(f"Config file {path} is a folder, not a JSON file.") from exc
    except UnicodeDecodeError as exc:
        raise UsageError(f"Config file {path} is not UTF-8 text.",
                         "Save it as UTF-8 (Windows PowerShell: Out-File -Encoding utf8).") from exc
    except OSError as exc:
        raise UsageError(f"Cannot read the config file {path}: {exc.strerror or exc}.") from exc
    try:
        return json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constant)
    except json.JSONDecodeError as exc:
        raise UsageError(f"Config file {path} is not valid JSON: {exc}.") from exc


def json_setting(path: Optional[str | Path], key: str) -> Any:
    """The value a config file itself writes for a top-level ``key`` (None without the file or the key), to tell a
    written setting from a default after :func:`load_json_config` has read the file."""
    if path is None:
        return None
    data = _read_json(path)
    return data.get(key) if isinstance(data, dict) else None


def _set_dotted(data: Dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UsageError(f"The config setting {part!r} must be a JSON object, got {type(node).__name__}.")
    node[parts[-1]] = value
