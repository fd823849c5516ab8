"""Evaluate a model package on a labelled ``.npz`` split: metrics dict + ROC / confusion-matrix PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError, ModelPackageError
from .data import load_eval_split


def evaluate_package(model_ref: str | Path, data_path: str | Path, split: str = "test", out: str | Path | None = None,
                     device: str = "auto", batch_size: int = 64) -> dict:
    """Metrics of package ``model_ref`` on ``split`` of ``data_path``; with ``out`` also ``roc.png``,
    ``confusion_matrix.png`` and ``metrics.json`` there. Returns the metrics dict (see ``metrics``)."""
    import torch

    from ..io import atomic_write_json
    from ..packages import load_package
    from ..devices import resolve_device
    from .classification import make_loader, predict_proba
    from .metrics import classification_metrics
    from .plots import confusion_png, roc_png

    pkg = load_package(model_ref)
    data_path = Path(data_path)
    if not data_path.is_file():
        raise ConfigError("evaluation data not found", data_path)
    intensity, size = pkg.data_params()
    ds = load_eval_split(data_path, split, pkg.input_spec["kind"], intensity, size,
                         slices=pkg.input_spec.get("slices"))
    k = len(pkg.class_names)
    if len(ds) == 0:
        raise ConfigError(f"split {split!r} is empty", data_path)
    if ds.labels.max() >= k or ds.labels.min() < 0:
        raise ConfigError(f"labels range {ds.labels.min()}..{ds.labels.max()} does not fit the model's {k} classes "
                          f"{pkg.class_names}", data_path)
    dev = resolve_device(device)
    model = pkg.build_model(str(dev))
    pkg.check_input(torch.as_tensor(ds.images[:1]))
    loader = make_loader(ds.images, ds.labels, batch_size, shuffle=False)
    try:
        probs, labels, loss = predict_proba(model, loader, dev)
    except RuntimeError as exc:
        raise ModelPackageError(f"model {pkg.id} cannot run on data of shape {ds.images.shape[1:]}: "
                                f"{str(exc).splitlines()[0][:200]}", data_path) from None
    m = classification_metrics(labels, probs, pkg.class_names)
    result = {"model": {"id": pkg.id, "version": pkg.version, "path": str(pkg.path)}, "data": str(data_path),
              "split": split, "loss": round(loss, 6), **m}
    if out is not None:
        out = Path(out)
        outputs = {"roc": str(roc_png(labels, probs, pkg.class_names, out / "roc.png")),
                   "confusion_matrix": str(confusion_png(np.asarray(m["confusion_matrix"]), pkg.class_names,
                                                         out / "confusion_matrix.png"))}
        result["outputs"] = {**outputs, "metrics": str(out / "metrics.json")}
        atomic_write_json(out / "metrics.json", result)
    return result
