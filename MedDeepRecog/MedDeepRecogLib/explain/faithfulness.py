"""How much to trust a heatmap: faithfulness (deletion / insertion), localisation, and the randomisation check.

- **Deletion / insertion AUC** (Petsiuk et al., RISE, BMVC 2018): remove the most salient voxels first (replace
  them by a baseline) and watch the explained class's probability fall — a faithful map makes it fall fast
  (low deletion AUC); or start from the baseline and reveal the most salient voxels first (high insertion AUC).
  Computed with a small number of ``steps`` (default 10: 2 x 11 forward passes). The same curves for a random
  ordering of the voxels are the reference a map has to beat.
- **Pointing game** (Zhang et al. 2018) and **mass inside** the lesion, where a segmentation exists.
- **Model randomisation check** (Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018): with the
  model's weights re-initialised the map must change substantially (Spearman rank correlation below a
  threshold); a method whose map barely changes explains the input, not the model, and is not offered
  (:func:`methods_passing_sanity`).

Shapes: ``x`` is the model input ``(N, C, *spatial)`` — one volume ``(1, C, Z, Y, X)`` or a slice stack
``(S, C, Y, X)``; ``saliency`` has the input's shape without the channel axis, ``(N, *spatial)``.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

#: ``forward(x) -> logits (1, K)`` for the whole input (a slice model aggregates its stack to one row).
Forward = Callable[[torch.Tensor], torch.Tensor]
#: ``explain(model, x) -> saliency (N, *spatial)`` for a given model.
ExplainFn = Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]


def saliency_to_input(saliency: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Upsample a model-space map ``(N, *s)`` (e.g. Grad-CAM on the feature grid) to ``x``'s grid ``(N, *S)``."""
    saliency = torch.as_tensor(saliency, dtype=torch.float32)
    target = tuple(x.shape[2:])
    if tuple(saliency.shape[1:]) == target:
        return saliency
    mode = "trilinear" if len(target) == 3 else "bilinear"
    return F.interpolate(saliency[:, None], size=target, mode=mode, align_corners=False)[:, 0]


def _probability(forward: Forward, x: torch.Tensor, target: int) -> float:
    with torch.no_grad():
        return float(torch.softmax(forward(x), dim=-1)[0, target])


def _auc(values: Sequence[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    # trapezoidal rule over fractions 0, 1/steps, ..., 1
    return float((v[1:] + v[:-1]).sum() / (2 * (len(v) - 1)))


def deletion_insertion(forward: Forward, x: torch.Tensor, saliency: torch.Tensor, target: int, *,
                       steps: int = 10, baseline: str | float = "min", order: torch.Tensor | None = None,
                       batch_size: int = 8) -> dict[str, Any]:
    """Deletion and insertion curves of the probability of class ``target``.

    Args:
        forward: ``x -> logits (1, K)``.
        x: model input ``(N, C, *spatial)``.
        saliency: ``(N, *spatial)`` map on x's grid (or a coarser one: it is upsampled).
        target: class index whose probability is followed (usually the predicted one).
        steps: number of equal shares of voxels removed/revealed (``steps + 1`` points per curve).
        baseline: value of removed voxels: ``"min"`` (the input's minimum, e.g. air / background), ``"mean"``,
            or a number in model input units.
        order: optional precomputed voxel ordering (flat indices over ``(N, *spatial)``, most salient first).
        batch_size: for a single input (``N == 1``) the ``2 * (steps + 1)`` perturbed inputs are classified in
            batches of this size (``forward`` must then treat batch rows independently, as a network in eval
            mode does); 1 = one at a time. Slice stacks (``N > 1``) are always one input per call.

    Returns:
        ``{"steps", "baseline", "deletion_auc", "insertion_auc", "deletion_curve", "insertion_curve"}``; AUCs are
        over the removed/revealed fraction 0..1, of a probability, so in 0..1.
    """
    steps = max(int(steps), 1)
    x = x.detach()
    sal = saliency_to_input(saliency, x)
    if tuple(sal.shape) != (x.shape[0], *x.shape[2:]):
        raise ValueError(f"saliency shape {tuple(sal.shape)} does not match input {tuple(x.shape)}")
    if isinstance(baseline, str):
        base_value = float(x.min()) if baseline == "min" else float(x.mean())
    else:
        base_value = float(baseline)
    n_vox = sal.numel()
    if order is None:
        # stable sort, so ties (flat Grad-CAM regions) keep a deterministic order
        order = torch.argsort(sal.reshape(-1), descending=True, stable=True)
    base = torch.full_like(x, base_value)
    masks = []
    for k in range(steps + 1):
        m = torch.zeros(n_vox, dtype=torch.bool)
        m[order[: int(round(k / steps * n_vox))]] = True
        masks.append(m.reshape(sal.shape)[:, None].expand_as(x))
    if batch_size > 1 and x.shape[0] == 1:
        # one volume: every point of both curves is an independent sample, so run them as batches
        variants = [torch.where(m, base, x) for m in masks] + [torch.where(m, x, base) for m in masks]
        probs = []
        with torch.no_grad():
            for i in range(0, len(variants), batch_size):
                probs += torch.softmax(forward(torch.cat(variants[i:i + batch_size])), dim=-1)[:, target].tolist()
        deletion, insertion = probs[: steps + 1], probs[steps + 1:]
    else:
        deletion = [_probability(forward, torch.where(m, base, x), target) for m in masks]
        insertion = [_probability(forward, torch.where(m, x, base), target) for m in masks]
    return {"steps": steps, "baseline": base_value, "deletion_auc": _auc(deletion), "insertion_auc": _auc(insertion),
            "deletion_curve": deletion, "insertion_curve": insertion}


def faithfulness_scores(forward: Forward, x: torch.Tensor, saliency: torch.Tensor, target: int, *,
                        steps: int = 10, baseline: str | float = "min", random_reference: bool = True,
                        seed: int = 0) -> dict[str, Any]:
    """Deletion/insertion AUCs of ``saliency`` and, with ``random_reference``, of a random voxel order.

    The JSON-ready summary that goes next to a heatmap: ``deletion_auc`` (lower is better), ``insertion_auc``
    (higher is better), ``random_deletion_auc`` / ``random_insertion_auc`` (same curves with voxels in random
    order) and ``score = (insertion - deletion) - (random insertion - random deletion)``: > 0 when the map is
    more faithful than chance. Curves are kept for plotting.
    """
    out = deletion_insertion(forward, x, saliency, target, steps=steps, baseline=baseline)
    out["target"] = int(target)
    if random_reference:
        g = torch.Generator().manual_seed(seed)
        n = int(np.prod((x.shape[0], *x.shape[2:])))
        rnd = deletion_insertion(forward, x, saliency, target, steps=steps, baseline=baseline,
                                 order=torch.randperm(n, generator=g))
        out["random_deletion_auc"] = rnd["deletion_auc"]
        out["random_insertion_auc"] = rnd["insertion_auc"]
        out["score"] = (out["insertion_auc"] - out["deletion_auc"]) - (rnd["insertion_auc"] - rnd["deletion_auc"])
    return out


# ------------------------------------------------------------------------------------------- localisation
def pointing_game(heatmap: np.ndarray, mask: np.ndarray, *, spacing: Sequence[float] | None = None,
                  tolerance_mm: float = 0.0) -> dict[str, Any]:
    """Is the heatmap's peak inside the lesion (or within ``tolerance_mm`` of it)?

    Args:
        heatmap: ``(Z, Y, X)`` (or 2D) map on the scan grid.
        mask: same shape, non-zero inside the lesion.
        spacing: voxel size in mm in array axis order ``(z, y, x)``; default 1 mm.

    Returns:
        ``{"hit": bool, "peak_index": [z, y, x], "distance_mm": distance of the peak to the nearest lesion voxel}``;
        ``hit`` is None when the mask is empty.
    """
    h = np.asarray(heatmap, dtype=np.float64)
    m = np.asarray(mask) != 0
    if h.shape != m.shape:
        raise ValueError(f"heatmap shape {h.shape} and lesion mask shape {m.shape} differ")
    peak = np.array(np.unravel_index(int(np.argmax(h)), h.shape))
    if not m.any():
        return {"hit": None, "peak_index": peak.tolist(), "distance_mm": None}
    sp = np.ones(h.ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    dist = 0.0 if m[tuple(peak)] else float(np.min(np.linalg.norm((np.argwhere(m) - peak) * sp, axis=1)))
    return {"hit": bool(dist <= tolerance_mm), "peak_index": peak.tolist(), "distance_mm": dist}


def mass_inside(heatmap: np.ndarray, mask: np.ndarray) -> float | None:
    """Share of the heatmap's total mass inside the lesion mask (0..1); None for an all-zero heatmap."""
    h = np.clip(np.asarray(heatmap, dtype=np.float64), 0, None)
    m = np.asarray(mask) != 0
    if h.shape != m.shape:
        raise ValueError(f"heatmap shape {h.shape} and lesion mask shape {m.shape} differ")
    total = h.sum()
    return None if total <= 0 else float(h[m].sum() / total)


def localisation_scores(heatmap: np.ndarray, mask: np.ndarray, *, spacing: Sequence[float] | None = None,
                        tolerance_mm: float = 0.0) -> dict[str, Any]:
    """``{"pointing_game": {...}, "mass_inside": float, "lesion_voxels": int}`` for a heatmap and a lesion mask."""
    return {"pointing_game": pointing_game(heatmap, mask, spacing=spacing, tolerance_mm=tolerance_mm),
            "mass_inside": mass_inside(heatmap, mask), "lesion_voxels": int(np.count_nonzero(mask))}


# ------------------------------------------------------------------------------------ randomisation check
def spearman(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Spearman rank correlation of two maps (average ranks for ties); 0 when either map is constant."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()

    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=np.float64)
        # average ranks of ties
        _, inv, counts = np.unique(v, return_inverse=True, return_counts=True)
        sums = np.bincount(inv, weights=r)
        return (sums / counts)[inv]

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def randomized_copy(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """A deep copy of ``model`` with every parameterised layer re-initialised (its default init, seeded).

    Batch-norm running statistics are kept (Adebayo et al. randomise the learned weights).
    """
    clone = copy.deepcopy(model)
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        for m in clone.modules():
            if hasattr(m, "reset_parameters") and not isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.reset_parameters()
            elif isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.affine:
                # re-initialising BN's affine to (1, 0) would not randomise anything; draw it instead
                torch.nn.init.normal_(m.weight, 1.0, 0.5)
                torch.nn.init.normal_(m.bias, 0.0, 0.5)
    finally:
        torch.set_rng_state(state)
    return clone.eval()


def model_randomization_check(model: torch.nn.Module, x: torch.Tensor, explain: ExplainFn, *,
                              threshold: float = 0.5, seeds: Iterable[int] = (0, 1)) -> dict[str, Any]:
    """Adebayo et al.'s model-parameter randomisation test for one explanation method.

    The map of the trained ``model`` is compared (Spearman rank correlation over all voxels) with the maps of
    fully re-initialised copies; the method passes when the mean *absolute* correlation is at most ``threshold``
    (absolute, as in the paper: an inverted map still mirrors the input's structure).

    Returns:
        ``{"spearman": mean absolute correlation, "per_seed": [signed correlations], "threshold", "passed": bool}``.
    """
    ref = explain(model, x).detach().float().cpu().numpy()
    corrs = [spearman(ref, explain(randomized_copy(model, s), x).detach().float().cpu().numpy()) for s in seeds]
    mean = float(np.mean(np.abs(corrs)))
    return {"spearman": mean, "per_seed": corrs, "threshold": threshold, "passed": bool(mean <= threshold)}


def methods_passing_sanity(model: torch.nn.Module, x: torch.Tensor, methods: Mapping[str, ExplainFn], *,
                           threshold: float = 0.5) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Run :func:`model_randomization_check` for each named method; return the names that pass and all reports.

    A package's ``explain.methods`` should only list methods that pass (they are the only ones offered).
    """
    reports = {name: model_randomization_check(model, x, fn, threshold=threshold) for name, fn in methods.items()}
    return [n for n, r in reports.items() if r["passed"]], reports


# ------------------------------------------------------------------------ classify integration (C's result)
def classification_faithfulness(result: Any, model: torch.nn.Module, *, target_layer: str | None = None,
                                steps: int = 10, random_reference: bool = True) -> dict[str, Any] | None:
    """Deletion / insertion AUC of a ``classify_scan`` result's heatmap (None when it has no heatmap).

    Uses the result's model input and the same scan-level prediction as classify: for slice models the stack is
    one sample (mean log-probability over voting slices) and the Grad-CAM maps are recomputed on the model
    image grid (classify keeps them on the working grid); for volume models ``result.model_map`` is used.

    Returns:
        the :func:`faithfulness_scores` dict (curves rounded) plus ``"class"`` (the explained class) and
        ``"method"``; what ``classify`` puts at ``explain.faithfulness`` of its JSON.
    """
    from ..inference.model_input import SliceInput
    from ..robustness.curve import ScanAggregate

    method = (result.explain or {}).get("method")
    if result.heatmap is None or method in (None, "none"):
        return None
    inp = result.model_input
    x = torch.from_numpy(np.ascontiguousarray(inp.x)).float()
    target = int(result.class_names.index(result.explain.get("class", result.decision["top_class"])))
    model.eval()
    if isinstance(inp, SliceInput):
        from .gradcam import explained_forward

        if method not in ("gradcam", "gradcampp"):
            return None
        layer = target_layer or result.explain.get("target_layer")
        maps = explained_forward(model, x, layer, method=method,
                                 class_index=torch.full((x.shape[0],), target, dtype=torch.long)).maps
        forward: Forward = ScanAggregate(model, torch.from_numpy(inp.valid))
        saliency = maps
    else:
        forward = model
        saliency = torch.from_numpy(np.ascontiguousarray(result.model_map, dtype=np.float32))[None]
    scores = faithfulness_scores(forward, x, saliency, target, steps=steps, random_reference=random_reference)
    scores["deletion_curve"] = [round(v, 4) for v in scores["deletion_curve"]]
    scores["insertion_curve"] = [round(v, 4) for v in scores["insertion_curve"]]
    for k in ("deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc", "score"):
        if k in scores:
            scores[k] = round(float(scores[k]), 4)
    scores.update({"class": result.class_names[target], "method": method})
    return scores


def faithfulness_caption(scores: Mapping[str, Any] | None) -> str:
    """One line for the heatmap PNG / panel, e.g. ``deletion AUC 0.21 (random 0.48), insertion AUC 0.83 (0.51)``."""
    if not scores:
        return ""
    text = f"deletion AUC {scores['deletion_auc']:.2f}"
    if "random_deletion_auc" in scores:
        text += f" (random {scores['random_deletion_auc']:.2f})"
    text += f", insertion AUC {scores['insertion_auc']:.2f}"
    if "random_insertion_auc" in scores:
        text += f" (random {scores['random_insertion_auc']:.2f})"
    return text


def classification_localisation(result: Any, lesion: Any, *, tolerance_mm: float = 0.0) -> dict[str, Any] | None:
    """Pointing game and heatmap mass inside a lesion segmentation, on the scan's grid.

    Args:
        result: a ``classify_scan`` result with a heatmap.
        lesion: a label image (SimpleITK; non-zero = lesion), resampled (nearest neighbour) onto the scan if needed.
    """
    import SimpleITK as sitk

    if result.heatmap is None:
        return None
    ref = result.heatmap
    if (lesion.GetSize() != ref.GetSize() or not np.allclose(lesion.GetSpacing(), ref.GetSpacing())
            or not np.allclose(lesion.GetOrigin(), ref.GetOrigin())
            or not np.allclose(lesion.GetDirection(), ref.GetDirection())):
        lesion = sitk.Resample(lesion, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    mask = sitk.GetArrayViewFromImage(lesion) != 0
    heat = sitk.GetArrayViewFromImage(ref)
    scores = localisation_scores(heat, mask, spacing=tuple(reversed(ref.GetSpacing())), tolerance_mm=tolerance_mm)
    if len(getattr(result, "per_slice", None) or []) > 1 and "index" in result.per_slice[0]:
        from ..inference.model_input import lps_view

        scores["per_slice"] = slice_localisation(lps_view(ref).array, lps_view(lesion).array != 0)
    return scores


def slice_localisation(heat_zyx: np.ndarray, mask_zyx: np.ndarray) -> dict[str, Any]:
    """Per axial slice that holds lesion (a slice model explains each slice on its own): is the slice's heatmap
    peak inside the lesion (pointing game), and which share of the slice's heat lies inside it.

    ``heat_zyx`` / ``mask_zyx``: the heatmap and lesion mask as LPS-view ``(Z, Y, X)`` arrays. Slices without
    lesion or without heat are not counted; ``lesion_area_share`` is the lesion's share of those slices' pixels
    (what uniform heat would put inside it).
    """
    hits, mass, area, counted = 0, [], [], []
    for z in range(mask_zyx.shape[0]):
        m = mask_zyx[z]
        h = np.asarray(heat_zyx[z], dtype=np.float64)
        if not m.any() or h.max() <= 0:
            continue
        counted.append(z)
        hits += bool(m.flat[int(np.argmax(h))])
        mass.append(float(h[m].sum() / h.sum()))
        area.append(float(m.mean()))
    n = len(counted)
    return {"slices": n, "pointing_hits": hits, "pointing_rate": round(hits / n, 4) if n else None,
            "mean_mass_inside": round(float(np.mean(mass)), 4) if n else None,
            "lesion_area_share": round(float(np.mean(area)), 4) if n else None, "slice_indices": counted}
