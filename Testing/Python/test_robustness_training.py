"""Adversarial training through the real training loop (``training.train.run_training`` + our hook), end to end:
the config's ``adversarial`` block is part of the one ``train`` run, so ``--device`` / ``--resume`` / ``--epochs``
apply to it, and the package (with its robustness table) is saved once."""

from __future__ import annotations

import json

import pytest
import torch

from frontier_helpers import save_blob_package, write_blob_npz
from MedDeepRecogLib.cli import main
from MedDeepRecogLib.errors import ConfigError
from MedDeepRecogLib.packages import load_package
from MedDeepRecogLib.robustness.training import AdversarialTraining, run_adversarial_training


def _config(tmp_path, npz, adversarial, **top):
    cfg = {"id": "blob-adv", "version": "1.0.0", "description": "adversarially trained blob model", "seed": 0,
           "data": {"path": str(npz), "kind": "volume3d", "class_names": ["normal", "mass"]},
           "model": {"name": "simple_cnn3d", "kwargs": {"channels": [4, 8], "hidden": 16}},
           "optimizer": {"name": "adam", "lr": 0.01},
           "training": {"epochs": 1, "batch_size": 16, "device": "cpu"}}
    if adversarial is not None:
        cfg["adversarial"] = adversarial
    for key, value in top.items():   # {"training": {...}} is merged, anything else set
        cfg[key] = {**cfg[key], **value} if isinstance(cfg.get(key), dict) else value
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

    def spy(self, model, batch, info=None):
        calls.append(info)
        return orig(self, model, batch, info)

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
    assert rob["selected_by"] == "val auc" and rob["checkpoint_chosen_on_split"]
    assert "clean figures are optimistic (the checkpoint was chosen on this split)" in card
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
    assert good.blocks["adversarial"] == {"attack": "pgd", "eps": 0.03, "steps": 2}
    assert good.to_dict()["adversarial"] == {"attack": "pgd", "eps": 0.03, "steps": 2}  # provenance as written
    bad = _config(tmp_path, npz, {"attack": "pgd", "eps": 0.03, "stpes": 2})
    with pytest.raises(ConfigError, match="stpes") as info:
        load_config(bad)
    assert info.value.path == bad


def test_train_flags_apply_to_adversarial_configs_and_the_package_is_saved_once(tmp_path, monkeypatch, capsys):
    """``meddeeprecog train --device/--resume`` on a config with an ``adversarial`` block: the flags are honoured
    (the block no longer sends the run through a second reading of the file) and each run saves one package."""
    import MedDeepRecogLib.packages as packages

    torch.set_num_threads(1)
    npz = write_blob_npz(tmp_path / "blobs.npz", n=32, seed=2)
    cfg_path = _config(tmp_path, npz, {"attack": "fgsm_rs", "eps": 0.05, "bounds": [0, 1],
                                       "evaluate": {"eps": [0.05], "steps": 2}})
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    del cfg["version"]
    cfg["training"]["device"] = "cuda"  # the config asks for a GPU ...
    cfg_path.write_text(json.dumps(cfg), encoding="utf-8")
    saved = []
    real_save = packages.save_package

    def counting_save(*args, **kwargs):
        saved.append(kwargs.get("dest", args[2] if len(args) > 2 else None))
        return real_save(*args, **kwargs)

    monkeypatch.setattr(packages, "save_package", counting_save)
    run, dest = tmp_path / "run", tmp_path / "catalog"
    common = [str(cfg_path), "--out", str(run), "--package-dest", str(dest), "--progress", "none"]
    if not torch.cuda.is_available():  # ... which this machine lacks: the flag must decide, in either direction
        assert main(["train", *common, "--device", "cuda"]) == 2
        assert "cuda" in capsys.readouterr().err and not dest.exists()
    assert main(["train", *common, "--device", "cpu", "--epochs", "1"]) == 0  # --device cpu wins over the config
    assert saved == [dest]  # saved once, straight into the catalog (no temporary catalog and second save)
    first = load_package(dest / "blob-adv" / "1.0.0")
    assert first.meta["robustness"]["eps"] == [0.05]
    assert json.loads((run / "history.json").read_text(encoding="utf-8"))["resumed_from"] is None

    assert main(["train", *common, "--device", "cpu", "--epochs", "2", "--resume"]) == 0
    history = json.loads((run / "history.json").read_text(encoding="utf-8"))
    assert history["resumed_from"] == 1 and [e["epoch"] for e in history["epochs"]] == [1, 2]
    assert saved == [dest, dest]
    second = load_package(dest / "blob-adv" / "1.0.1")
    assert second.meta["robustness"]["n"] == 32 and "--device cpu" in second.meta["provenance"]["command"]


def test_robustness_train_config_command_still_reproduces(tmp_path, capsys):
    """The adversarial model card's reproduce command (``meddeeprecog robustness --train-config``) runs the same
    single training run."""
    from MedDeepRecogLib.training.train import REPRODUCE_DEST, REPRODUCE_OUT

    torch.set_num_threads(1)
    npz = write_blob_npz(tmp_path / "blobs.npz", n=32, seed=2)
    cfg = _config(tmp_path, npz, {"attack": "pgd", "eps": 0.05, "steps": 1, "bounds": [0, 1],
                                  "evaluate": {"eps": [0.05], "steps": 2}})
    dest = tmp_path / "catalog"
    assert main(["robustness", "--train-config", str(cfg), "--out", str(tmp_path / "run"), "--package-dest",
                 str(dest), "--epochs", "1", "--progress", "none"]) == 0
    pkg = load_package(dest / "blob-adv" / "1.0.0")
    # every option of the run is in its reproduce command, as train records its own (--epochs 1, not the config's)
    command = (f"meddeeprecog robustness --train-config {cfg} --out {tmp_path / 'run'} --package-dest {dest} "
               f"--epochs 1")
    assert pkg.meta["provenance"]["command"] == command
    # the card's command writes into scratch folders: the run folder and the destination hold this run and version
    shown = (f"meddeeprecog robustness --train-config {cfg} --out {REPRODUCE_OUT} --package-dest {REPRODUCE_DEST} "
             f"--epochs 1")
    card = (pkg.path / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert f"## Reproduce\n```\n{shown}\n```" in card and f"the package in {dest}" in card
    assert pkg.meta["robustness"]["adversarial_training"]["attack"] == "pgd"
    assert sorted(p.name for p in (dest / "blob-adv").iterdir()) == ["1.0.0"]


def test_robustness_train_config_knows_every_registered_block(tmp_path):
    """``robustness --train-config`` reads a config with the blocks ``train`` accepts (here an empty
    ``localisation`` list beside ``adversarial``). A fresh process, so no earlier import has registered them."""
    import subprocess
    import sys

    npz = write_blob_npz(tmp_path / "blobs.npz", n=32, seed=2)
    cfg = _config(tmp_path, npz, {"attack": "fgsm_rs", "eps": 0.05, "bounds": [0, 1], "evaluate": {"eps": [0.05]}})
    raw = json.loads(cfg.read_text(encoding="utf-8"))
    raw["localisation"] = []
    cfg.write_text(json.dumps(raw), encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "MedDeepRecogLib", "robustness", "--train-config", str(cfg),
                           "--out", str(tmp_path / "run"), "--package-dest", str(tmp_path / "catalog"),
                           "--epochs", "1", "--progress", "none", "--threads", "1"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-800:]
    assert (tmp_path / "catalog" / "blob-adv" / "1.0.0" / "model.json").is_file()


def test_the_robustness_section_says_what_the_run_did_with_val(tmp_path):
    """An ultrasound run with monitor: last: its card said "No checkpoint selection ... held-out estimate" and, in
    the Robustness section, "The validation split was also used to pick the best epoch, so clean figures are
    optimistic" and "after a `window` step ... (HU for CT)" for a model with no window (audit F2)."""
    torch.set_num_threads(1)
    npz = write_blob_npz(tmp_path / "blobs.npz", n=16, seed=2)
    cfg = _config(tmp_path, npz, {"attack": "fgsm_rs", "eps": 0.05, "bounds": [0, 1],
                                  "evaluate": {"eps": [0.05], "attack": "fgsm"}},
                  modality="US", training={"monitor": "last"})
    result = run_adversarial_training(cfg, out=tmp_path / "run", package_dest=tmp_path / "catalog")
    pkg = load_package(result["package"])
    card = (pkg.path / "MODEL_CARD.md").read_text(encoding="utf-8")
    rob_section = card[card.index("## Robustness"):]
    assert "No checkpoint selection" in card
    assert "pick the best epoch" not in card and "optimistic" not in rob_section
    assert "clean figures are a held-out estimate (the val split chose no checkpoint)" in rob_section
    assert "HU" not in rob_section and "`window`" not in rob_section
    assert "no defined conversion" in rob_section
    assert pkg.meta["robustness"]["checkpoint_chosen_on_split"] is False
    # a volume3d card says which patient axis each training-array axis is (audit F10)
    assert "axis 0 of a training array (after the case axis) is inferior→superior (LPS z)" in card
