"""DICOM in, DICOM out: ``segment`` and ``classify --segments`` write a DICOM Segmentation (highdicom) referencing
the source series, read back with pydicom; ``info`` on DICOM prints what the series is, never who the patient is.

The shared TotalSegmentator DICOM series is anonymised down to empty Study/Series/SOP UIDs, which a SEG cannot
reference: the tests copy it with UIDs filled in (and a made-up patient name and ID that must never be printed).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom")

from conftest import refusal_line
from MedDeepRecogLib.cli import main  # noqa: E402
from MedDeepRecogLib.io import SegmentSpec, read_image, read_segmentation, write_segmentation  # noqa: E402

FAKE_NAME, FAKE_ID = "Doe^Jane", "PID-4711-SECRET"


@pytest.fixture(scope="module")
def dicom_series(shared_data, tmp_path_factory) -> tuple[Path, str]:
    """The 20-slice CT series with Study/Series/SOP UIDs (and a fake patient) filled in; (folder, series UID)."""
    from pydicom.uid import generate_uid

    src = shared_data / "totalsegmentator_examples" / "example_ct_dicom"
    out = tmp_path_factory.mktemp("dicom") / "ct_series"
    out.mkdir()
    study, series = generate_uid(), generate_uid()
    for f in sorted(src.iterdir()):
        ds = pydicom.dcmread(str(f))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID = FAKE_NAME, FAKE_ID
        ds.save_as(str(out / f.name))
    return out, series


def _frames_by_source(seg_path: Path, series: Path) -> dict[int, np.ndarray]:
    """Segment number -> (z, y, x) mask on the series' slice order, from the SEG's per-frame references."""
    from MedDeepRecogLib.io.dicom_seg import dicom_series_files

    files = dicom_series_files(series)
    uids = [str(pydicom.dcmread(str(f), stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID) for f in files]
    ds = pydicom.dcmread(str(seg_path))
    rows, cols = int(ds.Rows), int(ds.Columns)
    pixels = ds.pixel_array.reshape(-1, rows, cols)
    out: dict[int, np.ndarray] = {}
    for frame, item in zip(pixels, ds.PerFrameFunctionalGroupsSequence):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        out.setdefault(number, np.zeros((len(files), rows, cols), bool))[uids.index(uid)] = frame > 0
    return out


def test_segment_writes_dicom_seg_referencing_the_series(dicom_series, tmp_path, capsys):
    series, series_uid = dicom_series
    out = tmp_path / "organs.dcm"
    assert main(["segment", str(series), "--model", "ts-organs-seg", "--out", str(out)]) == 0
    ds = pydicom.dcmread(str(out))
    assert ds.Modality == "SEG"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["liver", "spleen", "kidney"]
    assert [s.SegmentedPropertyTypeCodeSequence[0].CodeMeaning for s in ds.SegmentSequence] == [
        "Liver", "Spleen", "Kidney"]
    # each organ in Slicer's GenericAnatomyColors colour (liver 221 130 101, spleen 157 108 162, kidney 185 102 83),
    # as the .seg.nrrd colours it
    import highdicom as hd
    assert [tuple(s.RecommendedDisplayCIELabValue) for s in ds.SegmentSequence] == [
        hd.color.CIELabColor.from_rgb(*rgb).value for rgb in ((221, 130, 101), (157, 108, 162), (185, 102, 83))]
    assert FAKE_NAME not in str(ds.get("SeriesDescription", ""))
    # the same voxels as the .seg.nrrd of the same run, slice by slice through the per-frame source references
    nrrd = tmp_path / "organs.seg.nrrd"
    assert main(["segment", str(series), "--model", "ts-organs-seg", "--out", str(nrrd)]) == 0
    labels, _, specs = read_segmentation(nrrd)
    # the series is 2 mm and the model works at 3 mm: the liver, in every slice of the series, is segmented up to
    # its last slice (the probabilities mapped back used to stop half a work voxel short of it)
    liver = labels == next(s.label for s in specs if s.name == "liver")
    assert liver.reshape(len(liver), -1).sum(1).min() > 1000, liver.reshape(len(liver), -1).sum(1)
    frames = _frames_by_source(out, series)
    for number, spec in enumerate(specs, start=1):
        expected = labels == spec.label
        assert np.array_equal(frames.get(number, np.zeros_like(expected)), expected), spec.name


def test_dicom_seg_needs_a_dicom_input_with_uids(dicom_series, shared_data, tmp_path, capsys):
    anonymised = shared_data / "totalsegmentator_examples" / "example_ct_dicom"
    assert main(["segment", str(anonymised), "--model", "ts-organs-seg", "--out", str(tmp_path / "a.dcm")]) == 2
    err = capsys.readouterr().err
    assert "SeriesInstanceUID" in err or "StudyInstanceUID" in err
    assert "write a .seg.nrrd instead" in err
    nifti = shared_data / "totalsegmentator_examples" / "example_ct_sm.nii.gz"
    assert main(["segment", str(nifti), "--model", "ts-organs-seg", "--out", str(tmp_path / "b.dcm")]) == 2
    # what a DICOM SEG needs, not pydicom's advice ("Use force=True to force reading")
    line = refusal_line(capsys, str(nifti), "not a DICOM file (a NIfTI file)", "needs a DICOM series input",
                        "write a .seg.nrrd instead")
    assert "force" not in line
    assert not list(tmp_path.glob("*.dcm"))


def test_segment_of_a_study_folder_names_its_series_folders(dicom_series, tmp_path, capsys):
    """A study (series subfolders, no DICOM file of its own): classify reads each series; segment, which writes one
    output, said "folder contains no readable DICOM series". It says the folder holds series and names them."""
    series, _ = dicom_series
    study = tmp_path / "study"
    for name in ("s1", "s2"):
        shutil.copytree(series, study / name)
    out = tmp_path / "organs.seg.nrrd"
    assert main(["segment", str(study), "--model", "ts-organs-seg", "--out", str(out)]) == 2
    refusal_line(capsys, str(study), "a folder of 2 DICOM series folders (s1, s2), not one series",
                 f"give the series folder itself, e.g. {study / 's1'}")
    assert not out.exists()


def test_classify_segments_writes_dicom_seg(dicom_series, shared_data, tmp_path, capsys):
    from finetune_helpers import synthetic_dataset
    from MedDeepRecogLib.finetune.config import FinetuneConfig
    from MedDeepRecogLib.finetune.finetune import finetune

    series, series_uid = dicom_series
    result = finetune(FinetuneConfig.from_dict(dict(
        task="classify", data=str(synthetic_dataset(tmp_path / "train")), base=None, arch="simple_cnn3d",
        arch_kwargs={"channels": [4, 8], "hidden": 8}, roi_size=[16, 16, 16], margin_mm=4.0,
        training={"epochs": 1, "batch_size": 4, "early_stopping_patience": 0}, val_cases=["case2"],
        dest=str(tmp_path / "cat"), id="roi", work_dir=str(tmp_path / "w"))))
    image = read_image(series)
    ts = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_data / "totalsegmentator_examples"
                                                   / "example_seg_dicom.nii.gz")))
    labels = np.zeros(ts.shape, np.uint8)
    labels[ts == 5] = 1  # liver
    labels[ts == 1] = 2  # spleen
    seg = write_segmentation(labels, image, [SegmentSpec("liver", 1), SegmentSpec("spleen", 2)],
                             tmp_path / "organs.seg.nrrd")
    out = tmp_path / "res" / "labelled.dcm"
    assert main(["classify", str(series), "--model", result["package"], "--segments", str(seg), "--out", str(out),
                 "--progress", "none"]) == 0
    record = json.loads((out.parent / "ct_series_segments.json").read_text(encoding="utf-8"))
    assert record["dicom_seg"] == str(out)
    ds = pydicom.dcmread(str(out))
    assert ds.Modality == "SEG" and ds.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
    by_name = {r["segment"]: r for r in record["segments"]}
    assert [s.SegmentLabel for s in ds.SegmentSequence] == [
        f"{n}: {by_name[n]['label']} {by_name[n]['probabilities'][by_name[n]['label']]:.2f}" for n in ("liver", "spleen")]
    frames = _frames_by_source(out, series)
    assert np.array_equal(frames[1], labels == 1) and np.array_equal(frames[2], labels == 2)


def test_info_on_dicom_prints_what_the_series_is_not_who(dicom_series, capsys):
    series, _ = dicom_series
    assert main(["info", str(series)]) == 0
    text = capsys.readouterr().out
    info = json.loads(text)["dicom"]
    assert info["Modality"] == "CT" and info["SeriesDescription"] == "CT Body 3.0"
    assert info["BodyPartExamined"] and info["SliceThickness"] == 3.0 and info["Manufacturer"] == "SIEMENS"
    assert info["files"] == 20
    assert FAKE_NAME not in text and FAKE_ID not in text and "Doe" not in text
    assert "PatientName" not in text and "PatientID" not in text


def test_segment_never_replaces_an_existing_output(dicom_series, tmp_path, capsys):
    series, _ = dicom_series
    for name in ("organs.seg.nrrd", "organs.dcm"):
        out = tmp_path / name
        out.write_bytes(b"the user's earlier segmentation")
        assert main(["segment", str(series), "--model", "ts-organs-seg", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and name in err and "already exists" in err
        assert out.read_bytes() == b"the user's earlier segmentation"
