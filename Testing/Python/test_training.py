"""Training: the loop learns a separable task, resumes exactly, honours hooks; configs are strict; CLI end to end."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from MedDeepRecogLib.cli import main
from MedDeepRecogLib.errors import ConfigError
from MedDeepRecogLib.models import build_model
from MedDeepRecogLib.packages import load_package
from MedDeepRecogLib.training.augment import BatchAugment
from MedDeepRecogLib.training.config import config_from_dict, load_config
from MedDeepRecogLib.training.data import tail_per_class_split
from MedDeepRecogLib.training.classification import fit_classifier as fit, make_loader
from MedDeepRecogLib.training.loop import FitConfig, Hooks
from MedDeepRecogLib.training.sections import LoopConfig, OptimizerConfig, ScheduleConfig
from conftest import refusal_line

KW = {"in_channels": 1, "num_classes": 2, "channels": [4, 8], "hidden": 8, "dropout": 0.0}


def separable(n: int = 96, size: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class 1: a bright square top-left; class 0: bottom-right; plus noise. (N, 1, size, size) float32."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = 0.2 * rng.standard_normal((n, 1, size, size)).astype(np.float32)
    h = size // 2
    for i, label in enumerate(y):
        if label:
            x[i, 0, 1:h - 1, 1:h - 1] += 1.0
        else:
            x[i, 0, h + 1:-1, h + 1:-1] += 1.0
    return x, y.astype(np.int64)


def fit_config(epochs: int, lr: float = 1e-3, schedule: ScheduleConfig | None = None, monitor: str = "auc",
               seed: int = 0, optimizer_name: str = "adamw", **loop) -> FitConfig:
    """The loop's config from the shared sections, as ``train`` builds it."""
    return FitConfig(optimizer=OptimizerConfig(name=optimizer_name, lr=lr), schedule=schedule or ScheduleConfig(),
                     loop=LoopConfig(epochs=epochs, **loop), monitor=monitor, seed=seed)


def _loaders(seed=0):
    x, y = separable(96, seed=seed)
    xv, yv = separable(40, seed=seed + 100)
    return make_loader(x, y, 16, shuffle=True, seed=seed), make_loader(xv, yv, 64, shuffle=False)


def test_fit_learns_a_separable_task():
    torch.manual_seed(0)
    model = build_model("simple_cnn2d", **KW)
    tl, vl = _loaders()
    hist = fit(model, tl, vl, fit_config(6, lr=3e-3, monitor="accuracy"))
    acc = [r["val_accuracy"] for r in hist.epochs]
    assert len(acc) == 6
    assert max(acc) >= 0.95 and max(acc) > acc[0]
    assert hist.epochs[-1]["train_loss"] < hist.epochs[0]["train_loss"]
    assert hist.best_epoch == 1 + int(np.argmax(acc))


def _fit_run(tmp, epochs, resume=False, should_stop=None):
    torch.manual_seed(0)
    model = build_model("simple_cnn2d", **KW)
    tl, vl = _loaders()
    cfg = fit_config(epochs, lr=3e-3, schedule=ScheduleConfig(name="step", step_size=2, gamma=0.5), ema_decay=0.9)
    cfg.checkpoint_dir, cfg.resume, cfg.restore_best = str(tmp), resume, False
    hooks = Hooks(augment=BatchAugment({"flip": {"prob": 0.5, "axes": [0, 1]}}, spatial_dims=2, seed=0),
                  should_stop=should_stop)
    return model, fit(model, tl, vl, cfg, hooks=hooks)


def test_cancel_then_resume_matches_an_uninterrupted_run(tmp_path):
    straight, h_straight = _fit_run(tmp_path / "a", 4)
    calls = {"n": 0}

    def stop_in_epoch_3():  # 6 batches per epoch: cancel during the third epoch
        calls["n"] += 1
        return calls["n"] > 14

    _, h_cancel = _fit_run(tmp_path / "b", 4, should_stop=stop_in_epoch_3)
    assert h_cancel.stopped == "cancelled" and len(h_cancel.epochs) == 2
    ckpt = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 2  # the last good checkpoint survives the cancel
    resumed, h_resumed = _fit_run(tmp_path / "b", 4, resume=True)
    assert h_resumed.resumed_from == 2 and [r["epoch"] for r in h_resumed.epochs] == [1, 2, 3, 4]
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), k
    assert h_resumed.epochs[-1]["val_loss"] == pytest.approx(h_straight.epochs[-1]["val_loss"], abs=1e-6)
    # the run's training time counts the epochs of the first invocation too (the card's train_time_s)
    from MedDeepRecogLib.training.train import epoch_seconds

    assert epoch_seconds(h_resumed) == pytest.approx(sum(r["time_s"] for r in h_resumed.epochs))
    assert all(r["time_s"] > 0 for r in h_resumed.epochs[:2])  # epochs 1-2 ran before the cancel


def test_hooks_batch_transform_frozen_and_epoch_end():
    torch.manual_seed(0)
    model = build_model("simple_cnn2d", **KW)
    frozen_before = {k: v.clone() for k, v in model.features.conv1.state_dict().items()}
    seen = []

    def flip_sign(m, batch, info):  # an input transform before the loss, as adversarial training does
        x, y = batch
        assert m.training and x.device == info["device"]
        seen.append(info["step"])
        return -x, y

    stops = []
    hooks = Hooks(batch_transform=flip_sign, frozen=["features.conv1"],
                  on_epoch_end=lambda rec, m: stops.append(rec["epoch"]) or rec["epoch"] >= 2)
    tl, vl = _loaders()
    hist = fit(model, tl, vl, fit_config(5), hooks=hooks)
    assert hist.stopped == "hook" and stops == [1, 2]
    assert len(seen) == 2 * len(tl)
    for k, v in model.features.conv1.state_dict().items():
        assert torch.equal(v, frozen_before[k]), k  # frozen weights and BN statistics unchanged
    assert not torch.equal(model.classifier.out.weight, build_model("simple_cnn2d", **KW).classifier.out.weight)


def test_a_non_finite_loss_stops_before_any_optimiser_step():
    """The loop checks the loss before the step: a diverged batch never moves the weights."""
    from MedDeepRecogLib.training.loop import StepOutput, fit as fit_loop

    torch.manual_seed(0)
    model = build_model("simple_cnn2d", **KW)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tl, _ = _loaders()

    def nan_step(net, batch):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(net(x), y)
        return StepOutput(loss * float("nan"), len(y))

    with pytest.raises(ConfigError, match="diverged"):
        fit_loop(model, tl, nan_step, None, fit_config(2, lr=0.1, optimizer_name="sgd"))
    for k, v in model.state_dict().items():
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked")):  # the forward pass ran
            assert torch.equal(v, before[k]), k


def test_training_imports_nothing_above_it():
    """training/ is composed into by other parts (config blocks, hooks); it names none of them."""
    import ast

    import MedDeepRecogLib.training as training

    for path in Path(training.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:
                assert (node.module or "").split(".")[0] not in ("robustness", "finetune", "commands"), path.name
            if isinstance(node, (ast.ImportFrom, ast.Import)):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any("robustness" in n or "finetune" in n for n in names), path.name


def test_early_stopping_and_l1():
    torch.manual_seed(0)
    model = build_model("simple_cnn2d", **KW)
    tl, vl = _loaders()
    hist = fit(model, tl, vl, fit_config(30, lr=1e-9, monitor="loss", early_stopping_patience=2), l1=1e-4)
    assert hist.stopped == "early_stopping" and len(hist.epochs) < 30


def test_tail_per_class_split_is_contiguous_per_class():
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    tr, va = tail_per_class_split(labels, 0.2)
    assert list(va) == [9, 13, 14]  # ceil(20%): 1 of 5 ones, 2 of 10 zeros
    assert sorted(np.r_[tr, va]) == list(range(len(labels)))


# ------------------------------------------------------------------------------------------------ configs
SHIPPED_CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_recipe_parses_and_its_network_arguments_check(path):
    """The recipes in configs/ (bundled or kept as measured experiments) are read by the same strict schema as
    ``meddeeprecog train``, and each names an architecture whose keyword arguments pass its checks."""
    from MedDeepRecogLib.commands import register_training_blocks
    from MedDeepRecogLib.models.registry import check_kwargs

    register_training_blocks()
    cfg = load_config(path)
    assert cfg.id and cfg.data.path
    check_kwargs(cfg.model.name, dict(cfg.model.kwargs or {}))


def _config(npz: Path, **over) -> dict:
    cfg = {"id": "synthetic", "seed": 0,
           "data": {"path": str(npz), "kind": "slices2d", "class_names": ["left", "right"], "val_fraction": 0.25},
           "model": {"name": "simple_cnn2d", "kwargs": {"channels": [4, 8], "hidden": 8}},
           "augmentation": {"flip": {"prob": 0.0}},
           "optimizer": {"name": "adam", "lr": 0.003},
           "schedule": {"name": "cosine"},
           "training": {"epochs": 3, "batch_size": 16}}
    for k, v in over.items():
        cfg[k] = v
    return cfg


@pytest.fixture
def npz(tmp_path) -> Path:
    x, y = separable(120, seed=3)
    path = tmp_path / "synthetic.npz"
    np.savez(path, images=(x[:, 0] * 100 + 100).clip(0, 255).astype(np.uint8), labels=y[:, None])
    return path


def test_unknown_config_keys_are_named_with_the_file(tmp_path, npz):
    cfg = _config(npz)
    cfg["optimizer"]["learning_rate"] = 0.1
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(cfg), encoding="utf-8")
    with pytest.raises(ConfigError, match="optimizer/learning_rate") as err:
        load_config(path)
    assert str(path) in str(err.value)
    path = tmp_path / "bad.yaml"
    path.write_text("id: x\nepochs: 3\ndata: {path: a.npz}\nmodel: {name: simple_cnn2d}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown key 'epochs'"):
        load_config(path)
    with pytest.raises(ConfigError, match="augmentation/flip/probability"):
        config_from_dict(_config(npz, augmentation={"flip": {"probability": 0.5}}))
    with pytest.raises(ConfigError, match="schedule/name"):
        config_from_dict(_config(npz, schedule={"name": "exp"}))


def test_one_class_dataset_is_refused(tmp_path):
    path = tmp_path / "one.npz"
    np.savez(path, images=np.zeros((10, 8, 8), np.uint8), labels=np.zeros((10, 1), np.int64))
    with pytest.raises(ConfigError, match="only one class"):
        from MedDeepRecogLib.training.train import run_training
        run_training(config_from_dict(_config(path)), out=tmp_path / "out", package_dest=tmp_path / "cat")
    assert not (tmp_path / "cat").exists() and not (tmp_path / "out").exists()


def test_train_cli_end_to_end(tmp_path, npz, capsys):
    cfg_path = tmp_path / "cfg.yaml"
    import yaml
    cfg_path.write_text(yaml.safe_dump(_config(npz)), encoding="utf-8")
    out, cat = tmp_path / "run", tmp_path / "catalog"
    rc = main(["train", str(cfg_path), "--out", str(out), "--package-dest", str(cat), "--progress", "json"])
    assert rc == 0
    lines = [json.loads(ln) for ln in capsys.readouterr().out.splitlines() if ln.startswith("{")]
    assert lines[-1]["stage"] == "done" and {"train", "validate"} <= {ln["stage"] for ln in lines}
    result = lines[-1]["result"]
    pkg = load_package(result["package"])
    assert pkg.path == cat / "synthetic" / "1.0.0"
    assert pkg.class_names == ["left", "right"] and pkg.input_spec["size"] == [12, 12]
    assert pkg.meta["metrics"]["split"] == "val" and pkg.meta["metrics"]["auc"] > 0.9
    assert pkg.meta["provenance"]["dataset_fingerprint"].startswith("sha256:")
    assert (pkg.path / "MODEL_CARD.md").read_text(encoding="utf-8").count("meddeeprecog train") == 1
    assert (out / "training_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8"))["n"] == 30
    # a second run takes the next version; the first is untouched
    before = (pkg.path / "weights.safetensors").read_bytes()
    assert main(["train", str(cfg_path), "--out", str(tmp_path / "run2"), "--package-dest", str(cat), "--progress",
                 "none", "--epochs", "1"]) == 0
    assert load_package(cat / "synthetic" / "1.0.1").version == "1.0.1"
    assert (pkg.path / "weights.safetensors").read_bytes() == before
    # the first run's folder is never trained over without --resume, nor a folder of the user's
    history = (out / "history.json").read_bytes()
    capsys.readouterr()
    assert main(["train", str(cfg_path), "--out", str(out), "--package-dest", str(cat), "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert "holds an earlier run" in err and len(err.strip().splitlines()) == 1
    assert (out / "history.json").read_bytes() == history and not (cat / "synthetic" / "1.0.2").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's")
    assert main(["train", str(cfg_path), "--out", str(mine), "--package-dest", str(cat), "--progress", "none"]) == 2
    assert "is not empty (notes.txt)" in capsys.readouterr().err and sorted(os.listdir(mine)) == ["notes.txt"]


def test_train_checks_its_folders_before_training_and_leaves_none_empty(tmp_path, npz, capsys):
    import yaml
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(_config(npz)), encoding="utf-8")
    blocker = tmp_path / "catalog"
    blocker.write_text("a file where the package folder should go")
    out = tmp_path / "new" / "run"
    assert main(["train", str(cfg_path), "--out", str(out), "--package-dest", str(blocker), "--progress",
                 "none"]) == 2
    assert "--package-dest" in capsys.readouterr().err and not (tmp_path / "new").exists()
    bad = _config(npz)
    bad["training"]["class_weights"] = [1.0, 2.0, 3.0]   # three weights for two classes: refused at the first step
    cfg_path.write_text(yaml.safe_dump(bad), encoding="utf-8")
    assert main(["train", str(cfg_path), "--out", str(out), "--package-dest", str(tmp_path / "cat"),
                 "--progress", "none"]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not (tmp_path / "new").exists()


def test_train_cli_user_errors_exit_2(tmp_path, npz, capsys):
    cfg = _config(npz)
    cfg["training"]["epoch"] = 3
    path = tmp_path / "typo.json"
    path.write_text(json.dumps(cfg), encoding="utf-8")
    assert main(["train", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "training/epoch" in err and str(path) in err


@pytest.fixture
def no_training(monkeypatch):
    """Reading the training data fails the test: a refused run must stop before it."""
    from MedDeepRecogLib.training import train

    def read_data(*args, **kwargs):
        raise AssertionError("the run read its data: it was not refused first")

    monkeypatch.setattr(train, "load_train_val", read_data)


def test_train_refuses_a_version_any_catalog_holds_before_training(tmp_path, npz, capsys, monkeypatch, no_training):
    """A config's version that the bundled or the user catalog holds for its id would shadow (or overwrite) that
    package: refused before the data are read, naming the setting and the catalog, nothing written. Rebuilding a
    bundled package into the bundled folder is refused the same way while the old version is there, and the line
    says what to do; into a folder outside the catalogs (the cards' "Reproduce" commands) it may keep its version."""
    import yaml

    from MedDeepRecogLib import resources
    from MedDeepRecogLib.packages import catalogs_with, check_new_version, user_models_dir

    bundled = tmp_path / "bundled"   # a stand-in, so that no failure can write into the real bundled folder
    (bundled / "lung-ct-cancer" / "1.2.0").mkdir(parents=True)
    (bundled / "lung-ct-cancer" / "1.2.1").mkdir()
    monkeypatch.setattr(resources, "BUNDLED_MODELS_DIR", bundled)
    cfg_path = tmp_path / "lung.yaml"
    cfg_path.write_text(yaml.safe_dump(_config(npz, id="lung-ct-cancer", version="1.2.0")), encoding="utf-8")
    for dest in (user_models_dir(), bundled):
        assert main(["train", str(cfg_path), "--out", str(tmp_path / "run"), "--package-dest", str(dest),
                     "--progress", "none"]) == 2
        line = refusal_line(capsys, str(cfg_path), "version 1.2.0: lung-ct-cancer@1.2.0 already exists in the "
                            f"bundled catalog {bundled}", "never overwritten or shadowed", "bump the version (1.2.2 "
                            "is free) or choose a new id; the bundled package stays as installed")
        assert "remove" not in line   # a bundled package is never to be deleted
    scratch = catalogs_with(tmp_path / "reproduce")   # opened by path only: it hides no catalog's package
    assert check_new_version("lung-ct-cancer", "1.2.0", scratch, "version") == "1.2.0"
    (tmp_path / "reproduce" / "lung-ct-cancer" / "1.2.0").mkdir(parents=True)   # but is never overwritten
    with pytest.raises(ConfigError, match="lung-ct-cancer@1.2.0 already exists in the catalog"):
        check_new_version("lung-ct-cancer", "1.2.0", scratch, "version")
    (user_models_dir() / "synthetic" / "2.0.0").mkdir(parents=True)   # and the user catalog's own versions
    cfg_path.write_text(yaml.safe_dump(_config(npz, version="2.0.0")), encoding="utf-8")
    assert main(["train", str(cfg_path), "--out", str(tmp_path / "run"), "--progress", "none"]) == 2
    refusal_line(capsys, f"synthetic@2.0.0 already exists in the user catalog {user_models_dir()}", "2.0.1 is free")
    assert not (tmp_path / "run").exists() and not (tmp_path / "cat").exists()
    assert sorted(p.name for p in (bundled / "lung-ct-cancer").iterdir()) == ["1.2.0", "1.2.1"]


def test_train_suggests_the_next_free_patch_of_the_taken_version(tmp_path, npz, capsys, no_training):
    """A config at 0.1.0 whose version is taken is told 0.1.1 (the next free patch of what it asked for), as
    ``models import`` is, not the id's next version over the catalog (0.8.3); the line says 0.8.2 is newer."""
    import yaml

    from MedDeepRecogLib.packages import user_models_dir

    for v in ("0.1.0", "0.8.2"):
        (user_models_dir() / "synthetic" / v).mkdir(parents=True)
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(_config(npz, version="0.1.0")), encoding="utf-8")
    assert main(["train", str(cfg_path), "--out", str(tmp_path / "run"), "--progress", "none"]) == 2
    line = refusal_line(capsys, "version 0.1.0: synthetic@0.1.0 already exists in the user catalog",
                        "bump the version (0.1.1 is free; synthetic@0.8.2 is newer and stays the one used by id)")
    assert "0.8.3" not in line


def test_train_refuses_an_id_the_catalogs_hold_for_another_kind_of_model(tmp_path, npz, capsys, no_training):
    """A slice classifier trained under the id of the bundled volume model adrenal-mass-3d would become its latest
    version: refused before the data are read; into a scratch --package-dest it may keep the id."""
    import yaml

    from MedDeepRecogLib.packages import catalogs_with, check_same_kind

    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(_config(npz, id="adrenal-mass-3d")), encoding="utf-8")
    assert yaml.safe_load(cfg_path.read_text())["data"]["kind"] == "slices2d"
    assert main(["train", str(cfg_path), "--out", str(tmp_path / "run"), "--progress", "none"]) == 2
    refusal_line(capsys, str(cfg_path), "id adrenal-mass-3d: adrenal-mass-3d@", "(input kind volume3d); a "
                 "classification model (input kind slices2d)", "choose another id")
    assert not (tmp_path / "run").exists()
    check_same_kind("adrenal-mass-3d", "classification", "slices2d", catalogs_with(tmp_path / "scratch"), "id")


@pytest.mark.parametrize("version", ["1.0", "x.y", "1.0.0.0", "01.0.0", ""])
def test_train_refuses_a_config_version_that_is_not_major_minor_patch(tmp_path, npz, capsys, no_training, version):
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(_config(npz, version=version)), encoding="utf-8")
    assert main(["train", str(cfg_path), "--out", str(tmp_path / "run"), "--package-dest", str(tmp_path / "cat"),
                 "--progress", "none"]) == 2
    refusal_line(capsys, str(cfg_path), "version", "MAJOR.MINOR.PATCH")
    assert not (tmp_path / "run").exists() and not (tmp_path / "cat").exists()


def test_train_without_a_version_takes_one_free_in_every_catalog(tmp_path, npz, monkeypatch):
    """The default version is the next free one over the bundled and user catalogs too, not only --package-dest
    (a first user package of a bundled id would otherwise be 1.0.0 beside the bundled 1.0.0)."""
    from MedDeepRecogLib import resources
    from MedDeepRecogLib.training.train import run_training

    bundled = tmp_path / "bundled"
    (bundled / "synthetic" / "1.4.0").mkdir(parents=True)
    (bundled / "synthetic" / "junk").mkdir()
    monkeypatch.setattr(resources, "BUNDLED_MODELS_DIR", bundled)
    cfg = config_from_dict(_config(npz, training={"epochs": 1, "batch_size": 16}))
    result = run_training(cfg, out=tmp_path / "run", package_dest=tmp_path / "cat")
    assert Path(result["package"]) == tmp_path / "cat" / "synthetic" / "1.4.1"


def test_resume_with_the_checks_on_versions(tmp_path, npz, capsys):
    """--resume of a run stopped before its package was written saves that version; resuming a finished run whose
    config names a version is refused before training, since its package is there (a resumed run that trains on
    makes a new package), and goes on once the version is bumped."""
    import shutil

    import yaml

    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(_config(npz, version="1.0.0")), encoding="utf-8")
    out, cat = tmp_path / "run", tmp_path / "cat"
    argv = ["train", str(cfg_path), "--out", str(out), "--package-dest", str(cat), "--progress", "none"]
    assert main(argv + ["--epochs", "1"]) == 0
    shutil.rmtree(cat / "synthetic" / "1.0.0")   # as if the run had been stopped before it saved its package
    capsys.readouterr()
    assert main(argv + ["--resume", "--epochs", "2"]) == 0
    assert load_package(cat / "synthetic" / "1.0.0").meta["metrics"]["best_epoch"] in (1, 2)
    history = (out / "history.json").read_bytes()
    capsys.readouterr()
    assert main(argv + ["--resume", "--epochs", "3"]) == 2
    refusal_line(capsys, "synthetic@1.0.0 already exists in the catalog", "bump the version (1.0.1 is free)")
    assert (out / "history.json").read_bytes() == history
    cfg_path.write_text(yaml.safe_dump(_config(npz, version="1.0.1")), encoding="utf-8")   # as the line says
    assert main(argv + ["--resume", "--epochs", "3"]) == 0
    assert sorted(p.name for p in (cat / "synthetic").iterdir()) == ["1.0.0", "1.0.1"]


def test_image_folder_with_labels_csv(tmp_path):
    from MedDeepRecogLib.training.data import load_train_val
    folder = _png_folder(tmp_path / "imgs")
    cfg = config_from_dict(_config(folder, data={"path": str(folder), "kind": "slices2d", "val_fraction": 0.2,
                                                 "intensity_range": [0, 255]}))
    data = load_train_val(cfg, folder)
    assert data.class_names == ["left", "right"]
    assert data.train.images.shape == (16, 1, 12, 12) and data.val.images.shape == (4, 1, 12, 12)
    assert data.train.images.dtype == np.float32 and 0.0 <= data.train.images.min() <= data.train.images.max() <= 1.0
    # labels follow the CSV: class 1 images are bright top-left
    bright_top_left = data.train.images[:, 0, 1:5, 1:5].mean((1, 2)) > data.train.images[:, 0, 7:11, 7:11].mean((1, 2))
    assert np.array_equal(bright_top_left, data.train.labels == 1)


def _png_folder(folder: Path, n: int = 20, seed: int = 5, extra_rows: tuple[str, ...] = ()) -> Path:
    """``n`` separable 12x12 PNGs and their labels.csv (plus ``extra_rows``) in ``folder``."""
    import SimpleITK as sitk

    x, y = separable(n, seed=seed)
    folder.mkdir()
    rows = ["file,label"]
    for i, (img, label) in enumerate(zip(x, y)):
        name = f"img{i:02d}.png"
        sitk.WriteImage(sitk.GetImageFromArray((img[0] * 100 + 100).clip(0, 255).astype(np.uint8)), str(folder / name))
        rows.append(f"{name},{'right' if label else 'left'}")
    (folder / "labels.csv").write_text("\n".join([*rows, *extra_rows]) + "\n", encoding="utf-8")
    return folder


def test_folder_volumes_are_read_as_classify_reads_them(tmp_path):
    """A RAS NIfTI (direction diag(-1, -1, 1)) trains on the LPS view classify feeds the network, not on its stored
    index order (a left-right and front-back mirror of it)."""
    import SimpleITK as sitk

    from MedDeepRecogLib.preprocessing.pipeline import run_input_pipeline
    from MedDeepRecogLib.inference.model_input import volume_from_image
    from MedDeepRecogLib.io import read_image
    from MedDeepRecogLib.training.data import load_train_val
    from MedDeepRecogLib.training.train import default_pipeline

    rng = np.random.default_rng(0)
    folder = tmp_path / "vols"
    folder.mkdir()
    rows = ["file,label"]
    for i in range(10):
        img = sitk.GetImageFromArray(rng.integers(0, 256, (4, 5, 6)).astype(np.uint8))
        img.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
        img.SetSpacing((2.0, 2.0, 2.0))
        sitk.WriteImage(img, str(folder / f"v{i}.nii.gz"))
        rows.append(f"v{i}.nii.gz,{'a' if i % 2 else 'b'}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    cfg = config_from_dict(_config(folder, data={"path": str(folder), "kind": "volume3d", "val_fraction": 0.2,
                                                 "intensity_range": [0, 255]},
                                   model={"name": "simple_cnn3d", "kwargs": {}}))
    data = load_train_val(cfg, folder)
    spec = {"kind": "volume3d", "size": [4, 5, 6], "spacing_mm": None, "channels": 1,
            "pipeline": default_pipeline(cfg)}
    first = read_image(folder / "v1.nii.gz")   # the first train case of class a (CSV order)
    seen = volume_from_image(run_input_pipeline(first, spec["pipeline"]), spec).x[0, 0]
    trained = data.train.images[list(data.train.labels).index(0), 0]
    np.testing.assert_allclose(trained, seen, atol=1e-6)
    stored = sitk.GetArrayFromImage(first) / 255.0
    np.testing.assert_allclose(trained, stored[:, ::-1, ::-1], atol=1e-6)   # the LPS view: x and y mirrored
    assert not np.allclose(trained, stored, atol=1e-3)


def test_an_image_listed_twice_in_labels_csv_is_refused(tmp_path, capsys):
    """A second listing (here through ./) could land the image in validation after training on it."""
    import yaml

    folder = _png_folder(tmp_path / "imgs", extra_rows=("./img03.png,right",))
    cfg_path = tmp_path / "dup.yaml"
    cfg_path.write_text(yaml.safe_dump(_config(folder, data={"path": str(folder), "kind": "slices2d",
                                                              "intensity_range": [0, 255]})), encoding="utf-8")
    assert main(["train", str(cfg_path), "--out", str(tmp_path / "run"), "--package-dest", str(tmp_path / "cat"),
                 "--progress", "none", "--threads", "1"]) == 2
    refusal_line(capsys, "labels.csv", "img03.png twice (rows 5 and 22)")


def _group_folder(folder: Path, split: bool) -> Path:
    """20 separable PNGs in groups of 2 (g0..g9, alternating classes), with a split column (groups g8, g9 val)."""
    import SimpleITK as sitk

    x, y = separable(20, seed=5)
    folder.mkdir()
    rows = ["file,label,group" + (",split" if split else "")]
    for i, (img, label) in enumerate(zip(x, y)):
        name = f"img{i:02d}.png"
        sitk.WriteImage(sitk.GetImageFromArray((img[0] * 100 + 100).clip(0, 255).astype(np.uint8)), str(folder / name))
        rows.append(f"{name},{'right' if label else 'left'},g{i // 2}" + ((",val" if i >= 16 else ",train")
                                                                          if split else ""))
    (folder / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def test_labels_csv_groups_are_honoured_as_npz_groups(tmp_path, capsys):
    """A group column keeps each patient on one side: the tail split is refused (it would cut groups), the split
    column is used, a group on both sides of it refused, and the folds keep groups together (train_groups)."""
    import yaml

    from MedDeepRecogLib.training.data import load_train_val, stratified_folds

    tail = _group_folder(tmp_path / "tail", split=False)
    cfg_path = tmp_path / "g.yaml"
    cfg_path.write_text(yaml.safe_dump(_config(tail, data={"path": str(tail), "kind": "slices2d",
                                                           "intensity_range": [0, 255]})), encoding="utf-8")
    assert main(["train", str(cfg_path), "--out", str(tmp_path / "run"), "--package-dest", str(tmp_path / "cat"),
                 "--progress", "none", "--threads", "1"]) == 2
    refusal_line(capsys, "labels.csv", "no split column", "groups", "add a split column (train/val)")

    folder = _group_folder(tmp_path / "split", split=True)
    cfg = config_from_dict(_config(folder, data={"path": str(folder), "kind": "slices2d",
                                                 "intensity_range": [0, 255]}))
    data = load_train_val(cfg, folder)
    assert len(data.train) == 16 and len(data.val) == 4
    assert list(data.train_groups) == [f"g{i // 2}" for i in range(16)]
    for fold in stratified_folds(data.train.labels, 4, 0, groups=data.train_groups):
        rest = np.setdiff1d(np.arange(16), fold)
        assert not set(data.train_groups[fold]) & set(data.train_groups[rest])

    csv = folder / "labels.csv"
    csv.write_text(csv.read_text().replace("img15.png,right,g7,train", "img15.png,right,g7,val"))
    with pytest.raises(ConfigError, match="group 'g7' has images in both train and val"):
        load_train_val(cfg, folder)
    csv.write_text(csv.read_text().replace("img15.png,right,g7,val", "img15.png,right,g7,test"))
    with pytest.raises(ConfigError, match=r"column split holds \['test'\]"):
        load_train_val(cfg, folder)
    csv.write_text(csv.read_text().replace("img15.png,right,g7,test", "img15.png,right,,train"))
    with pytest.raises(ConfigError, match="row 17 has no group"):
        load_train_val(cfg, folder)


def test_mixed_targets_are_scored_as_probabilities():
    from MedDeepRecogLib.training.classification import ClassificationStep

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x, y = torch.randn(6, 1, 4, 4), torch.tensor([0, 1, 2, 2, 1, 0])
    step = ClassificationStep(net, label_smoothing=0.1)
    hard, soft = step(net, (x, y)), step(net, (x, torch.nn.functional.one_hot(y, 3).float()))
    assert hard.loss.item() == pytest.approx(soft.loss.item(), abs=1e-6) and hard.correct == soft.correct
    blend = torch.tensor([[0.7, 0.3, 0.0]] * 6)  # the larger share is the label a mixed sample counts as
    assert step(net, (x, blend)).correct == int((net(x).argmax(1) == 0).sum())


def test_fit_learns_a_separable_task_under_mixup():
    torch.manual_seed(0)
    model = build_model("simple_cnn2d", **KW)
    tl, vl = _loaders()
    hooks = Hooks(augment=BatchAugment({"mixup": {"prob": 1.0, "alpha": 0.4}}, spatial_dims=2, seed=0, num_classes=2))
    hist = fit(model, tl, vl, fit_config(8, lr=3e-3, monitor="accuracy"), hooks=hooks)
    assert max(r["val_accuracy"] for r in hist.epochs) >= 0.9
    assert hist.epochs[-1]["train_loss"] < hist.epochs[0]["train_loss"]


def test_mixup_settings_are_checked(npz):
    with pytest.raises(ConfigError, match="augmentation/mixup/alpha"):
        config_from_dict(_config(npz, augmentation={"mixup": {"alpha": 0}}))
    with pytest.raises(ConfigError, match="augmentation/mixup/prob"):
        config_from_dict(_config(npz, augmentation={"mixup": {"prob": 2}}))
    assert config_from_dict(_config(npz, augmentation={"mixup": {"alpha": 0.2}})).augmentation["mixup"]["alpha"] == 0.2


def test_model_init_starts_every_network_from_the_file_and_refuses_another_networks(tmp_path, npz, capsys):
    import yaml
    from safetensors.torch import save_file

    from MedDeepRecogLib.packages.package import sha256_file

    torch.manual_seed(7)
    start = build_model("simple_cnn2d", **KW).state_dict()
    weights = tmp_path / "pretrained.safetensors"
    save_file({k: v.contiguous() for k, v in start.items()}, str(weights))
    cfg = _config(npz, model={"name": "simple_cnn2d", "kwargs": {"channels": [4, 8], "hidden": 8},
                              "init": str(weights)},
                  optimizer={"name": "sgd", "lr": 1e-12})  # a step too small to move the weights
    cfg["training"].update(epochs=1, ensemble=2)
    path = tmp_path / "init.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    cat = tmp_path / "catalog"
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--package-dest", str(cat),
                 "--progress", "none"]) == 0
    pkg = load_package(cat / "synthetic" / "1.0.0")
    record = pkg.meta["provenance"]["init"]
    assert record["sha256"] == sha256_file(weights) and record["tensors_set"] == record["tensors_total"]
    model = pkg.build_model("cpu")
    for member in model.members:  # each member started from the file, not from its own seed
        for name, tensor in member.state_dict().items():
            if "running" not in name and "num_batches" not in name:  # batch norm statistics move in training
                assert torch.allclose(tensor.float(), start[name].float(), atol=1e-6), name
    assert "**Started from**" in (pkg.path / "MODEL_CARD.md").read_text(encoding="utf-8")
    capsys.readouterr()
    # weights made for another network, and a missing file: one line naming the setting, exit 2, nothing written
    save_file({"fc.weight": torch.zeros(3, 3)}, str(tmp_path / "other.safetensors"))
    for bad, words in (("other.safetensors", "made for another network"), ("absent.safetensors", "not found")):
        cfg["model"]["init"] = str(tmp_path / bad)
        path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
        assert main(["train", str(path), "--out", str(tmp_path / "run2"), "--package-dest", str(cat)]) == 2
        err = capsys.readouterr().err.strip()
        assert "model/init" in err and words in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in (cat / "synthetic").iterdir()) == ["1.0.0"]


# ------------------------------------------------------------------------------------------------ heatmap layer
def test_train_names_the_heatmap_layer_of_the_network_it_packages(tmp_path, npz):
    """A config's explain/target_layer written for an ensemble (``members.*.``) names the one network a run with
    folds 0 packages, and a member's layer gets the prefix when the run packages an ensemble: classify (and
    ``models --verify``) find the layer either way."""
    from MedDeepRecogLib.models.ensemble import ensemble_around
    from MedDeepRecogLib.packages.package import target_layer_of
    from MedDeepRecogLib.training.train import package_explain, run_training

    explain = {"methods": ["gradcam"], "target_layer": "members.*.features.conv2", "rationale": "why"}
    cfg = config_from_dict(_config(npz, explain=explain, training={"epochs": 1, "batch_size": 16}))
    result = run_training(cfg, out=tmp_path / "run", package_dest=tmp_path / "cat")
    pkg = load_package(result["package"])
    assert pkg.meta["architecture"]["name"] == "simple_cnn2d"
    assert pkg.meta["explain"] == {**explain, "target_layer": "features.conv2"}
    assert target_layer_of(pkg, pkg.build_model()) == "features.conv2"
    pkg.verify()

    member = build_model("simple_cnn2d", **KW)
    ensemble = ensemble_around(member, member="simple_cnn2d", member_kwargs={"channels": [4, 8], "hidden": 8},
                               in_channels=1, num_classes=2)
    for named in ("features.conv2", "members.*.features.conv2"):
        assert package_explain({"target_layer": named}, ensemble, cfg)["target_layer"] == "members.*.features.conv2"
    assert package_explain({"methods": ["gradcam"]}, member, cfg) == {"methods": ["gradcam"]}  # none named


def test_train_refuses_a_heatmap_layer_the_network_lacks_before_training(tmp_path, npz, capsys):
    import yaml

    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(_config(npz, explain={"target_layer": "features.nope"})), encoding="utf-8")
    out, cat = tmp_path / "run", tmp_path / "cat"
    assert main(["train", str(cfg_path), "--out", str(out), "--package-dest", str(cat), "--progress", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "explain/target_layer 'features.nope' is not a layer" in err[0]
    assert "simple_cnn2d" in err[0] and str(cfg_path) in err[0]
    assert not out.exists() and not cat.exists()


# ------------------------------------------------------------------------------------------------ resume
def _finished_two_epoch_run(tmp_path, npz, capsys, **config):
    """A 2-epoch run trained to its end into ``tmp_path``: ``(command arguments, run folder, catalog, the run
    folder's files as bytes)``, so a test can resume it and check what changed."""
    import yaml

    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(_config(npz, **config, training={"epochs": 2, "batch_size": 16})),
                        encoding="utf-8")
    out, cat = tmp_path / "run", tmp_path / "cat"
    common = [str(cfg_path), "--out", str(out), "--package-dest", str(cat), "--progress", "none"]
    assert main(["train", *common]) == 0
    capsys.readouterr()
    return common, out, cat, {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}


def test_resume_neither_shortens_a_run_nor_packages_a_finished_one_twice(tmp_path, npz, capsys, caplog):
    """A finished run resumed with fewer epochs is refused in one line naming the folder and the epochs it
    completed; with the same epochs it is complete (its package named, exit 0, nothing written); with more it goes
    on into a new package whose provenance says so."""
    common, out, cat, files = _finished_two_epoch_run(tmp_path, npz, capsys)

    assert main(["train", *common, "--resume", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and "has completed 2 epochs" in err[0] and "--epochs 2" in err[0]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files
    assert sorted(p.name for p in (cat / "synthetic").iterdir()) == ["1.0.0"]

    with caplog.at_level("WARNING"):
        assert main(["train", *common, "--resume"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["package"] == str(cat / "synthetic" / "1.0.0") and "nothing trained" in result["complete"]
    assert f"the run in {out} is complete (2 epochs); its package is {cat / 'synthetic' / '1.0.0'}" in caplog.text
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files
    assert sorted(p.name for p in (cat / "synthetic").iterdir()) == ["1.0.0"]

    assert main(["train", *common, "--resume", "--epochs", "3"]) == 0
    longer = load_package(cat / "synthetic" / "1.0.1")
    assert longer.meta["provenance"]["config"]["training"]["epochs"] == 3
    assert "--epochs 3" in longer.meta["provenance"]["command"]
    assert len(json.loads((out / "history.json").read_text(encoding="utf-8"))["epochs"]) == 3


def test_a_terminated_training_says_so_and_resumes(tmp_path, npz):
    """SIGTERM (``kill``, ``timeout``, a job scheduler) ended ``train`` without a word; it now ends as Ctrl-C does:
    exit 130 and a line saying where the completed epochs' checkpoints are (which ``--resume`` continues from, as
    the resume tests here check), and no package."""
    import signal
    import subprocess
    import sys
    import time

    config = tmp_path / "long.yaml"
    config.write_text(json.dumps(_config(npz, training={"epochs": 400, "batch_size": 16})), encoding="utf-8")
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDDEEPRECOG_HOME": str(tmp_path / "home"),
           "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "MedDeepRecog")}
    proc = subprocess.Popen([sys.executable, "-m", "MedDeepRecogLib", "train", str(config), "--out", str(out),
                             "--package-dest", str(tmp_path / "pkgs"), "--threads", "1", "--progress", "none"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not list(out.rglob("last.pt")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None and list(out.rglob("last.pt")), "no checkpoint appeared"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "cancelled; the checkpoints of the epochs completed are kept in" in err and str(out) in err
    assert "Traceback" not in err and not (tmp_path / "pkgs").exists()


@pytest.fixture
def no_fitting(monkeypatch):
    """Fitting a network fails the test: a run refused up front must stop before it."""
    from MedDeepRecogLib.training import train

    def fit_member(*args, **kwargs):
        raise AssertionError("the run started training: it was not refused first")

    monkeypatch.setattr(train, "_fit_member", fit_member)


def _lesion_case(tmp_path: Path, lesion: np.ndarray, origin=(0.0, 0.0, 0.0)) -> dict:
    import SimpleITK as sitk

    scan = sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 200, (3, 12, 12)).astype(np.int16))
    sitk.WriteImage(scan, str(tmp_path / "scan.nrrd"))
    label = sitk.GetImageFromArray(lesion)
    label.SetOrigin(origin)
    sitk.WriteImage(label, str(tmp_path / "lesion.nrrd"))
    return {"name": "case", "scan": str(tmp_path / "scan.nrrd"), "lesion": str(tmp_path / "lesion.nrrd")}


def _square(dtype=np.uint8, value=1):
    lesion = np.zeros((3, 12, 12), dtype)
    lesion[1, 3:7, 3:7] = value
    return lesion


@pytest.mark.parametrize("case, needles", [
    ("missing_scan", ["localisation/0/scan", "not found"]),
    ("empty_lesion", ["localisation/0/lesion", "empty"]),
    ("fractional_lesion", ["localisation/0/lesion", "fractional"]),
    ("lesion_outside", ["localisation/0", "does not overlap the scan"]),
    ("negative_class", ["domain/negatives/0/class", "no images of class 99"]),
    ("negative_missing", ["domain/negatives/0/path", "not found"]),
])
def test_train_refuses_localisation_and_domain_files_before_training(tmp_path, npz, capsys, no_fitting, case,
                                                                     needles):
    """The files the localisation and domain blocks read after training are checked before it: one line naming
    the setting, exit 2, no run folder left."""
    import yaml

    cfg = _config(npz)
    if case == "missing_scan":
        cfg["localisation"] = [{**_lesion_case(tmp_path, _square()), "scan": str(tmp_path / "nosuch.nrrd")}]
    elif case == "empty_lesion":
        cfg["localisation"] = [_lesion_case(tmp_path, np.zeros((3, 12, 12), np.uint8))]
    elif case == "fractional_lesion":
        cfg["localisation"] = [_lesion_case(tmp_path, _square(np.float32, 0.5))]
    elif case == "lesion_outside":
        cfg["localisation"] = [_lesion_case(tmp_path, _square(), origin=(500.0, 500.0, 500.0))]
    else:
        negatives = tmp_path / "neg.npz"
        np.savez(negatives, val_images=np.zeros((4, 12, 12), np.uint8), val_labels=np.zeros(4, np.int64))
        cfg["domain"] = {"negatives": [{"name": "neg", "split": "val", "class": 99,
                                        "path": str(negatives if case == "negative_class" else tmp_path / "no.npz")}]}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    out = tmp_path / "runs" / "x"
    assert main(["train", str(path), "--out", str(out), "--package-dest", str(tmp_path / "cat"),
                 "--progress", "none"]) == 2
    refusal_line(capsys, *needles)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cat" / "synthetic").exists()


def test_a_val_split_the_file_lacks_is_refused_not_cut_from_the_train_split(tmp_path):
    """A typo in data/val_split named the file's own validation split nowhere: the last 20% of the train split
    was taken instead (ignoring train_groups) and called validation. Refused, naming the splits the file holds; a
    file with train_groups and no validation split is refused too (a tail cut would split patients); a file with
    a train split only, without groups, still takes the tail of each class."""
    from MedDeepRecogLib.training.data import load_train_val

    x, y = separable(40, seed=1)
    images = (x[:, 0] * 100 + 100).clip(0, 255).astype(np.uint8)
    groups = np.repeat(np.arange(20), 2).astype(str)
    cases = {"typo": dict(train_images=images, train_labels=y, val_images=images[:8], val_labels=y[:8]),
             "groups": dict(train_images=images, train_labels=y, train_groups=groups),
             "train_only": dict(train_images=images, train_labels=y)}
    for name, arrays in cases.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)
        cfg = config_from_dict(_config(path, data={"path": str(path), "kind": "slices2d", "val_split": "valid"}))
        if name == "train_only":
            data = load_train_val(cfg, path)
            assert len(data.val) == 8 and "last 20%" in data.description
            continue
        with pytest.raises(ConfigError) as err:
            load_train_val(cfg, path)
        message = str(err.value)
        assert "data/val_split 'valid'" in message and str(path) in message
        assert ("'train', 'val'" in message) if name == "typo" else ("train_groups" in message)


@pytest.mark.parametrize("section, value, needle", [
    ("augmentation", {"flip": {"prob": 0.5, "axes": [5]}}, "augmentation/flip/axes"),
    ("augmentation", {"rotate90": {"prob": 0.5, "axes": [7, 9]}}, "augmentation/rotate90/axes"),
    ("augmentation", {"rotate90": {"prob": 0.5, "axes": [1, 1]}}, "augmentation/rotate90/axes"),
    ("augmentation", {"zoom": {"prob": 0.5, "min": -1, "max": 0.5}}, "augmentation/zoom/min"),
    ("augmentation", {"gamma": {"prob": 0.5, "min": 0, "max": 1.5}}, "augmentation/gamma/min"),
    ("augmentation", {"noise": {"prob": 0.5, "std": -1}}, "augmentation/noise/std"),
    ("schedule", {"name": "cosine", "min_lr": 1.0}, "schedule/min_lr (1) is above optimizer/lr (0.003)"),
    ("schedule", {"name": "plateau", "min_lr": 0.5}, "schedule/min_lr"),
])
def test_augmentation_axes_factors_and_min_lr_are_checked_with_the_config(npz, section, value, needle):
    """Axes the images lack crashed the first batch with an IndexError; a negative zoom factor, a negative noise
    std and a min_lr above the lr trained on. Each is refused when the config is read, naming the setting."""
    with pytest.raises(ConfigError, match=re.escape(needle)):
        config_from_dict(_config(npz, **{section: value}))


def test_a_test_time_flip_over_a_flip_axis_the_images_lack_blames_the_flip_axis(npz):
    cfg = _config(npz, augmentation={"flip": {"prob": 0.5, "axes": [5]}})
    cfg["training"].update(ensemble=2, test_time_flip=[1])
    with pytest.raises(ConfigError, match="augmentation/flip/axes.*2D images.*got \\[5\\]"):
        config_from_dict(cfg)


def test_resuming_a_finished_run_whose_config_pins_its_version_names_its_package(tmp_path, npz, capsys):
    """--help: resuming a finished run with the same epochs names its package and writes nothing. A config that
    pins the version was refused instead ("version already exists": the run's own package)."""
    common, out, cat, files = _finished_two_epoch_run(tmp_path, npz, capsys, version="1.0.0")
    assert main(["train", *common, "--resume", "--epochs", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["package"] == str(cat / "synthetic" / "1.0.0") and "nothing trained" in result["complete"]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files
    assert sorted(p.name for p in (cat / "synthetic").iterdir()) == ["1.0.0"]


def test_the_card_reproduce_command_writes_into_a_scratch_folder_and_model_json_keeps_the_command_as_run():
    """brain-tumour-mri 1.3.1's and breast-us-lesion 1.5.2's cards told a reader to reproduce them with
    `--package-dest MedDeepRecog/MedDeepRecogLib/data/models`, the folder that holds that version (refused by
    check_new_version); the README says a scratch folder. The card's command now names one and says where the
    package was made; model.json's provenance keeps the command as run."""
    from MedDeepRecogLib import resources
    from MedDeepRecogLib.training.train import REPRODUCE_DEST, REPRODUCE_OUT, scratch_command, scratch_reproduce_section

    bundled = "MedDeepRecog/MedDeepRecogLib/data/models"
    ran = f"meddeeprecog train configs/b.yaml --out /tmp/runs/b --package-dest {bundled} --threads 2"
    # the run folder holds the run as the destination holds the version: train refuses both again
    assert scratch_command(ran) == (f"meddeeprecog train configs/b.yaml --out {REPRODUCE_OUT} --package-dest "
                                    f"{REPRODUCE_DEST} --threads 2", {"--out": "/tmp/runs/b", "--package-dest": bundled})
    assert scratch_command("meddeeprecog train c.yaml --package-dest=/x")[0].endswith(f"={REPRODUCE_DEST}")
    assert scratch_command("meddeeprecog train c.yaml")[0].endswith(f"--package-dest {REPRODUCE_DEST}")
    assert scratch_command("slicer_bridge.tiny_model") == ("slicer_bridge.tiny_model", None)
    card = f"# b 1.0.0\n\n## Reproduce\n```\n{ran}\n```\nseed 0.\n\n## Next\ntext\n"
    fixed = scratch_reproduce_section(card, "b")
    assert f"--package-dest {REPRODUCE_DEST} --threads 2\n```\n" in fixed
    assert f"its run in /tmp/runs/b and the package in {bundled}" in fixed
    assert fixed.endswith("```\n") is False and fixed.split("## Next")[1] == card.split("## Next")[1]
    assert scratch_reproduce_section(fixed, "b") == fixed
    calibrated = scratch_reproduce_section(fixed, "b", calibrated=True)   # calibrate: its own steps, in the section
    assert "`meddeeprecog calibrate` commands (in its calibration" in calibrated.split("## Next")[0]
    assert f"`--model {REPRODUCE_DEST}/ID/VERSION`" in calibrated   # the step before's package, not the installed one
    assert scratch_reproduce_section(calibrated, "b", calibrated=True) == calibrated
    for model_id, version in (("brain-tumour-mri", "1.3.1"), ("breast-us-lesion", "1.5.2"), ("lung-ct-cancer", "1.2.2")):
        folder = resources.BUNDLED_MODELS_DIR / model_id / version
        text = (folder / "MODEL_CARD.md").read_text(encoding="utf-8")
        reproduce = text.split("## Reproduce\n```\n")[1].split("\n```")[0]
        assert f"--out {REPRODUCE_OUT} --package-dest {REPRODUCE_DEST}" in reproduce and bundled not in reproduce
        assert f"and `--dest {REPRODUCE_DEST}` in place" in text.split("## Reproduce")[1].split("\n## ")[0]
        meta = json.loads((folder / "model.json").read_text(encoding="utf-8"))
        assert f"--package-dest {bundled}" in meta["provenance"]["command"] or "calibrate" in \
            meta["provenance"]["command"]
