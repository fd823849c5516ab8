"""``meddeeprecog train CONFIG [--out DIR] [--resume] [--package-dest DIR] [--progress json|bar|none]``.

Trains the network a JSON/YAML config describes (see ``training/config.py``) and writes a new model package
version, ``metrics.json``, ``history.json`` and ``training_curve.png``. Config blocks that other parts own (an
``adversarial:`` block: adversarial training, ``robustness/training.py``) are part of the same run, so ``--device``,
``--epochs`` and ``--resume`` apply to them too.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading

from ..contract import PROGRESS_MODES, thread_count
from ..devices import DEVICE_CHOICES
from ..progress import PROGRESS_HELP


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a classifier from a config file and write a model package")
    p.add_argument("config", help="training config (.yaml/.yml/.json)")
    p.add_argument("--out", help="output folder for checkpoints, metrics and curves (default: config 'out' or "
                                 "runs/<id>)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoints/last.pt (a finished run: more epochs continue it into a new "
                        "package; the same epochs name its package and write nothing; fewer are refused)")
    p.add_argument("--package-dest", help="catalog folder for the new package (default: the user catalog "
                                          "$MEDDEEPRECOG_HOME/models)")
    p.add_argument("--epochs", type=int, help="override training/epochs")
    p.add_argument("--device", choices=DEVICE_CHOICES, help="override training/device")
    p.add_argument("--threads", type=thread_count, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--progress", choices=PROGRESS_MODES, default="bar", help=PROGRESS_HELP)
    p.set_defaults(func=run)


def _command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run (recorded in the package provenance and model card)."""
    from ..contract import reproduce_command

    return reproduce_command(["train", args.config],
                             {opt: getattr(args, opt) for opt in ("out", "package_dest", "epochs", "device", "threads")})


def run(args: argparse.Namespace) -> int:
    import torch

    from ..progress import Progress
    from ..training.config import load_config
    from ..training.train import TrainingCancelled, run_training
    from . import register_training_blocks

    register_training_blocks()

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, {"training": {"epochs": args.epochs, "device": args.device}})
    rank0 = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 reports (and writes)
    progress = Progress(args.progress if rank0 else "none")
    def on_term(signum, frame):   # `kill`, `timeout`, a scheduler's stop: end as Ctrl-C does, and say so
        raise KeyboardInterrupt

    main_thread = threading.current_thread() is threading.main_thread()   # only there may a handler be set
    previous = signal.signal(signal.SIGTERM, on_term) if main_thread else None
    try:
        result = run_training(cfg, out=args.out, resume=args.resume, package_dest=args.package_dest,
                              progress=progress, command=_command_line(args))
    except TrainingCancelled as exc:   # points at --resume only when checkpoints were kept
        print(f"meddeeprecog train: {exc.message()}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:   # before training began (the config's blocks, the process group)
        print("meddeeprecog train: cancelled before any epoch was completed: no checkpoint was kept",
              file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    if not rank0:
        return 0
    if args.progress == "json":
        progress("done", 1.0, result=result)
    else:
        print(json.dumps(result, indent=2))
    return 0
