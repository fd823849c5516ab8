"""The one schema reader for configuration files (training configs, fine-tuning configs).

A config is a tree of dataclasses whose field annotations carry the types and ranges (``Int``, ``Pos``,
``Fraction``... below, or ``Annotated[..., Field(ge=...)]``). :func:`read_config` checks the keys (an unknown key
is named with the keys allowed there), then lets pydantic validate and convert the whole tree, and reports the
first problem as one line naming the key path (``training/epochs``) and the file. :func:`load_mapping` reads the
file itself (JSON or YAML through ``yaml.safe_load``; :func:`load_data` when the file may hold a list).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Mapping

from pydantic import BeforeValidator, Field, TypeAdapter, ValidationError

from .errors import ConfigError


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a number, not true/false")
    return value


def _whole_number(value: Any) -> Any:
    # true/false and quoted text are not whole numbers ("3" is refused: quotes in YAML mean text)
    if isinstance(value, (bool, str, bytes)):
        raise ValueError(f"expected a whole number, not {'true/false' if isinstance(value, bool) else 'text'}")
    return value


def _no_text_list(value: Any) -> Any:
    # a plain word where a list is wanted ("class_names: normal") must not become a list of its letters
    if isinstance(value, (str, bytes, Mapping)):
        raise ValueError("expected a list, not a single value")
    return value


#: Whole number (not true/false, not text; ``3.0`` is accepted as 3).
Int = Annotated[int, BeforeValidator(_whole_number)]
#: Number (not true/false; text that reads as a number is accepted: PyYAML reads ``1e-3`` as text).
Float = Annotated[float, BeforeValidator(_no_bool)]
PosInt = Annotated[int, BeforeValidator(_whole_number), Field(ge=1)]
NonNegInt = Annotated[int, BeforeValidator(_whole_number), Field(ge=0)]
PosFloat = Annotated[float, BeforeValidator(_no_bool), Field(gt=0, allow_inf_nan=False)]
NonNegFloat = Annotated[float, BeforeValidator(_no_bool), Field(ge=0, allow_inf_nan=False)]
#: The largest learning rate accepted: far above any that trains; larger ones overflow the optimiser's state.
MAX_LEARNING_RATE = 10.0
#: A learning rate: above 0, at most :data:`MAX_LEARNING_RATE`.
LearningRate = Annotated[float, BeforeValidator(_no_bool), Field(gt=0, le=MAX_LEARNING_RATE, allow_inf_nan=False)]
#: In [0, 1).
Fraction = Annotated[float, BeforeValidator(_no_bool), Field(ge=0, lt=1)]
#: In (0, 1).
OpenFraction = Annotated[float, BeforeValidator(_no_bool), Field(gt=0, lt=1)]
#: A side of an image or network input in voxels.
SideInt = Annotated[int, BeforeValidator(_whole_number), Field(ge=1, le=4096)]
#: A size in mm.
Millimetres = Annotated[float, BeforeValidator(_no_bool), Field(gt=0, le=1000, allow_inf_nan=False)]


def List(item: Any, min_length: int = 0, max_length: int | None = None) -> Any:  # noqa: N802 (a type factory)
    """``list[item]`` that refuses a single word or mapping in place of the list."""
    return Annotated[list[item], BeforeValidator(_no_text_list), Field(min_length=min_length, max_length=max_length)]


def load_data(path: str | Path, what: str = "config") -> Any:
    """Parse a ``.json`` / ``.yaml`` / ``.yml`` file (YAML through ``yaml.safe_load``); an empty file is ``None``.

    The one reader of configuration files (training and fine-tuning configs, decision rules, pipelines): a missing,
    unreadable or malformed file is one :class:`ConfigError` line naming ``what`` and the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found", path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {what} ({exc})", path) from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml
            return yaml.safe_load(text)
        return json.loads(text)
    except Exception as exc:  # yaml.YAMLError / json.JSONDecodeError
        kind = "YAML" if path.suffix.lower() in (".yaml", ".yml") else "JSON"
        raise ConfigError(f"{what} is not valid {kind} ({' '.join(str(exc).split())[:200]})", path) from None


def load_mapping(path: str | Path, what: str = "config") -> dict:
    """Parse a ``.json`` / ``.yaml`` / ``.yml`` file of settings into a dict (an empty file is ``{}``)."""
    raw = load_data(path, what)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} must be a mapping of settings, got {type(raw).__name__}", path)
    return raw


def override_sections(raw: dict, overrides: Mapping[str, Mapping[str, Any]] | None) -> dict:
    """Lay command-line settings over a config's sections in place (``{"training": {"epochs": 3}}``): each given
    setting (``None``: not given) replaces that one setting of the file's section; returns ``raw``."""
    for section, values in (overrides or {}).items():
        values = {k: v for k, v in values.items() if v is not None}
        if values:
            given = raw.get(section)
            raw[section] = {**(given if isinstance(given, Mapping) else {}), **values}
    return raw


@lru_cache(maxsize=None)
def _adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)


def _dataclass_fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: hints.get(f.name) for f in dataclasses.fields(cls) if f.init}


def _nested(hint: Any) -> type | None:
    """The dataclass a field holds (``DataConfig`` / ``DataConfig | None``), else None."""
    for cand in (hint, *typing.get_args(hint)):
        if isinstance(cand, type) and dataclasses.is_dataclass(cand):
            return cand
    return None


def check_keys(raw: Any, cls: type, where: str, source: Any, skip: tuple[str, ...] = (), noun: str = "key") -> None:
    """Refuse keys ``cls`` does not have, at every nested dataclass level, naming the key and those allowed."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where or 'config'} must be a mapping of settings, got {type(raw).__name__} {raw!r}",
                          source)
    fields = {k: v for k, v in _dataclass_fields(cls).items() if k not in skip}
    unknown = sorted(str(k) for k in set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"unknown {noun} {'/'.join(filter(None, [where, unknown[0]]))!r}"
                          f"{' (and ' + ', '.join(unknown[1:]) + ')' if unknown[1:] else ''}; "
                          f"allowed in {where or 'the top level'}: {', '.join(sorted(fields))}", source)
    for key, hint in fields.items():
        sub = _nested(hint)
        if sub is not None and raw.get(key) is not None:
            check_keys(raw[key], sub, "/".join(filter(None, [where, key])), source)


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def read_config(cls: type, raw: Mapping[str, Any], source: Any = None, *, where: str = "",
                skip: tuple[str, ...] = (), noun: str = "key") -> Any:
    """Validate ``raw`` against dataclass ``cls`` (keys, types, ranges, lists) and return the instance.

    Sections given as ``null`` (an empty YAML block) take their defaults. The first problem is raised as a
    :class:`ConfigError` naming the key path and ``source``.
    """
    check_keys(raw, cls, where, source, skip, noun)
    fields = _dataclass_fields(cls)
    clean = {k: v for k, v in raw.items() if not (v is None and _nested(fields.get(k)) is not None)}
    try:
        return _adapter(cls).validate_python(clean)
    except ValidationError as exc:
        err = exc.errors()[0]
        # drop the union-member tags pydantic adds to the location ('literal[...]', 'list[...]', 'bool', ...)
        loc = [str(p) for p in err.get("loc", ())
               if "[" not in str(p) and str(p) not in ("bool", "int", "float", "str", "none")]
        key = "/".join(filter(None, [where, *loc]))
        msg = err.get("msg", "invalid value").removeprefix("Value error, ")
        more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
        raise ConfigError(f"{key or 'config'}: {msg}, got {_describe(err.get('input'))}{more}", source) from None


def resolve_relative(raw: str, source, what: str = "data path") -> Path:
    """A data path as given, else relative to the config's folder or its parent (the repository root).
    ``what``: the setting named when it is not found (``localisation/0/scan``)."""
    p = Path(raw).expanduser()
    candidates = [p]
    if not p.is_absolute() and source:
        here = Path(source).resolve().parent
        candidates += [here / p, here.parent / p]
    for c in candidates:
        if c.exists():
            return c
    raise ConfigError(f"{what} {raw!r} not found (looked in: {', '.join(map(str, candidates))})", source)
