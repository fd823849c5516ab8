"""Architecture registry: every network builds by name, returns logits, exposes attention and a Grad-CAM layer."""

from __future__ import annotations

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
