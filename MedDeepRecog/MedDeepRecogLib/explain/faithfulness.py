"""How much to trust a heatmap: faithfulness (deletion / insertion), localisation, and the randomisation check.

- **Deletion / insertion AUC** (Petsiuk et al., RISE, BMVC 2018): remove the most salient voxels first (replace
  them by a baseline) and watch the explained class's probability fall — a faithful map makes it fall fast
  (low deletion AUC); or start from the baseline and reveal the most salient voxels first (high insertion AUC).
  Computed with a small number of ``steps`` (default 10). The same curves for a random ordering of the voxels are
  the reference a map has to beat; all curves share their end points, so ``2 + 4 (steps - 1)`` perturbed inputs
  are classified, in batches.
- **Pointing game** (Zhang et al. 2018) and **mass inside** the lesion, where a segmentation exists.
- **Lesion reliance** (occlusion, Zeiler and Fergus 2014, of the labelled lesion itself): does the model's
  probability fall when the lesion is filled with the surrounding tissue's intensity, more than when a region of the
  same shape is filled elsewhere in the body? A heatmap can only land on the lesion if the decision rests on it;
  this tells a misplaced heatmap apart from a model that does not look at the lesion.
- **Model randomisation check** (Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018): with the
  model's weights re-initialised the map must change substantially (Spearman rank correlation below a
  threshold); a method whose map barely changes explains the input, not the model, and is not offered
  (:func:`methods_passing_sanity`).

Shapes: ``x`` is one model input ``(1, C, *spatial)`` (a volume ``(1, C, Z, Y, X)``, or a slice stack as one sample
``(1, C, S, H, W)``, see :mod:`MedDeepRecogLib.models.slice_stack`); ``saliency`` has the input's shape without
the channel axis. Everything here works on tensors and arrays; ``inference.trust`` applies it to a classified scan.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

#: ``forward(x) -> logits (B, K)``, batch rows independent.
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


def trapezoid_auc(values: Sequence[float]) -> float:
    """Area under a curve sampled at the equally spaced fractions 0, 1/steps, ..., 1 (trapezoidal rule)."""
    v = np.asarray(values, dtype=np.float64)
    return float((v[1:] + v[:-1]).sum() / (2 * (len(v) - 1)))


def _curves(forward: Forward, x: torch.Tensor, sal: torch.Tensor, target: int, orders: Sequence[torch.Tensor],
            steps: int, base_value: float, batch_size: int) -> list[tuple[list[float], list[float]]]:
    """``(deletion, insertion)`` probability curves of class ``target``, one pair per voxel order.

    Every curve starts or ends at the unperturbed input or the all-baseline input, so those two are classified
    once for all curves; the other ``4 (steps - 1)`` variants (two orders) go through ``forward`` in batches of
    ``batch_size``: ``2 + 4 (steps - 1)`` inputs instead of ``4 (steps + 1)``.
    """
    base = torch.full_like(x, base_value)
    n = sal.numel()
    variants = [x, base]
    for order in orders:
        for k in range(1, steps):
            m = torch.zeros(n, dtype=torch.bool)
            m[order[: int(round(k / steps * n))]] = True
            m = m.reshape(sal.shape)[:, None].expand_as(x)
            variants += [torch.where(m, base, x), torch.where(m, x, base)]
    probs: list[float] = []
    size = max(int(batch_size), 1)
    with torch.no_grad():
        for i in range(0, len(variants), size):
            probs += torch.softmax(forward(torch.cat(variants[i:i + size])).float(), dim=-1)[:, target].tolist()
    p_x, p_base, inner = probs[0], probs[1], probs[2:]
    curves = []
    for j in range(len(orders)):
        block = inner[j * 2 * (steps - 1):(j + 1) * 2 * (steps - 1)]
        curves.append(([p_x, *block[0::2], p_base], [p_base, *block[1::2], p_x]))
    return curves


def _prepare(x: torch.Tensor, saliency: torch.Tensor,
             baseline: str | float) -> tuple[torch.Tensor, torch.Tensor, float]:
    if x.shape[0] != 1:
        raise ValueError(f"one input at a time (batch 1), got a batch of {x.shape[0]}; a slice stack is one sample "
                         "(MedDeepRecogLib.models.slice_stack)")
    x = x.detach()
    sal = saliency_to_input(saliency, x)
    if tuple(sal.shape) != (x.shape[0], *x.shape[2:]):
        raise ValueError(f"saliency shape {tuple(sal.shape)} does not match input {tuple(x.shape)}")
    if isinstance(baseline, str):
        base_value = float(x.min()) if baseline == "min" else float(x.mean())
    else:
        base_value = float(baseline)
    return x, sal, base_value


def deletion_insertion(forward: Forward, x: torch.Tensor, saliency: torch.Tensor, target: int, *,
                       steps: int = 10, baseline: str | float = "min", order: torch.Tensor | None = None,
                       batch_size: int = 8) -> dict[str, Any]:
    """Deletion and insertion curves of the probability of class ``target``.

    Args:
        forward: ``(B, *x.shape[1:])`` → logits ``(B, K)`` with batch rows independent (a network in eval mode;
            a slice model as :class:`MedDeepRecogLib.models.slice_stack.SliceStackClassifier`).
        x: one model input ``(1, C, *spatial)``.
        saliency: ``(1, *spatial)`` map on x's grid (or a coarser one: it is upsampled).
        target: class index whose probability is followed (usually the predicted one).
        steps: number of equal shares of voxels removed/revealed (``steps + 1`` points per curve).
        baseline: value of removed voxels: ``"min"`` (the input's minimum, e.g. air / background), ``"mean"``,
            or a number in model input units.
        order: optional precomputed voxel ordering (flat indices over ``(1, *spatial)``, most salient first).
        batch_size: perturbed inputs classified per ``forward`` call.

    Returns:
        ``{"steps", "baseline", "deletion_auc", "insertion_auc", "deletion_curve", "insertion_curve"}``; AUCs are
        over the removed/revealed fraction 0..1, of a probability, so in 0..1.
    """
    steps = max(int(steps), 1)
    x, sal, base_value = _prepare(x, saliency, baseline)
    if order is None:
        # stable sort, so ties (flat Grad-CAM regions) keep a deterministic order
        order = torch.argsort(sal.reshape(-1), descending=True, stable=True)
    (deletion, insertion), = _curves(forward, x, sal, target, [order], steps, base_value, batch_size)
    return {"steps": steps, "baseline": base_value, "deletion_auc": trapezoid_auc(deletion),
            "insertion_auc": trapezoid_auc(insertion), "deletion_curve": deletion, "insertion_curve": insertion}


def faithfulness_scores(forward: Forward, x: torch.Tensor, saliency: torch.Tensor, target: int, *,
                        steps: int = 10, baseline: str | float = "min", random_reference: bool = True,
                        seed: int = 0, batch_size: int = 8) -> dict[str, Any]:
    """Deletion/insertion AUCs of ``saliency`` and, with ``random_reference``, of a random voxel order.

    The JSON-ready summary that goes next to a heatmap: ``deletion_auc`` (lower is better), ``insertion_auc``
    (higher is better), ``random_deletion_auc`` / ``random_insertion_auc`` (same curves with voxels in random
    order, drawn from ``seed``) and ``score = (insertion - deletion) - (random insertion - random deletion)``: > 0
    when the map is more faithful than chance. Curves are kept for plotting. Arguments as :func:`deletion_insertion`;
    the two orders' curves share their end points (classified once).
    """
    steps = max(int(steps), 1)
    x, sal, base_value = _prepare(x, saliency, baseline)
    orders = [torch.argsort(sal.reshape(-1), descending=True, stable=True)]
    if random_reference:
        orders.append(torch.randperm(sal.numel(), generator=torch.Generator().manual_seed(seed)))
    curves = _curves(forward, x, sal, target, orders, steps, base_value, batch_size)
    (deletion, insertion) = curves[0]
    out = {"steps": steps, "baseline": base_value, "deletion_auc": trapezoid_auc(deletion),
           "insertion_auc": trapezoid_auc(insertion), "deletion_curve": deletion, "insertion_curve": insertion,
           "target": int(target)}
    if random_reference:
        rdel, rins = curves[1]
        out["random_deletion_auc"] = trapezoid_auc(rdel)
        out["random_insertion_auc"] = trapezoid_auc(rins)
        out["score"] = (out["insertion_auc"] - out["deletion_auc"]) - (out["random_insertion_auc"]
                                                                       - out["random_deletion_auc"])
    return out


def unfaithful_warning(scores: dict[str, Any] | None) -> str | None:
    """The warning for a heatmap whose faithfulness ``score`` (:func:`faithfulness_scores`) is at or below -0.01,
    the figure printed beside it, else ``None``. The score is the sum of two gains over the random order: deletion
    (``random_deletion_auc - deletion_auc``: removing the hot pixels first lowers the prediction more) and insertion
    (``insertion_auc - random_insertion_auc``: restoring them first raises it more). The warning names the gain that
    is negative, so it never contradicts the AUCs printed beside it."""
    score = (scores or {}).get("score")
    if not isinstance(score, (int, float)) or round(float(score), 2) >= 0:
        return None
    failed = []
    if scores["random_deletion_auc"] - scores["deletion_auc"] < 0:
        failed.append("removing its hot pixels first lowers the prediction less than removing random ones")
    if scores["insertion_auc"] - scores["random_insertion_auc"] < 0:
        failed.append("restoring them first raises it less than restoring random ones")
    return f"this heatmap is not a faithful explanation ({'; '.join(failed)})"


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


def lesion_reliance(forward: Forward, x: torch.Tensor, lesion: torch.Tensor, body: torch.Tensor, *,
                    placements: int = 8, margin: int = 2, seed: int = 0) -> dict[str, Any] | None:
    """Probability drop of each image's predicted class when its lesion is filled, next to the same fill elsewhere.

    Args:
        forward: ``forward(x) -> logits (B, K)``.
        x: ``(N, C, H, W)`` model inputs (slices), each with some lesion.
        lesion: ``(N, H, W)`` bool lesion masks on the model grid; grown by ``margin`` pixels before filling, so the
            lesion's rim does not remain as an outline.
        body: ``(N, H, W)`` bool body masks: the fill value is the median of the body outside the lesion, and moved
            regions must lie in the body (at least 90 %) without touching the lesion.
        placements: positions of the moved region per image (seeded random shifts; fewer when the body is small).

    Returns:
        ``{"images", "drop_lesion", "drop_elsewhere", "lesion_above_elsewhere", "per_image"}``: the mean drop of
        the predicted class's probability with the lesion filled and with the region filled elsewhere (mean over
        placements), and how many images dropped more for their lesion than for every placement elsewhere;
        ``None`` when no image has a lesion.
    """
    keep = [i for i in range(len(x)) if bool(lesion[i].any())]
    if not keep:
        return None
    rng = np.random.default_rng(seed)
    h, w = x.shape[-2:]
    grown = F.max_pool2d(lesion.float()[:, None], 2 * margin + 1, 1, margin)[:, 0] > 0
    batch: list[torch.Tensor] = []
    rows: dict[int, list[int]] = {}  # image -> its rows of ``batch``: the lesion filled first, then the placements
    for i in keep:
        rows[i] = [len(batch)]
        tissue = body[i] & ~grown[i]
        fill = x[i][:, tissue].median(dim=1).values if tissue.any() else x[i].flatten(1).median(dim=1).values
        filled = x[i].clone()
        filled[:, grown[i]] = fill[:, None]
        batch.append(filled)
        ys, xs = torch.nonzero(grown[i], as_tuple=True)
        found = 0
        for _ in range(placements * 30):
            if found == placements:
                break
            dy, dx = (int(v) for v in rng.integers(-(h // 2), h // 2 + 1, 2))
            ny, nx = ys + dy, xs + dx
            if ny.min() < 0 or nx.min() < 0 or ny.max() >= h or nx.max() >= w:
                continue
            moved = torch.zeros_like(grown[i])
            moved[ny, nx] = True
            if (moved & grown[i]).any() or body[i][moved].float().mean() < 0.9:
                continue
            other = x[i].clone()
            other[:, moved] = fill[:, None]
            rows[i].append(len(batch))
            batch.append(other)
            found += 1
    with torch.inference_mode():
        base = torch.softmax(forward(x[keep]), dim=1)
        probs = torch.cat([torch.softmax(forward(b), dim=1) for b in torch.stack(batch).split(64)])
    target = {i: int(base[k].argmax()) for k, i in enumerate(keep)}
    p0 = {i: float(base[k, target[i]]) for k, i in enumerate(keep)}
    per_image = []
    for i in keep:
        lesion_drop = p0[i] - float(probs[rows[i][0], target[i]])
        others = [p0[i] - float(probs[k, target[i]]) for k in rows[i][1:]]
        per_image.append({"image": i, "class_index": target[i], "probability": round(p0[i], 4),
                          "drop_lesion": round(lesion_drop, 4),
                          "drop_elsewhere": round(float(np.mean(others)), 4) if others else None,
                          "placements": len(others),
                          "lesion_above_elsewhere": bool(others) and lesion_drop > max(others)})
    compared = [r for r in per_image if r["placements"]]
    return {"images": len(per_image),
            "drop_lesion": round(float(np.mean([r["drop_lesion"] for r in per_image])), 4),
            "drop_elsewhere": round(float(np.mean([r["drop_elsewhere"] for r in compared])), 4) if compared else None,
            "lesion_above_elsewhere": sum(r["lesion_above_elsewhere"] for r in per_image),
            "per_image": per_image}


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
