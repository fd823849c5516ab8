"""Where the heatmap sits at the image border (``inference/placement.py``): the band, the peak test, the heat share,
the per-class summary, the card section and the ``placement:`` config block."""

from __future__ import annotations

import numpy as np
import pytest

from MedDeepRecogLib.errors import ConfigError
from MedDeepRecogLib.inference.placement import (band_mask, placement, placement_card_lines, summarise,
                                                 validate_block)


def test_band_is_the_outer_tenth_of_each_side():
    band = band_mask((100, 50), 0.1)
    assert band[:10].all() and band[-10:].all() and band[:, :5].all() and band[:, -5:].all()
    assert not band[10:90, 5:45].any()
    assert band.mean() == 1 - (80 * 40) / (100 * 50)


def test_placement_of_a_border_peak_a_central_blob_uniform_and_empty_heat():
    band = band_mask((100, 100), 0.1)
    corner = np.zeros((100, 100), np.float32)
    corner[2, 3] = 1.0
    assert placement(corner, band) == (True, 1.0)
    centre = np.zeros((100, 100), np.float32)
    centre[40:60, 40:60] = 1.0
    centre[45, 50] = 2.0
    assert placement(centre, band) == (False, 0.0)
    peak_in_band, share = placement(np.ones((100, 100), np.float32), band)
    assert abs(share - band.mean()) < 1e-6
    assert placement(np.zeros((100, 100), np.float32), band) is None


def test_summary_per_predicted_class_and_its_card_section():
    band = band_mask((40, 40), 0.1)
    rows = [{"predicted": "benign", "placed": (True, 0.5)}, {"predicted": "benign", "placed": (False, 0.1)},
            {"predicted": "malignant", "placed": (True, 0.9)}, {"predicted": "malignant", "placed": None}]
    s = summarise(rows, ["normal", "benign", "malignant"], band)
    assert s["images"] == 3 and s["peak_in_band"] == pytest.approx(2 / 3, abs=1e-4)
    assert s["heat_in_band"] == pytest.approx(0.5, abs=1e-4) and s["band_area"] == pytest.approx(band.mean(), 1e-3)
    assert s["per_predicted_class"] == {"benign": {"images": 2, "peak_in_band": 0.5, "heat_in_band": 0.3},
                                        "malignant": {"images": 1, "peak_in_band": 1.0, "heat_in_band": 0.9}}
    card = placement_card_lines({"images": 4, "refused": 0, "with_heat": 3, "bands": {"0.1": s}}, "gradcam on `x`")
    assert "## Where the heatmap sits on its val images (gradcam on `x`)" in card
    assert "every val image (4; 1 whose heatmap held no heat after clearing, left out of the table;" in card
    assert "| all images (3) | 66.7% / 50.0% |" in card
    assert "| top class benign (2) | 50.0% / 30.0% |" in card and "| top class malignant (1) | 100.0% / 90.0% |" in card
    assert f"| band's share of the image (uniform placement) | {band.mean():.1%} |" in card
    assert placement_card_lines(None, "gradcam") == ""


@pytest.mark.parametrize("block", [{"bands": [0.5]}, {"bands": []}, {"bands": "0.1"}, {"band": [0.1]},
                                   {"bands": [True]}, [0.1]])
def test_a_bad_placement_block_is_refused(block):
    with pytest.raises(ConfigError):
        validate_block(block)


def test_placement_block_defaults_and_keeps_its_bands():
    assert validate_block(None) is None
    assert validate_block({"bands": [0.05, 0.25]}) == {"bands": [0.05, 0.25]}
    assert validate_block({"bands": [0.1, 0.2]}) == validate_block({"bands": [0.1, 0.2]})


def _config(tmp_path, kind: str, arrays: dict):
    from MedDeepRecogLib.training.config import config_from_dict

    data = tmp_path / "data.npz"
    np.savez(data, **arrays)
    return config_from_dict({"id": "toy", "data": {"path": str(data), "kind": kind, "size": [16, 16]},
                             "model": {"name": "simple_cnn2d"}, "placement": {"bands": [0.1]}}, tmp_path / "c.yaml")


def test_what_the_block_needs_is_refused_when_the_run_starts_not_after_training(tmp_path):
    """A volume model, or a data file without validation images, is refused by ``run_hooks`` (the start of a run)
    with the file named."""
    from MedDeepRecogLib.inference.placement import placement_hooks

    images, labels = np.zeros((4, 16, 16), np.uint8), np.array([0, 1, 0, 1])
    ok = _config(tmp_path, "slices2d", {"train_images": images, "train_labels": labels, "val_images": images,
                                        "val_labels": labels})
    assert placement_hooks({"bands": [0.1]}, ok).before_save is not None
    with pytest.raises(ConfigError, match="slice models; data/kind is volume3d"):
        placement_hooks({"bands": [0.1]}, _config(tmp_path, "volume3d", {"images": images, "labels": labels}))
    with pytest.raises(ConfigError, match="placement block needs val_images.*drop placement") as err:
        placement_hooks({"bands": [0.1]}, _config(tmp_path, "slices2d", {"images": images, "labels": labels}))
    assert "data.npz" in str(err.value)
    # a data/path that is not an .npz (a README given by mistake) is named as such, not as a pickle error
    from MedDeepRecogLib.training.config import config_from_dict

    (tmp_path / "README.md").write_text("# notes\n", encoding="utf-8")
    text = config_from_dict({"id": "toy", "data": {"path": str(tmp_path / "README.md"), "kind": "slices2d",
                                                   "size": [16, 16]}, "model": {"name": "simple_cnn2d"},
                             "placement": {"bands": [0.1]}}, tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="data/path is not an .npz file") as err:
        placement_hooks({"bands": [0.1]}, text)
    assert "README.md" in str(err.value) and "pickle" not in str(err.value)
