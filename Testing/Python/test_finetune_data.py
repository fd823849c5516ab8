"""Data from segments: manifests, pairing, class maps, geometry checks, ROI crops, case splits (no training)."""

from __future__ import annotations

import json
from pathlib import Path
import logging

import numpy as np
import pytest
import SimpleITK as sitk

from finetune_helpers import synthetic_case, synthetic_dataset
from MedDeepRecogLib.errors import ConfigError, MedDeepRecogError
from MedDeepRecogLib.finetune.manifest import (Case, dataset_fingerprint, load_cases, pair_folder,
                                               parse_class_map, read_manifest, split_by_case)
from MedDeepRecogLib.finetune.roi_crops import crops_to_arrays, segment_crops
from MedDeepRecogLib.inference.roi_classify import RoiSpec
from MedDeepRecogLib.finetune.segment_data import load_case, log_segment_summary, resolve_classes
from MedDeepRecogLib.io import write_image
from conftest import refusal_line


def test_class_map_parsing_and_globs():
    cm = parse_class_map("nodule-malignant=malignant, kidney_*=kidney,liver")
    assert cm.classes == ["malignant", "kidney", "liver"]
    assert cm.class_of("Nodule-Malignant") == "malignant"
    assert cm.class_of("kidney_left") == "kidney"
    assert cm.class_of("liver") == "liver"
    assert cm.class_of("spleen") is None
    assert parse_class_map(None).class_of("anything") == "anything"
    with pytest.raises(ConfigError):
        parse_class_map("=x")


def test_a_segment_name_mapped_twice_is_refused(tmp_path, capsys):
    """A dict keeps the last entry: ``liver,liver=spleen`` trained the liver's voxels as "spleen" without a word. A
    name given two classes (also in another case, or in a manifest's class map) is refused in one line naming it,
    before anything is written; the same entry twice maps one way and is kept."""
    from MedDeepRecogLib.cli import main

    for spec in ("liver,liver=spleen", "liver=a, Liver=b", {"liver": "a", "LIVER": "b"}):
        with pytest.raises(ConfigError, match="'(liver|Liver|LIVER)' is mapped twice"):
            parse_class_map(spec)
    assert parse_class_map("liver,liver").mapping == {"liver": "liver"}
    data = synthetic_dataset(tmp_path / "d", n=2, manifest=False)
    manifest = data / "manifest.json"
    manifest.write_text(json.dumps({"cases": [{"image": "case0.nii.gz", "segmentation": "case0.seg.nrrd"}],
                                    "class_map": {"organ_a": "a", "Organ_A": "b"}}), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"manifest.json: class_map: 'Organ_A' is mapped twice \(a, b\)"):
        read_manifest(manifest)
    manifest.unlink()
    rc = main(["finetune", "--task", "segment", "--base", "none", "--data", str(data), "--class-map",
               "organ_a,organ_a=organ_b", "--epochs", "1", "--dest", str(tmp_path / "cat"), "--work-dir",
               str(tmp_path / "w"), "--progress", "none"])
    assert rc == 2
    refusal_line(capsys, "--class-map: 'organ_a' is mapped twice (organ_a, organ_b)")
    assert not (tmp_path / "w").exists() and not (tmp_path / "cat").exists()


def test_manifest_json_csv_and_folder_pairs(tmp_path):
    synthetic_dataset(tmp_path / "d", n=2, manifest=False)
    cases = pair_folder(tmp_path / "d")
    assert [c.case_id for c in cases] == ["case0", "case1"]
    assert all(c.segmentation.name.endswith(".seg.nrrd") for c in cases)
    csv = tmp_path / "d" / "list.csv"
    csv.write_text("id,image,segmentation,label\na,case0.nii.gz,case0.seg.nrrd,benign\nb,case1.nii.gz,case1.seg.nrrd,\n", encoding="utf-8")
    cases, cm = load_cases(csv)
    assert [(c.case_id, c.label) for c in cases] == [("a", "benign"), ("b", None)] and cm is None
    (tmp_path / "d" / "manifest.json").write_text(json.dumps(
        {"class_map": {"organ_a": "A"}, "cases": [{"image": "case0.nii.gz", "segmentation": "case0.seg.nrrd"}]}))
    cases, cm = load_cases(tmp_path / "d")  # a folder's manifest wins over name pairing
    assert len(cases) == 1 and cm.classes == ["A"]


def test_no_pairs_and_missing_files_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "scan.nii.gz").write_bytes(b"x")
    with pytest.raises(MedDeepRecogError, match="no scan/segmentation pairs") as info:
        load_cases(tmp_path / "empty")
    assert "empty" in str(info.value) and "scan.nii.gz" in str(info.value)
    bad = tmp_path / "m.json"
    bad.write_text(json.dumps([{"id": "x1", "image": "nope.nii.gz", "segmentation": "nope.seg.nrrd"}]), encoding="utf-8")
    with pytest.raises(MedDeepRecogError, match="'x1'.*scan not found"):
        load_cases(bad)


def test_seg_nrrd_names_kept_unmapped_and_empty_reported(tmp_path):
    image, seg = synthetic_case(tmp_path, "c")
    item = load_case(Case("c", image, seg), parse_class_map("organ_a=A"))
    assert [s.name for s in item.segments] == ["organ_a", "organ_b"]
    assert [s.class_name for s in item.segments] == ["A", None]
    assert any("organ_b" in w and "'c'" in w for w in item.warnings)
    labels = item.class_labels(["A"])
    assert labels.shape == item.segment_map.shape and set(np.unique(labels)) == {0, 1}
    nothing = load_case(Case("c", image, seg), parse_class_map("spleen=S"))
    with pytest.raises(MedDeepRecogError, match="no segment maps to a class.*organ_a"):
        resolve_classes([nothing], parse_class_map("spleen=S"), tmp_path)


def test_overlapping_segments_are_refused_only_between_two_classes(tmp_path):
    """A layered .seg.nrrd (Slicer puts an overlapping segment in a new layer) was flattened without a word: the
    later segment took the shared voxels, so fine-tuning learnt labels the user never drew. Refused, naming the
    two segments, only where they map to two different classes: two segments of one class agree on a voxel, and a
    segment mapped to no class (a helper drawn over an organ) gives the voxels it covers back to the class segment
    under it. Both were refused with "a voxel can be of one class only"."""
    from MedDeepRecogLib.io import SegmentSpec, read_segmentation, write_segment_masks

    image, _ = synthetic_case(tmp_path, "c")
    reference = sitk.ReadImage(str(image))
    z, y, x = np.mgrid[:24, :32, :32]
    tumour = (x - 12) ** 2 + (y - 12) ** 2 + (z - 12) ** 2 < 30
    cyst = (x - 16) ** 2 + (y - 12) ** 2 + (z - 12) ** 2 < 20
    rim, edge, far = (x < 4) & (z < 6), (x < 3) & (z < 4), (x > 26) & (z > 18)
    seg = write_segment_masks([(SegmentSpec("tumor", 1), tumour), (SegmentSpec("cyst", 2), cyst),
                               (SegmentSpec("rim", 3), rim), (SegmentSpec("edge", 4), edge),
                               (SegmentSpec("far", 5), far)], reference, tmp_path / "layered.seg.nrrd")
    _, _, specs = read_segmentation(seg)
    shared = int((tumour & cyst).sum())
    assert shared and specs[1].overlaps == (("tumor", shared),) and specs[3].overlaps == (("rim", int(edge.sum())),)
    for mapping in ("tumor=lesion,cyst=cyst", None):   # two classes (each segment its own class without a map)
        rims = f", 'rim' and 'edge' in {int(edge.sum())} voxels" if mapping is None else ""
        with pytest.raises(MedDeepRecogError, match=f"segments overlap: 'tumor' and 'cyst' in {shared} voxels{rims}; "
                                                    "a voxel can be of one class only"):
            load_case(Case("c", image, seg), parse_class_map(mapping))
    # one class for both: their union is that class
    item = load_case(Case("c", image, seg), parse_class_map("tumor=lesion,cyst=lesion,far=F"))
    labels = item.class_labels(["lesion", "F"])
    assert np.array_equal(labels == 1, tumour | cyst) and np.array_equal(labels == 2, far)
    # the overlapping segment mapped to no class: the shared voxels stay the tumour's, and cyst is not "empty"
    item = load_case(Case("c", image, seg), parse_class_map("tumor=lesion,rim=R"))
    labels = item.class_labels(["lesion", "R"])
    assert np.array_equal(labels == 1, tumour) and np.array_equal(labels == 2, rim)
    assert [(s.name, s.class_name, s.voxels) for s in item.segments][:2] == [("tumor", "lesion", int(tumour.sum())),
                                                                             ("cyst", None, int(cyst.sum()))]
    assert not any("empty" in w for w in item.warnings)
    item = load_case(Case("c", image, seg), parse_class_map("far=F"))   # the overlapping ones map to nothing
    assert [s.class_name for s in item.segments] == [None, None, None, None, "F"]


def test_flipped_axis_segmentation_is_resampled_exactly(tmp_path, caplog):
    image_path, _ = synthetic_case(tmp_path, "c")
    image = sitk.ReadImage(str(image_path))
    labels = np.zeros(sitk.GetArrayViewFromImage(image).shape, np.uint8)
    labels[5:9, 3:7, 10:20] = 3
    # the same voxels stored with the y axis reversed (as example_seg_dicom is to its DICOM series)
    flipped = sitk.GetImageFromArray(labels[:, ::-1, :].copy())
    flipped.SetSpacing(image.GetSpacing())
    flipped.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))
    flipped.SetOrigin(image.TransformIndexToPhysicalPoint((0, image.GetSize()[1] - 1, 0)))
    seg_path = write_image(flipped, tmp_path / "c_flip_label.nrrd")
    item = load_case(Case("c", image_path, seg_path), parse_class_map(None))
    np.testing.assert_array_equal(item.segment_map > 0, labels > 0)
    assert not item.warnings  # same voxels: resampling loses nothing, no warning


def test_other_spacing_warns_and_disjoint_grid_is_refused(tmp_path):
    image_path, _ = synthetic_case(tmp_path, "c")
    image = sitk.ReadImage(str(image_path))
    lab = sitk.GetImageFromArray(np.pad(np.ones((4, 4, 4), np.uint8), 4))
    lab.SetSpacing((2.0, 2.0, 2.0))
    lab.SetOrigin(image.GetOrigin())
    path = write_image(lab, tmp_path / "coarse_label.nrrd")
    item = load_case(Case("c", image_path, path), parse_class_map(None))
    assert any("resampled" in w and "'c'" in w for w in item.warnings)
    assert item.segment_map.shape == sitk.GetArrayViewFromImage(image).shape and item.segment_map.any()
    lab.SetOrigin((900.0, 900.0, 900.0))
    far = write_image(lab, tmp_path / "far_label.nrrd")
    with pytest.raises(MedDeepRecogError, match="do not overlap"):
        load_case(Case("c", image_path, far), parse_class_map(None))


def test_roi_crops_center_mask_and_negatives(tmp_path):
    image, seg = synthetic_case(tmp_path, "c")
    item = load_case(Case("c", image, seg), parse_class_map(None))
    spec = RoiSpec((16, 16, 16), margin_mm=4.0, mask_channel=True)
    samples = segment_crops(item, ["organ_a", "organ_b", "background"], spec, negatives=3, seed=1)
    by_class = {s.class_name: s for s in samples}
    assert [s.class_name for s in samples].count("background") == 3
    for name in ("organ_a", "organ_b"):
        crop = by_class[name].array
        assert crop.shape == (2, 16, 16, 16)
        assert crop[1, 8, 8, 8] > 0.9  # mask channel: the segment sits in the centre
        assert crop[1].mean() < 0.9  # with a margin around it
    assert by_class["organ_a"].array[0, 8, 8, 8] > by_class["organ_b"].array[0, 8, 8, 8]  # bright vs dark
    for neg in (s for s in samples if s.class_name == "background"):
        assert neg.array[1].max() == 0
        idx = np.argwhere(item.segment_map > 0)
        pts = np.array([item.image.TransformIndexToPhysicalPoint([int(i) for i in p[::-1]]) for p in idx])
        # default distance: half the crop edge, and the edge is at least box + 2 * 4 mm margin
        assert np.min(np.linalg.norm(pts - np.array(neg.center_mm), axis=1)) >= 3.5
    x, y = crops_to_arrays(samples, ["organ_a", "organ_b", "background"])
    assert x.shape == (5, 2, 16, 16, 16) and y.tolist() == [0, 1, 2, 2, 2]


def test_split_by_case_and_fingerprint(tmp_path):
    synthetic_dataset(tmp_path / "d", n=4)
    cases, _ = load_cases(tmp_path / "d")
    train, val = split_by_case(cases, 0.25, seed=3)
    assert len(val) == 1 and not {c.case_id for c in train} & {c.case_id for c in val}
    train, val = split_by_case(cases, val_cases=["case2"])
    assert [c.case_id for c in val] == ["case2"]
    with pytest.raises(ConfigError, match="not in the data set"):
        split_by_case(cases, val_cases=["nope"])
    fp = dataset_fingerprint(cases, parse_class_map(None))
    assert fp == dataset_fingerprint(list(reversed(cases)), parse_class_map(None))
    assert fp != dataset_fingerprint(cases, parse_class_map("organ_a=A"))
    synthetic_case(tmp_path / "d", "case3", seed=99)
    assert fp != dataset_fingerprint(cases, parse_class_map(None))


def test_config_file_and_command_line_override(tmp_path):
    from MedDeepRecogLib.cli import build_parser
    from MedDeepRecogLib.commands.finetune import build_config
    from MedDeepRecogLib.finetune.config import FinetuneConfig

    cfg_file = tmp_path / "ft.yaml"
    cfg_file.write_text("finetune:\n  task: segment\n  data: data\n  class_map: {liver: liver}\n"
                        "  patch_size: [32, 32, 32]\n  training: {epochs: 7, grad_clip: 2.0}\n"
                        "  schedule: {warmup_epochs: 1}\n")
    args = build_parser().parse_args(["finetune", "--config", str(cfg_file), "--epochs", "3", "--freeze-encoder",
                                      "--val-slab", "10:20", "--base", "none", "--lr", "0.01"])
    cfg = build_config(args)
    assert cfg.training.epochs == 3 and cfg.freeze_encoder and cfg.val_slab == [10, 20]
    assert cfg.training.grad_clip == 2.0 and cfg.optimizer.lr == 0.01  # the file's and the option's, merged
    # a section given in part keeps fine-tuning's defaults for the rest
    assert cfg.schedule.name == "cosine" and cfg.schedule.warmup_epochs == 1
    assert cfg.training.batch_size == 8 and cfg.training.early_stopping_patience == 10
    assert cfg.data == str(tmp_path / "data") and cfg.patch_size == [32, 32, 32]
    assert cfg.class_map == {"liver": "liver"} and cfg.command.startswith("meddeeprecog ")
    with pytest.raises(ConfigError, match="unknown fine-tuning setting.*epoch"):
        FinetuneConfig.from_dict({"epoch": 3})
    with pytest.raises(ConfigError, match="task must be"):
        FinetuneConfig(task="detect", data="x").validate()


def test_finetune_shares_the_train_sections_with_its_own_defaults(tmp_path):
    """The schedule and gradient clip are settings (cosine and 5 by default), the epochs are validated once, with
    one default; an old top-level setting says where it lives now."""
    from MedDeepRecogLib.finetune.config import FinetuneConfig
    from MedDeepRecogLib.training.config import TrainingConfig
    from MedDeepRecogLib.training.sections import LoopConfig, ScheduleConfig

    cfg = FinetuneConfig.from_dict({"task": "segment", "data": "x"})
    assert isinstance(cfg.training, LoopConfig) and isinstance(cfg.schedule, ScheduleConfig)
    assert issubclass(TrainingConfig, LoopConfig)  # the train config's training section is the same type, extended
    assert (cfg.schedule.name, cfg.training.grad_clip, cfg.training.epochs) == ("cosine", 5.0, 20)
    cfg = FinetuneConfig.from_dict({"task": "segment", "data": "x", "schedule": {"name": "step"},
                                    "training": {"grad_clip": None}})
    assert cfg.schedule.name == "step" and cfg.training.grad_clip is None
    for bad, needle in (({"training": {"epochs": 0}}, "training/epochs"),
                        ({"training": {"epochs": "ten"}}, "training/epochs"),
                        ({"schedule": {"name": "exp"}}, "schedule/name"),
                        ({"optimizer": {"name": "lbfgs"}}, "optimizer/name"),
                        ({"training": {"device": "tpu"}}, "training/device"),
                        ({"epochs": 3}, "training/epochs")):
        with pytest.raises(ConfigError, match=needle):
            FinetuneConfig.from_dict({"task": "segment", "data": "x", **bad}, tmp_path / "ft.yaml")


def test_remove_small_components_keeps_large_objects_per_class():
    from MedDeepRecogLib.inference.segment import remove_small_components

    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:10, 2:10, 2:10] = 1          # 512 voxels
    labels[15:17, 15:17, 15:17] = 1       # 8-voxel speck of class 1
    labels[12:19, 1:8, 12:19] = 2         # 343 voxels
    labels[12:18, 12:18, 1:7] = 2         # a second large part of class 2 (like the other kidney): kept
    labels[0, 19, 0] = 2                  # a 1-voxel speck
    cleaned = remove_small_components(labels, 0.1)
    assert (cleaned == 1).sum() == 512 and (cleaned == 2).sum() == 343 + 216
    assert remove_small_components(labels, 0.0) is labels


def test_base_weights_load_where_shapes_match_and_head_restarts():
    import torch

    from MedDeepRecogLib.models.transfer import encoder_module_paths, head_module_name, load_matching_weights
    from MedDeepRecogLib.models import build_model

    torch.manual_seed(0)
    base = build_model("simple_cnn3d", in_channels=1, num_classes=2, channels=[4, 8], hidden=8)
    torch.manual_seed(1)
    new = build_model("simple_cnn3d", in_channels=1, num_classes=3, channels=[4, 8], hidden=8)
    loaded, fresh = load_matching_weights(new, base.state_dict())
    assert fresh == ["classifier.out.weight", "classifier.out.bias"]  # 3 classes: new head
    assert torch.equal(new.state_dict()["features.conv1.conv.weight"], base.state_dict()["features.conv1.conv.weight"])
    same_size = build_model("simple_cnn3d", in_channels=1, num_classes=2, channels=[4, 8], hidden=8)
    _, fresh = load_matching_weights(same_size, base.state_dict(), [head_module_name(same_size)])
    assert fresh == ["classifier.out.weight", "classifier.out.bias"]  # renamed classes: head restarts too
    unet = build_model("monai_unet", in_channels=1, num_classes=3, channels=[4, 8, 16], strides=[2, 2])
    paths = encoder_module_paths(unet, "monai_unet")
    assert "model.0" in paths and not any(p.startswith("model.2") for p in paths)


def test_unmapped_segments_logged_once_for_all_cases(tmp_path, caplog):
    """A class map that leaves a segment out gives one warning line for the data set, not one per case; each case's
    warning is still kept for the model card."""
    cases = []
    for name in ("c1", "c2", "c3"):
        image, seg = synthetic_case(tmp_path / name, name)
        cases.append(Case(name, image, seg))
    with caplog.at_level(logging.WARNING):
        loaded = [load_case(case, parse_class_map("organ_a=A")) for case in cases]
        assert not [r for r in caplog.records if "organ_b" in r.getMessage()]
        lines = log_segment_summary(loaded, tmp_path)
    assert all(any("organ_b" in w for w in item.warnings) for item in loaded)
    logged = [r.getMessage() for r in caplog.records if "organ_b" in r.getMessage()]
    assert logged == lines and len(lines) == 1
    assert "mapped to no class" in lines[0] and "organ_b (3 of 3 cases)" in lines[0] and str(tmp_path) in lines[0]


def test_a_class_of_the_class_map_with_no_voxels_is_refused_not_trained(tmp_path):
    """A --class-map class that no segment fills (a typo, or a segment left empty) would be a class of the new
    package whose output never trained: it is refused, naming the class and what the cases do hold."""
    image, seg = synthetic_case(tmp_path / "c1", "c1")
    loaded = [load_case(Case("c1", image, seg), parse_class_map("organ_a=A,tumour=T"))]
    with pytest.raises(MedDeepRecogError, match=r"class\(es\) T of --class-map have no voxels in any case "
                                                r"\(non-empty segments: organ_a, organ_b\)"):
        resolve_classes(loaded, parse_class_map("organ_a=A,tumour=T"), tmp_path)
    assert resolve_classes(loaded, parse_class_map("organ_a=A"), tmp_path) == ["A"]


def test_a_validation_slab_outside_the_volume_is_refused_as_written():
    """``--val-slab 30:40`` on a 30-slice volume: the refusal quotes 30:40, not the clipped 30:30. A slab reaching
    past the last slice (25:40) is refused too: it was clipped to 25:30 and scored there while the card said 25:40."""
    from MedDeepRecogLib.errors import ConfigError
    from MedDeepRecogLib.finetune.seg_training import SegVolume, split_slab

    labels = np.ones((1, 30, 8, 8), np.uint8)
    labels[:, 12:16] = 0
    volume = SegVolume("case", np.zeros((1, 30, 8, 8), np.float32), labels, (3.0,) * 3)
    # a slab with no labelled voxel scored nothing, and the package read "no validation data: not scored"
    with pytest.raises(ConfigError, match=r"--val-slab 12:16 holds no voxel of the classes learnt, so it would "
                                          "score nothing"):
        split_slab(volume, 12, 16)
    assert split_slab(volume, 11, 16)[1].score_z == (11, 16)
    with pytest.raises(ConfigError, match=r"--val-slab 30:40 is outside the volume's 30 slices \(0:30"):
        split_slab(volume, 30, 40)
    with pytest.raises(ConfigError, match=r"--val-slab 25:40 reaches beyond the volume's 30 slices \(0:30 at the "
                                          r"training spacing\): give a slab inside 0:30"):
        split_slab(volume, 25, 40)
    assert split_slab(volume, 0, 10)[1].score_z == (0, 10)
    with pytest.raises(ConfigError, match="--val-slab 2:28 leaves fewer than 4 slices of 30"):
        split_slab(volume, 2, 28)
    train, val = split_slab(volume, 20, 30)
    assert train.image.shape[1] == 18   # slices 0:18, two slices of gap before the slab
    assert val.image.shape[1] == 30 and val.score_z == (20, 30)   # predicted whole, as segment does; slab scored


@pytest.mark.parametrize("task, arch, example", [("classify", "simple_cnn2d", "simple_cnn3d"),
                                                 ("segment", "resnet2d", "monai_unet")])
def test_a_2d_architecture_from_scratch_is_refused_in_one_line(tmp_path, capsys, task, arch, example):
    """``--base none --arch <2D network>``: both tasks train on 3D crops, so a slice network is refused before
    anything is read (it failed with an internal error on the first batch), naming a 3D one to use."""
    from MedDeepRecogLib.cli import main

    code = main(["finetune", "--base", "none", "--arch", arch, "--task", task, "--data", str(tmp_path / "none.json"),
                 "--dest", str(tmp_path / "pkgs")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"--arch {arch} is a 2D (slice) network" in err and example in err
    assert not (tmp_path / "pkgs").exists()


def test_an_ensemble_base_gets_a_new_head_in_every_member_and_freezes_only_their_encoders(tmp_path):
    """Fine-tuning an ensemble to other classes (as many as the base's): each member's output layer restarts (not
    only the last member's, which left the others answering the new classes by position), its prior shift (fitted
    to the base's classes) is dropped, and --freeze-encoder freezes every member's body but none of the heads."""
    import torch

    from MedDeepRecogLib.finetune.base import build_from_base
    from MedDeepRecogLib.finetune.config import FinetuneConfig
    from MedDeepRecogLib.models.transfer import encoder_module_paths
    from MedDeepRecogLib.packages import load_package
    from tiny_test_package import make_tiny_package

    path = make_tiny_package(tmp_path / "cat", kind="ensemble3d")
    base = load_package(path)
    base.meta["architecture"]["kwargs"]["class_log_offsets"] = [0.5, -0.5, 0.0]
    cfg = FinetuneConfig.from_dict(dict(task="classify", data="x", freeze_encoder=True))
    torch.manual_seed(3)
    model, name, kwargs, report = build_from_base(cfg, base, 3, 1, ["cyst", "mass", "normal"])
    heads = [f"members.{i}.classifier.out.{p}" for i in range(3) for p in ("weight", "bias")]
    assert sorted(report["reinitialised"]) == sorted(heads)
    base_state = base.build_model("cpu").state_dict()
    for i in range(3):
        assert not torch.equal(model.state_dict()[f"members.{i}.classifier.out.weight"],
                               base_state[f"members.{i}.classifier.out.weight"])
    assert "class_log_offsets" not in kwargs and model.class_log_offsets is None
    frozen = encoder_module_paths(model, name)
    assert frozen and not any(p == f"members.{i}" or p.startswith(f"members.{i}.classifier.out")
                              for p in frozen for i in range(3))
    assert all(any(p.startswith(f"members.{i}.") for p in frozen) for i in range(3))
    # the same classes: every weight kept, the prior shift too
    _, _, kwargs, report = build_from_base(cfg, base, 3, 1, list(base.class_names))
    assert report["reinitialised"] == [] and kwargs["class_log_offsets"] == [0.5, -0.5, 0.0]


def _tiny_segmentation_base(dest) -> Path:
    """A seeded 3-class segmentation package (monai_unet with a residual final unit, as ts-organs-seg's)."""
    import torch

    from MedDeepRecogLib.models import build_model
    from MedDeepRecogLib.packages import save_package

    torch.manual_seed(5)
    kwargs = {"channels": [4, 8], "strides": [2], "num_res_units": 1, "num_classes": 4, "in_channels": 1}
    meta = {"id": "tiny-organs", "version": "1.0.0", "task": "segmentation", "description": "tiny test base",
            "architecture": {"name": "monai_unet", "kwargs": kwargs},
            "class_names": ["background", "liver", "spleen", "kidney"], "modality": "CT",
            "input": {"kind": "volume3d", "size": [16, 16, 16], "spacing_mm": [3.0, 3.0, 3.0], "channels": 1},
            "explain": {"methods": []}, "provenance": {"data": "none", "command": "test", "seed": 5}}
    return save_package(build_model("monai_unet", **kwargs), meta, dest)


@pytest.mark.parametrize("classes, kept, fresh, said", [
    (["liver", "spleen"], ["background", "liver", "spleen"], [],
     "keeps the base's output weights for background, liver, spleen; the base's kidney is left out"),
    (["spleen", "liver"], ["background", "spleen", "liver"], [],
     "keeps the base's output weights for background, spleen, liver; the base's kidney is left out"),
    (["liver", "spleen", "kidney", "stomach"], ["background", "liver", "spleen", "kidney"], ["stomach"],
     "keeps the base's output weights for background, liver, spleen, kidney; stomach is not the base's (liver, "
     "spleen, kidney), so its output starts fresh and learns from scratch"),
])
def test_a_subset_or_superset_of_the_base_classes_keeps_their_rows_of_the_output_layer(tmp_path, classes, kept,
                                                                                       fresh, said):
    """A class map with some of the base's classes (the README's ``liver,spleen``) or one more threw the base's
    whole trained output layer away (validation Dice liver 0.25 / spleen 0.11 against 0.80 / 0.58 kept). The
    layers that follow the classes are built by name: each shared class (background too) keeps the base's weights
    and bias, only a class new to the base starts fresh; a superset answers the base's classes as the base did."""
    import torch

    from MedDeepRecogLib.finetune.base import build_from_base
    from MedDeepRecogLib.finetune.config import FinetuneConfig
    from MedDeepRecogLib.packages import load_package

    base = load_package(_tiny_segmentation_base(tmp_path / "cat"))
    cfg = FinetuneConfig.from_dict(dict(task="segment", data="x"))
    torch.manual_seed(9)
    names = ["background"] + classes
    model, _, _, report = build_from_base(cfg, base, len(names), 1, names, input_size=[16, 16, 16])
    assert report["output_layer"] == {"kept": kept, "fresh": fresh}
    assert report["warning"] == f"the output layer of base tiny-organs@1.0.0 {said}"
    up, final = "model.2.0.conv", "model.2.1.conv.unit0.conv"   # the last up-convolution, the final convolution
    assert sorted(report["partly_loaded"]) == sorted(f"{m}.{p}" for m in (up, final) for p in ("weight", "bias"))
    assert report["reinitialised"] == []
    theirs, ours = base.build_model("cpu").state_dict(), model.state_dict()
    rows = [(names.index(c), base.class_names.index(c)) for c in kept]
    for i, j in rows:
        assert torch.equal(ours[f"{up}.weight"][:, i], theirs[f"{up}.weight"][:, j])   # transposed: out is dim 1
        assert torch.equal(ours[f"{up}.bias"][i], theirs[f"{up}.bias"][j])
        assert torch.equal(ours[f"{final}.bias"][i], theirs[f"{final}.bias"][j])
        for k, m in rows:
            assert torch.equal(ours[f"{final}.weight"][i, k], theirs[f"{final}.weight"][j, m])
        for c in fresh:   # nothing from a fresh class flows into a kept one at the start
            assert not ours[f"{final}.weight"][i, names.index(c)].any()
    for c in fresh:
        assert not torch.equal(ours[f"{up}.weight"][:, names.index(c)], theirs[f"{up}.weight"][:, 0])
    if not set(base.class_names) - set(names):   # a superset: the base's classes start as the base answered them
        x = torch.randn(1, 1, 16, 16, 16)
        with torch.no_grad():
            before, after = base.build_model("cpu").eval()(x), model.eval()(x)
        assert torch.allclose(after[:, [names.index(c) for c in base.class_names]], before, atol=1e-5)


def test_no_class_in_common_with_the_base_keeps_only_background(tmp_path):
    """Classes none of which the base has: the output layer starts over but for background (the wording a head
    that starts fresh has always had, said on the console, in the JSON and on the card by :func:`finetune`)."""
    from MedDeepRecogLib.finetune.base import build_from_base
    from MedDeepRecogLib.finetune.config import FinetuneConfig
    from MedDeepRecogLib.packages import load_package

    base = load_package(_tiny_segmentation_base(tmp_path / "cat"))
    cfg = FinetuneConfig.from_dict(dict(task="segment", data="x"))
    _, _, _, report = build_from_base(cfg, base, 3, 1, ["background", "x", "y"], input_size=[16, 16, 16])
    assert report["output_layer"] == {"kept": ["background"], "fresh": ["x", "y"]}
    assert report["warning"] == ("the output layer of base tiny-organs@1.0.0 is re-initialised: the classes x, y are "
                                 "not the base's liver, spleen, kidney, so it learns them from scratch; background "
                                 "keeps the base's output weights")
    _, _, _, same = build_from_base(cfg, base, 4, 1, list(base.class_names), input_size=[16, 16, 16])
    assert "warning" not in same and "output_layer" not in same and same["reinitialised"] == []


def test_roi_classification_crops_each_overlapped_segment_whole(tmp_path):
    """Classifying the segments of a layered .seg.nrrd cropped each segment from the flattened map: a segment that a
    later one covers lost the shared voxels (its crop moved towards what was left), and one covered whole was
    dropped without a word. Each segment is now cropped whole: the crop centres on its own centre of mass."""
    import torch

    from MedDeepRecogLib.inference.roi_classify import classify_scan_segments, read_scan_segments, segment_geometry
    from MedDeepRecogLib.io import SegmentSpec, write_segment_masks

    image, _ = synthetic_case(tmp_path, "c")
    reference = sitk.ReadImage(str(image))
    z, y, x = np.mgrid[:24, :32, :32]
    core = (x - 12) ** 2 + (y - 12) ** 2 + (z - 12) ** 2 < 10                    # inside the tumour: covered whole
    lesion = (x - 20) ** 2 + (y - 20) ** 2 + (z - 12) ** 2 < 30                   # half covered by the tumour
    tumour = ((x - 13) ** 2 + (y - 13) ** 2 + (z - 12) ** 2 < 60) | ((x >= 20) & (y >= 20) & (np.abs(z - 12) < 6))
    seg = write_segment_masks([(SegmentSpec("core", 1), core), (SegmentSpec("lesion", 2), lesion),
                               (SegmentSpec("tumour", 3), tumour)], reference, tmp_path / "layered.seg.nrrd")
    scan = read_scan_segments(image, seg)
    assert not (scan.segment_map == 1).any() and (lesion & tumour).any()   # what the flattened map keeps
    for index, whole in enumerate((core, lesion, tumour), start=1):
        assert np.array_equal(scan.mask(index), whole)

    class Package:   # an ROI classifier's interface; the network returns the crop's mean mask channel
        meta, id, version, class_names = {}, "roi", "1.0.0", ["a", "b"]
        input_spec = {"kind": "roi3d", "roi": RoiSpec(size_vox=(8, 8, 8), margin_mm=2.0, mask_channel=True).to_json()}

        def build_model(self, device):
            return lambda crops: torch.stack([crops[:, 1].mean((1, 2, 3)), torch.zeros(len(crops))], 1)

    rows = classify_scan_segments(scan, Package())
    assert [r["segment"] for r in rows] == ["core", "lesion", "tumour"]
    for row, whole in zip(rows, (core, lesion, tumour)):
        center, _ = segment_geometry(scan.image, whole)
        assert np.allclose(row["center_mm"], np.round(center, 2))


def test_a_class_never_predicted_is_named_beside_the_mean_hd95(tmp_path):
    """A labelled class the model never predicts has no Hausdorff distance (infinitely far), so the mean HD95 can
    only cover the classes it found: the figure read as the mean of all until the missed class was named beside it
    (metrics ``hd95_missed``, and a line of the card)."""
    from MedDeepRecogLib.finetune.seg_training import segmentation_metrics, summarize_cases

    truth = np.zeros((8, 16, 16), np.uint8)
    truth[2:6, 2:8, 2:8] = 1
    truth[2:6, 10:14, 10:14] = 2
    pred = np.where(truth == 1, 1, 0).astype(np.uint8)   # organ B missed entirely
    case = segmentation_metrics(pred, truth, ["A", "B"], (1.0, 1.0, 2.0))
    assert case["per_class"]["B"]["dice"] == 0.0 and case["per_class"]["B"]["hd95_mm"] is None
    assert case["hd95_mm"] == case["per_class"]["A"]["hd95_mm"] and case["hd95_missed"] == ["B"]
    found = segmentation_metrics(truth, truth, ["A", "B"], (1.0, 1.0, 2.0))
    assert found["hd95_missed"] == []
    summary = summarize_cases({"c1": case, "c2": found}, ["A", "B"])
    assert summary["hd95_missed"] == ["B"]
