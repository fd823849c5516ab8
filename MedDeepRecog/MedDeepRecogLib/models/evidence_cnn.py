"""Class-evidence-map CNN: local class scores on a feature grid, pooled by log-sum-exp.

Why it exists: a classifier with a large receptive field and global average pooling can name a brain tumour's type
from the whole head (plane, skull shape, which hospital's series) without looking at the tumour; then no explanation
method can point at the tumour, because the model's evidence is not there (filling the tumour barely moves such a
model's probability: ``lesion_reliance`` in :mod:`MedDeepRecogLib.explain.faithfulness`). This network limits each
score to a local window (its receptive field, about a quarter of the input side) and pools the class scores, centred
over the classes at each position, with a smooth maximum, so a class is called because some region looks like it:
the map of that region's score is the heatmap (CAM, Zhou et al. 2016; log-sum-exp pooling, Pinheiro and Collobert
2015). Hand-written because MONAI has no 2D network with a class-score map and pooled class scores (its
``MILModel`` embeds tiles with a torchvision ResNet-50, far too heavy for a CPU).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn

from .registry import register_model
from .simple_cnn import conv_pool_features


class EvidenceCNN2d(nn.Module):
    """``(B, C, H, W) -> logits (B, K)`` from a class-score map ``(B, K, H / 2**(n-1), W / 2**(n-1))``.

    Args:
        in_channels, num_classes: input channels and outputs.
        channels: conv blocks (3-wide conv, batch norm, ReLU); every block but the last is followed by 2x max
            pooling, so ``len(channels)`` blocks give a grid of input / 2**(len - 1).
        sharpness: ``r`` of the log-sum-exp pooling ``(1/r) log mean exp(r s)``: near 0 it is the mean of the map,
            large it is its maximum.
        dropout: 2D dropout on the features before the class-score layer.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, channels: Sequence[int] = (32, 64, 128, 128),
                 sharpness: float = 4.0, dropout: float = 0.2):
        super().__init__()
        if not 0.0 < float(sharpness) <= 100.0:
            raise ValueError(f"sharpness must be above 0 and at most 100, got {sharpness!r}")
        self.features = conv_pool_features(2, in_channels, tuple(channels), pool_last=False)
        self.dropout = nn.Dropout2d(dropout)
        self.classmap = nn.Conv2d(int(channels[-1]), num_classes, 1)
        self.sharpness = float(sharpness)
        # Its input, the features averaged over the grid (B, F), is what the out-of-domain check scores
        # (uncertainty.domain.feature_layers); the network itself has no dense layer.
        self.feature_layer = nn.Flatten()

    def class_maps(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, K, h, w)`` local class scores, centred over the classes at each position: a positive score means
        the region favours that class over the average class. Grad-CAM of class ``c`` at the ``classmap`` layer is
        exactly ``relu`` of this centred map (its weights are ``1 - 1/K`` for ``c`` and ``-1/K`` for the others,
        each over the grid size)."""
        f = self.features(x)
        self.feature_layer(f.mean(dim=(2, 3)))
        s = self.classmap(self.dropout(f))
        return s - s.mean(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.class_maps(x).flatten(2)
        r = self.sharpness
        return (torch.logsumexp(r * s, dim=2) - math.log(s.shape[2])) / r


@register_model("evidence_cnn2d", "classmap", "slices2d",
                "class-evidence-map CNN: local class scores pooled by log-sum-exp (the heatmap is the score map)")
def evidence_cnn2d(in_channels: int = 1, num_classes: int = 2, **kwargs) -> EvidenceCNN2d:
    return EvidenceCNN2d(in_channels, num_classes, **kwargs)
