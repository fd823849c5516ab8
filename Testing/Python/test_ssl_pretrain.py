"""Self-supervised pretraining (bench/ssl_pretrain.py): the contrastive loss, the shifted views, and weights that a
training run starts from through ``model/init``."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import ssl_pretrain  # noqa: E402


def test_nt_xent_rewards_views_that_match_their_partner():
    torch.manual_seed(0)
    z = torch.randn(16, 8)
    matched = ssl_pretrain.nt_xent(z, z + 0.01 * torch.randn(16, 8), 0.2)
    unmatched = ssl_pretrain.nt_xent(z, torch.randn(16, 8), 0.2)
    assert float(matched) < 0.5 < float(unmatched)
    # the loss is the cross-entropy of each view against its partner among the other 2B - 1 views
    a, b = torch.nn.functional.normalize(z[:2], dim=1), torch.nn.functional.normalize(-z[:2], dim=1)
    sim = torch.cat([a, b]) @ torch.cat([a, b]).T / 0.5
    sim.fill_diagonal_(float("-inf"))
    expected = torch.nn.functional.cross_entropy(sim, torch.tensor([2, 3, 0, 1]))
    assert float(ssl_pretrain.nt_xent(z[:2], -z[:2], 0.5)) == pytest.approx(float(expected), abs=1e-6)


def test_shifted_moves_whole_pixels_and_lets_zeros_in():
    x = torch.arange(1, 1 + 2 * 20 * 20, dtype=torch.float32).view(2, 1, 20, 20)
    out = ssl_pretrain.shifted(x, np.random.RandomState(3), fraction=0.1)
    for i in range(2):
        matches = []
        for dy in range(-2, 3):  # 10 % of 20 pixels
            for dx in range(-2, 3):
                moved = torch.zeros(20, 20)
                moved[max(0, -dy):20 - max(0, dy), max(0, -dx):20 - max(0, dx)] = \
                    x[i, 0, max(0, dy):20 - max(0, -dy), max(0, dx):20 - max(0, -dx)]
                matches.append(torch.equal(out[i, 0], moved))
        assert sum(matches) == 1


def test_pretrained_weights_start_a_training_run(tmp_path):
    """A tiny pool, one epoch: the file holds every tensor but the embedding layer, and ``model/init`` takes it."""
    rng = np.random.default_rng(0)
    images = (rng.random((48, 16, 16)) * 255).astype(np.uint8)
    np.savez(tmp_path / "pool.npz", images=images, labels=(np.arange(48) % 2)[:, None])
    cfg = {"id": "tiny", "seed": 0,
           "data": {"path": str(tmp_path / "pool.npz"), "kind": "slices2d", "class_names": ["a", "b"],
                    "size": [16, 16]},
           "model": {"name": "simple_cnn2d", "kwargs": {"channels": [4, 8], "hidden": 8}},
           "training": {"epochs": 1, "batch_size": 16}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    out = tmp_path / "pretrained.safetensors"
    assert ssl_pretrain.main([str(path), "--pool", str(path), "--out", str(out), "--epochs", "2", "--batch", "16",
                              "--threads", "1"]) == 0
    from safetensors.torch import load_file

    weights = load_file(str(out))
    from MedDeepRecogLib.models import build_model
    from MedDeepRecogLib.models.transfer import head_module_name

    net = build_model("simple_cnn2d", in_channels=1, num_classes=2, channels=[4, 8], hidden=8)
    head = head_module_name(net)
    assert set(weights) == {k for k in net.state_dict() if not k.startswith(f"{head}.")}
    from MedDeepRecogLib.training.init_weights import read_init_state

    _, record = read_init_state(out, net)
    assert record["tensors_set"] == len(net.state_dict()) - 2  # all but the new head's weight and bias


def test_an_interrupted_pretraining_resumes_from_a_weights_only_checkpoint(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "pool.npz", images=(rng.random((32, 16, 16)) * 255).astype(np.uint8),
             labels=(np.arange(32) % 2)[:, None])
    cfg = {"id": "tiny", "seed": 0, "data": {"path": str(tmp_path / "pool.npz"), "kind": "slices2d",
                                             "class_names": ["a", "b"], "size": [16, 16]},
           "model": {"name": "simple_cnn2d", "kwargs": {"channels": [4, 8], "hidden": 8}}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    args = [str(path), "--pool", str(path), "--batch", "16", "--threads", "1"]
    straight, halves = tmp_path / "straight.pt", tmp_path / "halves.pt"
    assert ssl_pretrain.main([*args, "--out", str(straight), "--epochs", "2"]) == 0
    loss, calls = ssl_pretrain.nt_xent, {"n": 0}

    def interrupted_in_epoch_2(*a):  # 24 train images, batches of 16: one step an epoch
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return loss(*a)

    monkeypatch.setattr(ssl_pretrain, "nt_xent", interrupted_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        ssl_pretrain.main([*args, "--out", str(halves), "--epochs", "2"])
    assert not halves.exists() and halves.with_name("halves.pt.ckpt").is_file()
    monkeypatch.setattr(ssl_pretrain, "nt_xent", loss)
    assert ssl_pretrain.main([*args, "--out", str(halves), "--epochs", "2"]) == 0  # continues after epoch 1
    a, b = torch.load(straight, weights_only=True), torch.load(halves, weights_only=True)
    assert a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
