"""Model files: the generators' weights plus everything needed to rebuild and apply them, in one safetensors file.

Why safetensors: a model file is something users download and share, and a pickle (``torch.save``) executes code
when loaded. A safetensors file is a JSON header plus raw tensor bytes, so reading it cannot run anything. The
MedSynth header (metadata key ``medsynth``) carries the :class:`~MedSynthLogic.config.ModelConfig` (architecture
and intensity normalisation), so a file is self-describing, and a SHA-256 over the tensors, so a corrupt or
edited file is refused instead of silently giving a wrong synthesis.

Layout: tensors ``stage{k}.<parameter>``, for a model with a prior ``prior.stage{k}.<parameter>``, and for a model
with a learned error map (:mod:`.error_map`) ``error_map.<name>`` with a header entry ``error_map`` (contiguous
CPU float32; integer buffers such as BatchNorm's ``num_batches_tracked`` are stored as float32 too and cast back on
load) and metadata ``{"medsynth": JSON}`` with
``format="medsynth-model"``, ``format_version=1``, ``medsynth_version``, ``model_config``, ``stages``,
``training``, ``metrics``, ``tensors_sha256``, ``created`` and ``header_sha256`` (over all the rest).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from . import __version__
from .atomic import atomic_path, check_output_path
from .bundled_models import DEFAULT_NAME
from .config import ModelConfig, from_dict, to_dict
from .devices import resolve_device
from .error_map import TENSOR_PREFIX as ERROR_MAP_PREFIX
from .error_map import ErrorMap
from .errors import MedSynthError, ModelFileError, OutputError, UsageError
from .model_header import (FORMAT, FORMAT_VERSION, METADATA_KEY, bundled_model_path, header_sha256, jsonable,
                           read_header)
from .models import PRIOR_PREFIX, AutoContextChain, build_generators, generators_state, load_prior_state, sub_state

PathLike = Union[str, os.PathLike]

BUNDLED_NAME = DEFAULT_NAME

__all__ = [
    "LoadedModel",
    "save_model",
    "with_error_map",
    "read_header",
    "read_config",
    "load_model",
    "bundled_model_path",
    "tensors_sha256",
    "header_sha256",
    "FORMAT",
    "FORMAT_VERSION",
]


@dataclass
class LoadedModel:
    """A model ready for inference: the chain (eval mode, on its device), its config, the file's header."""

    chain: AutoContextChain
    config: ModelConfig
    header: Dict[str, Any]
    path: Optional[Path] = None
    error_map: Optional[ErrorMap] = None

    @property
    def stages(self) -> int:
        """Stages loaded (may be fewer than the file holds)."""
        return len(self.chain.stages)


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors in name order: for each, ``name|dtype|shape`` then its raw bytes.

    Hashing names, dtypes and shapes as well as bytes means a renamed or reshaped tensor also fails the check.
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{str(t.dtype).replace('torch.', '')}|{tuple(t.shape)}\n".encode("utf-8"))
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _unwrap(chain: Any) -> AutoContextChain:
    """The chain itself when wrapped (DistributedDataParallel, torch.compile)."""
    for attr in ("module", "_orig_mod"):
        while hasattr(chain, attr) and not hasattr(chain, "stages"):
            chain = getattr(chain, attr)
    if not hasattr(chain, "stages"):
        raise UsageError(f"save_model needs an AutoContextChain, got {type(chain).__name__}.")
    return chain


def save_model(
    path: PathLike,
    chain: AutoContextChain,
    cfg: ModelConfig,
    training: Optional[Dict[str, Any]] = None,
    metrics: Optional[Dict[str, Any]] = None,
    overwrite: bool = True,
    error_map: Optional[ErrorMap] = None,
    inputs: Sequence[PathLike] = (),
    created: Optional[str] = None,
) -> Path:
    """Write every stage of ``chain`` with its config and a checksum, atomically (old file or complete new one).
    ``inputs``: the files it was made from, which it never replaces, even with ``overwrite``. ``created``: the
    date of the generators of a file whose header is being rewritten (it is kept, and ``modified`` records now).

    A chain with fewer stages than ``cfg.stages`` (training stopped after an earlier stage) is saved with
    ``stages`` set to what it has, so the file always rebuilds to exactly its tensors. ``error_map``: a learned
    error map fitted for this very chain (:mod:`.error_map`), stored with it.
    """
    chain = _unwrap(chain)
    n = len(chain.stages)
    if n < 1:
        raise UsageError("The chain has no stages to save.")
    if n != cfg.stages:
        cfg = dataclasses.replace(cfg, stages=n)
    tensors = {name: t.detach().to(device="cpu", dtype=torch.float32).contiguous().clone()
               for name, t in generators_state(chain).items()}
    _check_architecture(tensors, cfg, what="The chain")
    if error_map is not None:
        tensors.update(error_map.tensors())
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "medsynth_version": __version__,
        "model_config": to_dict(cfg),
        "stages": n,
        "training": dict(training or {}),
        "metrics": dict(metrics or {}),
        "tensors_sha256": tensors_sha256(tensors),
        "created": created or _now(),
        **({"modified": _now()} if created else {}),
    }
    if error_map is not None:
        header["error_map"] = error_map.header()
    return _write(path, tensors, header, overwrite, inputs)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _write(path: PathLike, tensors: Dict[str, torch.Tensor], header: Dict[str, Any], overwrite: bool,
           inputs: Sequence[PathLike] = ()) -> Path:
    """Seal ``header`` with its checksum and write it with ``tensors``, atomically. The checksum is taken over the
    header as JSON gives it back (keys made strings), which is what a reader sees."""
    try:
        header = json.loads(json.dumps(header, default=jsonable, allow_nan=True))
        header["header_sha256"] = header_sha256(header)
        header_json = json.dumps(header, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"The model's training/metrics information cannot be stored as JSON: {exc}.") from exc
    from safetensors.torch import save_file

    out = check_output_path(path, overwrite=overwrite, inputs=tuple(inputs))
    with atomic_path(out) as tmp:
        try:
            save_file(tensors, str(tmp), metadata={METADATA_KEY: header_json})
        except Exception as exc:  # safetensors reports I/O failures as its own SafetensorError
            raise _write_error(exc, out) from exc
    return out


def _write_error(exc: Exception, path: Path) -> OutputError:
    """The OutputError for a failed safetensors write, using the errno it names ("… (os error 28)") so a full disk
    reads "No space left" like every other output."""
    import re

    from .atomic import as_output_error

    match = re.search(r"os error (\d+)", str(exc))
    code = exc.errno if isinstance(exc, OSError) else int(match.group(1)) if match else None
    known = as_output_error(OSError(code, str(exc)), path) if code is not None else None
    return known or OutputError(f"Cannot write the model file {path}: {exc}.", "Check the disk and the folder's permissions.")


def read_config(path: PathLike) -> ModelConfig:
    """The ``ModelConfig`` of a model file from its header alone: its pair's names and input expectations, before
    (or instead of) loading the weights."""
    return _config_from_header(Path(path), read_header(path))


def _config_from_header(p: Path, header: Dict[str, Any]) -> ModelConfig:
    try:
        cfg = from_dict(ModelConfig, header["model_config"])
    except (MedSynthError, TypeError, ValueError, KeyError) as exc:
        raise ModelFileError(
            f"The model configuration in {p} does not rebuild ({exc}); it was made for another MedSynth "
            "architecture or the header is corrupt."
        ) from exc
    stages = header["stages"]
    if not isinstance(stages, int) or stages != cfg.stages:
        raise ModelFileError(f"The header of {p} says {stages!r} stages but its configuration has {cfg.stages}.")
    return cfg


def _check_architecture(tensors: Mapping[str, torch.Tensor], cfg: ModelConfig, what: str, stages: Optional[int] = None) -> None:
    """Raise ModelFileError naming the first differences between ``tensors`` and what ``cfg`` builds."""
    n = cfg.stages if stages is None else stages
    expected = {name: tuple(t.shape) for name, t in generators_state(build_generators(dataclasses.replace(cfg, stages=n))).items()}
    problems = []
    for name in sorted(expected):
        if name not in tensors:
            problems.append(f"{name} is missing")
        elif tuple(tensors[name].shape) != expected[name]:
            problems.append(f"{name} has shape {tuple(tensors[name].shape)}, the configuration expects {expected[name]}")
    stage_names = {f"stage{k}." for k in range(n)}
    if cfg.prior is not None:
        stage_names |= {f"{PRIOR_PREFIX}stage{k}." for k in range(cfg.prior.stages)}
    extra = sorted(nm for nm in tensors if nm not in expected and _stage_of(nm) in stage_names)
    problems += [f"{nm} is not part of the configured network" for nm in extra]
    if stages is None:
        problems += [f"{nm} belongs to no configured stage" for nm in sorted(tensors) if _stage_of(nm) not in stage_names]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ModelFileError(f"{what} was made for another architecture: {shown}.")


def _stage_of(name: str) -> str:
    """``stage3.`` of ``stage3.body.0.weight``, ``prior.stage0.`` of ``prior.stage0.body.0.weight``."""
    rest = name[len(PRIOR_PREFIX):] if name.startswith(PRIOR_PREFIX) else name
    return name[: len(name) - len(rest)] + rest[: rest.find(".") + 1]


def load_model(path: PathLike, device: Union[str, torch.device] = "cpu", stages: Optional[int] = None) -> LoadedModel:
    """Load and verify a model file: header, configuration, tensor names/shapes and checksum; never unpickles.

    ``stages`` loads only the first ``stages`` generators (None: all); asking for more than the file has is a
    :class:`UsageError`. The chain is returned in eval mode with gradients off.
    """
    header = read_header(path)
    p = Path(path)
    cfg = _config_from_header(p, header)
    if stages is None:
        n = cfg.stages
    else:
        if isinstance(stages, bool) or not isinstance(stages, (int, np.integer)) or stages < 1:
            raise UsageError(f"stages must be a positive integer, got {stages!r}.")
        n = int(stages)
        if n > cfg.stages:
            prior = cfg.prior.stages if cfg.prior is not None else 0
            after = (f" of its own, after the {prior} stage(s) of the frozen model it refines, which always run (the "
                     f"progress counts all {prior + cfg.stages})") if prior else ""
            raise UsageError(
                f"The model {p.name} has {cfg.stages} auto-context stage(s){after}; {n} were asked for.",
                f"Pass --stages {cfg.stages} or fewer.",
            )
    tensors = _verified_tensors(p, header)
    error_map = _error_map_of(p, tensors, header)
    tensors = {k: v for k, v in tensors.items() if not k.startswith(ERROR_MAP_PREFIX)}
    _check_architecture(tensors, cfg, what=f"The model file {p}")
    run_cfg = dataclasses.replace(cfg, stages=n)
    chain = build_generators(run_cfg)
    for k, gen in enumerate(chain.stages):
        state = sub_state(tensors, f"stage{k}.")
        try:
            gen.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelFileError(f"The model file {p} was made for another architecture: {exc}.") from exc
    load_prior_state(chain, tensors)
    chain.eval()
    for param in chain.parameters():
        param.requires_grad_(False)
    chain.to(resolve_device(device))
    return LoadedModel(chain=chain, config=run_cfg, header=header, path=p,
                       error_map=error_map if n == cfg.stages else None)


def _verified_tensors(p: Path, header: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    """Every tensor of the file, read once and checked against the header's checksum."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(p), device="cpu")
    except Exception as exc:  # safetensors' own errors for truncated or malformed data
        raise ModelFileError(f"The model file {p} is truncated or corrupt: {exc}.", "Copy or download it again.") from exc
    if tensors_sha256(tensors) != header["tensors_sha256"]:
        raise ModelFileError(
            f"The model file {p} is tampered or corrupt: its tensors do not match the checksum in its header.",
            "Copy or download it again; do not edit model files by hand.",
        )
    return tensors


def _error_map_of(p: Path, tensors: Mapping[str, torch.Tensor], header: Dict[str, Any]) -> Optional[ErrorMap]:
    """The file's learned error map, or None; its tensors and header entry must come together and fit."""
    own = {k: v for k, v in tensors.items() if k.startswith(ERROR_MAP_PREFIX)}
    if not own and "error_map" not in header:
        return None
    try:
        return ErrorMap.from_tensors(own, header["error_map"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise ModelFileError(f"The error map stored in {p} does not rebuild: {exc}.",
                             "Use the original model file, or one without an error map.") from exc


def with_error_map(path: PathLike, out: PathLike, error_map: ErrorMap, overwrite: bool = False) -> Path:
    """A copy of the model file ``path`` with ``error_map`` stored in it (any earlier one replaced), its generators
    and header otherwise unchanged apart from the checksums and ``modified`` (``created`` stays the generators'
    date): fit the map for the model in ``path``."""
    p = Path(path)
    header = dict(read_header(p))
    tensors = {k: v for k, v in _verified_tensors(p, header).items() if not k.startswith(ERROR_MAP_PREFIX)}
    _check_architecture(tensors, _config_from_header(p, header), what=f"The model file {p}")
    tensors.update(error_map.tensors())
    header["error_map"] = error_map.header()
    header["tensors_sha256"] = tensors_sha256(tensors)
    header.setdefault("created", _now())
    header["modified"] = _now()
    header.pop("header_sha256", None)
    return _write(out, tensors, header, overwrite, inputs=(p,))
