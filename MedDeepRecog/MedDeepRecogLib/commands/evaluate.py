"""``meddeeprecog evaluate --model ID|PATH --data FILE.npz|FOLDER [--split test] [--out DIR]``: metrics as JSON on
stdout
(accuracy, balanced accuracy, precision, recall, F1, one-vs-rest AUC, confusion matrix); with ``--out`` also
``roc.png``, ``confusion_matrix.png`` and ``metrics.json``.

``--split`` names the file's ``{split}_images``/``{split}_labels``; a file of ``images``/``labels`` only offers
``val`` (the last 20 % of each class, what training holds out), ``train`` (the rest) and ``all``. A split the file
does not hold is refused, naming those it does (exit 2): ``test`` on a file without one is never another part.
A FOLDER of images with its ``labels.csv`` (as ``train`` reads it) is prepared as training prepared the package's
images; ``--split`` is a value of its split column, or without one the package's val split (the last share of each
class in CSV order, as train held it out), its train split, or ``all``."""

from __future__ import annotations

import argparse
import json
import sys

from ..devices import DEVICE_CHOICES
from ..progress import DEVICE_HELP


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("evaluate", help="metrics of a model package on a labelled .npz split "
                                                  "or image folder")
    p.add_argument("--model", required=True, help="package id, id@version, folder or .zip")
    p.add_argument("--data", required=True, help="MedMNIST-style .npz ({split}_images/{split}_labels), or a folder of "
                   "images with labels.csv as train reads it")
    p.add_argument("--split", default="test",
                   help="split of --data (default: test); a file of images/labels, or a folder whose labels.csv "
                        "has no split column, offers val (as training held it out), train and all")
    p.add_argument("--out", help="folder for roc.png, confusion_matrix.png and metrics.json")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help=DEVICE_HELP)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..training.evaluate import evaluate_package

    result = evaluate_package(args.model, args.data, args.split, args.out, args.device)
    print(json.dumps(result, indent=2))
    if result.get("warning"):
        print(f"meddeeprecog evaluate: warning: {args.data}: {result['warning']}", file=sys.stderr)
    tuned = (result.get("as_classify_reports") or {}).get("tuned_on_this_split")
    if tuned:
        print(f"meddeeprecog evaluate: note: {args.data}: as_classify_reports: {tuned}", file=sys.stderr)
    return 0
