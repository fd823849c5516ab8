"""MedDeepRecog: deep-learning recognition for CT/MRI in 3D Slicer (classify, heatmaps, segmentations, fine-tune).

This file is the thin Slicer layer. The work happens in a separate ``PythonSlicer -m MedDeepRecogLib`` process
(contract: docs/worker-protocol.md); ``MedDeepRecogLib.slicer_bridge`` builds its command lines and reads its
progress, ``MedDeepRecogSlicerLib`` moves nodes to files and back. The GUI thread never waits on the worker.
"""

import contextlib
import dataclasses
import html
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import numpy as np
import qt
import slicer
import vtk
from slicer import vtkMRMLDisplayableNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from MedDeepRecogLib.contract import (EXPLAIN_METHODS, FINETUNE_EPOCHS, MASK_CONTENT, MAX_EPOCHS, slice_words,
                                      validation_summary)
from MedDeepRecogLib.devices import DEVICE_CHOICES, describe
from MedDeepRecogLib.slicer_bridge import (WorkerCommand, WorkerError, listed_model_key, model_input_kind,
                                            model_input_spec, model_task, read_classify_result, read_segment_labels,
                                            read_segment_volumes)
from MedDeepRecogLib.slicer_bridge.outputs import model_words, parse_json_output, robustness_summary
from MedDeepRecogLib.slicer_bridge.pipeline_spec import PRESETS, build_pipeline, preset_settings
from MedDeepRecogLib.slicer_bridge.process_runner import in_panel_words, panel_event, python_executable
from MedDeepRecogLib.slicer_bridge.slice_geometry import axial_slice_centre, axial_slice_in_view
from MedDeepRecogSlicerLib import scene_io
from MedDeepRecogSlicerLib.jobs import WorkerJob

#: Preprocessing settings of ``pipeline_spec`` -> parameter node fields.
PIPELINE_FIELDS = {"resample": "resample", "resample_spacing": "resampleSpacing", "clip": "clipIntensity",
                   "clip_min": "clipMin", "clip_max": "clipMax", "bias_correction": "biasCorrection",
                   "denoise": "denoise", "denoise_sigma": "denoiseSigma", "normalize": "normalize",
                   "mask": "bodyMask"}

#: Heatmap values at or above this become the "hot region" segment.
HOT_REGION_THRESHOLD = 0.5
#: The runs whose results are nodes of the scene: cancelled when the scene closes.
SCENE_JOBS = ("classify", "segment", "preview", "robustness")

#: Attribute of the volumes this module makes (``"heatmap"``, ``"preprocessed"``): a heatmap is no scan to run on.
OUTPUT_ATTRIBUTE = "MedDeepRecog.output"
#: The model list's first entry: ``classify --model auto`` routes each scan to the disease model that applies.
AUTO_MODEL = "auto"
#: What the input selector offers: scans (scalar and colour volumes; label maps are a subclass, left out) for image
#: models; for mask models label maps and segmentations (one segment of a segmentation is classified: the Segment row).
SCAN_NODE_TYPES = ["vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode"]
MASK_NODE_TYPES = ["vtkMRMLLabelMapVolumeNode", "vtkMRMLSegmentationNode"]


def _importName(requirement):
    """Import name of a requirement line ('PyYAML>=6' -> 'yaml'), for the Slicer 5.10 fallback check."""
    name = requirement.split(";")[0].split("[")[0].strip()
    for sep in "<>=!~ ":
        name = name.split(sep)[0]
    return {"pyyaml": "yaml", "pynrrd": "nrrd"}.get(name.lower(), name.lower().replace("-", "_"))


class MedDeepRecog(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedDeepRecog"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["MedDeepRecog developers"]
        self.parent.helpText = (
            "Classify the loaded CT/MRI volume with a deep-learning model, overlay its heatmap, segment it with a "
            "segmentation model, show segmentations in 3D and fine-tune models from your segments. See "
            "<a href='https://github.com/MedDeepRecog/SlicerMedDeepRecog'>the documentation</a>.")
        self.parent.acknowledgementText = "Built on MONAI, PyTorch, SimpleITK and slicerio."


@parameterNodeWrapper
class MedDeepRecogParameterNode:
    """Everything the panel shows, saved with the scene (bound to the .ui by SlicerParameterName)."""

    # a scan, a label map, or for a mask model a segmentation: their common MRML class. What the selector offers follows
    # the model (_updateInputSelector), and every run checks what it reads (MedDeepRecogLogic._runInput).
    inputVolume: vtkMRMLDisplayableNode
    inputSegment: str = ""  # segment ID in a segmentation input; "": its first segment; one it lacks: none (refused)
    # the name of the chosen segment when it was removed from the input segmentation (the refusal names it)
    removedSegment: str = ""
    secondVolume: vtkMRMLScalarVolumeNode
    preset: Annotated[str, Choice(PRESETS)] = "lung-ct"
    resample: bool = False
    resampleSpacing: Annotated[float, WithinRange(0.1, 10.0)] = 1.0
    clipIntensity: bool = False
    clipMin: Annotated[float, WithinRange(-4000.0, 10000.0)] = -1000.0
    clipMax: Annotated[float, WithinRange(-4000.0, 10000.0)] = 400.0
    biasCorrection: bool = False
    denoise: bool = False
    denoiseSigma: Annotated[float, WithinRange(0.1, 5.0)] = 1.0
    normalize: bool = False
    bodyMask: bool = False
    model: str = ""  # "id" or "id@version"; the combo box is filled from the catalog (no fixed Choice list)
    device: Annotated[str, Choice(list(DEVICE_CHOICES))] = "auto"
    explainMethod: Annotated[str, Choice(list(EXPLAIN_METHODS))] = "gradcam"
    heatmapOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    heatmapThreshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.2
    outputTable: vtkMRMLTableNode
    sliceTable: vtkMRMLTableNode  # per-slice results of a 2D (slices2d) model: index, position_mm, label, p
    outputHeatmap: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    preprocessedVolume: vtkMRMLScalarVolumeNode
    trainingSegmentation: vtkMRMLSegmentationNode
    classMapTable: vtkMRMLTableNode
    finetuneTask: Annotated[str, Choice(["classify", "segment"])] = "classify"
    epochs: Annotated[int, WithinRange(1, MAX_EPOCHS)] = FINETUNE_EPOCHS


class MedDeepRecogWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedDeepRecog.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedDeepRecogLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onParameterNodeModified)
        self.ui.classifyButton.connect("clicked(bool)", self.onClassifyButton)
        self.ui.classifySliceButton.connect("clicked(bool)", self.onClassifySliceButton)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.sliceTableView.connect("selectionChanged()", self.onSliceRowSelected)
        self.ui.previewButton.connect("clicked(bool)", self.onPreviewButton)
        self.ui.robustnessButton.connect("clicked(bool)", self.onRobustnessButton)
        self.ui.finetuneButton.connect("clicked(bool)", self.onFinetuneButton)
        self.ui.importModelButton.connect("clicked(bool)", self.onImportModelButton)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelSelected)
        self.ui.inputSegmentComboBox.connect("currentIndexChanged(int)", self.onInputSegmentSelected)
        for bar in (self.ui.classifyProgressBar, self.ui.finetuneProgressBar):
            bar.hide()
        self.initializeParameterNode()
        self.refreshModels()
        self.logic.deviceInfo(onFinished=lambda info, error: self.ui.deviceInfoLabel.setText(
            info.get("summary", "") if info else f"torch not usable: {error}"))

    def cleanup(self):
        self.logic.cancel()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)

    def onSceneStartClose(self, caller, event):
        # the scans are going: a run on one of them would have nothing to load its result into (a fine-tune writes
        # a package, not nodes, and runs on)
        for kind in SCENE_JOBS:
            self.logic.cancel(kind)
        self._clearResultLines()  # its scan goes with the scene: the answer must not stand beside the next one
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = self.logic.defaultInputVolume(self._parameterNode)

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = inputParameterNode
        self._segmentInputID = self._shownSegment = None  # a node's saved segment choice is its own
        if inputParameterNode is not getattr(self, "_shownParameterNode", None):  # a reloaded scene's node: the
            self._clearRobustnessLine()  # robustness line was of the last one's input
        self._shownParameterNode = inputParameterNode
        if self._parameterNode:
            # a node's saved preset and check boxes are its own: only a preset changed from here on resets them
            self._preset = self._parameterNode.preset
            self._heatmapOpacity = None
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None):
        """Button states, result views and heatmap display follow the parameters (GUI values are bound)."""
        p = self._parameterNode
        if p is None:
            return
        if getattr(self, "_preset", p.preset) != p.preset:  # a preset chosen by the user sets the steps
            self._preset = p.preset
            with slicer.util.tryWithErrorDisplay("MedDeepRecog: cannot read the preset."):
                self.logic.applyPreset(p)
        self._preset = p.preset
        self._forgetStaleResult(p)
        self._updateInputSelector(p)
        self._updateSegmentSelector(p)
        self._updateRunButtons(p)
        self.ui.sliceTableView.setMRMLTableNode(p.sliceTable)
        self.ui.sliceTableView.visible = bool(p.sliceTable)
        self.ui.probabilityTableView.setMRMLTableNode(p.outputTable)
        self.ui.show3DButton.setSegmentationNode(p.outputSegmentation)
        self.logic.syncClassMap(p)
        self._followSegments("_observedSegmentation", p.trainingSegmentation, self.onSegmentsChanged)
        self.ui.classMapTableView.setMRMLTableNode(p.classMapTable)
        if p.outputHeatmap:  # the views' foreground opacity only when the slider moved: it is every view's setting
            opacityChanged = getattr(self, "_heatmapOpacity", None) != p.heatmapOpacity
            self._heatmapOpacity = p.heatmapOpacity
            scene_io.updateHeatmapDisplay(p.outputHeatmap, p.heatmapThreshold,
                                          p.heatmapOpacity if opacityChanged else None)
        index = self.ui.modelComboBox.findData(p.model)
        if index >= 0 and index != self.ui.modelComboBox.currentIndex:
            self.ui.modelComboBox.currentIndex = index

    def _clearResultLines(self):
        self.ui.statusLabel.text = self.ui.resultLabel.text = self.ui.faithfulnessLabel.text = ""
        self._resultScanID = None
        self._clearRobustnessLine()

    def _clearRobustnessLine(self):
        if hasattr(self.ui, "robustnessLabel"):
            self.ui.robustnessLabel.text = ""
        self._robustnessFor = None

    def _runSubject(self, p):
        """What a run's answer is of: (input ID, chosen segment ID or None, model)."""
        node = p.inputVolume
        segment = (self.logic.inputSegmentID(p, node) if node is not None and self.logic.isSegmentation(node)
                   else None)
        return (node.GetID() if node else None, segment, p.model)

    def _forgetStaleResult(self, p):
        """The result lines name no scan: once the input is another node than the one they answered for, they are
        cleared (read beside the new input they would pass for its answer). The robustness line goes too when the
        input, its segment or the model is no longer the one it was computed for. The views stop showing another
        scan's heatmap and hot region over the new input (:meth:`_hideOtherScansHeat`)."""
        scanId = getattr(self, "_resultScanID", None)
        if scanId is not None and (not p.inputVolume or p.inputVolume.GetID() != scanId):
            self._clearResultLines()
        robustFor = getattr(self, "_robustnessFor", None)
        if robustFor is not None and robustFor != self._runSubject(p):
            self._clearRobustnessLine()
        inputId = p.inputVolume.GetID() if p.inputVolume else None
        if getattr(self, "_shownInputID", inputId) != inputId:
            self._hideOtherScansHeat(p)
        self._shownInputID = inputId

    def _hideOtherScansHeat(self, p):
        """The input changed: the last run's heatmap, if it is of another scan, is taken out of the slice views'
        foreground, and that scan's hot region (its output segmentation) is hidden. Nothing is deleted: the nodes
        stay in the scene for the user to show again."""
        heatmap, segmentation = p.outputHeatmap, p.outputSegmentation
        current = p.inputVolume.GetID() if p.inputVolume else None
        if heatmap is not None and scene_io.scanOf(heatmap) not in (None, current):
            scene_io.hideHeatmap(heatmap)
        if segmentation is not None and scene_io.scanOf(segmentation) not in (None, current):
            scene_io.hideSegmentation(segmentation)

    def _updateRunButtons(self, p):
        """Each run button is offered for the models that run it (a segmentation package segments; the worker
        refuses it for classify and robustness), and turns into Cancel while its run is going."""
        busy = {kind: self.logic.isRunning(kind)
                for kind in ("classify", "segment", "finetune", "robustness", "preview")}
        ready = bool(p.inputVolume and p.model)
        # a segmentation input (a mask model's) is read by Classify and the robustness check (its segment, as a
        # label map); the other runs read a volume
        volume = bool(p.inputVolume) and not self.logic.isSegmentation(p.inputVolume)
        maskSegment = (bool(p.inputVolume) and not volume
                       and self._modelInput(p.model).get("content") == MASK_CONTENT)
        segmentation = ready and self._modelTask(p.model) == "segmentation"
        # a segmentation input whose chosen segment was removed (or that has none): nothing to read until the user
        # picks one (a click would only be refused)
        picked = volume or not p.inputVolume or self.logic.inputSegmentID(p, p.inputVolume) is not None
        ready = ready and picked
        self.ui.classifyButton.text = "Cancel" if busy["classify"] else "Classify"
        self.ui.classifyButton.enabled = (ready and not segmentation) or busy["classify"]
        sliceModel = ready and volume and self.logic.isSliceModel(p.model)  # model.json only: cheap on the GUI thread
        self.ui.classifySliceButton.text = "Cancel" if busy["classify"] else "Classify current slice"
        self.ui.classifySliceButton.enabled = sliceModel or busy["classify"]
        self.ui.segmentButton.text = "Cancel" if busy["segment"] else "Segment"
        self.ui.segmentButton.enabled = segmentation or busy["segment"]
        self.ui.robustnessButton.text = "Cancel" if busy["robustness"] else "Robustness check"
        self.ui.robustnessButton.enabled = (ready and (volume or maskSegment) and not segmentation) \
            or busy["robustness"]
        self.ui.previewButton.text = "Cancel" if busy["preview"] else "Preview"
        self.ui.previewButton.enabled = volume or busy["preview"]
        self.ui.finetuneButton.text = "Cancel" if busy["finetune"] else "Start fine-tuning"
        self.ui.finetuneButton.enabled = bool(ready and volume and p.trainingSegmentation) or busy["finetune"]

    def _updateInputSelector(self, p):
        """The input selector offers what the selected model reads (its package's ``input.content``): label maps and
        segmentations for a mask model (the adrenal models classify a gland's shape), scans for the others; never a
        heatmap this module made (no scan: a run refuses it too). The parameter node's input stays chosen while the
        list changes, if the list offers it."""
        if getattr(self, "_updatingInputSelector", False):  # the selector writes its new node into the parameters
            return
        selector = self.ui.inputVolumeSelector
        proxy = selector.sortFilterProxyModel()
        nodeTypes = MASK_NODE_TYPES if self._modelInput(p.model).get("content") == MASK_CONTENT else SCAN_NODE_TYPES
        hidden = self.logic.heatmapIDs(p)
        if list(selector.nodeTypes) == nodeTypes and list(proxy.hiddenNodeIDs) == hidden:
            return
        wanted = p.inputVolume
        self._updatingInputSelector = True
        try:
            proxy.hiddenNodeIDs = hidden
            selector.nodeTypes = nodeTypes  # the parameter node wrapper set its field's type when it bound the GUI
            if wanted is not None and wanted.GetClassName() in nodeTypes and wanted.GetID() not in hidden:
                selector.setCurrentNode(wanted)
        finally:
            self._updatingInputSelector = False

    def _modelInput(self, model):
        """The ``input`` that ``models --json`` listed for ``model``, else its model.json's (``{}`` for auto or a
        package that cannot be read)."""
        info = getattr(self, "_models", {}).get(model)
        if info is not None:
            return info.get("input") or {}
        return self.logic.modelInput(model)

    def _modelTask(self, model):
        """``"segmentation"`` or ``"classification"``: the task ``models --json`` listed for ``model``, else (a
        model saved in the scene by id or path, not an ``id@version`` entry of the list) its model.json's."""
        info = getattr(self, "_models", {}).get(model)
        if info is not None:
            return info.get("task") or "classification"
        return self.logic.modelTask(model)

    def _followSegments(self, slot, segmentationNode, callback):
        """Call ``callback`` when a segment of ``segmentationNode`` is added, removed or renamed (the Fine-tune
        segmentation's into the segment → class table, the input segmentation's into the Segment list); ``slot``
        names the attribute remembering the segmentation followed so, whose observers go when it changes."""
        segmentation = segmentationNode.GetSegmentation() if segmentationNode else None
        previous = getattr(self, slot, None)
        if segmentation is previous:
            return
        events = (slicer.vtkSegmentation.SegmentAdded, slicer.vtkSegmentation.SegmentRemoved,
                  slicer.vtkSegmentation.SegmentModified)
        if previous is not None:
            for event in events:
                self.removeObserver(previous, event, callback)
        setattr(self, slot, segmentation)
        if segmentation is not None:
            for event in events:
                self.addObserver(segmentation, event, callback)

    def onSegmentsChanged(self, caller=None, event=None):
        if self._parameterNode:
            self.logic.syncClassMap(self._parameterNode)

    def _updateSegmentSelector(self, p):
        """The Segment row, shown while the input is a segmentation (a mask model's): its segments by name, with the
        one a run classifies selected (``p.inputSegment``, else the first: ``MedDeepRecogLogic.inputSegmentID``).
        Slicer has no parameter node connector for a segment, so the list is filled here, as the model list is; the
        parameter node keeps the choice (:meth:`onInputSegmentSelected`)."""
        segmentationNode = p.inputVolume if self.logic.isSegmentation(p.inputVolume) else None
        self._followSegments("_inputSegmentation", segmentationNode, self.onInputSegmentsChanged)
        inputId = p.inputVolume.GetID() if p.inputVolume else None
        combo = self.ui.inputSegmentComboBox
        combo.visible = self.ui.inputSegmentLabel.visible = segmentationNode is not None
        segments = scene_io.segmentItems(segmentationNode) if segmentationNode is not None else []
        if getattr(self, "_segmentInputID", None) not in (None, inputId):
            # another input: a segment chosen in the last one that this one lacks is no removal from this one (it
            # starts at its first segment, as its list shows), and a removal said of the last one is not of this one
            self._segmentInputID = inputId
            if p.removedSegment or (p.inputSegment and p.inputSegment not in dict(segments)):
                p.inputSegment = p.inputSegment if p.inputSegment in dict(segments) else ""
                p.removedSegment = ""
        self._segmentInputID = inputId
        shown = getattr(self, "_shownSegment", None)  # (segmentation ID, segment ID, name) the list showed last
        if (segmentationNode is not None and shown and shown[0] == inputId and shown[1] not in dict(segments)
                and p.inputSegment in ("", shown[1])):
            # The segment the list showed, the one Classify would read, was removed. Moving to another segment
            # would read, say, the other adrenal under this one's choice with nothing but a changed list to say
            # so: the choice stays on the removed segment, which Classify refuses (naming it) until the user
            # picks one, and the status line says so at once.
            self._shownSegment = None
            if getattr(self, "_resultScanID", None) == inputId and getattr(self, "_resultSegmentID", None) == shown[1]:
                # the answer was the removed segment's: it goes with it (lines, table, heatmap)
                self._clearResultLines()
                self.logic.clearClassification(p)
            robustFor = getattr(self, "_robustnessFor", None)
            if robustFor is not None and robustFor[:2] == (inputId, shown[1]):
                self._clearRobustnessLine()
            p.inputSegment, p.removedSegment = shown[1], shown[2]
            self.ui.statusLabel.text = (f"Segment '{shown[2]}' was removed from '{segmentationNode.GetName()}': "
                                        "pick the segment to classify.")
        chosen = self.logic.inputSegmentID(p, segmentationNode) if segmentationNode is not None else None
        self._shownSegment = (inputId, chosen, dict(segments)[chosen]) if chosen else None
        combo.blockSignals(True)  # filling the list is no choice of the user's
        try:
            if segments != getattr(self, "_listedSegments", None):
                combo.clear()
                for segmentId, name in segments:
                    combo.addItem(name, segmentId)
                self._listedSegments = segments
            combo.currentIndex = combo.findData(chosen) if chosen else -1
        finally:
            combo.blockSignals(False)

    def onInputSegmentsChanged(self, caller=None, event=None):
        if self._parameterNode:
            self._updateSegmentSelector(self._parameterNode)

    def onInputSegmentSelected(self, index=None):
        segmentId = self.ui.inputSegmentComboBox.currentData
        if self._parameterNode is not None and segmentId:
            self._parameterNode.inputSegment = segmentId
            self._parameterNode.removedSegment = ""

    # -- models --------------------------------------------------------------------------------------------
    def refreshModels(self, select=None):
        if self.logic.isRunning("models"):
            return
        self.ui.modelComboBox.clear()
        self.ui.modelComboBox.addItem("(loading models…)", "")
        self.logic.listModels(onFinished=lambda models, error: self._showModels(models or [], error, select))

    def _showModels(self, models, error, select):
        # read before the list changes: clearing and refilling the combo box selects its first item, and the
        # selection signal would write that item over the model saved in the scene
        wanted = select or (self._parameterNode.model if self._parameterNode else "")
        wanted = listed_model_key(models, wanted)  # a plain id ("ts-organs-seg"): its newest installed version
        combo = self.ui.modelComboBox
        combo.blockSignals(True)
        try:
            combo.clear()
            if any(not m.get("error") for m in models):  # classify --model auto: the core picks the disease model
                combo.addItem("auto: disease model chosen by modality and body region", AUTO_MODEL)
            for m in models:
                if not m.get("error"):
                    task = " (segmentation)" if m.get("task") == "segmentation" else ""  # runs Segment, not Classify
                    combo.addItem(f"{m['id']} {m['version']} ({m.get('source', '')}){task}",
                                  f"{m['id']}@{m['version']}")
            missing = bool(wanted) and combo.findData(wanted) < 0
            if missing:  # kept and said, not silently replaced: the scene asks for a model this machine lacks
                combo.addItem(f"{wanted} (saved in the scene; not installed here)", wanted)
            index = combo.findData(wanted)
            combo.currentIndex = index if index >= 0 else 0
        finally:
            combo.blockSignals(False)
        self._models = {m["id"] + "@" + m["version"]: m for m in models}
        self.onModelSelected()
        if missing:
            self.ui.modelInfoLabel.text = (f"The scene's model {wanted} is not installed here: import it (Import "
                                           "model…) or choose another.")
        elif error or not models:
            self.ui.modelInfoLabel.text = str(error) if error else "No model installed: use Import model…"

    def onModelSelected(self, index=None):
        key = self.ui.modelComboBox.currentData
        if self._parameterNode is not None and key:  # "" while the list is loading: keep the saved choice
            self._parameterNode.model = key
        info = getattr(self, "_models", {}).get(key or "")
        if key == AUTO_MODEL:
            self.ui.modelInfoLabel.text = ("Each scan goes to the disease model that applies (brain MR, chest CT, "
                                           "breast ultrasound); the result says which and why.")
        elif info:
            # the CLI's and Segment's words: optimistic (the training block says how the checkpoint was chosen)
            metrics = validation_summary(info.get("metrics"), info.get("training"))
            metrics = metrics[:1].upper() + metrics[1:]  # a sentence of its own, after the classes
            if info.get("task") == "segmentation":  # class 0 is the background, not a segment
                self.ui.modelInfoLabel.text = (f"segments: {', '.join((info.get('class_names') or [])[1:])} "
                                               f"(use Segment). {metrics}")
            else:
                reads = (" Input: a label map of the one structure it classifies."
                         if (info.get("input") or {}).get("content") == MASK_CONTENT else "")
                self.ui.modelInfoLabel.text = f"classes: {', '.join(info.get('class_names') or [])}. {metrics}{reads}"

    def onImportModelButton(self):
        path = qt.QFileDialog.getOpenFileName(self.parent, "Import model package", "",
                                              "Model package (model.json *.zip)")
        if not path:
            return
        if Path(path).name == "model.json":
            path = str(Path(path).parent)
        def done(imported, error):  # the worker unpacks and checks the package off the GUI thread
            self.ui.modelInfoLabel.text = ""
            with slicer.util.tryWithErrorDisplay("Importing the model failed."):
                if error is not None:
                    raise error
                self.refreshModels(select=f"{imported['id']}@{imported['version']}")

        with slicer.util.tryWithErrorDisplay("Importing the model could not start."):
            self.ui.modelInfoLabel.text = f"Importing {Path(path).name}…"
            self.logic.importModel(path, onFinished=done)

    # -- runs ----------------------------------------------------------------------------------------------
    def _progress(self, bar, label):
        def show(event):
            bar.show()
            bar.value = int(round(100 * event.fraction))
            label.text = event.describe()
        return show

    def _finished(self, kind, bar, label, onSuccess):
        def done(summary, error):
            bar.hide()
            if error is not None and kind == "classify" and self._parameterNode:  # cancelled or failed: the last
                self.logic.clearClassification(self._parameterNode)  # answer must not stand as this run's
            self.onParameterNodeModified()
            if error is not None and getattr(error, "cancelled", False):
                label.text = "Cancelled."
                return
            label.text = f"Failed: {error}" if error is not None else ""
            with slicer.util.tryWithErrorDisplay(f"MedDeepRecog: {kind} failed."):
                if error is not None:
                    raise error  # shown as the worker's own one-line message
                onSuccess(summary)
        return done

    def _run(self, kind, method, bar, label, onSuccess):
        if self.logic.isRunning(kind):
            self.logic.cancel(kind)
            return
        if kind in ("classify", "segment"):  # a new answer is coming: the last one must not stand beside a failure
            self.ui.resultLabel.text = ""
            self.ui.faithfulnessLabel.text = ""
            self._resultScanID = None
            scan = self._parameterNode.inputVolume if self._parameterNode else None
            scanId, show = (scan.GetID() if scan else None), onSuccess
            # what the run reads (the scan, or the segment of a segmentation), named when it starts
            subject = self.logic.inputWords(self._parameterNode) if self._parameterNode else ""
            segmentId = self._runSubject(self._parameterNode)[1] if self._parameterNode else None

            def onSuccess(summary):  # the lines answer for the scan the run started on, and name it and the model
                show(summary)
                self._resultScanID, self._resultSegmentID = scanId, segmentId
                model = getattr(summary, "model", "") or ""
                raw = getattr(summary, "raw", None) or {}
                where = self.logic.sliceWords(raw.get("slice"))  # Classify current slice: that slice's answer
                if subject:
                    said = f"For {where + ' of ' if where else ''}{subject}" + (f", model {model}" if model else "")
                    self.ui.resultLabel.text = (f"<small>{html.escape(said, quote=False)}:</small><br>"
                                                f"{self.ui.resultLabel.text}")
        with slicer.util.tryWithErrorDisplay(f"MedDeepRecog: {kind} could not start.", waitCursor=True):
            self.logic.ensureDependencies()
            label.text = "Starting…"
            try:
                method(self._parameterNode, onProgress=self._progress(bar, label),
                       onFinished=self._finished(kind, bar, label, onSuccess))
            except Exception as exc:  # nothing started: one line says why (the error display too)
                why = str(exc).strip().splitlines()
                label.text = f"Not started: {why[0] if why else type(exc).__name__}"
                if kind == "classify" and self._parameterNode:  # as after a failed run: the last answer must not
                    self.logic.clearClassification(self._parameterNode)  # stand as the panel's output
                raise
        self.onParameterNodeModified()

    def onClassifyButton(self):
        self._run("classify", self.logic.classify, self.ui.classifyProgressBar, self.ui.statusLabel, self._showResult)

    def onSegmentButton(self):
        self._run("segment", self.logic.segment, self.ui.classifyProgressBar, self.ui.statusLabel, self._showResult)

    def _showResult(self, result):
        """Status and result line of a Classify (label), an ROI classifier (segment labels) or a Segment (each
        segment's volume in ml)."""
        raw = getattr(result, "raw", None) or {}  # an ROI classifier's SegmentLabels has no worker JSON of its own
        route = raw.get("route") if isinstance(raw.get("route"), dict) else {}
        self.ui.statusLabel.text = f"Done ({result.model})." + (f" Chosen: {route['reason']}" if route.get("reason")
                                                                else "")
        self.ui.resultLabel.text = result.result_text()
        self.ui.faithfulnessLabel.text = result.heatmap_text()

    def onClassifySliceButton(self):
        self._run("classify", self.logic.classifySlice, self.ui.classifyProgressBar, self.ui.statusLabel,
                  self._showSliceResult)

    def _showSliceResult(self, result):
        self._showResult(result)
        where = result.raw.get("slice") or {}
        if where:
            self.ui.statusLabel.text = (f"Done ({result.model}): slice {where.get('index')} "
                                        f"at S = {float(where.get('position_mm', 0.0)):.1f} mm.")

    def onSliceRowSelected(self):
        """A row of the per-slice table: show that slice in the red view."""
        row = self.ui.sliceTableView.currentIndex().row()
        position = scene_io.slicePositionOfRow(self._parameterNode.sliceTable if self._parameterNode else None, row)
        if position is not None:
            with slicer.util.tryWithErrorDisplay("MedDeepRecog: cannot show that slice."):
                self.logic.jumpToSlice(self._parameterNode.inputVolume, position)

    def onPreviewButton(self):
        self._run("preview", self.logic.preview, self.ui.classifyProgressBar, self.ui.statusLabel,
                  lambda out: setattr(self.ui.statusLabel, "text", "Preview loaded."))

    def onRobustnessButton(self):
        subject = self._runSubject(self._parameterNode) if self._parameterNode else None

        def show(text):  # kept while the input, its segment and the model are the ones it was computed for
            self.ui.robustnessLabel.text = text
            self._robustnessFor = subject
        if not self.logic.isRunning("robustness"):
            self._clearRobustnessLine()  # a new check: the last one's sentence must not stand beside its failure
        self._run("robustness", self.logic.robustness, self.ui.classifyProgressBar, self.ui.robustnessLabel, show)

    def onFinetuneButton(self):
        def done(package):
            self.ui.finetuneStatusLabel.text = f"New model version: {package}"
            self.refreshModels(select=package)
        self._run("finetune", self.logic.finetune, self.ui.finetuneProgressBar, self.ui.finetuneStatusLabel, done)


class MedDeepRecogLogic(ScriptedLoadableModuleLogic):
    """Runs the core's command line in a worker process and loads its outputs into the scene.

    Every run method takes the parameter node and returns at once (the job), or, with ``waitForCompletion=True``,
    blocks and returns the loaded result (raising :class:`WorkerError` with the worker's message on failure).
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self._jobs = {}
        self.python = python_executable()

    def getParameterNode(self):
        return MedDeepRecogParameterNode(super().getParameterNode())

    def ensureDependencies(self):
        """First use: torch through the PyTorch extension, then the packages of Resources/requirements.txt.

        torch comes first so that installing monai finds it and does not pull a second torch build from PyPI.
        Nothing heavy is imported into Slicer: the worker process imports torch and monai.
        """
        import importlib.util
        if importlib.util.find_spec("torch") is None:
            try:
                import PyTorchUtils
            except ImportError:
                raise RuntimeError("MedDeepRecog needs PyTorch: install the 'PyTorch' extension from the Extensions "
                                   "Manager, restart Slicer, and try again.") from None
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True) is None:
                raise RuntimeError("PyTorch was not installed; MedDeepRecog cannot run models without it.")
        requirements = Path(__file__).parent / "Resources" / "requirements.txt"
        try:
            import slicer.packaging
        except ImportError:  # Slicer 5.10: no slicer.packaging; install what is missing with pip
            missing = [line.strip() for line in requirements.read_text(encoding="utf-8").splitlines()
                       if line.strip() and not line.startswith("#")
                       and importlib.util.find_spec(_importName(line)) is None]
            if missing and slicer.util.confirmOkCancelDisplay(f"MedDeepRecog needs: {', '.join(missing)}. Install?"):
                slicer.util.pip_install(missing)
        else:
            slicer.packaging.pip_ensure(slicer.packaging.load_requirements(requirements), requester="MedDeepRecog")

    @staticmethod
    def syncClassMap(p):
        """Make ``p.classMapTable`` list the segments of ``p.trainingSegmentation`` as they are now (the panel calls
        it on every segment change, Fine-tune once more before it reads the table)."""
        if not p.trainingSegmentation:
            return
        p.classMapTable = scene_io.getOrCreateNode(p.classMapTable, "vtkMRMLTableNode", "MedDeepRecog segment classes")
        scene_io.syncClassMapTable(p.classMapTable, p.trainingSegmentation)

    @staticmethod
    def heatmapIDs(p):
        """IDs of the heatmaps this module made (``OUTPUT_ATTRIBUTE``, and the parameter node's own heatmap), in scene
        order: no scan to run on. (A preprocessed volume may be an input.)"""
        return [node.GetID() for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                if MedDeepRecogLogic.isHeatmap(p, node)]

    @staticmethod
    def isHeatmap(p, node):
        return node.GetAttribute(OUTPUT_ATTRIBUTE) == "heatmap" or bool(p.outputHeatmap
                                                                         and p.outputHeatmap.GetID() == node.GetID())

    @staticmethod
    def defaultInputVolume(p):
        """The first scan in the scene: a scalar or colour (vector) volume that is not a label map and not one of
        this module's outputs (heatmap, preprocessed volume), or ``None``."""
        outputs = {node.GetID() for node in (p.outputHeatmap, p.preprocessedVolume) if node is not None}
        for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):  # label maps, DWI, DTI are subclasses
            if node.GetClassName() in ("vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode") \
                    and node.GetID() not in outputs and not node.GetAttribute(OUTPUT_ATTRIBUTE):
                return node
        return None

    def isRunning(self, kind):
        job = self._jobs.get(kind)
        return bool(job and job.running)

    def cancel(self, kind=None):
        for name, job in list(self._jobs.items()):
            if kind in (None, name):
                job.cancel()

    def _start(self, kind, command, load, workDir=None, onProgress=None, onFinished=None, waitForCompletion=False):
        if self.isRunning(kind):
            raise RuntimeError(f"a {kind} run is already in progress")
        command.validate()  # a panel/worker version mismatch is reported before anything starts
        outcome = {}

        def finished(result, error):
            summary = None
            if error is None:
                try:
                    summary = load(result, job)
                except Exception as exc:  # an unexpected output must reach the user as a message
                    logging.exception("MedDeepRecog: loading the %s outputs failed", kind)
                    error = WorkerError(str(exc))
            if isinstance(error, WorkerError):  # the nodes' names, not the deleted exchange files'; the panel's
                error = in_panel_words(error, workDir)  # names for the options
            if workDir and not os.environ.get("MEDDEEPRECOG_KEEP_TEMP"):
                shutil.rmtree(workDir, ignore_errors=True)
            outcome.update(summary=summary, error=error)
            if onFinished:
                onFinished(summary, error)

        show = onProgress and (lambda event: onProgress(panel_event(event, workDir)))  # the status line's words
        job = WorkerJob(command, show, finished)
        self._jobs[kind] = job
        job.start(waitForCompletion)
        if waitForCompletion:
            if outcome["error"] is not None:
                raise outcome["error"]
            return outcome["summary"]
        return job

    @staticmethod
    @contextlib.contextmanager
    def _workDir():
        """A new exchange folder for one run. It is removed if preparing or starting the run fails (an export
        error, a run already in progress, no Python to start); once the run has started its job removes it."""
        workDir = Path(tempfile.mkdtemp(prefix="MedDeepRecog-", dir=slicer.app.temporaryPath))
        try:
            yield workDir
        except BaseException:
            shutil.rmtree(workDir, ignore_errors=True)
            raise

    # -- catalog and device -----------------------------------------------------------------------------------
    def listModels(self, **kwargs):
        return self._start("models", WorkerCommand.list_models(python=self.python),
                           lambda result, job: parse_json_output(job.lines), **kwargs)

    def importModel(self, path, **kwargs):
        """Install a package folder or ``.zip`` into the user catalog (the worker checks it); returns the job, or
        with ``waitForCompletion=True`` the imported package's ``{"id", "version", ...}``."""
        return self._start("import", WorkerCommand.import_model(path, python=self.python),
                           lambda result, job: parse_json_output(job.lines), **kwargs)

    def deviceInfo(self, **kwargs):
        def load(result, job):
            info = parse_json_output(job.lines)
            return {**info, "summary": describe(info)}
        return self._start("device", WorkerCommand.device_info(python=self.python), load, **kwargs)

    # -- preprocessing preview --------------------------------------------------------------------------------
    def pipelineSettings(self, p):
        """The preprocessing check boxes as ``pipeline_spec`` settings."""
        return {key: getattr(p, field) for key, field in PIPELINE_FIELDS.items()}

    def applyPreset(self, p):
        """Set the preprocessing check boxes to what ``p.preset``'s pipeline does."""
        for key, value in preset_settings(p.preset).items():
            setattr(p, PIPELINE_FIELDS[key], value)

    def preview(self, p, **kwargs):
        volume = self._runInput(p)
        with self._workDir() as workDir:
            inputPath = scene_io.exportVolume(volume, workDir)
            pipelinePath = workDir / "pipeline.json"
            pipelinePath.write_text(json.dumps(build_pipeline(p.preset, self.pipelineSettings(p)), indent=2),
                                    encoding="utf-8")
            outDir = workDir / "out"  # apart from the exported scan, which may be called "preprocessed" or "mask"
            outDir.mkdir()
            outPath, maskPath = outDir / "preprocessed.nrrd", outDir / "mask.seg.nrrd"
            command = WorkerCommand.preprocess(inputPath, outPath, pipelinePath, python=self.python,
                                               mask=maskPath if p.bodyMask else None)

            def load(result, job):
                self._checkStillInScene(volume)
                name = volume.GetName()
                p.preprocessedVolume = scene_io.loadVolumeInto(outPath,
                                                               self._outputVolume(p.preprocessedVolume, volume),
                                                               f"{name} preprocessed")
                p.preprocessedVolume.SetAttribute(OUTPUT_ATTRIBUTE, "preprocessed")
                scene_io.placeUnderStudy(p.preprocessedVolume, volume)
                slicer.util.setSliceViewerLayers(background=p.preprocessedVolume)
                if maskPath.exists():
                    self._loadSegments(p, volume, maskPath)
                return p.preprocessedVolume
            return self._start("preview", command, load, workDir, **kwargs)

    def _loadSegments(self, p, volume, path):
        """The segments of a worker's ``.seg.nrrd`` (Preview's mask, Segment's organs) into ``volume``'s output
        segmentation, replacing same-named ones and keeping the others, shown in 3D."""
        self._segmentationFor(p, volume)
        scene_io.replaceSegments(p.outputSegmentation, path, volume)
        scene_io.showSegmentationIn3D(p.outputSegmentation)

    def _segmentationFor(self, p, volume):
        """``volume``'s own output segmentation (:func:`scene_io.outputSegmentationOf`) as ``p.outputSegmentation``:
        a result of one scan never adds to, or keeps, another scan's segments."""
        p.outputSegmentation = scene_io.outputSegmentationOf(volume, p.outputSegmentation)
        scene_io.placeUnderStudy(p.outputSegmentation, volume)

    @staticmethod
    def _runInput(p, segmentation=False):
        """The scan a run reads, taken when it starts: its results are loaded for that node (named after it, shown
        over it) even if the panel's input changes while the worker runs. A heatmap this module made is refused:
        it is no scan, and its run would write the new heatmap into it. A segmentation is read by a mask model's
        Classify and robustness check alone (``segmentation=True``); any other run refuses it."""
        volume = p.inputVolume
        if not volume:
            raise ValueError("Select the input volume.")
        if MedDeepRecogLogic.isSegmentation(volume):
            if not segmentation:
                raise ValueError(f"'{volume.GetName()}' is a segmentation: only a mask model (one that classifies a "
                                 "structure's shape, e.g. adrenal-mass-3d) reads one, in Classify and the robustness "
                                 "check; select a volume as the input.")
            return volume
        if not volume.IsA("vtkMRMLVolumeNode"):
            raise ValueError(f"'{volume.GetName()}' is no volume: select a scan as the input volume.")
        if MedDeepRecogLogic.isHeatmap(p, volume):
            raise ValueError(f"'{volume.GetName()}' is a heatmap made by MedDeepRecog, not a scan: select the scan "
                             "itself as the input volume.")
        return volume

    @staticmethod
    def isSegmentation(node):
        """True for a segmentation node (the input of a mask model, whose chosen segment is classified)."""
        return node is not None and node.IsA("vtkMRMLSegmentationNode")

    @staticmethod
    def inputSegmentID(p, segmentationNode):
        """The ID of the segment of ``segmentationNode`` that Classify reads: ``p.inputSegment``, or its first when
        none is chosen (``""``: what the panel's Segment list then shows); ``None`` when it has none, or when the
        chosen segment is no longer one of its segments (removed: the run is refused, :meth:`chosenSegment`, until
        the user picks one; it is not moved to another segment, which would classify, say, the other adrenal under
        the removed one's choice)."""
        segmentIds = list(segmentationNode.GetSegmentation().GetSegmentIDs())
        if p.inputSegment:
            return p.inputSegment if p.inputSegment in segmentIds else None
        return segmentIds[0] if segmentIds else None

    @classmethod
    def chosenSegment(cls, p, segmentationNode):
        """:meth:`inputSegmentID`, or a ValueError saying why no segment of ``segmentationNode`` is to be read: it has
        none, or the chosen one was removed (named when the panel saw it go: ``p.removedSegment``)."""
        segmentId = cls.inputSegmentID(p, segmentationNode)
        if segmentId is not None:
            return segmentId
        node = segmentationNode.GetName()
        if not segmentationNode.GetSegmentation().GetNumberOfSegments():
            raise ValueError(f"'{node}' has no segments: draw the structure in the Segment Editor, or select a label "
                             "map.")
        if p.removedSegment:
            raise ValueError(f"segment '{p.removedSegment}' was removed from '{node}'; pick a segment")
        raise ValueError(f"the chosen segment '{p.inputSegment}' is not in '{node}'; pick a segment")

    @staticmethod
    def sliceWords(sliceRecord):
        """``slice 17 (S = 32.5 mm)`` for a one-slice result's ``slice`` record (Classify current slice), else
        ``""``: the core's wording (``contract.slice_words``)."""
        return slice_words(sliceRecord)

    @staticmethod
    def describeInput(node, segmentName=None):
        """The input as a result names it: ``'CT'``, or ``segment 'adrenal R' of 'labels'``."""
        return (f"segment '{segmentName}' of '{node.GetName()}'" if segmentName is not None
                else f"'{node.GetName()}'")

    @classmethod
    def inputWords(cls, p):
        """:meth:`describeInput` of what a run would read now (the input, and for a segmentation its chosen
        segment); ``""`` without an input."""
        node = p.inputVolume
        if not node:
            return ""
        if cls.isSegmentation(node):
            segmentId = cls.inputSegmentID(p, node)
            if segmentId is not None:
                return cls.describeInput(node, cls.segmentName(node, segmentId))
        return cls.describeInput(node)

    @staticmethod
    def segmentName(segmentationNode, segmentId):
        """The name of the segment ``segmentId`` of ``segmentationNode``."""
        return segmentationNode.GetSegmentation().GetSegment(segmentId).GetName()

    @staticmethod
    def modelInput(model):
        """The package's ``input`` (kind, size, spacing_mm, content) from its model.json alone (cheap on the GUI
        thread); ``{}`` for auto (which routes to scan classifiers) or a package that cannot be read."""
        return model_input_spec(model) if model and model != AUTO_MODEL else {}

    @staticmethod
    def _outputVolume(node, volume):
        """``node`` to load a run's output volume into, unless it is the run's input ``volume`` (an output is never
        written into the scan it was made from): then ``None``, and a new node is made."""
        return None if node is not None and node.GetID() == volume.GetID() else node

    @staticmethod
    def _checkStillInScene(volume):
        """A run's results are not loaded once its scan was removed from the scene (deleted, or the scene closed)."""
        if not slicer.mrmlScene.IsNodePresent(volume):
            raise ValueError(f"the input volume '{volume.GetName()}' was removed from the scene during the run: its "
                             "result was not loaded")

    # -- classification -----------------------------------------------------------------------------------------
    def classify(self, p, **kwargs):
        """Classify ``p.inputVolume`` with ``p.model``; fills the probability table, heatmap and segmentation.

        An ROI classifier (what Fine-tune makes from labeled segments) labels each segment of
        ``p.trainingSegmentation`` instead (:meth:`classifySegments`)."""
        if model_input_kind(p.model) == "roi3d":
            return self.classifySegments(p, **kwargs)
        if self.modelTask(p.model) == "segmentation":  # said in the panel's words, not the command line's
            raise ValueError(f"{p.model} is a segmentation model: use Segment.")
        volume = self._runInput(p, segmentation=self.modelInput(p.model).get("content") == MASK_CONTENT)
        if self.isSegmentation(volume):
            return self._classifySegment(p, volume, **kwargs)
        with self._workDir() as workDir:
            inputPath = scene_io.exportVolume(volume, workDir)
            outDir = workDir / "out"
            secondPath = scene_io.exportVolume(p.secondVolume, workDir / "second") if p.secondVolume else None
            command = WorkerCommand.classify([inputPath], p.model, outDir, python=self.python,
                                             explain=p.explainMethod, device=p.device, second_input=secondPath)

            def load(result, job):
                return self._loadClassification(p, volume, outDir, inputPath)
            return self._start("classify", command, load, workDir, **kwargs)

    def _classifySegment(self, p, segmentationNode, **kwargs):
        """Classify one segment of ``segmentationNode`` (:meth:`inputSegmentID`) with the mask model ``p.model``: the
        segment alone goes to the worker as a label map file (:func:`scene_io.exportSegmentLabelmap`: on the grid it
        was drawn on) and the core reads it as it reads a label map node's. Results are named after the segmentation
        and segment; the result line says which segment was classified. A segmentation without segments, or an
        empty segment, is refused before anything starts."""
        segmentId = self.chosenSegment(p, segmentationNode)
        segmentName = self.segmentName(segmentationNode, segmentId)
        name = f"{segmentationNode.GetName()} {segmentName}"
        words = self.describeInput(segmentationNode, segmentName)
        with self._workDir() as workDir:
            inputPath = scene_io.exportSegmentLabelmap(segmentationNode, segmentId, workDir)
            outDir = workDir / "out"
            command = WorkerCommand.classify([inputPath], p.model, outDir, python=self.python,
                                             explain=p.explainMethod, device=p.device)

            def load(result, job):
                res = self._loadClassification(p, segmentationNode, outDir, inputPath, name, words)
                said = f"classified: the segment '{segmentName}' of '{segmentationNode.GetName()}'"
                return dataclasses.replace(res, input_notes=[said, *res.input_notes])
            return self._start("classify", command, load, workDir, **kwargs)

    def _loadClassification(self, p, volume, outDir, inputPath, name=None, words=None):
        """The worker's classify outputs of ``volume`` (the scan the run started on; or the label map or
        segmentation of a mask model's structure) into the reused nodes, named after ``name`` (default: the node's
        name): probability table, heatmap (Inferno over the scan), hot-region segment, and for a 2D model the
        per-slice table. The tables' first column and the heatmap's legend name the input (``words``, default
        :meth:`describeInput` of ``volume``) and the model's id@version, so that a result read beside another scan
        (or another segment) says whose it is."""
        self._checkStillInScene(volume)
        res = read_classify_result(outDir, inputPath)
        name = name or volume.GetName()
        resultOf = words or self.describeInput(volume)
        isScan = volume.IsA("vtkMRMLScalarVolumeNode") and not volume.IsA("vtkMRMLLabelMapVolumeNode")
        sliceRecord = res.raw.get("slice") if isinstance(res.raw.get("slice"), dict) else None
        # what the figures are of: one slice (Classify current slice), the scan, or a mask's structure
        where = self.sliceWords(sliceRecord)
        subject = "slice" if where else "scan" if isScan else "segment" if self.isSegmentation(volume) else "label map"
        if where:
            resultOf, name = f"{where} of {resultOf}", f"{name} slice {sliceRecord['index']}"
        p.outputTable = scene_io.getOrCreateNode(p.outputTable, "vtkMRMLTableNode", f"{name} probabilities")
        scene_io.updateProbabilityTable(p.outputTable, res.probabilities, outOfDomain=res.out_of_domain,
                                        subject=subject,
                                        uncertain=res.uncertain, confidence=res.confidence,
                                        basis=str(res.raw.get("probabilities_basis") or ""),
                                        confidenceBasis=str(res.raw.get("confidence_basis") or ""),
                                        resultOf=resultOf, model=res.model)
        p.outputTable.SetAttribute("MedDeepRecog.label", res.label)
        p.outputTable.SetAttribute("MedDeepRecog.topClass", res.top_class)
        p.outputTable.SetAttribute("MedDeepRecog.model", res.model)
        p.outputTable.SetAttribute("MedDeepRecog.slice", json.dumps(sliceRecord) if sliceRecord else "")
        scene_io.placeUnderStudy(p.outputTable, volume)
        perSlice = res.raw.get("per_slice") or []
        slicesOfThisScan = scene_io.scanOf(p.sliceTable) == volume.GetID()
        if sliceRecord and slicesOfThisScan:  # one slice's result (Classify current slice): its per-slice table stays
            pass
        elif not sliceRecord and perSlice and all("label" in r for r in perSlice):  # slice models (CNN-LSTM records
            # are attention)
            p.sliceTable = scene_io.getOrCreateNode(p.sliceTable, "vtkMRMLTableNode", f"{name} per-slice results")
            scene_io.markScan(p.sliceTable, volume)
            scene_io.updateSliceTable(p.sliceTable, perSlice, resultOf=resultOf, model=res.model)
            scene_io.placeUnderStudy(p.sliceTable, volume)
        elif p.sliceTable:  # a 3D model's result, or one slice of another scan: an earlier per-slice table would be
            # read as this one's
            scene_io.removeNodeAndHelpers(p.sliceTable)
            p.sliceTable = None
        self._segmentationFor(p, volume)
        for segPath in res.segmentations:
            scene_io.replaceSegments(p.outputSegmentation, segPath, volume if volume.IsA("vtkMRMLVolumeNode") else None)
        hotName = f"heatmap >= {HOT_REGION_THRESHOLD}"
        if res.heatmap is not None and not res.out_of_domain:  # outside the domain: no heat is a finding either
            p.outputHeatmap = scene_io.loadVolumeInto(res.heatmap, self._outputVolume(p.outputHeatmap, volume),
                                                      f"{name} heatmap")
            p.outputHeatmap.SetAttribute(OUTPUT_ATTRIBUTE, "heatmap")
            scene_io.markScan(p.outputHeatmap, volume)  # whose heat it is: hidden over another input
            scene_io.placeUnderStudy(p.outputHeatmap, volume)
            # a mask (label map, segment): shown over the scan in the views
            scene_io.showHeatmap(p.outputHeatmap, volume if isScan else None, p.heatmapThreshold, p.heatmapOpacity,
                                 title=f"Heatmap: {resultOf}" + (f", {res.model}" if res.model else ""))
            hot = slicer.util.arrayFromVolume(p.outputHeatmap) >= HOT_REGION_THRESHOLD
            scene_io.setSegmentFromMask(p.outputSegmentation, hotName, hot, (0.99, 0.65, 0.04), p.outputHeatmap)
        else:  # no heatmap this time (explain none, a model without one, out of domain): the last one must go
            if p.outputHeatmap:
                scene_io.removeNodeAndHelpers(p.outputHeatmap)
                p.outputHeatmap = None
            scene_io.removeSegmentByName(p.outputSegmentation, hotName)
        scene_io.showSegmentationIn3D(p.outputSegmentation)
        return res

    @staticmethod
    def clearClassification(p):
        """Take the last Classify answer off the scene and the panel (after a cancelled or failed run, which must not
        look like its answer): the probability and per-slice tables, the heatmap (and the views' foreground) and its
        hot region; and the scan's output segmentation this module made when nothing is left in it (an empty
        "<scan> segmentations" node, perhaps of a scan no longer in the scene, is no result)."""
        for field in ("outputTable", "sliceTable", "outputHeatmap"):
            node = getattr(p, field)
            if node is not None:
                scene_io.removeNodeAndHelpers(node)
                setattr(p, field, None)
        if p.outputSegmentation:
            scene_io.removeSegmentByName(p.outputSegmentation, f"heatmap >= {HOT_REGION_THRESHOLD}")
            made = scene_io.scanOf(p.outputSegmentation)  # marked: a scan's output segmentation, made here
            if made and not p.outputSegmentation.GetSegmentation().GetNumberOfSegments():
                scene_io.removeNodeAndHelpers(p.outputSegmentation)
                p.outputSegmentation = None

    # -- segmentation ---------------------------------------------------------------------------------------------
    @staticmethod
    def modelTask(model):
        """``"segmentation"``, ``"classification"`` (also for ``auto``, which routes to classifiers), or ``None``
        when the package cannot be read; from its model.json alone (cheap on the GUI thread)."""
        if model == AUTO_MODEL:
            return "classification"
        return model_task(model) if model else None

    def segment(self, p, **kwargs):
        """Segment ``p.inputVolume`` with the segmentation package ``p.model``: its segments (one per class, on the
        volume's grid) go into the output segmentation, as Preview's mask does, replacing same-named segments of an
        earlier run, and are shown in 3D. Returns each segment's volume (:class:`SegmentVolumes`)."""
        if self.modelTask(p.model) != "segmentation":
            raise ValueError(f"{p.model} is not a segmentation model: use Classify.")
        volume = self._runInput(p)
        with self._workDir() as workDir:
            inputPath = scene_io.exportVolume(volume, workDir)
            (workDir / "out").mkdir()  # a new folder apart from the exported scan: the worker never replaces a file
            outPath = workDir / "out" / "segmentation.seg.nrrd"
            command = WorkerCommand.segment(inputPath, p.model, outPath, python=self.python, device=p.device)

            def load(result, job):
                self._checkStillInScene(volume)
                volumes = read_segment_volumes(result, outPath)
                self._loadSegments(p, volume, volumes.output)
                return volumes
            return self._start("segment", command, load, workDir, **kwargs)

    # -- 2D (slice) models: the slice shown in the red view -------------------------------------------------------
    @staticmethod
    def isSliceModel(model):
        """True for a 2D model (``input.kind == "slices2d"`` in its model.json): it classifies axial slices."""
        return bool(model) and model_input_kind(model) == "slices2d"

    @staticmethod
    def _redSliceLogic():
        return slicer.app.applicationLogic().GetSliceLogicByLayoutName("Red")

    @staticmethod
    def _scanGeometry(volumeNode):
        """``(IJKToRAS, dims, fromWorld, toWorld)`` of ``volumeNode``: its own grid and the 4x4 matrices between
        the scene and its own coordinates (identity without a parent transform)."""
        ijkToRAS = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(ijkToRAS)
        fromWorld, toWorld = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        parent = volumeNode.GetParentTransformNode()
        if parent is not None:
            if not parent.IsTransformToWorldLinear():
                raise ValueError(f"{volumeNode.GetName()} is under a non-linear transform: harden it, or classify "
                                 "the whole volume, so that the slice shown is a slice of the scan")
            parent.GetMatrixTransformFromWorld(fromWorld)
            parent.GetMatrixTransformToWorld(toWorld)
        return (slicer.util.arrayFromVTKMatrix(ijkToRAS), volumeNode.GetImageData().GetDimensions(),
                slicer.util.arrayFromVTKMatrix(fromWorld), slicer.util.arrayFromVTKMatrix(toWorld))

    def currentSliceMm(self, volumeNode):
        """``--slice-mm`` for the axial slice of ``volumeNode`` that the red view shows at its centre: the
        superior coordinate of that slice's centre in the scan's own coordinates (the core's count; see
        ``slicer_bridge.slice_geometry``). Raises ValueError when the red view is not parallel to the scan's
        axial slices (a sagittal or coronal view, or an oblique reformat)."""
        ijkToRAS, dims, fromWorld, _ = self._scanGeometry(volumeNode)
        red = self._redSliceLogic()
        sliceToRAS = slicer.util.arrayFromVTKMatrix(red.GetSliceNode().GetSliceToRAS())
        centre = (fromWorld @ sliceToRAS[:, 3])[:3]
        normal = fromWorld[:3, :3] @ sliceToRAS[:3, 2]
        # beyond the scan: refused quoting the offset the user set, not the centre of a slice outside the scan
        return axial_slice_in_view(ijkToRAS, dims, centre, normal, view_offset_mm=red.GetSliceOffset())

    def jumpToSlice(self, volumeNode, positionMm):
        """Move the red view along its normal to the centre of ``volumeNode``'s axial slice at ``positionMm`` (a
        per-slice table row's superior coordinate, in the scan's own coordinates)."""
        ijkToRAS, dims, _, toWorld = self._scanGeometry(volumeNode)
        centre = (toWorld @ np.append(axial_slice_centre(ijkToRAS, dims, positionMm), 1.0))[:3]
        self._redSliceLogic().GetSliceNode().JumpSliceByOffsetting(*(float(v) for v in centre))

    def classifySlice(self, p, sliceMm=None, **kwargs):
        """Classify the single axial slice of ``p.inputVolume`` nearest ``sliceMm`` (default: the one the red view
        shows, :meth:`currentSliceMm`) with the 2D model ``p.model``: ``classify VOLUME --slice-mm S``. Fills the
        probability table with that slice's result (its index and position in the table's ``MedDeepRecog.slice``
        attribute) and shows its heatmap (on the volume's grid, heat on that slice only)."""
        if not self.isSliceModel(p.model):
            raise ValueError(f"{p.model} is not a 2D slice model: use Classify for the whole volume.")
        volume = self._runInput(p)
        sliceMm = self.currentSliceMm(volume) if sliceMm is None else float(sliceMm)
        with self._workDir() as workDir:
            inputPath = scene_io.exportVolume(volume, workDir)
            outDir = workDir / "out"
            command = WorkerCommand.build("classify", inputPath, python=self.python, model=p.model, out=outDir,
                                          explain=p.explainMethod, device=p.device, slice_mm=f"{sliceMm:.4f}")
            return self._start("classify", command,
                               lambda result, job: self._loadClassification(p, volume, outDir, inputPath),
                               workDir, **kwargs)

    def classifySegments(self, p, **kwargs):
        """Label every segment of ``p.trainingSegmentation`` with the ROI classifier ``p.model``; fills a
        segment → label / probabilities table."""
        if not p.trainingSegmentation:
            raise ValueError(f"{p.model} is an ROI classifier: it labels segments. Select the segmentation whose "
                             "segments it should label as the Fine-tune section's Segmentation.")
        volume = self._runInput(p)
        with self._workDir() as workDir:
            inputPath = scene_io.exportVolume(volume, workDir)
            outDir = workDir / "out"
            command = WorkerCommand.classify([inputPath], p.model, outDir, python=self.python, device=p.device,
                                             segments=scene_io.exportSegmentation(p.trainingSegmentation, workDir))

            def load(result, job):
                self._checkStillInScene(volume)
                res = read_segment_labels(outDir, inputPath)
                name = volume.GetName()
                p.outputTable = scene_io.getOrCreateNode(p.outputTable, "vtkMRMLTableNode", f"{name} segment labels")
                scene_io.updateSegmentLabelTable(p.outputTable, res.segments, res.class_names,
                                                 resultOf=self.describeInput(volume), model=res.model)
                p.outputTable.SetAttribute("MedDeepRecog.model", res.model)
                scene_io.placeUnderStudy(p.outputTable, volume)
                return res
            return self._start("classify", command, load, workDir, **kwargs)

    # -- robustness ---------------------------------------------------------------------------------------------
    def robustness(self, p, **kwargs):
        """Smallest eps that flips the prediction on the loaded scan; returns one sentence, naming the input and the
        model. A mask model's segment input goes to the worker as Classify sends it (the segment alone as a binary
        label map, :func:`scene_io.exportSegmentLabelmap`); the core's ``robustness --input`` prepares that file
        as classify does (``robustness.scan.model_input_of``), as it prepares a label map node's file."""
        volume = self._runInput(p, segmentation=self.modelInput(p.model).get("content") == MASK_CONTENT)
        with self._workDir() as workDir:
            if self.isSegmentation(volume):
                segmentId = self.chosenSegment(p, volume)
                words = self.describeInput(volume, self.segmentName(volume, segmentId))
                inputPath = scene_io.exportSegmentLabelmap(volume, segmentId, workDir)
            else:
                words, inputPath = self.describeInput(volume), scene_io.exportVolume(volume, workDir)
            command = WorkerCommand.robustness(p.model, inputPath, workDir / "robustness", python=self.python)

            def load(result, job):
                text, record = robustness_summary(result)
                model = record.get("model") if isinstance(record.get("model"), dict) else {}
                said = model_words(model).strip("@") or p.model
                return f"For {words}, model {said}: {text}"
            return self._start("robustness", command, load, workDir, **kwargs)

    # -- fine-tuning --------------------------------------------------------------------------------------------
    def finetune(self, p, **kwargs):
        """Fine-tune ``p.model`` on the input and its segments; returns the new package's ``id@version``."""
        volume = self._runInput(p)
        self.syncClassMap(p)
        classMap = {segment: cls for segment, cls in scene_io.readTableColumns(p.classMapTable) if cls.strip()}
        if not classMap:
            raise ValueError("Map at least one segment to a class in the segment → class table.")
        with self._workDir() as workDir:
            manifest = {"cases": [{"id": volume.GetName(),
                                   "image": str(scene_io.exportVolume(volume, workDir)),
                                   "segmentation": str(scene_io.exportSegmentation(p.trainingSegmentation, workDir))}],
                        "class_map": classMap}
            manifestPath = workDir / "manifest.json"
            manifestPath.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
            command = WorkerCommand.finetune(p.model, manifestPath, python=self.python, task=p.finetuneTask,
                                             epochs=p.epochs, device=p.device)

            def load(result, job):
                meta = json.loads((Path(result["package"]) / "model.json").read_text(encoding="utf-8"))
                return f"{meta['id']}@{meta['version']}"
            return self._start("finetune", command, load, workDir, **kwargs)


class MedDeepRecogTest(ScriptedLoadableModuleTest):
    """Real logic tests: a synthetic volume, a tiny model made by a worker process, no network."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ClassifyLoadsTableHeatmapAndSegments()
        self.setUp()
        self.test_PreviewLoadsFilteredVolumeAndMask()
        self.setUp()
        self.test_FinetuneThenClassifySegments()
        self.setUp()
        self.test_SegmentLoadsOrgansOnTheScanGrid()

    def _syntheticVolume(self):
        import numpy as np
        z, y, x = np.mgrid[:24, :32, :40]
        voxels = (100 * np.exp(-((x - 25) ** 2 + (y - 14) ** 2 + (z - 12) ** 2) / 40.0)).astype(np.int16)
        # vtkMatrixFromArray reads .shape
        ijkToRAS = np.array([[0.8, 0, 0, -10], [0, 1.1, 0, 20], [0, 0, 2.5, 5], [0, 0, 0, 1]])
        return slicer.util.addVolumeFromArray(voxels, ijkToRAS=ijkToRAS, name="synthetic")

    def test_PreviewLoadsFilteredVolumeAndMask(self):
        import numpy as np
        logic = MedDeepRecogLogic()
        p = logic.getParameterNode()
        p.inputVolume, p.preset = self._syntheticVolume(), "custom"
        p.clipIntensity, p.clipMin, p.clipMax, p.bodyMask = True, 10.0, 60.0, True
        filtered = logic.preview(p, waitForCompletion=True)
        values = slicer.util.arrayFromVolume(filtered)
        self.assertEqual(values.shape, slicer.util.arrayFromVolume(p.inputVolume).shape)
        self.assertTrue(10.0 - 1e-3 <= values.min() and values.max() <= 60.0 + 1e-3)
        segmentation = p.outputSegmentation.GetSegmentation()
        self.assertEqual([segmentation.GetSegment(s).GetName() for s in segmentation.GetSegmentIDs()], ["body"])
        self.assertTrue(np.any(slicer.util.arrayFromSegmentBinaryLabelmap(p.outputSegmentation,
                                                                           segmentation.GetSegmentIDs()[0],
                                                                           p.inputVolume)))

    def test_SegmentLoadsOrgansOnTheScanGrid(self):
        """The bundled abdominal CT with the bundled ts-organs-seg: liver, spleen and kidney on the scan's grid."""
        import numpy as np
        from MedDeepRecogLib.slicer_bridge import sample_path

        logic = MedDeepRecogLogic()
        p = logic.getParameterNode()
        p.inputVolume = slicer.util.loadVolume(str(sample_path("abdomen_ct.nii.gz")), {"name": "abdomen_ct"})
        p.model, p.device = "ts-organs-seg", "cpu"
        volumes = logic.segment(p, waitForCompletion=True)
        self.assertEqual([name for name, _, _ in volumes.segments], ["liver", "spleen", "kidney"])
        self.assertTrue(all(ml > 0 for _, ml, _ in volumes.segments))
        self.assertEqual(scene_io.segmentNames(p.outputSegmentation), ["liver", "spleen", "kidney"])
        liverId = p.outputSegmentation.GetSegmentation().GetSegmentIdBySegmentName("liver")
        liver = slicer.util.arrayFromSegmentBinaryLabelmap(p.outputSegmentation, liverId, p.inputVolume)
        self.assertEqual(liver.shape, slicer.util.arrayFromVolume(p.inputVolume).shape)
        self.assertTrue(np.any(liver))
        self.delayDisplay("MedDeepRecog segment test passed")

    def _inIsolatedHome(self, body):
        """Run ``body(home)`` with the worker's user catalog in a fresh folder, isolated from the user's."""
        home = Path(tempfile.mkdtemp(prefix="MedDeepRecogTest-", dir=slicer.app.temporaryPath))
        previousHome = os.environ.get("MEDDEEPRECOG_HOME")
        os.environ["MEDDEEPRECOG_HOME"] = str(home)
        try:
            from MedDeepRecogLib.slicer_bridge import run_worker, worker_environment
            run_worker([MedDeepRecogLogic().python, "-m", "MedDeepRecogLib.slicer_bridge.tiny_model",
                        str(home / "models")], worker_environment())
            body(home)
        finally:
            os.environ.pop("MEDDEEPRECOG_HOME")
            if previousHome is not None:
                os.environ["MEDDEEPRECOG_HOME"] = previousHome
            shutil.rmtree(home, ignore_errors=True)

    def test_ClassifyLoadsTableHeatmapAndSegments(self):
        self._inIsolatedHome(self._classifySyntheticVolume)

    def test_FinetuneThenClassifySegments(self):
        self._inIsolatedHome(self._finetuneThenClassifySegments)

    def _finetuneThenClassifySegments(self, home):
        """Label two segments, fine-tune (task classify), then Classify with the new ROI classifier."""
        import numpy as np

        logic = MedDeepRecogLogic()
        volume = self._syntheticVolume()
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "labeled")
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        z, y, x = np.mgrid[:24, :32, :40]
        for name, mask in (("tumor", (x - 25) ** 2 + (y - 14) ** 2 + (z - 12) ** 2 < 30),
                           ("cyst", (x - 10) ** 2 + (y - 24) ** 2 + (z - 6) ** 2 < 20)):
            segmentId = segmentationNode.GetSegmentation().AddEmptySegment(name, name)  # (segmentId, segmentName)
            slicer.util.updateSegmentBinaryLabelmapFromArray(mask.astype(np.uint8), segmentationNode, segmentId,
                                                             volume)
        p = logic.getParameterNode()
        p.inputVolume, p.model, p.device, p.epochs = volume, "tiny-test-cnn3d", "cpu", 1
        p.trainingSegmentation, p.finetuneTask = segmentationNode, "classify"
        p.classMapTable = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", "classes")
        scene_io.fillClassMapTable(p.classMapTable, segmentationNode)  # class = segment name
        p.model = logic.finetune(p, waitForCompletion=True)
        labels = logic.classify(p, waitForCompletion=True)
        self.assertEqual([s["segment"] for s in labels.segments], ["tumor", "cyst"])
        table = p.outputTable
        self.assertEqual(table.GetNumberOfRows(), 2)
        self.assertEqual(table.GetCellText(0, 0), "tumor")
        self.assertIn(table.GetCellText(0, 1), labels.class_names)
        self.delayDisplay("MedDeepRecog fine-tune + segment classification test passed")

    def _classifySyntheticVolume(self, home):
        import numpy as np

        logic = MedDeepRecogLogic()
        models = logic.listModels(waitForCompletion=True)
        self.assertIn("tiny-test-cnn3d", [m["id"] for m in models])

        volume = self._syntheticVolume()
        p = logic.getParameterNode()
        p.inputVolume, p.model, p.device = volume, "tiny-test-cnn3d", "cpu"
        for run in range(2):  # the second run must reuse the output nodes
            result = logic.classify(p, waitForCompletion=True)
        self.assertEqual(len(slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")), 2)  # input + heatmap
        self.assertEqual(len(slicer.util.getNodesByClass("vtkMRMLTableNode")), 1)
        self.assertEqual(len(slicer.util.getNodesByClass("vtkMRMLSegmentationNode")), 1)

        table = p.outputTable
        self.assertEqual(table.GetNumberOfRows(), 2)
        self.assertEqual({table.GetCellText(r, 0) for r in range(2)}, {"normal", "lesion"})
        self.assertAlmostEqual(sum(float(table.GetCellText(r, 1)) for r in range(2)), 1.0, places=3)
        self.assertEqual(table.GetCellText(0, 0), result.top_class)  # label may be "uncertain"

        heatmap = p.outputHeatmap
        self.assertEqual(heatmap.GetImageData().GetDimensions(), volume.GetImageData().GetDimensions())
        a, b = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        heatmap.GetIJKToRASMatrix(a)
        volume.GetIJKToRASMatrix(b)
        self.assertTrue(np.allclose(slicer.util.arrayFromVTKMatrix(a), slicer.util.arrayFromVTKMatrix(b), atol=1e-4))
        values = slicer.util.arrayFromVolume(heatmap)
        self.assertGreaterEqual(values.min(), 0.0)
        self.assertLessEqual(values.max(), 1.0 + 1e-6)

        segmentation = p.outputSegmentation.GetSegmentation()
        names = [segmentation.GetSegment(s).GetName() for s in segmentation.GetSegmentIDs()]
        self.assertIn(f"heatmap >= {HOT_REGION_THRESHOLD}", names)
        self.assertEqual(len(names), len(set(names)))

        with self.assertRaises(WorkerError) as failure:  # a user error arrives as the worker's message
            p.model = "no-such-model"
            logic.classify(p, waitForCompletion=True)
        self.assertIn("no-such-model", str(failure.exception))
        self.delayDisplay("MedDeepRecog logic test passed")
