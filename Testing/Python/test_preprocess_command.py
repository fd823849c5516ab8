"""``meddeeprecog preprocess`` as a command: outputs written together, settings bounded before any work, the
reader's notes passed on, segment names checked."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import error_line, make_volume


@pytest.fixture
def volume(tmp_path) -> Path:
    path = tmp_path / "in.nrrd"
    sitk.WriteImage(make_volume(size=(24, 20, 10)), str(path))
    return path


# ------------------------------------------------------------------------------------- OUTPUT and --mask together

def test_a_failed_mask_write_leaves_no_output_and_a_rerun_works(run_cli_area, volume, tmp_path, monkeypatch):
    import slicerio

    out, mask = tmp_path / "ok.nrrd", tmp_path / "m.seg.nrrd"
    real = slicerio.write_segmentation

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(slicerio, "write_segmentation", full_disk)
    code, _, err = run_cli_area("preprocess", volume, out, "--pipeline", "lung-ct", "--mask", mask)
    line = error_line(code, err, "no space left")
    assert f"error: {mask}: " in line, line  # the user's path, not the hidden temporary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nrrd"]  # no OUTPUT, no temporaries

    monkeypatch.setattr(slicerio, "write_segmentation", real)
    code, _, err = run_cli_area("preprocess", volume, out, "--pipeline", "lung-ct", "--mask", mask)
    assert code == 0, err
    assert out.is_file() and mask.is_file()


def test_a_failed_mask_write_keeps_the_users_earlier_output_under_overwrite(run_cli_area, volume, tmp_path, monkeypatch):
    import slicerio

    out, mask = tmp_path / "ok.nrrd", tmp_path / "m.seg.nrrd"
    out.write_bytes(b"earlier result")
    monkeypatch.setattr(slicerio, "write_segmentation",
                        lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    code, _, err = run_cli_area("preprocess", volume, out, "--pipeline", "lung-ct", "--mask", mask, "--overwrite")
    error_line(code, err, "m.seg.nrrd")
    assert out.read_bytes() == b"earlier result"


def test_an_unwritable_mask_folder_is_refused_before_any_work(run_cli_area, volume, tmp_path, monkeypatch):
    """A folder where no file can be created although permissions say yes (root on /sys): the probe of
    check_output_dir finds it before the scan is read or OUTPUT written."""
    import tempfile

    from MedDeepRecogLib.io import atomic

    locked = tmp_path / "locked"
    locked.mkdir()
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == locked:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(atomic.tempfile, "mkstemp", mkstemp)
    out = tmp_path / "ok.nrrd"
    code, _, err = run_cli_area("preprocess", volume, out, "--pipeline", "lung-ct", "--mask", locked / "m.seg.nrrd")
    error_line(code, err, "--mask", "permission denied")
    assert not out.exists()
    assert list(locked.iterdir()) == [] and not list(tmp_path.glob(".*"))


@pytest.mark.skipif(not (os.path.isdir("/sys") and os.access("/sys", os.W_OK)),
                    reason="needs a /sys that permissions call writable (root)")
def test_mask_under_sys_is_refused_and_leaves_no_output(run_cli_area, volume, tmp_path):
    out = tmp_path / "ok.nrrd"
    code, _, err = run_cli_area("preprocess", volume, out, "--pipeline", "lung-ct", "--mask", "/sys/m.seg.nrrd")
    error_line(code, err, "/sys", "cannot be written")
    assert not out.exists()


# ------------------------------------------------------------------------------------- settings bounded by the grid

def _pipeline_file(tmp_path: Path, steps: list[dict], name: str = "p") -> Path:
    import json

    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"steps": steps}))
    return path


def _volume(tmp_path: Path, spacing: tuple[float, float, float], size=(24, 20, 10), name: str = "v.nrrd") -> Path:
    image = make_volume(size=size)
    image.SetSpacing(spacing)
    path = tmp_path / name
    sitk.WriteImage(image, str(path))
    return path


def test_an_unstable_diffusion_time_step_is_refused_naming_the_limit_for_this_scan(run_cli_area, tmp_path):
    source = _volume(tmp_path, (3.0, 3.0, 3.0))
    out = tmp_path / "o.nrrd"
    code, _, err = run_cli_area("preprocess", source, out, "--pipeline",
                           _pipeline_file(tmp_path, [{"name": "anisotropic_diffusion", "time_step": 10}]))
    error_line(code, err, "time_step", "10", "stable limit 0.1875", "3 mm / 16")
    assert not out.exists()
    # the limit itself is stable: accepted, and the result stays within the input's range
    code, _, err = run_cli_area("preprocess", source, out, "--pipeline",
                           _pipeline_file(tmp_path, [{"name": "anisotropic_diffusion", "time_step": 0.1875}]))
    assert code == 0, err
    before = sitk.GetArrayFromImage(sitk.ReadImage(str(source)))
    after = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert before.min() - 1 <= after.min() and after.max() <= before.max() + 1


def test_the_diffusion_limit_follows_a_resampling_step_before_it():
    from MedDeepRecogLib.errors import ConfigError
    from MedDeepRecogLib.preprocessing import Pipeline

    image = make_volume(size=(24, 20, 10))
    image.SetSpacing((3.0, 3.0, 3.0))
    diffuse = {"name": "anisotropic_diffusion", "time_step": 0.15}
    Pipeline.from_data([diffuse]).check(image)   # below 3/16
    with pytest.raises(ConfigError, match=r"step 2 \(anisotropic_diffusion\).*stable limit 0.0625"):
        Pipeline.from_data([{"name": "resample", "spacing": 1.0}, diffuse]).check(image)


# ------------------------------------------------------------------------------------------- the reader's notes

def test_the_readers_notes_are_warned_and_kept_in_an_nrrd_output(run_cli_area, tmp_path):
    rgb = np.zeros((20, 24, 3), np.uint8)
    rgb[5:15, 6:18] = (200, 120, 40)
    rgb[8:12, 9:14] = (30, 220, 90)
    picture = tmp_path / "colour.png"
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(picture))
    out = tmp_path / "o.nrrd"
    code, _, err = run_cli_area("preprocess", picture, out, "--pipeline", "brain-mri")
    assert code == 0, err
    warnings = [ln for ln in err.splitlines() if "warning" in ln]
    assert any("1 mm pixels assumed" in ln and "colour.png" in ln for ln in warnings), err
    assert any("converted to grey" in ln for ln in warnings), err
    written = sitk.ReadImage(str(out))
    notes = written.GetMetaData("MedDeepRecog|notes")
    assert "1 mm pixels assumed" in notes and "converted to grey" in notes


def test_spacing_ignored_is_said_for_a_volume(run_cli_area, volume, tmp_path):
    code, _, err = run_cli_area("preprocess", volume, tmp_path / "o.nrrd", "--pipeline", "brain-mri", "--spacing", "2", "2")
    assert code == 0, err
    assert "warning" in err and "--spacing ignored" in err


# ---------------------------------------------------------------------------------- per-voxel work bounded first

@pytest.mark.parametrize("step, needles", [
    ({"name": "median", "radius_mm": 1000}, ["'radius_mm' 1000", "667 x 667 x 667", "3 x 3 x 3 mm", "9,261"]),
    ({"name": "bilateral", "sigma_spatial_mm": 100}, ["'sigma_spatial_mm' 100", "135 x 135 x 135", "9,261"]),
    ({"name": "body_mask", "closing_mm": 500}, ["'closing_mm' 500", "68,921"]),
], ids=["median", "bilateral", "body_mask"])
def test_a_window_of_too_many_voxels_is_refused_before_any_work(run_cli_area, tmp_path, step, needles):
    import time

    source = _volume(tmp_path, (3.0, 3.0, 3.0))
    out = tmp_path / "o.nrrd"
    start = time.perf_counter()
    code, _, err = run_cli_area("preprocess", source, out, "--pipeline", _pipeline_file(tmp_path, [step]))
    error_line(code, err, "step 1", *needles)
    assert not out.exists()
    assert time.perf_counter() - start < 10   # refused from the settings, not after minutes of filtering


def test_nlm_work_per_voxel_is_bounded_when_the_pipeline_is_read():
    from MedDeepRecogLib.errors import ConfigError
    from MedDeepRecogLib.preprocessing import Pipeline

    with pytest.raises(ConfigError, match=r"'patch_size' 9 with 'search_radius' 10 .*6,751,269.*100,000"):
        Pipeline.from_data([{"name": "nlm", "patch_size": 9, "search_radius": 10}])
    Pipeline.from_data([{"name": "nlm", "patch_size": 2, "search_radius": 3}])   # the README's 2^3 x 7^3


@pytest.mark.parametrize("step, spacing, needles", [
    ({"name": "canny", "sigma_mm": 100}, 3.0, ["'sigma_mm' 100", "33.3 voxels", "3 x 3 x 3 mm", "173 voxels",
                                               "at most 63"]),
    ({"name": "clahe", "kernel_mm": 32, "backend": "sitk"}, 0.5, ["'kernel_mm' 32 (backend 'sitk')", "65 x 65 x 65",
                                                                  "0.5 x 0.5 x 0.5 mm", "9,261"]),
    ({"name": "n4", "iterations": [1] * 12}, 3.0, ["12 fitting levels", "limit of 8", "2051^3"]),
    ({"name": "n4", "iterations": [500, 500, 500]}, 3.0, ["[500, 500, 500] add up to 1,500 iterations", "1,000"]),
], ids=["canny", "clahe-sitk", "n4-levels", "n4-iterations"])
def test_canny_clahe_and_n4_settings_beyond_their_bounds_are_refused_before_any_work(run_cli_area, tmp_path, step,
                                                                                     spacing, needles):
    """Canny's Gaussian wider than ITK builds (sigma_mm 100 on a 3 mm CT found no edge at all), SimpleITK's CLAHE
    window at every voxel, N4's levels (12 failed to allocate after 221 s) and iterations: one line naming the step,
    the setting and the limit, from the settings and the grid, no output."""
    import time

    source = _volume(tmp_path, (spacing,) * 3)
    out = tmp_path / "o.nrrd"
    start = time.perf_counter()
    code, _, err = run_cli_area("preprocess", source, out, "--pipeline", _pipeline_file(tmp_path, [step]))
    error_line(code, err, "step 1", *needles)
    assert not out.exists()
    assert time.perf_counter() - start < 10


def test_clahe_regions_are_bounded_and_the_default_fits(run_cli_area, tmp_path, monkeypatch):
    """scikit-image's CLAHE keeps a histogram per region (1 mm regions on a 512 x 512 x 200 CT: 1.96 M of them, out
    of memory); the bound, lowered here so a small volume shows it, is judged on the scan's grid."""
    pytest.importorskip("skimage")
    from MedDeepRecogLib import limits

    monkeypatch.setattr(limits, "MAX_CLAHE_REGIONS", 100)
    source = _volume(tmp_path, (3.0, 3.0, 3.0))   # 24 x 20 x 10 voxels
    out = tmp_path / "o.nrrd"
    code, _, err = run_cli_area("preprocess", source, out, "--pipeline",
                                _pipeline_file(tmp_path, [{"name": "clahe", "kernel_mm": 9, "backend": "skimage"}]))
    error_line(code, err, "step 1 (clahe)", "'kernel_mm' 9", "3 x 3 x 3 voxels", "224 of them", "limit of 100")
    assert not out.exists()
    code, _, err = run_cli_area("preprocess", source, out, "--pipeline",
                                _pipeline_file(tmp_path, [{"name": "clahe", "backend": "skimage"}]))
    assert code == 0, err


def test_a_tiny_spacing_mask_closing_is_refused_not_an_allocation_failure(run_cli_area, tmp_path):
    source = _volume(tmp_path, (0.001, 0.001, 0.001))
    out = tmp_path / "o.nrrd"
    code, _, err = run_cli_area("preprocess", source, out, "--pipeline", "lung-ct")
    error_line(code, err, "body_mask", "'closing_mm' 3", "6001 x 6001 x 6001", "0.001 x 0.001 x 0.001 mm")
    assert "allocate" not in err and not out.exists()
    code, _, err = run_cli_area("preprocess", source, out, "--pipeline",
                           _pipeline_file(tmp_path, [{"name": "lung_mask"}]))
    error_line(code, err, "lung_mask", "fixed 2 mm closing", "resample")


def test_every_preset_and_the_largest_median_radius_fit_the_bounds():
    from MedDeepRecogLib.preprocessing import Pipeline, list_presets, load_pipeline

    for spacing in [(0.5, 0.5, 0.5), (0.7, 0.7, 3.0), (3.0, 3.0, 3.0)]:
        image = make_volume(size=(24, 20, 10), spacing=spacing)
        for name in list_presets():
            load_pipeline(name).check(image)
        Pipeline.from_data([{"name": "median", "radius": 10}, {"name": "bilateral", "sigma_spatial_mm": 1.0},
                            {"name": "head_mask", "closing_mm": 5.0}]).check(image)


# ------------------------------------------------------------------------------------------------ segment names

@pytest.mark.parametrize("steps, needles", [
    ([{"name": "otsu", "segment": ""}], ["step 1", "'segment'", "empty"]),
    ([{"name": "otsu", "segment": "  "}], ["step 1", "'segment'", "empty"]),
    ([{"name": "body_mask"}, {"name": "threshold", "lower": 0, "segment": "body"}],
     ["step 2", "'segment'", "'body'", "step 1"]),
], ids=["empty", "blank", "duplicate"])
def test_mask_segment_names_must_be_given_and_distinct(run_cli_area, volume, tmp_path, steps, needles):
    out, mask = tmp_path / "o.nrrd", tmp_path / "m.seg.nrrd"
    code, _, err = run_cli_area("preprocess", volume, out, "--pipeline", _pipeline_file(tmp_path, steps), "--mask", mask)
    error_line(code, err, *needles)
    assert not out.exists() and not mask.exists()
