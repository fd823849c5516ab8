"""Fine-tuning end to end on tiny synthetic data: new package versions with provenance, resume, cancel,
segmentation written as .seg.nrrd on the scan's grid, ROI classification, CLI contract and bad input; training
volumes and the scans ``segment`` sees in one orientation, so the labels do not depend on how a scan is stored."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from finetune_helpers import TINY_UNET, seg_config, synthetic_case, synthetic_dataset
from MedDeepRecogLib.cli import main
from MedDeepRecogLib.errors import MedDeepRecogError
from MedDeepRecogLib.finetune.config import FinetuneConfig
from MedDeepRecogLib.finetune.finetune import finetune
from MedDeepRecogLib.io import read_segmentation
from MedDeepRecogLib.packages import load_package
from conftest import refusal_line

def _tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return synthetic_dataset(tmp_path_factory.mktemp("ft") / "data", n=3)


def test_segment_scratch_then_finetune_new_version(data_dir, tmp_path):
    cat = tmp_path / "catalog"
    first = finetune(seg_config(2, data=str(data_dir), base=None, id="organs", val_cases=["case2"], dest=str(cat),
                                work_dir=str(tmp_path / "w1")))
    pkg_dir = Path(first["package"])
    assert pkg_dir == cat / "organs" / "1.0.0"
    meta = json.loads((pkg_dir / "model.json").read_text(encoding="utf-8"))
    assert meta["task"] == "segmentation" and meta["class_names"] == ["background", "organ_a", "organ_b"]
    assert meta["provenance"]["parent"] is None
    assert meta["input"]["orientation"] == "RAS"  # trained in the order segment puts scans in
    # each class in the colour the user's segmentation gave it, for segment to write
    import slicerio
    drawn = {s["name"]: s["color"] for s in slicerio.read_segmentation(
        str(data_dir / "case0.seg.nrrd"), skip_voxels=True)["segments"]}
    assert meta["class_colors"] == {n: pytest.approx(drawn[n], abs=1e-6) for n in ("organ_a", "organ_b")}
    assert meta["provenance"]["dataset_fingerprint"].startswith("sha256:")
    assert meta["provenance"]["cases"] == {"train": ["case0", "case1"], "val": ["case2"]}
    assert 0.0 <= meta["metrics"]["dice"] <= 1.0
    card = (pkg_dir / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "2 training case(s)" in card and "none (trained from scratch)" in card
    # the counts of the training cases and, apart, of the validation case (it was counted as training data)
    assert meta["training"]["data"]["cases"] == 2 and meta["training"]["data"]["validation"]["cases"] == 1
    assert "Segments per class in the validation case(s):" in card
    before = _tree_hash(pkg_dir)

    # the finished run again: the same command has nothing new to save; another destination gets a new package
    # from the same weights, not the old one
    same = finetune(seg_config(2, data=str(data_dir), base=None, id="organs", val_cases=["case2"], dest=str(cat),
                               work_dir=str(tmp_path / "w1")))
    assert Path(same["package"]) == pkg_dir
    elsewhere = finetune(seg_config(2, data=str(data_dir), base=None, id="organs", val_cases=["case2"],
                                    dest=str(tmp_path / "other"), work_dir=str(tmp_path / "w1")))
    assert Path(elsewhere["package"]) == tmp_path / "other" / "organs" / "1.0.0"

    second = finetune(seg_config(1, data=str(data_dir), base=str(pkg_dir), freeze_encoder=True, val_cases=["case2"],
                                 dest=str(cat), work_dir=str(tmp_path / "w2")))
    assert Path(second["package"]) == cat / "organs" / "1.0.1"  # a new version of the same id
    meta2 = json.loads((Path(second["package"]) / "model.json").read_text(encoding="utf-8"))
    assert meta2["provenance"]["parent"]["id"] == "organs" and meta2["provenance"]["parent"]["version"] == "1.0.0"
    assert meta2["training"]["frozen_modules"] and meta2["training"]["base_weights"]["reinitialised"] == []
    assert meta2["input"]["orientation"] == meta["input"]["orientation"]  # the base's weights learnt that order
    assert _tree_hash(pkg_dir) == before  # the base is untouched

    # frozen encoder: its weights equal the base's
    import torch
    base_model = load_package(pkg_dir).build_model()
    tuned = load_package(second["package"]).build_model()
    frozen = meta2["training"]["frozen_modules"][0]
    for (n, a), (_, b) in zip(base_model.get_submodule(frozen).named_parameters(),
                              tuned.get_submodule(frozen).named_parameters()):
        assert torch.equal(a, b), n

    # inference writes a .seg.nrrd on the scan's own grid with the class names as segments
    out = tmp_path / "pred.seg.nrrd"
    assert main(["segment", str(data_dir / "case2.nii.gz"), "--model", second["package"], "--out", str(out),
                 "--device", "cpu"]) == 0
    labelmap, grid, specs = read_segmentation(out)
    scan = sitk.ReadImage(str(data_dir / "case2.nii.gz"))
    assert [s.name for s in specs] == ["organ_a", "organ_b"]
    assert grid.GetSize() == scan.GetSize()
    np.testing.assert_allclose(grid.GetOrigin(), scan.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(grid.GetSpacing(), scan.GetSpacing(), atol=1e-4)


def test_resume_and_cancel_keep_last_checkpoint(data_dir, tmp_path):
    work = tmp_path / "work"
    common = dict(data=str(data_dir), base=None, id="resumable", val_cases=["case2"], dest=str(tmp_path / "cat"),
                  work_dir=str(work))
    calls = {"n": 0}

    def stop_in_epoch_two():  # polled before every batch; 2 batches per epoch
        calls["n"] += 1
        return calls["n"] > 2

    cancelled = finetune(seg_config(3, **common), should_stop=stop_in_epoch_two)
    assert cancelled["cancelled"] and cancelled["package"] is None
    assert (work / "last.pt").exists() and not (tmp_path / "cat").exists()
    resumed = finetune(seg_config(3, **common))
    assert resumed["epochs"]["resumed_from"] == 1
    assert [e["epoch"] for e in resumed["epochs"]["history"]] == [1, 2, 3]
    assert Path(resumed["package"]).exists()
    again = finetune(seg_config(3, **common))  # finished: same package, no new version
    assert again["package"] == resumed["package"]
    assert [p.name for p in (tmp_path / "cat" / "resumable").iterdir()] == ["1.0.0"]


def test_rerun_with_more_epochs_continues_the_same_run(data_dir, tmp_path):
    """The epochs are not part of the work folder's key: the same command with more epochs resumes the run."""
    common = dict(data=str(data_dir), base=None, id="longer", val_cases=["case2"], dest=str(tmp_path / "cat"))
    first = finetune(seg_config(1, **common))
    more = finetune(seg_config(2, **common))
    assert more["work_dir"] == first["work_dir"]  # the default folder, keyed by data, base and settings
    assert more["epochs"]["resumed_from"] == 1
    assert [e["epoch"] for e in more["epochs"]["history"]] == [1, 2]
    assert [Path(r["package"]).name for r in (first, more)] == ["1.0.0", "1.0.1"]
    other = finetune(seg_config(1, **{**common, "optimizer": {"lr": 1e-3}}))  # another setting: another run
    assert other["work_dir"] != first["work_dir"] and other["epochs"]["resumed_from"] is None


def test_rerun_with_more_epochs_rebuilds_the_lr_schedule(data_dir, tmp_path):
    """A finished cosine run ends at lr 0; re-run with more epochs, it follows the curve of the new total from the
    resumed epoch on (not the checkpoint's 0), so no epoch before the last trains at 0 and the rate then falls."""
    import math

    def run(epochs: int) -> list[float]:
        result = finetune(FinetuneConfig.from_dict(dict(
            task="classify", data=str(data_dir), base=None, arch="simple_cnn3d",
            arch_kwargs={"channels": [4, 8], "hidden": 8}, roi_size=[16, 16, 16], samples_per_segment=2,
            val_cases=["case2"], training={"epochs": epochs, "batch_size": 4, "early_stopping_patience": 0},
            dest=str(tmp_path / "cat"), id="lr", work_dir=str(tmp_path / "w"))))
        return [e["lr"] for e in result["epochs"]["history"]]

    def cosine(epoch: int, total: int) -> float:  # the rate of 1-based ``epoch`` on a cosine over ``total``
        return 1e-3 * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / total))

    first = run(3)
    assert first == pytest.approx([cosine(e, 3) for e in (1, 2, 3)])
    longer = run(5)
    assert longer[:3] == first  # the epochs already run keep their rates
    assert longer[3:] == pytest.approx([cosine(4, 5), cosine(5, 5)])  # the rest: the 5-epoch curve
    assert min(longer) > 0 and longer[4] < longer[3]


def test_without_validation_data_nothing_is_scored(tmp_path, capsys):
    """One case and no held-out slab: the package records no validation metric (the loop ranked epochs by the
    training loss, which is no Dice or accuracy); model.json, the card, the history and `models` say so plainly,
    and the last epoch is kept."""
    from MedDeepRecogLib.finetune.card import NOT_SCORED

    one = synthetic_dataset(tmp_path / "one", n=1)
    runs = {"segment": seg_config(2, data=str(one), base=None, id="noval-seg"),
            "classify": FinetuneConfig.from_dict(dict(
                task="classify", data=str(one), base=None, arch="simple_cnn3d", id="noval-roi",
                arch_kwargs={"channels": [4, 8], "hidden": 8}, roi_size=[16, 16, 16], samples_per_segment=2,
                training={"epochs": 2, "batch_size": 4, "early_stopping_patience": 0}))}
    for task, cfg in runs.items():
        result = finetune(cfg)
        pkg = Path(result["package"])
        meta = json.loads((pkg / "model.json").read_text(encoding="utf-8"))
        assert meta["metrics"]["note"] == NOT_SCORED and result["metrics"]["note"] == NOT_SCORED, task
        assert not {"dice", "auc", "balanced_accuracy", "accuracy"} & set(meta["metrics"]), task
        assert meta["metrics"]["best_epoch"] == 2 and "last epoch" in meta["metrics"]["selected_by"]
        assert meta["training"]["best_epoch"] == 2 and meta["training"]["monitor"] == "last"
        history = json.loads((pkg / "history.json").read_text(encoding="utf-8"))["history"]
        assert [e["val_metric"] for e in history] == [None, None]
        card = (pkg / "MODEL_CARD.md").read_text(encoding="utf-8")
        assert NOT_SCORED in card and "kept epoch 2 (the last" in card
        assert not any(line.startswith(("- dice", "- auc", "- balanced_accuracy")) for line in card.splitlines())
    capsys.readouterr()
    assert main(["models"]) == 0
    listed = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("noval-")]
    assert len(listed) == 2 and all(NOT_SCORED in ln and "val:" not in ln for ln in listed)


def test_a_2d_slice_base_is_refused_for_roi_classification(data_dir, tmp_path, capsys):
    """ROI crops are 3D: a 2D-slice base is refused in one line naming it, before any run folder is made (it
    used to crash in its first conv2d and leave run.json behind)."""
    rc = main(["finetune", "--base", "brain-tumour-mri", "--task", "classify", "--data", str(data_dir),
               "--epochs", "1", "--dest", str(tmp_path / "cat"), "--work-dir", str(tmp_path / "w"),
               "--progress", "none"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "RuntimeError" not in err
    assert "brain-tumour-mri" in err and "2D slices" in err and "3D volume network" in err
    assert not (tmp_path / "w").exists() and not (tmp_path / "cat").exists()


def _roi_run(data_dir: Path, tmp_path: Path, name: str, **hooks) -> dict:
    return finetune(FinetuneConfig.from_dict(dict(
        task="classify", data=str(data_dir), base=None, arch="simple_cnn3d", arch_kwargs={"channels": [4, 8], "hidden": 8},
        roi_size=[16, 16, 16], margin_mm=4.0, samples_per_segment=3, negatives=1, val_cases=["case2"],
        training={"epochs": 3, "batch_size": 4, "early_stopping_patience": 0, "ema_decay": 0.5},
        dest=str(tmp_path / name), id="roi", work_dir=str(tmp_path / f"w_{name}"))), **hooks)


def test_cancelled_finetune_resumed_equals_an_uninterrupted_one(data_dir, tmp_path):
    """Resume restores the random states (torch, loader, the data set's augmentation) and the EMA weights, so
    cancelling in epoch 2 and running the command again ends with the weights of an uninterrupted run."""
    import torch

    straight = _roi_run(data_dir, tmp_path, "straight")
    seen = {"epoch": 0}

    def progress(stage, fraction, **info):
        if stage == "train":  # after every batch
            seen["epoch"] = info["epoch"]

    cancelled = _roi_run(data_dir, tmp_path, "resumed", progress=progress, should_stop=lambda: seen["epoch"] >= 2)
    assert cancelled["cancelled"] and cancelled["epochs"]["epochs_run"] == 1
    resumed = _roi_run(data_dir, tmp_path, "resumed")
    assert resumed["epochs"]["resumed_from"] == 1
    a = load_package(straight["package"]).build_model().state_dict()
    b = load_package(resumed["package"]).build_model().state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [e["train_loss"] for e in resumed["epochs"]["history"]] == \
        [e["train_loss"] for e in straight["epochs"]["history"]]


def test_roi_augmentation_leaves_the_stored_crops_alone():
    """Crops the affine leaves as they are come back as the stored array's memory; the intensity changes written
    into them must not pile up in the training crops epoch after epoch."""
    import torch

    from MedDeepRecogLib.finetune.roi_task import AugmentedArrays

    torch.manual_seed(0)
    x = np.random.default_rng(0).random((24, 1, 8, 8, 8)).astype(np.float32)
    stored = x.copy()
    data = AugmentedArrays(x, np.zeros(24, np.int64))
    for _ in range(2):
        for i in range(len(data)):
            data[i]
    np.testing.assert_array_equal(x, stored)


def test_roi_classification_from_segments(data_dir, tmp_path):
    result = finetune(FinetuneConfig.from_dict(dict(
        task="classify", data=str(data_dir), base=None, arch="simple_cnn3d", arch_kwargs={"channels": [4, 8], "hidden": 8},
        roi_size=[16, 16, 16], margin_mm=4.0, mask_channel=True, samples_per_segment=3, negatives=1,
        training={"epochs": 2, "batch_size": 4, "early_stopping_patience": 0}, val_cases=["case2"],
        dest=str(tmp_path / "cat"), id="roi", work_dir=str(tmp_path / "w"))))
    meta = json.loads((Path(result["package"]) / "model.json").read_text(encoding="utf-8"))
    assert meta["class_names"] == ["organ_a", "organ_b", "background"]
    assert meta["input"]["kind"] == "roi3d" and meta["input"]["channels"] == 2
    assert meta["input"]["roi"]["mask_channel"] is True
    assert meta["metrics"]["n"] == 3 and 0.0 <= meta["metrics"]["auc"] <= 1.0
    assert "balanced_accuracy" in meta["metrics"]
    model = load_package(result["package"]).build_model()
    import torch
    assert model(torch.zeros(1, 2, 16, 16, 16)).shape == (1, 3)

    from MedDeepRecogLib.inference.roi_classify import classify_segments
    per_segment = classify_segments(data_dir / "case2.nii.gz", data_dir / "case2.seg.nrrd", result["package"])
    assert [r["segment"] for r in per_segment] == ["organ_a", "organ_b"]
    for r in per_segment:
        assert r["label"] in meta["class_names"] and abs(sum(r["probabilities"].values()) - 1) < 1e-3

    # the same from the command line; without --segments, classify says how to apply an ROI classifier
    from MedDeepRecogLib.cli import main
    out = tmp_path / "cls"
    assert main(["classify", str(data_dir / "case2.nii.gz"), "--model", result["package"], "--segments",
                 str(data_dir / "case2.seg.nrrd"), "--out", str(out), "--progress", "none"]) == 0
    record = json.loads((out / "case2_segments.json").read_text(encoding="utf-8"))
    assert record["model"] == {"id": "roi", "version": meta["version"]}
    assert record["segments"] == per_segment
    assert main(["classify", str(data_dir / "case2.nii.gz"), "--model", result["package"], "--out",
                 str(tmp_path / "none"), "--progress", "none"]) == 2
    # options that shape a whole-scan classification are refused with --segments, not silently dropped
    assert main(["classify", str(data_dir / "case2.nii.gz"), "--model", result["package"], "--segments",
                 str(data_dir / "case2.seg.nrrd"), "--out", str(tmp_path / "none"), "--report", "--no-png",
                 "--progress", "none"]) == 2
    assert main(["classify", str(data_dir / "case2.nii.gz"), "--model", "body-region", "--segments",
                 str(data_dir / "case2.seg.nrrd"), "--out", str(tmp_path / "none"), "--progress", "none"]) == 2
    assert not (tmp_path / "none").exists()


@pytest.fixture(scope="module")
def roi_package(data_dir, tmp_path_factory) -> str:
    """A tiny ROI classifier fine-tuned on the synthetic CT cases (in HU)."""
    work = tmp_path_factory.mktemp("roi")
    return finetune(FinetuneConfig.from_dict(dict(
        task="classify", data=str(data_dir), base=None, arch="simple_cnn3d", arch_kwargs={"channels": [4, 8], "hidden": 8},
        roi_size=[16, 16, 16], margin_mm=4.0, samples_per_segment=2, negatives=1,
        training={"epochs": 1, "batch_size": 4, "early_stopping_patience": 0}, val_cases=["case2"],
        dest=str(work / "cat"), id="roi-ct", work_dir=str(work / "w"))))["package"]


def test_an_roi_classifier_refuses_a_scan_of_another_modality(roi_package, data_dir, tmp_path, capsys):
    """ROI classifiers were written with "modality": "any" whatever their training cases were, so `classify
    --segments` labelled the segments of an MR with a CT-only classifier without a word (an MR glioma became a
    "kidney"). The package records its cases' modality, and a scan of another is refused as `segment` refuses one:
    one line naming the scan, what it reads as and the model's modality, exit 2, nothing written."""
    from MedDeepRecogLib.errors import InputImageError
    from MedDeepRecogLib.inference.roi_classify import classify_segments

    meta = json.loads((Path(roi_package) / "model.json").read_text(encoding="utf-8"))
    assert meta["modality"] == "CT"
    ct = sitk.ReadImage(str(data_dir / "case2.nii.gz"))
    mr = sitk.GetImageFromArray(np.clip(sitk.GetArrayFromImage(ct).astype(np.float32) + 1024.0, 0, None))
    mr.CopyInformation(ct)   # the same anatomy and grid, intensities not in HU
    mr_path = tmp_path / "case2 mr é.nii.gz"
    sitk.WriteImage(mr, str(mr_path))
    out = tmp_path / "out"
    assert main(["classify", str(mr_path), "--model", roi_package, "--segments", str(data_dir / "case2.seg.nrrd"),
                 "--out", str(out), "--progress", "none"]) == 2
    refusal_line(capsys, str(mr_path), "reads as MR", f"roi-ct@{meta['version']} classifies segments of CT only")
    assert not out.exists()
    with pytest.raises(InputImageError, match="classifies segments of CT only"):
        classify_segments(mr_path, data_dir / "case2.seg.nrrd", roi_package)
    # the CT itself is classified
    assert main(["classify", str(data_dir / "case2.nii.gz"), "--model", roi_package, "--segments",
                 str(data_dir / "case2.seg.nrrd"), "--out", str(out), "--progress", "none"]) == 0


def test_classify_segments_names_a_label_maps_values_by_label_table(roi_package, data_dir, tmp_path, capsys):
    """A plain label map stores numbers only: `classify --segments` named its segments label_5, label_7 and took no
    --label-table, though finetune reads one for the same files. It takes the same tables now (JSON with FILE#KEY,
    or a Slicer colour table), for --segments only."""
    from MedDeepRecogLib.inference.roi_classify import read_segment_map

    segment_map, grid, names, _, _ = read_segment_map(data_dir / "case2.seg.nrrd")
    assert names == ["organ_a", "organ_b"]
    labels = sitk.GetImageFromArray(np.choose(segment_map, [0, 5, 7]).astype(np.uint8))
    labels.CopyInformation(grid)
    label_map = tmp_path / "case2_labels.nii.gz"
    sitk.WriteImage(labels, str(label_map))
    table = tmp_path / "names.json"
    table.write_text(json.dumps({"organs": {"5": "organ_a", "7": "organ_b"}}), encoding="utf-8")
    scan = str(data_dir / "case2.nii.gz")

    def segments(out, *extra) -> list[str]:
        assert main(["classify", scan, "--model", roi_package, "--segments", str(label_map), "--out", str(out),
                     "--progress", "none", *extra]) == 0, capsys.readouterr().err
        return [r["segment"] for r in json.loads((out / "case2_segments.json").read_text(encoding="utf-8"))
                ["segments"]]

    assert segments(tmp_path / "plain") == ["label_5", "label_7"]
    capsys.readouterr()
    assert segments(tmp_path / "named", "--label-table", f"{table}#organs") == ["organ_a", "organ_b"]
    record = json.loads((tmp_path / "named" / "case2_segments.json").read_text(encoding="utf-8"))
    assert record["label_table"] == f"{table}#organs"
    assert capsys.readouterr().out.startswith("organ_a: ")
    ctbl = tmp_path / "names.ctbl"
    ctbl.write_text("# Color table\n5 organ_a 255 0 0 255\n7 organ_b 0 255 0 255\n", encoding="utf-8")
    assert segments(tmp_path / "ctbl", "--label-table", str(ctbl)) == ["organ_a", "organ_b"]
    # refused in one line, before any work: without --segments, with a .seg.nrrd (named in the file), empty
    none = tmp_path / "none"
    assert main(["classify", scan, "--model", roi_package, "--label-table", str(table), "--out", str(none),
                 "--progress", "none"]) == 2
    refusal_line(capsys, "--label-table", "--segments")
    assert main(["classify", scan, "--model", roi_package, "--segments", str(data_dir / "case2.seg.nrrd"),
                 "--label-table", f"{table}#organs", "--out", str(none), "--progress", "none"]) == 2
    refusal_line(capsys, "--label-table", "case2.seg.nrrd", "named in the file")
    empty = tmp_path / "empty.json"
    empty.write_text("{}", encoding="utf-8")
    assert main(["classify", scan, "--model", roi_package, "--segments", str(label_map), "--label-table", str(empty),
                 "--out", str(none), "--progress", "none"]) == 2
    refusal_line(capsys, str(empty), "label table is empty")
    other = tmp_path / "other.json"   # another map's table: every segment would have kept its number
    other.write_text(json.dumps({"1": "liver", "2": "spleen"}), encoding="utf-8")
    assert main(["classify", scan, "--model", roi_package, "--segments", str(label_map), "--label-table", str(other),
                 "--out", str(none), "--progress", "none"]) == 2
    refusal_line(capsys, "case2_labels.nii.gz", f"the label table {other} names none of the label map's values (5, 7)")
    assert not none.exists()


def test_a_label_table_naming_two_values_alike_or_one_not_at_all_is_refused(roi_package, data_dir, tmp_path, capsys):
    """Segments are reported by name only: a table giving values 5 and 7 one name made two `organ_a` segments no
    output told apart, and an empty name a segment "". Refused in one line naming the table and the names, before
    any work (JSON and Slicer colour tables alike)."""
    scan, none = str(data_dir / "case2.nii.gz"), tmp_path / "none"
    tables = {"dup.json": (json.dumps({"5": "organ_a", "7": "organ_a", "2": "kidney"}), "'organ_a' to 5, 7"),
              "empty.json": (json.dumps({"5": "organ_a", "7": " "}), "value(s) 7 an empty name"),
              "dup.ctbl": ("5 organ_a 255 0 0 255\n7 organ_a 0 255 0 255\n", "'organ_a' to 5, 7")}
    for name, (text, words) in tables.items():
        table = tmp_path / name
        table.write_text(text, encoding="utf-8")
        assert main(["classify", scan, "--model", roi_package, "--segments", str(data_dir / "case2.nii.gz"),
                     "--label-table", str(table), "--out", str(none), "--progress", "none"]) == 2
        refusal_line(capsys, str(table), words)
    assert not none.exists()


def test_one_class_only_and_unmapped_are_clear_errors(tmp_path):
    folder = tmp_path / "one"
    folder.mkdir()
    synthetic_case(folder, "a")
    with pytest.raises(MedDeepRecogError, match="at least two classes.*'A'"):
        finetune(FinetuneConfig.from_dict(dict(task="classify", data=str(folder), class_map="organ_a=A",
                                               training={"epochs": 1}, dest=str(tmp_path / "cat"),
                                               work_dir=str(tmp_path / "w"))))
    with pytest.raises(MedDeepRecogError, match="no segment maps to a class"):
        finetune(FinetuneConfig.from_dict(dict(task="segment", data=str(folder), class_map="spleen=S",
                                               training={"epochs": 1}, dest=str(tmp_path / "cat"),
                                               work_dir=str(tmp_path / "w"))))
    assert not (tmp_path / "cat").exists()


def test_cli_json_progress_and_errors(data_dir, tmp_path, capsys):
    rc = main(["finetune", "--base", "none", "--task", "segment", "--data", str(data_dir), "--epochs", "1",
               "--patch-size", "16,16,16", "--patches-per-epoch", "2", "--batch-size", "2", "--spacing", "3,3,3",
               "--arch-kwargs", json.dumps(TINY_UNET), "--val-cases", "case2", "--dest", str(tmp_path / "cat"),
               "--id", "cli-seg", "--work-dir", str(tmp_path / "w"), "--progress", "json"])
    assert rc == 0
    lines = [json.loads(ln) for ln in capsys.readouterr().out.splitlines() if ln.startswith("{")]
    assert any("epoch" in ln and "val_metric" in ln for ln in lines)
    assert lines[-1]["stage"] == "done" and lines[-1]["fraction"] == 1.0
    assert Path(lines[-1]["result"]["package"]).is_dir()

    (tmp_path / "nopairs").mkdir()
    rc = main(["finetune", "--base", "none", "--task", "segment", "--data", str(tmp_path / "nopairs")])
    err = capsys.readouterr().err
    assert rc == 2 and "nopairs" in err and "no scan/segmentation pairs" in err and "Traceback" not in err
    rc = main(["finetune", "--base", str(tmp_path / "missing-model"), "--task", "segment", "--data", str(data_dir)])
    assert rc == 2 and "missing-model" in capsys.readouterr().err


def test_finetune_refuses_an_id_that_names_another_kind_of_model(data_dir, tmp_path, capsys, monkeypatch):
    """An ROI classifier saved as brain-tumour-mri became that id's latest version and broke `classify --model
    brain-tumour-mri` and the demo: refused before any scan is decoded, in a catalog; a scratch --dest may."""
    from MedDeepRecogLib.finetune import finetune as finetune_module
    from MedDeepRecogLib.packages import user_models_dir

    monkeypatch.setattr(finetune_module, "load_case", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("a scan was decoded: the run was not refused first")))
    common = ["--data", str(data_dir), "--epochs", "1", "--work-dir", str(tmp_path / "w"), "--progress", "none",
              "--threads", "1"]
    assert main(["finetune", "--base", "none", "--task", "classify", "--id", "brain-tumour-mri", *common]) == 2
    refusal_line(capsys, "--id brain-tumour-mri: brain-tumour-mri@", "is a classification model (input kind "
                 "slices2d); a classification model (input kind roi3d)", "choose another id")
    assert main(["finetune", "--base", "none", "--task", "segment", "--id", "body-region", *common]) == 2
    refusal_line(capsys, "--id body-region: body-region@1.0.0", "a segmentation model (input kind volume3d)")
    assert not (tmp_path / "w").exists() and not (user_models_dir() / "brain-tumour-mri").exists()


def test_a_fine_tune_into_another_kind_of_model_takes_an_id_of_its_own():
    """An ROI classifier from a volume classifier is saved as ID-roi, a segmenter from a segmenter as a new version
    of the same id (check_same_kind would refuse the base's id for the first)."""
    from MedDeepRecogLib.finetune.config import FinetuneConfig
    from MedDeepRecogLib.finetune.finetune import new_package_id
    from MedDeepRecogLib.packages import load_package

    classify = FinetuneConfig.from_dict(dict(task="classify", data="x"))
    segment = FinetuneConfig.from_dict(dict(task="segment", data="x"))
    assert new_package_id(classify, load_package("adrenal-mass-3d")) == "adrenal-mass-3d-roi"
    assert new_package_id(segment, load_package("ts-organs-seg")) == "ts-organs-seg"
    assert new_package_id(FinetuneConfig.from_dict(dict(task="classify", data="x", id="mine")), None) == "mine"


def test_finetune_refuses_a_version_a_catalog_holds_before_reading_a_scan(data_dir, tmp_path, capsys, monkeypatch):
    """``--version`` of a version the bundled (or user) catalog holds for the new package's id (the base's, or
    ``--id``) would shadow it: refused with the check train, calibrate and import make, before any scan is decoded
    and with nothing written; a --version that is not MAJOR.MINOR.PATCH is refused before the data are looked at."""
    from MedDeepRecogLib.finetune import finetune as finetune_module
    from MedDeepRecogLib.packages import user_models_dir

    def decode(*args, **kwargs):
        raise AssertionError("a scan was decoded: the run was not refused first")

    monkeypatch.setattr(finetune_module, "load_case", decode)
    common = ["--task", "segment", "--data", str(data_dir), "--epochs", "1", "--work-dir", str(tmp_path / "w"),
              "--progress", "none", "--threads", "1"]
    assert main(["finetune", "--base", "ts-organs-seg", "--version", "1.0.0", *common]) == 2
    refusal_line(capsys, "--version 1.0.0: ts-organs-seg@1.0.0 already exists in the bundled catalog",
                 "never overwritten or shadowed", "bump the version (1.0.1 is free)")
    assert main(["finetune", "--base", "none", "--id", "ts-organs-seg", "--version", "1.0.0", *common]) == 2
    refusal_line(capsys, "ts-organs-seg@1.0.0 already exists in the bundled catalog")
    (user_models_dir() / "organs" / "3.0.0").mkdir(parents=True)
    assert main(["finetune", "--base", "none", "--id", "organs", "--version", "3.0.0", *common]) == 2
    refusal_line(capsys, f"organs@3.0.0 already exists in the user catalog {user_models_dir()}")
    for bad in ("notsemver", "1.0", "1.0.0-beta"):
        assert main(["finetune", "--base", "ts-organs-seg", "--version", bad, *common]) == 2
        refusal_line(capsys, f"--version {bad!r} is not a package version (MAJOR.MINOR.PATCH")
    assert not (tmp_path / "w").exists()
    assert [p.name for p in (user_models_dir() / "organs").iterdir()] == ["3.0.0"]


def test_a_finished_run_asked_again_for_its_version_returns_its_package(data_dir, tmp_path):
    """The version check lets the same command, run again, return the package its finished run saved (nothing new
    is trained); more epochs would train a new package under a version already taken: refused before training."""
    common = dict(data=str(data_dir), base=None, id="versioned", version="2.0.0", val_cases=["case2"],
                  dest=str(tmp_path / "cat"), work_dir=str(tmp_path / "w"))
    first = finetune(seg_config(1, **common))
    assert Path(first["package"]) == tmp_path / "cat" / "versioned" / "2.0.0"
    again = finetune(seg_config(1, **common))
    assert again["package"] == first["package"] and again["epochs"]["resumed_from"] == 1
    with pytest.raises(MedDeepRecogError, match="--version 2.0.0: versioned@2.0.0 already exists in the catalog"):
        finetune(seg_config(2, **common))
    with pytest.raises(MedDeepRecogError, match="already exists"):   # another work folder: another run's package
        finetune(seg_config(1, **{**common, "work_dir": str(tmp_path / "w2")}))
    assert not (tmp_path / "w2").exists()
    assert [p.name for p in (tmp_path / "cat" / "versioned").iterdir()] == ["2.0.0"]
    assert json.loads((tmp_path / "w" / "result.json").read_text())["stopped"] == "completed"


def test_scan_segments_read_a_dicom_series_once_and_keep_its_modality(monkeypatch, shared_data):
    """The scan is read once: its modality comes from the DICOM tag before the float cast drops the tags."""
    from MedDeepRecogLib.inference import roi_classify

    ts = shared_data / "totalsegmentator_examples"
    reads = []
    original = roi_classify.read_image
    monkeypatch.setattr(roi_classify, "read_image", lambda path, **kw: reads.append(path) or original(path, **kw))
    scan = roi_classify.read_scan_segments(ts / "example_ct_dicom", ts / "example_seg_dicom.nii.gz",
                                           label_table=f"{ts / 'label_names_total_and_total_mr.json'}#total")
    assert scan.modality == "CT" and scan.image.GetPixelIDTypeAsString() == "32-bit float"
    assert reads.count(ts / "example_ct_dicom") == 1  # the label map is read too


def test_training_volumes_are_put_in_the_package_orientation(tmp_path):
    """A case stored LPS, RAS or PIL becomes the same training arrays: fine-tuning sees what segment will see."""
    from MedDeepRecogLib.finetune.manifest import Case
    from MedDeepRecogLib.finetune.seg_training import prepare_volume
    from MedDeepRecogLib.finetune.segment_data import CaseData, SegmentInfo

    image_path, seg_path = synthetic_case(tmp_path, "case")  # stored LPS (identity direction)
    scan = sitk.Cast(sitk.ReadImage(str(image_path)), sitk.sitkFloat32)
    organ = sitk.Cast(scan > 100, sitk.sitkUInt16)
    volumes = []
    for code in ("LPS", "RAS", "PIL"):
        item = CaseData(Case("case", image_path, seg_path), sitk.DICOMOrient(scan, code),
                        sitk.GetArrayFromImage(sitk.DICOMOrient(organ, code)), [SegmentInfo("organ_a", "organ_a", 1)],
                        "CT")
        volumes.append(prepare_volume(item, ["organ_a"], None, None, "RAS"))
    expected = sitk.GetArrayFromImage(sitk.DICOMOrient(organ, "RAS"))
    for volume in volumes:
        assert np.array_equal(volume.label[0], expected)
        np.testing.assert_array_equal(volume.image, volumes[0].image)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


@pytest.mark.parametrize("spacing_mm", [None, 2.5], ids=["at-the-model-spacing", "resampled"])
def test_bundled_segmentation_does_not_depend_on_how_the_scan_is_stored(shared_data, spacing_mm):
    """ts-organs-seg on the same CT stored RAS (as trained), LPS (as DICOM) and PIL: the same organs, each label
    map on its own input's grid. At the model's 3 mm the work grid is the scan's own voxels (labels identical);
    at 2.5 mm it is resampled from a different corner per storage order (Dice > 0.99)."""
    from MedDeepRecogLib.inference.segment import resample_to_spacing, segment_image

    ct = sitk.ReadImage(str(shared_data / "totalsegmentator_examples" / "example_ct_sm.nii.gz"))  # stored RAS
    if spacing_mm is not None:
        ct = resample_to_spacing(ct, [spacing_mm] * 3, default=-1024.0)
    pkg = load_package("ts-organs-seg")
    names = pkg.class_names[1:]
    reference = None
    for code in ("RAS", "LPS", "PIL"):
        scan = sitk.DICOMOrient(ct, code)
        labels, _ = segment_image(scan, pkg)
        assert labels.shape == sitk.GetArrayViewFromImage(scan).shape, code  # on its own input's grid
        image = sitk.GetImageFromArray(labels)
        image.CopyInformation(scan)
        labels = sitk.GetArrayFromImage(sitk.DICOMOrient(image, "RAS"))  # back in the original array order
        if reference is None:
            reference = labels
            assert all((reference == i).sum() > 500 for i in range(1, len(names) + 1)), np.bincount(reference.ravel())
            continue
        dice = {name: _dice(labels == i, reference == i) for i, name in enumerate(names, start=1)}
        assert min(dice.values()) > (0.999999 if spacing_mm is None else 0.99), (code, dice)


def test_segment_writes_a_scan_stored_lps_on_its_own_grid(shared_data, tmp_path):
    """The command line on an LPS copy of the CT: the .seg.nrrd has the copy's geometry and the labels of the
    original at the same places."""
    ct = sitk.ReadImage(str(shared_data / "totalsegmentator_examples" / "example_ct_sm.nii.gz"))
    lps = tmp_path / "ct_lps.nii.gz"
    sitk.WriteImage(sitk.DICOMOrient(ct, "LPS"), str(lps))
    outs = {}
    for name, path in (("ras", shared_data / "totalsegmentator_examples" / "example_ct_sm.nii.gz"), ("lps", lps)):
        outs[name] = tmp_path / f"{name}.seg.nrrd"
        assert main(["segment", str(path), "--model", "ts-organs-seg", "--out", str(outs[name]),
                     "--device", "cpu"]) == 0
    labels, grid, _ = read_segmentation(outs["lps"])
    scan = sitk.ReadImage(str(lps))
    assert grid.GetSize() == scan.GetSize()
    np.testing.assert_allclose(grid.GetOrigin(), scan.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(grid.GetDirection(), scan.GetDirection(), atol=1e-6)
    image = sitk.GetImageFromArray(labels.astype(np.uint8))
    image.CopyInformation(grid)
    original, _, _ = read_segmentation(outs["ras"])
    assert np.array_equal(sitk.GetArrayFromImage(sitk.DICOMOrient(image, "RAS")), original)


def test_a_work_folder_of_another_run_or_with_the_users_files_is_refused(data_dir, tmp_path):
    """``--work-dir`` continues only the run it holds: another run's folder (other settings, data or base) is
    refused naming what differs, before anything there is read into training or replaced; so is a folder holding
    files fine-tuning did not write (the user's own run.json and result.json stay as they were)."""
    common = dict(data=str(data_dir), base=None, id="wd", val_cases=["case2"], dest=str(tmp_path / "cat"),
                  work_dir=str(tmp_path / "w"))
    finetune(seg_config(1, **common))
    before = _tree_hash(tmp_path / "w")
    with pytest.raises(MedDeepRecogError, match=r"holds another fine-tuning run.*optimizer\.lr.*new --work-dir"):
        finetune(seg_config(2, **{**common, "optimizer": {"lr": 1e-2}}))
    with pytest.raises(MedDeepRecogError, match=r"holds another fine-tuning run.*val_cases"):
        finetune(seg_config(2, **{**common, "val_cases": None}))
    with pytest.raises(MedDeepRecogError, match=r"holds another fine-tuning run.*data or class map"):
        finetune(seg_config(2, **{**common, "class_map": "organ_a=A,organ_b=B"}))
    other = synthetic_dataset(tmp_path / "other" / "data", n=4)
    with pytest.raises(MedDeepRecogError, match=r"holds another fine-tuning run.*data or class map"):
        finetune(seg_config(2, **{**common, "data": str(other)}))
    assert _tree_hash(tmp_path / "w") == before
    assert [p.name for p in (tmp_path / "cat" / "wd").iterdir()] == ["1.0.0"]
    # the same run (more epochs) still continues it
    assert finetune(seg_config(2, **common))["epochs"]["resumed_from"] == 1

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "run.json").write_text('{"my": "experiment"}')
    (mine / "result.json").write_text('{"auc": 0.9}')
    for extra in ([], ["notes.txt"]):
        for name in extra:
            (mine / name).write_text("mine")
        with pytest.raises(MedDeepRecogError, match="fine-tuning did not write|no run.json that a fine-tuning run"):
            finetune(seg_config(1, **{**common, "work_dir": str(mine)}))
    assert (mine / "run.json").read_text() == '{"my": "experiment"}'
    assert (mine / "result.json").read_text() == '{"auc": 0.9}'


def test_val_slab_with_an_unknown_val_case_is_refused_like_a_split_by_case(data_dir, tmp_path, capsys):
    """``--val-slab`` with ``--val-cases`` naming no case of the data set trained with no validation at all; it is
    refused as the split by case refuses the name, and so is more than one case for the one slab."""
    common = ["finetune", "--base", "none", "--task", "segment", "--data", str(data_dir), "--epochs", "1",
              "--patch-size", "16,16,16", "--patches-per-epoch", "2", "--batch-size", "2", "--spacing", "3,3,3",
              "--arch-kwargs", json.dumps(TINY_UNET), "--dest", str(tmp_path / "cat"), "--id", "slab",
              "--work-dir", str(tmp_path / "w"), "--progress", "none"]
    assert main([*common, "--val-cases", "nosuch"]) == 2
    plain = refusal_line(capsys, "validation case(s) ['nosuch'] not in the data set")
    assert main([*common, "--val-slab", "0:10", "--val-cases", "nosuch"]) == 2
    assert refusal_line(capsys, "validation case(s) ['nosuch'] not in the data set") == plain
    assert main([*common, "--val-slab", "0:10", "--val-cases", "case0,case1"]) == 2
    refusal_line(capsys, "--val-slab holds out a slab of one scan: name one case with --val-cases")
    assert not (tmp_path / "w").exists() and not (tmp_path / "cat").exists()


def test_a_case_label_only_the_validation_cases_hold_is_refused(data_dir, tmp_path):
    """``label_source`` ``case``: a label that only a validation case has would be a package output the network
    never learnt (and scored as perfect on that one case); it is refused naming the class and the case, before
    anything is written."""
    manifest = json.loads((data_dir / "manifest.json").read_text(encoding="utf-8"))
    for case, label in zip(manifest["cases"], ["mass", "normal", "glioma"]):
        case["label"] = label
        for key in ("image", "segmentation"):
            case[key] = str(data_dir / case[key])
    (tmp_path / "labels.json").write_text(json.dumps(manifest), encoding="utf-8")
    settings = dict(task="classify", data=str(tmp_path / "labels.json"), label_source="case", val_cases=["case2"],
                    class_map="organ_a=organ,organ_b=organ", roi_size=[16, 16, 16], training={"epochs": 1},
                    dest=str(tmp_path / "cat"), work_dir=str(tmp_path / "w"))
    with pytest.raises(MedDeepRecogError, match=r"class\(es\) glioma appear only in the validation case\(s\) case2"):
        finetune(FinetuneConfig.from_dict(settings))
    assert not (tmp_path / "w").exists() and not (tmp_path / "cat").exists()


@pytest.mark.parametrize("task, option, hook, needles", [
    ("segment", ["--spacing", "0.05,0.05,0.05", "--patch-size", "16,16,16", "--arch-kwargs", json.dumps(TINY_UNET)],
     ("seg_training", "prepare_volume"), ["--spacing 0.05,0.05,0.05", "960 x 960 x 960 voxels", "74.2 GiB"]),
    ("classify", ["--roi-size", "1024,1024,1024", "--arch", "simple_cnn3d"], ("roi_crops", "segment_crops"),
     ["--roi-size 1024,1024,1024", "18 crops of 1 x 1024 x 1024 x 1024 voxels", "72.0 GiB"]),
], ids=["spacing", "roi-size"])
def test_a_training_grid_or_crop_size_beyond_memory_is_refused_before_anything_is_resampled(
        data_dir, tmp_path, capsys, monkeypatch, task, option, hook, needles):
    """``--spacing 0.05,0.05,0.05`` turned the 32 x 32 x 24 cases into 960^3 grids and ``--roi-size 1024^3`` made
    4 GiB crops: both ran the machine out of memory. The size each needs is known from the cases' headers and
    segment counts: refused in one line naming the option, before a case is resampled or a crop made."""
    import importlib

    monkeypatch.setattr(importlib.import_module(f"MedDeepRecogLib.finetune.{hook[0]}"), hook[1],
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("data were prepared: not refused first")))
    rc = main(["finetune", "--base", "none", "--task", task, "--data", str(data_dir), "--epochs", "1",
               "--batch-size", "2", *option, "--dest", str(tmp_path / "cat"), "--work-dir", str(tmp_path / "w"),
               "--progress", "none", "--threads", "1"])
    assert rc == 2
    refusal_line(capsys, str(data_dir), *needles, "limit of 16.0 GiB", "MEDDEEPRECOG_MAX_DATASET_BYTES")
    assert not (tmp_path / "w").exists() and not (tmp_path / "cat").exists()


def test_a_fine_tune_batch_beyond_the_batch_bound_is_refused_before_any_crop(data_dir, tmp_path, capsys, monkeypatch):
    """A step's batch (crops and their activations) is bounded as ``train``'s is, before any crop is made."""
    monkeypatch.setenv("MEDDEEPRECOG_MAX_BATCH_BYTES", "256K")
    rc = main(["finetune", "--base", "none", "--task", "classify", "--data", str(data_dir), "--epochs", "1",
               "--batch-size", "4", "--roi-size", "16,16,16", "--arch", "simple_cnn3d", "--arch-kwargs",
               json.dumps({"channels": [4, 8], "hidden": 8}), "--dest", str(tmp_path / "cat"),
               "--work-dir", str(tmp_path / "w"), "--progress", "none", "--threads", "1"])
    assert rc == 2
    refusal_line(capsys, "training/batch_size 4", "input [1, 16, 16, 16]", "limit of 256.0 KiB",
                 "MEDDEEPRECOG_MAX_BATCH_BYTES")
    assert not (tmp_path / "w").exists() and not (tmp_path / "cat").exists()
