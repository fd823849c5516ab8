"""The module's panel and runs on Slicer's real core (``slicer_core`` fixture), for what a user meets: a fresh Slicer
without the module's dependencies, results of one scan kept apart from the next, the panel's words."""

from __future__ import annotations

import sys

import numpy as np

import pytest

#: What Slicer does not bundle: torch (PyTorch extension) and Resources/requirements.txt, installed on first use.
NOT_BUNDLED = ("torch", "monai", "slicerio", "nrrd", "safetensors", "yaml", "matplotlib", "jinja2", "highdicom",
               "pydantic", "numba")


def test_the_panel_opens_in_a_slicer_without_the_modules_dependencies(monkeypatch, tmp_path):
    """setup() lists the models and asks for the device: both start a worker command that is first checked with the
    core's parser in Slicer's own process. Building that parser imported torch, pydantic and slicerio, so the panel
    could not open before ``ensureDependencies`` had installed them (which only a run triggers)."""
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("the 'slicer' module here is not Slicer's core")
    for name in list(sys.modules):  # the core as a fresh Slicer imports it: nothing of it loaded yet
        if name.split(".")[0] in NOT_BUNDLED or name == "MedDeepRecogLib" or name.startswith("MedDeepRecogLib."):
            monkeypatch.delitem(sys.modules, name)
    for name in NOT_BUNDLED:
        monkeypatch.setitem(sys.modules, name, None)  # import fails, as where it is not installed
    from slicer_core_fixture import SlicerCore

    env = SlicerCore(monkeypatch, tmp_path)
    try:
        logic = env.module.MedDeepRecogLogic()
        assert isinstance(logic.listModels(waitForCompletion=True), list)  # the worker has its own environment
        assert "summary" in logic.deviceInfo(waitForCompletion=True)
        from MedDeepRecogLib.errors import ConfigError
        from MedDeepRecogLib.slicer_bridge import WorkerCommand
        WorkerCommand.classify(["a.nrrd"], "m", "out", python=logic.python).validate()
        with pytest.raises(ConfigError, match="does not accept this classify command: .*--no-such-option"):
            WorkerCommand.build("classify", "a.nrrd", python=logic.python, model="m", out="o",
                                no_such_option=True).validate()
        for command in ("segment", "preprocess", "finetune", "robustness"):  # each one's parser is still built
            with pytest.raises(ConfigError, match=f"does not accept this {command} command"):
                WorkerCommand.build(command, python=logic.python, no_such_option=True).validate()
        assert all(sys.modules[name] is None for name in NOT_BUNDLED)
    finally:
        env.core.close()


def add_volume(env, name, shift=(0.0, 0.0, 0.0), shape=(18, 26, 30)):
    """An int16 scan with a bright blob, at ``shift`` mm."""
    z, y, x = np.mgrid[:shape[0], :shape[1], :shape[2]]
    voxels = (200 * np.exp(-((x - shape[2] // 2) ** 2 + (y - 10) ** 2 + (z - 9) ** 2) / 30.0)).astype(np.int16)
    ijk_to_ras = np.array([[-0.7, 0, 0, shift[0]], [0, -1.3, 0, shift[1]], [0, 0, 3.0, shift[2]], [0, 0, 0, 1]])
    return env.slicer.util.addVolumeFromArray(voxels, ijkToRAS=ijk_to_ras, name=name)


def ijk_to_ras(env, node):
    import vtk
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return env.slicer.util.arrayFromVTKMatrix(m)


def start_and_wait(env, logic, run, p, switch=None, kind="classify"):
    """Start ``run(p)`` as the panel does (non-blocking), call ``switch()`` while its worker runs, wait for its end;
    returns ``(summary, error)``."""
    finished = []
    run(p, onFinished=lambda summary, error: finished.append((summary, error)))
    assert logic.isRunning(kind)
    if switch is not None:
        switch()
    env.loop.run_until(lambda: finished, timeout_s=300)
    return finished[0]


def test_a_result_belongs_to_the_scan_the_run_started_on(slicer_core, tiny_package):
    """The input volume changed while Classify ran: the result of scan A was named after scan B and drawn over it
    (the load read the panel's input at the end of the run)."""
    env, module = slicer_core, slicer_core.module
    logic = module.MedDeepRecogLogic()
    p = logic.getParameterNode()
    scanA, scanB = add_volume(env, "scan A"), add_volume(env, "scan B", shift=(30.0, -20.0, 5.0), shape=(14, 22, 28))
    p.inputVolume, p.model, p.device = scanA, str(tiny_package), "cpu"

    def switch():
        p.inputVolume = scanB
    summary, error = start_and_wait(env, logic, logic.classify, p, switch)
    assert error is None and p.inputVolume is scanB
    assert p.outputTable.GetName() == "scan A probabilities" and p.outputHeatmap.GetName() == "scan A heatmap"
    assert p.outputSegmentation.GetName() == "scan A segmentations"
    assert p.outputHeatmap.GetImageData().GetDimensions() == scanA.GetImageData().GetDimensions()
    assert np.allclose(ijk_to_ras(env, p.outputHeatmap), ijk_to_ras(env, scanA))
    for view in ("Red", "Yellow", "Green"):  # shown over the scan it is the heatmap of
        assert env.core.composite_node(view).GetBackgroundVolumeID() == scanA.GetID()

    p.inputVolume = scanA  # Preview and Segment's loads too
    summary, error = start_and_wait(env, logic, logic.preview, p, switch, kind="preview")
    assert error is None and p.preprocessedVolume.GetName() == "scan A preprocessed"
    assert p.preprocessedVolume.GetImageData().GetDimensions() == scanA.GetImageData().GetDimensions()


def test_each_scan_has_its_own_output_segmentation(slicer_core, tiny_package):
    """Segment on a CT, then Classify a second scan: the one output segmentation was renamed for the second scan
    and kept the CT's liver, spleen and kidney beside its hot region. Each scan now has its own, the other scans'
    are hidden, and going back to the CT reuses the CT's."""
    from MedDeepRecogLib.resources import sample_path
    env, module = slicer_core, slicer_core.module
    names = module.scene_io.segmentNames
    logic = module.MedDeepRecogLogic()
    p = logic.getParameterNode()
    ct = env.slicer.util.loadVolume(str(sample_path("abdomen_ct.nii.gz")), {"name": "abdomen_ct"})
    p.inputVolume, p.model, p.device = ct, "ts-organs-seg", "cpu"
    logic.segment(p, waitForCompletion=True)
    ctSegmentation = p.outputSegmentation
    assert names(ctSegmentation) == ["liver", "spleen", "kidney"]

    scan = add_volume(env, "scan B")
    p.inputVolume, p.model = scan, str(tiny_package)
    logic.classify(p, waitForCompletion=True)
    assert p.outputSegmentation is not ctSegmentation and p.outputSegmentation.GetName() == "scan B segmentations"
    assert names(p.outputSegmentation) == [f"heatmap >= {module.HOT_REGION_THRESHOLD}"]
    assert names(ctSegmentation) == ["liver", "spleen", "kidney"]
    assert ctSegmentation.GetName() == "abdomen_ct segmentations"
    assert not ctSegmentation.GetDisplayVisibility() and p.outputSegmentation.GetDisplayVisibility()
    scanSegmentation = p.outputSegmentation

    p.inputVolume, p.model = ct, "ts-organs-seg"
    logic.segment(p, waitForCompletion=True)
    assert p.outputSegmentation is ctSegmentation and names(ctSegmentation) == ["liver", "spleen", "kidney"]
    assert ctSegmentation.GetDisplayVisibility() and not scanSegmentation.GetDisplayVisibility()
    assert env.count("vtkMRMLSegmentationNode") == 2


def test_an_output_volume_is_never_the_input_a_run_writes_into(slicer_core, tiny_package):
    """The heatmap could be chosen as the input volume: Classify then wrote the new heatmap into its own input. It
    is refused (it is no scan); a preprocessed volume may be the input, and Preview then makes a new one."""
    env, module = slicer_core, slicer_core.module
    logic = module.MedDeepRecogLogic()
    p = logic.getParameterNode()
    scan = add_volume(env, "scan")
    p.inputVolume, p.model, p.device, p.preset = scan, str(tiny_package), "cpu", "custom"
    logic.classify(p, waitForCompletion=True)
    heatmap = p.outputHeatmap
    before = env.slicer.util.arrayFromVolume(heatmap).copy()
    p.inputVolume = heatmap
    for run in (logic.classify, logic.preview, logic.robustness):
        with pytest.raises(ValueError, match="'scan heatmap' is a heatmap made by MedDeepRecog, not a scan"):
            run(p)
    assert np.array_equal(env.slicer.util.arrayFromVolume(heatmap), before)
    p.outputHeatmap = None  # a heatmap no longer the panel's output is still known as one
    with pytest.raises(ValueError, match="is a heatmap made by MedDeepRecog"):
        logic.classify(p)
    assert logic.defaultInputVolume(p) is scan

    p.inputVolume, p.clipIntensity, p.clipMin, p.clipMax = scan, True, 10.0, 60.0
    preprocessed = logic.preview(p, waitForCompletion=True)
    p.inputVolume = preprocessed
    before = env.slicer.util.arrayFromVolume(preprocessed).copy()
    again = logic.preview(p, waitForCompletion=True)
    assert again.GetID() != preprocessed.GetID() and p.preprocessedVolume is again
    assert np.array_equal(env.slicer.util.arrayFromVolume(preprocessed), before)
    assert not list(env.temporaryPath.glob("MedDeepRecog-*"))


def test_the_status_line_and_errors_name_nodes_and_panel_settings(slicer_core, tiny_package):
    """The status line showed the worker's progress with the exchange folder's paths ("reading: input
    /tmp/.../MedDeepRecog-x/scan.nrrd"), and errors named command-line options the panel does not show
    (--device, --explain, --model)."""
    env, module = slicer_core, slicer_core.module
    logic = module.MedDeepRecogLogic()
    p = logic.getParameterNode()
    p.inputVolume, p.model, p.device, p.preset = add_volume(env, "scan"), str(tiny_package), "cpu", "custom"
    p.clipIntensity = True
    shown = []
    finished = []
    logic.preview(p, onProgress=lambda event: shown.append(event.describe()),
                  onFinished=lambda summary, error: finished.append(error))
    env.loop.run_until(lambda: finished, timeout_s=300)
    assert finished == [None] and shown
    assert not [text for text in shown if str(env.temporaryPath) in text or "MedDeepRecog-" in text], shown
    assert any("'scan'" in text for text in shown), shown

    from MedDeepRecogLib.slicer_bridge.process_runner import panel_text
    exchange = env.temporaryPath / "MedDeepRecog-abc"
    assert panel_text("--device cuda was asked for but no CUDA GPU is available (use auto or cpu)", None) == \
        "the device cuda was asked for but no CUDA GPU is available (use auto or cpu)"
    assert panel_text("no attention map to show; use --explain gradcam or gradcampp", None) == \
        "no attention map to show; use the heatmap method gradcam or gradcampp"
    assert panel_text("--model-dir stays", None) == "--model-dir stays"
    assert panel_text(f"cannot write {exchange / 'out'}: disk full", exchange) == \
        "cannot write the run's temporary folder: disk full"
    assert panel_text(f"--base m: {exchange / 'manifest.json'} lists no case", exchange) == \
        "the model m: 'manifest' lists no case"


def test_an_out_of_domain_scan_shows_no_heat_and_no_finding(slicer_core, tiny_package, monkeypatch):
    """The worker said the scan is outside the model's domain (no class reported); the panel still drew its heatmap
    and hot region and listed the probabilities as a finding."""
    import dataclasses
    env, module = slicer_core, slicer_core.module
    logic = module.MedDeepRecogLogic()
    p = logic.getParameterNode()
    scan = add_volume(env, "scan")
    p.inputVolume, p.model, p.device = scan, str(tiny_package), "cpu"
    logic.classify(p, waitForCompletion=True)  # an earlier answer within the domain: heatmap and hot region
    assert p.outputHeatmap is not None
    real = module.read_classify_result
    reason = "outside this model's domain: unlike the model's training images"
    monkeypatch.setattr(module, "read_classify_result", lambda *a: dataclasses.replace(
        real(*a), label="out-of-domain", uncertain_reasons=[reason]))
    result = logic.classify(p, waitForCompletion=True)
    assert result.heatmap is not None  # the worker wrote one; it is not shown
    assert p.outputHeatmap is None and env.count("vtkMRMLScalarVolumeNode") == 1
    assert module.scene_io.segmentNames(p.outputSegmentation) == []
    for view in ("Red", "Yellow", "Green"):
        assert env.core.composite_node(view).GetForegroundVolumeID() is None
    table = p.outputTable
    assert table.GetColumnTitle("probability") == "model output, not a finding" and table.GetNumberOfRows() == 2
    assert "outside this model's domain</b>: no class reported" in result.result_text()
    assert "(confidence" not in result.result_text() and "no heatmap shown" in result.heatmap_text()

    monkeypatch.setattr(module, "read_classify_result", real)  # back within the domain: a plain probability column
    logic.classify(p, waitForCompletion=True)
    assert p.outputTable.GetColumnTitle("probability") in (module.scene_io.SCAN_PROBABILITY,
                                                           module.scene_io.UNCERTAIN_PROBABILITY)
    assert p.outputHeatmap is not None


def test_preview_of_a_volume_named_like_its_output(slicer_core):
    """The scan is exported as <name>.nrrd beside Preview's output "preprocessed.nrrd": a scan named "preprocessed"
    (or "mask") clashed with it and Preview failed."""
    env, module = slicer_core, slicer_core.module
    logic = module.MedDeepRecogLogic()
    p = logic.getParameterNode()
    p.preset, p.clipIntensity, p.clipMin, p.clipMax, p.bodyMask = "custom", True, 10.0, 60.0, True
    for name in ("preprocessed", "mask.seg"):
        p.inputVolume = add_volume(env, name)
        filtered = logic.preview(p, waitForCompletion=True)
        assert filtered.GetName() == f"{name} preprocessed"
        assert env.slicer.util.arrayFromVolume(filtered).max() <= 60.0 + 1e-3


def test_a_cancelled_or_failed_classify_takes_the_last_answer_off(slicer_core, tiny_package):
    """After Cancel or a failure the previous run's probability table and heatmap stayed up beside "Cancelled." or
    "Failed: ...", as if they were this run's answer."""
    from types import SimpleNamespace

    from MedDeepRecogLib.slicer_bridge import WorkerError
    env, module = slicer_core, slicer_core.module
    widget = module.MedDeepRecogWidget.__new__(module.MedDeepRecogWidget)  # the panel's methods, no Qt panel
    widget.logic = module.MedDeepRecogLogic()
    widget.onParameterNodeModified = lambda *a: None
    p = widget._parameterNode = widget.logic.getParameterNode()
    p.inputVolume, p.model, p.device = add_volume(env, "scan"), str(tiny_package), "cpu"
    label, bar = SimpleNamespace(text=""), SimpleNamespace(hide=lambda: None)
    for error in (WorkerError("cancelled", cancelled=True), WorkerError("out of memory", 2)):
        widget.logic.classify(p, waitForCompletion=True)
        assert p.outputTable is not None and p.outputHeatmap is not None
        try:
            widget._finished("classify", bar, label, lambda summary: None)(None, error)
        except WorkerError:
            pass  # Slicer's error display shows it
        assert p.outputTable is None and p.outputHeatmap is None
        assert env.count("vtkMRMLTableNode") == 0 and env.count("vtkMRMLScalarVolumeNode") == 1
        # the "scan segmentations" node the module made held the hot region alone: no empty node is left behind
        assert p.outputSegmentation is None and env.count("vtkMRMLSegmentationNode") == 0
        assert env.core.composite_node("Red").GetForegroundVolumeID() is None
        assert label.text in ("Cancelled.", "Failed: out of memory")
    # one that holds other segments (Segment's organs, Preview's body mask) stays, without the hot region
    widget.logic.classify(p, waitForCompletion=True)
    module.scene_io.setSegmentFromMask(p.outputSegmentation, "body", np.ones((18, 26, 30), bool), (1, 0, 0),
                                       p.inputVolume)
    widget.logic.clearClassification(p)
    assert module.scene_io.segmentNames(p.outputSegmentation) == ["body"]


def test_closing_the_scene_cancels_the_runs_that_load_into_it(slicer_core):
    """A classify running when the scene closed went on, and at its end failed on the removed scan; a fine-tune,
    which writes a package and no node, runs on."""
    module = slicer_core.module
    widget = module.MedDeepRecogWidget.__new__(module.MedDeepRecogWidget)  # the panel's methods, no Qt panel
    widget.logic = module.MedDeepRecogLogic()
    widget.setParameterNode = lambda node: None
    from types import SimpleNamespace
    widget.ui = SimpleNamespace(statusLabel=SimpleNamespace(text=""), resultLabel=SimpleNamespace(text=""),
                                faithfulnessLabel=SimpleNamespace(text=""))
    cancelled = []

    class Job:
        def __init__(self, kind):
            self.kind, self.running = kind, True

        def cancel(self):
            cancelled.append(self.kind)
            self.running = False

    widget.logic._jobs = {kind: Job(kind) for kind in ("classify", "segment", "preview", "robustness", "finetune")}
    widget.onSceneStartClose(None, None)
    assert sorted(cancelled) == sorted(module.SCENE_JOBS) and widget.logic.isRunning("finetune")


class _Stub:
    """A widget the test does not look at: every method call does nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def _panel(module, logic):
    """The panel's methods with label stand-ins (no Qt panel); ``onParameterNodeModified`` is the real one."""
    from types import SimpleNamespace
    widget = module.MedDeepRecogWidget.__new__(module.MedDeepRecogWidget)
    module.VTKObservationMixin.__init__(widget)
    widget.logic = logic
    logic.ensureDependencies = lambda: None
    widget.ui = SimpleNamespace(statusLabel=SimpleNamespace(text=""), resultLabel=SimpleNamespace(text=""),
                                faithfulnessLabel=SimpleNamespace(text=""), sliceTableView=_Stub(),
                                probabilityTableView=_Stub(), show3DButton=_Stub(), classMapTableView=_Stub(),
                                modelComboBox=SimpleNamespace(findData=lambda data: -1, currentIndex=-1))
    for name in ("_updateInputSelector", "_updateSegmentSelector", "_updateRunButtons"):
        setattr(widget, name, lambda p: None)
    widget._parameterNode = logic.getParameterNode()
    widget._preset = widget._parameterNode.preset
    return widget


def test_the_result_lines_go_when_the_input_changes_or_the_scene_closes(slicer_core):
    """After Classify on brain1 the input was switched to brain2 (or the scene closed and brain2 loaded): the panel
    still read "uncertain: most likely glioma (p = 0.78)" beside brain2, naming no scan."""
    from MedDeepRecogLib.slicer_bridge.outputs import SegmentLabels

    env, module = slicer_core, slicer_core.module
    widget = _panel(module, module.MedDeepRecogLogic())
    widget.setParameterNode = lambda node: None
    p = widget._parameterNode
    first, second = add_volume(env, "brain1"), add_volume(env, "brain2")
    labels = SegmentLabels("m@1.0.0", ["x", "y"],
                           [{"segment": "a", "label": "y", "probabilities": {"x": .25, "y": .75}}])

    def answer():
        p.inputVolume = first
        widget._run("classify", lambda p, onProgress, onFinished: onFinished(labels, None),
                    SimpleNamespace(hide=lambda: None), widget.ui.statusLabel, widget._showResult)
        assert widget.ui.resultLabel.text == header + labels.result_text()
        assert widget.ui.statusLabel.text.startswith("Done")

    from types import SimpleNamespace
    header = "<small>For 'brain1', model m@1.0.0:</small><br>"
    answer()
    widget.onParameterNodeModified()   # the same scan: the answer stays
    assert widget.ui.resultLabel.text == header + labels.result_text()
    p.inputVolume = second
    widget.onParameterNodeModified()
    assert (widget.ui.statusLabel.text, widget.ui.resultLabel.text, widget.ui.faithfulnessLabel.text) == ("", "", "")
    answer()
    widget.onSceneStartClose(None, None)
    assert (widget.ui.statusLabel.text, widget.ui.resultLabel.text) == ("", "")


def test_the_probability_table_says_uncertain_and_which_probability_is_which(slicer_core, tiny_package, monkeypatch):
    """The result line read "uncertain: most likely glioma (p = 0.78)" while the table's top row read "glioma
    0.82134" under "probability": no "uncertain", and a different number without saying why (scan probabilities, a
    geometric mean over the slices; the line's p is the label's confidence, their arithmetic mean)."""
    import dataclasses
    env, module = slicer_core, slicer_core.module
    logic = module.MedDeepRecogLogic()
    p = logic.getParameterNode()
    p.inputVolume, p.model, p.device, p.explainMethod = add_volume(env, "scan"), str(tiny_package), "cpu", "none"
    real = module.read_classify_result
    basis, confidenceBasis = "softmax of the mean log-probability over the voting slices", "mean over the slices"

    def uncertain(*args):
        res = real(*args)
        return dataclasses.replace(res, label="uncertain", top_class=res.probabilities[0][0],
                                   uncertain_reasons=["predictive entropy 0.54 is at or above 0.42"],
                                   raw={**res.raw, "confidence": 0.61, "probabilities_basis": basis,
                                        "confidence_basis": confidenceBasis})
    monkeypatch.setattr(module, "read_classify_result", uncertain)
    result = logic.classify(p, waitForCompletion=True)
    table = p.outputTable
    assert table.GetColumnTitle("probability") == "scan probability (uncertain: no class reported)"
    assert table.GetColumnDescription("probability") == basis
    assert table.GetColumnTitle("result") == "result (confidence of the label)"
    assert table.GetColumnDescription("result") == confidenceBasis
    assert table.GetCellText(0, 0) == result.top_class and table.GetCellText(0, 2) == "uncertain: most likely, " \
                                                                                      "confidence 0.61"
    assert all(table.GetCellText(r, 2) == "" for r in range(1, table.GetNumberOfRows()))
    assert "(confidence 0.61)" in result.result_text() and "p = " not in result.result_text()

    monkeypatch.setattr(module, "read_classify_result", lambda *a: dataclasses.replace(real(*a), label="a",
                                                                                         top_class="a",
                                                                                         uncertain_reasons=[]))
    result = logic.classify(p, waitForCompletion=True)
    assert p.outputTable.GetColumnTitle("probability") == "scan probability"
    assert p.outputTable.GetCellText(0, 2) == f"reported, confidence {result.confidence:.2f}"


def test_a_classify_that_cannot_start_takes_the_last_answer_off(slicer_core, tiny_package):
    """A refused Classify ("Not started: the segment ... is empty") left the previous run's probability table and
    heatmap up as the panel's output, where a failed or cancelled run takes them off."""
    env, module = slicer_core, slicer_core.module
    widget = _panel(module, module.MedDeepRecogLogic())
    p = widget._parameterNode
    p.inputVolume, p.model, p.device = add_volume(env, "scan"), str(tiny_package), "cpu"
    widget.logic.classify(p, waitForCompletion=True)
    assert p.outputTable is not None and p.outputHeatmap is not None

    def refuse(*args, **kwargs):
        raise ValueError("the segment 'spleen' of 'organs' is empty")
    with pytest.raises(ValueError):
        widget._run("classify", refuse, None, widget.ui.statusLabel, None)
    assert widget.ui.statusLabel.text == "Not started: the segment 'spleen' of 'organs' is empty"
    assert p.outputTable is None and p.outputHeatmap is None
    assert env.count("vtkMRMLTableNode") == 0 and env.count("vtkMRMLScalarVolumeNode") == 1
    assert env.core.composite_node("Red").GetForegroundVolumeID() is None


def test_a_result_names_the_scan_and_the_model_it_is_of(slicer_core, tiny_package):
    """The result line, the probability table and the heatmap's legend named no scan and no model: a radiologist
    switching between scans (the line is cleared then, but a table or heatmap saved with the scene, or a line read
    while the next scan loads) could read one scan's finding as another's. Each now names the scan the run read
    and the model's id@version."""
    from types import SimpleNamespace

    env, module = slicer_core, slicer_core.module
    logic = module.MedDeepRecogLogic()
    widget = _panel(module, logic)
    p = widget._parameterNode
    p.device = "cpu"
    model = f"{tiny_package.parent.name}@{tiny_package.name}"   # the catalog's <id>/<version> folder

    def classify(p, onProgress, onFinished):
        return logic.classify(p, onProgress=onProgress, onFinished=onFinished, waitForCompletion=True)
    for name in ("brain1", "brain2"):
        p.inputVolume, p.model = add_volume(env, name), str(tiny_package)
        widget._run("classify", classify, SimpleNamespace(hide=lambda: None), widget.ui.statusLabel,
                    widget._showResult)
        assert widget.ui.resultLabel.text.startswith(f"<small>For '{name}', model {model}:</small><br><b>")
        table = p.outputTable
        assert table.GetColumnTitle("class") == f"class ('{name}', {model})"
        assert table.GetColumnDescription("class") == f"results of '{name}' by the model {model}"
        assert table.GetColumnTitle("probability") == module.scene_io.SCAN_PROBABILITY   # the others as they were
        legends = env.slicer.util.getNodesByClass("vtkMRMLColorLegendDisplayNode")
        assert [legend.GetTitleText() for legend in legends] == [f"Heatmap: '{name}', {model}"]
