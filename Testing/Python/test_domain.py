"""The out-of-domain check: Mahalanobis statistics, their checksummed file in a package, the vote of in-domain slices
only, "out-of-domain" when no slice passes, ensembles' features side by side, and the check fitted by ``train``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MedDeepRecogLib.errors import ModelPackageError
from MedDeepRecogLib.packages import load_package, save_package
from MedDeepRecogLib.uncertainty.domain import (DOMAIN_FILE, DomainCheck, capture_features, feature_description,
                                                feature_layers, fit_domain_statistics)
from tiny_test_package import make_tiny_package


def test_mahalanobis_scores_separate_the_training_distribution_from_far_points():
    rng = np.random.default_rng(0)
    means = np.array([[0.0] * 8, [4.0] * 8])
    labels = rng.integers(0, 2, 2000)
    feats = means[labels] + rng.normal(0, 1, (2000, 8)) * np.linspace(0.5, 2, 8)
    mu, precision = fit_domain_statistics(feats, labels, 2)
    np.testing.assert_allclose(mu, means, atol=0.15)
    check = DomainCheck(mu, precision, threshold=float("inf"))
    fresh = means[rng.integers(0, 2, 500)] + rng.normal(0, 1, (500, 8)) * np.linspace(0.5, 2, 8)
    check.threshold = float(np.quantile(check.scores(fresh), 0.95))
    # squared Mahalanobis distances of in-distribution points follow chi2 with 8 degrees of freedom (95 %: 15.5)
    assert 12 < check.threshold < 19
    far = np.full((50, 8), 2.0) + rng.normal(0, 1, (50, 8)) * np.array([0.5] * 4 + [0.05] * 4) + np.array(
        [0, 0, 0, 0, 6, -6, 6, -6])
    assert check.in_domain(far).mean() == 0.0
    assert check.in_domain(fresh).mean() == pytest.approx(0.95, abs=0.01)


def _with_domain(pkg_dir: Path, dest: Path, threshold: float, version: str) -> Path:
    """A copy of a tiny slices2d package with a domain check whose threshold is ``threshold``."""
    package = load_package(pkg_dir)
    model = package.build_model()
    d = sum(layer.in_features for layer in feature_layers(model))
    check = DomainCheck(np.zeros((len(package.class_names), d)), np.eye(d), threshold)
    payload = check.to_bytes()
    import hashlib
    meta = {k: v for k, v in package.meta.items() if k not in ("weights", "format_version")}
    meta["version"] = version
    meta["domain"] = {"method": "mahalanobis", "file": DOMAIN_FILE, "sha256": hashlib.sha256(payload).hexdigest(),
                      "threshold": threshold, "quantile": 0.95, "fitted_on": "test", "val_in_domain_rate": 1.0,
                      "negatives": {}}
    return save_package(model, meta, dest, extra_files={DOMAIN_FILE: payload})


def test_a_tampered_domain_file_is_refused_when_the_package_opens(tmp_path):
    pkg = _with_domain(make_tiny_package(tmp_path / "a"), tmp_path / "b", 1e9, "0.0.2")
    assert load_package(pkg).domain is not None
    data = bytearray((pkg / DOMAIN_FILE).read_bytes())
    data[-1] ^= 0xFF
    (pkg / DOMAIN_FILE).write_bytes(bytes(data))
    with pytest.raises(ModelPackageError, match="checksum mismatch: domain statistics"):
        load_package(pkg)


def test_no_slice_in_the_domain_gives_no_class_and_says_why(tmp_path, oblique_volume):
    from MedDeepRecogLib.inference.classify import OUT_OF_DOMAIN, classify_scan

    base = make_tiny_package(tmp_path / "a")
    accept_all = classify_scan(oblique_volume, _with_domain(base, tmp_path / "b", 1e12, "0.0.2"), device="cpu")
    assert accept_all.label != OUT_OF_DOMAIN and accept_all.decision["domain"]["slices_in_domain"] > 0
    reject_all = classify_scan(oblique_volume, _with_domain(base, tmp_path / "c", -1.0, "0.0.3"), device="cpu")
    assert reject_all.label == OUT_OF_DOMAIN and reject_all.decision["uncertain"]
    assert any("outside this model's domain" in r for r in reject_all.decision["reasons"])
    assert reject_all.decision["domain"]["slices_in_domain"] == 0
    assert all(not r["in_domain"] for r in reject_all.per_slice)
    assert reject_all.finding is None


def test_only_in_domain_slices_vote(tmp_path, oblique_volume, monkeypatch):
    from MedDeepRecogLib.inference import classify as classify_mod
    from MedDeepRecogLib.uncertainty import domain as domain_mod

    pkg = _with_domain(make_tiny_package(tmp_path / "a"), tmp_path / "b", 0.5, "0.0.2")
    calls = {}

    def alternate(self, features):  # even slices inside, odd slices outside the domain
        calls["n"] = len(features)
        return np.where(np.arange(len(features)) % 2 == 0, 0.0, 1.0)

    monkeypatch.setattr(domain_mod.DomainCheck, "scores", alternate)
    result = classify_mod.classify_scan(oblique_volume, pkg, device="cpu")
    voted = [r["voted"] for r in result.per_slice]
    assert calls["n"] == len(result.per_slice)
    assert voted == [r["in_domain"] for r in result.per_slice]
    assert voted[0] and not voted[1]


def test_test_time_augmentation_scores_the_slices_that_voted(tmp_path, oblique_volume, monkeypatch):
    """--uncertainty tta classifies the stack the prediction voted on (it let every body slice vote, out-of-domain
    ones too), and each slice's "voted" flag is that vote."""
    from MedDeepRecogLib.inference import classify as classify_mod
    from MedDeepRecogLib.inference import trust as trust_mod
    from MedDeepRecogLib.uncertainty import domain as domain_mod

    pkg = _with_domain(make_tiny_package(tmp_path / "a"), tmp_path / "b", 0.5, "0.0.2")
    monkeypatch.setattr(domain_mod.DomainCheck, "scores",
                        lambda self, features: np.where(np.arange(len(features)) % 2 == 0, 0.0, 1.0))
    stacks = []
    real = trust_mod.SliceStackClassifier

    def recording(model, voting=None):
        stacks.append(None if voting is None else np.asarray(voting, dtype=bool).copy())
        return real(model, voting)

    monkeypatch.setattr(trust_mod, "SliceStackClassifier", recording)
    result = classify_mod.classify_scan(oblique_volume, pkg, device="cpu", uncertainty="tta")
    assert [r["voted"] for r in result.per_slice] == result.voting.tolist()
    assert not result.voting[1::2].any() and result.voting[0]
    # the uncertainty's stack (faithfulness passes only the voting slices, with no mask of its own)
    assert [v.tolist() for v in stacks if v is not None] == [result.voting.tolist()]


def test_an_ensembles_features_are_its_members_side_by_side(tmp_path):
    package = load_package(make_tiny_package(tmp_path, kind="ensemble3d"))
    model = package.build_model()
    assert len(feature_layers(model)) == 3
    with torch.no_grad(), capture_features(model) as store:
        model(torch.zeros(2, 1, 16, 16, 16))
        model(torch.zeros(3, 1, 16, 16, 16))
    assert store.array().shape == (5, 3 * feature_layers(model)[0].in_features)


def test_a_network_without_a_dense_layer_names_its_feature_layer():
    """The class-evidence CNN has no nn.Linear: the check scores its grid-averaged features."""
    from MedDeepRecogLib.models import build_model

    torch.manual_seed(0)
    model = build_model("evidence_cnn2d", num_classes=3, channels=[4, 8, 6]).eval()
    assert feature_layers(model) == [model.feature_layer]
    assert feature_description(model) == "the network's features averaged over its grid"
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad(), capture_features(model) as store:
        model(x)
    torch.testing.assert_close(torch.from_numpy(store.array()), model.features(x).mean(dim=(2, 3)))


def test_train_fits_and_calibrates_the_check_and_records_it(tmp_path):
    """A tiny 2-class 2D problem: the check is fitted on train, its threshold is the val quantile, and the
    negatives' flagged rates are measured and written into model.json and the card. The ``localisation`` block
    (registered by ``inference.localisation``, as ``meddeeprecog train`` does) scores the heatmap on a scan with a
    lesion label before the one save, and the ``placement`` block places the heatmap on every val image."""
    import yaml

    from MedDeepRecogLib.commands import register_training_blocks
    from MedDeepRecogLib.training.train import run_training

    register_training_blocks()  # as meddeeprecog train does: the localisation block

    rng = np.random.default_rng(0)

    def images(n, label):
        yy, xx = np.mgrid[:32, :32]
        out = rng.normal(60, 10, (n, 32, 32))
        if label:
            out += 100 * (((yy - 16) ** 2 + (xx - 16) ** 2) < 64)
        else:
            out[:, 8:24, 8:24] += 100
        return np.clip(out, 0, 255).astype(np.uint8)

    x_tr = np.concatenate([images(40, 0), images(40, 1)])
    x_va = np.concatenate([images(20, 0), images(20, 1)])
    y_tr, y_va = np.repeat([0, 1], 40), np.repeat([0, 1], 20)
    data = tmp_path / "toy.npz"
    np.savez(data, train_images=x_tr, train_labels=y_tr, val_images=x_va, val_labels=y_va,
             train_groups=np.arange(80).astype(str), val_groups=np.arange(40).astype(str))
    noise = tmp_path / "noise.npz"
    np.savez(noise, val_images=rng.integers(0, 255, (30, 32, 32)).astype(np.uint8))
    lesion = np.zeros((3, 32, 32), np.uint8)
    lesion[:, 8:24, 8:24] = 1
    scan = np.concatenate([images(3, 0)]).astype(np.int16)
    for array, name in ((scan, "scan.nrrd"), (lesion, "lesion.nrrd")):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((1.0, 1.0, 3.0))
        sitk.WriteImage(image, str(tmp_path / name))
    cfg = {"id": "toy-domain", "version": "1.0.0", "data": {"path": str(data), "kind": "slices2d", "size": [32, 32]},
           "model": {"name": "simple_cnn2d", "kwargs": {"channels": [4, 8], "hidden": 8, "pooled_size": 2}},
           "input": {"slices": {"crop_foreground": False}},
           "training": {"epochs": 2, "batch_size": 16, "monitor": "last"},
           "domain": {"quantile": 0.9, "negatives": [{"name": "noise", "path": str(noise), "split": "val"}]},
           "localisation": [{"name": "toy", "scan": str(tmp_path / "scan.nrrd"), "lesion": str(tmp_path / "lesion.nrrd")}],
           "placement": {"bands": [0.1, 0.25]}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = run_training(path, out=tmp_path / "run", package_dest=tmp_path / "pkgs")
    meta = json.loads((Path(out["package"]) / "model.json").read_text())
    block = meta["domain"]
    assert block["quantile"] == 0.9 and 0.85 <= block["val_in_domain_rate"] <= 0.95
    assert block["negatives"]["noise"]["n"] == 30 and 0.0 <= block["negatives"]["noise"]["flagged_rate"] <= 1.0
    assert meta["input"]["slices"] == {"crop_foreground": False}
    card = (Path(out["package"]) / "MODEL_CARD.md").read_text()
    assert "## Out-of-domain check" in card
    toy = meta["localisation"]["toy"]
    assert "refused" not in toy and toy["label"] in ("0", "1")
    assert 1 <= toy["slices_with_lesion"] <= 3 and 0 <= toy["pointing_hits"] <= toy["slices_with_lesion"]
    assert "## Where the heatmap lands" in card and "| toy |" in card and "lesion filled / elsewhere" in card
    assert "drop_lesion_filled" in toy
    placed = meta["placement"]  # every val image through classify as a PNG, its heatmap placed in both bands
    assert placed["split"] == "val" and placed["images"] == 40 and placed["refused"] == 0
    assert set(placed["bands"]) == {"0.1", "0.25"} and 0 < placed["with_heat"] <= 40
    for band in placed["bands"].values():
        assert 0.0 <= band["peak_in_band"] <= 1.0 and 0.0 <= band["heat_in_band"] <= 1.0
        assert sum(c["images"] for c in band["per_predicted_class"].values()) == placed["with_heat"]
    assert placed["bands"]["0.25"]["band_area"] > placed["bands"]["0.1"]["band_area"]
    assert "## Where the heatmap sits on its val images" in card and "peak in outer 25% / heat there" in card
    package = load_package(out["package"])
    assert package.domain.threshold == pytest.approx(block["threshold"], rel=1e-5)


def test_calibrate_moves_the_out_of_domain_threshold_and_measures_the_negatives_there(shared_data, tmp_path,
                                                                                    run_cli_all):
    """``calibrate --domain-quantile Q``: at the parent's own quantile of its val split the threshold comes back as
    training set it; at another quantile the new version keeps the parent's weights and statistics, records where
    the threshold came from, measures the config's negatives at it, rewrites the card's section in place, and
    classify applies it. The options refuse what they cannot do, in one line."""
    import yaml

    parent = load_package("breast-us-lesion@1.5.0")
    npz = shared_data / "breast_us_busi" / "breast_us_busi_trainval.npz"
    negatives = tmp_path / "negatives.yaml"
    negatives.write_text(yaml.safe_dump({"domain": {"negatives": [
        {"name": "lung CT", "path": str(shared_data / "lung_ct_iqothnccd" / "lung_ct_iqothnccd_trainval.npz"),
         "split": "val", "max": 20}]}}))
    base = ["calibrate", "--model", "breast-us-lesion@1.5.0", "--data", npz, "--no-temperature", "--dest",
            tmp_path / "pkgs", "--progress", "none"]
    code, out, err = run_cli_all(*base, "--domain-quantile", 0.95, "--version", "1.5.90")
    assert code == 0, err
    same = json.loads(out)["domain"]
    assert same["threshold"] == pytest.approx(parent.meta["domain"]["threshold"], rel=1e-4)
    assert same["negatives"] == {}  # the parent's figures are not carried over unmeasured

    code, out, err = run_cli_all(*base, "--domain-quantile", 0.97, "--domain-negatives", negatives,
                                 "--version", "1.5.91")
    assert code == 0, err
    new = load_package(tmp_path / "pkgs" / "breast-us-lesion" / "1.5.91")
    block = new.meta["domain"]
    assert block["quantile"] == 0.97 and block["threshold"] > parent.meta["domain"]["threshold"]
    assert 0.96 <= block["val_in_domain_rate"] <= 0.98
    assert block["negatives"] == {"lung CT": {"n": 20, "flagged_rate": 1.0}}
    assert block["chosen_on"]["parent_threshold"] == parent.meta["domain"]["threshold"]
    assert block["sha256"] == parent.meta["domain"]["sha256"]
    np.testing.assert_array_equal(new.domain.precision, parent.domain.precision)
    assert new.domain.threshold == pytest.approx(block["threshold"])
    for name, tensor in parent.build_model("cpu").state_dict().items():
        torch.testing.assert_close(new.build_model("cpu").state_dict()[name], tensor, rtol=0, atol=0)
    card = (new.path / "MODEL_CARD.md").read_text()
    assert card.count("## Out-of-domain check") == 1
    assert "the 97% quantile of split `val` of `breast_us_busi_trainval.npz`" in card
    assert "| lung CT | 20 | 100.0% |" in card and "moved from the parent package's" in card
    selected_by = new.meta["metrics"]["selected_by"]
    assert selected_by.endswith("; fitted after training: the out-of-domain threshold (val)")
    assert f"| selected_by | {selected_by} |" in card  # the card's metrics row says what model.json says
    assert f"| selected_by | {parent.meta['metrics']['selected_by']} |" not in card
    assert card.startswith("# breast-us-lesion 1.5.91\n\n> **Calibrated version** of `breast-us-lesion@1.5.0`")

    # calibrated again (temperature now): one title, one line naming everything fitted, no repeated suffix
    code, out, err = run_cli_all("calibrate", "--model", tmp_path / "pkgs" / "breast-us-lesion" / "1.5.91",
                                 "--data", npz, "--dest", tmp_path / "pkgs", "--progress", "none",
                                 "--version", "1.5.92")
    assert code == 0, err
    again = load_package(tmp_path / "pkgs" / "breast-us-lesion" / "1.5.92")
    card = (again.path / "MODEL_CARD.md").read_text()
    assert card.startswith("# breast-us-lesion 1.5.92\n\n> **Calibrated version** of `breast-us-lesion@1.5.91`")
    assert card.count("> **Calibrated version**") == 1 and card.count("## Calibration (temperature scaling)") == 1
    assert again.meta["metrics"]["selected_by"].count("fitted after training") == 1
    assert again.meta["metrics"]["selected_by"].endswith(
        "the temperature and low-confidence threshold (val), the out-of-domain threshold (val)")
    assert again.meta["domain"]["threshold"] == block["threshold"]  # kept from its parent

    # an image scored between the two thresholds: out of the parent's domain, inside the new one
    from MedDeepRecogLib.inference.calibrate import _npz_split
    from MedDeepRecogLib.training.domain import features_of

    val = _npz_split(parent, npz, "val")
    scores = parent.domain.scores(features_of(parent.build_model("cpu"), val.images, torch.device("cpu"))[0])
    between = np.flatnonzero((scores > parent.domain.threshold) & (scores <= new.domain.threshold))
    assert len(between) >= 1
    from PIL import Image

    from MedDeepRecogLib.inference.classify import classify_scan

    png = tmp_path / "between.png"
    Image.fromarray(np.load(npz)["val_images"][between[0]]).save(png)
    assert classify_scan(png, parent, explain="none", uncertainty="none").label == "out-of-domain"
    assert classify_scan(png, new, explain="none", uncertainty="none").label != "out-of-domain"

    bad_negative = tmp_path / "bad_negative.yaml"
    bad_negative.write_text(yaml.safe_dump({"domain": {"negatives": [
        {"name": "no labels", "path": str(npz), "split": "val", "class": 0, "max": 5},
        {"name": "labels", "path": str(tmp_path / "flat.npz"), "class": 0}]}}))
    np.savez(tmp_path / "flat.npz", images=np.zeros((4, 64, 64), np.uint8))
    cases = [(["--domain-negatives", negatives], "give --domain-quantile Q with it"),
             (["--domain-quantile", 1.0], "--domain-quantile must be a number in [0.5, 1)"),
             (["--domain-quantile", 0.97, "--domain-negatives", tmp_path / "pkgs" / "none.yaml"], "none.yaml"),
             (["--domain-quantile", 0.97, "--domain-negatives", bad_negative], "the file has no labels"),
             (["--domain-quantile", 0.97, "--split", "train"], "is what breast-us-lesion@1.5.0 was trained on"),
             (["--domain-quantile", 0.97, "--version", "1.5.90"], "already exists"),
             (["--domain-quantile", 0.97, "--report-split", "test"], "does nothing with --no-temperature"),
             (["--domain-quantile", 0.97, "--quantile", "0.1"], "give --decision-rules RULES with it")]
    for extra, words in cases:
        code, out, err = run_cli_all(*base, *extra)
        assert code == 2 and words in err and "Traceback" not in err, (extra, err)
    assert sorted(p.name for p in (tmp_path / "pkgs" / "breast-us-lesion").iterdir()) == ["1.5.90", "1.5.91",
                                                                                         "1.5.92"]
    # without --version, the parent's next free patch: a recalibrated 1.3.0 never outranks 1.5.x
    code, out, err = run_cli_all("calibrate", "--model", "breast-us-lesion@1.3.0", "--data", npz,
                                 "--dest", tmp_path / "pkgs", "--progress", "none")
    assert code == 0 and json.loads(out)["version"] == "1.3.1", err
    code, _, err = run_cli_all("calibrate", "--model", "body-region", "--data", npz, "--no-temperature",
                               "--domain-quantile", 0.97, "--dest", tmp_path / "pkgs", "--progress", "none")
    assert code == 2 and "has no out-of-domain check" in err, err


def test_models_lists_where_a_recalibrated_bundled_package_comes_from(run_cli_all):
    code, out, err = run_cli_all("models")
    assert code == 0, err
    line = next(ln for ln in out.splitlines() if ln.startswith("breast-us-lesion") and " 1.5.1 " in ln)
    assert line.endswith("(from breast-us-lesion@1.5.0)")
    code, out, _ = run_cli_all("models", "--json")
    rows = {(r["id"], r["version"]): r for r in json.loads(out)}
    assert rows[("lung-ct-cancer", "1.2.1")]["parent"] == "lung-ct-cancer@1.2.0"
    assert rows[("lung-ct-cancer", "1.2.0")]["parent"] is None
    from MedDeepRecogLib.packages.package import parent_ref

    # a fine-tuned package records its parent as a mapping (with the folder of the machine that made it)
    assert parent_ref({"id": "ts-organs-seg", "version": "1.0.0", "path": "/home/x/models"}) == "ts-organs-seg@1.0.0"


def test_an_out_of_domain_result_says_its_figures_are_no_finding_in_json_and_html(tmp_path, oblique_volume):
    """No slice in the domain: the JSON's confidence_basis called the figure the "mean over the N voting slices"
    and the HTML drew the probability bars as a result; both now say what the CLI says, "the model's output, not a
    finding", and that no slice is in the domain."""
    from MedDeepRecogLib.inference.classify import OUT_OF_DOMAIN, classify_scan
    from MedDeepRecogLib.report import render_case_report

    package = load_package(_with_domain(make_tiny_package(tmp_path / "a"), tmp_path / "c", -1.0, "0.0.3"))
    result = classify_scan(oblique_volume, package, device="cpu")
    assert result.label == OUT_OF_DOMAIN
    record = result.to_json()
    n = len(result.per_slice)
    for key in ("confidence_basis", "probabilities_basis"):
        assert record[key].startswith("the model's output, not a finding") and "voting" not in record[key], \
            record[key]
        assert f"none of the {n} slices is in this model's domain" in record[key]
    html = render_case_report(result, {}, package, command="meddeeprecog classify x").replace("&#39;", "'")
    confidence_line, probabilities = html.split("<h2>Probabilities</h2>")[0], html.split("<h2>Probabilities</h2>")[1]
    assert "Confidence: the model's output, not a finding" in confidence_line
    assert "the model's output, not a finding" in probabilities.split("<table")[0]
    # a localisation case the package could not measure is named as such, not shown as an empty row
    package.meta["localisation"] = {"case1": {"label": None, "refused": "the scan is 2D"},
                                    "case2": {"label": "gamma", "pointing_rate": 0.5}}
    html = render_case_report(result, {}, package, command="meddeeprecog classify x")
    assert "<th>case1</th><td>not measured: the scan is 2D</td>" in html and "pointing_rate 0.5" in html
