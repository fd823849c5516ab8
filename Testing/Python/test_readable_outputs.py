"""What a radiologist and a newcomer see: the overlay PNG, one confidence, masks skipped in folders, the batch
summary (going on past a bad file), the per-case HTML report (screenshot in headless Chromium when present).

Tiny random packages (``tiny_test_package``) and the bundled ``body-region`` model; labels are not the point.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import make_volume
from MedDeepRecogLib.explain import overlay
from MedDeepRecogLib.io import write_image
from MedDeepRecogLib.io.geometry import lps_view
from tiny_test_package import make_tiny_package


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("pkgs")
    return {kind: make_tiny_package(root, kind=kind) for kind in ("slices2d", "volume3d")}


def _scan(path: Path, seed: int = 0, size=(40, 36, 12)) -> Path:
    return write_image(make_volume(size=size, seed=seed), path)


def _label_map(path: Path, size=(40, 36, 12)) -> Path:
    arr = np.zeros(size[::-1], dtype=np.uint8)
    arr[3:8, 10:20, 10:25] = 1
    arr[5:7, 12:16, 12:18] = 2
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((1.0, 1.0, 2.0))
    return write_image(image, path)


# ------------------------------------------------------------------------------------------------ 1. pictures
def test_png_draws_inferno_colorbar_letters_and_mm(monkeypatch, tmp_path):
    """The overlay uses the Slicer panel's Inferno, a colour bar with 0..1, orientation letters on every panel,
    the slice offset in mm in each panel title, the label with its confidence, and the warning line."""

    drawn = {}
    original = overlay.atomic_save_figure

    def capture(fig, path):
        drawn["texts"] = [t.get_text() for ax in fig.axes for t in ax.texts] + [t.get_text() for t in fig.texts]
        drawn["titles"] = [ax.get_title() for ax in fig.axes]
        drawn["suptitle"] = fig._suptitle.get_text()
        drawn["axes"] = fig.axes
        return original(fig, path)

    monkeypatch.setattr(overlay, "atomic_save_figure", capture)
    image = make_volume(size=(30, 28, 10), spacing=(0.8, 0.8, 3.0))
    heat = sitk.GetImageFromArray(np.zeros(sitk.GetArrayViewFromImage(image).shape, dtype=np.float32))
    heat.CopyInformation(image)
    heat[15, 14, 5] = 1.0
    path = overlay.three_plane_png(image, heat, tmp_path / "o.png", title="m 1.0: beta, confidence 0.71",
                                   warning="this heatmap is not a faithful explanation (restoring its hot pixels "
                                           "first raises it less than restoring random ones)")
    assert path.is_file()
    assert overlay.HEATMAP_CMAP == "inferno"
    bars = [ax for ax in drawn["axes"] if ax.get_label() == "colorbar"]
    assert len(bars) == 1 and bars[0].get_ylim() == (0.0, 1.0)
    for letters in overlay.ORIENTATION.values():
        for letter in letters:
            assert letter in drawn["texts"]
    panel_titles = [t for t in drawn["titles"] if t]
    assert len(panel_titles) == 3
    z_mm = image.TransformIndexToPhysicalPoint((15, 14, 5))[2]
    assert panel_titles[0] == f"axial  S {z_mm:+.1f} mm"
    assert re.fullmatch(r"coronal  A [+-]\d+\.\d mm", panel_titles[1])
    assert re.fullmatch(r"sagittal  R [+-]\d+\.\d mm", panel_titles[2])
    assert "confidence 0.71" in drawn["suptitle"]
    assert any("this heatmap is not a faithful explanation" in t for t in drawn["texts"])


def test_one_slice_input_gets_one_panel(monkeypatch, tmp_path):
    seen = {}
    original = overlay.atomic_save_figure
    monkeypatch.setattr(overlay, "atomic_save_figure",
                        lambda fig, path: seen.setdefault("n", len([a for a in fig.axes if a.get_label() !=
                                                                    "colorbar"])) and original(fig, path))
    image = make_volume(size=(30, 28, 1))
    heat = sitk.GetImageFromArray(np.random.default_rng(0).random((1, 28, 30)).astype(np.float32))
    heat.CopyInformation(image)
    overlay.three_plane_png(image, heat, tmp_path / "one.png")
    assert seen["n"] == 1


def test_a_picture_gets_no_patient_letters_or_slice_position(run_cli_all, tiny, tmp_path, monkeypatch):
    """A PNG stores no orientation: its panel shows the picture as stored, without R/L/A/P letters or "axial S"."""
    drawn = {}
    original = overlay.atomic_save_figure

    def capture(fig, path):
        drawn["texts"] = [t.get_text() for ax in fig.axes for t in ax.texts]
        drawn["titles"] = [ax.get_title() for ax in fig.axes if ax.get_title()]
        return original(fig, path)
    monkeypatch.setattr(overlay, "atomic_save_figure", capture)
    rng = np.random.default_rng(0)
    picture = tmp_path / "pic.png"
    sitk.WriteImage(sitk.GetImageFromArray((rng.random((96, 96)) * 255).astype(np.uint8)), str(picture))
    code, _, err = run_cli_all("classify", picture, "--model", tiny["slices2d"], "--out", tmp_path / "o",
                               "--progress", "none", "--no-faithfulness")
    assert code == 0, err
    assert drawn["titles"] == ["picture as stored (no patient orientation in the file)"]
    assert not set("RLAPSI") & set(drawn["texts"])


@pytest.mark.parametrize("slabs_miss", [False, True])
def test_png_planes_cross_the_written_heatmaps_peak(run_cli_all, tiny, oblique_volume, tmp_path, monkeypatch,
                                                    slabs_miss):
    """The overlay's three planes go through the hottest voxel of the heatmap NRRD as written on the scan's grid
    (anisotropic 0.8 x 1.1 x 2.5 mm, rotated, against the 3D model's 16^3 grid), so the PNG's crosshair sits on the
    voxel a radiologist finds in Slicer: the model grid's peak carried over lands one voxel off for this scan. The
    scan is let go of before the heatmap exists, keeping thin slabs around the expected peak; when the written peak
    falls outside them (``slabs_miss``: slabs cut at the far corner) the scan is read again and the planes still
    cross it."""
    from MedDeepRecogLib.inference import classify as classify_module

    reads = []
    real_read = classify_module.read_image
    monkeypatch.setattr(classify_module, "read_image", lambda *a, **k: reads.append(a) or real_read(*a, **k))
    if slabs_miss:
        monkeypatch.setattr(classify_module, "_peak_in_view", lambda *a, **k: (0, 0, 0))
        cut = overlay.ScanSlabs.cut
        monkeypatch.setattr(overlay.ScanSlabs, "cut", classmethod(lambda cls, image, centre, radius=2:
                                                                  cut(image, centre, radius=0)))
    drawn = []
    real = overlay.planes_png
    monkeypatch.setattr(overlay, "planes_png",
                        lambda scan, heat, *a, **k: drawn.append((scan, heat)) or real(scan, heat, *a, **k))
    scan = write_image(oblique_volume, tmp_path / "oblique.nrrd")
    code, _, err = run_cli_all("classify", scan, "--model", tiny["volume3d"], "--out", tmp_path / "o",
                               "--progress", "none", "--no-faithfulness")
    assert code == 0, err
    written = sitk.ReadImage(str(tmp_path / "o" / "oblique_heatmap.nrrd"))
    arr = sitk.GetArrayFromImage(written)
    assert arr.shape == sitk.GetArrayViewFromImage(oblique_volume).shape  # the scan's grid, not the model's
    np.testing.assert_array_equal(lps_view(written).array, arr)  # this scan's LPS view is its stored order
    peak = tuple(int(v) for v in np.unravel_index(int(np.argmax(arr)), arr.shape))
    assert len(drawn) == 1
    scan_planes, heat_planes = drawn[0]
    assert heat_planes.peak_view_zyx == peak
    assert scan_planes.peak_view_zyx == peak
    z, y, x = peak
    np.testing.assert_array_equal(heat_planes.planes[0], arr[z])
    np.testing.assert_array_equal(heat_planes.planes[1], arr[:, y, :][::-1])
    np.testing.assert_array_equal(heat_planes.planes[2], arr[:, :, x][::-1])
    np.testing.assert_array_equal(scan_planes.planes[0], sitk.GetArrayViewFromImage(oblique_volume)[z])
    np.testing.assert_array_equal(scan_planes.planes[1], sitk.GetArrayViewFromImage(oblique_volume)[:, y, :][::-1])
    assert len(reads) == (2 if slabs_miss else 1)  # read again only when the slabs miss the written peak


def test_overlay_peak_is_the_stored_arrays_first_maximum_in_any_orientation():
    """Ties and orientation: the overlay's peak is ``np.unravel_index(np.argmax(array))`` of the stored array (the
    NRRD's voxel order, first maximum in C order), located in the LPS view of a scan stored transposed and flipped
    (where the LPS view's own C order would meet the other maximum first)."""
    image = make_volume(size=(12, 10, 8), direction=(0.0, -1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, -1.0))
    arr = np.zeros((8, 10, 12), dtype=np.float32)
    arr[2, 7, 3] = arr[5, 1, 9] = 1.0
    heat = sitk.GetImageFromArray(arr)
    heat.CopyInformation(image)
    first = np.unravel_index(int(np.argmax(arr)), arr.shape)  # (z, y, x) of the stored array
    zyx = overlay.peak_view_index(heat)
    view = lps_view(heat)
    assert view.array[zyx] == 1.0
    hv = view.array
    assert np.unravel_index(int(np.argmax(hv)), hv.shape) != zyx  # the view's order would choose the other one
    point = view.origin + view.direction @ (np.array(zyx[::-1], dtype=float) * view.spacing)
    np.testing.assert_allclose(point, heat.TransformIndexToPhysicalPoint(tuple(int(v) for v in first[::-1])),
                               atol=1e-9)


# ------------------------------------------------------------------------------------------------ 2. one confidence
def test_printed_png_and_json_confidence_agree(run_cli_all, shared_data, tmp_path, monkeypatch):
    """brain1 with body-region: the headline printed, the PNG title and the JSON's ``confidence`` are one number;
    the JSON says what ``confidence`` and ``probabilities`` each are."""
    from MedDeepRecogLib.explain import overlay as ov

    titles = []
    real = ov.planes_png
    monkeypatch.setattr(ov, "planes_png", lambda *a, **k: titles.append(k["title"]) or real(*a, **k))
    scan = shared_data / "pyradiomics_testcases" / "brain1_image.nrrd"
    code, out, err = run_cli_all("classify", scan, "--model", "body-region", "--out", tmp_path, "--progress", "none",
                                 "--no-faithfulness")
    assert code == 0, err
    record = json.loads((tmp_path / "brain1_image.json").read_text(encoding="utf-8"))
    shown = f"confidence {record['confidence']:.2f}"
    assert f"brain1_image.nrrd: {record['label']}, {shown}" in out
    assert shown in titles[0]
    assert "mean over the" in record["confidence_basis"] and "voting slices" in record["confidence_basis"]
    assert "geometric mean" in record["probabilities_basis"]
    # the two figures genuinely differ for a slice stack; neither is printed unlabelled
    assert abs(record["probabilities"][record["top_class"]] - record["confidence"]) > 0.005
    # the probability line names the headline's confidence and what each figure is
    assert (f"scan probabilities (geometric mean over the {sum(r['voted'] for r in record['per_slice'])} voting "
            f"slices, which picks the label; the confidence {record['confidence']:.2f} is their plain mean for "
            f"{record['top_class']})") in out


def test_the_probability_line_names_the_headline_confidence_and_what_each_figure_is():
    """brain1: "uncertain (top class glioma, confidence 0.78)" then "scan probabilities ...: glioma 0.821", two
    figures for one class; the probability line now says the 0.78 is the slices' plain mean and its own figures the
    geometric mean that picks the label (the demo prints the same line)."""
    from types import SimpleNamespace

    from MedDeepRecogLib.inference.classify import probabilities_label

    per_slice = [{"index": k, "label": "glioma", "probability": 0.8, "voted": k != 0} for k in range(21)]
    result = SimpleNamespace(per_slice=per_slice, decision={"label": "uncertain", "top_class": "glioma",
                                                            "confidence": 0.7823})
    line = probabilities_label(result)
    assert line == ("scan probabilities (geometric mean over the 20 voting slices, which picks the label; the "
                    "confidence 0.78 is their plain mean for glioma)")
    result.decision["label"] = "out-of-domain"
    assert "confidence" not in probabilities_label(result)   # no class reported: no confidence to name
    assert probabilities_label(SimpleNamespace(per_slice=per_slice[:1], decision=result.decision)) != line


# ------------------------------------------------------------------------------------------------ 3. masks
def test_folder_skips_label_maps_and_names_them(run_cli_all, tiny, tmp_path):
    folder = tmp_path / "cases"
    _scan(folder / "case1.nrrd")
    _label_map(folder / "case1_label.nrrd")
    _label_map(folder / "mask.nrrd")  # integer, 3 values, no telling name
    shutil.copy(folder / "case1_label.nrrd", folder / "case1.seg.nrrd")
    out = tmp_path / "out"
    code, stdout, err = run_cli_all("classify", folder, "--model", tiny["slices2d"], "--out", out,
                                    "--progress", "none", "--no-faithfulness")
    assert code == 0, err
    assert sorted(p.name for p in out.glob("*.json")) == ["case1.json", "summary.json"]
    for name in ("case1_label.nrrd", "case1.seg.nrrd", "mask.nrrd"):
        assert f"skipped {folder / name}:" in stdout
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    reasons = {Path(s["input"]).name: s["reason"] for s in summary["skipped"]}
    assert "label map" in reasons["case1_label.nrrd"] and "segmentation" in reasons["case1.seg.nrrd"]
    assert "3 distinct values" in reasons["mask.nrrd"]


def test_mask_given_explicitly_is_refused_with_the_reason(run_cli_all, tiny, tmp_path):
    mask = _label_map(tmp_path / "brain_label.nrrd")
    code, _, err = run_cli_all("classify", mask, "--model", tiny["slices2d"], "--out", tmp_path / "o",
                               "--progress", "none")
    assert code == 2
    assert "label map or mask, not a scan" in err and str(mask) in err


# ------------------------------------------------------------------------------------------------ 4. batch summary
def test_batch_summary_and_going_on_past_a_bad_file(run_cli_all, tiny, tmp_path):
    a, b = _scan(tmp_path / "in" / "a.nrrd", 1), _scan(tmp_path / "in" / "b.nii.gz", 2)
    bad = tmp_path / "in" / "broken.nrrd"
    bad.write_bytes(b"NRRD0004\ngarbage\n")
    out = tmp_path / "out"
    code, stdout, err = run_cli_all("classify", a, bad, b, "--model", tiny["volume3d"], "--out", out,
                                    "--progress", "none", "--no-faithfulness")
    assert code == 2
    assert (out / "a.json").is_file() and (out / "b.json").is_file()  # b came after the bad file
    assert f"error: {bad}" in err and "1 of 3 inputs failed" in err
    rows = list(csv.DictReader((out / "summary.csv").open(encoding="utf-8")))
    assert [r["input"] for r in rows] == [str(a), str(bad), str(b)]
    assert list(rows[0]) == ["input", "status", "label", "top_class", "probability", "uncertain", "uncertain_reason",
                             "model", "json", "heatmap", "png", "report", "error"]
    ok = json.loads((out / "a.json").read_text(encoding="utf-8"))
    assert rows[0]["status"] == "ok" and rows[0]["label"] == ok["label"]
    assert float(rows[0]["probability"]) == pytest.approx(ok["confidence"], abs=1e-4)
    assert rows[0]["uncertain"] == str(ok["uncertain"]).lower()
    assert rows[0]["uncertain_reason"] == "; ".join(ok["uncertain_reasons"])
    assert rows[0]["model"] == "tiny-test-volume3d@0.0.1" and rows[0]["json"] == str(out / "a.json")
    assert rows[1]["status"] == "error" and rows[1]["error"].startswith(str(bad)) and "\n" not in rows[1]["error"]
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["counts"] == {"classified": 2, "failed": 1, "skipped": 0}
    assert summary["cases"][2]["outputs"]["json"] == str(out / "b.json")


def test_one_bad_input_alone_still_fails_at_once(run_cli_all, tiny, tmp_path):
    bad = tmp_path / "broken.nrrd"
    bad.write_bytes(b"NRRD0004\ngarbage\n")
    code, _, err = run_cli_all("classify", bad, "--model", tiny["volume3d"], "--out", tmp_path / "o")
    assert code == 2 and err.count("error:") == 1
    assert not (tmp_path / "o" / "summary.csv").exists()


# ------------------------------------------------------------------------------------------------ 5. HTML report
def test_html_report_is_self_contained_and_screenshots(run_cli_all, tiny, tmp_path):
    pkg = Path(tiny["slices2d"])
    meta = json.loads((pkg / "model.json").read_text(encoding="utf-8"))
    card_dir = tmp_path / "pkg"
    shutil.copytree(pkg, card_dir)
    meta["use"] = {"intended_use": "testing the report <only>", "not_for": ["diagnosis", "children"]}
    meta["metrics"] = {"split": "val", "auc": 0.91, "n": 40}
    (card_dir / "model.json").write_text(json.dumps(meta), encoding="utf-8")
    (card_dir / "MODEL_CARD.md").write_text("# tiny\nTrained on nothing.\n", encoding="utf-8")
    scan = _scan(tmp_path / "scan.nrrd")
    out = tmp_path / "out"
    code, stdout, err = run_cli_all("classify", scan, "--model", card_dir, "--out", out, "--progress", "none",
                                    "--report")
    assert code == 0, err
    page = out / "scan_report.html"
    record = json.loads((out / "scan.json").read_text(encoding="utf-8"))
    assert record["outputs"]["report"] == str(page)
    html = page.read_text(encoding="utf-8")
    assert 'src="data:image/png;base64,' in html and "<link" not in html and 'src="http' not in html
    assert f"confidence {record['confidence']:.2f}" in html
    for cls, p in record["probabilities"].items():
        assert cls in html
    assert html.count('<div class="bar') == len(record["probabilities"])
    assert "Predictive entropy" in html and "Faithfulness" in html
    assert "testing the report &lt;only&gt;" in html  # autoescaped
    assert "<li>diagnosis</li>" in html and "Trained on nothing." in html and "0.910" in html
    assert f"meddeeprecog classify {scan} --model {card_dir} --out {out} --progress none --report" in html
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("headless Chromium is not installed (apt-get install chromium)")
    shot = tmp_path / "report.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1200,1600", f"--screenshot={shot}", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    shown = sitk.GetArrayFromImage(sitk.ReadImage(str(shot)))
    assert shown.shape[:2] == (1600, 1200)
    assert shown.std() > 10  # a rendered page, not a blank one


def test_demo_writes_the_report_by_default(run_cli_all, tmp_path, monkeypatch):
    """``demo`` writes ``<name>_report.html`` unless ``--no-report`` (routed to ``body-region`` here: the disease
    models are bundled later)."""
    import MedDeepRecogLib.inference.route as route

    monkeypatch.setattr(route, "route_image", lambda image, device="cpu": route.Route("body-region", "test stand-in"))
    code, out, err = run_cli_all("demo", "--out", tmp_path / "a")
    assert code == 0, err
    record = json.loads((tmp_path / "a" / "brain1_mr.json").read_text(encoding="utf-8"))
    assert record["outputs"]["report"] == str(tmp_path / "a" / "brain1_mr_report.html")
    assert f"brain1_mr.nrrd: {record['label']}, confidence {record['confidence']:.2f}" in out
    html = (tmp_path / "a" / "brain1_mr_report.html").read_text(encoding="utf-8")
    assert "meddeeprecog demo --out" in html and "body-region" in html
    code, _, err = run_cli_all("demo", "--out", tmp_path / "b", "--no-report")
    assert code == 0, err
    assert not list((tmp_path / "b").glob("*_report.html"))


def test_report_uncertainty_words_follow_the_label_and_the_side_of_the_threshold():
    """The HTML report's Uncertainty sentences: an out-of-domain image at or above the low-confidence threshold stays
    out-of-domain (not "reported as uncertain"), and an entropy a hair from the threshold is written with the places
    that show its side (not "0.75 ... below the threshold 0.75")."""
    from types import SimpleNamespace

    from MedDeepRecogLib.report import uncertainty_words

    def words(label, h, flagged, threshold=0.749642):
        u = {"predictive_entropy": h, "low_confidence": flagged, "low_confidence_threshold": threshold}
        return " ".join(uncertainty_words(SimpleNamespace(label=label, uncertainty=u)))

    outside = words("out-of-domain", 0.91, True)
    assert "stays out-of-domain" in outside and "reported as uncertain" not in outside
    assert "so the label is reported as uncertain" in words("uncertain", 0.91, True)
    below = words("benign", 0.7496, False)
    assert "Predictive entropy 0.74960 " in below and "below the model's low-confidence threshold 0.74964 " in below
    at = words("uncertain", 0.749642, True)
    assert "Predictive entropy 0.749642 " in at and "at or above the model's low-confidence threshold 0.749642 " in at


def test_report_of_a_lung_finding_and_of_a_case_scored_against_its_lesion(run_cli_all, shared_data, tmp_path):
    """A finding from a model with a "normal" class (an extent, no caveat) renders, and a case classified with
    ``--lesion`` shows its own pointing game, heat inside the lesion and lesion reliance, as the JSON has them."""
    import SimpleITK as sitk

    z = np.load(shared_data / "lung_ct_iqothnccd" / "lung_ct_iqothnccd_trainval.npz")
    picks = np.flatnonzero(z["val_labels"] == 2)[:6]
    hu = z["val_images"][picks].astype(np.float32) / 255 * 400 - 160  # the mediastinal window W400/L40, undone
    volume = sitk.GetImageFromArray(hu.astype(np.int16))
    volume.SetSpacing((0.7, 0.7, 5.0))
    scan = tmp_path / "lung.nrrd"
    sitk.WriteImage(volume, str(scan))
    code, _, err = run_cli_all("classify", scan, "--model", "lung-ct-cancer", "--out", tmp_path / "lung",
                               "--progress", "none", "--no-faithfulness", "--report")
    assert code == 0, err
    record = json.loads((tmp_path / "lung" / "lung.json").read_text(encoding="utf-8"))
    html = (tmp_path / "lung" / "lung_report.html").read_text(encoding="utf-8")
    assert record["label"] == "malignant" and record["finding"]["extent"] is True  # six malignant val slices
    assert "caveat" not in record["finding"] and "Finding (malignant)" in html

    brain = shared_data / "pyradiomics_testcases"
    code, out, err = run_cli_all("classify", brain / "brain1_image.nrrd", "--model", "brain-tumour-mri", "--out",
                                 tmp_path / "brain", "--lesion", brain / "brain1_label.nrrd", "--progress", "none",
                                 "--no-faithfulness", "--report")
    assert code == 0, err
    record = json.loads((tmp_path / "brain" / "brain1_image.json").read_text(encoding="utf-8"))
    html = (tmp_path / "brain" / "brain1_image_report.html").read_text(encoding="utf-8")
    per_slice = record["explain"]["localisation"]["per_slice"]
    assert "This heatmap against the lesion label" in html
    hits = f"inside the lesion on {per_slice['pointing_hits']} of {per_slice['slices']} lesion slices"
    assert hits in html and f"lesion: Heatmap peak {hits}" in out  # the printed lines say it too
    assert "not the extent of a lesion" in html and "from -2 to +2" not in html  # faithfulness not scored here


def test_segment_volumes_come_with_the_packages_own_limits(run_cli_all, shared_data, tmp_path):
    """ts-organs-seg's volumes were printed as plain ml though its model.json calls it a demo and records kidney Dice
    0.05 (on example_ct the kidney runs from the pelvis to the top of the scan: 804 ml). The printed JSON now
    carries what the package says of itself (its description; a package's ``use`` when it has one, as classify's
    report shows it) and its validation Dice, per segment and named in the caveat when low."""
    from MedDeepRecogLib.inference.segment import stated_limits
    from MedDeepRecogLib.packages import load_package

    out = tmp_path / "ct.seg.nrrd"
    code, stdout, err = run_cli_all("segment", shared_data / "totalsegmentator_examples" / "example_ct_sm.nii.gz",
                                    "--model", "ts-organs-seg", "--out", out, "--device", "cpu")
    assert code == 0, err
    result = json.loads(stdout)
    caveat = result["caveat"]
    assert caveat.startswith("ts-organs-seg@1.0.0 says of itself: Demo:") and "not for clinical use" in caveat
    assert "kidney 0.05" in caveat and "Below Dice 0.5 in validation: kidney, so its volume is not a measurement" \
        in caveat
    assert result["segments"]["kidney"]["validation_dice"] == 0.0521
    assert result["model_limits"]["validation"]["cases"] == 1
    # a package that states its use: intended use and not-for, as classify's report shows them
    package = load_package("ts-organs-seg")
    package.meta = {**package.meta, "use": {"intended_use": "Teaching.", "not_for": ["Volumetry", "Diagnosis."]}}
    limits = stated_limits(package)
    assert "intended use: Teaching. Not for: Volumetry; Diagnosis." in limits["caveat"]
    assert limits["not_for"] == ["Volumetry", "Diagnosis."] and "description" not in limits
