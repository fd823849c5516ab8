"""Uncertainty figures for one classified scan, as the optional ``"uncertainty"`` block of classify's JSON.

:func:`classify_uncertainty` is what ``classify`` calls after its prediction; it only needs the model, the
model input and the package's ``model.json``. With a ``"calibration"`` block in model.json (written by
``meddeeprecog calibrate``) it applies the temperature, if the block has one, and raises the low-confidence flag when
the prediction's normalised entropy is at or above the threshold fitted on validation data (``calibrate
--no-temperature --low-confidence`` writes a threshold without a temperature: the probabilities stay the network's).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import torch

from .calibration import normalized_entropy, softmax
from .sampling import (default_tta, dropout_layers, ensemble_member_samples, mc_dropout_samples, summarize_samples,
                       tta_samples)


def package_temperature(meta: Mapping[str, Any]) -> float:
    """The temperature a package's ``calibration`` block fitted (1.0 without one)."""
    return float(((meta.get("calibration") or {}).get("temperature")) or 1.0)


def calibrated_probabilities(logits: np.ndarray | torch.Tensor, meta: Mapping[str, Any]) -> np.ndarray:
    """``softmax(logits / T)`` with the package's fitted temperature (T = 1 without calibration); ``(N, K)``."""
    z = logits.detach().cpu().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)
    t = package_temperature(meta)
    return softmax(z, t)


#: ``probability_scale`` of figures computed from the network's own softmax in a package that is calibrated.
UNCALIBRATED_SCALE = "the network's softmax, before the package's temperature"


def calibration_figures(logits: np.ndarray | torch.Tensor, meta: Mapping[str, Any]) -> dict[str, Any]:
    """The calibration part of the uncertainty block for one scan's logits ``(1, K)``: ``temperature``,
    ``calibrated``, ``probabilities`` (calibrated, by class name), ``predictive_entropy`` (normalised 0..1, of
    those) and the package's ``low_confidence_threshold`` with ``low_confidence`` (None when not calibrated).
    classify's low-confidence rule reads it (``inference.classify.mark_low_confidence``)."""
    names = list(meta.get("class_names") or [])
    cal = meta.get("calibration") or {}
    p = calibrated_probabilities(logits, meta)[0]
    h = float(normalized_entropy(p[None])[0])
    threshold = cal.get("low_confidence_threshold")
    return {
        "temperature": package_temperature(meta),
        "calibrated": cal.get("temperature") is not None,  # a threshold alone leaves the probabilities as they are
        "probabilities": dict(zip(names, map(float, p))) if names else [float(v) for v in p],
        "predictive_entropy": h,
        "low_confidence_threshold": None if threshold is None else float(threshold),
        "low_confidence": None if threshold is None else bool(h >= float(threshold)),
    }


def classify_uncertainty(model: torch.nn.Module, x: torch.Tensor, meta: Mapping[str, Any], *,
                         logits: torch.Tensor | None = None,
                         forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
                         mc_samples: int = 20, tta: int = 8, spatial_dims: int | None = None) -> dict[str, Any]:
    """Uncertainty of one scan's prediction.

    Args:
        model: the package's network (eval mode).
        x: the scan's model input: ``(1, C, Z, Y, X)`` for volumes, ``(1, C, S, H, W)`` for a slice stack.
        meta: the package's model.json dict (``calibration`` and ``class_names`` are read).
        logits: the classify pass's scan-level logits ``(1, K)`` if already computed (saves a forward pass).
        forward: maps ``x`` to scan-level logits ``(1, K)``; default ``model`` (pass the slice aggregation for
            ``slices2d`` models: :class:`MedDeepRecogLib.models.slice_stack.SliceStackClassifier`).
        mc_samples: Monte-Carlo dropout passes (0 = skip). Skipped with a reason when the model has no dropout.
        tta: test-time augmentations (identity + flips; 0 = skip).
        spatial_dims: trailing axes of ``x`` the augmentations flip (default all spatial axes; 2 for a slice stack,
            whose slices are flipped in-plane only).

    Returns:
        JSON-able dict: ``temperature`` (1.0 without one), ``calibrated`` (a temperature is applied),
        ``probabilities`` (calibrated, by class name), ``predictive_entropy`` (normalised 0..1, of the calibrated
        probabilities), ``low_confidence`` (bool, or None when the package has no low-confidence threshold),
        ``low_confidence_threshold``, and ``mc_dropout`` / ``tta`` blocks with ``predictive_entropy``,
        ``mutual_information``, ``variance``, ``mean_probabilities`` (the network's own softmax: ``probability_scale``
        says so for a calibrated package) (or ``{"available": false, "reason"}``); for a
        seed ensemble on volumes also an ``ensemble`` block of the same form over its members (one pass each).
    """
    plain = forward is None or forward is model  # rows independent: MC dropout / TTA may run as batches
    forward = forward or model
    names = list(meta.get("class_names") or [])
    if logits is None:
        with torch.no_grad():
            logits = forward(x)
    out = calibration_figures(logits, meta)
    scaled = out["calibrated"]

    def block(samples: torch.Tensor) -> dict[str, Any]:
        s = summarize_samples(samples)
        mean = s["mean_probabilities"][0]
        # the samples are the network's own softmax: the spread between passes is the point, and a temperature
        # fitted to single predictions would rescale it; the block says so beside the calibrated figures above
        return {"available": True, "samples": s["samples"], "predictive_entropy": s["predictive_entropy"][0],
                "mutual_information": s["mutual_information"][0], "variance": s["variance"][0],
                "mean_probabilities": dict(zip(names, mean)) if names else mean,
                **({"probability_scale": UNCALIBRATED_SCALE} if scaled else {})}

    if mc_samples > 0:
        if dropout_layers(model):
            out["mc_dropout"] = block(mc_dropout_samples(model, x, mc_samples, forward=None if plain else forward))
        else:
            out["mc_dropout"] = {"available": False, "reason": "the model has no dropout layer"}
    if tta > 0:
        out["tta"] = block(tta_samples(forward, x, default_tta(spatial_dims or x.ndim - 2, tta), batched=plain))
    if plain and len(getattr(model, "members", ())) > 1:
        out["ensemble"] = block(ensemble_member_samples(model, x))
    return out


def apply_temperature(probabilities: np.ndarray, meta: Mapping[str, Any]) -> np.ndarray:
    """Calibrated version of scan probabilities ``(K,)`` or ``(N, K)``: ``softmax(log p / T)`` (= softmax(z / T)).

    Identity when the package has no ``calibration`` block.
    """
    t = package_temperature(meta)
    p = np.asarray(probabilities, dtype=np.float64)
    if t == 1.0:
        return p
    return softmax(np.log(np.clip(p, 1e-12, 1.0)), t)
