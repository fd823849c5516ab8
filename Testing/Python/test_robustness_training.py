"""Adversarial training through the real training loop (``training.train.run_training`` + our hook), end to end."""

from __future__ import annotations

import json

import pytest
import torch

from frontier_helpers import save_blob_package, write_blob_npz
from MedDeepRecogLib.cli import main
from MedDeepRecogLib.errors import ConfigError
from MedDeepRecogLib.packages import load_package
from MedDeepRecogLib.robustness.training import AdversarialTraining, run_adversarial_training


def _config(tmp_path, npz, adversarial):
    cfg = {"id": "blob-adv", "version": "1.0.0", "description": "adversarially trained blob model", "seed": 0,
           "data": {"path": str(npz), "kind": "volume3d", "class_names": ["normal", "mass"]},
           "model": {"name": "simple_cnn3d", "kwargs": {"channels": [4, 8], "hidden": 16}},
           "optimizer": {"name": "adam", "lr": 0.01},
           "training": {"epochs": 1, "batch_size": 16, "device": "cpu"}}
    if adversarial is not None:
        cfg["adversarial"] = adversarial
    path = tmp_path / "adv.json"
    path.write_text(json.dumps(cfg), encoding="utf-8")
    return path


def test_adversarial_training_writes_package_with_robustness_table(tmp_path, capsys):
    torch.set_num_threads(1)
    npz = write_blob_npz(tmp_path / "blobs.npz", n=32, seed=2)  # val = train here
    baseline = save_blob_package(tmp_path / "base_catalog")
    cfg = _config(tmp_path, npz, {"attack": "fgsm_rs", "eps": 0.05, "bounds": [0, 1],
                                  "evaluate": {"eps": [0.02, 0.1], "attack": "pgd", "steps": 3,
                                               "baseline": str(baseline)}})
    dest = tmp_path / "catalog"
    calls = []
    orig = AdversarialTraining.batch_transform

    def spy(self, model, x, y, info=None):
        calls.append(info)
        return orig(self, model, x, y, info)

    AdversarialTraining.batch_transform = spy
    try:
        # adversarial training is a plain `train` option: the config's `adversarial` block switches it on
        rc = main(["train", str(cfg), "--out", str(tmp_path / "run"), "--package-dest",
                   str(dest), "--progress", "json"])
    finally:
        AdversarialTraining.batch_transform = orig
    assert rc == 0
    result = [json.loads(s) for s in capsys.readouterr().out.splitlines() if s.startswith("{")][-1]["result"]
    assert calls and calls[0]["epoch"] >= 1  # the hook ran inside the real loop, once per training batch
    pkg = load_package(result["package"])
    assert pkg.path.parent.parent == dest and pkg.id == "blob-adv"
    rob = pkg.meta["robustness"]
    assert rob["eps"] == [0.02, 0.1] and rob["n"] == 32 and len(rob["models"]) == 2
    for r in rob["models"].values():
        assert [p["eps"] for p in r["robust"]] == [0.02, 0.1]
        assert 0.0 <= r["clean"]["accuracy"] <= 1.0
    assert pkg.meta["provenance"]["adversarial_training"]["attack"] == "fgsm_rs"
    card = (pkg.path / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "## Robustness (PGD-3" in card and "blob-test@1.0.0 (normal training)" in card
    assert (pkg.path / "training_curve.png").is_file()


def test_adversarial_config_errors(tmp_path):
    npz = write_blob_npz(tmp_path / "b.npz", n=16)
    with pytest.raises(ConfigError, match="no enabled 'adversarial' block"):
        run_adversarial_training(_config(tmp_path, npz, None))
    with pytest.raises(ConfigError, match="eps must be > 0"):
        run_adversarial_training(_config(tmp_path, npz, {"attack": "pgd", "eps": 0}))
    with pytest.raises(ConfigError, match="'pgd' or 'fgsm_rs'"):
        run_adversarial_training(_config(tmp_path, npz, {"attack": "cw", "eps": 0.1}))


def test_train_config_validates_adversarial_block_when_loaded(tmp_path):
    """A bad adversarial block is refused by the config loader (naming the file) before any data is read."""
    from MedDeepRecogLib.training.config import load_config

    npz = write_blob_npz(tmp_path / "b.npz", n=16)
    good = load_config(_config(tmp_path, npz, {"attack": "pgd", "eps": 0.03, "steps": 2}))
    assert good.adversarial == {"attack": "pgd", "eps": 0.03, "steps": 2}
    bad = _config(tmp_path, npz, {"attack": "pgd", "eps": 0.03, "stpes": 2})
    with pytest.raises(ConfigError, match="stpes") as info:
        load_config(bad)
    assert info.value.path == bad
