"""Fine-tuning settings (:class:`FinetuneConfig`): the data, the base model, the task's own settings, and the
``optimizer`` / ``schedule`` / ``training`` sections every training run shares (:mod:`..training.sections`).

A fine-tuning config file (JSON or YAML; ``--config``) holds these keys, or a ``finetune:`` block holding them (so
a train config can carry one)::

    task: segment                 # or classify
    data: cases/                  # manifest, folder of pairs, one .seg.nrrd (relative to the file)
    class_map: {liver: liver, "kidney_*": kidney}
    optimizer: {lr: 0.001}        # name adamw, weight_decay 1e-4 (the shared section's defaults)
    schedule: {name: cosine}      # fine-tuning's default
    training: {epochs: 20, batch_size: 8, early_stopping_patience: 10, grad_clip: 5.0, device: auto}

Command-line options win over the file (:func:`..commands.finetune.build_config`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from ..errors import ConfigError
from ..schema import Float, Fraction, List, Millimetres, NonNegInt, OpenFraction, PosInt, SideInt, load_mapping
from ..training.sections import FinetuneLoop, FinetuneSchedule, OptimizerConfig, check_choices, check_learning_rates

TASKS = ("classify", "segment")

#: Settings that a fine-tuning config held at its top level before they joined the shared sections.
MOVED = {"epochs": "training/epochs", "batch_size": "training/batch_size", "lr": "optimizer/lr",
         "weight_decay": "optimizer/weight_decay", "early_stopping": "training/early_stopping_patience",
         "device": "training/device"}


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run depends on (configuration as data; JSON/YAML keys are these field names).

    Data: ``data`` (manifest / folder / ``.seg.nrrd``; with ``image``, any segmentation or label map of that scan),
    ``image`` (the scan of a single segmentation given as ``data`` when their names do not pair), ``label_table``
    (``FILE.json[#KEY]`` id → name table, or a Slicer ``.ctbl``, for plain label maps without their own),
    ``class_map`` (``"a=x,b=y"``, dict or JSON file), ``label_source`` (``"segment"``: class from the segment name;
    ``"case"``: the case's label), ``val_cases`` / ``val_fraction`` (split by case) or ``val_slab`` (``[start,
    stop)`` slices of a one-case data set at the training spacing, in the package's orientation: RAS unless the
    base says otherwise, slice 0 the most inferior; inside the volume).
    Model: ``base`` (package id, ``ID@VERSION`` or path; ``None``: from scratch with ``arch`` / ``arch_kwargs``; an id
    alone passes over the versions fine-tuned from it on this data set: :func:`.lineage.resolve_base`),
    ``freeze_encoder``, output ``id`` / ``version`` / ``dest`` (catalog root; default the user catalog).
    Training: the shared sections ``optimizer``, ``schedule`` (cosine) and ``training`` (epochs 20, batch size 8,
    global and split over DDP ranks, early stopping after 10 epochs without improvement (0: off), gradient norm
    clipped at 5, device), ``seed``, ``work_dir`` (checkpoints; default a folder keyed by data, base and settings
    but not the epochs, so a re-run with more epochs continues), ``resume``.
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
    freeze_encoder: bool = False
    seed: NonNegInt = 0
    work_dir: str | None = None
    resume: bool = True
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: FinetuneSchedule = field(default_factory=FinetuneSchedule)
    training: FinetuneLoop = field(default_factory=FinetuneLoop)
    spacing_mm: List(Millimetres, 3, 3) | None = None
    patch_size: List(SideInt, 3, 3) | None = None
    patches_per_epoch: Annotated[PosInt, Field(le=1_000_000)] = 32
    normalize: dict[str, Any] | None = None
    strong_augmentation: bool = True
    min_component_fraction: Fraction = 0.1
    roi_size: List(SideInt, 3, 3) | None = None
    margin_mm: Annotated[Float, Field(ge=0, le=1000)] = 10.0
    roi_size_mm: Millimetres | None = None
    mask_channel: bool = False
    samples_per_segment: Annotated[PosInt, Field(le=10_000)] = 4
    jitter_mm: Annotated[Float, Field(ge=0, le=1000)] = 5.0
    negatives: Annotated[NonNegInt, Field(le=10_000)] = 0
    command: str | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str | Path | None = None) -> "FinetuneConfig":
        """Build from a plain dict (a config file's content); unknown keys are an error naming them."""
        from ..schema import read_config

        if isinstance(raw, dict):
            moved = [k for k in MOVED if k in raw]
            if moved:
                raise ConfigError(f"{moved[0]!r} is a setting of a shared section now: write {MOVED[moved[0]]} "
                                  f"({MOVED[moved[0]].split('/')[0]}: {{{MOVED[moved[0]].split('/')[1]}: ...}})",
                                  source)
        cfg = read_config(cls, raw, source, noun="fine-tuning setting")
        for section in ("optimizer", "schedule", "training"):
            check_choices(getattr(cfg, section), section, source)
        check_learning_rates(cfg.optimizer, cfg.schedule, source)
        if cfg.arch_kwargs and cfg.arch:
            from ..models.registry import check_kwargs
            try:
                check_kwargs(cfg.arch, cfg.arch_kwargs)
            except ConfigError as exc:
                raise ConfigError(f"arch_kwargs: {exc.problem}", source) from None
        return cfg

    def validate(self) -> None:
        """The rules that tie settings together (each setting's own range is checked by its type when read)."""
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {TASKS}, not {self.task!r}")
        if not self.data:
            raise ConfigError("no data given (--data MANIFEST|FOLDER|FILE.seg.nrrd)")
        if self.val_slab is not None and (len(self.val_slab) != 2 or self.val_slab[1] <= self.val_slab[0]):
            raise ConfigError(f"val_slab must be [start, stop) with stop > start, got {self.val_slab}")
        if self.arch:
            from ..models.registry import input_kind

            # both tasks train on 3D crops (patches or ROI boxes): a 2D network fails on the first batch
            if input_kind(self.arch) == "slices2d":
                examples = "monai_unet, monai_segresnet" if self.task == "segment" else "simple_cnn3d, resnet3d"
                raise ConfigError(f"--arch {self.arch} is a 2D (slice) network; --task {self.task} trains on 3D "
                                  f"crops of the volumes: choose a 3D one (e.g. {examples})")
        from ..packages.package import check_version, is_plain_name

        # checked here, not when the package is saved after training (whether a catalog already holds the version
        # is checked once the id is known: finetune.check_output_version)
        if self.id is not None and not is_plain_name(self.id):
            raise ConfigError(f"--id {self.id!r} must be a plain name (letters, digits, '.', '_', '-'; no path "
                              "parts)")
        if self.version is not None:
            check_version(self.version, "--version")
        if self.dest:
            from ..io import check_output_dir

            check_output_dir(self.dest, "--dest")


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
