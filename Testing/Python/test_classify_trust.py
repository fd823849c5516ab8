"""Classify's trust fields (faithfulness, uncertainty, calibrated flag), refused packages, the second modality,
and how the Slicer bridge reads them."""

from __future__ import annotations

import html
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import make_volume, refusal_line
from MedDeepRecogLib.cli import main
from MedDeepRecogLib.errors import ConfigError, ModelPackageError
from MedDeepRecogLib.fusion import classify_fusion
from MedDeepRecogLib.inference.classify import classify_scan, write_outputs
from MedDeepRecogLib.io import write_image
from MedDeepRecogLib.packages import load_package, save_package
from MedDeepRecogLib.slicer_bridge import read_classify_result
from tiny_test_package import make_tiny_package


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("trust_pkgs")
    return {kind: load_package(make_tiny_package(root, kind=kind)) for kind in ("slices2d", "volume3d")}


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    return write_image(make_volume(), tmp_path_factory.mktemp("trust_scan") / "ct.nii.gz")


def _with_meta(pkg, tmp_path, **changes):
    """The same network saved as a new package whose model.json has ``changes``."""
    meta = {k: v for k, v in pkg.meta.items() if k not in ("weights",)}
    meta.update(changes)
    meta["version"] = "0.0.9"
    return load_package(save_package(pkg.build_model("cpu"), meta, tmp_path / "variants"))


@pytest.mark.parametrize("kind", ["slices2d", "volume3d"])
def test_heatmap_gets_a_cheap_faithfulness_score(packages, scan, kind, tmp_path):
    res = classify_scan(scan, packages[kind], explain="gradcam", device="cpu")
    f = res.explain["faithfulness"]
    assert f["steps"] == 5 and len(f["deletion_curve"]) == len(f["insertion_curve"]) == 6
    # deletion starts at the explained class's probability with nothing removed and ends where insertion starts
    assert f["deletion_curve"][-1] == pytest.approx(f["insertion_curve"][0], abs=1e-3)
    assert f["deletion_curve"][0] == pytest.approx(f["insertion_curve"][-1], abs=1e-3)
    assert f["score"] == pytest.approx((f["insertion_auc"] - f["deletion_auc"])
                                       - (f["random_insertion_auc"] - f["random_deletion_auc"]), abs=1e-3)
    assert f["class"] == res.explain["class"]
    assert (f["slices"] is not None) == (kind == "slices2d") and (f["slices"] or 0) <= 6
    assert res.explain["faithfulness_caption"].startswith(f"faithfulness {f['score']:+.2f}")
    assert res.timing_s["trust"] > 0
    outputs = write_outputs(res, tmp_path)
    record = json.loads(open(outputs["json"]).read())
    assert record["explain"]["faithfulness"]["score"] == f["score"]
    assert record["uncertainty"]["calibrated"] is False and record["uncertainty"]["low_confidence"] is None
    none = classify_scan(scan, packages[kind], explain="none", device="cpu")
    assert "faithfulness" not in none.explain


def test_uncertainty_modes(packages, scan):
    vol = packages["volume3d"]
    auto = classify_scan(scan, vol, explain="none", device="cpu").uncertainty
    has_dropout = any(isinstance(m, torch.nn.Dropout3d | torch.nn.Dropout) and m.p > 0
                      for m in vol.build_model("cpu").modules())
    assert auto["mode"] == ("mc-dropout" if has_dropout else "calibration")
    tta = classify_scan(scan, vol, explain="none", device="cpu", uncertainty="tta").uncertainty
    assert tta["tta"]["samples"] == 8 and 0.0 <= tta["tta"]["predictive_entropy"] <= 1.0
    sl = classify_scan(scan, packages["slices2d"], explain="none", device="cpu", uncertainty="tta")
    # the uncertainty block's uncalibrated probabilities are classify's own
    assert np.allclose(list(sl.uncertainty["probabilities"].values()), sl.probabilities, atol=1e-5)
    assert classify_scan(scan, vol, explain="none", device="cpu", uncertainty="none").uncertainty is None
    with pytest.raises(ConfigError, match="unknown --uncertainty"):
        classify_scan(scan, vol, explain="none", device="cpu", uncertainty="bogus")


def test_calibration_scales_probabilities_and_flags_low_confidence(packages, scan, tmp_path):
    plain = classify_scan(scan, packages["slices2d"], explain="none", device="cpu")
    cal = _with_meta(packages["slices2d"], tmp_path,
                     calibration={"temperature": 3.0, "low_confidence_threshold": 0.0})
    res = classify_scan(scan, cal, explain="none", device="cpu")
    assert res.probabilities.max() < plain.probabilities.max()          # T > 1 softens
    assert res.probabilities.argmax() == plain.probabilities.argmax()  # and keeps the ranking
    assert res.uncertainty["low_confidence"] is True and res.uncertainty["temperature"] == 3.0
    assert res.label == "uncertain" and res.decision["top_class"] == plain.decision["top_class"]
    assert any("low-confidence threshold" in r for r in res.decision["reasons"])
    # the TTA block's samples are the network's own softmax, and it says so beside the calibrated figures
    tta = classify_scan(scan, cal, explain="none", device="cpu", uncertainty="tta").uncertainty
    assert tta["calibrated"] and "before the package's temperature" in tta["tta"]["probability_scale"]
    assert "probability_scale" not in classify_scan(scan, packages["slices2d"], explain="none", device="cpu",
                                                    uncertainty="tta").uncertainty["tta"]


def test_segmentation_and_roi_packages_are_refused(packages, scan, tmp_path, capsys):
    assert main(["classify", str(scan), "--model", "ts-organs-seg", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "segmentation model" in err and "meddeeprecog segment" in err
    roi = _with_meta(packages["volume3d"], tmp_path, input={**packages["volume3d"].input_spec, "kind": "roi3d"})
    with pytest.raises(ModelPackageError, match="ROI classifier.*classify_segments"):
        classify_scan(scan, roi, device="cpu")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_second_input_needs_a_fusion_package(packages, scan, tmp_path, capsys):
    args = ["classify", str(scan), "--model", str(packages["volume3d"].path), "--out", str(tmp_path / "o"),
            "--second-input", str(scan)]
    assert main(args) == 2
    assert "takes one modality" in capsys.readouterr().err


def test_fusion_package_classifies_two_scans(tmp_path, capsys):
    from MedDeepRecogLib.models import build_model

    kwargs = {"in_channels": 2, "num_classes": 2, "feature_dim": 8, "modality_dropout": 0.3,
              "encoder_kwargs": {"channels": [4, 8], "hidden": 16, "dropout": 0.0}}
    torch.manual_seed(0)
    meta = {"id": "late-test", "version": "1.0.0", "task": "classification", "description": "fusion test",
            "architecture": {"name": "late_fusion3d", "kwargs": kwargs}, "class_names": ["normal", "mass"],
            "modality": "any", "input": {"kind": "volume3d", "size": [16, 16, 16], "spacing_mm": None,
                                         "channels": 2, "modalities": ["CT", "MR"], "pipeline": {"steps": []}},
            "provenance": {"data": "constructed", "command": "test", "seed": 0, "parent": None}}
    pkg_dir = save_package(build_model("late_fusion3d", **kwargs), meta, tmp_path / "c")
    ct = write_image(make_volume(size=(20, 20, 16)), tmp_path / "ct.nii.gz")
    mr_img = sitk.Cast(make_volume(size=(16, 16, 12), spacing=(1.0, 1.4, 3.0), seed=1), sitk.sitkFloat32) + 1000
    mr = write_image(mr_img, tmp_path / "mr.nii.gz")
    res = classify_fusion(ct, mr, load_package(pkg_dir))
    assert res.explain["modalities_used"] == ["CT", "MR"] and res.heatmap is None
    assert sum(res.probabilities) == pytest.approx(1.0) and res.label in ("normal", "mass", "uncertain")
    assert main(["classify", str(ct), "--model", str(pkg_dir), "--out", str(tmp_path / "o"),
                 "--second-input", str(mr), "--report", "--progress", "none"]) == 0
    record = json.loads((tmp_path / "o" / "ct.json").read_text(encoding="utf-8"))
    assert record["explain"]["second_input"] == str(mr)
    # each scan as info guesses it (the JSON said "unknown" for a CT in HU: the guess was never made), by channel
    from MedDeepRecogLib.io import read_image
    from MedDeepRecogLib.io.image_content import guess_modality
    assert (guess_modality(read_image(ct)), guess_modality(read_image(mr))) == ("CT", "MR")
    assert record["modality_guess"] == "CT"
    assert record["inputs"] == [{"modality": "CT", "path": str(ct), "modality_guess": "CT"},
                                {"modality": "MR", "path": str(mr), "modality_guess": "MR"}]
    # the report names the second scan among the inputs, not only inside the command that reproduces it
    html = (tmp_path / "o" / "ct_report.html").read_text(encoding="utf-8")
    inputs = html[html.index("<h2>Inputs</h2>"):html.index("<h2>Result</h2>")]
    assert str(mr) in inputs and str(ct) in inputs
    assert record["probabilities"] == pytest.approx(res.probability_map(), abs=1e-5)
    with pytest.raises(ModelPackageError, match="takes 2 modalities"):
        classify_scan(ct, load_package(pkg_dir), device="cpu")
    capsys.readouterr()
    assert main(["classify", str(ct), "--model", str(pkg_dir), "--out", str(tmp_path / "alone"),
                 "--progress", "none"]) == 0   # late fusion classifies without MR, and says so
    assert "NOTE: classified without MR: not given (the model was trained on CT, MR)" in capsys.readouterr().out
    labels = write_image(sitk.Cast(make_volume(size=(16, 16, 12)) > 0, sitk.sitkUInt8), tmp_path / "labels.nrrd")
    for second, problem in ((labels, "label map or mask"), (ct, "given as the MR channel, but it is a CT in "
                                                                "Hounsfield units")):
        assert main(["classify", str(ct), "--model", str(pkg_dir), "--out", str(tmp_path / "bad"),
                     "--second-input", str(second), "--progress", "none"]) == 2
        refusal_line(capsys, str(second), problem)
    assert not (tmp_path / "bad").exists()


def test_cli_lesion_localisation_and_slicer_reading(packages, scan, tmp_path, capsys):
    image = sitk.ReadImage(str(scan))
    arr = np.zeros(image.GetSize()[::-1], np.uint8)
    arr[8:16, 10:20, 15:25] = 1
    lesion = sitk.GetImageFromArray(arr)
    lesion.CopyInformation(image)
    sitk.WriteImage(lesion, str(tmp_path / "lesion.nrrd"))
    out = tmp_path / "o"
    assert main(["classify", str(scan), "--model", str(packages["slices2d"].path), "--out", str(out),
                 "--lesion", str(tmp_path / "lesion.nrrd"), "--progress", "none"]) == 0
    assert "heatmap faithfulness" in capsys.readouterr().out
    record = json.loads((out / "ct.json").read_text(encoding="utf-8"))
    loc = record["explain"]["localisation"]
    assert loc["lesion_voxels"] == int(arr.sum()) and 0.0 <= loc["mass_inside"] <= 1.0
    res = read_classify_result(out, scan)
    assert res.faithfulness == record["explain"]["faithfulness"]["score"]
    assert res.top_class == record["top_class"] and res.faithfulness_caption in res.heatmap_text()
    assert res.confidence == record["confidence"]  # the one number the command line, PNG and report show
    # an "uncertain" record: the panel shows the top class, its probability and why
    record.update(label="uncertain", uncertain=True, uncertain_reasons=["slices disagree (40%)"])
    record["uncertainty"] = {**record["uncertainty"], "low_confidence": True}
    (out / "ct.json").write_text(json.dumps(record), encoding="utf-8")
    res = read_classify_result(out, scan)
    assert res.uncertain and res.confidence > 0 and res.low_confidence is True
    text = res.result_text()
    assert "uncertain" in text and record["top_class"] in text and "slices disagree (40%)" in text
    # low confidence is the label's, said once, in the result line; the heatmap line gives the faithfulness once
    assert text.count("low confidence") == 1 and "confidence" not in res.heatmap_text().replace(
        res.faithfulness_caption, "")
    assert res.heatmap_text().count(f"{res.faithfulness:+.2f}") == 1
    # under the result: where a slice model reads its label (the finding, with its caveat), then what was changed in
    # the scan before the model saw it (colour, the CT table)
    from MedDeepRecogLib.contract import finding_words

    assert text.count("<small>") == 1 and text.endswith(f"<small>{html.escape(finding_words(record['finding']))}"
                                                         "</small>")
    record["input_notes"] = ["the CT table under the patient was blanked before classifying on 3 of 4 slices"]
    (out / "ct.json").write_text(json.dumps(record), encoding="utf-8")
    res = read_classify_result(out, scan)
    assert res.input_notes == record["input_notes"]
    assert res.result_text().endswith("<br><small>the CT table under the patient was blanked before classifying on "
                                      "3 of 4 slices</small>")
    # an out-of-domain record: the panel names no class, not even as "most likely", and says why
    record.update(label="out-of-domain", uncertain_reasons=["outside this model's domain: none of the 4 slices "
                                                            "checked looks like the images it was trained on"])
    (out / "ct.json").write_text(json.dumps(record), encoding="utf-8")
    text = read_classify_result(out, scan).result_text()
    assert text.startswith("<b>outside this model's domain</b>: no class reported<br><i>outside this model&#x27;s")
    assert record["top_class"] not in text and "most likely" not in text and "p = " not in text


def test_the_lesion_fill_line_gives_signed_changes_that_read_right_either_way():
    """"lowers each slice's label probability by +0.025 ...; the same fill elsewhere: -0.004" said the fill elsewhere
    lowers it by -0.004, i.e. raises it. The line now gives changes, signed, with their direction in words."""
    from types import SimpleNamespace

    from MedDeepRecogLib.report import lesion_words

    result = SimpleNamespace(explain={"localisation": {"lesion_reliance": {"drop_lesion": 0.0247,
                                                                           "drop_elsewhere": -0.004}}})
    line = lesion_words(result)[-1]
    assert "changes each slice's label probability by -0.025 (a drop) on average" in line
    assert line.endswith("the same fill elsewhere: +0.004 (a rise).") and "lowers" not in line
    result.explain["localisation"]["lesion_reliance"].update(drop_lesion=-0.0001, drop_elsewhere=0.0)
    assert lesion_words(result)[-1].count("+0.000 (no change)") == 2
