"""The panel's preprocessing check boxes <-> a pipeline as data (what ``meddeeprecog preprocess --pipeline`` reads).

The panel shows the main steps as check boxes with their main parameter; the application preset supplies the rest.
:func:`preset_settings` reads a preset's pipeline (``preprocessing/presets/<name>.json``) into check-box settings
(what the panel shows when a preset is chosen); :func:`build_pipeline` puts the settings back into the preset's
pipeline, replacing only the steps the panel manages and keeping every other step and parameter where it was, so
``build_pipeline(p, preset_settings(p))`` runs exactly ``p``'s own steps. Pure data, no SimpleITK: safe in Slicer.

Panel settings: ``bias_correction`` (``n4``), ``resample`` + ``resample_spacing`` (mm, isotropic), ``denoise`` +
``denoise_sigma`` (mm; a new denoising step is ``bilateral``, a preset's own denoiser is kept), ``clip`` +
``clip_min``/``clip_max`` (a ``window`` in HU: centre/width from min/max), ``normalize`` (``normalize``, z-score
unless the preset says otherwise) and ``mask`` (write the pipeline's masks as a segmentation; a custom pipeline
gets a ``body_mask`` step). Mask steps themselves are never removed: later steps refer to them by name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError

#: Application presets offered by the panel (``custom``: only the checked steps).
PRESETS = ["lung-ct", "breast-mri", "brain-mri", "custom"]

#: Panel-managed steps in pipeline order: setting -> step names of the core's registry (first = the one inserted).
MANAGED = {
    "bias_correction": ("n4",),
    "resample": ("resample",),
    "denoise": ("bilateral", "nlm", "anisotropic_diffusion", "median"),
    "clip": ("window",),
    "normalize": ("normalize", "normalise"),
}
MASK_STEPS = ("body_mask", "lung_mask", "head_mask", "otsu", "threshold")

#: CT window presets (centre, width) in HU, as in ``preprocessing.intensity.WINDOW_PRESETS`` (checked by a test).
WINDOW_PRESETS = {"lung": (-600.0, 1500.0), "mediastinum": (50.0, 350.0), "brain": (40.0, 80.0),
                  "abdomen": (40.0, 400.0), "bone": (400.0, 1800.0)}

#: Settings of an empty (custom) pipeline.
DEFAULTS: dict[str, Any] = {
    "resample": False, "resample_spacing": 1.0, "clip": False, "clip_min": -1000.0, "clip_max": 400.0,
    "bias_correction": False, "denoise": False, "denoise_sigma": 1.0, "normalize": False, "mask": False,
}


def presets_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "preprocessing" / "presets"


def preset_steps(preset: str) -> list[dict[str, Any]]:
    """The steps of a bundled preset pipeline; ``custom`` has none."""
    if preset == "custom":
        return []
    path = presets_dir() / f"{preset}.json"
    if not path.is_file():
        raise ConfigError(f"no preset pipeline {preset!r} (expected {path})")
    data = json.loads(path.read_text(encoding="utf-8"))
    steps = data.get("steps", []) if isinstance(data, dict) else data
    return [{"name": s} if isinstance(s, str) else dict(s) for s in steps]


def _key_of(step: dict[str, Any]) -> str | None:
    for key, names in MANAGED.items():
        if step.get("name") in names:
            return key
    return None


def _window_range(step: dict[str, Any]) -> tuple[float, float] | None:
    if step.get("preset") in WINDOW_PRESETS:
        center, width = WINDOW_PRESETS[step["preset"]]
    elif step.get("center") is not None and step.get("width") is not None:
        center, width = float(step["center"]), float(step["width"])
    else:
        return None
    return center - width / 2, center + width / 2


def preset_settings(preset: str) -> dict[str, Any]:
    """Check-box settings that reproduce ``preset``'s managed steps (defaults for what it lacks)."""
    settings = dict(DEFAULTS)
    for step in preset_steps(preset):
        if step.get("name") in MASK_STEPS:
            settings["mask"] = True
        key = _key_of(step)
        if key is None:
            continue
        settings[key] = True
        if key == "resample" and step.get("spacing") is not None:
            spacing = step["spacing"]
            settings["resample_spacing"] = float(spacing[0] if isinstance(spacing, (list, tuple)) else spacing)
        elif key == "clip" and _window_range(step):
            settings["clip_min"], settings["clip_max"] = _window_range(step)
        elif key == "denoise" and step.get("sigma_spatial_mm") is not None:
            settings["denoise_sigma"] = float(step["sigma_spatial_mm"])
    return settings


def _managed_step(key: str, settings: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    step = dict(previous) if previous else {"name": MANAGED[key][0]}
    if key == "resample":
        step["spacing"] = [float(settings["resample_spacing"])] * 3
        step.pop("size", None)
    elif key == "clip":
        lo, hi = float(settings["clip_min"]), float(settings["clip_max"])
        if hi <= lo:
            raise ConfigError(f"window range is empty: min {lo:g} >= max {hi:g}")
        if _window_range(step) != (lo, hi):  # changed in the panel (a preset name no longer applies)
            step.pop("preset", None)
            step.update(center=(lo + hi) / 2, width=hi - lo)
        if previous is None:
            step["output"] = "hu"  # a window added in the panel clips; a preset's own keeps its output
    elif key == "denoise" and step["name"] == "bilateral":
        step["sigma_spatial_mm"] = float(settings["denoise_sigma"])
    elif key == "normalize" and previous is None:
        step["method"] = "zscore"
    return step


def build_pipeline(preset: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The pipeline to run: ``preset``'s steps with the panel-managed ones switched/parameterised by ``settings``.

    A managed step the preset lacks is inserted before the first later managed step (in :data:`MANAGED` order).
    """
    settings = {**DEFAULTS, **settings}
    steps = preset_steps(preset)
    if settings["mask"] and not any(s.get("name") in MASK_STEPS for s in steps):
        steps.insert(0, {"name": "body_mask"})
    existing = {key: s for s in steps if (key := _key_of(s))}
    order = list(MANAGED)
    result: list[dict[str, Any]] = []
    placed: set[str] = set()

    def place_up_to(limit: int) -> None:
        for key in order[:limit]:
            if key not in placed and settings.get(key):
                result.append(_managed_step(key, settings, existing.get(key)))
            placed.add(key)

    for step in steps:
        key = _key_of(step)
        if key is None:
            result.append(step)
        else:
            place_up_to(order.index(key) + 1)
    place_up_to(len(order))
    return {"name": f"{preset} (panel)", "steps": result}
