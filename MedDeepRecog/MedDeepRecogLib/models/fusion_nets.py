"""Early and late fusion classifiers for several co-registered volumes, registered in the model registry.

Input convention (both): ``x (B, M, Z, Y, X)``, one channel per modality in the order of the package's
``input.modalities``; a **missing modality is a channel filled with NaN** (what
:func:`MedDeepRecogLib.fusion.data.load_case` produces for an empty manifest cell), so the usual ``model(x)``
interface (attacks, Grad-CAM) is kept. Aligning the modalities and classifying a case live in
:mod:`MedDeepRecogLib.fusion`.

- ``early_fusion3d``: the modalities are channels of one 3D CNN (``simple_cnn3d`` or any registered 3D
  backbone). Cheapest, learns cross-modal patterns from the first layer, but needs every modality: a missing
  one raises :class:`ModelPackageError`.
- ``late_fusion3d``: one encoder per modality (any registered 3D backbone, its output used as a feature vector),
  features averaged over the modalities present, then a linear classifier. Trained with *modality dropout*
  (each modality of each training sample dropped with probability ``modality_dropout``, at least one kept), so
  a missing modality at inference degrades the prediction gracefully instead of failing.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn

from ..errors import ModelPackageError
from .registry import build_model, default_target_layer, register_model


def present_modalities(x: torch.Tensor) -> torch.Tensor:
    """``(B, M)`` bool: True where channel m of sample b holds data (not all-NaN)."""
    return ~torch.isnan(x).flatten(2).all(dim=2)


class EarlyFusionNet(nn.Module):
    """All modalities as input channels of one backbone. ``(B, M, Z, Y, X) -> (B, num_classes)``."""

    def __init__(self, in_channels: int = 2, num_classes: int = 2, backbone: str = "simple_cnn3d",
                 backbone_kwargs: dict[str, Any] | None = None):
        super().__init__()
        self.in_channels = in_channels
        self.net = build_model(backbone, in_channels=in_channels, num_classes=num_classes, **(backbone_kwargs or {}))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.in_channels:
            raise ModelPackageError(f"this early-fusion model needs {self.in_channels} modalities as channels, "
                                    f"got {x.shape[1]}")
        missing = ~present_modalities(x)
        if missing.any():
            idx = sorted({int(i) for i in torch.nonzero(missing)[:, 1]})
            raise ModelPackageError(f"this early-fusion model needs all {self.in_channels} modalities, but "
                                    f"modality channel(s) {idx} are missing; use a late-fusion model, which "
                                    "tolerates a missing modality")
        return self.net(x)


class LateFusionNet(nn.Module):
    """One encoder per modality, masked mean of their features, linear head; modality dropout in training.

    Args:
        in_channels: number of modalities M.
        num_classes: outputs.
        encoder: registered 3D architecture used as each modality's encoder (its ``num_classes`` output is
            the ``feature_dim`` feature vector).
        encoder_kwargs: extra kwargs for the encoder.
        feature_dim: width of each modality's feature vector.
        modality_dropout: probability of dropping each modality of a training sample (0 disables).
    """

    def __init__(self, in_channels: int = 2, num_classes: int = 2, encoder: str = "simple_cnn3d",
                 encoder_kwargs: dict[str, Any] | None = None, feature_dim: int = 32,
                 modality_dropout: float = 0.25):
        super().__init__()
        if not 0.0 <= modality_dropout < 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1), got {modality_dropout}")
        self.modality_dropout = float(modality_dropout)
        self.encoders = nn.ModuleList(
            build_model(encoder, in_channels=1, num_classes=feature_dim, **(encoder_kwargs or {}))
            for _ in range(in_channels))
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != len(self.encoders):
            raise ModelPackageError(f"this late-fusion model has {len(self.encoders)} modality encoders, "
                                    f"got {x.shape[1]} channels")
        present = present_modalities(x)
        if self.training and self.modality_dropout > 0:
            drop = torch.rand(present.shape, device=x.device) < self.modality_dropout
            keep = present & ~drop
            # never drop every modality of a sample: fall back to what was present
            keep = torch.where(keep.any(dim=1, keepdim=True), keep, present)
            present = keep
        if not bool(present.any(dim=1).all()):
            raise ModelPackageError("a sample has no modality at all (every channel is missing)")
        x = torch.nan_to_num(x, nan=0.0)
        # the encoders' linear outputs are the features (no ReLU: a modality whose features all went negative
        # would otherwise go silent, and averaging needs no sign constraint)
        feats = torch.stack([enc(x[:, m:m + 1]) for m, enc in enumerate(self.encoders)], dim=1)
        w = present.to(feats.dtype).unsqueeze(-1)
        fused = (feats * w).sum(dim=1) / w.sum(dim=1)
        return self.head(fused)


def _early_target(kw: dict) -> str:
    return "net." + default_target_layer(kw.get("backbone", "simple_cnn3d"), **(kw.get("backbone_kwargs") or {}))


def _late_target(kw: dict) -> str:
    # every modality's encoder, explained as one channel stack (explain.gradcam.resolve_layers): the map shows what
    # drove the fused score in any modality; an absent modality gets no gradient and adds nothing
    return "encoders.*." + default_target_layer(kw.get("encoder", "simple_cnn3d"), **(kw.get("encoder_kwargs") or {}))


@register_model("early_fusion3d", _early_target, "volume3d",
                "early fusion: modalities as channels of one 3D CNN, (B, M, Z, Y, X); needs every modality")
def early_fusion3d(in_channels: int = 2, num_classes: int = 2, backbone: str = "simple_cnn3d",
                   backbone_kwargs: dict[str, Any] | None = None) -> EarlyFusionNet:
    return EarlyFusionNet(in_channels, num_classes, backbone, backbone_kwargs)


@register_model("late_fusion3d", _late_target, "volume3d",
                "late fusion: one 3D encoder per modality, mean of present features; tolerates a missing modality")
def late_fusion3d(in_channels: int = 2, num_classes: int = 2, encoder: str = "simple_cnn3d",
                  encoder_kwargs: dict[str, Any] | None = None, feature_dim: int = 32,
                  modality_dropout: float = 0.25) -> LateFusionNet:
    return LateFusionNet(in_channels, num_classes, encoder, encoder_kwargs, feature_dim, modality_dropout)


FUSION_ARCHITECTURES: Sequence[str] = ("early_fusion3d", "late_fusion3d")
