"""Progress reporting shared by every long-running command.

Two renderings of the same events: a text bar on stderr for people (drawn only on a terminal, so errors in logs
and pipes stay one line), or one JSON object per line on stdout
(``{"stage": ..., "fraction": 0-1, ...}``) for the Slicer module's worker reader (``--progress json``).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Callable, TextIO

ProgressCallback = Callable[..., None]

#: ``--progress`` help text, the same for every command.
PROGRESS_HELP = ("progress as JSON lines on stdout (one {stage, fraction} object per line, for the Slicer module; "
                 "docs/worker-protocol.md), a text bar on stderr, or none")
#: ``--device`` help text, the same for every command.
DEVICE_HELP = "where the network runs: auto (a CUDA GPU when torch sees one, else the CPU), cpu or cuda"


class Progress:
    """Report ``(stage, fraction)`` events as JSON lines, a text bar, or not at all.

    Args:
        mode: ``"json"``, ``"bar"`` or ``"none"``.
        stream: where to write; JSON goes to stdout by default, bars to stderr.
    """

    def __init__(self, mode: str = "bar", stream: TextIO | None = None):
        if mode not in ("json", "bar", "none"):
            raise ValueError(f"unknown progress mode {mode!r}")
        self.mode = mode
        self.stream = stream or (sys.stdout if mode == "json" else sys.stderr)
        self._start = time.perf_counter()

    def __call__(self, stage: str, fraction: float, **extra: Any) -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        if self.mode == "json":
            record = {"stage": stage, "fraction": round(fraction, 4), **extra}
            self.stream.write(json.dumps(record) + "\n")
            self.stream.flush()
        elif self.mode == "bar":
            if not _is_tty(self.stream):
                return  # a bar is for a person at a terminal; in a log or a pipe it would garble the error line
            width = 30
            filled = int(round(fraction * width))
            details = " ".join(f"{k}={_short(v)}" for k, v in extra.items())
            elapsed = time.perf_counter() - self._start
            self.stream.write(f"\r{stage:<22} [{'#' * filled}{'.' * (width - filled)}] {fraction:6.1%} "
                              f"{elapsed:6.1f}s {details}"[:160].ljust(100))
            if fraction >= 1.0:
                self.stream.write("\n")
            self.stream.flush()


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def null_progress(stage: str, fraction: float, **extra: Any) -> None:
    """A progress callback that reports nothing."""
