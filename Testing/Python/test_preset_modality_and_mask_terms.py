"""preprocess's presets warn by the modality their steps are made for, both ways (an MR preset on a CT in HU wrote a
'head' mask over an abdomen and ran N4 on HU without a word, while lung-ct on an MR warned), and its masks carry the
SNOMED CT terminology segment's outputs carry."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio


def _volume(path, ct: bool):
    rng = np.random.default_rng(0)
    arr = rng.normal(40 if ct else 300, 10, (12, 32, 32)).astype(np.float32)
    yy, xx = np.mgrid[:32, :32]
    outside = (yy - 16) ** 2 + (xx - 16) ** 2 > 12 ** 2
    arr[:, outside] = -1000 if ct else 0
    if ct:
        arr[4:8, 12:20, 8:14] = -850   # a lung-like air pocket inside
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((1.5, 1.5, 3.0))
    sitk.WriteImage(image, str(path))
    return path


@pytest.mark.parametrize("pipeline, steps", [("brain-mri", "head_mask, n4"), ("breast-mri", "body_mask, n4")])
def test_an_mr_preset_on_a_ct_in_hu_warns(run_cli_area, tmp_path, pipeline, steps):
    ct = _volume(tmp_path / "ct.nii.gz", ct=True)
    code, _, err = run_cli_area("preprocess", ct, tmp_path / "out.nrrd", "--pipeline", pipeline)
    assert code == 0, err
    warning = [ln for ln in err.splitlines() if "warning" in ln and "made for MR" in ln]
    assert warning and steps in warning[0] and "CT in HU" in warning[0], err


def test_an_mr_preset_on_an_mr_says_nothing_and_lung_ct_on_it_still_warns(run_cli_area, tmp_path):
    mr = _volume(tmp_path / "mr.nii.gz", ct=False)
    code, _, err = run_cli_area("preprocess", mr, tmp_path / "out.nrrd", "--pipeline", "brain-mri")
    assert code == 0, err
    assert "warning" not in err, err
    code, _, err = run_cli_area("preprocess", mr, tmp_path / "out2.nrrd", "--pipeline", "lung-ct")
    assert code == 0 and "warning" in err and "HU" in err, err


def test_preprocess_masks_carry_snomed_terminology(run_cli_area, tmp_path):
    ct = _volume(tmp_path / "ct.nii.gz", ct=True)
    mask = tmp_path / "m.seg.nrrd"
    code, _, err = run_cli_area("preprocess", ct, tmp_path / "out.nrrd", "--pipeline", "lung-ct", "--mask", mask)
    assert code == 0, err
    terms = {s["name"]: s.get("terminology") for s in slicerio.read_segmentation(str(mask))["segments"]}
    assert set(terms) == {"body", "lungs"}
    assert terms["lungs"]["type"][:2] == ["SCT", "39607008"]
    assert terms["body"]["type"][:2] == ["SCT", "38266002"]
    assert all(t["category"][0] == "SCT" for t in terms.values())


def test_the_head_mask_is_coded_too(tmp_path):
    from MedDeepRecogLib.io import SegmentSpec, write_segment_masks

    ref = sitk.Image([4, 4, 4], sitk.sitkUInt8)
    path = write_segment_masks([(SegmentSpec("head", 1), np.ones((4, 4, 4), np.uint8))], ref, tmp_path / "h.seg.nrrd")
    (segment,) = slicerio.read_segmentation(str(path))["segments"]
    assert segment["terminology"]["type"][:2] == ["SCT", "69536005"]
