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

    The random state is a numpy ``RandomState`` seeded with ``seed``; ``get_state``/``set_state`` let a
    checkpoint resume the same stream.
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

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        out = [torch.as_tensor(self.transform(sample)).as_subclass(torch.Tensor) for sample in x]
        return torch.stack(out).to(x.dtype)

    def get_state(self) -> dict:
        if not self.enabled:
            return {}
        states = []
        for t in self.transform.transforms:
            name, keys, pos, has_gauss, cached = t.R.get_state()
            states.append({"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                           "has_gauss": int(has_gauss), "cached": float(cached)})
        return {"transforms": states}

    def set_state(self, state: Mapping[str, Any]) -> None:
        if not self.enabled or not state:
            return
        for t, s in zip(self.transform.transforms, state["transforms"]):
            t.R.set_state(("MT19937", s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["cached"]))
