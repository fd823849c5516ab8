"""Architecture registry: every network builds by name, returns logits, exposes attention and a Grad-CAM layer."""

from __future__ import annotations

import math

import pytest
import torch

from MedDeepRecogLib.errors import ConfigError
from MedDeepRecogLib.models import available_models, build_model, default_target_layer, input_kind

# small configurations so the whole file runs in seconds on a CPU
TINY = {
    "simple_cnn2d": {"channels": [4, 8], "hidden": 8},
    "simple_cnn3d": {"channels": [4, 8, 8], "hidden": 8},
    "densenet2d": {"init_features": 4, "growth_rate": 4, "block_config": [1, 1]},
    "densenet3d": {"init_features": 4, "growth_rate": 4, "block_config": [1, 1]},
    "resnet2d": {"depth": 10},
    "resnet3d": {"depth": 10, "conv1_t_stride": 2},
    "efficientnet2d": {},
    "seresnet3d": {"layers": [1, 1, 1, 1], "inplanes": 8},
    "cnn_lstm": {"channels": [4, 8], "hidden": 8, "attention_dim": 4},
    "attention_cnn3d": {"channels": [4, 8], "gate_channels": 4},
    "evidence_cnn2d": {"channels": [4, 8, 8]},
}


def _input(name: str, channels: int = 1) -> torch.Tensor:
    return torch.rand(2, channels, 32, 32) if input_kind(name) == "slices2d" else torch.rand(2, channels, 16, 16, 16)


def test_registry_lists_all_required_architectures():
    assert set(TINY) <= set(available_models())


@pytest.mark.parametrize("name", sorted(TINY))
def test_build_forward_and_target_layer(name):
    torch.manual_seed(0)
    model = build_model(name, in_channels=2, num_classes=3, **TINY[name]).eval()
    with torch.no_grad():
        logits = model(_input(name, 2))
    assert logits.shape == (2, 3)
    assert torch.isfinite(logits).all()
    layer = default_target_layer(name, **TINY[name])
    assert isinstance(model.get_submodule(layer), torch.nn.Module)


def test_cnn_lstm_attention_is_a_distribution_over_slices():
    model = build_model("cnn_lstm", in_channels=1, num_classes=2, **TINY["cnn_lstm"]).eval()
    x = torch.rand(3, 1, 7, 16, 16)
    logits, att = model.forward_with_attention(x)
    assert logits.shape == (3, 2) and att.shape == (3, 7)
    assert torch.allclose(att.sum(1), torch.ones(3), atol=1e-5) and (att >= 0).all()
    model(x)
    assert torch.equal(model.last_attention, att.detach())


def test_cnn_lstm_treats_z_as_sequence_order():
    """Reversing the slice order changes the bidirectional LSTM's inputs, so the per-slice weights follow the slices."""
    torch.manual_seed(1)
    model = build_model("cnn_lstm", in_channels=1, num_classes=2, **TINY["cnn_lstm"]).eval()
    x = torch.zeros(1, 1, 6, 16, 16)
    x[:, :, 1, 4:12, 4:12] = 1.0
    _, att = model.forward_with_attention(x)
    _, att_rev = model.forward_with_attention(torch.flip(x, dims=[2]))
    assert att.shape == att_rev.shape == (1, 6)
    assert not torch.allclose(att, att_rev)


def test_attention_cnn3d_returns_spatial_map_in_unit_range():
    model = build_model("attention_cnn3d", in_channels=1, num_classes=2, **TINY["attention_cnn3d"]).eval()
    logits, att = model.forward_with_attention(torch.rand(2, 1, 16, 16, 16))
    assert logits.shape == (2, 2)
    assert att.shape == (2, 1, 8, 8, 8)  # one pooling between two blocks
    assert float(att.detach().min()) >= 0.0 and float(att.detach().max()) <= 1.0


def test_evidence_cnn_logits_pool_the_centred_class_maps_between_mean_and_max():
    torch.manual_seed(0)
    model = build_model("evidence_cnn2d", num_classes=3, channels=[4, 8, 8], sharpness=3.0).eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        maps = model.class_maps(x)
        logits = model(x)
    assert maps.shape == (2, 3, 8, 8)
    torch.testing.assert_close(maps.sum(dim=1), torch.zeros(2, 8, 8), atol=1e-5, rtol=0)
    flat = maps.flatten(2)
    assert torch.all(logits >= flat.mean(dim=2) - 1e-6) and torch.all(logits <= flat.amax(dim=2) + 1e-6)
    expected = (torch.logsumexp(3.0 * flat, dim=2) - torch.log(torch.tensor(64.0))) / 3.0
    torch.testing.assert_close(logits, expected)


def test_evidence_cnn_refuses_a_pooling_sharpness_that_is_not_positive():
    with pytest.raises(ConfigError, match="sharpness must be above 0"):
        build_model("evidence_cnn2d", num_classes=3, sharpness=0)


def test_evidence_cnn_gradcam_is_the_class_evidence_map():
    from MedDeepRecogLib.explain.gradcam import explained_forward, scale_maps

    torch.manual_seed(1)
    model = build_model("evidence_cnn2d", num_classes=3, channels=[4, 8, 8]).eval()
    x = torch.rand(3, 1, 32, 32)
    explained = explained_forward(model, x, default_target_layer("evidence_cnn2d"))
    with torch.no_grad():
        maps = model.class_maps(x)
    own = maps[torch.arange(3), explained.class_index]
    torch.testing.assert_close(explained.maps, scale_maps(torch.relu(own)), atol=1e-5, rtol=0)


def test_evidence_cnn_border_cells_hold_no_evidence_for_the_logits_or_the_heatmap():
    """``border_cells``: the outer cells' class scores are 0 in the map, in what the logits pool and in Grad-CAM at
    ``classmap``; the parameters keep a plain network's names; a border that leaves no interior is refused."""
    from MedDeepRecogLib.explain.gradcam import explained_forward

    torch.manual_seed(3)
    plain = build_model("evidence_cnn2d", num_classes=3, channels=[4, 8, 8, 8]).eval()
    inner = build_model("evidence_cnn2d", num_classes=3, channels=[4, 8, 8, 8], border_cells=2).eval()
    assert list(inner.state_dict()) == list(plain.state_dict())
    inner.load_state_dict(plain.state_dict())
    x = torch.rand(2, 1, 128, 128)
    with torch.no_grad():
        full, kept = plain.class_maps(x), inner.class_maps(x)
    ring = torch.ones(16, 16, dtype=torch.bool)
    ring[2:-2, 2:-2] = False
    assert kept[..., ring].abs().max() == 0
    torch.testing.assert_close(kept[..., 2:-2, 2:-2], full[..., 2:-2, 2:-2])
    with torch.no_grad():  # the logits pool the map with its border at 0
        masked = full.clone()
        masked[..., ring] = 0.0
        expected = (torch.logsumexp(inner.sharpness * masked.flatten(2), 2) - math.log(256)) / inner.sharpness
        torch.testing.assert_close(inner(x), expected)
    explained = explained_forward(inner, x, default_target_layer("evidence_cnn2d"))
    assert explained.maps[:, ring].abs().max() == 0 and explained.maps.amax() > 0
    for bad in (-1, 17):
        with pytest.raises((ValueError, ConfigError), match="border_cells"):
            build_model("evidence_cnn2d", num_classes=3, border_cells=bad)
    with pytest.raises(ValueError, match="no interior"):
        build_model("evidence_cnn2d", num_classes=3, channels=[4, 8, 8], border_cells=4)(torch.rand(1, 1, 32, 32))


def test_evidence_cnn_scores_are_local():
    """A class score sees only its receptive field (4 blocks: 38 px): pixels further away do not move it."""
    torch.manual_seed(2)
    model = build_model("evidence_cnn2d", num_classes=3, channels=[4, 8, 8, 8]).eval()
    x = torch.rand(1, 1, 128, 128)
    far = x.clone()
    far[..., :, :40] = torch.rand(1, 1, 128, 40)  # change the left 40 columns only
    with torch.no_grad():
        before, after = model.class_maps(x), model.class_maps(far)
    # cell j (8 px, centre 8j + 3.5) reaches columns >= 8j + 3.5 - 19; cells 8.. start at column 48
    torch.testing.assert_close(after[..., 8:], before[..., 8:], atol=1e-5, rtol=0)
    assert not torch.allclose(after[..., :4], before[..., :4])


def test_simple_cnn_target_layer_follows_block_count():
    assert default_target_layer("simple_cnn2d") == "features.conv2"
    assert default_target_layer("simple_cnn3d", channels=[4, 8, 16, 32]) == "features.conv4"


def test_unknown_architecture_and_bad_kwargs_are_config_errors():
    with pytest.raises(ConfigError, match="unknown architecture 'nope'"):
        build_model("nope")
    with pytest.raises(ConfigError, match="simple_cnn2d"):
        build_model("simple_cnn2d", in_channels=1, num_classes=2, no_such_option=3)


def test_wrong_channel_count_fails_in_forward():
    model = build_model("simple_cnn2d", in_channels=1, num_classes=2, **TINY["simple_cnn2d"])
    with pytest.raises(RuntimeError):
        model(torch.rand(1, 3, 32, 32))
