"""Training configs (JSON or YAML) validated strictly: an unknown key is an error naming the key and the file.

Layout (every section optional except ``id``, ``data``, ``model``)::

    id: adrenal-mass-3d            # package id; version: "1.0.0" (MAJOR.MINOR.PATCH that no catalog holds for
                                   # the id; default: the next version free in every catalog)
    description: "…"; modality: CT; seed: 0; out: runs/adrenal   # output dir (or --out)
    data:   {path, format: npz|folder, kind: volume3d|slices2d, train_split: train, val_split: val,
             val_fraction: 0.2 (npz with only images/labels: last fraction of each class, file order),
             labels_csv, class_names, intensity_range: [0, 255], size: [28, 28, 28], max_train: null}
             # folder: labels.csv columns file, label; optional group (patient; folds keep a group together, as a
             # .npz's train_groups) and split (train_split/val_split per row; needed with group: a tail validation
             # would cut groups). An image listed twice is refused; volumes are read as classify reads them (LPS).
    model:  {name: simple_cnn3d, kwargs: {...},          # registry name; in_channels/num_classes filled in
             init: null}                                  # weights file the networks start from (name/shape match)
    input:  {spacing_mm, pipeline: {steps: [...]}, content: binary_mask,   # recorded in the package (kind/size/channels
             slices: {percentiles, percentile_target, crop_foreground, ct_window, ...},  # from data); slices2d only:
             slices_as_stored: false}   # slices2d images are standardised as classify's slices (input/slices, default
                                        # {}: see data.training_slices); true trains on them as stored (body-region.yaml)
    augmentation: {flip: {prob, axes}, rotate: {prob, degrees}, rotate90: {prob, axes}, zoom: {prob, min, max},
                   noise: {prob, std}, intensity_shift: {prob, offset}, gamma: {prob, min, max},
                   mixup: {prob, alpha}}  # mixup: classifiers only (it mixes the labels too)
    optimizer: {name: adam|adamw|sgd, lr, weight_decay, momentum}      # sections shared with fine-tuning
    schedule:  {name: none|step|cosine|plateau, step_size, gamma, factor, patience, min_lr, warmup_epochs}
    training:  {epochs, batch_size, early_stopping_patience, grad_clip, ema_decay, amp: auto|true|false,
                compile: auto|true|false, device: auto|cpu|cuda,  # (the shared loop settings, training/sections.py)
                l1, class_weights: auto|none|[w...], label_smoothing, monitor: auc,
                ensemble: 1,                              # N > 1: a seed ensemble of N independently trained members
                folds: 0,                                 # K >= 2: a cross-validation ensemble (see training/train.py)
                refit: 0,                                 # N >= 2 (with folds): the package is N members trained on
                                                          # the whole train split; the folds only estimate the recipe
                prior_shift: none,                        # balanced_accuracy|accuracy (with folds): class offsets
                                                          # fitted out of fold (uncertainty/calibration.py)
                test_time_flip: null}                     # [axes] (ensembles): the package also sees each input
                                                          # mirrored along those spatial axes, probabilities averaged
    explain: {methods: [...], target_layer: ...}          # optional, copied to the package
    domain: {quantile: 0.95, negatives: [...]}            # out-of-domain check (training/domain.py)
    localisation: [{name, scan, lesion}, ...]            # heatmap scored on lesion labels (a block inference/localisation.py registers)
    placement: {bands: [0.1, 0.2]}                        # heatmap at the image border on val (inference/placement.py)
    card: {intended_use: text, not_for: [text, ...]}      # the model card's use statements (model.json "use")
    <block>: {...}                                        # a block another part registered (training/hooks.py),
                                                          # e.g. robustness's adversarial training
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

from pydantic import Field

from ..errors import ConfigError
from ..schema import (Float, Fraction, List, Millimetres, NonNegFloat, NonNegInt, OpenFraction, PosFloat, PosInt, SideInt,
                      load_mapping, override_sections, read_config, resolve_relative)
from .hooks import config_blocks
from .sections import CHOICES as SECTION_CHOICES
from .sections import (CLASSIFIER_MONITORS, LoopConfig, OptimizerConfig, ScheduleConfig, check_choices,
                       check_learning_rates)


@dataclass
class DataConfig:
    path: str = ""
    format: str = "auto"
    kind: str = "volume3d"
    train_split: str = "train"
    val_split: str = "val"
    val_fraction: OpenFraction = 0.2
    labels_csv: str | None = None
    class_names: List(str, 2) | None = None
    intensity_range: List(Float, 2, 2) | None = None
    size: List(SideInt, 2, 3) | None = None
    max_train: PosInt | None = None


@dataclass
class ModelConfig:
    name: str = ""
    kwargs: dict = field(default_factory=dict)
    init: str | None = None  # weights file every network starts from (training/init_weights.py)


@dataclass
class InputConfig:
    spacing_mm: List(Millimetres, 2, 3) | None = None
    pipeline: dict | None = None
    content: str | None = None  # "binary_mask": classify refuses grey-level scans (inference.model_input)
    # slices2d: how a slice is standardised (inference.model_input.SLICE_DEFAULTS keys). The training images go
    # through the same standardise_slices as every slice at inference (unset: its defaults, recorded as {}), and the
    # package records it: see data.training_slices.
    slices: dict | None = None
    # slices2d: train on the images as stored (data/intensity_range scaling only), not standardised as classify
    # standardises; for image sets already standardised so (MedNIST's 64x64 crops: configs/body-region.yaml)
    slices_as_stored: bool = False


@dataclass
class TrainingConfig(LoopConfig):
    """``training:``: the loop settings every run shares (:class:`.sections.LoopConfig`) plus the classifier's
    loss (``l1``, ``class_weights``, ``label_smoothing``), the selection metric and ensembles."""

    l1: NonNegFloat = 0.0
    class_weights: Literal["auto", "none"] | List(PosFloat, 2) = "auto"
    label_smoothing: Fraction = 0.0
    monitor: str = "auc"
    ensemble: Annotated[PosInt, Field(le=100)] = 1  # > 1: N members, seeds seed..
    folds: Annotated[NonNegInt, Field(le=100)] = 0  # >= 2: K members, member i trains
    # on the train split minus fold i and selects on fold i
    refit: Annotated[NonNegInt, Field(le=100)] = 0  # >= 2 with folds: the K fold members give the
    # out-of-fold estimate, then N members (seeds seed+K..) train on the whole train split and form the package
    prior_shift: Literal["none", "balanced_accuracy", "accuracy"] = "none"  # with folds: class log-odds offsets
    # fitted on the out-of-fold probabilities for that metric, applied by the packaged ensemble
    test_time_flip: List(Annotated[NonNegInt, Field(le=2)], 1, 3) | None = None  # spatial axes (as augmentation/
    # flip's) along which the packaged ensemble also sees each input mirrored, probabilities averaged
    # (models/ensemble.py); the out-of-fold and val figures are of that averaged prediction


#: The largest magnitude an augmentation setting may take (degrees go to 180, zoom and gamma factors to a few).
AUG_MAX_MAGNITUDE = 360.0
AUG_KEYS = {"flip": {"prob", "axes"}, "rotate": {"prob", "degrees"}, "rotate90": {"prob", "axes"},
            "zoom": {"prob", "min", "max"}, "noise": {"prob", "std"}, "intensity_shift": {"prob", "offset"},
            "gamma": {"prob", "min", "max"}, "mixup": {"prob", "alpha"}}


@dataclass
class TrainConfig:
    id: str = ""
    version: str | None = None
    description: str = ""
    modality: str = "any"
    seed: NonNegInt = 0
    out: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    input: InputConfig = field(default_factory=InputConfig)
    augmentation: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    explain: dict | None = None
    domain: dict | None = None  # out-of-domain check fitted after training (training/domain.py)
    card: dict | None = None  # model card text: {intended_use, not_for: [...]} (copied to model.json "use")
    blocks: dict[str, Any] = field(default_factory=dict)  # registered blocks (training/hooks.py) by their key
    source: str | None = None  # the config file (set by load_config)

    def to_dict(self) -> dict:
        """The config as its file would hold it (registered blocks under their own keys)."""
        from dataclasses import asdict
        d = asdict(self)
        d.pop("source", None)
        d.update(d.pop("blocks"))
        return d


#: The words this config's own sections may hold, besides the shared sections' (:data:`.sections.CHOICES`).
CHOICES = {**SECTION_CHOICES, (DataConfig, "format"): ("auto", "npz", "folder"),
           (DataConfig, "kind"): ("volume3d", "slices2d"), (TrainingConfig, "monitor"): CLASSIFIER_MONITORS}


def _check_keys(raw: Mapping, allowed: set[str], where: str, source: Any) -> None:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(raw).__name__}", source)
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"unknown key {'/'.join(filter(None, [where, unknown[0]]))!r}"
                          f"{' (and ' + ', '.join(unknown[1:]) + ')' if unknown[1:] else ''}; "
                          f"allowed in {where or 'the top level'}: {', '.join(sorted(allowed))}", source)


def _check_augmentation_values(augmentation: Mapping[str, Any], dims: int, source) -> None:
    """Refuse augmentation settings whose numbers are in range but mean nothing: axes that ``dims``-D images lack
    (``flip/axes``, ``rotate90/axes``: two distinct spatial axes), factors that are not positive (``zoom``,
    ``gamma`` min/max) and a negative noise ``std``."""
    for name in ("flip", "rotate90"):
        axes = (augmentation.get(name) or {}).get("axes")
        if axes is None:
            continue
        axes = axes if isinstance(axes, list) else [axes]
        need = 2 if name == "rotate90" else None
        if not all(float(a).is_integer() and 0 <= a < dims for a in axes) or (need and len(set(axes)) != need) \
                or not axes:
            raise ConfigError(f"augmentation/{name}/axes: {'two different' if need else 'whole-number'} spatial axes "
                              f"from 0 to {dims - 1} ({dims}D images), got {axes!r}", source)
    for name in ("zoom", "gamma"):
        for key in ("min", "max"):
            value = (augmentation.get(name) or {}).get(key)
            if isinstance(value, (int, float)) and value <= 0:
                raise ConfigError(f"augmentation/{name}/{key}: a factor above 0, got {value!r}", source)
    std = (augmentation.get("noise") or {}).get("std")
    if isinstance(std, (int, float)) and std < 0:
        raise ConfigError(f"augmentation/noise/std: a standard deviation of 0 or more, got {std!r}", source)


def config_from_dict(raw: Mapping[str, Any], source: str | Path | None = None) -> TrainConfig:
    """Build a :class:`TrainConfig` from a dict through the one schema reader (:func:`..schema.read_config`):
    unknown keys, wrong types, out-of-range values and lists given as single words are errors naming the key and
    the file; then the blocks with their own rules (augmentation, card, domain, the blocks other
    parts registered (localisation, adversarial) in :mod:`.hooks`) and the cross-field rules below."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config must be a mapping of settings, got {type(raw).__name__}", source)
    registered = config_blocks()
    blocks = {key: raw[key] for key in raw if key in registered}
    cfg = read_config(TrainConfig, {k: v for k, v in raw.items() if k not in blocks}, source, skip=("source", "blocks"))
    cfg.source = None if source is None else str(source)
    for key, value in blocks.items():
        try:
            kept = registered[key].validate(value)
        except ConfigError as exc:
            raise ConfigError(exc.problem, source) from None
        if kept is not None:
            cfg.blocks[key] = kept
    for sec in ("data", "optimizer", "schedule", "training"):
        check_choices(getattr(cfg, sec), sec, source, CHOICES)
    _check_keys(cfg.augmentation, set(AUG_KEYS), "augmentation", source)
    for name, params in cfg.augmentation.items():
        _check_keys(params or {}, AUG_KEYS[name], f"augmentation/{name}", source)
        for key, value in (params or {}).items():
            values = value if isinstance(value, list) else [value]
            if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                raise ConfigError(f"augmentation/{name}/{key}: expected a number or a list of numbers, got "
                                  f"{value!r}", source)
            if not all(math.isfinite(v) and abs(v) <= AUG_MAX_MAGNITUDE for v in values):
                raise ConfigError(f"augmentation/{name}/{key}: expected finite numbers of magnitude at most "
                                  f"{AUG_MAX_MAGNITUDE:g}, got {value!r}", source)
            if key == "prob" and not 0.0 <= float(value if not isinstance(value, list) else -1) <= 1.0:
                raise ConfigError(f"augmentation/{name}/prob: a probability between 0 and 1, got {value!r}", source)
            if key == "alpha" and not (isinstance(value, (int, float)) and 0.0 < float(value) <= 10.0):
                raise ConfigError(f"augmentation/{name}/alpha: a Beta distribution parameter in (0, 10], got "
                                  f"{value!r}", source)
    for name, params in cfg.augmentation.items():
        low, high = (params or {}).get("min"), (params or {}).get("max")
        if isinstance(low, (int, float)) and isinstance(high, (int, float)) and low > high:
            raise ConfigError(f"augmentation/{name}: min ({low}) is above max ({high})", source)
    _check_augmentation_values(cfg.augmentation, len(cfg.data.size) if cfg.data.size is not None else
                               2 if cfg.data.kind == "slices2d" else 3, source)
    check_learning_rates(cfg.optimizer, cfg.schedule, source)
    if "card" in raw:
        value = raw["card"]
        _check_keys(value or {}, {"intended_use", "not_for"}, "card", source)
        not_for = (value or {}).get("not_for", [])
        if not isinstance((value or {}).get("intended_use", ""), str) or not isinstance(not_for, list) \
                or not all(isinstance(v, str) for v in not_for):
            raise ConfigError("card must be {intended_use: text, not_for: [text, ...]}", source)
        cfg.card = dict(value) if value else None
    if "domain" in raw:
        from .domain import check_domain_block
        check_domain_block(raw["domain"], source)
        cfg.domain = dict(raw["domain"]) if raw["domain"] else None
    if cfg.data.class_names is not None and len(set(cfg.data.class_names)) != len(cfg.data.class_names):
        raise ConfigError(f"data/class_names has duplicates: {cfg.data.class_names}", source)
    if cfg.data.intensity_range is not None and not cfg.data.intensity_range[0] < cfg.data.intensity_range[1]:
        raise ConfigError(f"data/intensity_range must be [low, high] with low < high, got "
                          f"{cfg.data.intensity_range}", source)
    if cfg.data.size is not None:
        from ..limits import human_bytes, max_image_bytes
        n = 4
        for v in cfg.data.size:
            n *= v
        if n > max_image_bytes():
            raise ConfigError(f"data/size {cfg.data.size} is {human_bytes(n)} per image as float32, more than the "
                              f"limit of {human_bytes(max_image_bytes())}", source)
    if not cfg.id:
        raise ConfigError("config needs an 'id' (the model package id)", source)
    if cfg.version is not None:
        from ..packages import check_version

        check_version(cfg.version, "version", source)
    if not cfg.data.path:
        raise ConfigError("config needs data/path (a .npz file or an image folder)", source)
    if not cfg.model.name:
        raise ConfigError("config needs model/name (an architecture name)", source)
    from ..models import available_models
    if cfg.model.name not in available_models():
        raise ConfigError(f"model/name {cfg.model.name!r} is not a known architecture; known: "
                          f"{', '.join(available_models())}", source)
    from ..models.registry import check_kwargs
    try:
        check_kwargs(cfg.model.name, cfg.model.kwargs)
    except ConfigError as exc:
        raise ConfigError(f"model/kwargs: {exc.problem}", source) from None
    if not isinstance(cfg.training.ensemble, int) or isinstance(cfg.training.ensemble, bool) \
            or cfg.training.ensemble < 1:
        raise ConfigError(f"training/ensemble must be a whole number >= 1, got {cfg.training.ensemble!r}", source)
    folds = cfg.training.folds
    if not isinstance(folds, int) or isinstance(folds, bool) or folds < 0 or folds == 1:
        raise ConfigError(f"training/folds must be 0 (off) or a whole number >= 2, got {folds!r}", source)
    if folds and cfg.training.ensemble > 1:
        raise ConfigError("training/folds already trains one member per fold; leave training/ensemble at 1", source)
    if cfg.training.refit == 1:
        raise ConfigError("training/refit must be 0 (off) or at least 2 (the package is an ensemble of the refitted "
                          "members)", source)
    if cfg.training.refit and not folds:
        raise ConfigError("training/refit needs training/folds >= 2 (the folds estimate what the refit members "
                          "cannot: they train on every train case)", source)
    if cfg.training.prior_shift != "none" and not folds:
        raise ConfigError("training/prior_shift is fitted on out-of-fold probabilities: it needs training/folds >= 2",
                          source)
    if cfg.training.test_time_flip:
        if not (folds or cfg.training.ensemble > 1):
            raise ConfigError("training/test_time_flip is applied by an ensemble: it needs training/folds or "
                              "training/ensemble", source)
        from .augment import flipped_axes

        dims = len(cfg.data.size) if cfg.data.size is not None else 3
        unseen = sorted(set(cfg.training.test_time_flip) - flipped_axes(cfg.augmentation, dims))
        if unseen:
            raise ConfigError(f"training/test_time_flip axes {unseen} are not flipped by augmentation/flip: the "
                              f"network would be asked about mirror images it never saw", source)
        if cfg.data.size is not None and max(cfg.training.test_time_flip) >= len(cfg.data.size):
            raise ConfigError(f"training/test_time_flip axes {cfg.training.test_time_flip} do not exist in "
                              f"{len(cfg.data.size)}D images", source)
    if cfg.training.refit and cfg.training.monitor != "last":
        raise ConfigError("training/refit trains on every train case, so no split is left to select epochs on: set "
                          "training/monitor to last", source)
    if cfg.input.slices_as_stored and (cfg.data.kind != "slices2d" or cfg.input.slices is not None):
        raise ConfigError("input/slices_as_stored applies to data/kind slices2d without input/slices", source)
    if cfg.input.slices is not None:
        from ..preprocessing.slices import SLICE_DEFAULTS
        _check_keys(cfg.input.slices, set(SLICE_DEFAULTS), "input/slices", source)
        if cfg.data.kind != "slices2d":
            raise ConfigError("input/slices applies to data/kind slices2d only", source)
        if cfg.data.intensity_range is not None:
            raise ConfigError("input/slices standardises each image itself; leave data/intensity_range unset", source)
    from ..preprocessing.pipeline import pipeline_steps

    if pipeline_steps(cfg.input.pipeline) and cfg.data.intensity_range is not None:
        # the package records input/pipeline instead of the window data/intensity_range would make
        # (training.train.default_pipeline), so classify never applies the range that training would
        raise ConfigError("data/intensity_range is not applied at classify time when input/pipeline declares steps "
                          "(they replace its window): put a window step in input/pipeline and leave "
                          "data/intensity_range unset", source)
    if not 0.0 < float(cfg.data.val_fraction) < 1.0:
        raise ConfigError(f"data/val_fraction must be between 0 and 1, got {cfg.data.val_fraction}", source)
    return cfg


def load_config(path: str | Path, overrides: Mapping[str, Mapping[str, Any]] | None = None) -> TrainConfig:
    """Read a ``.json`` / ``.yaml`` / ``.yml`` training config and validate it (see module docstring).

    ``overrides``: settings that replace the file's, by section (``{"training": {"epochs": 3}}``: command-line
    options); they are validated with the rest, so a bad one is named like a bad setting in the file.
    """
    path = Path(path)
    raw = override_sections(load_mapping(path, "training config"), overrides)
    return config_from_dict(raw, path)


def resolve_data_path(cfg: TrainConfig) -> Path:
    """``data/path`` as given, else relative to the config's folder or its parent (the repository root)."""
    return resolve_relative(cfg.data.path, cfg.source, "data/path")


def resolve_init_path(cfg: TrainConfig) -> Path:
    """``model/init`` as given, else relative to the config's folder or its parent (the repository root)."""
    return resolve_relative(cfg.model.init, cfg.source, "model/init weights file")
