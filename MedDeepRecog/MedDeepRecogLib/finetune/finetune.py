"""Fine-tune a model package on segments labelled in Slicer and save the result as a new package version.

``finetune(FinetuneConfig(...)) -> dict``: reads the cases (manifest, folder of pairs or one ``.seg.nrrd``), maps
segment names to classes, splits by case (or holds out a slab of a single scan), starts from the base package's
weights (or from scratch), trains with the one training loop (:func:`..training.loop.fit`: checkpoint every epoch,
resume with random and augmentation states, early stopping, DDP under ``torchrun``) and writes
``<id>/<next version>/`` with provenance (parent id/version, dataset fingerprint, the scans its line of weights
trained on, command, metrics) and a model card. The base package is only read.

The workflow's parts: :mod:`.config` (settings), :mod:`.manifest` and :mod:`.segment_data` (cases),
:mod:`.base` (the starting network), :mod:`.lineage` (which version ``--base ID`` means; whether the validation
data is held out from the base), :mod:`.segmentation_task` / :mod:`.roi_task` (data, step and validation of each
task), :mod:`.runs` (the work folder), :mod:`.card` (what the package says).

Tasks:

- ``classify``: crops around labelled segments (:mod:`.roi_crops`), optional negatives; metrics AUC and balanced
  accuracy; package ``input.kind = "roi3d"``.
- ``segment``: voxel labels; MONAI UNet/SegResNet on patches; validation by sliding window with Dice and HD95;
  package ``task = "segmentation"``, ``input.kind = "volume3d"`` (``size`` = patch, ``spacing_mm``).
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import ConfigError, MedDeepRecogError
from ..progress import null_progress
from ..training.loop import FitConfig, Hooks, fit
from .base import base_package, in_base_order
from .card import model_card, package_metrics
from .config import FinetuneConfig
from .lineage import held_out_status, merge_trained_on, recorded_scans, resolve_base, trained_on_entry
from .manifest import ClassMap, check_val_cases, dataset_fingerprint, load_cases, parse_class_map, split_by_case
from .roi_task import RoiClassificationTask
from .runs import check_work_dir, default_work_dir, previous_result, rerun_package, run_key, write_result, write_run
from .segment_data import (CaseData, check_training_classes, dataset_report, load_case, log_segment_summary,
                           resolve_classes)
from .segmentation_task import SegmentationTask

log = logging.getLogger(__name__)


def finetune(cfg: FinetuneConfig, progress: Callable[..., None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Run a fine-tuning job; returns ``{"package": path | None, "metrics", "cancelled", "work_dir", ...}``.

    Under ``torchrun`` every rank runs this; only rank 0 reports progress and writes files.

    Raises:
        MedDeepRecogError / ConfigError: bad data (no pairs, nothing maps to a class, one class only, grids that do
            not overlap), incompatible base. Raised before anything is written.
    """
    from ..training.distributed import init_distributed, leaving_together

    cfg.validate()
    ctx = init_distributed(cfg.training.device)
    report_progress = progress if (progress is not None and ctx.is_main) else null_progress
    with leaving_together(ctx):  # every rank waits at the end until rank 0 has written the package
        return _finetune(cfg, ctx, report_progress, should_stop)


def new_package_kind(cfg: FinetuneConfig) -> tuple[str, str]:
    """``(task, input kind)`` of the package this fine-tune makes: an ROI classifier or a volume segmenter."""
    return ("classification", "roi3d") if cfg.task == "classify" else ("segmentation", "volume3d")


def new_package_id(cfg: FinetuneConfig, base) -> str:
    """The id the new package is saved under: ``--id``; else the base's (a new version of it) when the new package
    is the same kind of model; else the base's id with ``-roi`` / ``-seg`` (an ROI classifier fine-tuned from a
    volume classifier must not become that classifier's latest version: :func:`..packages.check_same_kind`)."""
    if cfg.id:
        return cfg.id
    if base is None:
        return f"finetuned-{cfg.task}"
    same = (base.meta.get("task", "classification"), base.input_spec.get("kind")) == new_package_kind(cfg)
    return base.id if same else f"{base.id}-{'roi' if cfg.task == 'classify' else 'seg'}"


def check_modality(cfg: FinetuneConfig, base, pkg_id: str, loaded: Sequence[CaseData]) -> None:
    """Refuse a segmentation fine-tune of cases of another modality than its base's (CT against MR) saved under
    the base's id: the new package records the cases' modality (:func:`.segmentation_task.modality_of`) and, as the
    id's latest version, ``segment SCAN --model ID`` then refused every scan of the base's modality (a CT package
    fine-tuned on one MR case made ``segment CT --model ts-organs-seg`` refuse every CT). Under an id of its own
    (``--id``) it is a model apart, and each keeps its modality. A base or data of no one modality (``any``) is no
    conflict: such a package segments either.

    Raises:
        ConfigError: naming both modalities and asking for ``--id``.
    """
    from .segmentation_task import modality_of

    if base is None or cfg.task != "segment" or pkg_id != base.id:
        return
    ours, theirs = modality_of([d.modality for d in loaded]), base.meta.get("modality")
    if ours in ("CT", "MR") and theirs in ("CT", "MR") and ours != theirs:
        raise ConfigError(f"the cases are {ours} but base {base.id}@{base.version} segments {theirs}: saved as a new "
                          f"version of {base.id}, the {ours} model would become the id's latest and `segment "
                          f"--model {base.id}` would refuse every {theirs} scan; give it an id of its own (e.g. --id "
                          f"{base.id}-{ours.lower()})", cfg.data)


def check_output_version(cfg: FinetuneConfig, pkg_id: str, work_dir: Path) -> None:
    """Refuse a ``--version`` that any catalog already holds for ``pkg_id`` (the check train, calibrate and
    ``models import`` make: :func:`..packages.check_new_version`), except the package this work folder's finished
    run saved, which the same command run again returns instead of training (:func:`.runs.rerun_package`).
    Without ``--version`` the package takes the next version free in every catalog when it is saved. Either way
    the id must not belong to another kind of package (:func:`..packages.check_same_kind`)."""
    from ..packages import catalogs_with, check_new_version, check_same_kind

    roots = catalogs_with(cfg.dest)
    check_same_kind(pkg_id, *new_package_kind(cfg), roots, "--id" if cfg.id else "the new package's id")
    if cfg.version is None:
        return
    check_new_version(pkg_id, cfg.version, roots, "--version", own=rerun_package(work_dir, cfg, roots[0]))


def _finetune(cfg: FinetuneConfig, ctx, progress, should_stop) -> dict[str, Any]:
    import torch

    data_path = Path(cfg.data)
    cases, manifest_map = load_cases(data_path, image=cfg.image, label_table=cfg.label_table)
    class_map = parse_class_map(cfg.class_map) if cfg.class_map else (manifest_map or ClassMap(None))
    # the work folder is known from the files' bytes, before any scan is decoded: a --version that would overwrite
    # or hide a package is refused first
    fingerprint = dataset_fingerprint(cases, class_map, {"label_source": cfg.label_source})
    # an unversioned --base passes over this data set's own fine-tunes, so the same command finds its own run again
    asked_base, base_note = resolve_base(cfg.base, fingerprint)
    base = base_package(asked_base, cfg.task)
    if base_note and ctx.is_main:
        log.info(base_note)
    pkg_id = new_package_id(cfg, base)
    base_ref = f"{base.id}@{base.version}" if base is not None else None
    work_dir = Path(cfg.work_dir) if cfg.work_dir else default_work_dir(run_key(cfg, fingerprint, base_ref))
    check_work_dir(work_dir, cfg, fingerprint, base_ref)
    check_output_version(cfg, pkg_id, work_dir)
    progress("load", 0.0, cases=len(cases))
    loaded: list[CaseData] = []
    for i, case in enumerate(cases):
        item = load_case(case, class_map)
        if cfg.label_source == "case":
            if case.label is None:
                raise MedDeepRecogError(f"case {case.case_id!r} has no label but label_source is 'case'", data_path)
            from .segment_data import SegmentInfo

            item.segments = [SegmentInfo(s.name, case.label if s.class_name is not None else None, s.voxels)
                             for s in item.segments]
        loaded.append(item)
        progress("load", (i + 1) / len(cases), case=case.case_id)
    if cfg.label_source == "case":
        classes = sorted({c.label for c in cases})
    else:
        classes = resolve_classes(loaded, class_map, data_path)
    classes = in_base_order(classes, base)
    check_modality(cfg, base, pkg_id, loaded)
    labelled = list(classes)  # the classes segments hold (not the negatives' background)
    if cfg.task == "classify" and cfg.negatives > 0 and "background" not in classes:
        classes = classes + ["background"]
    if cfg.task == "classify" and len(classes) < 2:
        raise MedDeepRecogError(f"ROI classification needs at least two classes, but every mapped segment is "
                                f"{classes[0]!r}; map more segment names to classes or add negatives "
                                "(--negatives N)", data_path)
    if cfg.val_slab is not None:
        if len(loaded) != 1 and not cfg.val_cases:
            raise ConfigError("--val-slab holds out a slab of one scan: give a data set with one case "
                              "(or name it with --val-cases)")
        if cfg.val_cases:
            if len(cfg.val_cases) != 1:
                raise ConfigError(f"--val-slab holds out a slab of one scan: name one case with --val-cases, not "
                                  f"{len(cfg.val_cases)}")
            check_val_cases([d.case for d in loaded], cfg.val_cases)
        if cfg.task != "segment":
            raise ConfigError("--val-slab is for segmentation; ROI classification splits by case")
        train_data, val_data = loaded, []
    else:
        train_cases, val_cases = split_by_case([d.case for d in loaded], cfg.val_fraction, cfg.val_cases, cfg.seed)
        train_ids = {c.case_id for c in train_cases}
        train_data = [d for d in loaded if d.case.case_id in train_ids]
        val_data = [d for d in loaded if d.case.case_id not in train_ids]
    check_training_classes(train_data, val_data, labelled, data_path)
    # what the card says the model saw: the training cases' counts (validation apart), every case's warnings
    report = {**dataset_report(train_data, classes), "warnings": [w for item in loaded for w in item.warnings]}
    if val_data:
        report["validation"] = dataset_report(val_data, classes)
    if cfg.val_slab is not None:
        report["note"] = "the validation slab is part of the one case, so its voxels are in these counts"

    torch.manual_seed(cfg.seed)  # same initial weights on every rank (DDP broadcasts rank 0's anyway)

    task = (SegmentationTask if cfg.task == "segment" else RoiClassificationTask)(cfg, base, classes, train_data,
                                                                                  val_data, ctx)
    if ctx.is_main:   # once every setting has passed (a refusal stays one line)
        log_segment_summary(loaded, data_path)
    val_slab = getattr(task, "val_slab", None)
    held_out = held_out_status(base, fingerprint, [(d.case.case_id, d.scan_id) for d in val_data], val_slab,
                               [(d.case.case_id, d.scan_id) for d in train_data])
    warnings = list(report["warnings"])
    for line in (task.weight_report.get("warning"), held_out[1] and f"validation is not held out: {held_out[1]}"):
        if line:
            warnings.append(line)
            if ctx.is_main:
                log.warning(line)
    progress("prepare", 1.0, train_cases=len(train_data), val_cases=len(val_data),
             val_volumes=len(getattr(task, "val_vols", val_data)), work_dir=str(work_dir))
    if ctx.is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
        write_run(work_dir, cfg, fingerprint, base_ref, classes)
    # no validation data: nothing can select an epoch, so the last is kept (the training loss would only pick the
    # most fitted one, and no early stopping on it)
    monitor = task.monitor if task.has_val else "last"
    fit_cfg = FitConfig(optimizer=cfg.optimizer, schedule=cfg.schedule, loop=cfg.training, monitor=monitor,
                        seed=cfg.seed, checkpoint_dir=work_dir, resume=cfg.resume)
    result = fit(task.model, task.train_loader, task.step, task.validate if task.has_val else None, fit_cfg,
                 Hooks(frozen=task.frozen, should_stop=should_stop), progress, ctx, memory_format=task.memory_format)
    metrics = package_metrics(result.best_val, result.best_epoch, monitor, val_slab=val_slab, held_out=held_out)
    summary = {"work_dir": str(work_dir), "classes": classes, "epochs": result.summary(),
               "cancelled": result.stopped == "cancelled", "package": None, "base": base_ref,
               **({"base_note": base_note} if base_note else {}),
               **({"output_layer": task.weight_report["output_layer"]} if task.weight_report.get("output_layer")
                  else {}),
               "metrics": {**(result.best_val or {}), **metrics}, "warnings": warnings}
    if result.stopped == "cancelled" or not ctx.is_main:
        return summary
    nothing_new = result.resumed_from is not None and result.resumed_from == len(result.epochs)
    previous = (previous_result(work_dir, len(result.epochs), dest=cfg.dest, version=cfg.version, pkg_id=cfg.id)
                if nothing_new else None)
    if previous is not None:  # a finished run re-run with the same command: nothing new to save
        summary.update(previous)
        return summary

    meta = task.package_meta()
    meta["id"] = pkg_id
    meta["version"] = cfg.version
    meta["provenance"] = {
        "data": str(data_path.resolve()), "command": cfg.command or " ".join(shlex.quote(a) for a in sys.argv),
        "seed": cfg.seed, "parent": ({"id": base.id, "version": base.version, "path": str(base.path)}
                                     if base is not None else None),
        "dataset_fingerprint": fingerprint, "class_map": class_map.to_json(),
        "cases": {"train": [d.case.case_id for d in train_data], "val": [d.case.case_id for d in val_data]},
        # what these weights and their ancestors' trained on: a later fine-tune's check of its validation data
        "trained_on": merge_trained_on(
            recorded_scans(base.meta) if base is not None else None,
            [trained_on_entry(d.case.case_id, d.scan_id, val_slab if val_slab and val_slab["case"] == d.case.case_id
                              else None) for d in train_data]),
        "world_size": ctx.world_size,
    }
    meta["metrics"] = metrics
    meta["training"] = {"epochs_run": len(result.epochs), "best_epoch": result.best_epoch,
                        "stopped": result.stopped, "freeze_encoder": cfg.freeze_encoder,
                        "frozen_modules": task.frozen, "base_weights": {
                            "loaded": task.weight_report["loaded"],
                            "reinitialised": task.weight_report["reinitialised"][:20],
                            **{k: task.weight_report[k] for k in ("partly_loaded", "output_layer")
                               if task.weight_report.get(k)},
                            **({"warning": task.weight_report["warning"]} if task.weight_report.get("warning")
                               else {})},
                        "data": report, "monitor": monitor}
    from ..packages import save_package

    card = model_card(meta, cfg, report, result)
    history = json.dumps(result.summary(), indent=2)
    target = save_package(task.model, meta, cfg.dest, extra_files={"MODEL_CARD.md": card, "history.json": history})
    summary["package"] = str(target)
    summary["id"] = meta["id"]
    summary["version"] = json.loads((target / "model.json").read_text(encoding="utf-8"))["version"]
    write_result(work_dir, summary, len(result.epochs))
    return summary
