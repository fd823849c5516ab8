"""Read the worker's output: JSON progress lines for the progress bar, the last lines for error messages.

The worker prints ``{"stage": str, "fraction": 0..1, ...}`` one per line on stdout (``--progress json``, see
``docs/worker-protocol.md``); the last line of a successful run has ``"stage": "done"`` and a ``"result"``.
Slicer's ``launchConsoleProcess`` merges stderr into stdout, so the reader also keeps the other lines: the CLI's
one-line error (``meddeeprecog <cmd>: error: <path>: <problem>``) is what the user sees when a run fails.
"""

from __future__ import annotations

import collections
import json
import re
from dataclasses import dataclass, field
from typing import Any

#: The CLI's user-error line (``cli.main``): ``meddeeprecog classify: error: scan.nrrd: file is empty``.
_CLI_ERROR = re.compile(r"^meddeeprecog(?: [\w-]+)?: error: (?P<message>.+)$")


@dataclass(frozen=True)
class ProgressEvent:
    """One progress line: ``stage`` name, ``fraction`` in 0..1, and any extra keys (``epoch``, ``val_metric``...)."""

    stage: str
    fraction: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.stage == "done"

    @property
    def result(self) -> dict[str, Any] | None:
        """The ``result`` dict of the final ``done`` line (paths written), else ``None``."""
        value = self.extra.get("result")
        return value if isinstance(value, dict) else None

    def describe(self) -> str:
        """A short status-line text, e.g. ``"train: epoch 3/20, val_metric 0.812, loss 0.41 (15%)"``.

        Epoch and validation metric come first (what fine-tuning users watch), then up to two other values.
        """
        extra = {k: v for k, v in self.extra.items()
                 if k != "result" and isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        details = []
        if "epoch" in extra:
            total = extra.pop("epochs", None)
            details.append(f"epoch {extra.pop('epoch')}" + (f"/{total}" if total is not None else ""))
        for key in sorted(extra, key=lambda k: (not k.startswith("val"), list(extra).index(k)))[:3]:
            details.append(f"{key} {_short(extra[key])}")
        text = self.stage.replace("_", " ")
        if details:
            text += ": " + ", ".join(details[:4])
        return f"{text} ({self.fraction:.0%})"


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def parse_progress_line(line: str) -> ProgressEvent | None:
    """Parse one output line; ``None`` unless it is a JSON object with a string ``stage``.

    A ``fraction`` that is missing or not a number counts as 0; it is clamped to 0..1.
    """
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("stage"), str):
        return None
    try:
        fraction = float(record.get("fraction", 0.0))
    except (TypeError, ValueError):
        fraction = 0.0
    fraction = min(max(fraction if fraction == fraction else 0.0, 0.0), 1.0)  # NaN -> 0
    extra = {k: v for k, v in record.items() if k not in ("stage", "fraction")}
    return ProgressEvent(record["stage"], fraction, extra)


class ProgressReader:
    """Accumulate a worker's output lines, one :meth:`feed` call per line (from any source, in order).

    Attributes:
        last: the latest progress event, or ``None``.
        result: the ``result`` dict of the ``done`` line once it arrived.
        events: every progress event, in order (small: a few per stage or epoch).
    """

    def __init__(self, tail_lines: int = 40):
        self.last: ProgressEvent | None = None
        self.result: dict[str, Any] | None = None
        self.events: list[ProgressEvent] = []
        self._tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self._errors: list[str] = []

    def feed(self, line: str) -> ProgressEvent | None:
        """Take one line; return its progress event (``None`` for log/error lines)."""
        event = parse_progress_line(line)
        if event is None:
            text = line.rstrip()
            if text:
                self._tail.append(text)
                match = _CLI_ERROR.match(text.strip())
                if match:
                    self._errors.append(match.group("message"))
            return None
        self.last = event
        self.events.append(event)
        if event.done and event.result is not None:
            self.result = event.result
        return event

    @property
    def fraction(self) -> float:
        return self.last.fraction if self.last else 0.0

    @property
    def tail(self) -> list[str]:
        """The last non-progress lines (log output, warnings, tracebacks)."""
        return list(self._tail)

    def error_message(self, returncode: int | None = None) -> str:
        """What to tell the user about a failed run: the CLI's own error line when there is one.

        Otherwise the last line of a traceback (``ValueError: ...``) or the last output line, and as a last
        resort the exit code.
        """
        if self._errors:
            return self._errors[-1]
        for text in reversed(self._tail):
            stripped = text.strip()
            if re.match(r"^[A-Za-z_][\w.]*(Error|Exception)\b.*:", stripped):
                return stripped
        if self._tail:
            return self._tail[-1].strip()
        return f"the worker stopped with exit code {returncode}" if returncode is not None else "the worker failed"
