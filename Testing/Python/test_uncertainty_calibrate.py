"""``meddeeprecog calibrate``: a new package version with a calibration block; the parent is untouched."""

from __future__ import annotations

import json

import numpy as np

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
