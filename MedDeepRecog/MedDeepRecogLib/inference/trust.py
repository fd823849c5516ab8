"""The "can I trust this?" fields of a classify result, at a cost of a fraction of a second.

- :func:`heatmap_faithfulness`: deletion / insertion AUC of the heatmap and of a random voxel order (the
  figures of :func:`MedDeepRecogLib.explain.faithfulness.faithfulness_scores`, same keys), with few steps, on the
  model's own input grid. For slice models the stack is subsampled to ``max_slices`` evenly spaced voting slices
  and treated as one sample (mean log-probability, as classify aggregates), so its cost does not grow with the
  number of slices.
- :func:`scan_uncertainty`: temperature-scaled probabilities, normalised predictive entropy and the calibrated
  ``low_confidence`` flag (:func:`MedDeepRecogLib.uncertainty.classify_uncertainty`), plus Monte-Carlo dropout
  or test-time augmentation spread when asked for.

Why not :func:`MedDeepRecogLib.uncertainty.trust.add_trust_fields`: with its defaults (10 steps, whole slice stack
one variant at a time, 20 MC passes) it costs ~45 forward passes of the whole stack, several seconds per CT.
:func:`deletion_insertion_curves` is hand-written (rather than calling ``faithfulness_scores``) because the four
curves share their end points (the unperturbed input and the all-baseline input): each distinct input is
classified once and all of them in batches, 2 + 4 (steps - 1) inputs instead of 4 (steps + 1).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

#: Deletion/insertion steps (``steps + 1`` points per curve; 4 curves incl. the random reference).
FAITHFULNESS_STEPS = 5
#: Slices of a slice stack used for the faithfulness score (measured on a 512x512x300 CT, body-region: ~0.3 s).
FAITHFULNESS_MAX_SLICES = 4
#: ``--uncertainty`` choices; ``auto``: MC dropout (8 passes, one batch) for volume models with dropout, else
#: calibration only (a slice stack would need 8 passes of the whole stack).
UNCERTAINTY_MODES = ("auto", "none", "mc-dropout", "tta")


class StackAsVolume(torch.nn.Module):
    """A slice classifier as a scan classifier on ``(B, C, S, H, W)`` -> ``(B, K)`` mean log-probabilities.

    Each batch row is one whole slice stack (the product of experts classify uses), so deletion / insertion
    variants of a stack can be classified as one batch.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, s, h, w = x.shape
        logits = self.model(x.permute(0, 2, 1, 3, 4).reshape(b * s, c, h, w)).float()
        return torch.log_softmax(logits, dim=1).reshape(b, s, -1).mean(1)


def _even_subset(indices: np.ndarray, n: int) -> np.ndarray:
    if len(indices) <= n:
        return indices
    return indices[np.unique(np.linspace(0, len(indices) - 1, n).round().astype(int))]


def _auc(values: list[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    return float((v[1:] + v[:-1]).sum() / (2 * (len(v) - 1)))  # trapezoids over fractions 0, 1/steps, ..., 1


def deletion_insertion_curves(forward: torch.nn.Module, x: torch.Tensor, saliency: torch.Tensor, target: int, *,
                              steps: int = FAITHFULNESS_STEPS, seed: int = 0,
                              batch_size: int = 8) -> dict[str, Any]:
    """Deletion / insertion curves of class ``target``'s probability for the saliency order and a random order.

    Args:
        forward: ``(B, *x.shape[1:]) -> (B, K)`` logits, batch rows independent (eval mode).
        x: one model input ``(1, C, *spatial)``; removed voxels take its minimum (air / background).
        saliency: ``(1, *s)`` map (upsampled to ``x``'s grid when coarser).
        steps: equal shares of voxels removed / revealed; ``steps + 1`` points per curve.

    Returns:
        The keys of ``faithfulness_scores``: ``steps``, ``baseline``, ``deletion_auc``, ``insertion_auc``,
        ``deletion_curve``, ``insertion_curve``, ``target``, ``random_deletion_auc``, ``random_insertion_auc`` and
        ``score = (insertion - deletion) - (random insertion - random deletion)`` (> 0: better than chance).
    """
    from ..explain.faithfulness import saliency_to_input

    steps = max(int(steps), 1)
    x = x.detach()
    sal = saliency_to_input(saliency, x)
    base_value = float(x.min())
    base = torch.full_like(x, base_value)
    n = sal.numel()
    g = torch.Generator().manual_seed(seed)
    orders = [torch.argsort(sal.reshape(-1), descending=True, stable=True), torch.randperm(n, generator=g)]
    variants = [x, base]
    for order in orders:
        for k in range(1, steps):
            m = torch.zeros(n, dtype=torch.bool)
            m[order[: int(round(k / steps * n))]] = True
            m = m.reshape(sal.shape)[:, None].expand_as(x)
            variants += [torch.where(m, base, x), torch.where(m, x, base)]
    probs: list[float] = []
    with torch.no_grad():
        for i in range(0, len(variants), batch_size):
            probs += torch.softmax(forward(torch.cat(variants[i:i + batch_size])).float(), 1)[:, target].tolist()
    p_x, p_base, inner = probs[0], probs[1], probs[2:]
    curves = []
    for j in range(len(orders)):
        block = inner[j * 2 * (steps - 1):(j + 1) * 2 * (steps - 1)]
        curves.append(([p_x, *block[0::2], p_base], [p_base, *block[1::2], p_x]))
    (dele, ins), (rdel, rins) = curves
    out = {"steps": steps, "baseline": base_value, "deletion_auc": _auc(dele), "insertion_auc": _auc(ins),
           "deletion_curve": dele, "insertion_curve": ins, "target": int(target),
           "random_deletion_auc": _auc(rdel), "random_insertion_auc": _auc(rins)}
    out["score"] = (out["insertion_auc"] - out["deletion_auc"]) - (out["random_insertion_auc"]
                                                                   - out["random_deletion_auc"])
    return out


def heatmap_faithfulness(result: Any, model: torch.nn.Module, target_layer: str | None, *,
                         steps: int = FAITHFULNESS_STEPS, max_slices: int = FAITHFULNESS_MAX_SLICES,
                         seed: int = 0) -> dict[str, Any] | None:
    """Deletion / insertion AUC of ``result``'s heatmap (None without a heatmap or for a method it cannot score).

    Args:
        result: a :class:`~MedDeepRecogLib.inference.classify.ClassificationResult` (model input, model map).
        model: the network classify used (eval mode).
        target_layer: Grad-CAM layer (slice models: maps are recomputed for the subsampled slices at model size).

    Returns:
        ``faithfulness_scores``' dict (AUCs and ``score`` rounded to 4 places, curves kept) plus ``"class"``,
        ``"method"`` and ``"slices"`` (slices scored, None for volume models).
    """
    from .model_input import SliceInput

    method = (result.explain or {}).get("method")
    if result.heatmap is None or method in (None, "none"):
        return None
    inp = result.model_input
    target = int(result.class_names.index(result.explain.get("class", result.decision["top_class"])))
    model.eval()
    n_slices = None
    if isinstance(inp, SliceInput):
        if method not in ("gradcam", "gradcampp") or not target_layer:
            return None
        from ..explain.gradcam import explained_forward

        # score the slices that voted (body present and, with an out-of-domain check, inside the domain)
        voted = np.array([r.get("voted", True) for r in result.per_slice], dtype=bool) \
            if len(result.per_slice) == len(inp.x) else np.asarray(inp.valid, dtype=bool)
        valid = np.flatnonzero(voted & np.asarray(inp.valid, dtype=bool))
        idx = _even_subset(valid if len(valid) else np.arange(len(inp.x)), max_slices)
        xs = torch.from_numpy(np.ascontiguousarray(inp.x[idx])).float()
        maps = explained_forward(model, xs, target_layer, method=method,
                                 class_index=torch.full((len(idx),), target, dtype=torch.long)).maps.detach()
        x = xs.permute(1, 0, 2, 3)[None]          # (1, C, S, H, W): the stack as one sample
        saliency = maps.float()[None]             # (1, S, h, w)
        forward: torch.nn.Module = StackAsVolume(model)
        n_slices = int(len(idx))
    else:
        if result.model_map is None:
            return None
        x = torch.from_numpy(np.ascontiguousarray(inp.x)).float()
        saliency = torch.from_numpy(np.ascontiguousarray(result.model_map, dtype=np.float32))[None]
        forward = model
    scores = deletion_insertion_curves(forward, x, saliency, target, steps=steps, seed=seed)
    for key in ("deletion_curve", "insertion_curve"):
        scores[key] = [round(float(v), 4) for v in scores[key]]
    for key in ("deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc", "score", "baseline"):
        if key in scores:
            scores[key] = round(float(scores[key]), 4)
    scores.update({"class": result.class_names[target], "method": method, "slices": n_slices})
    return scores


def faithfulness_caption(scores: dict[str, Any] | None) -> str:
    """``faithfulness +0.31 (deletion AUC 0.21 (random 0.48), insertion AUC 0.83 (random 0.51))`` for PNG / panel."""
    from ..explain.faithfulness import faithfulness_caption as aucs

    if not scores:
        return ""
    text = aucs(scores)
    return f"faithfulness {scores['score']:+.2f} ({text})" if "score" in scores else text


def scan_uncertainty(result: Any, model: torch.nn.Module, meta: dict, mode: str = "auto", *,
                     raw_probabilities: np.ndarray | None = None) -> dict[str, Any] | None:
    """The ``"uncertainty"`` block of classify's JSON (None for ``mode == "none"``).

    Args:
        result: the classify result (its model input).
        meta: the package's model.json (``calibration``: temperature, low-confidence threshold).
        mode: one of :data:`UNCERTAINTY_MODES`.
        raw_probabilities: classify's scan probabilities ``(K,)`` before temperature scaling; their log is used as
            the scan logits (same softmax), saving a forward pass.

    Raises:
        ConfigError: an unknown mode, or ``mc-dropout`` for a model without dropout.
    """
    from ..errors import ConfigError
    from ..robustness.curve import ScanAggregate
    from ..uncertainty import classify_uncertainty, dropout_layers
    from .model_input import SliceInput

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
    x = torch.from_numpy(np.ascontiguousarray(inp.x)).float()
    forward = ScanAggregate(model, torch.from_numpy(np.asarray(inp.valid))) if slices else model
    logits = None
    if raw_probabilities is not None:
        logits = torch.log(torch.as_tensor(np.clip(raw_probabilities, 1e-12, 1.0), dtype=torch.float32))[None]
    out = classify_uncertainty(model.eval(), x, meta, logits=logits, forward=forward, mc_samples=mc, tta=tta)
    out["mode"] = mode if mode != "auto" else ("mc-dropout" if mc else "calibration")
    return out
