"""Self-supervised pretraining (``meddeeprecog pretrain``, training/pretrain.py): the contrastive loss, the views, a
run on the one loop whose weights a training run starts from through ``model/init``, resuming, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from MedDeepRecogLib.cli import main
from MedDeepRecogLib.training import pretrain as pretraining


def test_nt_xent_rewards_views_that_match_their_partner():
    torch.manual_seed(0)
    z = torch.randn(16, 8)
    matched = pretraining.nt_xent(z, z + 0.01 * torch.randn(16, 8), 0.2)
    unmatched = pretraining.nt_xent(z, torch.randn(16, 8), 0.2)
    assert float(matched) < 0.5 < float(unmatched)
    # the loss is the cross-entropy of each view against its partner among the other 2B - 1 views
    a, b = torch.nn.functional.normalize(z[:2], dim=1), torch.nn.functional.normalize(-z[:2], dim=1)
    sim = torch.cat([a, b]) @ torch.cat([a, b]).T / 0.5
    sim.fill_diagonal_(float("-inf"))
    expected = torch.nn.functional.cross_entropy(sim, torch.tensor([2, 3, 0, 1]))
    assert float(pretraining.nt_xent(z[:2], -z[:2], 0.5)) == pytest.approx(float(expected), abs=1e-6)


def test_shifted_moves_whole_pixels_and_lets_zeros_in():
    x = torch.arange(1, 1 + 2 * 20 * 20, dtype=torch.float32).view(2, 1, 20, 20)
    out = pretraining.shifted(x, np.random.RandomState(3), fraction=0.1)
    for i in range(2):
        matches = []
        for dy in range(-2, 3):  # 10 % of 20 pixels
            for dx in range(-2, 3):
                moved = torch.zeros(20, 20)
                moved[max(0, -dy):20 - max(0, dy), max(0, -dx):20 - max(0, dx)] = \
                    x[i, 0, max(0, dy):20 - max(0, -dy), max(0, dx):20 - max(0, -dx)]
                matches.append(torch.equal(out[i, 0], moved))
        assert sum(matches) == 1


def test_views_differ_and_their_state_replays_the_same_draws():
    x = torch.rand(6, 1, 24, 24)
    views = pretraining.ContrastiveViews(pretraining.PretrainSettings(seed=3))
    state = views.get_state()
    a, b = views([x])
    assert a.shape == b.shape == x.shape and not torch.equal(a, b) and torch.equal(x, x.clone())
    views.set_state(state)
    a2, b2 = views([x])
    assert torch.equal(a, a2) and torch.equal(b, b2)


def _tiny_config(tmp_path: Path, n: int = 48, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(tmp_path / "pool.npz", images=(rng.random((n, 16, 16)) * 255).astype(np.uint8),
             labels=(np.arange(n) % 2)[:, None])
    cfg = {"id": "tiny", "seed": 0,
           "data": {"path": str(tmp_path / "pool.npz"), "kind": "slices2d", "class_names": ["a", "b"],
                    "size": [16, 16]},
           "model": {"name": "simple_cnn2d", "kwargs": {"channels": [4, 8], "hidden": 8}},
           "training": {"epochs": 1, "batch_size": 16}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def _pretrain(config: Path, out: Path, *extra: str) -> int:
    return main(["pretrain", str(config), "--pool", str(config), "--out", str(out), "--epochs", "2", "--batch", "16",
                 "--threads", "1", "--progress", "none", *extra])


def test_pretrained_weights_start_a_training_run(tmp_path, capsys):
    """A tiny pool, two epochs on the loop: the file holds every tensor but the widened last layer, the weights
    moved, and ``model/init`` takes them."""
    config = _tiny_config(tmp_path)
    out = tmp_path / "pretrained.safetensors"
    assert _pretrain(config, out) == 0
    result = __import__("json").loads(capsys.readouterr().out)
    assert [e["epoch"] for e in result["epochs"]] == [1, 2] and result["pool_images"] == 38  # 80 % train split
    from safetensors.torch import load_file

    from MedDeepRecogLib.models import build_model
    from MedDeepRecogLib.models.transfer import head_module_name
    from MedDeepRecogLib.training.init_weights import read_init_state

    weights = load_file(str(out))
    net = build_model("simple_cnn2d", in_channels=1, num_classes=2, channels=[4, 8], hidden=8)
    head = head_module_name(net)
    assert set(weights) == {k for k in net.state_dict() if not k.startswith(f"{head}.")}
    torch.manual_seed(0)
    fresh = build_model("simple_cnn2d", in_channels=1, num_classes=128, channels=[4, 8], hidden=8).state_dict()
    assert any(not torch.equal(weights[k], fresh[k]) for k in weights if k.endswith("weight"))
    _, record = read_init_state(out, net)
    assert record["tensors_set"] == len(net.state_dict()) - 2  # all but the new head's weight and bias
    assert "warnings" not in record   # the head alone starting fresh is what a pretrained file is for


def test_an_interrupted_pretraining_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch, capsys):
    config = _tiny_config(tmp_path, n=40, seed=1)  # 32 train images, batches of 16: two steps an epoch
    straight, halves = tmp_path / "straight.safetensors", tmp_path / "halves.safetensors"
    assert _pretrain(config, straight) == 0
    step, calls = pretraining.ContrastiveStep.__call__, {"n": 0}

    def interrupted_in_epoch_2(self, net, views):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return step(self, net, views)

    monkeypatch.setattr(pretraining.ContrastiveStep, "__call__", interrupted_in_epoch_2)
    assert _pretrain(config, halves) == 130
    run_dir = tmp_path / "halves.safetensors.run"
    assert not halves.exists() and (run_dir / "last.pt").is_file()
    monkeypatch.setattr(pretraining.ContrastiveStep, "__call__", step)
    capsys.readouterr()
    assert _pretrain(config, halves) == 2  # an unfinished run is not started over by accident
    assert "--resume" in capsys.readouterr().err
    assert _pretrain(config, halves, "--resume") == 0
    from safetensors.torch import load_file

    a, b = load_file(str(straight)), load_file(str(halves))
    assert a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


@pytest.mark.parametrize("case", ["exists", "suffix", "batch", "temperature", "volume_config"])
def test_bad_pretraining_input_is_one_line_and_exit_2(tmp_path, capsys, case):
    config = _tiny_config(tmp_path)
    out = tmp_path / "w.safetensors"
    extra: list[str] = []
    if case == "exists":
        out.write_bytes(b"the user's file")
    elif case == "suffix":
        out = tmp_path / "w.pt"
    elif case == "batch":
        extra = ["--batch", "500"]
    elif case == "temperature":
        extra = ["--temperature", "0"]
    else:
        cfg = yaml.safe_load(config.read_text(encoding="utf-8"))
        cfg["data"]["kind"] = "volumes3d"
        config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert _pretrain(config, out, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert {"exists": "w.safetensors", "suffix": ".safetensors", "batch": "--batch", "temperature": "--temperature",
            "volume_config": "slices2d"}[case] in err
    if case == "exists":
        assert out.read_bytes() == b"the user's file"
    else:
        assert not out.exists()


def test_a_pretraining_batch_beyond_the_batch_bound_is_refused_before_the_pool_is_read(tmp_path, capsys,
                                                                                       monkeypatch):
    """``train``'s bound on one step's inputs and activations (MEDDEEPRECOG_MAX_BATCH_BYTES), which pretraining did
    not apply: a step holds two views of each of ``--batch`` images, so 16 images are 32 samples. Refused in one
    line naming the config and ``--batch``, before the pool is read or anything written."""
    config = _tiny_config(tmp_path)
    monkeypatch.setattr(pretraining, "pool_images",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("the pool was read: not refused first")))
    monkeypatch.setenv("MEDDEEPRECOG_MAX_BATCH_BYTES", "64K")
    out = tmp_path / "w.safetensors"
    assert _pretrain(config, out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in (f"{config}: --batch 16 (two views of each image: 32 samples a step)", "input [1, 16, 16]",
                   "'simple_cnn2d'", "limit of 64.0 KiB", "MEDDEEPRECOG_MAX_BATCH_BYTES"):
        assert needle in err, (needle, err)
    assert not out.exists() and not Path(f"{out}.run").exists()


@pytest.mark.parametrize("pool, limit, needles", [
    ("one", "20K", ["pool.npz: split 'train': 38 images of 1 x 16 x 16 voxels as float32", "38.0 KiB"]),
    ("two", "50K", ["--pool: 76 train images of 1 x 16 x 16 voxels as float32 (2 of 2 configs read)", "76.0 KiB"]),
])
def test_a_pool_beyond_the_data_set_bound_is_refused_before_training(tmp_path, capsys, monkeypatch, pool, limit,
                                                                     needles):
    """``train``'s data-set bound (MEDDEEPRECOG_MAX_DATASET_BYTES) on pretraining's pool: each config's train
    images (38 here) before they are made, and the pool's together (two configs of 38 KiB under a 50 KiB bound),
    before the next config is read and the pool joined. One line, nothing written."""
    config = _tiny_config(tmp_path)
    configs = [config]
    if pool == "two":
        (tmp_path / "b").mkdir()
        configs.append(_tiny_config(tmp_path / "b", seed=1))
    monkeypatch.setenv("MEDDEEPRECOG_MAX_DATASET_BYTES", limit)
    out = tmp_path / "w.safetensors"
    assert main(["pretrain", str(config), "--pool", *map(str, configs), "--out", str(out), "--epochs", "1",
                 "--batch", "16", "--threads", "1", "--progress", "none"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in (*needles, f"more than the limit of {limit[:-1]}.0 KiB", "MEDDEEPRECOG_MAX_DATASET_BYTES"):
        assert needle in err, (needle, err)
    assert not out.exists() and not Path(f"{out}.run").exists()


def test_a_config_without_data_size_is_refused_for_pretraining(tmp_path, capsys):
    """The pool is standardised to the config's ``data/size`` and the batch bounded at it: without one the run
    ended in "unexpected TypeError"; one line naming the config and the setting."""
    config = _tiny_config(tmp_path)
    cfg = yaml.safe_load(config.read_text(encoding="utf-8"))
    del cfg["data"]["size"]
    config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert _pretrain(config, tmp_path / "w.safetensors") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{config}: pretraining needs data/size" in err, err


@pytest.mark.parametrize("case, needle", [("blank", "every image is blank"), ("tiny", "too small"),
                                          ("colour", "grey images"), ("none", "holds no images")])
def test_a_pool_that_cannot_be_learnt_from_is_refused_before_training(tmp_path, capsys, case, needle):
    config = _tiny_config(tmp_path)
    rng = np.random.default_rng(1)
    images = {"blank": np.zeros((48, 16, 16), np.uint8), "tiny": (rng.random((48, 1, 1)) * 255).astype(np.uint8),
              "colour": (rng.random((48, 16, 16, 3)) * 255).astype(np.uint8),
              "none": np.zeros((0, 16, 16), np.uint8)}[case]
    np.savez(tmp_path / "pool.npz", images=images, labels=(np.arange(len(images)) % 2)[:, None])
    out = tmp_path / "w.safetensors"
    assert _pretrain(config, out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and "pool.npz" in err and needle in err, err
    assert not out.exists() and not Path(f"{out}.run").exists()


@pytest.mark.parametrize("threads", ["0", "-2", "two"])
def test_threads_below_one_are_a_usage_error(tmp_path, capsys, threads):
    config = _tiny_config(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(["pretrain", str(config), "--pool", str(config), "--out", str(tmp_path / "w.safetensors"),
              "--threads", threads])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--threads" in err


def test_resume_without_a_run_says_pretraining_starts_afresh(tmp_path, capsys, caplog):
    config = _tiny_config(tmp_path)
    with caplog.at_level("WARNING"):
        assert _pretrain(config, tmp_path / "w.safetensors", "--resume") == 0
    assert "holds no checkpoint; pretraining starts from its first epoch" in caplog.text
    assert (tmp_path / "w.safetensors").is_file()


def test_the_pool_takes_the_training_rows_data_max_train_keeps(tmp_path):
    """A pool config with ``data/max_train`` gives pretraining the rows training takes (the first cases of each
    class, each class its share), not the whole training split."""
    from MedDeepRecogLib.training.config import load_config
    from MedDeepRecogLib.training.data import load_train_val
    from MedDeepRecogLib.training.pretrain import pool_images

    config = _tiny_config(tmp_path)
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    data["data"]["max_train"] = 10
    config.write_text(yaml.safe_dump(data), encoding="utf-8")
    images, sources = pool_images([config], [16, 16])
    cfg = load_config(config)
    trained_on = load_train_val(cfg, Path(cfg.data.path)).train
    assert sources[0]["train_images"] == len(images) == len(trained_on) == 10
    assert np.allclose(images, trained_on.images)


def test_a_partial_or_foreign_init_is_warned_about_with_its_fresh_layers(tmp_path, caplog):
    """busi_mis.yaml (channels [16,16,16,16]) started from an init pretrained for busi.yaml ([8,16,16,16]): 21 of 30
    tensors loaded with an empty stderr, and the header naming busi.yaml was never compared (audit F6)."""
    import logging

    from safetensors.torch import save_file

    from MedDeepRecogLib.models import build_model
    from MedDeepRecogLib.training.init_weights import read_init_state

    made_for = _tiny_config(tmp_path)   # simple_cnn2d, channels [4, 8], hidden 8
    theirs = build_model("simple_cnn2d", in_channels=1, num_classes=2, channels=[4, 8], hidden=8).state_dict()
    out = tmp_path / "init.safetensors"
    save_file({k: v.contiguous() for k, v in theirs.items()}, str(out),
              metadata={"made_by": "meddeeprecog pretrain", "config": str(made_for)})
    ours = build_model("simple_cnn2d", in_channels=1, num_classes=2, channels=[4, 8], hidden=16)
    with caplog.at_level(logging.WARNING):
        _, record = read_init_state(out, ours, tmp_path / "other.yaml",
                                    model_section={"name": "simple_cnn2d", "kwargs": {"channels": [4, 8],
                                                                                      "hidden": 16}})
    total = len(ours.state_dict())
    assert 0 < record["tensors_set"] < total and record["fresh_layers"]
    said = caplog.text
    assert f"sets {record['tensors_set']} of the network's {total} tensors" in said
    assert all(layer in said for layer in record["fresh_layers"])
    assert record["made_for_config"] == str(made_for) and "'hidden': 8" in record["made_for_other_config"]
    assert f"was made for {made_for}" in said and len(record["warnings"]) == 2
    # the same file read for the config it names, by the network it was made for: nothing to warn about
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _, record = read_init_state(out, build_model("simple_cnn2d", in_channels=1, num_classes=2, channels=[4, 8],
                                                     hidden=8), made_for)
    assert "warnings" not in record and not caplog.text


def test_the_pool_is_recorded_and_a_pool_from_the_runs_val_split_is_warned_about(tmp_path, capsys, caplog):
    """The weights' metadata names the method, epochs and each pool source (data, split, images, fingerprint); a
    run started from them prints that in its card's init line and warns (console and card) when the pool took its
    own val split. Weights without the record say "pool not recorded"."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from MedDeepRecogLib.models import build_model
    from MedDeepRecogLib.packages import load_package
    from MedDeepRecogLib.training.init_weights import init_words, read_init_state

    rng = np.random.default_rng(0)
    arrays = {f"{s}_{k}": v for s, n in (("train", 32), ("val", 16)) for k, v in
              (("images", (rng.random((n, 16, 16)) * 255).astype(np.uint8)), ("labels", (np.arange(n) % 2)[:, None]))}
    np.savez(tmp_path / "split.npz", **arrays)
    base = {"id": "tiny", "seed": 0, "model": {"name": "simple_cnn2d", "kwargs": {"channels": [4, 8], "hidden": 8}},
            "data": {"path": str(tmp_path / "split.npz"), "kind": "slices2d", "class_names": ["a", "b"],
                     "size": [16, 16]}, "training": {"epochs": 1, "batch_size": 16}}
    config, leak = tmp_path / "own.yaml", tmp_path / "leak.yaml"
    config.write_text(yaml.safe_dump(base), encoding="utf-8")
    leak.write_text(yaml.safe_dump({**base, "data": {**base["data"], "train_split": "val", "val_split": "train"}}),
                    encoding="utf-8")
    out = tmp_path / "start.safetensors"
    assert main(["pretrain", str(config), "--pool", str(config), str(leak), "--out", str(out), "--epochs", "1",
                 "--batch", "16", "--threads", "1", "--progress", "none"]) == 0
    with safe_open(str(out), "pt") as fh:
        meta = fh.metadata()
    assert meta["method"].startswith("SimCLR") and meta["epochs"] == "1"
    pool = json.loads(meta["pool"])
    assert [(s["split"], s["train_images"], s["split_in_data"]) for s in pool] == [("train", 32, True),
                                                                                   ("val", 16, True)]
    assert all(s["path"] == str(tmp_path / "split.npz") and s["fingerprint"].startswith("sha256:") for s in pool)
    run = yaml.safe_load(config.read_text(encoding="utf-8"))
    run["model"]["init"] = str(out)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run), encoding="utf-8")
    capsys.readouterr()
    with caplog.at_level("WARNING"):
        assert main(["train", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "run"), "--package-dest",
                     str(tmp_path / "cat"), "--progress", "none"]) == 0
    assert any("'val' split of this run's data" in r.getMessage() for r in caplog.records)
    card = (load_package(tmp_path / "cat" / "tiny" / "1.0.0").path / "MODEL_CARD.md").read_text(encoding="utf-8")
    line = next(x for x in card.splitlines() if "**Started from**" in x)
    assert "SimCLR" in line and "1 epochs" in line and "split 'val', 16 images" in line and "split 'train'" in line
    assert "**WARNING**: the pretraining pool took the 'val' split of this run's data" in card
    old = tmp_path / "old.safetensors"
    save_file(load_file(str(out)), str(old), metadata={"config": "x.yaml", "made_by": "meddeeprecog pretrain"})
    net = build_model("simple_cnn2d", in_channels=1, num_classes=2, channels=[4, 8], hidden=8)
    assert init_words(read_init_state(old, net)[1]).endswith("pool not recorded")
