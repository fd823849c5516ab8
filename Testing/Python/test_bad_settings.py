"""Settings and files outside what a command can use are refused in one line naming them (exit 2), before any
training, attack or allocation, and leave nothing behind: config values (NaN augmentation, an overflowing learning
rate, min above max), option bounds, labels that do not fit the model, unusable manifests and package names,
damaged checkpoints, and preprocessing sizes beyond the image limit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import yaml

from MedDeepRecogLib.cli import main
from tiny_test_package import make_tiny_package


def _one_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err and "unexpected" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _run(*argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as stop:   # argparse: a bound checked when the command line is read
        return int(stop.code)


@pytest.fixture
def train_config(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", images=(rng.random((40, 16, 16)) * 255).astype(np.uint8),
             labels=(np.arange(40) % 2)[:, None])
    cfg = {"id": "tiny", "seed": 0, "data": {"path": str(tmp_path / "data.npz"), "kind": "slices2d",
                                             "class_names": ["a", "b"], "size": [16, 16]},
           "model": {"name": "simple_cnn2d", "kwargs": {"channels": [4, 8], "hidden": 8}},
           "training": {"epochs": 1, "batch_size": 8}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


@pytest.mark.parametrize("section, value, needle", [
    ("augmentation", {"noise": {"prob": 0.5, "std": float("nan")}}, "augmentation/noise/std"),
    ("augmentation", {"zoom": {"prob": 0.5, "min": 2.0, "max": 0.5}}, "min (2.0) is above max (0.5)"),
    ("optimizer", {"name": "adamw", "lr": 1e300}, "optimizer/lr"),
    ("schedule", {"name": "cosine", "warmup_epochs": 10 ** 9}, "schedule/warmup_epochs"),
    ("schedule", {"name": "cosine", "min_lr": 1e300}, "schedule/min_lr"),
    ("schedule", {"name": "cosine", "min_lr": True}, "schedule/min_lr"),
])
def test_a_config_value_training_cannot_use_is_refused_before_training(tmp_path, capsys, train_config, section,
                                                                       value, needle):
    cfg = yaml.safe_load(train_config.read_text(encoding="utf-8"))
    cfg[section] = value
    train_config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    out = tmp_path / "run"
    assert _run("train", train_config, "--out", out, "--package-dest", tmp_path / "cat", "--progress", "none") == 2
    _one_line(capsys, needle)
    assert not out.exists() and not (tmp_path / "cat").exists()


def test_data_size_beyond_the_memory_bound_is_refused_before_the_images_are_resized(tmp_path, capsys, train_config):
    """``data/size`` 512^3 for a 3D set asked the allocator for the whole set as float32 (AdrenalMNIST3D: 594 GiB)
    and failed with its own message; the declared size is refused in one line naming the config and the setting,
    before any image is resized (40 tiny volumes here: 20 GiB at 512^3, against the 16 GiB default)."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "vol.npz", images=(rng.random((40, 8, 8, 8)) * 255).astype(np.uint8),
             labels=(np.arange(40) % 2)[:, None])
    cfg = yaml.safe_load(train_config.read_text(encoding="utf-8"))
    cfg["data"].update(path=str(tmp_path / "vol.npz"), kind="volume3d", size=[512, 512, 512])
    cfg["model"] = {"name": "simple_cnn3d", "kwargs": {"channels": [4, 8], "hidden": 8}}
    train_config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    out = tmp_path / "run"
    assert _run("train", train_config, "--out", out, "--package-dest", tmp_path / "cat", "--progress", "none") == 2
    _one_line(capsys, "cfg.yaml: data/size [512, 512, 512]", "40 train and val images of 1 x 512 x 512 x 512 voxels",
              "20.0 GiB", "limit of 16.0 GiB", "MEDDEEPRECOG_MAX_DATASET_BYTES")
    assert not out.exists() and not (tmp_path / "cat").exists()


@pytest.mark.parametrize("variable, value, needles", [
    ("MEDDEEPRECOG_MAX_DATASET_BYTES", "20K", ["cfg.yaml: data/size [16, 16]", "40 train and val images",
                                               "1 x 16 x 16 voxels", "40.0 KiB", "limit of 20.0 KiB"]),
    ("MEDDEEPRECOG_MAX_BATCH_BYTES", "64K", ["cfg.yaml: training/batch_size 8", "input [1, 16, 16]",
                                             "'simple_cnn2d'", "a sample", "limit of 64.0 KiB"]),
], ids=["data", "batch"])
def test_training_memory_is_bounded_by_settings_a_machine_can_lower(tmp_path, capsys, monkeypatch, train_config,
                                                                   variable, value, needles):
    """The images a run keeps and one step's batch (inputs and activations) each have a bound, lowered here to
    what the tiny config needs: refused in one line naming the setting and the variable, nothing written."""
    monkeypatch.setenv(variable, value)
    out = tmp_path / "run"
    assert _run("train", train_config, "--out", out, "--package-dest", tmp_path / "cat", "--progress", "none") == 2
    _one_line(capsys, *needles, variable)
    assert not out.exists() and not (tmp_path / "cat").exists()


def test_a_damaged_checkpoint_is_named_as_not_a_checkpoint(tmp_path, capsys, train_config):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.pt").write_bytes(b"\x00" * 64)
    assert _run("train", train_config, "--out", out, "--package-dest", tmp_path / "cat", "--resume",
                "--progress", "none") == 2
    _one_line(capsys, "last.pt", "cannot resume from this checkpoint (not a training checkpoint")


@pytest.fixture(scope="module")
def tiny_pkg(tmp_path_factory) -> Path:
    return make_tiny_package(tmp_path_factory.mktemp("pkg"))


def _labelled(path: Path, labels) -> Path:
    rng = np.random.default_rng(1)
    labels = np.asarray(labels)
    np.savez(path, val_images=(rng.random((len(labels), 64, 64)) * 255).astype(np.uint8), val_labels=labels)
    return path


def test_robustness_refuses_labels_outside_the_model_and_keeps_an_earlier_report(tmp_path, capsys, tiny_pkg):
    bad = _labelled(tmp_path / "bad.npz", [0, 1, 5, 2] * 3)
    assert _run("robustness", "--model", tiny_pkg, "--data", bad, "--split", "val", "--out", tmp_path / "o",
                "--eps", "0.01", "--attack", "fgsm") == 2
    _one_line(capsys, "bad.npz", "labels range 0..5")
    good = _labelled(tmp_path / "good.npz", [0, 1, 2] * 4)
    out = tmp_path / "out"
    out.mkdir()
    (out / "robustness.json").write_text("an earlier report")
    assert _run("robustness", "--model", tiny_pkg, "--data", good, "--split", "val", "--out", out, "--eps", "0.01",
                "--attack", "fgsm", "--progress", "none") == 0
    capsys.readouterr()
    assert (out / "robustness.json").read_text() == "an earlier report" and (out / "robustness-2.json").exists()


@pytest.mark.parametrize("argv, needle", [
    (["--steps", "1000000000"], "--steps"), (["--refine", "1000000000"], "--refine"),
    (["--max-cases", "0"], "--max-cases"), (["--batch-size", "0"], "--batch-size"),
    (["--eps", "0.1,,0.2"], "empty item"),
])
def test_robustness_bounds_its_options_before_attacking(tmp_path, capsys, tiny_pkg, argv, needle):
    data = _labelled(tmp_path / "d.npz", [0, 1, 2] * 4)
    assert _run("robustness", "--model", tiny_pkg, "--data", data, "--split", "val", "--out", tmp_path / "o",
                "--attack", "fgsm", *(["--eps", "0.01"] if "--eps" not in argv else []), *argv) == 2
    _one_line(capsys, needle)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("case, needle", [("one_class", "at least two classes"), ("bins", "--bins")])
def test_calibrate_refuses_what_it_cannot_fit(tmp_path, capsys, tiny_pkg, case, needle):
    data = _labelled(tmp_path / "d.npz", [0] * 12 if case == "one_class" else [0, 1, 2] * 4)
    extra = ["--bins", "1000000000"] if case == "bins" else []
    assert _run("calibrate", "--model", tiny_pkg, "--data", data, "--split", "val", "--dest", tmp_path / "cat",
                "--progress", "none", *extra) == 2
    _one_line(capsys, needle)
    assert not (tmp_path / "cat").exists()


@pytest.mark.parametrize("layout", ["val_split", "whole_file"])
@pytest.mark.parametrize("command", ["evaluate", "calibrate", "robustness"])
def test_scored_data_are_bounded_as_training_data_before_any_image_is_read(tmp_path, capsys, monkeypatch, tiny_pkg,
                                                                           command, layout):
    """``evaluate``, ``calibrate`` and ``robustness --data`` resize a split to the model's input as float32, which
    ``train``'s data-set bound (MEDDEEPRECOG_MAX_DATASET_BYTES) did not cover: lowered here, the split is refused in
    one line naming the file, the split, the images and the variable, before any image is decompressed. A whole
    file's ``val`` counts the share training holds out (3 of each 13-14 images a class here), not the whole file."""
    from MedDeepRecogLib.training import data as training_data

    read = training_data.npz_array

    def no_images(z, key, path):
        assert not key.endswith("images"), f"{key} was decompressed before the bound was checked"
        return read(z, key, path)

    monkeypatch.setattr(training_data, "npz_array", no_images)
    monkeypatch.setenv("MEDDEEPRECOG_MAX_DATASET_BYTES", "20K")
    if layout == "val_split":
        data, count = _labelled(tmp_path / "d.npz", [0, 1, 2] * 4), "12 images"
    else:
        rng = np.random.default_rng(1)
        np.savez(tmp_path / "d.npz", images=(rng.random((40, 64, 64)) * 255).astype(np.uint8),
                 labels=np.arange(40) % 3)
        data, count = tmp_path / "d.npz", "9 images"
    out = tmp_path / "o"
    argv = {"evaluate": ["--out", out],
            "calibrate": ["--dest", out, "--progress", "none"],
            "robustness": ["--out", out, "--eps", "0.01", "--attack", "fgsm", "--progress", "none"]}[command]
    assert _run(command, "--model", tiny_pkg, "--data", data, "--split", "val", *argv) == 2
    _one_line(capsys, f"{data}: split 'val': {count} of 1 x 32 x 32 voxels as float32",
              f"{int(count.split()[0]) * 4}.0 KiB", "more than the limit of 20.0 KiB", "MEDDEEPRECOG_MAX_DATASET_BYTES")
    assert not out.exists()


@pytest.mark.parametrize("rules, needle", [
    ({"min_agreement": 5}, "min_agreement"),
    ({"min_agreement": True}, "min_agreement: expected a number, not true/false"),
    ({"min_section_mm": -1}, "min_section_mm"),
    ({"volume_excluded_classes": "CXR"}, "volume_excluded_classes: expected a list"),
    ({"class_modality": {"c0": "PET"}}, "class_modality/c0"),
    ({"volume_excluded_classes": ["CXR"]}, "class 'CXR', which the model does not have"),
    ({"min_agreeement": 0.5}, "unknown decision rule 'min_agreeement'"),
    ({"min_probability": 0.5}, "min_probability is chosen on the data"),
])
def test_calibrate_refuses_decision_rules_it_cannot_apply_naming_the_rules_file(tmp_path, capsys, tiny_pkg, rules,
                                                                                 needle):
    data = _labelled(tmp_path / "d.npz", [0, 1, 2] * 4)
    rules_file = tmp_path / "rules.json"
    rules_file.write_text(json.dumps(rules))
    assert _run("calibrate", "--model", tiny_pkg, "--data", data, "--split", "val", "--dest", tmp_path / "cat",
                "--progress", "none", "--decision-rules", rules_file) == 2
    line = _one_line(capsys, needle)
    assert line.startswith(f"{rules_file}: ") or f": {rules_file}: " in line, line
    assert not (tmp_path / "cat").exists()


@pytest.mark.parametrize("ref", ["brain-tumour-mri@", "brain-tumour-mri@1.3.0@x"])
def test_a_model_name_that_is_not_id_or_id_at_version_is_refused(tmp_path, capsys, ref):
    data = _labelled(tmp_path / "d.npz", [0, 1, 2] * 4)
    assert _run("evaluate", "--model", ref, "--data", data, "--split", "val") == 2
    _one_line(capsys, "not ID or ID@VERSION")


def test_preprocess_bounds_output_sizes_and_filter_windows_before_allocating(tmp_path, capsys):
    src = tmp_path / "scan.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).random((8, 16, 16)).astype(np.float32)), str(src))
    for name, step, needle in (("crop", {"name": "crop_pad", "size": [100000] * 3}, "crop_pad's output"),
                               ("resample", {"name": "resample", "size": [100000] * 3}, "resample's output"),
                               ("bilateral", {"name": "bilateral", "sigma_spatial_mm": 1e9}, "above the maximum")):
        pipeline = tmp_path / f"{name}.json"
        pipeline.write_text(json.dumps({"steps": [step]}))
        assert _run("preprocess", src, tmp_path / f"{name}.nrrd", "--pipeline", pipeline) == 2
        _one_line(capsys, needle)
        assert not (tmp_path / f"{name}.nrrd").exists()


@pytest.mark.parametrize("case, needle", [("id", "--id '../x' must be a plain name"), ("dest", "--dest"),
                                          ("manifest", "entry 1 must be a mapping")])
def test_finetune_checks_its_names_folders_and_manifest_before_training(tmp_path, capsys, case, needle):
    from finetune_helpers import synthetic_dataset

    data = synthetic_dataset(tmp_path / "data", n=2)
    argv = ["finetune", "--base", "none", "--task", "segment", "--data", data / "manifest.json", "--epochs", "1",
            "--work-dir", tmp_path / "wd", "--progress", "none", "--threads", "1"]
    if case == "id":
        argv += ["--id", "../x", "--dest", tmp_path / "cat"]
    elif case == "dest":
        (tmp_path / "cat").write_text("a file where the catalog should be")
        argv += ["--dest", tmp_path / "cat"]
    else:
        (data / "manifest.json").write_text(json.dumps([1, 2]))
        argv += ["--dest", tmp_path / "cat"]
    assert _run(*argv) == 2
    _one_line(capsys, needle)
    assert not (tmp_path / "wd").exists() or not any((tmp_path / "wd").iterdir())


def test_resume_without_a_checkpoint_says_the_run_starts_afresh(tmp_path, caplog, train_config):
    out = tmp_path / "run"
    with caplog.at_level("WARNING"):
        assert _run("train", train_config, "--out", out, "--package-dest", tmp_path / "cat", "--resume",
                    "--progress", "none") == 0
    assert "holds no checkpoint; the run starts from its first epoch" in caplog.text


def test_resume_refuses_a_run_folder_of_other_settings_and_continues_its_own(tmp_path, capsys, train_config):
    """A run folder records the settings that decide its weights; --resume with another seed or learning rate (or
    other data) is refused in one line naming what differs, and nothing of the folder changes; the run's own
    config still resumes it (and the path the data file is named by does not matter, its content does)."""
    out, cat = tmp_path / "run", tmp_path / "cat"
    assert _run("train", train_config, "--out", out, "--package-dest", cat, "--progress", "none") == 0
    capsys.readouterr()
    record = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert record["settings"]["seed"] == 0 and record["data_sha256"] and "path" not in record["settings"]["data"]
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    cfg = yaml.safe_load(train_config.read_text(encoding="utf-8"))
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**cfg, "seed": 7, "optimizer": {"name": "adamw", "lr": 0.05}}), encoding="utf-8")
    assert _run("train", other, "--out", out, "--package-dest", cat, "--resume", "--progress", "none") == 2
    _one_line(capsys, "run", "--resume: the run in this folder had other settings", "seed: 0 -> 7",
              "optimizer/lr: 0.001 -> 0.05")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files

    moved = tmp_path / "moved.npz"
    moved.write_bytes(Path(cfg["data"]["path"]).read_bytes())
    same = tmp_path / "same.yaml"
    same.write_text(yaml.safe_dump({**cfg, "data": {**cfg["data"], "path": str(moved)}}), encoding="utf-8")
    assert _run("train", same, "--out", out, "--package-dest", cat, "--resume", "--progress", "none") == 0


def test_a_warm_up_as_long_as_the_run_is_named_in_a_warning(tmp_path, caplog, train_config):
    cfg = yaml.safe_load(train_config.read_text(encoding="utf-8"))
    cfg["schedule"] = {"name": "cosine", "warmup_epochs": 5}
    cfg["training"]["epochs"] = 2
    train_config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    with caplog.at_level("WARNING"):
        assert _run("train", train_config, "--out", tmp_path / "run", "--package-dest", tmp_path / "cat",
                    "--progress", "none") == 0
    assert "never leaves its warm-up ramp" in caplog.text


def _sorted_npz(path: Path, **extra) -> Path:
    """40 train images sorted by class (20 of a, then 20 of b), 12 val images of both; ``extra`` arrays added."""
    rng = np.random.default_rng(2)
    arrays = {"train_images": (rng.random((40, 16, 16)) * 255).astype(np.uint8),
              "train_labels": np.repeat([0, 1], 20), "val_images": (rng.random((12, 16, 16)) * 255).astype(np.uint8),
              "val_labels": np.tile([0, 1], 6)}
    np.savez(path, **{**arrays, **extra})
    return path


@pytest.mark.parametrize("extra, needle", [
    ({"val_labels": np.tile([0, 1, 5], 4)}, "val labels go up to 5 but the train labels only to 1"),
    ({"train_groups": np.arange(39)}, "train_groups holds 39 groups for 40 train images"),
    ({"train_groups": np.linspace(0, 1, 40)}, "train_groups must be integers or strings"),
])
def test_training_data_that_would_train_a_wrong_model_is_refused_naming_the_array(tmp_path, capsys, train_config,
                                                                                   extra, needle):
    cfg = yaml.safe_load(train_config.read_text(encoding="utf-8"))
    cfg["data"]["path"] = str(_sorted_npz(tmp_path / "sorted.npz", **extra))
    del cfg["data"]["class_names"]
    train_config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert _run("train", train_config, "--out", tmp_path / "run", "--package-dest", tmp_path / "cat",
                "--progress", "none") == 2
    _one_line(capsys, "sorted.npz", needle)
    assert not (tmp_path / "run").exists() and not (tmp_path / "cat").exists()


def test_max_train_keeps_every_class_of_a_file_sorted_by_class(tmp_path):
    """The first N cases of a file sorted by class would all be one class: max_train keeps each class's share."""
    from MedDeepRecogLib.training.config import TrainConfig
    from MedDeepRecogLib.training.data import load_train_val

    path = _sorted_npz(tmp_path / "sorted.npz")
    cfg = TrainConfig(id="t")
    cfg.data.path, cfg.data.kind, cfg.data.max_train = str(path), "slices2d", 10
    data = load_train_val(cfg, path)
    assert np.bincount(data.train.labels).tolist() == [5, 5]


@pytest.mark.parametrize("mode, argv, needle", [
    ("input", ["--split", "val"], "--split does nothing with --input"),
    ("input", ["--batch-size", "8"], "--batch-size does nothing with --input"),
    ("data", ["--refine", "3"], "--refine does nothing with --data"),
    ("data", ["--refine", "0"], "--refine does nothing with --data"),
    ("input", ["--epochs", "0"], "--epochs does nothing with --input"),
    ("data", ["--write-perturbation"], "--write-perturbation does nothing with --data"),
    ("train", ["--eps", "0.1"], "--eps does nothing with --train-config"),
    ("train", ["--model", "x"], "--model does nothing with --train-config"),
    ("data", ["--attack", "fgsm", "--steps", "3"], "FGSM is one step"),
])
def test_robustness_refuses_an_option_its_mode_would_ignore(tmp_path, capsys, tiny_pkg, mode, argv, needle):
    """Each mode reads its own options; one the mode would silently ignore is refused by name before anything is
    read or attacked, and the same option is accepted in the mode that reads it."""
    data = _labelled(tmp_path / "d.npz", [0, 1, 2] * 4)
    source = {"input": ["--input", tmp_path / "missing.nrrd"], "data": ["--data", data],
              "train": ["--train-config", tmp_path / "missing.yaml"]}[mode]
    model = [] if mode == "train" else ["--model", tiny_pkg]
    assert _run("robustness", *model, *source, "--out", tmp_path / "o", "--progress", "none", *argv) == 2
    _one_line(capsys, needle)
    assert not (tmp_path / "o").exists()
    if argv[0] == "--batch-size":  # read by --data
        assert _run("robustness", "--model", tiny_pkg, "--data", data, "--out", tmp_path / "o", "--eps", "0.01",
                    "--attack", "fgsm", "--progress", "none", *argv) == 0
        capsys.readouterr()
        assert json.loads((tmp_path / "o" / "robustness.json").read_text())["n"] == 12
