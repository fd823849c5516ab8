"""Preprocessing: step registry and validation, pipelines as data, geometry kept, the CLI, masks on real scans."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from conftest import make_volume
from MedDeepRecogLib.errors import ConfigError
from MedDeepRecogLib.io import read_image, read_segmentation, same_geometry, write_image
from MedDeepRecogLib.preprocessing import Pipeline, PipelineResult, describe_steps, list_presets, load_pipeline
from MedDeepRecogLib.preprocessing.intensity import WINDOW_PRESETS

REQUIRED_STEPS = {"resample", "crop_pad", "window", "normalize", "bilateral", "nlm", "anisotropic_diffusion",
                  "median", "clahe", "gamma", "contrast", "n4", "otsu", "threshold", "canny", "gradient_magnitude",
                  "lung_mask", "body_mask", "head_mask", "scale_intensity_range"}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * float(np.logical_and(a, b).sum()) / float(a.sum() + b.sum())


@pytest.fixture
def run_cli(run_cli_area):
    """``meddeeprecog ARGS`` in-process with only this area's commands registered; returns (code, out, err)."""
    return run_cli_area


# ------------------------------------------------------------------------------------------ registry / data

def test_registry_lists_every_step_with_typed_parameters():
    steps = {s["name"]: s for s in describe_steps()}
    assert REQUIRED_STEPS <= set(steps)
    window = {p["name"]: p for p in steps["window"]["params"]}
    assert set(WINDOW_PRESETS) == {"lung", "mediastinum", "brain", "abdomen", "bone"}
    for preset in WINDOW_PRESETS:
        assert preset in window["preset"]["type"]
    assert steps["lung_mask"]["kind"] == "mask" and steps["resample"]["kind"] == "grid"
    assert all(p["help"] for s in steps.values() for p in s["params"])


def test_presets_exist_and_round_trip_as_data():
    assert {"lung-ct", "breast-mri", "brain-mri"} <= set(list_presets())
    for name in list_presets():
        pipeline = load_pipeline(name)
        data = pipeline.to_data()
        again = Pipeline.from_data(json.loads(json.dumps(data)))
        assert again.to_data() == data
        assert [s.name for s in again.steps] == [s["name"] for s in data["steps"]]


def test_from_data_accepts_list_dict_and_aliases_and_fills_defaults():
    p = Pipeline.from_data([{"name": "normalise", "method": "minmax"}, "median"])
    data = p.to_data()
    assert [s["name"] for s in data["steps"]] == ["normalize", "median"]
    assert data["steps"][0]["method"] == "minmax" and data["steps"][0]["upper"] == 99.0
    assert data["steps"][1]["radius"] == 1
    p = Pipeline.from_data({"steps": [{"name": "resample", "spacing": 2}]})
    assert p.steps[0].params.spacing == (2.0, 2.0, 2.0)


@pytest.mark.parametrize("data, message", [
    ({"steps": [{"name": "blur_magic"}]}, "unknown step 'blur_magic'"),
    ({"steps": [{"name": "window"}]}, "'preset' or both 'center' and 'width'"),
    ({"steps": [{"name": "window", "preset": "liver"}]}, "'liver' is not one of"),
    ({"steps": [{"name": "median", "radius": -1}]}, "below the minimum"),
    ({"steps": [{"name": "median", "radius": 1.5}]}, "whole number"),
    ({"steps": [{"name": "bilateral", "sigma_spatial_mm": "wide"}]}, "expected a number"),
    ({"steps": [{"name": "nlm", "patch": 2}]}, "unknown parameter(s) 'patch'"),
    ({"steps": [{"name": "resample", "spacing": [1, 2, 3, 4]}]}, "expected 2 or 3 values"),
    ({"steps": [{"name": "resample"}]}, "exactly one of 'spacing' or 'size'"),
    ({"steps": [{"name": "normalize", "lower": 90, "upper": 10}]}, "'lower' must be below 'upper'"),
    ({"steps": [{"name": "otsu", "apply": "yes"}]}, "true or false"),
    ({"stepz": []}, "unknown pipeline key"),
    ({"steps": "median"}, "'steps' must be a list"),
    ({"steps": [42]}, "a step must be a name or a mapping"),
])
def test_bad_pipeline_data_is_a_config_error_naming_step_and_parameter(data, message):
    with pytest.raises(ConfigError) as info:
        Pipeline.from_data(data)
    assert message in str(info.value)
    assert "step 1" in str(info.value) or "pipeline key" in str(info.value) or "'steps'" in str(info.value)


def test_from_file_yaml_and_json(tmp_path):
    (tmp_path / "p.yaml").write_text("name: mine\nsteps:\n  - name: window\n    preset: bone\n  - median\n", encoding="utf-8")
    p = Pipeline.from_file(tmp_path / "p.yaml")
    assert p.name == "mine" and [s.name for s in p.steps] == ["window", "median"]
    (tmp_path / "p.json").write_text(json.dumps(p.to_data()), encoding="utf-8")
    assert load_pipeline(str(tmp_path / "p.json")).to_data() == p.to_data()
    (tmp_path / "bad.json").write_text(json.dumps({"steps": [{"name": "median", "radius": "x"}]}), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.json: step 1: step 'median', parameter 'radius'"):
        Pipeline.from_file(tmp_path / "bad.json")


# ------------------------------------------------------------------------------------------ steps on images

STEP_CASES = [
    {"name": "window", "preset": "abdomen"},
    {"name": "window", "center": 40, "width": 400, "output": "hu"},
    {"name": "normalize", "method": "zscore"},
    {"name": "normalize", "method": "percentile"},
    {"name": "normalize", "method": "minmax"},
    {"name": "bilateral", "sigma_spatial_mm": 1.5, "sigma_range": 60},
    {"name": "bilateral", "backend": "sitk", "sigma_spatial_mm": 1.0, "sigma_range": 60},
    {"name": "nlm", "search_radius": 2},
    {"name": "anisotropic_diffusion", "iterations": 2},
    {"name": "median", "radius_mm": 1.0},
    {"name": "clahe", "kernel_mm": 16},
    {"name": "gamma", "gamma": 0.7},
    {"name": "contrast", "factor": 2.0},
    {"name": "scale_intensity_range", "a_min": -1000, "a_max": 400},
    {"name": "n4", "shrink": 2, "iterations": [5, 5]},
    {"name": "canny", "sigma_mm": 1.0},
    {"name": "gradient_magnitude", "sigma_mm": 1.0},
]


@pytest.mark.parametrize("step", STEP_CASES, ids=lambda s: "-".join(str(v) for v in s.values())[:40])
def test_image_steps_keep_geometry_and_change_voxels(step, oblique_volume):
    result = Pipeline.from_data([step]).run(oblique_volume)
    assert isinstance(result, PipelineResult) and result.masks == {}
    assert same_geometry(result.image, oblique_volume, tolerance=1e-6)
    out = sitk.GetArrayFromImage(result.image)
    assert np.isfinite(out).all()
    assert not np.array_equal(out, sitk.GetArrayFromImage(oblique_volume))
    if step["name"] not in ("median",):
        assert result.image.GetPixelID() == sitk.sitkFloat32


def test_window_presets_map_hu_to_unit_range():
    arr = np.linspace(-1200, 1600, 8 * 8 * 8, dtype=np.float32).reshape(8, 8, 8)
    image = sitk.GetImageFromArray(arr)
    for preset, (center, width) in WINDOW_PRESETS.items():
        out = sitk.GetArrayFromImage(Pipeline.from_data([{"name": "window", "preset": preset}]).run(image).image)
        expected = np.clip((arr - (center - width / 2)) / width, 0, 1)
        np.testing.assert_allclose(out, expected, atol=1e-5)


def test_bundled_model_package_pipelines_are_valid_and_run():
    """Model packages declare ``input.pipeline`` as data; every bundled one must load and run here."""
    from MedDeepRecogLib.resources import BUNDLED_MODELS_DIR

    arr = np.linspace(-50, 300, 6 * 7 * 8, dtype=np.float32).reshape(6, 7, 8)
    image = sitk.GetImageFromArray(arr)
    for model_json in sorted(BUNDLED_MODELS_DIR.glob("*/*/model.json")):
        pipeline = json.loads(model_json.read_text(encoding="utf-8"))["input"].get("pipeline")
        if pipeline:
            out = Pipeline.from_data(pipeline).run(image).image
            resample = [st for st in pipeline["steps"] if st["name"] == "resample"]
            if resample:  # e.g. adrenal-mass-3d 1.3.0: any mask to the 32^3 grid it trained on, same extent
                assert list(out.GetSize()) == resample[-1]["size"], model_json
                extent = np.array(out.GetSize()) * np.array(out.GetSpacing())
                np.testing.assert_allclose(extent, np.array(image.GetSize()) * np.array(image.GetSpacing()))
            else:
                assert same_geometry(out, image), model_json
    scaled = sitk.GetArrayFromImage(Pipeline.from_data([{"name": "scale_intensity_range", "a_min": 0, "a_max": 255,
                                                          "b_min": 0.0, "b_max": 1.0, "clip": True}]).run(image).image)
    np.testing.assert_allclose(scaled, np.clip(arr / 255.0, 0, 1), atol=1e-6)


def test_normalisations_statistics():
    rng = np.random.default_rng(0)
    arr = rng.normal(300, 50, (10, 12, 14)).astype(np.float32)
    image = sitk.GetImageFromArray(arr)
    z = sitk.GetArrayFromImage(Pipeline.from_data([{"name": "normalize"}]).run(image).image)
    assert abs(z.mean()) < 1e-4 and abs(z.std() - 1) < 1e-4
    mm = sitk.GetArrayFromImage(Pipeline.from_data([{"name": "normalize", "method": "minmax"}]).run(image).image)
    assert mm.min() == 0 and abs(mm.max() - 1) < 1e-6
    pc = sitk.GetArrayFromImage(Pipeline.from_data([{"name": "normalize", "method": "percentile", "lower": 5,
                                                      "upper": 95}]).run(image).image)
    assert abs(float(np.mean(pc == 0)) - 0.05) < 0.01 and abs(float(np.mean(pc == 1)) - 0.05) < 0.01


def test_normalize_inside_a_mask_and_missing_mask_error():
    arr = np.zeros((8, 10, 12), np.float32)
    arr[2:6, 3:8, 3:9] = np.random.default_rng(1).normal(500, 20, (4, 5, 6))
    image = sitk.GetImageFromArray(arr)
    result = Pipeline.from_data([{"name": "threshold", "lower": 100, "segment": "inside"},
                                 {"name": "normalize", "mask": "inside"}]).run(image)
    out = sitk.GetArrayFromImage(result.image)
    inside = arr > 100
    assert abs(out[inside].mean()) < 1e-4 and abs(out[inside].std() - 1) < 1e-3
    with pytest.raises(ConfigError, match="no mask named 'brain'"):
        Pipeline.from_data([{"name": "normalize", "mask": "brain"}]).run(image)


def test_resample_and_crop_pad_change_grid_masks_follow_and_restore_to_input_grid(oblique_volume):
    pipeline = Pipeline.from_data([{"name": "otsu", "segment": "otsu"},
                                   {"name": "resample", "spacing": [2.0, 2.0, 2.0]},
                                   {"name": "crop_pad", "size": [20, 20, 20]}])
    assert pipeline.changes_grid and pipeline.makes_masks
    result = pipeline.run(oblique_volume)
    assert result.image.GetSize() == (20, 20, 20)
    assert result.image.GetSpacing() == pytest.approx((2.0, 2.0, 2.0))
    assert result.image.GetDirection() == pytest.approx(oblique_volume.GetDirection())
    assert same_geometry(result.masks["otsu"], result.image)
    # physical extent of the resampled grid (before crop/pad) equals the input's
    resampled = Pipeline.from_data([{"name": "resample", "size": [16, 16, 12]}]).run(oblique_volume).image
    extent_in = np.array(oblique_volume.GetSize()) * np.array(oblique_volume.GetSpacing())
    extent_out = np.array(resampled.GetSize()) * np.array(resampled.GetSpacing())
    np.testing.assert_allclose(extent_out, extent_in, rtol=1e-6)
    back = result.on_grid(oblique_volume)
    assert same_geometry(back.image, oblique_volume) and same_geometry(back.masks["otsu"], oblique_volume)
    assert set(np.unique(sitk.GetArrayViewFromImage(back.masks["otsu"]))) <= {0, 1}


def test_mask_apply_sets_outside_to_minimum(oblique_volume):
    result = Pipeline.from_data([{"name": "threshold", "lower": -200, "apply": True}]).run(oblique_volume)
    mask = sitk.GetArrayFromImage(result.masks["threshold"]) > 0
    out = sitk.GetArrayFromImage(result.image)
    assert 0 < mask.mean() < 1
    assert np.all(out[~mask] == out.min())
    np.testing.assert_array_equal(out[mask], sitk.GetArrayFromImage(oblique_volume)[mask])


def test_progress_callback_gets_every_step(oblique_volume):
    events = []
    Pipeline.from_data(["median", {"name": "window", "preset": "bone"}]).run(
        oblique_volume, progress=lambda stage, fraction, **kw: events.append((stage, fraction)))
    assert [e[0] for e in events] == ["step median", "step window", "pipeline done"]
    assert [e[1] for e in events] == [0.0, 0.5, 1.0]


# ------------------------------------------------------------------------------------------ command line

def test_cli_list_shows_steps_params_and_presets(run_cli):
    code, out, _ = run_cli("preprocess", "--list")
    assert code == 0
    for name in REQUIRED_STEPS | {"lung-ct", "breast-mri", "brain-mri"}:
        assert name in out
    code, out, _ = run_cli("preprocess", "--list", "--json")
    data = json.loads(out)
    assert {s["name"] for s in data["steps"]} >= REQUIRED_STEPS
    assert set(data["presets"]) >= {"lung-ct", "breast-mri", "brain-mri"}


def test_cli_resampling_pipeline_output_overlays_input(run_cli, tmp_path):
    source = write_image(make_volume(size=(30, 26, 10)), tmp_path / "in.nii.gz")
    pipe = tmp_path / "pipe.json"
    pipe.write_text(json.dumps({"steps": [{"name": "resample", "spacing": [1.5, 1.5, 1.5]},
                                          {"name": "body_mask", "modality": "CT"},
                                          {"name": "window", "preset": "abdomen"}]}))
    out, mask = tmp_path / "out.nrrd", tmp_path / "out.seg.nrrd"
    code, stdout, err = run_cli("preprocess", source, out, "--pipeline", pipe, "--mask", mask, "--progress", "json")
    assert code == 0, err
    events = [json.loads(line) for line in stdout.splitlines()]
    assert events[-1]["stage"] == "done" and events[-1]["fraction"] == 1.0
    assert events[-1]["result"] == {"output": str(out), "mask": str(mask)}
    assert all(0 <= e["fraction"] <= 1 for e in events)
    assert [e["fraction"] for e in events] == sorted(e["fraction"] for e in events)
    image_in = read_image(source)
    image_out = read_image(out)
    assert same_geometry(image_out, image_in, tolerance=1e-4)
    labels, grid, specs = read_segmentation(mask)
    assert same_geometry(grid, image_in, tolerance=1e-4)
    assert [s.name for s in specs] == ["body"] and specs[0].color is not None
    assert 0.2 < (labels > 0).mean() < 0.9

    kept = tmp_path / "kept.nrrd"
    code, _, err = run_cli("preprocess", source, kept, "--pipeline", pipe, "--keep-resampled-grid")
    assert code == 0, err
    assert read_image(kept).GetSpacing() == pytest.approx((1.5, 1.5, 1.5))


@pytest.mark.parametrize("step, setting, value", [("nlm", "search_radius", 3), ("nlm", "h", 30.0),
                                                  ("nlm", "sigma", 10.0), ("nlm", "device", "cpu"),
                                                  ("bilateral", "truncate", 2.5), ("bilateral", "device", "cuda")])
def test_cli_refuses_denoise_settings_the_sitk_backend_cannot_honour(run_cli_all, tmp_path, step, setting, value):
    """SimpleITK's PatchBasedDenoising samples its candidates at random and estimates its own kernel bandwidth, its
    Bilateral truncates at its own 2.5 sigmas, and both run on the CPU: a search radius, h, noise sigma, truncate or
    device given with backend 'sitk' would be silently ignored, so it is refused in one line naming the setting and
    the backend that honours it (exit 2), before anything is written."""
    source = write_image(make_volume(size=(16, 16, 6), spacing=(1.0, 1.0, 1.0)), tmp_path / "in.nrrd")
    pipe = tmp_path / "pipe.json"
    pipe.write_text(json.dumps({"steps": [{"name": step, "backend": "sitk", setting: value}]}))
    out = tmp_path / "out.nrrd"
    code, _, err = run_cli_all("preprocess", source, out, "--pipeline", pipe)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for needle in (f"parameter {setting!r}", "backend 'sitk'", "use backend 'torch', which honours it"):
        assert needle in lines[0], (needle, lines[0])
    assert not out.exists()


def test_sitk_nlm_runs_with_the_settings_it_honours_and_refuses_others_built_in_code(tmp_path):
    from MedDeepRecogLib.preprocessing.denoise import NlmParams, nlm

    # anisotropic and oblique: SimpleITK's filter, given the physical grid, stops with 'Patch weights must be in
    # the range [0,1]' on spacings that are not whole multiples of each other; the step filters in voxels and
    # returns the input's own geometry
    image = make_volume(size=(12, 12, 4), spacing=(0.8, 1.1, 2.5))
    out = Pipeline.from_data([{"name": "nlm", "backend": "sitk", "patch_size": 2, "search_radius": 2}]).run(image)
    assert not np.array_equal(sitk.GetArrayFromImage(out.image), sitk.GetArrayFromImage(image))
    for get in ("GetSpacing", "GetOrigin", "GetDirection", "GetSize"):
        assert getattr(out.image, get)() == pytest.approx(getattr(image, get)()), get
    assert NlmParams(backend="torch", search_radius=3, h=30.0, sigma=10.0).validate() is None
    with pytest.raises(ConfigError, match="step 'nlm': parameter 'h'"):
        nlm(image, NlmParams(backend="sitk", h=30.0))


# ------------------------------------------------------------------------------------------ real scans

@pytest.fixture(scope="module")
def example_ct(shared_data):
    return read_image(shared_data / "totalsegmentator_examples" / "example_ct.nii.gz")


def test_lung_mask_matches_totalsegmentator_lungs(shared_data, example_ct):
    """example_seg.nii.gz labels the example_ct_sm grid = example_ct slices 82..111 (same header origin)."""
    labels_info = json.loads((shared_data / "totalsegmentator_examples" / "labels_present_in_examples.json")
                             .read_text(encoding="utf-8"))["example_seg.nii.gz"]["labels"]
    lung_ids = [int(i) for i, v in labels_info.items() if v["name"].startswith("lung_")]
    assert lung_ids
    result = Pipeline.from_data([{"name": "lung_mask"}]).run(example_ct)
    mask = sitk.GetArrayFromImage(result.masks["lungs"])
    seg = sitk.GetArrayFromImage(read_image(shared_data / "totalsegmentator_examples" / "example_seg.nii.gz"))
    reference = np.isin(seg, lung_ids)
    ours = mask[82:112]
    assert dice(ours, reference) > 0.85
    # nothing outside the lungs' slab: bowel gas lower down is not called lung
    assert mask[:82].sum() < 0.05 * mask.sum()


def test_lung_mask_on_thorax_crops_where_lungs_touch_the_border(shared_data):
    for name in ("aorta_ct_cropped.nii.gz", "pulmonary_ct_cropped.nii.gz"):
        image = read_image(shared_data / "totalsegmentator_examples" / "extra_ct" / name)
        mask = sitk.GetArrayFromImage(Pipeline.from_data([{"name": "lung_mask"}]).run(image).masks["lungs"]) > 0
        hu = sitk.GetArrayFromImage(image)
        assert 0.15 < mask.mean() < 0.6, name
        assert -900 < float(np.median(hu[mask])) < -600, name  # lung parenchyma, not pure air


def test_head_mask_on_brain_mr(shared_data):
    image = read_image(shared_data / "pyradiomics_testcases" / "brain1_image.nrrd")
    tumour = sitk.GetArrayFromImage(read_image(shared_data / "pyradiomics_testcases" / "brain1_label.nrrd")) > 0
    head = sitk.GetArrayFromImage(Pipeline.from_data([{"name": "head_mask"}]).run(image).masks["head"]) > 0
    assert tumour.sum() > 0
    assert (head & tumour).sum() / tumour.sum() > 0.99  # the tumour lies inside the head
    arr = sitk.GetArrayFromImage(image)
    assert 0.3 < head.mean() < 0.85
    # background outside the head is dark, the head bright: the mask separates them
    assert np.median(arr[head]) > 5 * max(np.median(arr[~head]), 1)
    # one solid object: every axial slice's mask has no holes (e.g. the ventricles are filled)
    filled = sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.GetImageFromArray(head.astype(np.uint8))))
    assert (filled > 0).sum() == head.sum()


def test_cli_lung_ct_preset_writes_named_colored_segments(run_cli, shared_data, tmp_path):
    source = shared_data / "totalsegmentator_examples" / "example_ct.nii.gz"
    out, mask = tmp_path / "ct.nrrd", tmp_path / "ct.seg.nrrd"
    code, _, err = run_cli("preprocess", source, out, "--pipeline", "lung-ct", "--mask", mask)
    assert code == 0, err
    image = read_image(out)
    assert same_geometry(image, read_image(source))
    arr = sitk.GetArrayFromImage(image)
    assert arr.min() >= 0 and arr.max() <= 1  # lung window mapped to 0..1
    seg = slicerio.read_segmentation(str(mask))
    names = [s["name"] for s in seg["segments"]]
    assert names == ["body", "lungs"]
    assert all(len(s["color"]) == 3 for s in seg["segments"])
    voxels = np.asarray(seg["voxels"])
    body_seg, lung_seg = seg["segments"]
    body = (voxels[body_seg["layer"]] if voxels.ndim == 4 else voxels) == body_seg["labelValue"]
    lungs = (voxels[lung_seg["layer"]] if voxels.ndim == 4 else voxels) == lung_seg["labelValue"]
    assert lungs.sum() > 1000
    assert (body & lungs).sum() / lungs.sum() > 0.95  # lungs inside the body, overlapping segments kept


def test_cli_brain_mri_preset_on_real_brain(run_cli, shared_data, tmp_path):
    source = shared_data / "pyradiomics_testcases" / "brain1_image.nrrd"
    out, mask = tmp_path / "brain.nii.gz", tmp_path / "brain.seg.nrrd"
    code, _, err = run_cli("preprocess", source, out, "--pipeline", "brain-mri", "--mask", mask)
    assert code == 0, err
    image = read_image(out)
    assert same_geometry(image, read_image(source))
    labels, _, specs = read_segmentation(mask)
    arr = sitk.GetArrayFromImage(image)
    head = labels > 0
    assert [s.name for s in specs] == ["head"]
    assert abs(float(arr[head].mean())) < 0.05 and abs(float(arr[head].std()) - 1) < 0.05


def test_cli_breast_mri_preset_body_covers_breast_and_lesion(run_cli, shared_data, tmp_path):
    """breast1 is a crop inside the breast with almost no air: the "body" mask must cover the breast tissue (every
    voxel clearly above the air level) and every lesion voxel, and the preset must keep them (not zero them)."""
    source = shared_data / "pyradiomics_testcases" / "breast1_image.nrrd"
    out, mask = tmp_path / "breast.nrrd", tmp_path / "breast.seg.nrrd"
    code, _, err = run_cli("preprocess", source, out, "--pipeline", "breast-mri", "--mask", mask)
    assert code == 0, err
    labels, _, specs = read_segmentation(mask)
    assert [s.name for s in specs] == ["body"]
    body = labels > 0
    scan = sitk.GetArrayFromImage(read_image(source)).astype(np.float32)
    lesion = sitk.GetArrayFromImage(read_image(shared_data / "pyradiomics_testcases" / "breast1_label.nrrd")) > 0
    assert lesion.sum() > 100
    assert (body & lesion).sum() == lesion.sum()  # every lesion voxel
    tissue = scan > 0.2 * np.percentile(scan, 99)  # well above the air level: breast tissue, fat and lesion
    assert (body & tissue).sum() / tissue.sum() > 0.97
    assert body.mean() > 0.9  # was 4.4 % of the crop
    arr = sitk.GetArrayFromImage(read_image(out))
    assert (arr[lesion] > 0).all()  # the lesion keeps its intensities after normalisation inside the mask
    assert (arr == arr.min()).mean() < 0.1  # was 71 % of the voxels zeroed


def test_n4_fits_thick_slices_unshrunk_so_a_flipped_copy_gets_the_same_correction():
    """N4 is fitted on a shrunk copy. Shrinking the 6.5 mm slice axis too (4 slices into one) made the fit depend on
    how the voxels are stored: sitk.Shrink drops the trailing slices that do not fill a block, so the same scan
    stored inferior-to-superior or the other way got different bias fields (a difference of 226 in the head, mean
    33, at mean intensity 903). Only the in-plane axes are shrunk now; the two copies agree."""
    from MedDeepRecogLib.resources import sample_path

    scan = sitk.ReadImage(str(sample_path("brain1_mr.nrrd")))[64:192, 64:192, :]  # 128 x 128 x 25, 6.5 mm slices
    flipped = sitk.Flip(scan, [False, False, True])  # the same voxels in space, stored the other way
    steps = {"steps": [{"name": "head_mask"}, {"name": "n4", "mask": "head", "iterations": [20, 10]}]}
    first = Pipeline.from_data(steps).run(scan)
    second = Pipeline.from_data(steps).run(flipped)
    a = sitk.GetArrayFromImage(first.image)
    b = sitk.GetArrayFromImage(sitk.Resample(second.image, first.image, sitk.Transform(), sitk.sitkNearestNeighbor))
    inside = sitk.GetArrayFromImage(first.masks["head"]) > 0
    assert inside.sum() > 1000
    assert np.abs(a - b)[inside].mean() < 1e-5 * a[inside].mean()  # before: 5e-5 here, 3.6e-2 on the whole scan


def test_steps_that_read_hu_refuse_a_picture_and_warn_on_an_image_without_hu(run_cli, tmp_path):
    """The lung-ct preset's body_mask (modality CT), lung_mask and window take intensities as HU. A PNG holds grey
    levels, never HU: refused in one line before any output (the result was a nearly flat image). A volume without
    air below -500 and without DICOM modality CT may still be a CT crop: it is processed, with a warning."""
    from PIL import Image

    assert load_pipeline("lung-ct").hu_steps == ["body_mask", "lung_mask", "window"]
    assert load_pipeline("brain-mri").hu_steps == []
    assert load_pipeline([{"name": "body_mask", "modality": "MR"}]).hu_steps == []
    picture = tmp_path / "chest.png"
    Image.fromarray(np.tile(np.arange(0, 256, 2, dtype=np.uint8), (128, 1))).save(picture)
    code, _, err = run_cli("preprocess", picture, tmp_path / "out.nrrd", "--pipeline", "lung-ct")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "chest.png" in err, err
    assert "body_mask, lung_mask, window read CT intensities in HU" in err and "picture" in err
    assert not (tmp_path / "out.nrrd").exists()
    soft = tmp_path / "soft.nrrd"
    sitk.WriteImage(sitk.Cast(make_volume(size=(16, 14, 8)), sitk.sitkFloat32) + 1100.0, str(soft))  # no air
    assert float(sitk.GetArrayViewFromImage(read_image(soft)).min()) > -500
    code, _, err = run_cli("preprocess", soft, tmp_path / "soft_out.nrrd", "--pipeline", "lung-ct")
    assert code == 0 and (tmp_path / "soft_out.nrrd").is_file()
    assert "warning" in err and "no air below -500" in err and "soft.nrrd" in err
    code, _, err = run_cli("preprocess", picture, tmp_path / "mr.nrrd", "--pipeline", "brain-mri")
    assert code == 0 and "HU" not in err, err
