"""Configuration dataclasses: architecture, intensity normalisation, losses and training.

They are plain data, serialised to JSON in model files, checkpoints and HDF5 attributes, so a model file
carries everything needed to rebuild and apply it, and other pairs (T1→T2, MR→CT, 3T→7T) are a matter of
configuration.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Type, TypeVar

from .errors import UsageError

T = TypeVar("T")


@dataclass(frozen=True)
class GeneratorConfig:
    """The paper's 9-layer 3D FCN. Valid convolutions only, so a patch of ``source_patch`` gives ``target_patch``.

    Defaults: filters 32,32,32,64,64,64,32,32,1; dilation 1 in the first and last layers and 2 elsewhere;
    one large 5³ kernel up front and three dilated 3³ kernels, the rest 1³, which shrinks 32³ to 16³
    (receptive field 17³). Every layer but the last is conv+BN+ReLU; the last is linear.
    """

    in_channels: int = 1
    filters: Tuple[int, ...] = (32, 32, 32, 64, 64, 64, 32, 32, 1)
    kernels: Tuple[int, ...] = (5, 3, 3, 3, 1, 1, 1, 1, 1)
    dilations: Tuple[int, ...] = (1, 2, 2, 2, 2, 2, 2, 2, 1)
    residual: bool = True
    batch_norm: bool = True

    def __post_init__(self) -> None:
        n = len(self.filters)
        if not (len(self.kernels) == len(self.dilations) == n) or n < 1:
            raise UsageError("Generator filters, kernels and dilations must have the same length.")
        if self.filters[-1] != 1:
            raise UsageError("The generator's last layer must have 1 filter (one output image).")
        if any(k < 1 or k % 2 == 0 for k in self.kernels):
            raise UsageError("Generator kernels must be odd positive integers.")

    @property
    def shrink(self) -> int:
        """Voxels lost along each axis by the valid convolutions (receptive field minus one)."""
        return sum(d * (k - 1) for k, d in zip(self.kernels, self.dilations))

    @property
    def halo(self) -> int:
        """Voxels of context needed on each side of an output voxel."""
        return self.shrink // 2

    def output_size(self, input_size: int) -> int:
        return input_size - self.shrink


@dataclass(frozen=True)
class DiscriminatorConfig:
    """3 stages of conv3³+BN+ReLU+max-pool, one conv, then fully connected layers ending in one logit."""

    channels: Tuple[int, ...] = (32, 64, 128)
    last_conv: int = 256
    fully_connected: Tuple[int, ...] = (512, 128)


@dataclass(frozen=True)
class IntensityConfig:
    """How one modality is mapped to network units.

    ``percentile`` (MR): divide by the given percentile inside the brain mask, then clip to [clip_min, clip_max].
    ``window`` (CT): map the fixed window [window_min, window_max] (e.g. HU) to [0, 1] and clip.
    """

    mode: str = "percentile"
    percentile: float = 99.5
    clip_min: float = 0.0
    clip_max: float = 1.0
    window_min: float = -1000.0
    window_max: float = 2000.0

    def __post_init__(self) -> None:
        if self.mode not in ("percentile", "window"):
            raise UsageError(f"Unknown intensity mode {self.mode!r}; use 'percentile' (MR) or 'window' (CT).")
        if self.mode == "window" and self.window_max <= self.window_min:
            raise UsageError("window_max must be larger than window_min.")
        if not 0 < self.percentile <= 100:
            raise UsageError("percentile must be in (0, 100].")


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


@dataclass(frozen=True)
class LossConfig:
    """G loss = lambda_adv·BCE(D(G(x))→1) + lambda_l2·L2 + lambda_gdl·GDL (the paper's λ1, λ2, λ3)."""

    lambda_adv: float = 0.05
    lambda_l2: float = 1.0
    lambda_gdl: float = 1.0


@dataclass(frozen=True)
class TrainConfig:
    """Everything that controls one training run."""

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


@dataclass(frozen=True)
class ModelConfig:
    """The architecture part of a model file: everything needed to rebuild the networks."""

    generator: GeneratorConfig = GeneratorConfig()
    discriminator: DiscriminatorConfig = DiscriminatorConfig()
    normalisation: NormalisationConfig = NormalisationConfig()
    loss: LossConfig = LossConfig()
    stages: int = 3
    source_patch: int = 32
    source_name: str = "T1ce"
    target_name: str = "T2"

    def __post_init__(self) -> None:
        if self.stages < 1:
            raise UsageError("A model needs at least one stage.")
        if self.source_patch - self.generator.shrink < 1:
            raise UsageError(
                f"source_patch {self.source_patch} is smaller than the generator's receptive field "
                f"{self.generator.shrink + 1}."
            )

    @property
    def target_patch(self) -> int:
        return self.generator.output_size(self.source_patch)

    def stage_generator(self, stage: int) -> GeneratorConfig:
        """Stage 0 sees the source; each later stage sees the source and the previous stage's synthesis."""
        return dataclasses.replace(self.generator, in_channels=1 if stage == 0 else 2)


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
        raise UsageError(f"Unknown {cls.__name__} setting(s): {', '.join(unknown)}.")
    kwargs = {}
    hints = _resolved_types(cls)
    for name, value in data.items():
        typ = hints[name]
        if dataclasses.is_dataclass(typ):
            kwargs[name] = from_dict(typ, value)
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise UsageError(f"Bad {cls.__name__} settings: {exc}.") from exc


def _resolved_types(cls: type) -> Dict[str, Any]:
    import typing

    return typing.get_type_hints(cls)


def load_json_config(path: Optional[str | Path], cls: Type[T], overrides: Optional[Dict[str, Any]] = None) -> T:
    """Read a config JSON file (or the defaults when ``path`` is None) and apply flat overrides."""
    data: Dict[str, Any] = {}
    if path is not None:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise UsageError(f"Config file {path} does not exist.") from exc
        except json.JSONDecodeError as exc:
            raise UsageError(f"Config file {path} is not valid JSON: {exc}.") from exc
    base = to_dict(from_dict(cls, data))
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(base, key, value)
    return from_dict(cls, base)


def _set_dotted(data: Dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
