"""Run a worker command from Slicer without blocking the GUI, or blocking for scripts and tests.

Slicer >= 5.12: ``slicer.util.launchConsoleProcess(blocking=False, logCallback=..., completedCallback=...)`` reads
the output on a thread and calls back on the GUI thread. Slicer 5.10 (no ``blocking`` argument): the bridge's
:class:`WorkerProcess` reads on a thread and a ``qt.QTimer`` drains it on the GUI thread. Either way every output
line goes through one :class:`ProgressReader`, and :meth:`WorkerJob.cancel` kills the whole process tree.
"""

from __future__ import annotations

import logging
from typing import Callable

import qt
import slicer

from MedDeepRecogLib.slicer_bridge import (ProgressEvent, ProgressReader, WorkerCommand, WorkerError,
                                           WorkerProcess, kill_process_tree, worker_environment)

#: Environment variables the worker needs on top of Slicer's own environment.
_ENV_KEYS = ("PYTHONPATH", "PYTHONUNBUFFERED", "PYTHONIOENCODING")


def consoleEnvironment(env: dict) -> dict:
    """The worker's variables for ``slicer.util.launchConsoleProcess``, which reads its output as text in the
    locale's preferred encoding (``universal_newlines`` without an encoding: cp1252 on a Windows Slicer not in UTF-8
    mode). The worker writes in that same encoding, escaping what it cannot represent, so a line with a non-ASCII
    path (the JSON result line, the one-line error) is neither garbled nor dropped by a decode error."""
    import locale

    update = {k: env[k] for k in _ENV_KEYS}
    update["PYTHONIOENCODING"] = f"{locale.getpreferredencoding(False)}:backslashreplace"
    return update

ProgressCallback = Callable[[ProgressEvent], None]
FinishedCallback = Callable[[dict, "WorkerError | None"], None]


class WorkerJob:
    """One worker run.

    Args:
        command: what to run (:class:`WorkerCommand`).
        onProgress: called on the GUI thread with each progress event.
        onFinished: called once on the GUI thread with ``(result, error)``: the ``result`` dict of the final
            progress line and ``None``, or ``{}`` and a :class:`WorkerError` (``error.cancelled`` on cancel).

    Attributes:
        reader: all output seen so far (``reader.tail`` for the log, ``reader.last`` for the latest event).
        lines: every output line (for ``--json`` commands whose answer is a document, not progress lines).
    """

    POLL_INTERVAL_MS = 200

    def __init__(self, command: WorkerCommand, onProgress: ProgressCallback | None = None,
                 onFinished: FinishedCallback | None = None):
        self.command = command
        self.onProgress = onProgress
        self.onFinished = onFinished
        self.reader = ProgressReader()
        self.lines: list[str] = []
        self.cancelled = False
        self.finished = False
        self._proc = None      # subprocess.Popen from launchConsoleProcess
        self._worker = None    # WorkerProcess (blocking mode and the Slicer 5.10 fallback)
        self._timer = None

    @property
    def running(self) -> bool:
        return (self._proc is not None or self._worker is not None) and not self.finished

    def start(self, waitForCompletion: bool = False) -> "WorkerJob":
        """Start the worker; with ``waitForCompletion`` return only after ``onFinished`` ran."""
        env = worker_environment()
        logging.info("MedDeepRecog worker: %s", " ".join(self.command.args))
        if waitForCompletion:
            self._worker = WorkerProcess(self.command.args, env, on_line=self._onLine).start()
            self._finish(self._worker.wait())
            return self
        try:
            self._proc = slicer.util.launchConsoleProcess(
                self.command.args, useStartupEnvironment=False, updateEnvironment=consoleEnvironment(env),
                blocking=False, logCallback=self._onLine, completedCallback=self._finish)
        except TypeError:  # Slicer 5.10: launchConsoleProcess has no non-blocking mode
            self._worker = WorkerProcess(self.command.args, env, on_line=self._onLine).start()
            self._timer = qt.QTimer()
            self._timer.setInterval(self.POLL_INTERVAL_MS)
            self._timer.connect("timeout()", self._poll)
            self._timer.start()
        return self

    def cancel(self) -> None:
        """Kill the worker and every process it started; ``onFinished`` then reports ``cancelled``."""
        if not self.running:
            return
        self.cancelled = True
        if self._worker is not None:
            self._worker.cancel()
        elif self._proc is not None and self._proc.poll() is None:
            kill_process_tree(self._proc.pid)

    def _onLine(self, line: str) -> None:
        self.lines.append(line)
        event = self.reader.feed(line)
        if event is not None and self.onProgress:
            try:
                self.onProgress(event)
            except Exception:  # a display problem must not stop reading the worker
                logging.exception("MedDeepRecog: progress callback failed")

    def _poll(self) -> None:
        self._worker.poll()
        if not self._worker.running:
            self._timer.stop()
            self._finish(self._worker.returncode)

    def _finish(self, returncode: int) -> None:
        if self.finished:
            return
        self.finished = True
        if self.cancelled:
            result, error = {}, WorkerError("cancelled", returncode, cancelled=True, tail=self.reader.tail)
        elif returncode != 0:
            result, error = {}, WorkerError(self.reader.error_message(returncode), returncode, tail=self.reader.tail)
            logging.error("MedDeepRecog worker failed (exit code %s):\n%s", returncode, "\n".join(self.reader.tail))
        else:
            result, error = self.reader.result or {}, None
        if self.onFinished:
            self.onFinished(result, error)
