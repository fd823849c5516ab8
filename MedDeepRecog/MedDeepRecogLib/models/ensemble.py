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
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, member: str = "simple_cnn3d",
                 member_kwargs: dict[str, Any] | None = None, members: int = 3,
                 class_log_offsets: list[float] | None = None):
        super().__init__()
        if int(members) < 1:
            raise ValueError(f"an ensemble needs at least one member, got {members}")
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as the member takes it (e.g. ``(B, C, Z, Y, X)``) -> ``(B, num_classes)`` log mean probabilities
        (prior-shifted and renormalised when the ensemble has ``class_log_offsets``)."""
        log_p = torch.stack([torch.log_softmax(m(x), dim=-1) for m in self.members])
        return self._shift(torch.logsumexp(log_p, dim=0) - math.log(len(self.members)))

    def member_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Each member's probabilities ``(members, B, K)``, with the ensemble's prior shift applied to each."""
        return torch.stack([self._shift(torch.log_softmax(m(x), dim=-1)).exp() for m in self.members])


def _target(kw: dict) -> str:
    return "members.*." + default_target_layer(kw.get("member", "simple_cnn3d"), **(kw.get("member_kwargs") or {}))


@register_model("ensemble", _target, "as member",
                "seed ensemble: N independently trained copies of one architecture, mean probabilities")
def ensemble(in_channels: int = 1, num_classes: int = 2, member: str = "simple_cnn3d",
             member_kwargs: dict[str, Any] | None = None, members: int = 3,
             class_log_offsets: list[float] | None = None) -> MeanEnsemble:
    return MeanEnsemble(in_channels, num_classes, member, member_kwargs, members, class_log_offsets)
