"""Fine-tune a model package on segments labelled in Slicer and save the result as a new package version.

``finetune(FinetuneConfig(...)) -> dict``: reads the cases (manifest, folder of pairs or one ``.seg.nrrd``), maps
segment names to classes, splits by case (or holds out a slab of a single scan), starts from the base package's
weights (or from scratch), trains with :func:`.loop.run_loop` (checkpoint every epoch, resume, early stopping,
DDP under ``torchrun``) and writes ``<id>/<next version>/`` with provenance (parent id/version, dataset fingerprint,
command, metrics) and a model card. The base package is only read.

Tasks:

- ``classify``: one crop per labelled segment (:mod:`.roi_crops`), optional negatives; metrics AUC and balanced
  accuracy; package ``input.kind = "roi3d"``.
- ``segment``: voxel labels; MONAI UNet/SegResNet on patches; validation by sliding window with Dice and HD95;
  package ``task = "segmentation"``, ``input.kind = "volume3d"`` (``size`` = patch, ``spacing_mm``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Sequence

import numpy as np
from pydantic import BeforeValidator, Field

from ..errors import ConfigError, MedDeepRecogError
from ..schema import (List, Millimetres, NonNegFloat, NonNegInt, OpenFraction, PosFloat, SideInt,  # noqa: F401
                      Fraction, _no_bool, _whole_number, load_mapping)
from ..progress import null_progress
from .manifest import ClassMap, dataset_fingerprint, load_cases, parse_class_map, split_by_case
from .segment_data import CaseData, dataset_report, load_case, resolve_classes

log = logging.getLogger(__name__)

TASKS = ("classify", "segment")


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run depends on (configuration as data; JSON/YAML keys are these field names).

    Data: ``data`` (manifest / folder / ``.seg.nrrd``; with ``image``, any segmentation or label map of that scan),
    ``image`` (the scan of a single segmentation given as ``data`` when their names do not pair), ``label_table``
    (``FILE.json[#KEY]`` id → name table, or a Slicer ``.ctbl``, for plain label maps without their own), ``class_map`` (``"a=x,b=y"``, dict or JSON file),
    ``label_source`` (``"segment"``: class from the segment name; ``"case"``: the case's label),
    ``val_cases`` / ``val_fraction`` (split by case) or ``val_slab`` (``[start, stop)`` slices of a one-case data
    set at the training spacing).
    Model: ``base`` (package id, ``ID@VERSION`` or path; ``None``: from scratch with ``arch`` / ``arch_kwargs``),
    ``freeze_encoder``, output ``id`` / ``version`` / ``dest`` (catalog root; default the user catalog).
    Training: ``epochs``, ``batch_size`` (global, split over DDP ranks), ``lr``, ``weight_decay``,
    ``early_stopping`` (patience in epochs; 0 = off), ``seed``, ``device``, ``work_dir`` (checkpoints;
    default a folder keyed by data, base and settings), ``resume``.
    Segmentation: ``spacing_mm`` (x, y, z), ``patch_size`` (Z, Y, X), ``patches_per_epoch``, ``normalize``,
    ``min_component_fraction`` (specks below this share of a class's largest component are dropped in validation
    and at inference; 0 keeps everything).
    Classification: ``roi_size`` (Z, Y, X), ``margin_mm``, ``roi_size_mm``, ``mask_channel``,
    ``samples_per_segment``, ``jitter_mm``, ``negatives`` (per case, class ``"background"``).
    """

    task: str = "segment"
    data: str = ""
    image: str | None = None
    label_table: str | None = None
    base: str | None = None
    arch: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    version: str | None = None
    dest: str | None = None
    class_map: str | dict[str, str] | None = None
    label_source: Literal["segment", "case"] = "segment"
    val_cases: List(str) | None = None
    val_fraction: OpenFraction = 0.25
    val_slab: List(NonNegInt, 2, 2) | None = None
    epochs: Annotated[int, BeforeValidator(_whole_number), Field(ge=1, le=100_000)] = 20
    batch_size: Annotated[int, BeforeValidator(_whole_number), Field(ge=1, le=65_536)] = 8
    lr: PosFloat = 1e-3
    weight_decay: NonNegFloat = 1e-4
    freeze_encoder: bool = False
    early_stopping: NonNegInt = 10
    seed: NonNegInt = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    work_dir: str | None = None
    resume: bool = True
    spacing_mm: List(Millimetres, 3, 3) | None = None
    patch_size: List(SideInt, 3, 3) | None = None
    patches_per_epoch: Annotated[int, BeforeValidator(_whole_number), Field(ge=1, le=1_000_000)] = 32
    normalize: dict[str, Any] | None = None
    strong_augmentation: bool = True
    min_component_fraction: Fraction = 0.1
    roi_size: List(SideInt, 3, 3) | None = None
    margin_mm: Annotated[float, BeforeValidator(_no_bool), Field(ge=0, le=1000)] = 10.0
    roi_size_mm: Millimetres | None = None
    mask_channel: bool = False
    samples_per_segment: Annotated[int, BeforeValidator(_whole_number), Field(ge=1, le=10_000)] = 4
    jitter_mm: Annotated[float, BeforeValidator(_no_bool), Field(ge=0, le=1000)] = 5.0
    negatives: Annotated[int, BeforeValidator(_whole_number), Field(ge=0, le=10_000)] = 0
    command: str | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str | Path | None = None) -> "FinetuneConfig":
        """Build from a plain dict (a config file's content); unknown keys are an error naming them."""
        from ..schema import read_config

        cfg = read_config(cls, raw, source, noun="fine-tuning setting")
        if cfg.arch_kwargs:
            if cfg.arch:
                from ..models.registry import check_kwargs
                try:
                    check_kwargs(cfg.arch, cfg.arch_kwargs)
                except ConfigError as exc:
                    raise ConfigError(f"arch_kwargs: {exc.problem}", source) from None
        return cfg

    def validate(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {TASKS}, not {self.task!r}")
        if not self.data:
            raise ConfigError("no data given (--data MANIFEST|FOLDER|FILE.seg.nrrd)")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch size must be at least 1")
        if self.label_source not in ("segment", "case"):
            raise ConfigError(f"label_source must be 'segment' or 'case', not {self.label_source!r}")
        if self.val_slab is not None and (len(self.val_slab) != 2 or self.val_slab[1] <= self.val_slab[0]):
            raise ConfigError(f"val_slab must be [start, stop) with stop > start, got {self.val_slab}")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or YAML fine-tuning config (keys of :class:`FinetuneConfig`; a ``finetune:`` section is used
    when present, so a train config can carry one)."""
    path = Path(path)
    raw = load_mapping(path, "fine-tuning config")
    raw = raw.get("finetune", raw)
    if not isinstance(raw, dict):
        raise ConfigError(f"finetune must be a mapping of settings, got {raw!r}", path)
    if "data" in raw and raw["data"] and not Path(str(raw["data"])).is_absolute():
        raw["data"] = str(path.parent / str(raw["data"]))
    return raw


# ------------------------------------------------------------------------------------------------ helpers
def _run_key(cfg: FinetuneConfig, fingerprint: str, base_ref: str | None) -> str:
    """Checkpoint folder name: same data, base and settings → same folder (so a re-run resumes)."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("work_dir", "resume", "command", "dest",
                                                                     "version", "device")}
    blob = json.dumps({"fingerprint": fingerprint, "base": base_ref, "settings": settings}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _default_work_dir(key: str) -> Path:
    from ..packages import user_models_dir

    return user_models_dir().parent / "finetune_runs" / key


def _base_package(ref: str | None, task: str):
    if not ref or ref.lower() in ("none", "scratch"):
        return None
    from ..packages import load_package

    pkg = load_package(ref)
    base_task = pkg.meta.get("task", "classification")
    if task == "segment" and base_task != "segmentation":
        raise ConfigError(f"base model {pkg.id}@{pkg.version} is a {base_task} model; --task segment needs a "
                          "segmentation base (or --base none)", pkg.path)
    if task == "classify" and base_task == "segmentation":
        raise ConfigError(f"base model {pkg.id}@{pkg.version} is a segmentation model; --task classify needs a "
                          "classification base (or --base none)", pkg.path)
    return pkg


def _build_model(cfg: FinetuneConfig, base, num_outputs: int, in_channels: int,
                 class_names: Sequence[str] = ()) -> tuple[Any, str, dict, dict]:
    """Network for the new package: the base's architecture with new output/input sizes, base weights where
    shapes match; the output layer starts fresh when the class names differ from the base's (even if their number
    is the same: "mass" must not become "lesion" by position). Returns ``(model, arch_name, arch_kwargs,
    weight_report)``."""
    from ..models import build_model
    from . import seg_models  # noqa: F401  (registers monai_unet / monai_segresnet)
    from .seg_models import head_module_name, load_matching_weights

    if base is not None:
        name = base.meta["architecture"]["name"]
        kwargs = dict(base.meta["architecture"].get("kwargs") or {})
    else:
        name = cfg.arch or ("monai_unet" if cfg.task == "segment" else "simple_cnn3d")
        kwargs = {}
    kwargs.update(cfg.arch_kwargs or {})
    kwargs["num_classes"] = num_outputs
    kwargs["in_channels"] = in_channels
    kwargs.pop("out_channels", None)
    size = cfg.patch_size if cfg.task == "segment" else cfg.roi_size
    model = build_model(name, input_shape=[in_channels, *size] if size else None, **kwargs)
    report = {"loaded": 0, "reinitialised": []}
    if base is not None:
        from ..packages.package import _load_state_dict

        same_classes = list(base.class_names) == list(class_names)
        skip = [] if same_classes or not class_names else [head_module_name(model)]
        loaded, fresh = load_matching_weights(model, _load_state_dict(base.weights_path), skip)
        if not loaded:
            raise ConfigError(f"no weight of base {base.id}@{base.version} fits the new network; "
                              "check --arch-kwargs", base.path)
        report = {"loaded": len(loaded), "reinitialised": fresh}
    return model, name, kwargs, report


# ------------------------------------------------------------------------------------------------ main
def finetune(cfg: FinetuneConfig, progress: Callable[..., None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Run a fine-tuning job; returns ``{"package": path | None, "metrics", "cancelled", "work_dir", ...}``.

    Under ``torchrun`` every rank runs this; only rank 0 reports progress and writes files.

    Raises:
        MedDeepRecogError / ConfigError: bad data (no pairs, nothing maps to a class, one class only, grids that do
            not overlap), incompatible base. Raised before anything is written.
    """
    from .distributed import init_distributed, shutdown

    cfg.validate()
    ctx = init_distributed(cfg.device)
    report_progress = progress if (progress is not None and ctx.is_main) else null_progress
    try:
        return _finetune(cfg, ctx, report_progress, should_stop)
    finally:
        shutdown(ctx)


def _finetune(cfg: FinetuneConfig, ctx, progress, should_stop) -> dict[str, Any]:
    import torch

    data_path = Path(cfg.data)
    cases, manifest_map = load_cases(data_path, image=cfg.image, label_table=cfg.label_table)
    class_map = parse_class_map(cfg.class_map) if cfg.class_map else (manifest_map or ClassMap(None))
    base = _base_package(cfg.base, cfg.task)
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
    if cfg.task == "classify" and cfg.negatives > 0 and "background" not in classes:
        classes = classes + ["background"]
    if cfg.task == "classify" and len(classes) < 2:
        raise MedDeepRecogError(f"ROI classification needs at least two classes, but every mapped segment is "
                                f"{classes[0]!r}; map more segment names to classes or add negatives "
                                "(--negatives N)", data_path)
    report = dataset_report(loaded, classes)

    if cfg.val_slab is not None:
        if len(loaded) != 1 and not cfg.val_cases:
            raise ConfigError("--val-slab holds out a slab of one scan: give a data set with one case "
                              "(or name it with --val-cases)")
        if cfg.task != "segment":
            raise ConfigError("--val-slab is for segmentation; ROI classification splits by case")
        train_data, val_data = loaded, []
    else:
        train_cases, val_cases = split_by_case([d.case for d in loaded], cfg.val_fraction, cfg.val_cases, cfg.seed)
        train_ids = {c.case_id for c in train_cases}
        train_data = [d for d in loaded if d.case.case_id in train_ids]
        val_data = [d for d in loaded if d.case.case_id not in train_ids]

    fingerprint = dataset_fingerprint(cases, class_map, {"label_source": cfg.label_source})
    base_ref = f"{base.id}@{base.version}" if base is not None else None
    work_dir = Path(cfg.work_dir) if cfg.work_dir else _default_work_dir(_run_key(cfg, fingerprint, base_ref))
    torch.manual_seed(cfg.seed)  # same initial weights on every rank (DDP broadcasts rank 0's anyway)

    if cfg.task == "segment":
        job = _SegmentationJob(cfg, base, classes, train_data, val_data, ctx)
    else:
        job = _ClassificationJob(cfg, base, classes, train_data, val_data, ctx)
    progress("prepare", 1.0, train_cases=len(train_data), val_cases=len(val_data),
             val_volumes=len(getattr(job, "val_vols", val_data)), work_dir=str(work_dir))

    from ..training.loop import FitConfig
    from .loop import run_loop

    fit_cfg = FitConfig(epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay, schedule="cosine",
                        early_stopping_patience=cfg.early_stopping or None, seed=cfg.seed, device=ctx.device,
                        grad_clip=5.0)
    if ctx.is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
        from ..io import atomic_write_json

        atomic_write_json(work_dir / "run.json", {"config": asdict(cfg), "dataset_fingerprint": fingerprint,
                                                  "base": base_ref, "classes": classes})
    result = run_loop(job.model, job.train_loader, job.loss_fn, job.validate if job.has_val else None, fit_cfg,
                      monitor=job.monitor, higher_is_better=job.higher_is_better, ctx=ctx, frozen=job.frozen,
                      sampler=job.sampler, progress=progress, should_stop=should_stop, checkpoint_dir=work_dir,
                      resume=cfg.resume)
    summary = {"work_dir": str(work_dir), "classes": classes, "epochs": result.summary(),
               "cancelled": result.stopped == "cancelled", "package": None,
               "metrics": result.best_val, "warnings": report["warnings"]}
    if result.stopped == "cancelled" or not ctx.is_main:
        return summary
    nothing_new = result.resumed_from is not None and result.resumed_from == len(result.epochs)
    previous = _previous_result(work_dir, len(result.epochs)) if nothing_new else None
    if previous is not None:  # a finished run re-run with the same command: nothing new to save
        summary.update(previous)
        return summary

    meta = job.package_meta()
    meta["id"] = cfg.id or (base.id if base is not None else f"finetuned-{cfg.task}")
    meta["version"] = cfg.version
    meta["provenance"] = {
        "data": str(data_path.resolve()), "command": cfg.command or " ".join(shlex.quote(a) for a in sys.argv),
        "seed": cfg.seed, "parent": ({"id": base.id, "version": base.version, "path": str(base.path)}
                                     if base is not None else None),
        "dataset_fingerprint": fingerprint, "class_map": class_map.to_json(),
        "cases": {"train": [d.case.case_id for d in train_data], "val": [d.case.case_id for d in val_data]},
        "world_size": ctx.world_size,
    }
    meta["metrics"] = _clean_metrics(result.best_val) if result.best_val else {"split": "train", "note":
                                                                               "no validation data"}
    meta["training"] = {"epochs_run": len(result.epochs), "best_epoch": result.best_epoch,
                        "stopped": result.stopped, "freeze_encoder": cfg.freeze_encoder,
                        "frozen_modules": job.frozen, "base_weights": job.weight_report_short(),
                        "data": report, "monitor": job.monitor}
    from ..packages import save_package

    card = model_card(meta, cfg, report, result)
    history = json.dumps(result.summary(), indent=2)
    target = save_package(job.model, meta, cfg.dest, extra_files={"MODEL_CARD.md": card, "history.json": history})
    summary["package"] = str(target)
    summary["id"], summary["version"] = meta["id"], json.loads((target / "model.json").read_text(encoding="utf-8"))["version"]
    from ..io import atomic_write_json

    atomic_write_json(work_dir / "result.json", {"package": summary["package"], "id": summary["id"],
                                                 "version": summary["version"], "epochs_run": len(result.epochs)})
    return summary


def _previous_result(work_dir: Path, epochs_run: int) -> dict[str, Any] | None:
    """The package an earlier, finished run of this work folder saved, if it saw the same epochs and still exists."""
    path = work_dir / "result.json"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if saved.get("epochs_run") != epochs_run or not Path(saved.get("package", "")).is_dir():
        return None
    return {k: saved[k] for k in ("package", "id", "version")}


def _clean_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics for model.json: drop bulky parts (per-case detail stays in the model card)."""
    out = {k: v for k, v in metrics.items() if k not in ("per_case", "confusion_matrix")}
    out.setdefault("split", "val")
    return out


def model_card(meta: dict[str, Any], cfg: FinetuneConfig, report: dict[str, Any], result) -> str:
    """Markdown model card: what it does, what it started from, how many cases it saw, metrics, caveats."""
    prov = meta["provenance"]
    parent = prov["parent"]
    lines = [f"# {meta['id']} (fine-tuned, task {meta['task']})", "",
             meta.get("description", ""), "",
             "## Origin",
             f"- Base model: {parent['id'] + ' ' + parent['version'] if parent else 'none (trained from scratch)'}",
             f"- Command: `{prov['command']}`",
             f"- Data: `{prov['data']}` (fingerprint `{prov['dataset_fingerprint']}`)",
             f"- Frozen encoder: {cfg.freeze_encoder}; epochs run {len(result.epochs)} of {cfg.epochs}, "
             f"best epoch {result.best_epoch}, stopped: {result.stopped}", "",
             "## Data it saw",
             f"- **{len(prov['cases']['train'])} training case(s)**: {', '.join(prov['cases']['train'])}",
             f"- {len(prov['cases']['val'])} validation case(s): {', '.join(prov['cases']['val']) or 'none'}"
             + (f" (held-out slab {cfg.val_slab} of the training scan)" if cfg.val_slab else ""),
             "- Segments per class (cases / segments / voxels):"]
    for name, c in report["classes"].items():
        lines.append(f"  - {name}: {c['cases']} / {c['segments']} / {c['voxels']}")
    lines += ["", "## Validation metrics"]
    metrics = meta.get("metrics") or {}
    for key in ("dice", "hd95_mm", "auc", "balanced_accuracy", "accuracy", "n"):
        if key in metrics:
            lines.append(f"- {key}: {metrics[key]}")
    if "per_class" in metrics:
        lines.append(f"- per class: `{json.dumps(metrics['per_class'])}`")
    lines += ["", "## Caveats",
              "- Few labelled cases: metrics on so small a validation set are rough; check results visually in Slicer.",
              "- Labels are whatever segments the user supplied; their quality bounds the model's."]
    if report["warnings"]:
        lines += ["", "## Data warnings"] + [f"- {w}" for w in report["warnings"]]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ tasks
class _SegmentationJob:
    """Data, model, loss and validation for voxel-wise fine-tuning."""

    monitor = "dice"
    higher_is_better = True

    def __init__(self, cfg: FinetuneConfig, base, classes: list[str], train: list[CaseData], val: list[CaseData],
                 ctx):
        import torch
        from monai.losses import DiceCELoss

        from .distributed import make_sampler, per_rank_batch
        from .seg_models import encoder_module_paths
        from .seg_training import CachedPatchDataset, prepare_volume, split_slab

        self.cfg, self.ctx, self.classes = cfg, ctx, classes
        self.modalities = [d.modality for d in train + val]
        spec = base.input_spec if base is not None else {}
        self.spacing = list(cfg.spacing_mm or spec.get("spacing_mm") or _median_spacing(train + val))
        self.patch = list(cfg.patch_size or spec.get("size") or [64, 64, 64])
        self.normalize = cfg.normalize or spec.get("normalize")
        if base is not None and base.class_names[1:] != classes:
            log.info("classes %s replace the base's %s: the output layer is re-initialised", classes,
                     base.class_names[1:])
        train_vols = [prepare_volume(d, classes, self.spacing, self.normalize) for d in train]
        val_vols = [prepare_volume(d, classes, self.spacing, self.normalize) for d in val]
        if cfg.val_slab is not None:
            target = cfg.val_cases[0] if cfg.val_cases else train_vols[0].case_id
            pieces = []
            for vol in train_vols:
                if vol.case_id == target:
                    tr, va = split_slab(vol, int(cfg.val_slab[0]), int(cfg.val_slab[1]))
                    pieces.append(tr)
                    val_vols.append(va)
                else:
                    pieces.append(vol)
            train_vols = pieces
        if not any(v.label.any() for v in train_vols):
            raise MedDeepRecogError("the training cases hold no labelled voxel of classes " + ", ".join(classes),
                                    cfg.data)
        self.train_vols, self.val_vols = train_vols, val_vols
        self.model, self.arch, self.arch_kwargs, self.weight_report = _build_model(
            cfg, base, len(classes) + 1, 1, ["background"] + list(classes))
        self.frozen = encoder_module_paths(self.model, self.arch) if cfg.freeze_encoder else []
        # channels-last 3D convolutions train ~25% faster on CPU (oneDNN) and suit tensor cores on CUDA
        self.model = self.model.to(memory_format=torch.channels_last_3d)
        dataset = CachedPatchDataset(train_vols, self.patch, len(classes) + 1, cfg.patches_per_epoch,
                                     cfg.strong_augmentation)
        self.sampler = make_sampler(dataset, ctx, shuffle=True, seed=cfg.seed)
        generator = torch.Generator().manual_seed(cfg.seed)
        self.train_loader = torch.utils.data.DataLoader(
            dataset, batch_size=per_rank_batch(cfg.batch_size, ctx), shuffle=self.sampler is None,
            sampler=self.sampler, generator=generator, num_workers=0)
        self.criterion = DiceCELoss(to_onehot_y=True, softmax=True)
        self.has_val = bool(val_vols)

    def loss_fn(self, model, batch, device):
        import torch

        x = batch["image"].to(device, memory_format=torch.channels_last_3d)
        y = batch["label"].to(device)
        return self.criterion(model(x).float(), y), len(x)

    def validate(self, model) -> dict[str, Any]:
        from .distributed import gather_objects, shard
        from .seg_training import evaluate_volumes, summarize_cases

        mine = evaluate_volumes(model, shard(self.val_vols, self.ctx), self.classes, self.patch, self.ctx.device,
                                amp=self.ctx.device.startswith("cuda"),
                                min_component_fraction=self.cfg.min_component_fraction)
        merged: dict[str, Any] = {}
        for part in gather_objects(mine, self.ctx):
            merged.update(part)
        return summarize_cases(merged, self.classes)

    def weight_report_short(self) -> dict[str, Any]:
        return {"loaded": self.weight_report["loaded"], "reinitialised": self.weight_report["reinitialised"][:20]}

    def package_meta(self) -> dict[str, Any]:
        return {
            "task": "segmentation",
            "description": f"Segmentation of {', '.join(self.classes)} fine-tuned from segments "
                           f"({len(self.train_vols)} training volume(s)).",
            "architecture": {"name": self.arch, "kwargs": self.arch_kwargs},
            "class_names": ["background"] + list(self.classes),
            "modality": _modality(self.modalities),
            "input": {"kind": "volume3d", "size": [int(s) for s in self.patch],
                      "spacing_mm": [float(s) for s in self.spacing], "channels": 1,
                      "normalize": self.normalize or None, "pipeline": None,
                      "inference": {"method": "sliding_window", "overlap": 0.25,
                                    "min_component_fraction": self.cfg.min_component_fraction}},
            "explain": {"methods": []},
        }


class _ClassificationJob:
    """Data, model, loss and validation for ROI classification from segments."""

    higher_is_better = True

    def __init__(self, cfg: FinetuneConfig, base, classes: list[str], train: list[CaseData], val: list[CaseData],
                 ctx):
        import torch

        from .distributed import make_sampler, per_rank_batch
        from .roi_crops import RoiSpec, crops_to_arrays, segment_crops
        from .seg_models import encoder_module_paths

        self.cfg, self.ctx, self.classes = cfg, ctx, classes
        spec = base.input_spec if base is not None else {}
        size = cfg.roi_size or (spec.get("size") if spec.get("kind") in ("volume3d", "roi3d") else None) or [32] * 3
        self.roi = RoiSpec(tuple(int(s) for s in size), cfg.margin_mm, cfg.roi_size_mm, cfg.mask_channel,
                           cfg.normalize)
        train_samples, val_samples = [], []
        for i, item in enumerate(train):
            train_samples += segment_crops(item, classes, self.roi, samples_per_segment=cfg.samples_per_segment,
                                           jitter_mm=cfg.jitter_mm, negatives=cfg.negatives * cfg.samples_per_segment,
                                           seed=cfg.seed + i)
        for i, item in enumerate(val):
            val_samples += segment_crops(item, classes, self.roi, negatives=cfg.negatives, seed=cfg.seed + 1000 + i)
        self.x_train, self.y_train = crops_to_arrays(train_samples, classes)
        present = sorted({classes[i] for i in np.unique(self.y_train)})
        if len(present) < 2:
            raise MedDeepRecogError(f"the training cases hold only class {present}; ROI classification needs two",
                                    cfg.data)
        self.x_val, self.y_val = crops_to_arrays(val_samples, classes) if val_samples else (None, None)
        self.model, self.arch, self.arch_kwargs, self.weight_report = _build_model(cfg, base, len(classes),
                                                                                   self.roi.channels, classes)
        self.frozen = encoder_module_paths(self.model, self.arch) if cfg.freeze_encoder else []
        dataset = _AugmentedArrays(self.x_train, self.y_train, cfg.strong_augmentation)
        self.sampler = make_sampler(dataset, ctx, shuffle=True, seed=cfg.seed)
        self.train_loader = torch.utils.data.DataLoader(
            dataset, batch_size=per_rank_batch(cfg.batch_size, ctx), shuffle=self.sampler is None,
            sampler=self.sampler, generator=torch.Generator().manual_seed(cfg.seed), num_workers=0,
            drop_last=len(dataset) > cfg.batch_size)
        counts = np.bincount(self.y_train, minlength=len(classes)).astype(float)
        weights = np.where(counts > 0, counts.sum() / (len(classes) * np.maximum(counts, 1)), 0.0)
        self.criterion = torch.nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32))
        self.has_val = self.x_val is not None
        val_classes = set(np.unique(self.y_val).tolist()) if self.has_val else set()
        self.monitor = "auc" if len(val_classes) >= 2 else "balanced_accuracy"
        self.samples = {"train": len(self.y_train), "val": 0 if self.y_val is None else len(self.y_val)}

    def loss_fn(self, model, batch, device):
        x, y = batch
        x, y = x.to(device), y.to(device)
        return self.criterion.to(device)(model(x).float(), y), len(x)

    def validate(self, model) -> dict[str, Any]:
        import torch

        from ..training.metrics import classification_metrics

        model.eval()
        with torch.no_grad():
            logits = torch.cat([model(torch.from_numpy(self.x_val[i:i + 16]).to(self.ctx.device)).float().cpu()
                                for i in range(0, len(self.x_val), 16)])
        metrics = classification_metrics(self.y_val, torch.softmax(logits, 1).numpy(), self.classes)
        metrics["split"] = "val"
        return metrics

    def weight_report_short(self) -> dict[str, Any]:
        return {"loaded": self.weight_report["loaded"], "reinitialised": self.weight_report["reinitialised"][:20]}

    def package_meta(self) -> dict[str, Any]:
        from ..models import default_target_layer

        try:
            layer = default_target_layer(self.arch, **self.arch_kwargs)
        except Exception:  # an architecture without a Grad-CAM default
            layer = None
        return {
            "task": "classification",
            "description": f"ROI classification ({', '.join(self.classes)}) of crops around segments, "
                           f"fine-tuned on {self.samples['train']} training crops.",
            "architecture": {"name": self.arch, "kwargs": self.arch_kwargs},
            "class_names": list(self.classes),
            "modality": "any",
            "input": {"kind": "roi3d", "size": [int(s) for s in self.roi.size_vox], "spacing_mm": None,
                      "channels": self.roi.channels, "roi": self.roi.to_json(), "pipeline": None},
            "explain": {"methods": ["gradcam"], "target_layer": layer},
        }


class _AugmentedArrays:
    """In-memory ROI crops ``(N, C, Z, Y, X)`` with MONAI array augmentation per item (affine, intensity, noise).

    Only channel 0 (the scan) gets intensity changes; a mask channel moves with the scan under the affine.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, strong: bool = True):
        from monai import transforms as T

        self.x, self.y = x, y
        self.spatial = T.RandAffine(prob=0.8, rotate_range=(0.3, 0.3, 0.3), scale_range=(0.15, 0.15, 0.15),
                                    translate_range=(2, 2, 2), padding_mode="border", cache_grid=True,
                                    spatial_size=x.shape[2:]) if strong else None
        self.intensity = T.Compose([T.RandScaleIntensity(0.15, prob=0.5), T.RandShiftIntensity(0.1, prob=0.5),
                                    T.RandGaussianNoise(prob=0.3, std=0.03)]) if strong else None
        self._rng_seeded = False

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        import torch

        x = torch.from_numpy(self.x[i])
        if self.spatial is not None:
            if not self._rng_seeded:  # follow torch's seed (set per rank by the loop) for reproducible runs
                seed = int(torch.initial_seed() % (2 ** 32))
                self.spatial.set_random_state(seed)
                self.intensity.set_random_state(seed + 1)
                self._rng_seeded = True
            x = torch.as_tensor(self.spatial(x), dtype=torch.float32)
            x[0] = torch.as_tensor(self.intensity(x[:1]), dtype=torch.float32)[0]
        return x.float(), int(self.y[i])


def _median_spacing(data: Sequence[CaseData]) -> list[float]:
    spacings = np.array([d.image.GetSpacing() for d in data])
    return [float(round(s, 3)) for s in np.median(spacings, axis=0)]


def _modality(modalities: Sequence[str]) -> str:
    unique = set(modalities)
    return unique.pop() if len(unique) == 1 and unique <= {"CT", "MR"} else "any"
