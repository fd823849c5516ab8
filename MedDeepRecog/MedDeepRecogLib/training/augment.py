"""Batch augmentation from config data, built from MONAI random array transforms (applied per sample).

``{"flip": {"prob": 0.5, "axes": [0, 1, 2]}, "rotate": {"prob": 0.3, "degrees": 15}, "rotate90": {"prob", "axes"},
"zoom": {"prob": 0.3, "min": 0.9, "max": 1.1}, "noise": {"prob": 0.2, "std": 0.05},
"intensity_shift": {"prob": 0.2, "offset": 0.1}, "gamma": {"prob": 0.3, "min": 0.7, "max": 1.5}}`` — axes are
spatial (0 = first spatial axis); ``gamma`` changes contrast (MONAI ``RandAdjustContrast``), e.g. to make a CT model
indifferent to the exact display window of its training images.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch


class BatchAugment:
    """``augment(x)`` for a batch ``(B, C, *spatial)`` tensor; each sample gets its own random draw.

    The random state is a numpy ``RandomState`` per transform seeded with ``seed``; ``get_state``/``set_state`` let
    a checkpoint resume the same stream (:func:`random_state`).
    """

    def __init__(self, spec: Mapping[str, Any], spatial_dims: int, seed: int = 0):
        from monai.transforms import (Compose, RandAdjustContrast, RandFlip, RandGaussianNoise, RandRotate,
                                      RandRotate90, RandShiftIntensity, RandZoom)

        ts = []
        spec = dict(spec or {})
        if "flip" in spec:
            p = spec["flip"] or {}
            for ax in p.get("axes", list(range(spatial_dims))):
                ts.append(RandFlip(prob=float(p.get("prob", 0.5)), spatial_axis=int(ax)))
        if "rotate90" in spec:
            p = spec["rotate90"] or {}
            ts.append(RandRotate90(prob=float(p.get("prob", 0.5)), spatial_axes=tuple(p.get("axes", (0, 1)))))
        if "rotate" in spec:
            p = spec["rotate"] or {}
            r = math.radians(float(p.get("degrees", 15)))
            kw = {"range_x": r} if spatial_dims == 2 else {"range_x": r, "range_y": r, "range_z": r}
            ts.append(RandRotate(prob=float(p.get("prob", 0.3)), keep_size=True, padding_mode="zeros", **kw))
        if "zoom" in spec:
            p = spec["zoom"] or {}
            ts.append(RandZoom(prob=float(p.get("prob", 0.3)), min_zoom=float(p.get("min", 0.9)),
                               max_zoom=float(p.get("max", 1.1)), keep_size=True, padding_mode="constant"))
        if "noise" in spec:
            p = spec["noise"] or {}
            ts.append(RandGaussianNoise(prob=float(p.get("prob", 0.2)), std=float(p.get("std", 0.05))))
        if "intensity_shift" in spec:
            p = spec["intensity_shift"] or {}
            ts.append(RandShiftIntensity(offsets=float(p.get("offset", 0.1)), prob=float(p.get("prob", 0.2))))
        if "gamma" in spec:  # last, so configs without it draw exactly the random numbers they always did
            p = spec["gamma"] or {}
            ts.append(RandAdjustContrast(prob=float(p.get("prob", 0.3)),
                                         gamma=(float(p.get("min", 0.7)), float(p.get("max", 1.5)))))
        self.enabled = bool(ts)
        self.transform = Compose(ts).set_random_state(seed=seed) if ts else None

    def __call__(self, batch: Any) -> Any:
        """Augment a batch ``x`` or the images ``x`` of a batch ``(x, y, ...)`` (the rest passes unchanged)."""
        if not self.enabled:
            return batch
        if isinstance(batch, (list, tuple)):
            return type(batch)([self(batch[0]), *batch[1:]])
        out = [torch.as_tensor(self.transform(sample)).as_subclass(torch.Tensor) for sample in batch]
        return torch.stack(out).to(batch.dtype)

    def get_state(self) -> dict:
        return random_state(self.transform) if self.enabled else {}

    def set_state(self, state: Mapping[str, Any]) -> None:
        if self.enabled and state:
            set_random_state(self.transform, state)


def _random_generators(transform: Any) -> list[np.random.RandomState]:
    """The numpy ``RandomState`` of every MONAI random transform in ``transform`` (itself included), depth first in
    attribute order: a ``Compose``'s members, and the random parts a transform holds (``RandAffine``'s grid). A plain
    ``Compose`` never draws from its own generator (only ``OneOf`` / ``RandomOrder`` do), so it is left out."""
    from monai.transforms import Compose, OneOf, RandomOrder, Randomizable

    own = isinstance(transform, Randomizable) and (not isinstance(transform, Compose)
                                                   or isinstance(transform, (OneOf, RandomOrder)))
    out = [transform.R] if own else []
    for value in vars(transform).values():
        for item in (value if isinstance(value, (list, tuple)) else [value]):
            if isinstance(item, Randomizable):
                out += _random_generators(item)
    return out


def random_state(transform: Any) -> dict:
    """The random state of the MONAI random transforms in ``transform`` as tensors and numbers (what a
    ``weights_only`` checkpoint can hold); :func:`set_random_state` puts it back."""
    states = []
    for generator in _random_generators(transform):
        _name, keys, pos, has_gauss, cached = generator.get_state()
        states.append({"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)})
    return {"transforms": states}


def set_random_state(transform: Any, state: Mapping[str, Any]) -> None:
    """Restore what :func:`random_state` returned for the same transform."""
    for generator, s in zip(_random_generators(transform), state["transforms"]):
        generator.set_state(("MT19937", s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["cached"]))
