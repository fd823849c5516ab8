"""``meddeeprecog robustness`` end to end on a tiny package: one scan (panel contract) and a data set."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from frontier_helpers import save_blob_package, write_blob_npz, write_blob_scan
from MedDeepRecogLib.cli import main
from MedDeepRecogLib.robustness.scan import pipeline_bounds


@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
    return save_blob_package(tmp_path_factory.mktemp("catalog"))


def _last_json(capsys):
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert lines and lines[-1]["stage"] == "done" and lines[-1]["fraction"] == 1.0
    assert all(0.0 <= r["fraction"] <= 1.0 for r in lines)
    return lines[-1]["result"]


def test_scan_mode_reports_smallest_flipping_eps_and_writes_outputs(pkg, tmp_path, capsys):
    scan = write_blob_scan(tmp_path / "case.nii.gz", label=0)
    out = tmp_path / "out"
    rc = main(["robustness", "--model", str(pkg), "--input", str(scan), "--out", str(out), "--attack", "pgd",
               "--eps", "0.01", "0.05,0.1", "0.3", "--steps", "4", "--bounds", "0", "1", "--write-perturbation",
               "--progress", "json"])
    assert rc == 0
    result = _last_json(capsys)
    rec = json.loads((out / "case_robustness.json").read_text(encoding="utf-8"))
    assert result["json"] == str(out / "case_robustness.json")
    assert rec["clean_label"] == rec["top_class"] == "normal" and "out_of_domain" not in rec
    assert rec["model_modality"] == "CT" and rec["scan_modality"] == "MR"  # the blob scan is not in HU
    assert [p["eps"] for p in rec["curve"]] == [0.01, 0.05, 0.1, 0.3]
    e = rec["smallest_flipping_eps"]
    assert e is not None and result["smallest_flipping_eps"] == e
    assert rec["flip"]["flipped"] and rec["flip"]["label"] == "mass"
    # CT without preprocessing: one model unit is one HU
    assert rec["hu_per_unit"] == pytest.approx(1.0, rel=0.05)
    assert rec["smallest_flipping_eps_hu"] == pytest.approx(e, rel=0.05)
    assert (out / "case_robustness.png").stat().st_size > 1000
    pert = sitk.ReadImage(str(out / "case_perturbation.nrrd"))
    src = sitk.ReadImage(str(scan))
    assert pert.GetSize() == src.GetSize() and np.allclose(pert.GetSpacing(), src.GetSpacing())
    arr = sitk.GetArrayFromImage(pert)
    assert 0 < np.abs(arr).max() <= e + 1e-5


def test_an_out_of_domain_scan_is_reported_as_classify_reports_it(tmp_path, capsys):
    """A CT in HU through an MR model: classify reports no class ("out-of-domain", with the reason), so robustness
    says the same in its JSON, its summary and its printed lines, and names whose modality is whose."""
    from MedDeepRecogLib.slicer_bridge.outputs import robustness_summary

    mr = save_blob_package(tmp_path / "cat", modality="MR", pkg_id="blob-mr")
    scan = write_blob_scan(tmp_path / "ct.nii.gz", label=0, scale=1000.0, offset=-1000.0)
    out = tmp_path / "out"
    assert main(["robustness", "--model", str(mr), "--input", str(scan), "--out", str(out), "--attack", "fgsm",
                 "--eps", "0.05", "--refine", "0", "--progress", "none"]) == 0
    printed = capsys.readouterr().out
    rec = json.loads((out / "ct_robustness.json").read_text(encoding="utf-8"))
    assert rec["clean_label"] == "out-of-domain" and rec["top_class"] in ("normal", "mass")
    assert "is CT in Hounsfield units" in rec["out_of_domain"] and "reads MR images" in rec["out_of_domain"]
    assert rec["model_modality"] == "MR" and rec["scan_modality"] == "CT" and "modality" not in rec
    assert printed.splitlines()[0] == f"{scan}: out-of-domain: {rec['out_of_domain']}"
    assert f"the network's top class {rec['top_class']}" in printed and "is a guess" in printed
    assert json.loads(printed[printed.index("{"):])["out_of_domain"] == rec["out_of_domain"]
    assert robustness_summary(rec)[0].startswith("Out-of-domain (")


def test_eps_in_hu_follows_the_window(tmp_path):
    from MedDeepRecogLib.packages import load_package
    from MedDeepRecogLib.robustness.scan import units_per_hu

    path = save_blob_package(tmp_path, pipeline={"steps": [{"name": "window", "center": 40.0, "width": 400.0}]},
                             pkg_id="blob-window")
    pkg = load_package(path)
    assert pipeline_bounds(pkg.input_spec) == (0.0, 1.0)
    scan = write_blob_scan(tmp_path / "hu.nii.gz", scale=300.0, offset=-100.0)  # -100..200 HU, inside the window
    per_unit = units_per_hu(sitk.ReadImage(str(scan)), pkg)
    assert 1.0 / per_unit == pytest.approx(400.0, rel=0.03)


def test_data_mode_clean_vs_robust(pkg, tmp_path, capsys):
    npz = write_blob_npz(tmp_path / "blobs.npz")
    out = tmp_path / "data_out"
    rc = main(["robustness", "--model", str(pkg), "--data", str(npz), "--out", str(out), "--attack", "fgsm",
               "--eps", "0.02", "0.2", "--progress", "json"])
    assert rc == 0
    _last_json(capsys)
    rec = json.loads((out / "robustness.json").read_text(encoding="utf-8"))
    assert rec["n"] == 40 and rec["clean"]["accuracy"] >= 0.9
    assert rec["robust"][1]["accuracy"] <= rec["robust"][0]["accuracy"] <= rec["clean"]["accuracy"]
    assert (out / "robustness.png").is_file()


def _sorted_blob_npz(path, classes=(0, 1)):
    """A val split sorted by class (all "normal" first), as real files often are, of only ``classes``."""
    from frontier_helpers import blob_data

    x, y, _ = blob_data(40, seed=4)
    x, y = x[:, 0].numpy(), y.numpy()
    keep = np.concatenate([np.flatnonzero(y == c) for c in classes])
    np.savez_compressed(path, val_images=x[keep], val_labels=y[keep])
    return path


def test_even_class_sample_spreads_over_the_classes_the_same_every_run():
    from MedDeepRecogLib.training.data import even_class_sample

    y = np.repeat([0, 1, 2], [20, 50, 27])   # BUSI's val split: normal, benign, malignant
    idx = even_class_sample(y, 16, seed=0)
    assert np.bincount(y[idx]).tolist() == [5, 6, 5] and np.all(np.diff(idx) > 0)
    assert np.array_equal(idx, even_class_sample(y, 16, seed=0))
    assert np.bincount(y[even_class_sample(y, 70)]).tolist() == [20, 25, 25]   # a small class gives all it has
    assert np.array_equal(even_class_sample(y, 500), np.arange(len(y)))


def test_max_cases_takes_both_classes_of_a_split_sorted_by_class(pkg, tmp_path, capsys):
    """The first 8 cases of the file are all "normal"; --max-cases 8 takes 4 of each, the same ones every run,
    and the JSON says how."""
    npz = _sorted_blob_npz(tmp_path / "sorted.npz")
    runs = []
    for out in (tmp_path / "a", tmp_path / "b"):
        assert main(["robustness", "--model", str(pkg), "--data", str(npz), "--split", "val", "--max-cases", "8",
                     "--out", str(out), "--attack", "fgsm", "--eps", "0.05", "--progress", "none"]) == 0
        printed = json.loads(capsys.readouterr().out)
        runs.append(json.loads((out / "robustness.json").read_text(encoding="utf-8")))
        assert printed["cases"] == runs[-1]["cases"]
    rec = runs[0]
    assert rec["n"] == 8 and rec["cases"]["per_class"] == {"normal": {"used": 4, "of": 20},
                                                           "mass": {"used": 4, "of": 20}}
    assert rec["cases"]["seed"] == 0 and "even over the classes" in rec["cases"]["chosen"]
    assert rec["clean"]["balanced_accuracy"] is not None and rec["clean"]["auc"] is not None and "note" not in rec
    assert runs[1]["clean"] == rec["clean"] and runs[1]["robust"] == rec["robust"]


def test_one_class_gets_a_note_not_balanced_accuracy_or_auc(pkg, tmp_path, capsys):
    npz = _sorted_blob_npz(tmp_path / "normal_only.npz", classes=(0,))
    out = tmp_path / "o"
    assert main(["robustness", "--model", str(pkg), "--data", str(npz), "--split", "val", "--out", str(out),
                 "--attack", "fgsm", "--eps", "0.05", "--progress", "none"]) == 0
    printed = json.loads(capsys.readouterr().out)
    rec = json.loads((out / "robustness.json").read_text(encoding="utf-8"))
    assert rec["cases"]["chosen"] == "all cases of the split" and rec["n"] == 20
    for figures in (rec["clean"], *rec["robust"], printed["clean"]):
        assert figures["balanced_accuracy"] is None and figures["auc"] is None and figures["accuracy"] is not None
    assert "one class (normal)" in rec["note"] and printed["note"] == rec["note"]


@pytest.mark.parametrize("eps,msg", [("0", "eps must be > 0"), ("-0.1", "eps must be > 0"),
                                     ("2", "outside the model's intensity range")])
def test_bad_eps_is_a_one_line_error(pkg, tmp_path, capsys, eps, msg):
    scan = write_blob_scan(tmp_path / "c.nii.gz")
    rc = main(["robustness", "--model", str(pkg), "--input", str(scan), "--out", str(tmp_path / "o"),
               "--eps", eps, "--bounds", "0", "1", "--progress", "none"])
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_missing_model_or_source_is_a_clear_error(pkg, tmp_path, capsys):
    assert main(["robustness", "--input", "x.nii.gz", "--out", str(tmp_path)]) == 2
    assert "--model is required" in capsys.readouterr().err
    assert main(["robustness", "--model", str(pkg), "--out", str(tmp_path)]) == 2
    assert "--input SCAN, --data NPZ" in capsys.readouterr().err


def test_bounds_that_do_not_contain_the_input_are_refused(pkg, tmp_path, capsys):
    """Every attacked input is clipped to --bounds: bounds narrower than the clean input would move the scan itself
    by more than eps (a perturbation of -0.5 at eps 0.01), so they are refused for a scan and for a data set."""
    scan = write_blob_scan(tmp_path / "c.nii.gz")  # the blob's intensities run up to about 1
    npz = write_blob_npz(tmp_path / "blobs.npz")
    for source in (["--input", str(scan)], ["--data", str(npz)]):
        rc = main(["robustness", "--model", str(pkg), *source, "--out", str(tmp_path / "o"), "--eps", "0.01",
                   "--bounds", "0", "0.5", "--progress", "none"])
        err = capsys.readouterr().err
        assert rc == 2 and "--bounds 0 0.5 do not contain the model input" in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_a_bad_second_scan_leaves_no_output_of_the_first(pkg, tmp_path, capsys):
    good = write_blob_scan(tmp_path / "good.nii.gz")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti at all")
    rc = main(["robustness", "--model", str(pkg), "--input", str(good), str(bad), "--out", str(tmp_path / "o"),
               "--eps", "0.05", "--steps", "1", "--refine", "0", "--progress", "none"])
    err = capsys.readouterr().err
    assert rc == 2 and "bad.nii.gz" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_fusion_refuses_uncertainty_it_does_not_compute(tmp_path, capsys):
    scan = write_blob_scan(tmp_path / "a.nii.gz")
    rc = main(["classify", str(scan), "--model", "body-region", "--second-input", str(scan), "--uncertainty", "tta",
               "--out", str(tmp_path / "o"), "--progress", "none"])
    err = capsys.readouterr().err
    assert rc == 2 and "--uncertainty tta is not available with --second-input" in err


def test_a_binary_mask_model_reports_eps_without_hu(shared_data, tmp_path, capsys):
    """adrenal-mass-3d-adv reads shape masks (0/255), not CT intensities: its eps has no HU equivalent, and the
    record says its probabilities are the network's own, before the package's temperature."""
    z = np.load(shared_data / "adrenalmnist3d" / "adrenalmnist3d_trainval.npz")
    mask = sitk.GetImageFromArray((z["val_images"][0] > 0).astype(np.uint8) * 255)
    scan = tmp_path / "case0.nii.gz"
    sitk.WriteImage(mask, str(scan))
    rc = main(["robustness", "--model", "adrenal-mass-3d-adv", "--input", str(scan), "--out", str(tmp_path / "o"),
               "--eps", "0.1", "--steps", "1", "--refine", "0", "--progress", "none"])
    assert rc == 0, capsys.readouterr().err
    rec = json.loads((tmp_path / "o" / "case0_robustness.json").read_text(encoding="utf-8"))
    assert rec["hu_per_unit"] is None and "eps_hu" not in rec["curve"][0]
    assert "before the package's temperature" in rec["probability_scale"]
    assert "HU" not in capsys.readouterr().out


def test_eps_in_hu_of_a_thin_ct_stack_follows_the_window(shared_data):
    """A CT of a few slices: the lung model's mediastinal window (W400) makes one model unit 400 HU, whatever the
    stack's depth (1-voxel checkerboard blocks on a 4-slice stack read 464)."""
    from MedDeepRecogLib.packages import load_package
    from MedDeepRecogLib.robustness.scan import units_per_hu

    ct = sitk.ReadImage(str(shared_data / "totalsegmentator_examples" / "example_ct_sm.nii.gz"))
    pkg = load_package("lung-ct-cancer")
    for depth in (1, 4):
        stack = ct[:, :, 13:13 + depth]
        assert 1.0 / units_per_hu(stack, pkg) == pytest.approx(400.0, rel=0.02), depth


def test_eps_in_hu_of_body_region_is_its_ct_window_in_any_file_format(shared_data, tmp_path, capsys):
    """body-region maps a CT's HU through its fixed window, so one model unit is the window's width in HU whether
    the CT comes as a DICOM series, one DICOM file of it or an NRRD of it (a test pattern pushed through the whole
    slice preparation moved each slice's crop box, and read 234 to 1326 HU per unit for the 2000 HU window)."""
    from MedDeepRecogLib.io import read_image
    from MedDeepRecogLib.packages import load_package
    from MedDeepRecogLib.preprocessing.slices import slice_options

    low, high = slice_options(load_package("body-region").input_spec)["ct_window"]
    width = float(high) - float(low)   # HU
    series = shared_data / "totalsegmentator_examples" / "example_ct_dicom"
    nrrd = tmp_path / "series.nrrd"
    sitk.WriteImage(read_image(series), str(nrrd))
    for k, scan in enumerate((series, sorted(series.iterdir())[0], nrrd)):
        out = tmp_path / f"o{k}"
        assert main(["robustness", "--model", "body-region", "--input", str(scan), "--out", str(out), "--attack",
                     "fgsm", "--eps", "0.1", "--refine", "0", "--progress", "none"]) == 0, capsys.readouterr().err
        rec = json.loads(next(out.glob("*_robustness.json")).read_text(encoding="utf-8"))
        assert rec["scan_modality"] == "CT"
        assert rec["hu_per_unit"] == pytest.approx(width, rel=1e-6), scan
        assert rec["curve"][0]["eps_hu"] == pytest.approx(0.1 * width, rel=1e-6)
        assert f"eps 0.1 ({0.1 * width:.1f} HU)" in capsys.readouterr().out


def test_clean_probability_is_the_one_classify_reports(shared_data, tmp_path, capsys):
    """brain1 through the brain tumour model: some slices with body fail the package's out-of-domain check and do not
    vote in classify's prediction, so they do not vote in the attacked prediction either, and robustness starts from
    the probability classify reports (it read 0.788 where classify reported 0.821 when every body slice voted)."""
    scan = shared_data / "pyradiomics_testcases" / "brain1_image.nrrd"
    assert main(["classify", str(scan), "--model", "brain-tumour-mri", "--out", str(tmp_path / "c"), "--explain",
                 "none", "--uncertainty", "none", "--progress", "none"]) == 0, capsys.readouterr().err
    classified = json.loads((tmp_path / "c" / "brain1_image.json").read_text(encoding="utf-8"))
    assert any(r.get("in_domain") is False for r in classified["per_slice"])  # the case this test is about
    assert main(["robustness", "--model", "brain-tumour-mri", "--input", str(scan), "--out", str(tmp_path / "r"),
                 "--attack", "fgsm", "--eps", "0.01", "--refine", "0", "--progress", "none"]) == 0
    rec = json.loads((tmp_path / "r" / "brain1_image_robustness.json").read_text(encoding="utf-8"))
    assert rec["top_class"] == classified["top_class"]
    assert rec["clean_probability"] == pytest.approx(classified["probabilities"][classified["top_class"]], abs=1e-3)
    # and the label and confidence classify reports, over the same voting slices
    assert (rec["clean_label"], rec["clean_confidence"]) == (classified["label"], classified["confidence"])


def test_a_flip_is_a_change_of_the_label_classify_reports(shared_data, tmp_path, capsys):
    """body-region on the TotalSegmentator example CT: classify reports "uncertain" (confidence 0.65, below the
    model's 0.70). robustness starts from that label and confidence, and an attack that moves the network's top class
    to CTChest while classify still reports "uncertain" is no flip (robustness reported "CTAbd p=0.675" flipping to
    CTChest at 17.5 HU, a change classify's output never showed)."""
    from MedDeepRecogLib.slicer_bridge.outputs import robustness_summary

    scan = shared_data / "totalsegmentator_examples" / "example_ct_sm.nii.gz"
    assert main(["classify", str(scan), "--model", "body-region", "--out", str(tmp_path / "c"), "--explain", "none",
                 "--progress", "none"]) == 0, capsys.readouterr().err
    classified = json.loads((tmp_path / "c" / "example_ct_sm.json").read_text(encoding="utf-8"))
    assert classified["label"] == "uncertain" and classified["top_class"] == "CTAbd"  # the case this test is about
    capsys.readouterr()
    assert main(["robustness", "--model", "body-region", "--input", str(scan), "--out", str(tmp_path / "r"),
                 "--attack", "pgd", "--eps", "0.00875", "0.02", "--steps", "5", "--refine", "0", "--threads", "1",
                 "--progress", "none"]) == 0
    printed = capsys.readouterr().out
    rec = json.loads((tmp_path / "r" / "example_ct_sm_robustness.json").read_text(encoding="utf-8"))
    assert (rec["clean_label"], rec["top_class"], rec["clean_confidence"]) == ("uncertain", "CTAbd",
                                                                              classified["confidence"])
    assert rec["clean_uncertain_reasons"] == classified["uncertain_reasons"]
    assert "label classify reports" in rec["flip_means"]
    low, high = rec["curve"]
    # the network's top class moved, what classify reports did not
    assert low["top_class"] == "CTChest" and low["label"] == "uncertain" and not low["flipped"]
    assert high["label"] == "CTChest" and high["confidence"] >= 0.7 and high["flipped"]
    assert rec["smallest_flipping_eps"] == 0.02 and rec["flip"]["label"] == "CTChest"
    first = printed.splitlines()[0]
    assert first.startswith(f"{scan}: uncertain (top class CTAbd, confidence {classified['confidence']:.2f})")
    assert "-> uncertain (top class CTChest" in printed
    text, _ = robustness_summary(rec)
    assert text.startswith(f"'uncertain' (top class CTAbd, confidence {classified['confidence']:.2f}) flips to "
                           "'CTChest'")


def test_the_decision_on_an_attacked_output_is_classifys(shared_data):
    """``decision_for_logits`` applies classify's rules to another output of the network on the same scan: the
    clean output gives classify's own decision, and an output with no preference is "uncertain" by the calibrated
    package's low-confidence rule, as classify would report it."""
    import torch

    from MedDeepRecogLib.inference.classify import classify_scan, decision_for_logits
    from MedDeepRecogLib.packages import load_package
    from MedDeepRecogLib.robustness.scan import decision_of, model_input_of

    pkg = load_package("adrenal-mass-3d-adv")
    assert (pkg.meta.get("calibration") or {}).get("low_confidence_threshold") is not None
    z = np.load(shared_data / "adrenalmnist3d" / "adrenalmnist3d_trainval.npz")
    mask = sitk.GetImageFromArray((z["val_images"][0] > 0).astype(np.uint8) * 255)
    result, x, forward = model_input_of(mask, pkg)
    assert decision_of(result, pkg, forward, x) == result.decision
    flat = decision_for_logits(result, pkg, torch.zeros(1, len(pkg.class_names)))
    assert flat["label"] == "uncertain" and any("low-confidence threshold" in r for r in flat["reasons"])
    # the rule is part of the decision: a scan classified without uncertainty figures is judged by it too
    plain = classify_scan(mask, pkg, explain="none", uncertainty="none")
    assert plain.uncertainty is None and plain.decision == result.decision
    assert decision_for_logits(plain, pkg, torch.zeros(1, len(pkg.class_names)))["label"] == "uncertain"


def _four_d(path):
    """A 4D image (two time points of a blob scan): classify refuses it."""
    vol = sitk.GetImageFromArray(np.zeros((16, 16, 16), dtype=np.float32))
    sitk.WriteImage(sitk.JoinSeries([vol, vol]), str(path))
    return path


@pytest.mark.parametrize("bad", ["label map", "4D"])
def test_a_scan_classify_refuses_leaves_no_output_of_the_scans_before_it(pkg, shared_data, tmp_path, capsys, bad):
    """robustness --input A B where B reads as an image but classify refuses it (a label map, a 4D file): one line
    naming B, exit 2, and nothing of A in --out, whether robustness made --out or it held a user's file already."""
    good = write_blob_scan(tmp_path / "good.nii.gz")
    wrong = (shared_data / "pyradiomics_testcases" / "brain1_label.nrrd" if bad == "label map"
             else _four_d(tmp_path / "series4d.nii.gz"))
    notes = tmp_path / "kept" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("mine", encoding="utf-8")
    for out in (tmp_path / "new", notes.parent):
        rc = main(["robustness", "--model", str(pkg), "--input", str(good), str(wrong), "--out", str(out),
                   "--eps", "0.05", "--steps", "1", "--refine", "0", "--progress", "none"])
        err = capsys.readouterr().err
        assert rc == 2 and str(wrong) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in notes.parent.iterdir()) == ["notes.txt"]
    assert notes.read_text(encoding="utf-8") == "mine"


def test_a_failed_write_removes_the_files_of_the_run(pkg, tmp_path, capsys, monkeypatch):
    """The second scan's JSON cannot be written (a full disk, say): the first scan's files, written a moment before,
    are removed again, and so is the --out folder the run made."""
    import MedDeepRecogLib.io as io
    from MedDeepRecogLib.errors import OutputError

    real, calls = io.atomic_write_json, []

    def failing_second(path, data, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OutputError("cannot write: no space left on the device", path)
        return real(path, data, *args, **kwargs)

    monkeypatch.setattr(io, "atomic_write_json", failing_second)
    scans = [write_blob_scan(tmp_path / f"{name}.nii.gz", label=k) for k, name in enumerate(("a", "b"))]
    out = tmp_path / "o"
    rc = main(["robustness", "--model", str(pkg), "--input", *map(str, scans), "--out", str(out), "--eps", "0.05",
               "--steps", "1", "--refine", "0", "--progress", "none"])
    err = capsys.readouterr().err
    assert rc == 2 and "no space left" in err and len(err.strip().splitlines()) == 1
    assert len(calls) == 2 and not out.exists()


def test_data_mode_gives_eps_in_hu_where_the_package_defines_it_and_names_the_attack(tmp_path, capsys):
    """lung-ct-cancer's --data report gave eps only in model units (--input gave 0.01 = 4.0 HU) and its printed
    summary and PNG title left out the attack, steps, split and n of N cases (audit F8)."""
    path = save_blob_package(tmp_path / "cat", pipeline={"steps": [{"name": "window", "center": 100.0,
                                                                     "width": 400.0}]}, pkg_id="blob-window")
    npz = write_blob_npz(tmp_path / "blobs.npz")
    out = tmp_path / "data_out"
    assert main(["robustness", "--model", str(path), "--data", str(npz), "--out", str(out), "--attack", "pgd",
                 "--steps", "2", "--eps", "0.01", "--max-cases", "12", "--progress", "none"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["attack"], printed["steps"], printed["split"], printed["n"], printed["of"]) == ("pgd", 2, "val",
                                                                                                  12, 40)
    assert "400 HU" in printed["eps_conversion"]
    rec = json.loads((out / "robustness.json").read_text(encoding="utf-8"))
    assert rec["eps_unit"] == "HU" and rec["robust"][0]["eps_hu"] == pytest.approx(4.0)


def test_eps_conversion_follows_the_package_input_and_says_when_there_is_none():
    from MedDeepRecogLib.robustness.scan import eps_conversion

    lung = {"kind": "slices2d", "pipeline": {"steps": []}, "slices": {"ct_window": [-160.0, 240.0]}}
    assert eps_conversion(lung, "CT")["per_unit"] == 400.0 and eps_conversion(lung, "CT")["unit"] == "HU"
    us = eps_conversion({"kind": "slices2d", "pipeline": {"steps": []}}, "US")
    assert us["per_unit"] == 255.0 and "standardised image" in us["unit"] and "no fixed conversion" in us["how"]
    mr = eps_conversion({"kind": "volume3d", "pipeline": {"steps": [{"name": "normalize"}]}}, "MR")
    assert mr["per_unit"] is None and "no defined conversion" in mr["how"]
