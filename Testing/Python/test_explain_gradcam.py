"""Grad-CAM / Grad-CAM++ in the prediction's own pass: same maps as MONAI's, no parameter gradients, one forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from MedDeepRecogLib.explain.gradcam import explained_forward, last_conv_layer, plain_forward, resolve_layers
from MedDeepRecogLib.models import build_model


@pytest.fixture
def cnn2d():
    torch.manual_seed(0)
    return build_model("simple_cnn2d", in_channels=1, num_classes=3, channels=[4, 8], hidden=8).eval()


def _corr(a, b):
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    return float(np.corrcoef(a, b)[0, 1])


@pytest.mark.parametrize("method, monai_cls", [("gradcam", "GradCAM"), ("gradcampp", "GradCAMpp")])
def test_maps_match_monai(cnn2d, method, monai_cls):
    import monai.visualize

    torch.manual_seed(1)
    x = torch.rand(3, 1, 32, 32)
    out = explained_forward(cnn2d, x, "features.conv2", method=method)
    ref = getattr(monai.visualize, monai_cls)(nn_module=cnn2d, target_layers="features.conv2")
    ours = F.interpolate(out.maps[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    for i in range(3):  # one at a time: MONAI's GradCAMpp does not broadcast over a batch
        # MONAI upsamples to the input size and its default normaliser maps (min, max) to (1, 0): flip it back.
        ref_map = 1.0 - ref(x[i:i + 1], class_idx=None)[0, 0].detach()
        # Grad-CAM is the same formula; Grad-CAM++ here uses the paper's sum(A) g^3 denominator, MONAI sum(A g^3).
        assert _corr(ours[i], ref_map) > (0.99 if method == "gradcam" else 0.9)
    assert out.maps.shape == (3, 16, 16)  # conv2 runs after one 2x pooling
    assert float(out.maps.min()) >= 0.0 and float(out.maps.max()) <= 1.0


def test_same_pass_prediction_and_no_parameter_grads(cnn2d):
    x = torch.rand(2, 1, 32, 32)
    calls = []
    handle = cnn2d.register_forward_hook(lambda *a: calls.append(1))
    out = explained_forward(cnn2d, x, "features.conv2")
    handle.remove()
    assert len(calls) == 1  # a single forward pass gives both the logits and the map
    assert torch.allclose(out.logits, plain_forward(cnn2d, x), atol=1e-5)
    assert all(p.grad is None for p in cnn2d.parameters())
    assert all(p.requires_grad for p in cnn2d.parameters())  # restored afterwards
    assert torch.equal(out.class_index, out.logits.argmax(1))


def test_class_choice_weights_and_joint_scaling(cnn2d):
    x = torch.rand(4, 1, 32, 32)
    weight = torch.tensor([1.0, 1.0, 0.0, 1.0])
    out = explained_forward(cnn2d, x, "features.conv2", class_index=lambda logits: torch.full((4,), 2),
                            score_weight=weight, joint=True)
    assert out.class_index.tolist() == [2, 2, 2, 2]
    assert float(out.maps[2].max()) == 0.0  # a slice with weight 0 contributes no gradient
    assert float(out.maps.max()) == pytest.approx(1.0)  # one scale over the whole stack


def test_cnn_lstm_map_is_one_volume():
    torch.manual_seed(0)
    model = build_model("cnn_lstm", in_channels=1, num_classes=2, channels=[4, 8], hidden=8).eval()
    x = torch.rand(1, 1, 6, 32, 32)
    out = explained_forward(model, x, "encoder.features.conv2")
    assert out.maps.shape == (1, 6, 16, 16)
    assert model.last_attention.shape == (1, 6)
    assert float(model.last_attention.sum()) == pytest.approx(1.0, abs=1e-5)


def test_layer_lookup_errors_name_alternatives(cnn2d):
    assert last_conv_layer(cnn2d).startswith("features.conv2")
    with pytest.raises(KeyError, match="features.conv2"):
        resolve_layers(cnn2d, "features.conv9")
