"""``meddeeprecog finetune``: fine-tune a model package from segments labelled in Slicer into a new version.

    meddeeprecog finetune --base ID|PATH|none --data MANIFEST|FOLDER|FILE.seg.nrrd --task classify|segment
        [--class-map "liver,kidney_*=kidney"] [--freeze-encoder] [--epochs N] [--config FILE.yaml]
        [--progress json|bar|none] ...

Runs under ``torchrun --nproc_per_node=N meddeeprecog finetune ...`` as distributed data parallel (rank 0 writes).
With ``--progress json`` it prints ``{"stage", "fraction", "epoch", "val_metric", ...}`` lines and finally
``{"stage": "done", "fraction": 1.0, "result": {"package": PATH, ...}}``. A killed run resumes from its last
checkpoint when the same command is run again (``--restart`` starts over); SIGTERM/Ctrl-C cancel it and keep the
last complete epoch's checkpoint (exit code 130).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from ..contract import LABEL_TABLE_FORMATS, PROGRESS_MODES, thread_count
from ..devices import DEVICE_CHOICES
from ..progress import PROGRESS_HELP

#: Options that only apply to one task (checked before any data is read).
SEGMENT_ONLY = {"spacing": "--spacing", "patch_size": "--patch-size", "patches_per_epoch": "--patches-per-epoch",
                "val_slab": "--val-slab"}
CLASSIFY_ONLY = {"roi_size": "--roi-size", "margin_mm": "--margin-mm", "roi_size_mm": "--roi-size-mm",
                 "mask_channel": "--mask-channel", "negatives": "--negatives", "label_source": "--label-source"}


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.replace("x", ",").split(",") if v.strip()]


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "finetune", help="fine-tune a model from labelled segments into a new package version",
        description="Fine-tune a model package (or train from scratch) on scans with Slicer segmentations: ROI "
                    "classification of segments, or segmentation. Writes a new package version; the base is "
                    "never changed.")
    p.add_argument("--base", help="base package: ID, ID@VERSION, folder or .zip; 'none' to train from scratch. ID "
                   "alone takes the id's newest version, passing over the versions fine-tuned from the id on this "
                   "same data set (files and class map) and those derived from them, so the same command run again "
                   "finds its own run (returns it, or continues it with more epochs) instead of starting from its "
                   "own output; name ID@VERSION to fine-tune such a version further")
    p.add_argument("--data", help="manifest (.json/.csv: columns/keys id, image, segmentation, label?, "
                   "label_table?), folder of NAME.nii.gz + NAME.seg.nrrd pairs, one .seg.nrrd beside its scan, or "
                   "(with --image) one segmentation or label map")
    p.add_argument("--image", metavar="SCAN",
                   help="the scan that --data (one segmentation or label map file) segments, when their names do "
                        "not pair")
    p.add_argument("--label-table", metavar="FILE[#KEY]",
                   help=f"id -> name table for plain label maps (which store only numbers): {LABEL_TABLE_FORMATS}; "
                        "used for every case whose manifest names none")
    p.add_argument("--task", choices=["classify", "segment"],
                   help="classify: an ROI classifier labelling each segment (crops around segments); segment: a "
                        "segmentation network (voxel labels)")
    p.add_argument("--config", help="JSON/YAML file with fine-tuning settings (command-line options win)")
    p.add_argument("--class-map", help="segment name → class: 'nodule-malignant=malignant,kidney_*=kidney' "
                   "or a JSON file; a name mapped to two classes is refused. Classes that are the base's keep the "
                   "base's order, and so its trained output layer (without a class map: every segment name is a "
                   "class)")
    p.add_argument("--label-source", choices=["segment", "case"], help="class from the segment name (default) "
                   "or from the manifest's per-case label")
    p.add_argument("--arch", help="architecture when training from scratch (default monai_unet / simple_cnn3d)")
    p.add_argument("--arch-kwargs", help="JSON object of architecture keyword arguments")
    p.add_argument("--freeze-encoder", action="store_true", default=None, help="train only the decoder / head")
    p.add_argument("--epochs", type=int, help="training epochs (default 20; early stopping may end sooner; a "
                   "finished or cancelled run re-run with more epochs continues, on a learning-rate schedule "
                   "rebuilt for the new total): training/epochs")
    p.add_argument("--batch-size", type=int, help="global batch size (split over DDP processes; default 8): "
                   "training/batch_size")
    p.add_argument("--lr", type=float, help="learning rate of the optimiser (AdamW unless the config's optimizer "
                   "section says otherwise; default 1e-3): optimizer/lr")
    p.add_argument("--early-stopping", type=int, help="stop after N epochs without improvement (default 10; 0: "
                   "off): training/early_stopping_patience")
    p.add_argument("--val-cases", help="comma-separated case ids for validation")
    p.add_argument("--val-fraction", type=float, help="share of cases held out (default 0.25)")
    p.add_argument("--val-slab", help="START:STOP slices (training grid, in the package's orientation, RAS by "
                                      "default: 0 = most inferior) of a one-case data set held out; it must lie "
                                      "inside the volume's slices at that grid")
    p.add_argument("--spacing", type=_floats, help="training spacing x,y,z mm (segmentation)")
    p.add_argument("--patch-size", type=_ints, help="patch Z,Y,X voxels (segmentation; default 64,64,64)")
    p.add_argument("--patches-per-epoch", type=int,
                   help="random patches drawn per epoch (segmentation; default 32)")
    p.add_argument("--roi-size", type=_ints, help="crop Z,Y,X voxels (classification; default the base's input size)")
    p.add_argument("--margin-mm", type=float, help="margin around a segment's box (classification)")
    p.add_argument("--roi-size-mm", type=float, help="fixed crop edge in mm instead of box + margin")
    p.add_argument("--mask-channel", action="store_true", default=None, help="add the segment mask as channel 2")
    p.add_argument("--negatives", type=int, help="background crops per case, away from all segments")
    p.add_argument("--id", help="id of the new package (default: the base's id, its next version; ID-roi or ID-seg "
                   "when the new package is another kind of model than the base, e.g. an ROI classifier from a "
                   "volume classifier). Segmentation cases of another modality than the base's (MR for a CT base) "
                   "need an id of their own")
    p.add_argument("--version", help="version of the new package, MAJOR.MINOR.PATCH that no catalog holds for "
                   "the id (default: the next free patch version)")
    p.add_argument("--dest", help="catalog folder to write into (default: the user catalog)")
    p.add_argument("--work-dir", help="checkpoint folder (default: keyed by data, base and settings)")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start over")
    p.add_argument("--seed", type=int, help="random seed of the split, sampling and initialisation (default 0)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default=None,
                   help="where the network trains: auto (a CUDA GPU when torch sees one), cpu or cuda: "
                        "training/device")
    p.add_argument("--compile", choices=["auto", "true", "false"], default=None,
                   help="torch.compile the training steps (auto, the default: 3D networks on the CPU when a C++ "
                        "compiler is found, in runs of 300 steps or more, or of 50 or more once a compiled run of the "
                        "same network and patch batch has filled the compile cache; true fills it): training/compile")
    p.add_argument("--threads", type=thread_count, help="torch CPU threads per process")
    p.add_argument("--progress", choices=PROGRESS_MODES, default="bar", help=PROGRESS_HELP)
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace):
    """A :class:`FinetuneConfig` from the config file (if any) overridden by the command-line options."""
    from ..errors import ConfigError
    from ..finetune.config import FinetuneConfig, load_config_file
    from ..schema import override_sections

    raw = load_config_file(args.config) if args.config else {}
    options = {
        "base": args.base, "data": args.data, "task": args.task, "class_map": args.class_map,
        "label_source": args.label_source, "arch": args.arch, "freeze_encoder": args.freeze_encoder,
        "val_fraction": args.val_fraction, "spacing_mm": args.spacing, "patch_size": args.patch_size,
        "patches_per_epoch": args.patches_per_epoch, "roi_size": args.roi_size, "margin_mm": args.margin_mm,
        "roi_size_mm": args.roi_size_mm, "mask_channel": args.mask_channel, "negatives": args.negatives,
        "id": args.id, "version": args.version, "dest": args.dest, "work_dir": args.work_dir, "seed": args.seed,
        "image": args.image, "label_table": args.label_table,
    }
    sections = {"optimizer": {"lr": args.lr},
                "training": {"epochs": args.epochs, "batch_size": args.batch_size,
                             "early_stopping_patience": args.early_stopping, "device": args.device,
                             "compile": {"true": True, "false": False}.get(args.compile, args.compile)}}
    if args.arch_kwargs:
        try:
            options["arch_kwargs"] = json.loads(args.arch_kwargs)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--arch-kwargs is not a JSON object ({exc})") from None
    if args.val_cases:
        options["val_cases"] = [v.strip() for v in args.val_cases.split(",") if v.strip()]
    if args.val_slab:
        try:
            start, stop = (int(v) for v in args.val_slab.split(":"))
        except ValueError:
            raise ConfigError(f"--val-slab must read START:STOP, got {args.val_slab!r}") from None
        options["val_slab"] = [start, stop]
    raw.update({k: v for k, v in options.items() if v is not None})
    override_sections(raw, sections)  # an option replaces that one setting of the file's section
    if args.restart:
        raw["resume"] = False
    raw["command"] = "meddeeprecog " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if not raw.get("task"):
        raise ConfigError("--task classify|segment is required (or 'task' in --config)")
    check_options(args, raw["task"])
    cfg = FinetuneConfig.from_dict(raw, args.config)
    cfg.validate()
    return cfg


def check_options(args: argparse.Namespace, task: str) -> None:
    """Refuse, before any data is read, options that do not apply to ``task`` and files that are not there.

    Raises:
        ConfigError: a segmentation-only option with ``--task classify`` (or the reverse), ``--image`` without a
            file ``--data``, a missing ``--image`` / ``--label-table`` or a table that cannot be read.
        InputImageError: a missing ``--image``.
    """
    from pathlib import Path

    from ..errors import ConfigError, InputImageError

    other = SEGMENT_ONLY if task == "classify" else CLASSIFY_ONLY
    used = [flag for dest, flag in other.items() if getattr(args, dest, None) not in (None, False)]
    if used:
        applies = "segmentation (--task segment)" if task == "classify" else "ROI classification (--task classify)"
        raise ConfigError(f"{', '.join(used)} only appl{'ies' if len(used) == 1 else 'y'} to {applies}, not to "
                          f"--task {task}")
    if args.image:
        if not Path(args.image).exists():
            raise InputImageError("no such file or folder (--image)", args.image)
        if args.data and Path(args.data).is_dir():
            raise ConfigError("--image pairs one scan with one segmentation: --data must be that segmentation or "
                              "label map file, not a folder", args.data)
    if args.label_table:
        from ..inference.roi_classify import checked_label_table

        checked_label_table(args.label_table)


def run(args: argparse.Namespace) -> int:
    import os
    import signal

    cfg = build_config(args)
    import torch

    torch.set_num_threads(args.threads or int(os.environ.get("MEDDEEPRECOG_THREADS", "0")) or torch.get_num_threads())
    from ..finetune.finetune import finetune
    from ..progress import Progress

    rank0 = int(os.environ.get("RANK", "0")) == 0
    progress = Progress(args.progress if rank0 else "none")
    cancelled = {"flag": False}

    def on_term(signum, frame):  # Slicer's cancel: finish nothing more, keep the last checkpoint
        cancelled["flag"] = True

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        result = finetune(cfg, progress=progress, should_stop=lambda: cancelled["flag"])
    except KeyboardInterrupt:
        print("meddeeprecog finetune: cancelled; the last complete epoch's checkpoint is kept", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    if result["cancelled"]:
        from ..training.loop import CHECKPOINT

        if (Path(result["work_dir"]) / CHECKPOINT).is_file():
            print(f"meddeeprecog finetune: cancelled; checkpoint kept in {result['work_dir']} (run the same command "
                  "again to resume)", file=sys.stderr)
        else:  # cancelled within the first epoch: nothing to resume from
            print("meddeeprecog finetune: cancelled before the first epoch ended; no checkpoint was kept, so the "
                  "same command starts again from the first epoch", file=sys.stderr)
        return 130
    if not rank0:
        return 0
    done = {"package": result["package"], "id": result.get("id"), "version": result.get("version"),
            "metrics": {k: v for k, v in (result.get("metrics") or {}).items()
                        if k in ("dice", "hd95_mm", "hd95_missed", "auc", "balanced_accuracy", "accuracy",
                                 "per_class", "n", "note", "selected_by", "best_epoch", "val_slab", "held_out",
                                 "held_out_note")},
            "base": result.get("base"), **({"base_note": result["base_note"]} if result.get("base_note") else {}),
            **({"output_layer": result["output_layer"]} if result.get("output_layer") else {}),
            "warnings": result.get("warnings", []), "work_dir": result["work_dir"],
            "epochs_run": result["epochs"]["epochs_run"],
            "stopped": result["epochs"]["stopped"]}
    if args.progress == "json":
        progress("done", 1.0, result=done)
    else:
        if args.progress == "bar":
            progress("done", 1.0)
        print(json.dumps(done, indent=2))
    return 0
