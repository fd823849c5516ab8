"""Multi-modal fusion: one grid (resampling, rigid registration, overlap check), early / late fusion models
with a missing modality, and the manifest data path. All data here are constructed (no paired real data)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from frontier_helpers import blob_data
from MedDeepRecogLib.errors import ConfigError, InputImageError, ModelPackageError
from MedDeepRecogLib.explain.gradcam import resolve_layers
from MedDeepRecogLib.fusion import (align_modalities, check_modalities, load_case, overlap_fraction, read_manifest,
                                    stack_arrays)
from MedDeepRecogLib.io import same_geometry
from MedDeepRecogLib.models import build_model, default_target_layer


def _phantom(size=(40, 40, 40), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), weights=(100.0, 250.0)) -> sitk.Image:
    """Physical-space phantom: an off-centre ellipsoid and a small sphere, sampled on the given grid (mm).

    ``weights`` are the two structures' intensities above a background of 10 (another modality = other weights).
    """
    img = sitk.Image(size, sitk.sitkFloat32)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), -1).reshape(-1, 3)
    pts = np.asarray(origin) + idx * np.asarray(spacing)
    e = ((pts[:, 0] - 18) / 12) ** 2 + ((pts[:, 1] - 20) / 8) ** 2 + ((pts[:, 2] - 22) / 10) ** 2 < 1
    s = ((pts - np.array([28.0, 14.0, 16.0])) ** 2).sum(1) < 16
    vals = weights[0] * e + weights[1] * s + 10
    arr = vals.reshape(size).transpose(2, 1, 0).astype(np.float32)
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    return out


def _ncc(a: sitk.Image, b: sitk.Image) -> float:
    x, y = sitk.GetArrayFromImage(a).ravel(), sitk.GetArrayFromImage(b).ravel()
    return float(np.corrcoef(x, y)[0, 1])


def test_modalities_resampled_onto_reference_grid():
    ct = _phantom()
    mr = _phantom(size=(20, 20, 27), spacing=(2.0, 2.0, 1.5), weights=(300.0, 40.0))  # other grid, other contrast
    out = align_modalities({"CT": ct, "MR": mr}, "CT")
    assert set(out) == {"CT", "MR"}
    assert same_geometry(out["MR"], ct)
    assert abs(_ncc(out["MR"], ct)) > 0.8  # same anatomy in physical space
    assert out["MR"].GetPixelID() == sitk.sitkFloat32


def test_non_overlapping_modalities_are_refused():
    ct = _phantom()
    far = _phantom(origin=(500.0, 0.0, 0.0))
    assert overlap_fraction(ct, far) == 0.0
    with pytest.raises(InputImageError, match="do not overlap"):
        align_modalities({"CT": ct, "MR": far})
    with pytest.raises(InputImageError, match="reference modality"):
        align_modalities({"CT": ct}, "PET")


def test_rigid_registration_realigns_a_moved_modality():
    fixed = _phantom()
    t = sitk.Euler3DTransform((20.0, 20.0, 20.0), 0.0, 0.0, np.deg2rad(6.0), (3.0, -2.0, 1.5))
    moving = sitk.Resample(_phantom(weights=(250.0, 60.0)), fixed, t, sitk.sitkLinear, 10.0)
    plain = align_modalities({"A": fixed, "B": moving})["B"]
    registered = align_modalities({"A": fixed, "B": moving}, register=True)["B"]
    assert abs(_ncc(registered, fixed)) > abs(_ncc(plain, fixed)) + 0.1
    assert abs(_ncc(registered, fixed)) > 0.85


def test_arrays_without_geometry_must_match():
    with pytest.raises(InputImageError, match="no geometry to align them"):
        stack_arrays({"T1": np.zeros((4, 5, 6)), "T2": np.zeros((4, 5, 7))})
    assert stack_arrays({"T1": np.zeros((4, 5, 6)), "T2": np.ones((4, 5, 6))}).shape == (2, 4, 5, 6)


def _two_modality_data(n, seed):
    """Modality A: bright cube (class 1); modality B: the same cube, dark, on a bright noisy background."""
    x, y, masks = blob_data(n, seed=seed)
    b = 1.0 - x + 0.2 * torch.rand(x.shape, generator=torch.Generator().manual_seed(seed))
    return torch.cat([x, b.clamp(0, 1)], dim=1), y


@pytest.fixture(scope="module")
def late_model():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model("late_fusion3d", in_channels=2, num_classes=2, feature_dim=8, modality_dropout=0.3,
                        encoder_kwargs={"channels": [4, 8], "hidden": 16, "dropout": 0.0})
    x, y = _two_modality_data(96, 1)
    # Train until a convergence check, not for a fixed number of steps: 100 steps from one seed reached 100 % on
    # one CPU and stayed at chance on another (floating-point order differs between machines). Every 25 steps the
    # model must classify the training set from each modality alone and from both; up to 2,000 steps.
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for step in range(1, 2001):
        model.train()
        idx = torch.randint(0, len(x), (16,), generator=g)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
        if step % 25 == 0 and _train_accuracies(model.eval(), x, y) >= 0.97:
            break
    return model.eval()


def _train_accuracies(model, x, y) -> float:
    """The lowest training accuracy over: both modalities, A alone, B alone (the other one missing)."""
    accs = []
    with torch.no_grad():
        for missing in (None, 1, 0):
            xi = x.clone()
            if missing is not None:
                xi[:, missing] = float("nan")
            accs.append((model(xi).argmax(1) == y).float().mean().item())
    return min(accs)


def test_late_fusion_degrades_gracefully_with_a_missing_modality(late_model):
    x, y = _two_modality_data(48, 9)
    with torch.no_grad():
        both = (late_model(x).argmax(1) == y).float().mean().item()
        only_a, only_b = x.clone(), x.clone()
        only_a[:, 1] = float("nan")
        only_b[:, 0] = float("nan")
        acc_a = (late_model(only_a).argmax(1) == y).float().mean().item()
        acc_b = (late_model(only_b).argmax(1) == y).float().mean().item()
        assert torch.isfinite(late_model(only_a)).all()
    assert both >= 0.9
    assert acc_a >= 0.75 and acc_b >= 0.75
    none = x.clone()
    none[:1] = float("nan")
    with pytest.raises(ModelPackageError, match="no modality"):
        late_model(none)


def test_early_fusion_refuses_a_missing_modality_and_registry_entries():
    model = build_model("early_fusion3d", in_channels=2, num_classes=2, backbone_kwargs={"channels": [4, 8]})
    x = torch.rand(2, 2, 16, 16, 16)
    assert model.eval()(x).shape == (2, 2)
    x[1, 0] = float("nan")
    with pytest.raises(ModelPackageError, match="needs all 2 modalities"):
        model(x)
    with pytest.raises(ModelPackageError, match="3 modalities"):
        build_model("early_fusion3d", in_channels=3)(torch.rand(1, 2, 8, 8, 8))
    assert default_target_layer("early_fusion3d", backbone_kwargs={"channels": [4, 8]}) == "net.features.conv2"
    layer = default_target_layer("late_fusion3d", encoder_kwargs={"channels": [4, 8]})
    assert layer == "encoders.*.features.conv2"
    assert len(resolve_layers(build_model("late_fusion3d"), default_target_layer("late_fusion3d"))) == 2
    check_modalities(["CT", "MR"], ["CT"], tolerant=True)
    with pytest.raises(InputImageError, match="missing"):
        check_modalities(["CT", "MR"], ["CT"], tolerant=False)
    with pytest.raises(InputImageError, match="none of the model's modalities"):
        check_modalities(["CT", "MR"], ["PET"], tolerant=True)


def test_manifest_with_a_missing_modality(tmp_path):
    sitk.WriteImage(_phantom(), str(tmp_path / "p1_ct.nii.gz"))
    sitk.WriteImage(_phantom(size=(20, 20, 20), spacing=(2.0, 2.0, 2.0), weights=(50.0, 300.0)),
                    str(tmp_path / "p1_mr.nii.gz"))
    sitk.WriteImage(_phantom(), str(tmp_path / "p2_ct.nii.gz"))
    (tmp_path / "m.csv").write_text("case,CT,MR,label\np1,p1_ct.nii.gz,p1_mr.nii.gz,mass\np2,p2_ct.nii.gz,,normal\n", encoding="utf-8")
    mods, cases = read_manifest(tmp_path / "m.csv")
    assert mods == ["CT", "MR"] and [c.case for c in cases] == ["p1", "p2"]
    assert cases[1].paths["MR"] is None and cases[1].label == "normal"
    spec = {"kind": "volume3d", "size": [12, 12, 12], "channels": 2}
    x1 = load_case(cases[0], spec)
    assert x1.shape == (2, 12, 12, 12) and np.isfinite(x1).all() and 0 <= x1.min() and x1.max() <= 1
    x2 = load_case(cases[1], spec)
    assert np.isfinite(x2[0]).all() and np.isnan(x2[1]).all()
    from MedDeepRecogLib.fusion import manifest_to_npz

    npz = np.load(manifest_to_npz(tmp_path / "m.csv", tmp_path / "m.npz", size=[8, 8, 8], val_cases=["p2"]))
    assert npz["train_images"].shape == (1, 2, 8, 8, 8) and npz["val_images"].shape == (1, 2, 8, 8, 8)
    assert list(npz["class_names"]) == ["mass", "normal"] and list(npz["modalities"]) == ["CT", "MR"]
    assert npz["train_labels"].ravel().tolist() == [0] and np.isnan(npz["val_images"][0, 1]).all()
    (tmp_path / "bad.csv").write_text("case,CT,label\np1,missing.nii.gz,mass\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="does not exist"):
        read_manifest(tmp_path / "bad.csv")
    with pytest.raises(ConfigError, match="lacks modality"):
        read_manifest(tmp_path / "m.csv", ["CT", "FLAIR"])
    (tmp_path / "empty_row.csv").write_text("case,CT,MR,label\np1,,,mass\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="no modality given"):
        read_manifest(tmp_path / "empty_row.csv")


def test_classify_modalities_with_fusion_packages(late_model, tmp_path):
    from MedDeepRecogLib.fusion import classify_modalities
    from MedDeepRecogLib.packages import load_package, save_package

    def meta(name, kwargs, pkg_id):
        return {"id": pkg_id, "version": "1.0.0", "task": "classification", "description": "synthetic fusion test",
                "architecture": {"name": name, "kwargs": kwargs}, "class_names": ["normal", "mass"],
                "modality": "any", "input": {"kind": "volume3d", "size": [16, 16, 16], "spacing_mm": None,
                                             "channels": 2, "modalities": ["CT", "MR"], "pipeline": {"steps": []}},
                "provenance": {"data": "constructed", "command": "test", "seed": 0, "parent": None}}

    late_kwargs = {"in_channels": 2, "num_classes": 2, "feature_dim": 8, "modality_dropout": 0.3,
                   "encoder_kwargs": {"channels": [4, 8], "hidden": 16, "dropout": 0.0}}
    late = load_package(save_package(late_model, meta("late_fusion3d", late_kwargs, "late-test"), tmp_path / "c"))
    early_kwargs = {"in_channels": 2, "num_classes": 2, "backbone_kwargs": {"channels": [4, 8]}}
    early_net = build_model("early_fusion3d", **early_kwargs)
    early = load_package(save_package(early_net, meta("early_fusion3d", early_kwargs, "early-test"), tmp_path / "c"))
    x, y = _two_modality_data(4, 3)
    i = int(np.flatnonzero(y.numpy() == 1)[0])
    for m, name in enumerate(["ct", "mr"]):
        img = sitk.GetImageFromArray(x[i, m].numpy())
        sitk.WriteImage(img, str(tmp_path / f"{name}.nii.gz"))
    both = classify_modalities({"CT": tmp_path / "ct.nii.gz", "MR": tmp_path / "mr.nii.gz"}, late)
    only_ct = classify_modalities({"CT": tmp_path / "ct.nii.gz", "MR": None}, late)
    assert both["missing"] == [] and only_ct["missing"] == ["MR"] and only_ct["late_fusion"]
    assert both["label"] == "mass" and only_ct["label"] == "mass"
    assert sum(only_ct["probabilities"].values()) == pytest.approx(1.0)
    with pytest.raises(InputImageError, match=r"\['MR'\] is missing"):
        classify_modalities({"CT": tmp_path / "ct.nii.gz"}, early)
    assert classify_modalities({"CT": tmp_path / "ct.nii.gz", "MR": tmp_path / "mr.nii.gz"}, early)["missing"] == []


def test_late_fusion_gradcam_explains_every_present_modality():
    """The late-fusion target pattern covers each modality's encoder; a missing modality adds nothing, so the map
    with MR absent equals Grad-CAM of the CT encoder alone."""
    from MedDeepRecogLib.explain.gradcam import explained_forward

    torch.manual_seed(0)
    kw = {"feature_dim": 8, "encoder_kwargs": {"channels": [4, 8], "hidden": 16, "dropout": 0.0}}
    model = build_model("late_fusion3d", in_channels=2, num_classes=2, **kw).eval()
    layer = default_target_layer("late_fusion3d", **kw)
    assert [n for n, _ in resolve_layers(model, layer)] == ["encoders.0.features.conv2", "encoders.1.features.conv2"]
    x = torch.rand(2, 2, 16, 16, 16)
    both = explained_forward(model, x, layer, class_index=[1])
    only_ct = x.clone()
    only_ct[:, 1] = float("nan")
    with_gap = explained_forward(model, only_ct, layer, class_index=[1])
    ct_encoder = explained_forward(model, only_ct, "encoders.0.features.conv2", class_index=[1])
    assert both.maps.shape == (2, 8, 8, 8)
    assert torch.allclose(with_gap.maps, ct_encoder.maps, atol=1e-6)
    assert not torch.allclose(both.maps, ct_encoder.maps, atol=1e-3)


def _fusion_package(tmp_path, modalities, pkg_id):
    from MedDeepRecogLib.packages import load_package, save_package

    kwargs = {"in_channels": 2, "num_classes": 2, "feature_dim": 8, "modality_dropout": 0.3,
              "encoder_kwargs": {"channels": [4, 8], "hidden": 16, "dropout": 0.0}}
    torch.manual_seed(0)
    meta = {"id": pkg_id, "version": "1.0.0", "task": "classification", "description": "fusion test",
            "architecture": {"name": "late_fusion3d", "kwargs": kwargs}, "class_names": ["normal", "mass"],
            "modality": "any", "input": {"kind": "volume3d", "size": [16, 16, 16], "spacing_mm": None, "channels": 2,
                                         "modalities": list(modalities), "pipeline": {"steps": []}},
            "provenance": {"data": "constructed", "command": "test", "seed": 0, "parent": None}}
    return load_package(save_package(build_model("late_fusion3d", **kwargs), meta, tmp_path / "pk"))


def _noisy(img: sitk.Image, seed: int) -> sitk.Image:
    """``img`` with a little noise, so that the content check does not take the phantom for a label map."""
    arr = sitk.GetArrayFromImage(img) + np.random.default_rng(seed).normal(0, 3, img.GetSize()[::-1])
    out = sitk.GetImageFromArray(arr.astype(np.float32))
    out.CopyInformation(img)
    return out


def test_register_is_recorded_and_a_far_or_foreign_scan_is_refused(tmp_path):
    """--register records method, metric, transform and overlap after it (JSON and notes); a scan it cannot align
    (here 500 mm away: it would have to move implausibly far) is refused in
    one line naming both files, as is the plain non-overlapping pair."""
    from MedDeepRecogLib.fusion import classify_fusion

    fixed = _noisy(_phantom(), 1)
    t = sitk.Euler3DTransform((20.0, 20.0, 20.0), 0.0, 0.0, np.deg2rad(6.0), (3.0, -2.0, 1.5))
    moving = _noisy(sitk.Resample(_phantom(weights=(250.0, 60.0)), fixed, t, sitk.sitkLinear, 10.0), 2)
    far = _noisy(_phantom(origin=(500.0, 0.0, 0.0), weights=(250.0, 60.0)), 3)
    for name, img in (("ct", fixed), ("mr", moving), ("far", far)):
        sitk.WriteImage(img, str(tmp_path / f"{name}.nii.gz"))
    pkg = _fusion_package(tmp_path, ["CT", "MR"], "fuse-ctmr")
    res = classify_fusion(tmp_path / "ct.nii.gz", tmp_path / "mr.nii.gz", pkg, register=True)
    reg = res.to_json()["registration"]
    assert reg["used"] and reg["converged"] and reg["metric"] < 0 and len(reg["parameters"]) == 6
    assert reg["overlap"] >= 0.5 and 2.0 < reg["rotation_deg"] < 12.0 and reg["shift_norm_mm"] < 10.0
    assert any(n.startswith("--register") and "mr.nii.gz" in n and "Mattes MI" in n for n in res.input_notes)
    assert "registration" not in classify_fusion(tmp_path / "ct.nii.gz", tmp_path / "mr.nii.gz", pkg).to_json()
    with pytest.raises(InputImageError, match=r"far\.nii\.gz \(MR\).*ct\.nii\.gz \(CT\).*do not overlap") as exc:
        classify_fusion(tmp_path / "ct.nii.gz", tmp_path / "far.nii.gz", pkg)
    assert "\n" not in str(exc.value)
    with pytest.raises(InputImageError, match=r"--register could not align .*far\.nii\.gz \(MR\) to .*ct\.nii\.gz "
                                              r"\(CT\): .*implausibly far") as exc:
        classify_fusion(tmp_path / "ct.nii.gz", tmp_path / "far.nii.gz", pkg, register=True)
    assert "\n" not in str(exc.value)


def test_two_channels_of_one_modality(tmp_path):
    """A package with two MR channels (T1 + T2) takes two scans: the channels are keyed MR#1 and MR#2, not both
    'MR' (which collapsed them into one input)."""
    from MedDeepRecogLib.fusion import channel_keys, classify_fusion

    assert channel_keys(["MR", "MR"]) == ["MR#1", "MR#2"] and channel_keys(["CT", "MR"]) == ["CT", "MR"]
    sitk.WriteImage(_noisy(_phantom(), 1), str(tmp_path / "t1.nii.gz"))
    sitk.WriteImage(_noisy(_phantom(weights=(250.0, 60.0)), 2), str(tmp_path / "t2.nii.gz"))
    pkg = _fusion_package(tmp_path, ["MR", "MR"], "fuse-mrmr")
    out = classify_fusion(tmp_path / "t1.nii.gz", tmp_path / "t2.nii.gz", pkg).to_json()
    assert [i["modality"] for i in out["inputs"]] == ["MR", "MR"]
    assert [i["path"].rsplit("/", 1)[-1] for i in out["inputs"]] == ["t1.nii.gz", "t2.nii.gz"]
    assert out["explain"]["missing"] == [] and sum(out["probabilities"].values()) == pytest.approx(1.0)
