"""What the panel runs on, on Slicer's real core (``slicer_core`` fixture): the input selector offers what the chosen
model reads (label maps for the adrenal mask models, scans for the others, never a heatmap of this module); a label
map classified with a mask model gives the command line's answer on the 0/255 mask cut about its gland that the
model learnt from (the core cuts it: ``inference.model_input.image_for_model``); overlapping training segments are refused by the core's fine-tune, naming them."""

from __future__ import annotations

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
    panel; and it offered the module's own heatmaps, refused only when a run started. Now: label maps for a mask
    model (listed by ``models --json``, or saved by id: its model.json), scans for the others, heatmaps never."""
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
        p.model, p.inputVolume = model, mask
        selector.nodeTypes = ["vtkMRMLScalarVolumeNode"]   # as binding the GUI leaves it (the field's type)
        widget._updateInputSelector(p)
        assert selector.nodeTypes == module.MASK_NODE_TYPES == ["vtkMRMLLabelMapVolumeNode"], model
        assert selector.current[-1] is mask and p.inputVolume is mask
    for model in (module.AUTO_MODEL, "", "no-such-model"):   # auto routes to scan classifiers
        p.model = model
        widget._updateInputSelector(p)
        assert selector.nodeTypes == module.SCAN_NODE_TYPES, model

    with pytest.raises(ValueError, match="is a heatmap made by MedDeepRecog"):   # a script may still set one
        p.inputVolume = old
        widget.logic.classify(p)


def test_a_label_map_is_classified_as_the_mask_the_adrenal_model_learnt_from(slicer_core, tmp_path):
    """A Slicer label map holds 1 where the adrenal models learnt from 0/255 masks (a 1 reads as nearly empty), and
    lies on a whole scan's grid, which the 1.3.0 pipeline shrinks into its 32^3 input: exported as it was before the
    core cut masks about their structure, this gland read 0.79 "mass" where the CLI on its own 0/255 file says 0.998
    "normal". Now the CLI's probabilities, wherever the gland lies and whatever its label value; the heatmap comes
    back on the label map's own grid, shown over the scan in the views."""
    import SimpleITK as sitk

    from MedDeepRecogLib.slicer_bridge import WorkerCommand, read_classify_result, run_worker, worker_environment
    env, module = slicer_core, slicer_core.module
    logic = module.MedDeepRecogLogic()
    p = logic.getParameterNode()
    p.model, p.device, p.explainMethod = "adrenal-mass-3d@1.3.0", "cpu", "none"

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
