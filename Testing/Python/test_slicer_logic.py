"""MedDeepRecog.py's logic and jobs run for real outside Slicer, with stand-ins for the Slicer/Qt/VTK modules.

Only Slicer itself is replaced: ``slicer``, ``qt`` and ``vtk`` are small stub modules, and the MRML helpers of
``MedDeepRecogSlicerLib.scene_io`` are swapped for file-based fakes (a "node" holds a SimpleITK image). Everything
else is the module's code: the parameter node fields, ``MedDeepRecogLogic`` (export, command line, worker job,
loading outputs, reuse of output nodes, error messages) and ``WorkerJob`` in its three modes: blocking, Slicer 5.12's
non-blocking ``launchConsoleProcess`` (emulated with the documented callbacks) and the Slicer 5.10 QTimer fallback.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MedDeepRecogLib.io import read_image, same_geometry, write_image
from MedDeepRecogLib.slicer_bridge import WorkerError, run_worker, worker_environment
from MedDeepRecogLib.slicer_bridge.process_runner import pid_alive

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "MedDeepRecog"


# ------------------------------------------------------------------------------------------------ stand-ins
class FakeNode:
    """A node: a name, an optional SimpleITK image, and what was shown/stored on it."""

    def __init__(self, name: str, image: sitk.Image | None = None, kind: str = "volume"):
        self.name, self.image, self.kind, self.attributes, self.rows = name, image, kind, {}, []
        self.segments: dict[str, np.ndarray] = {}

    def GetName(self):
        return self.name

    def SetAttribute(self, key, value):
        self.attributes[key] = value

    def SetReferenceImageGeometryParameterFromVolumeNode(self, volume):
        self.reference = volume


class FakeTimer:
    instances: list["FakeTimer"] = []

    def __init__(self):
        self.callback, self.active = None, False
        FakeTimer.instances.append(self)

    def setInterval(self, ms):
        self.interval = ms

    def connect(self, signal, callback):
        assert signal == "timeout()"
        self.callback = callback

    def start(self):
        self.active = True

    def stop(self):
        self.active = False


def _launch_5_12(args, useStartupEnvironment=True, updateEnvironment=None, cwd=None, blocking=True,
                 logCallback=None, completedCallback=None):
    """Slicer 5.12's launchConsoleProcess(blocking=False): stdout+stderr merged, callbacks per line and at the end."""
    import os
    env = dict(os.environ if not useStartupEnvironment else {})
    env.update(updateEnvironment or {})
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd)

    def pump():
        for line in proc.stdout:
            logCallback(line.rstrip("\n"))
        completedCallback(proc.wait())
    threading.Thread(target=pump, daemon=True).start()
    return proc


def _launch_5_10(args, useStartupEnvironment=True, updateEnvironment=None, cwd=None):
    raise AssertionError("the 5.10 path must not call launchConsoleProcess without 'blocking'")


def _install_stubs(monkeypatch, tmp_path, launch):
    slicer = types.ModuleType("slicer")
    for cls in ("vtkMRMLScalarVolumeNode", "vtkMRMLSegmentationNode", "vtkMRMLTableNode", "vtkMRMLVolumeNode",
                "vtkMRMLNode", "vtkMRMLTransformableNode"):
        setattr(slicer, cls, type(cls, (), {}))
    util = types.ModuleType("slicer.util")
    util.launchConsoleProcess = launch
    util.arrayFromVolume = lambda node: sitk.GetArrayFromImage(node.image)
    util.setSliceViewerLayers = lambda **kw: None
    util.VTKObservationMixin = type("VTKObservationMixin", (), {"__init__": lambda self: None})
    slicer.util = util
    slicer.app = types.SimpleNamespace(temporaryPath=str(tmp_path))
    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.Choice = lambda choices: ("Choice", choices)
    pnw.WithinRange = lambda lo, hi: ("WithinRange", lo, hi)
    pnw.parameterNodeWrapper = lambda cls: cls
    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleTest"):
        setattr(slm, name, type(name, (), {}))
    slm.ScriptedLoadableModuleLogic = type("ScriptedLoadableModuleLogic", (), {"__init__": lambda self: None})
    qt = types.ModuleType("qt")
    qt.QTimer = FakeTimer
    vtk = types.ModuleType("vtk")
    for name, module in {"slicer": slicer, "slicer.util": util, "slicer.parameterNodeWrapper": pnw,
                         "slicer.ScriptedLoadableModule": slm, "qt": qt, "vtk": vtk}.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.syspath_prepend(str(MODULE_DIR))
    for name in ("MedDeepRecog", "MedDeepRecogSlicerLib.jobs", "MedDeepRecogSlicerLib.scene_io"):
        sys.modules.pop(name, None)
    module = importlib.import_module("MedDeepRecog")
    _fake_scene_io(monkeypatch, module.scene_io)
    return module


def _fake_scene_io(monkeypatch, scene_io):
    created = []

    def export_volume(node, folder):
        path = Path(folder) / f"{scene_io.safeFileName(node.GetName())}.nrrd"
        write_image(node.image, path)
        return path

    def load_volume_into(path, target, name):
        node = target or FakeNode(name)
        node.image = read_image(path)
        return node

    def get_or_create(node, class_name, name):
        if node is None:
            node = FakeNode(name, kind=class_name)
            created.append(node)
        return node

    def set_segment(seg, name, mask, color, reference):
        assert mask.shape == sitk.GetArrayViewFromImage(reference.image).shape
        seg.segments[name] = mask

    fakes = {
        "exportVolume": export_volume, "loadVolumeInto": load_volume_into, "getOrCreateNode": get_or_create,
        "updateProbabilityTable": lambda table, probs: setattr(table, "rows", list(probs)),
        "updateSegmentLabelTable": lambda table, rows, names: setattr(
            table, "rows", [(r["segment"], r["label"], [r["probabilities"][n] for n in names]) for r in rows]),
        "placeUnderStudy": lambda node, ref: None, "showSegmentationIn3D": lambda seg: None,
        "showHeatmap": lambda heat, bg, threshold, opacity: setattr(heat, "shown", (bg, threshold, opacity)),
        "setSegmentFromMask": set_segment,
        "replaceSegments": lambda seg, path, ref: seg.segments.setdefault(Path(path).name, None),
    }
    for name, fake in fakes.items():
        monkeypatch.setattr(scene_io, name, fake)
    scene_io.created = created


def _parameters(module, volume, model):
    """A parameter node with the wrapper class's defaults (the class body is plain annotations + defaults)."""
    p = types.SimpleNamespace()
    for name in module.MedDeepRecogParameterNode.__annotations__:
        setattr(p, name, getattr(module.MedDeepRecogParameterNode, name, None))
    p.inputVolume, p.model, p.device = volume, model, "cpu"
    return p


@pytest.fixture(scope="module")
def tiny_package(tmp_path_factory):
    catalog = tmp_path_factory.mktemp("catalog")
    run_worker([sys.executable, "-m", "MedDeepRecogLib.slicer_bridge.tiny_model", str(catalog)], worker_environment(),
               timeout=300)
    return next((catalog / "tiny-test-cnn3d").iterdir())


def _volume() -> sitk.Image:
    z, y, x = np.mgrid[:18, :26, :30]
    image = sitk.GetImageFromArray((200 * np.exp(-((x - 20) ** 2 + (y - 10) ** 2 + (z - 9) ** 2) / 30.0))
                                   .astype(np.int16))
    image.SetSpacing((0.7, 1.3, 3.0))
    image.SetOrigin((5.0, -40.0, 12.0))
    return image


# ------------------------------------------------------------------------------------------------ tests
def test_blocking_classify_fills_and_reuses_output_nodes(monkeypatch, tmp_path, tiny_package):
    module = _install_stubs(monkeypatch, tmp_path, _launch_5_10)
    logic = module.MedDeepRecogLogic()
    assert logic.python == sys.executable
    volume = FakeNode("CT chest #1", _volume())
    p = _parameters(module, volume, str(tiny_package))
    first = logic.classify(p, waitForCompletion=True)
    nodes = (p.outputTable, p.outputHeatmap, p.outputSegmentation)
    second = logic.classify(p, waitForCompletion=True)
    assert (p.outputTable, p.outputHeatmap, p.outputSegmentation) == nodes  # reused, not re-created
    assert len(module.scene_io.created) == 2  # one table, one segmentation node in all
    assert first.probabilities == second.probabilities  # deterministic model and input
    assert [c for c, _ in p.outputTable.rows] == [c for c, _ in second.probabilities]
    assert p.outputTable.attributes["MedDeepRecog.label"] == second.label
    assert same_geometry(p.outputHeatmap.image, volume.image)
    assert p.outputHeatmap.shown == (volume, p.heatmapThreshold, p.heatmapOpacity)
    assert list(p.outputSegmentation.segments) == [f"heatmap >= {module.HOT_REGION_THRESHOLD}"]
    assert p.outputSegmentation.segments[f"heatmap >= {module.HOT_REGION_THRESHOLD}"].any()
    assert not list(Path(tmp_path).glob("MedDeepRecog-*"))  # temporary exchange folders are removed


def test_preview_runs_the_panel_pipeline_and_loads_volume_and_mask(monkeypatch, tmp_path):
    module = _install_stubs(monkeypatch, tmp_path, _launch_5_10)
    logic = module.MedDeepRecogLogic()
    volume = FakeNode("scan", _volume())
    p = _parameters(module, volume, "")
    p.preset = "lung-ct"
    logic.applyPreset(p)  # what choosing the preset in the panel does
    assert p.clipIntensity and p.bodyMask and (p.clipMin, p.clipMax) == (-1350.0, 150.0)
    p.preset, p.denoise, p.resample, p.resampleSpacing = "custom", False, True, 2.0
    filtered = logic.preview(p, waitForCompletion=True)
    assert filtered is p.preprocessedVolume and same_geometry(filtered.image, volume.image)
    values = sitk.GetArrayViewFromImage(filtered.image)
    assert values.min() >= -1350 - 1e-3 and values.max() <= 150 + 1e-3  # the panel's window, in HU
    assert list(p.outputSegmentation.segments) == ["mask.seg.nrrd"]


def test_finetune_writes_manifest_from_the_class_table_and_names_the_new_version(monkeypatch, tmp_path,
                                                                                  tiny_package):
    from MedDeepRecogLib.io import SegmentSpec, write_segmentation
    module = _install_stubs(monkeypatch, tmp_path, _launch_5_10)
    monkeypatch.setenv("MEDDEEPRECOG_HOME", str(tmp_path / "home"))
    image = _volume()
    z, y, x = np.mgrid[:18, :26, :30]
    labels = np.zeros((18, 26, 30), np.uint8)
    labels[(x - 20) ** 2 + (y - 10) ** 2 + (z - 9) ** 2 < 20] = 1
    labels[(x - 8) ** 2 + (y - 18) ** 2 + (z - 5) ** 2 < 12] = 2

    def export_segmentation(node, folder):
        return write_segmentation(labels, image, [SegmentSpec("tumor", 1), SegmentSpec("cyst", 2)],
                                  Path(folder) / "segments.seg.nrrd")
    monkeypatch.setattr(module.scene_io, "exportSegmentation", export_segmentation)
    monkeypatch.setattr(module.scene_io, "readTableColumns",
                        lambda table: [("tumor", "lesion"), ("cyst", "normal"), ("ignored", " ")])
    logic = module.MedDeepRecogLogic()
    p = _parameters(module, FakeNode("scan", image), str(tiny_package))
    p.trainingSegmentation, p.classMapTable, p.epochs = FakeNode("segments"), FakeNode("classes"), 1
    events = []
    package = logic.finetune(p, waitForCompletion=True, onProgress=events.append)
    assert package.startswith("tiny-test-cnn3d@")
    new_dir = tmp_path / "home" / "models" / "tiny-test-cnn3d" / package.split("@")[1]
    assert (new_dir / "model.json").is_file()
    assert any(e.extra.get("epoch") == 1 for e in events) and events[-1].stage == "done"

    # the new version is an ROI classifier: Classify now labels each segment of the segmentation
    p.model = package
    labels = logic.classify(p, waitForCompletion=True)
    assert labels.model == package and labels.class_names == ["lesion", "normal"]
    assert [(s, lab) for s, lab, _ in p.outputTable.rows] == [(r["segment"], r["label"]) for r in labels.segments]
    assert [s for s, _, _ in p.outputTable.rows] == ["tumor", "cyst"]
    assert all(abs(sum(probs) - 1.0) < 1e-3 for _, _, probs in p.outputTable.rows)
    assert "tumor" in labels.result_text() and labels.heatmap_text() == ""
    p.trainingSegmentation = None
    with pytest.raises(ValueError, match="ROI classifier"):
        logic.classify(p, waitForCompletion=True)


def test_blocking_failure_raises_the_workers_message(monkeypatch, tmp_path):
    module = _install_stubs(monkeypatch, tmp_path, _launch_5_10)
    logic = module.MedDeepRecogLogic()
    p = _parameters(module, FakeNode("scan", _volume()), "no-such-model")
    with pytest.raises(WorkerError) as info:
        logic.classify(p, waitForCompletion=True)
    assert "no-such-model" in str(info.value) and "Traceback" not in str(info.value)
    assert p.outputTable is None and not logic.isRunning("classify")


def test_second_volume_needs_a_worker_that_accepts_it(monkeypatch, tmp_path, tiny_package):
    """A multi-modal run is checked against the worker's own parser before anything starts."""
    from MedDeepRecogLib.errors import MedDeepRecogError
    from MedDeepRecogLib.slicer_bridge import WorkerCommand
    module = _install_stubs(monkeypatch, tmp_path, _launch_5_10)
    logic = module.MedDeepRecogLogic()
    p = _parameters(module, FakeNode("t1", _volume()), str(tiny_package))
    p.secondVolume = FakeNode("t2", _volume())
    try:
        WorkerCommand.classify(["a.nrrd"], "m", "o", python=sys.executable, second_input="b.nrrd").validate()
    except MedDeepRecogError:
        with pytest.raises(MedDeepRecogError, match="does not accept this classify command.*--second-input"):
            logic.classify(p, waitForCompletion=True)
        assert p.outputTable is None and not logic.isRunning("classify")
    else:  # the worker has learnt multi-modal input: a single-modality model refuses the second volume clearly
        from MedDeepRecogLib.slicer_bridge import WorkerError
        with pytest.raises(WorkerError, match="takes one modality"):
            logic.classify(p, waitForCompletion=True)
        assert p.outputTable is None and not logic.isRunning("classify")


@pytest.mark.parametrize("launch", [_launch_5_12, _launch_5_10], ids=["slicer-5.12", "slicer-5.10"])
def test_non_blocking_classify_reports_progress_then_result(monkeypatch, tmp_path, tiny_package, launch):
    module = _install_stubs(monkeypatch, tmp_path, launch)
    if launch is _launch_5_10:  # the old signature has no 'blocking': calling it with one raises TypeError
        monkeypatch.setattr(sys.modules["slicer.util"], "launchConsoleProcess",
                            lambda args, useStartupEnvironment=True, updateEnvironment=None, cwd=None: None)
    FakeTimer.instances.clear()
    logic = module.MedDeepRecogLogic()
    p = _parameters(module, FakeNode("scan", _volume()), str(tiny_package))
    events, finished = [], []
    job = logic.classify(p, onProgress=events.append, onFinished=lambda s, e: finished.append((s, e)))
    assert logic.isRunning("classify") and job.running
    deadline = time.monotonic() + 300
    while not finished:
        for timer in FakeTimer.instances:  # the Qt event loop
            if timer.active:
                timer.callback()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    summary, error = finished[0]
    assert error is None, error
    assert summary.label in ("normal", "lesion") and p.outputHeatmap is not None
    assert events and events[-1].stage == "done"
    assert bool(FakeTimer.instances) == (launch is _launch_5_10)
    assert not logic.isRunning("classify")


@pytest.mark.parametrize("launch", [_launch_5_12, _launch_5_10], ids=["slicer-5.12", "slicer-5.10"])
def test_cancel_kills_the_worker_and_reports_cancelled(monkeypatch, tmp_path, launch):
    _install_stubs(monkeypatch, tmp_path, launch)
    if launch is _launch_5_10:
        monkeypatch.setattr(sys.modules["slicer.util"], "launchConsoleProcess",
                            lambda args, useStartupEnvironment=True, updateEnvironment=None, cwd=None: None)
    FakeTimer.instances.clear()
    jobs = importlib.import_module("MedDeepRecogSlicerLib.jobs")
    command = types.SimpleNamespace(args=[sys.executable, "-c", "import time\nwhile True: time.sleep(0.1)"])
    finished = []
    job = jobs.WorkerJob(command, onFinished=lambda s, e: finished.append(e)).start()
    pid = (job._proc or job._worker.proc).pid
    time.sleep(0.3)
    job.cancel()
    deadline = time.monotonic() + 30
    while not finished:
        for timer in FakeTimer.instances:
            if timer.active:
                timer.callback()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert finished[0].cancelled and not pid_alive(pid) and not job.running
