"""Training state on disk: atomic, self-checking checkpoint files that are never unpickled.

Layout of a checkpoint file::

    MEDSYNTH-CKPT\\n
    {"format": "medsynth-checkpoint", "format_version": 1, "size": N, "sha256": "...", "stage": .., "iteration": ..}\\n
    <N bytes: torch.save payload>

The header's sha256 covers the payload, so a half-written, truncated or altered file is refused with a
:class:`ModelFileError` before ``torch.load`` sees it, and ``torch.load`` runs with ``weights_only=True`` so
loading a checkpoint can never execute code. Everything in the state must therefore be tensors, numbers,
strings, lists or dicts (RNG states as tensors, configs as JSON strings).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from .atomic import atomic_path
from .errors import ModelFileError

MAGIC = b"MEDSYNTH-CKPT\n"
FORMAT = "medsynth-checkpoint"
FORMAT_VERSION = 1
_NAME = re.compile(r"^ckpt_s(\d+)_it(\d+)\.pt$")
_MAX_HEADER = 1 << 16


def checkpoint_name(stage: int, iteration: int) -> str:
    """File name that sorts by (stage, iteration), so the newest checkpoint is found without opening files."""
    return f"ckpt_s{int(stage):02d}_it{int(iteration):09d}.pt"


def save_checkpoint(path: os.PathLike | str, state: Dict[str, Any]) -> Path:
    """Write ``state`` atomically (temp file + fsync + rename) with a sha256 header over the payload."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "size": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
        "stage": state.get("stage"),
        "iteration": state.get("iteration"),
    }
    head = MAGIC + json.dumps(header, separators=(",", ":")).encode("utf-8") + b"\n"
    out = Path(path)
    with atomic_path(out, suffix=".pt") as tmp:
        with open(tmp, "wb") as fh:
            fh.write(head)
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
    return out


def read_checkpoint_header(path: os.PathLike | str) -> Dict[str, Any]:
    """The JSON header only (cheap: no payload read)."""
    header, _ = _read_header(Path(path))
    return header


def _read_header(path: Path) -> Tuple[Dict[str, Any], int]:
    try:
        with open(path, "rb") as fh:
            magic = fh.read(len(MAGIC))
            if magic != MAGIC:
                raise ModelFileError(f"{path} is not a MedSynth checkpoint.", "Pass a file written by `medsynth train`.")
            line = fh.readline(_MAX_HEADER)
    except FileNotFoundError as exc:
        raise ModelFileError(f"Checkpoint {path} does not exist.") from exc
    except IsADirectoryError as exc:
        raise ModelFileError(f"Checkpoint {path} is a folder, not a file.") from exc
    except OSError as exc:  # unreadable (permissions, I/O): a ModelFileError, which the checkpoint scans skip
        raise _unreadable(path, exc) from exc
    if not line.endswith(b"\n"):
        raise ModelFileError(f"Checkpoint {path} has a damaged header.", "The file is truncated or corrupt; use an earlier checkpoint.")
    try:
        header = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"Checkpoint {path} has a damaged header.", "The file is corrupt; use an earlier checkpoint.") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a MedSynth checkpoint.")
    if header.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"Checkpoint {path} has format version {header.get('format_version')}; this MedSynth reads version {FORMAT_VERSION}."
        )
    return header, len(MAGIC) + len(line)


def _unreadable(path: Path, exc: OSError) -> ModelFileError:
    return ModelFileError(f"Checkpoint {path} cannot be read: {exc.strerror or exc}.",
                          "Check its permissions, or use an earlier checkpoint.")


def verify_checkpoint(path: os.PathLike | str) -> Dict[str, Any]:
    """Check size and sha256 of the payload; returns the header or raises :class:`ModelFileError`."""
    header, _ = _read_payload(Path(path))
    return header


def _read_payload(path: Path) -> Tuple[Dict[str, Any], bytes]:
    header, offset = _read_header(path)
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            payload = fh.read()
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    if len(payload) != header.get("size"):
        raise ModelFileError(
            f"Checkpoint {path} is truncated ({len(payload)} of {header.get('size')} bytes).",
            "It was not written completely; use an earlier checkpoint.",
        )
    if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise ModelFileError(f"Checkpoint {path} fails its checksum.", "The file was damaged or altered; use an earlier checkpoint.")
    return header, payload


def load_checkpoint(path: os.PathLike | str, map_location: str | torch.device = "cpu") -> Dict[str, Any]:
    """Verify and load a checkpoint with ``torch.load(weights_only=True)``; anything wrong → :class:`ModelFileError`."""
    p = Path(path)
    _, payload = _read_payload(p)
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ModelFileError(f"Checkpoint {p} could not be read: {exc}") from exc
    if not isinstance(state, dict):
        raise ModelFileError(f"Checkpoint {p} does not hold a training state.")
    return state


def list_checkpoints(directory: os.PathLike | str) -> List[Path]:
    """Checkpoint files in ``directory``, oldest first by (stage, iteration); temporary files are ignored."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        key = checkpoint_iteration(p)
        if key is not None and p.is_file():
            found.append((key, p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: os.PathLike | str, verify: bool = True) -> Optional[Path]:
    """The newest checkpoint that is complete (checksum verified unless ``verify`` is False), or None."""
    for p in reversed(list_checkpoints(directory)):
        if not verify:
            return p
        try:
            verify_checkpoint(p)
        except ModelFileError:
            continue
        return p
    return None


def checkpoint_iteration(path: os.PathLike | str) -> Optional[Tuple[int, int]]:
    """(stage, iteration) from a checkpoint's file name, or None for any other file."""
    m = _NAME.match(Path(path).name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def prune_checkpoints(directory: os.PathLike | str, keep: int = 3, keep_every: int = 0) -> List[Path]:
    """Delete all but the newest ``keep`` checkpoints, but never the newest complete one; returns what was deleted.

    If the newest files are damaged, the newest good one survives even when it is older than the last ``keep``,
    so there is always something to resume from. With ``keep_every`` N > 0, checkpoints at a multiple of N
    iterations of their stage also stay: the points an evaluation plan names in advance must still exist when
    someone gets to them.
    """
    keep = max(1, int(keep))
    files = list_checkpoints(directory)
    protected = latest_checkpoint(directory, verify=True)
    deleted = []
    for p in files[: max(0, len(files) - keep)]:
        if protected is not None and p == protected:
            continue
        if keep_every > 0 and checkpoint_iteration(p)[1] % keep_every == 0:
            continue
        try:
            p.unlink()
            deleted.append(p)
        except OSError:  # gone already, or (Windows) open in another program: a later prune takes it
            pass
    return deleted
