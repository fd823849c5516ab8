"""The "can I trust this?" fields of a classify result, at a cost of a fraction of a second: the one trust path.

- :func:`heatmap_faithfulness`: deletion / insertion AUC of the heatmap and of a random voxel order
  (:func:`MedDeepRecogLib.explain.faithfulness.faithfulness_scores`) with few steps, on the model's own input grid.
  For slice models the stack is subsampled to a few evenly spaced voting slices (:func:`faithfulness_slices`: fewer
  for an ensemble with a test-time flip) and classified as one sample
  (:class:`MedDeepRecogLib.models.slice_stack.SliceStackClassifier`, the aggregation classify uses), so its cost does
  not grow with the number of slices.
- :func:`heatmap_localisation`: pointing game and heatmap mass inside a lesion segmentation (``--lesion``).
- :func:`scan_lesion_reliance`: for slice models, how much the predicted class's probability falls when the
  labelled lesion is filled with the surrounding tissue, next to the same fill elsewhere (``--lesion``).
- :func:`scan_uncertainty`: temperature-scaled probabilities, normalised predictive entropy and the calibrated
  ``low_confidence`` flag (:func:`MedDeepRecogLib.uncertainty.classify_uncertainty`), plus Monte-Carlo dropout
  or test-time augmentation spread when asked for.
- :func:`faithfulness_caption`: the scores in one line for the PNG, the panel and the report.

``classify_scan`` calls them in this order after its prediction (``inference.classify``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..contract import GRADCAM_METHODS, UNCERTAINTY_MODES
from ..errors import ConfigError
from ..explain.faithfulness import faithfulness_scores, lesion_reliance, localisation_scores, slice_localisation
from ..models.slice_stack import SliceStackClassifier, stack_as_sample
from .model_input import SliceInput
from .predict import maps_to_model_grid

#: Deletion/insertion steps (``steps + 1`` points per curve; 4 curves incl. the random reference).
FAITHFULNESS_STEPS = 5
#: Slices of a slice stack used for the faithfulness score (measured on a 512x512x300 CT, body-region: ~0.3 s).
FAITHFULNESS_MAX_SLICES = 4
#: Network passes per slice subsample and curve point that the score may cost: each slice costs an ensemble's
#: members times its views (the test-time flip doubles them). 4 slices of one network or of a 3-member ensemble;
#: 2 of a 3-member ensemble with a flip, which at 4 slices took 1.1-1.7 s of a breast-us-lesion volume's 3.1-3.4 s
#: (bench/disease.py, 2 threads).
FAITHFULNESS_MAX_PASSES = 12


def faithfulness_slices(model: torch.nn.Module) -> int:
    """How many slices of a stack :func:`heatmap_faithfulness` scores for ``model``: :data:`FAITHFULNESS_MAX_SLICES`,
    fewer where each slice costs more network passes than :data:`FAITHFULNESS_MAX_PASSES` allows (at least 1)."""
    passes = len(getattr(model, "members", None) or [model]) * int(getattr(model, "views", 1))
    return max(1, min(FAITHFULNESS_MAX_SLICES, FAITHFULNESS_MAX_PASSES // passes))


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s parameters (the CPU for a model without any)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def on_model_device(model: torch.nn.Module, forward):
    """``forward`` for CPU tensors: inputs go to ``model``'s device, logits come back to the CPU.

    The trust checks build their inputs, masks and orders on the CPU; classify may run the model on a GPU.
    """
    device = model_device(model)
    if device.type == "cpu":
        return forward
    return lambda x: forward(x.to(device)).cpu()


def _even_subset(indices: np.ndarray, n: int) -> np.ndarray:
    if len(indices) <= n:
        return indices
    return indices[np.unique(np.linspace(0, len(indices) - 1, n).round().astype(int))]


def heatmap_faithfulness(result: Any, model: torch.nn.Module, target_layer: str | None, *,
                         steps: int = FAITHFULNESS_STEPS, max_slices: int | None = None,
                         seed: int = 0) -> dict[str, Any] | None:
    """Deletion / insertion AUC of ``result``'s heatmap (None without a heatmap or for a method it cannot score).

    Args:
        result: a :class:`~MedDeepRecogLib.inference.classify.ClassificationResult` (model input, model map).
        model: the network classify used (eval mode).
        target_layer: Grad-CAM layer (slice models: maps are recomputed for the subsampled slices at model size).
        max_slices: slices of a stack scored (default :func:`faithfulness_slices` of ``model``).

    Returns:
        :func:`~MedDeepRecogLib.explain.faithfulness.faithfulness_scores`' dict (AUCs and ``score`` rounded to 4
        places, curves kept) plus ``"class"``, ``"method"`` and ``"slices"`` (slices scored, None for volume models).
    """
    method = (result.explain or {}).get("method")
    if result.heatmap is None or method in (None, "none"):
        return None
    inp = result.model_input
    target = int(result.class_names.index(result.explain.get("class", result.decision["top_class"])))
    model.eval()
    n_slices = None
    if isinstance(inp, SliceInput):
        if method not in GRADCAM_METHODS or not target_layer:
            return None
        from ..explain.gradcam import explained_forward, scale_maps

        # score the slices that voted (body present and, with an out-of-domain check, inside the domain)
        voted = np.array([r.get("voted", True) for r in result.per_slice], dtype=bool) \
            if len(result.per_slice) == len(inp.x) else np.asarray(inp.valid, dtype=bool)
        valid = np.flatnonzero(voted & np.asarray(inp.valid, dtype=bool))
        idx = _even_subset(valid if len(valid) else np.arange(len(inp.x)),
                           faithfulness_slices(model) if max_slices is None else max_slices)
        xs = torch.from_numpy(np.ascontiguousarray(inp.x[idx])).float()
        if getattr(result, "feature_maps", None) is not None:
            # classify's own unscaled maps of these slices, which explained ``target`` (the voting slices' scores
            # had weight 1 in that pass), scaled per slice: what a fresh pass over them would give, without its
            # forward and backward
            maps = scale_maps(torch.from_numpy(np.ascontiguousarray(result.feature_maps[idx])).float())
        else:
            device = model_device(model)
            maps = explained_forward(model, xs.to(device), target_layer, method=method,
                                     class_index=torch.full((len(idx),), target, dtype=torch.long, device=device)
                                     ).maps.detach().cpu()
        x = stack_as_sample(xs)                   # (1, C, S, H, W): the stack as one sample
        saliency = maps.float()[None]             # (1, S, h, w)
        forward: torch.nn.Module = SliceStackClassifier(model)
        n_slices = int(len(idx))
    else:
        if result.model_map is None:
            return None
        x = torch.from_numpy(np.ascontiguousarray(inp.x)).float()
        saliency = torch.from_numpy(np.ascontiguousarray(result.model_map, dtype=np.float32))[None]
        forward = model
    scores = faithfulness_scores(on_model_device(model, forward), x, saliency, target, steps=steps, seed=seed)
    for key in ("deletion_curve", "insertion_curve"):
        scores[key] = [round(float(v), 4) for v in scores[key]]
    for key in ("deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc", "score", "baseline"):
        if key in scores:
            scores[key] = round(float(scores[key]), 4)
    scores.update({"class": result.class_names[target], "method": method, "slices": n_slices})
    return scores


def faithfulness_caption(scores: dict[str, Any] | None) -> str:
    """One line for the heatmap PNG, the panel and the report, e.g. ``faithfulness +0.31 (deletion AUC 0.21
    (random 0.48), insertion AUC 0.83 (random 0.51))``; ``""`` without scores."""
    if not scores:
        return ""
    text = f"deletion AUC {scores['deletion_auc']:.2f}"
    if "random_deletion_auc" in scores:
        text += f" (random {scores['random_deletion_auc']:.2f})"
    text += f", insertion AUC {scores['insertion_auc']:.2f}"
    if "random_insertion_auc" in scores:
        text += f" (random {scores['random_insertion_auc']:.2f})"
    return f"faithfulness {scores['score']:+.2f} ({text})" if "score" in scores else text


def heatmap_localisation(result: Any, lesion: Any, *, tolerance_mm: float = 0.0) -> dict[str, Any] | None:
    """Pointing game and heatmap mass inside a lesion segmentation, on the scan's grid (None without a heatmap).

    Args:
        result: a ``classify_scan`` result with a heatmap.
        lesion: a label image (SimpleITK; non-zero = lesion) on the scan's grid, where ``classify_scan`` puts it
            (:func:`.classify.lesion_on_scan_grid`, before any model runs).
        tolerance_mm: a peak this close to the lesion counts as a hit.

    Returns:
        :func:`~MedDeepRecogLib.explain.faithfulness.localisation_scores` of the whole heatmap; for slice models
        (each slice explained on its own) also ``"per_slice"``
        (:func:`~MedDeepRecogLib.explain.faithfulness.slice_localisation` on the scan's LPS view).
    """
    import SimpleITK as sitk

    from ..io import same_geometry
    from ..io.geometry import lps_view

    if result.heatmap is None:
        return None
    ref = result.heatmap
    if not same_geometry(lesion, ref):
        raise ValueError("the lesion is not on the heatmap's grid: classify_scan resamples it first")
    mask = sitk.GetArrayViewFromImage(lesion) != 0
    heat = sitk.GetArrayViewFromImage(ref)
    scores = localisation_scores(heat, mask, spacing=tuple(reversed(ref.GetSpacing())), tolerance_mm=tolerance_mm)
    if len(getattr(result, "per_slice", None) or []) > 1 and "index" in result.per_slice[0]:
        scores["per_slice"] = slice_localisation(lps_view(ref).array, lps_view(lesion).array != 0)
    return scores


#: Lesion pixels a model-grid slice needs before its lesion is filled (smaller ones are a partial-volume rim).
MIN_LESION_PIXELS = 4


def scan_lesion_reliance(result: Any, model: torch.nn.Module, lesion: Any) -> dict[str, Any] | None:
    """:func:`~MedDeepRecogLib.explain.faithfulness.lesion_reliance` on the voting slices of a slice model that hold
    lesion; ``None`` for volume models or when no voting slice holds at least :data:`MIN_LESION_PIXELS` of it.

    The lesion (any grid; non-zero = lesion) is resampled linearly onto the working slices, then onto the model
    grid through each slice's crop/resize affine (the same one the heatmap goes back through), and kept where at
    least half a pixel is lesion. The body is :meth:`.model_input.SliceInput.body` of the model input (above the
    package's foreground threshold; the whole image for ultrasound).
    """
    import SimpleITK as sitk

    inp = result.model_input
    if not isinstance(inp, SliceInput):
        return None
    ref = inp.grid.image_from(np.zeros(tuple(reversed(inp.grid.size)), dtype=np.float32))
    frac = sitk.Resample(sitk.Cast(lesion != 0, sitk.sitkFloat32), ref, sitk.Transform(), sitk.sitkLinear, 0.0)
    x = torch.from_numpy(inp.x)
    on_model = maps_to_model_grid(sitk.GetArrayFromImage(frac), inp) >= 0.5
    voted = np.asarray(inp.valid, dtype=bool)
    if len(result.per_slice) == len(voted):
        voted &= np.array([bool(r.get("voted", True)) for r in result.per_slice])
    rows = [k for k in range(len(x)) if voted[k] and int(on_model[k].sum()) >= MIN_LESION_PIXELS]
    if not rows:
        return None
    scores = lesion_reliance(on_model_device(model, model), x[rows], on_model[rows], inp.body(x[rows, 0]))
    for rec in scores["per_image"]:
        rec["slice_index"] = int(inp.slice_index[rows[rec.pop("image")]])
    return scores


def scan_uncertainty(result: Any, model: torch.nn.Module, meta: dict, mode: str = "auto", *,
                     raw_probabilities: np.ndarray | None = None) -> dict[str, Any] | None:
    """The ``"uncertainty"`` block of classify's JSON (None for ``mode == "none"``).

    Args:
        result: the classify result (its model input).
        meta: the package's model.json (``calibration``: temperature, low-confidence threshold).
        mode: one of :data:`~MedDeepRecogLib.contract.UNCERTAINTY_MODES`; ``auto``: MC dropout (8 passes, one
            batch) for volume models with dropout, else calibration only (a slice stack would need 8 passes of the
            whole stack).
        raw_probabilities: classify's scan probabilities ``(K,)`` before temperature scaling; their log is used as
            the scan logits (same softmax), saving a forward pass.

    Raises:
        ConfigError: an unknown mode, or ``mc-dropout`` for a model without dropout.
    """
    from ..uncertainty import classify_uncertainty, dropout_layers

    if mode not in UNCERTAINTY_MODES:
        raise ConfigError(f"unknown --uncertainty {mode!r}; choose one of {', '.join(UNCERTAINTY_MODES)}")
    if mode == "none":
        return None
    inp = result.model_input
    slices = isinstance(inp, SliceInput)
    has_dropout = bool(dropout_layers(model))
    if mode == "mc-dropout" and not has_dropout:
        raise ConfigError(f"model {result.model.get('id')} has no dropout layer, so Monte-Carlo dropout is not "
                          "available; use --uncertainty tta")
    mc = {"mc-dropout": 20, "auto": 8 if (has_dropout and not slices) else 0}.get(mode, 0)
    tta = 8 if mode == "tta" else 0
    x = torch.from_numpy(np.ascontiguousarray(inp.x)).float().to(model_device(model))
    forward = model
    if slices:  # the stack is one sample; test-time augmentation flips each slice in-plane only
        # the slices that voted in classify's prediction (body present and inside the domain), as it scored them
        voting = getattr(result, "voting", None)
        x, forward = stack_as_sample(x), SliceStackClassifier(model, inp.valid if voting is None else voting)
    logits = None
    if raw_probabilities is not None:
        logits = torch.log(torch.as_tensor(np.clip(raw_probabilities, 1e-12, 1.0), dtype=torch.float32,
                                           device=x.device))[None]
    out = classify_uncertainty(model.eval(), x, meta, logits=logits, forward=forward, mc_samples=mc, tta=tta,
                               spatial_dims=2 if slices else None)
    out["mode"] = mode if mode != "auto" else ("mc-dropout" if mc else "calibration")
    return out
