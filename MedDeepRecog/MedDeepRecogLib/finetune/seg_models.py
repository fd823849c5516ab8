"""Segmentation networks (MONAI UNet / SegResNet) under registry names, and which of their parameters are encoder.

Both are registered in the shared architecture registry (``models.build_model``) so a segmentation package's
``build_model()`` works like any other; they take the registry's uniform ``in_channels`` / ``num_classes`` (which
counts background) and return logits ``(B, num_classes, Z, Y, X)`` for input ``(B, in_channels, Z, Y, X)`` whose
sizes are multiples of ``2 ** len(strides)`` (UNet) or ``2 ** (len(blocks_down) - 1)`` (SegResNet).

Also: :func:`encoder_parameter_names` (what ``--freeze-encoder`` freezes, for segmentation and classification
networks) and :func:`load_matching_weights` (start from a base whose head or input layer has another shape).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
from monai.networks import nets

from ..models.registry import register_model

#: Architectures this module provides (their output is a voxel map, not a class vector).
SEGMENTATION_ARCHITECTURES = ("monai_unet", "monai_segresnet")


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


def _unet_is_encoder(name: str) -> bool:
    """MONAI UNet nests ``Sequential(down, SkipConnection(submodule), up)``: ``…0.`` is down, ``…2.`` is up."""
    parts = name.split(".")[1:]  # drop the leading "model"
    i = 0
    while i + 1 < len(parts) and parts[i] == "1" and parts[i + 1] == "submodule":
        i += 2
    return not (i < len(parts) and parts[i] == "2")  # the bottom block belongs to the encoder


def head_module_name(model: nn.Module) -> str | None:
    """The last parameterised convolution or linear layer (the classifier / final 1x1 conv), or ``None``."""
    head = None
    for module_name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose3d)) and \
                any(True for _ in module.parameters(recurse=False)):
            head = module_name
    return head


def encoder_parameter_names(model: nn.Module, arch_name: str) -> list[str]:
    """Names of the parameters ``--freeze-encoder`` freezes.

    - ``monai_unet``: the down path and the bottom block; ``monai_segresnet``: ``convInit`` and ``down_layers``.
    - any classification network: everything but its last parameterised layer (the head).
    """
    names = [n for n, _ in model.named_parameters()]
    if arch_name == "monai_unet":
        return [n for n in names if _unet_is_encoder(n)]
    if arch_name == "monai_segresnet":
        return [n for n in names if n.startswith(("convInit.", "down_layers."))]
    head = head_module_name(model)
    if head is None:
        return []
    return [n for n in names if not (n == head or n.startswith(head + "."))]


def encoder_module_paths(model: nn.Module, arch_name: str) -> list[str]:
    """The fewest module paths whose parameters are exactly :func:`encoder_parameter_names` (for ``Hooks.frozen``)."""
    encoder = set(encoder_parameter_names(model, arch_name))

    def visit(module: nn.Module, prefix: str) -> list[str]:
        names = {f"{prefix}{n}" for n, _ in module.named_parameters()}
        if not names:
            return []
        if names <= encoder:
            return [prefix.rstrip(".")]
        if not names & encoder:
            return []
        out = []
        for child_name, child in module.named_children():
            out += visit(child, f"{prefix}{child_name}.")
        return out

    paths = visit(model, "")
    return [p for p in paths if p]


def freeze_parameters(model: nn.Module, names: Sequence[str]) -> int:
    """Set ``requires_grad=False`` on ``names``; returns how many scalar weights were frozen."""
    wanted = set(names)
    frozen = 0
    for name, param in model.named_parameters():
        if name in wanted:
            param.requires_grad_(False)
            frozen += param.numel()
    return frozen


def load_matching_weights(model: nn.Module, state: Mapping[str, torch.Tensor],
                          skip_prefixes: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """Copy every tensor of ``state`` whose name and shape match ``model``'s; the rest keep their fresh init.

    Used when the fine-tuned model has another number of classes (new head) or input channels (mask channel)
    than its base; ``skip_prefixes`` (e.g. the head when the class names changed but not their number) are never
    copied. Returns ``(loaded, reinitialised)`` parameter/buffer names.
    """
    own = model.state_dict()
    loaded, fresh = [], []
    update = {}
    skip = tuple(f"{p}." for p in skip_prefixes if p)
    for name, tensor in own.items():
        if name in state and tuple(state[name].shape) == tuple(tensor.shape) and not name.startswith(skip):
            update[name] = state[name]
            loaded.append(name)
        else:
            fresh.append(name)
    own.update(update)
    model.load_state_dict(own)
    return loaded, fresh
