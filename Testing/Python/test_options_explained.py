"""Every option explained and honest: help text on every option, options that cannot apply refused before any
work, ``models --verify``, ``finetune --label-table`` and the README's fine-tune example, ``calibrate``'s splits,
``robustness`` eps in HU, the TTA count of the help and the JSON."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import time
from pathlib import Path

import pytest

from conftest import make_volume
from frontier_helpers import save_blob_package, write_blob_npz, write_blob_scan
from MedDeepRecogLib.cli import build_parser, main
from MedDeepRecogLib.io import write_image
from tiny_test_package import make_tiny_package

README = Path(__file__).resolve().parents[2] / "README.md"


def _options(parser: argparse.ArgumentParser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, prefix + (name,))
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield " ".join(prefix), "/".join(action.option_strings) or action.dest, action.help


def test_every_option_of_every_command_has_help():
    missing = [f"{cmd} {opt}" for cmd, opt, text in _options(build_parser()) if not text or not text.strip()]
    assert missing == []


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("pkgs")
    return {k: make_tiny_package(root, kind=k) for k in ("slices2d", "volume3d")}


@pytest.mark.parametrize("argv, message", [
    (["--explain", "attention"], "no attention map to show"),
    (["--register"], "--register aligns --second-input"),
    (["--uncertainty", "mc-dropout"], "no dropout layer"),
])
def test_classify_options_that_cannot_apply_fail_before_reading(run_cli_all, tiny, tmp_path, monkeypatch, argv,
                                                                 message):
    import MedDeepRecogLib.io as io_module
    import MedDeepRecogLib.inference.classify as classify_module

    def no_read(*a, **k):
        raise AssertionError("the scan was read before the option was refused")

    monkeypatch.setattr(io_module, "read_image", no_read)
    monkeypatch.setattr(classify_module, "read_image", no_read)
    if "mc-dropout" in argv:  # the tiny networks all have dropout: stand in for one without
        import MedDeepRecogLib.uncertainty as uncertainty_module
        monkeypatch.setattr(uncertainty_module, "dropout_layers", lambda model: [])
    scan = write_image(make_volume(size=(20, 20, 6)), tmp_path / "s.nrrd")
    start = time.perf_counter()
    code, _, err = run_cli_all("classify", scan, "--model", tiny["slices2d"], "--out", tmp_path / "o", *argv)
    assert code == 2 and message in err
    assert time.perf_counter() - start < 5
    assert not (tmp_path / "o").exists()


def test_slice_mm_on_a_volume_model_and_attention_with_auto_are_refused_early(run_cli_all, tiny, tmp_path):
    scan = write_image(make_volume(size=(20, 20, 6)), tmp_path / "s.nrrd")
    code, _, err = run_cli_all("classify", scan, "--model", tiny["volume3d"], "--out", tmp_path / "o",
                               "--slice-mm", "3")
    assert code == 2 and "--slice-mm classifies one slice with a 2D (slice) model" in err
    code, _, err = run_cli_all("classify", scan, "--model", "auto", "--out", tmp_path / "o", "--explain", "attention")
    assert code == 2 and "no attention to show" in err


def test_finetune_task_only_options_fail_before_work(run_cli_all, tmp_path):
    code, _, err = run_cli_all("finetune", "--base", "none", "--task", "segment", "--data", tmp_path / "nothing",
                               "--negatives", "2", "--roi-size", "8,8,8")
    assert code == 2 and "--roi-size, --negatives only apply to ROI classification" in err
    code, _, err = run_cli_all("finetune", "--base", "none", "--task", "classify", "--data", tmp_path / "nothing",
                               "--patch-size", "8,8,8")
    assert code == 2 and "--patch-size only applies to segmentation" in err
    code, _, err = run_cli_all("finetune", "--base", "none", "--task", "segment", "--data", tmp_path,
                               "--label-table", tmp_path / "missing.json")
    assert code == 2 and "label table cannot be read" in err


def test_models_verify_prints_ok_or_the_problem(run_cli_all, tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("MEDDEEPRECOG_HOME", str(home))
    good = make_tiny_package(home / "models", package_id="good-one")
    bad = make_tiny_package(home / "models", package_id="bad-one")
    weights = bad / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"tampered")
    code, out, _ = run_cli_all("models", "--verify")
    assert code == 2
    lines = {line.split()[0]: line for line in out.splitlines() if line.split()}
    assert "ok" in lines["good-one"] and "FAILED" not in lines["good-one"]
    assert "FAILED" in lines["bad-one"] and "sha256" in lines["bad-one"].lower()
    assert "body-region" in lines and " ok " in lines["body-region"] + " "
    code, out, _ = run_cli_all("models", "--verify", "--json")
    rows = {r["id"]: r for r in json.loads(out) if r["source"] == "user"}
    assert rows["good-one"]["verify"] == "ok" and rows["bad-one"]["verify"] != "ok"
    code, out, _ = run_cli_all("models")
    assert code == 0 and "classes=" in out  # the plain listing stays a listing
    assert good.exists()


def _readme_finetune_command() -> list[str]:
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- finetune-example -->\s*```bash\n(.*?)```", text, re.S)
    assert block, "README has no marked fine-tune example"
    command = block.group(1).replace("\\\n", " ")
    argv = shlex.split(command)
    assert argv[:2] == ["meddeeprecog", "finetune"]
    return argv[1:]


def test_readme_finetune_example_reads_the_shared_data(shared_data, monkeypatch):
    """The README's example, exactly as written, from the checkout root (where ../shared/data lies): its options
    parse, the label table names the label map's ids and the class map finds liver, spleen and kidney. (Its
    training, about 20 s, is run by hand; see the README.)"""
    from MedDeepRecogLib.commands.finetune import build_config
    from MedDeepRecogLib.finetune.manifest import load_cases, parse_class_map
    from MedDeepRecogLib.finetune.segment_data import load_case

    root = README.parent
    if not (root / ".." / "shared" / "data" / "totalsegmentator_examples").is_dir():
        pytest.skip("../shared/data is not beside this checkout")
    monkeypatch.chdir(root)
    args = build_parser().parse_args(_readme_finetune_command())
    cfg = build_config(args)
    assert cfg.task == "segment" and cfg.label_table and cfg.image
    cases, _ = load_cases(cfg.data, image=cfg.image, label_table=cfg.label_table)
    item = load_case(cases[0], parse_class_map(cfg.class_map))
    classes = sorted({s.class_name for s in item.segments if s.class_name})
    assert classes == ["kidney", "liver", "spleen"]


def test_calibrate_says_when_fit_and_report_share_a_split(tmp_path, capsys):
    catalog = tmp_path / "catalog"
    parent = save_blob_package(catalog)
    meta_path = Path(parent) / "model.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["metrics"] = {**(meta.get("metrics") or {}),
                       "selected_by": "nothing: the final epoch is kept (val split unseen)"}
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    npz = tmp_path / "d.npz"
    import numpy as np

    a, b = np.load(write_blob_npz(tmp_path / "a.npz", n=40, seed=1)), np.load(write_blob_npz(tmp_path / "b.npz",
                                                                                                n=30, seed=2))
    np.savez_compressed(npz, val_images=a["val_images"], val_labels=a["val_labels"], test_images=b["val_images"],
                        test_labels=b["val_labels"])
    assert main(["calibrate", "--model", str(parent), "--data", str(npz), "--dest", str(catalog),
                 "--progress", "none"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    cal = result["calibration"]
    assert cal["same_split"] is True and "fitted and reported on the same split (val)" in captured.err
    assert "optimistic" in cal["note"]
    # the new version's metrics say that its calibration was fitted on val, whatever chose the weights
    selected_by = json.loads((Path(result["package"]) / "model.json").read_text(encoding="utf-8"))["metrics"][
        "selected_by"]
    assert selected_by.startswith("nothing: the final epoch is kept (val split unseen); fitted after training: the "
                                  "temperature and low-confidence threshold (")
    assert main(["calibrate", "--model", str(parent), "--data", str(npz), "--dest", str(catalog),
                 "--fit-split", "val", "--report-split", "test", "--progress", "none"]) == 0
    captured = capsys.readouterr()
    cal = json.loads(captured.out)["calibration"]
    assert cal["same_split"] is False and cal["fit_split"] == "val" and cal["report_split"] == "test"
    assert cal["n"] == 40 and cal["report_n"] == 30
    assert "fitted on val (40 cases), reported on test (30 cases)" in captured.err


def test_robustness_prints_eps_in_hu_for_ct(tmp_path, capsys):
    pkg = save_blob_package(tmp_path / "catalog")
    scan = write_blob_scan(tmp_path / "case.nii.gz", label=0)
    assert main(["robustness", "--model", str(pkg), "--input", str(scan), "--out", str(tmp_path / "o"),
                 "--attack", "fgsm", "--eps", "0.05,0.3", "--bounds", "0", "1", "--progress", "none"]) == 0
    out = capsys.readouterr().out
    rec = json.loads((tmp_path / "o" / "case_robustness.json").read_text(encoding="utf-8"))
    for point in rec["curve"]:
        assert f"eps {point['eps']:.4g} ({point['eps_hu']:.1f} HU)" in out
    assert "model input units (HU in brackets)" in out


@pytest.mark.parametrize("kind", ["slices2d", "volume3d"])
def test_tta_count_in_the_help_matches_the_json(run_cli_all, tiny, tmp_path, kind):
    from MedDeepRecogLib.commands.classify import TTA_SAMPLES_2D, TTA_SAMPLES_3D

    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["classify"].format_help().split())
    assert f"{TTA_SAMPLES_2D} samples for slice models, {TTA_SAMPLES_3D} for volume models" in help_text
    scan = write_image(make_volume(size=(24, 24, 8)), tmp_path / "s.nrrd")
    code, _, err = run_cli_all("classify", scan, "--model", tiny[kind], "--out", tmp_path, "--progress", "none",
                               "--uncertainty", "tta", "--no-faithfulness", "--explain", "none")
    assert code == 0, err
    record = json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))
    assert record["uncertainty"]["tta"]["samples"] == (TTA_SAMPLES_2D if kind == "slices2d" else TTA_SAMPLES_3D)
