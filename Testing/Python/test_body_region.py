"""The bundled body-region model: held-out MedNIST accuracy, and real CT / MR volumes through the classify path.

Real volumes differ from MedNIST's 64x64 display-windowed JPEG slices; ``inference/model_input.py`` bridges that
(CT window / per-slice stretch, crop to the body, pad square, resize). These tests run the real samples in
``../shared/data`` through that bridge and check what the model reports, including "uncertain" for scans outside its
classes.
"""

from __future__ import annotations


import numpy as np
import pytest

from MedDeepRecogLib import resources
from MedDeepRecogLib.inference.classify import classify_scan
from MedDeepRecogLib.inference.model_input import slices_from_image
from MedDeepRecogLib.io import read_image
from MedDeepRecogLib.packages import load_package

CT_SCANS = ["totalsegmentator_examples/example_ct.nii.gz", "totalsegmentator_examples/example_ct_sm.nii.gz",
            "totalsegmentator_examples/example_ct_dicom", "totalsegmentator_examples/extra_ct/aorta_ct_cropped.nii.gz",
            "totalsegmentator_examples/extra_ct/pulmonary_ct_cropped.nii.gz"]
BRAIN_MR = ["pyradiomics_testcases/brain1_image.nrrd", "pyradiomics_testcases/brain2_image.nrrd"]
OUTSIDE = ["totalsegmentator_examples/example_mr_sm.nii.gz", "pyradiomics_testcases/breast1_image.nrrd"]


@pytest.fixture(scope="module")
def package():
    return load_package("body-region")


@pytest.fixture(scope="module")
def results(package, shared_data):
    """Every real volume classified once (the module's tests read these)."""
    return {rel: classify_scan(shared_data / rel, package, explain="none", device="cpu")
            for rel in CT_SCANS + BRAIN_MR + OUTSIDE}


def test_package_is_small_documented_and_reproducible(package):
    files = list(package.path.iterdir())
    assert sum(f.stat().st_size for f in files) < 5 * 2 ** 20
    card = (package.path / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "meddeeprecog train configs/body-region.yaml" in card
    assert "meddeeprecog evaluate" in card
    assert package.meta["input"]["kind"] == "slices2d"
    assert package.path.is_relative_to(resources.BUNDLED_MODELS_DIR)
    decision = package.meta["decision"]
    assert 0.3 <= decision["min_probability"] <= 0.95 and "CXR" in decision["volume_excluded_classes"]


def test_held_out_mednist_accuracy(package, shared_data):
    from MedDeepRecogLib.training.evaluate import evaluate_package

    metrics = evaluate_package(package.path, shared_data / "mednist" / "mednist64_shared.npz", split="val",
                               device="cpu")
    assert metrics["n"] == 480
    assert metrics["accuracy"] >= 0.98
    assert metrics["accuracy"] == pytest.approx(package.meta["metrics"]["accuracy"], abs=0.01)


@pytest.mark.parametrize("rel", BRAIN_MR)
def test_brain_mr_is_mrbrain(results, rel):
    r = results[rel]
    assert r.label == "MRBrain", r.decision
    assert r.decision["modality"]["label"] == "MR"
    assert r.decision["slice_agreement"] >= 0.8


@pytest.mark.parametrize("rel", CT_SCANS)
def test_ct_is_called_ct(results, rel):
    r = results[rel]
    assert r.modality_guess == "CT"  # the scan is in HU
    assert r.decision["modality"]["label"] == "CT", r.decision
    assert r.label == "uncertain" or r.label.startswith("CT"), r.decision  # never an MR class or CXR


@pytest.mark.parametrize("rel", OUTSIDE)
def test_scans_outside_the_classes_are_not_reported_confidently(results, rel):
    r = results[rel]
    assert r.label == "uncertain", r.decision
    assert r.decision["reasons"]


def test_bridge_brings_real_slices_to_mednist_intensities(shared_data):
    """After the bridge, real CT and MR slices have MedNIST-like intensities (measured on MedNIST: CT foreground
    median 0.50, MR per-image 99.5th percentile median 0.60); raw HU / MR units are nowhere near 0..1."""
    spec = {"kind": "slices2d", "size": [64, 64]}
    ct = slices_from_image(read_image(shared_data / CT_SCANS[2]), spec).x
    mr = slices_from_image(read_image(shared_data / BRAIN_MR[0]), spec).x
    ct_body = ct[ct > 0.06]
    assert 0.35 <= float(np.median(ct_body)) <= 0.65
    assert 0.45 <= float(np.percentile(mr, 99.5)) <= 0.9
    z = np.load(shared_data / "mednist" / "mednist64_shared.npz")
    mednist_ct = z["images"][z["labels"] == 0].astype(np.float32) / 255
    assert abs(np.median(ct_body) - np.median(mednist_ct[mednist_ct > 0.06])) < 0.15


def test_a_ct_picture_is_not_refused_for_lacking_hounsfield_units(shared_data, tmp_path):
    """A PNG holds grey levels, never HU: the class_modality rule ("a CT class needs a scan in HU") does not apply
    to a picture, so held-out MedNIST CT pictures get their CT class, and the coarse modality comes from the model
    alone. A CT volume in HU is still judged by its intensities (test_ct_is_called_ct)."""
    from PIL import Image

    z = np.load(shared_data / "mednist" / "mednist64_shared.npz")
    names, labels = [str(c) for c in z["class_names"]], z["labels"].ravel()
    for cls in ("CTChest", "CTHead"):
        index = int(np.flatnonzero(labels == names.index(cls))[-1])  # the last 20 %: held out from training
        path = tmp_path / f"{cls}.png"
        Image.fromarray(z["images"][index]).save(path)
        decision = classify_scan(path, "body-region", explain="none", faithfulness=False).decision
        assert decision["top_class"] == cls and decision["label"] == cls, decision
        assert not any("HU" in r for r in decision["reasons"]), decision["reasons"]
        assert decision["modality"]["label"] == "CT" and "picture" in decision["modality"]["source"]
