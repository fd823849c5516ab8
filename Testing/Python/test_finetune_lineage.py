"""Fine-tuning results that say what they are: which version an unversioned ``--base`` means (the same command finds
its own run again), whether the validation data was held out from the base's line of weights, what chose the epoch,
cases of another modality than the base's, and the base's output layer kept for its own classes in another order.
Tiny synthetic cases (``finetune_helpers``); the bundled ts-organs-seg only where its own record is the point."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import refusal_line
from finetune_helpers import seg_config, synthetic_dataset
from MedDeepRecogLib.cli import main
from MedDeepRecogLib.finetune.finetune import finetune
from MedDeepRecogLib.inference.segment import stated_limits
from MedDeepRecogLib.packages import load_package


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return synthetic_dataset(tmp_path_factory.mktemp("lineage") / "data", n=3)


def _meta(result: dict) -> dict:
    return json.loads((Path(result["package"]) / "model.json").read_text(encoding="utf-8"))


def _card(result: dict) -> str:
    return (Path(result["package"]) / "MODEL_CARD.md").read_text(encoding="utf-8")


def test_an_unversioned_base_finds_the_same_run_again(data_dir, tmp_path):
    """The new package is the next version of the base's id, so ``--base organs`` resolved to the run's own output
    the second time: the same command trained 1.0.2 from 1.0.1 instead of returning 1.0.1, and more epochs made 1.0.3
    from 1.0.2 instead of continuing. An unversioned base now passes over the versions fine-tuned from the id on this
    same data set (and their descendants); another data set, or a version named, starts where it says."""
    root = finetune(seg_config(1, data=str(data_dir), base=None, id="organs", val_cases=["case2"]))
    assert root["version"] == "1.0.0"   # in the user catalog, where `--base organs` looks
    common = dict(data=str(data_dir), base="organs", val_cases=["case2"])
    first = finetune(seg_config(1, **common))
    assert (first["version"], first["base"]) == ("1.0.1", "organs@1.0.0")
    again = finetune(seg_config(1, **common))
    assert again["package"] == first["package"] and again["base"] == "organs@1.0.0"
    assert again["epochs"]["resumed_from"] == 1   # the finished run, returned: nothing trained
    more = finetune(seg_config(2, **common))
    assert more["work_dir"] == first["work_dir"] and more["epochs"]["resumed_from"] == 1
    assert (more["version"], more["base"]) == ("1.0.2", "organs@1.0.0")
    assert "1.0.1, 1.0.2 were fine-tuned from organs on this data set" in finetune(seg_config(2, **common))["base_note"]
    assert _meta(more)["provenance"]["parent"]["version"] == "1.0.0"

    # another data set starts from the newest version; a version named is taken as it is
    other = synthetic_dataset(tmp_path / "other", n=2)
    assert finetune(seg_config(1, data=str(other), base="organs", val_cases=["case1"]))["base"] == "organs@1.0.2"
    assert finetune(seg_config(1, **{**common, "base": "organs@1.0.2"}))["base"] == "organs@1.0.2"


def test_validation_cases_the_base_trained_on_are_marked_not_held_out(data_dir, tmp_path):
    """A base trained on a validation case's scan scores it as if held out (Dice 0.79 on ts-organs-seg's own training
    slices). The package records the scans its line of weights trained on; a fine-tune validated on one of them
    says "not held out" in model.json, the card, its JSON warnings and `segment`'s caveat; one validated on a scan
    the base never saw says held out."""
    cat = tmp_path / "cat"
    base = finetune(seg_config(1, data=str(data_dir), base=None, id="organs", val_cases=["case2"], dest=str(cat)))
    assert {e["case"] for e in _meta(base)["provenance"]["trained_on"]} == {"case0", "case1"}
    seen = finetune(seg_config(1, data=str(data_dir), base=base["package"], val_cases=["case0"], dest=str(cat)))
    metrics = _meta(seen)["metrics"]
    assert metrics["held_out"] is False
    assert metrics["held_out_note"].startswith("base organs@1.0.0 (or a model it descends from) trained on the scan of "
                                               "validation case 'case0'")
    assert seen["metrics"]["held_out"] is False
    assert any(w.startswith("validation is not held out: base organs@1.0.0") for w in seen["warnings"])
    assert "- **Not held out**: base organs@1.0.0" in _card(seen)
    assert "NOT held out: base organs@1.0.0" in stated_limits(load_package(seen["package"]))["caveat"]
    # the line of weights: the child trained on case1 and case2, and its parent on case0 as well
    assert {e["case"] for e in _meta(seen)["provenance"]["trained_on"]} == {"case0", "case1", "case2"}

    unseen = finetune(seg_config(1, data=str(data_dir), base=base["package"], val_cases=["case2"], dest=str(cat)))
    metrics = _meta(unseen)["metrics"]
    assert metrics["held_out"] is True and "held_out_note" not in metrics
    assert "Not held out" not in _card(unseen)
    assert "held out" not in stated_limits(load_package(unseen["package"]))["caveat"]


def test_a_validation_slab_the_base_trained_on_is_marked_not_held_out(tmp_path):
    """One scan, a slab held out: a fine-tune validated on slices its base trained on is not held out, one inside the
    base's own held-out slab is; the slab scored is in model.json, and a later fine-tune inherits what its parent
    and grandparent saw (the overlap of their held-out slabs)."""
    one = synthetic_dataset(tmp_path / "one", n=1)
    cat = str(tmp_path / "cat")
    base = finetune(seg_config(1, data=str(one), base=None, id="slab", val_slab=[8, 16], dest=cat))
    assert _meta(base)["metrics"]["val_slab"] == {"case": "case0", "slices": [8, 16], "spacing_mm": [3.0, 3.0, 3.0],
                                                  "orientation": "RAS"}
    assert _meta(base)["provenance"]["trained_on"][0]["held_out_slab"] == [8, 16]
    assert "held-out slab 8:16 of the training scan 'case0'" in _card(base)
    leak = finetune(seg_config(1, data=str(one), base=base["package"], val_slab=[2, 7], dest=cat))
    assert _meta(leak)["metrics"]["held_out"] is False
    assert "slices 2:7 of case 'case0' (it held out only slices 8:16)" in _meta(leak)["metrics"]["held_out_note"]
    inside = finetune(seg_config(1, data=str(one), base=base["package"], val_slab=[9, 16], dest=cat))
    assert _meta(inside)["metrics"]["held_out"] is True
    assert _meta(inside)["provenance"]["trained_on"][0]["held_out_slab"] == [9, 16]
    # the leaked run trained on 8:16 too: its child validated there is not held out, though the grandparent held it
    chain = finetune(seg_config(1, data=str(one), base=leak["package"], val_slab=[8, 16], dest=cat))
    assert _meta(chain)["metrics"]["held_out"] is False
    assert "it held out none of that scan" in _meta(chain)["metrics"]["held_out_note"]


def test_the_bundled_organ_model_knows_which_slab_of_its_ct_it_held_out(shared_data):
    """ts-organs-seg 1.0.0 predates ``provenance.trained_on``: it held out only slices 20:30 of example_ct_sm (at 3
    mm, RAS), so a fine-tune validated on 0:10 of that CT is not held out and one on 20:30 is; the same CT given as
    README's command gives it (``--image`` + a label map) is recognised by its voxels."""
    from MedDeepRecogLib.finetune.lineage import held_out_status
    from MedDeepRecogLib.finetune.manifest import load_cases, parse_class_map
    from MedDeepRecogLib.finetune.segment_data import load_case

    folder = shared_data / "totalsegmentator_examples"
    cases, _ = load_cases(folder / "example_seg.nii.gz", image=folder / "example_ct_sm.nii.gz",
                          label_table=f"{folder / 'label_names_total_and_total_mr.json'}#total")
    item = load_case(cases[0], parse_class_map("liver,spleen,kidney_*=kidney"))
    base = load_package("ts-organs-seg@1.0.0")

    def slab(start: int, stop: int) -> dict:
        return {"case": item.case.case_id, "scan": item.scan_id, "slices": [start, stop], "spacing_mm": [3.0] * 3,
                "orientation": "RAS"}

    held, note = held_out_status(base, "sha256:another", [], slab(0, 10))
    assert held is False and "slices 0:10 of case 'example_ct_sm' (it held out only slices 20:30)" in note
    assert held_out_status(base, "sha256:another", [], slab(20, 30)) == (True, None)
    # at another grid the indices name other voxels: not comparable, so not held out
    assert held_out_status(base, "sha256:another", [], {**slab(20, 30), "spacing_mm": [2.0] * 3})[0] is False


def test_trained_on_names_a_case_once_when_the_base_named_its_scan_otherwise(shared_data):
    """ts-organs-seg 1.0.0 records example_ct_sm as case ``ct_sm``; a fine-tune of it on the same CT names the case
    ``example_ct_sm`` (the file's stem, as ``provenance.cases`` does): its ``trained_on`` entry for that scan carries
    that one name, not the base's, and keeps only the slab both runs held out."""
    from MedDeepRecogLib.finetune.lineage import merge_trained_on, recorded_scans, trained_on_entry
    from MedDeepRecogLib.finetune.manifest import load_cases, parse_class_map
    from MedDeepRecogLib.finetune.segment_data import load_case

    folder = shared_data / "totalsegmentator_examples"
    cases, _ = load_cases(folder / "example_seg.nii.gz", image=folder / "example_ct_sm.nii.gz",
                          label_table=f"{folder / 'label_names_total_and_total_mr.json'}#total")
    item = load_case(cases[0], parse_class_map("liver,spleen,kidney_*=kidney"))
    assert item.case.case_id == "example_ct_sm"
    base = recorded_scans(load_package("ts-organs-seg@1.0.0").meta)
    assert [e["case"] for e in base] == ["ct_sm"] and base[0]["scan"] == item.scan_id
    slab = {"slices": [22, 32], "spacing_mm": [3.0] * 3, "orientation": "RAS"}
    merged = merge_trained_on(base, [trained_on_entry(item.case.case_id, item.scan_id, slab)])
    assert merged == [{"case": "example_ct_sm", "scan": item.scan_id, "held_out_slab": [22, 30],
                       "spacing_mm": [3.0] * 3, "orientation": "RAS"}]
    merged = merge_trained_on(base, [trained_on_entry(item.case.case_id, item.scan_id)])
    assert merged == [{"case": "example_ct_sm", "scan": item.scan_id}]


def test_figures_that_chose_the_epoch_say_they_are_optimistic(data_dir, tmp_path):
    """The loop keeps the epoch that scored best on the validation data and reported that maximum as "Validation
    metrics" without a word. model.json says what selected it (``selected_by``, as train writes it), the card and
    `segment`'s caveat call the figures optimistic; so does the bundled ts-organs-seg 1.0.0's (best epoch 38 of 58 on
    its slab), from its training record."""
    result = finetune(seg_config(2, data=str(data_dir), base=None, id="organs", val_cases=["case2"],
                                 dest=str(tmp_path / "cat")))
    metrics = _meta(result)["metrics"]
    assert metrics["selected_by"] == "val dice" and metrics["best_epoch"] in (1, 2)
    assert "- Selected on validation: the checkpoint kept is the epoch that scored best on these validation voxels, " \
           "so the figures are optimistic" in _card(result)
    caveat = stated_limits(load_package(result["package"]))["caveat"]
    assert "Validation Dice recorded in the package (1 case; the checkpoint was chosen on them, so optimistic)" in caveat
    bundled = stated_limits(load_package("ts-organs-seg@1.0.0"))
    assert "(1 case; the checkpoint was chosen on them, so optimistic): liver 0.84" in bundled["caveat"]
    assert bundled["validation"]["selected_on_validation"] is True


def _as_mr(source: Path, target: Path, names: list[str]) -> Path:
    """The cases ``names`` of ``source`` with the scan's intensities made non-negative (an MR's, not HU)."""
    target.mkdir(parents=True)
    for name in names:
        scan = sitk.ReadImage(str(source / f"{name}.nii.gz"))
        mr = sitk.GetImageFromArray(np.clip(sitk.GetArrayFromImage(scan).astype(np.float32) + 1000.0, 0, None))
        mr.CopyInformation(scan)
        sitk.WriteImage(mr, str(target / f"{name}.nii.gz"))
        (target / f"{name}.seg.nrrd").write_bytes((source / f"{name}.seg.nrrd").read_bytes())
    return target


def test_cases_of_another_modality_than_the_base_need_an_id_of_their_own(data_dir, tmp_path, capsys):
    """Fine-tuning the CT package on an MR case saved it as the id's latest version with modality MR, and
    `segment CT --model ID` then refused every CT. It is refused in one line naming both modalities, before anything
    is written, unless the new package gets an id of its own."""
    finetune(seg_config(1, data=str(data_dir), base=None, id="organs", val_cases=["case2"]))
    mr = _as_mr(data_dir, tmp_path / "mr", ["case0", "case1"])
    args = ["finetune", "--task", "segment", "--base", "organs", "--data", str(mr), "--val-cases", "case1",
            "--epochs", "1", "--batch-size", "2", "--patches-per-epoch", "2", "--progress", "none"]
    capsys.readouterr()
    assert main([*args, "--work-dir", str(tmp_path / "w")]) == 2
    refusal_line(capsys, "the cases are MR but base organs@1.0.0 segments CT", "`segment --model organs` would refuse "
                 "every CT scan", "--id organs-mr")
    assert not (tmp_path / "w").exists()
    assert [p.name for p in (load_package("organs").path.parent).iterdir()] == ["1.0.0"]
    assert main([*args, "--id", "organs-mr"]) == 0
    assert load_package("organs-mr").meta["modality"] == "MR" and load_package("organs").meta["modality"] == "CT"


def test_the_bases_classes_in_another_order_keep_its_output_layer(data_dir, tmp_path, capsys, caplog):
    """A folder of pairs without a class map gives its classes sorted; the base's same classes in another order threw
    its trained output layer away with only an info line (Dice 0.08 where keeping it scored 0.66). The base's
    order is kept; other classes still start a fresh output layer, said on the console and in the JSON."""
    cat = str(tmp_path / "cat")
    base = finetune(seg_config(1, data=str(data_dir), base=None, id="organs", class_map="organ_b,organ_a",
                               val_cases=["case2"], dest=cat))
    assert _meta(base)["class_names"] == ["background", "organ_b", "organ_a"]
    tuned = finetune(seg_config(1, data=str(data_dir), base=base["package"], val_cases=["case2"], dest=cat))
    meta = _meta(tuned)
    assert meta["class_names"] == ["background", "organ_b", "organ_a"]
    assert meta["training"]["base_weights"]["reinitialised"] == [] and "warning" not in meta["training"]["base_weights"]
    assert not any("re-initialised" in w for w in tuned["warnings"])

    capsys.readouterr()
    with caplog.at_level(logging.WARNING):
        assert main(["finetune", "--task", "segment", "--base", base["package"], "--data", str(data_dir),
                     "--class-map", "organ_a=x,organ_b=y", "--val-cases", "case2", "--epochs", "1", "--batch-size",
                     "2", "--patches-per-epoch", "2", "--dest", cat, "--progress", "none"]) == 0
    done = json.loads(capsys.readouterr().out)
    said = "the output layer of base organs@1.0.0 is re-initialised: the classes x, y are not the base's organ_b, organ_a"
    assert any(w.startswith(said) for w in done["warnings"])
    assert any(r.levelno == logging.WARNING and r.getMessage().startswith(said) for r in caplog.records)
    meta = json.loads((Path(done["package"]) / "model.json").read_text(encoding="utf-8"))
    assert meta["training"]["base_weights"]["warning"].startswith(said)
    assert f"- Output layer: {said}" in (Path(done["package"]) / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert meta["training"]["base_weights"]["output_layer"] == {"kept": ["background"], "fresh": ["x", "y"]}

    # some of the base's classes (the README's `liver,spleen`): their rows of the output layer are kept, by name
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(["finetune", "--task", "segment", "--base", base["package"], "--data", str(data_dir),
                     "--class-map", "organ_a", "--val-cases", "case2", "--epochs", "1", "--batch-size", "2",
                     "--patches-per-epoch", "2", "--dest", cat, "--id", "organs-a", "--progress", "none"]) == 0
    done = json.loads(capsys.readouterr().out)
    said = ("the output layer of base organs@1.0.0 keeps the base's output weights for background, organ_a; the "
            "base's organ_b is left out")
    assert said in done["warnings"] and done["output_layer"] == {"kept": ["background", "organ_a"], "fresh": []}
    assert any(r.levelno == logging.WARNING and r.getMessage() == said for r in caplog.records)
    meta = json.loads((Path(done["package"]) / "model.json").read_text(encoding="utf-8"))
    weights = meta["training"]["base_weights"]
    assert weights["warning"] == said and weights["reinitialised"] == [] and len(weights["partly_loaded"]) == 2
    assert f"- Output layer: {said}" in (Path(done["package"]) / "MODEL_CARD.md").read_text(encoding="utf-8")
