"""Pipelines declared as data: an ordered list of named steps, run on a SimpleITK image.

Data form (JSON, YAML or a Python dict/list)::

    {"name": "lung-ct", "description": "...",
     "steps": [{"name": "lung_mask"}, {"name": "bilateral", "sigma_range": 60}, {"name": "window", "preset": "lung"}]}

A plain list of steps is accepted too. ``Pipeline.run(image)`` returns a :class:`PipelineResult`: the processed
image (on the grid of the last grid step, input grid otherwise) and the masks made by mask steps, all on the
output image's grid. :meth:`PipelineResult.on_grid` puts everything back on the input grid (linear for the image,
nearest neighbour for masks) so outputs overlay the input in Slicer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import SimpleITK as sitk

from ..errors import ConfigError
from .steps import Grid, Step, make_step

PRESETS_DIR = Path(__file__).resolve().parent / "presets"


@dataclass
class PipelineResult:
    """Output of :meth:`Pipeline.run`: ``image`` (float32 after intensity steps) and ``masks`` (uint8 0/1)."""

    image: sitk.Image
    masks: dict[str, sitk.Image] = field(default_factory=dict)

    def on_grid(self, reference: sitk.Image) -> "PipelineResult":
        """The result resampled onto ``reference``'s grid (unchanged when the grids already match)."""
        from ..io import same_geometry
        from .intensity import resample_to_reference

        image = self.image if same_geometry(self.image, reference) else resample_to_reference(self.image, reference)
        masks = {name: (m if same_geometry(m, reference) else resample_to_reference(m, reference, is_label=True))
                 for name, m in self.masks.items()}
        return PipelineResult(image, masks)


class Pipeline:
    """An ordered list of validated :class:`~.steps.Step` objects.

    Args:
        steps: the configured steps.
        name: a label (preset name or file name) used in messages.
        description: free text.
    """

    def __init__(self, steps: list[Step], name: str | None = None, description: str = ""):
        self.steps = list(steps)
        self.name = name
        self.description = description

    def __repr__(self) -> str:
        return f"Pipeline(name={self.name!r}, steps={[s.name for s in self.steps]})"

    def __len__(self) -> int:
        return len(self.steps)

    @classmethod
    def from_data(cls, data: dict[str, Any] | list[Any], name: str | None = None) -> "Pipeline":
        """Build and validate a pipeline from a dict ``{"steps": [...]}`` or a list of steps.

        Raises:
            ConfigError: malformed data, unknown step, unknown or ill-typed parameter (message names the step).
        """
        description = ""
        if isinstance(data, dict):
            unknown = sorted(set(data) - {"steps", "name", "description", "version"})
            if unknown:
                raise ConfigError(f"unknown pipeline key(s) {', '.join(map(repr, unknown))}; "
                                  "expected 'steps' (and optionally 'name', 'description')")
            if "steps" not in data:
                raise ConfigError("a pipeline needs a 'steps' list")
            name = name or data.get("name")
            description = str(data.get("description", ""))
            raw_steps = data["steps"]
        else:
            raw_steps = data
        if not isinstance(raw_steps, list):
            raise ConfigError(f"'steps' must be a list, got {type(raw_steps).__name__}")
        steps = []
        for index, raw in enumerate(raw_steps, start=1):
            try:
                steps.append(make_step(raw))
            except ConfigError as exc:
                raise ConfigError(f"step {index}: {exc}") from None
        _check_segment_names(steps)
        return cls(steps, name=name, description=description)

    @classmethod
    def from_file(cls, path: str | Path) -> "Pipeline":
        """Read a pipeline from a ``.json`` or ``.yaml``/``.yml`` file (the one config-file reader,
        :func:`..schema.load_data`); errors name the file."""
        from ..schema import load_data

        path = Path(path)
        data = load_data(path, "pipeline file")
        if not isinstance(data, (dict, list)):
            raise ConfigError("a pipeline file must hold a mapping with 'steps' or a list of steps", path)
        try:
            return cls.from_data(data, name=path.stem if not isinstance(data, dict) or "name" not in data else None)
        except ConfigError as exc:
            raise ConfigError(str(exc), path) from None

    def to_data(self) -> dict[str, Any]:
        """The pipeline as plain data (every parameter spelled out); ``from_data(to_data())`` rebuilds it."""
        data: dict[str, Any] = {}
        if self.name:
            data["name"] = self.name
        if self.description:
            data["description"] = self.description
        data["steps"] = [step.to_data() for step in self.steps]
        return data

    @property
    def makes_masks(self) -> bool:
        return any(step.spec.kind == "mask" for step in self.steps)

    @property
    def changes_grid(self) -> bool:
        return any(step.spec.kind == "grid" for step in self.steps)

    @property
    def hu_steps(self) -> list[str]:
        """Names of the steps that take their input's intensities as CT Hounsfield units."""
        return [step.name for step in self.steps if step.reads_hu]

    @property
    def mr_steps(self) -> list[str]:
        """Names of the steps made for MR intensities (N4, an Otsu head or body mask)."""
        return [step.name for step in self.steps if step.reads_mr]

    def check(self, image: sitk.Image) -> None:
        """Refuse settings that do not fit ``image``'s grid (an unstable time step, a window of too many voxels),
        following the grid through resampling and cropping steps, before any step runs.

        Raises:
            ConfigError: naming the step, its setting, the figure and the limit.
        """
        grid = Grid.of(image)
        for index, step in enumerate(self.steps, start=1):
            problem = step.size_problem(grid) or step.grid_problem(grid)
            if problem:
                raise ConfigError(f"step {index} ({step.name}): {problem}")
            grid = step.next_grid(grid)

    def min_side(self) -> tuple[int, str | None]:
        """The fewest voxels per axis the input needs, and the step that needs them (``None`` when none does): the
        largest :attr:`.steps.Step.min_side` of the steps up to the first grid step, which run on the input's own
        grid (later steps run on the grid that step makes, checked by :meth:`check`)."""
        need, which = 1, None
        for step in self.steps:
            if step.min_side > need:
                need, which = step.min_side, step.name
            if step.spec.kind == "grid":
                break
        return need, which

    def run(self, image: sitk.Image, progress: Callable[..., None] | None = None) -> PipelineResult:
        """Run every step on ``image`` (a 3D scalar ``sitk.Image``).

        Args:
            image: the input; not modified.
            progress: optional callback ``progress(stage, fraction, **extra)`` called once per step.

        Returns:
            :class:`PipelineResult` with masks on the output image's grid.
        """
        from .intensity import resample_to_reference
        from .masks import apply_mask

        self.check(image)
        masks: dict[str, sitk.Image] = {}
        n = max(len(self.steps), 1)
        for index, step in enumerate(self.steps):
            if progress is not None:
                progress(f"step {step.name}", index / n, step=step.name, index=index + 1, steps=len(self.steps))
            kwargs = {"masks": masks} if getattr(step.spec.fn, "uses_masks", False) else {}
            try:
                out = step.spec.fn(image, step.params, **kwargs)
            except ConfigError:
                raise
            except RuntimeError as exc:  # ITK errors carry C++ context; keep the last useful line
                from ..io.file_checks import itk_error_line

                raise ConfigError(f"step {index + 1} ({step.name}) failed: {itk_error_line(exc)}") from None
            if step.spec.kind == "mask":
                mask = sitk.Cast(out > 0, sitk.sitkUInt8)
                mask.CopyInformation(image)
                masks[step.params.segment] = mask
                if step.params.apply:
                    image = apply_mask(image, mask)
            elif step.spec.kind == "grid":
                image = out
                masks = {k: resample_to_reference(m, image, is_label=True) for k, m in masks.items()}
            else:
                image = out
        if progress is not None:
            progress("pipeline done", 1.0, steps=len(self.steps))
        return PipelineResult(image, masks)


def _check_segment_names(steps: list[Step]) -> None:
    """Refuse a mask step whose ``segment`` is empty (a nameless segment in the ``--mask`` file) or repeats an
    earlier mask step's (its mask would silently replace the earlier one)."""
    seen: dict[str, int] = {}
    for index, step in enumerate(steps, start=1):
        if step.spec.kind != "mask":
            continue
        segment = step.params.segment
        if not segment.strip():
            raise ConfigError(f"step {index}: step {step.name!r}, parameter 'segment': the segment name is empty; "
                              "name the mask")
        if segment in seen:
            raise ConfigError(f"step {index}: step {step.name!r}, parameter 'segment': {segment!r} is already the "
                              f"segment of step {seen[segment]}, whose mask would be replaced; give each mask step "
                              "its own 'segment'")
        seen[segment] = index


def pipeline_steps(pipeline: Mapping[str, Any] | list | None) -> list:
    """The steps (as data) of an ``input.pipeline`` given as ``{"steps": [...]}``, a plain list, or ``None``."""
    steps = pipeline.get("steps") if isinstance(pipeline, Mapping) else pipeline
    return list(steps or [])


def run_input_pipeline(image: sitk.Image, pipeline: Mapping[str, Any] | list | None) -> sitk.Image:
    """A model package's ``input.pipeline`` (steps as data) run on ``image``, as classify prepares a scan; the image
    itself when the pipeline has no steps."""
    if not pipeline_steps(pipeline):
        return image
    return Pipeline.from_data(pipeline).run(image).image


def list_presets() -> list[str]:
    """Names of the bundled pipeline presets (``presets/<name>.json``)."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


def load_pipeline(name_or_path: str | Path | dict | list) -> Pipeline:
    """A pipeline from a preset name (``lung-ct``), a JSON/YAML file path, or pipeline data (dict/list)."""
    if isinstance(name_or_path, (dict, list)):
        return Pipeline.from_data(name_or_path)
    text = str(name_or_path)
    preset = PRESETS_DIR / f"{text}.json"
    if "/" not in text and "\\" not in text and preset.is_file():
        return Pipeline.from_file(preset)
    path = Path(text)
    if path.is_file():
        return Pipeline.from_file(path)
    raise ConfigError(f"no pipeline preset or file named {text!r}; presets: {', '.join(list_presets())}")
