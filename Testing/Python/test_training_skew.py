"""Training prepares a researcher's own images as ``classify`` gives them to the network (no training/serving skew).

Each test reads a tiny synthetic folder with :func:`..training.data.load_train_val` and compares the prepared
training array with what classify's own functions (:mod:`..inference.model_input`, ``run_input_pipeline``) make of
the same file: label maps cut about their structure, ``input/pipeline`` steps, large pictures block-averaged. The
assertions are on arrays, never on trained accuracy, so they are deterministic and take seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MedDeepRecogLib.errors import ConfigError
from MedDeepRecogLib.training.config import config_from_dict


def _config(path: Path, data: dict, model: dict | None = None, **sections) -> dict:
    """A tiny training config over ``path`` (1 epoch; the network is never built by these tests)."""
    cfg = {"id": "skew", "seed": 0,
           "data": {"path": str(path), "val_fraction": 0.25, **data},
           "model": model or {"name": "simple_cnn3d", "kwargs": {"channels": [2, 4], "hidden": 4}},
           "augmentation": {"flip": {"prob": 0.0}},
           "optimizer": {"name": "adam", "lr": 0.003},
           "schedule": {"name": "cosine"},
           "training": {"epochs": 1, "batch_size": 4}}
    cfg.update(sections)
    return cfg


def _write_folder(folder: Path, images: list[sitk.Image], suffix: str) -> Path:
    """``images`` written to ``folder`` with a labels.csv alternating classes ``a`` / ``b``."""
    folder.mkdir()
    rows = ["file,label"]
    for i, img in enumerate(images):
        sitk.WriteImage(img, str(folder / f"c{i:02d}{suffix}"))
        rows.append(f"c{i:02d}{suffix},{'ab'[i % 2]}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def _first_train_case(data, folder: Path, suffix: str) -> tuple[np.ndarray, Path]:
    """The prepared array of the first training case of class ``a`` and its file (class a: even CSV rows)."""
    return data.train.images[list(data.train.labels).index(0)], folder / f"c00{suffix}"


# ------------------------------------------------------------------------------------- 1. label-map folders
def _label_maps(n: int = 8) -> list[sitk.Image]:
    """``n`` label maps (value 1, as Slicer exports a segment) of one ellipsoid each, off-centre on a 48^3 grid of
    1 mm: classify cuts each to the model's field about the structure before resampling."""
    zz, yy, xx = np.mgrid[:48, :48, :48]
    out = []
    for i in range(n):
        c = np.array([12 + i, 30 - i, 14 + 2 * i])
        r = np.array([4 + i % 3, 5, 3 + (i % 2)])
        arr = (((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 <= 1).astype(np.uint8)
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((1.0, 1.0, 1.0))
        out.append(img)
    return out


def _classify_volume(image: sitk.Image, spec: dict) -> np.ndarray:
    """``(D, H, W)``: what classify gives a volume network for ``image`` (inference/classify.py's own steps)."""
    from MedDeepRecogLib.inference.model_input import image_for_model, volume_from_image
    from MedDeepRecogLib.preprocessing.pipeline import run_input_pipeline

    model_image, _, _ = image_for_model(image, spec)
    return volume_from_image(run_input_pipeline(model_image, spec["pipeline"]), spec).x[0, 0]


def test_a_folder_of_label_maps_trains_on_the_structure_classify_cuts(tmp_path):
    """A ``binary_mask`` config on a folder of whole-grid label maps: training sees each mask cut to the model's
    field about its structure (value 255), as classify does, not the whole grid shrunk."""
    from MedDeepRecogLib.training.data import load_train_val
    from MedDeepRecogLib.training.train import default_pipeline

    folder = _write_folder(tmp_path / "masks", _label_maps(), ".nii.gz")
    cfg = config_from_dict(_config(folder, {"kind": "volume3d", "intensity_range": [0, 255], "size": [8, 8, 8]},
                                   input={"spacing_mm": [3.0, 3.0, 3.0], "content": "binary_mask"}))
    data = load_train_val(cfg, folder)
    trained, path = _first_train_case(data, folder, ".nii.gz")
    from MedDeepRecogLib.io import read_image

    spec = {"kind": "volume3d", "size": [8, 8, 8], "spacing_mm": [3.0, 3.0, 3.0], "channels": 1,
            "content": "binary_mask", "pipeline": default_pipeline(cfg)}
    seen = _classify_volume(read_image(path), spec)
    np.testing.assert_allclose(trained[0], seen, atol=1e-5)
    assert trained.max() > 0.5   # the structure fills the cut, at the value the network learnt (255 -> 1)


def test_a_label_map_larger_than_the_field_is_refused_naming_it(tmp_path):
    """A structure mostly outside the model's field is one classify declines to classify: training refuses it
    (naming the file and the field) rather than learning from a cut that no classify input resembles."""
    from MedDeepRecogLib.training.data import load_train_val

    maps = _label_maps()
    big = np.zeros((48, 48, 48), np.uint8)
    big[4:44, 4:44, 4:44] = 1
    maps[3] = sitk.GetImageFromArray(big)
    folder = _write_folder(tmp_path / "masks", maps, ".nii.gz")
    cfg = config_from_dict(_config(folder, {"kind": "volume3d", "intensity_range": [0, 255], "size": [8, 8, 8]},
                                   input={"spacing_mm": [3.0, 3.0, 3.0], "content": "binary_mask"}))
    with pytest.raises(ConfigError, match="c03.nii.gz.*field of view|field of view.*c03.nii.gz") as exc:
        load_train_val(cfg, folder)
    assert "\n" not in str(exc.value)


# ------------------------------------------------------------------------------------- 2. input/pipeline steps
_STEPS = {"steps": [{"name": "normalize", "method": "minmax"}, {"name": "median", "radius": 1}]}


def _grey_volumes(n: int = 8) -> list[sitk.Image]:
    """``n`` random 0..200 grey volumes (6 x 7 x 8 voxels of 2 mm)."""
    rng = np.random.default_rng(3)
    out = []
    for _ in range(n):
        img = sitk.GetImageFromArray(rng.integers(0, 200, (6, 7, 8)).astype(np.int16))
        img.SetSpacing((2.0, 2.0, 2.0))
        out.append(img)
    return out


def test_input_pipeline_steps_run_on_a_folders_training_images(tmp_path):
    """``input/pipeline`` steps run on every training image of a folder, as classify runs them on each scan."""
    from MedDeepRecogLib.io import read_image
    from MedDeepRecogLib.training.data import load_train_val

    folder = _write_folder(tmp_path / "vols", _grey_volumes(), ".nrrd")
    cfg = config_from_dict(_config(folder, {"kind": "volume3d", "size": [6, 7, 8]}, input={"pipeline": _STEPS}))
    data = load_train_val(cfg, folder)
    trained, path = _first_train_case(data, folder, ".nrrd")
    spec = {"kind": "volume3d", "size": [6, 7, 8], "spacing_mm": None, "channels": 1, "pipeline": _STEPS}
    np.testing.assert_allclose(trained[0], _classify_volume(read_image(path), spec), atol=1e-5)


def test_input_pipeline_steps_on_npz_arrays_are_refused(tmp_path):
    """A ``.npz`` holds arrays without voxel geometry, on which classify's pipeline steps cannot run: refused in one
    line naming input/pipeline, not trained without them."""
    from MedDeepRecogLib.training.data import load_train_val

    rng = np.random.default_rng(0)
    path = tmp_path / "vols.npz"
    np.savez(path, images=rng.integers(0, 200, (8, 6, 7, 8)).astype(np.uint8), labels=np.arange(8) % 2)
    cfg = config_from_dict(_config(path, {"kind": "volume3d"}, input={"pipeline": _STEPS}))
    with pytest.raises(ConfigError, match="input/pipeline") as exc:
        load_train_val(cfg, path)
    assert "normalize" in str(exc.value) and "\n" not in str(exc.value)


def test_input_pipeline_steps_with_intensity_range_are_refused(tmp_path):
    """With ``input/pipeline`` steps the package records them instead of the window ``data/intensity_range`` makes,
    so classify never applies the range: a config asking training to apply it is refused, naming both settings."""
    folder = _write_folder(tmp_path / "vols", _grey_volumes(), ".nrrd")
    with pytest.raises(ConfigError, match="data/intensity_range.*input/pipeline"):
        config_from_dict(_config(folder, {"kind": "volume3d", "intensity_range": [0, 200]},
                                 input={"pipeline": _STEPS}))


def test_an_empty_input_pipeline_trains_as_before(tmp_path):
    """``input/pipeline: {steps: []}`` (body-region.yaml) is no step: ``data/intensity_range`` still applies."""
    from MedDeepRecogLib.training.data import load_train_val

    rng = np.random.default_rng(0)
    path = tmp_path / "pics.npz"
    np.savez(path, images=rng.integers(0, 256, (8, 16, 16)).astype(np.uint8), labels=np.arange(8) % 2)
    cfg = config_from_dict(_config(path, {"kind": "slices2d", "intensity_range": [0, 255]},
                                   model={"name": "simple_cnn2d", "kwargs": {"channels": [2], "hidden": 4}},
                                   input={"pipeline": {"steps": []}, "slices_as_stored": True}))
    data = load_train_val(cfg, path)
    assert data.train.images.max() <= 1.0 and data.train.images.shape[1:] == (1, 16, 16)


# ------------------------------------------------------------------------------------- 3. large 2D pictures
def _pictures(n: int = 8, side: int = 72) -> list[sitk.Image]:
    """``n`` 8-bit ``side`` x ``side`` pictures: a bright disc on fine noise, whose block averages differ from its
    pixels (percentiles, body box)."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:side, :side]
    out = []
    for i in range(n):
        disc = ((yy - side / 2 - i) ** 2 + (xx - side / 3) ** 2) < (side / 4) ** 2
        arr = np.clip(rng.normal(40, 30, (side, side)) + 120 * disc, 0, 255).astype(np.uint8)
        out.append(sitk.GetImageFromArray(arr))
    return out


@pytest.mark.parametrize("source", ["folder", "npz"])
def test_pictures_larger_than_twice_work_size_are_block_averaged_as_classify_does(tmp_path, source):
    """72 x 72 pictures with ``input/slices/work_size`` 16 (as a 512 x 512 PNG with the default 128): classify
    block-averages each 4 x 4 before standardising; training (a folder or a .npz of the same pixels) does too."""
    from MedDeepRecogLib.inference.model_input import as_volume, slices_from_image
    from MedDeepRecogLib.io import read_image
    from MedDeepRecogLib.training.data import load_train_val

    pictures = _pictures()
    folder = _write_folder(tmp_path / "pics", pictures, ".png")
    path = folder
    if source == "npz":
        path = tmp_path / "pics.npz"
        np.savez(path, images=np.stack([sitk.GetArrayFromImage(p) for p in pictures]), labels=np.arange(8) % 2)
    slices = {"work_size": 16}
    cfg = config_from_dict(_config(path, {"kind": "slices2d", "size": [8, 8], "class_names": ["a", "b"]},
                                   model={"name": "simple_cnn2d", "kwargs": {"channels": [2], "hidden": 4}},
                                   input={"slices": slices}))
    data = load_train_val(cfg, path)
    trained, first = _first_train_case(data, folder, ".png")
    spec = {"kind": "slices2d", "size": [8, 8], "channels": 1, "slices": slices}
    seen = slices_from_image(as_volume(read_image(first), allow_2d=True), spec).x[0]
    np.testing.assert_allclose(trained, seen, atol=1e-5)


# ------------------------------------------------------------------------------------- 4. label maps, grey model
@pytest.mark.parametrize("kind", ["volume3d", "slices2d"])
def test_a_label_map_in_a_grey_level_folder_is_refused_naming_it(tmp_path, kind):
    """A label map listed among a grey-level model's training images (no ``input/content: binary_mask``) is one
    classify refuses for that model (``check_input_content``): training refuses it too, naming the file, rather
    than teaching the network an input classify never gives it."""
    from MedDeepRecogLib.training.data import load_train_val

    if kind == "volume3d":
        images, suffix, data = _grey_volumes(), ".nrrd", {"kind": "volume3d", "intensity_range": [0, 200]}
        images[3] = _label_maps(1)[0]
        model = None
    else:
        rng = np.random.default_rng(2)
        images = [sitk.GetImageFromArray(rng.integers(0, 256, (16, 16)).astype(np.uint8)) for _ in range(8)]
        images[3] = sitk.GetImageFromArray(((np.arange(256).reshape(16, 16) % 16) > 7).astype(np.uint8) * 255)
        suffix, data = ".png", {"kind": "slices2d", "intensity_range": [0, 255]}
        model = {"name": "simple_cnn2d", "kwargs": {"channels": [2], "hidden": 4}}
    folder = _write_folder(tmp_path / "imgs", images, suffix)
    cfg = config_from_dict(_config(folder, data, model, input={"slices_as_stored": True} if model else {}))
    with pytest.raises(ConfigError, match="label map or mask") as exc:
        load_train_val(cfg, folder)
    assert exc.value.path == folder / f"c03{suffix}" and "input/content: binary_mask" in str(exc.value)
    assert "\n" not in str(exc.value)


# ------------------------------------------------------------------------------------- 5. window before resample
@pytest.mark.parametrize("spacing_mm", [None, [1.5, 1.5, 1.5]])
def test_a_folders_volumes_are_windowed_before_they_are_resampled_as_classify_does(tmp_path, spacing_mm):
    """Without ``input/pipeline`` steps classify runs the package's default pipeline (``data/intensity_range``'s
    window, then the resample to ``data/size``) before its model grid: values outside the range are clipped before
    they are interpolated. Training resampled first and clipped after (max 0.36 of the 0..1 range apart on these
    volumes; 0.75 with ``spacing_mm``, whose grid it also took from the unresampled volume): now the same array."""
    from MedDeepRecogLib.io import read_image
    from MedDeepRecogLib.training.data import load_train_val
    from MedDeepRecogLib.training.train import default_pipeline

    rng = np.random.default_rng(4)
    images = []
    for _ in range(8):
        img = sitk.GetImageFromArray(rng.uniform(-800, 1800, (20, 22, 18)).astype(np.float32))
        img.SetSpacing((1.1, 0.9, 1.3))
        images.append(img)
    folder = _write_folder(tmp_path / "vols", images, ".nrrd")
    cfg = config_from_dict(_config(folder, {"kind": "volume3d", "intensity_range": [0, 1000], "size": [12, 12, 12]},
                                   input={"spacing_mm": spacing_mm}))
    data = load_train_val(cfg, folder)
    trained, path = _first_train_case(data, folder, ".nrrd")
    spec = {"kind": "volume3d", "size": [12, 12, 12], "spacing_mm": spacing_mm, "channels": 1,
            "pipeline": default_pipeline(cfg)}
    assert [s["name"] for s in spec["pipeline"]["steps"]] == ["window", "resample"]
    np.testing.assert_allclose(trained[0], _classify_volume(read_image(path), spec), atol=1e-6)
