"""Monte-Carlo dropout and test-time augmentation: several stochastic predictions per scan and their spread.

Shapes: inputs ``(B, C, *spatial)`` in model units; samples ``(S, B, K)`` probabilities.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

Forward = Callable[[torch.Tensor], torch.Tensor]

_DROPOUT = (torch.nn.Dropout, torch.nn.Dropout1d, torch.nn.Dropout2d, torch.nn.Dropout3d, torch.nn.AlphaDropout)


def dropout_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's dropout modules with a non-zero rate (MC dropout needs at least one)."""
    return [m for m in model.modules() if isinstance(m, _DROPOUT) and float(getattr(m, "p", 0.0)) > 0.0]


def mc_dropout_samples(model: torch.nn.Module, x: torch.Tensor, n: int = 20, *,
                       seed: int | None = 0, forward: Forward | None = None, batch_size: int = 8) -> torch.Tensor:
    """``n`` forward passes with dropout active and everything else (batch norm) in eval mode.

    Args:
        model: classifier with at least one dropout layer.
        x: input batch ``(B, C, *spatial)``.
        forward: maps ``x`` to logits ``(B, K)``; defaults to ``model``. Pass e.g. a slice aggregator.
        batch_size: without ``forward``, up to this many passes run as one batch (``x`` repeated): dropout
            draws its masks per row and batch norm is in eval mode, so rows stay independent samples.

    Returns:
        ``(n, B, K)`` probabilities. The model is put back in its previous mode.

    Raises:
        ValueError: the model has no dropout (then MC dropout would report zero spread, which is misleading).
    """
    layers = dropout_layers(model)
    if not layers:
        raise ValueError("the model has no dropout layer, so Monte-Carlo dropout is not available")
    batched = forward is None and batch_size > 1
    forward = forward or model
    was_training = model.training
    generator_state = torch.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    model.eval()
    for m in layers:
        m.train()
    try:
        with torch.no_grad():
            if batched:
                chunks, left, b = [], int(n), x.shape[0]
                while left > 0:
                    k = min(left, max(1, batch_size // max(b, 1)))
                    p = torch.softmax(forward(x.repeat(k, *([1] * (x.ndim - 1)))), dim=-1)
                    chunks.append(p.reshape(k, b, -1))
                    left -= k
                out = torch.cat(chunks)
            else:
                out = torch.stack([torch.softmax(forward(x), dim=-1) for _ in range(int(n))])
    finally:
        model.train(was_training)
        if seed is not None:
            torch.set_rng_state(generator_state)
    return out


def default_tta(spatial_dims: int, n: int = 8, *,
                noise_std: float = 0.0) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """Test-time augmentations: the identity plus flips over subsets of the in-plane axes (and small noise).

    Flips keep the anatomy plausible only for left-right symmetric tasks; the list is configuration, so a
    package can choose its own. Returns at most ``n`` callables on ``(B, C, ..., *spatial)`` tensors, flipping the
    last ``spatial_dims`` axes.
    """
    axes = list(range(-spatial_dims, 0))  # the trailing axes: a slice stack (B, C, S, H, W) flips H and W only
    in_plane = axes[-2:]
    combos: list[tuple[int, ...]] = [(), (in_plane[-1],), (in_plane[0],), tuple(in_plane)]
    if spatial_dims == 3:
        combos += [(axes[0],), (axes[0], in_plane[-1]), (axes[0], in_plane[0]), tuple(axes)]
    transforms = []
    for i, dims in enumerate(combos[:n]):
        def t(x: torch.Tensor, dims=dims, i=i) -> torch.Tensor:
            y = torch.flip(x, dims) if dims else x
            if noise_std > 0 and i > 0:
                g = torch.Generator().manual_seed(i)
                y = y + noise_std * torch.randn(y.shape, generator=g, dtype=y.dtype)
            return y
        transforms.append(t)
    return transforms


def tta_samples(forward: Forward, x: torch.Tensor, transforms: Sequence[Callable[[torch.Tensor], torch.Tensor]], *,
                batched: bool = False) -> torch.Tensor:
    """Probabilities of the model under each test-time augmentation: ``(len(transforms), B, K)``.

    ``batched``: run all augmented copies as one batch (only for a ``forward`` whose rows are independent, i.e.
    a network in eval mode, not a slice aggregator).
    """
    with torch.no_grad():
        if batched:
            views = [t(x) for t in transforms]
            p = torch.softmax(forward(torch.cat(views)), dim=-1)
            return p.reshape(len(views), x.shape[0], -1)
        return torch.stack([torch.softmax(forward(t(x)), dim=-1) for t in transforms])


def ensemble_member_samples(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Each member's probabilities for a seed ensemble (:class:`..models.ensemble.MeanEnsemble`, whose
    ``members`` are independently trained networks): ``(members, B, K)``, with the ensemble's prior shift
    (``class_log_offsets``) applied to each. Their spread is the ensemble's disagreement (Lakshminarayanan et al.
    2017, deep ensembles).

    Raises:
        ValueError: the model is not an ensemble.
    """
    members = getattr(model, "members", None)
    if not isinstance(members, torch.nn.ModuleList) or len(members) < 2:
        raise ValueError("the model is not an ensemble of two or more members")
    with torch.no_grad():
        if hasattr(model, "member_probabilities"):  # a MeanEnsemble: its prior shift applies to every member
            return model.member_probabilities(x)
        return torch.stack([torch.softmax(m(x), dim=-1) for m in members])


def summarize_samples(samples: torch.Tensor | np.ndarray) -> dict[str, Any]:
    """Spread of stochastic predictions ``(S, B, K)`` -> per-case figures (lists of length B).

    - ``mean_probabilities`` ``(B, K)``;
    - ``predictive_entropy``: entropy of the mean, normalised to 0..1 by ``log K``;
    - ``mutual_information``: predictive entropy minus mean per-sample entropy (model/epistemic part), / ``log K``;
    - ``variance``: variance over samples of the predicted class's probability.
    """
    s = np.asarray(samples.detach().cpu() if isinstance(samples, torch.Tensor) else samples, dtype=np.float64)
    k = s.shape[-1]
    mean = s.mean(0)
    ps = np.clip(s, 1e-12, 1.0)
    pm = np.clip(mean, 1e-12, 1.0)
    h_mean = -(pm * np.log(pm)).sum(-1) / np.log(k)
    h_each = (-(ps * np.log(ps)).sum(-1) / np.log(k)).mean(0)
    pred = mean.argmax(-1)
    var = s[:, np.arange(s.shape[1]), pred].var(0)
    return {"mean_probabilities": mean.tolist(), "predictive_entropy": h_mean.tolist(),
            "mutual_information": np.maximum(h_mean - h_each, 0.0).tolist(), "variance": var.tolist(),
            "samples": int(s.shape[0])}
