"""A model file's MedSynth header, read without torch or safetensors.

The Slicer panel describes the chosen model and estimates the time as soon as it opens, before the dependency
installer has put PyTorch into Slicer's Python; importing :mod:`.model_file` there raised inside ``setup()``. A
safetensors file is a little-endian u64 length, that many bytes of JSON (tensor entries and ``__metadata__``), then
the tensors' bytes, so the header and a check that the tensor entries fit the file need only the standard library.
:mod:`.model_file` re-exports everything here and reads the tensors with safetensors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import struct
from pathlib import Path
from typing import Any, Dict, Mapping, Union

import numpy as np

from . import __version__
from .bundled_models import DEFAULT_NAME, models_dir
from .errors import ModelFileError

PathLike = Union[str, "os.PathLike[str]"]

FORMAT = "medsynth-model"
FORMAT_VERSION = 1
METADATA_KEY = "medsynth"
ENV_MODEL = "MEDSYNTH_MODEL"
#: A safetensors header above this is refused (safetensors' own limit).
MAX_HEADER_BYTES = 100_000_000
#: Bits per element of the dtypes a safetensors file may hold (its specification's names).
DTYPE_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16, "U16": 16, "F16": 16,
              "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "C64": 64, "I64": 64, "U64": 64, "F64": 64, "F4": 4,
              "F6_E2M3": 6, "F6_E3M2": 6}


def header_sha256(header: Mapping[str, Any]) -> str:
    """SHA-256 of the header's canonical JSON (every key but this checksum), so an edited header is detected."""
    body = {k: v for k, v in header.items() if k != "header_sha256"}
    text = json.dumps(body, sort_keys=True, default=jsonable, allow_nan=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def jsonable(value: Any) -> Any:
    """``json.dumps``' fallback for what a header is written from: numpy values, tensors, paths, dataclasses, sets."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "detach") and hasattr(value, "tolist"):  # a torch tensor, without importing torch
        return value.detach().cpu().tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def not_ours(p: Path, why: str) -> ModelFileError:
    """The error for a file that is no MedSynth model, saying why and what to pass instead."""
    return ModelFileError(
        f"{p} is not a MedSynth safetensors model ({why}).",
        "Pass a .safetensors model written by MedSynth (training writes one; a .pt checkpoint is never loaded as a "
        "model, because unpickling can run code: `medsynth export CHECKPOINT MODEL.safetensors` makes a model file "
        "of it).",
    )


def check_file(path: PathLike) -> Path:
    """Refuse, without parsing it, anything that cannot be a safetensors file (pickles, zips, truncations)."""
    p = Path(path)
    if not p.exists():
        raise ModelFileError(f"The model file {p} does not exist.", "Check the path.")
    if p.is_dir():
        raise ModelFileError(f"The model path {p} is a folder, not a file.", "Pass the .safetensors file itself.")
    try:
        size = p.stat().st_size
        with open(p, "rb") as fh:
            head = fh.read(9)
    except PermissionError as exc:
        raise ModelFileError(f"The model file {p} cannot be read (permission denied).") from exc
    except OSError as exc:
        raise ModelFileError(f"The model file {p} cannot be read: {exc}.") from exc
    if len(head) < 9:
        raise not_ours(p, f"only {size} bytes")
    (header_len,) = struct.unpack("<Q", head[:8])
    if head[8:9] != b"{" or header_len < 2 or header_len > MAX_HEADER_BYTES:
        kind = "a pickle" if head[:1] == b"\x80" else "a zip/torch.save archive" if head[:2] == b"PK" else "unknown content"
        raise not_ours(p, kind)
    if 8 + header_len > size:
        raise ModelFileError(f"The model file {p} is truncated (its header is cut off).", "Copy or download it again.")
    return p


def safetensors_metadata(p: Path) -> Dict[str, str]:
    """The ``__metadata__`` of a safetensors file whose tensor entries fill its data exactly, as the format demands."""
    corrupt = "Copy or download it again."
    try:
        with open(p, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            table = json.loads(fh.read(n).decode("utf-8"))
            data_bytes = fh.seek(0, os.SEEK_END) - 8 - n
    except (OSError, UnicodeDecodeError, ValueError, struct.error) as exc:
        raise ModelFileError(f"The model file {p} is truncated or corrupt: {exc}.", corrupt) from exc
    if not isinstance(table, dict):
        raise ModelFileError(f"The model file {p} is truncated or corrupt: its header is no JSON object.", corrupt)
    spans = []
    for name, entry in table.items():
        if name == "__metadata__":
            continue
        try:
            offsets, shape, dtype = entry["data_offsets"], entry["shape"], entry["dtype"]
        except (KeyError, TypeError) as exc:
            raise ModelFileError(f"The model file {p} is truncated or corrupt: a bad entry for tensor {name!r}.",
                                 corrupt) from exc
        if not (_counts(offsets) and len(offsets) == 2 and _counts(shape)):
            raise ModelFileError(f"The model file {p} is truncated or corrupt: a bad entry for tensor {name!r}.", corrupt)
        if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
            raise ModelFileError(f"The model file {p} holds tensor {name!r} of a type this MedSynth does not read "
                                 f"({dtype!r}).", "Pass a model file written by MedSynth.")
        start, end = offsets
        bits = math.prod(shape) * DTYPE_BITS[dtype]
        if not start <= end or bits % 8 or end - start != bits // 8:
            raise ModelFileError(f"The model file {p} is truncated or corrupt: tensor {name!r} has a wrong size.", corrupt)
        spans.append((start, end))
    covered = 0
    for start, end in sorted(spans):
        if start != covered:
            raise ModelFileError(f"The model file {p} is truncated or corrupt: its tensors overlap or leave gaps.", corrupt)
        covered = end
    if covered != data_bytes:
        raise ModelFileError(f"The model file {p} is truncated or corrupt: its tensors need {covered} bytes, it holds "
                             f"{data_bytes}.", corrupt)
    metadata = table.get("__metadata__") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ModelFileError(f"The model file {p} is truncated or corrupt: its metadata is no object of strings.",
                             corrupt)
    return metadata


def _counts(values: Any) -> bool:
    """A JSON list of non-negative integers (not booleans, floats or strings), as safetensors demands."""
    return isinstance(values, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)


def read_header(path: PathLike) -> Dict[str, Any]:
    """The MedSynth header of a model file, without reading the tensors (cheap: for ``medsynth info``, checks and the
    panel's description before PyTorch is installed)."""
    p = check_file(path)
    metadata = safetensors_metadata(p)
    if METADATA_KEY not in metadata:
        raise not_ours(p, "a safetensors file without a MedSynth header")
    try:
        header = json.loads(metadata[METADATA_KEY])
    except (TypeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"The MedSynth header of {p} is not valid JSON ({exc}); the file is corrupt.") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise not_ours(p, f"header format {header.get('format') if isinstance(header, dict) else None!r}")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise ModelFileError(
            f"{p} is a MedSynth model of format version {version!r}; this MedSynth ({__version__}) reads version "
            f"{FORMAT_VERSION}.",
            "Update MedSynth." if newer else "Re-export the model with this MedSynth.",
        )
    for key in ("model_config", "stages", "tensors_sha256", "header_sha256"):
        if key not in header:
            raise ModelFileError(f"The MedSynth header of {p} lacks {key!r}; the file is corrupt or incomplete.")
    if header_sha256(header) != header["header_sha256"]:
        raise ModelFileError(
            f"The MedSynth header of {p} does not match its checksum: the file was tampered with or is corrupt.",
            "Use the original model file.",
        )
    return header


def bundled_model_path() -> Path:
    """The model shipped with MedSynth (``$MEDSYNTH_MODEL`` overrides it); a clear error when it is absent."""
    env = os.environ.get(ENV_MODEL)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            what = "a folder, not a model file" if p.is_dir() else "which does not exist"
            raise ModelFileError(f"{ENV_MODEL} points to {p}, {what}.", "Fix the variable or pass --model PATH.")
        return p
    p = models_dir() / DEFAULT_NAME
    if not p.is_file():
        raise ModelFileError(
            f"No bundled model found at {p}.",
            f"Pass --model PATH to a trained .safetensors model (or set {ENV_MODEL}); `medsynth train` makes one.",
        )
    return p
