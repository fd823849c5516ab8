"""Command-line argument types the bench scripts share (``bench/`` is each script's own folder, so first on
``sys.path`` when it runs)."""

from __future__ import annotations

import argparse


def at_least_one(text: str) -> int:
    """An argparse type: a whole number of at least 1 (a count of timed rounds or steps; 0 ended in a division by
    zero or ``min()`` of nothing)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def bench_device(name: str) -> str:
    """``--device`` resolved as the project resolves it (``auto``, ``cpu``, ``cuda``...), or the script ends with
    the project's one line (e.g. ``--device cuda`` on a machine without CUDA), not a traceback."""
    from MedDeepRecogLib.devices import resolve_device
    from MedDeepRecogLib.errors import MedDeepRecogError

    try:
        return str(resolve_device(name))
    except MedDeepRecogError as exc:
        raise SystemExit(str(exc)) from None
