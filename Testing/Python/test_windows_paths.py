"""Windows behaviour that a read-through of the code found wrong, reproduced here on POSIX where it can be.

Nobody runs Windows in this project: each test imitates the documented Windows behaviour (``FlushFileBuffers`` needs
a handle with write access; a file another program holds open cannot be replaced or deleted; a pipe whose reader
left raises EINVAL; ``\\`` separates path parts) and checks the code's answer to it.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from MedSynthLogic import atomic, checkpoint, dataset_cases, reporting
from MedSynthLogic.errors import OutputError


class WindowsOs:
    """The ``os`` module as a module under test sees it on Windows: ``name`` "nt", everything else the real one.
    Patched into that module only (a global ``os.name`` made pathlib build WindowsPaths in pytest's own report)."""

    name = "nt"

    def __getattr__(self, attr: str):
        return getattr(os, attr)


def test_a_written_file_is_flushed_through_a_handle_that_may_write(tmp_path, monkeypatch):
    """Windows' fsync refuses a read-only handle (EBADF): every atomic write failed there. A zero-byte write is
    refused the same way on a read-only descriptor here, so it stands in for FlushFileBuffers."""
    real_fsync = os.fsync

    def windows_fsync(fd: int) -> None:
        os.write(fd, b"")  # EBADF unless the descriptor was opened for writing
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", windows_fsync)
    with atomic.atomic_path(tmp_path / "out.txt") as tmp:
        tmp.write_text("complete", encoding="utf-8")
    assert (tmp_path / "out.txt").read_text(encoding="utf-8") == "complete"
    from MedSynthLogic.phantom import make_phantom
    from MedSynthLogic.volume_io import write_volume

    write_volume(make_phantom(shape=(16, 20, 16), seed=0).t1ce, tmp_path / "two_files.mhd")  # header + data file
    assert sorted(p.name.split(".")[0] for p in tmp_path.iterdir()) == ["out", "two_files", "two_files"]


def test_a_rename_is_tried_again_while_another_program_holds_the_file(tmp_path, monkeypatch):
    (tmp_path / "src").write_text("new", encoding="utf-8")
    calls, real_replace = [], os.replace

    def held_twice(src, dst):
        calls.append(src)
        if len(calls) <= 2:
            raise PermissionError(13, "The process cannot access the file because it is being used by another process")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", held_twice)
    with pytest.raises(PermissionError):  # POSIX: a refused rename is a real permission problem, never retried
        atomic.replace_file(str(tmp_path / "src"), str(tmp_path / "dst"))
    assert len(calls) == 1
    calls.clear()
    monkeypatch.setattr(atomic, "REPLACE_WAIT_S", 0.0)
    monkeypatch.setattr(atomic, "os", WindowsOs())
    atomic.replace_file(str(tmp_path / "src"), str(tmp_path / "dst"))
    assert len(calls) == 3 and (tmp_path / "dst").read_text(encoding="utf-8") == "new"
    held = PermissionError(13, "Permission denied")
    held.winerror = 32  # ERROR_SHARING_VIOLATION: errno alone read as "Permission denied … choose a folder"
    error = atomic.as_output_error(held, "model.safetensors")
    assert isinstance(error, OutputError) and "open in another program" in str(error)
    denied = PermissionError(13, "Access is denied")
    denied.winerror = 5  # what os.replace usually gives onto a destination another process holds
    assert "read-only or open in another program" in str(atomic.as_output_error(denied, tmp_path / "dst"))


def test_a_checkpoint_another_program_holds_is_pruned_later_not_fatal(tmp_path, monkeypatch):
    import torch

    for it in (1, 2, 3):
        checkpoint.save_checkpoint(tmp_path / checkpoint.checkpoint_name(0, it), {"stage": 0, "iteration": it,
                                                                                 "w": torch.zeros(2)})
    real_unlink = Path.unlink

    def held(self, missing_ok=False):
        if self.name == checkpoint.checkpoint_name(0, 1):
            raise PermissionError(13, "being used by another process", str(self))
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", held)
    deleted = checkpoint.prune_checkpoints(tmp_path, keep=1)
    assert [p.name for p in deleted] == [checkpoint.checkpoint_name(0, 2)]


def test_a_pipe_reader_gone_on_windows_is_einval(monkeypatch):
    assert reporting.reader_gone(BrokenPipeError()) and not reporting.reader_gone(OSError(errno.EINVAL, "x"))
    monkeypatch.setattr(reporting, "os", WindowsOs())
    assert reporting.reader_gone(OSError(errno.EINVAL, "Invalid argument"))
    # an invalid file name (Windows: "out|x.nii.gz") is an error to report, not a reader that left
    assert not reporting.reader_gone(OSError(errno.EINVAL, "Invalid argument", "C:\\out\\out|x.nii.gz"))


@pytest.mark.parametrize("pattern", ["{case}\\{case}_t1ce.nii.gz", "{case}/{case}_t1ce.nii.gz"])
def test_a_windows_pattern_with_backslashes_matches(pattern, monkeypatch):
    monkeypatch.setattr(dataset_cases, "os", WindowsOs())
    regex, glob = dataset_cases.pattern_regex(pattern), dataset_cases.case_glob(pattern)
    match = regex.match("Brats18_X_1/Brats18_X_1_t1ce.nii.gz")
    assert match and match.group("case") == "Brats18_X_1" and glob == "*/*_t1ce.nii.gz"


def test_the_windows_run_lock_leaves_the_holders_record_readable(tmp_path, monkeypatch):
    """msvcrt locks are mandatory: a lock on byte 0 hid the holder's record from the refused second training. A
    stand-in msvcrt (locks by file and position, as the real one locks from the file position) checks the byte."""
    import sys
    import types

    from MedSynthLogic.training import run_lock

    held = {}
    fake = types.ModuleType("msvcrt")
    fake.LK_NBLCK, fake.LK_UNLCK = 2, 0

    def locking(fd: int, mode: int, count: int) -> None:
        key = (os.fstat(fd).st_ino, os.lseek(fd, 0, os.SEEK_CUR))
        if mode == fake.LK_UNLCK:
            held.pop(key, None)
        elif held.setdefault(key, fd) != fd:
            raise PermissionError(13, "Permission denied")

    fake.locking = locking
    monkeypatch.setitem(sys.modules, "msvcrt", fake)
    monkeypatch.setattr(run_lock, "os", WindowsOs())
    first = run_lock.acquire_run_folder(tmp_path)
    assert [position for _, position in held] == [run_lock.WINDOWS_LOCK_OFFSET]
    with pytest.raises(OutputError, match=f"process {os.getpid()} on"):
        run_lock.acquire_run_folder(tmp_path)
    run_lock.release_run_folder(first)
    assert held == {}
    run_lock.release_run_folder(run_lock.acquire_run_folder(tmp_path))


def test_an_atomic_write_flushes_the_folder_after_its_rename(tmp_path, monkeypatch):
    """The rename was not flushed: after a power cut the folder could still name the old file (review 54)."""
    import stat

    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    with atomic.atomic_path(tmp_path / "out.txt") as tmp:
        tmp.write_text("complete", encoding="utf-8")
    assert synced == [False, True]  # the file, then its folder


def test_a_folder_that_cannot_be_synced_does_not_undo_a_written_file(tmp_path, monkeypatch):
    """The folder's flush came after the rename, inside the error handling: a folder that cannot be opened (a
    write-only one, some network mounts) turned a written file into a "Permission denied" (a review, session 47)."""
    real_open = os.open

    def no_folders(path, flags, *args, **kwargs):
        if os.path.isdir(path):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_folders)
    with atomic.atomic_path(tmp_path / "out.txt") as tmp:
        tmp.write_text("complete", encoding="utf-8")
    assert (tmp_path / "out.txt").read_text(encoding="utf-8") == "complete"
