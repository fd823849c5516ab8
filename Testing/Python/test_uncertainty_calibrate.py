"""``meddeeprecog calibrate``: a new package version with a calibration (and decision) block; the parent is
untouched."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from frontier_helpers import save_blob_package, write_blob_npz, write_blob_scan
from MedDeepRecogLib.cli import main
from MedDeepRecogLib.packages import load_package


def test_calibrate_npz_writes_new_version(tmp_path, capsys):
    catalog = tmp_path / "catalog"
    parent = save_blob_package(catalog)
    before = (parent / "model.json").read_bytes()
    npz = write_blob_npz(tmp_path / "val.npz", n=60, seed=12)
    rc = main(["calibrate", "--model", str(parent), "--data", str(npz), "--dest", str(catalog), "--progress", "json"])
    assert rc == 0
    lines = [json.loads(s) for s in capsys.readouterr().out.splitlines() if s.startswith("{")]
    result = lines[-1]["result"]
    assert (parent / "model.json").read_bytes() == before  # never edited in place
    new = load_package(result["package"])
    assert new.version == "1.0.1" and new.meta["provenance"]["parent"] == "blob-test@1.0.0"
    cal = new.meta["calibration"]
    for key in ("temperature", "ece_before", "ece_after", "low_confidence_threshold"):
        assert isinstance(cal[key], float)
    assert cal["temperature"] > 0 and cal["n"] == 60
    # temperature scaling minimises NLL on this data, so it cannot make it worse
    assert cal["nll_after"] <= cal["nll_before"] + 1e-9
    assert 0.0 <= cal["low_confidence_threshold"] <= 1.0
    card = (new.path / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert card.startswith("# blob-test") and "## Calibration" in card and f"{cal['ece_after']:.4f}" in card
    assert (new.path / "reliability.png").stat().st_size > 1000
    # same weights as the parent (the file differs only by its id/version metadata)
    a, b = new.build_model().state_dict(), load_package(parent).build_model().state_dict()
    assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    # a second run takes the next version and never overwrites
    assert main(["calibrate", "--model", str(parent), "--data", str(npz), "--dest", str(catalog),
                 "--progress", "none"]) == 0
    assert (catalog / "blob-test" / "1.0.2" / "model.json").is_file()


def test_calibrate_version_must_be_new_and_major_minor_patch(tmp_path, capsys, monkeypatch):
    """``--version`` that is not MAJOR.MINOR.PATCH is refused before the package is read, one a catalog holds
    before any prediction (one line naming --version, exit 2, nothing written); a parent whose own version is not
    one (a user package made before versions were checked) gets the id's next free version."""
    import shutil

    from tiny_test_package import make_tiny_package

    from MedDeepRecogLib.inference import calibrate
    from MedDeepRecogLib.packages import user_models_dir

    npz = write_blob_npz(tmp_path / "val.npz", n=24, seed=12)
    predict = calibrate._npz_logits

    def no_prediction(*args, **kwargs):
        raise AssertionError("the package predicted: the version was not refused first")

    monkeypatch.setattr(calibrate, "_npz_logits", no_prediction)
    for bad, holder in (("x.y", None), ("1.0", None), ("1.3.0", "bundled catalog")):
        # into the user catalog (no --dest), where a second 1.3.0 would hide or be hidden by the bundled one
        assert main(["calibrate", "--model", "adrenal-mass-3d", "--data", str(npz), "--split", "val", "--version",
                     bad, "--progress", "none"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("meddeeprecog calibrate: error: --version "), err
        assert (f"adrenal-mass-3d@1.3.0 already exists in the {holder}" if holder else "MAJOR.MINOR.PATCH") in err
    assert not (user_models_dir() / "adrenal-mass-3d").exists()

    monkeypatch.setattr(calibrate, "_npz_logits", predict)
    old = make_tiny_package(user_models_dir(), kind="volume3d", package_id="oldver", version="1.0.0")
    shutil.copytree(old, old.parent / "x.y")
    meta = json.loads((old / "model.json").read_text(encoding="utf-8"))
    (old.parent / "x.y" / "model.json").write_text(json.dumps({**meta, "version": "x.y"}), encoding="utf-8")
    assert main(["calibrate", "--model", "oldver@x.y", "--data", str(npz), "--split", "val", "--progress",
                 "none"]) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["version"] == "1.0.1"
    assert load_package("oldver").version == "1.0.1"


def test_calibrate_csv_of_scans(tmp_path, capsys):
    catalog = tmp_path / "catalog"
    parent = save_blob_package(catalog)
    rows = ["path,label"]
    for i in range(10):
        label = i % 2
        write_blob_scan(tmp_path / f"s{i}.nii.gz", label=label, seed=20 + i)
        rows.append(f"s{i}.nii.gz,{['normal', 'mass'][label]}")
    (tmp_path / "val.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert main(["calibrate", "--model", str(parent), "--data", str(tmp_path / "val.csv"), "--dest", str(catalog),
                 "--progress", "none"]) == 0
    new = load_package(catalog / "blob-test" / "1.0.1")
    assert new.meta["calibration"]["n"] == 10


def test_calibrate_errors(tmp_path, capsys):
    catalog = tmp_path / "catalog"
    parent = save_blob_package(catalog)
    assert main(["calibrate", "--model", str(parent), "--data", str(tmp_path / "nope.npz")]) == 2
    assert "calibration data not found" in capsys.readouterr().err
    small = write_blob_npz(tmp_path / "small.npz", n=4)
    assert main(["calibrate", "--model", str(parent), "--data", str(small), "--dest", str(catalog)]) == 2
    assert "too few" in capsys.readouterr().err
    (tmp_path / "bad.csv").write_text("path,label\nx.nii.gz,tumour\n", encoding="utf-8")
    assert main(["calibrate", "--model", str(parent), "--data", str(tmp_path / "bad.csv")]) == 2
    assert "not one of the model's classes" in capsys.readouterr().err
    assert not (catalog / "blob-test" / "1.0.1").exists()


def test_calibrate_decision_rules_write_a_new_version(tmp_path, capsys):
    """``--decision-rules``: min_probability chosen on the held-out split (the quantile of the correct calls'
    probability, rounded down to 0.05) and written with the given rules into a NEW version; the parent's files
    stay as they were."""
    from MedDeepRecogLib.inference.calibrate import choose_min_probability
    from MedDeepRecogLib.uncertainty import softmax

    catalog = tmp_path / "catalog"
    parent = save_blob_package(catalog)
    before = {p.name: p.read_bytes() for p in parent.iterdir()}
    npz = write_blob_npz(tmp_path / "val.npz", n=60, seed=12)
    rules = tmp_path / "rules.yaml"
    rules.write_text("min_agreement: 0.5\nclass_modality: {normal: CT, mass: CT}\n", encoding="utf-8")
    assert main(["calibrate", "--model", str(parent), "--data", str(npz), "--dest", str(catalog),
                 "--decision-rules", str(rules), "--quantile", "0.1", "--no-temperature", "--progress", "none"]) == 0
    assert {p.name: p.read_bytes() for p in parent.iterdir()} == before
    new = load_package(catalog / "blob-test" / "1.0.1")
    decision = new.meta["decision"]
    assert "calibration" not in new.meta and not (new.path / "reliability.png").exists()
    assert decision["min_agreement"] == 0.5 and decision["class_modality"] == {"normal": "CT", "mass": "CT"}
    # the threshold is the one the held-out probabilities give (the package's own, no temperature)
    z = np.load(npz)
    import torch
    with torch.no_grad():
        logits = load_package(parent).build_model()(torch.from_numpy(z["val_images"][:, None])).numpy()
    probs = softmax(logits)
    correct = probs.argmax(1) == z["val_labels"].ravel()
    assert decision["min_probability"] == choose_min_probability(probs.max(1), correct, 0.1)
    assert decision["chosen_on"]["n"] == 60 and decision["chosen_on"]["quantile_of_correct"] == 0.1
    assert decision["chosen_on"]["command"].startswith("meddeeprecog calibrate --model")
    card = (new.path / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "## Decision rules (calibrated)" in card and f"**{decision['min_probability']:.2f}**" in card
    # with the temperature too: both blocks, the threshold on the temperature-scaled probabilities
    assert main(["calibrate", "--model", str(parent), "--data", str(npz), "--dest", str(catalog),
                 "--decision-rules", str(rules), "--progress", "none"]) == 0
    both = load_package(catalog / "blob-test" / "1.0.2").meta
    t = both["calibration"]["temperature"]
    scaled = softmax(logits, t)
    assert both["decision"]["min_probability"] == choose_min_probability(scaled.max(1), correct, 0.02)


def test_calibrate_decision_rules_errors(tmp_path, capsys):
    catalog = tmp_path / "catalog"
    parent = save_blob_package(catalog)
    npz = write_blob_npz(tmp_path / "val.npz", n=20)
    assert main(["calibrate", "--model", str(parent), "--data", str(npz), "--no-temperature"]) == 2
    assert "nothing to calibrate" in capsys.readouterr().err
    rules = tmp_path / "rules.json"
    rules.write_text('{"min_probabilty": 0.5}', encoding="utf-8")
    assert main(["calibrate", "--model", str(parent), "--data", str(npz), "--dest", str(catalog),
                 "--decision-rules", str(rules)]) == 2
    assert "unknown decision rule 'min_probabilty'" in capsys.readouterr().err
    rules.write_text('{"min_agreement": ', encoding="utf-8")
    assert main(["calibrate", "--model", str(parent), "--data", str(npz), "--decision-rules", str(rules)]) == 2
    err = capsys.readouterr().err
    assert "decision rules file is not valid JSON" in err and "Traceback" not in err
    assert not (catalog / "blob-test" / "1.0.1").exists()


def test_body_region_card_reproduces_its_decision_rules(tmp_path, shared_data, capsys):
    """The body-region model card's calibrate command gives exactly the rules the bundled package holds."""
    from MedDeepRecogLib.resources import sample_path

    config = Path(__file__).resolve().parents[2] / "configs" / "body-region-decision.json"
    assert main(["calibrate", "--model", "body-region@1.0.0", "--data",
                 str(shared_data / "mednist" / "mednist64_shared.npz"), "--decision-rules", str(config),
                 "--no-temperature", "--dest", str(tmp_path / "pkgs"), "--progress", "none"]) == 0
    new = load_package(tmp_path / "pkgs" / "body-region" / "1.0.1")
    bundled = load_package("body-region@1.0.0").meta["decision"]
    strip = lambda d: {**d, "chosen_on": {k: v for k, v in d["chosen_on"].items() if k != "command"}}  # noqa: E731
    assert strip(new.meta["decision"]) == strip(bundled)
    assert list(new.meta["decision"]) == list(bundled)  # same keys, same order
    card = (Path(sample_path("abdomen_ct.nii.gz")).parents[1] / "models" / "body-region" / "1.0.0"
            / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "python -m MedDeepRecogLib.inference.calibrate" not in card
    assert "meddeeprecog calibrate --model body-region@1.0.0" in card and "--decision-rules" in card


def test_refitting_the_temperature_chooses_the_parents_min_probability_again(tmp_path, capsys):
    """A parent whose decision rules chose min_probability at its own temperature: a new temperature re-chooses it
    on the new scale, with the parent's other rules and quantile, rather than keeping a threshold from another
    scale."""
    from MedDeepRecogLib.inference.calibrate import choose_min_probability
    from MedDeepRecogLib.uncertainty import softmax

    catalog = tmp_path / "catalog"
    parent = save_blob_package(catalog)
    npz = write_blob_npz(tmp_path / "val.npz", n=60, seed=12)
    rules = tmp_path / "rules.yaml"
    rules.write_text("min_agreement: 0.5\n", encoding="utf-8")
    assert main(["calibrate", "--model", str(parent), "--data", str(npz), "--dest", str(catalog),
                 "--decision-rules", str(rules), "--quantile", "0.1", "--no-temperature", "--progress", "none"]) == 0
    assert main(["calibrate", "--model", str(catalog / "blob-test" / "1.0.1"), "--data", str(npz), "--dest",
                 str(catalog), "--progress", "none"]) == 0
    capsys.readouterr()
    new = load_package(catalog / "blob-test" / "1.0.2").meta
    z = np.load(npz)
    import torch
    with torch.no_grad():
        logits = load_package(parent).build_model()(torch.from_numpy(z["val_images"][:, None])).numpy()
    scaled = softmax(logits, new["calibration"]["temperature"])
    correct = scaled.argmax(1) == z["val_labels"].ravel()
    assert new["decision"]["min_agreement"] == 0.5 and new["decision"]["chosen_on"]["quantile_of_correct"] == 0.1
    assert new["decision"]["min_probability"] == choose_min_probability(scaled.max(1), correct, 0.1)


def test_a_slice_models_confidence_is_on_the_scale_min_probability_was_chosen_on(shared_data, tmp_path, capsys):
    """A calibrated 2D package: the confidence classify compares with the decision rules' min_probability is the
    temperature-scaled probability that calibrate chose it on (one picture: the reported probability of the label),
    not the network's raw softmax."""
    from PIL import Image

    npz = shared_data / "breast_us_busi" / "breast_us_busi_trainval.npz"
    rules = tmp_path / "rules.json"
    rules.write_text("{}", encoding="utf-8")
    assert main(["calibrate", "--model", "breast-us-lesion@1.5.0", "--data", str(npz), "--decision-rules",
                 str(rules), "--dest", str(tmp_path / "pkgs"), "--version", "9.0.0",
                 "--progress", "none"]) == 0
    capsys.readouterr()
    pkg = load_package(tmp_path / "pkgs" / "breast-us-lesion" / "9.0.0")
    assert abs(pkg.meta["calibration"]["temperature"] - 1.0) > 0.05  # a temperature that changes the scale
    png = tmp_path / "us.png"
    Image.fromarray(np.load(npz)["val_images"][3]).save(png)
    from MedDeepRecogLib.inference.classify import classify_scan

    result = classify_scan(png, pkg, explain="none", faithfulness=False)
    label = result.decision["top_class"]
    probability = result.uncertainty["probabilities"][label]
    assert result.decision["confidence"] == pytest.approx(probability, abs=1e-4)
    # the val images the out-of-domain check flags get no class from classify, so the rule was chosen without them
    from MedDeepRecogLib.training.evaluate import evaluate_package

    chosen = pkg.meta["decision"]["chosen_on"]
    evaluated = evaluate_package(pkg.path, npz, split="val")
    flagged = evaluated["as_classify_reports"]["flagged_out_of_domain"]
    assert flagged > 0 and chosen["out_of_domain"] == flagged and chosen["n"] + flagged == evaluated["n"]
    assert "more flagged outside the model's domain" in (pkg.path / "MODEL_CARD.md").read_text(encoding="utf-8")


def test_min_probability_of_a_slice_model_on_volumes_is_chosen_on_the_confidence_classify_compares(tmp_path, capsys):
    """A CSV of volumes for a slice model: classify compares min_probability with the voting slices' mean
    probability of the scan's class, not with the aggregated scan probability, so calibrate chooses it on that.
    Here the correct calls (the brain MR) have confidence 0.83 and scan probability 0.87: 0.80 against 0.85."""
    from MedDeepRecogLib.inference.calibrate import choose_min_probability
    from MedDeepRecogLib.inference.classify import classify_scan
    from MedDeepRecogLib.resources import sample_path

    brain, abdomen = sample_path("brain1_mr.nrrd"), sample_path("abdomen_ct.nii.gz")
    rows = [(brain, "MRBrain")] * 8 + [(abdomen, "CTChest")] * 2  # the abdomen rows are wrong calls
    (tmp_path / "val.csv").write_text("path,label\n" + "".join(f"{p},{c}\n" for p, c in rows), encoding="utf-8")
    rules = tmp_path / "rules.json"
    rules.write_text("{}", encoding="utf-8")
    assert main(["calibrate", "--model", "body-region@1.0.0", "--data", str(tmp_path / "val.csv"),
                 "--decision-rules", str(rules), "--quantile", "0", "--no-temperature", "--dest",
                 str(tmp_path / "pkgs"), "--progress", "none"]) == 0
    capsys.readouterr()
    decision = load_package(tmp_path / "pkgs" / "body-region" / "1.0.1").meta["decision"]
    seen = classify_scan(brain, "body-region@1.0.0", explain="none", faithfulness=False)
    assert seen.decision["top_class"] == "MRBrain"
    confidence, scan_probability = seen.decision["confidence"], float(seen.probabilities.max())
    assert choose_min_probability(np.array([confidence]), np.array([True]), 0.0) != \
        choose_min_probability(np.array([scan_probability]), np.array([True]), 0.0)  # the two scales differ here
    assert decision["min_probability"] == choose_min_probability(np.array([confidence]), np.array([True]), 0.0)
    assert decision["chosen_on"]["n"] == 10 and decision["chosen_on"]["accuracy"] == 0.8
    assert "out_of_domain" not in decision["chosen_on"]  # no scan was flagged outside body-region's domain


def test_calibrate_refuses_the_data_the_package_was_trained_on(shared_data, tmp_path, capsys):
    """body-region was trained on the first 80 % of each class of this file: its 'all' split holds them, so a
    temperature fitted there would be fitted on training images; refused in one line before any prediction."""
    npz = shared_data / "mednist" / "mednist64_shared.npz"
    assert main(["calibrate", "--model", "body-region", "--data", str(npz), "--split", "all", "--dest",
                 str(tmp_path / "pkgs"), "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert "--split 'all': this split of the file holds what body-region@1.0.0 was trained on" in err
    assert "Traceback" not in err and not (tmp_path / "pkgs").exists()
    # nor are the calibration's figures reported on the training rows
    assert main(["calibrate", "--model", "body-region", "--data", str(npz), "--split", "val", "--report-split",
                 "train", "--dest", str(tmp_path / "pkgs"), "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert "--report-split 'train': this split of the file is what body-region@1.0.0 was trained on" in err
    assert "report on held-out data" in err and not (tmp_path / "pkgs").exists()


def test_low_confidence_threshold_alone_keeps_the_networks_probabilities(tmp_path, capsys):
    """``--no-temperature --low-confidence``: the threshold the temperature fit would write (Youden's J on the
    normalised entropy) fitted on the network's own probabilities, which stay as they are (the block has no
    temperature, classify's ``calibrated`` is false); its figures, on the split it was fitted on, are said to be
    tuned there; evaluate counts the same images 'uncertain'; the card gets its own section."""
    from MedDeepRecogLib.inference.calibrate import _npz_logits
    from MedDeepRecogLib.inference.classify import classify_scan
    from MedDeepRecogLib.uncertainty import low_confidence_threshold, normalized_entropy, softmax

    catalog = tmp_path / "catalog"
    parent = save_blob_package(catalog)
    npz = write_blob_npz(tmp_path / "val.npz", n=60, seed=12)
    assert main(["calibrate", "--model", str(parent), "--data", str(npz), "--no-temperature", "--low-confidence",
                 "--dest", str(catalog), "--progress", "none"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert "tuned on it, not held-out estimates" in captured.err
    new = load_package(result["package"])
    cal = new.meta["calibration"]
    assert new.version == "1.0.1" and "temperature" not in cal and cal == result["calibration"]
    assert cal["fit_split"] == cal["report_split"] == "val" and cal["same_split"] is True
    logits, labels, _ = _npz_logits(new, npz, "val")
    p = softmax(logits)
    h, correct = normalized_entropy(p), p.argmax(1) == labels
    fitted = low_confidence_threshold(h, correct)
    assert fitted - 1e-6 <= cal["low_confidence_threshold"] <= fitted  # written rounded down to 6 places
    flagged = h >= cal["low_confidence_threshold"]
    f = cal["figures"]
    assert (f["n"], f["out_of_domain"], f["uncertain"]) == (60, 0, int(flagged.sum()))  # no out-of-domain check
    assert f["wrong_among_uncertain"] == int((flagged & ~correct).sum())
    assert f["accuracy_of_the_rest"] == pytest.approx(correct[~flagged].mean(), abs=1e-4)
    assert cal["low_confidence_rate"] == f["uncertain_share"] == pytest.approx(flagged.mean(), abs=1e-4)
    assert main(["evaluate", "--model", str(new.path), "--data", str(npz), "--split", "val"]) == 0
    assert json.loads(capsys.readouterr().out)["as_classify_reports"]["uncertain"] == f["uncertain"]
    card = (new.path / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "## Low-confidence threshold" in card and f"**{cal['low_confidence_threshold']:.3f}**" in card
    assert "tuned on it, not held-out estimates" in card and "## Calibration (temperature" not in card
    assert "fitted afterwards: the low-confidence threshold (val)." in card
    assert not (new.path / "reliability.png").exists()
    # classify: the parent's probabilities, flagged by the threshold, no temperature applied
    scan = write_blob_scan(tmp_path / "s.nii.gz", label=1, seed=3)
    before = classify_scan(scan, load_package(parent), explain="none", faithfulness=False)
    after = classify_scan(scan, new, explain="none", faithfulness=False)
    np.testing.assert_array_equal(after.probabilities, before.probabilities)
    u = after.uncertainty
    assert u["calibrated"] is False and u["temperature"] == 1.0 and before.uncertainty["low_confidence"] is None
    assert u["low_confidence"] is (u["predictive_entropy"] >= cal["low_confidence_threshold"])
    assert (after.label == "uncertain") is u["low_confidence"]

    # figures on a split the fit did not see
    z = np.load(npz)
    held = write_blob_npz(tmp_path / "held.npz", n=30, seed=2)
    both = tmp_path / "both.npz"
    np.savez_compressed(both, val_images=z["val_images"], val_labels=z["val_labels"],
                        test_images=np.load(held)["val_images"], test_labels=np.load(held)["val_labels"])
    assert main(["calibrate", "--model", str(parent), "--data", str(both), "--no-temperature", "--low-confidence",
                 "--report-split", "test", "--dest", str(catalog), "--progress", "none"]) == 0
    other = json.loads(capsys.readouterr().out)["calibration"]
    assert other["same_split"] is False and other["report_split"] == "test" and other["figures"]["n"] == 30
    assert other["low_confidence_threshold"] == cal["low_confidence_threshold"]  # same fitting split
    card = (catalog / "blob-test" / "1.0.2" / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "split `test`, which the fit did not see" in card

    # a temperature fitted later replaces the threshold alone, and its card section
    assert main(["calibrate", "--model", str(new.path), "--data", str(npz), "--dest", str(catalog), "--version",
                 "1.0.5", "--progress", "none"]) == 0
    capsys.readouterr()
    scaled = load_package(catalog / "blob-test" / "1.0.5")
    card = (scaled.path / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "## Low-confidence threshold" not in card and card.count("## Calibration (temperature scaling)") == 1
    assert scaled.meta["calibration"]["temperature"] > 0 and "figures" not in scaled.meta["calibration"]


def test_low_confidence_alone_refuses_what_it_cannot_do(tmp_path, capsys):
    """Refused in one line, before any prediction: --low-confidence with a temperature fit (which writes its own
    threshold), and on a parent with a temperature (whose threshold was fitted with it)."""
    catalog = tmp_path / "catalog"
    parent = save_blob_package(catalog)
    npz = write_blob_npz(tmp_path / "val.npz", n=20)
    assert main(["calibrate", "--model", str(parent), "--data", str(npz), "--low-confidence", "--dest",
                 str(catalog)]) == 2
    assert "give it with --no-temperature" in capsys.readouterr().err
    assert main(["calibrate", "--model", str(parent), "--data", str(npz), "--dest", str(catalog),
                 "--progress", "none"]) == 0
    capsys.readouterr()
    assert main(["calibrate", "--model", str(catalog / "blob-test" / "1.0.1"), "--data", str(npz),
                 "--no-temperature", "--low-confidence", "--dest", str(catalog), "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert "has a temperature" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (catalog / "blob-test" / "1.0.2").exists()
