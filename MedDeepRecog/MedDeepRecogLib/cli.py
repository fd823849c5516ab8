"""The ``meddeeprecog`` command line: a thin argparse layer over the core's plain functions.

Each sub-command lives in ``commands/<name>.py`` with ``add_parser(subparsers)`` that registers it and sets
``func(args) -> int``. User errors (:class:`MedDeepRecogError`) print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from . import __version__
from .errors import MedDeepRecogError

#: Sub-command modules under ``commands/``, in the order ``--help`` lists them.
COMMANDS = [
    "info",
    "preprocess",
    "device",
    "models", "train", "evaluate",
    "finetune", "segment",
    "classify", "demo",
    "robustness", "calibrate",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meddeeprecog",
        description="Deep-learning recognition for CT/MRI scans: preprocess, classify with heatmaps, train, fine-tune.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details (and show tracebacks on errors)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f".commands.{name}", __package__).add_parser(subparsers)
    return parser


#: The arguments of the running command (reports quote the exact command that made them).
LAST_ARGV: list[str] = []


def main(argv: Sequence[str] | None = None) -> int:
    global LAST_ARGV
    LAST_ARGV = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except MedDeepRecogError as exc:
        if args.verbose:
            raise
        print(f"meddeeprecog {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"meddeeprecog {args.command}: cancelled", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
