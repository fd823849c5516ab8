"""The panel's .ui loads in real Qt and matches what MedDeepRecog.py uses and binds.

Slicer's custom widgets (ctk*, qMRML*) are not available outside Slicer, so their class names are rewritten to the
Qt base class named in the .ui's ``<customwidgets>`` (following ``<extends>`` chains) before PySide6's QUiLoader
reads it. Checked: every ``self.ui.<name>`` the module uses exists; every ``SlicerParameterName`` is a field of the
``@parameterNodeWrapper`` class, on a widget that Slicer's GUI connectors can bind to that field's type; every
MRML widget gets the scene. ``python Testing/Python/test_slicer_ui.py`` renders Resources/Screenshots/panel.png.
"""

from __future__ import annotations

import ast
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UI_FILE = REPO / "MedDeepRecog" / "Resources" / "UI" / "MedDeepRecog.ui"
MODULE_FILE = REPO / "MedDeepRecog" / "MedDeepRecog.py"

#: Field type -> widget classes Slicer 5.12's parameterNodeWrapper GUI connectors accept (read from
#: Base/Python/slicer/parameterNodeWrapper/guiConnectors.py; a connector matches the widget's exact class, so a
#: subclass such as qMRMLSliderWidget is listed on its own). Slicer 5.12 has no qMRMLSubjectHierarchyTreeView connector.
CONNECTABLE = {
    "bool": {"QCheckBox", "ctkCheckBox", "QPushButton"},
    "int": {"QSpinBox", "QSlider"},
    "float": {"QDoubleSpinBox", "ctkDoubleSpinBox", "ctkSliderWidget", "qMRMLSliderWidget"},
    "str": {"QComboBox", "QLineEdit", "QTextEdit"},
    "node": {"qMRMLNodeComboBox"},
}

#: MRML widgets with a ``setMRMLScene(vtkMRMLScene*)`` slot (the .ui connects mrmlSceneChanged to it) and those
#: without one (qMRMLSegmentationShow3DButton is a ctkMenuButton: it takes a segmentation node, not a scene).
SCENE_SLOT = {"qMRMLNodeComboBox", "qMRMLTableView", "qMRMLSliderWidget", "qMRMLSegmentsTableView",
              "qMRMLSubjectHierarchyTreeView", "qMRMLSubjectHierarchyComboBox"}
NO_SCENE_SLOT = {"qMRMLSegmentationShow3DButton"}


def _qt():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    widgets = pytest.importorskip("PySide6.QtWidgets")
    return widgets, widgets.QApplication.instance() or widgets.QApplication([])


def ui_tree() -> ET.ElementTree:
    return ET.parse(UI_FILE)


def qt_base_classes(root: ET.Element) -> dict[str, str]:
    """Custom widget class -> the Qt class it finally extends."""
    extends = {cw.findtext("class"): cw.findtext("extends") for cw in root.iter("customwidget")}

    def base(cls: str) -> str:
        seen = set()
        while cls in extends and cls not in seen:
            seen.add(cls)
            cls = extends[cls]
        return cls
    return {cls: base(cls) for cls in extends}


def load_ui(substitute: dict[str, str] | None = None):
    """Load the .ui with PySide6; custom classes become their Qt base (or ``substitute[cls]``). Returns the widget."""
    from PySide6.QtCore import QBuffer, QByteArray, QIODevice
    from PySide6.QtUiTools import QUiLoader

    _qt()
    root = ui_tree().getroot()
    bases = qt_base_classes(root)
    for w in root.iter("widget"):
        cls = w.get("class")
        w.set("class", (substitute or {}).get(cls, bases.get(cls, cls)))
    for tag in ("customwidgets", "connections"):  # Slicer-only signals/slots (mrmlSceneChanged)
        node = root.find(tag)
        if node is not None:
            root.remove(node)
    buffer = QBuffer()
    buffer.setData(QByteArray(ET.tostring(root)))
    buffer.open(QIODevice.ReadOnly)
    loader = QUiLoader()
    widget = loader.load(buffer)
    assert widget is not None, loader.errorString()
    return widget


def ui_widgets() -> dict[str, tuple[str, dict[str, str]]]:
    """objectName -> (original class, {property: text}) from the .ui XML."""
    result = {}
    for w in ui_tree().getroot().iter("widget"):
        props = {}
        for p in w.findall("property"):
            value = p[0] if len(p) else None
            if value is not None and value.tag == "stringlist":
                props[p.get("name")] = [s.text for s in value]
            elif value is not None:
                props[p.get("name")] = value.text
        result[w.get("name")] = (w.get("class"), props)
    return result


def wrapper_fields() -> dict[str, tuple[str, bool, list | None]]:
    """Fields of the @parameterNodeWrapper class: name -> (type, bounded, choices)."""
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef)
               and any(_dotted(d) == "parameterNodeWrapper" for d in n.decorator_list))
    fields = {}
    for stmt in cls.body:
        if not isinstance(stmt, ast.AnnAssign):
            continue
        ann, bounded, choices = stmt.annotation, False, None
        if isinstance(ann, ast.Subscript) and _dotted(ann.value) == "Annotated":
            elts = ann.slice.elts
            ann = elts[0]
            for extra in elts[1:]:
                if isinstance(extra, ast.Call) and _dotted(extra.func) == "WithinRange":
                    bounded = True
                if isinstance(extra, ast.Call) and _dotted(extra.func) == "Choice":
                    choices = extra.args[0]
        name = _dotted(ann)
        kind = "node" if name.startswith("vtkMRML") else name
        fields[stmt.target.id] = (kind, bounded, choices, name)
    return fields


#: MRML base classes of the node types the .ui lists (Slicer's headers), for where ``mrml-class-parents.txt`` is
#: absent or lacks one (it has no vtkMRMLTensorVolumeNode line).
MRML_PARENTS = {"vtkMRMLVectorVolumeNode": "vtkMRMLTensorVolumeNode",
                "vtkMRMLTensorVolumeNode": "vtkMRMLScalarVolumeNode",
                "vtkMRMLLabelMapVolumeNode": "vtkMRMLScalarVolumeNode",
                "vtkMRMLScalarVolumeNode": "vtkMRMLVolumeNode",
                "vtkMRMLVolumeNode": "vtkMRMLDisplayableNode",
                "vtkMRMLSegmentationNode": "vtkMRMLDisplayableNode",
                "vtkMRMLDisplayableNode": "vtkMRMLTransformableNode"}


def mrml_ancestors(cls: str) -> list[str]:
    """``cls`` and its MRML base classes, from Slicer's class list (``../shared/slicer-api/mrml-class-parents.txt``)
    and :data:`MRML_PARENTS`."""
    path = REPO.parent / "shared" / "slicer-api" / "mrml-class-parents.txt"
    parents = dict(line.split()[:2] for line in path.read_text(encoding="utf-8").splitlines()
                   if line.strip() and not line.startswith("#")) if path.exists() else {}
    parents = {**MRML_PARENTS, **parents}
    chain = [cls]
    while chain[-1] in parents and parents[chain[-1]] not in chain:
        chain.append(parents[chain[-1]])
    return chain


def _dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def used_ui_names() -> set[str]:
    """Every ``self.ui.<name>`` in the module."""
    names = set()
    for node in ast.walk(ast.parse(MODULE_FILE.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute) and _dotted(node.value) == "self.ui":
            names.add(node.attr)
    return names


# ------------------------------------------------------------------------------------------------------ tests
def test_ui_loads_in_qt_and_has_every_widget_the_module_uses():
    widgets_mod, _ = _qt()
    widget = load_ui()
    children = {c.objectName(): c for c in widget.findChildren(widgets_mod.QWidget)}
    used = used_ui_names()
    assert len(used) >= 15
    missing = sorted(used - set(children))
    assert not missing, f"MedDeepRecog.py uses widgets the .ui lacks: {missing}"
    # the rewritten classes really are the Qt bases (the .ui is usable as such in Designer)
    assert type(children["heatmapOpacitySlider"]).__name__ == "QWidget"
    assert type(children["probabilityTableView"]).__name__ == "QTableView"
    assert type(children["classifyButton"]).__name__ == "QPushButton"


def test_every_parameter_name_is_a_bindable_field():
    widgets_mod, _ = _qt()
    widget = load_ui()
    bound = {c.property("SlicerParameterName"): c.objectName()
             for c in widget.findChildren(widgets_mod.QWidget) if c.property("SlicerParameterName")}
    xml = ui_widgets()
    fields = wrapper_fields()
    assert len(bound) >= 15
    for param, name in bound.items():
        assert param in fields, f"{name}: SlicerParameterName {param!r} is not a parameter node field"
        kind, bounded, choices, type_name = fields[param]
        cls, props = xml[name]
        assert cls in CONNECTABLE[kind], f"{name} ({cls}) cannot be bound to {param}: {type_name}"
        if cls == "ctkSliderWidget" or cls == "QSlider":
            assert bounded, f"{param}: a slider needs a WithinRange"
        if cls == "QComboBox":
            assert choices is not None, f"{param}: a QComboBox needs a Choice annotation"
        if kind == "node":   # the .ui's types are the field's or derive from it (the module may narrow them)
            assert all(type_name in mrml_ancestors(t) for t in props["nodeTypes"]), \
                f"{name}: nodeTypes {props['nodeTypes']} are not {type_name}"
    unbound = set(fields) - set(bound)
    # fields the panel shows without a connector: outputs set by the logic, the catalog-filled model combo box, the
    # segment list filled from the input segmentation (Slicer has no connector for a segment) and the name of the
    # chosen segment when it was removed
    assert unbound == {"model", "outputTable", "sliceTable", "outputHeatmap", "preprocessedVolume", "classMapTable",
                       "inputSegment", "removedSegment"}, unbound


def test_mrml_widgets_receive_the_scene():
    """Every MRML widget with a setMRMLScene slot gets the scene; none is connected to a slot it lacks."""
    root = ui_tree().getroot()
    receivers = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    classes = {name: cls for name, (cls, _) in ui_widgets().items() if cls.startswith("qMRML") and cls != "qMRMLWidget"}
    unknown = {cls for cls in classes.values() if cls not in SCENE_SLOT | NO_SCENE_SLOT}
    assert not unknown, f"say whether {unknown} have a setMRMLScene slot"
    with_slot = {name for name, cls in classes.items() if cls in SCENE_SLOT}
    assert with_slot and with_slot <= receivers, with_slot - receivers
    wrong = {name for name in receivers if classes.get(name) in NO_SCENE_SLOT}
    assert not wrong, f"{wrong}: no setMRMLScene slot (Slicer logs a failed connection)"
    assert root.find("widget").get("class") == "qMRMLWidget"


# ------------------------------------------------------------------------------------------------ screenshot
def render_panel(path: Path, result: dict | None = None) -> Path:
    """Render the panel with Qt stand-ins for Slicer's widgets and example values; save a PNG."""
    widgets_mod, app = _qt()
    from PySide6.QtCore import Qt
    widget = load_ui({"ctkCollapsibleButton": "QGroupBox", "qMRMLNodeComboBox": "QComboBox",
                      "ctkSliderWidget": "QSlider", "qMRMLTableView": "QTableWidget",
                      "qMRMLSegmentationShow3DButton": "QPushButton", "qMRMLWidget": "QWidget"})
    find = {c.objectName(): c for c in widget.findChildren(widgets_mod.QWidget)}
    for box in widget.findChildren(widgets_mod.QGroupBox):
        box.setTitle(ui_widgets()[box.objectName()][1].get("text", ""))
    result = result or {"label": "CTChest", "probabilities": [("CTChest", 0.91), ("CTAbd", 0.06), ("CXR", 0.03)]}
    fill = {"inputVolumeSelector": ["abdomen_ct"], "secondVolumeSelector": ["None"],
            "presetComboBox": ["lung-ct", "breast-mri", "brain-mri", "custom"],
            "modelComboBox": ["body-region 1.0.0 (bundled)"], "deviceComboBox": ["auto", "cpu", "cuda"],
            "explainComboBox": ["gradcam", "gradcampp", "attention", "none"],
            "outputSegmentationSelector": ["abdomen_ct segmentations"], "trainingSegmentationSelector": ["None"],
            "finetuneTaskComboBox": ["classify", "segment"]}
    for name, items in fill.items():
        find[name].addItems(items)
    find["deviceInfoLabel"].setText("torch 2.13.0+cpu, CPU only")
    from MedDeepRecogLib.packages import load_package
    meta = load_package("body-region").meta  # the info line as the panel builds it from the real package
    find["modelInfoLabel"].setText(f"classes: {', '.join(meta['class_names'])}. "
                                   f"val balanced_accuracy {meta['metrics']['balanced_accuracy']:.3f}")
    find["classifyButton"].setEnabled(True)
    find["robustnessButton"].setEnabled(True)
    find["statusLabel"].setText(f"Done ({result.get('model', 'body-region@1.0.0')}).")
    label, p = result["probabilities"][0]
    find["resultLabel"].setText(f"<b>{label}</b> (p = {p:.2f})")
    faithfulness = result.get("faithfulness", 0.62)
    find["faithfulnessLabel"].setText("" if faithfulness is None else f"{faithfulness:.2f} (gradcam)")
    find["robustnessLabel"].setText(result.get("robustness", "'CTChest' (p=0.91) flips to 'CTAbd' at eps=0.031."))
    table = find["probabilityTableView"]
    table.setColumnCount(2)
    table.setHorizontalHeaderLabels(["class", "probability"])
    table.setRowCount(len(result["probabilities"]))
    for row, (name, prob) in enumerate(result["probabilities"]):
        table.setItem(row, 0, widgets_mod.QTableWidgetItem(name))
        table.setItem(row, 1, widgets_mod.QTableWidgetItem(f"{prob:.3f}"))
    table.setMaximumHeight(110)
    for name, value in (("heatmapOpacitySlider", 50), ("heatmapThresholdSlider", 20)):
        find[name].setOrientation(Qt.Horizontal)
        find[name].setRange(0, 100)
        find[name].setValue(value)
    from MedDeepRecogLib.slicer_bridge.pipeline_spec import preset_settings
    lung = preset_settings("lung-ct")  # what choosing the lung-ct preset sets
    for name, value in (("resampleSpacingSpinBox", lung["resample_spacing"]), ("clipMinSpinBox", lung["clip_min"]),
                        ("clipMaxSpinBox", lung["clip_max"]), ("denoiseSigmaSpinBox", lung["denoise_sigma"]),
                        ("epochsSpinBox", 10)):
        find[name].setValue(value)
    for name, key in (("resampleCheckBox", "resample"), ("clipCheckBox", "clip"), ("denoiseCheckBox", "denoise"),
                      ("biasCorrectionCheckBox", "bias_correction"), ("normalizeCheckBox", "normalize"),
                      ("maskCheckBox", "mask")):
        find[name].setChecked(bool(lung[key]))
    table.horizontalHeader().setStretchLastSection(True)
    for name in ("classifyProgressBar", "finetuneProgressBar"):
        find[name].hide()
    find["classMapTableView"].setMaximumHeight(60)
    widget.resize(440, widget.sizeHint().height())
    widget.show()
    app.processEvents()
    path.parent.mkdir(parents=True, exist_ok=True)
    assert widget.grab().save(str(path))
    return path


def test_panel_renders(tmp_path):
    from PySide6.QtGui import QImage
    path = render_panel(tmp_path / "panel.png")
    image = QImage(str(path))
    assert image.width() >= 400 and image.height() > 600


def _real_result() -> dict | None:
    """Classify the bundled abdominal CT sample with the bundled body-region model through the bridge, if present."""
    import json
    import tempfile
    from MedDeepRecogLib.resources import BUNDLED_MODELS_DIR, sample_path
    from MedDeepRecogLib.slicer_bridge import WorkerCommand, read_classify_result, run_worker, worker_environment
    from MedDeepRecogLib.slicer_bridge.outputs import robustness_summary
    if not (BUNDLED_MODELS_DIR / "body-region").is_dir():
        return None
    scan = sample_path("abdomen_ct.nii.gz")
    with tempfile.TemporaryDirectory() as tmp:
        run_worker(WorkerCommand.classify([scan], "body-region", tmp, python=sys.executable, device="cpu").args,
                   worker_environment(), timeout=600)
        result = read_classify_result(tmp, scan)
        robust = run_worker(WorkerCommand.robustness("body-region", scan, Path(tmp) / "rob", python=sys.executable,
                                                     attack="fgsm").args, worker_environment(), timeout=600)
        robustness_text = robustness_summary(robust)[0]  # reads the JSON the worker wrote into tmp
    print(json.dumps(result.raw.get("probabilities")))
    return {"label": result.label, "probabilities": result.probabilities[:4], "model": result.model,
            "faithfulness": result.faithfulness, "robustness": robustness_text}


if __name__ == "__main__":
    out = render_panel(REPO / "Resources" / "Screenshots" / "panel.png", _real_result())
    print(out)
    sys.exit(0)
