"""Inference fusion (``models/eval_fusion.py``): folded batch norms and in-place ReLUs change the cost, not the
outputs, the heatmaps or the names Grad-CAM and the out-of-domain check hook."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from MedDeepRecogLib.explain.gradcam import explained_forward
from MedDeepRecogLib.models import build_model, default_target_layer
from MedDeepRecogLib.models.eval_fusion import fold_batch_norm, fuse_for_inference

NETWORKS = [
    ("evidence_cnn2d", {"channels": [4, 8, 8]}, (2, 1, 32, 32)),
    ("evidence_cnn2d", {"channels": [4, 8, 8], "border_cells": 2}, (2, 1, 32, 32)),
    ("resnet2d", {"depth": None, "layers": [1, 1, 1, 1], "block_inplanes": [4, 8, 8, 8], "conv1_t_size": 5,
                  "conv1_t_stride": 2, "no_max_pool": True}, (2, 1, 32, 32)),
    ("simple_cnn2d", {"channels": [4, 8], "hidden": 8}, (2, 1, 24, 24)),
    ("simple_cnn3d", {"channels": [4, 8], "hidden": 8}, (2, 1, 12, 12, 12)),
]


def _trained_looking(name: str, kwargs: dict) -> nn.Module:
    """A network whose batch norms hold non-trivial running statistics and affine parameters (as after training),
    in eval mode."""
    torch.manual_seed(0)
    net = build_model(name, in_channels=1, num_classes=3, **kwargs)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


@pytest.mark.parametrize("name,kwargs,shape", NETWORKS, ids=[n[0] for n in NETWORKS])
def test_fused_network_gives_the_same_outputs_and_heatmaps(name, kwargs, shape):
    plain = _trained_looking(name, kwargs)
    fused = copy.deepcopy(plain)
    counts = fuse_for_inference(fused)
    norms = [m for m in plain.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert counts["folded_norms"] == len(norms) > 0
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    assert {n for n, _ in plain.named_modules()} == {n for n, _ in fused.named_modules()}  # hooks keep their names
    torch.manual_seed(1)
    x = torch.rand(*shape)
    with torch.no_grad():
        assert torch.allclose(plain(x), fused(x), atol=1e-5)
    layer = default_target_layer(name, **kwargs)
    for method in ("gradcam", "gradcampp"):
        a = explained_forward(plain, x, layer, method=method)
        b = explained_forward(fused, x, layer, method=method)
        assert torch.equal(a.class_index, b.class_index)
        assert torch.allclose(a.maps, b.maps, atol=1e-4)


def test_a_conv_target_layer_keeps_its_output_and_its_in_place_relu_is_explained():
    """Grad-CAM on the bare convolution of a block: kept out of the folding (its output would take in the norm), and
    the in-place ReLU of the next block, which acts on the kept activation where nothing is folded in between, must
    not overwrite it (the hook passes a copy on)."""
    plain = _trained_looking("simple_cnn2d", {"channels": [4, 8], "hidden": 8})
    layer = [n for n, m in plain.named_modules() if isinstance(m, nn.Conv2d)][-1]
    fused = copy.deepcopy(plain)
    target = dict(fused.named_modules())[layer]
    counts = fuse_for_inference(fused, keep=[target])
    assert counts["in_place_relus"] >= 2 and counts["folded_norms"] == 1  # the other block's norm is folded
    x = torch.rand(2, 1, 24, 24)
    a = explained_forward(plain, x, layer)
    b = explained_forward(fused, x, layer)
    assert torch.allclose(a.maps, b.maps, atol=1e-4) and float(a.maps.max()) > 0
    # without a norm the ReLU acts on the hooked activation itself
    no_norm = _trained_looking("simple_cnn2d", {"channels": [4, 8], "hidden": 8})
    for block in no_norm.modules():
        if hasattr(block, "adn") and hasattr(block.adn, "N"):
            block.adn.N = nn.Identity()
    reference = explained_forward(no_norm, x, layer).maps
    fuse_for_inference(no_norm)
    assert torch.allclose(explained_forward(no_norm, x, layer).maps, reference, atol=1e-5)


def test_a_flip_ensemble_of_evidence_networks_fuses_to_the_same_answer():
    torch.manual_seed(0)
    plain = build_model("ensemble", in_channels=1, num_classes=3, member="evidence_cnn2d",
                        member_kwargs={"channels": [4, 8, 8]}, members=2, flip_axes=[1]).eval()
    fused = copy.deepcopy(plain)
    fuse_for_inference(fused)
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(plain(x), fused(x), atol=1e-5)


def test_folding_refuses_a_network_in_training_mode():
    net = build_model("simple_cnn2d", in_channels=1, num_classes=2, channels=[4, 8], hidden=8).train()
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norm(net)


def test_classify_uses_the_fused_network():
    from MedDeepRecogLib.inference.classify import model_for
    from MedDeepRecogLib.packages import load_package

    model = model_for(load_package("brain-tumour-mri"), "cpu")
    assert not model.training
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
