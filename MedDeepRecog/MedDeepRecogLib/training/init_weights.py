"""``model/init``: the weights every network of a training run starts from (e.g. self-supervised pretraining,
``meddeeprecog pretrain``, :mod:`.pretrain`), read safely and checked against the run's network before any training."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch.nn as nn

from ..errors import ConfigError, ModelPackageError
from ..limits import MAX_PACKAGE_ENV, human_bytes, max_package_bytes
from ..models.transfer import matching_names
from ..packages.package import load_weights, sha256_file

log = logging.getLogger(__name__)


def read_init_state(path: str | Path, model: nn.Module, source=None, min_share: float = 0.5,
                    model_section: dict | None = None) -> tuple[dict, dict]:
    """The weights a training run starts its networks from (training config ``model/init``), checked against
    ``model`` (the run's network as built, random head included) before any training.

    The file (``.safetensors``, or a ``.pt`` of plain tensors loaded with ``weights_only``) is bounded by
    :func:`..limits.max_package_bytes` before it is read. Tensors are matched by name and shape as in
    :func:`..models.transfer.matching_names` (a head of another width keeps its fresh initialisation);
    fewer than ``min_share`` of the network's tensors matching means the file is for another network, which is
    refused rather than half used. Returns ``(state, record)``: the tensors, and for the package's provenance the
    file, its SHA-256 and how many of the network's tensors it set.

    The record names the layers that start fresh (``fresh_layers``); when any but the classification head does
    (which a pretrained file leaves out), it is warned about (log, on the console); a file whose header names
    another config than ``source`` (``meddeeprecog pretrain`` writes it) gets ``made_for_other_config``, saying
    how that config's network (when it can still be read) differs from ``model_section`` (this run's ``{"name",
    "kwargs"}``). The warnings are also the record's ``warnings``.
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
    header = init_header(path)
    record = {"file": str(path), "sha256": sha256_file(path), "tensors_set": len(matched),
              "tensors_total": len(own), "pretraining": pretraining_record(header)}
    warnings = []
    if len(matched) < len(own):
        from ..models.transfer import head_module_name

        fresh = fresh_layers(own, matched)
        record["fresh_layers"] = fresh
        try:
            head = head_module_name(model)
        except Exception:   # no recognisable head: every fresh layer is worth a word
            head = None
        # the classification head starting fresh is what a pretrained file is for (pretrain drops it); any other
        # layer starting fresh means the file was made for another network
        if any(layer != head and not layer.startswith(f"{head}.") for layer in fresh):
            warnings.append(f"model/init: {path.name} sets {len(matched)} of the network's {len(own)} tensors; "
                            f"{len(own) - len(matched)} start fresh, in {len(fresh)} layer(s): {', '.join(fresh)}")
    made_for = header.get("config")
    if made_for is not None:
        record["made_for_config"] = made_for
        differs = config_difference(made_for, source, model_section)
        if differs:
            record["made_for_other_config"] = differs
            warnings.append(f"model/init: {path.name} was made for {made_for}, not this run's config "
                            f"({source}): {differs}")
    if warnings:
        record["warnings"] = warnings
        for text in warnings:
            log.warning("%s", text)
    return state, record


def fresh_layers(own: dict, matched) -> list[str]:
    """The layers (tensor names without their last part: ``features.0`` for ``features.0.weight``) that hold a
    tensor the init file did not set, in the network's order."""
    matched = set(matched)
    layers: list[str] = []
    for name in own:
        if name not in matched:
            layer = name.rsplit(".", 1)[0] if "." in name else name
            if layer not in layers:
                layers.append(layer)
    return layers


def init_header(path: Path) -> dict[str, str]:
    """The metadata of a ``.safetensors`` init file (``meddeeprecog pretrain`` writes ``made_by`` and ``config``:
    the training config whose network it pretrained); empty for other files or without a header."""
    if path.suffix != ".safetensors":
        return {}
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:   # the tensors were read already: a header that cannot be read says nothing
        return {}


def config_difference(made_for: str, source: Any, model_section: dict | None) -> str:
    """Empty when the init file's header names this run's config (``source``); else what differs: the network
    (``model/name`` and ``model/kwargs``) of the config it names, when that config can still be read, against this
    run's ``model_section``, or that it cannot be compared."""
    if source is None:   # no config of this run to compare with (a call from Python)
        return ""
    try:
        if Path(made_for).resolve() == Path(source).resolve():
            return ""
    except OSError:
        pass
    if model_section is None:
        return "another config"
    try:
        from .config import load_config

        other = load_config(made_for).model
    except Exception:   # moved, or no longer valid: the name is all there is to go by
        return "that config cannot be read now, so its network cannot be compared with this run's"
    theirs = {"name": other.name, "kwargs": dict(other.kwargs or {})}
    ours = {"name": model_section.get("name"), "kwargs": dict(model_section.get("kwargs") or {})}
    if theirs == ours:
        return ""    # a copy of the config with the same network: nothing to say
    return f"its network is {theirs['name']} {theirs['kwargs']}, this run's is {ours['name']} {ours['kwargs']}"


def pretraining_record(meta: dict[str, str]) -> dict:
    """How ``meddeeprecog pretrain`` made the weights file, from its safetensors metadata ``meta``
    (:func:`init_header`): ``method``, ``epochs``,
    ``pool`` (per source: config, data ``path``, ``split``, ``split_in_data``, ``train_images``, ``fingerprint``)
    and ``settings``; ``pool`` is None for weights written before pools were recorded, or not made by pretrain."""
    import json

    out: dict = {"made_by": meta.get("made_by"), "method": meta.get("method"), "epochs": None, "pool": None,
                 "settings": None}
    try:
        out["epochs"] = int(meta["epochs"]) if "epochs" in meta else None
        out["pool"] = json.loads(meta["pool"]) if "pool" in meta else None
        out["settings"] = json.loads(meta["settings"]) if "settings" in meta else None
    except (ValueError, TypeError):
        out["pool"] = None
    if not isinstance(out["pool"], list):
        out["pool"] = None
    return out


def pool_warnings(record: dict, data_fingerprint: str, data_path: str | Path, val_split: str,
                  val_fraction: float) -> list[str]:
    """Why the run's val figures would not be held out from the pretraining of its ``model/init``: a pool source
    that is this run's data (same fingerprint, or same file) and whose pooled split is the run's ``val_split``, or
    that has no named split and was cut with another ``val_fraction`` than the run's (the same fraction cuts the
    same rows: the last of each class, in file order). Empty when none, or when the pool is not recorded."""
    pool = (record.get("pretraining") or {}).get("pool") or []
    here = Path(data_path).resolve()
    out = []
    for src in pool:
        same = src.get("fingerprint") == data_fingerprint or (src.get("path") and Path(src["path"]).resolve() == here)
        if not same:
            continue
        where = f"{src.get('path')}, {src.get('train_images')} images via {src.get('config')}"
        if src.get("split_in_data", True) and src.get("split") == val_split:
            out.append(f"the pretraining pool took the {val_split!r} split of this run's data ({where}): the val "
                       "figures are not held out from pretraining")
        elif not src.get("split_in_data", True) and src.get("val_fraction") != float(val_fraction):
            out.append(f"the pretraining pool took this run's data, which has no named split ({where}), cut with "
                       f"val_fraction {src.get('val_fraction')} where this run holds out {float(val_fraction)}: "
                       "some val images were pretrained on, so the val figures are not held out from pretraining")
    return out


def init_words(init: dict) -> str:
    """The card's words on how ``model/init``'s weights were pretrained (method, epochs, each pool source)."""
    pre = init.get("pretraining") or {}
    if not pre.get("pool"):
        made = "made by `meddeeprecog pretrain`" if pre.get("made_by") == "meddeeprecog pretrain" else \
            "not made by `meddeeprecog pretrain`"
        return f"{made}; pool not recorded"
    sources = "; ".join(f"`{s.get('path')}` split {s.get('split')!r}, {s.get('train_images')} images "
                        f"({str(s.get('fingerprint'))[:19]}…, via `{s.get('config')}`)" for s in pre["pool"])
    return f"{pre.get('method') or 'pretrained'}, {pre.get('epochs')} epochs, on a pool of: {sources}"
