"""The Slicer module's file exchange without Slicer: command lines, progress lines, process runner, outputs.

The worker is the real ``python -m MedDeepRecogLib`` command line, run through the same bridge code the module
uses (``MedDeepRecogLib.slicer_bridge``); only the MRML side (export/import of nodes) is Slicer's.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MedDeepRecogLib import cli
from MedDeepRecogLib.errors import MedDeepRecogError
from MedDeepRecogLib.io import read_image, same_geometry, write_image
from MedDeepRecogLib.slicer_bridge import (ProgressReader, WorkerCommand, WorkerError, WorkerProcess,
                                           kill_process_tree, parse_progress_line, read_classify_result, run_worker,
                                           worker_environment)
from MedDeepRecogLib.slicer_bridge import pipeline_spec
from MedDeepRecogLib.slicer_bridge.outputs import parse_json_output, robustness_summary
from MedDeepRecogLib.slicer_bridge.process_runner import pid_alive

PY = sys.executable


def _needs_command(name: str) -> None:
    if name not in cli.COMMANDS:
        pytest.skip(f"the {name!r} command is not registered in cli.COMMANDS yet")


# ------------------------------------------------------------------------------------------------ progress lines
def test_progress_lines_are_parsed_and_other_lines_kept_for_errors():
    reader = ProgressReader()
    lines = ['{"stage": "loading", "fraction": 0.1}', "WARNING: something logged", "not json {",
             '{"stage": "train", "fraction": 1.7, "epoch": 3, "val_metric": 0.8125}', '{"no_stage": 1}',
             '["a list"]', '{"stage": "done", "fraction": 1.0, "result": {"heatmap": "x.nrrd"}}']
    events = [reader.feed(line) for line in lines]
    assert [e.stage for e in events if e] == ["loading", "train", "done"]
    assert events[3].fraction == 1.0  # clamped
    assert events[3].extra == {"epoch": 3, "val_metric": 0.8125}
    assert events[3].describe() == "train: epoch 3, val_metric 0.812 (100%)"
    assert parse_progress_line('{"stage": "validate", "fraction": 0.5, "epoch": 2, "epochs": 4, "loss": 0.5, '
                               '"val_auc": 0.75}').describe() == "validate: epoch 2/4, val_auc 0.75, loss 0.5 (50%)"
    assert reader.result == {"heatmap": "x.nrrd"}
    assert reader.tail == ["WARNING: something logged", "not json {", '{"no_stage": 1}', '["a list"]']
    assert parse_progress_line('{"stage": "x", "fraction": "nan"}').fraction == 0.0


def test_error_message_prefers_the_cli_error_line_over_tracebacks():
    reader = ProgressReader()
    for line in ["Traceback (most recent call last):", "  File x", "ValueError: deep inside",
                 "meddeeprecog classify: error: /tmp/a.nrrd: file is empty (0 bytes)"]:
        reader.feed(line)
    assert reader.error_message(2) == "/tmp/a.nrrd: file is empty (0 bytes)"
    only_traceback = ProgressReader()
    for line in ["Traceback (most recent call last):", "ValueError: deep inside", "  (context)"]:
        only_traceback.feed(line)
    assert only_traceback.error_message(1) == "ValueError: deep inside"
    assert ProgressReader().error_message(137) == "the worker stopped with exit code 137"


# ------------------------------------------------------------------------------------------------ command lines
def test_command_lines_parse_with_the_real_cli():
    """Every command line the module builds is accepted by the core's own parser (for registered commands)."""
    parser = cli.build_parser()
    built = {
        "classify": WorkerCommand.classify(["a.nrrd"], "body-region@1.0.0", "out", python=PY, explain="gradcam",
                                           device="cpu"),
        "preprocess": WorkerCommand.preprocess("a.nrrd", "b.nrrd", "p.json", python=PY, mask="m.seg.nrrd"),
        "models": WorkerCommand.list_models(python=PY),
        "device": WorkerCommand.device_info(python=PY),
        "finetune": WorkerCommand.finetune("body-region", "manifest.json", python=PY, task="classify", epochs=3),
        "robustness": WorkerCommand.robustness("body-region", "a.nrrd", "out", python=PY, eps=[0.01, 0.02]),
        "segment": WorkerCommand.segment("a.nrrd", "ts-organs-seg", "o.seg.nrrd", python=PY, device="cpu"),
    }
    checked = []
    for name, command in built.items():
        assert command.args[:4] == [PY, "-m", "MedDeepRecogLib", name]
        if name not in cli.COMMANDS:
            continue
        args = parser.parse_args(command.cli_args())
        assert args.command == name and callable(args.func)
        checked.append(name)
    imp = WorkerCommand.import_model("pkg.zip", python=PY)
    if "models" in cli.COMMANDS:
        assert parser.parse_args(imp.cli_args()).models_action == "import"
    assert "device" in checked and "models" in checked
    assert built["classify"].cli_args() == ["classify", "a.nrrd", "--model", "body-region@1.0.0", "--out", "out",
                                            "--explain", "gradcam", "--device", "cpu", "--progress", "json"]
    assert built["segment"].cli_args() == ["segment", "a.nrrd", "--model", "ts-organs-seg", "--out", "o.seg.nrrd",
                                           "--device", "cpu", "--progress", "json"]


def test_validate_reports_options_the_worker_lacks():
    WorkerCommand.device_info(python=PY).validate()
    WorkerCommand.list_models(python=PY).validate()
    with pytest.raises(MedDeepRecogError, match="does not accept this device command: unrecognized arguments: "
                                                "--no-such-option"):
        WorkerCommand.build("device", python=PY, progress=None, no_such_option=True).validate()
    if "classify" in cli.COMMANDS:
        WorkerCommand.classify(["a.nrrd"], "m", "out", python=PY).validate()


def test_worker_environment_puts_the_module_folder_first(tmp_path):
    env = worker_environment({"PYTHONPATH": os.pathsep.join(["/x", "/y"]), "HOME": "/h"})
    root = str(Path(cli.__file__).resolve().parents[1])
    assert env["PYTHONPATH"].split(os.pathsep) == [root, "/x", "/y"]
    assert env["PYTHONUNBUFFERED"] == "1" and env["HOME"] == "/h"


def test_device_json_through_the_bridge():
    worker = WorkerProcess(WorkerCommand.device_info(python=PY).args, worker_environment()).start()
    lines = []
    worker.on_line = lines.append
    assert worker.wait(timeout=120) == 0
    report = parse_json_output(lines)
    import torch
    assert report["torch"] == torch.__version__
    assert report["cuda_available"] == torch.cuda.is_available()
    assert len(report["devices"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert report["default"] in ("cpu", "cuda", "mps")


# ------------------------------------------------------------------------------------------------ process runner
_FAKE_WORKER = textwrap.dedent("""
    import json, os, subprocess, sys, time
    # a child in its own session (not in the worker's process group) that starts a grandchild
    child = subprocess.Popen([sys.executable, "-c",
        "import subprocess, sys, time; g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']);"
        "print(g.pid, flush=True); time.sleep(300)"], stdout=subprocess.PIPE, text=True, start_new_session=True)
    grandchild = int(child.stdout.readline())
    print(json.dumps({"stage": "started", "fraction": 0.1, "child": child.pid, "grandchild": grandchild}), flush=True)
    for i in range(3000):
        print(json.dumps({"stage": "working", "fraction": min(0.99, 0.1 + i / 3000)}), flush=True)
        time.sleep(0.1)
""")


def test_cancel_kills_the_whole_process_tree():
    events = []
    worker = WorkerProcess([PY, "-c", _FAKE_WORKER], on_event=events.append).start()
    deadline = time.monotonic() + 60
    while not any(e.stage == "started" for e in events):  # poll() as the GUI timer does
        worker.poll()
        assert time.monotonic() < deadline and worker.running, worker.reader.tail
        time.sleep(0.05)
    started = next(e for e in events if e.stage == "started")
    tree = [worker.pid, started.extra["child"], started.extra["grandchild"]]
    assert all(pid_alive(p) for p in tree)
    killed = worker.cancel()
    assert set(tree) <= set(killed)
    assert not any(pid_alive(p) for p in tree), [p for p in tree if pid_alive(p)]
    worker.poll()
    assert not worker.running and worker.returncode != 0
    with pytest.raises(WorkerError) as info:
        worker.check()
    assert info.value.cancelled


def test_kill_process_tree_of_an_unrelated_process_group():
    """The Slicer >= 5.12 path: launchConsoleProcess's child is not in its own session; the tree walk finds all."""
    import subprocess
    proc = subprocess.Popen([PY, "-c", "import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', "
                             "'import time; time.sleep(300)']); print(p.pid, flush=True); time.sleep(300)"],
                            stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    killed = kill_process_tree(proc.pid)
    proc.wait(timeout=10)
    assert {proc.pid, child} <= set(killed)
    assert not pid_alive(child)


def test_worker_failure_reports_the_workers_message(tmp_path):
    empty = tmp_path / "empty.nrrd"
    empty.write_bytes(b"")
    with pytest.raises(WorkerError) as info:
        run_worker([PY, "-m", "MedDeepRecogLib", "info", str(empty)], worker_environment(), timeout=120)
    assert str(info.value) == f"{empty}: file is empty (0 bytes)"
    assert info.value.returncode == 2 and not info.value.cancelled


def test_run_worker_timeout_stops_the_worker():
    start = time.monotonic()
    with pytest.raises(WorkerError, match="did not finish within"):
        run_worker([PY, "-c", "import time; time.sleep(60)"], timeout=1.0)
    assert time.monotonic() - start < 20


# ------------------------------------------------------------------------------------------------ outputs
def test_read_classify_result_resolves_outputs_and_faithfulness(tmp_path):
    (tmp_path / "scan_heatmap.nrrd").write_bytes(b"nrrd")
    (tmp_path / "scan_regions.seg.nrrd").write_bytes(b"seg")
    record = {"input": "scan.nrrd", "model": {"id": "m", "version": "1.0.0"}, "label": "b",
              "probabilities": {"a": 0.2, "b": 0.7, "c": 0.1},
              "explain": {"method": "gradcam", "faithfulness": {"score": 0.42, "deletion_auc": 0.1}},
              "outputs": {"heatmap": "scan_heatmap.nrrd", "png": "missing.png", "regions": "scan_regions.seg.nrrd"}}
    (tmp_path / "scan.json").write_text(json.dumps(record), encoding="utf-8")
    result = read_classify_result(tmp_path, "/somewhere/scan.nrrd")
    assert result.probabilities == [("b", 0.7), ("a", 0.2), ("c", 0.1)]
    assert result.confidence == 0.7 and result.model == "m@1.0.0"
    assert result.heatmap == tmp_path / "scan_heatmap.nrrd" and result.png is None
    assert result.segmentations == [tmp_path / "scan_regions.seg.nrrd"]
    assert result.faithfulness == 0.42 and result.explain_method == "gradcam"
    with pytest.raises(MedDeepRecogError, match="no result file"):
        read_classify_result(tmp_path, "other.nrrd")
    # a slice model on a volume: the panel shows the JSON's confidence (as the PNG and the command line do), not
    # the aggregate's probability
    (tmp_path / "scan.json").write_text(json.dumps({**record, "confidence": 0.61}), encoding="utf-8")
    result = read_classify_result(tmp_path, "/somewhere/scan.nrrd")
    assert result.confidence == 0.61 and "(confidence 0.61)" in result.result_text()   # the CLI's word, not "p"


def test_robustness_summary_sentences():
    flipped = {"clean_label": "lesion", "clean_probability": 0.83, "smallest_flipping_eps": 0.0125,
               "flip": {"eps": 0.0125, "probability": 0.41, "label": "normal"}, "curve": []}
    text, _ = robustness_summary(flipped)
    assert "'lesion' (p=0.83) flips to 'normal' at eps=0.0125" in text and "0.41" in text
    stable = {"clean_label": "normal", "clean_probability": 0.9, "smallest_flipping_eps": None, "flip": None,
              "curve": [{"eps": 0.01}, {"eps": 0.05}], "probability_drop_at_max_eps": 0.12}
    text, _ = robustness_summary(stable)
    assert "did not flip up to eps=0.05" in text and "0.12" in text


# ------------------------------------------------------------------------------------------------ preprocessing
def test_preset_settings_round_trip_to_the_presets_own_steps():
    from MedDeepRecogLib.preprocessing import list_presets
    presets = [p for p in pipeline_spec.PRESETS if p != "custom"]
    assert set(presets) <= set(list_presets())
    for preset in presets:
        settings = pipeline_spec.preset_settings(preset)
        assert pipeline_spec.build_pipeline(preset, settings)["steps"] == pipeline_spec.preset_steps(preset)
    lung = pipeline_spec.preset_settings("lung-ct")
    assert lung["clip"] and (lung["clip_min"], lung["clip_max"]) == (-1350.0, 150.0)  # lung window
    assert lung["mask"] and lung["denoise"] and not lung["bias_correction"]
    assert pipeline_spec.preset_settings("brain-mri")["bias_correction"]


def test_panel_changes_edit_only_the_managed_steps():
    settings = dict(pipeline_spec.preset_settings("lung-ct"), resample=True, resample_spacing=2.0, clip_min=-1000,
                    clip_max=200, denoise=False)
    steps = pipeline_spec.build_pipeline("lung-ct", settings)["steps"]
    assert [s["name"] for s in steps] == ["body_mask", "lung_mask", "resample", "window"]
    assert steps[0] == {"name": "body_mask", "modality": "CT"}  # untouched
    assert steps[2]["spacing"] == [2.0, 2.0, 2.0]
    assert steps[3] == {"name": "window", "center": -400.0, "width": 1200.0}  # the preset's 0..1 output is kept


def test_window_presets_match_the_core():
    from MedDeepRecogLib.preprocessing.intensity import WINDOW_PRESETS
    assert pipeline_spec.WINDOW_PRESETS == WINDOW_PRESETS


def test_every_panel_pipeline_is_valid_for_the_core():
    from MedDeepRecogLib.preprocessing import load_pipeline
    everything = dict(pipeline_spec.DEFAULTS, resample=True, clip=True, bias_correction=True, denoise=True,
                      normalize=True, mask=True)
    for preset in pipeline_spec.PRESETS:
        for settings in (pipeline_spec.DEFAULTS, everything, pipeline_spec.preset_settings(preset)):
            load_pipeline(pipeline_spec.build_pipeline(preset, settings))  # raises ConfigError if invalid
    custom = pipeline_spec.build_pipeline("custom", everything)["steps"]
    assert [s["name"] for s in custom] == ["body_mask", "n4", "resample", "bilateral", "window", "normalize"]
    with pytest.raises(MedDeepRecogError, match="window range is empty"):
        pipeline_spec.build_pipeline("custom", dict(everything, clip_min=10, clip_max=5))


def test_preview_end_to_end_through_the_bridge(tmp_path):
    """Panel settings -> pipeline file -> ``preprocess`` worker -> filtered volume on the input grid + mask segments."""
    _needs_command("preprocess")
    scan = tmp_path / "scan.nrrd"
    image = _volume(scan)
    settings = dict(pipeline_spec.DEFAULTS, resample=True, resample_spacing=2.0, clip=True, clip_min=-1000,
                    clip_max=400, mask=True)
    pipeline = tmp_path / "pipeline.json"
    pipeline.write_text(json.dumps(pipeline_spec.build_pipeline("custom", settings)), encoding="utf-8")
    out, mask = tmp_path / "pre.nrrd", tmp_path / "mask.seg.nrrd"
    events = []
    run_worker(WorkerCommand.preprocess(scan, out, pipeline, python=PY, mask=mask).args, worker_environment(),
               on_event=events.append, timeout=300)
    assert events[-1].stage == "done"
    filtered = read_image(out)
    assert same_geometry(filtered, image)
    values = sitk.GetArrayViewFromImage(filtered)
    assert values.min() >= -1000 - 1e-3 and values.max() <= 400 + 1e-3  # clipped to the window in HU
    from MedDeepRecogLib.io import read_segmentation
    labelmap, reference, segments = read_segmentation(mask)
    assert [s.name for s in segments] == ["body"] and same_geometry(reference, image)
    assert labelmap.any()


# ------------------------------------------------------------------------------------------------ end to end
def _volume(path: Path) -> sitk.Image:
    """A small oblique, anisotropic int16 CT-like volume, as Slicer's exportNode writes it (NRRD)."""
    z, y, x = np.mgrid[:20, :28, :36]
    arr = (-1000 + 1100 * (((x - 18) / 14.0) ** 2 + ((y - 14) / 11.0) ** 2 < 1)
           + 300 * np.exp(-((x - 24) ** 2 + (y - 12) ** 2 + (z - 10) ** 2) / 18.0)).astype(np.int16)
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((0.9, 1.2, 2.5))
    image.SetOrigin((-15.0, 22.0, 101.0))
    c, s = np.cos(0.3), np.sin(0.3)
    image.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    write_image(image, path)
    return image


def test_classify_end_to_end_through_the_bridge(tmp_path, tiny_package):
    """Volumes out -> one ``classify`` worker (tiny package) -> outputs located, heatmaps on each input's grid.

    Two scans as Slicer exports them (NRRD): a synthetic oblique, anisotropic one with a space in its name, and the
    bundled real abdominal CT sample.
    """
    _needs_command("classify")
    from MedDeepRecogLib.resources import sample_path
    exchange = tmp_path / "exchange"
    synthetic = exchange / "synthetic scan.nrrd"
    images = {synthetic: _volume(synthetic)}
    real = exchange / "abdomen_ct.nrrd"
    images[real] = read_image(sample_path("abdomen_ct.nii.gz"))
    write_image(images[real], real)
    events = []
    result = run_worker(WorkerCommand.classify(list(images), str(tiny_package), tmp_path / "out", python=PY,
                                               device="cpu").args, worker_environment(), on_event=events.append,
                        timeout=600)
    assert events and events[-1].stage == "done" and events[-1].result == result
    assert {e.extra.get("case") for e in events[:-1]} == {"synthetic scan", "abdomen_ct"}
    assert [e.fraction for e in events] == sorted(e.fraction for e in events)  # the bar never goes back
    for scan, image in images.items():
        summary = read_classify_result(tmp_path / "out", scan)
        assert {name for name, _ in summary.probabilities} == {"normal", "lesion"}
        assert abs(sum(p for _, p in summary.probabilities) - 1.0) < 1e-4
        assert summary.label == summary.probabilities[0][0]
        assert summary.model.startswith("tiny-test-cnn3d@")
        heatmap = read_image(summary.heatmap)
        assert same_geometry(heatmap, image), scan.name
        values = sitk.GetArrayViewFromImage(heatmap)
        assert values.min() >= 0.0 and values.max() <= 1.0 + 1e-6 and values.max() > 0


def test_robustness_check_end_to_end_through_the_bridge(tmp_path, tiny_package):
    """The panel's Robustness check: ``robustness --input`` on the exported scan, summarised in one sentence."""
    _needs_command("robustness")
    package_dir = tiny_package
    scan = tmp_path / "scan.nrrd"
    _volume(scan)
    result = run_worker(WorkerCommand.robustness(str(package_dir), scan, tmp_path / "rob", python=PY,
                                                 attack="fgsm", eps=[0.05, 0.2, 0.5, 1.0]).args,
                        worker_environment(), timeout=600)
    text, record = robustness_summary(result)
    assert record["clean_label"] in ("normal", "lesion")
    assert [c["eps"] for c in record["curve"]] == [0.05, 0.2, 0.5, 1.0]
    if record["smallest_flipping_eps"] is None:
        assert "did not flip up to eps=1" in text
    else:
        assert f"flips to '{record['flip']['label']}'" in text and record["flip"]["label"] != record["clean_label"]


def test_cancel_a_real_classify_worker(tmp_path):
    _needs_command("classify")
    scan = tmp_path / "scan.nrrd"
    _volume(scan)
    worker = WorkerProcess(WorkerCommand.classify([scan], "tiny-test-cnn3d", tmp_path / "out", python=PY).args,
                           worker_environment()).start()
    time.sleep(0.5)  # torch is importing
    pid = worker.pid
    worker.cancel()
    assert not pid_alive(pid) and not worker.running
    assert not (tmp_path / "out" / "scan.json").exists()
    with pytest.raises(WorkerError) as info:
        worker.check()
    assert info.value.cancelled


def test_segment_labels_are_read_or_refused_with_the_file_named(tmp_path):
    from MedDeepRecogLib.slicer_bridge import WorkerCommand, read_segment_labels

    with pytest.raises(MedDeepRecogError, match="no segment labels file") as err:
        read_segment_labels(tmp_path, "scan.nii.gz")
    assert "scan_segments.json" in str(err.value)
    (tmp_path / "scan_segments.json").write_text(json.dumps({"segments": [{"segment": "a"}]}), encoding="utf-8")
    with pytest.raises(MedDeepRecogError, match="no list of"):
        read_segment_labels(tmp_path, "scan.nii.gz")
    record = {"model": {"id": "roi", "version": "1.0.1"}, "class_names": ["x", "y"],
              "segments": [{"segment": "a", "label": "y", "probabilities": {"x": 0.25, "y": 0.75}}]}
    (tmp_path / "scan_segments.json").write_text(json.dumps(record), encoding="utf-8")
    labels = read_segment_labels(tmp_path, "scan.nii.gz")
    assert labels.model == "roi@1.0.1" and labels.class_names == ["x", "y"]
    assert labels.result_text() == "a: <b>y</b> (0.75)"
    command = WorkerCommand.classify(["scan.nrrd"], "roi", "out", python=sys.executable, segments="s.seg.nrrd")
    assert command.args[command.args.index("--segments") + 1] == "s.seg.nrrd"
    assert "--explain" not in command.args


def test_segment_volumes_are_read_or_refused_with_the_file_named(tmp_path):
    """Segment's answer is its final progress line's result: each segment's ml, with the .seg.nrrd it wrote."""
    from MedDeepRecogLib.slicer_bridge import model_task, read_segment_volumes

    out = tmp_path / "scan.seg.nrrd"
    result = {"output": str(out), "model": {"id": "ts-organs-seg", "version": "1.0.0"},
              "segments": {"liver": {"voxels": 27596, "volume_ml": 745.09}, "kidney": {"voxels": 0, "volume_ml": 0.0}}}
    with pytest.raises(MedDeepRecogError, match="wrote no segmentation") as err:
        read_segment_volumes(result, out)
    assert "scan.seg.nrrd" in str(err.value)
    out.write_bytes(b"NRRD0004")
    with pytest.raises(MedDeepRecogError, match="no per-segment volumes"):
        read_segment_volumes({"output": str(out)}, out)
    volumes = read_segment_volumes(result, out)
    assert volumes.model == "ts-organs-seg@1.0.0" and volumes.output == out
    assert volumes.segments == [("liver", 745.09, 27596), ("kidney", 0.0, 0)]
    assert volumes.result_text() == "liver: <b>745.1 ml</b><br>kidney: <b>0.0 ml</b> (not found)"
    assert (model_task("ts-organs-seg"), model_task("body-region"), model_task("no-such-model")) == \
        ("segmentation", "classification", None)
    # the package's own limits, as segment reports them: a class validated below Dice 0.5 is marked, and the
    # caveat follows the volumes (the panel showed plain millilitres of a demo model's kidney)
    stated = {**result, "caveat": "ts-organs-seg@1.0.0 says of itself: Demo ... not for clinical use.",
              "model_limits": {"validation": {"dice": {"liver": 0.84, "kidney": 0.05}}}}
    text = read_segment_volumes(stated, out).result_text()
    assert text.startswith("liver: <b>745.1 ml</b><br>kidney: <b>0.0 ml</b> (not found) (validation Dice 0.05: "
                           "not a measurement)")
    assert text.endswith("<br><i>ts-organs-seg@1.0.0 says of itself: Demo ... not for clinical use.</i>")


def test_worker_errors_reach_the_panel_in_its_words(tmp_path):
    """The worker names the exchange file a node was written to (deleted when the run ends) and its own options;
    the panel shows the node's name and its own names for them, keeping exit code and tail."""
    from MedDeepRecogLib.slicer_bridge.process_runner import WorkerError, in_panel_words

    exchange = tmp_path / "MedDeepRecog-r0nhep6e"
    error = WorkerError(f"{exchange / 'brain1_label.nrrd'}: this looks like a label map (integer values 0..2)", 2,
                        tail=["last line"])
    shown = in_panel_words(error, exchange)
    assert str(shown) == "'brain1_label': this looks like a label map (integer values 0..2)"
    assert shown.returncode == 2 and shown.tail == ["last line"] and not shown.cancelled
    shown = in_panel_words(WorkerError(f"{exchange / 'scan.nrrd'}: --slice-mm 500.5 lies outside the scan"), exchange)
    assert str(shown) == "'scan': the red view's slice offset 500.5 lies outside the scan"
    assert str(in_panel_words(WorkerError("one modality: drop --second-input"), exchange)).endswith("the second volume")
    untouched = WorkerError("out of memory")
    assert in_panel_words(untouched, exchange) is untouched
