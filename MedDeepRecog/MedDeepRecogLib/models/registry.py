"""The name -> architecture table behind :func:`build_model` (see the package docstring)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch.nn as nn

from ..errors import ConfigError


@dataclass(frozen=True)
class ArchSpec:
    """A registered architecture.

    Attributes:
        factory: ``factory(**kwargs) -> nn.Module``.
        target_layer: Grad-CAM module path, or a function ``kwargs -> path`` when it depends on the kwargs.
        input_kind: ``"slices2d"`` or ``"volume3d"`` (the package ``input.kind`` it expects; ``"as member"`` for
            the ensemble).
        description: one line for listings.
    """

    factory: Callable[..., nn.Module]
    target_layer: str | Callable[[dict], str]
    input_kind: str
    description: str


_REGISTRY: dict[str, ArchSpec] = {}


def register_model(name: str, target_layer: str | Callable[[dict], str], input_kind: str, description: str = ""):
    """Decorator registering ``factory`` under ``name``."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = ArchSpec(factory, target_layer, input_kind, description or (factory.__doc__ or "").strip()
                                   .splitlines()[0])
        return factory

    return wrap


#: Other parts register their own networks (segmentation, fusion); imported when a name is not yet known.
EXTENSION_MODULES = ("..finetune.seg_models", "..fusion.models")


def _spec(name: str) -> ArchSpec:
    _ensure_loaded()
    if name not in _REGISTRY:
        _load_extensions()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown architecture {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the architecture ``name`` (e.g. ``build_model("simple_cnn3d", in_channels=1, num_classes=2)``)."""
    spec = _spec(name)
    try:
        return spec.factory(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"architecture {name!r}: bad keyword arguments {sorted(kwargs)} ({exc})") from None


def default_target_layer(name: str, **kwargs: Any) -> str:
    """Module path Grad-CAM should hook for ``name`` built with ``kwargs``."""
    target = _spec(name).target_layer
    return target(kwargs) if callable(target) else target


def input_kind(name: str) -> str:
    """``"slices2d"`` or ``"volume3d"``."""
    return _spec(name).input_kind


def available_models() -> dict[str, dict[str, str]]:
    """``{name: {"input_kind", "description"}}`` for every registered architecture (other parts' included)."""
    _ensure_loaded()
    _load_extensions()
    return {n: {"input_kind": s.input_kind, "description": s.description} for n, s in sorted(_REGISTRY.items())}


def _ensure_loaded() -> None:
    # importing the modules runs their @register_model decorators
    from . import attention_cnn, cnn_lstm, ensemble, monai_nets, simple_cnn  # noqa: F401


def _load_extensions() -> None:
    import importlib
    for mod in EXTENSION_MODULES:
        try:
            importlib.import_module(mod, __package__)
        except ImportError:  # that part is not installed / not written yet
            pass
