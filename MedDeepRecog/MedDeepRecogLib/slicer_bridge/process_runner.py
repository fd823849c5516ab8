"""Run the worker as a separate process, read its output without blocking, and cancel its whole process tree.

Slicer's GUI thread must never wait on the worker: :class:`WorkerProcess` reads the merged stdout/stderr on a
background thread into a queue, and the GUI drains it with :meth:`WorkerProcess.poll` from a ``qt.QTimer``
(the same pattern ``slicer.util.launchConsoleProcess(blocking=False)`` uses in Slicer >= 5.12).
:meth:`WorkerProcess.wait` is the blocking mode for scripts and tests.

Cancelling kills the process *tree*: a PythonSlicer launcher, torch or a data loader may have started children,
and killing only the direct child leaves them running. :func:`kill_process_tree` first stops (SIGSTOP) the whole
tree top-down so nothing can fork while it is collected, then kills every process. It uses ``psutil`` when
installed, else ``/proc`` (Linux), ``pgrep`` (macOS) or ``taskkill /T`` (Windows).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

from .progress_reader import ProgressEvent, ProgressReader

LineCallback = Callable[[str], None]
EventCallback = Callable[[ProgressEvent], None]


class WorkerError(RuntimeError):
    """The worker failed or was cancelled; the message is the worker's own error line, for the user.

    Attributes:
        returncode: the worker's exit code (negative: killed by that signal on POSIX).
        cancelled: True when the run was cancelled by the user.
        tail: the last output lines, for the log.
    """

    def __init__(self, message: str, returncode: int | None = None, cancelled: bool = False,
                 tail: Sequence[str] = ()):
        super().__init__(message)
        self.returncode = returncode
        self.cancelled = cancelled
        self.tail = list(tail)


#: Worker options in an error line, and what the panel calls them.
PANEL_NAMES = {"--slice-mm": "the red view's slice offset", "--second-input": "the second volume",
               "--segments": "the segmentation", "--lesion": "the lesion label", "--model": "the model",
               "--base": "the model", "--device": "the device", "--explain": "the heatmap method",
               "--task": "the fine-tune task", "--epochs": "the epochs", "--input": "the input volume",
               "--data": "the fine-tune segments", "--pipeline": "the preprocessing", "--mask": "the masks"}


def panel_text(text: str, exchange_dir: str | Path | None) -> str:
    """``text`` (a worker's error line, or a value of its progress lines) in the panel's words: a path into the run's
    exchange folder (a file written only to hand a node to the worker, deleted when the run ends) becomes the node's
    name, as its file was named after it (``.../MedDeepRecog-x/brain1_label.nrrd`` -> ``'brain1_label'``), any other
    path there "the run's temporary folder", and command-line options the panel's names for them
    (:data:`PANEL_NAMES`)."""
    import re

    if exchange_dir is not None:
        folder = re.escape(str(Path(exchange_dir)))
        text = re.sub(folder + r"[/\\](?:[^\s:/\\]+[/\\])*([^\s:/\\]+?)(?:\.seg)?\.(?:nrrd|nii\.gz|json|csv)",
                      lambda m: f"'{m.group(1)}'", text)
        text = re.sub(folder + r"(?:[/\\][^\s:,;'\"()]*)?", "the run's temporary folder", text)
    for option, words in PANEL_NAMES.items():
        text = re.sub(re.escape(option) + r"(?![\w-])", words, text)
    return text


def in_panel_words(error: WorkerError, exchange_dir: str | Path | None) -> WorkerError:
    """``error`` reworded for the panel (:func:`panel_text`). Exit code, cancel flag and output tail are kept."""
    message = panel_text(str(error), exchange_dir)
    if message == str(error):
        return error
    return WorkerError(message, error.returncode, error.cancelled, error.tail)


def panel_event(event: ProgressEvent, exchange_dir: str | Path | None) -> ProgressEvent:
    """A progress event whose text values are in the panel's words (:func:`panel_text`): what the status line shows
    (``ProgressEvent.describe``) names nodes, not the exchange folder's files."""
    import dataclasses

    extra = {key: panel_text(value, exchange_dir) if isinstance(value, str) else value
             for key, value in event.extra.items()}
    return event if extra == event.extra else dataclasses.replace(event, extra=extra)


# ----------------------------------------------------------------------------------------------------------------
# process trees

def pid_alive(pid: int) -> bool:
    """True if ``pid`` is a live process (zombies, which only wait to be reaped, count as gone)."""
    try:
        import psutil  # type: ignore[import-not-found]
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False
    if os.name == "nt":  # pragma: no cover - exercised on Windows only
        out = subprocess.run(["tasklist", "/FI", f"PID eq {pid}", "/NH"], capture_output=True, text=True).stdout
        return str(pid) in out
    stat = Path(f"/proc/{pid}/stat")
    if Path("/proc/self").exists():
        try:
            return stat.read_text(encoding="utf-8").rsplit(")", 1)[1].split()[0] not in ("Z", "X")
        except (OSError, IndexError):
            return False
    try:  # macOS: no /proc
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
    return bool(state) and not state.startswith("Z")


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (empty when it has none or is gone)."""
    try:
        import psutil  # type: ignore[import-not-found]
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            return [c.pid for c in psutil.Process(pid).children()]
        except psutil.Error:
            return []
    if Path("/proc/self").exists():
        found = []
        task_dir = Path(f"/proc/{pid}/task")
        try:  # fast path: the kernel's per-thread children lists
            for task in task_dir.iterdir():
                text = (task / "children").read_text(encoding="utf-8")
                found.extend(int(p) for p in text.split())
            return found
        except OSError:
            pass
        for entry in Path("/proc").iterdir():  # slow path: scan every process's parent id
            if entry.name.isdigit():
                try:
                    ppid = int(entry.joinpath("stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                if ppid == pid:
                    found.append(int(entry.name))
        return found
    if os.name != "nt":
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]
    return []  # pragma: no cover - Windows without psutil: taskkill /T walks the tree itself


def descendant_pids(pid: int) -> list[int]:
    """All processes below ``pid`` (children, grandchildren...), parents before children."""
    result: list[int] = []
    frontier = [pid]
    seen = {pid}
    while frontier:
        nxt = []
        for parent in frontier:
            for child in _children(parent):
                if child not in seen:
                    seen.add(child)
                    result.append(child)
                    nxt.append(child)
        frontier = nxt
    return result


def kill_process_tree(pid: int, timeout: float = 5.0, include_parent: bool = True) -> list[int]:
    """Kill ``pid`` and every process below it; return the pids that were signalled.

    POSIX: the tree is frozen with SIGSTOP top-down, repeatedly, until no new process appears (so nothing forks
    while it is collected), then every process gets SIGKILL. Windows: ``taskkill /T /F``.
    Waits up to ``timeout`` seconds for them to be gone.
    """
    if os.name == "nt":  # pragma: no cover - exercised on Windows only
        tree = descendant_pids(pid)
        subprocess.run(["taskkill", "/PID", str(pid), "/T", "/F"], capture_output=True)
        victims = ([pid] if include_parent else []) + tree
    else:
        stopped: list[int] = []
        pending = [pid] if include_parent else descendant_pids(pid)
        while pending:  # freeze new processes as they are discovered
            for p in pending:
                try:
                    os.kill(p, signal.SIGSTOP)
                    stopped.append(p)
                except (ProcessLookupError, PermissionError):
                    pass
            known = set(stopped) | {pid}
            pending = [p for root in [pid] + stopped for p in _children(root) if p not in known]
            pending = list(dict.fromkeys(pending))
        victims = stopped
        for p in victims:
            try:
                os.kill(p, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(pid_alive(p) for p in victims):
        time.sleep(0.02)
    return victims


# ----------------------------------------------------------------------------------------------------------------
# the worker process

class WorkerProcess:
    """One worker run: started with :meth:`start`, drained with :meth:`poll` (GUI timer) or :meth:`wait` (blocking).

    Args:
        args: the full command line, e.g. ``WorkerCommand.classify(...).args``.
        env: the environment (``worker_environment()``); ``None`` inherits this process's.
        on_line: called with every output line, on the thread that calls :meth:`poll` / :meth:`wait`.
        on_event: called with every progress event, same thread.
        cwd: working folder of the worker.

    Attributes:
        reader: the :class:`ProgressReader` holding the last event, the final result and the output tail.
    """

    def __init__(self, args: Sequence[str], env: Mapping[str, str] | None = None,
                 on_line: LineCallback | None = None, on_event: EventCallback | None = None,
                 cwd: str | os.PathLike | None = None):
        self.args = [str(a) for a in args]
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.on_line = on_line
        self.on_event = on_event
        self.reader = ProgressReader()
        self.proc: subprocess.Popen | None = None
        self.cancelled = False
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._eof = False

    # -- life cycle ------------------------------------------------------------------------------------------
    def start(self) -> "WorkerProcess":
        kwargs: dict = {}
        if os.name == "nt":  # pragma: no cover - Windows: no console window, own group for Ctrl-Break
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True  # own process group: a cancel never reaches Slicer itself
        try:
            self.proc = subprocess.Popen(self.args, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                         encoding="utf-8", errors="replace", bufsize=1, **kwargs)
        except OSError as exc:
            raise WorkerError(f"cannot start the worker {self.args[0]!r}: {exc.strerror or exc}") from None
        self._thread = threading.Thread(target=self._read_output, name="MedDeepRecog-worker-reader", daemon=True)
        self._thread.start()
        return self

    def _read_output(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\r\n"))
        self._queue.put(None)  # end of output

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        """True until the process has exited *and* all its output has been delivered by :meth:`poll`."""
        return self.proc is not None and (self.proc.poll() is None or not self._eof)

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None or self.running else self.proc.returncode

    # -- output ----------------------------------------------------------------------------------------------
    def poll(self, max_lines: int = 1000) -> list[str]:
        """Deliver the output lines that arrived so far (never blocks); call from the GUI thread."""
        lines = []
        while len(lines) < max_lines:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._eof = True
                if self.proc is not None:
                    self.proc.wait()
                break
            lines.append(line)
            self._deliver(line)
        return lines

    def _deliver(self, line: str) -> None:
        event = self.reader.feed(line)
        if self.on_line:
            self.on_line(line)
        if event is not None and self.on_event:
            self.on_event(event)

    def wait(self, timeout: float | None = None) -> int:
        """Block until the worker exits (delivering its output as it comes); return its exit code.

        Raises:
            subprocess.TimeoutExpired: after ``timeout`` seconds (the worker keeps running; cancel it).
        """
        if self.proc is None:
            raise RuntimeError("the worker was not started")
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._eof:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout)
            try:
                line = self._queue.get(timeout=0.1 if remaining is None else min(0.1, remaining))
            except queue.Empty:
                continue
            if line is None:
                self._eof = True
                break
            self._deliver(line)
        return self.proc.wait()

    def cancel(self) -> list[int]:
        """Kill the worker and everything it started; return the killed pids. Safe to call twice."""
        self.cancelled = True
        if self.proc is None or self.proc.poll() is not None:
            return []
        victims = kill_process_tree(self.proc.pid)
        if os.name != "nt":
            try:  # also anything that left the tree but stayed in the worker's process group
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.proc.wait()
        if self._thread is not None:  # the pipe closes once the tree is gone: deliver what is left
            self._thread.join(timeout=5)
        self.poll()
        return victims

    def check(self) -> dict:
        """After the run: the ``result`` of the final progress line, or :class:`WorkerError` with the reason."""
        code = self.returncode
        if self.cancelled:
            raise WorkerError("cancelled", code, cancelled=True, tail=self.reader.tail)
        if code != 0:
            raise WorkerError(self.reader.error_message(code), code, tail=self.reader.tail)
        return self.reader.result or {}


def run_worker(args: Sequence[str], env: Mapping[str, str] | None = None, *, on_event: EventCallback | None = None,
               on_line: LineCallback | None = None, timeout: float | None = None,
               cwd: str | os.PathLike | None = None) -> dict:
    """Run the worker to the end (blocking) and return the ``result`` dict of its final progress line.

    Raises:
        WorkerError: non-zero exit; the message is the worker's own error line. On ``timeout`` the tree is killed.
    """
    worker = WorkerProcess(args, env, on_line=on_line, on_event=on_event, cwd=cwd).start()
    try:
        worker.wait(timeout)
    except subprocess.TimeoutExpired:
        worker.cancel()
        raise WorkerError(f"the worker did not finish within {timeout:g} s and was stopped",
                          worker.proc.returncode if worker.proc else None, tail=worker.reader.tail) from None
    except BaseException:
        worker.cancel()
        raise
    return worker.check()


def python_executable() -> str:
    """The Python that runs the worker: Slicer's ``PythonSlicer`` launcher inside Slicer, else this Python.

    Inside Slicer ``sys.executable`` is the Slicer-bundled interpreter; ``PythonSlicer`` next to it sets up the
    library paths, so it is preferred when present.
    """
    exe = Path(sys.executable)
    for name in ("PythonSlicer", "PythonSlicer.exe"):
        for folder in (exe.parent, exe.parent.parent / "bin"):
            candidate = folder / name
            if candidate.is_file():
                return str(candidate)
    return sys.executable
