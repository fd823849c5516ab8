"""Evaluate a model package on a labelled ``.npz`` split (or an image folder with a labels CSV, as train reads it):
metrics dict + ROC / confusion-matrix PNGs."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from ..errors import ConfigError, ModelPackageError
from .data import load_package_split


def evaluate_package(model_ref: str | Path, data_path: str | Path, split: str = "test", out: str | Path | None = None,
                     device: str = "auto", batch_size: int = 64) -> dict:
    """Metrics of package ``model_ref`` on ``split`` of ``data_path``; with ``out`` also ``roc.png``,
    ``confusion_matrix.png`` and ``metrics.json`` there. Returns the metrics dict (see ``metrics``)."""
    import torch

    from ..io import atomic_write_json, free_version
    from ..packages import load_package
    from ..devices import resolve_device
    from ..packages.package import tuned_on
    from .classification import make_loader, predict_proba
    from .data import holds_training_rows
    from .metrics import classification_metrics
    from ..preprocessing.slices import min_slice_side
    from .plots import confusion_png, roc_png
    from ..uncertainty.domain import capture_features

    pkg = load_package(model_ref)
    data_path = Path(data_path)
    if not data_path.exists():   # a .npz, or an image folder with its labels CSV as train reads it
        raise ConfigError("evaluation data not found", data_path)
    kind = pkg.input_spec["kind"]
    ds = load_package_split(pkg, data_path, split,
                            min_side=min_slice_side(pkg.input_spec) if kind == "slices2d" else None)
    k = len(pkg.class_names)
    if len(ds) == 0:
        raise ConfigError(f"split {split!r} is empty", data_path)
    if ds.labels.max() >= k or ds.labels.min() < 0:
        raise ConfigError(f"labels range {ds.labels.min()}..{ds.labels.max()} does not fit the model's {k} classes "
                          f"{pkg.class_names}", data_path)
    dev = resolve_device(device)
    model = pkg.build_model(str(dev))
    pkg.check_input(torch.as_tensor(ds.images[:1]), data_path)
    loader = make_loader(ds.images, ds.labels, batch_size, shuffle=False)
    try:
        with capture_features(model) if pkg.domain is not None else contextlib.nullcontext() as store:
            probs, labels, loss = predict_proba(model, loader, dev)
    except RuntimeError as exc:
        raise ModelPackageError(f"model {pkg.id} cannot run on data of shape {ds.images.shape[1:]}: "
                                f"{str(exc).splitlines()[0][:200]}", data_path) from None
    m = classification_metrics(labels, probs, pkg.class_names)
    result = {"model": {"id": pkg.id, "version": pkg.version, "path": str(pkg.path)}, "data": str(data_path),
              "split": split, "loss": round(loss, 6), **m}
    held = holds_training_rows(pkg, data_path, split)
    if held:  # allowed (a training-fit check), but never to be read as a held-out figure
        result["warning"] = (f"split {split!r} of this file {held} the images {pkg.id}@{pkg.version} was trained on: "
                             "these figures are not those of unseen images")
    if (store is not None or (pkg.meta.get("decision") or {}).get("min_probability") is not None
            or (pkg.meta.get("calibration") or {}).get("low_confidence_threshold") is not None):
        kept = pkg.domain.in_domain(store.array()) if store is not None else np.ones(len(labels), bool)
        result["as_classify_reports"] = reported_metrics(labels, probs, kept, pkg.meta)
        tuned = tuned_on(pkg.meta, data_path, split)
        if tuned:  # as calibrate and the card say of these figures: the thresholds were chosen on these images
            result["as_classify_reports"]["tuned_on_this_split"] = (
                f"{tuned} of {pkg.id}@{pkg.version} were fitted on split {split!r} of {data_path.name}: these "
                "figures are tuned on it, not held-out estimates")
    if out is not None:
        out = Path(out)
        # an earlier evaluation's files in ``out`` are kept: these take the next free version (metrics-2.json, ...)
        v = free_version(out, "", lambda v: [f"roc{v}.png", f"confusion_matrix{v}.png", f"metrics{v}.json"])
        outputs = {"roc": str(roc_png(labels, probs, pkg.class_names, out / f"roc{v}.png")),
                   "confusion_matrix": str(confusion_png(np.asarray(m["confusion_matrix"]), pkg.class_names,
                                                         out / f"confusion_matrix{v}.png"))}
        result["outputs"] = {**outputs, "metrics": str(out / f"metrics{v}.json")}
        atomic_write_json(out / f"metrics{v}.json", result)
    return result


def reported_metrics(labels: np.ndarray, probs: np.ndarray, in_domain: np.ndarray, meta: dict) -> dict:
    """The figures as ``classify`` reports them for single images, next to the network's (the top-level metrics):
    an image the out-of-domain check flags gets no class, and one whose top probability (temperature-scaled when the
    package is calibrated) is under the decision rules' ``min_probability``, or whose normalised predictive entropy
    is at or above the calibration's ``low_confidence_threshold``, is reported "uncertain"; either counts as not
    correct. ``labels`` (N,), ``probs`` (N, K) the network's softmax, ``in_domain`` (N,) bool, ``meta`` the
    package's model.json. The rules that need the whole scan (``min_agreement``, ``class_modality``,
    ``min_section_mm``, ``volume_excluded_classes``) are not applied to an ``.npz`` of images, and the output says so.
    """
    from ..uncertainty import apply_temperature
    from ..uncertainty.calibration import normalized_entropy

    decision = meta.get("decision") or {}
    min_p = decision.get("min_probability")
    low_h = (meta.get("calibration") or {}).get("low_confidence_threshold")
    calibrated = apply_temperature(probs, meta)
    confident = calibrated.max(1) >= float(min_p) if min_p is not None else np.ones(len(labels), bool)
    if low_h is not None:
        confident &= normalized_entropy(calibrated) < float(low_h)
    correct = (probs.argmax(1) == labels) & in_domain & confident
    classes = np.unique(labels)
    domain = meta.get("domain") or {}
    out = {"flagged_out_of_domain": int((~in_domain).sum()),
           "flagged_rate": round(float(np.mean(~in_domain)), 4),
           "uncertain": int((in_domain & ~confident).sum()),
           "accuracy": round(float(correct.mean()), 6),
           "balanced_accuracy": round(float(np.mean([correct[labels == c].mean() for c in classes])), 6),
           "threshold": domain.get("threshold"), "quantile": domain.get("quantile"), "min_probability": min_p,
           "low_confidence_threshold": low_h,
           "note": "an image flagged out of domain gets no class from classify, and one under the decision rules' "
                   "min_probability or at or above the low-confidence entropy threshold is reported 'uncertain': "
                   "both count as not correct here; the top-level figures are the network's own top class"}
    scan_rules = sorted(k for k in decision if k not in ("min_probability", "chosen_on"))
    if scan_rules:
        out["not_applied"] = f"decision rules that need the whole scan: {', '.join(scan_rules)}"
    return out
