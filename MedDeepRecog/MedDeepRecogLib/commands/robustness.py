"""``meddeeprecog robustness``: FGSM / PGD robustness of a model on one scan or a labelled data set.

One scan (``--input SCAN``; the Slicer panel's "Robustness check")::

    meddeeprecog robustness --model ID --input SCAN --out DIR [--attack fgsm|pgd] [--eps E ...] [--steps N]
                            [--write-perturbation] [--progress json]

writes ``DIR/<name>_robustness.json`` (``clean_label`` and ``clean_confidence``: what classify reports, after the
package's decision rules; at each eps the network's probability of its clean ``top_class`` and what classify would
report, ``smallest_flipping_eps`` or null: the smallest eps that changes that reported label, a class to
"uncertain" say, as ``flip_means`` says; the curve point where it flips, eps also in HU for CT; ``model_modality``
and ``scan_modality``; a scan that classify reports no class for has ``clean_label`` ``out-of-domain`` and
``out_of_domain``, the reason, while the curve and the flip follow the network's ``top_class``),
``DIR/<name>_robustness.png`` (the curve) and with
``--write-perturbation`` ``DIR/<name>_perturbation.nrrd`` (the perturbation at the flipping eps, or the largest
eps, on the scan's grid, in model input units).

A data set (``--data NPZ|FOLDER [--split val] [--max-cases N]``): clean vs robust accuracy / balanced accuracy / AUC at
each eps, ``DIR/robustness.json`` + ``DIR/robustness.png``; ``--max-cases`` takes a class-stratified, seeded sample
(files are often sorted by class), and cases of one class alone get a note instead of balanced accuracy and AUC.

Adversarial training (``--train-config CONFIG``): trains a config with an ``adversarial`` block
(see ``robustness/training.py``) into a new package version.

eps is in the model's input units (e.g. 0..1 after intensity scaling); eps <= 0 or >= the input's valid range
is refused. Default eps: 0.5 %, 1 %, 2 %, 5 % and 10 % of the valid range. The work is done by
``robustness/report.py``; this file only reads the command line.
"""

from __future__ import annotations

import argparse
import json

from ..contract import PROGRESS_MODES, bounded_int, thread_count
from ..progress import PROGRESS_HELP


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("robustness", help="adversarial robustness (FGSM/PGD) of a model on a scan or data set; "
                                                 "adversarial training")
    p.add_argument("--model", help="model package id, id@version, folder or .zip")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--input", nargs="+", metavar="SCAN", help="scan(s): how far does the prediction move?")
    src.add_argument("--data", help="labelled .npz (MedMNIST-style), or a folder of images with labels.csv as "
                     "train reads it, for clean vs robust accuracy")
    src.add_argument("--train-config", help="train a config with an 'adversarial' block into a new package")
    p.add_argument("--split", help="split of --data (default val)")
    p.add_argument("--out", help="output folder")
    p.add_argument("--attack", choices=["fgsm", "pgd"],
                   help="fgsm: one signed-gradient step of size eps; pgd: --steps projected gradient steps inside "
                        "the eps ball (stronger; default)")
    p.add_argument("--eps", nargs="+", help="attack budget(s) in model input units (space or comma separated); "
                   "for CT scans the output also gives each in HU")
    p.add_argument("--steps", type=bounded_int(1, 1000), help="PGD iterations (default 10)")
    p.add_argument("--bounds", nargs=2, type=float, metavar=("LOW", "HIGH"),
                   help="valid intensity range of the model input (default: from the package's preprocessing, "
                        "else the input's own min/max)")
    p.add_argument("--refine", type=bounded_int(0, 50),
                   help="--input: bisection steps refining the smallest flipping eps (default 5)")
    p.add_argument("--write-perturbation", action="store_true", help="write the perturbation volume (scan mode)")
    p.add_argument("--max-cases", type=bounded_int(1, 10_000_000),
                   help="--data: use at most N cases, as even over the classes as their counts allow, drawn with a "
                        "fixed seed (the same cases every run; the output's 'cases' says which)")
    p.add_argument("--batch-size", type=bounded_int(1, 4096), help="--data: cases attacked per batch (default 32)")
    p.add_argument("--package-dest", help="--train-config: catalog folder for the new package")
    p.add_argument("--epochs", type=int, help="--train-config: override training/epochs")
    p.add_argument("--threads", type=thread_count, help="torch CPU threads")
    p.add_argument("--progress", choices=PROGRESS_MODES, default="bar", help=PROGRESS_HELP)
    p.set_defaults(func=run)


#: the options each mode reads (beyond --threads and --progress, which all read); any other option given is refused
#: rather than silently ignored
MODE_OPTIONS = {
    "input": ("model", "out", "attack", "eps", "steps", "bounds", "refine", "write_perturbation"),
    "data": ("model", "out", "attack", "eps", "steps", "bounds", "split", "max_cases", "batch_size"),
    "train_config": ("out", "package_dest", "epochs"),
}
#: the defaults of options whose absence must be told apart from their default value
DEFAULTS = {"attack": "pgd", "steps": 10, "refine": 5, "split": "val", "batch_size": 32}


def check_options(args: argparse.Namespace) -> None:
    """Refuse, in one line, an option the chosen mode would ignore (``--split`` with ``--input``, ``--eps`` with
    ``--train-config``, ``--steps`` with the one-step FGSM), then fill in the defaults."""
    from ..errors import ConfigError

    mode = next((m for m in MODE_OPTIONS if getattr(args, m)), None)
    if mode is not None:
        flag = f"--{mode.replace('_', '-')}"
        for name in sorted(set().union(*MODE_OPTIONS.values())):  # any mode's option the chosen one lacks
            value = getattr(args, name)
            if name not in MODE_OPTIONS[mode] and value is not None and value is not False:  # 0 is a value given
                reads = ", ".join(f"--{o.replace('_', '-')}" for o in MODE_OPTIONS[mode])
                raise ConfigError(f"--{name.replace('_', '-')} does nothing with {flag} (it reads {reads}): drop it")
    if args.steps is not None and args.attack == "fgsm":
        raise ConfigError("--steps counts PGD iterations; FGSM is one step: drop --steps or use --attack pgd")
    for name, value in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..errors import ConfigError
    from ..progress import Progress

    check_options(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    progress = Progress(args.progress)
    if args.train_config:
        from ..contract import reproduce_command
        from ..robustness.training import run_adversarial_training
        from . import register_training_blocks

        register_training_blocks()
        # every option the run read goes into its reproduce command, as train's do (contract.reproduce_command)
        command = reproduce_command(["robustness", "--train-config", args.train_config],
                                    {opt: getattr(args, opt) for opt in ("out", "package_dest", "epochs", "threads")})
        result = run_adversarial_training(args.train_config, out=args.out, package_dest=args.package_dest,
                                          epochs=args.epochs, progress=progress, command=command)
    else:
        from ..robustness.report import dataset_report, scan_lines, scan_reports

        if not args.model:
            raise ConfigError("--model is required (a package id, id@version, folder or .zip)")
        if not args.out:
            raise ConfigError("--out is required")
        attack = {"attack": args.attack, "eps": args.eps, "steps": args.steps, "bounds": args.bounds,
                  "progress": progress}
        if args.input:
            echo = None if args.progress == "json" else (lambda record: print(scan_lines(record)))
            result = scan_reports(args.model, args.input, args.out, refine=args.refine,
                                  write_perturbation=args.write_perturbation, on_record=echo, **attack)
        elif args.data:
            result = dataset_report(args.model, args.data, args.out, split=args.split, max_cases=args.max_cases,
                                    batch_size=args.batch_size, **attack)
        else:
            raise ConfigError("give --input SCAN, --data NPZ|FOLDER or --train-config CONFIG")
    if args.progress == "json":
        progress("done", 1.0, result=result)
    else:
        print(json.dumps(result, indent=2))
    return 0
