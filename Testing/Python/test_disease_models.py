"""The bundled disease models on real scans: tumour type and heatmap on the lesion, out-of-domain refusals, routing.

Reads ``../shared/data`` (skipped where it is absent) and nilearn's MNI152 template (skipped without nilearn).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MedDeepRecogLib.errors import ModelPackageError
from MedDeepRecogLib.inference.classify import OUT_OF_DOMAIN, classify_scan
from MedDeepRecogLib.packages import load_package

BRAIN, LUNG, BREAST = "brain-tumour-mri", "lung-ct-cancer", "breast-us-lesion"
TUMOUR_TYPES = {"meningioma", "glioma", "pituitary"}


@pytest.fixture(scope="module")
def radiomics(shared_data) -> Path:
    return shared_data / "pyradiomics_testcases"


def _lesion(path: Path) -> sitk.Image:
    label = sitk.ReadImage(str(path))
    mask = sitk.GetImageFromArray((sitk.GetArrayViewFromImage(label) != 0).astype(np.uint8))
    mask.CopyInformation(label)
    return mask


@pytest.fixture(scope="module")
def mni152(tmp_path_factory) -> Path:
    """The MNI152 T1 template nilearn ships: a brain MR without a tumour (an average of 152 healthy adults)."""
    datasets = pytest.importorskip("nilearn.datasets")
    import nibabel as nib

    path = tmp_path_factory.mktemp("mni") / "mni152_t1.nii.gz"
    nib.save(datasets.load_mni152_template(resolution=1), str(path))
    return path


def _npz_picture(tmp_path: Path, npz: Path, split: str, index: int, name: str) -> Path:
    image = np.load(npz)[f"{split}_images"][index]
    path = tmp_path / f"{name}.png"
    sitk.WriteImage(sitk.GetImageFromArray(image), str(path))
    return path


@pytest.mark.parametrize("case", ["brain1", "brain2"])
def test_brain_model_names_a_tumour_type_finds_the_tumour_slices_and_scores_its_heatmap(radiomics, case):
    """A tumour type (not "out-of-domain") for both tumour MRs; for brain1 the slices said to carry the finding include
    its tumour slices; the heatmap's localisation, measured per tumour slice, is what the model card reports (the card's figures
    are reproducible from the command line). The issue's bar of the peak inside the tumour on 80 % of slices is NOT
    met by this model (the card and the README say so); this test pins the measurement, not the bar."""
    package = load_package(BRAIN)
    result = classify_scan(radiomics / f"{case}_image.nrrd", package, lesion=_lesion(radiomics / f"{case}_label.nrrd"),
                           uncertainty="none")
    assert result.decision["top_class"] in TUMOUR_TYPES and result.label != OUT_OF_DOMAIN
    per_slice = result.explain["localisation"]["per_slice"]
    recorded = package.meta["localisation"][case]
    assert per_slice["slices"] == recorded["slices_with_lesion"] >= 1
    assert per_slice["pointing_hits"] == recorded["pointing_hits"]
    assert per_slice["mean_mass_inside"] == pytest.approx(recorded["mean_mass_inside"], abs=1e-3)
    # why the peak misses: filling the tumour with brain tissue moves the glioma probability little (1.3.0, measured
    # 2026-12-05: brain1 +0.025 over 7 slices, brain2 -0.009 over its 3 voting tumour slices; the same fill elsewhere
    # -0.004 and -0.000; 1.2.0: +0.058 and -0.013)
    reliance = result.explain["localisation"]["lesion_reliance"]
    assert reliance["images"] == per_slice["slices"]
    assert reliance["drop_lesion"] == pytest.approx(recorded["drop_lesion_filled"], abs=1e-3)
    assert reliance["drop_lesion"] == pytest.approx({"brain1": 0.025, "brain2": -0.009}[case], abs=0.01)
    finding = result.finding
    assert finding is not None and finding["label"] == result.decision["top_class"]
    # no "normal" class: the run is where the model reads that tumour type, and the record says it is no extent
    assert finding["extent"] is False and "not the extent of a lesion" in finding["caveat"]
    # the JSON's regions hold the printed run (brain1 printed 10-23 while regions read glioma 1-23)
    assert {"label": finding["label"], "first": finding["first_index"], "last": finding["last_index"],
            "slices": finding["slices"]} in result.decision["regions"]
    if case == "brain1":  # brain2's run of glioma slices (11-17) lies just above its small tumour (slices 8-10)
        assert set(per_slice["slice_indices"]) & set(range(finding["first_index"], finding["last_index"] + 1))


def test_heat_never_sits_in_the_air_around_the_head(radiomics):
    result = classify_scan(radiomics / "brain1_image.nrrd", load_package(BRAIN), uncertainty="none",
                           keep_image=True)
    scan = sitk.GetArrayViewFromImage(result.image).astype(np.float32)
    heat = sitk.GetArrayViewFromImage(result.heatmap)
    # the air around the head: outside the hole-filled head outline (dark ventricles inside it are not air), with
    # a 3-voxel margin for the outline's interpolated rim
    head = np.stack([sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.GetImageFromArray(
        (z > np.percentile(scan, 40)).astype(np.uint8)))) for z in scan]).astype(bool)
    air = sitk.GetArrayFromImage(sitk.BinaryErode(sitk.GetImageFromArray((~head).astype(np.uint8)), [3, 3, 0]))
    assert air.sum() > 0.2 * air.size and heat[air.astype(bool)].max() == 0.0


def test_heat_inset_keeps_the_heatmap_off_scalp_and_skull(radiomics, tmp_path):
    """``explain.heat_inset_mm``: heat is cleared within that distance of the head outline (here 10 mm, about the
    scalp and skull of brain1), measured on the scan grid with an outline found independently of the code."""
    import json
    import shutil

    package = load_package(BRAIN)
    copy = tmp_path / "catalog" / BRAIN / "9.9.9"
    shutil.copytree(package.path, copy)
    meta = json.loads((copy / "model.json").read_text())
    meta["version"] = "9.9.9"
    meta["explain"]["heat_inset_mm"] = 10.0
    (copy / "model.json").write_text(json.dumps(meta))
    result = classify_scan(radiomics / "brain1_image.nrrd", load_package(copy), uncertainty="none", keep_image=True,
                           faithfulness=False)
    scan = sitk.GetArrayViewFromImage(result.image).astype(np.float32)
    heat = sitk.GetArrayViewFromImage(result.heatmap)
    threshold = np.percentile(scan, 40)
    depth = []  # per axial slice: mm inside the hole-filled head outline (negative outside)
    for z in scan:
        head = sitk.BinaryFillhole(sitk.GetImageFromArray((z > threshold).astype(np.uint8)))
        head.SetSpacing(result.image.GetSpacing()[:2])
        depth.append(sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(head, insideIsPositive=True,
                                                                         squaredDistance=False,
                                                                         useImageSpacing=True)))
    depth = np.stack(depth)
    rim = (depth < 5.0)  # 10 mm less 5 mm for the two outlines' (about 4 mm apart) and the resampling's differences
    assert heat.max() > 0 and heat[rim].max() == 0.0
    assert heat[depth >= 12.0].max() > 0.5 * heat.max()  # the inside keeps its heat


def _working_slices(display: np.ndarray, threshold: float, whole_image_is_body: bool, spacing_mm: float):
    """A :class:`SliceInput` holding only working slices ``display`` ``(N, H, W)`` on a ``spacing_mm`` grid: what
    ``body_masks`` reads."""
    from MedDeepRecogLib.inference.model_input import ModelGrid, SliceInput

    n, h, w = display.shape
    grid = ModelGrid(np.zeros(3), np.array([spacing_mm, spacing_mm, 5.0]), np.eye(3), (w, h, n))
    return SliceInput(x=display[:, None], slice_index=np.arange(n), valid=np.ones(n, bool),
                      theta=np.zeros((n, 2, 3), np.float32), grid=grid, work_shape=(h, w), display=display,
                      foreground_threshold=threshold, whole_image_is_body=whole_image_is_body)


def test_body_masks_of_a_stack_equal_each_slice_on_its_own():
    """``body_masks`` closes and fills all slices in one mosaic; each slice must get exactly what SimpleITK gives it
    alone: rings (a hole), shapes open to the edge, foreground on the border, two blobs 3 px apart (closed into one),
    speckle and an empty slice."""
    from MedDeepRecogLib.inference.predict import body_masks

    rng = np.random.default_rng(0)
    y, x = np.mgrid[:64, :48]
    ring = (np.hypot(y - 30, x - 24) < 20) & (np.hypot(y - 30, x - 24) > 8)
    open_c = ring & ~((x > 24) & (abs(y - 30) < 4))
    edge = (x < 10) | (y > 58)
    blobs = (np.hypot(y - 20, x - 10) < 6) | (np.hypot(y - 20, x - 22) < 5.5)
    stack = np.stack([ring, open_c, edge, blobs, rng.random((64, 48)) > 0.8, np.zeros((64, 48), bool),
                      ring | edge]).astype(np.float32) * 0.9
    inp = _working_slices(stack, 0.5, False, 0.8)
    for inset in (0.0, 3.0):
        expected = []
        for sl in stack:
            fg = sitk.GetImageFromArray((sl > 0.5).astype(np.uint8))
            fg = sitk.BinaryFillhole(sitk.BinaryMorphologicalClosing(fg, [2, 2]))
            if inset:
                fg.SetSpacing((0.8, 0.8))
                fg = sitk.SignedMaurerDistanceMap(fg, insideIsPositive=True, squaredDistance=False,
                                                  useImageSpacing=True) >= inset
            expected.append(sitk.GetArrayFromImage(fg))
        got = body_masks(inp, inset)
        assert got.dtype == np.float32 and np.array_equal(got, np.stack(expected).astype(np.float32)), inset
    assert body_masks(inp)[0, 30, 24] == 1.0 and body_masks(inp)[1, 30, 24] == 0.0  # filled ring, open C


def test_on_ultrasound_dark_tissue_is_body_so_a_shadowed_lesion_keeps_its_heat(tmp_path):
    """An ultrasound image shows only tissue: a hypoechoic mass whose posterior shadow reaches the image edge is dark
    and open to the border, so an intensity threshold would call it background and clear the heat on the lesion.
    For an ultrasound package every pixel is body; CT and MR packages keep the threshold."""
    from PIL import Image

    from MedDeepRecogLib.inference.model_input import whole_image_is_body
    from MedDeepRecogLib.inference.predict import body_masks

    assert whole_image_is_body("US") and whole_image_is_body("us")
    assert not any(whole_image_is_body(m) for m in ("CT", "MR", None, ""))
    rng = np.random.default_rng(0)
    picture = np.clip(rng.normal(0.55, 0.12, (96, 96)), 0, 1).astype(np.float32)
    picture[40:, 35:60] = 0.01  # the mass and its shadow, down to the bottom edge
    for whole, body_there in ((False, 0.0), (True, 1.0)):
        inp = _working_slices(picture[None], 0.05, whole, 0.5)
        assert body_masks(inp)[0, 70, 47] == body_there
        assert inp.body(torch.from_numpy(picture))[70, 47].item() == bool(body_there)  # lesion reliance's body

    path = tmp_path / "us.png"
    Image.fromarray((picture * 255).astype(np.uint8)).save(path)
    breast = classify_scan(path, load_package(BREAST), uncertainty="none", faithfulness=False)
    assert breast.model_input.whole_image_is_body
    assert sitk.GetArrayViewFromImage(breast.heatmap)[0, 45:, 37:58].max() > 0  # the dark region keeps its heat
    brain = classify_scan(path, load_package(BRAIN), uncertainty="none", faithfulness=False)
    assert not brain.model_input.whole_image_is_body
    assert sitk.GetArrayViewFromImage(brain.heatmap)[0, 45:, 37:58].max() == 0


def test_heat_inset_must_be_a_distance():
    from MedDeepRecogLib.packages.package import validate_meta

    meta = json.loads((load_package(BRAIN).path / "model.json").read_text())
    for bad in (-1, "10", True, 1000):
        with pytest.raises(ModelPackageError, match="explain.heat_inset_mm"):
            validate_meta({**meta, "explain": {**meta["explain"], "heat_inset_mm": bad}})


def test_a_brain_mr_without_tumour_is_not_given_a_tumour_type(mni152):
    result = classify_scan(mni152, load_package(BRAIN), uncertainty="none", faithfulness=False)
    assert result.label == OUT_OF_DOMAIN, (result.label, result.decision)
    assert any(r.startswith("outside this model's domain: none of the ") and " slices checked looks like the images "
               in r for r in result.decision["reasons"]), result.decision["reasons"]


def test_a_chest_ct_given_to_the_brain_model_is_out_of_its_domain(shared_data):
    ct = shared_data / "totalsegmentator_examples" / "extra_ct" / "pulmonary_ct_cropped.nii.gz"
    result = classify_scan(ct, load_package(BRAIN), uncertainty="none", faithfulness=False)
    assert result.label == OUT_OF_DOMAIN
    assert any("the scan is CT in Hounsfield units" in r and "brain-tumour-mri reads MR images" in r
               for r in result.decision["reasons"]), result.decision["reasons"]


def test_a_ct_in_hounsfield_units_is_outside_an_mr_models_domain_even_where_its_slices_pass(radiomics):
    """The modality rule stands on its own: brain1 (an MR that passes the domain check) shifted into Hounsfield-like
    values (air at -1000) is refused by the MR model with the modality reason, and the unshifted MR is not."""
    mr = sitk.ReadImage(str(radiomics / "brain1_image.nrrd"), sitk.sitkFloat32)
    as_hu = mr - 1000.0
    as_hu.CopyInformation(mr)
    package = load_package(BRAIN)
    shifted = classify_scan(as_hu, package, uncertainty="none", faithfulness=False, explain="none")
    plain = classify_scan(mr, package, uncertainty="none", faithfulness=False, explain="none")
    # brain1 is named a tumour type, or "uncertain" by the package's low-confidence rule (1.3.1), never refused
    assert plain.label in {*TUMOUR_TYPES, "uncertain"} and shifted.label == OUT_OF_DOMAIN
    assert shifted.decision["domain"]["slices_in_domain"] > 0  # the intensities are standardised per slice
    assert any("Hounsfield units" in r for r in shifted.decision["reasons"])
    assert not any("Hounsfield units" in r for r in plain.decision["reasons"])


def test_a_brain_slice_given_to_the_lung_model_is_out_of_its_domain(shared_data, tmp_path):
    png = _npz_picture(tmp_path, shared_data / "brain_tumor_mri" / "brain_tumor_mri_trainval.npz", "val", 5, "brain")
    result = classify_scan(png, load_package(LUNG), uncertainty="none", faithfulness=False)
    assert result.label == OUT_OF_DOMAIN


def test_a_label_map_is_refused_not_classified(radiomics, run_cli_all, tmp_path):
    code, _, err = run_cli_all("classify", radiomics / "brain1_label.nrrd", "--model", BRAIN, "--out", tmp_path)
    assert code == 2 and "label map or mask" in err and "Traceback" not in err


def test_a_4d_series_is_refused_in_one_line_by_slice_models_and_the_router(run_cli_all, tmp_path):
    """A 4D file reached the slice models' plane-size check before any dimension check ("unexpected ValueError:
    cannot reshape array of size 16 into shape (3,3)"); now one line naming the file, as volume models give."""
    series = tmp_path / "series.nii.gz"
    four_d = np.random.default_rng(0).integers(0, 1000, (3, 20, 64, 64)).astype(np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(four_d, isVector=False), str(series))
    for argv in (["classify", series, "--model", BRAIN, "--out", tmp_path / "a"],
                 ["classify", series, "--model", "auto", "--out", tmp_path / "b"],
                 ["robustness", "--model", "body-region", "--input", series, "--out", tmp_path / "c"]):
        code, _, err = run_cli_all(*argv)
        assert code == 2 and f"{series}: a 3D volume is needed, but this image is 4D" in err, err
    assert not any((tmp_path / d).exists() for d in "abc")


def test_a_multi_organ_label_map_is_refused_not_classified(shared_data, run_cli_all, tmp_path):
    seg = shared_data / "totalsegmentator_examples" / "example_seg.nii.gz"  # 42 labels: lung-ct-cancer called it
    code, _, err = run_cli_all("classify", seg, "--model", LUNG, "--out", tmp_path / "out")  # malignant 0.98
    assert code == 2 and "label map or mask" in err and "42 distinct values" in err and str(seg) in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, npz, model", [
    ("lung", "lung_ct_iqothnccd/lung_ct_iqothnccd_trainval.npz", LUNG),
    ("breast", "breast_us_busi/breast_us_busi_trainval.npz", BREAST),
    ("brain", "brain_tumor_mri/brain_tumor_mri_trainval.npz", BRAIN)])
def test_validation_pictures_are_in_their_models_domain_and_routed_to_it(shared_data, tmp_path, name, npz, model):
    from MedDeepRecogLib.inference.route import route_image
    from MedDeepRecogLib.io import read_image

    z = np.load(shared_data / npz)
    labels = z["val_labels"]
    picks = [int(np.flatnonzero(labels == k)[len(np.flatnonzero(labels == k)) // 2]) for k in np.unique(labels)]
    routed = 0
    for i in picks:
        png = _npz_picture(tmp_path, shared_data / npz, "val", i, f"{name}{i}")
        route = route_image(read_image(png))
        routed += route.model == model
    assert routed >= len(picks) - 1, f"{name}: {routed} of {len(picks)} routed to {model}"


def test_router_sends_brain_mr_to_the_brain_model_and_says_why(radiomics, mni152):
    from MedDeepRecogLib.inference.route import route_image
    from MedDeepRecogLib.io import read_image

    for scan in (radiomics / "brain1_image.nrrd", mni152):
        route = route_image(read_image(scan))
        assert route.model == BRAIN, route
        assert route.evidence["modality"] == "MR" and route.evidence["body_region"] == "MRBrain"
        assert "MRBrain" in route.reason


def test_a_doubtful_route_gives_the_region_class_one_figure(monkeypatch):
    """MNI152 with --model auto read "confidence 0.55 in MRBrain is below the model's threshold 0.70), so MRBrain is
    only its nearest MR class (p=0.56)": body-region's confidence (the slices' plain mean) and its scan probability
    (a geometric mean) for one class. The route now gives that class the figure its doubt quotes, and the JSON
    evidence carries it beside the probability."""
    import SimpleITK as sitk
    from types import SimpleNamespace

    from MedDeepRecogLib.inference import classify as cl
    from MedDeepRecogLib.inference.route import _route_by_region

    doubt = "confidence 0.55 in MRBrain is below the model's threshold 0.70"
    probs = {"CTAbd": 0.05, "CTChest": 0.05, "CTHead": 0.1, "CXR": 0.04, "MRBrain": 0.5612, "MRBreast": 0.1988}
    region = SimpleNamespace(probability_map=lambda: probs, model={"id": "body-region", "version": "1.0.0"},
                             decision={"label": "uncertain", "top_class": "MRBrain", "confidence": 0.5523,
                                       "uncertain": True, "reasons": [doubt]})
    monkeypatch.setattr(cl, "classify_scan", lambda *a, **k: region)
    route = _route_by_region(sitk.Image(256, 256, 20, sitk.sitkFloat32), "cpu", "MR")
    assert route.model == BRAIN
    assert f"({doubt}), so MRBrain is only its nearest MR class (confidence 0.55)" in route.reason
    assert "p=0.56" not in route.reason
    assert route.evidence["body_region_confidence"] == 0.5523 and route.evidence["body_region_probability"] == 0.5612


def test_router_says_when_the_body_region_is_only_the_nearest_class(shared_data, radiomics):
    """An abdominal MR: the body-region model knows no MR region but brain and breast, so MRBrain comes out as the
    nearest at p 0.25; the route must say so (and leave the refusal to the brain model's domain check), while a
    brain MR's route states its region as recognised."""
    from MedDeepRecogLib.inference.route import route_image
    from MedDeepRecogLib.io import read_image

    weak = route_image(read_image(shared_data / "totalsegmentator_examples" / "example_mr_sm.nii.gz"))
    assert weak.evidence["body_region_evidence"] == "weak" and weak.evidence["body_region_probability"] < 0.5
    assert "body-region calls the scan uncertain" in weak.reason and "only its nearest MR class" in weak.reason
    assert "out-of-domain check decides" in weak.reason
    strong = route_image(read_image(radiomics / "brain1_image.nrrd"))
    assert strong.evidence["body_region_evidence"] == "strong" and "of region MRBrain" in strong.reason
    # a breast MR crop 30 mm across: body-region's top class is MRBrain at p 1.00, but body-region itself calls the
    # scan uncertain; the route says that, not "region MRBrain"
    crop = route_image(read_image(radiomics / "breast1_image.nrrd"))
    assert crop.model is None and "nearest body-region class is MRBrain" in crop.reason
    assert "body-region calls it uncertain: the scan shows only 30 mm across" in crop.reason
    assert "of region MRBrain" not in crop.reason and crop.evidence["body_region_doubts"]


def test_an_out_of_domain_scan_is_printed_without_a_class_or_its_confidence(mni152, run_cli_all, tmp_path):
    """The MNI152 template (no tumour): the printed line, like the label, names no tumour type and no confidence;
    the JSON keeps the network's own output for researchers, marked by the label."""
    code, out, err = run_cli_all("classify", mni152, "--model", BRAIN, "--out", tmp_path / "out", "--progress", "none",
                                 "--no-faithfulness", "--explain", "none")
    assert code == 0, err
    headline = out.splitlines()[0].split(" [")[0]  # the reasons in brackets quote the model's description
    assert headline.endswith("out-of-domain: no class reported") and not any(t in headline for t in TUMOUR_TYPES)
    assert "the model's output, not a finding" in out and "confidence = mean" not in out and " on axial slices " not in out
    record = json.loads((tmp_path / "out" / "mni152_t1.json").read_text())
    assert record["label"] == OUT_OF_DOMAIN and record["top_class"] in TUMOUR_TYPES and "finding" not in record


def test_an_out_of_domain_scans_heatmap_picture_says_its_class_is_no_finding(radiomics, run_cli_all, tmp_path,
                                                                             monkeypatch):
    """A brain MR given to the lung CT model is outside its domain: the heatmap PNG's title names the network's top
    class as what it is, not as "heatmap for <class>" as if it were the finding."""
    from MedDeepRecogLib.explain import overlay

    titles = []
    real = overlay.planes_png
    monkeypatch.setattr(overlay, "planes_png", lambda *a, **kw: (titles.append(kw.get("title")), real(*a, **kw))[1])
    code, out, err = run_cli_all("classify", radiomics / "brain1_image.nrrd", "--model", "lung-ct-cancer", "--out",
                                 tmp_path / "out", "--progress", "none", "--no-faithfulness")
    assert code == 0, err
    record = json.loads((tmp_path / "out" / "brain1_image.json").read_text())
    assert record["label"] == OUT_OF_DOMAIN
    assert len(titles) == 1 and "heatmap for the network's top class" in titles[0]
    assert "the model's output, not a finding" in titles[0]


def test_router_says_plainly_when_no_disease_model_covers_a_scan(shared_data):
    from MedDeepRecogLib.inference.route import route_image
    from MedDeepRecogLib.io import read_image
    from MedDeepRecogLib.resources import sample_path

    route = route_image(read_image(sample_path("abdomen_ct.nii.gz")))
    assert route.model is None and "no bundled disease model" in route.reason


def test_auto_never_routes_to_a_model_that_would_refuse_the_scan(radiomics, run_cli_all, tmp_path):
    """The pyradiomics breast MR crop (45 x 120 pixels) reads as MR of region MRBrain, but the brain model needs
    at least 64 pixels a side: --model auto says no bundled model applies, and why, instead of an error about a
    model the user never chose. With --verbose the traceback is shown and the exit code stays 2."""
    scan = radiomics / "breast1_image.nrrd"
    code, _, err = run_cli_all("classify", scan, "--model", "auto", "--out", tmp_path / "out", "--progress", "none")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "no bundled model applies" in err and "would go to brain-tumour-mri" in err
    assert "45 x 120 pixels, too small for it" in err and "breast1_image.nrrd" in err
    assert not (tmp_path / "out").exists()
    code, _, err = run_cli_all("-v", "classify", scan, "--model", "auto", "--out", tmp_path / "out", "--progress",
                               "none")
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("meddeeprecog classify: error:")


def test_classify_auto_records_the_route_in_the_json(radiomics, run_cli_all, tmp_path):
    code, out, err = run_cli_all("classify", radiomics / "brain2_image.nrrd", "--model", "auto", "--out", tmp_path,
                                 "--progress", "none", "--no-faithfulness")
    assert code == 0, err
    record = json.loads((tmp_path / "brain2_image.json").read_text())
    assert record["model"]["id"] == BRAIN and record["route"]["model"] == BRAIN
    assert "chosen" in out
    # the scan is read once for routing and classifying, and still named by its file
    assert Path(record["input"]) == radiomics / "brain2_image.nrrd"


@pytest.mark.parametrize("model_id", [BRAIN, LUNG, BREAST])
def test_bundled_disease_package_reproduces_its_validation_figures(shared_data, model_id):
    """``evaluate`` on the val split gives the figures recorded in model.json (the val split was never used for
    training or checkpoint selection)."""
    from MedDeepRecogLib.training.evaluate import evaluate_package

    package = load_package(model_id)
    recorded = package.meta["metrics"]
    assert "val split unseen" in recorded["selected_by"]
    data = Path(package.meta["provenance"]["data"])  # ../shared/data/<set>/<file>.npz when trained
    figures = evaluate_package(package, shared_data / data.parent.name / data.name, split="val")
    assert figures["accuracy"] == pytest.approx(recorded["accuracy"], abs=1e-6)
    assert figures["balanced_accuracy"] == pytest.approx(recorded["balanced_accuracy"], abs=1e-6)


def test_demo_routes_the_brain_mr_to_the_brain_model_and_scores_its_heatmap(tmp_path, capsys):
    from MedDeepRecogLib.cli import main

    assert main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    record = json.loads((tmp_path / "brain1_mr.json").read_text(encoding="utf-8"))
    assert record["model"]["id"] == BRAIN and record["route"]["model"] == BRAIN
    assert record["top_class"] in TUMOUR_TYPES and record["finding"]["from_mm"] is not None
    assert record["explain"]["localisation"]["per_slice"]["slices"] == 7  # brain1's tumour spans 7 slices
    assert (tmp_path / "brain1_mr_heatmap.png").stat().st_size > 10_000
    assert "brain1_mr.nrrd: " in out and "abdomen_ct.nii.gz: " in out and "no bundled disease model" in out


def test_low_confidence_does_not_turn_out_of_domain_into_uncertain(shared_data, monkeypatch):
    """A calibrated low-confidence flag adds its reason, but "outside the domain" stays the label: it says more."""
    from MedDeepRecogLib.inference import trust

    def low_confidence(*_args, **_kwargs):
        return {"low_confidence": True, "predictive_entropy": 0.9, "low_confidence_threshold": 0.5}

    monkeypatch.setattr(trust, "scan_uncertainty", low_confidence)
    ct = shared_data / "totalsegmentator_examples" / "extra_ct" / "pulmonary_ct_cropped.nii.gz"
    result = classify_scan(ct, load_package(BRAIN), faithfulness=False, explain="none")
    assert result.label == OUT_OF_DOMAIN and result.decision["uncertain"]
    assert any(r.startswith("predictive entropy 0.90") for r in result.decision["reasons"])


@pytest.mark.parametrize("model_id, version, parent", [(BRAIN, "1.3.1", "1.3.0"), (LUNG, "1.2.2", "1.2.1"),
                                                       (BREAST, "1.5.2", "1.5.1")])
def test_bundled_disease_packages_carry_a_low_confidence_threshold_tuned_on_val(model_id, version, parent):
    """The version ``--model ID`` picks holds a low-confidence threshold fitted on val without a temperature (the
    probabilities stay the network's), and its card says the threshold's figures are tuned on val, not held out."""
    package = load_package(model_id)
    assert package.version == version and package.meta["provenance"]["parent"] == f"{model_id}@{parent}"
    cal = package.meta["calibration"]
    assert "temperature" not in cal and 0.0 < cal["low_confidence_threshold"] < 1.0
    assert cal["fit_split"] == "val" and cal["same_split"] is True and "not held-out" in cal["note"]
    assert cal["figures"]["n"] == package.meta["metrics"]["n"] and cal["figures"]["uncertain"] > 0
    assert "; fitted after training: the low-confidence threshold (val)" in package.meta["metrics"]["selected_by"]
    card = (package.path / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert f"**{cal['low_confidence_threshold']:.3f}**" in card and "tuned on it, not held-out estimates" in card
    # same weights as the parent: the same network output
    a, b = package.build_model().state_dict(), load_package(f"{model_id}@{parent}").build_model().state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_breast_val_image_the_threshold_was_fitted_on_is_reported_uncertain(shared_data, tmp_path):
    """breast-us-lesion 1.5.2's threshold was fitted on val image 62 (Youden's J picks an observed entropy): read
    as a PNG, classify computes its entropy a hair lower (0.7498399 against calibrate's 0.7498402), so a threshold
    written on that image (0.74984) left it out and classify reported 26 uncertain where the package says 27. The
    threshold lies below it now, and the image counts among the package's uncertain as classify reports it."""
    npz = shared_data / "breast_us_busi" / "breast_us_busi_trainval.npz"
    package = load_package(BREAST)
    result = classify_scan(_npz_picture(tmp_path, npz, "val", 62, "val62"), package, faithfulness=False,
                           explain="none")
    u = result.uncertainty
    assert u["predictive_entropy"] == pytest.approx(0.74984, abs=1e-6)
    assert u["low_confidence"] is True and result.label == "uncertain"
    assert package.meta["calibration"]["figures"]["uncertain"] == 27


def test_a_breast_val_image_above_the_threshold_is_reported_uncertain(shared_data, run_cli_all, tmp_path):
    """Three BUSI val images as PNG through breast-us-lesion (1.5.2): one called malignant at 0.55 (a benign lesion;
    normalised entropy 0.91) is reported uncertain on the command line, in the JSON, the HTML report and the Slicer
    panel's text, where 1.5.1 (no threshold) named it malignant; a confident malignant call stays malignant; an
    image outside the domain stays out-of-domain (its entropy is above the threshold too)."""
    from MedDeepRecogLib.slicer_bridge.outputs import read_classify_result

    npz = shared_data / "breast_us_busi" / "breast_us_busi_trainval.npz"
    spread, sure, outside = (_npz_picture(tmp_path, npz, "val", i, f"val{i}") for i in (22, 51, 14))
    threshold = load_package(BREAST).meta["calibration"]["low_confidence_threshold"]
    code, out, err = run_cli_all("classify", spread, sure, outside, "--model", BREAST, "--out", tmp_path / "out",
                                 "--progress", "none", "--no-faithfulness", "--explain", "none", "--report")
    assert code == 0, err
    records = {p.stem: json.loads((tmp_path / "out" / f"{p.stem}.json").read_text()) for p in (spread, sure, outside)}
    rec = records["val22"]
    assert rec["model"]["version"] == "1.5.2"
    assert rec["label"] == "uncertain" and rec["top_class"] == "malignant" and rec["confidence"] == pytest.approx(
        0.545, abs=0.01)
    assert rec["uncertainty"]["predictive_entropy"] >= threshold and rec["uncertainty"]["low_confidence"] is True
    assert rec["uncertainty"]["calibrated"] is False  # the network's own probabilities
    assert any(f"low-confidence threshold {threshold:.2f}" in r for r in rec["uncertain_reasons"])
    line = next(ln for ln in out.splitlines() if ln.startswith(str(spread)))
    assert "uncertain (top class malignant, confidence 0.55)" in line
    report = (tmp_path / "out" / "val22_report.html").read_text(encoding="utf-8")
    assert "so the label is reported as uncertain" in report
    assert "<b>uncertain</b>: most likely malignant" in read_classify_result(tmp_path / "out", spread).result_text()
    assert records["val51"]["label"] == "malignant" and records["val51"]["uncertainty"]["low_confidence"] is False
    assert records["val14"]["label"] == OUT_OF_DOMAIN and records["val14"]["uncertainty"]["low_confidence"] is True
    # the parent, without a threshold, named the class
    code, out, err = run_cli_all("classify", spread, "--model", f"{BREAST}@1.5.1", "--out", tmp_path / "old",
                                 "--progress", "none", "--no-faithfulness", "--explain", "none")
    assert code == 0 and json.loads((tmp_path / "old" / "val22.json").read_text())["label"] == "malignant", err


def test_breast_low_confidence_threshold_is_reproduced_by_its_card_command(shared_data, tmp_path):
    """The card's calibrate command, run again on 1.5.1, gives the bundled 1.5.2's threshold and figures."""
    from MedDeepRecogLib.inference.calibrate import calibrate_package

    bundled = load_package(f"{BREAST}@1.5.2").meta["calibration"]
    assert bundled["command"].startswith(f"meddeeprecog calibrate --model {BREAST}@1.5.1 ")
    result = calibrate_package(f"{BREAST}@1.5.1", shared_data / "breast_us_busi" / "breast_us_busi_trainval.npz",
                               split="val", dest=tmp_path, version="1.5.90", temperature=False, low_confidence=True,
                               command="test")
    assert result["calibration"]["low_confidence_threshold"] == pytest.approx(bundled["low_confidence_threshold"],
                                                                              abs=1e-5)
    assert result["calibration"]["figures"] == bundled["figures"]


def test_a_normal_label_is_no_finding_and_a_model_with_a_normal_class_reports_an_extent():
    from MedDeepRecogLib.inference.classify import finding_range

    per_slice = [{"index": k, "label": lab, "probability": 0.8, "position_mm": 2.5 * k}
                 for k, lab in enumerate(["normal", "malignant", "malignant", "normal", "malignant"])]
    lung = ["normal", "benign", "malignant"]
    assert finding_range(per_slice, {"label": "normal", "top_class": "normal"}, lung) is None
    run = finding_range(per_slice, {"label": "malignant", "top_class": "malignant"}, lung)
    assert (run["first_index"], run["last_index"], run["from_mm"], run["to_mm"]) == (1, 2, 2.5, 5.0)
    assert run["extent"] is True and "caveat" not in run and run["slices_with_label"] == 3
