"""Bad input through the command line: one clear line naming the file and the problem, exit code 2, no traceback,
no output file left behind."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import make_volume
from MedDeepRecogLib import cli


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Run ``meddeeprecog ARGS`` in-process; returns (exit code, stdout, stderr).

    Only the commands under test are registered, so a half-written command elsewhere cannot break these tests.
    """
    monkeypatch.setattr(cli, "COMMANDS", ["info", "preprocess"])

    def run(*argv: str) -> tuple[int, str, str]:
        try:
            code = cli.main([str(a) for a in argv])
        except SystemExit as exc:  # argparse usage errors
            code = exc.code
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def _assert_clean_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture
def good_volume(tmp_path) -> Path:
    path = tmp_path / "good.nrrd"
    sitk.WriteImage(make_volume(size=(16, 14, 8)), str(path))
    return path


def _preprocess(run_cli, source: Path, out: Path, pipeline: str = "lung-ct", *extra: str):
    return run_cli("preprocess", source, out, "--pipeline", pipeline, *extra)


def test_missing_file(run_cli, tmp_path):
    missing = tmp_path / "nope.nii.gz"
    out = tmp_path / "out.nrrd"
    code, _, err = _preprocess(run_cli, missing, out)
    _assert_clean_error(code, err, "nope.nii.gz", "no such file")
    assert not out.exists()
    code, _, err = run_cli("info", missing)
    _assert_clean_error(code, err, "nope.nii.gz")


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_truncated_nifti(run_cli, tmp_path, suffix):
    full = tmp_path / f"full{suffix}"
    sitk.WriteImage(make_volume(size=(30, 30, 20)), str(full))
    data = full.read_bytes()
    if suffix == ".nii.gz":
        raw = gzip.decompress(data)
        truncated_bytes = gzip.compress(raw[: len(raw) // 2])  # a valid gzip stream of half the voxels
    else:
        truncated_bytes = data[: len(data) // 2]
    bad = tmp_path / f"truncated{suffix}"
    bad.write_bytes(truncated_bytes)
    out = tmp_path / "out.nrrd"
    code, _, err = _preprocess(run_cli, bad, out)
    _assert_clean_error(code, err, bad.name, "truncated")
    assert not out.exists()


def test_cut_gzip_stream(run_cli, tmp_path):
    full = tmp_path / "full.nii.gz"
    sitk.WriteImage(make_volume(size=(30, 30, 20)), str(full))
    bad = tmp_path / "cut.nii.gz"
    bad.write_bytes(full.read_bytes()[:-200])
    code, _, err = run_cli("info", bad)
    _assert_clean_error(code, err, "cut.nii.gz")


def test_garbled_nrrd(run_cli, tmp_path, good_volume):
    bad = tmp_path / "garbled.nrrd"
    data = bytearray(good_volume.read_bytes())
    header_end = data.index(b"\n\n") + 2
    bad.write_bytes(bytes(data[:header_end]) + b"\x00\xff" * 50)  # header intact, voxel data garbage/short
    out = tmp_path / "out.nrrd"
    code, _, err = _preprocess(run_cli, bad, out)
    _assert_clean_error(code, err, "garbled.nrrd")
    assert not out.exists()
    noise = tmp_path / "noise.nrrd"
    noise.write_bytes(np.random.default_rng(0).bytes(3000))
    code, _, err = _preprocess(run_cli, noise, out)
    _assert_clean_error(code, err, "noise.nrrd", "cannot be read")


def test_empty_file(run_cli, tmp_path):
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    code, _, err = run_cli("info", empty)
    _assert_clean_error(code, err, "empty.nii.gz", "empty")


def test_unreadable_dicom_folder(run_cli, tmp_path):
    folder = tmp_path / "dicom"
    folder.mkdir()
    for k in range(3):
        (folder / f"IM{k}.dcm").write_bytes(b"DICM" + bytes(300))
    out = tmp_path / "out.nrrd"
    code, _, err = _preprocess(run_cli, folder, out)
    _assert_clean_error(code, err, "dicom", "DICOM")
    assert not out.exists()


def test_2d_image_is_filtered_as_one_slice_on_its_own_grid(run_cli, tmp_path):
    # 2D images are first-class input: preprocess gives the same answer as classify (a 2D path), not a refusal
    path = tmp_path / "slice.nrrd"
    image = sitk.GetImageFromArray(np.arange(400, dtype=np.int16).reshape(20, 20))
    image.SetSpacing((0.5, 0.7))
    image.SetOrigin((3.0, -4.0))
    sitk.WriteImage(image, str(path))
    out = tmp_path / "out.nrrd"
    code, _, err = _preprocess(run_cli, path, out)
    assert code == 0, err
    result = sitk.ReadImage(str(out))
    assert result.GetDimension() == 2 and result.GetSize() == (20, 20)
    assert result.GetSpacing() == (0.5, 0.7) and result.GetOrigin() == (3.0, -4.0)


def test_4d_image_is_refused(run_cli, tmp_path):
    path = tmp_path / "series.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(3 * 4 * 5 * 6, dtype=np.int16).reshape(3, 4, 5, 6),
                                           isVector=False), str(path))
    out = tmp_path / "out.nrrd"
    code, _, err = _preprocess(run_cli, path, out)
    _assert_clean_error(code, err, "series.nii.gz", "4D")
    assert not out.exists()


def test_constant_volume_is_refused(run_cli, tmp_path):
    path = tmp_path / "blank.nrrd"
    sitk.WriteImage(sitk.Image(10, 10, 10, sitk.sitkInt16), str(path))
    out = tmp_path / "out.nrrd"
    code, _, err = _preprocess(run_cli, path, out)
    _assert_clean_error(code, err, "blank.nrrd", "empty")
    assert not out.exists()


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_nan_inf_voxels(run_cli, tmp_path, bad_value):
    arr = np.random.default_rng(0).normal(size=(6, 8, 10)).astype(np.float32)
    arr[2, 3, 4] = bad_value
    path = tmp_path / "nan.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    out = tmp_path / "out.nrrd"
    code, _, err = _preprocess(run_cli, path, out, "brain-mri")
    _assert_clean_error(code, err, "nan.nii.gz", "NaN or infinite")
    assert not out.exists()


def test_pipeline_with_unknown_step(run_cli, tmp_path, good_volume):
    pipe = tmp_path / "pipe.json"
    pipe.write_text(json.dumps({"steps": [{"name": "median"}, {"name": "sharpen_magic"}]}), encoding="utf-8")
    out = tmp_path / "out.nrrd"
    code, _, err = _preprocess(run_cli, good_volume, out, str(pipe))
    _assert_clean_error(code, err, "pipe.json", "step 2", "unknown step 'sharpen_magic'")
    assert not out.exists()


def test_pipeline_with_wrong_parameter(run_cli, tmp_path, good_volume):
    pipe = tmp_path / "pipe.yaml"
    pipe.write_text("steps:\n  - name: window\n    preset: liver\n", encoding="utf-8")
    out = tmp_path / "out.nrrd"
    code, _, err = _preprocess(run_cli, good_volume, out, str(pipe))
    _assert_clean_error(code, err, "pipe.yaml", "'preset'", "'liver'")
    pipe.write_text("steps:\n  - name: median\n    radius: two\n", encoding="utf-8")
    code, _, err = _preprocess(run_cli, good_volume, out, str(pipe))
    _assert_clean_error(code, err, "pipe.yaml", "'radius'", "whole number")
    pipe.write_text("steps:\n  - name: median\n    radus: 2\n", encoding="utf-8")
    code, _, err = _preprocess(run_cli, good_volume, out, str(pipe))
    _assert_clean_error(code, err, "pipe.yaml", "unknown parameter", "'radus'")
    assert not out.exists()


def test_pipeline_file_not_json(run_cli, tmp_path, good_volume):
    pipe = tmp_path / "pipe.json"
    pipe.write_text("{steps: [", encoding="utf-8")
    code, _, err = _preprocess(run_cli, good_volume, tmp_path / "out.nrrd", str(pipe))
    _assert_clean_error(code, err, "pipe.json", "not valid JSON")


def test_unknown_preset(run_cli, tmp_path, good_volume):
    code, _, err = _preprocess(run_cli, good_volume, tmp_path / "out.nrrd", "liver-ct")
    _assert_clean_error(code, err, "liver-ct", "lung-ct")


def test_output_equal_to_input_is_refused(run_cli, good_volume, tmp_path):
    before = good_volume.read_bytes()
    code, _, err = _preprocess(run_cli, good_volume, good_volume)
    _assert_clean_error(code, err, "good.nrrd", "INPUT")
    # also through a different spelling of the same path
    code, _, err = _preprocess(run_cli, good_volume, tmp_path / "." / "good.nrrd")
    _assert_clean_error(code, err, "INPUT")
    assert good_volume.read_bytes() == before


def test_bad_output_format_and_mask_name(run_cli, tmp_path, good_volume):
    code, _, err = _preprocess(run_cli, good_volume, tmp_path / "out.png")
    _assert_clean_error(code, err, "out.png", "unsupported output format")
    code, _, err = _preprocess(run_cli, good_volume, tmp_path / "out.nrrd", "lung-ct", "--mask",
                               str(tmp_path / "mask.nrrd"))
    _assert_clean_error(code, err, "mask.nrrd", ".seg.nrrd")
    pipe = tmp_path / "median.json"
    pipe.write_text('[{"name": "median"}]', encoding="utf-8")
    code, _, err = run_cli("preprocess", good_volume, tmp_path / "out.nrrd", "--pipeline", pipe,
                           "--mask", tmp_path / "m.seg.nrrd")
    _assert_clean_error(code, err, "m.seg.nrrd", "no mask step")
    assert not any(p.name.startswith("out") for p in tmp_path.iterdir())
