"""A DICOM series with a slice gap, read with ``--allow-slice-gaps``: ITK spreads its slices evenly (16 slices 2 mm
apart with a 10 mm gap came back 2.533 mm apart), so an output written on that grid put slice k's result up to
3.7 mm from slice k. Every output on the scan's grid is written on the series' true slice grid instead
(``io.slice_grid``), the gap's slices empty and said so, and the gap note is said by ``segment`` as by the others.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import write_dicom_series

STEP = 2.0
#: 16 slices 2 mm apart, slices 8-11 of a regular 20-slice series missing (a 10 mm gap)
ZS = [STEP * k for k in range(20) if not 8 <= k <= 11]


def _series(folder: Path, zs=ZS, modality="CT", shift_x=None, side=24) -> Path:
    rng = np.random.default_rng(0)

    def pixels(k):
        slice_ = rng.normal(40, 10, (side, side))
        slice_[:4] = -1000   # some air: a CT in HU
        return slice_

    return write_dicom_series(folder, zs, pixels, modality=modality, uid="1.2.826.0.1.3680043.2.1125.1.777",
                              x_of=shift_x)


class _Package:
    id, version = "fake-seg", "1.0.0"
    class_names = ["background", "organ"]
    meta: dict = {}


@pytest.fixture
def fake_segmenter(monkeypatch):
    """segment_file with a stand-in model: slice k of the (stretched) scan grid gets k + 1 labelled voxels, so each
    output slice says which source slice it came from."""
    from MedDeepRecogLib.inference import segment

    def segment_image(image, pkg, **_):
        labels = np.zeros(tuple(reversed(image.GetSize())), dtype=np.uint8)
        for k in range(labels.shape[0]):
            labels[k, 0, : k + 1] = 1
        return labels, {"model": "fake-seg@1.0.0", "timing_s": {}}

    monkeypatch.setattr(segment, "load_segmentation_package", lambda _: _Package())
    monkeypatch.setattr(segment, "segment_image", segment_image)
    monkeypatch.setattr(segment, "stated_limits", lambda _: {"caveat": ""})
    monkeypatch.setenv("MEDDEEPRECOG_ALLOW_SLICE_GAPS", "1")
    return segment


def test_segment_of_a_gapped_series_writes_each_label_at_its_source_slice_and_says_so(fake_segmenter, tmp_path):
    folder = _series(tmp_path / "series")
    out = tmp_path / "gap.seg.nrrd"
    result = fake_segmenter.segment_file(folder, "fake-seg", out)
    notes = result.get("input_notes") or []
    assert any("not evenly spaced" in n and "--allow-slice-gaps" in n for n in notes), result
    assert any("true 2 mm slice grid" in n and "grid slices 8-11" in n and "no label" in n for n in notes), notes
    seg = sitk.ReadImage(str(out))
    assert seg.GetSpacing()[2] == pytest.approx(STEP) and seg.GetSize()[2] == 20
    labels = sitk.GetArrayFromImage(seg)
    for k, z in enumerate(ZS):   # source slice k's labels (k + 1 voxels) at its own position
        index = seg.TransformPhysicalPointToIndex((0.0, 0.0, z))[2]
        assert seg.TransformIndexToPhysicalPoint((0, 0, index))[2] == pytest.approx(z)
        assert int((labels[index] > 0).sum()) == k + 1, (k, z)
    assert not labels[8:12].any()   # the slices the series lacks hold no label
    # volumes on the true voxel size (1 x 1 x 2 mm), not the stretched grid's 2.533 mm
    voxels = sum(k + 1 for k in range(len(ZS)))
    assert result["segments"]["organ"] == {"voxels": voxels, "volume_ml": round(voxels * 2.0 / 1000, 2)}


def test_segment_cli_prints_the_gap_note(fake_segmenter, run_cli_all, tmp_path):
    folder = _series(tmp_path / "series")
    code, out, err = run_cli_all("segment", folder, "--model", "fake-seg", "--out", tmp_path / "g.seg.nrrd",
                                 "--allow-slice-gaps", "--device", "cpu")
    assert code == 0, err
    assert any("warning" in ln and "not evenly spaced" in ln for ln in err.splitlines()), err
    assert any("not evenly spaced" in n for n in json.loads(out)["input_notes"])


def test_a_gap_that_is_no_whole_number_of_steps_refuses_the_seg_nrrd_naming_the_dicom_seg(fake_segmenter, tmp_path):
    folder = _series(tmp_path / "series", zs=[0, 2, 4, 6, 11, 13, 15, 17])   # 5 mm: two and a half steps
    out = tmp_path / "gap.seg.nrrd"
    from MedDeepRecogLib.errors import InputImageError

    with pytest.raises(InputImageError) as err:
        fake_segmenter.segment_file(folder, "fake-seg", out)
    assert "--out NAME.dcm" in str(err.value) and "regular" in str(err.value)
    assert not out.exists()


def _slice_at(image, z):
    index = image.TransformPhysicalPointToIndex((0.0, 0.0, z))[2]
    assert image.TransformIndexToPhysicalPoint((0, 0, index))[2] == pytest.approx(z)
    return index


def test_preprocess_of_a_gapped_series_writes_output_and_masks_on_the_true_grid(run_cli_area, tmp_path):
    folder = _series(tmp_path / "series")
    out, mask = tmp_path / "out.nrrd", tmp_path / "m.seg.nrrd"
    code, _, err = run_cli_area("preprocess", folder, out, "--pipeline", "lung-ct", "--mask", mask,
                                "--allow-slice-gaps")
    assert code == 0, err
    assert any("warning" in ln and "true 2 mm slice grid" in ln and "filler" in ln for ln in err.splitlines()), err
    source = sitk.ReadImage(str(folder / "IM009.dcm"))   # the 10th file: source slice z = 26 mm, after the gap
    written = sitk.ReadImage(str(out))
    assert written.GetSpacing()[2] == pytest.approx(STEP) and written.GetSize()[2] == 20
    assert "true 2 mm slice grid" in written.GetMetaData("MedDeepRecog|notes")
    k = _slice_at(written, ZS[9])
    # lung-ct keeps intensities in HU where they are not clipped: the slice's air and tissue at its own position
    values = sitk.GetArrayFromImage(written)[k]
    assert np.allclose(values[:4], values[:4].min()) and values[:4].max() < values[10:].min()
    assert sitk.GetArrayFromImage(source)[0].shape == values.shape
    seg = sitk.ReadImage(str(mask))
    assert seg.GetSize()[2] == 20 and seg.GetSpacing()[2] == pytest.approx(STEP)
    assert not sitk.GetArrayFromImage(seg)[8:12].any()


def test_classify_heatmap_of_a_gapped_series_lies_on_the_true_grid(run_cli_all, tmp_path):
    folder = _series(tmp_path / "series", side=40)
    res = tmp_path / "res"
    code, _, err = run_cli_all("classify", folder, "--model", "body-region", "--out", res, "--progress", "none",
                               "--no-faithfulness", "--no-png", "--allow-slice-gaps")
    assert code == 0, err
    record = json.loads((res / "series.json").read_text())
    assert any("true 2 mm slice grid" in n and "heatmap" in n for n in record["input_notes"]), record["input_notes"]
    heat = sitk.ReadImage(str(res / "series_heatmap.nrrd"))
    assert heat.GetSize()[2] == 20 and heat.GetSpacing()[2] == pytest.approx(STEP)
    assert heat.GetOrigin()[2] == pytest.approx(ZS[0])
    assert not sitk.GetArrayFromImage(heat)[8:12].any()
