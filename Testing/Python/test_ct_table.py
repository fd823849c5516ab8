"""The CT table under the patient (``preprocessing/table.py``): found and blanked before the crop
(``input.slices.remove_table``), never taking the patient, and counted by the heatmap placement."""

from __future__ import annotations

import numpy as np
import pytest

from MedDeepRecogLib.inference.placement import summarise_table, table_card_lines
from MedDeepRecogLib.preprocessing.slices import standardise_slices
from MedDeepRecogLib.preprocessing.table import table_mask


def chest(table: str = "line", gap: int = 6, seed: int = 0, rise: float = 0.002, flanks: bool = False
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 224x224 axial slice like the IQ-OTH/NCCD exports: a speckled body ellipse with dark lungs, and under it
    (``gap`` rows of air away) a table line curving up at the sides by ``rise`` rows per squared column, with a
    block under its middle for ``table="block"``. ``flanks``: two loose pieces of the patient's sides (the narrow
    window shows fat as black, so the sides often stand apart from the trunk) just above the table's rising ends.
    Returns (slice 0..1, body mask, table mask)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:224, :224].astype(np.float32)
    body = ((yy - 100) / 60) ** 2 + ((xx - 112) / 90) ** 2 <= 1
    if flanks:
        body = ((yy - 100) / 50) ** 2 + ((xx - 112) / 70) ** 2 <= 1
        body |= ((yy - 120) / 10) ** 2 + ((np.abs(xx - 112) - 88) / 7) ** 2 <= 1
    lungs = (((yy - 100) / 40) ** 2 + ((np.abs(xx - 112) - 40) / 28) ** 2) <= 1
    img = np.where(body & ~lungs, rng.uniform(0.0, 0.6, body.shape), 0.0).astype(np.float32)
    body_bottom = 160
    curve = body_bottom + gap - rise * (xx - 112) ** 2  # the table's top edge: a U, lowest under the patient
    tab = (yy >= curve) & (yy < curve + 3) & (np.abs(xx - 112) < 110)
    if table == "block":
        tab |= (yy >= body_bottom + gap + 3) & (yy < body_bottom + gap + 20) & (np.abs(xx - 112) < 40)
    if table != "none":
        img[tab] = 0.9
    return img, body, tab if table != "none" else np.zeros_like(tab)


@pytest.mark.parametrize("kind", ["line", "block"])
def test_the_table_under_the_patient_is_found_and_the_patient_kept(kind):
    img, body, tab = chest(kind)
    found = table_mask(img, 0.1)
    assert found[tab].mean() > 0.95  # the table
    assert not found[body].any()  # and nothing of the patient


def test_the_patients_flanks_inside_a_deep_curved_table_are_kept():
    """The table's ends rise to a few pixels beside the loose flanks, so closing along rows joins them into one
    piece; only the table's own run in each column goes."""
    img, body, tab = chest("line", rise=0.004, flanks=True)
    found = table_mask(img, 0.1)
    assert not found[body].any()
    assert found[tab].mean() > 0.9


def test_no_table_or_a_patient_lying_on_it_loses_nothing():
    img, _, _ = chest("none")
    assert not table_mask(img, 0.1).any()  # its lowest piece is the body: too thick to be a table
    touching, body, _ = chest("line", gap=0)
    touching[159:163, 60:165] = 0.5  # no air between back and table: one piece, which is the patient
    assert not table_mask(touching, 0.1)[body].any()
    assert not table_mask(np.zeros((64, 64), np.float32), 0.1).any()


def test_remove_table_blanks_it_before_the_crop_so_the_patient_fills_the_input():
    img, body, tab = chest("block")
    options = {"percentiles": [0.0, 100.0], "percentile_target": 1.0}
    kept = standardise_slices(img[None] * 255, size=(64, 64), options=options)
    blanked = standardise_slices(img[None] * 255, size=(64, 64), options={**options, "remove_table": True})
    assert kept[3][0][tab].min() > 0.5 and (blanked[3][0][tab] == 0.0).mean() > 0.95
    assert np.array_equal(kept[3][0][~tab], blanked[3][0][~tab])
    assert blanked[4][0, 0] < kept[4][0, 0] - 15  # the body box lost the table's rows (mm at 1 mm pixels)


def test_table_figures_per_class_and_their_card_lines():
    rows = [{"predicted": "normal", "table_area": 0.03, "on_table": (True, 0.4)},
            {"predicted": "normal", "table_area": 0.02, "on_table": (False, 0.1)},
            {"predicted": "malignant", "table_area": None, "on_table": None},  # no table found
            {"predicted": "malignant", "table_area": 0.025, "on_table": None}]  # no heat
    t = summarise_table(rows, ["normal", "benign", "malignant"])
    assert t["images_with_table"] == 3 and t["table_area"] == pytest.approx(0.025)
    assert t["images"] == 2 and t["peak_on_table"] == 0.5 and t["heat_on_table"] == pytest.approx(0.25)
    assert list(t["per_predicted_class"]) == ["normal"]
    card = table_card_lines(t)
    assert "found on\n3 images" in card and "| all images with a table (2) | 50.0% | 25.0% |" in card
    assert "| top class normal (2) | 50.0% | 25.0% |" in card
    assert table_card_lines(None) == ""


def test_on_the_lung_exports_the_table_is_found_below_the_patient(shared_data):
    """On the IQ-OTH/NCCD val images: a table is found on most, and only in the lower part of the image."""
    with np.load(shared_data / "lung_ct_iqothnccd" / "lung_ct_iqothnccd_trainval.npz") as z:
        images = z["val_images"][:60]
    scaled = standardise_slices(images, size=(8, 8), options={"percentiles": [0.0, 99.9], "percentile_target": 1.0})[3]
    found = [table_mask(s, 0.1) for s in scaled]
    assert sum(f.any() for f in found) >= 0.7 * len(found)
    tops = [np.flatnonzero(f.any(1))[0] / f.shape[0] for f in found if f.any()]
    heights = [np.flatnonzero(f.any(1)).size / f.shape[0] for f in found if f.any()]
    assert min(tops) > 0.35 and max(heights) < 0.5  # the U's arms rise at the sides, never to the top


@pytest.mark.parametrize("radius", [1, 4, 8])
def test_row_closing_matches_simpleitks_closing_along_rows(radius):
    import SimpleITK as sitk

    from MedDeepRecogLib.preprocessing.table import row_closing

    rng = np.random.default_rng(radius)
    for shape, density in [((40, 57), 0.1), ((64, 64), 0.5), ((7, 300), 0.8)]:
        mask = rng.random(shape) < density
        mask[:, :2] = True  # foreground at the border, where the safe border matters
        expected = sitk.GetArrayFromImage(sitk.BinaryMorphologicalClosing(
            sitk.GetImageFromArray(mask.astype(np.uint8)), [radius, 0])).astype(bool)
        assert np.array_equal(row_closing(mask, radius), expected)


def test_a_ct_in_hounsfield_units_loses_its_table_and_keeps_the_patient(shared_data):
    """The DICOM CT series (HU, mediastinal window of the lung package): the table under the patient goes on every
    slice, the patient's box only loses the rows below it."""
    from MedDeepRecogLib.inference.model_input import slices_from_image
    from MedDeepRecogLib.io.image_io import read_image
    from MedDeepRecogLib.packages import load_package

    image = read_image(shared_data / "totalsegmentator_examples" / "example_ct_dicom")
    spec = load_package("lung-ct-cancer@1.2.0").input_spec
    assert spec["slices"]["remove_table"] is True
    kept = slices_from_image(image, {**spec, "slices": {**spec["slices"], "remove_table": False}})
    blanked = slices_from_image(image, spec)
    removed = kept.display != blanked.display
    h = removed.shape[1]
    assert removed.any(axis=(1, 2)).all()
    assert np.flatnonzero(removed.any(axis=(0, 2)))[0] > 0.6 * h  # only low in the image
    assert (blanked.display[~removed] == kept.display[~removed]).all()
    assert (blanked.extent_mm[:, 0] < kept.extent_mm[:, 0]).all()  # the box lost the table's rows
    assert np.allclose(blanked.extent_mm[:, 1], kept.extent_mm[:, 1], atol=5.0)  # and kept the patient's width
    assert blanked.table_blanked.all() and kept.table_blanked is None

    from MedDeepRecogLib.inference.classify import classify_scan

    result = classify_scan(shared_data / "totalsegmentator_examples" / "example_ct_dicom",
                           load_package("lung-ct-cancer@1.2.0"), uncertainty="none", faithfulness=False)
    assert ("the CT table under the patient was blanked before classifying on 20 of 20 slices (the model was "
            "trained without it: input.slices.remove_table)") in result.input_notes
    brain = classify_scan(shared_data / "totalsegmentator_examples" / "example_ct_dicom",
                          load_package("brain-tumour-mri"), uncertainty="none", faithfulness=False)
    assert not any("CT table" in n for n in brain.input_notes)


def test_placement_counts_the_table_for_a_ct_slice_package_only(tmp_path):
    """``measure_placement`` finds the table on a CT slice package's images and places the heatmap against it; other
    modalities get no table figures."""
    import json

    from MedDeepRecogLib.inference.placement import measure_placement
    from MedDeepRecogLib.packages import load_package
    from tiny_test_package import make_tiny_package

    images = np.stack([(chest(kind, seed=i)[0] * 255).astype(np.uint8) for i, kind in enumerate(["line", "block"])])
    folder = make_tiny_package(tmp_path)
    assert "table" not in measure_placement(load_package(folder), images, bands=[0.1])
    meta = json.loads((folder / "model.json").read_text())
    meta["modality"] = "CT"
    (folder / "model.json").write_text(json.dumps(meta))
    figures = measure_placement(load_package(folder), images, bands=[0.1])
    assert figures["table"]["images_with_table"] == 2
    assert 0.0 < figures["table"]["table_area"] < 0.1
    assert figures["table"]["images"] == figures["with_heat"]
