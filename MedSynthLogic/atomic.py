"""Atomic file writing: a file is either the old one or the complete new one, never half-written."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator, List

from .errors import OutputError


#: The longest output name: a file system's 255 bytes less the temporary file's prefix and suffix.
MAX_NAME_BYTES = 220


def check_output_name(path: str | os.PathLike) -> Path:
    """Refuse a file name too long to write (with its temporary twin) before anything asks the file system about it."""
    out = Path(path)
    size = len(out.name.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        raise OutputError(f"The file name {out.name[:40]}… is too long ({size} bytes; at most {MAX_NAME_BYTES}).",
                          "Choose a shorter name.")
    return out


def same_place(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file, existing or not: ``out/../out/u.nii.gz`` is ``out/u.nii.gz``, and a link is
    what it points to (comparing absolute paths let such spellings write one file over the other)."""
    return Path(a).resolve() == Path(b).resolve()


def check_output_path(path: str | os.PathLike, overwrite: bool = False, inputs: tuple = ()) -> Path:
    """Refuse an output that would destroy something the user made: an existing file, or one of the inputs."""
    out = check_output_name(path)
    for src in inputs:
        if src is not None and same_place(out, src):
            raise OutputError(f"The output {out} is one of the inputs.", "Choose another output path.")
    if out.exists() and not overwrite:
        raise OutputError(f"The output {out} exists already.",
                          "Pass --overwrite (overwrite=True in Python) or choose another path.", reason="output_exists")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"The folder {parent} does not exist.", "Create it first or choose another output path.")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"The folder {parent} is not writable.", "Choose a folder you can write to.")
    return out


def make_output_folder(folder: str | os.PathLike) -> Path:
    """Create ``folder`` (and its parents), or say why it cannot be: a file of that name, a read-only place, a
    path under /proc. A bare OSError from ``mkdir`` reached the user as a traceback from ``train --run-dir`` and
    ``evaluate --out``."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise OutputError(f"The output folder {path} is a file.", "Choose a folder, or move that file away.")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"Cannot create the output folder {path}: {exc.strerror or exc}.",
                          "Choose a folder you can write to.") from exc
    return path


def temporary_prefix(name: str) -> str:
    """How ``atomic_path`` starts the temporary file it writes beside a file called ``name``."""
    return f".{name[:24]}."


def stale_temporaries(folder: str | os.PathLike, names: Iterable[str]) -> List[Path]:
    """Temporary files ``atomic_path`` left beside these names in ``folder``: a process killed outright (out of
    memory, ``kill -9``) cannot remove them, and for HDF5 outputs they reach gigabytes."""
    found: List[Path] = []
    for name in names:
        found += sorted(p for p in Path(folder).glob(temporary_prefix(name) + "*.tmp*") if p.is_file())
    return found


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed over ``path``.

    The temporary name keeps the real suffix (``.nii.gz`` …) so writers that pick a format by extension work.
    On any error the temporary file is removed and ``path`` is left untouched.
    """
    final = Path(path)
    name = final.name
    if suffix is None:
        suffix = "".join(final.suffixes[-2:]) if name.endswith(".gz") else final.suffix
    try:
        # a short prefix: the whole name again made the temporary path overrun Windows' 260 characters first
        fd, tmp_name = tempfile.mkstemp(prefix=temporary_prefix(name), suffix=f".tmp{suffix}", dir=final.parent if str(final.parent) else ".")
    except OSError as exc:
        raise (as_output_error(exc, final) or exc) from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        sync_file(tmp)  # before the mode: a umask without the owner's write would refuse the writable handle
        os.chmod(tmp, 0o666 & ~_current_umask())
        replace_file(tmp, final)
    except OSError as exc:
        _remove_quietly(tmp)
        error = as_output_error(exc, final)
        if error is None:
            raise
        raise error from exc
    except BaseException:
        _remove_quietly(tmp)
        raise
    sync_folder(final.parent)


def sync_folder(folder: str | os.PathLike) -> None:
    """Flush a folder's entries after a rename into it, so a power cut cannot take the rename back (POSIX; Windows
    cannot open a folder for fsync, and NTFS journals the rename). Never raises: some mounts cannot sync a folder."""
    if os.name == "nt":
        return
    try:  # best effort: the file is in place already, and a folder that cannot be opened or synced must not undo that
        fd = os.open(os.fspath(folder) or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sync_file(path: str | os.PathLike) -> None:
    """Flush a written file to the disk before it is renamed into place. Opened for writing: on Windows ``fsync``
    is ``FlushFileBuffers``, which refuses a read-only handle (EBADF), and every write failed there."""
    with open(path, "r+b") as fh:
        os.fsync(fh.fileno())


#: Windows: how often, and how long apart, a rename refused because another program has a file open is tried again
#: (a virus scanner, a search indexer or a sync client opens a new file for a moment).
REPLACE_TRIES = 5
REPLACE_WAIT_S = 0.2


def replace_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """``os.replace``, tried again on Windows while another program holds one of the files open."""
    for attempt in range(REPLACE_TRIES if os.name == "nt" else 1):
        try:
            os.replace(src, dst)
            return
        except PermissionError:
            if attempt + 1 >= REPLACE_TRIES or os.name != "nt":
                raise
            time.sleep(REPLACE_WAIT_S * (attempt + 1))


#: Windows' error codes for a file another program has open (sharing and lock violations), and the access denied
#: that ``os.replace`` gives onto a destination another process holds (after the retries of :func:`replace_file`).
_IN_USE_WINERRORS = (32, 33)
_ACCESS_DENIED_WINERROR = 5


def as_output_error(exc: OSError, path: str | os.PathLike) -> OutputError | None:
    """The user-facing error for an OSError met while writing ``path`` (full disk, no permission, a file another
    program holds open), else None."""
    if getattr(exc, "winerror", None) in _IN_USE_WINERRORS:
        return OutputError(f"{path} is open in another program, which keeps it from being replaced.",
                           "Close it there (a viewer, a spreadsheet, a sync client) and try again.")
    if getattr(exc, "winerror", None) == _ACCESS_DENIED_WINERROR and Path(path).exists():
        return OutputError(f"Permission denied replacing {path}: it is read-only or open in another program.",
                           "Close it there (a viewer, a spreadsheet, a sync client), or choose another path.")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return OutputError(f"No space left while writing {path}.", "Free disk space and try again; earlier files are intact.")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"Permission denied writing {path}.", "Choose a folder you can write to.")
    if exc.errno == errno.ENOENT:
        return OutputError(f"The folder of {path} does not exist.", "Create it first or choose another output path.")
    if exc.errno == errno.ENAMETOOLONG:
        return OutputError(f"The file name of {path} is too long.", "Choose a shorter name.")
    return None


def short_write_error(path: str | os.PathLike, detail: str) -> OutputError:
    """The error for a writer that reported success but left an incomplete file.

    Some writers (ITK's NIfTI writer, for one) print a message and return normally when the disk fills up; the
    caller detects the short file and raises this, which says "No space" when the folder is (nearly) full.
    """
    import shutil

    try:
        full = shutil.disk_usage(Path(path).parent).free < 1 << 20
    except OSError:
        full = False
    if full:
        return as_output_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), path)  # type: ignore[return-value]
    return OutputError(f"{path} was not written completely ({detail}).", "Check the disk and try again; earlier files are intact.")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _current_umask() -> int:
    """mkstemp (and some writers, e.g. safetensors) create files 0600; a user's result gets the usual permissions."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
