"""One training at a time in a run folder.

A researcher's walk-through started a run and, while it trained, the same command with ``--resume``: both ran to the
end into one folder, their checkpoints interleaved, the CSV log got each row twice and both wrote the model. The
first training now holds an operating-system lock on a file in the folder (rank 0 only) and the second is refused.
The system drops the lock when its process ends, however it ends, so ``--resume`` after a kill just works; no stale
lock is guessed at from process ids (a restarted container reuses them). The file stays (deleting a lock file while
another process opens it would let two hold locks on two files); it names the last holder for the message.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import IO, Any, Dict, Optional

from ..errors import OutputError

#: The lock file's name inside the run folder (hidden; not a checkpoint, so no listing counts it).
LOCK_NAME = ".medsynth-train.lock"
#: Windows: the byte locked, far past the holder's record. ``msvcrt.locking`` locks are mandatory, so locking byte 0
#: kept the second training from reading who holds the folder (locking past the end of a file is allowed).
WINDOWS_LOCK_OFFSET = 1 << 30


def acquire_run_folder(folder: Path) -> IO[str]:
    """Lock the run folder for this process (keep the returned handle open while training); an OutputError
    (reason "run_folder_in_use") when another training holds it."""
    path = Path(folder) / LOCK_NAME
    handle = open(path, "a+", encoding="utf-8")  # created if missing, never truncated before the lock is ours
    try:
        _lock(handle)
    except OSError:
        holder = _holder(handle)
        handle.close()
        raise _in_use(folder, path, holder) from None
    handle.seek(0)
    handle.truncate()
    json.dump({"pid": os.getpid(), "host": socket.gethostname()}, handle)
    handle.flush()
    return handle


def release_run_folder(handle: Optional[IO[str]]) -> None:
    """Drop the lock (closing the handle drops it too; the system drops it when the process ends)."""
    if handle is None or handle.closed:
        return
    try:
        _unlock(handle)
    except OSError:
        pass
    handle.close()


def _lock(handle: IO[str]) -> None:
    if os.name == "nt":
        import msvcrt

        _windows_locking(handle, msvcrt.LK_NBLCK)
    else:
        import fcntl

        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def _unlock(handle: IO[str]) -> None:
    if os.name == "nt":
        import msvcrt

        _windows_locking(handle, msvcrt.LK_UNLCK)
    else:
        import fcntl

        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _windows_locking(handle: IO[str], mode: int) -> None:
    """``msvcrt.locking`` of the byte at :data:`WINDOWS_LOCK_OFFSET` (it locks from the file position), the handle
    left at the start for the holder's record."""
    import msvcrt

    os.lseek(handle.fileno(), WINDOWS_LOCK_OFFSET, os.SEEK_SET)
    try:
        msvcrt.locking(handle.fileno(), mode, 1)
    finally:
        handle.seek(0)


def _holder(handle: IO[str]) -> Dict[str, Any]:
    """Who holds the lock, as its holder wrote it (empty when it cannot be read, e.g. locked against reading)."""
    try:
        handle.seek(0)
        data = json.loads(handle.read() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _in_use(folder: Path, path: Path, holder: Dict[str, Any]) -> OutputError:
    who = f" (process {holder['pid']} on {holder.get('host', 'an unknown machine')})" if "pid" in holder else ""
    return OutputError(
        f"The run folder {folder} is in use by another training{who}.",
        "Wait for it to end or stop it, or pass another --run-dir.",
        reason="run_folder_in_use",
    )
