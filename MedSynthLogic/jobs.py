"""Run a long ``medsynth`` command in a child process, read its JSON-lines progress, and cancel it cleanly.

Why a process and not a thread: synthesis and training hold the GIL and large amounts of (GPU) memory; in a child
they leave Slicer's GUI responsive, their memory is returned when they end, and Cancel can always stop them, even
inside a C++ kernel, by killing the process tree. Qt-free: the Slicer module polls ``Job.poll()`` from a QTimer;
scripts and tests call ``wait()``.

The child is started from an argument list (never a shell string), so paths with spaces, quotes or non-ASCII
characters pass through unchanged, in its own process group/session, so ``cancel()`` reaches the workers it spawns
(data loaders, torchrun ranks) as well.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Deque, Dict, List, Mapping, Optional, Sequence

from .progress import exit_event, log_event

RUNNING = "running"
FINISHED = "finished"
FAILED = "failed"
CANCELLED = "cancelled"
NOT_STARTED = "not started"

#: What the CLI's exit codes mean (see ``errors.py``), for messages when the child gave no "error" event.
EXIT_CODE_MEANINGS: Dict[int, str] = {
    1: "an unexpected error",
    2: "a usage error (wrong arguments)",
    3: "an unusable input image",
    4: "a geometry mismatch",
    5: "a data error",
    6: "a bad model file",
    7: "an output that cannot be written",
    8: "not enough resources (memory or device)",
    9: "a diverged training (a NaN or infinite loss)",
    130: "cancellation",
}

PACKAGE_PARENT = str(Path(__file__).resolve().parent.parent)


def python_executable() -> str:
    """The Python interpreter to run ``medsynth`` with.

    Outside Slicer that is ``sys.executable``. Inside the Slicer application it is the ``PythonSlicer`` launcher (on
    ``PATH`` inside Slicer, and next to the Slicer executables), which sets up Slicer's Python environment; Slicer
    sets ``sys.executable`` to it (``qSlicerCoreApplication``), but it is looked up here in case that is ever the
    Slicer binary, which would start a second Slicer.
    ``slicer.app`` is looked up in ``sys.modules`` so that this never imports Slicer.
    """
    slicer_module = sys.modules.get("slicer")
    if slicer_module is None or getattr(slicer_module, "app", None) is None:
        return sys.executable
    name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
    found = shutil.which("PythonSlicer")
    if found:
        return found
    for folder in (Path(sys.executable).parent, Path(sys.executable).parent.parent / "bin"):
        candidate = folder / name
        if candidate.is_file():
            return str(candidate)
    return sys.executable


def python_command(module_args: Sequence[Any], python: Optional[str] = None) -> List[str]:
    """``[python, "-m", "MedSynthLogic.cli", *module_args]`` with every argument as ``str`` (paths included)."""
    return [python or python_executable(), "-m", "MedSynthLogic.cli", *[_arg(a) for a in module_args]]


def _arg(value: Any) -> str:
    return os.fspath(value) if isinstance(value, (str, os.PathLike)) else str(value)


def child_environment(base: Optional[Mapping[str, str]] = None, extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """Environment for the child: ``base`` (default ``os.environ``) with this package importable and unbuffered
    UTF-8 output.

    In Slicer, pass ``slicer.util.startupEnvironment()`` as ``base`` (what ``launchConsoleProcess`` does) and the
    package's folder (the extension's qt-scripted-modules folder, not on ``PythonSlicer``'s path) is put first
    on ``PYTHONPATH``.
    """
    env = dict(os.environ if base is None else base)
    paths = [PACKAGE_PARENT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != PACKAGE_PARENT]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    if extra:
        env.update(extra)
    return env


def _psutil() -> Any:
    try:
        import psutil
    except ImportError:
        return None
    return psutil


class Job:
    """One child process whose stdout carries JSON-lines events.

    ``poll()`` returns new events: the child's JSON objects as they are, every other line as
    ``{"event": "log", "stream": "stdout"|"stderr", "line": ...}``, and, once, ``{"event": "exit",
    "returncode": n, "state": ...}`` after the process ended and its output was read.
    """

    def __init__(
        self,
        args: Sequence[Any],
        cwd: Optional[str | os.PathLike] = None,
        env: Optional[Mapping[str, str]] = None,
        name: str = "medsynth",
        stderr_lines: int = 200,
        stop_file: Optional[str | os.PathLike] = None,
        signals_reach: bool = os.name != "nt",
    ) -> None:
        if isinstance(args, (str, bytes)):
            raise TypeError("Job takes an argument list, not a shell string.")
        self.args: List[str] = [_arg(a) for a in args]
        self.cwd = os.fspath(cwd) if cwd is not None else None
        self.env = dict(env) if env is not None else None
        self.name = name
        self.stop_file = Path(stop_file) if stop_file is not None else None
        self.signals_reach = signals_reach  # False: Cancel creates the stop file (a signal too would stop it twice)
        self.process: Optional[subprocess.Popen] = None
        self._queue: "queue.Queue[Dict[str, Any]]" = queue.Queue()
        self._stderr_tail: Deque[str] = collections.deque(maxlen=stderr_lines)
        self._readers: List[threading.Thread] = []
        self._lock = threading.Lock()
        self._cancelled = False
        self._exit_reported = False
        self._last_error: Optional[Dict[str, Any]] = None
        self.last_event: Optional[Dict[str, Any]] = None
        self.started_at: Optional[float] = None

    # ------------------------------------------------------------------ start
    def start(self) -> "Job":
        """Start the child; raises ``OSError`` when the executable cannot be run."""
        if self.process is not None:
            raise RuntimeError("This job was already started.")
        kwargs: Dict[str, Any] = {}
        if os.name == "nt":
            flags = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
            kwargs["creationflags"] = flags
        else:
            kwargs["start_new_session"] = True
        self.process = subprocess.Popen(
            self.args,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            **kwargs,
        )
        self.started_at = time.monotonic()
        for stream, parse in ((self.process.stdout, True), (self.process.stderr, False)):
            thread = threading.Thread(target=self._read, args=(stream, parse), name=f"{self.name}-reader", daemon=True)
            thread.start()
            self._readers.append(thread)
        return self

    def _read(self, stream: Any, parse_json: bool) -> None:
        label = "stdout" if parse_json else "stderr"
        try:
            for raw in iter(stream.readline, ""):
                line = raw.rstrip("\r\n")
                if not line:
                    continue
                event = _parse_event(line) if parse_json else None
                if event is None:
                    if not parse_json:
                        with self._lock:
                            self._stderr_tail.append(line)
                    event = log_event(label, line)
                elif event.get("event") == "error":
                    with self._lock:
                        self._last_error = event
                self._queue.put(event)
        except (OSError, ValueError):
            pass
        finally:
            try:
                stream.close()
            except OSError:
                pass

    # ------------------------------------------------------------------ state
    @property
    def returncode(self) -> Optional[int]:
        return None if self.process is None else self.process.poll()

    @property
    def state(self) -> str:
        if self.process is None:
            return NOT_STARTED
        code = self.process.poll()
        if code is None:
            return RUNNING
        if code == 0:
            return FINISHED  # it ended on its own, even if Cancel came as it did (a model written while Stop was pressed)
        return CANCELLED if self._cancelled else FAILED

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    @property
    def elapsed_s(self) -> float:
        return 0.0 if self.started_at is None else time.monotonic() - self.started_at

    def stderr_tail(self, lines: int = 20) -> List[str]:
        with self._lock:
            return list(self._stderr_tail)[-lines:]

    @property
    def last_error(self) -> Optional[Dict[str, Any]]:
        """The child's last "error" event (None before one), for a front end that words its own advice."""
        with self._lock:
            return self._last_error

    @property
    def error_message(self) -> Optional[str]:
        """What went wrong, for the user: the child's last "error" event, else the end of its stderr."""
        with self._lock:
            error = self._last_error
        if error is not None:
            message = str(error.get("message", "")).strip()
            hint = str(error.get("hint", "") or "").strip()
            return f"{message} {hint}".strip() or "The process reported an error."
        if self.state not in (FAILED,):
            return None
        code = self.returncode
        tail = [line for line in self.stderr_tail(50) if line.strip()]
        meaning = EXIT_CODE_MEANINGS.get(code, "an error") if code is not None and code >= 0 else "a signal"
        summary = f"The process stopped with exit code {code} ({meaning})."
        if tail:
            return summary + "\n" + "\n".join(tail[-5:])
        return summary

    # ------------------------------------------------------------------ events
    def poll(self) -> List[Dict[str, Any]]:
        """New events since the last call, without blocking."""
        events: List[Dict[str, Any]] = []
        while True:
            try:
                events.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if (
            self.process is not None
            and not self._exit_reported
            and self.process.poll() is not None
            and not any(t.is_alive() for t in self._readers)
        ):
            while True:
                try:
                    events.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._exit_reported = True
            events.append(exit_event(self.process.returncode, self.state))
        if events:
            self.last_event = events[-1]
        return events

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        """Wait for the child to end (and its output to be read); returns the exit code, None on timeout."""
        if self.process is None:
            raise RuntimeError("This job was not started.")
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        for thread in self._readers:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(timeout=remaining if remaining is not None else 5.0)
        return self.process.returncode

    # ------------------------------------------------------------------ cancel
    def cancel(self, timeout: float = 5.0) -> None:
        """Stop the child and everything it started: SIGTERM (the CLI cleans up and exits 130), then SIGKILL.

        Descendants are collected before signalling, with psutil when it is installed (that also reaches
        processes that left the group), else through the process group. On Windows the console group gets
        CTRL_BREAK and the tree is then killed. Where signals do not reach the child (``signals_reach`` False: a
        GUI's child on Windows), a job with a ``stop_file`` (the child's ``--stop-file``) creates it first, so the
        child still stops as SIGTERM would stop it, within ``timeout``, before the kill.
        """
        process = self.process
        if process is None:
            return
        self._cancelled = self._cancelled or process.poll() is None  # a Cancel after the end changes nothing
        if self.stop_file is not None and not self.signals_reach and process.poll() is None:
            try:  # the child's --stop-file: what stops it where no signal reaches it (a GUI's child on Windows)
                self.stop_file.touch()
            except OSError:
                pass
        psutil = _psutil()
        descendants = _descendants(psutil, process.pid)
        if process.poll() is None or descendants or _group_alive(process.pid):
            _terminate(process, descendants, psutil)
            deadline = time.monotonic() + max(0.0, timeout)
            while time.monotonic() < deadline:
                if process.poll() is not None and not _any_alive(psutil, descendants) and not _group_alive(process.pid):
                    break
                time.sleep(0.05)
            _kill(process, descendants, psutil)
        try:
            process.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            pass
        for thread in self._readers:
            thread.join(timeout=2.0)
        if self.stop_file is not None:
            with contextlib.suppress(OSError):  # held for a moment by a virus scanner: a temporary file, left
                self.stop_file.unlink(missing_ok=True)


def _parse_event(line: str) -> Optional[Dict[str, Any]]:
    text = line.strip()
    if not (text.startswith("{") and text.endswith("}")):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or "event" not in value:
        return None
    return value


def _descendants(psutil: Any, pid: int) -> List[Any]:
    if psutil is None:
        return []
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _any_alive(psutil: Any, processes: List[Any]) -> bool:
    if psutil is None:
        return False
    for proc in processes:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                return True
        except psutil.Error:
            continue
    return False


def _group_alive(pgid: int) -> bool:
    """Whether any process of the child's group (POSIX: its session leader's pid) is still there."""
    if os.name == "nt":
        return False
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _terminate(process: subprocess.Popen, descendants: List[Any], psutil: Any) -> None:
    if os.name == "nt":
        try:
            process.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
        except OSError:
            pass
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass
    _signal_all(descendants, "terminate", psutil)


def _signal_all(descendants: List[Any], method: str, psutil: Any) -> None:
    """Send ``terminate``/``kill`` to every psutil descendant still alive (those that left a process group too)."""
    if psutil is None:
        return
    for proc in descendants:
        try:
            getattr(proc, method)()
        except psutil.Error:
            pass


def _kill(process: subprocess.Popen, descendants: List[Any], psutil: Any) -> None:
    if os.name == "nt":
        if psutil is not None:
            _signal_all(descendants, "kill", psutil)
        elif process.poll() is None:  # an ended child's process id may belong to another program by now
            subprocess.run(
                ["taskkill", "/F", "/T", "/PID", str(process.pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
                creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),  # no console flashing over Slicer
            )
        if process.poll() is None:
            process.kill()
        return
    if _group_alive(process.pid):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    _signal_all(descendants, "kill", psutil)
    if process.poll() is None:
        process.kill()
