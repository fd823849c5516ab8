"""Prediction (and its explanation, in the same pass) from a prepared model input.

- ``slices2d`` (a 2D network per axial slice): every slice is classified; the volume's probabilities are the
  softmax of the **mean log-probability** over the voting slices (:mod:`..models.slice_stack`, the one slice
  aggregation). Per-slice labels and the fraction of slices agreeing with the volume label are reported.
- volume models (``volume3d``/``roi3d``; CNN-LSTM): one forward pass on the whole volume.

The decision rules that turn probabilities into a label or "uncertain" are data in the package
(``model.json`` ``"decision"``, see :func:`decide`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from ..contract import GRADCAM_METHODS
from ..errors import ConfigError
from ..models.slice_stack import mean_log_probability
from .model_input import ModelGrid, SliceInput, VolumeInput

@dataclass
class Prediction:
    """What a model said about one scan.

    Attributes:
        probabilities: ``(K,)`` class probabilities of the whole scan.
        per_slice: per-slice records (``slices2d`` and CNN-LSTM), else empty.
        heatmap: model-space map (``(Z, Y, X)`` on ``grid``) in 0..1, or ``None`` without explanation.
        grid: where ``heatmap`` sits in physical space.
        explained_class: index of the class the heatmap explains.
        agreement: fraction of voting slices whose own label is the scan's label (1.0 for volume models).
        slice_confidence: mean over voting slices of their probability for the scan's label, temperature-scaled
            when the package is calibrated (the quantity the ``min_probability`` rule compares, on the same scale
            as a single held-out image's probability in ``calibrate``);
            the scan probability for volume models.
        section_mm: smaller side (mm) of the body box, median over voting slices (slice models).
        regions: runs of consecutive voting slices with the same label, inferior to superior (slice models;
            :func:`label_runs`).
        extra: method-specific details for the JSON (e.g. target layer).
        feature_maps: slice models: the Grad-CAM maps ``(N, h, w)`` on the target layer's grid before any scaling
            (:attr:`..explain.gradcam.ExplainedPass.raw`).
        voting_logits: slice models: the network's logits ``(V, K)`` of the ``V`` slices ``slice_confidence`` is
            averaged over, so ``calibrate`` can recompute it at a new temperature (:func:`slice_confidence`).
        voting: slice models: ``(N,)`` bool, the slices whose log-probabilities ``probabilities`` averages (body
            present and, with an out-of-domain check that some of them pass, inside the domain; every slice when
            none has body), so other commands score the very prediction classify made
            (:class:`..models.slice_stack.SliceStackClassifier`).
    """

    probabilities: np.ndarray
    per_slice: list[dict] = field(default_factory=list)
    heatmap: np.ndarray | None = None
    grid: ModelGrid | None = None
    explained_class: int | None = None
    agreement: float = 1.0
    slice_confidence: float | None = None
    section_mm: float | None = None
    regions: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    domain: dict | None = None  # slice models with an out-of-domain check: how many slices passed it
    feature_maps: np.ndarray | None = None
    voting_logits: np.ndarray | None = None
    voting: np.ndarray | None = None


def slice_confidence(logits: np.ndarray, label: int, temperature: float = 1.0) -> float:
    """What the ``min_probability`` rule compares for a slice stack: the mean over the voting slices' softmax at
    ``temperature`` of the scan's ``label``. ``logits`` ``(V, K)``; 0.0 when no slice votes. For one image this is
    its temperature-scaled probability of ``label``."""
    logits = np.asarray(logits, dtype=np.float64)
    if len(logits) == 0:
        return 0.0
    z = logits / float(temperature)
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return float((p[:, label] / p.sum(axis=1)).mean())


def slice_vote(logits: torch.Tensor, voting: np.ndarray, temperature: float = 1.0
               ) -> tuple[Prediction, np.ndarray]:
    """The scan-level prediction of a slice stack's logits ``(S, K)``, and the slices' own softmax ``(S, K)``.

    The prediction (no maps, no per-slice records) holds the softmax of the mean log-probability over the ``voting``
    slices (``(S,)`` bool; none voting lets every slice vote) as ``probabilities``, the fraction of voting slices
    whose own label is the scan's as ``agreement``, and :func:`slice_confidence` at ``temperature``.
    :func:`predict_slices` aggregates with it, and so does the decision on an attacked stack
    (``inference.classify.decision_for_logits``), so both are classify's vote."""
    logits = logits.detach().float()
    v = np.asarray(voting, dtype=bool)
    mean = mean_log_probability(logits, v).cpu().numpy()
    probs = np.exp(mean - mean.max())
    probs /= probs.sum()
    label = int(probs.argmax())
    slice_probs = torch.log_softmax(logits, dim=1).exp().cpu().numpy()
    slice_labels = slice_probs.argmax(axis=1)
    agreement = float((slice_labels[v] == label).mean()) if v.any() else 0.0
    voting_logits = logits.cpu().numpy()[v]
    return Prediction(probabilities=probs, explained_class=label, agreement=agreement,
                      slice_confidence=slice_confidence(voting_logits, label, temperature),
                      voting_logits=voting_logits, voting=v), slice_probs


def predict_slices(model: torch.nn.Module, inp: SliceInput, *, explain: str, target_layer: str | None,
                   class_names: list[str], device: str = "cpu", domain=None, heat_inset_mm: float = 0.0,
                   temperature: float = 1.0) -> Prediction:
    """Classify the slices of ``inp`` with a 2D ``model`` and aggregate them (see the module docstring).

    Grad-CAM / Grad-CAM++ maps come from the same forward pass and explain the **scan's** class on every slice;
    they are scaled jointly over the stack (a slice that matters little stays dark), put on the working grid and
    cleared outside the body (air around the patient carries no finding) and, with ``heat_inset_mm`` (the
    package's ``explain.heat_inset_mm``), within that distance inside the body outline (scalp and skull on a head
    MR: a brain lesion is never there).

    ``domain``: the package's :class:`..uncertainty.domain.DomainCheck`. Slices it flags as outside the model's
    domain do not vote (when at least one slice passes); ``Prediction.domain`` counts them.

    ``temperature``: the package's fitted temperature. ``slice_confidence`` is taken from the slices' softmax at
    that temperature, the scale ``calibrate`` chooses ``min_probability`` on; the per-slice probabilities stay the
    network's own softmax.
    """
    from ..explain.gradcam import explained_forward, plain_forward
    from ..uncertainty.domain import capture_features

    if explain == "attention":  # refused before any work
        raise ConfigError("this model classifies single slices and has no attention to show; "
                          "use --explain gradcam or gradcampp")
    x = torch.from_numpy(inp.x).to(device)
    valid = torch.from_numpy(inp.valid.astype(np.float32)).to(device)
    if not bool(inp.valid.any()):
        valid = torch.ones_like(valid)  # nothing looks like a body: let every slice vote rather than none
    in_domain = np.ones(len(inp.x), dtype=bool)
    scores = None
    store = None

    def restrict_to_domain() -> None:
        # Runs right after the forward pass (features captured), before the slices' scores are weighted, so the
        # explained class and the vote both come from the in-domain slices. ``valid`` is changed in place: it is
        # the score weight the Grad-CAM pass applies next.
        nonlocal scores, in_domain
        if domain is None or scores is not None:
            return
        scores = domain.scores(store.array())
        in_domain = scores <= domain.threshold
        keep = torch.from_numpy(in_domain.astype(np.float32)).to(valid)
        if bool((valid * keep).any()):
            valid.mul_(keep)

    def scan_class(logits: torch.Tensor) -> torch.Tensor:
        restrict_to_domain()
        return mean_log_probability(logits, valid > 0).argmax().expand(logits.shape[0])

    maps = None
    with capture_features(model) if domain is not None else contextlib.nullcontext() as captured:
        store = captured
        if explain in GRADCAM_METHODS:
            if not target_layer:
                raise ConfigError("the model package names no Grad-CAM target layer (explain.target_layer)")
            out = explained_forward(model, x, target_layer, method=explain, class_index=scan_class,
                                    score_weight=valid, joint=True)
            logits, maps, raw_maps = out.logits, out.maps, out.raw
        else:
            logits = plain_forward(model, x)
    restrict_to_domain()
    v = valid.cpu().numpy().astype(bool)
    # no slice in the domain: the body slices vote, and the scan is reported as out of domain
    pred, slice_probs = slice_vote(logits, v, temperature)
    slice_labels = slice_probs.argmax(axis=1)
    # "voted" is the vote itself (v): when no body slice passes the out-of-domain check the body slices vote,
    # even if a near-empty slice passed it
    per_slice = [{"index": int(z), "label": class_names[int(k)], "probability": round(float(p[k]), 4),
                  "voted": bool(ok)}
                 for z, k, p, ok in zip(inp.slice_index, slice_labels, slice_probs, v)]
    if scores is not None:
        for rec, sc, ok in zip(per_slice, scores, in_domain):
            rec["in_domain"], rec["domain_distance"] = bool(ok), round(float(sc), 2)
    pred.per_slice, pred.grid = per_slice, inp.grid
    pred.regions = label_runs(per_slice)
    if scores is not None:
        checked = inp.valid if inp.valid.any() else np.ones_like(inp.valid)
        pred.domain = {"slices_checked": int(checked.sum()), "slices_in_domain": int((in_domain & checked).sum()),
                       "threshold": round(float(domain.threshold), 3)}
    if inp.extent_mm is not None and v.any():
        # The smaller side of the body box, median over voting slices: how much of a cross-section the scan shows.
        pred.section_mm = round(float(np.median(inp.extent_mm[v].min(axis=1))), 1)
    if maps is not None:
        pred.heatmap = maps_to_working_grid(maps, inp) * body_masks(inp, heat_inset_mm)
        pred.feature_maps = raw_maps.float().cpu().numpy()
        pred.extra["target_layer"] = target_layer
    return pred


def body_masks(inp: SliceInput, inset_mm: float = 0.0) -> np.ndarray:
    """``(N, Hw, Ww)`` float32 masks of the body on the working slices: :meth:`.model_input.SliceInput.body` (above
    the package's ``foreground_threshold`` on the standardised slice), small gaps closed and holes (lungs,
    ventricles) filled, so only the air around the patient is cleared (SimpleITK binary morphology, per slice).
    ``inset_mm`` > 0: only pixels at least that far (mm, on the working grid's pixel spacing) inside the outline are
    kept. All ones where ``inp.whole_image_is_body`` (ultrasound: dark is tissue there, not air, and the image shows
    no body outline).

    The closing and the hole filling run once on the slices laid side by side with empty gaps between them (one
    filter call instead of one per slice: 0.14 s against 0.22 s for a 38-slice 256x256 stack, best of 5), which
    gives each slice exactly its own result: a gap wider than the closing's reach keeps slices apart, and a hole
    touching a slice's edge reaches the mosaic's border through the gap, as it reaches the image border on its own."""
    import SimpleITK as sitk

    n, h, w = inp.display.shape
    if n == 0:
        return np.zeros(inp.display.shape, dtype=np.float32)
    if inp.whole_image_is_body:
        return np.ones(inp.display.shape, dtype=np.float32)
    radius, gap = 2, 8  # gap > 2 * radius: one slice's dilation never meets its neighbour's
    mosaic = np.zeros((h + 2 * gap, n * (w + gap) + gap), dtype=np.uint8)
    columns = [gap + i * (w + gap) for i in range(n)]
    for c, sl in zip(columns, inp.display):
        mosaic[gap:gap + h, c:c + w] = inp.body(sl)
    closed = sitk.BinaryFillhole(sitk.BinaryMorphologicalClosing(sitk.GetImageFromArray(mosaic), [radius, radius]))
    filled = sitk.GetArrayViewFromImage(closed)
    out = np.stack([filled[gap:gap + h, c:c + w] for c in columns]).astype(np.float32)
    if inset_mm > 0:
        for i in range(n):
            fg = sitk.GetImageFromArray(out[i].astype(np.uint8))
            fg.SetSpacing(tuple(float(v) for v in inp.grid.spacing[:2]))
            depth = sitk.SignedMaurerDistanceMap(fg, insideIsPositive=True, squaredDistance=False,
                                                 useImageSpacing=True)
            out[i] = sitk.GetArrayViewFromImage(depth) >= float(inset_mm)
    return out


def slice_runs(per_slice: list[dict]) -> list[list[dict]]:
    """Runs of consecutive voting slices sharing a label, inferior to superior, as lists of their records. A slice
    that did not vote ends a run as a slice of another label does: a run is slices read as its label with nothing
    between them, so its first and last index never enclose a slice read otherwise (``regions`` once merged a
    one-slice run into its neighbours, and brain1's glioma "1-23" enclosed slices read as pituitary)."""
    runs: list[list[dict]] = []
    current: list[dict] = []
    for rec in per_slice:
        if rec.get("voted", True) and current and current[-1]["label"] == rec["label"]:
            current.append(rec)
            continue
        if current:
            runs.append(current)
        current = [rec] if rec.get("voted", True) else []
    if current:
        runs.append(current)
    return runs


def label_runs(per_slice: list[dict]) -> list[dict]:
    """``regions``: each run of :func:`slice_runs` as ``{"label", "first", "last", "slices"}`` (axial indices of the
    LPS view; ``slices``: the run's classified slices, every one read as ``label``; a volume's slices are sampled,
    so they can be fewer than last - first + 1). The finding's run
    (:func:`.classify.finding_range`) is one of them, so the JSON's ranges and the printed one agree."""
    return [{"label": run[0]["label"], "first": run[0]["index"], "last": run[-1]["index"], "slices": len(run)}
            for run in slice_runs(per_slice)]


def maps_to_working_grid(maps: torch.Tensor, inp: SliceInput) -> np.ndarray:
    """Put per-slice model-space maps ``(N, h, w)`` back on the working slices ``(N, Hw, Ww)``.

    Inverts each slice's crop/pad/resize affine (``inp.theta``) with one batched ``grid_sample``; outside the
    body box the map is 0.
    """
    theta = torch.from_numpy(inp.theta).to(maps)
    a = theta[:, :, :2]
    t = theta[:, :, 2:]
    inv_a = torch.linalg.inv(a)
    inv = torch.cat([inv_a, -inv_a @ t], dim=2)
    hw, ww = inp.work_shape
    grid = F.affine_grid(inv, [maps.shape[0], 1, hw, ww], align_corners=False)
    out = F.grid_sample(maps[:, None].float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[:, 0].cpu().numpy()


def maps_to_model_grid(maps: np.ndarray, inp: SliceInput) -> torch.Tensor:
    """The inverse of :func:`maps_to_working_grid`: working-slice maps ``(N, Hw, Ww)`` onto the model grid
    ``(N, h, w)`` through each slice's crop/pad/resize affine (``inp.theta``), bilinear; outside the slice, 0."""
    x = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))
    theta = torch.from_numpy(inp.theta).to(x)
    grid = F.affine_grid(theta, [x.shape[0], 1, *inp.x.shape[-2:]], align_corners=False)
    return F.grid_sample(x[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]


def predict_volume(model: torch.nn.Module, inp: VolumeInput, *, explain: str, target_layer: str | None,
                   class_names: list[str], device: str = "cpu") -> Prediction:
    """Classify a whole-volume input ``(1, C, D, H, W)``; heatmap from Grad-CAM(++) or the model's attention."""
    from ..explain.gradcam import explained_forward, plain_forward

    x = torch.from_numpy(inp.x).to(device)
    maps = None
    extra: dict[str, Any] = {}
    if explain in GRADCAM_METHODS:
        if not target_layer:
            raise ConfigError("the model package names no Grad-CAM target layer (explain.target_layer)")
        out = explained_forward(model, x, target_layer, method=explain)
        logits, maps = out.logits, out.maps
        extra["target_layer"] = target_layer
    else:
        logits = plain_forward(model, x)
    attention = getattr(model, "last_attention", None)
    if explain == "attention":
        if attention is None:
            raise ConfigError("this model has no attention to show; use --explain gradcam or gradcampp")
        maps = _attention_map(attention)
        extra["attention"] = "per-slice" if attention.ndim == 2 else "spatial"
    probs = torch.softmax(logits.float(), dim=1)[0].cpu().numpy()
    label = int(probs.argmax())
    pred = Prediction(probabilities=probs, grid=inp.grid, explained_class=label, extra=extra)
    if attention is not None and attention.ndim == 2:
        # CNN-LSTM: per-slice attention weights along the model grid's Z (sum to 1).
        pred.per_slice = [{"index": int(i), "attention": round(float(w), 5)}
                          for i, w in enumerate(attention[0].cpu().numpy())]
    if maps is not None:
        pred.heatmap = _upsample_to_grid(maps[0], tuple(inp.x.shape[2:]))
    return pred


def _attention_map(attention: torch.Tensor) -> torch.Tensor:
    """Model attention as a ``(1, z, y, x)`` 0..1 map: per-slice weights become constant slices."""
    a = attention.detach().float()
    if a.ndim == 2:  # (B, Z) -> (B, Z, 1, 1)
        a = a[:, :, None, None]
    elif a.ndim == 5:  # (B, 1, z, y, x)
        a = a[:, 0]
    return a / a.flatten(1).max(dim=1).values.clamp_min(1e-12).view(-1, *([1] * (a.ndim - 1)))


def _upsample_to_grid(map_: torch.Tensor, size_dhw: tuple[int, int, int]) -> np.ndarray:
    """Trilinear upsampling of a feature-grid map ``(d, h, w)`` to the model input grid ``(D, H, W)``."""
    m = map_.float()[None, None]
    if tuple(m.shape[2:]) != size_dhw:
        m = F.interpolate(m, size=size_dhw, mode="trilinear", align_corners=False)
    return m[0, 0].clamp(0, 1).cpu().numpy()


def decide(probabilities: np.ndarray, class_names: list[str], rules: Mapping[str, Any] | None, *,
           agreement: float = 1.0, confidence: float | None = None, n_slices: int = 1,
           modality: str | None = None, section_mm: float | None = None) -> dict[str, Any]:
    """Turn probabilities into a reported label, or ``"uncertain"`` with the reasons.

    ``rules`` (model.json ``"decision"``), all optional:
        ``min_probability``: the top class is not reported when ``confidence`` (default: its probability; for a
        slice stack the mean per-slice probability of that class) is below it (chosen on held-out data, see the
        model card);
        ``min_agreement``: fraction of voting slices that must agree with the scan label;
        ``volume_excluded_classes``: classes that cannot describe a multi-slice volume (e.g. ``CXR``, a radiograph);
        ``class_modality``: ``{class: "CT"|"MR"}``; a class whose modality contradicts the scan's (``modality``:
        ``"CT"`` for a scan in HU, with air near -1000, else ``"MR"``; ``None`` for a picture, PNG/JPEG, whose grey
        levels say nothing of HU, so the rule is not applied) is not reported;
        ``min_section_mm``: the classes are whole axial cross-sections; a volume whose body box (smaller side,
        median over slices: ``section_mm``) is smaller than this shows too little anatomy to be one of them.

    Returns:
        ``{"label", "top_class", "confidence", "uncertain", "reasons", "modality"}`` where ``modality`` is the
        coarse call ``{"label": "CT"|"MR"|"uncertain", "probability", "source"}``: CT when the scan is in HU
        (physical evidence), else MR when the model's summed MR probability is the larger and passes
        ``min_probability``; for a picture (``modality`` ``None``) the model's larger sum when it passes
        ``min_probability``; ``probability`` is the model's summed probability of the CT or MR classes. A scan can be
        surely CT while its region is uncertain.
    """
    rules = dict(rules or {})
    top = int(np.argmax(probabilities))
    name = class_names[top]
    p = float(probabilities[top]) if confidence is None else float(confidence)
    reasons: list[str] = []
    if "min_probability" in rules and p < float(rules["min_probability"]):
        reasons.append(f"confidence {p:.2f} in {name} is below the model's threshold "
                       f"{float(rules['min_probability']):.2f}")
    if n_slices > 1 and "min_agreement" in rules and agreement < float(rules["min_agreement"]):
        reasons.append(f"only {agreement:.0%} of the slices agree with {name} "
                       f"(needs {float(rules['min_agreement']):.0%})")
    if n_slices > 1 and name in rules.get("volume_excluded_classes", []):
        reasons.append(f"{name} describes a projection radiograph, not an axial slice stack")
    if (n_slices > 1 and section_mm is not None and "min_section_mm" in rules
            and section_mm < float(rules["min_section_mm"])):
        reasons.append(f"the scan shows only {section_mm:.0f} mm across (the model's classes are whole cross-sections,"
                       f" at least {float(rules['min_section_mm']):.0f} mm)")
    class_modality = rules.get("class_modality") or {}
    expected = class_modality.get(name)
    if expected and modality in ("CT", "MR") and modality != expected:
        seen = "are in HU (CT)" if modality == "CT" else "are not in HU (not CT)"
        reasons.append(f"{name} is a {expected} class but the scan's intensities {seen}")
    coarse: dict[str, Any] = {"label": "uncertain", "probability": None, "source": None}
    if class_modality:
        sums = {m: float(sum(pr for c, pr in zip(class_names, probabilities) if class_modality.get(c) == m))
                for m in ("CT", "MR")}
        best = max(sums, key=sums.get)
        if modality == "CT":
            # Intensities in HU (air at -1000) are physical evidence of CT whatever the network says; the
            # network's own CT probability is reported beside it.
            coarse = {"label": "CT", "probability": round(sums["CT"], 4), "source": "HU intensities"
                      + (" and model" if best == "CT" else "; the model disagrees")}
        elif modality is None:  # a picture: the model alone
            ok = sums[best] >= float(rules.get("min_probability", 0.5))
            coarse = {"label": best if ok else "uncertain", "probability": round(sums[best], 4),
                      "source": "model (a picture holds no HU values to judge by)"}
        else:
            ok = best == "MR" and sums[best] >= float(rules.get("min_probability", 0.5))
            coarse = {"label": "MR" if ok else "uncertain", "probability": round(sums[best], 4),
                      "source": "model, intensities not in HU"}
    return {"label": "uncertain" if reasons else name, "top_class": name, "confidence": round(p, 4),
            "uncertain": bool(reasons), "reasons": reasons, "modality": coarse}
