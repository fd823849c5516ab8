"""Out-of-domain check: is an image like the ones the classifier was trained on?

A classifier trained on tumour-bearing brain slices names a tumour type for *any* input: a healthy brain, a chest
CT, a label map. This check scores how far an image's penultimate features (the input of the network's last
linear layer, or of the layer a network names as ``feature_layer``, ``(D,)``; for an ensemble, every member's, side
by side) lie from the training images', as the Mahalanobis distance to the nearest class mean under one shared
covariance (Lee et al., "A simple unified framework for detecting out-of-distribution samples and
adversarial attacks", NeurIPS 2018):

    score(f) = min_k (f - mu_k)^T P (f - mu_k),   P = inverse of the pooled within-class covariance

The means and ``P`` are fitted on the training split; the threshold is a quantile of the validation split's scores
(e.g. 0.95: 5 % of in-domain validation images are flagged), and the rate at which other data sets are flagged is
measured and recorded beside it (training/domain.py). Images scoring above the threshold are "outside this model's
domain".

Statistics are stored in the package as ``domain.safetensors`` (``means`` ``(K, D)``, ``precision`` ``(D, D)``,
float64) with its sha256 in ``model.json``'s ``domain`` block, and read with safetensors (no pickle).
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

if TYPE_CHECKING:  # annotations only: torch is imported where it runs
    import torch

DOMAIN_FILE = "domain.safetensors"


@dataclass
class DomainCheck:
    """Fitted Mahalanobis statistics and the calibrated threshold (see the module docstring)."""

    means: np.ndarray      # (K, D) class means of the training features
    precision: np.ndarray  # (D, D) inverse pooled within-class covariance
    threshold: float       # scores above it are out of domain

    def scores(self, features: np.ndarray) -> np.ndarray:
        """``(N, D)`` features → ``(N,)`` distance to the nearest class mean (squared Mahalanobis)."""
        f = np.asarray(features, dtype=np.float64)
        d = [np.einsum("nd,de,ne->n", f - m, self.precision, f - m) for m in self.means]
        return np.min(np.stack(d, axis=1), axis=1)

    def in_domain(self, features: np.ndarray) -> np.ndarray:
        return self.scores(features) <= self.threshold

    def to_bytes(self) -> bytes:
        from safetensors.numpy import save

        return save({"means": np.ascontiguousarray(self.means, dtype=np.float64),
                     "precision": np.ascontiguousarray(self.precision, dtype=np.float64)})


def fit_domain_statistics(features: np.ndarray, labels: np.ndarray, num_classes: int,
                          shrinkage: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Class means ``(K, D)`` and the precision ``(D, D)`` of the pooled within-class covariance of ``features``
    ``(N, D)``; ``shrinkage`` × the mean variance is added to the diagonal so a rank-deficient covariance (ReLU
    features with dead units) still inverts."""
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels).ravel()
    means = np.stack([f[y == k].mean(axis=0) if np.any(y == k) else f.mean(axis=0) for k in range(num_classes)])
    centred = f - means[y]
    cov = centred.T @ centred / max(len(f) - num_classes, 1)
    cov += np.eye(cov.shape[0]) * shrinkage * max(float(np.trace(cov)) / cov.shape[0], 1e-12)
    return means, np.linalg.inv(cov)


def feature_layers(model) -> list:
    """The layer whose input is the feature vector the check scores, per network or per member of an ensemble
    (``model.members``; their features side by side): the network's ``feature_layer`` where it names one (a network
    without a dense classifier), else its last ``nn.Linear``."""
    import torch.nn as nn

    nets = list(model.members) if hasattr(model, "members") else [model]
    layers = []
    for net in nets:
        declared = getattr(net, "feature_layer", None)
        if isinstance(declared, nn.Module):
            layers.append(declared)
            continue
        linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(f"{type(net).__name__} has no linear layer whose input could be scored")
        layers.append(linears[-1])
    return layers


def feature_description(model) -> str:
    """What :func:`feature_layers` scores, in words (for ``model.json``): a layer other than a dense one is a
    network's declared ``feature_layer`` (the class-evidence CNN's grid-averaged features)."""
    import torch.nn as nn

    if all(isinstance(layer, nn.Linear) for layer in feature_layers(model)):
        return "input of the last linear layer"
    return "the network's features averaged over its grid"


class FeatureStore:
    """Features captured by :func:`capture_features`: ``array()`` gives ``(N, D)`` over all forward passes so far
    (an ensemble's members side by side along D)."""

    def __init__(self, parts: int):
        self.parts: list[list] = [[] for _ in range(parts)]

    def array(self) -> np.ndarray:
        import torch

        return torch.cat([torch.cat(p) for p in self.parts], dim=1).numpy()


@contextlib.contextmanager
def capture_features(model) -> Iterator[FeatureStore]:
    """Collect the inputs of :func:`feature_layers` on every forward pass inside the ``with`` block. A model that
    runs several views of each input in one batch (a test-time flip, ``model.views``) gives each input the mean of
    its views' features, so the check sees one vector per input whether or not the views are on."""
    layers = feature_layers(model)
    store = FeatureStore(len(layers))
    views = int(getattr(model, "views", 1) or 1)

    def keep(slot: int, features: torch.Tensor) -> None:
        f = features.detach().flatten(1).float().cpu()
        if views > 1:
            f = f.reshape(views, -1, f.shape[1]).mean(dim=0)
        store.parts[slot].append(f)

    def hook(slot: int):
        return lambda _module, inputs, _output: keep(slot, inputs[0])

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


def load_domain_check(package_path: Path, meta: dict) -> DomainCheck | None:
    """The package's check from ``model.json`` ``domain`` and its statistics file, or ``None`` without one.

    Raises:
        ModelPackageError: missing file, checksum mismatch, or statistics whose shapes do not fit.
    """
    from ..errors import ModelPackageError

    block = meta.get("domain")
    if not block:
        return None
    path = Path(package_path) / str(block.get("file", DOMAIN_FILE))
    if path.name != DOMAIN_FILE or not path.is_file():
        raise ModelPackageError(f"domain statistics file {block.get('file')!r} named in model.json is missing", path)
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != str(block.get("sha256", "")).lower():
        raise ModelPackageError("checksum mismatch: domain statistics differ from model.json (corrupt or tampered "
                                "with)", path)
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        arrays = load(data)
    except (SafetensorError, ValueError) as exc:
        raise ModelPackageError(f"domain statistics are corrupt ({exc})", path) from None
    means, precision = arrays.get("means"), arrays.get("precision")
    k = len(meta.get("class_names") or [])
    if (means is None or precision is None or means.ndim != 2 or means.shape[0] != k
            or precision.shape != (means.shape[1], means.shape[1])):
        raise ModelPackageError(f"domain statistics have the wrong shapes (means {getattr(means, 'shape', None)}, "
                                f"precision {getattr(precision, 'shape', None)}) for {k} classes", path)
    return DomainCheck(means=means, precision=precision, threshold=float(block["threshold"]))
