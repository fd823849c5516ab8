"""What the panel runs on, on Slicer's real core (``slicer_core`` fixture): the input selector offers what the chosen
model reads (label maps and segmentations for the adrenal mask models, scans for the others, never a heatmap of this
module); a label map classified with a mask model gives the command line's answer on the 0/255 mask cut about its
gland that the model learnt from (the core cuts it: ``inference.model_input.image_for_model``); a segment of a
segmentation is classified as that segment's label map, the chosen one of several, and an empty one is refused before
anything starts; overlapping training segments are refused by the core's fine-tune, naming them."""

from __future__ import annotations

import html
import sys
from types import SimpleNamespace

import numpy as np
import pytest

SPACING = 2.29  # the AdrenalMNIST3D 28^3 masks' voxel size: 28 voxels span the 64 mm the adrenal models see


def add_volume(env, name="scan", shape=(18, 26, 30)):
    z, y, x = np.mgrid[:shape[0], :shape[1], :shape[2]]
    voxels = (200 * np.exp(-((x - 20) ** 2 + (y - 10) ** 2 + (z - 9) ** 2) / 30.0)).astype(np.int16)
    return env.slicer.util.addVolumeFromArray(voxels, ijkToRAS=np.diag([-0.7, -1.3, 3.0, 1.0]), name=name)


def gland(n=28):
    """A gland-like blob symmetric about the centre of an ``n``^3 cube (its bounding box is centred there)."""
    z, y, x = np.mgrid[:n, :n, :n] - (n - 1) / 2.0
    return (x / 9.0) ** 2 + (y / 6.0) ** 2 + (z / 7.5) ** 2 <= 1.0


def mask_model_panel(module, explain="none"):
    """The module's logic and its parameter node set to classify with adrenal-mass-3d 1.3.0 on the CPU."""
    logic = module.MedDeepRecogLogic()
    p = logic.getParameterNode()
    p.model, p.device, p.explainMethod = "adrenal-mass-3d@1.3.0", "cpu", explain
    return logic, p


def exported_segments(monkeypatch, module) -> list:
    """The label maps the panel sends the worker for a segment input, as arrays, in order (a spy on
    ``scene_io.exportSegmentLabelmap``, which still exports)."""
    import SimpleITK as sitk

    sent = []
    export = module.scene_io.exportSegmentLabelmap

    def spy(*args):
        path = export(*args)
        sent.append(sitk.GetArrayFromImage(sitk.ReadImage(str(path))))
        return path
    monkeypatch.setattr(module.scene_io, "exportSegmentLabelmap", spy)
    return sent


def add_label_map(env, name, mask, shape, offset, value):
    """``mask`` (0/1) labelled ``value`` at voxel ``offset`` (K, J, I) of a ``shape`` label map on a 2.29 mm grid
    (RAS flipped in x and y, as a scan read from LPS files is)."""
    voxels = np.zeros(shape, np.uint8)
    k, j, i = offset
    voxels[k:k + mask.shape[0], j:j + mask.shape[1], i:i + mask.shape[2]][mask] = value
    ijk_to_ras = np.diag([-SPACING, -SPACING, SPACING, 1.0])
    ijk_to_ras[:3, 3] = (40.0, -12.0, 101.0)
    return env.slicer.util.addVolumeFromArray(voxels, ijkToRAS=ijk_to_ras, name=name,
                                              nodeClassName="vtkMRMLLabelMapVolumeNode")


class FakeSelector:
    """``ui.inputVolumeSelector`` as the module uses it (a qMRMLNodeComboBox): ``nodeTypes``, the proxy model's
    ``hiddenNodeIDs`` and ``setCurrentNode``, which writes the node into the parameter as the wrapper's connector
    does."""

    def __init__(self, p):
        self.p, self.nodeTypes, self.current = p, ["vtkMRMLScalarVolumeNode"], []
        self.proxy = SimpleNamespace(hiddenNodeIDs=[])

    def sortFilterProxyModel(self):
        return self.proxy

    def setCurrentNode(self, node):
        self.current.append(node)
        self.p.inputVolume = node


def test_the_input_selector_offers_what_the_model_reads_and_no_heatmap(slicer_core):
    """The selector hid label maps, so the adrenal models, which classify a gland's mask, could not be run from the
    panel; and it offered the module's own heatmaps, refused only when a run started. Now: label maps and
    segmentations for a mask model (listed by ``models --json``, or saved by id: its model.json), scans for the
    others (never a segmentation), heatmaps never."""
    env, module = slicer_core, slicer_core.module
    widget = module.MedDeepRecogWidget.__new__(module.MedDeepRecogWidget)   # the panel's methods, no Qt panel
    widget.logic = module.MedDeepRecogLogic()
    p = widget._parameterNode = widget.logic.getParameterNode()
    selector = FakeSelector(p)
    widget.ui = SimpleNamespace(inputVolumeSelector=selector)
    widget._models = {"body-region@1.0.0": {"task": "classification", "input": {"kind": "slices2d"}},
                      "adrenal-mass-3d@1.3.0": {"task": "classification",
                                                "input": {"kind": "volume3d", "content": "binary_mask"}}}
    scan, mask = add_volume(env, "CT"), add_label_map(env, "adrenal", gland(), (40, 40, 40), (5, 5, 5), 1)
    drawn = add_segmentation(env, scan, {"adrenal": np.zeros((18, 26, 30), bool)})
    old = add_volume(env, "CT heatmap (earlier run)")
    old.SetAttribute(module.OUTPUT_ATTRIBUTE, "heatmap")
    preprocessed = add_volume(env, "CT preprocessed")
    preprocessed.SetAttribute(module.OUTPUT_ATTRIBUTE, "preprocessed")   # may be an input: Classify it, Preview again
    p.outputHeatmap = add_volume(env, "CT heatmap")   # the panel's own heatmap, attribute not set yet
    p.inputVolume = scan

    p.model = "body-region@1.0.0"
    widget._updateInputSelector(p)
    assert selector.nodeTypes == module.SCAN_NODE_TYPES == ["vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode"]
    assert selector.proxy.hiddenNodeIDs == [old.GetID(), p.outputHeatmap.GetID()]
    assert selector.current == [scan] and p.inputVolume is scan   # kept while the list changed

    for model in ("adrenal-mass-3d@1.3.0", "adrenal-mass-lstm"):   # listed; saved by id (model.json)
        for node in (mask, drawn):
            p.model, p.inputVolume = model, node
            selector.nodeTypes = ["vtkMRMLDisplayableNode"]   # as binding the GUI leaves it (the field's type)
            widget._updateInputSelector(p)
            assert selector.nodeTypes == module.MASK_NODE_TYPES == ["vtkMRMLLabelMapVolumeNode",
                                                                    "vtkMRMLSegmentationNode"], model
            assert selector.current[-1] is node and p.inputVolume is node
    for model in (module.AUTO_MODEL, "", "no-such-model", "body-region@1.0.0"):   # auto routes to scan classifiers
        p.model = model
        widget._updateInputSelector(p)
        assert selector.nodeTypes == module.SCAN_NODE_TYPES, model
        assert "vtkMRMLSegmentationNode" not in selector.nodeTypes

    with pytest.raises(ValueError, match="is a heatmap made by MedDeepRecog"):   # a script may still set one
        p.inputVolume = old
        widget.logic.classify(p)


def test_a_label_map_is_classified_as_the_mask_the_adrenal_model_learnt_from(slicer_core, tmp_path):
    """A Slicer label map holds 1 where the adrenal models learnt from 0/255 masks (a 1 reads as nearly empty), and
    lies on a whole scan's grid, which the 1.3.0 pipeline shrinks into its 32^3 input: exported as it was before the
    core cut masks about their structure, this gland's probabilities were not those the CLI gives its own 0/255 file
    (mass 0.998 with adrenal-mass-3d 1.3.0). Now the CLI's, wherever the gland lies and whatever its label value; the
    heatmap comes back on the label map's own grid, shown over the scan in the views."""
    import SimpleITK as sitk

    from MedDeepRecogLib.slicer_bridge import WorkerCommand, read_classify_result, run_worker, worker_environment
    env, module = slicer_core, slicer_core.module
    logic, p = mask_model_panel(module)

    cube = sitk.GetImageFromArray(gland().astype(np.uint8) * 255)
    cube.SetSpacing((SPACING,) * 3)
    sitk.WriteImage(cube, str(tmp_path / "gland.nrrd"))
    run_worker(WorkerCommand.classify([tmp_path / "gland.nrrd"], p.model, tmp_path / "cli", python=sys.executable,
                                      device="cpu", explain="none").args, worker_environment(), timeout=600)
    expected = dict(read_classify_result(tmp_path / "cli", tmp_path / "gland.nrrd").probabilities)

    got = []
    for name, shape, offset, value in (("adrenal L", (60, 70, 80), (17, 30, 41), 1),
                                       ("adrenal R", (50, 45, 90), (3, 12, 55), 7)):
        p.inputVolume = add_label_map(env, name, gland(), shape, offset, value)
        result = logic.classify(p, waitForCompletion=True)
        got.append(dict(result.probabilities))
        assert set(got[-1]) == {"normal", "mass"}
        assert [got[-1][c] for c in expected] == pytest.approx(list(expected.values()), abs=1e-5), name
        assert p.outputTable.GetName() == f"{name} probabilities"

    scan = add_volume(env, "CT")
    env.slicer.util.setSliceViewerLayers(background=scan)
    p.explainMethod = "gradcam"
    logic.classify(p, waitForCompletion=True)
    heatmap = p.outputHeatmap
    assert heatmap.GetAttribute(module.OUTPUT_ATTRIBUTE) == "heatmap"
    assert heatmap.GetImageData().GetDimensions() == (90, 45, 50)   # the label map's own grid
    assert env.core.composite_node("Red").GetBackgroundVolumeID() == scan.GetID()   # a mask: shown over the scan
    assert not list(env.temporaryPath.glob("MedDeepRecog-*"))


def test_a_mask_model_refuses_what_is_no_mask_of_one_structure(slicer_core):
    """The worker's one line, naming the node, in the panel's error: a scan (its grey levels would all become
    "mask"), a label map of two structures, an empty one; no result is loaded and no exchange folder is left."""
    from MedDeepRecogLib.slicer_bridge import WorkerError

    env, module = slicer_core, slicer_core.module
    logic = module.MedDeepRecogLogic()
    p = logic.getParameterNode()
    p.model, p.device, p.explainMethod = "adrenal-mass-3d", "cpu", "none"
    left, right = gland(), gland()
    left[:, :, 14:] = right[:, :, :14] = False
    both = add_label_map(env, "both", left, (30, 30, 30), (1, 1, 1), 1)
    env.slicer.util.updateVolumeFromArray(both, env.slicer.util.arrayFromVolume(both)
                                          + 2 * np.pad(right, ((1, 1), (1, 1), (1, 1))).astype(np.uint8))
    for node, message in ((add_volume(env, "CT"), "CT.*distinct intensities: it looks like a scan, not a mask"),
                          (both, r"both.*the mask holds 2 labels \(1, 2\): .*one structure"),
                          (add_label_map(env, "empty", np.zeros((3, 3, 3), bool), (30, 30, 30), (0, 0, 0), 1),
                           "empty.*the volume is empty: every voxel equals 0")):
        p.inputVolume = node
        with pytest.raises(WorkerError, match=message):
            logic.classify(p, waitForCompletion=True)
        assert p.outputTable is None or p.outputTable.GetName() != f"{node.GetName()} probabilities"
    assert not logic.isRunning("classify") and not list(env.temporaryPath.glob("MedDeepRecog-*"))


def add_segments(env, volume, masks):
    node = env.slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "labeled")
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    for name, mask in masks.items():
        segmentId = node.GetSegmentation().AddEmptySegment(name, name)
        env.slicer.util.updateSegmentBinaryLabelmapFromArray(mask.astype(np.uint8), node, segmentId, volume)
    return node


def test_overlapping_training_segments_are_refused_by_the_worker_naming_them(slicer_core):
    """Two segments sharing voxels were flattened without a word when the core read the segmentation (the later
    segment took the shared voxels): Fine-tune learnt from labels the user never drew. The core refuses it
    (``finetune.segment_data.load_case``), naming the segments and the shared voxels, before any training; the
    panel shows that line. Overlaps of segments mapped to no class do not matter."""
    from MedDeepRecogLib.slicer_bridge import WorkerError

    env, module = slicer_core, slicer_core.module
    logic = module.MedDeepRecogLogic()
    p = logic.getParameterNode()
    volume = add_volume(env)
    z, y, x = np.mgrid[:18, :26, :30]
    tumour = (x - 15) ** 2 + (y - 12) ** 2 + (z - 9) ** 2 < 30
    cyst = (x - 19) ** 2 + (y - 12) ** 2 + (z - 9) ** 2 < 20
    edema, rim = (x < 4) & (z < 6), (x < 3) & (z < 4)
    shared = int((tumour & cyst).sum())
    assert shared > 0
    p.inputVolume, p.model, p.device, p.epochs, p.finetuneTask = volume, "adrenal-mass-3d", "cpu", 1, "classify"
    p.trainingSegmentation = add_segments(env, volume, {"tumor": tumour, "cyst": cyst, "edema": edema, "rim": rim})
    logic.syncClassMap(p)
    for row in (2, 3):   # edema and rim (overlapping each other): mapped to no class
        p.classMapTable.SetCellText(row, 1, "")
    with pytest.raises(WorkerError, match=f"segments overlap: 'tumor' and 'cyst' in {shared} voxels; a voxel can "
                                          "be of one class only"):
        logic.finetune(p, waitForCompletion=True)
    assert not logic.isRunning("finetune") and not list(env.temporaryPath.glob("MedDeepRecog-*"))


# ------------------------------------------------------------------------------------------ segmentation inputs
def add_segmentation(env, reference, masks, name="labels"):
    """A segmentation drawn on ``reference``'s grid (its reference geometry, as the Segment Editor sets it), one
    segment per ``{name: (K, J, I) mask}``, in that order."""
    node = env.slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    for segment, mask in masks.items():
        segmentId = node.GetSegmentation().AddEmptySegment(segment, segment)
        if mask.any():
            env.slicer.util.updateSegmentBinaryLabelmapFromArray(mask.astype(np.uint8), node, segmentId, reference)
    return node


def scan_on_mask_grid(env, shape, name="CT"):
    """A scan on the 2.29 mm grid of :func:`add_label_map` (what a gland's label map exported from it lies on)."""
    ijk_to_ras = np.diag([-SPACING, -SPACING, SPACING, 1.0])
    ijk_to_ras[:3, 3] = (40.0, -12.0, 101.0)
    voxels = np.random.default_rng(3).integers(-100, 200, shape).astype(np.int16)
    return env.slicer.util.addVolumeFromArray(voxels, ijkToRAS=ijk_to_ras, name=name)


def placed(mask, shape, offset):
    full = np.zeros(shape, bool)
    k, j, i = offset
    full[k:k + mask.shape[0], j:j + mask.shape[1], i:i + mask.shape[2]] = mask
    return full


def test_a_segment_is_classified_as_the_same_gland_given_as_a_label_map(slicer_core):
    """A radiologist's gland is a segment drawn in the Segment Editor, not a label map, and the panel offered no
    segmentation to a mask model. Now the segment goes to the worker as its label map (on the grid it was drawn on)
    and gives the label map node's probabilities and heatmap; the heatmap is shown over the scan, the outputs are
    named after the segment, the result line says which segment was classified, and no temporary node stays."""
    env, module = slicer_core, slicer_core.module
    logic, p = mask_model_panel(module, explain="gradcam")
    shape, offset = (50, 45, 90), (3, 12, 55)
    scan = scan_on_mask_grid(env, shape)
    env.slicer.util.setSliceViewerLayers(background=scan)
    p.inputVolume = add_label_map(env, "adrenal R", gland(), shape, offset, 1)
    expected = logic.classify(p, waitForCompletion=True)
    expectedHeat = env.slicer.util.arrayFromVolume(p.outputHeatmap).copy()
    colours, labelMaps = env.count("vtkMRMLColorNode"), env.count("vtkMRMLLabelMapVolumeNode")

    p.inputVolume = add_segmentation(env, scan, {"adrenal R": placed(gland(), shape, offset)}, "Segmentation")
    result = logic.classify(p, waitForCompletion=True)
    assert dict(result.probabilities) == pytest.approx(dict(expected.probabilities), abs=1e-5)
    assert result.label == expected.label
    assert result.input_notes[0] == "classified: the segment 'adrenal R' of 'Segmentation'"
    assert html.escape(result.input_notes[0]) in result.result_text()
    assert p.outputTable.GetName() == "Segmentation adrenal R probabilities"
    assert p.outputTable.GetCellText(0, 0) == expected.probabilities[0][0]
    # the table's header names the segment and the model, as the label map's names the label map
    assert p.outputTable.GetColumnTitle("class") == "class (segment 'adrenal R' of 'Segmentation', " \
                                                    "adrenal-mass-3d@1.3.0)"
    heatmap = p.outputHeatmap
    assert heatmap.GetName() == "Segmentation adrenal R heatmap"
    assert heatmap.GetImageData().GetDimensions() == scan.GetImageData().GetDimensions()
    import vtk
    a, b = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    heatmap.GetIJKToRASMatrix(a)
    scan.GetIJKToRASMatrix(b)
    assert np.allclose(env.slicer.util.arrayFromVTKMatrix(a), env.slicer.util.arrayFromVTKMatrix(b), atol=1e-6)
    assert np.allclose(env.slicer.util.arrayFromVolume(heatmap), expectedHeat, atol=1e-5)
    for view in ("Red", "Yellow", "Green"):   # over the scan shown
        composite = env.core.composite_node(view)
        assert (composite.GetBackgroundVolumeID(), composite.GetForegroundVolumeID()) == (scan.GetID(), heatmap.GetID())
    assert module.scene_io.segmentNames(p.inputVolume) == ["adrenal R"]   # the hot region is no segment of the input
    assert f"heatmap >= {module.HOT_REGION_THRESHOLD}" in module.scene_io.segmentNames(p.outputSegmentation)
    assert p.outputSegmentation is not p.inputVolume and p.inputVolume.GetDisplayVisibility()
    assert env.count("vtkMRMLColorNode") == colours and env.count("vtkMRMLLabelMapVolumeNode") == labelMaps
    assert not list(env.temporaryPath.glob("MedDeepRecog-*"))


def test_the_chosen_segment_of_two_is_classified_alone(slicer_core, monkeypatch):
    """Of a segmentation with two segments the one chosen (``inputSegment``; the first when none is chosen, as the
    panel's Segment list then shows) goes to the worker alone, an overlapping segment's voxels left out, and the
    result line names it. A chosen segment no longer in the segmentation is refused (it was the first segment)."""
    env, module = slicer_core, slicer_core.module
    logic, p = mask_model_panel(module)
    shape = (40, 40, 40)
    adrenal = placed(gland(), shape, (6, 6, 6))
    z, y, x = np.mgrid[:shape[0], :shape[1], :shape[2]]
    cyst = (x - 26) ** 2 + (y - 20) ** 2 + (z - 20) ** 2 <= 36   # overlaps the gland's edge
    assert (cyst & adrenal).any() and (cyst & ~adrenal).any()
    scan = scan_on_mask_grid(env, shape)
    p.inputVolume = add_segmentation(env, scan, {"cyst": cyst, "adrenal": adrenal})
    segmentation = p.inputVolume.GetSegmentation()
    sent = exported_segments(monkeypatch, module)

    results = {}
    p.inputSegment = "Segment_removed"
    assert logic.inputSegmentID(p, p.inputVolume) is None
    with pytest.raises(ValueError, match="^the chosen segment 'Segment_removed' is not in 'labels'; pick a segment$"):
        logic.classify(p)
    for chosen, expected in ((segmentation.GetSegmentIdBySegmentName("adrenal"), "adrenal"), ("", "cyst")):
        p.inputSegment = chosen
        assert logic.inputSegmentID(p, p.inputVolume) == segmentation.GetSegmentIdBySegmentName(expected)
        if expected in results:
            continue
        results[expected] = logic.classify(p, waitForCompletion=True)
        assert results[expected].input_notes[0] == f"classified: the segment '{expected}' of 'labels'"
        assert p.outputTable.GetName() == f"labels {expected} probabilities"
        mask = {"adrenal": adrenal, "cyst": cyst}[expected]
        assert sent[-1].shape == shape and np.array_equal(sent[-1] != 0, mask), expected   # that segment alone
        assert set(np.unique(sent[-1])) == {0, 1}
    assert dict(results["adrenal"].probabilities) != pytest.approx(dict(results["cyst"].probabilities), abs=1e-3)


def test_a_segmentation_without_segments_or_an_empty_segment_is_refused_before_the_run(slicer_core):
    """A segmentation with no segment, or an empty chosen segment, is refused with one line in the status line
    before a worker starts (no exchange folder, no temporary node left); a segmentation is no input of an image
    model, nor of Preview, nor of an image model's robustness check."""
    from types import SimpleNamespace

    env, module = slicer_core, slicer_core.module
    widget = module.MedDeepRecogWidget.__new__(module.MedDeepRecogWidget)   # the panel's methods, no Qt panel
    widget.logic = logic = module.MedDeepRecogLogic()
    widget.onParameterNodeModified = lambda *a: None
    widget.ui = SimpleNamespace(statusLabel=SimpleNamespace(text=""), resultLabel=SimpleNamespace(text=""),
                                faithfulnessLabel=SimpleNamespace(text=""))
    logic.ensureDependencies = lambda: None
    p = widget._parameterNode = logic.getParameterNode()
    p.model, p.device = "adrenal-mass-3d", "cpu"
    scan = add_volume(env, "CT")
    z, y, x = np.mgrid[:18, :26, :30]
    nothing = add_segmentation(env, scan, {}, "nothing drawn")
    drawn = add_segmentation(env, scan, {"adrenal L": (x - 15) ** 2 + (y - 12) ** 2 + (z - 9) ** 2 < 20}, "drawn")
    empty = drawn.GetSegmentation().AddEmptySegment("empty", "empty")
    for segmentation, chosen, message in (
            (nothing, "", "'nothing drawn' has no segments: draw the structure in the Segment Editor, or select a "
                          "label map."),
            (drawn, empty, "the segment 'empty' of 'drawn' is empty: draw the structure in it (Segment Editor), or "
                           "choose another segment.")):
        p.inputVolume, p.inputSegment = segmentation, chosen
        nodes = env.count("vtkMRMLNode")
        widget.ui.resultLabel.text = "<b>normal</b> (p = 0.90)"   # the previous run's answer
        with pytest.raises(ValueError) as refused:   # Slicer's error display shows it, then re-raises it
            widget._run("classify", logic.classify, None, widget.ui.statusLabel, None)
        assert str(refused.value) == message
        assert widget.ui.statusLabel.text == f"Not started: {message}" and widget.ui.resultLabel.text == ""
        assert not logic.isRunning("classify") and env.count("vtkMRMLNode") == nodes
        assert not list(env.temporaryPath.glob("MedDeepRecog-*"))

    p.inputSegment = ""   # its first segment, not empty: the image models and Preview refuse the segmentation still
    for model, run in (("body-region", logic.classify), (module.AUTO_MODEL, logic.classify),
                       ("adrenal-mass-3d", logic.preview), ("body-region", logic.robustness)):
        p.model = model
        with pytest.raises(ValueError, match="'drawn' is a segmentation: only a mask model"):
            run(p)
    assert not list(env.temporaryPath.glob("MedDeepRecog-*"))


class ComboBox:
    """A real Qt combo box as PythonQt shows it to the module (``currentData``, ``currentIndex = i``,
    ``visible = b``)."""

    def __init__(self):
        import os
        widgets = pytest.importorskip("PySide6.QtWidgets")
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
        self.__dict__["app"] = widgets.QApplication.instance() or widgets.QApplication([])
        self.__dict__["box"] = widgets.QComboBox()
        self.__dict__["visible"] = False

    def __getattr__(self, name):
        if name in ("currentData", "currentIndex", "currentText"):
            return getattr(self.box, name)()
        return getattr(self.box, name)

    def __setattr__(self, name, value):
        if name == "currentIndex":
            self.box.setCurrentIndex(value)
        else:
            assert name == "visible", name
            self.__dict__["visible"] = value

    def items(self):
        return [(self.box.itemData(i), self.box.itemText(i)) for i in range(self.box.count())]


def test_the_segment_row_lists_the_input_segments_and_keeps_the_choice(slicer_core):
    """The Segment row shows while the input is a segmentation: its segments, the one a run classifies selected; a
    choice is written to the parameter node (saved with the scene) and the list follows added, renamed and removed
    segments."""
    from types import SimpleNamespace

    env, module = slicer_core, slicer_core.module
    widget = module.MedDeepRecogWidget.__new__(module.MedDeepRecogWidget)   # the panel's methods, no Qt panel
    module.VTKObservationMixin.__init__(widget)
    widget.logic = module.MedDeepRecogLogic()
    combo, label = ComboBox(), SimpleNamespace(visible=False)
    widget.ui = SimpleNamespace(inputSegmentComboBox=combo, inputSegmentLabel=label,
                                statusLabel=SimpleNamespace(text=""))
    p = widget._parameterNode = widget.logic.getParameterNode()
    p.model, p.device = "adrenal-mass-3d", "cpu"
    combo.box.currentIndexChanged.connect(widget.onInputSegmentSelected)
    scan = add_volume(env, "CT")
    segmentationNode = add_segmentation(env, scan, {"left": np.zeros((18, 26, 30), bool),
                                                    "right": np.zeros((18, 26, 30), bool)})
    segmentation = segmentationNode.GetSegmentation()
    left, right = (segmentation.GetSegmentIdBySegmentName(n) for n in ("left", "right"))

    p.inputVolume = scan
    widget._updateSegmentSelector(p)
    assert not combo.visible and not label.visible and combo.items() == []
    p.inputVolume = segmentationNode
    widget._updateSegmentSelector(p)
    assert combo.visible and label.visible
    assert combo.items() == [(left, "left"), (right, "right")] and combo.currentData == left
    assert p.inputSegment == ""   # filling the list is no choice: a run takes the first segment, as shown
    combo.currentIndex = 1   # the user's choice
    assert p.inputSegment == right
    assert widget.logic.inputWords(p) == "segment 'right' of 'labels'"   # what a result of the run is said to be of
    widget._updateSegmentSelector(p)
    assert combo.currentData == right

    segmentation.GetSegment(right).SetName("right adrenal")   # followed without a parameter change
    segmentation.AddEmptySegment("cyst", "cyst")
    assert combo.items() == [(left, "left"), (right, "right adrenal"), ("cyst", "cyst")] and combo.currentData == right
    segmentation.RemoveSegment(right)   # not moved to "left": no segment chosen, Classify refused, said at once
    assert combo.items() == [(left, "left"), ("cyst", "cyst")] and combo.currentIndex == -1
    assert widget.logic.inputSegmentID(p, segmentationNode) is None
    assert widget.ui.statusLabel.text == "Segment 'right adrenal' was removed from 'labels': pick the segment to " \
                                         "classify."
    with pytest.raises(ValueError, match="^segment 'right adrenal' was removed from 'labels'; pick a segment$"):
        widget.logic.classify(p)
    combo.currentIndex = 1   # the user picks one
    assert (p.inputSegment, p.removedSegment) == ("cyst", "") and widget.logic.inputSegmentID(p, segmentationNode) \
        == "cyst"
    p.inputSegment = ""   # none chosen: the first, shown; removing it is removing the segment Classify would read
    widget._updateSegmentSelector(p)
    assert combo.currentData == left
    segmentation.RemoveSegment(left)
    assert combo.items() == [("cyst", "cyst")] and combo.currentIndex == -1
    with pytest.raises(ValueError, match="^segment 'left' was removed from 'labels'; pick a segment$"):
        widget.logic.classify(p)
    segmentation.RemoveSegment("cyst")   # another segment than the chosen one: nothing more to say
    other = add_segmentation(env, scan, {"Segment_1": np.zeros((18, 26, 30), bool)}, "other")
    p.inputVolume = other   # another segmentation: no choice carried over from the last one, its first shown
    widget._updateSegmentSelector(p)
    assert (p.inputSegment, p.removedSegment) == ("", "") and combo.currentData == "Segment_1"
    p.inputVolume = scan
    widget._updateSegmentSelector(p)
    assert not combo.visible and combo.items() == []
    other.GetSegmentation().AddEmptySegment("late", "late")   # no longer followed
    assert combo.items() == []


def test_a_segment_beyond_its_segmentations_reference_geometry_is_classified_whole(slicer_core, monkeypatch):
    """The segment went out on its segmentation's reference geometry: a grid that cut the gland's lower half gave
    the half's answer, no word said, and one that missed it called the segment "empty" though it held voxels. Now
    it goes out whole, on that grid's voxels extended to hold it, and gives the answer of the grid it was drawn on."""
    env, module = slicer_core, slicer_core.module
    logic, p = mask_model_panel(module)
    shape = (40, 40, 40)
    adrenal = placed(gland(), shape, (6, 6, 6))
    scan = scan_on_mask_grid(env, shape)
    p.inputVolume = add_segmentation(env, scan, {"adrenal": adrenal})
    sent = exported_segments(monkeypatch, module)
    expected = logic.classify(p, waitForCompletion=True)
    assert sent[-1].sum() == adrenal.sum()

    def grid(shift_k):   # the scan's lattice, moved ``shift_k`` slices up (S)
        ijk_to_ras = np.diag([-SPACING, -SPACING, SPACING, 1.0])
        ijk_to_ras[:3, 3] = (40.0, -12.0, 101.0 + shift_k * SPACING)
        return env.slicer.util.addVolumeFromArray(np.zeros(shape, np.int16), ijkToRAS=ijk_to_ras, name="grid")

    for shift_k in (20, 300):   # cuts the gland's lower half; misses it
        p.inputVolume.SetReferenceImageGeometryParameterFromVolumeNode(grid(shift_k))
        result = logic.classify(p, waitForCompletion=True)
        assert sent[-1].sum() == adrenal.sum(), shift_k   # the whole segment
        assert dict(result.probabilities) == pytest.approx(dict(expected.probabilities), abs=1e-4), shift_k


def test_the_robustness_check_reads_a_segment_as_the_label_map_it_is_sent_as(slicer_core, monkeypatch):
    """The robustness check was offered for a mask model's label map but not for its segment, though Classify reads
    both. The core's ``robustness --input`` prepares its file as classify does (``robustness.scan.model_input_of``:
    ``classify_scan``), and the panel sends the segment as the binary label map Classify sends (that segment alone,
    on the grid it was drawn on): the check runs on the segment exactly as on the same gland's label map, gives its
    sentence, and names the segment and the model. An image model still refuses the segmentation."""
    from types import SimpleNamespace

    env, module = slicer_core, slicer_core.module
    logic, p = mask_model_panel(module)
    shape, offset = (40, 40, 40), (6, 6, 6)
    adrenal = placed(gland(), shape, offset)
    scan = scan_on_mask_grid(env, shape)
    p.inputVolume = add_label_map(env, "adrenal", gland(), shape, offset, 1)
    expected = logic.robustness(p, waitForCompletion=True)
    assert expected.startswith("For 'adrenal', model adrenal-mass-3d@1.3.0: ")

    z, y, x = np.mgrid[:shape[0], :shape[1], :shape[2]]
    p.inputVolume = add_segmentation(env, scan, {"cyst": (x - 30) ** 2 + (y - 30) ** 2 + (z - 30) ** 2 <= 16,
                                                 "adrenal": adrenal})
    p.inputSegment = p.inputVolume.GetSegmentation().GetSegmentIdBySegmentName("adrenal")
    sent = exported_segments(monkeypatch, module)
    widget = module.MedDeepRecogWidget.__new__(module.MedDeepRecogWidget)   # the panel's methods, no Qt panel
    widget.logic = logic
    buttons = ("classifyButton", "classifySliceButton", "segmentButton", "robustnessButton", "previewButton",
               "finetuneButton")
    widget.ui = SimpleNamespace(**{name: SimpleNamespace(text="", enabled=False) for name in buttons})
    widget._updateRunButtons(p)
    assert {name for name in buttons if getattr(widget.ui, name).enabled} == {"classifyButton", "robustnessButton"}

    got = logic.robustness(p, waitForCompletion=True)
    assert len(sent) == 1 and np.array_equal(sent[0] != 0, adrenal) and set(np.unique(sent[0])) == {0, 1}
    assert got == expected.replace("For 'adrenal'", "For segment 'adrenal' of 'labels'", 1)
    assert not list(env.temporaryPath.glob("MedDeepRecog-*"))

    p.model = "body-region"   # an image model: neither offered nor run on a segmentation
    widget._updateRunButtons(p)
    assert not widget.ui.robustnessButton.enabled
    with pytest.raises(ValueError, match="'labels' is a segmentation: only a mask model"):
        logic.robustness(p)
