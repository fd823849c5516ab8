"""The config sections every training run shares: ``optimizer``, ``schedule`` and the loop settings.

``meddeeprecog train`` configs and ``meddeeprecog finetune`` configs both hold these section types under the same
keys (``optimizer:``, ``schedule:``, ``training:``), and the one epoch loop (:func:`.loop.fit`) reads them as they
are. What differs between the two is only their defaults: fine-tuning's sections (:class:`FinetuneSchedule`:
cosine; :class:`FinetuneLoop`: 20 epochs, batch 8, early stopping after 10 epochs, gradient norm clipped at 5) are
the same types with other defaults, each declared once, here.

Every field is validated once, by its annotation (through :func:`..schema.read_config`); the names that must be one
of a few words are checked by :func:`check_choices`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, Mapping

from pydantic import Field

from ..contract import FINETUNE_EPOCHS, MAX_EPOCHS
from ..devices import DEVICE_CHOICES
from ..errors import ConfigError
from ..schema import MAX_LEARNING_RATE, Fraction, LearningRate, NonNegFloat, NonNegInt, OpenFraction, PosFloat, PosInt

#: Training epochs: a whole number from 1 to ``contract.MAX_EPOCHS``.
Epochs = Annotated[PosInt, Field(le=MAX_EPOCHS)]
#: Samples per optimiser step (the global batch; split over DDP processes).
BatchSize = Annotated[PosInt, Field(le=65_536)]


@dataclass
class OptimizerConfig:
    """``optimizer:``: ``name`` adam | adamw | sgd, learning rate ``lr``, ``weight_decay`` (L2), SGD ``momentum``."""

    name: str = "adamw"
    lr: LearningRate = 1e-3
    weight_decay: NonNegFloat = 1e-4
    momentum: Fraction = 0.9


@dataclass
class ScheduleConfig:
    """``schedule:``: the learning rate per epoch (see :func:`.loop.make_scheduler`).

    ``name`` none | step (times ``gamma`` every ``step_size`` epochs) | cosine (down to ``min_lr``) | plateau
    (times ``factor`` after ``patience`` epochs without improvement); ``warmup_epochs`` ramps up linearly first.
    """

    name: str = "none"
    step_size: PosInt = 10
    gamma: PosFloat = 0.1
    factor: OpenFraction = 0.5
    patience: NonNegInt = 3
    min_lr: Annotated[NonNegFloat, Field(le=MAX_LEARNING_RATE)] = 0.0
    warmup_epochs: Annotated[NonNegInt, Field(le=MAX_EPOCHS)] = 0


@dataclass
class LoopConfig:
    """The loop settings of a ``training:`` section.

    Attributes:
        epochs: epochs to train (a resumed run continues up to this number).
        batch_size: samples per optimiser step.
        early_stopping_patience: stop after this many epochs without improvement of the monitored metric
            (``None`` or 0: never).
        grad_clip: clip the gradient norm to this value (``None``: no clipping).
        ema_decay: validate, select and return an exponential moving average of the weights (``None``: off).
        amp: mixed precision on CUDA (``auto`` = on when training on CUDA).
        compile: ``torch.compile`` the training steps (``auto``: 3D networks on the CPU in runs long enough to pay
            the compile back; the rule and its measurements are in :mod:`.compilation`).
        device: ``auto`` | ``cpu`` | ``cuda`` (resolved by :func:`..devices.resolve_device`).
    """

    epochs: Epochs = 10
    batch_size: BatchSize = 32
    early_stopping_patience: NonNegInt | None = None
    grad_clip: PosFloat | None = None
    ema_decay: Fraction | None = None
    amp: Literal["auto"] | bool = "auto"
    compile: Literal["auto"] | bool = "auto"
    device: str = "auto"


@dataclass
class FinetuneSchedule(ScheduleConfig):
    """Fine-tuning's ``schedule:``: cosine unless the config says otherwise."""

    name: str = "cosine"


@dataclass
class FinetuneLoop(LoopConfig):
    """Fine-tuning's ``training:``: a few labelled cases, so a short run that stops early and clips gradients."""

    epochs: Epochs = FINETUNE_EPOCHS
    batch_size: BatchSize = 8
    early_stopping_patience: NonNegInt | None = 10
    grad_clip: PosFloat | None = 5.0

#: Validation metrics a run may select epochs on, and whether higher is better (``last``: no selection, the final
#: epoch is kept; ``dice``: segmentation fine-tuning).
HIGHER_IS_BETTER = {"auc": True, "balanced_accuracy": True, "accuracy": True, "f1": True, "loss": False,
                    "last": True, "dice": True}
#: The monitors of a classifier's training run (every metric above but segmentation's Dice).
CLASSIFIER_MONITORS = tuple(m for m in HIGHER_IS_BETTER if m != "dice")

#: The words a section field may hold: ``{(section class, field): choices}``.
CHOICES: dict[tuple[type, str], tuple[str, ...]] = {
    (OptimizerConfig, "name"): ("adam", "adamw", "sgd"),
    (ScheduleConfig, "name"): ("none", "step", "cosine", "plateau"),
    (LoopConfig, "device"): DEVICE_CHOICES,
}


def check_choices(section: Any, where: str, source: Any = None,
                  choices_by_field: Mapping[tuple[type, str], tuple[str, ...]] = CHOICES) -> None:
    """Refuse a section field that is not one of its words (``optimizer/name is 'x'; choose one of ...``);
    ``choices_by_field``: the table to check against (a config adds its own sections' words to :data:`CHOICES`)."""
    for (cls, name), choices in choices_by_field.items():
        if isinstance(section, cls) and getattr(section, name) not in choices:
            raise ConfigError(f"{where}/{name} is {getattr(section, name)!r}; choose one of "
                              f"{', '.join(sorted(choices))}", source)


def check_learning_rates(optimizer: OptimizerConfig, schedule: ScheduleConfig, source: Any = None) -> None:
    """Refuse a ``schedule/min_lr`` above ``optimizer/lr`` for the schedules that use it (cosine, plateau): the
    decay towards it would raise the learning rate instead."""
    if schedule.name in ("cosine", "plateau") and float(schedule.min_lr) > float(optimizer.lr):
        raise ConfigError(f"schedule/min_lr ({schedule.min_lr:g}) is above optimizer/lr ({optimizer.lr:g}): the "
                          f"{schedule.name} schedule lowers the learning rate towards min_lr; give a min_lr below lr",
                          source)
