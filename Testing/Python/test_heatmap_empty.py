"""A heatmap that is 0 everywhere (Grad-CAM clipped all its evidence) is said to be empty in the JSON, the PNG's
title and warning, the HTML report's words and the Slicer panel, and gets no faithfulness score (it measures
nothing)."""

from __future__ import annotations

import json

import pytest
import SimpleITK as sitk
import torch

from conftest import make_volume
from MedDeepRecogLib.inference.classify import HEATMAP_EMPTY_NOTE, classify_scan, write_outputs
from MedDeepRecogLib.io import write_image
from MedDeepRecogLib.packages import load_package
from MedDeepRecogLib.report import faithfulness_words
from MedDeepRecogLib.slicer_bridge import read_classify_result
from tiny_test_package import make_tiny_package


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    torch.set_num_threads(1)
    return load_package(make_tiny_package(tmp_path_factory.mktemp("empty_pkg"), kind="volume3d"))


@pytest.fixture
def zero_heatmap(monkeypatch):
    """Every heatmap written on the scan's grid is 0: what Grad-CAM gives when it clips all evidence."""
    from MedDeepRecogLib.inference import heatmap

    real = heatmap.heatmap_on_input_grid
    monkeypatch.setattr(heatmap, "heatmap_on_input_grid", lambda *a, **k: real(*a, **k) * 0.0)


def test_an_empty_heatmap_is_said_to_be_empty_and_not_scored(package, tmp_path, zero_heatmap, monkeypatch):
    from MedDeepRecogLib.explain import overlay

    titles = []
    real_png = overlay.planes_png
    monkeypatch.setattr(overlay, "planes_png", lambda *a, **k: titles.append((k["title"], k["warning"]))
                        or real_png(*a, **k))
    scan = write_image(make_volume(), tmp_path / "ct.nii.gz")
    res = classify_scan(scan, package, explain="gradcam", device="cpu")
    assert res.explain["empty"] is True and res.explain["note"] == HEATMAP_EMPTY_NOTE
    assert "faithfulness" not in res.explain and "faithfulness_caption" not in res.explain
    outputs = write_outputs(res, tmp_path / "out")
    record = json.loads(open(outputs["json"], encoding="utf-8").read())
    assert record["explain"]["empty"] is True and record["explain"]["note"].startswith("heatmap empty:")
    assert sitk.GetArrayFromImage(sitk.ReadImage(outputs["heatmap"])).max() == 0.0
    (title, warning), = titles
    assert "heatmap empty" in title and "faithfulness" not in title and warning == HEATMAP_EMPTY_NOTE
    assert "empty" in " ".join(faithfulness_words(res))
    panel = read_classify_result(tmp_path / "out", scan)
    assert panel.heatmap_text().startswith("heatmap empty:")


def test_a_heatmap_with_heat_is_not_called_empty(package, tmp_path):
    scan = write_image(make_volume(), tmp_path / "ct.nii.gz")
    res = classify_scan(scan, package, explain="gradcam", device="cpu")
    if sitk.GetArrayViewFromImage(res.heatmap).max() > 0:
        assert "empty" not in res.explain and "faithfulness" in res.explain
