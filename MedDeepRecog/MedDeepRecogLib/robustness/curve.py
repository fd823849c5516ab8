"""Robustness curves: clean vs adversarial accuracy/AUC over a list of eps, or one scan's probability curve.

All functions take a classifier ``model`` returning logits ``(B, num_classes)`` and batches in model input
units. A model that classifies a scan from a stack of slices is wrapped in
:class:`MedDeepRecogLib.models.slice_stack.SliceStackClassifier` so that the whole stack ``(1, C, S, H, W)`` is one
attacked "sample" (the attack then moves the scan-level prediction, which is what a user sees).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from ..progress import ProgressCallback, null_progress
from ..training.metrics import accuracy, balanced_accuracy, roc_auc_ovr
from .attacks import Bounds, attack, check_eps


def _predict(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(model(x), dim=1)


def evaluate_robustness(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                        eps_list: Sequence[float], *, attack_name: str = "pgd", steps: int = 10,
                        bounds: Bounds = None, progress: ProgressCallback = null_progress,
                        total_batches: int | None = None, class_names: Sequence[str] | None = None
                        ) -> dict[str, Any]:
    """Clean and robust accuracy / AUC over a labelled data set, at each eps.

    Args:
        model: classifier in eval mode.
        batches: iterable of ``(x (B, C, *spatial), y (B,))`` in model input units.
        eps_list: attack budgets in model input units, each > 0.
        attack_name: ``"fgsm"`` or ``"pgd"`` (untargeted, on the true label).
        steps: PGD iterations.
        bounds: valid intensity range of the model input, or None.
        class_names: names of the label indices, for the note on a single class.

    Returns:
        ``{"attack", "steps", "n", "clean": {"accuracy", "balanced_accuracy", "auc"},
        "robust": [{"eps", "accuracy", "balanced_accuracy", "auc"}, ...]}``; with fewer than two classes among the
        labels, balanced accuracy and AUC are null and ``"note"`` says why.
    """
    eps_list = [check_eps(e, bounds) for e in eps_list]
    labels: list[np.ndarray] = []
    clean: list[np.ndarray] = []
    adv: dict[float, list[np.ndarray]] = {e: [] for e in eps_list}
    batches = list(batches)
    total = total_batches or len(batches)
    for i, (x, y) in enumerate(batches):
        y = y.long().view(-1)
        labels.append(y.numpy())
        clean.append(_predict(model, x).numpy())
        for eps in eps_list:
            x_adv = attack(attack_name, model, x, y, eps, steps=steps, bounds=bounds)
            adv[eps].append(_predict(model, x_adv).numpy())
        progress("attacking", (i + 1) / max(total, 1), batch=i + 1)
    y_all = np.concatenate(labels)
    # one class alone: its recall would pass for balanced accuracy and no AUC exists; say so instead
    one_class = len(np.unique(y_all)) < 2

    def summary(probs: list[np.ndarray]) -> dict[str, Any]:
        p = np.concatenate(probs)
        pred = p.argmax(1)
        auc = roc_auc_ovr(y_all, p)[0]  # binary: the positive class; else macro one-vs-rest
        return {"accuracy": accuracy(y_all, pred),
                "balanced_accuracy": None if one_class else balanced_accuracy(y_all, pred, p.shape[1]),
                "auc": None if one_class or np.isnan(auc) else auc}

    res = {"attack": attack_name, "steps": steps if attack_name == "pgd" else 1, "n": int(len(y_all)),
           "bounds": None if bounds is None else [float(bounds[0]), float(bounds[1])],
           "clean": summary(clean), "robust": [{"eps": e, **summary(adv[e])} for e in eps_list]}
    if one_class:
        label = int(y_all[0])
        name = class_names[label] if class_names is not None and label < len(class_names) else f"label {label}"
        res["note"] = (f"every case ({len(y_all)}) is of one class ({name}): balanced accuracy and AUC need at least "
                       "two and are null; accuracy is that class's recall alone")
    return res


#: ``flip_means`` of a scan's record: what a flip compares
FLIP_OF_TOP_CLASS = "the network's top class changes (no decision rules applied)"
FLIP_OF_REPORTED_LABEL = ("the label classify reports changes (the package's decision rules applied to the "
                          "attacked output: a class, 'uncertain' or another class)")


def scan_robustness(model: torch.nn.Module, x: torch.Tensor, eps_list: Sequence[float], *,
                    attack_name: str = "pgd", steps: int = 10, bounds: Bounds = None, refine_steps: int = 5,
                    class_names: Sequence[str] | None = None,
                    judge: Callable[[torch.Tensor], dict[str, Any]] | None = None,
                    progress: ProgressCallback = null_progress) -> tuple[dict[str, Any], dict[float, torch.Tensor]]:
    """How one input's prediction moves under attacks of growing eps.

    The attack pushes away from the clean top class (the network's). ``smallest_flipping_eps`` is the smallest eps
    of the list that flips the prediction, refined by ``refine_steps`` bisection steps between it and the largest
    non-flipping eps below it (null when no eps of the list flips it). Without ``judge`` a flip is a change of the
    network's top class; with it, a change of ``judge(x)["label"]``: ``judge`` maps an input to the decision
    reported for it (``{"label", "top_class", "confidence", "reasons", ...}``: classify's, see
    :func:`.scan.decision_of`), so a flip is a change of what the user is shown (a class to "uncertain", say),
    and a top class that changes while the reported label stays ("uncertain" to "uncertain") is none.

    Args:
        model: classifier, ``x (1, C, *spatial) -> logits (1, K)`` (slice models: a ``SliceStackClassifier``).
        x: one input in model units.

    Returns:
        ``(result, perturbations)``: result is JSON-able (``clean_label``: the clean reported label, the top class
        without ``judge``; ``top_class``: the network's clean top class and ``clean_probability`` its probability;
        with ``judge`` also ``clean_confidence`` and ``clean_uncertain_reasons``; ``flip_means``; ``curve``
        [{"eps", "probability" of the clean top class, "label" (reported), "top_class", "flipped", with ``judge``
        "confidence" and "uncertain_reasons"}], ``smallest_flipping_eps``, ``flip``: the curve point at that eps;
        ``smallest_top_class_change_eps``: the smallest eps of the list whose attacked ``top_class`` differs from the
        clean one, or null: with ``judge`` it can change while the reported label stays, and is no flip);
        perturbations maps each eps (and the refined flip eps) to ``x_adv - x``.
    """
    eps_list = sorted(check_eps(e, bounds) for e in eps_list)
    names = list(class_names) if class_names is not None else None
    probs = _predict(model, x)[0]
    label = int(probs.argmax())
    target = torch.tensor([label])
    clean = judge(x) if judge is not None else None

    def name(k: int) -> str | int:
        return names[k] if names else k

    def point(eps: float) -> tuple[dict[str, Any], torch.Tensor]:
        # a fixed seed per eps keeps PGD's random start reproducible between runs
        torch.manual_seed(0)
        x_adv = attack(attack_name, model, x, target, eps, steps=steps, bounds=bounds)
        p = _predict(model, x_adv)[0]
        new = int(p.argmax())
        rec = {"eps": float(eps), "probability": float(p[label]), "label": name(new), "top_class": name(new),
               "flipped": new != label, "probabilities": _named(p, names)}
        if clean is not None:
            d = judge(x_adv)
            rec.update({"label": d["label"], "confidence": d["confidence"], "uncertain_reasons": d["reasons"],
                        "flipped": d["label"] != clean["label"]})
        return rec, (x_adv - x).detach()

    curve, deltas = [], {}
    for i, eps in enumerate(eps_list):
        rec, deltas[eps] = point(eps)
        curve.append(rec)
        progress("attacking", (i + 1) / (len(eps_list) + refine_steps), eps=eps)
    flips = [i for i, r in enumerate(curve) if r["flipped"]]
    smallest, flip = None, None
    if flips:
        hi_i = flips[0]
        hi = eps_list[hi_i]
        lo = eps_list[hi_i - 1] if hi_i > 0 else 0.0
        flip = curve[hi_i]
        for j in range(refine_steps):
            mid = 0.5 * (lo + hi)
            rec, delta = point(mid)
            if rec["flipped"]:
                hi, flip, deltas[mid] = mid, rec, delta
            else:
                lo = mid
            progress("refining", (len(eps_list) + j + 1) / (len(eps_list) + refine_steps), eps=mid)
        smallest = float(hi)
    # the network's own top class may change while the reported label does not ("uncertain" both times): its own
    # figure, the smallest eps of the list where it changes (not refined), beside the flip
    top_changes = [r for r in curve if r["top_class"] != name(label)]
    result = {"attack": attack_name, "steps": steps if attack_name == "pgd" else 1,
              "bounds": None if bounds is None else [float(bounds[0]), float(bounds[1])],
              "clean_label": name(label) if clean is None else clean["label"], "top_class": name(label),
              **({} if clean is None else {"clean_confidence": clean["confidence"],
                                           "clean_uncertain_reasons": clean["reasons"]}),
              "flip_means": FLIP_OF_TOP_CLASS if clean is None else FLIP_OF_REPORTED_LABEL,
              "clean_probability": float(probs[label]),
              "clean_probabilities": _named(probs, names), "curve": curve,
              "smallest_flipping_eps": smallest, "flip": flip,
              "smallest_top_class_change_eps": top_changes[0]["eps"] if top_changes else None,
              "probability_drop_at_max_eps": float(probs[label]) - curve[-1]["probability"]}
    return result, deltas


def _named(p: torch.Tensor, names: Sequence[str] | None) -> dict[str, float] | list[float]:
    values = [float(v) for v in p]
    return dict(zip(names, values)) if names else values


def save_curve_png(result: dict[str, Any], path, *, title: str = "") -> None:
    """Plot a robustness result (data set: accuracy & AUC vs eps; one scan: probability vs eps) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_save_figure

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    if "robust" in result:
        eps = [0.0] + [r["eps"] for r in result["robust"]]
        ax.plot(eps, [result["clean"]["accuracy"]] + [r["accuracy"] for r in result["robust"]], "o-",
                label="accuracy")
        if result["clean"]["auc"] is not None:
            aucs = [math.nan if r["auc"] is None else r["auc"] for r in result["robust"]]  # 0.0 is plotted
            ax.plot(eps, [result["clean"]["auc"]] + aucs, "s--",
                    label="AUC")
        ax.set_ylabel("metric")
    else:
        flip = [(result["flip"]["eps"], result["flip"]["probability"])] if result.get("flip") else []
        pts = sorted(set([(0.0, result["clean_probability"])] + [(r["eps"], r["probability"]) for r in result["curve"]]
                         + flip))
        ax.plot(*zip(*pts), "o-", label=f"p({result.get('top_class', result['clean_label'])})")
        ax.axhline(0.5, color="grey", lw=0.5)
        if result.get("smallest_flipping_eps") is not None:
            ax.axvline(result["smallest_flipping_eps"], color="red", ls=":",
                       label=f"flips at eps={result['smallest_flipping_eps']:.3g}")
        ax.set_ylabel("probability of clean top class")
    ax.set_xlabel(f"eps ({result['attack']}, model input units)")
    per_unit = result.get("hu_per_unit") or result.get("eps_per_unit")
    if per_unit:  # CT: the same axis in HU on top (a data set's 8-bit pictures: grey levels)
        top = ax.secondary_xaxis("top", functions=(lambda e: e * per_unit, lambda h: h / per_unit))
        top.set_xlabel(f"eps in {'HU' if result.get('hu_per_unit') else result.get('eps_unit')}", fontsize=8)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_save_figure(fig, path)
