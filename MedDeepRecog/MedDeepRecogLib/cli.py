"""The ``meddeeprecog`` command line: a thin argparse layer over the core's plain functions.

Each sub-command lives in ``commands/<name>.py`` with ``add_parser(subparsers)`` that registers it and sets
``func(args) -> int``. User errors (:class:`MedDeepRecogError`) print one line and exit with code 2; so do file
system faults (read-only or full disk, a path under a regular file), running out of memory and, as a last resort,
any unexpected exception (one line naming its type; ``--verbose`` shows the traceback).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from typing import Sequence

from . import __version__
from .errors import NOT_TEXT_PATH, MedDeepRecogError, is_text_path, os_error_reason, printable_path
from .limits import ALLOW_GAPS_ENV, MAX_IMAGE_ENV, parse_size

#: Commands that run many gradient steps: their process keeps freed memory for the next step (``allocator.py``).
GRADIENT_STEP_COMMANDS = ("train", "pretrain", "finetune", "robustness")

#: Sub-command modules under ``commands/``, in the order ``--help`` lists them.
COMMANDS = [
    "info",
    "preprocess",
    "device",
    "models", "train", "pretrain", "evaluate",
    "finetune", "segment",
    "classify", "demo",
    "robustness", "calibrate",
]


class OneLineParser(argparse.ArgumentParser):
    """argparse with its usage errors as the project's other errors: one line naming the option and the problem,
    and where to read the usage, exit code 2 (argparse prints the whole usage block first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(str(message).split())} (see {self.prog} --help)\n")


def build_parser(commands: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The command line's parser; with ``commands``, only those sub-commands are registered (the Slicer module checks
    one worker command at a time). Building it imports no heavy package (torch, pydantic, monai, slicerio...): each
    command module imports those in its ``run``, as the Slicer module builds this parser in Slicer's own process
    before its dependencies are installed."""
    parser = OneLineParser(
        prog="meddeeprecog",
        description="Deep-learning recognition for CT/MRI scans: preprocess, classify with heatmaps, train, fine-tune.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details (and show tracebacks on errors)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=OneLineParser)
    for name in COMMANDS if commands is None else [c for c in COMMANDS if c in commands]:
        importlib.import_module(f".commands.{name}", __package__).add_parser(subparsers)
    for sub in subparsers.choices.values():  # every command reads scans: one bound for all of them
        sub.add_argument("--max-image-size", metavar="SIZE", default=None,
                         help=f"refuse scans whose header declares more voxel bytes than SIZE (e.g. 8G, 512M; "
                              f"default ${MAX_IMAGE_ENV} or 4G)")
        sub.add_argument("--allow-slice-gaps", action="store_true", default=None,
                         help="read a DICOM series with missing slices or uneven spacing anyway (a warning is "
                              "noted in the output)")
    return parser




def describe_os_error(exc: OSError) -> str:
    """One line for a file system fault, naming the path and what to do about it."""
    path = exc.filename if exc.filename is not None else None
    problem = os_error_reason(exc)
    return f"{path}: {problem}" if path else problem


def _error(args: argparse.Namespace, message: str) -> int:
    """Print the one error line (after the traceback with ``--verbose``, called from an ``except`` block) and give
    exit code 2: the code stays the same whether or not the traceback is shown."""
    if getattr(args, "verbose", False) and sys.exc_info()[0] is not None:
        traceback.print_exc()
    print(f"meddeeprecog {getattr(args, 'command', '')}: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    from . import commands

    commands.LAST_ARGV[:] = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    untext = next((a for a in commands.LAST_ARGV if not is_text_path(a)), None)
    if untext is not None:  # a file or folder name in another encoding: refused before any reader sees it
        return _error(args, f"{printable_path(untext)}: {NOT_TEXT_PATH}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s: %(message)s", stream=sys.stderr)
    if getattr(args, "max_image_size", None):
        try:
            parse_size(args.max_image_size)
        except ValueError as exc:
            return _error(args, f"--max-image-size: {exc}")
    # the options reach the readers (and child processes) through the environment, for this command only
    overrides = {MAX_IMAGE_ENV: getattr(args, "max_image_size", None),
                 ALLOW_GAPS_ENV: "1" if getattr(args, "allow_slice_gaps", None) else None}
    saved = {k: os.environ.get(k) for k, v in overrides.items() if v}
    os.environ.update({k: v for k, v in overrides.items() if v})
    if args.command in GRADIENT_STEP_COMMANDS:
        from . import allocator

        allocator.reuse_freed_memory()
    try:
        return _run(args)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"meddeeprecog {args.command}: cancelled", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except MedDeepRecogError as exc:
        return _error(args, str(exc))
    except OSError as exc:
        return _error(args, describe_os_error(exc))
    except MemoryError:
        return _error(args, "out of memory (the input or the model is too large for this machine)")
    except Exception as exc:  # a fault not foreseen: still one line and exit 2, never a traceback
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
        return _error(args, f"unexpected {type(exc).__name__}: {first[:300]} (run `meddeeprecog -v ...` for the traceback)")


if __name__ == "__main__":
    sys.exit(main())
