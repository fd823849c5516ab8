"""``meddeeprecog pretrain CONFIG --pool CONFIG [CONFIG ...] --out WEIGHTS.safetensors [--epochs N] [--batch N]
[--lr LR] [--temperature T] [--resume] [--threads N] [--progress json|bar|none]``.

Self-supervised (SimCLR) pretraining of ``CONFIG``'s 2D network on the train images of the ``--pool`` configs,
labels unused (``training/pretrain.py``). The weights file is what a training config's ``model/init`` starts from.
"""

from __future__ import annotations

import argparse
import json

from ..contract import PROGRESS_MODES, thread_count
from ..progress import PROGRESS_HELP


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from ..training.pretrain_settings import PretrainSettings

    d = PretrainSettings()
    p = subparsers.add_parser("pretrain", help="self-supervised pretraining of a 2D network on unlabelled images "
                                               "(weights for a config's model/init)")
    p.add_argument("config", help="training config whose network (model/name, kwargs) and data/size are pretrained")
    p.add_argument("--pool", nargs="+", required=True,
                   help="training configs whose train images (each standardised by its own input/slices) form the "
                        "pool; their val splits are never read into it")
    p.add_argument("--out", required=True, help="new .safetensors file for the weights (its checkpoint: OUT.run/)")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"passes over the pool (default {d.epochs})")
    p.add_argument("--batch", type=int, default=d.batch_size, help=f"images per step (default {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"AdamW learning rate (default {d.lr})")
    p.add_argument("--temperature", type=float, default=d.temperature,
                   help=f"of the contrastive softmax (default {d.temperature})")
    p.add_argument("--resume", action="store_true", help="continue the unfinished run in OUT.run/")
    p.add_argument("--threads", type=thread_count, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--progress", choices=PROGRESS_MODES, default="bar", help=PROGRESS_HELP)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..progress import Progress
    from ..training.pretrain import PretrainSettings, pretrain
    from . import register_training_blocks

    register_training_blocks()
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = PretrainSettings(epochs=args.epochs, batch_size=args.batch, lr=args.lr, temperature=args.temperature)
    progress = Progress(args.progress)
    result = pretrain(args.config, args.pool, args.out, settings, resume=args.resume, progress=progress)
    if args.progress == "json":
        progress("done", 1.0, result=result)
    else:
        print(json.dumps(result, indent=2))
    return 0
