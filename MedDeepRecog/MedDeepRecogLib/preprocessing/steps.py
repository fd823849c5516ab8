"""Registry of named preprocessing steps with typed, validated parameters.

A step is a plain function ``fn(image: sitk.Image, params) -> sitk.Image`` plus a frozen dataclass describing its
parameters. Pipelines are declared as data (``{"name": "window", "preset": "lung"}``); :func:`make_step` turns one
such dict into a :class:`Step`, checking every parameter's name, type, range and choices so a typo in a pipeline file
is reported before any voxel is touched.

Step kinds:

* ``"image"`` — returns a new image on the same grid (float32 after intensity steps);
* ``"grid"``  — returns an image on a new grid (resample, crop/pad); masks made earlier follow it (nearest neighbour);
* ``"mask"``  — returns a binary ``uint8`` mask on the image's grid, stored in the result under the step's
  ``segment`` parameter (the segment name);
  the image itself passes through unchanged unless the step's ``apply`` parameter is true.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import SimpleITK as sitk

from ..errors import ConfigError

StepFunction = Callable[[sitk.Image, Any], sitk.Image]


@dataclass(frozen=True)
class Grid:
    """The voxel grid a step runs on, as far as its settings' limits depend on it: ``size`` in voxels and
    ``spacing`` in mm, both (x, y, z)."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> "Grid":
        return cls(tuple(int(n) for n in image.GetSize()), tuple(float(s) for s in image.GetSpacing()))


#: ``check(params, grid)``: the one-line problem of these settings on this grid (None when fine), judged before
#: any step runs; ``regrid(params, grid)``: the grid a grid step makes, so later steps are judged on it.
GridCheck = Callable[[Any, Grid], "str | None"]
Regrid = Callable[[Any, Grid], Grid]


def param(default: Any, help: str, *, minimum: float | None = None, maximum: float | None = None,
          length: int | tuple[int, ...] | None = None) -> Any:
    """A dataclass field carrying its help text and numeric bounds (``length`` for fixed-length lists: one length,
    or the lengths allowed, the longest being what a single number is repeated to)."""
    return field(default=default, metadata={"help": help, "min": minimum, "max": maximum, "length": length})


@dataclass(frozen=True)
class StepSpec:
    """A registered step: its name, kind (image|grid|mask), parameter dataclass, function and one-line summary."""

    name: str
    kind: str
    params: type
    fn: StepFunction
    summary: str
    #: whether the step reads CT intensities in HU: a bool, or a function of the step's parameters
    reads_hu: bool | Callable[[Any], bool] = False
    #: the step's limits that depend on the grid (spacing, size), see :data:`GridCheck`
    check: GridCheck | None = None
    #: a grid step's output grid, see :data:`Regrid`
    regrid: Regrid | None = None
    #: the fewest voxels along every axis the step runs on (:data:`RECURSIVE_GAUSSIAN_MIN_SIDE` for recursive
    #: Gaussian filters), or a function of the step's parameters giving it: a smaller image is refused before any
    #: step runs, naming its size, instead of ITK's error
    min_side: int | Callable[[Any], int] = 1
    #: whether the step is made for MR intensities (N4 bias field, an Otsu head or body mask): a bool, or a function
    #: of the step's parameters; a CT in HU then gets the warning an MR gets for a step that reads HU
    reads_mr: bool | Callable[[Any], bool] = False


#: ITK's recursive Gaussian filters (smoothing, gradient magnitude, Canny) refuse an axis of fewer than 4 voxels.
RECURSIVE_GAUSSIAN_MIN_SIDE = 4


@dataclass(frozen=True)
class Step:
    """One configured step of a pipeline: the registered spec plus validated parameters."""

    spec: StepSpec
    params: Any

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def reads_hu(self) -> bool:
        """True when this step, with these parameters, takes its input's intensities as HU."""
        rule = self.spec.reads_hu
        return bool(rule(self.params) if callable(rule) else rule)

    @property
    def reads_mr(self) -> bool:
        """True when this step, with these parameters, is made for MR intensities (:attr:`StepSpec.reads_mr`)."""
        rule = self.spec.reads_mr
        return bool(rule(self.params) if callable(rule) else rule)

    def grid_problem(self, grid: Grid) -> str | None:
        """What is wrong with these settings on ``grid`` (None when nothing is), e.g. an unstable time step or a
        window of too many voxels: judged before any voxel is touched."""
        return self.spec.check(self.params, grid) if self.spec.check is not None else None

    @property
    def min_side(self) -> int:
        """The fewest voxels along every axis this step, with these parameters, runs on (:attr:`StepSpec.min_side`)."""
        rule = self.spec.min_side
        return int(rule(self.params) if callable(rule) else rule)

    def size_problem(self, grid: Grid) -> str | None:
        """Why ``grid`` has too few voxels along an axis for this step (:attr:`min_side`), else None."""
        if min(grid.size) >= self.min_side:
            return None
        return (f"the grid is {' x '.join(map(str, grid.size))} voxels, and this step needs at least "
                f"{self.min_side} along every axis")

    def next_grid(self, grid: Grid) -> Grid:
        """The grid this step's output lies on (``grid`` itself for image and mask steps)."""
        return self.spec.regrid(self.params, grid) if self.spec.regrid is not None else grid

    def __call__(self, image: sitk.Image) -> sitk.Image:
        problem = self.size_problem(Grid.of(image)) or self.grid_problem(Grid.of(image))
        if problem:
            raise ConfigError(f"step {self.name!r}: {problem}")
        return self.spec.fn(image, self.params)

    def to_data(self) -> dict[str, Any]:
        """The step as pipeline data: ``{"name": ..., <param>: <value>, ...}`` (every parameter, JSON types)."""
        data: dict[str, Any] = {"name": self.spec.name}
        for f in dataclasses.fields(self.params):
            value = getattr(self.params, f.name)
            data[f.name] = list(value) if isinstance(value, tuple) else value
        return data


def window_problem(what: str, radius: list[int] | tuple[int, ...], limit: int, grid: Grid | None,
                   fix: str) -> str | None:
    """The one-line refusal of a window of ``radius`` voxels per axis ((x, y, z)) that holds more than ``limit``
    voxels, each of which every output voxel reads; None when it fits. ``what`` names its cause (``"parameter
    'radius_mm' 1000"``), ``grid`` the grid it was converted on (its spacing is named; None for a radius in
    voxels), ``fix`` what to do."""
    edges = [2 * int(r) + 1 for r in radius]
    voxels = math.prod(edges)
    if voxels <= limit:
        return None
    on = f" on this scan's {' x '.join(f'{s:g}' for s in grid.spacing)} mm spacing" if grid is not None else ""
    return (f"{what} makes a {' x '.join(map(str, edges))}-voxel window ({voxels:,} voxels read for each output "
            f"voxel){on}, above the limit of {limit:,}: {fix}")


REGISTRY: dict[str, StepSpec] = {}
ALIASES: dict[str, str] = {}


def register(name: str, params: type, *, kind: str = "image", summary: str = "", aliases: tuple[str, ...] = (),
             reads_hu: bool | Callable[[Any], bool] = False, check: GridCheck | None = None,
             regrid: Regrid | None = None,
             min_side: int | Callable[[Any], int] = 1,
             reads_mr: bool | Callable[[Any], bool] = False) -> Callable[[StepFunction], StepFunction]:
    """Decorator registering ``fn`` as step ``name`` with parameter dataclass ``params``; ``reads_hu``: the step
    takes intensities as CT Hounsfield units (or a function of its parameters saying when); ``check`` / ``regrid``:
    see :class:`StepSpec`; ``min_side``: the fewest voxels along every axis the step runs on (or a function of its
    parameters giving it); ``reads_mr``: the step is made for MR intensities (or a function of its parameters)."""
    if kind not in ("image", "grid", "mask"):
        raise ValueError(f"unknown step kind {kind!r}")

    def decorate(fn: StepFunction) -> StepFunction:
        doc = summary or (fn.__doc__ or "").strip().splitlines()[0]
        REGISTRY[name] = StepSpec(name, kind, params, fn, doc, reads_hu, check, regrid, min_side, reads_mr)
        for alias in aliases:
            ALIASES[alias] = name
        return fn

    return decorate


def get_spec(name: str) -> StepSpec:
    """The registered step called ``name`` (or an alias), or a :class:`ConfigError` listing the known steps."""
    _ensure_loaded()
    key = ALIASES.get(name, name)
    if key not in REGISTRY:
        raise ConfigError(f"unknown step {name!r}; known steps: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[key]


def make_step(data: dict[str, Any] | str) -> Step:
    """Validate one step given as data (``"median"`` or ``{"name": "median", "radius": 2}``) into a :class:`Step`."""
    if isinstance(data, str):
        data = {"name": data}
    if not isinstance(data, dict):
        raise ConfigError(f"a step must be a name or a mapping with a 'name', got {type(data).__name__}")
    data = dict(data)
    name = data.pop("name", None)
    if not isinstance(name, str):
        raise ConfigError(f"a step needs a 'name' (text), got {name!r}")
    spec = get_spec(name)
    # {"name": "window", "params": {...}} is accepted as well as the flat form.
    if set(data) == {"params"} and isinstance(data["params"], dict):
        data = dict(data["params"])
    fields = {f.name: f for f in dataclasses.fields(spec.params)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"step {spec.name!r}: unknown parameter(s) {', '.join(map(repr, unknown))}; "
                          f"parameters are: {', '.join(fields) or '(none)'}")
    hints = typing.get_type_hints(spec.params)
    values = {}
    for key, raw in data.items():
        values[key] = _coerce(spec.name, key, raw, hints[key], fields[key].metadata)
    try:
        params = spec.params(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"step {spec.name!r}: {exc}") from None
    check_params(spec.name, params)
    return Step(spec, params)


def check_params(step: str, params: Any) -> None:
    """Refuse ``params`` when their ``validate()`` (a parameter dataclass's own cross-field check) names a problem:
    :func:`make_step` calls it for pipelines given as data, a step function for parameters built in code."""
    check = getattr(params, "validate", None)
    problem = check() if check is not None else None
    if problem:
        raise ConfigError(f"step {step!r}: {problem}")


def _coerce(step: str, key: str, raw: Any, hint: Any, meta: typing.Mapping[str, Any]) -> Any:
    """Check ``raw`` against the type ``hint`` (and bounds in ``meta``); return it in the dataclass's type."""
    where = f"step {step!r}, parameter {key!r}"
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if raw is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _coerce(step, key, raw, option, meta)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {raw!r} is not a valid value "
                          f"({'; '.join(e.split(': ', 1)[-1] for e in errors)})")
    if origin is Literal:
        if raw not in args:
            raise ConfigError(f"{where}: {raw!r} is not one of {', '.join(map(repr, args))}")
        return raw
    if origin is tuple:
        if not isinstance(raw, (list, tuple)):
            raw = [raw] * max(_lengths(meta) or (3,)) if isinstance(raw, (int, float)) and not isinstance(raw, bool) \
                else raw
        if not isinstance(raw, (list, tuple)):
            raise ConfigError(f"{where}: expected a list of numbers, got {raw!r}")
        lengths = _lengths(meta)
        if lengths and len(raw) not in lengths:
            raise ConfigError(f"{where}: expected {' or '.join(map(str, lengths))} values, got {len(raw)}")
        item = args[0]
        return tuple(_coerce(step, key, v, item, meta) for v in raw)
    if hint is bool:
        if not isinstance(raw, bool):
            raise ConfigError(f"{where}: expected true or false, got {raw!r}")
        return raw
    if hint is int:
        if isinstance(raw, bool) or not (isinstance(raw, int) or (isinstance(raw, float) and raw.is_integer())):
            raise ConfigError(f"{where}: expected a whole number, got {raw!r}")
        return _bounded(where, int(raw), meta)
    if hint is float:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {raw!r}")
        value = float(raw)
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{where}: expected a finite number, got {raw!r}")
        return _bounded(where, value, meta)
    if hint is str:
        if not isinstance(raw, str):
            raise ConfigError(f"{where}: expected text, got {raw!r}")
        return raw
    raise ConfigError(f"{where}: unsupported parameter type {hint!r}")  # pragma: no cover - registry bug


def _bounded(where: str, value: float, meta: typing.Mapping[str, Any]) -> Any:
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and value < lo:
        raise ConfigError(f"{where}: {value} is below the minimum {lo}")
    if hi is not None and value > hi:
        raise ConfigError(f"{where}: {value} is above the maximum {hi}")
    return value


def describe_steps() -> list[dict[str, Any]]:
    """Every registered step with its kind, summary and parameters (type, default, help) as plain data."""
    _ensure_loaded()
    out = []
    for name in sorted(REGISTRY):
        spec = REGISTRY[name]
        hints = typing.get_type_hints(spec.params)
        params = []
        for f in dataclasses.fields(spec.params):
            default = f.default if f.default is not dataclasses.MISSING else None
            params.append({"name": f.name, "type": _type_name(hints[f.name]),
                           "default": list(default) if isinstance(default, tuple) else default,
                           "help": f.metadata.get("help", "")})
        out.append({"name": name, "kind": spec.kind, "summary": spec.summary, "params": params,
                    "aliases": sorted(a for a, t in ALIASES.items() if t == name)})
    return out


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is Literal:
        return "|".join(map(str, args))
    if origin is tuple:
        return f"[{_type_name(args[0])}, ...]"
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def _ensure_loaded() -> None:
    """Import the modules whose decorators fill :data:`REGISTRY` (kept lazy to avoid import cycles)."""
    from . import denoise, enhance, intensity, masks  # noqa: F401


def _lengths(meta) -> tuple[int, ...]:
    """The list lengths a parameter allows (``()``: any)."""
    length = meta.get("length")
    return () if not length else (tuple(length) if isinstance(length, (tuple, list)) else (int(length),))
