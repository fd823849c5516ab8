"""Temperature scaling (Guo et al. 2017), expected calibration error, and a calibrated low-confidence threshold.

Everything here works on arrays of logits/probabilities ``(N, K)`` and integer labels ``(N,)``.
"""

from __future__ import annotations

import numpy as np
import torch


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> float:
    """ECE with ``n_bins`` equal-width confidence bins: ``sum_b |B|/N * |accuracy(B) - confidence(B)|``.

    Args:
        probabilities: ``(N, K)`` class probabilities.
        labels: ``(N,)`` true class indices.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels).astype(int).ravel()
    conf, pred = p.max(1), p.argmax(1)
    correct = (pred == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # right-closed bins so confidence 1.0 falls in the last bin
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, max_iter: int = 200) -> float:
    """Temperature ``T > 0`` minimising the negative log-likelihood of ``softmax(logits / T)`` on ``labels``.

    Optimises ``log T`` with L-BFGS (so T stays positive); T > 1 softens over-confident models.
    """
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels).astype(int).ravel(), dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    t = float(log_t.detach().exp())
    return float(np.clip(t, 1e-2, 1e2))


PRIOR_SHIFT_METRICS = ("balanced_accuracy", "accuracy")
PRIOR_SHIFT_MAX_CLASSES = 4  # the exhaustive grid grows as 25 ** (K - 1)


def fit_class_offsets(probabilities: np.ndarray, labels: np.ndarray, metric: str = "balanced_accuracy", *,
                      span: float = 3.0, step: float = 0.25,
                      max_classes: int = PRIOR_SHIFT_MAX_CLASSES) -> np.ndarray:
    """Per-class log-probability offsets ``b`` (K,) maximising ``metric`` of ``argmax(log p + b)`` on labelled cases.

    A prior shift (logit adjustment): class k's odds are multiplied by ``exp(b_k)``; ``b_0`` stays 0, because only
    differences matter. Fitted on probabilities the model did not train on (out of fold), it moves the decision
    towards what the metric rewards: balanced accuracy weighs a rare class as much as a common one, which a model
    trained on the class frequencies does not. Exhaustive grid over ``[-span, span]`` in ``step`` for the K-1 free
    offsets; ties go to the smallest total shift, so a flat metric keeps the plain argmax (all zeros).

    Hand-written because scikit-learn's ``TunedThresholdClassifierCV`` tunes one binary threshold only.

    Args:
        probabilities: ``(N, K)`` class probabilities.
        labels: ``(N,)`` true class indices.
        metric: one of :data:`PRIOR_SHIFT_METRICS`.
        max_classes: the grid grows as ``(2 span / step + 1) ** (K - 1)``; more classes are refused.

    Returns:
        ``(K,)`` float64 offsets, ``b_0 = 0``.
    """
    if metric not in PRIOR_SHIFT_METRICS:
        raise ValueError(f"metric must be one of {', '.join(PRIOR_SHIFT_METRICS)}, got {metric!r}")
    log_p = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, 1.0))
    y = np.asarray(labels).astype(int).ravel()
    k = log_p.shape[1]
    if not 2 <= k <= max_classes:
        raise ValueError(f"a prior shift is fitted for 2 to {max_classes} classes, got {k}")
    axis = np.round(np.arange(-span, span + step / 2, step), 6)
    grid = np.stack(np.meshgrid(*([axis] * (k - 1)), indexing="ij"), -1).reshape(-1, k - 1)
    offsets = np.concatenate([np.zeros((len(grid), 1)), grid], axis=1)  # (M, K)
    present = np.unique(y)
    best, best_score, best_size = np.zeros(k), -np.inf, np.inf
    for chunk in np.array_split(offsets, max(1, min(len(offsets), len(offsets) * len(y) // 2_000_000))):
        pred = (log_p[None] + chunk[:, None, :]).argmax(-1)  # (m, N)
        hit = pred == y[None]
        if metric == "accuracy":
            score = hit.mean(1)
        else:
            score = np.mean([hit[:, y == c].mean(1) for c in present], axis=0)
        size = np.abs(chunk).sum(1)
        i = np.lexsort((size, -score))[0]  # this chunk's best score, smallest shift among equals
        if score[i] > best_score + 1e-12 or (abs(score[i] - best_score) <= 1e-12 and size[i] < best_size):
            best, best_score, best_size = chunk[i].copy(), float(score[i]), float(size[i])
    return best


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Numerically stable ``softmax(logits / temperature)`` along the last axis."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def normalized_entropy(probabilities: np.ndarray) -> np.ndarray:
    """Predictive entropy divided by ``log K``: 0 (certain) .. 1 (uniform), ``(N, K) -> (N,)``."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, 1.0)
    k = p.shape[-1]
    return -(p * np.log(p)).sum(-1) / np.log(k)


def low_confidence_threshold(entropy: np.ndarray, correct: np.ndarray) -> float:
    """Entropy threshold above which a prediction is flagged "low confidence", calibrated on validation cases.

    The threshold maximises Youden's J (true-positive rate minus false-positive rate) for telling wrong
    predictions (positives) from right ones by their entropy; it lies halfway between the lowest flagged entropy
    and the highest one not flagged, so no case sits on it. Without any wrong validation prediction the
    95th percentile of the right ones' entropy is used, so about 5 % of cases like the validation set are flagged.

    Args:
        entropy: ``(N,)`` normalised predictive entropy of validation cases.
        correct: ``(N,)`` booleans, prediction == label.
    """
    h = np.asarray(entropy, dtype=np.float64).ravel()
    ok = np.asarray(correct).astype(bool).ravel()
    if ok.all() or (~ok).all():
        return float(np.quantile(h, 0.95))
    best_t, best_j = float(np.quantile(h, 0.95)), -np.inf
    observed = np.unique(h)
    for i, t in enumerate(observed):
        tpr = (h[~ok] >= t).mean()
        fpr = (h[ok] >= t).mean()
        if tpr - fpr > best_j:
            # halfway down to the next lower entropy: the same cases are flagged, but no case sits on the threshold,
            # where classify's own pass (another batch, a PNG read back) may land a hair below it and not flag it
            best_j, best_t = tpr - fpr, float(t if i == 0 else (t + observed[i - 1]) / 2)
    return best_t
