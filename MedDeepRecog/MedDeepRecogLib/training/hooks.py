"""What other parts plug into a training run, and the config blocks that switch them on.

``training/`` names nothing that lives above it. A part that adds to training (adversarial training in
``robustness/``) registers a :class:`ConfigBlock` under its own top-level key of the training config
(:func:`register_config_block`, run when that part is imported). Then

- :func:`.config.config_from_dict` accepts that key, validates the block with the part's ``validate`` (an error
  names the block and the config file) and keeps it in ``TrainConfig.blocks``;
- :func:`.train.run_training` asks the part for the block's :class:`RunHooks` (``hooks(block, config)``):
  a ``check`` run before training (the block's files, refused up front), a ``batch_transform`` for the loop
  (:class:`.loop.Hooks`) and a ``before_save`` that adds to the package (``model.json`` entries, model-card
  sections, files) before the one save.

A config that holds a block no imported part registered is refused as an unknown key. The command line imports
the parts that register blocks (``commands/train.py``), so ``meddeeprecog train`` knows all of them.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping


@dataclass
class PackageDraft:
    """The package a run is about to save, which ``before_save`` hooks may add to.

    Attributes:
        model: the trained network (CPU, eval mode).
        meta: ``model.json`` as it will be written (add keys; ``provenance`` may get entries).
        card_sections: Markdown appended to ``MODEL_CARD.md`` in order.
        extra_files: more files for the package folder, ``{name: text | bytes | path}``.
        data: the run's :class:`.data.TrainValData` (train and validation arrays, as the model sees them).
        config: the run's :class:`.config.TrainConfig`.
    """

    model: Any
    meta: dict
    data: Any
    config: Any
    card_sections: list[str] = field(default_factory=list)
    extra_files: dict[str, Any] = field(default_factory=dict)

    @contextmanager
    def staged_package(self) -> Iterator[Any]:
        """The draft saved as it stands to a temporary folder and loaded (a ``ModelPackage``), for a hook that
        measures the model as a user will run it; the folder is removed afterwards."""
        from ..packages import load_package, save_package

        staging = Path(tempfile.mkdtemp(prefix="meddeeprecog-staged-"))
        try:
            yield load_package(save_package(self.model, {k: v for k, v in self.meta.items() if k != "weights"},
                                            staging, extra_files=dict(self.extra_files)))
        finally:
            shutil.rmtree(staging, ignore_errors=True)


@dataclass
class RunHooks:
    """A part's contribution to one training run.

    Attributes:
        batch_transform: ``(model, batch, info) -> batch`` on every training batch (see :class:`.loop.Hooks`).
        before_save: ``(draft, progress) -> None``, on the writing rank only, before the package is saved.
        check: ``() -> None``, before training starts and before the run folder is made: refuses (``ConfigError``,
            naming the setting) what ``before_save`` would only find out after training (files the block names).
    """

    batch_transform: Callable[[Any, Any, dict], Any] | None = None
    check: Callable[[], None] | None = None
    before_save: Callable[[PackageDraft, Callable[..., None]], None] | None = None


@dataclass(frozen=True)
class ConfigBlock:
    """A top-level training-config block that another part owns.

    Attributes:
        key: the block's key in the config file.
        validate: ``raw block -> block to keep`` (``None`` to switch it off); raises ``ConfigError`` naming the
            problem (the file is added by the config reader).
        hooks: ``(block, config) -> RunHooks`` for a run of a config holding the block.
    """

    key: str
    validate: Callable[[Any], Any]
    hooks: Callable[[Any, Any], RunHooks]


_BLOCKS: dict[str, ConfigBlock] = {}


def register_config_block(block: ConfigBlock) -> ConfigBlock:
    """Make ``block.key`` a known training-config key (registering the same key again replaces it)."""
    _BLOCKS[block.key] = block
    return block


def config_blocks() -> Mapping[str, ConfigBlock]:
    """The registered blocks by key."""
    return dict(_BLOCKS)


def run_hooks(blocks: Mapping[str, Any], config: Any) -> list[RunHooks]:
    """The :class:`RunHooks` of every block a config holds, in the config's order."""
    return [_BLOCKS[key].hooks(value, config) for key, value in blocks.items() if value is not None]
