"""``meddeeprecog calibrate --model ID --data NPZ|FOLDER|CSV [--fit-split val] [--report-split test]
[--decision-rules RULES.json [--quantile 0.02]] [--domain-quantile Q [--domain-negatives CONFIG]]
[--no-temperature [--low-confidence]] [--dest DIR] [--version V] [--progress json]``.

Fits temperature scaling and the low-confidence threshold on validation data and, with ``--decision-rules``, the
"uncertain" threshold ``min_probability`` of the decision rules (``--no-temperature --low-confidence``: the
low-confidence threshold alone, the probabilities left as they are); writes a NEW package version whose model.json has
``"calibration"`` (and ``"decision"``) blocks (see ``inference/calibrate.py``); with ``--domain-quantile`` the
out-of-domain check's threshold is moved to that quantile of the fitting split's scores. The source package is
never changed.
"""

from __future__ import annotations

import argparse
import json

from ..contract import PROGRESS_MODES, bounded_int, thread_count
from ..progress import PROGRESS_HELP


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("calibrate", help="fit temperature scaling + low-confidence threshold (and decision "
                                                "rules) on validation data; writes a new package version")
    p.add_argument("--model", required=True, help="model package id, id@version, folder or .zip")
    p.add_argument("--data", required=True, help="validation data: MedMNIST-style .npz, a folder of images with "
                   "labels.csv as train reads it, or a CSV of scans (a file column: path, file, filename or image; "
                   "and label)")
    p.add_argument("--split", "--fit-split", dest="split", default="val",
                   help="split of an .npz or folder the temperature and thresholds are fitted on (default val)")
    p.add_argument("--report-split",
                   help="split of the .npz the ECE/NLL figures are reported on (default: the fitting split, and "
                        "then the output says the figures are optimistic)")
    p.add_argument("--decision-rules", metavar="RULES",
                   help="JSON/YAML file of decision rules (min_agreement, volume_excluded_classes, class_modality, "
                        "min_section_mm) written with min_probability chosen on the fitting split")
    p.add_argument("--quantile", type=float,
                   help="with --decision-rules: min_probability is this quantile of the correct held-out calls' "
                        "probability, rounded down to 0.05 (default 0.02: 98%% of correct calls pass)")
    p.add_argument("--no-temperature", dest="temperature", action="store_false",
                   help="keep the probabilities as they are: write only what the other options fit (decision "
                        "rules, the out-of-domain threshold, --low-confidence)")
    p.add_argument("--low-confidence", action="store_true",
                   help="with --no-temperature: fit the low-confidence threshold (normalised predictive entropy at "
                        "or above which classify reports 'uncertain') on the network's own probabilities, which "
                        "stay as they are")
    p.add_argument("--domain-quantile", type=float, metavar="Q",
                   help="move the out-of-domain threshold to this quantile (0.5 to <1) of the fitting split's "
                        "scores (.npz data); the check's statistics are kept")
    p.add_argument("--domain-negatives", metavar="CONFIG",
                   help="with --domain-quantile: a train config whose domain/negatives (other data sets) are "
                        "measured at the new threshold for the model card")
    p.add_argument("--dest", help="catalog folder for the new version (default: the user catalog)")
    p.add_argument("--version", help="version of the new package, MAJOR.MINOR.PATCH that no catalog holds for the "
                                       "id (default: the parent's next free patch version)")
    p.add_argument("--bins", type=bounded_int(2, 1000), default=10, help="confidence bins of the ECE (default 10)")
    p.add_argument("--threads", type=thread_count, help="torch CPU threads")
    p.add_argument("--progress", choices=PROGRESS_MODES, default="bar", help=PROGRESS_HELP)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from ..inference.calibrate import calibrate_package
    from ..progress import Progress
    from . import command_line

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    progress = Progress(args.progress)
    result = calibrate_package(args.model, args.data, split=args.split, dest=args.dest, version=args.version,
                               n_bins=args.bins, progress=progress, report_split=args.report_split,
                               temperature=args.temperature, decision_rules=args.decision_rules,
                               quantile=args.quantile, domain_quantile=args.domain_quantile,
                               domain_negatives=args.domain_negatives, low_confidence=args.low_confidence,
                               command=command_line())
    if result["calibration"] is not None:
        print(f"meddeeprecog calibrate: {result['calibration']['note']}", file=sys.stderr)
    if args.progress == "json":
        progress("done", 1.0, result=result)
    else:
        print(json.dumps(result, indent=2))
    return 0
