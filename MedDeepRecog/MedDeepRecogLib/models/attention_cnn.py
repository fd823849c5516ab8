"""Attention-gated 3D CNN: a spatial gate over the last feature map weights both the features and the pooling."""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn as nn

from .registry import register_model
from .simple_cnn import conv_pool_features


class AttentionCNN3d(nn.Module):
    """``(B, C, Z, Y, X) -> logits (B, K)`` with a spatial attention map.

    conv–pool blocks give features ``f`` (B, F, z, y, x); the gate (1×1×1 conv → ReLU → 1×1×1 conv → sigmoid) gives
    ``a`` (B, 1, z, y, x) in 0..1; the classifier reads the attention-weighted average ``Σ a·f / Σ a``.
    ``forward_with_attention(x)`` returns ``(logits, a)``; ``self.last_attention`` keeps the last ``a`` (detached).
    The map lives on the feature grid (input size / 2**len(channels)): upsample it to show it on the input.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, channels: Sequence[int] = (16, 32, 64),
                 gate_channels: int = 16, dropout: float = 0.3, conv_dropout: float = 0.0):
        super().__init__()
        channels = tuple(channels)
        # the last block is not pooled, so the attention map keeps more resolution
        self.features = conv_pool_features(3, in_channels, channels, conv_dropout, pool_last=False)
        self.gate = nn.Sequential(OrderedDict([("conv1", nn.Conv3d(channels[-1], gate_channels, 1)),
                                               ("relu", nn.ReLU(inplace=True)),
                                               ("conv2", nn.Conv3d(gate_channels, 1, 1)),
                                               ("sigmoid", nn.Sigmoid())]))
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels[-1], num_classes)
        self.last_attention: torch.Tensor | None = None

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        a = self.gate(f)
        pooled = (a * f).sum(dim=(2, 3, 4)) / a.sum(dim=(2, 3, 4)).clamp_min(1e-6)
        logits = self.classifier(self.dropout(pooled))
        self.last_attention = a.detach()
        return logits, a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_attention(x)[0]


@register_model("attention_cnn3d", lambda kw: f"features.conv{len(kw.get('channels', range(3)))}", "volume3d",
                "attention-gated 3D CNN; spatial attention map on the feature grid")
def attention_cnn3d(in_channels: int = 1, num_classes: int = 2, **kwargs) -> AttentionCNN3d:
    return AttentionCNN3d(in_channels, num_classes, **kwargs)
