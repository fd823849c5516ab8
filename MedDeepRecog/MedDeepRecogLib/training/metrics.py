"""Classification metrics as pure numpy functions (no sklearn).

Inputs: ``y_true`` integer labels ``(N,)`` in ``0..K-1``; ``probs`` class probabilities ``(N, K)`` (rows sum to 1)
or, for :func:`roc_auc_binary`, positive-class scores ``(N,)``. Undefined values (a class absent from
``y_true`` for AUC, 0/0 for precision) are ``nan`` and left out of macro means.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``(K, K)`` counts, row = true class, column = predicted class."""
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, float), np.asarray(b, float)
    out = np.full(np.broadcast(a, b).shape, np.nan)
    np.divide(a, b, out=out, where=b != 0)
    return out


def per_class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall (sensitivity), F1 and support per class from a confusion matrix."""
    tp = np.diag(cm).astype(float)
    precision = _div(tp, cm.sum(0))
    recall = _div(tp, cm.sum(1))
    f1 = _div(2 * precision * recall, precision + recall)
    f1 = np.where(np.isnan(f1) & (tp == 0) & ~np.isnan(recall), 0.0, f1)
    return {"precision": precision, "recall": recall, "f1": f1, "support": cm.sum(1)}


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    return float((y_true == y_pred).mean()) if y_true.size else float("nan")


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int | None = None) -> float:
    """Mean recall over the classes present in ``y_true``."""
    k = int(num_classes or max(np.max(y_true), np.max(y_pred)) + 1)
    recall = per_class_scores(confusion_matrix(y_true, y_pred, k))["recall"]
    return float(np.nanmean(recall)) if np.any(~np.isnan(recall)) else float("nan")


def roc_auc_binary(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for ``y_true == 1`` (Mann–Whitney U, ties count one half)."""
    y = np.asarray(y_true).ravel().astype(bool)
    s = np.asarray(scores, dtype=float).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=float)
    sorted_s = s[order]
    # average ranks over tied groups
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` for ``y_true == 1``; thresholds decreasing, first one ``+inf`` (0, 0)."""
    y = np.asarray(y_true).ravel().astype(bool)
    s = np.asarray(scores, dtype=float).ravel()
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_group = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1] if len(s) else np.array([], int)
    tps = np.cumsum(y)[last_of_group]
    fps = (last_of_group + 1) - tps
    tpr = np.r_[0.0, _div(tps, max(y.sum(), 0))] if y.sum() else np.r_[0.0, np.full(len(tps), np.nan)]
    fpr = np.r_[0.0, _div(fps, (~y).sum())] if (~y).sum() else np.r_[0.0, np.full(len(fps), np.nan)]
    return fpr, tpr, np.r_[np.inf, s[last_of_group]]


def roc_auc_ovr(y_true: np.ndarray, probs: np.ndarray) -> tuple[float, np.ndarray]:
    """``(macro AUC, per-class AUC)``, one class against the rest; binary tasks give the positive-class AUC."""
    probs = np.asarray(probs, dtype=float)
    y = np.asarray(y_true).ravel()
    per = np.array([roc_auc_binary(y == k, probs[:, k]) for k in range(probs.shape[1])])
    if probs.shape[1] == 2:
        return float(per[1]), per
    return (float(np.nanmean(per)) if np.any(~np.isnan(per)) else float("nan")), per


def youden_threshold(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Score threshold maximising sensitivity + specificity − 1 (ties: the highest threshold)."""
    fpr, tpr, thr = roc_curve(y_true, scores)
    j = tpr - fpr
    i = int(np.nanargmax(j[1:])) + 1 if len(j) > 1 else 0
    return float(thr[i])


def classification_metrics(y_true: np.ndarray, probs: np.ndarray,
                           class_names: Sequence[str] | None = None) -> dict:
    """All metrics for predictions ``argmax(probs)``: JSON-ready dict.

    Keys: ``n``, ``accuracy``, ``balanced_accuracy``, ``precision``, ``recall``, ``f1`` (macro means), ``auc``
    (binary: positive class; else macro one-vs-rest), ``per_class`` ({name: precision/recall/f1/auc/support}),
    ``confusion_matrix`` (rows true, columns predicted), ``class_names``.
    """
    probs = np.asarray(probs, dtype=float)
    y = np.asarray(y_true, dtype=np.int64).ravel()
    k = probs.shape[1]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    pred = probs.argmax(1)
    cm = confusion_matrix(y, pred, k)
    pc = per_class_scores(cm)
    auc, per_auc = roc_auc_ovr(y, probs)

    def clean(v: float) -> float | None:
        return None if v is None or np.isnan(v) else round(float(v), 6)

    return {
        "n": int(len(y)),
        "accuracy": clean(accuracy(y, pred)),
        "balanced_accuracy": clean(np.nanmean(pc["recall"]) if np.any(~np.isnan(pc["recall"])) else np.nan),
        "precision": clean(np.nanmean(pc["precision"]) if np.any(~np.isnan(pc["precision"])) else np.nan),
        "recall": clean(np.nanmean(pc["recall"]) if np.any(~np.isnan(pc["recall"])) else np.nan),
        "f1": clean(np.nanmean(pc["f1"]) if np.any(~np.isnan(pc["f1"])) else np.nan),
        "auc": clean(auc),
        "per_class": {n: {"precision": clean(pc["precision"][i]), "recall": clean(pc["recall"][i]),
                          "f1": clean(pc["f1"][i]), "auc": clean(per_auc[i]), "support": int(pc["support"][i])}
                      for i, n in enumerate(names)},
        "confusion_matrix": cm.tolist(),
        "class_names": names,
    }
