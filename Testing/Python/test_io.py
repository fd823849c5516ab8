"""Geometry-preserving image I/O: round trips on odd grids, label maps, .seg.nrrd, DICOM series (real CT, HU)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from conftest import make_volume
from MedDeepRecogLib.errors import InputImageError, OutputError
from MedDeepRecogLib.io import (
    SegmentSpec,
    atomic_output,
    describe_geometry,
    image_from_array,
    image_notes,
    read_image,
    read_segmentation,
    same_geometry,
    write_image,
    write_segment_masks,
    write_segmentation,
)

FORMATS = [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"]

FLIPPED = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


def _oblique_direction() -> tuple[float, ...]:
    """A rotation about an axis that is not a coordinate axis (no zero entries)."""
    rot = sitk.VersorTransform((0.3, -0.5, 0.8), np.deg2rad(25.0))
    return tuple(rot.GetMatrix())


def _assert_geometry_equal(a: sitk.Image, b: sitk.Image, atol: float = 1e-5) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=atol)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=atol)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=atol)


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("kind", ["oblique", "flipped", "anisotropic"])
def test_round_trip_keeps_geometry_and_voxels(tmp_path, suffix, kind):
    direction = {"oblique": _oblique_direction(), "flipped": FLIPPED, "anisotropic": None}[kind]
    spacing = (0.7, 1.3, 3.1) if kind != "flipped" else (1.0, 0.5, 2.0)
    image = make_volume(size=(23, 17, 9), spacing=spacing, origin=(-101.25, 33.5, 7.125), direction=direction)
    path = write_image(image, tmp_path / f"vol{suffix}")
    back = read_image(path)
    _assert_geometry_equal(image, back)
    assert back.GetPixelID() == image.GetPixelID()  # int16 stays int16
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    # the same physical point maps to the same index, so overlays line up in Slicer
    point = image.TransformIndexToPhysicalPoint((5, 7, 3))
    assert back.TransformPhysicalPointToIndex(point) == (5, 7, 3)


@pytest.mark.parametrize("suffix, data", [(".nhdr", "vol.raw.gz"), (".mhd", "vol.zraw")])
def test_a_detached_header_names_its_data_file_and_both_move_together(tmp_path, suffix, data):
    """A .nhdr / .mhd header names its data file: it must name the final one (it named a hidden temporary,
    so the output broke once copied), and another header's data file is never replaced."""
    image = make_volume(size=(7, 6, 5), spacing=(0.5, 0.7, 2.0))
    path = write_image(image, tmp_path / "out" / f"vol{suffix}")
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([f"vol{suffix}", data])
    copy = shutil.copytree(path.parent, tmp_path / "copy")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(copy / f"vol{suffix}")),
                                  sitk.GetArrayFromImage(image))
    write_image(image, path)   # the same output again (a caller's --overwrite) replaces its own data file
    (copy / f"vol{suffix}").unlink()
    before = (copy / data).read_bytes()
    with pytest.raises(OutputError, match=f"its data file {data} exists already"):
        write_image(image, copy / f"vol{suffix}")
    assert sorted(p.name for p in copy.iterdir()) == [data] and (copy / data).read_bytes() == before


@pytest.mark.parametrize("form", ["itk_written", "subfolder", "dot_dot_back_in", "absolute_inside", "list",
                                  "numbered", "mhd_list", "mhd_numbered"])
def test_detached_data_in_the_headers_folder_is_read_in_every_form(tmp_path, form):
    """What the rule that data lie in the header's folder (or below) still reads, voxel for voxel: ITK's own .nhdr
    (no blank line), a subfolder, a ``..`` that comes back in, an absolute name inside, and teem's and MetaIO's
    one-file-a-slice forms (``LIST``, a numbered ``%d`` pattern)."""
    voxels = np.arange(120, dtype=np.uint8).reshape(6, 5, 4)
    (tmp_path / "sub").mkdir()
    voxels.tofile(tmp_path / "sub" / "vol.raw")
    for z in range(6):
        voxels[z].tofile(tmp_path / f"s{z:02d}.raw")
    nrrd = "NRRD0004\ntype: uint8\ndimension: 3\nsizes: 4 5 6\nencoding: raw\ndata file: "
    mhd = "ObjectType = Image\nNDims = 3\nDimSize = 4 5 6\nElementType = MET_UCHAR\nElementDataFile = "
    slices = "".join(f"s{z:02d}.raw\n" for z in range(6))
    header = tmp_path / "vol.nhdr"
    if form == "itk_written":
        sitk.WriteImage(sitk.GetImageFromArray(voxels), str(header))
    else:
        text = {"subfolder": nrrd + "sub/vol.raw\n", "dot_dot_back_in": nrrd + f"../{tmp_path.name}/sub/vol.raw\n",
                "absolute_inside": nrrd + f"{tmp_path / 'sub' / 'vol.raw'}\n", "list": nrrd + "LIST\n" + slices,
                "numbered": nrrd + "s%02d.raw 0 5 1\n", "mhd_list": mhd + "LIST\n" + slices,
                "mhd_numbered": mhd + "s%02d.raw 0 5 1\n"}[form]
        header = header.with_suffix(".mhd") if form.startswith("mhd") else header
        header.write_text(text, encoding="utf-8")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(header)), voxels)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_float_volume_round_trip(tmp_path, suffix):
    image = sitk.Cast(make_volume(size=(11, 12, 13)), sitk.sitkFloat32) * 0.37
    back = read_image(write_image(image, tmp_path / f"f{suffix}"))
    assert back.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_label_map_stays_integer_and_exact(tmp_path, suffix):
    reference = make_volume(size=(20, 18, 7), direction=_oblique_direction())
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 118, size=(7, 18, 20)).astype(np.uint8)  # TotalSegmentator-like ids
    label_image = image_from_array(labels, reference)
    back = read_image(write_image(label_image, tmp_path / f"labels{suffix}"))
    assert back.GetPixelID() == sitk.sitkUInt8
    assert np.issubdtype(sitk.GetArrayViewFromImage(back).dtype, np.integer)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), labels)
    assert same_geometry(back, reference)


def test_seg_nrrd_organs_get_slicers_anatomy_colours_and_terminology(tmp_path):
    """Organs named as pydicom's SNOMED CT dictionary knows them get the colour Slicer's GenericAnatomyColors gives
    them and a TerminologyEntry tag with the SNOMED code the DICOM SEG carries (liver 10200004, spleen 78961009,
    kidney 64033007); by index the liver came out green "tissue", the spleen bone-coloured, and no tag was written.
    A name without a code keeps the palette colour and gets no terminology. Voxels and extents are what
    slicerio.add_segment gives."""
    reference = make_volume(size=(16, 14, 6), spacing=(0.9, 0.9, 2.5), direction=_oblique_direction())
    labelmap = np.zeros((6, 14, 16), np.uint8)
    labelmap[1:4, 2:8, 3:9] = 1
    labelmap[2:5, 9:12, 10:14] = 2
    labelmap[0, 0, 15] = 3
    labelmap[5, 13, 0] = 3
    specs = [SegmentSpec("liver", 1), SegmentSpec("spleen", 2), SegmentSpec("kidney", 3), SegmentSpec("organ_a", 4)]
    path = write_segmentation(labelmap, reference, specs, tmp_path / "organs.seg.nrrd")
    seg = slicerio.read_segmentation(str(path))
    by_name = {s["name"]: s for s in seg["segments"]}
    for name, code, rgb in (("liver", "10200004", (221, 130, 101)), ("spleen", "78961009", (157, 108, 162)),
                            ("kidney", "64033007", (185, 102, 83))):
        np.testing.assert_allclose(by_name[name]["color"], np.array(rgb) / 255.0, atol=1e-4)
        assert by_name[name]["terminology"]["type"] == ["SCT", code, name.capitalize()], name
    assert "terminology" not in by_name["organ_a"]
    np.testing.assert_allclose(by_name["organ_a"]["color"], (0.44, 0.72, 0.82))   # the palette by index (3)
    # the same voxels, label values and extents as slicerio's own add_segment
    expected = slicerio.create_segmentation(reference.GetSize(), np.eye(4), dtype="uint8")
    for spec in specs:
        slicerio.add_segment(expected, np.transpose(labelmap == spec.label, (2, 1, 0)), {"name": spec.name})
    np.testing.assert_array_equal(np.asarray(seg["voxels"]), expected["voxels"])
    assert [(s["labelValue"], s["layer"], list(s["extent"])) for s in seg["segments"]] == [
        (s["labelValue"], s["layer"], s["extent"]) for s in expected["segments"]]


def test_seg_nrrd_names_colors_geometry_read_back_by_slicerio(tmp_path):
    reference = make_volume(size=(16, 14, 6), spacing=(0.9, 0.9, 2.5), direction=_oblique_direction())
    labelmap = np.zeros((6, 14, 16), np.uint8)
    labelmap[1:4, 2:8, 3:9] = 1
    labelmap[2:5, 9:12, 10:14] = 2
    specs = [SegmentSpec("liver", 1, (0.87, 0.47, 0.39)), SegmentSpec("lesion", 2, (0.9, 0.9, 0.1))]
    path = write_segmentation(labelmap, reference, specs, tmp_path / "seg.seg.nrrd")

    seg = slicerio.read_segmentation(str(path))
    names = [s["name"] for s in seg["segments"]]
    assert names == ["liver", "lesion"]
    np.testing.assert_allclose(seg["segments"][0]["color"], (0.87, 0.47, 0.39), atol=1e-3)
    matrix = np.asarray(seg["ijkToLPS"])
    expected = np.array(reference.GetDirection()).reshape(3, 3) * np.array(reference.GetSpacing())
    np.testing.assert_allclose(matrix[:3, :3], expected, atol=1e-5)
    np.testing.assert_allclose(matrix[:3, 3], reference.GetOrigin(), atol=1e-5)

    back, grid, back_specs = read_segmentation(path)
    assert same_geometry(grid, reference)
    assert [s.name for s in back_specs] == ["liver", "lesion"]
    np.testing.assert_array_equal(back == 1, labelmap == 1)
    np.testing.assert_array_equal(back == 2, labelmap == 2)


def test_overlapping_masks_are_kept_whole(tmp_path):
    reference = make_volume(size=(12, 10, 5))
    body = np.zeros((5, 10, 12), bool)
    body[:, 1:9, 1:11] = True
    lungs = np.zeros_like(body)
    lungs[1:4, 3:7, 2:5] = True
    path = write_segment_masks([(SegmentSpec("body", 1), body), (SegmentSpec("lungs", 2), lungs)], reference,
                               tmp_path / "masks.seg.nrrd")
    seg = slicerio.read_segmentation(str(path))
    assert [s["name"] for s in seg["segments"]] == ["body", "lungs"]
    voxels = np.asarray(seg["voxels"])
    for segment, expected in zip(seg["segments"], (body, lungs)):
        layer = voxels[segment["layer"]] if voxels.ndim == 4 else voxels
        got = np.transpose(layer == segment["labelValue"], (2, 1, 0))
        np.testing.assert_array_equal(got, expected)  # body keeps the voxels where the lungs are


def test_atomic_write_leaves_nothing_on_error_and_normal_permissions(tmp_path):
    target = tmp_path / "out.nrrd"
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    path = write_image(make_volume(size=(4, 4, 4)), target)
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)


def test_write_refuses_unknown_format(tmp_path):
    with pytest.raises(InputImageError, match=r"out\.png"):
        write_image(make_volume(size=(4, 4, 4)), tmp_path / "out.png")
    assert not (tmp_path / "out.png").exists()


# ---------------------------------------------------------------- real DICOM series (Siemens abdominal CT)

def _dicom_dir(shared_data: Path) -> Path:
    folder = shared_data / "totalsegmentator_examples" / "example_ct_dicom"
    if not folder.is_dir():
        pytest.skip("example_ct_dicom not available")
    return folder


def test_dicom_series_in_hu_with_geometry_of_reference_labels(shared_data):
    folder = _dicom_dir(shared_data)
    image = read_image(folder)
    assert image.GetSize() == (512, 512, 20)
    np.testing.assert_allclose(image.GetSpacing(), (0.977, 0.977, 2.0), atol=2e-3)
    assert image.GetMetaData("0008|0060") == "CT"
    arr = sitk.GetArrayViewFromImage(image)
    assert np.issubdtype(arr.dtype, np.signedinteger)  # rescale intercept applied -> negative HU
    assert arr.min() == -1024  # padding value after Rescale Intercept -1024
    # air outside the patient (image corners inside the field of view ring) and soft tissue in HU ranges
    corner = arr[:, 60:90, 60:90]
    assert -1100 < float(np.median(corner)) < -900
    # the TotalSegmentator labels (NIfTI, stored with the rows flipped) cover exactly the same physical box:
    # resampled onto the DICOM grid in physical space (nearest neighbour) every label voxel is kept
    seg = read_image(shared_data / "totalsegmentator_examples" / "example_seg_dicom.nii.gz")
    assert seg.GetSize() == image.GetSize()
    np.testing.assert_allclose(seg.TransformIndexToPhysicalPoint((0, 511, 0)), image.GetOrigin(), atol=1e-3)
    on_grid = sitk.Resample(seg, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, seg.GetPixelID())
    labels = sitk.GetArrayViewFromImage(on_grid)
    np.testing.assert_array_equal(labels, sitk.GetArrayViewFromImage(seg)[:, ::-1, :])
    liver = arr[labels == 5]  # label 5 = liver
    assert liver.size > 1000
    assert 20 < float(np.median(liver)) < 200  # liver parenchyma in HU (contrast CT)


def test_single_dicom_file_matches_series_slice(shared_data):
    folder = _dicom_dir(shared_data)
    series = read_image(folder)
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))
    single = read_image(files[7])
    assert single.GetSize()[:2] == (512, 512)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(single).reshape(512, 512),
                                  sitk.GetArrayFromImage(series)[7])
    np.testing.assert_allclose(single.GetOrigin(), series.TransformIndexToPhysicalPoint((0, 0, 7)), atol=1e-3)


def test_single_dicom_slice_is_as_thick_as_its_slice_thickness(shared_data, tmp_path, run_cli_area):
    """One CT slice (SliceThickness 3.0, no SpacingBetweenSlices) has no neighbour to measure its spacing from:
    its z spacing is its thickness, not GDCM's 1 mm, and the notes say where it came from; a folder of that one
    file reads the same; without either tag 1 mm is assumed and said."""
    import pydicom

    one = Path(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(_dicom_dir(shared_data)))[7])
    assert pydicom.dcmread(one, stop_before_pixels=True).get("SpacingBetweenSlices") is None
    image = read_image(one)
    assert image.GetSize() == (512, 512, 1) and image.GetSpacing()[2] == pytest.approx(3.0)
    assert any("3 mm from its SliceThickness" in n for n in image_notes(image))
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(one, folder / one.name)
    assert read_image(folder).GetSpacing()[2] == pytest.approx(3.0)
    code, out, err = run_cli_area("info", one)
    assert code == 0, err
    info = json.loads(out)
    assert info["spacing_mm"][2] == pytest.approx(3.0) and any("SliceThickness" in n for n in info["notes"])
    ds = pydicom.dcmread(one)
    del ds.SliceThickness
    ds.save_as(tmp_path / "bare.dcm")
    bare = read_image(tmp_path / "bare.dcm")
    assert bare.GetSpacing()[2] == pytest.approx(1.0)
    assert any("1 mm thickness assumed" in n for n in image_notes(bare))


def test_dicom_folder_with_two_series_reads_the_larger_and_names_the_other(shared_data, tmp_path, caplog):
    folder = _dicom_dir(shared_data)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    files = sorted(folder.iterdir())
    for f in files:
        shutil.copy(f, mixed / f.name)
    # a second, smaller series: 3 slices re-written with a new series UID
    small = sitk.ReadImage([str(f) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))[:3]])
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(3):
        sl = small[:, :, k]
        sl.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1.99999")
        sl.SetMetaData("0008|0060", "CT")
        sl.SetMetaData("0020|0013", str(k + 1))
        sl.SetMetaData("0020|0032", "\\".join(map(str, small.TransformIndexToPhysicalPoint((0, 0, k)))))
        sl.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        writer.SetFileName(str(mixed / f"other_{k}.dcm"))
        writer.Execute(sl)
    with caplog.at_level(logging.WARNING):
        image = read_image(mixed)
    assert image.GetSize() == (512, 512, 20)
    assert "1.2.826.0.1.3680043.2.1125.1.99999" in caplog.text


def test_info_names_a_multi_label_map_and_guesses_no_modality_for_it(shared_data):
    ts = shared_data / "totalsegmentator_examples"
    seg = describe_geometry(read_image(ts / "example_seg_mr.nii.gz"))
    assert seg["modality_guess"] == "unknown" and len(seg["label_map_values"]) == 24
    mr = describe_geometry(read_image(ts / "example_mr_sm.nii.gz"))  # resampled: undershoots to -47 at edges
    assert mr["modality_guess"] == "MR" and "label_map_values" not in mr
    assert "label_map_values" not in describe_geometry(read_image(ts / "example_ct_sm.nii.gz"))


def test_describe_geometry_on_real_ct(shared_data):
    info = describe_geometry(read_image(shared_data / "totalsegmentator_examples" / "example_ct.nii.gz"))
    assert info["size"] == [122, 101, 112]
    assert info["spacing_mm"] == [3.0, 3.0, 3.0]
    assert info["modality_guess"] == "CT"
    # NIfTI RAS on disk becomes LPS: the first two direction cosines flip sign
    assert info["direction"][0] == -1.0 and info["direction"][4] == -1.0


def test_segment_argmax_matches_numpy_and_keeps_classes_beyond_256():
    """segment's arg-max over class maps given one at a time (its memory-light path) equals ``np.argmax`` over the
    stack, ties to the first class, and a model of more than 256 classes does not wrap around in uint8."""
    from MedDeepRecogLib.inference.segment import argmax_labels

    rng = np.random.default_rng(0)
    maps = rng.integers(0, 4, size=(5, 3, 4, 6)).astype(np.float32)   # small integers: many ties
    assert np.array_equal(argmax_labels(iter(maps)), np.argmax(maps, axis=0))
    many = np.zeros((300, 2, 2, 2), np.float32)
    many[299, 0, 0, 0] = many[3, 1, 1, 1] = 1.0
    labels = argmax_labels(iter(many))
    assert labels[0, 0, 0] == 299 and labels[1, 1, 1] == 3 and labels[0, 1, 0] == 0


def test_a_nifti_whose_qform_and_sform_disagree_or_that_has_neither_says_which_geometry_was_read(tmp_path):
    """ITK reads a NIfTI by its qform where the sform (which nibabel and others prefer) says otherwise, and by the
    bare voxel grid where the header has neither: both without a word. The image's notes (info's ``notes``,
    classify's ``input_notes``) name the transform read; a header whose two agree, or with one only, gets none."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    voxels = rng.integers(0, 100, (8, 9, 10)).astype(np.int16)
    sform = np.array([[3.0, 0, 0, -177.96], [0, 3.0, 0, 11.32], [0, 0, 3.0, 94.30], [0, 0, 0, 1]])

    def saved(name: str, qform, q_code: int, s_code: int) -> list[str]:
        img = nib.Nifti1Image(voxels, None)
        img.set_qform(qform, code=q_code)
        img.set_sform(sform, code=s_code)
        nib.save(img, tmp_path / name)
        return describe_geometry(read_image(tmp_path / name)).get("notes", [])

    disagree = saved("disagree.nii.gz", np.diag([3.0, 3.0, 3.0, 1.0]), 1, 2)
    assert len(disagree) == 1 and "qform (code 1) and sform (code 2) disagree: the geometry read is the qform's" \
        in disagree[0] and "(0.00, 0.00, 0.00) mm LPS" in disagree[0] and "(177.96, -11.32, 94.30)" in disagree[0]
    neither = saved("neither.nii.gz", None, 0, 0)
    assert len(neither) == 1 and "neither a qform nor an sform" in neither[0]
    assert saved("agree.nii.gz", sform, 1, 2) == [] and saved("sform_only.nii.gz", None, 0, 2) == []
