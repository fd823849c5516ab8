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


class InteriorScores(nn.Conv2d):
    """The 1x1 class-score convolution, its scores set to 0 (no evidence either way) on the outer ``border`` cells of
    the grid. Image borders carry what a lesion never is (ultrasound text, calipers and probe marks; CT table and
    air; the zero padding of every convolution), so a model can be kept from calling a class there. The mask is
    part of this layer's output, so Grad-CAM at ``classmap``, which reads that output, shows no heat there either.
    Its parameters are those of a plain ``Conv2d`` (same state-dict keys)."""

    def __init__(self, in_channels: int, out_channels: int, border: int):
        super().__init__(in_channels, out_channels, 1)
        if int(border) < 1:
            raise ValueError(f"an interior needs a border of at least 1 cell, got {border!r} (a plain Conv2d keeps "
                             "every cell)")
        self.border = int(border)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = super().forward(x)
        b = self.border
        if min(s.shape[2:]) <= 2 * b:
            raise ValueError(f"border_cells {b} leaves no interior on a {tuple(s.shape[2:])} class-score grid")
        keep = torch.zeros_like(s[:1, :1])
        keep[..., b:-b, b:-b] = 1.0
        return s * keep


class EvidenceCNN2d(nn.Module):
    """``(B, C, H, W) -> logits (B, K)`` from a class-score map ``(B, K, H / 2**(n-1), W / 2**(n-1))``.

    Args:
        in_channels, num_classes: input channels and outputs.
        channels: conv blocks (3-wide conv, batch norm, ReLU); every block but the last is followed by 2x max
            pooling, so ``len(channels)`` blocks give a grid of input / 2**(len - 1).
        sharpness: ``r`` of the log-sum-exp pooling ``(1/r) log mean exp(r s)``: near 0 it is the mean of the map,
            large it is its maximum.
        dropout: 2D dropout on the features before the class-score layer.
        border_cells: grid cells at each edge whose class scores are held at 0 (:class:`InteriorScores`); 0 keeps
            every cell.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, channels: Sequence[int] = (32, 64, 128, 128),
                 sharpness: float = 4.0, dropout: float = 0.2, border_cells: int = 0):
        super().__init__()
        if not 0.0 < float(sharpness) <= 100.0:
            raise ValueError(f"sharpness must be above 0 and at most 100, got {sharpness!r}")
        self.features = conv_pool_features(2, in_channels, tuple(channels), pool_last=False)
        self.dropout = nn.Dropout2d(dropout)
        if not 0 <= int(border_cells) <= 16:
            raise ValueError(f"border_cells must be 0 to 16, got {border_cells!r}")
        self.classmap = (InteriorScores(int(channels[-1]), num_classes, int(border_cells)) if int(border_cells)
                         else nn.Conv2d(int(channels[-1]), num_classes, 1))
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
