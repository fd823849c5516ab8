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
    assert rec["clean_label"] == "normal"
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


def test_eps_in_hu_follows_the_window(tmp_path):
    from MedDeepRecogLib.packages import load_package
    from MedDeepRecogLib.robustness.scan import hu_per_unit

    path = save_blob_package(tmp_path, pipeline={"steps": [{"name": "window", "center": 40.0, "width": 400.0}]},
                             pkg_id="blob-window")
    pkg = load_package(path)
    assert pipeline_bounds(pkg.input_spec) == (0.0, 1.0)
    scan = write_blob_scan(tmp_path / "hu.nii.gz", scale=300.0, offset=-100.0)  # -100..200 HU, inside the window
    per_unit = hu_per_unit(sitk.ReadImage(str(scan)), pkg)
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
