"""Metrics against hand-checked cases; ``meddeeprecog evaluate`` on a small package and .npz."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from MedDeepRecogLib.cli import main
from MedDeepRecogLib.models import build_model
from MedDeepRecogLib.packages import save_package
from MedDeepRecogLib.training.metrics import (balanced_accuracy, classification_metrics, confusion_matrix,
                                              roc_auc_binary, roc_auc_ovr, roc_curve, youden_threshold)


def test_auc_hand_checked():
    # pairs (pos, neg): (0.35 > 0.1) (0.35 < 0.4) (0.8 > 0.1) (0.8 > 0.4) -> 3/4
    assert roc_auc_binary([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # a tie between a positive and a negative counts one half: (0.5 = 0.5) -> 0.5, (0.9 > 0.5) -> 1 => 0.75
    assert roc_auc_binary([0, 1, 1], [0.5, 0.5, 0.9]) == pytest.approx(0.75)
    assert roc_auc_binary([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1]) == 1.0
    assert np.isnan(roc_auc_binary([1, 1], [0.2, 0.3]))


def test_roc_curve_and_youden():
    fpr, tpr, thr = roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert np.trapezoid(tpr, fpr) == pytest.approx(0.75)
    assert youden_threshold([0, 0, 1, 1], [0.1, 0.2, 0.7, 0.9]) == pytest.approx(0.7)


def test_confusion_and_balanced_accuracy():
    y = np.array([0, 0, 0, 0, 1, 1, 2])
    p = np.array([0, 0, 0, 1, 1, 0, 2])
    cm = confusion_matrix(y, p, 3)
    assert cm.tolist() == [[3, 1, 0], [1, 1, 0], [0, 0, 1]]
    assert balanced_accuracy(y, p, 3) == pytest.approx((3 / 4 + 1 / 2 + 1) / 3)


def test_classification_metrics_multiclass():
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    y = np.array([0, 1, 2, 1])
    m = classification_metrics(y, probs, ["a", "b", "c"])
    assert m["accuracy"] == 0.75 and m["confusion_matrix"] == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    # precision a = 1/2, b = 1, c = 1; recall a = 1, b = 1/2, c = 1
    assert m["precision"] == pytest.approx((0.5 + 1 + 1) / 3, abs=1e-6)
    assert m["balanced_accuracy"] == pytest.approx((1 + 0.5 + 1) / 3, abs=1e-6)
    assert m["per_class"]["b"]["f1"] == pytest.approx(2 * 1 * 0.5 / 1.5, abs=1e-6)
    macro, per = roc_auc_ovr(y, probs)
    # class a vs rest: pos 0.8; negs 0.2, 0.1, 0.6 -> 1.0; class c: pos 0.7 vs 0.1, 0.1, 0.1 -> 1.0
    # class b: pos 0.7, 0.3 vs negs 0.1, 0.2 -> 1.0
    assert per.tolist() == [1.0, 1.0, 1.0] and macro == 1.0 == m["auc"]


@pytest.fixture
def package_and_data(tmp_path):
    rng = np.random.default_rng(0)
    n = 40
    y = np.arange(n) % 2
    x = rng.integers(0, 40, size=(n, 12, 12)).astype(np.uint8)
    x[y == 1, 2:6, 2:6] = 250
    npz = tmp_path / "d.npz"
    np.savez(npz, test_images=x, test_labels=y[:, None], val_images=x[:10], val_labels=y[:10, None])
    torch.manual_seed(0)
    model = build_model("simple_cnn2d", in_channels=1, num_classes=2, channels=[4, 8], hidden=8)
    meta = {"id": "evaltoy", "version": "1.0.0", "architecture": {"name": "simple_cnn2d", "kwargs": {
        "in_channels": 1, "num_classes": 2, "channels": [4, 8], "hidden": 8}}, "class_names": ["no", "yes"],
        "input": {"kind": "slices2d", "size": [12, 12], "channels": 1,
                  "pipeline": {"steps": [{"name": "window", "center": 127.5, "width": 255.0, "output": "unit"}]}}}
    return save_package(model, meta, tmp_path / "cat"), npz


def test_evaluate_cli_writes_metrics_and_figures(tmp_path, package_and_data, capsys):
    pkg, npz = package_and_data
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(pkg), "--data", str(npz), "--out", str(out)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["split"] == "test" and res["n"] == 40 and res["model"]["id"] == "evaltoy"
    assert sum(map(sum, res["confusion_matrix"])) == 40
    assert 0.0 <= res["auc"] <= 1.0 and set(res) >= {"accuracy", "balanced_accuracy", "precision", "recall", "f1"}
    for name in ("roc.png", "confusion_matrix.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8"))["n"] == 40
    assert main(["evaluate", "--model", str(pkg), "--data", str(npz), "--split", "val"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 10


def test_evaluate_cuts_a_file_of_images_and_labels_as_the_package_was_trained(tmp_path, capsys):
    """'val' of a file with only images/labels is the last data/val_fraction of each class that the package's
    training held out (here 0.5), not a fixed 20 %."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 20)
    x = rng.integers(0, 255, size=(40, 12, 12)).astype(np.uint8)
    npz = tmp_path / "whole.npz"
    np.savez(npz, images=x, labels=y[:, None])
    model = build_model("simple_cnn2d", in_channels=1, num_classes=2, channels=[4, 8], hidden=8)
    meta = {"id": "halftoy", "version": "1.0.0", "architecture": {"name": "simple_cnn2d", "kwargs": {
        "in_channels": 1, "num_classes": 2, "channels": [4, 8], "hidden": 8}}, "class_names": ["no", "yes"],
        "input": {"kind": "slices2d", "size": [12, 12], "channels": 1},
        "provenance": {"config": {"data": {"val_fraction": 0.5}}}}
    pkg = save_package(model, meta, tmp_path / "cat")
    for split, n in (("val", 20), ("train", 20), ("all", 40)):
        assert main(["evaluate", "--model", str(pkg), "--data", str(npz), "--split", split]) == 0
        assert json.loads(capsys.readouterr().out)["n"] == n


def test_scoring_refuses_other_classes_and_models_that_do_not_classify_images(tmp_path, package_and_data, capsys):
    """A file whose stored class_names are not the model's, or a segmentation model, is refused in one line by each
    command that scores labelled images (it printed accuracy 0.0, or a PyTorch target-size error)."""
    from conftest import refusal_line

    pkg, npz = package_and_data
    other = tmp_path / "other.npz"
    with np.load(npz) as z:
        np.savez(other, **{k: z[k] for k in z.files}, class_names=np.array(["cat", "dog"]))
    named = tmp_path / "named.npz"
    with np.load(npz) as z:
        np.savez(named, **{k: z[k] for k in z.files}, class_names=np.array(["no", "yes"]))
    assert main(["evaluate", "--model", str(pkg), "--data", str(named)]) == 0
    capsys.readouterr()
    commands = (["evaluate"], ["calibrate", "--dest", str(tmp_path / "cat2")],
                ["robustness", "--out", str(tmp_path / "rob"), "--split", "test"])
    for command in commands:
        assert main([*command, "--model", str(pkg), "--data", str(other)]) == 2
        refusal_line(capsys, str(other), "class_names ['cat', 'dog'] are not the classes of evaltoy@1.0.0")
        assert main([*command, "--model", "ts-organs-seg", "--data", str(named)]) == 2
        refusal_line(capsys, "ts-organs-seg@1.0.0 is a segmentation model")
    assert not (tmp_path / "cat2").exists() and not (tmp_path / "rob").exists()


def test_scoring_refuses_a_npz_for_a_package_whose_pipeline_steps_the_arrays_skip(tmp_path, package_and_data, capsys):
    """A package whose ``input.pipeline`` declares steps (a folder-trained one: training refuses them on a .npz) is
    not scored on a .npz, whose arrays would skip them (evaluate, calibrate and robustness --data prepared them with
    the window and resize only): one line naming the file and the steps, exit 2. An empty pipeline asks for no
    step and is scored as before."""
    from conftest import refusal_line
    from MedDeepRecogLib.packages import load_package

    base, npz = package_and_data
    meta = load_package(base).meta
    steps = [{"name": "resample", "spacing": [0.5, 0.5]}, {"name": "window", "center": 127.5, "width": 255.0}]
    model = build_model("simple_cnn2d", in_channels=1, num_classes=2, channels=[4, 8], hidden=8)
    stepped = save_package(model, {**meta, "id": "steptoy", "input": {**meta["input"], "pipeline": {"steps": steps}}},
                           tmp_path / "cat3")
    commands = (["evaluate"], ["calibrate", "--dest", str(tmp_path / "cat2")],
                ["robustness", "--out", str(tmp_path / "rob"), "--split", "test"])
    for command in commands:
        assert main([*command, "--model", str(stepped), "--data", str(npz)]) == 2
        refusal_line(capsys, str(npz), "input/pipeline steps (resample, window) run on every scan at classify time",
                     "the .npz arrays carry no voxel geometry", "steptoy@1.0.0")
    assert not (tmp_path / "cat2").exists() and not (tmp_path / "rob").exists()
    empty = save_package(model, {**meta, "id": "emptytoy", "input": {**meta["input"], "pipeline": {"steps": []}}},
                         tmp_path / "cat4")
    assert main(["evaluate", "--model", str(empty), "--data", str(npz)]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 40


def test_evaluate_errors_are_one_line(tmp_path, package_and_data, capsys):
    pkg, npz = package_and_data
    assert main(["evaluate", "--model", str(pkg), "--data", str(npz), "--split", "nope"]) == 2
    assert "no split 'nope'" in capsys.readouterr().err
    rgb = tmp_path / "rgb.npz"
    rng = np.random.default_rng(0)
    np.savez(rgb, test_images=rng.integers(0, 255, (4, 12, 12, 3), np.uint8), test_labels=np.zeros((4, 1)))
    assert main(["evaluate", "--model", str(pkg), "--data", str(rgb)]) == 2
    assert "expects 1 channel" in capsys.readouterr().err


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize("case, needle", [
    ("no_labels", "no test_labels"), ("empty", "holds no images"), ("objects", "Python objects"),
    ("text", "not a NumPy .npz archive"), ("npy", "single NumPy array"), ("blank", "every image is blank"),
])
def test_evaluate_refuses_unusable_data_in_one_line_naming_the_file(tmp_path, package_and_data, capsys, case,
                                                                   needle):
    pkg, _ = package_and_data
    rng = np.random.default_rng(0)
    path = tmp_path / ("data.npy" if case == "npy" else "data.npz")
    if case == "no_labels":
        np.savez(path, test_images=rng.random((4, 12, 12)))
    elif case == "empty":
        np.savez(path, test_images=np.zeros((0, 12, 12)), test_labels=np.zeros(0))
    elif case == "objects":
        np.savez(path, test_images=np.array([np.zeros(3), np.zeros(4)], dtype=object), test_labels=np.zeros(2))
    elif case == "text":
        path.write_text("not an archive\n")
    elif case == "npy":
        np.save(path, rng.random((4, 12, 12)))
    else:
        np.savez(path, test_images=np.zeros((4, 12, 12)), test_labels=np.zeros(4))
    assert main(["evaluate", "--model", str(pkg), "--data", str(path), "--out", str(tmp_path / "o")]) == 2
    err = _one_line(capsys)
    assert str(path) in err and needle in err
    assert not (tmp_path / "o").exists()


@pytest.fixture
def images_labels_npz(tmp_path):
    """A file of ``images``/``labels`` only, sorted by class (30 "no" then 20 "yes"), as MedNIST's is."""
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], [30, 20])
    x = rng.integers(0, 40, size=(len(y), 12, 12)).astype(np.uint8)
    x[y == 1, 2:6, 2:6] = 250
    path = tmp_path / "whole.npz"
    np.savez(path, images=x, labels=y)
    return path


@pytest.mark.parametrize("split", ["test", "foo"])
def test_a_split_the_file_lacks_is_refused_naming_the_file_and_its_splits(tmp_path, package_and_data,
                                                                         images_labels_npz, capsys, split):
    """No other part of the file is scored under the asked name: ``test`` of a file of images/labels only was its
    training part (the first 80 % of each class), which a model scores near perfectly."""
    pkg, _ = package_and_data
    out = tmp_path / "o"
    assert main(["evaluate", "--model", str(pkg), "--data", str(images_labels_npz), "--split", split,
                 "--out", str(out)]) == 2
    err = _one_line(capsys)
    assert str(images_labels_npz) in err and f"no split {split!r}" in err
    assert "it holds 'train', 'val', 'all'" in err and "last 20% of each class" in err
    assert capsys.readouterr().out == "" and not out.exists()


def test_a_file_with_named_splits_lists_them_when_refusing_another(package_and_data, capsys):
    pkg, npz = package_and_data   # test_ and val_ arrays
    assert main(["evaluate", "--model", str(pkg), "--data", str(npz), "--split", "train"]) == 2
    err = _one_line(capsys)
    assert str(npz) in err and "no split 'train'; it holds 'test', 'val'" in err


@pytest.mark.parametrize("split, n", [("val", 10), ("train", 40), ("all", 50)])
def test_an_images_labels_file_is_cut_by_class_as_training_cuts_it(package_and_data, images_labels_npz, capsys,
                                                                   split, n):
    """``val`` is the last 20 % of each class (6 of 30 + 4 of 20), what ``train`` holds out; ``train`` the rest."""
    pkg, _ = package_and_data
    assert main(["evaluate", "--model", str(pkg), "--data", str(images_labels_npz), "--split", split]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["split"] == split and res["n"] == n
    if split == "val":
        assert np.asarray(res["confusion_matrix"]).sum(1).tolist() == [6, 4]


def test_a_second_evaluation_into_the_same_folder_keeps_the_first(tmp_path, package_and_data, capsys):
    pkg, npz = package_and_data
    out = tmp_path / "eval"
    out.mkdir()
    (out / "metrics.json").write_text("the user's own notes")
    assert main(["evaluate", "--model", str(pkg), "--data", str(npz), "--out", str(out)]) == 0
    outputs = json.loads(capsys.readouterr().out)["outputs"]
    assert (out / "metrics.json").read_text() == "the user's own notes"
    assert outputs["metrics"].endswith("metrics-2.json") and outputs["roc"].endswith("roc-2.png")
    assert json.loads((out / "metrics-2.json").read_text())["n"] == 40


def test_reported_metrics_count_a_flagged_image_as_not_correct():
    from MedDeepRecogLib.training.evaluate import reported_metrics

    labels = np.array([0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9], [0.3, 0.7], [0.4, 0.6]])  # 4 of 5 right
    kept = np.array([True, True, False, True, True])                               # a right one flagged
    r = reported_metrics(labels, probs, kept, {"domain": {"threshold": 12.0, "quantile": 0.95}})
    assert r["flagged_out_of_domain"] == 1 and r["flagged_rate"] == 0.2 and r["uncertain"] == 0
    assert r["accuracy"] == pytest.approx(3 / 5) and r["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    # decision rules: under min_probability 0.65 (after the temperature) the 0.6 call is 'uncertain'
    meta = {"domain": {"threshold": 12.0}, "decision": {"min_probability": 0.65, "min_agreement": 0.5}}
    r = reported_metrics(labels, probs, kept, meta)
    assert r["uncertain"] == 1 and r["accuracy"] == pytest.approx(2 / 5) and "min_agreement" in r["not_applied"]
    meta["calibration"] = {"temperature": 0.5}  # sharper: 0.6 vs 0.4 becomes 0.69, above the threshold
    assert reported_metrics(labels, probs, kept, meta)["uncertain"] == 0
    # classify's low-confidence flag: normalised entropy of the calibrated probabilities at or above the threshold
    # (0.69/0.31 has entropy 0.89; 0.84/0.16 has 0.63; the others are below 0.5)
    meta["calibration"]["low_confidence_threshold"] = 0.6
    r = reported_metrics(labels, probs, kept, meta)
    assert r["uncertain"] == 2 and r["accuracy"] == pytest.approx(1 / 5)


def test_evaluate_reports_accuracy_as_classify_reports_it_beside_the_networks(shared_data, capsys):
    """A package with an out-of-domain check: evaluate gives the network's figures and, beside them, those of the
    labels classify prints (a flagged image gets no class); on the split the threshold was set on, the flagged share
    is the one model.json records."""
    from MedDeepRecogLib.packages import load_package

    npz = shared_data / "breast_us_busi" / "breast_us_busi_trainval.npz"
    assert main(["evaluate", "--model", "breast-us-lesion@1.5.1", "--data", str(npz), "--split", "val"]) == 0
    res = json.loads(capsys.readouterr().out)
    reported = res["as_classify_reports"]
    domain = load_package("breast-us-lesion@1.5.1").meta["domain"]
    assert reported["flagged_rate"] == pytest.approx(1 - domain["val_in_domain_rate"], abs=1e-3)
    assert reported["flagged_out_of_domain"] == round(reported["flagged_rate"] * res["n"]) >= 1
    assert reported["threshold"] == domain["threshold"] and reported["uncertain"] == 0  # no rules, no temperature
    # the network's correct calls less any flagged among them, as whole images
    n_correct = round(reported["accuracy"] * res["n"])
    assert abs(reported["accuracy"] * res["n"] - n_correct) < 1e-3
    assert round(res["accuracy"] * res["n"]) - reported["flagged_out_of_domain"] <= n_correct


def test_evaluating_the_split_the_thresholds_were_fitted_on_says_the_reported_figures_are_tuned(shared_data,
                                                                                              run_cli_all):
    """breast-us-lesion 1.5.2's low-confidence threshold and its out-of-domain threshold (1.5.1's) were fitted on val
    of this file: evaluate's as_classify_reports on that split rests on them, and the JSON and a note line say so,
    as calibrate and the card do; another file or split of the package's records gets no such note."""
    from MedDeepRecogLib.packages.package import tuned_on
    from MedDeepRecogLib.packages import load_package

    npz = shared_data / "breast_us_busi" / "breast_us_busi_trainval.npz"
    code, out, err = run_cli_all("evaluate", "--model", "breast-us-lesion@1.5.2", "--data", npz, "--split", "val",
                                 "--device", "cpu")
    assert code == 0, err
    tuned = json.loads(out)["as_classify_reports"]["tuned_on_this_split"]
    assert tuned.startswith("the low-confidence threshold, the out-of-domain threshold of breast-us-lesion@1.5.2")
    assert "split 'val' of breast_us_busi_trainval.npz" in tuned and "not held-out estimates" in tuned
    assert "meddeeprecog evaluate: note:" in err and "tuned on it" in err
    meta = load_package("breast-us-lesion@1.5.2").meta
    assert tuned_on(meta, npz, "test") == "" and tuned_on(meta, npz.with_name("other.npz"), "val") == ""
    assert tuned_on(load_package("breast-us-lesion@1.5.0").meta, npz, "val") == ""


def test_evaluating_the_split_a_package_was_trained_on_says_so(shared_data, run_cli_all):
    """body-region was trained on the 'train' part of this file (recognised by its sha256): evaluate still scores
    it (a training-fit check), but the JSON and a warning line say the figures are not those of unseen images;
    the held-out 'val' part gets no warning."""
    data = shared_data / "mednist" / "mednist64_shared.npz"
    for split, warned in (("train", "is the images"), ("all", "holds the images"), ("val", None)):
        code, out, err = run_cli_all("evaluate", "--model", "body-region", "--data", data, "--split", split,
                                     "--device", "cpu")
        assert code == 0, err
        record = json.loads(out)
        if warned is None:
            assert "warning" not in record and "warning" not in err
        else:
            assert warned in record["warning"] and "not those of unseen images" in record["warning"]
            assert err.strip().startswith("meddeeprecog evaluate: warning:") and "mednist64_shared.npz" in err
