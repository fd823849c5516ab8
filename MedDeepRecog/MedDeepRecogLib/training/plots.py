"""PNG figures for training and evaluation (matplotlib, Agg backend; written atomically)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..io import atomic_save_figure


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def training_curve_png(epochs: Sequence[dict], path: str | Path, monitor: str = "auc") -> Path:
    """Loss (train/val) and validation metrics per epoch; records with a ``member`` key (a seed ensemble) are
    drawn as one line per member (train loss left, validation ``monitor`` right)."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    members = sorted({r["member"] for r in epochs if "member" in r})
    if members:
        # "last" selects nothing: show the accuracy each member's own validation data gave instead
        key = "val_loss" if monitor == "loss" else "val_accuracy" if monitor == "last" else f"val_{monitor}"
        shown = "accuracy" if monitor == "last" else monitor
        for m in members:
            rows = [r for r in epochs if r.get("member") == m]
            e = [r["epoch"] for r in rows]
            a1.plot(e, [r["train_loss"] for r in rows], label=f"member {m} train")
            a2.plot(e, [np.nan if r.get(key) is None else r[key] for r in rows], label=f"member {m} val {shown}")
            best = [r["epoch"] for r in rows if r.get("best")]
            if best:
                a2.plot([best[-1]], [rows[e.index(best[-1])][key]], "k.", ms=8)
        a1.set_ylabel("train cross-entropy")
    else:
        e = [r["epoch"] for r in epochs]
        a1.plot(e, [r["train_loss"] for r in epochs], label="train loss")
        a1.plot(e, [r["val_loss"] for r in epochs], label="val loss")
        a1.set_ylabel("cross-entropy")
        for key in ("val_auc", "val_balanced_accuracy", "val_accuracy"):
            vals = [np.nan if r.get(key) is None else r[key] for r in epochs]
            a2.plot(e, vals, label=key.replace("val_", "val "))
        best = [r["epoch"] for r in epochs if r.get("best")]
        if best:
            a2.axvline(best[-1], color="gray", ls="--", lw=1, label=f"best epoch {best[-1]} ({monitor})")
    a1.set_xlabel("epoch"); a1.legend(); a1.grid(alpha=0.3)
    a2.set_xlabel("epoch"); a2.set_ylim(0, 1.02); a2.legend(loc="lower right", fontsize=8); a2.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    return atomic_save_figure(fig, path, dpi=100)


def roc_png(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str], path: str | Path) -> Path:
    """ROC curve(s): the positive class for binary tasks, one-vs-rest per class otherwise."""
    from .metrics import roc_auc_binary, roc_curve
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    ks = [1] if probs.shape[1] == 2 else range(probs.shape[1])
    for k in ks:
        fpr, tpr, _ = roc_curve(y_true == k, probs[:, k])
        auc = roc_auc_binary(y_true == k, probs[:, k])
        ax.plot(fpr, tpr, label=f"{class_names[k]} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="gray", ls=":", lw=1)
    ax.set_xlabel("false-positive rate"); ax.set_ylabel("true-positive rate"); ax.legend(loc="lower right")
    ax.set_title("ROC"); fig.tight_layout()
    path = Path(path)
    return atomic_save_figure(fig, path, dpi=100)


def confusion_png(cm: np.ndarray, class_names: Sequence[str], path: str | Path) -> Path:
    """Confusion matrix (rows true, columns predicted) with counts."""
    plt = _plt()
    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(1.2 * len(class_names) + 2.5, 1.2 * len(class_names) + 2))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xlabel("predicted"); ax.set_ylabel("true"); fig.tight_layout()
    path = Path(path)
    return atomic_save_figure(fig, path, dpi=100)
