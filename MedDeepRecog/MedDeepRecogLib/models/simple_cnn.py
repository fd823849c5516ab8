"""The seed's simple CNN (conv–pool–conv–pool–dense), in 2D or 3D, built from MONAI ``Convolution`` blocks."""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution

from .registry import register_model


def conv_pool_features(spatial_dims: int, in_channels: int, channels: Sequence[int], dropout: float = 0.0,
                       norm: str | None = "batch", pool_last: bool = True) -> nn.Sequential:
    """``conv1, pool1, conv2, pool2, ...``: 3-wide conv + norm + ReLU (+ dropout), then 2× max pooling.

    Blocks are named ``conv{i}`` (1-based) so the last one, ``conv{len(channels)}``, is the Grad-CAM layer.
    """
    pool = nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d
    layers: list[tuple[str, nn.Module]] = []
    prev = in_channels
    for i, ch in enumerate(channels, start=1):
        layers.append((f"conv{i}", Convolution(spatial_dims, prev, ch, kernel_size=3, act="relu", norm=norm,
                                              dropout=dropout or None)))
        if pool_last or i < len(channels):
            layers.append((f"pool{i}", pool(2)))
        prev = ch
    return nn.Sequential(OrderedDict(layers))


class SimpleCNN(nn.Module):
    """conv–pool blocks, adaptive average pooling to ``pooled_size``, a hidden dense layer, logits.

    Args:
        spatial_dims: 2 for ``(B, C, H, W)`` input, 3 for ``(B, C, Z, Y, X)``.
        in_channels, num_classes: input channels and outputs.
        channels: output channels of each conv–pool block (the seed has two).
        hidden: width of the dense layer (0: none).
        dropout: dropout before the dense layers; ``conv_dropout`` inside the conv blocks.
        pooled_size: spatial size after adaptive pooling (the input size is then free).
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, num_classes: int = 2,
                 channels: Sequence[int] = (16, 32), hidden: int = 64, dropout: float = 0.25,
                 conv_dropout: float = 0.0, pooled_size: int = 4, norm: str | None = "batch"):
        super().__init__()
        self.features = conv_pool_features(spatial_dims, in_channels, channels, conv_dropout, norm)
        pool = nn.AdaptiveAvgPool2d if spatial_dims == 2 else nn.AdaptiveAvgPool3d
        flat = channels[-1] * pooled_size ** spatial_dims
        head: list[tuple[str, nn.Module]] = [("pool", pool(pooled_size)), ("flatten", nn.Flatten()),
                                             ("dropout", nn.Dropout(dropout))]
        if hidden:
            head += [("fc", nn.Linear(flat, hidden)), ("relu", nn.ReLU(inplace=True)),
                     ("dropout2", nn.Dropout(dropout)), ("out", nn.Linear(hidden, num_classes))]
        else:
            head += [("out", nn.Linear(flat, num_classes))]
        self.classifier = nn.Sequential(OrderedDict(head))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _last_conv(kwargs: dict, default_blocks: int) -> str:
    return f"features.conv{len(kwargs.get('channels', range(default_blocks)))}"


@register_model("simple_cnn2d", lambda kw: _last_conv(kw, 2), "slices2d",
                "seed CNN: conv-pool-conv-pool-dense on (B, C, H, W)")
def simple_cnn2d(in_channels: int = 1, num_classes: int = 2, channels: Sequence[int] = (16, 32), **kwargs) -> SimpleCNN:
    return SimpleCNN(2, in_channels, num_classes, tuple(channels), **kwargs)


@register_model("simple_cnn3d", lambda kw: _last_conv(kw, 3), "volume3d",
                "plain 3D CNN: 3 conv-pool blocks, global pooling, dense, on (B, C, Z, Y, X)")
def simple_cnn3d(in_channels: int = 1, num_classes: int = 2, channels: Sequence[int] = (16, 32, 64),
                 pooled_size: int = 1, hidden: int = 64, **kwargs) -> SimpleCNN:
    return SimpleCNN(3, in_channels, num_classes, tuple(channels), hidden=hidden, pooled_size=pooled_size, **kwargs)
