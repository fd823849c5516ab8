"""Fit and calibrate a package's out-of-domain check at the end of training (the maths: uncertainty/domain.py).

Config block (train configs, optional)::

    domain:
      quantile: 0.95        # threshold = this quantile of the validation split's scores (in-domain images)
      negatives:            # other data sets, flagged-rate measured and recorded (they do not set the threshold)
        - {name: lung CT, path: ../shared/data/lung_ct_iqothnccd/lung_ct_iqothnccd_trainval.npz, split: val}
        - {name: MedNIST CTAbd, path: ../shared/data/mednist/mednist64_shared.npz, split: all, class: 0, max: 200}

Negatives are grey 2D images (``{split}_images`` or ``images`` in a ``.npz``), standardised exactly as the model's
own images (``input/slices``), so each figure is what classify would say about such an image.
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

import numpy as np

from ..errors import ConfigError
from ..uncertainty.domain import (DOMAIN_FILE, DomainCheck, capture_features, feature_description,
                                  fit_domain_statistics)

NEGATIVE_KEYS = {"name", "path", "split", "class", "max"}
#: the most images one negative set may give (``max``): they are standardised and scored in memory
MAX_NEGATIVES = 10_000


def check_domain_block(block: Mapping[str, Any] | None, source) -> None:
    """Validate the ``domain`` block's keys and values before training starts."""
    if block is None:
        return
    if not isinstance(block, Mapping):
        raise ConfigError("domain must be a mapping {quantile, negatives}", source)
    unknown = sorted(set(block) - {"quantile", "negatives"})
    if unknown:
        raise ConfigError(f"unknown key 'domain/{unknown[0]}'; allowed: negatives, quantile", source)
    q = block.get("quantile", 0.95)
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0.5 <= float(q) < 1.0:
        raise ConfigError(f"domain/quantile must be a number in [0.5, 1), got {q!r}", source)
    negatives = block.get("negatives") or []
    if not isinstance(negatives, list):
        raise ConfigError("domain/negatives must be a list of {name, path, split, class, max}", source)
    for i, neg in enumerate(negatives):
        if not isinstance(neg, Mapping) or not {"name", "path"} <= set(neg) or set(neg) - NEGATIVE_KEYS:
            raise ConfigError(f"domain/negatives[{i}] needs name and path (optional split, class, max), got {neg!r}",
                              source)
        for key, low, high in (("max", 1, MAX_NEGATIVES), ("class", 0, 10_000)):
            value = neg.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or not low <= value <= high):
                raise ConfigError(f"domain/negatives[{i}]/{key} must be a whole number from {low} to {high}, got "
                                  f"{value!r}", source)
        if not isinstance(neg["path"], str) or not isinstance(neg.get("split", "val"), str):
            raise ConfigError(f"domain/negatives[{i}]: path and split must be text", source)


def features_of(model, images: np.ndarray, device, batch: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """``(features (N, D), probabilities (N, K))`` of ``images`` ``(N, C, H, W)`` in eval mode."""
    import torch

    model.eval()
    probs = []
    with torch.no_grad(), capture_features(model) as store:
        for i in range(0, len(images), batch):
            x = torch.as_tensor(images[i:i + batch], dtype=torch.float32, device=device)
            probs.append(torch.softmax(model(x).float(), dim=1).cpu())
    return store.array(), torch.cat(probs).numpy()


def check_negative_files(negatives: list, source) -> None:
    """Refuse, in one line naming the entry (``domain/negatives/0``) and without decompressing any image, a
    ``domain/negatives`` entry whose file cannot give its images: missing, not an ``.npz``, no ``{split}_images`` or
    ``images``, no labels for a ``class`` or no image of that class (the labels alone are read)."""
    for i, neg in enumerate(negatives):
        _negative_arrays(neg, source, load=False, index=i)


def _negative_arrays(neg: Mapping[str, Any], source, load: bool = True, index: int | None = None):
    """``(images, labels or None, path, key)`` of one negative entry (arrays only when ``load``; without it the
    labels of a ``class`` entry are read to check that class has images)."""
    from ..schema import resolve_relative
    from .data import npz_array, open_npz

    where = "domain/negatives" + ("" if index is None else f"/{index}")
    path = resolve_relative(str(neg["path"]), source, f"{where}/path")
    what = f"{where}: domain negative {neg['name']!r}"
    try:
        z = open_npz(path)
    except ConfigError as exc:
        raise ConfigError(f"{what}: {exc.problem}", path) from None
    split = neg.get("split", "val")
    key = f"{split}_images" if f"{split}_images" in z.files else "images"
    if key not in z.files:
        raise ConfigError(f"{what}: no {split}_images or images in the file", path)
    label_key = key.replace("images", "labels")
    if "class" in neg and label_key not in z.files:
        raise ConfigError(f"{what}: class {neg['class']} asked for, but the file has no {label_key}", path)
    labels = np.asarray(npz_array(z, label_key, path)).ravel() if "class" in neg else None
    if labels is not None and not np.any(labels == int(neg["class"])):
        raise ConfigError(f"{where}/class: domain negative {neg['name']!r} has no images of class {neg['class']} "
                          f"in {key} (its labels hold "
                          f"{sorted(int(v) for v in np.unique(labels))[:20]})", path)
    if not load:
        return None, None, path, key
    x = npz_array(z, key, path)
    if labels is not None and len(labels) != len(x):
        raise ConfigError(f"{what}: {len(labels)} {label_key} for {len(x)} {key}", path)
    return x, labels, path, key


def _negative_images(neg: Mapping[str, Any], slices: Mapping, size, source) -> np.ndarray:
    from .data import standardise_images

    x, labels, path, key = _negative_arrays(neg, source)
    what = f"domain negative {neg['name']!r}"
    if labels is not None:
        x = x[labels == int(neg["class"])]
    x = x[: int(neg.get("max", 300))]
    if len(x) == 0:
        raise ConfigError(f"{what}: no images{' of class ' + str(neg['class']) if 'class' in neg else ''} in "
                          f"{key}", path)
    if x.ndim == 4 and x.shape[-1] in (3, 4):  # colour: grey as the image reader makes it
        from ..io.image_io import luma
        x = luma(x)
    return standardise_images(np.asarray(x), dict(slices), size, path)


def calibrate_domain(model, data, cfg, device) -> tuple[dict, bytes]:
    """Fit the check on the train split, set the threshold on val, measure the negatives.

    Returns the model.json ``domain`` block and the bytes of ``domain.safetensors``.
    """
    block = dict(cfg.domain or {})
    quantile = float(block.get("quantile", 0.95))
    k = len(data.class_names)
    f_train, _ = features_of(model, data.train.images, device)
    means, precision = fit_domain_statistics(f_train, data.train.labels, k)
    check = DomainCheck(means, precision, threshold=float("inf"))
    f_val, _ = features_of(model, data.val.images, device)
    val_scores = check.scores(f_val)
    check.threshold = float(np.quantile(val_scores, quantile))
    negatives = negatives_flagged(model, check, negative_image_sets(block.get("negatives") or [],
                                                                    cfg.input.slices or {},
                                                                    list(data.train.images.shape[2:]), cfg.source),
                                  device)
    payload = check.to_bytes()
    meta = {"method": "mahalanobis", "features": feature_description(model),
            "file": DOMAIN_FILE, "sha256": hashlib.sha256(payload).hexdigest(),
            "threshold": round(check.threshold, 6), "quantile": quantile,
            "fitted_on": f"train split ({len(f_train)} images)",
            "val_in_domain_rate": round(float(np.mean(val_scores <= check.threshold)), 4),
            "negatives": negatives}
    return meta, payload


def negative_image_sets(negatives: list, slices: Mapping, size, source) -> dict[str, np.ndarray]:
    """``{name: images (N, 1, H, W)}`` of each ``domain/negatives`` entry (paths relative to ``source``), standardised
    as the model's own images (``slices``, ``size``); a set that cannot be read is refused in one line."""
    return {str(neg["name"]): _negative_images(neg, slices, size, source) for neg in negatives}


def negatives_flagged(model, check: DomainCheck, image_sets: Mapping[str, np.ndarray], device) -> dict:
    """``{name: {"n", "flagged_rate"}}``: the share of each negative set (:func:`negative_image_sets`) that
    ``check`` flags."""
    out = {}
    for name, x in image_sets.items():
        scores = check.scores(features_of(model, x, device)[0])
        out[name] = {"n": int(len(x)), "flagged_rate": round(float(np.mean(scores > check.threshold)), 4)}
    return out


def require_domain_check(pkg) -> None:
    """Refuse, in one line, a package without an out-of-domain check to re-threshold."""
    if pkg.domain is None:
        raise ConfigError(f"{pkg.id}@{pkg.version} has no out-of-domain check (no domain block in model.json) to "
                          "set a threshold for")


def rethreshold_domain(pkg, features: np.ndarray, quantile: float,
                       negatives: Mapping[str, np.ndarray] | None) -> dict:
    """The package's ``domain`` block with its threshold moved to ``quantile`` of the scores of ``features``
    ``(N, D)`` (the penultimate features of in-domain held-out images, as :func:`features_of` or
    :func:`..uncertainty.domain.capture_features` give them): the statistics (class means, precision;
    ``domain.safetensors``) are kept, only the cut-off changes. ``negatives``
    (:func:`negative_image_sets`) are measured at the new threshold; without them the parent's figures, which no
    longer hold, are dropped.

    Raises:
        ConfigError: the package has no out-of-domain check, or ``quantile`` is outside ``[0.5, 1)``.
    """
    import torch

    require_domain_check(pkg)
    check_domain_block({"quantile": quantile}, None)
    scores = pkg.domain.scores(features)
    check = DomainCheck(pkg.domain.means, pkg.domain.precision, threshold=float(np.quantile(scores, quantile)))
    block = dict(pkg.meta["domain"])
    block.update(threshold=round(check.threshold, 6), quantile=float(quantile),
                 val_in_domain_rate=round(float(np.mean(scores <= check.threshold)), 4),
                 negatives=negatives_flagged(pkg.build_model("cpu") if negatives else None, check, negatives or {},
                                             torch.device("cpu")))
    return block


def domain_card_lines(block: Mapping[str, Any] | None) -> str:
    """The model card's paragraph on the out-of-domain check."""
    if not block:
        return ""
    rows = "\n".join(f"| {name} | {v['n']} | {v['flagged_rate']:.1%} |" for name, v in block["negatives"].items())
    chosen = block.get("chosen_on")
    parent_q = chosen.get("parent_quantile") if chosen else None
    moved = "" if not chosen else (
        f"\nThe threshold was moved from the parent package's ({chosen['parent_threshold']:.1f}"
        f"{'' if parent_q is None else f', the {100 * parent_q:g}% quantile'}) by `meddeeprecog calibrate` on split "
        f"`{chosen['split']}` of `{chosen['data']}` ({chosen['n']} images); the statistics are the parent's.\n```\n"
        f"{chosen['command']}\n```\n")
    where = "the validation split" if not chosen else f"split `{chosen['split']}` of `{chosen['data']}`"
    quantile = "" if block.get("quantile") is None else f", the {100 * block['quantile']:g}% quantile of {where}"
    negatives = (f"""Share of other data sets flagged (not used to set the threshold):

| data set | images | flagged out of domain |
|---|---|---|
{rows}
""" if rows else "No other data set was measured at this threshold.\n")
    return f"""
## Out-of-domain check
Images whose penultimate features lie farther from every class than the threshold (squared Mahalanobis distance
{block['threshold']:.1f}{quantile}, fitted on the
{block['fitted_on']}) are reported as **outside this model's domain** instead of being given a class; a volume in
which no slice is in the domain gets no class at all. Images of {where} kept: {block['val_in_domain_rate']:.1%}.
{moved}{negatives}"""
