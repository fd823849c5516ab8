"""Every bundled package loads and scores as recorded before the code was reorganised (issue 15).

The figures in ``Testing/Data/bundled_scores.json`` were recorded on the tree before the move (commit e48b0bc) with
``classify_scan``'s defaults on CPU, twice (1 and 2 threads, identical), and the reorganised tree reproduced them bit
for bit on the recording machine; a package bundled later is recorded once when it is added (:func:`record`).
Another CPU's floating-point kernels (oneDNN picks AVX2 or AVX-512 code) may move the last bits, so the comparison
allows what rounding can explain and nothing a change of behaviour would give: probabilities within 1e-6, figures
rounded to 4 places within one unit of the last place, and the segmentation's voxel counts within 0.1 %. The
label-array hash is compared where the counts are identical (the recording CPU).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MedDeepRecogLib.inference.classify import classify_scan
from MedDeepRecogLib.packages import load_package
from MedDeepRecogLib.resources import sample_path

RECORDED = json.loads((Path(__file__).resolve().parents[1] / "Data" / "bundled_scores.json").read_text())
BUNDLED = Path(sample_path("abdomen_ct.nii.gz")).parents[1] / "models"


def gland_mask(size: int = 40, spacing: float = 2.29) -> sitk.Image:
    """A binary adrenal-like shape (two overlapping ellipsoids, 0/255 uint8) as the adrenal packages read it."""
    z, y, x = np.meshgrid(*[np.arange(size, dtype=np.float64) - (size - 1) / 2] * 3, indexing="ij")
    blob = ((x / 9.0) ** 2 + (y / 6.0) ** 2 + ((z - 2.0) / 7.5) ** 2 <= 1.0) | \
           (((x - 5.0) / 4.0) ** 2 + ((y + 3.0) / 4.0) ** 2 + ((z + 4.0) / 4.0) ** 2 <= 1.0)
    image = sitk.GetImageFromArray((blob * 255).astype(np.uint8))
    image.SetSpacing((spacing,) * 3)
    return image


def _input(name: str) -> sitk.Image:
    if name == "gland":
        return gland_mask()
    if name == "abdomen_ct":
        return sitk.ReadImage(str(sample_path("abdomen_ct.nii.gz")))
    mr = sitk.ReadImage(str(sample_path("brain1_mr.nrrd")))
    return mr if name == "brain1_mr" else mr[:, :, 12]  # brain1_mr_slice12: a 2D picture


def test_every_bundled_classifier_is_recorded():
    """The record covers every bundled classification package (a new one must be added to it)."""
    refs = set()
    for meta_path in BUNDLED.glob("*/*/model.json"):
        meta = json.loads(meta_path.read_text())
        if meta.get("task", "classification") == "classification":
            refs.add(f"{meta['id']}@{meta['version']}")
    assert refs and refs == {key.split()[0] for key in RECORDED["classify"]}


@pytest.mark.parametrize("case", sorted(RECORDED["classify"]))
def test_bundled_package_scores_as_recorded(case):
    expected = RECORDED["classify"][case]
    got = record(case)
    np.testing.assert_allclose(got["probabilities"], expected["probabilities"], rtol=0, atol=1e-6)
    assert got["label"] == expected["label"]
    if "per_slice" in expected:
        np.testing.assert_allclose(got["per_slice"], expected["per_slice"], rtol=0, atol=1.5e-4)
    assert (got["faithfulness"] is None) == (expected["faithfulness"] is None)
    if got["faithfulness"] is not None:
        assert got["faithfulness"] == pytest.approx(expected["faithfulness"], abs=1.5e-3)
    _assert_close(got["uncertainty"], expected["uncertainty"])


def _assert_close(got, expected, path: str = "uncertainty") -> None:
    """Equal structure and text; numbers (rounded to at most 4 places when recorded) within a rounding step."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and set(got) == set(expected), path
        for key in expected:
            _assert_close(got[key], expected[key], f"{path}/{key}")
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), path
        for i, (g, e) in enumerate(zip(got, expected)):
            _assert_close(g, e, f"{path}/{i}")
    elif isinstance(expected, bool) or not isinstance(expected, (int, float)):
        assert got == expected, path
    else:
        assert got == pytest.approx(expected, abs=1.5e-4, rel=1e-5), path


def test_bundled_segmentation_labels_as_recorded(tmp_path, run_cli_all):
    (ref, expected), = RECORDED["segment"].items()
    out = tmp_path / "ct.seg.nrrd"
    code, stdout, stderr = run_cli_all("segment", sample_path("abdomen_ct.nii.gz"), "--model", ref.split()[0].split("@")[0],
                                       "--out", out, "--device", "cpu")
    assert code == 0, stderr
    labels = np.ascontiguousarray(sitk.GetArrayFromImage(sitk.ReadImage(str(out))))
    voxels = {k: v["voxels"] for k, v in json.loads(stdout)["segments"].items()}
    assert set(voxels) == set(expected["voxels"])
    for name, count in expected["voxels"].items():
        assert abs(voxels[name] - count) <= max(1, 0.001 * count), name
    if voxels == expected["voxels"]:
        assert hashlib.sha256(labels.tobytes()).hexdigest() == expected["labels_sha256"]


def record(case: str) -> dict:
    """The entry for ``case`` ("<id>@<version> <input>") as ``classify_scan`` gives it now: what the test compares
    with the record, and (``__main__``) how a new bundled package is recorded once, never to refresh a failing one."""
    ref, name = case.split()
    result = classify_scan(_input(name), load_package(ref), device="cpu")
    entry = {"probabilities": [float(p) for p in result.probabilities], "label": result.decision["label"],
             "faithfulness": (result.explain.get("faithfulness") or {}).get("score"),
             "uncertainty": json.loads(json.dumps({k: v for k, v in (result.uncertainty or {}).items()
                                                   if isinstance(v, (int, float, str, list, dict))}))}
    if result.per_slice and "probability" in result.per_slice[0]:  # slice models (a CNN-LSTM lists attention)
        entry["per_slice"] = [s["probability"] for s in result.per_slice]  # already to 4 places
    return entry


if __name__ == "__main__":
    # python Testing/Python/test_bundled_scores.py "<id>@<version> <input>" ...: add these cases to the record
    import sys

    data = json.loads((Path(__file__).resolve().parents[1] / "Data" / "bundled_scores.json").read_text())
    for case in sys.argv[1:]:
        if case in data["classify"]:
            raise SystemExit(f"{case} is already recorded; a recorded case is never overwritten")
        data["classify"][case] = record(case)
    (Path(__file__).resolve().parents[1] / "Data" / "bundled_scores.json").write_text(json.dumps(data, indent=1) + "\n")
