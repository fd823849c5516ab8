"""The name -> architecture table behind :func:`build_model` (see the package docstring)."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

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


def _spec(name: str) -> ArchSpec:
    _ensure_loaded()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown architecture {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


#: Largest whole number an architecture keyword argument may hold (channels, widths, sizes, counts).
MAX_KWARG_INT = 1 << 16


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _check_value(name: str, key: str, value: Any, default: Any, real: bool = False) -> None:
    """Type of ``value`` against the factory's default ``default``; ranges of numbers anywhere in it. ``real``: the
    keyword holds real numbers (annotated ``float``), so a whole number in it is a real number, negative ones too."""
    where = f"architecture {name!r}: {key}"
    if value is None:
        return  # the factory's own default / "none"
    if default is not None and default is not inspect.Parameter.empty:
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif isinstance(default, str):
            ok = isinstance(value, str) or value is None
        elif isinstance(default, (list, tuple)):
            ok = isinstance(value, (list, tuple)) or (isinstance(value, int) and not isinstance(value, bool))
        else:
            ok = True
        if not ok:
            raise ConfigError(f"{where} must be {_kind(default)} (like {default!r}), got {value!r}")
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, (list, tuple)):
            if len(v) > 1024:
                raise ConfigError(f"{where} lists {len(v)} values; at most 1024")
            stack.extend(v)
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, bool) or v is None or isinstance(v, str):
            continue
        elif isinstance(v, int) and not real:
            if v < 0 or v > MAX_KWARG_INT:
                raise ConfigError(f"{where} = {value!r}: whole numbers must be between 0 and {MAX_KWARG_INT}")
        elif isinstance(v, (int, float)):
            if not math.isfinite(v) or abs(v) > 1e6:
                raise ConfigError(f"{where} = {value!r}: numbers must be finite and at most 1e6 in size")
            if "dropout" in key and not 0.0 <= v < 1.0:
                raise ConfigError(f"{where} = {value!r}: a dropout rate is between 0 and 1")
        else:
            raise ConfigError(f"{where} has a value of type {type(v).__name__}; use numbers, text and lists")


def check_kwargs(name: str, kwargs: Any) -> None:
    """Types and ranges of architecture keyword arguments, before anything is built.

    Types come from the factory's own defaults (an ``int`` default wants a whole number...); every number must be
    finite, whole numbers between 0 and :data:`MAX_KWARG_INT` (except in keywords annotated as real numbers, where
    ``-1`` means ``-1.0``), dropout rates in [0, 1). Unknown keywords are named.
    """
    if not isinstance(kwargs, dict):
        raise ConfigError(f"architecture {name!r}: kwargs must be a mapping of keyword arguments, got "
                          f"{_kind(kwargs)} {kwargs!r}")
    spec = _spec(name)
    try:
        params = inspect.signature(spec.factory).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key, value in kwargs.items():
        if not isinstance(key, str):
            raise ConfigError(f"architecture {name!r}: keyword {key!r} is not a name")
        if key not in params and not takes_any and params:
            allowed = [k for k, p in params.items() if p.kind not in (inspect.Parameter.VAR_POSITIONAL,
                                                                      inspect.Parameter.VAR_KEYWORD)]
            raise ConfigError(f"architecture {name!r}: unknown keyword {key!r}; known: {', '.join(allowed)}")
        default = params[key].default if key in params else None
        annotation = str(params[key].annotation) if key in params else ""
        _check_value(name, key, value, default, real="float" in annotation)


#: Inputs this many times smaller than the activation limit (and, times the batch size, than the batch limit) skip
#: the meta forward pass (its first call costs seconds of PyTorch set-up): the networks here keep at most a few
#: hundred input-sized feature maps per sample (measured: 67x for simple_cnn3d and MONAI's UNet, 196x simple_cnn2d).
_SMALL_INPUT_FACTOR = 1024


def check_budget(model: nn.Module, name: str, input_shape: Sequence[int] | None = None,
                 batch_size: int = 1, batch_setting: str | None = None) -> dict[str, int]:
    """Parameters of ``model`` (built on the ``meta`` device: no memory) and, for ``input_shape`` (without the
    batch), the bytes of every layer's output in one forward pass at batch 1, against the limits in
    :mod:`..limits`; with ``batch_size`` (a training step's samples, ``training/batch_size``) also the step's
    inputs and activations, ``batch_size`` x that sample's bytes, refused naming ``batch_setting`` (what decides the
    batch; default ``training/batch_size``). Returns ``{"params", "activation_bytes"}`` (0 when
    not measured). A forward that the meta device cannot run is skipped (the inputs alone are then counted), and so
    is the forward for an input over :data:`_SMALL_INPUT_FACTOR` times smaller than the limits."""
    import torch

    from ..limits import MAX_BATCH_ENV, human_bytes, max_activation_bytes, max_batch_bytes, max_params

    n_params = sum(p.numel() for p in model.parameters())
    if n_params > max_params():
        raise ConfigError(f"architecture {name!r} would have {n_params:,} parameters ({human_bytes(4 * n_params)}), "
                          f"more than the limit of {max_params():,} (MEDDEEPRECOG_MAX_PARAMS)")
    act = 0
    if input_shape is not None:
        shape = [int(s) for s in input_shape]
        in_bytes = 4
        for s in shape:
            in_bytes *= s
        limit, batch_limit = max_activation_bytes(), max_batch_bytes()
        if in_bytes > limit:
            raise ConfigError(f"architecture {name!r}: input {shape} alone is {human_bytes(in_bytes)}, more than the "
                              f"activation limit of {human_bytes(limit)} (MEDDEEPRECOG_MAX_ACTIVATION_BYTES)")
        if in_bytes * _SMALL_INPUT_FACTOR <= limit and in_bytes * _SMALL_INPUT_FACTOR * batch_size <= batch_limit:
            return {"params": int(n_params), "activation_bytes": 0}  # small input: the meta forward is skipped
        total = [in_bytes]

        def hook(_module, _inp, out):
            for t in (out if isinstance(out, (tuple, list)) else [out]):
                if isinstance(t, torch.Tensor):
                    total[0] += t.numel() * t.element_size()

        handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
        try:
            with torch.no_grad():
                model.eval()(torch.zeros(1, *shape, device="meta"))
        except Exception:  # an op the meta device lacks, or a shape the network refuses: judged when it runs
            total[0] = 0
        finally:
            for h in handles:
                h.remove()
        act = total[0]
        if act > limit:
            raise ConfigError(f"architecture {name!r} on input {shape} needs about {human_bytes(act)} of activations "
                              f"for one sample, more than the limit of {human_bytes(limit)} "
                              "(MEDDEEPRECOG_MAX_ACTIVATION_BYTES); use a smaller input size or network")
        sample = act or in_bytes   # the activations count the input; unmeasured, the input is all that is known
        if batch_size * sample > batch_limit:
            raise ConfigError(f"{batch_setting or f'training/batch_size {batch_size}'}: a batch of input {shape} on "
                              f"architecture {name!r} "
                              f"needs about {human_bytes(batch_size * sample)} for the inputs and their activations "
                              f"({human_bytes(sample)} a sample), more than the limit of {human_bytes(batch_limit)} "
                              f"({MAX_BATCH_ENV}); give a smaller batch or input size")
    return {"params": int(n_params), "activation_bytes": int(act)}


def build_model(name: str, input_shape: Sequence[int] | None = None, batch_size: int = 1, *,
                batch_setting: str | None = None, **kwargs: Any) -> nn.Module:
    """Build the architecture ``name`` (e.g. ``build_model("simple_cnn3d", in_channels=1, num_classes=2)``).

    The keyword arguments are checked first (:func:`check_kwargs`), then the network is built on the ``meta``
    device (no memory) and its size checked against the parameter budget, and with ``input_shape`` (C, *spatial)
    its activations too, for one sample and for a training step of ``batch_size`` samples (:func:`check_budget`;
    ``batch_setting`` names what decides the batch); only then is it built for real.
    """
    import torch

    spec = _spec(name)
    check_kwargs(name, kwargs)
    try:
        with torch.device("meta"):
            ghost = spec.factory(**kwargs)
    except TypeError as exc:
        raise ConfigError(_bad_kwargs(name, spec.factory, kwargs, exc)) from None
    except (ValueError, RuntimeError, AssertionError, ZeroDivisionError, IndexError, KeyError) as exc:
        first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise ConfigError(f"architecture {name!r} cannot be built with {kwargs}: {first[:200]}") from None
    check_budget(ghost, name, input_shape, batch_size, batch_setting)
    del ghost
    try:
        return spec.factory(**kwargs)
    except TypeError as exc:
        raise ConfigError(_bad_kwargs(name, spec.factory, kwargs, exc)) from None


def _bad_kwargs(name: str, factory: Any, kwargs: dict, exc: Exception) -> str:
    """The line for keyword arguments ``factory`` refused: the unknown ones and those it takes, when its signature
    says (model/kwargs in a config, --arch-kwargs on the command line), else the error itself."""
    import inspect

    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = sorted(set(kwargs) - set(params)) if params and not open_ended else []
    if unknown:
        takes = sorted(k for k, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL)
        return (f"architecture {name!r} (model/kwargs or --arch-kwargs) has no setting {', '.join(map(repr, unknown))}"
                f"; it takes {', '.join(takes)}")
    return f"architecture {name!r} (model/kwargs or --arch-kwargs): {str(exc).splitlines()[0][:200]}"


def default_target_layer(name: str, **kwargs: Any) -> str:
    """Module path Grad-CAM should hook for ``name`` built with ``kwargs``."""
    target = _spec(name).target_layer
    return target(kwargs) if callable(target) else target


def input_kind(name: str) -> str:
    """``"slices2d"`` or ``"volume3d"``."""
    return _spec(name).input_kind


def available_models() -> dict[str, dict[str, str]]:
    """``{name: {"input_kind", "description"}}`` for every registered architecture (classification, segmentation,
    fusion and the ensemble)."""
    _ensure_loaded()
    return {n: {"input_kind": s.input_kind, "description": s.description} for n, s in sorted(_REGISTRY.items())}


def _ensure_loaded() -> None:
    """Import every architecture module: importing one runs its ``@register_model`` decorators.

    Plain imports, so a missing dependency of any architecture is an ``ImportError`` naming it, never an
    "unknown architecture". A new architecture module in this package is added here.
    """
    from . import (attention_cnn, cnn_lstm, ensemble, evidence_cnn, fusion_nets, monai_nets,  # noqa: F401
                   segmentation, simple_cnn)
