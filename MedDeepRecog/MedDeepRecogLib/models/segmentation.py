"""Segmentation networks (MONAI UNet / SegResNet) under registry names, and which of their parameters are encoder.

Both are registered in the shared architecture registry (``models.build_model``) so a segmentation package's
``build_model()`` works like any other; they take the registry's uniform ``in_channels`` / ``num_classes`` (which
counts background) and return logits ``(B, num_classes, Z, Y, X)`` for input ``(B, in_channels, Z, Y, X)`` whose
sizes are multiples of ``2 ** len(strides)`` (UNet) or ``2 ** (len(blocks_down) - 1)`` (SegResNet).

:data:`ENCODERS` says which parameters form each one's encoder (what ``--freeze-encoder`` freezes; see
:mod:`.transfer`).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch.nn as nn
from monai.networks import nets

from .registry import register_model

@register_model("monai_unet", "model.2", "volume3d", "MONAI UNet (residual units) for 3D segmentation")
def monai_unet(in_channels: int = 1, num_classes: int = 2, channels: Sequence[int] = (16, 32, 64, 128),
               strides: Sequence[int] = (2, 2, 2), num_res_units: int = 2, norm: str = "instance",
               dropout: float = 0.0, **kwargs: Any) -> nn.Module:
    """MONAI ``UNet`` (3D); instance norm by default, which behaves the same with batch 1 and under DDP."""
    return nets.UNet(spatial_dims=3, in_channels=in_channels, out_channels=num_classes, channels=tuple(channels),
                     strides=tuple(strides), num_res_units=num_res_units, norm=norm, dropout=dropout, **kwargs)


@register_model("monai_segresnet", "conv_final", "volume3d", "MONAI SegResNet for 3D segmentation")
def monai_segresnet(in_channels: int = 1, num_classes: int = 2, init_filters: int = 8,
                    blocks_down: Sequence[int] = (1, 2, 2, 4), blocks_up: Sequence[int] = (1, 1, 1),
                    dropout_prob: float | None = None, **kwargs: Any) -> nn.Module:
    """MONAI ``SegResNet`` (3D) with group norm."""
    return nets.SegResNet(spatial_dims=3, in_channels=in_channels, out_channels=num_classes,
                          init_filters=init_filters, blocks_down=tuple(blocks_down), blocks_up=tuple(blocks_up),
                          dropout_prob=dropout_prob, **kwargs)


def unet_is_encoder(name: str) -> bool:
    """MONAI UNet nests ``Sequential(down, SkipConnection(submodule), up)``: ``…0.`` is down, ``…2.`` is up."""
    parts = name.split(".")[1:]  # drop the leading "model"
    i = 0
    while i + 1 < len(parts) and parts[i] == "1" and parts[i + 1] == "submodule":
        i += 2
    return not (i < len(parts) and parts[i] == "2")  # the bottom block belongs to the encoder


def segresnet_is_encoder(name: str) -> bool:
    """SegResNet's encoder: the first convolution and the down-sampling layers."""
    return name.startswith(("convInit.", "down_layers."))


#: ``{architecture: parameter name -> part of the encoder?}`` for the segmentation networks here.
ENCODERS: dict[str, Callable[[str], bool]] = {"monai_unet": unet_is_encoder, "monai_segresnet": segresnet_is_encoder}
