"""Robustness of one scan's prediction: the scan's model input (as classify builds it), the valid intensity
range, eps in HU, and the perturbation put back on the scan's grid for viewing."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import SimpleITK as sitk
import torch

from ..errors import ConfigError


def pipeline_bounds(spec: Mapping[str, Any]) -> tuple[float, float] | None:
    """Valid intensity range of the model input when the package's preprocessing fixes one, else None.

    The last step that sets the range wins: ``slices2d`` inputs are stretched and clipped to 0..1 per slice;
    ``window`` maps to 0..1 (or clamps to its HU window with ``output: hu``); ``normalize`` with ``percentile`` +
    ``clip`` gives 0..1 while ``zscore`` / ``minmax`` leave it open; ``scale_intensity_range`` with ``clip`` gives
    ``[b_min, b_max]``.
    """
    if spec.get("kind") == "slices2d":
        return (0.0, 1.0)
    bounds = None
    for step in (spec.get("pipeline") or {}).get("steps", []):
        name = step.get("name")
        if name == "window":
            if step.get("output", "unit") == "hu" and step.get("center") is not None:
                c, w = float(step["center"]), float(step["width"])
                bounds = (c - w / 2, c + w / 2)
            else:
                bounds = (0.0, 1.0) if step.get("output", "unit") != "hu" else None
        elif name in ("normalize", "normalise"):
            method = step.get("method", "zscore")
            bounds = (0.0, 1.0) if method == "percentile" and step.get("clip", True) else None
        elif name == "scale_intensity_range" and step.get("clip", True):
            bounds = (float(step.get("b_min", 0.0)), float(step.get("b_max", 1.0)))
    return bounds


def model_input_of(path_or_image, package) -> tuple[Any, torch.Tensor, torch.nn.Module]:
    """``(classification_result, x (1, C, *spatial) tensor, forward)`` for one scan, exactly as classify sees it.

    ``forward`` maps ``x`` to scan-level logits ``(1, K)``: a slice model's stack is one sample ``(1, C, S, H, W)``
    read by :class:`..models.slice_stack.SliceStackClassifier` (the aggregation classify uses) over the slices that
    voted in classify's prediction (``result.voting``: those with body that pass the package's out-of-domain check),
    so the clean probabilities are classify's ``probabilities`` (before the package's temperature) and the attack
    moves that prediction. What classify reports from them (its label after the decision rules, and its
    confidence) is :func:`decision_of`.
    """
    from ..inference.classify import classify_scan, model_for
    from ..inference.model_input import SliceInput
    from ..models.slice_stack import SliceStackClassifier, stack_as_sample

    result = classify_scan(path_or_image, package, explain="none", device="cpu")
    inp = result.model_input
    x = torch.from_numpy(np.ascontiguousarray(inp.x)).float()
    model = model_for(package, "cpu")
    if isinstance(inp, SliceInput):
        return result, stack_as_sample(x), SliceStackClassifier(model, result.voting).eval()
    return result, x, model


def decision_of(result, package, forward: torch.nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """The decision classify would report for the model input ``x`` of ``result``'s scan (clean or attacked):
    :func:`..inference.classify.decision_for_logits` on the network's output for ``x`` (a slice model's per-slice
    logits, read through ``forward``'s slice network; the slices that vote and everything else the decision reads
    about the scan stay ``result``'s). ``forward``: as :func:`model_input_of` returns it."""
    from ..inference.classify import decision_for_logits
    from ..models.slice_stack import SliceStackClassifier, sample_as_stack

    with torch.no_grad():
        if isinstance(forward, SliceStackClassifier):
            logits = forward.model(sample_as_stack(x))
        else:
            logits = forward(x)
    return decision_for_logits(result, package, logits)


def units_per_hu(image: sitk.Image, package, *, voting: np.ndarray | None = None, model_input=None,
                delta_hu: float = 20.0, block: int | None = None) -> float | None:
    """Model-input units per HU: the slope of the package's preprocessing of ``image`` (a 3D scan, as classify reads
    it), within the intensities that preprocessing does not clip.

    ``1 / units_per_hu(...)`` is how many HU one model-input unit is. It is the slope of the ``input.pipeline``
    (:func:`pipeline_slope`) times, for a slice model, the slope of the slice standardisation as
    :func:`..preprocessing.slices.standardise_slices` scales each slice (``SliceInput.gain``: a fixed CT window of
    width W gives 1/W, a per-slice percentile stretch its own factor), the median over the ``voting`` slices
    (``(N,)`` bool; default: the slices with enough body), read from ``model_input`` (classify's ``SliceInput`` of
    this scan) when given, else standardised here. The slices' slope is read from the standardisation rather
    than measured: a test pattern added to the scan pushes voxels across the body threshold, which moves each slice's
    crop box and resizes it, and that change is no intensity slope (a body-region CT read 234 to 1326 HU per unit for
    its 2000 HU window). Volume models resample linearly, whose weights sum to 1, so the pipeline's slope is theirs.
    Returns None when the input does not depend on the intensities (a pipeline that clips all of them).
    """
    from ..inference.model_input import slices_from_image
    from ..preprocessing.pipeline import run_input_pipeline

    spec = package.input_spec
    slope = pipeline_slope(image, spec.get("pipeline"), delta_hu=delta_hu, block=block)
    if slope is None or spec.get("kind") != "slices2d":
        return slope
    # classify's own slices when given (``result.model_input``): standardising the scan again gives the same gains
    inp = model_input if model_input is not None else slices_from_image(run_input_pipeline(image, spec.get("pipeline")),
                                                                        spec)
    keep = np.asarray(inp.valid if voting is None else voting, dtype=bool)
    if keep.shape != inp.gain.shape or not keep.any():  # no slice has body: classify lets every slice vote then
        keep = np.ones(inp.gain.shape, dtype=bool)
    slope_total = slope * float(np.median(inp.gain[keep]))
    return slope_total if slope_total > 0 else None


def pipeline_slope(image: sitk.Image, pipeline: Mapping[str, Any] | list | None, *, delta_hu: float = 20.0,
                   block: int | None = None) -> float | None:
    """Output units per input unit (per HU for CT) of a package's ``input.pipeline`` on ``image``: 1.0 without steps.

    Measured through the pipeline: a checkerboard of ``block``-voxel cubes (default: a quarter of the smallest side,
    2 to 16), +``delta_hu`` on half of them, is added to the scan and both versions are run; the 90th percentile of
    the change of the voxels that moved, divided by ``delta_hu``, is the slope (lower changes come from voxels that a
    window clips partly or that a resampling step mixes with an unshifted block). A checkerboard rather than a
    uniform offset keeps per-scan normalisation (percentile stretch, z-score) from cancelling the change. Grid steps
    crop or resample by size, not by content, so the pattern cannot move what the output covers; a mask step with
    ``apply`` moves only the voxels within ``delta_hu`` of its threshold, a thin shell the percentile passes over.
    None when nothing moved.
    """
    from ..preprocessing.pipeline import run_input_pipeline

    steps = pipeline.get("steps") if isinstance(pipeline, Mapping) else pipeline
    if not steps:
        return 1.0
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    # at least 2 voxels: on a stack of a few slices a quarter of the smallest side is 1, and a resampling step
    # blurs a 1-voxel pattern
    block = block or int(np.clip(min(arr.shape) // 4, 2, 16))
    zz, yy, xx = np.indices(arr.shape, sparse=True)
    pattern = (((zz // block) + (yy // block) + (xx // block)) % 2).astype(np.float32) * float(delta_hu)
    shifted = sitk.GetImageFromArray(arr + pattern)
    shifted.CopyInformation(image)
    base = sitk.Cast(image, sitk.sitkFloat32)

    def run(img: sitk.Image) -> np.ndarray:
        return sitk.GetArrayFromImage(run_input_pipeline(img, pipeline)).astype(np.float32)

    diff = np.abs(run(shifted) - run(base))
    moved = diff[diff > 1e-7]
    if moved.size < 10:
        return None
    slope = float(np.percentile(moved, 90)) / float(delta_hu)
    return slope if slope > 0 else None


def perturbation_on_scan(delta: torch.Tensor, result, reference=None) -> sitk.Image:
    """Put a model-space perturbation (same shape as the model input) on the scan's own grid (float32).

    ``reference``: the scan or its :class:`..io.geometry.Geometry` (default ``result.image``), so the scan's voxels
    need not stay in memory until the perturbation is written.

    Volume inputs: ``(1, 1, D, H, W)`` on the model grid, resampled linearly. Slice inputs (the stack as one sample,
    ``(1, 1, S, H, W)``): each slice's ``(H, W)`` is mapped back through its crop/resize affine onto the working
    slices, then onto the scan. Values stay in model input units (multiply by the reported HU-per-unit for HU).
    """
    from ..inference.heatmap import heatmap_on_input_grid
    from ..inference.model_input import SliceInput
    from ..inference.predict import maps_to_working_grid
    from ..models.slice_stack import sample_as_stack

    inp = result.model_input
    d = delta.detach().float()
    if d.shape[1] != 1:
        raise ConfigError("the perturbation of a multi-channel input cannot be put on one scan grid")
    if isinstance(inp, SliceInput):
        arr = maps_to_working_grid(sample_as_stack(d)[:, 0], inp)
    else:
        arr = d[0, 0].numpy()
    return heatmap_on_input_grid(np.ascontiguousarray(arr, dtype=np.float32), inp.grid,
                                 result.image if reference is None else reference)


def eps_conversion(spec: Mapping[str, Any], modality: str | None) -> dict[str, Any]:
    """What one model-input unit is in the scan's own units, as the package's input defines it (no scan needed):
    ``{"per_unit": float or None, "unit": str or None, "how": str}``.

    - the last unit ``window`` step of ``input.pipeline`` (center/width): its width, in HU for a CT model, else in
      the scan's intensity units;
    - a ``slices2d`` CT model: its slices' fixed ``ct_window`` (``input.slices``, else the default), in HU;
    - other ``slices2d`` pictures (US, MR, 8-bit): each picture is stretched by its own percentiles, so no fixed
      conversion to the picture's grey levels exists; the budget is given in grey levels of the standardised image
      (its 0..1 shown as 0..255);
    - anything else: ``per_unit`` None and ``how`` says there is no defined conversion.
    ``robustness --input`` measures the same slope on the scan (:func:`units_per_hu`); this is the package's figure
    for ``--data`` and the adversarial-training card, where no scan is at hand.
    """
    from ..preprocessing.slices import SLICE_DEFAULTS

    steps = [s for s in (spec.get("pipeline") or {}).get("steps", []) if isinstance(s, Mapping)]
    window = [s for s in steps if s.get("name") == "window" and s.get("output", "unit") == "unit"
              and s.get("width") is not None]
    unit = "HU" if modality == "CT" else "scan intensity units"
    if window:
        width = float(window[-1]["width"])
        return {"per_unit": width, "unit": unit,
                "how": f"the package's `window` step (width {width:g} {unit}): eps x {width:g} {unit}"}
    if spec.get("kind") == "slices2d":
        if modality == "CT":
            w0, w1 = (float(v) for v in {**SLICE_DEFAULTS, **(spec.get("slices") or {})}["ct_window"])
            return {"per_unit": w1 - w0, "unit": "HU",
                    "how": f"the slices' CT window [{w0:g}, {w1:g}] HU: eps x {w1 - w0:g} HU"}
        return {"per_unit": 255.0, "unit": "grey levels of the standardised image",
                "how": "each picture is stretched by its own percentiles, so no fixed conversion to its own grey "
                       "levels exists; eps x 255 is the budget in grey levels of the standardised image (0..1 "
                       "shown as 0..255)"}
    return {"per_unit": None, "unit": None,
            "how": "no defined conversion: the package's input has no fixed intensity window, so eps is in model "
                   "input units only"}
