"""A seed ensemble: several copies of one registered architecture, trained independently, probabilities averaged.

Why: on small data sets the same config trained with another seed moves the validation AUC by several points
(AdrenalMNIST3D, 98 validation cases: 0.84–0.89 for one config); averaging independently trained members
removes much of that variance at N times the inference cost. The members' *probabilities* are averaged (deep
ensembles, Lakshminarayanan et al. 2017), not their logits: a mean of logits lets one over-confident member decide.
``train`` builds one when ``training/ensemble`` is N > 1 (each member with its own seed, data order, augmentation
and best epoch) or ``training/folds`` is K >= 2 (a cross-validation ensemble: member i also trains without fold i
and picks its epoch there); the package stores all members in one weights file.

Grad-CAM target: ``members.*.<member layer>`` — a pattern over every member's layer
(:func:`..explain.gradcam.resolve_layers`); the members' activations are explained as one layer whose channels
are all members' channels, which is exactly Grad-CAM of the averaged score.

Test-time flip (``flip_axes``, from ``training/test_time_flip``): every member also sees the input mirrored along
those spatial axes, in the same batch (``(2B, ...)``: the originals, then their mirror images), and the output
averages the probabilities of both views. For a network trained with the same flips as augmentation this removes
the left/right bias a single pass keeps. Grad-CAM merges the mirror view's activations, flipped back, as further
channels (:func:`..explain.gradcam.explained_forward` reads :attr:`MeanEnsemble.flip_dims`), and the domain check
scores the views' mean features (:func:`..uncertainty.domain.capture_features`), so both stay one map and one
feature vector per input.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from .registry import build_model, default_target_layer, register_model


class MeanEnsemble(nn.Module):
    """``members`` copies of architecture ``member``; ``forward(x)`` = log of the mean of the members' softmax
    probabilities, so ``softmax(forward(x))`` is exactly that mean (without ``class_log_offsets``) and the output
    can stand wherever logits do (classify, Grad-CAM, temperature scaling, attacks).

    Args:
        in_channels, num_classes: as every architecture.
        member: registry name of the member architecture (e.g. ``"simple_cnn3d"``).
        member_kwargs: its keyword arguments (without ``in_channels`` / ``num_classes``).
        members: number of members (>= 1).
        class_log_offsets: ``(num_classes,)`` log-odds offsets added to the log mean probabilities, renormalised:
            a prior shift fitted out of fold (``training/prior_shift``,
            :func:`..uncertainty.calibration.fit_class_offsets`). Stored in ``model.json``, not in the weights.
        flip_axes: spatial axes (0 = the first spatial axis of ``(B, C, *spatial)``) along which the input is also
            seen mirrored, probabilities averaged over both views (test-time flip, see the module docstring);
            ``None`` or empty: one view. Stored in ``model.json``, not in the weights.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, member: str = "simple_cnn3d",
                 member_kwargs: dict[str, Any] | None = None, members: int = 3,
                 class_log_offsets: list[float] | None = None, flip_axes: list[int] | None = None):
        super().__init__()
        if int(members) < 1:
            raise ValueError(f"an ensemble needs at least one member, got {members}")
        axes = sorted({int(a) for a in (flip_axes or [])})
        if any(a < 0 or a > 2 for a in axes):
            raise ValueError(f"flip_axes are spatial axes 0..2, got {list(flip_axes)!r}")
        # tensor dimensions of (B, C, *spatial); () = no test-time flip
        self.flip_dims: tuple[int, ...] = tuple(a + 2 for a in axes)
        kw = {**(member_kwargs or {}), "in_channels": in_channels, "num_classes": num_classes}
        self.members = nn.ModuleList(build_model(member, **kw) for _ in range(int(members)))
        self.register_buffer("class_log_offsets", None, persistent=False)
        if class_log_offsets is not None:
            self.set_class_log_offsets(class_log_offsets, num_classes)

    def set_class_log_offsets(self, offsets: list[float], num_classes: int | None = None) -> None:
        """Shift the output's class priors by ``offsets`` (K,) (see the class docstring); a buffer outside the
        state dict, so it follows ``.to(device)`` and the weights file stays the same."""
        values = [float(v) for v in offsets]
        if (num_classes is not None and len(values) != int(num_classes)) or not all(map(math.isfinite, values)):
            raise ValueError(f"class_log_offsets must be {num_classes} finite numbers, got {list(offsets)!r}")
        # made on the CPU: a build under the meta device (the size check) must still hold the values
        self.register_buffer("class_log_offsets", torch.tensor(values, dtype=torch.float32, device="cpu"),
                             persistent=False)

    def _shift(self, log_p: torch.Tensor) -> torch.Tensor:
        """Log-probabilities ``(..., K)`` with the prior shift applied and renormalised (unchanged without one)."""
        if self.class_log_offsets is None:
            return log_p
        return torch.log_softmax(log_p + self.class_log_offsets.to(log_p.dtype), dim=-1)

    @property
    def views(self) -> int:
        """How many views of each input a forward pass runs: 2 with a test-time flip, else 1."""
        return 2 if self.flip_dims else 1

    def _member_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """``(members, B, K)`` each member's log-probabilities, averaged over the views (one batch of ``views * B``
        per member: the originals, then their mirror images)."""
        b = x.shape[0]
        if self.flip_dims:
            if any(d >= x.ndim for d in self.flip_dims):
                raise ValueError(f"test-time flip over dimensions {self.flip_dims} of an input of shape "
                                 f"{tuple(x.shape)}")
            x = torch.cat([x, x.flip(self.flip_dims)])
        log_p = torch.stack([torch.log_softmax(m(x), dim=-1) for m in self.members])
        if self.flip_dims:
            log_p = torch.logsumexp(log_p.reshape(len(self.members), 2, b, -1), dim=1) - math.log(2)
        return log_p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as the member takes it (e.g. ``(B, C, Z, Y, X)``) -> ``(B, num_classes)`` log mean probabilities
        over members and views (prior-shifted and renormalised when the ensemble has ``class_log_offsets``)."""
        log_p = self._member_log_probs(x)
        return self._shift(torch.logsumexp(log_p, dim=0) - math.log(len(self.members)))

    def member_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Each member's probabilities ``(members, B, K)`` (averaged over the views), with the ensemble's prior
        shift applied to each."""
        return self._shift(self._member_log_probs(x)).exp()


def ensemble_around(trained: nn.Module, /, **ensemble_kwargs: Any) -> MeanEnsemble:
    """A one-member :class:`MeanEnsemble` around the ``trained`` member, with the ensemble settings
    ``ensemble_kwargs`` (the package's architecture kwargs, e.g. its ``flip_axes``): the member predicting as the
    package's ensemble does (out-of-fold figures of a test-time flip)."""
    one = MeanEnsemble(**{**ensemble_kwargs, "members": 1})
    one.members[0] = trained  # the freshly built member is replaced by the trained one
    return one


def _target(kw: dict) -> str:
    return "members.*." + default_target_layer(kw.get("member", "simple_cnn3d"), **(kw.get("member_kwargs") or {}))


@register_model("ensemble", _target, "as member",
                "seed ensemble: N independently trained copies of one architecture, mean probabilities")
def ensemble(in_channels: int = 1, num_classes: int = 2, member: str = "simple_cnn3d",
             member_kwargs: dict[str, Any] | None = None, members: int = 3,
             class_log_offsets: list[float] | None = None, flip_axes: list[int] | None = None) -> MeanEnsemble:
    return MeanEnsemble(in_channels, num_classes, member, member_kwargs, members, class_log_offsets, flip_axes)
