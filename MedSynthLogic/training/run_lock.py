"""One training at a time in a run folder.

A researcher's walk-through started a run and, while it trained, the same command with ``--resume``: both ran to the
end into one folder, their checkpoints interleaved, the CSV log got each row twice and both wrote the model. The
first training now holds a lock file in the folder (rank 0 only) and the second is refused; a lock whose process has
ended (a killed run) is taken over, so ``--resume`` after a crash just works.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any, Dict, Optional

from ..errors import OutputError

#: The lock file's name inside the run folder (hidden; not a checkpoint, so no listing counts it).
LOCK_NAME = ".medsynth-train.lock"


def acquire_run_folder(folder: Path) -> Path:
    """Take the run folder for this process; an OutputError (``run_folder_in_use``) when a live training holds it."""
    path = Path(folder) / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _attempt in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder is not None and _still_running(holder):
                raise _in_use(folder, path, holder) from None
            _remove(path)  # its training ended without removing it (killed, or the machine went down)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(me, fh)
        return path
    raise OutputError(f"The run folder {folder} is being taken by another training at this moment.",
                      "Start one training per run folder (--run-dir).", reason="run_folder_in_use")


def release_run_folder(path: Optional[Path]) -> None:
    """Remove the lock this process took (never another's)."""
    if path is None:
        return
    holder = _holder(path)
    if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        _remove(path)


def _in_use(folder: Path, path: Path, holder: Dict[str, Any]) -> OutputError:
    where = "" if holder.get("host") == socket.gethostname() else f" on {holder.get('host')}"
    return OutputError(
        f"The run folder {folder} is in use by another training (process {holder.get('pid')}{where}).",
        f"Wait for it to end or stop it, or pass another --run-dir. If no training is running there, delete {path}.",
        reason="run_folder_in_use",
    )


def _holder(path: Path) -> Optional[Dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # unreadable or half-written: treated as stale
    return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None


def _still_running(holder: Dict[str, Any]) -> bool:
    """Whether the holder's process lives (another machine's cannot be asked: taken as running)."""
    if holder.get("host") != socket.gethostname():
        return True
    pid = int(holder["pid"])
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False
    if os.name == "nt":
        return True  # os.kill would end the process there; the hint says how to clear a stale lock
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
