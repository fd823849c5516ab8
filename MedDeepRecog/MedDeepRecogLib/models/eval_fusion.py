"""An eval-mode network made cheaper without changing what it computes: batch norm folded into the convolution it
follows, and the ReLUs of MONAI's conv blocks made in-place. For inference only (:func:`fuse_for_inference`).

In eval mode a batch norm is a fixed per-channel affine map, so ``bn(conv(x))`` equals one convolution with scaled
weights and a shifted bias (``torch.nn.utils.fusion.fuse_conv_bn_eval`` computes them). Folding removes a
memory-bound pass over every activation map, and an in-place ReLU a second one. ``bench/disease.py`` prints one
forward pass over 38 slices fused against the network as built, in one run: on 2 threads (2026-12-04) the
class-evidence ensembles of breast-us-lesion 1.60x (1.3.0) and 1.79x (1.2.0) faster, the brain ResNets, whose ReLUs
are in-place already, 1.03x and 1.10x. Every bundled package still classifies as recorded in
``Testing/Data/bundled_scores.json`` (probabilities within 1e-6).

Only pairs whose order is certain are folded: a MONAI ``Convolution`` whose ``adn`` block starts with its norm
(dropouts before it are identities in eval mode), the ``conv<i>``/``bn<i>`` pairs of MONAI's ResNet stem and blocks
(their ``forward`` applies each ``bn<i>`` right after ``conv<i>``), and a convolution followed by a batch norm inside
an ``nn.Sequential`` (a ResNet's downsample path). A folded norm becomes ``nn.Identity``; every module keeps its
name, so Grad-CAM target layers and the out-of-domain check's feature layer are unchanged. Grad-CAM's hook hands the
network a copy of the target activation (:func:`..explain.gradcam.explained_forward`), so an in-place ReLU after
the target layer cannot overwrite it. The network must not train afterwards (its norms are gone):
:func:`..inference.classify.model_for` fuses the cached inference model only.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _foldable(conv: nn.Module, norm: nn.Module, keep: set[int]) -> bool:
    return (id(conv) not in keep and type(conv) in _CONVS and isinstance(norm, _NORMS)
            and norm.running_mean is not None and norm.running_var is not None
            and conv.out_channels == norm.num_features)


def _folded(conv: nn.Module, norm: nn.Module) -> nn.Module:
    """The convolution with ``norm`` folded in, its weights in the memory layout of ``conv``'s (channels-last
    stays channels-last)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = fuse_conv_bn_eval(conv, norm)
    w = conv.weight
    for layout in (torch.channels_last, torch.channels_last_3d):
        if w.dim() == (4 if layout is torch.channels_last else 5) and not w.is_contiguous() \
                and w.is_contiguous(memory_format=layout):
            fused.weight.data = fused.weight.data.contiguous(memory_format=layout)
    return fused


def fuse_for_inference(model: nn.Module, keep: Iterable[nn.Module] = ()) -> dict[str, int]:
    """:func:`fold_batch_norm`, then the ReLUs inside MONAI ``Convolution`` blocks in-place (their input is always
    the block's own intermediate). ``keep``: modules whose own output must stay what it was (a Grad-CAM target
    layer that is a bare convolution: folding would put its norm into its output). Returns
    ``{"folded_norms": n, "in_place_relus": m}``."""
    from monai.networks.blocks import Convolution

    folded = fold_batch_norm(model, keep)
    relus = 0
    for block in model.modules():
        if isinstance(block, Convolution) and hasattr(block, "adn"):
            for m in block.adn.children():
                if type(m) is nn.ReLU and not m.inplace:
                    m.inplace = True
                    relus += 1
    return {"folded_norms": folded, "in_place_relus": relus}


def fold_batch_norm(model: nn.Module, keep: Iterable[nn.Module] = ()) -> int:
    """Fold every batch norm of ``model`` (in eval mode) that directly follows a convolution into it, in place
    (see the module docstring), except into the convolutions in ``keep``. Returns how many were folded.

    Raises:
        ValueError: ``model`` is in training mode (its norms still learn).
    """
    from monai.networks.blocks import Convolution
    from monai.networks.nets.resnet import ResNet, ResNetBlock, ResNetBottleneck

    if model.training:
        raise ValueError("batch norm is folded for inference only: put the model in eval mode first")
    kept = {id(m) for m in keep}
    folded = 0
    for module in list(model.modules()):
        if isinstance(module, Convolution) and hasattr(module, "adn"):
            adn = list(module.adn.named_children())
            lead = next((i for i, (_, m) in enumerate(adn) if not isinstance(m, nn.modules.dropout._DropoutNd)),
                        None)
            if lead is not None and _foldable(module.conv, adn[lead][1], kept):
                module.conv = _folded(module.conv, adn[lead][1])
                setattr(module.adn, adn[lead][0], nn.Identity())
                folded += 1
        elif isinstance(module, (ResNet, ResNetBlock, ResNetBottleneck)):
            for i in (1, 2, 3):
                conv, norm = getattr(module, f"conv{i}", None), getattr(module, f"bn{i}", None)
                if conv is not None and norm is not None and _foldable(conv, norm, kept):
                    setattr(module, f"conv{i}", _folded(conv, norm))
                    setattr(module, f"bn{i}", nn.Identity())
                    folded += 1
        elif type(module) is nn.Sequential:
            for i in range(len(module) - 1):
                if _foldable(module[i], module[i + 1], kept):
                    module[i] = _folded(module[i], module[i + 1])
                    module[i + 1] = nn.Identity()
                    folded += 1
    return folded
