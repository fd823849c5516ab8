"""2D images are first-class input: PNG/JPEG, single-frame DICOM and 2D NIfTI/NRRD through info, preprocess and
classify, with their spacing, a grey conversion note for colour, the heatmap on the picture's own grid, and clear
refusals (too small, multi-frame, label maps)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MedDeepRecogLib.io import image_notes, read_image
from tiny_test_package import make_tiny_package


@pytest.fixture
def run_cli(run_cli_all):
    return run_cli_all


@pytest.fixture(scope="module")
def tiny_2d(tmp_path_factory) -> Path:
    return make_tiny_package(tmp_path_factory.mktemp("pkg"))


def _picture(path: Path, array: np.ndarray, is_vector: bool = False) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=is_vector), str(path))
    return path


def _brainish(n: int = 96, seed: int = 0) -> np.ndarray:
    """An 8-bit picture with a bright disc on a dark background and texture (many grey values)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n]
    disc = ((yy - n / 2) ** 2 + (xx - n / 2) ** 2) < (0.4 * n) ** 2
    return np.clip(disc * 120 + rng.normal(0, 20, (n, n)) * disc, 0, 255).astype(np.uint8)


def write_dicom(path: Path, pixels: np.ndarray, modality: str = "MR", spacing=(0.5, 0.7)) -> Path:
    """A minimal DICOM file written with pydicom: ``(rows, cols)`` one frame, ``(frames, rows, cols)`` several,
    or ``(rows, cols, 3)`` uint8 RGB. ``spacing`` is (x, y) mm."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # secondary capture
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = modality
    ds.PixelSpacing = [str(spacing[1]), str(spacing[0])]  # DICOM order: row spacing (y), column spacing (x)
    arr = np.asarray(pixels)
    rgb = arr.ndim == 3 and arr.shape[-1] == 3
    if arr.ndim == 3 and not rgb:
        ds.NumberOfFrames = arr.shape[0]
    ds.Rows, ds.Columns = (arr.shape[1:] if arr.ndim == 3 and not rgb else arr.shape[:2])
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = "RGB" if rgb else "MONOCHROME2"
    if rgb:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8 if arr.dtype == np.uint8 else 16
    ds.HighBit = ds.BitsAllocated - 1
    ds.PixelRepresentation = 0
    ds.PixelData = arr.tobytes()
    assert pydicom is not None
    ds.save_as(str(path), enforce_file_format=True)
    return path


# ------------------------------------------------------------------------------------------------ reading
def test_png_reads_as_one_grey_slice_with_1mm_pixels_or_the_given_spacing(tmp_path):
    path = _picture(tmp_path / "slice.png", _brainish())
    image = read_image(path)
    assert image.GetDimension() == 2 and image.GetSize() == (96, 96)
    assert image.GetSpacing() == (1.0, 1.0)
    assert any("1 mm" in n for n in image_notes(image))
    image = read_image(path, spacing=(0.4, 0.6))
    assert image.GetSpacing() == (0.4, 0.6) and not image_notes(image)


def test_rgb_png_becomes_grey_with_a_note(tmp_path):
    rgb = np.zeros((40, 50, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    image = read_image(_picture(tmp_path / "colour.png", rgb, is_vector=True))
    assert image.GetNumberOfComponentsPerPixel() == 1
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(image), 0.299 * 200 + 0.587 * 100 + 0.114 * 50, rtol=1e-5)
    assert any("converted to grey" in n for n in image_notes(image))


def test_16bit_png_keeps_its_range(tmp_path):
    arr = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 13 % 60000).astype(np.uint16)
    image = read_image(_picture(tmp_path / "deep.png", arr))
    assert image.GetPixelID() == sitk.sitkUInt16
    assert int(sitk.GetArrayViewFromImage(image).max()) == int(arr.max()) > 255


def test_single_frame_dicom_keeps_its_pixel_spacing(tmp_path):
    path = write_dicom(tmp_path / "one.dcm", (np.random.default_rng(0).random((48, 64)) * 900).astype(np.uint16))
    image = read_image(path)
    assert image.GetSize() == (64, 48, 1)
    assert image.GetSpacing()[:2] == pytest.approx((0.5, 0.7))


def test_info_on_a_picture_reports_2d_and_the_assumed_spacing(run_cli, tmp_path):
    code, out, err = run_cli("info", _picture(tmp_path / "slice.png", _brainish()), "--spacing", "0.3", "0.3")
    assert code == 0, err
    info = json.loads(out)
    assert info["dimension"] == 2 and info["spacing_mm"] == [0.3, 0.3] and info["modality_guess"] == "unknown"


def test_preprocess_filters_a_png_into_a_2d_nrrd_on_its_grid(run_cli, tmp_path):
    out = tmp_path / "filtered.nrrd"
    code, _, err = run_cli("preprocess", _picture(tmp_path / "slice.png", _brainish()), out, "--pipeline",
                           "brain-mri", "--spacing", "0.5", "0.5")
    assert code == 0, err
    result = sitk.ReadImage(str(out))
    assert result.GetDimension() == 2 and result.GetSize() == (96, 96) and result.GetSpacing() == (0.5, 0.5)
    assert np.isfinite(sitk.GetArrayViewFromImage(result)).all()


# ------------------------------------------------------------------------------------------------ classify
def test_classify_png_writes_the_heatmap_on_the_pictures_own_2d_grid(run_cli, tmp_path, tiny_2d):
    src = _picture(tmp_path / "case.png", _brainish())
    code, _, err = run_cli("classify", src, "--model", tiny_2d, "--out", tmp_path / "out", "--progress", "none",
                           "--spacing", "0.8", "0.8")
    assert code == 0, err
    heat = sitk.ReadImage(str(tmp_path / "out" / "case_heatmap.nrrd"))
    assert heat.GetDimension() == 2 and heat.GetSize() == (96, 96) and heat.GetSpacing() == (0.8, 0.8)
    record = json.loads((tmp_path / "out" / "case.json").read_text())
    assert record["input_dimension"] == 2 and record["per_slice"] and len(record["per_slice"]) == 1
    # the air around the disc carries no heat
    arr = sitk.GetArrayViewFromImage(heat)
    assert arr[:4, :4].max() == 0.0 and arr.max() > 0


def test_classify_rgb_picture_notes_the_grey_conversion(run_cli, tmp_path, tiny_2d):
    rgb = np.repeat(_brainish()[..., None], 3, axis=2)
    src = _picture(tmp_path / "colour.png", rgb, is_vector=True)
    code, _, err = run_cli("classify", src, "--model", tiny_2d, "--out", tmp_path / "out", "--progress", "none")
    assert code == 0, err
    notes = json.loads((tmp_path / "out" / "colour.json").read_text())["input_notes"]
    assert any("(RGB, 8-bit) converted to grey" in n for n in notes) and any("1 mm" in n for n in notes)


def test_a_folder_of_pictures_is_a_batch(run_cli, tmp_path, tiny_2d):
    folder = tmp_path / "pictures"
    folder.mkdir()
    for i in range(3):
        _picture(folder / f"case{i}.png", _brainish(seed=i))
    sitk.WriteImage(sitk.GetImageFromArray(_brainish(seed=9)), str(folder / "case9.jpg"))
    code, _, err = run_cli("classify", folder, "--model", tiny_2d, "--out", tmp_path / "out", "--progress", "none")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").glob("*.json")) == [
        "case0.json", "case1.json", "case2.json", "case9.json", "summary.json"]


def test_batch_outputs_never_carry_another_images_name_and_a_rerun_skips_its_own_heatmaps(run_cli, tmp_path,
                                                                                          tiny_2d):
    """``a.jpg``, ``a.png``, ``a_2.png`` and ``a_heatmap.png``: the second ``a`` is not written over the real
    ``a_2.png``'s name and ``a_heatmap.png``'s result is not ``a_heatmap.json`` beside ``a.jpg``'s heatmap (which
    takes ``a-2``: the user's ``a_heatmap.png`` is not overwritten; the second ``a`` then takes ``a-3``). Run again
    with ``--out`` on the same folder, the earlier heatmaps are skipped as outputs, not classified as scans."""
    folder = tmp_path / "batch"
    folder.mkdir()
    for i, name in enumerate(("a.png", "a_2.png", "a_heatmap.png")):
        _picture(folder / name, _brainish(seed=i))
    sitk.WriteImage(sitk.GetImageFromArray(_brainish(seed=9)), str(folder / "a.jpg"))
    code, _, err = run_cli("classify", folder, "--model", tiny_2d, "--out", folder, "--progress", "none")
    assert code == 0, err
    inputs = {json.loads(p.read_text())["input"].split("/")[-1]: p.name for p in folder.glob("a*.json")}
    assert inputs == {"a.jpg": "a-2.json", "a.png": "a-3.json", "a_2.png": "a_2.json",
                      "a_heatmap.png": "a_heatmap-2.json"}
    heatmaps = sorted(p.name for p in folder.glob("*_heatmap.*") if p.name != "a_heatmap.png")
    assert heatmaps and all(p.split("_heatmap.")[0] + ".json" in inputs.values() for p in heatmaps)
    code, out, err = run_cli("classify", folder, "--model", tiny_2d, "--out", folder, "--progress", "none")
    assert code == 0, err
    skipped = [line for line in out.splitlines() if line.startswith("skipped") and "_heatmap." in line]
    assert sorted(line.split()[1].split("/")[-1].rstrip(":") for line in skipped) == heatmaps, out
    assert all("an output of an earlier run" in line for line in skipped), out
    others = [line for line in out.splitlines() if line.startswith("skipped") and "_heatmap." not in line]
    assert others and all("earlier run" in line for line in others), out   # the results and summary of run 1
    assert not list(folder.glob("*_heatmap_heatmap*"))
    summary = json.loads((folder / "summary-2.json").read_text())
    assert sorted(Path(r["input"]).name for r in summary["cases"]) == ["a.jpg", "a.png", "a_2.png",
                                                                       "a_heatmap.png"]


def test_a_clash_in_a_batch_and_a_rerun_suffix_names_the_same_way(run_cli, tmp_path, tiny_2d):
    """``a.png`` and ``a.jpg`` classified twice into one --out: the batch clash and the rerun both take ``-N``
    (a.json, a-2.json, then a-3.json, a-4.json), never ``_N``, and the first run's files are left as they were."""
    folder = tmp_path / "pics"
    folder.mkdir()
    _picture(folder / "a.png", _brainish(seed=1))
    sitk.WriteImage(sitk.GetImageFromArray(_brainish(seed=2)), str(folder / "a.jpg"))
    out = tmp_path / "out"
    code, _, err = run_cli("classify", folder, "--model", tiny_2d, "--out", out, "--progress", "none")
    assert code == 0, err
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"a.json", "a-2.json"} <= set(first)
    code, _, err = run_cli("classify", folder, "--model", tiny_2d, "--out", out, "--progress", "none")
    assert code == 0, err
    results = sorted(p.name for p in out.glob("a*.json"))
    assert results == ["a-2.json", "a-3.json", "a-4.json", "a.json"]
    assert not [p.name for p in out.iterdir() if "_2" in p.name or "_3" in p.name]
    assert all((out / name).read_bytes() == data for name, data in first.items())


def test_a_picture_too_small_for_the_model_is_refused_with_its_size(run_cli, tmp_path, tiny_2d):
    src = _picture(tmp_path / "tiny.png", _brainish(12))
    code, _, err = run_cli("classify", src, "--model", tiny_2d, "--out", tmp_path / "out", "--progress", "none")
    assert code == 2 and "tiny.png" in err and "12 x 12 pixels" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "tiny.json").exists()


def test_a_multi_frame_dicom_is_refused_by_a_2d_model_with_the_reason(run_cli, tmp_path, tiny_2d):
    src = write_dicom(tmp_path / "cine.dcm", (np.random.default_rng(1).random((5, 48, 64)) * 900).astype(np.uint16),
                      modality="US")
    code, _, err = run_cli("classify", src, "--model", tiny_2d, "--out", tmp_path / "out", "--progress", "none")
    assert code == 2 and "cine.dcm" in err and "5 frames" in err and "cine loop" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_label_map_is_refused_by_a_grey_level_model(run_cli, tmp_path, tiny_2d):
    labels = np.zeros((8, 64, 64), dtype=np.uint8)
    labels[3:5, 20:40, 20:40] = 1
    labels[3:5, 45:50, 45:50] = 2
    src = tmp_path / "lesion_label.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(labels), str(src))
    code, _, err = run_cli("classify", src, "--model", tiny_2d, "--out", tmp_path / "out", "--progress", "none")
    assert code == 2 and "label map or mask" in err and "3 distinct values" in err


def test_slice_mm_classifies_one_axial_slice_and_heats_only_it(run_cli, tmp_path, tiny_2d, oblique_volume):
    """One slice's answer, and said to be that slice's: ``classify --slice-mm`` once wrote confidence_basis "the
    scan's probability for X" and printed "vol.nrrd: X, confidence 0.89" as if the scan were classified."""
    src = tmp_path / "vol.nrrd"
    sitk.WriteImage(oblique_volume, str(src))
    code, out, err = run_cli("classify", src, "--model", tiny_2d, "--out", tmp_path / "out", "--progress", "none",
                             "--slice-mm", "130")
    assert code == 0, err
    record = json.loads((tmp_path / "out" / "vol.json").read_text())
    chosen = record["slice"]
    # the volume's slices sit at S = 101 + 2.5 k mm: 130 is nearest to k = 12 (131 mm)
    assert chosen["index"] == 12 and chosen["position_mm"] == pytest.approx(131.0)
    assert [r["index"] for r in record["per_slice"]] == [12]
    heat = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "vol_heatmap.nrrd")))
    hot = np.flatnonzero(heat.reshape(heat.shape[0], -1).max(axis=1) > 0)
    assert hot.tolist() == [12]
    where = "slice 12 (S = 131.0 mm)"
    assert record["confidence_basis"].startswith(f"the probability of {where} alone (not the scan's)")
    assert record["probabilities_basis"].startswith(f"{where} alone, not the scan")
    assert f"vol.nrrd, {where} only: " in out


def test_volume_results_give_each_slice_its_position_and_the_finding_as_a_range_in_mm(run_cli, tmp_path, tiny_2d,
                                                                                      oblique_volume):
    src = tmp_path / "vol.nrrd"
    sitk.WriteImage(oblique_volume, str(src))
    code, _, err = run_cli("classify", src, "--model", tiny_2d, "--out", tmp_path / "out", "--progress", "none")
    assert code == 0, err
    record = json.loads((tmp_path / "out" / "vol.json").read_text())
    positions = [r["position_mm"] for r in record["per_slice"]]
    assert positions == sorted(positions) and positions[0] == pytest.approx(101.0)
    finding = record["finding"]
    assert finding["label"] == record["top_class"]
    members = [r for r in record["per_slice"] if finding["first_index"] <= r["index"] <= finding["last_index"]]
    assert all(r["label"] == finding["label"] for r in members) and len(members) == finding["slices"]
    assert finding["from_mm"] == min(r["position_mm"] for r in members)
    assert finding["to_mm"] == max(r["position_mm"] for r in members)


def test_preprocess_keeps_a_one_slice_dicom_on_its_own_3d_grid(run_cli, tmp_path):
    src = write_dicom(tmp_path / "one.dcm", (np.random.default_rng(2).random((48, 64)) * 900).astype(np.uint16))
    out = tmp_path / "filtered.nrrd"
    code, _, err = run_cli("preprocess", src, out, "--pipeline", "brain-mri", "--mask", tmp_path / "head.seg.nrrd")
    assert code == 0, err
    result, source = sitk.ReadImage(str(out)), read_image(src)
    assert result.GetSize() == source.GetSize() == (64, 48, 1)
    assert np.allclose(result.GetSpacing(), source.GetSpacing()) and np.allclose(result.GetOrigin(), source.GetOrigin())
    mask = sitk.ReadImage(str(tmp_path / "head.seg.nrrd"))
    assert mask.GetSize()[:2] == (64, 48) and np.allclose(mask.GetOrigin(), source.GetOrigin())


# ------------------------------------------------------------------------------------------------ bad 2D input
def _clean_error(code: int, err: str, *needles: str) -> None:
    assert code == 2 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)


@pytest.mark.parametrize("spacing", [(0.0, 0.0), (-0.5, 0.5), (float("nan"), float("nan"))])
def test_a_dicom_pixel_spacing_of_zero_negative_or_nan_is_refused_not_taken_as_1mm(run_cli, tmp_path, tiny_2d,
                                                                                     spacing):
    src = write_dicom(tmp_path / "slice.dcm", (_brainish().astype(np.uint16) * 4), spacing=spacing)
    code, _, err = run_cli("classify", src, "--model", tiny_2d, "--out", tmp_path / "out", "--progress", "none")
    _clean_error(code, err, "slice.dcm", "PixelSpacing (0028,0030)")
    assert not (tmp_path / "out").exists()


def test_a_dicom_whose_pixel_data_is_shorter_than_its_rows_and_columns_is_refused(run_cli, tmp_path, tiny_2d):
    pydicom = pytest.importorskip("pydicom")
    src = write_dicom(tmp_path / "short.dcm", _brainish().astype(np.uint16))
    ds = pydicom.dcmread(str(src))
    ds.Rows, ds.Columns = 1000, 1000   # the pixel data still hold 96 x 96
    ds.save_as(str(src))
    code, _, err = run_cli("classify", src, "--model", tiny_2d, "--out", tmp_path / "out", "--progress", "none")
    _clean_error(code, err, "short.dcm", "pixel data is shorter than its 1000 x 1000 pixels")


def test_a_compressed_dicom_slice_is_not_refused_as_truncated(shared_data, tmp_path, run_cli_all):
    """A JPEG 2000 CT slice holds fewer bytes than rows x columns x 2. GDCM does not pass its transfer syntax to
    SimpleITK, which made the raw-size check take it for an uncompressed, truncated file whenever it had a
    SOPClassUID (as every real slice has): it is read, alone and in its folder, with its own pixel size."""
    import pydicom

    src = sorted((shared_data / "totalsegmentator_examples" / "example_ct_dicom").iterdir())[0]
    ds = pydicom.dcmread(str(src))
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"  # JPEG 2000 lossless
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    (tmp_path / "ct").mkdir()
    path = tmp_path / "ct" / "slice.dcm"
    ds.save_as(str(path))
    assert path.stat().st_size < int(ds.Rows) * int(ds.Columns) * 2
    for source in (path, path.parent):
        code, out, err = run_cli_all("info", source)
        assert code == 0, err
        record = json.loads(out)
        assert record["size"][:2] == [512, 512]
        assert record["spacing_mm"][:2] == pytest.approx([float(v) for v in ds.PixelSpacing][::-1])


@pytest.mark.parametrize("spacing", [("1e300", "1e300"), ("1e-300", "1e-300"), ("0", "1")])
def test_spacing_outside_a_micrometre_to_a_metre_is_refused(run_cli, tmp_path, tiny_2d, spacing):
    src = _picture(tmp_path / "case.png", _brainish())
    code, _, err = run_cli("classify", src, "--model", tiny_2d, "--out", tmp_path / "out", "--progress", "none",
                           "--spacing", *spacing)
    _clean_error(code, err, "case.png", "--spacing must be two pixel sizes of 0.001 to 1000 mm")


def test_spacing_given_for_a_file_with_its_own_pixel_size_is_ignored_with_a_note(run_cli, tmp_path, tiny_2d):
    image = sitk.GetImageFromArray(_brainish())
    image.SetSpacing((0.7, 0.7))
    src = tmp_path / "case.nrrd"
    sitk.WriteImage(image, str(src))
    code, _, err = run_cli("classify", src, "--model", tiny_2d, "--out", tmp_path / "out", "--progress", "none",
                           "--spacing", "2", "2")
    assert code == 0, err
    notes = json.loads((tmp_path / "out" / "case.json").read_text())["input_notes"]
    assert any("--spacing ignored" in n and "0.7 x 0.7 mm" in n for n in notes), notes


def test_intensities_that_overflow_float32_are_refused_not_classified_as_nan(run_cli, tmp_path, tiny_2d):
    src = tmp_path / "huge.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(_brainish().astype(np.float64) * 1e300), str(src))
    code, _, err = run_cli("classify", src, "--model", tiny_2d, "--out", tmp_path / "out", "--progress", "none")
    _clean_error(code, err, "huge.nrrd", "intensities reach")


@pytest.mark.parametrize("slice_mm", ["1000", "-50", "nan", "inf"])
def test_slice_mm_outside_the_scan_is_refused_with_its_range_not_moved_to_the_edge(run_cli, tmp_path, tiny_2d,
                                                                                  oblique_volume, slice_mm):
    src = tmp_path / "vol.nrrd"
    sitk.WriteImage(oblique_volume, str(src))
    code, _, err = run_cli("classify", src, "--model", tiny_2d, "--out", tmp_path / "out", "--progress", "none",
                           "--slice-mm", slice_mm)
    _clean_error(code, err, "vol.nrrd", f"--slice-mm {slice_mm}", "lies outside the scan", "run from S 101.0")


def _lesion_on(tmp_path, shape, value=1, name="lesion.nrrd", spacing=None, dtype=np.uint8):
    mask = np.zeros(shape, dtype)
    mask[..., 40:56, 40:56] = value
    image = sitk.GetImageFromArray(mask)
    if spacing is not None:
        image.SetSpacing(spacing)
    sitk.WriteImage(image, str(tmp_path / name))
    return tmp_path / name


def test_a_2d_lesion_label_scores_the_heatmap_on_a_picture(run_cli, tmp_path, tiny_2d):
    src = _picture(tmp_path / "case.png", _brainish())
    for lesion in (_lesion_on(tmp_path, (96, 96)), _lesion_on(tmp_path, (96, 96), 255, "lesion.png")):
        out = tmp_path / f"out_{lesion.suffix[1:]}"
        code, _, err = run_cli("classify", src, "--model", tiny_2d, "--out", out, "--progress", "none",
                               "--lesion", lesion)
        assert code == 0, err
        localisation = json.loads((out / "case.json").read_text())["explain"]["localisation"]
        assert localisation["lesion_voxels"] == 16 * 16 and "hit" in localisation["pointing_game"]


def test_a_lesion_on_another_grid_is_resampled_with_a_note_and_one_outside_the_scan_refused(
        run_cli, tmp_path, tiny_2d, oblique_volume):
    src = tmp_path / "vol.nrrd"
    sitk.WriteImage(oblique_volume, str(src))
    inside = sitk.Resample(sitk.Cast(oblique_volume > 400, sitk.sitkUInt8), oblique_volume)
    inside.SetSpacing([s * 0.5 for s in inside.GetSpacing()])   # same voxels, half the size: another grid
    sitk.WriteImage(inside, str(tmp_path / "half.nrrd"))
    code, _, err = run_cli("classify", src, "--model", tiny_2d, "--out", tmp_path / "out", "--progress", "none",
                           "--lesion", tmp_path / "half.nrrd")
    assert code == 0, err
    notes = json.loads((tmp_path / "out" / "vol.json").read_text())["input_notes"]
    assert any("resampled onto the scan's" in n for n in notes), notes
    far = sitk.Image(inside)
    far.SetOrigin([o + 5000.0 for o in inside.GetOrigin()])
    sitk.WriteImage(far, str(tmp_path / "far.nrrd"))
    code, _, err = run_cli("classify", src, "--model", tiny_2d, "--out", tmp_path / "out2", "--progress", "none",
                           "--lesion", tmp_path / "far.nrrd")
    _clean_error(code, err, "far.nrrd", "--lesion does not overlap the scan")
    assert not (tmp_path / "out2").exists()


def test_a_picture_label_of_another_size_than_the_picture_is_refused_naming_the_label(run_cli, tmp_path, tiny_2d):
    src = _picture(tmp_path / "case.png", _brainish())
    lesion = _lesion_on(tmp_path, (80, 96), 255, "small_label.png")
    code, _, err = run_cli("classify", src, "--model", tiny_2d, "--out", tmp_path / "out", "--progress", "none",
                           "--lesion", lesion)
    _clean_error(code, err, "small_label.png", "is a picture of 96 x 80 pixels", "(96 x 96)")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case, needle", [("empty", "the lesion label is empty"),
                                          ("fractional", "fractional values"),
                                          ("itself", "--lesion names the scan itself")])
def test_an_unusable_lesion_label_is_refused_before_classifying(run_cli, tmp_path, tiny_2d, case, needle):
    src = _picture(tmp_path / "case.png", _brainish())
    if case == "empty":
        lesion = _lesion_on(tmp_path, (96, 96), 0)
    elif case == "fractional":
        lesion = _lesion_on(tmp_path, (96, 96), 0.37, dtype=np.float32)
    else:
        lesion = src
    code, _, err = run_cli("classify", src, "--model", tiny_2d, "--out", tmp_path / "out", "--progress", "none",
                           "--lesion", lesion)
    _clean_error(code, err, needle)
    assert not (tmp_path / "out").exists()


def test_a_second_run_into_the_same_folder_keeps_the_users_files_and_writes_a_new_version(run_cli, tmp_path,
                                                                                         tiny_2d):
    folder = tmp_path / "pictures"
    folder.mkdir()
    for i in range(2):
        _picture(folder / f"case{i}.png", _brainish(seed=i))
    out = tmp_path / "out"
    out.mkdir()
    (out / "case0.json").write_text("the user's notes")
    (out / "summary.csv").write_text("the user's table")
    code, _, err = run_cli("classify", folder, "--model", tiny_2d, "--out", out, "--progress", "none")
    assert code == 0, err
    assert (out / "case0.json").read_text() == "the user's notes"
    assert (out / "summary.csv").read_text() == "the user's table"
    record = json.loads((out / "case0-2.json").read_text())
    assert record["outputs"]["heatmap"].endswith("case0-2_heatmap.nrrd") and (out / "case0-2_heatmap.nrrd").exists()
    assert (out / "case1.json").exists() and (out / "summary-2.csv").exists()
    code, _, err = run_cli("classify", folder, "--model", tiny_2d, "--out", out, "--progress", "none")
    assert code == 0 and (out / "case1-2.json").exists() and (out / "case0-3.json").exists()


@pytest.mark.parametrize("argv, needle", [(["--spacing", "abc", "1"], "argument --spacing"),
                                          (["--no-such-option"], "unrecognized arguments")])
def test_usage_errors_are_one_line_naming_the_option(run_cli, tmp_path, argv, needle):
    code, _, err = run_cli("classify", "--model", "brain-tumour-mri", "--out", tmp_path / "out", *argv,
                           tmp_path / "case.png")
    _clean_error(code, err, needle, "--help)")


def test_an_empty_folder_is_named_as_empty(run_cli, tmp_path, tiny_2d):
    (tmp_path / "nothing").mkdir()
    code, _, err = run_cli("classify", tmp_path / "nothing", "--model", tiny_2d, "--out", tmp_path / "out",
                           "--progress", "none")
    _clean_error(code, err, "nothing", "the folder is empty")


@pytest.mark.parametrize("step, size, spacing", [({"name": "resample", "spacing": [1.0, 1.0]}, (60, 50), (1.0, 1.0)),
                                                 ({"name": "crop_pad", "size": [64, 80]}, (64, 80), (0.5, 0.5))])
def test_a_2d_picture_takes_x_y_sizes_in_grid_steps(run_cli, tmp_path, step, size, spacing):
    image = sitk.GetImageFromArray(_brainish(120)[:100])
    image.SetSpacing((0.5, 0.5))
    src = tmp_path / "slice.nrrd"
    sitk.WriteImage(image, str(src))
    pipeline = tmp_path / "p.json"
    pipeline.write_text(json.dumps({"steps": [step]}))
    code, _, err = run_cli("preprocess", src, tmp_path / "out.nrrd", "--pipeline", pipeline, "--keep-resampled-grid")
    assert code == 0, err
    out = sitk.ReadImage(str(tmp_path / "out.nrrd"))
    assert out.GetDimension() == 2 and out.GetSize() == size and out.GetSpacing() == pytest.approx(spacing)


def _with_ultrasound_regions(path: Path, regions) -> Path:
    """Drop PixelSpacing from the DICOM at ``path`` and give it ``regions``: (units code, dx cm, dy cm) each."""
    import pydicom
    from pydicom.dataset import Dataset

    ds = pydicom.dcmread(str(path))
    del ds.PixelSpacing
    items = []
    for units, dx, dy in regions:
        item = Dataset()
        item.PhysicalUnitsXDirection, item.PhysicalUnitsYDirection = units, units
        item.PhysicalDeltaX, item.PhysicalDeltaY = dx, dy
        items.append(item)
    if items:
        ds.SequenceOfUltrasoundRegions = items
    ds.save_as(str(path), enforce_file_format=True)
    return path


@pytest.mark.parametrize("regions, spacing, note", [
    ([(3, 0.03, 0.02)], (0.3, 0.2), "pixel size 0.3 x 0.2 mm from the ultrasound region calibration"),
    ([(3, 0.03, 0.02), (3, 0.03, 0.02)], (0.3, 0.2), "from the ultrasound region calibration"),
    ([(3, 0.03, 0.02), (3, 0.05, 0.05)], (1.0, 1.0), "ultrasound regions give different pixel sizes"),
    ([(0, 1.0, 1.0)], (1.0, 1.0), "no PixelSpacing, no calibrated ultrasound region): 1 mm pixels assumed"),
    ([], (1.0, 1.0), "no PixelSpacing, no calibrated ultrasound region): 1 mm pixels assumed")])
def test_ultrasound_dicom_takes_its_pixel_size_from_the_region_calibration_or_says_1_mm_is_assumed(
        tmp_path, run_cli_all, regions, spacing, note):
    """Ultrasound DICOM stores its pixel size in the Sequence of Ultrasound Regions (cm, units code 3), not in
    PixelSpacing; without either, 1 mm is assumed and said, as for a picture. ``info`` also names the modality."""
    path = _with_ultrasound_regions(write_dicom(tmp_path / "us.dcm", _brainish(), modality="US"), regions)
    code, out, err = run_cli_all("info", path)
    assert code == 0, err
    record = json.loads(out)
    assert record["spacing_mm"][:2] == pytest.approx(spacing)
    assert any(note in n for n in record["notes"]), record["notes"]
    assert record["modality_guess"] == "US"


def test_classify_reports_the_modality_as_info_does(tmp_path, run_cli_all):
    """classify's modality_guess is the DICOM tag (US here) or, for a picture or a DICOM object tagged as another
    modality, unknown: not "MR" for whatever is not in Hounsfield units; and it is info's."""
    us = write_dicom(tmp_path / "us.dcm", _brainish(160), modality="US")
    png = _picture(tmp_path / "pic.png", _brainish(160))
    other = write_dicom(tmp_path / "ot.dcm", _brainish(160), modality="OT")   # non-negative, tagged "other": was MR
    for path, expected in ((us, "US"), (png, "unknown"), (other, "unknown")):
        info = run_cli_all("info", path)
        assert info[0] == 0 and json.loads(info[1])["modality_guess"] == expected
        code, _, err = run_cli_all("classify", path, "--model", "breast-us-lesion", "--out", tmp_path / path.stem,
                                   "--explain", "none", "--no-faithfulness", "--progress", "none")
        assert code == 0, err
        assert json.loads((tmp_path / path.stem / f"{path.stem}.json").read_text())["modality_guess"] == expected


def test_a_grey_picture_with_transparency_is_read_as_its_grey_channel(tmp_path, run_cli_all):
    """A PNG in Pillow's LA mode (grey + alpha), which ITK's reader cannot read: its grey values, a note that the
    transparency was dropped, and the picture's own 2D grid."""
    from PIL import Image

    grey = _brainish(120)
    alpha = np.full_like(grey, 200)
    Image.merge("LA", (Image.fromarray(grey), Image.fromarray(alpha))).save(tmp_path / "la.png")
    image = read_image(tmp_path / "la.png")
    assert image.GetDimension() == 2 and image.GetNumberOfComponentsPerPixel() == 1
    assert np.array_equal(sitk.GetArrayViewFromImage(image), grey)
    assert any("transparency (alpha) was dropped" in n for n in image_notes(image))
    code, out, err = run_cli_all("info", tmp_path / "la.png")
    assert code == 0 and json.loads(out)["size"] == [120, 120], err


def _radiograph(path: Path, imager_spacing, magnification=None, sop_class="1.2.840.10008.5.1.4.1.1.7") -> Path:
    """A radiograph DICOM with ImagerPixelSpacing (row, column mm) and no PixelSpacing; a secondary capture by
    default (GDCM gives it 1 mm), or ``sop_class`` (DX, CR: GDCM takes ImagerPixelSpacing itself)."""
    import pydicom

    path = write_dicom(path, _brainish(), modality="DX")
    ds = pydicom.dcmread(str(path))
    del ds.PixelSpacing
    ds.ImagerPixelSpacing = [str(v) for v in imager_spacing]
    if magnification is not None:
        ds.EstimatedRadiographicMagnificationFactor = str(magnification)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.save_as(str(path), enforce_file_format=True)
    return path


DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"


@pytest.mark.parametrize("sop_class", ["1.2.840.10008.5.1.4.1.1.7", DX_STORAGE])
@pytest.mark.parametrize("magnification, spacing, notes", [
    (None, (0.2, 0.15), ["pixel size 0.2 x 0.15 mm from ImagerPixelSpacing (0018,1164) (no PixelSpacing)",
                         "at the detector plane, not corrected for geometric magnification",
                         "no EstimatedRadiographicMagnificationFactor (0018,1114)"]),
    (1.25, (0.16, 0.12), ["pixel size 0.16 x 0.12 mm: ImagerPixelSpacing (0018,1164) 0.2 x 0.15 mm at the detector "
                          "plane divided by EstimatedRadiographicMagnificationFactor (0018,1114) 1.25"]),
    (0.5, (0.2, 0.15), ["not corrected for geometric magnification (EstimatedRadiographicMagnificationFactor "
                        "(0018,1114) '0.5' is not a factor of 1 to 10)"])])
def test_a_radiograph_without_pixel_spacing_takes_its_imager_pixel_spacing_and_says_where_it_is_measured(
        tmp_path, run_cli_all, sop_class, magnification, spacing, notes):
    """A projection radiograph stores its pixel size at the detector, as ImagerPixelSpacing (0018,1164): that size
    is read (not 1 mm), divided by EstimatedRadiographicMagnificationFactor when there is a usable one, and the note
    says which; "1 mm pixels assumed" is not said. Whatever the storage class (GDCM read a secondary capture at 1 mm
    and a DX at the uncorrected detector size without a word)."""
    path = _radiograph(tmp_path / "dx.dcm", (0.15, 0.2), magnification, sop_class)
    image = read_image(path)
    assert image.GetSpacing()[:2] == pytest.approx(spacing)
    code, out, err = run_cli_all("info", path)
    assert code == 0, err
    record = json.loads(out)
    assert record["spacing_mm"][:2] == pytest.approx(spacing)
    assert record["notes"] == image_notes(image) and len(record["notes"]) == 1, record["notes"]
    for needle in notes:
        assert needle in record["notes"][0], (needle, record["notes"])
    assert "1 mm pixels assumed" not in record["notes"][0]


def test_a_radiograph_or_ultrasound_dicom_in_a_folder_gets_the_pixel_size_the_file_alone_gets(tmp_path, run_cli_all):
    """A DICOM folder goes through the series reader, which took 1 mm without a word for a radiograph (no
    PixelSpacing, ImagerPixelSpacing) and an ultrasound (region calibration): now the folder and the file give the
    same pixel size and the same note, and an unusable ImagerPixelSpacing in a folder is refused as in a file."""
    dx, us, bad = (tmp_path / name for name in ("dx", "us", "bad"))
    for folder in (dx, us, bad):
        folder.mkdir()
    files = [_radiograph(dx / "dx.dcm", (0.15, 0.2), 1.25, DX_STORAGE),
             _with_ultrasound_regions(write_dicom(us / "us.dcm", _brainish(), modality="US"), [(3, 0.03, 0.02)])]
    for file, spacing in zip(files, ((0.16, 0.12), (0.3, 0.2))):
        alone, in_folder = read_image(file), read_image(file.parent)
        assert alone.GetSpacing()[:2] == pytest.approx(spacing)
        assert in_folder.GetSpacing()[:2] == pytest.approx(spacing)
        assert image_notes(in_folder) == image_notes(alone) and len(image_notes(alone)) == 1
        code, out, err = run_cli_all("info", file.parent)
        assert code == 0 and json.loads(out)["spacing_mm"][:2] == pytest.approx(spacing), err
    _radiograph(bad / "dx.dcm", (-0.15, 0.2), sop_class=DX_STORAGE)
    code, _, err = run_cli_all("info", bad)
    _clean_error(code, err, "dx.dcm", "ImagerPixelSpacing (0018,1164)", "no PixelSpacing")


@pytest.mark.parametrize("imager_spacing", [(0.0, 0.2), (-0.15, 0.2), ("nan", "nan")])
def test_a_radiograph_whose_imager_pixel_spacing_is_unusable_is_refused_not_taken_as_1mm(
        tmp_path, run_cli_all, imager_spacing):
    """Without PixelSpacing, a zero, negative or NaN ImagerPixelSpacing is refused as a bad PixelSpacing is (GDCM
    would take 1 mm for one axis of a DX, or flip the image for a negative size)."""
    path = _radiograph(tmp_path / "dx.dcm", imager_spacing, sop_class=DX_STORAGE)
    code, _, err = run_cli_all("info", path)
    _clean_error(code, err, "dx.dcm", "ImagerPixelSpacing (0018,1164)", "no PixelSpacing")


def test_a_pixel_size_the_reader_found_elsewhere_is_not_called_assumed(tmp_path):
    """A radiograph stores its pixel size as ImagerPixelSpacing, not PixelSpacing: whatever size the reader takes
    from it stands, and "1 mm pixels assumed" is said only when the image really got 1 mm."""
    import pydicom

    path = write_dicom(tmp_path / "cr.dcm", _brainish(), modality="CR")
    ds = pydicom.dcmread(str(path))
    del ds.PixelSpacing
    ds.ImagerPixelSpacing = ["0.15", "0.15"]
    ds.save_as(str(path), enforce_file_format=True)
    image = read_image(path)
    assumed = any("1 mm pixels assumed" in n for n in image_notes(image))
    assert assumed == bool(np.allclose(image.GetSpacing()[:2], 1.0)), (image.GetSpacing(), image_notes(image))


@pytest.mark.parametrize("sop_class", ["1.2.840.10008.5.1.4.1.1.7", DX_STORAGE])
def test_a_radiograph_with_both_spacings_is_measured_with_pixel_spacing(tmp_path, sop_class):
    """PixelSpacing (0028,0030) is the size calibrated to the patient; GDCM takes ImagerPixelSpacing (the detector)
    for a DX even when PixelSpacing is there. PixelSpacing stands, and a note names the detector size the reader
    had taken; where the reader took PixelSpacing already (a secondary capture) nothing is said."""
    import pydicom

    path = _radiograph(tmp_path / "dx.dcm", (0.15, 0.2), sop_class=sop_class)
    ds = pydicom.dcmread(str(path))
    ds.PixelSpacing = ["0.1", "0.12"]
    ds.save_as(str(path), enforce_file_format=True)
    image = read_image(path)
    assert image.GetSpacing()[:2] == pytest.approx((0.12, 0.1))
    notes = image_notes(image)
    if sop_class == DX_STORAGE:
        assert len(notes) == 1 and "pixel size 0.12 x 0.1 mm from PixelSpacing (0028,0030)" in notes[0], notes
        assert "ImagerPixelSpacing (0018,1164), at the detector: '0.15\\0.2'" in notes[0], notes
        assert "no PixelSpacingCalibrationType (0028,0A02)" in notes[0], notes
        ds.PixelSpacingCalibrationType = "GEOMETRY"
        ds.save_as(str(path), enforce_file_format=True)
        calibrated = image_notes(read_image(path))
        assert "calibrated to the patient (GEOMETRY, PixelSpacingCalibrationType (0028,0A02))" in calibrated[0]
    else:
        assert not any("PixelSpacing" in n for n in notes), notes


def test_the_size_check_reads_the_axial_planes_whatever_order_the_file_stores_its_axes_in(shared_data, tmp_path):
    """A CT stored with its superior axis second (J) is the same scan: a slice model classifies it exactly as the
    axially stored file (it was refused as "122 x 30 pixels, too small"). A single coronal slice, which a 2D model
    would read as 1-pixel rows of axial pixels, is refused saying so."""
    from MedDeepRecogLib.inference.classify import classify_scan

    ct = sitk.ReadImage(str(shared_data / "totalsegmentator_examples" / "example_ct_sm.nii.gz"))
    sitk.WriteImage(sitk.PermuteAxes(ct, [0, 2, 1]), str(tmp_path / "j_superior.nrrd"))
    stored = classify_scan(tmp_path / "j_superior.nrrd", "body-region", explain="none", faithfulness=False)
    axial = classify_scan(shared_data / "totalsegmentator_examples" / "example_ct_sm.nii.gz", "body-region",
                          explain="none", faithfulness=False)
    assert np.allclose(stored.probabilities, axial.probabilities, atol=1e-6)
    assert len(stored.per_slice) == len(axial.per_slice)
    coronal = sitk.GetImageFromArray((np.random.default_rng(0).random((1, 200, 180)) * 100).astype(np.float32))
    coronal.SetDirection((1, 0, 0, 0, 0, -1, 0, 1, 0))
    sitk.WriteImage(coronal, str(tmp_path / "coronal.nrrd"))
    from MedDeepRecogLib.errors import InputImageError

    with pytest.raises(InputImageError, match=r"axial slices .* are 180 x 1 pixels .*single coronal or sagittal"):
        classify_scan(tmp_path / "coronal.nrrd", "brain-tumour-mri", explain="none", faithfulness=False)


def test_folder_trained_slice_package_is_evaluated_on_what_classify_gives_it(tmp_path):
    """A slices2d config without input/slices is standardised as classify standardises each slice (input.slices {}
    recorded): ``evaluate``'s input of an image (an .npz of the PNGs) gives the network the probabilities
    ``classify`` gives for the PNG file. ``input/slices_as_stored`` (body-region's MedNIST recipe) keeps the images
    as stored."""
    import yaml

    import torch

    from MedDeepRecogLib.cli import main
    from MedDeepRecogLib.inference.classify import classify_scan
    from MedDeepRecogLib.packages import load_package
    from MedDeepRecogLib.training.config import config_from_dict, load_config
    from MedDeepRecogLib.training.data import training_slices
    from MedDeepRecogLib.training.data import load_package_split

    folder = tmp_path / "pngs"
    folder.mkdir()
    rows, images, labels = ["file,label"], [], []
    for i in range(12):
        img = _brainish(40, seed=i)
        img[:, :20] //= 2 if i % 2 else 1   # class b: a darker left half
        _picture(folder / f"p{i:02d}.png", img)
        rows.append(f"p{i:02d}.png,{'ab'[i % 2]}")
        images.append(img)
        labels.append(i % 2)
    (folder / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    raw = {"id": "tiny-png", "data": {"path": str(folder), "kind": "slices2d", "intensity_range": [0, 255],
                                      "size": [32, 32]},
           "model": {"name": "simple_cnn2d", "kwargs": {"channels": [4, 8], "hidden": 8}},
           "training": {"epochs": 1, "batch_size": 8}}
    cfg_path = tmp_path / "png.yaml"
    cfg_path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert main(["train", str(cfg_path), "--out", str(tmp_path / "run"), "--package-dest", str(tmp_path / "cat"),
                 "--progress", "none", "--threads", "1"]) == 0
    pkg = load_package(tmp_path / "cat" / "tiny-png" / "1.0.0")
    assert pkg.input_spec["slices"] == {}
    npz = tmp_path / "same.npz"
    np.savez(npz, images=np.stack(images), labels=np.array(labels))
    x = load_package_split(pkg, npz, "all").images
    net = pkg.build_model()
    with torch.no_grad():
        evaluated = torch.softmax(net(torch.from_numpy(x)), 1).numpy()
    for i in (0, 1, 6, 11):
        got = classify_scan(folder / f"p{i:02d}.png", pkg, explain="none", device="cpu", uncertainty="none",
                            faithfulness=False)
        np.testing.assert_allclose(got.probabilities, evaluated[i], atol=1e-5)

    body = Path(__file__).resolve().parents[2] / "configs" / "body-region.yaml"
    assert training_slices(load_config(body)) is None   # trained as stored: MedNIST's crops are standardised already
    assert training_slices(config_from_dict({**raw, "input": {"slices_as_stored": True}})) is None
    assert training_slices(config_from_dict(raw)) == {}


# ------------------------------------------------------------------------------------------------ sweep 39
def test_a_dicom_without_pixel_data_is_named_as_such_by_every_reading_command(run_cli, tmp_path, tiny_2d):
    import pydicom

    src = write_dicom(tmp_path / "nopixel.dcm", _brainish(64).astype(np.uint16))
    ds = pydicom.dcmread(str(src))
    del ds.PixelData
    ds.save_as(str(src))
    for argv in (["info", src], ["preprocess", src, tmp_path / "x.nrrd", "--pipeline", "brain-mri"],
                 ["classify", src, "--model", tiny_2d, "--out", tmp_path / "out", "--progress", "none"]):
        code, _, err = run_cli(*argv)
        _clean_error(code, err, "nopixel.dcm", "DICOM file has no pixel data (no PixelData element", "not an image")
        assert "sitk::ERROR" not in err and "ImageIO" not in err
    assert not (tmp_path / "x.nrrd").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("shape, size", [((3, 3), "3 x 3 pixels"), ((1, 300), "300 x 1 pixels")])
def test_preprocess_refuses_an_image_too_small_for_the_pipeline_naming_its_size(run_cli, tmp_path, shape, size):
    src = _picture(tmp_path / "small.png", np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8))
    code, _, err = run_cli("preprocess", src, tmp_path / "x.nrrd", "--pipeline", "brain-mri")
    _clean_error(code, err, "small.png", f"the image is {size}, too small for pipeline 'brain-mri'",
                        "at least 4 pixels per side", "head_mask")
    assert "ITK" not in err and "(0x" not in err
    assert not (tmp_path / "x.nrrd").exists()


def test_a_one_pixel_image_is_called_1_x_1_not_empty(run_cli, tmp_path):
    src = _picture(tmp_path / "one.png", np.full((1, 1), 77, np.uint8))
    for pipeline in ("brain-mri", "breast-mri"):   # both smooth with a recursive Gaussian: refused by size
        code, _, err = run_cli("preprocess", src, tmp_path / "x.nrrd", "--pipeline", pipeline)
        _clean_error(code, err, "one.png", "the image is 1 x 1 pixels, too small")
    from MedDeepRecogLib.errors import InputImageError
    from MedDeepRecogLib.io import validate_intensities

    with pytest.raises(InputImageError, match="a 1 x 1 image") as caught:   # a pipeline without a size minimum
        validate_intensities(read_image(src), src)
    assert "empty" not in str(caught.value)


def test_an_all_black_picture_is_an_empty_image_of_pixels_not_a_volume(run_cli, tmp_path, tiny_2d):
    src = _picture(tmp_path / "black.png", np.zeros((96, 96), np.uint8))
    code, _, err = run_cli("classify", src, "--model", tiny_2d, "--out", tmp_path / "out", "--progress", "none")
    _clean_error(code, err, "black.png", "the image is empty: every pixel equals 0")
    assert "volume" not in err and "voxel" not in err


def test_itk_errors_reach_the_user_without_the_filter_objects_address():
    from MedDeepRecogLib.io.file_checks import itk_error_line
    from MedDeepRecogLib.preprocessing import load_pipeline

    line = itk_error_line(RuntimeError("ITK ERROR: SmoothingRecursiveGaussianImageFilter(0x564d9e107da0): The "
                                       "number of pixels along dimension 0 is less than 4."))
    assert line == "SmoothingRecursiveGaussianImageFilter: The number of pixels along dimension 0 is less than 4."
    # a pipeline given a grid too small for a step refuses it before ITK does, naming the step
    from MedDeepRecogLib.errors import ConfigError

    with pytest.raises(ConfigError, match=r"step 1 \(head_mask\): the grid is 3 x 3 x 5 voxels"):
        load_pipeline("brain-mri").run(sitk.GetImageFromArray(np.ones((5, 3, 3), np.float32)))


def _multi_frame(path: Path, spacing_between_frames: float | None = None) -> Path:
    import pydicom

    rng = np.random.default_rng(2)
    frames = np.stack([_brainish(48, seed=k).astype(np.uint16) * 4 + rng.integers(0, 3, (48, 48), dtype=np.uint16)
                       for k in range(5)])
    write_dicom(path, frames)
    if spacing_between_frames is not None:
        ds = pydicom.dcmread(str(path))
        ds.SpacingBetweenSlices = spacing_between_frames
        ds.save_as(str(path))
    return path


def test_info_notes_that_a_multi_frame_files_frames_may_be_time_points_with_an_assumed_spacing(run_cli, tmp_path):
    code, out, err = run_cli("info", _multi_frame(tmp_path / "cine.dcm"))
    assert code == 0, err
    record = json.loads(out)
    assert record["size"] == [48, 48, 5] and record["frames"] == 5
    assert any("5 frames" in n and "time points of a cine loop" in n and "1 mm spacing is assumed" in n
               for n in record["notes"]), record["notes"]
    code, out, _ = run_cli("info", _multi_frame(tmp_path / "placed.dcm", 2.5))
    record = json.loads(out)
    assert record["spacing_mm"][2] == 2.5
    assert any("volume of 5 slices 2.5 mm apart (from SpacingBetweenSlices" in n for n in record["notes"])


def test_preprocess_refuses_a_multi_frame_file_as_classify_does_unless_it_places_its_frames(run_cli, tmp_path,
                                                                                           tiny_2d):
    src = _multi_frame(tmp_path / "cine.dcm")
    code, _, err = run_cli("preprocess", src, tmp_path / "x.nrrd", "--pipeline", "brain-mri")
    _clean_error(code, err, "cine.dcm", "a multi-frame file (5 frames in one DICOM object) cannot go to pipeline "
                 "'brain-mri'", "cine loop", "export the frame to process as its own file")
    assert not (tmp_path / "x.nrrd").exists()
    code, _, err = run_cli("classify", src, "--model", tiny_2d, "--out", tmp_path / "out", "--progress", "none")
    _clean_error(code, err, "cine.dcm", "cannot go to the 2D model", "cine loop", "export the frame to classify")
    # frames the file places 2.5 mm apart are slices of a volume, filtered as one
    placed = _multi_frame(tmp_path / "placed.dcm", 2.5)
    code, _, err = run_cli("preprocess", placed, tmp_path / "y.nrrd", "--pipeline", "brain-mri")
    assert code == 0, err
    assert sitk.ReadImage(str(tmp_path / "y.nrrd")).GetSize() == (48, 48, 5)


def test_auto_routing_names_the_dicom_modality_tag_for_mr(tmp_path):
    from MedDeepRecogLib.inference.route import route_image

    route = route_image(read_image(write_dicom(tmp_path / "mr.dcm", _brainish(96).astype(np.uint16) * 8)))
    assert route.evidence["modality"] == "MR" and route.evidence["modality_source"] == "DICOM modality MR", route
    assert "DICOM modality MR" in route.reason and "intensities not in HU" not in route.reason


def test_a_float_label_map_is_refused_as_a_label_map_and_float_scans_are_not(run_cli, tmp_path, tiny_2d,
                                                                           shared_data):
    from MedDeepRecogLib.io.image_content import label_map_values

    labels = np.zeros((8, 64, 64), np.float32)
    labels[3:5, 20:40, 20:40] = 1
    src = tmp_path / "label_float.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(labels), str(src))
    code, _, err = run_cli("classify", src, "--model", tiny_2d, "--out", tmp_path / "out", "--progress", "none")
    _clean_error(code, err, "label_float.nrrd", "label map or mask", "whole-number float voxels with 2 distinct")
    for scan in (shared_data / "pyradiomics_testcases" / "brain1_image.nrrd",
                 shared_data / "totalsegmentator_examples" / "example_ct.nii.gz",
                 shared_data / "totalsegmentator_examples" / "example_mr_sm.nii.gz"):
        as_float = sitk.Cast(read_image(scan), sitk.sitkFloat32)   # whole numbers, as a float copy of a CT in HU
        assert label_map_values(as_float) is None, scan
        assert label_map_values(sitk.Cast(read_image(scan), sitk.sitkFloat64) * 1.001) is None, scan


def test_every_steps_minimum_side_is_checked_before_it_runs(run_cli, tmp_path):
    """CLAHE's scikit-image backend reads an axis of 3 or 4 voxels as colour channels and failed with an
    "unexpected ValueError": it is refused by size as the recursive Gaussians are, and a 6 x 6 picture runs."""
    (tmp_path / "clahe.json").write_text('{"steps": [{"name": "clahe", "backend": "skimage"}]}', encoding="utf-8")
    src = _picture(tmp_path / "r4.png", np.random.default_rng(0).integers(0, 255, (4, 4), dtype=np.uint8))
    code, _, err = run_cli("preprocess", src, tmp_path / "x.nrrd", "--pipeline", tmp_path / "clahe.json")
    _clean_error(code, err, "r4.png", "the image is 4 x 4 pixels, too small", "at least 5 pixels per side", "clahe")
    src = _picture(tmp_path / "r6.png", np.random.default_rng(0).integers(0, 255, (6, 6), dtype=np.uint8))
    code, _, err = run_cli("preprocess", src, tmp_path / "y.nrrd", "--pipeline", tmp_path / "clahe.json")
    assert code == 0, err
