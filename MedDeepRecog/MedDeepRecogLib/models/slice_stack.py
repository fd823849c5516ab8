"""A slice classifier read as a scan classifier: the one aggregation of a slice stack.

A ``slices2d`` model classifies each axial slice; the scan's class probabilities are the softmax of the **mean
log-probability over the voting slices** (slices with enough body, and inside the model's domain when the package
has an out-of-domain check). That is a product of experts: one slice that confidently says otherwise pulls the scan
towards "uncertain" rather than being out-voted silently. classify's prediction (``inference.predict``), its trust
figures (faithfulness and uncertainty, ``inference.trust``) and the adversarial check of one scan
(``robustness.scan``) all aggregate with :func:`mean_log_probability`, so they all speak of the same scan-level
prediction.

Shapes: per-slice logits ``(..., S, K)``; a slice stack as one sample ``(B, C, S, H, W)``
(:class:`SliceStackClassifier`, so deletion / insertion variants of a stack, attacks and test-time augmentations
treat the stack like a volume).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn


def mean_log_probability(logits: torch.Tensor, voting: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
    """``(..., S, K)`` per-slice logits → ``(..., K)`` mean log-probability over the voting slices.

    Args:
        logits: per-slice class scores; slices along the second-to-last axis.
        voting: ``(S,)`` bool, the slices that vote; ``None`` (or none voting) lets every slice vote.

    The log-probabilities are summed slice by slice, in slice order, then divided by the number of voting slices:
    that is what numpy's ``mean`` over the slice axis computes and what classify has always reported, while
    ``torch.mean`` / ``torch.sum`` add in blocks and round differently in the last bit. Summing in order keeps the
    scan probabilities of the bundled packages identical bit for bit (``Testing/Data/bundled_scores.json``); the
    loop is over at most a few dozen slices (``input.slices.max_slices``).
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    keep = _mask(voting)
    if keep is not None and bool(keep.any()):
        logp = logp[..., keep.to(logp.device), :]
    total = logp[..., 0, :]
    for s in range(1, logp.shape[-2]):
        total = total + logp[..., s, :]
    return total / logp.shape[-2]


def _mask(voting: torch.Tensor | np.ndarray | None) -> torch.Tensor | None:
    if voting is None:
        return None
    if isinstance(voting, torch.Tensor):
        return voting.detach().to(torch.bool)
    return torch.from_numpy(np.asarray(voting, dtype=bool))


def stack_as_sample(x: torch.Tensor) -> torch.Tensor:
    """A slice stack ``(S, C, H, W)`` (one slice per batch row, as a 2D network reads it) → one sample
    ``(1, C, S, H, W)``."""
    return x.permute(1, 0, 2, 3).unsqueeze(0)


def sample_as_stack(x: torch.Tensor) -> torch.Tensor:
    """One sample ``(1, C, S, H, W)`` → the slice stack ``(S, C, H, W)`` (inverse of :func:`stack_as_sample`)."""
    if x.shape[0] != 1:
        raise ValueError(f"expected one slice stack (batch 1), got a batch of {x.shape[0]}")
    return x[0].permute(1, 0, 2, 3)


class SliceStackClassifier(nn.Module):
    """A 2D slice classifier as a scan classifier: ``(B, C, S, H, W)`` → ``(B, K)`` mean log-probabilities.

    Each batch row is one whole slice stack; ``softmax`` of the output is the scan's probabilities as classify
    reports them. Rows are independent (the model is applied to every slice of every row in one batch), so
    several variants of a stack can be classified at once.

    Args:
        model: the slice network, ``(N, C, H, W)`` → ``(N, K)`` logits.
        voting: ``(S,)`` bool, the slices that vote (see :func:`mean_log_probability`); ``None``: all of them.
    """

    def __init__(self, model: nn.Module, voting: torch.Tensor | np.ndarray | None = None):
        super().__init__()
        self.model = model
        self.voting = _mask(voting)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, s, h, w = x.shape
        logits = self.model(x.permute(0, 2, 1, 3, 4).reshape(b * s, c, h, w))
        return mean_log_probability(logits.reshape(b, s, -1), self.voting)
