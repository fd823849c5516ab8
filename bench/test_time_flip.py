"""Paired evidence for ``training/test_time_flip``: the same trained members scored with and without the flip.

Not a speed bench: it prints the accuracy figures the choice rests on. From a finished ``train`` run of a config
with ``training/folds`` (its ``--out`` folder keeps the fold members' checkpoints):

- **out of fold** (the figures a recipe is chosen on): every train case scored by the fold member that did not
  train on it, once on the image alone and once averaged with its mirror image;
- **val** (held out, reported, never chosen on), with ``--package``: the packaged ensemble with its flip and with the
  flip switched off.

Usage::

    python bench/test_time_flip.py configs/breast-us-lesion-evidence.yaml /tmp/runs/breast-us-lesion-1.3.0 \
        --package MedDeepRecog/MedDeepRecogLib/data/models/breast-us-lesion/1.3.0 --threads 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch


def figures(labels: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, balanced accuracy, macro AUC and, when a class is called ``malignant``, its one-vs-rest AUC."""
    from MedDeepRecogLib.training.metrics import classification_metrics

    m = classification_metrics(labels, probs, class_names)
    out = {"accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"], "auc": m["auc"]}
    if "malignant" in class_names:
        out["malignant_auc"] = m["per_class"]["malignant"]["auc"]
    return out


def probabilities(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``(N, K)`` softmax of ``model`` on ``images`` ``(N, C, H, W)``, as training scores its members."""
    from MedDeepRecogLib.training.classification import make_loader, predict_proba

    return predict_proba(model, make_loader(images, labels, 64, shuffle=False), torch.device("cpu"))[0]


def with_views(model: torch.nn.Module, flip_dims: tuple[int, ...]) -> torch.nn.Module:
    """The ensemble ``model`` with its test-time flip set to ``flip_dims`` (``()``: the image alone)."""
    model.flip_dims = flip_dims
    return model


def main() -> None:
    from MedDeepRecogLib.commands import register_training_blocks
    register_training_blocks()  # the configs' localisation and placement blocks
    from MedDeepRecogLib.models import build_model
    from MedDeepRecogLib.models.ensemble import ensemble_around
    from MedDeepRecogLib.packages import load_package
    from MedDeepRecogLib.training.config import load_config, resolve_data_path
    from MedDeepRecogLib.training.data import load_package_split, load_train_val, stratified_folds

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("run", help="the train run's --out folder (checkpoints/member<i>/last.pt)")
    ap.add_argument("--package", help="the packaged model, for the val figures")
    ap.add_argument("--axes", type=int, nargs="+", default=None,
                    help="spatial axes to flip (default the config's training/test_time_flip, else [1])")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    cfg = load_config(args.config)
    axes = args.axes or cfg.training.test_time_flip or [1]
    dims = tuple(int(a) + 2 for a in axes)
    data = load_train_val(cfg, resolve_data_path(cfg))
    names = list(data.class_names)
    folds = stratified_folds(data.train.labels, int(cfg.training.folds), cfg.seed, cfg.source,
                             groups=data.train_groups)
    kwargs = {**cfg.model.kwargs, "in_channels": int(data.train.images.shape[1]), "num_classes": len(names)}
    oof = {(): np.zeros((len(data.train), len(names))), dims: np.zeros((len(data.train), len(names)))}
    for i, held in enumerate(folds):
        member = build_model(cfg.model.name, **kwargs)
        state = torch.load(Path(args.run) / "checkpoints" / f"member{i + 1}" / "last.pt", map_location="cpu",
                           weights_only=True)["model"]
        member.load_state_dict(state)
        scored = ensemble_around(member, in_channels=kwargs["in_channels"], num_classes=kwargs["num_classes"],
                                 member=cfg.model.name, member_kwargs=dict(cfg.model.kwargs), flip_axes=axes).eval()
        for views in oof:
            oof[views][held] = probabilities(with_views(scored, views), data.train.images[held],
                                             data.train.labels[held])
    print(f"{cfg.id}: {len(folds)} group-aware folds, n={len(data.train)}, flip axes {axes}")
    rows = [("out of fold, image alone", figures(data.train.labels, oof[()], names)),
            ("out of fold, with its mirror", figures(data.train.labels, oof[dims], names))]
    if args.package:
        pkg = load_package(args.package)
        val = load_package_split(pkg, resolve_data_path(cfg), "val")
        model = pkg.build_model("cpu")
        packaged = tuple(getattr(model, "flip_dims", ()))
        rows += [(f"val {pkg.id}@{pkg.version}, image alone",
                  figures(val.labels, probabilities(with_views(model, ()), val.images, val.labels), names)),
                 (f"val {pkg.id}@{pkg.version}, with its mirror",
                  figures(val.labels, probabilities(with_views(model, dims), val.images, val.labels), names))]
        print(f"package flip dims {packaged or 'none'}; val n={len(val)}")
    keys = list(rows[0][1])
    print(f"{'':42s}" + "".join(f"{k:>19s}" for k in keys))
    for name, f in rows:
        print(f"{name:42s}" + "".join(f"{f[k]:19.4f}" for k in keys))


if __name__ == "__main__":
    main()
