"""Faithfulness, localisation and uncertainty blocks of ``classify_scan`` results: the one trust path
(``inference.trust``), on a tiny trained 3D model and a random 2D slice model."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from frontier_helpers import blob_data, save_blob_package, train, write_blob_scan
from MedDeepRecogLib.explain import gradcam
from MedDeepRecogLib.explain.faithfulness import model_randomization_check
from MedDeepRecogLib.inference.classify import classify_scan
from MedDeepRecogLib.inference.trust import (faithfulness_caption, heatmap_faithfulness, heatmap_localisation,
                                             scan_uncertainty)
from MedDeepRecogLib.packages import load_package, save_package
from MedDeepRecogLib.uncertainty import apply_temperature


@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
    return load_package(save_blob_package(tmp_path_factory.mktemp("cat")))


def _lesion(scan, masks, i) -> sitk.Image:
    lesion = sitk.GetImageFromArray(masks[i].numpy().astype(np.uint8))
    lesion.CopyInformation(sitk.ReadImage(str(scan)))
    return lesion


def test_volume_result_gets_faithfulness_and_localisation(pkg, tmp_path):
    torch.set_num_threads(1)
    x, y, masks = blob_data(4, seed=0)
    i = int(np.flatnonzero(y.numpy() == 1)[0])
    scan = write_blob_scan(tmp_path / "mass.nii.gz", label=1, seed=0)
    res = classify_scan(scan, pkg, explain="gradcam", device="cpu", faithfulness=False)
    assert res.decision["top_class"] == "mass"
    f = heatmap_faithfulness(res, pkg.build_model(), pkg.target_layer, steps=8)
    assert f["class"] == "mass" and f["method"] == "gradcam" and f["steps"] == 8 and f["slices"] is None
    assert len(f["deletion_curve"]) == 9
    assert f["deletion_auc"] < f["random_deletion_auc"]
    # the deletion curve starts at the scan's own probability of the explained class
    assert f["deletion_curve"][0] == pytest.approx(float(res.probabilities[1]), abs=1e-4)
    caption = faithfulness_caption(f)
    assert caption.startswith("faithfulness ") and "deletion AUC" in caption and "random" in caption
    loc = heatmap_localisation(res, _lesion(scan, masks, i), tolerance_mm=1.0)
    assert loc["lesion_voxels"] == 64 and loc["pointing_game"]["hit"] is True
    assert 0.0 < loc["mass_inside"] <= 1.0
    none = classify_scan(scan, pkg, explain="none", device="cpu")
    assert heatmap_faithfulness(none, pkg.build_model(), pkg.target_layer) is None
    assert heatmap_localisation(none, _lesion(scan, masks, i)) is None


def test_uncertainty_block_and_temperature(pkg, tmp_path):
    scan = write_blob_scan(tmp_path / "n.nii.gz", label=0, seed=3)
    res = classify_scan(scan, pkg, explain="none", device="cpu", uncertainty="none")
    meta = {**pkg.meta, "calibration": {"temperature": 2.0, "low_confidence_threshold": 0.3}}
    model = pkg.build_model()
    u = scan_uncertainty(res, model, meta, "tta")
    assert u["calibrated"] and u["temperature"] == 2.0 and u["mode"] == "tta"
    assert u["tta"]["samples"] == 8 and "mc_dropout" not in u  # identity + 7 flips of a volume
    assert scan_uncertainty(res, model, meta, "mc-dropout")["mc_dropout"]["samples"] == 20
    p = apply_temperature(res.probabilities, meta)
    assert np.allclose(p, [u["probabilities"]["normal"], u["probabilities"]["mass"]], atol=1e-5)
    # a temperature > 1 softens but keeps the ranking
    assert p.max() < res.probabilities.max() and p.argmax() == res.probabilities.argmax()
    assert np.array_equal(apply_temperature(res.probabilities, pkg.meta), res.probabilities)
    assert scan_uncertainty(res, model, meta, "none") is None


def test_slice_model_result(tmp_path, monkeypatch):
    torch.manual_seed(0)
    from MedDeepRecogLib.models import build_model

    model = build_model("simple_cnn2d", in_channels=1, num_classes=2, channels=[4, 8], hidden=8)
    meta = {"id": "slices-test", "version": "1.0.0", "task": "classification", "description": "random 2D",
            "architecture": {"name": "simple_cnn2d", "kwargs": {"in_channels": 1, "num_classes": 2,
                                                                 "channels": [4, 8], "hidden": 8}},
            "class_names": ["a", "b"], "modality": "any",
            "input": {"kind": "slices2d", "size": [16, 16], "spacing_mm": None, "channels": 1,
                      "pipeline": {"steps": []}},
            "explain": {"methods": ["gradcam"], "target_layer": "features.conv2"},
            "provenance": {"data": "none", "command": "test", "seed": 0, "parent": None}}
    pkg = load_package(save_package(model, meta, tmp_path / "cat"))
    scan = tmp_path / "vol.nii.gz"
    arr = np.zeros((6, 24, 24), np.float32)
    arr[:, 6:18, 6:18] = 100.0
    arr[:, 10:14, 10:14] = 200.0
    # a scan's noise: three flat values in regions of one value each are a label map, which classify refuses
    arr += np.random.default_rng(0).normal(0.0, 5.0, arr.shape).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(scan))
    res = classify_scan(scan, pkg, explain="gradcam", device="cpu")
    net = pkg.build_model()
    f = heatmap_faithfulness(res, net, "features.conv2", steps=4, max_slices=100)
    assert f is not None and 0.0 <= f["deletion_auc"] <= 1.0 and 0.0 <= f["insertion_auc"] <= 1.0
    assert f["slices"] == sum(r["voted"] for r in res.per_slice)
    # every voting slice scored as one sample: the curve starts at classify's own scan probability
    k = res.class_names.index(f["class"])
    assert f["deletion_curve"][0] == pytest.approx(float(res.probabilities[k]), abs=1e-4)
    assert heatmap_faithfulness(res, net, "features.conv2")["slices"] <= 4  # classify's default subset
    # classify's own Grad-CAM pass is reused: the curves equal those of a fresh pass over the scored slices
    assert res.feature_maps is not None and res.feature_maps.shape[0] == len(res.per_slice)
    for method in ("gradcam", "gradcampp"):
        res_m = classify_scan(scan, pkg, explain=method, device="cpu", faithfulness=False)
        fresh = heatmap_faithfulness(dataclasses.replace(res_m, feature_maps=None), net, "features.conv2",
                                     max_slices=100)
        with monkeypatch.context() as patch:  # no second Grad-CAM pass
            patch.setattr(gradcam, "explained_forward", lambda *a, **k: pytest.fail("Grad-CAM recomputed"))
            reused = heatmap_faithfulness(res_m, net, "features.conv2", max_slices=100)
        assert reused["deletion_curve"] == fresh["deletion_curve"], method
        assert reused["insertion_curve"] == fresh["insertion_curve"], method
    u = scan_uncertainty(res, net, pkg.meta, "tta")
    assert u["tta"]["samples"] == 4 and "mc_dropout" not in u  # a slice stack is flipped in-plane only
    assert u["probabilities"]["a"] == pytest.approx(float(res.probabilities[0]), abs=1e-4)


def test_attention_maps_pass_the_randomisation_check():
    """The attention of ``attention_cnn3d`` (offered by classify as ``--explain attention``) depends on the weights."""
    from MedDeepRecogLib.models import build_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    m = build_model("attention_cnn3d", channels=(4, 8), gate_channels=4, dropout=0.0)
    x, y, _ = blob_data(64, seed=1)
    m = train(m, x, y, steps=30)

    def attention(model, xb):
        with torch.no_grad():
            return model.forward_with_attention(xb)[1][:, 0]

    xb = x[y == 1][:3]
    assert model_randomization_check(m, xb, attention)["passed"]


def test_classify_fills_every_trust_field_in_one_call(pkg, tmp_path):
    x, y, masks = blob_data(4, seed=0)
    i = int(np.flatnonzero(y.numpy() == 1)[0])
    scan = write_blob_scan(tmp_path / "m.nii.gz", label=1, seed=0)
    res = classify_scan(scan, pkg, explain="gradcam", device="cpu", lesion=_lesion(scan, masks, i),
                        uncertainty="mc-dropout")
    assert set(res.explain["faithfulness"]) >= {"deletion_auc", "insertion_auc", "score"}
    assert res.explain["faithfulness_caption"] == faithfulness_caption(res.explain["faithfulness"])
    assert res.explain["localisation"]["lesion_voxels"] == 64
    assert res.uncertainty["mc_dropout"]["samples"] == 20 and res.uncertainty["low_confidence"] is None
    assert "trust" in res.timing_s
    json.dumps(res.to_json())  # everything added is JSON-able


def test_the_faithfulness_subsample_is_bounded_in_network_passes():
    """A slice of a stack costs an ensemble's members times its views: 4 slices of one network or of a 3-member
    ensemble, 2 of a 3-member ensemble with a test-time flip, at least 1."""
    from MedDeepRecogLib.inference.trust import FAITHFULNESS_MAX_SLICES, faithfulness_slices
    from MedDeepRecogLib.models.ensemble import MeanEnsemble

    kw = {"member": "simple_cnn2d", "member_kwargs": {"channels": [4, 8], "hidden": 0}, "in_channels": 1,
          "num_classes": 3}
    assert faithfulness_slices(torch.nn.Conv2d(1, 3, 3)) == FAITHFULNESS_MAX_SLICES == 4
    assert faithfulness_slices(MeanEnsemble(**kw, members=3)) == 4
    assert faithfulness_slices(MeanEnsemble(**kw, members=3, flip_axes=[1])) == 2
    assert faithfulness_slices(MeanEnsemble(**kw, members=7, flip_axes=[1])) == 1


def test_a_calibrated_picture_says_which_figures_are_scaled(tmp_path):
    """One 2D picture with a calibrated package: confidence is temperature-scaled while per_slice[0] and the
    faithfulness curves are the network's own softmax; the JSON says so (confidence_basis, probability_scale),
    as it does for a volume's slices. Without calibration nothing is added."""
    torch.manual_seed(0)
    from MedDeepRecogLib.models import build_model

    kwargs = {"in_channels": 1, "num_classes": 2, "channels": [4, 8], "hidden": 8}
    meta = {"id": "cal-pic", "version": "1.0.0", "task": "classification", "description": "random 2D",
            "architecture": {"name": "simple_cnn2d", "kwargs": kwargs}, "class_names": ["a", "b"],
            "modality": "any", "input": {"kind": "slices2d", "size": [16, 16], "spacing_mm": None, "channels": 1,
                                         "pipeline": {"steps": []}},
            "explain": {"methods": ["gradcam"], "target_layer": "features.conv2"},
            "provenance": {"data": "none", "command": "test", "seed": 0, "parent": None}}
    model = build_model("simple_cnn2d", **kwargs)
    plain = load_package(save_package(model, meta, tmp_path / "a"))
    cal = load_package(save_package(model, {**meta, "version": "1.0.1", "calibration": {"temperature": 3.0}},
                                    tmp_path / "b"))
    rng = np.random.default_rng(0)
    arr = np.zeros((24, 24), np.float32)
    arr[6:18, 6:18] = 100.0
    arr += rng.normal(0, 10, arr.shape).astype(np.float32)
    pic = tmp_path / "pic.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.clip(arr, 0, 255).astype(np.uint8)), str(pic))
    a = classify_scan(pic, plain, explain="gradcam", device="cpu").to_json()
    b = classify_scan(pic, cal, explain="gradcam", device="cpu").to_json()
    assert len(b["per_slice"]) == 1 and b["per_slice"][0]["probability"] == a["per_slice"][0]["probability"]
    assert b["confidence"] != pytest.approx(b["per_slice"][0]["probability"], abs=1e-3)
    assert "the per-slice probabilities and the faithfulness curves are the network's own" in b["confidence_basis"]
    assert "temperature 3" in b["confidence_basis"]
    assert b["explain"]["faithfulness"]["probability_scale"].startswith("the network's softmax")
    assert b["explain"]["faithfulness"]["deletion_curve"][0] == pytest.approx(b["per_slice"][0]["probability"],
                                                                              abs=1e-3)
    assert a["confidence_basis"] == f"the scan's probability for {a['top_class']}"
    assert "probability_scale" not in a["explain"]["faithfulness"]
