"""The settings of ``meddeeprecog pretrain`` (:mod:`.pretrain`), in a module without torch: the command line's
parser shows their defaults, and building the parser must stay light (the Slicer module checks its worker commands
with it in Slicer's own process)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError


@dataclass
class PretrainSettings:
    """One pretraining run's choices.

    Attributes:
        epochs: passes over the pool; batch_size: images per step (each gives two views, so 2 x batch_size
            forward passes; the last partial batch is dropped, as the loss needs negatives).
        lr, weight_decay: AdamW; the rate warms up over ``warmup_epochs`` and falls on a cosine to 0.
        temperature: of the NT-Xent softmax. embedding, projection: widths of the network's widened last layer
            and of the projection head's output. shift: largest view shift, as a fraction of the side.
        seed: of the loop (weights, shuffling) and the views.
    """

    epochs: int = 40
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 2
    temperature: float = 0.2
    embedding: int = 128
    projection: int = 64
    shift: float = 0.1
    seed: int = 0

    def check(self) -> None:
        """Refuse settings the run cannot use, naming the setting."""
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1 (got {self.epochs})")
        if self.batch_size < 2:
            raise ConfigError(f"--batch must be at least 2: each image's negatives are the batch's other images "
                              f"(got {self.batch_size})")
        from ..schema import MAX_LEARNING_RATE  # pydantic: only when a run checks its settings

        if not 0 < self.lr <= MAX_LEARNING_RATE:
            raise ConfigError(f"--lr must be above 0 and at most {MAX_LEARNING_RATE:g} (got {self.lr})")
        if not self.temperature > 0:
            raise ConfigError(f"--temperature must be above 0 (got {self.temperature})")
        if not 0 <= self.shift < 0.5:
            raise ConfigError(f"the view shift must be a fraction of the side in [0, 0.5) (got {self.shift})")
