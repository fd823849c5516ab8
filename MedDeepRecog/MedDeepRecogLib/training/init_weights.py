"""``model/init``: the weights every network of a training run starts from (e.g. self-supervised pretraining,
``meddeeprecog pretrain``, :mod:`.pretrain`), read safely and checked against the run's network before any training."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from ..errors import ConfigError, ModelPackageError
from ..limits import MAX_PACKAGE_ENV, human_bytes, max_package_bytes
from ..models.transfer import matching_names
from ..packages.package import load_weights, sha256_file


def read_init_state(path: str | Path, model: nn.Module, source=None, min_share: float = 0.5) -> tuple[dict, dict]:
    """The weights a training run starts its networks from (training config ``model/init``), checked against
    ``model`` (the run's network as built, random head included) before any training.

    The file (``.safetensors``, or a ``.pt`` of plain tensors loaded with ``weights_only``) is bounded by
    :func:`..limits.max_package_bytes` before it is read. Tensors are matched by name and shape as in
    :func:`..models.transfer.matching_names` (a head of another width keeps its fresh initialisation);
    fewer than ``min_share`` of the network's tensors matching means the file is for another network, which is
    refused rather than half used. Returns ``(state, record)``: the tensors, and for the package's provenance the
    file, its SHA-256 and how many of the network's tensors it set.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model/init: weights file {str(path)!r} not found", source)
    size = path.stat().st_size
    if size > max_package_bytes():
        raise ConfigError(f"model/init: {path} holds {human_bytes(size)}, more than the "
                          f"{human_bytes(max_package_bytes())} allowed ({MAX_PACKAGE_ENV})", source)
    try:
        state = load_weights(path)
    except ModelPackageError as exc:
        raise ConfigError(f"model/init: {exc.problem}", path) from None
    own = model.state_dict()
    matched = matching_names(own, state)
    if len(matched) < min_share * len(own):
        raise ConfigError(f"model/init: {path} sets only {len(matched)} of the network's {len(own)} tensors (names "
                          f"and shapes must match); it was made for another network", source)
    record = {"file": str(path), "sha256": sha256_file(path), "tensors_set": len(matched),
              "tensors_total": len(own)}
    return state, record
