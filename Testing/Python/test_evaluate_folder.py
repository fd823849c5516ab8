"""A model trained on a folder of images + labels.csv is scored on that folder: ``evaluate``, ``robustness --data``
and ``calibrate --data`` read it as ``train`` read it (the one folder reader, the package's input spec, the CSV's
split column or train's tail rule, the package's class names)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from MedDeepRecogLib.cli import main
from MedDeepRecogLib.packages import load_package

from conftest import refusal_line
from test_training import _config, separable


def _folder(folder: Path, n: int = 24, split: bool = False, label_of=None) -> Path:
    """``n`` separable 12x12 PNGs with labels.csv (``file,label`` and, with ``split``, a split column)."""
    import SimpleITK as sitk

    x, y = separable(n, seed=5)
    folder.mkdir()
    rows = ["file,label" + (",split" if split else "")]
    for i, (img, label) in enumerate(zip(x, y)):
        name = f"img{i:02d}.png"
        sitk.WriteImage(sitk.GetImageFromArray((img[0] * 100 + 100).clip(0, 255).astype(np.uint8)), str(folder / name))
        text = (label_of or (lambda k: "right" if k else "left"))(int(label))
        rows.append(f"{name},{text}" + (f",{'val' if i % 3 == 0 else 'train'}" if split else ""))
    (folder / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def _train(tmp_path: Path, folder: Path, capsys) -> Path:
    cfg = _config(folder, data={"path": str(folder), "kind": "slices2d", "val_fraction": 0.25,
                                "intensity_range": [0, 255]})
    cfg["training"]["epochs"] = 1
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert main(["train", str(cfg_path), "--out", str(tmp_path / "run"), "--package-dest", str(tmp_path / "cat"),
                 "--progress", "none"]) == 0
    capsys.readouterr()
    return tmp_path / "cat" / "synthetic" / "1.0.0"


def _evaluate(pkg: Path, data: Path, split: str, capsys) -> dict:
    assert main(["evaluate", "--model", str(pkg), "--data", str(data), "--split", split]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def trained(tmp_path, capsys):
    folder = _folder(tmp_path / "imgs")
    return _train(tmp_path, folder, capsys), folder


def test_evaluate_a_folder_reproduces_the_packages_val_figures(trained, capsys):
    pkg_path, folder = trained
    meta = load_package(pkg_path).meta
    res = _evaluate(pkg_path, folder, "val", capsys)
    assert res["n"] == 6 == sum(map(sum, meta["metrics"]["confusion_matrix"]))   # last 25 % of each class
    assert res["confusion_matrix"] == meta["metrics"]["confusion_matrix"]
    assert res["accuracy"] == pytest.approx(meta["metrics"]["accuracy"])
    assert _evaluate(pkg_path, folder, "train", capsys)["n"] == 18
    assert _evaluate(pkg_path, folder / "labels.csv", "all", capsys)["n"] == 24   # the CSV itself names the folder


def test_evaluate_a_folder_warns_on_the_training_split_and_refuses_unknown_splits(trained, capsys):
    pkg_path, folder = trained
    res = _evaluate(pkg_path, folder, "train", capsys)
    assert "trained on" in res["warning"]
    assert main(["evaluate", "--model", str(pkg_path), "--data", str(folder), "--split", "test"]) == 2
    line = refusal_line(capsys)
    assert "labels.csv" in line and "no split column" in line and "'val'" in line and "'all'" in line


def test_a_folders_split_column_picks_the_split(tmp_path, trained, capsys):
    pkg_path, _ = trained
    other = _folder(tmp_path / "split", split=True)
    assert _evaluate(pkg_path, other, "val", capsys)["n"] == 8
    assert _evaluate(pkg_path, other, "train", capsys)["n"] == 16
    assert main(["evaluate", "--model", str(pkg_path), "--data", str(other), "--split", "test"]) == 2
    line = refusal_line(capsys)
    assert "labels.csv" in line and "no split 'test'" in line and "'train'" in line


def test_a_label_the_package_does_not_know_is_refused_by_name(tmp_path, trained, capsys):
    pkg_path, _ = trained
    other = _folder(tmp_path / "renamed", label_of=lambda k: "up" if k else "left")
    assert main(["evaluate", "--model", str(pkg_path), "--data", str(other), "--split", "all"]) == 2
    line = refusal_line(capsys)
    assert "labels.csv" in line and "'up'" in line and "left" in line and "right" in line


def test_robustness_and_calibrate_take_the_folder(tmp_path, trained, capsys):
    pkg_path, folder = trained
    out = tmp_path / "rob"
    assert main(["robustness", "--model", str(pkg_path), "--data", str(folder), "--split", "val", "--out", str(out),
                 "--attack", "fgsm", "--eps", "0.01"]) == 0
    capsys.readouterr()
    reports = list(out.glob("*.json"))
    assert reports and json.loads(reports[0].read_text(encoding="utf-8"))["split"] == "val"
    big = _folder(tmp_path / "many", n=48, split=True)   # 16 val images: calibrate needs >= 10
    assert main(["calibrate", "--model", str(pkg_path), "--data", str(big), "--split", "val",
                 "--dest", str(tmp_path / "cal"), "--progress", "none"]) == 0
    capsys.readouterr()
    assert load_package(tmp_path / "cal" / "synthetic" / "1.0.1").meta["calibration"]["temperature"] > 0


def test_calibrate_reads_the_labels_csv_columns_train_reads(tmp_path, trained, capsys):
    pkg_path, _ = trained
    scans = _folder(tmp_path / "scans", n=12)   # file,label: train's labels.csv, every row a scan
    assert main(["calibrate", "--model", str(pkg_path), "--data", str(scans / "labels.csv"),
                 "--dest", str(tmp_path / "cal"), "--progress", "none"]) == 0
    capsys.readouterr()
    assert (tmp_path / "cal" / "synthetic" / "1.0.1" / "model.json").is_file()
    bad = tmp_path / "bad.csv"
    bad.write_text("name,label\nimg00.png,left\n", encoding="utf-8")
    assert main(["calibrate", "--model", str(pkg_path), "--data", str(bad), "--progress", "none"]) == 2
    line = refusal_line(capsys)
    assert "bad.csv" in line and "file" in line and "path" in line and "label" in line


def test_train_val_data_says_whether_the_data_names_its_split(tmp_path):
    """``TrainValData.split_in_data`` (what ``pretrain`` records for a pool source, and how ``train`` tells a pool
    drawn from its own val split): a labels CSV's split column names the split, a tail cut by ``val_fraction`` does
    not."""
    from MedDeepRecogLib.training.config import config_from_dict
    from MedDeepRecogLib.training.data import load_train_val

    for split in (True, False):
        folder = _folder(tmp_path / f"split{split}", split=split)
        cfg = config_from_dict(_config(folder, data={"path": str(folder), "kind": "slices2d", "val_fraction": 0.25,
                                                     "intensity_range": [0, 255]}))
        assert load_train_val(cfg, folder).split_in_data is split
