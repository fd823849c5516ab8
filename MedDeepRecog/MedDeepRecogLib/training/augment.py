"""Batch augmentation from config data: every sample of a ``(B, C, *spatial)`` batch gets its own random draw.

``{"flip": {"prob": 0.5, "axes": [0, 1, 2]}, "rotate": {"prob": 0.3, "degrees": 15}, "rotate90": {"prob", "axes"},
"zoom": {"prob": 0.3, "min": 0.9, "max": 1.1}, "noise": {"prob": 0.2, "std": 0.05},
"intensity_shift": {"prob": 0.2, "offset": 0.1}, "gamma": {"prob": 0.3, "min": 0.7, "max": 1.5},
"mixup": {"prob": 1.0, "alpha": 0.2}}`` — axes are spatial (0 = first spatial axis); ``gamma`` changes contrast, e.g.
to make a CT model indifferent to the exact display window of its training images.

``mixup`` (Zhang et al., ICLR 2018; classifiers only) comes last: a batch drawn to be mixed (``prob``) has each
sample blended with another of the same batch, ``lam * x_i + (1 - lam) * x_perm(i)`` with ``lam ~ Beta(alpha,
alpha)`` per sample, and its labels become the same blend of one-hot vectors, ``(B, K)`` float, which
:class:`.classification.ClassificationStep` scores as probability targets. It draws what MONAI's
``monai.transforms.MixUp`` draws (a Beta weight per sample, one permutation of the batch) but is written here: that
transform keeps its weights on the CPU (it fails on a batch augmented on the GPU) and refuses ``(B, K)`` label
vectors, and its own generator would be a second random stream for a checkpoint to carry.

Each entry draws what the MONAI random array transform of the same name draws (``RandFlip``, ``RandRotate90``,
``RandRotate``, ``RandZoom``, ``RandGaussianNoise``, ``RandShiftIntensity``, ``RandAdjustContrast``), in that order,
and :func:`monai_transforms` builds exactly those MONAI transforms from the same spec (the per-sample pipeline of
MONAI's tutorials, which ``bench/disease.py`` runs as the anchor).

Why the batch is augmented here rather than by those transforms: MONAI's array transforms take one sample at a time,
and in a 2D training step at 128² their per-sample resampling cost about a third of the step on a 2-core CPU. Here a
batch is resampled once: rotation and zoom of every drawn sample are composed into one affine matrix per sample and
applied by a single ``torch.nn.functional.grid_sample`` call (bilinear, zero padding, about the image centre, as
``RandRotate``/``RandZoom`` with ``keep_size``); flips and quarter turns are exact index operations; the intensity
draws are per-sample tensor arithmetic. Samples that draw nothing are returned bit for bit.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F


def monai_transforms(spec: Mapping[str, Any] | None, spatial_dims: int):
    """The MONAI per-sample ``Compose`` for ``spec`` (the tutorial pattern); ``None`` when ``spec`` asks nothing."""
    from monai.transforms import (Compose, RandAdjustContrast, RandFlip, RandGaussianNoise, RandRotate,
                                  RandRotate90, RandShiftIntensity, RandZoom)

    p = _Spec(spec, spatial_dims)
    ts = [RandFlip(prob=p.flip_prob, spatial_axis=ax) for ax in p.flip_axes]
    if p.rot90_prob is not None:
        ts.append(RandRotate90(prob=p.rot90_prob, spatial_axes=p.rot90_axes))
    if p.rotate_prob is not None:
        r = p.rotate_range
        kw = {"range_x": r} if spatial_dims == 2 else {"range_x": r, "range_y": r, "range_z": r}
        ts.append(RandRotate(prob=p.rotate_prob, keep_size=True, padding_mode="zeros", **kw))
    if p.zoom_prob is not None:
        ts.append(RandZoom(prob=p.zoom_prob, min_zoom=p.zoom_range[0], max_zoom=p.zoom_range[1], keep_size=True,
                           padding_mode="constant"))
    if p.noise_prob is not None:
        ts.append(RandGaussianNoise(prob=p.noise_prob, std=p.noise_std))
    if p.shift_prob is not None:
        ts.append(RandShiftIntensity(offsets=p.shift_offset, prob=p.shift_prob))
    if p.gamma_prob is not None:
        ts.append(RandAdjustContrast(prob=p.gamma_prob, gamma=p.gamma_range))
    return Compose(ts) if ts else None


class _Spec:
    """The augmentation spec read once, with MONAI's defaults for what it leaves out."""

    def __init__(self, spec: Mapping[str, Any] | None, spatial_dims: int):
        spec = dict(spec or {})

        def block(name: str) -> dict | None:
            return (spec[name] or {}) if name in spec else None

        self.spatial_dims = spatial_dims
        f = block("flip")
        self.flip_prob = float(f.get("prob", 0.5)) if f is not None else 0.0
        self.flip_axes = [int(a) for a in f.get("axes", list(range(spatial_dims)))] if f is not None else []
        r90 = block("rotate90")
        self.rot90_prob = None if r90 is None else float(r90.get("prob", 0.5))
        self.rot90_axes = tuple(int(a) for a in (r90 or {}).get("axes", (0, 1)))
        rot = block("rotate")
        self.rotate_prob = None if rot is None else float(rot.get("prob", 0.3))
        self.rotate_range = math.radians(float((rot or {}).get("degrees", 15)))
        z = block("zoom")
        self.zoom_prob = None if z is None else float(z.get("prob", 0.3))
        self.zoom_range = (float((z or {}).get("min", 0.9)), float((z or {}).get("max", 1.1)))
        n = block("noise")
        self.noise_prob = None if n is None else float(n.get("prob", 0.2))
        self.noise_std = float((n or {}).get("std", 0.05))
        s = block("intensity_shift")
        self.shift_prob = None if s is None else float(s.get("prob", 0.2))
        self.shift_offset = float((s or {}).get("offset", 0.1))
        g = block("gamma")
        self.gamma_prob = None if g is None else float(g.get("prob", 0.3))
        self.gamma_range = (float((g or {}).get("min", 0.7)), float((g or {}).get("max", 1.5)))
        m = block("mixup")
        self.mixup_prob = None if m is None else float(m.get("prob", 1.0))
        self.mixup_alpha = float((m or {}).get("alpha", 0.2))
        self.per_sample = bool(self.flip_axes) or any(
            v is not None for v in (self.rot90_prob, self.rotate_prob, self.zoom_prob, self.noise_prob,
                                    self.shift_prob, self.gamma_prob))
        self.enabled = self.per_sample or self.mixup_prob is not None


def flipped_axes(spec: Mapping[str, Any] | None, spatial_dims: int) -> set[int]:
    """The spatial axes ``spec``'s ``flip`` block mirrors with a probability above 0 (its defaults included)."""
    parsed = _Spec(spec, spatial_dims)
    return set(parsed.flip_axes) if parsed.flip_prob > 0 else set()


def _rotation(angles: np.ndarray, spatial_dims: int) -> np.ndarray:
    """Rotation matrix in (x, y[, z]) order (the order ``affine_grid`` uses) for one angle (2D) or three (3D)."""
    if spatial_dims == 2:
        c, s = math.cos(angles[0]), math.sin(angles[0])
        return np.array([[c, -s], [s, c]])
    ax, ay, az = angles
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


class BatchAugment:
    """``augment(x)`` for a batch ``(B, C, *spatial)`` tensor (2 or 3 spatial dims); each sample gets its own draw.

    The random state is a numpy ``RandomState`` seeded with ``seed``; ``get_state``/``set_state`` let a checkpoint
    resume the same stream. The input tensor is never modified. It runs on the batch's device (the training loop
    augments on the GPU when it trains there); the draws, Gaussian noise included, are made on the CPU either way,
    so a seed gives the same augmentation on every device.
    """

    def __init__(self, spec: Mapping[str, Any], spatial_dims: int, seed: int = 0, num_classes: int | None = None):
        self.spec = _Spec(spec, spatial_dims)
        self.enabled = self.spec.enabled
        self.rng = np.random.RandomState(seed)
        if self.spec.mixup_prob is not None and not (num_classes and num_classes >= 2):
            raise ValueError("augmentation/mixup blends labels: it needs a classifier's number of classes")
        self.num_classes = num_classes

    def _draw(self, n: int, prob: float | None) -> np.ndarray:
        if prob is None:
            return np.zeros(n, dtype=bool)
        return self.rng.random_sample(n) < prob

    def __call__(self, batch: Any) -> Any:
        """Augment a batch ``x`` or the images ``x`` of a batch ``(x, y, ...)`` (the rest passes unchanged, except
        that ``mixup`` blends the images and turns the labels ``y`` (B,) into ``(B, K)`` float targets)."""
        if not self.enabled:
            return batch
        if isinstance(batch, (list, tuple)):
            x = self._per_sample(batch[0]) if self.spec.per_sample else batch[0]
            if self.spec.mixup_prob is None:
                return type(batch)([x, *batch[1:]])
            return type(batch)([*self._mixup(x, batch[1]), *batch[2:]])
        if self.spec.mixup_prob is not None:
            raise ValueError("augmentation/mixup needs labelled batches (x, y)")
        return self._per_sample(batch) if self.spec.per_sample else batch

    def _mixup(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Blend the samples of a batch pairwise and their one-hot labels alike (module docstring); a batch drawn not
        to be mixed keeps its images and gets one-hot targets, so every batch's labels have one form."""
        n = x.shape[0]
        targets = F.one_hot(y.long(), self.num_classes).to(torch.float32)
        mixed = bool(self.rng.random_sample() < self.spec.mixup_prob)
        lam, perm = self.rng.beta(self.spec.mixup_alpha, self.spec.mixup_alpha, size=n), self.rng.permutation(n)
        if not mixed or n < 2:
            return x, targets
        w = torch.from_numpy(lam).to(x.device, torch.float32)
        idx = torch.from_numpy(perm).to(x.device)
        wx = w.view(-1, *[1] * (x.ndim - 1)).to(x.dtype)
        return wx * x + (1 - wx) * x[idx], w[:, None] * targets + (1 - w[:, None]) * targets[idx]

    def _per_sample(self, x: torch.Tensor) -> torch.Tensor:
        """Flip, turn, rotate, zoom, noise, shift and contrast: each sample of ``x`` its own draw."""
        p, n, d = self.spec, x.shape[0], x.ndim - 2
        out = x.clone()
        for ax in p.flip_axes:
            sel = torch.from_numpy(self._draw(n, p.flip_prob))
            if sel.any():
                out[sel] = out[sel].flip(2 + ax)
        if p.rot90_prob is not None:
            sel, turns = self._draw(n, p.rot90_prob), self.rng.randint(1, 4, size=n)
            dims = (2 + p.rot90_axes[0], 2 + p.rot90_axes[1])
            for i in np.nonzero(sel)[0]:
                out[i] = torch.rot90(out[i:i + 1], int(turns[i]), dims)[0]
        rotate, angles = self._draw(n, p.rotate_prob), self.rng.uniform(-p.rotate_range, p.rotate_range,
                                                                       size=(n, 1 if d == 2 else 3))
        zoom, factors = self._draw(n, p.zoom_prob), self.rng.uniform(*p.zoom_range, size=n)
        moved = np.nonzero(rotate | zoom)[0]
        if len(moved):
            out[moved] = self._resample(out[moved], angles[moved], rotate[moved], factors[moved], zoom[moved])
        noisy, stds = self._draw(n, p.noise_prob), self.rng.uniform(0.0, p.noise_std, size=n)
        if noisy.any():
            gen = torch.Generator().manual_seed(int(self.rng.randint(0, 2**31 - 1)))
            idx = np.nonzero(noisy)[0]
            noise = torch.randn(out[idx].shape, generator=gen, dtype=torch.float32)
            out[idx] = out[idx] + (noise * torch.from_numpy(stds[idx]).float().view(-1, *[1] * (x.ndim - 1))
                                   ).to(out.device, out.dtype)
        shifted, offsets = self._draw(n, p.shift_prob), self.rng.uniform(-p.shift_offset, p.shift_offset, size=n)
        if shifted.any():
            idx = np.nonzero(shifted)[0]
            out[idx] = out[idx] + torch.from_numpy(offsets[idx]).to(out.device, out.dtype).view(-1, *[1] * (x.ndim - 1))
        contrast, gammas = self._draw(n, p.gamma_prob), self.rng.uniform(*p.gamma_range, size=n)
        if contrast.any():
            idx = np.nonzero(contrast)[0]
            sub = out[idx]
            flat = sub.reshape(len(idx), -1)
            lo = flat.min(dim=1).values.view(-1, *[1] * (x.ndim - 1))
            span = (flat.max(dim=1).values.view_as(lo) - lo)
            g = torch.from_numpy(gammas[idx]).to(out.device, out.dtype).view_as(lo)
            out[idx] = ((sub - lo) / (span + 1e-7)).pow(g) * span + lo
        return out

    def _resample(self, x: torch.Tensor, angles: np.ndarray, rotate: np.ndarray, factors: np.ndarray,
                  zoom: np.ndarray) -> torch.Tensor:
        """Rotate and zoom each sample of ``x`` about its centre in one ``grid_sample`` call.

        The matrix maps output to input positions in pixel units (x, y[, z] order), so rotations stay rigid on
        non-square images; it is then expressed in ``affine_grid``'s normalised coordinates.
        """
        d = x.ndim - 2
        half = np.array(x.shape[2:][::-1], dtype=np.float64) / 2.0  # (x, y[, z]) half extents in pixels
        theta = np.zeros((len(x), d, d + 1))
        for i in range(len(x)):
            m = np.eye(d)
            if rotate[i]:
                m = _rotation(angles[i], d).T  # output -> input: the inverse rotation
            if zoom[i]:
                m = m / factors[i]  # zoom > 1 magnifies: an output pixel reads nearer the centre
            theta[i, :, :d] = (m * half[None, :]) / half[:, None]
        theta_t = torch.from_numpy(theta).to(x.device, torch.float32)
        grid = F.affine_grid(theta_t, list(x.shape), align_corners=False)
        out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return out.to(x.dtype)

    def get_state(self) -> dict:
        return {"rng": generator_state(self.rng)} if self.enabled else {}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Resume the stream saved by :meth:`get_state` (a state in another format starts the seeded stream)."""
        if not self.enabled or not state or "rng" not in state:
            return
        set_generator_state(self.rng, state["rng"])


def generator_state(generator: np.random.RandomState) -> dict:
    """A ``RandomState``'s state as tensors and numbers (what a ``weights_only`` checkpoint can hold)."""
    _name, keys, pos, has_gauss, cached = generator.get_state()
    return {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
            "cached": float(cached)}


def set_generator_state(generator: np.random.RandomState, s: Mapping[str, Any]) -> None:
    """Put back what :func:`generator_state` returned."""
    generator.set_state(("MT19937", s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["cached"]))


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
    return {"transforms": [generator_state(generator) for generator in _random_generators(transform)]}


def set_random_state(transform: Any, state: Mapping[str, Any]) -> None:
    """Restore what :func:`random_state` returned for the same transform."""
    for generator, s in zip(_random_generators(transform), state["transforms"]):
        set_generator_state(generator, s)
