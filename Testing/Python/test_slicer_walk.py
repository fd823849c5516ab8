"""What a walk through the panel found (sweep39d): a slice's answer read as the scan's, "p" for the confidence, a
silent one-step robustness check saying "fell by -0.20", stale robustness lines and heat over another scan, the
model line without its caveat, JSON keys in tooltips, and a removed segment's answer left up."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from test_slicer_inputs import ComboBox, add_segmentation, gland, mask_model_panel, placed, scan_on_mask_grid
from test_slicer_panel_runs import _panel, add_volume
from test_slicer_slices import _volume, slice_model  # noqa: F401  (the fixture)

BAR = SimpleNamespace(hide=lambda: None, show=lambda: None)


def _labels(**extra):
    return SimpleNamespace(text="", **extra)


def test_classify_current_slice_says_it_is_that_slices_answer(slicer_core, slice_model):  # noqa: F811
    """F1: after "Classify current slice" the line read "For 'brain1', model ...: glioma (p = 0.89)" and the table
    "brain1 probabilities" / "scan probability": one slice's answer read as the scan's."""
    env, module = slicer_core, slicer_core.module
    logic = module.MedDeepRecogLogic()
    widget = _panel(module, logic)
    p = widget._parameterNode
    p.inputVolume, p.model, p.device = _volume(env), "tiny-2d", "cpu"
    env.core.slice_logics["Red"].SetSliceOffset(-30.0 + 2.5 * 7)

    def classifySlice(p, onProgress, onFinished):
        return logic.classifySlice(p, onProgress=onProgress, onFinished=onFinished, waitForCompletion=True)
    widget._run("classify", classifySlice, BAR, widget.ui.statusLabel, widget._showSliceResult)
    where = "slice 7 (S = -12.5 mm)"
    assert widget.ui.resultLabel.text.startswith(f"<small>For {where} of 'axial scan', model tiny-2d@1.0.0:</small>")
    table = p.outputTable
    assert table.GetName() == "axial scan slice 7 probabilities"
    assert table.GetColumnTitle("probability") == "slice probability"
    assert "scan" not in table.GetColumnDescription("probability").replace("'axial scan'", "")
    assert table.GetColumnTitle("class") == f"class ({where} of 'axial scan', tiny-2d@1.0.0)"


def test_tooltips_speak_words_not_json_keys():
    """F7: "it picks top_class", "per_slice probabilities", "the model's min_probability threshold" for a model
    without that threshold."""
    from MedDeepRecogLib.inference.classify import confidence_basis, probabilities_basis

    per_slice = [{"index": k, "label": "a", "probability": 0.8, "voted": True} for k in range(5)]
    result = SimpleNamespace(decision={"label": "a", "top_class": "a", "confidence": 0.8}, per_slice=per_slice,
                             temperature=1.0, explain={}, slice=None, min_probability=None)
    words = confidence_basis(result) + probabilities_basis(result)
    assert not any(key in words for key in ("top_class", "per_slice", "min_probability", "threshold"))
    result.min_probability = 0.55
    assert "the model's minimum-probability threshold (0.55)" in confidence_basis(result)


def test_the_result_line_says_confidence_once_and_the_faithfulness_once():
    """F2/F9: "(p = 0.78)" beside a table of scan probabilities; the faithfulness score printed twice; "low
    confidence" said three times."""
    from MedDeepRecogLib.slicer_bridge.outputs import ClassifyResult

    reason = "predictive entropy 0.54 is at or above the model's threshold 0.42"
    res = ClassifyResult(label="uncertain", probabilities=[("glioma", 0.82), ("normal", 0.18)], top_class="glioma",
                         uncertain_reasons=[reason], low_confidence=True, predictive_entropy=0.54,
                         faithfulness=0.24, explain_method="gradcam",
                         faithfulness_caption="faithfulness +0.24 (deletion AUC 0.31, random 0.40)",
                         raw={"confidence": 0.78})
    text = res.result_text()
    assert "most likely glioma (confidence 0.78)" in text and "p = " not in text
    assert text.count("entropy") == 1 and "low confidence" not in text
    heat = res.heatmap_text()
    assert heat.count("+0.24") == 1 and "confidence" not in heat
    plain = ClassifyResult(label="glioma", probabilities=[("glioma", 0.9)], low_confidence=True,
                           predictive_entropy=0.5, raw={"confidence": 0.9})
    assert plain.result_text().count("low confidence") == 1 and "(predictive entropy 0.50)" in plain.result_text()


def test_the_robustness_check_is_the_clis_and_words_a_rise_as_a_rise():
    """F3: the panel ran one-step FGSM silently (the CLI's default is PGD) and said "fell by -0.20" for a rise."""
    from MedDeepRecogLib.slicer_bridge import WorkerCommand
    from MedDeepRecogLib.slicer_bridge.outputs import robustness_summary

    assert "--attack" not in WorkerCommand.robustness("m", "a.nrrd", "out", python="py").args
    record = {"attack": "pgd", "steps": 10, "clean_label": "normal", "top_class": "normal", "clean_confidence": 0.77,
              "clean_probability": 0.772, "smallest_flipping_eps": None, "flip": None,
              "curve": [{"eps": 0.05}, {"eps": 0.1}], "probability_drop_at_max_eps": -0.195}
    text, _ = robustness_summary(record)
    assert "did not flip up to eps=0.1 under a 10-step PGD attack" in text
    assert "changed by +0.195 (a rise)" in text and "fell" not in text
    text, _ = robustness_summary({**record, "attack": "fgsm", "steps": None, "probability_drop_at_max_eps": 0.2})
    assert "one-step FGSM attack" in text and "changed by -0.200 (a drop)" in text


def _robustness_panel(module, logic):
    widget = _panel(module, logic)
    widget.ui.robustnessLabel, widget.ui.classifyProgressBar = _labels(), BAR
    widget.setParameterNode = lambda node: None
    return widget


def test_the_robustness_line_goes_when_its_input_or_model_does(slicer_core):
    """F4: the robustness line survived a model change, another input and a scene close."""
    env, module = slicer_core, slicer_core.module
    widget = _robustness_panel(module, module.MedDeepRecogLogic())
    p = widget._parameterNode
    first, second = add_volume(env, "brain1"), add_volume(env, "brain2")

    def check():
        p.inputVolume, p.model = first, "body-region"
        widget.onParameterNodeModified()
        widget.logic.robustness = lambda p, onProgress, onFinished: onFinished("For 'brain1': stable.", None)
        widget.onRobustnessButton()
        assert widget.ui.robustnessLabel.text == "For 'brain1': stable."
        widget.onParameterNodeModified()   # nothing changed: it stays
        assert widget.ui.robustnessLabel.text == "For 'brain1': stable."
    for change in (lambda: setattr(p, "model", "brain-tumour-mri"), lambda: setattr(p, "inputVolume", second),
                   lambda: widget.onSceneStartClose(None, None)):
        check()
        change()
        widget.onParameterNodeModified()
        assert widget.ui.robustnessLabel.text == ""


def test_another_inputs_heat_is_taken_off_the_views_when_the_input_changes(slicer_core, tiny_package):
    """F5: after switching to brain2, brain1's heatmap stayed the views' foreground and its hot region shown."""
    env, module = slicer_core, slicer_core.module
    logic = module.MedDeepRecogLogic()
    widget = _panel(module, logic)
    p = widget._parameterNode
    first, second = add_volume(env, "brain1"), add_volume(env, "brain2")
    p.inputVolume, p.model, p.device = first, str(tiny_package), "cpu"
    widget.onParameterNodeModified()
    logic.classify(p, waitForCompletion=True)
    heatmap, segmentation = p.outputHeatmap, p.outputSegmentation
    assert env.core.composite_node("Red").GetForegroundVolumeID() == heatmap.GetID()
    widget.onParameterNodeModified()   # the same scan: shown
    assert env.core.composite_node("Red").GetForegroundVolumeID() == heatmap.GetID()
    p.inputVolume = second
    widget.onParameterNodeModified()
    for view in ("Red", "Yellow", "Green"):
        assert env.core.composite_node(view).GetForegroundVolumeID() is None
    assert not segmentation.GetDisplayNode().GetVisibility()
    assert env.slicer.mrmlScene.IsNodePresent(heatmap) and env.slicer.mrmlScene.IsNodePresent(segmentation)


def test_the_model_line_says_optimistic_from_the_training_block_and_hd95_in_words(slicer_core):
    """F6: the bundled ts-organs-seg line read "Validation figures: dice 0.52, hd95_mm 118.43." (no "optimistic":
    ``models --json`` had no training block, and the panel passed none); and ". no validation figures"."""
    from MedDeepRecogLib.packages.package import list_packages
    from test_slicer_logic import _PropertyComboBox

    listed = [info.to_dict() for info in list_packages()]
    ts = next(m for m in listed if m["id"] == "ts-organs-seg")
    assert ts["training"] == {"monitor": "dice", "best_epoch": 38}
    module = slicer_core.module
    widget = module.MedDeepRecogWidget.__new__(module.MedDeepRecogWidget)
    widget.ui = SimpleNamespace(modelComboBox=_PropertyComboBox(), modelInfoLabel=SimpleNamespace(text=""))
    widget._parameterNode = module.MedDeepRecogLogic().getParameterNode()
    old = {"id": "old", "version": "0.1.0", "source": "user", "class_names": ["a", "b"]}
    for key in (f"ts-organs-seg@{ts['version']}", "old@0.1.0"):
        widget._parameterNode.model = key
        widget._showModels([ts, old], None, None)
        shown = widget.ui.modelInfoLabel.text
        if key == "old@0.1.0":
            assert shown == "classes: a, b. No validation figures recorded"
        else:
            assert "the checkpoint was chosen on them, so optimistic" in shown
            assert "HD95 118.4 mm" in shown and "hd95_mm" not in shown


def test_a_segment_inputs_table_says_segment_probability(slicer_core):
    """F7: a mask segment's table was headed "scan probability" with "the scan's probability for normal"."""
    env, module = slicer_core, slicer_core.module
    logic, p = mask_model_panel(module)
    shape = (40, 40, 40)
    p.inputVolume = add_segmentation(env, scan_on_mask_grid(env, shape), {"adrenal": placed(gland(), shape,
                                                                                            (6, 6, 6))})
    logic.classify(p, waitForCompletion=True)
    table = p.outputTable
    assert table.GetColumnTitle("probability").startswith("segment probability")
    assert "scan" not in table.GetColumnDescription("probability") + table.GetColumnDescription("result")


def test_a_removed_segments_answer_goes_and_its_buttons_wait_for_a_pick(slicer_core):
    """F11: after the chosen segment was removed its result line and table stayed, and Classify and Robustness
    stayed enabled (refused on click)."""
    env, module = slicer_core, slicer_core.module
    logic, p = mask_model_panel(module)
    widget = _panel(module, logic)
    widget._parameterNode = p
    del widget._updateSegmentSelector, widget._updateRunButtons   # the real ones
    buttons = ("classifyButton", "classifySliceButton", "segmentButton", "robustnessButton", "previewButton",
               "finetuneButton")
    for name in buttons:
        setattr(widget.ui, name, SimpleNamespace(text="", enabled=False))
    widget.ui.robustnessLabel = _labels()
    widget.ui.inputSegmentComboBox, widget.ui.inputSegmentLabel = ComboBox(), SimpleNamespace(visible=False)
    widget._updateInputSelector = lambda p: None
    shape = (40, 40, 40)
    adrenal = placed(gland(), shape, (6, 6, 6))
    node = add_segmentation(env, scan_on_mask_grid(env, shape), {"adrenal": adrenal,
                                                                 "other": np.roll(adrenal, 4, axis=0)})
    p.inputVolume = node
    widget.onParameterNodeModified()

    def classify(p, onProgress, onFinished):
        return logic.classify(p, onProgress=onProgress, onFinished=onFinished, waitForCompletion=True)
    widget._run("classify", classify, BAR, widget.ui.statusLabel, widget._showResult)
    assert widget.ui.resultLabel.text.startswith("<small>For segment 'adrenal' of 'labels'")
    assert widget.ui.classifyButton.enabled and widget.ui.robustnessButton.enabled
    node.GetSegmentation().RemoveSegment(node.GetSegmentation().GetSegmentIdBySegmentName("adrenal"))
    widget.onParameterNodeModified()
    assert widget.ui.resultLabel.text == "" and p.outputTable is None
    assert widget.ui.statusLabel.text.startswith("Segment 'adrenal' was removed from 'labels'")
    assert not widget.ui.classifyButton.enabled and not widget.ui.robustnessButton.enabled
    widget.ui.inputSegmentComboBox.currentIndex = 0   # the user picks "other"
    widget.onInputSegmentSelected()
    widget.onParameterNodeModified()
    assert widget.ui.classifyButton.enabled and widget.ui.robustnessButton.enabled
