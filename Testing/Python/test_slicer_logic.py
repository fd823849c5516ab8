"""MedDeepRecog.py's logic and jobs on Slicer's real core (``slicer_core`` fixture: real MRML scene, nodes, storage
nodes and logics, Slicer's own ``slicer/util.py``), with the real worker process.

Checked on real MRML: the heatmap's IJKToRAS equals the scan's; the table's columns and values; segment names and
colours; the heatmap's colour node, threshold and opacity; the slice composite nodes; node counts stable over three
re-runs; a saved scene (data written beside the ``.mrml``) that loads back with the heatmap; ``exportNode`` not
leaking a file format between calls; the parameter node rejecting what Slicer 5.12 rejects; the worker job's
callbacks arriving on the main thread through Qt timers (Slicer 5.12) or the bridge's poll timer (5.10); Cancel.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from MedDeepRecogLib.slicer_bridge import WorkerError, worker_environment
from MedDeepRecogLib.slicer_bridge.process_runner import pid_alive


def add_volume(env, name="CT chest #1"):
    """An int16 volume with an oblique, anisotropic IJK-to-RAS, as a scan loaded in Slicer."""
    z, y, x = np.mgrid[:18, :26, :30]
    voxels = (200 * np.exp(-((x - 20) ** 2 + (y - 10) ** 2 + (z - 9) ** 2) / 30.0)).astype(np.int16)
    c, s = np.cos(np.deg2rad(17)), np.sin(np.deg2rad(17))
    ijk_to_ras = np.array([[-0.7 * c, 1.3 * s, 0, 5.0], [-0.7 * s, -1.3 * c, 0, 40.0], [0, 0, 3.0, 12.0],
                           [0, 0, 0, 1]])
    return env.slicer.util.addVolumeFromArray(voxels, ijkToRAS=ijk_to_ras, name=name)


def matrix(env, node):
    import vtk
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return env.slicer.util.arrayFromVTKMatrix(m)


NODE_CLASSES = ("vtkMRMLScalarVolumeNode", "vtkMRMLSegmentationNode", "vtkMRMLTableNode", "vtkMRMLStorageNode",
                "vtkMRMLDisplayNode", "vtkMRMLColorLegendDisplayNode", "vtkMRMLScriptedModuleNode")


def test_classify_fills_real_nodes_and_reruns_reuse_them(slicer_core, tiny_package):
    env, module = slicer_core, slicer_core.module
    logic = module.MedDeepRecogLogic()
    volume = add_volume(env)
    p = logic.getParameterNode()
    p.inputVolume, p.model, p.device = volume, str(tiny_package), "cpu"
    p.heatmapThreshold, p.heatmapOpacity = 0.3, 0.6
    counts = []
    for _ in range(3):
        result = logic.classify(p, waitForCompletion=True)
        counts.append({cls: env.count(cls) for cls in NODE_CLASSES})
    assert counts[0] == counts[1] == counts[2], counts  # no node left behind by a re-run (display, storage too)

    # the heatmap overlays the scan exactly
    heatmap = p.outputHeatmap
    assert heatmap.GetImageData().GetDimensions() == volume.GetImageData().GetDimensions()
    assert np.allclose(matrix(env, heatmap), matrix(env, volume), rtol=0, atol=1e-9)  # oblique, via NRRD text
    values = env.slicer.util.arrayFromVolume(heatmap)
    assert values.min() >= 0.0 and values.max() <= 1.0 + 1e-6 and values.max() > 0

    # probability table: named columns, one row per class, in result order, summing to 1, and the label's result
    table = p.outputTable
    assert [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())] == ["class", "probability", "result"]
    rows = [(table.GetCellText(r, 0), float(table.GetCellText(r, 1))) for r in range(table.GetNumberOfRows())]
    assert [c for c, _ in rows] == [c for c, _ in result.probabilities]
    assert np.allclose([v for _, v in rows], [v for _, v in result.probabilities], atol=1e-6)
    assert abs(sum(v for _, v in rows) - 1.0) < 1e-3 and table.GetAttribute("MedDeepRecog.label") == result.label

    # the hot region segment, named and coloured
    segmentation = p.outputSegmentation.GetSegmentation()
    name = f"heatmap >= {module.HOT_REGION_THRESHOLD}"
    segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(name))
    assert [segmentation.GetSegment(s).GetName() for s in segmentation.GetSegmentIDs()] == [name]
    assert np.allclose(segment.GetColor(), (0.99, 0.65, 0.04))
    assert segmentation.ContainsRepresentation("Closed surface")

    # heatmap display: Inferno over 0..1, transparent below the panel's threshold; foreground at its opacity
    display = heatmap.GetDisplayNode()
    assert display.GetColorNodeID() == "vtkMRMLColorTableNodeFileInferno.txt"
    assert env.scene.GetNodeByID(display.GetColorNodeID()).GetName() == "Inferno"
    assert (display.GetWindow(), display.GetLevel()) == (1.0, 0.5) and not display.GetAutoWindowLevel()
    assert display.GetApplyThreshold() and display.GetLowerThreshold() == pytest.approx(0.3)
    for view in ("Red", "Yellow", "Green"):
        composite = env.core.composite_node(view)
        assert composite.GetBackgroundVolumeID() == volume.GetID()
        assert composite.GetForegroundVolumeID() == heatmap.GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.6)
    assert not list(env.temporaryPath.glob("MedDeepRecog-*"))  # exchange folders removed


def test_saved_scene_keeps_heatmap_and_preview(slicer_core, tiny_package, tmp_path):
    """Save as the Save dialog does by default (nodes marked modified, written beside the .mrml); load it back."""
    from slicer_core_fixture import load_scene_fresh
    env, module = slicer_core, slicer_core.module
    logic = module.MedDeepRecogLogic()
    volume = add_volume(env, "scan")
    p = logic.getParameterNode()
    p.inputVolume, p.model, p.device, p.preset = volume, str(tiny_package), "cpu", "custom"
    p.clipIntensity, p.clipMin, p.clipMax = True, 10.0, 60.0
    logic.classify(p, waitForCompletion=True)
    logic.preview(p, waitForCompletion=True)
    for node in (p.outputHeatmap, p.preprocessedVolume):
        storage = node.GetStorageNode()
        assert storage is None or env.temporaryPath not in Path(storage.GetFileName() or "/").parents
        assert node.GetModifiedSinceRead(), f"{node.GetName()} would be skipped by the Save dialog"
    expected = env.slicer.util.arrayFromVolume(p.outputHeatmap).copy()
    mrml = env.save_scene(tmp_path / "saved")
    text = mrml.read_text(encoding="utf-8")
    assert "MedDeepRecog temporary" not in text and str(env.temporaryPath) not in text

    loaded = load_scene_fresh(mrml)
    try:
        heat = loaded.scene.GetFirstNodeByName("scan heatmap")
        preview = loaded.scene.GetFirstNodeByName("scan preprocessed")
        assert heat is not None and heat.GetImageData() is not None
        from MedDeepRecogLib.slicer_views import _array
        assert np.allclose(_array(heat), expected)
        assert preview is not None and preview.GetImageData() is not None
        parameters = loaded.scene.GetSingletonNode("MedDeepRecog", "vtkMRMLScriptedModuleNode")
        assert parameters.GetNodeReference("outputHeatmap") is heat
    finally:
        loaded.close()


def test_export_uses_each_files_own_format(slicer_core):
    """Slicer's exportNode keeps a default ``properties`` dict between calls; the module passes its own."""
    env = slicer_core
    volume = add_volume(env, "scan")
    segmentation = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "labels")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segmentId = segmentation.GetSegmentation().AddEmptySegment("tumor", "tumor")
    mask = np.zeros((18, 26, 30), np.uint8)
    mask[5:10, 5:10, 5:10] = 1
    env.slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentation, segmentId, volume)
    scene_io = env.module.scene_io
    out = env.temporaryPath / "export"
    for _ in range(2):
        assert scene_io.exportVolume(volume, out).is_file()
        assert scene_io.exportSegmentation(segmentation, out).is_file()
    assert [e["fileFormat"] for e in env.io.exports[-4:]] == ["NRRD (.nrrd)", "Segmentation (.seg.nrrd)"] * 2


def test_parameter_node_rejects_what_slicer_rejects(slicer_core):
    p = slicer_core.module.MedDeepRecogLogic().getParameterNode()
    for field, value, error in (("preset", "nope", ValueError), ("epochs", 0, ValueError),
                                ("epochs", 2.5, TypeError), ("heatmapOpacity", 1.5, ValueError),
                                ("device", "tpu", ValueError)):
        with pytest.raises(error):
            setattr(p, field, value)
    p.epochs, p.preset = 3, "brain-mri"
    assert (p.epochs, p.preset) == (3, "brain-mri")
    assert p.parameterNode.GetParameter("epochs") == "3"  # stored in the real parameter node


def test_a_run_without_heatmap_takes_the_last_ones_off_and_outputs_take_the_new_scans_name(slicer_core,
                                                                                          tiny_package):
    """Scan A classified with a heatmap (and a per-slice table left from a 2D model), then scan B with explain
    none: nothing of A's may stay shown as B's result, and the reused nodes are named for B."""
    env, module = slicer_core, slicer_core.module
    logic = module.MedDeepRecogLogic()
    p = logic.getParameterNode()
    p.inputVolume, p.model, p.device = add_volume(env, "scan A"), str(tiny_package), "cpu"
    logic.classify(p, waitForCompletion=True)
    heatmapId = p.outputHeatmap.GetID()
    assert p.outputHeatmap.GetName() == "scan A heatmap" and p.outputTable.GetName() == "scan A probabilities"
    p.sliceTable = env.slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", "scan A per-slice results")

    p.inputVolume, p.explainMethod = add_volume(env, "scan B"), "none"
    logic.classify(p, waitForCompletion=True)
    assert p.outputHeatmap is None and env.scene.GetNodeByID(heatmapId) is None
    assert p.sliceTable is None and env.count("vtkMRMLTableNode") == 1
    segmentation = p.outputSegmentation.GetSegmentation()
    assert not [segmentation.GetSegment(s).GetName() for s in segmentation.GetSegmentIDs()]
    assert p.outputTable.GetName() == "scan B probabilities"
    assert p.outputSegmentation.GetName() == "scan B segmentations"
    for view in ("Red", "Yellow", "Green"):
        assert env.core.composite_node(view).GetForegroundVolumeID() is None


def test_a_run_that_cannot_start_leaves_no_exchange_folder(slicer_core, tiny_package, monkeypatch):
    """The scan is exported into a new folder before the worker starts; if the export or the start fails, the folder
    (a full copy of the scan) is removed, as after a run."""
    env, module = slicer_core, slicer_core.module
    logic = module.MedDeepRecogLogic()
    p = logic.getParameterNode()
    p.inputVolume, p.model, p.device = add_volume(env), str(tiny_package), "cpu"

    def broken(volumeNode, folder):
        (folder / "partial.nrrd").write_bytes(b"NRRD0004")
        raise RuntimeError("disk full")
    with monkeypatch.context() as patch:
        patch.setattr(module.scene_io, "exportVolume", broken)
        for run in (logic.classify, logic.preview, logic.robustness):
            with pytest.raises(RuntimeError, match="disk full"):
                run(p)
    with monkeypatch.context() as patch:
        patch.setattr(module.MedDeepRecogLogic, "isRunning", lambda self, kind: True)
        with pytest.raises(RuntimeError, match="already in progress"):
            logic.classify(p)
    assert not list(env.temporaryPath.glob("MedDeepRecog-*"))


def test_the_default_input_is_a_scan_not_a_label_map_or_an_output(slicer_core, tiny_package):
    env, module = slicer_core, slicer_core.module
    logic = module.MedDeepRecogLogic()
    p = logic.getParameterNode()
    env.slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "tumour label")
    p.outputHeatmap = env.slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "old heatmap")
    assert logic.defaultInputVolume(p) is None
    colour = env.slicer.mrmlScene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "ultrasound (RGB)")
    scan = add_volume(env, "CT")
    assert logic.defaultInputVolume(p) is colour  # the first scan, a colour ultrasound as much as a CT
    env.slicer.mrmlScene.RemoveNode(colour)
    assert logic.defaultInputVolume(p) is scan


def test_auto_classifies_a_brain_mr_with_the_model_the_core_chose(slicer_core, shared_data):
    """The panel's "auto" entry: the worker routes brain1 to the brain model, and the result, its route and the
    per-slice table come back into the scene."""
    env, module = slicer_core, slicer_core.module
    logic = module.MedDeepRecogLogic()
    p = logic.getParameterNode()
    scan = shared_data / "pyradiomics_testcases" / "brain1_image.nrrd"
    p.inputVolume = env.slicer.util.loadVolume(str(scan), {"name": "brain1"})
    p.model, p.device, p.explainMethod = module.AUTO_MODEL, "cpu", "none"
    result = logic.classify(p, waitForCompletion=True)
    assert result.model.startswith("brain-tumour-mri@") and result.raw["route"]["model"] == "brain-tumour-mri"
    assert "MRBrain" in result.raw["route"]["reason"]
    assert p.sliceTable is not None and p.sliceTable.GetNumberOfRows() == len(result.raw["per_slice"])


def test_the_segment_class_table_follows_added_removed_and_renamed_segments(slicer_core):
    """What Fine-tune sends as its class map: one row per segment as the segmentation is now, a class the user typed
    kept while its segment stays."""
    env, module = slicer_core, slicer_core.module
    logic = module.MedDeepRecogLogic()
    p = logic.getParameterNode()
    node = env.slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "labels")
    segmentation = node.GetSegmentation()
    for name in ("liver", "cyst"):
        segmentation.AddEmptySegment(name, name)
    p.trainingSegmentation = node
    logic.syncClassMap(p)
    assert module.scene_io.readTableColumns(p.classMapTable) == [("liver", "liver"), ("cyst", "cyst")]
    p.classMapTable.SetCellText(0, 1, "organ")

    segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("cyst")).SetName("lesion")
    segmentation.AddEmptySegment("spleen", "spleen")
    logic.syncClassMap(p)
    assert module.scene_io.readTableColumns(p.classMapTable) == [("liver", "organ"), ("lesion", "lesion"),
                                                                 ("spleen", "spleen")]
    segmentation.RemoveSegment("liver")
    logic.syncClassMap(p)
    assert module.scene_io.readTableColumns(p.classMapTable) == [("lesion", "lesion"), ("spleen", "spleen")]
    assert env.count("vtkMRMLTableNode") == 1


def test_blocking_failure_raises_the_workers_message(slicer_core):
    logic = slicer_core.module.MedDeepRecogLogic()
    p = logic.getParameterNode()
    p.inputVolume, p.model, p.device = add_volume(slicer_core), "no-such-model", "cpu"
    with pytest.raises(WorkerError) as info:
        logic.classify(p, waitForCompletion=True)
    assert "no-such-model" in str(info.value) and "Traceback" not in str(info.value)
    assert p.outputTable is None and not logic.isRunning("classify")


def _old_launch(args, useStartupEnvironment=True, updateEnvironment=None, cwd=None):
    """Slicer 5.10's signature: no ``blocking``."""
    raise AssertionError("not reached: called with 'blocking' it raises TypeError first")


@pytest.mark.parametrize("slicer_version", ["5.12", "5.10"])
def test_non_blocking_classify_calls_back_on_the_main_thread(slicer_core, tiny_package, monkeypatch,
                                                             slicer_version):
    env = slicer_core
    if slicer_version == "5.10":
        monkeypatch.setattr(env.slicer.util, "launchConsoleProcess", _old_launch)
    logic = env.module.MedDeepRecogLogic()
    p = logic.getParameterNode()
    p.inputVolume, p.model, p.device = add_volume(env), str(tiny_package), "cpu"
    threads, events, finished = set(), [], []

    def progress(event):
        threads.add(threading.current_thread())
        events.append(event)

    def done(summary, error):
        threads.add(threading.current_thread())
        finished.append((summary, error))
    job = logic.classify(p, onProgress=progress, onFinished=done)
    assert logic.isRunning("classify") and job.running and not finished
    env.loop.run_until(lambda: finished)
    summary, error = finished[0]
    assert error is None, error
    assert threads == {threading.main_thread()}  # MRML is touched on the GUI thread only
    assert summary.label in ("normal", "lesion", "uncertain") and p.outputHeatmap is not None
    assert events and events[-1].stage == "done" and not logic.isRunning("classify")
    assert (job._timer is not None) == (slicer_version == "5.10")


def test_import_model_runs_in_the_background_and_reports_the_package(slicer_core, tiny_package):
    """Import model unpacks and checks a package in the worker: the call returns at once, the package's id and
    version arrive through the callback, and a bad package's message arrives the same way."""
    env = slicer_core
    logic = env.module.MedDeepRecogLogic()
    finished = []
    job = logic.importModel(str(tiny_package), onFinished=lambda summary, error: finished.append((summary, error)))
    assert job.running and not finished
    env.loop.run_until(lambda: finished)
    imported, error = finished[0]
    assert error is None, error
    assert imported["id"] == tiny_package.parent.name and imported["version"] == tiny_package.name
    finished.clear()
    logic.importModel(str(tiny_package.parent / "no-such-version"),
                      onFinished=lambda summary, error: finished.append((summary, error)))
    env.loop.run_until(lambda: finished)
    assert finished[0][0] is None and "no-such-version" in str(finished[0][1])


@pytest.mark.parametrize("slicer_version", ["5.12", "5.10"])
def test_cancel_kills_the_worker_and_reports_cancelled(slicer_core, monkeypatch, slicer_version):
    env = slicer_core
    if slicer_version == "5.10":
        monkeypatch.setattr(env.slicer.util, "launchConsoleProcess", _old_launch)
    import types
    jobs = sys.modules["MedDeepRecogSlicerLib.jobs"]
    command = types.SimpleNamespace(args=[sys.executable, "-c", "import time\nwhile True: time.sleep(0.1)"])
    finished = []
    job = jobs.WorkerJob(command, onFinished=lambda s, e: finished.append(e)).start()
    pid = (job._proc or job._worker.proc).pid
    env.loop.processEvents(0.3)
    job.cancel()
    env.loop.run_until(lambda: finished, timeout_s=30)
    assert finished[0].cancelled and not pid_alive(pid) and not job.running


def test_second_volume_needs_a_worker_that_accepts_it(slicer_core, tiny_package):
    """A multi-modal run is checked against the worker's own parser before anything starts."""
    from MedDeepRecogLib.errors import MedDeepRecogError
    from MedDeepRecogLib.slicer_bridge import WorkerCommand
    logic = slicer_core.module.MedDeepRecogLogic()
    p = logic.getParameterNode()
    p.inputVolume, p.model, p.device = add_volume(slicer_core, "t1"), str(tiny_package), "cpu"
    p.secondVolume = add_volume(slicer_core, "t2")
    try:
        WorkerCommand.classify(["a.nrrd"], "m", "o", python=sys.executable, second_input="b.nrrd").validate()
    except MedDeepRecogError:
        with pytest.raises(MedDeepRecogError, match="does not accept this classify command.*--second-input"):
            logic.classify(p, waitForCompletion=True)
    else:
        with pytest.raises(WorkerError, match="takes one modality"):
            logic.classify(p, waitForCompletion=True)
    assert p.outputTable is None and not logic.isRunning("classify")


def test_worker_output_is_written_in_the_encoding_the_console_reader_decodes(slicer_core, monkeypatch):
    """launchConsoleProcess decodes the worker's output in the locale's encoding (cp1252 on a Windows Slicer): the
    worker is told to write in that encoding, escaping what it lacks, so a line naming a file 'Álvaro_ĉ.nrrd' reads
    back whole instead of raising a decode error that drops it."""
    import locale
    import subprocess

    from MedDeepRecogSlicerLib.jobs import consoleEnvironment

    monkeypatch.setattr(locale, "getpreferredencoding", lambda do_setlocale=True: "cp1252")
    update = consoleEnvironment(worker_environment())
    assert update["PYTHONIOENCODING"] == "cp1252:backslashreplace"
    env = {**worker_environment(), **update}
    line = subprocess.run([sys.executable, "-c", "print('error: /data/\u00c1lvaro_\u0109.nrrd: no such file')"],
                          env=env, capture_output=True, encoding="cp1252", check=True).stdout.strip()
    assert line == "error: /data/\u00c1lvaro_\\u0109.nrrd: no such file"


class _PropertyComboBox:
    """A real Qt combo box with PythonQt's property-style API (``currentData``, ``currentIndex = i``), as the
    module's widget code sees ``ui.modelComboBox`` in Slicer."""

    def __init__(self):
        widgets = pytest.importorskip("PySide6.QtWidgets")
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
        self.__dict__["app"] = widgets.QApplication.instance() or widgets.QApplication([])
        self.__dict__["box"] = widgets.QComboBox()

    def __getattr__(self, name):
        if name == "currentData":
            return self.box.currentData()
        if name == "currentIndex":
            return self.box.currentIndex()
        return getattr(self.box, name)

    def __setattr__(self, name, value):
        assert name == "currentIndex", name
        self.box.setCurrentIndex(value)


def test_the_model_saved_in_the_scene_survives_the_model_list_loading(slicer_core):
    """Refilling the model list selects its first item ("auto"), and the selection signal wrote that over the
    model a loaded scene had saved. The saved model is kept; one this machine lacks is kept, listed as not
    installed, and said, never silently replaced."""
    from types import SimpleNamespace

    module = slicer_core.module
    widget = module.MedDeepRecogWidget.__new__(module.MedDeepRecogWidget)   # the panel's methods, no Qt panel
    combo = _PropertyComboBox()
    widget.ui = SimpleNamespace(modelComboBox=combo, modelInfoLabel=SimpleNamespace(text=""))
    widget._parameterNode = module.MedDeepRecogLogic().getParameterNode()
    combo.box.currentIndexChanged.connect(widget.onModelSelected)
    installed = [{"id": "body-region", "version": "1.0.0", "source": "bundled", "class_names": ["a", "b"]},
                 {"id": "brain-tumour-mri", "version": "1.3.0", "source": "bundled", "class_names": ["c", "d"]}]
    widget._parameterNode.model = "brain-tumour-mri@1.3.0"
    widget._showModels(installed, None, None)
    assert widget._parameterNode.model == "brain-tumour-mri@1.3.0" and combo.currentData == "brain-tumour-mri@1.3.0"
    widget._parameterNode.model = "adrenal-mass-3d@9.9.9"
    widget._showModels(installed, None, None)
    assert widget._parameterNode.model == "adrenal-mass-3d@9.9.9" and combo.currentData == "adrenal-mass-3d@9.9.9"
    assert "adrenal-mass-3d@9.9.9 is not installed here" in widget.ui.modelInfoLabel.text
    combo.currentIndex = combo.box.findData("body-region@1.0.0")   # the user's own choice is stored
    assert widget._parameterNode.model == "body-region@1.0.0"


def test_the_panel_shows_an_roi_result_and_resets_after_a_run_that_cannot_start(slicer_core):
    """Classify with an ROI classifier (a fine-tuned model) returned segment labels, which have no worker JSON of
    their own: the panel reported "classify failed" although the labels were in. And a run refused before its
    worker started left "Starting…" in the status line and the previous run's answer beside the error."""
    from types import SimpleNamespace

    from MedDeepRecogLib.slicer_bridge.outputs import SegmentLabels

    module = slicer_core.module
    widget = module.MedDeepRecogWidget.__new__(module.MedDeepRecogWidget)
    widget.ui = SimpleNamespace(statusLabel=SimpleNamespace(text=""), resultLabel=SimpleNamespace(text=""),
                                faithfulnessLabel=SimpleNamespace(text=""))
    labels = SegmentLabels("roi@1.0.1", ["x", "y"],
                           [{"segment": "a", "label": "y", "probabilities": {"x": 0.25, "y": 0.75}}])
    widget._showResult(labels)
    assert widget.ui.statusLabel.text == "Done (roi@1.0.1)." and widget.ui.resultLabel.text == labels.result_text()

    widget._parameterNode = None
    widget.logic = SimpleNamespace(isRunning=lambda kind: False, ensureDependencies=lambda: None)
    widget.onParameterNodeModified = lambda *a: None

    def refuse(*args, **kwargs):
        raise ValueError("the view is 90° from the scan's axial slices")

    widget.ui.resultLabel.text = "<b>benign</b> (0.80)"   # the previous run's answer
    with pytest.raises(ValueError, match="90°"):   # Slicer's tryWithErrorDisplay shows it, then re-raises it
        widget._run("classify", refuse, None, widget.ui.statusLabel, None)
    # no "Starting…", no old answer: the line says why nothing started
    assert widget.ui.statusLabel.text == "Not started: the view is 90° from the scan's axial slices"
    assert widget.ui.resultLabel.text == ""


def _labelmap_geometry(env, segmentation_node, segment_id):
    """``(image-to-world matrix, extent)`` of a segment's binary labelmap as the segmentation holds it."""
    import vtk
    labelmap = env.slicer.vtkOrientedImageData()
    segmentation_node.GetBinaryLabelmapRepresentation(segment_id, labelmap)
    m = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(m)
    return env.slicer.util.arrayFromVTKMatrix(m), labelmap.GetExtent()


def test_segment_loads_the_organs_on_the_scans_grid_and_reruns_reuse_the_node(slicer_core):
    """Segment with the bundled ts-organs-seg on the bundled abdominal CT: liver, spleen and kidney in the output
    segmentation, on the scan's own grid (each segment's voxels on the scan's grid are the ones the worker counted),
    shown in 3D; a re-run replaces them in the same node and keeps segments of other origins."""
    from MedDeepRecogLib.resources import sample_path
    env, module = slicer_core, slicer_core.module
    logic = module.MedDeepRecogLogic()
    p = logic.getParameterNode()
    volume = env.slicer.util.loadVolume(str(sample_path("abdomen_ct.nii.gz")), {"name": "abdomen_ct"})
    p.inputVolume, p.model, p.device = volume, "ts-organs-seg", "cpu"
    volumes = logic.segment(p, waitForCompletion=True)
    node = p.outputSegmentation
    assert module.scene_io.segmentNames(node) == ["liver", "spleen", "kidney"]
    assert [name for name, _, _ in volumes.segments] == ["liver", "spleen", "kidney"]
    assert all(ml > 0 and voxels > 0 for _, ml, voxels in volumes.segments) and volumes.model == "ts-organs-seg@1.0.0"
    dims = volume.GetImageData().GetDimensions()
    segmentation = node.GetSegmentation()
    for name, _, voxels in volumes.segments:
        segment_id = segmentation.GetSegmentIdBySegmentName(name)
        to_world, extent = _labelmap_geometry(env, node, segment_id)
        assert np.allclose(to_world, matrix(env, volume), rtol=0, atol=1e-6), name
        assert all(0 <= extent[2 * i] and extent[2 * i + 1] < dims[i] for i in range(3)), (name, extent, dims)
        mask = env.slicer.util.arrayFromSegmentBinaryLabelmap(node, segment_id, volume)
        assert mask.shape == env.slicer.util.arrayFromVolume(volume).shape and int(mask.sum()) == voxels, name
    assert segmentation.ContainsRepresentation("Closed surface")

    segmentation.AddEmptySegment("tumour", "tumour")   # drawn by the user: not the model's
    counts = {cls: env.count(cls) for cls in NODE_CLASSES}
    again = logic.segment(p, waitForCompletion=True)
    assert p.outputSegmentation is node and env.count("vtkMRMLSegmentationNode") == 1
    assert {cls: env.count(cls) for cls in NODE_CLASSES} == counts
    assert sorted(module.scene_io.segmentNames(node)) == ["kidney", "liver", "spleen", "tumour"]
    assert again.segments == volumes.segments
    assert not list(env.temporaryPath.glob("MedDeepRecog-*"))  # exchange folders removed


def test_segment_and_classify_each_refuse_the_others_model_in_the_panels_words(slicer_core, tiny_package):
    env, module = slicer_core, slicer_core.module
    logic = module.MedDeepRecogLogic()
    p = logic.getParameterNode()
    p.inputVolume, p.model, p.device = add_volume(env), str(tiny_package), "cpu"
    with pytest.raises(ValueError, match="not a segmentation model: use Classify"):
        logic.segment(p)
    p.model = "ts-organs-seg"
    with pytest.raises(ValueError, match="is a segmentation model: use Segment"):
        logic.classify(p)
    assert not logic.isRunning("segment") and not logic.isRunning("classify")
    assert not list(env.temporaryPath.glob("MedDeepRecog-*"))


def test_segment_is_offered_for_segmentation_models_and_classify_for_classifiers(slicer_core):
    """The run buttons follow the task ``models --json`` lists for the chosen model (model.json for a model saved
    by id); the list marks segmentation packages; Segment's result line lists each segment's ml."""
    from types import SimpleNamespace

    from MedDeepRecogLib.slicer_bridge.outputs import SegmentVolumes

    env, module = slicer_core, slicer_core.module
    widget = module.MedDeepRecogWidget.__new__(module.MedDeepRecogWidget)   # the panel's methods, no Qt panel
    widget.logic = module.MedDeepRecogLogic()
    combo = _PropertyComboBox()
    buttons = ("classifyButton", "classifySliceButton", "segmentButton", "robustnessButton", "previewButton",
               "finetuneButton")
    widget.ui = SimpleNamespace(modelComboBox=combo, modelInfoLabel=SimpleNamespace(text=""),
                                statusLabel=SimpleNamespace(text=""), resultLabel=SimpleNamespace(text=""),
                                faithfulnessLabel=SimpleNamespace(text=""),
                                **{name: SimpleNamespace(text="", enabled=False) for name in buttons})
    p = widget._parameterNode = widget.logic.getParameterNode()
    models = widget.logic.listModels(waitForCompletion=True)   # the real catalog, with each package's task
    assert {m["id"]: m["task"] for m in models}["ts-organs-seg"] == "segmentation"
    widget._showModels(models, None, None)
    labels = {combo.box.itemData(i): combo.box.itemText(i) for i in range(combo.box.count())}
    assert labels["ts-organs-seg@1.0.0"].endswith("(segmentation)")
    assert not labels["body-region@1.0.0"].endswith("(segmentation)")

    def offered(model, volume=True):
        p.inputVolume, p.model = (add_volume(env) if volume else None), model
        widget._updateRunButtons(p)
        return {name for name in buttons if getattr(widget.ui, name).enabled}
    assert offered("ts-organs-seg@1.0.0") == {"segmentButton", "previewButton"}
    assert offered("ts-organs-seg") == {"segmentButton", "previewButton"}   # saved by id: read from model.json
    assert offered("ts-organs-seg@1.0.0", volume=False) == set()
    for classifier in ("body-region@1.0.0", module.AUTO_MODEL):   # body-region, a 2D model, also classifies slices
        assert offered(classifier) - {"classifySliceButton"} == {"classifyButton", "robustnessButton",
                                                                   "previewButton"}, classifier
    combo.currentIndex = combo.box.findData("ts-organs-seg@1.0.0")
    widget.onModelSelected()
    assert widget.ui.modelInfoLabel.text.startswith("segments: liver, spleen, kidney (use Segment).")

    widget._showResult(SegmentVolumes("ts-organs-seg@1.0.0", Path("x.seg.nrrd"),
                                      [("liver", 745.09, 27596), ("spleen", 253.91, 9404)]))
    assert widget.ui.statusLabel.text == "Done (ts-organs-seg@1.0.0)."
    assert widget.ui.resultLabel.text == "liver: <b>745.1 ml</b><br>spleen: <b>253.9 ml</b>"


def test_the_model_line_says_when_validation_figures_are_optimistic_not_held_out_or_missing(slicer_core):
    """The model line printed "dice 0.74, hd95_mm 9.19" for a package whose figures were not held out and chose its
    checkpoint (the Segment result line and the CLI say so), printed train_time_s as a metric, and said nothing for
    a package without validation data."""
    from types import SimpleNamespace

    from MedDeepRecogLib.contract import validation_caveats

    module = slicer_core.module
    widget = module.MedDeepRecogWidget.__new__(module.MedDeepRecogWidget)
    combo = _PropertyComboBox()
    widget.ui = SimpleNamespace(modelComboBox=combo, modelInfoLabel=SimpleNamespace(text=""))
    widget._parameterNode = module.MedDeepRecogLogic().getParameterNode()
    notHeldOut = {"dice": 0.736, "hd95_mm": 9.19, "held_out": False, "selected_by": "val dice",
                  "held_out_note": "base trained on slices 5:15", "train_time_s": 2458.6}
    installed = [{"id": "seg", "version": "1.0.0", "source": "user", "task": "segmentation",
                  "class_names": ["background", "liver"], "metrics": notHeldOut},
                 {"id": "cls", "version": "1.0.0", "source": "user", "class_names": ["a", "b"],
                  "metrics": {"auc": 0.97, "train_time_s": 2458.6, "selected_by": "last"}},
                 {"id": "new", "version": "1.0.1", "source": "user", "task": "segmentation",
                  "class_names": ["background", "liver"], "metrics": {"note": "no validation data: not scored"}}]
    shown = {}
    for key in ("seg@1.0.0", "cls@1.0.0", "new@1.0.1"):
        widget._parameterNode.model = key
        widget._showModels(installed, None, None)
        shown[key] = widget.ui.modelInfoLabel.text
    assert all(words in shown["seg@1.0.0"] for words in validation_caveats(notHeldOut))
    assert "NOT held out: base trained on slices 5:15" in shown["seg@1.0.0"] and "optimistic" in shown["seg@1.0.0"]
    assert shown["cls@1.0.0"] == "classes: a, b. Validation figures: auc 0.97."
    assert "train_time_s" not in shown["seg@1.0.0"]
    assert shown["new@1.0.1"] == "segments: liver (use Segment). No validation data: not scored"


def test_a_model_given_by_its_plain_id_is_its_newest_installed_version(slicer_core):
    """``p.model = "ts-organs-seg"`` (as the module's self-test and scripts set it) was reported "not installed here"
    although it was bundled: the list's keys are "id@version"."""
    from types import SimpleNamespace

    module = slicer_core.module
    widget = module.MedDeepRecogWidget.__new__(module.MedDeepRecogWidget)
    combo = _PropertyComboBox()
    widget.ui = SimpleNamespace(modelComboBox=combo, modelInfoLabel=SimpleNamespace(text=""))
    widget._parameterNode = module.MedDeepRecogLogic().getParameterNode()
    installed = [{"id": "ts-organs-seg", "version": v, "source": "bundled", "task": "segmentation",
                  "class_names": ["background", "liver"]} for v in ("1.0.0", "1.0.10", "1.0.9", "old")]
    widget._parameterNode.model = "ts-organs-seg"
    widget._showModels(installed, None, None)
    assert combo.currentData == "ts-organs-seg@1.0.10" == widget._parameterNode.model
    assert "not installed" not in widget.ui.modelInfoLabel.text
    assert all("not installed" not in combo.itemText(i) for i in range(combo.count()))
    widget._parameterNode.model = "no-such-model"   # an id listed nowhere is still said
    widget._showModels(installed, None, None)
    assert "no-such-model is not installed here" in widget.ui.modelInfoLabel.text
