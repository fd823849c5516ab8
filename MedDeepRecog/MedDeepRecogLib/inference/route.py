"""``--model auto``: choose the disease model that applies to a scan, and say why.

- A volume (or any image in HU or named MR/CT by DICOM) is routed by **modality** (its DICOM Modality tag CT or
  MR; without one, CT when its intensities are in HU, else MR) and **body region** (the bundled ``body-region``
  model's probabilities, restricted to that modality's classes, so an MR brain it calls "uncertain" still counts
  as a brain): :data:`ROUTES` maps the pair to a model.
- A picture (PNG/JPEG) or an ultrasound image has no modality or region the body-region model can read (it never saw
  ultrasound). Every bundled 2D disease model's own out-of-domain check scores it, and the model whose domain it
  fits best (lowest distance relative to that model's threshold) is chosen; none if it fits no model's domain.

The chosen model still applies its out-of-domain check to every slice, so a routed scan can come out as
"out-of-domain" (e.g. a brain MR without a tumour).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..errors import InputImageError

#: (modality, body-region class) -> disease model id.
ROUTES: dict[tuple[str, str], str] = {("MR", "MRBrain"): "brain-tumour-mri", ("CT", "CTChest"): "lung-ct-cancer"}
#: Disease models a picture or ultrasound image may go to (scored by their own out-of-domain checks).
PICTURE_MODELS = ("breast-us-lesion", "brain-tumour-mri", "lung-ct-cancer")
REGION_MODEL = "body-region"
#: Below this body-region probability the route's reason says the region is only the nearest class, not a
#: recognised one. It words the reason and does not change the choice: on the volumes at hand the body-region
#: probability does not separate right from wrong routes (a chest CT crop 0.09-0.12 for CTChest, an abdominal MR
#: 0.25 and a breast MR 0.996 for MRBrain), so the chosen model's own out-of-domain check is what refuses a scan.
WEAK_REGION_PROBABILITY = 0.5


@dataclass
class Route:
    """The model chosen for a scan (``None`` when no bundled model applies) and why, as plain data."""

    model: str | None
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "reason": self.reason, **self.evidence}


def route_image(image: sitk.Image, device: str = "cpu", source: str | Path | None = None) -> Route:
    """Choose a disease model for ``image`` (as read by :func:`..io.read_image` from ``source``, which refusals
    name)."""
    from ..io import is_picture
    from ..io.dicom_read import dicom_modality
    from .model_input import is_hounsfield

    modality_tag = dicom_modality(image)
    one_slice = image.GetDimension() == 2 or image.GetSize()[2] == 1
    if is_picture(image) or modality_tag == "US" or (one_slice and modality_tag not in ("CT", "MR")
                                                       and not is_hounsfield(image)):
        return _route_by_domain(image, device, why=("ultrasound (DICOM modality US)" if modality_tag == "US" else
                                                    "a picture without modality"))
    if modality_tag in ("CT", "MR"):
        # the scanner's own word, as for ultrasound (and as guess_modality reads it): intensities only decide for
        # files without the tag (NIfTI, NRRD)
        return _route_by_region(image, device, modality_tag, source, f"DICOM modality {modality_tag}")
    modality = "CT" if is_hounsfield(image) else "MR"
    return _route_by_region(image, device, modality, source,
                            "HU intensities" if modality == "CT" else "intensities not in HU")


def _route_by_region(image: sitk.Image, device: str, modality: str, source: str | Path | None = None,
                     modality_source: str = "") -> Route:
    from ..packages import load_package
    from .classify import classify_scan

    package = load_package(REGION_MODEL)
    region = classify_scan(image, package, explain="none", device=device, uncertainty="none", faithfulness=False,
                           source=source)
    probs = region.probability_map()
    # each class's modality, as the body-region package's own decision rules state it
    class_modality = (package.meta.get("decision") or {}).get("class_modality") or {}
    same = {c: p for c, p in probs.items() if class_modality.get(c) == modality}
    best = max(same, key=same.get)
    share = same[best] / max(sum(same.values()), 1e-12)
    evidence = {"modality": modality, "modality_source": modality_source, "body_region": best,
                "body_region_probability": round(probs[best], 4),
                "body_region_share_of_modality": round(share, 4),
                "body_region_model": f"{region.model['id']}@{region.model['version']}"}
    model = ROUTES.get((modality, best))
    # body-region's own verdict on the scan (its decision rules: e.g. "the scan shows only 30 mm across"): a region
    # it calls uncertain is only its nearest class, never stated as the scan's region
    doubts = list(region.decision.get("reasons") or []) if region.decision.get("uncertain") else []
    # the doubts quote body-region's confidence (the slices' plain mean) in its top class; beside them that class
    # is given by the same figure, not by its scan probability (a geometric mean): "confidence 0.55 ... (p=0.56)"
    # read as two values of one thing
    figure = f"p={probs[best]:.2f}"
    if doubts and best == region.decision.get("top_class") and region.decision.get("confidence") is not None:
        evidence["body_region_confidence"] = round(float(region.decision["confidence"]), 4)
        figure = f"confidence {evidence['body_region_confidence']:.2f}"
    if doubts:
        evidence["body_region_doubts"] = doubts
    where = (f"{modality} whose nearest body-region class is {best} ({figure}; body-region calls it "
             f"uncertain: {'; '.join(doubts)})" if doubts else
             f"{modality} of region {best} (body-region p={probs[best]:.2f})")
    if model is None:
        have = ", ".join(f"{m} {r}" for (m, r) in ROUTES)
        return Route(None, f"{where}: no bundled disease model covers it (models exist for: {have})", evidence)
    too_small = _too_small_for(image, load_package(model))
    if too_small:
        return Route(None, f"{where} would go to {model}, but {too_small}", evidence)
    if probs[best] < WEAK_REGION_PROBABILITY or doubts:
        evidence["body_region_evidence"] = "weak"
        nearest = (f"body-region calls the scan uncertain ({'; '.join(doubts)}), so {best} is only its nearest "
                   f"{modality} class ({figure})" if doubts else
                   f"{best} is only the nearest of the body-region model's {modality} classes (p={probs[best]:.2f}, "
                   f"{share:.0%} of them), not a recognised region")
        return Route(model, f"{modality} (from {evidence['modality_source']}); {nearest}, so {model}'s own "
                            f"out-of-domain check decides whether it applies -> {model}", evidence)
    evidence["body_region_evidence"] = "strong"
    return Route(model, f"{modality} (from {evidence['modality_source']}) of region {best} (body-region "
                        f"p={probs[best]:.2f}, {share:.0%} of the {modality} classes) -> {model}", evidence)


def _route_by_domain(image: sitk.Image, device: str, why: str) -> Route:
    from ..errors import ModelPackageError
    from ..packages import load_package
    from ..uncertainty.domain import capture_features
    from .classify import model_for
    from .model_input import as_volume, slices_from_image

    volume = as_volume(image, None, allow_2d=True)
    fits: dict[str, float] = {}
    import torch

    for model_id in PICTURE_MODELS:
        try:
            package = load_package(model_id)
        except ModelPackageError:  # not installed here (or unusable): not a candidate
            continue
        if package.domain is None or _too_small_for(image, package):
            continue
        inp = slices_from_image(volume, package.input_spec)
        model = model_for(package, device)
        with torch.no_grad(), capture_features(model) as store:
            model(torch.from_numpy(inp.x).to(device))
        scores = package.domain.scores(store.array())
        fits[model_id] = round(float(np.min(scores) / package.domain.threshold), 4)
    evidence = {"modality": why, "domain_distance_over_threshold": fits}
    inside = {m: v for m, v in fits.items() if v <= 1.0}
    if not inside:
        listing = ", ".join(f"{m} {v:.2f}x" for m, v in fits.items()) or "none installed"
        return Route(None, f"{why}: it lies outside every 2D disease model's domain (distance / threshold: "
                           f"{listing})", evidence)
    best = min(inside, key=inside.get)
    return Route(best, f"{why}: it fits {best}'s domain best (distance {inside[best]:.2f}x its threshold)", evidence)


def _too_small_for(image: sitk.Image, package) -> str | None:
    """Why ``image``'s slices are too small for a slice ``package`` (as classify would refuse them), else ``None``:
    a route never names a model that will refuse the scan."""
    from .classify import slice_size_shortfall

    if (package.input_spec.get("kind") or "") != "slices2d":
        return None
    shortfall = slice_size_shortfall(image, package)
    if shortfall is None:
        return None
    (width, height), minimum = shortfall
    return f"the image is {width} x {height} pixels, too small for it (at least {minimum} pixels per side)"


def require_route(route: Route, path) -> str:
    """The routed model id, or one clear error saying why no model applies."""
    if route.model is None:
        raise InputImageError(f"--model auto: no bundled model applies: {route.reason}", path)
    return route.model
