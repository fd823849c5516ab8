"""Every Slicer API the module calls exists in Slicer >= 5.12, and no deprecated API is used.

Slicer cannot be installed here, so the module's Python files are parsed with ``ast`` and each ``slicer.*``,
``slicer.util.*`` and MRML method call is checked against the API name lists in ``../shared/slicer-api/`` (taken
from Slicer's sources). MRML receivers are typed from annotations, the parameter node's fields and a small table of
getters; methods are looked up through ``mrml-class-parents.txt``. Capitalised method calls on untyped receivers
must exist on *some* listed class (or be a VTK basic), which catches typos.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "MedDeepRecog"
SLICER_FILES = [MODULE_DIR / "MedDeepRecog.py", *sorted((MODULE_DIR / "MedDeepRecogSlicerLib").glob("*.py"))]
API_DIR = Path(__import__("os").environ.get("MEDDEEPRECOG_SLICER_API", REPO.parent / "shared" / "slicer-api"))

#: Methods of VTK base classes (not in the lists by design) and of plain VTK data objects the module uses.
VTK_BASICS = {
    "AddObserver", "RemoveObserver", "RemoveObservers", "Modified", "GetClassName", "IsA", "InvokeEvent",
    "GetMTime", "DeepCopy", "ShallowCopy", "SetName", "GetName", "InsertNextValue", "GetValue", "SetValue",
    "GetNumberOfTuples", "SetNumberOfTuples", "GetDimensions", "GetSpacing", "GetOrigin", "GetNumberOfValues",
}
#: Receivers that are not Slicer's: VTK/Qt classes, and the PyTorch extension's module (optional at run time).
#: Slicer modules' top-level objects that are not in the name lists but are part of every Slicer.
SLICER_TOPLEVEL = {"mrmlScene", "app", "util", "modules", "packaging", "ScriptedLoadableModule",
                   "parameterNodeWrapper", "vtkSlicerSegmentationsModuleLogic"}
#: Return types of getters the module chains through.
RETURNS = {
    ("slicer.util", "loadVolume"): "vtkMRMLScalarVolumeNode",
    ("slicer.util", "loadSegmentation"): "vtkMRMLSegmentationNode",
    ("slicer.util", "addVolumeFromArray"): "vtkMRMLScalarVolumeNode",
    ("vtkMRMLScene", "GetSubjectHierarchyNode"): "vtkMRMLSubjectHierarchyNode",
    ("vtkMRMLSegmentationNode", "GetSegmentation"): "vtkSegmentation",
    ("vtkMRMLSegmentationNode", "GetDisplayNode"): "vtkMRMLSegmentationDisplayNode",
    ("vtkMRMLScalarVolumeNode", "GetDisplayNode"): "vtkMRMLScalarVolumeDisplayNode",
    ("vtkSegmentation", "GetSegment"): "vtkSegment",
    ("vtkSlicerColorLogic", "AddDefaultColorLegendDisplayNode"): "vtkMRMLColorLegendDisplayNode",
}
DEPRECATED = ("Master", "_executePythonModule", "arrayFromSegment", "imp", "cgi")


def _lines(name: str) -> list[str]:
    path = API_DIR / name
    if not path.exists():
        pytest.skip(f"Slicer API lists not found at {API_DIR}")
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip() and not ln.startswith("#")]


@pytest.fixture(scope="module")
def api():
    methods: dict[str, set[str]] = {}
    for name in ("mrml-methods.txt", "mrml-methods-extra.txt"):
        for line in _lines(name):
            cls, _, method = line.partition(".")
            methods.setdefault(cls, set()).add(method)
    parents = dict(line.split()[:2] for line in _lines("mrml-class-parents.txt"))
    enums = {line for line in _lines("mrml-enums.txt")}
    util = set(_lines("util-functions.txt")) | set(_lines("util-classes.txt"))
    other = set(_lines("other-python-api.txt"))
    return {"methods": methods, "parents": parents, "enums": enums, "util": util, "other": other,
            "all_methods": set().union(*methods.values())}


def _has_method(api, cls: str, method: str) -> bool:
    seen = set()
    while cls and cls not in seen:
        seen.add(cls)
        if method in api["methods"].get(cls, ()):
            return True
        cls = api["parents"].get(cls)
    return method in VTK_BASICS


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _wrapper_fields() -> dict[str, str]:
    """Parameter node fields typed with an MRML class: ``{"inputVolume": "vtkMRMLScalarVolumeNode", ...}``."""
    tree = ast.parse((MODULE_DIR / "MedDeepRecog.py").read_text(encoding="utf-8"))
    fields = {}
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name.endswith("ParameterNode")):
        for stmt in cls.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.annotation, ast.Name) \
                    and stmt.annotation.id.startswith("vtkMRML"):
                fields[stmt.target.id] = stmt.annotation.id
    return fields


class _Checker(ast.NodeVisitor):
    """Types receivers where it can and records ``(line, problem)`` for calls not in the API lists."""

    def __init__(self, api, fields):
        self.api, self.fields = api, fields
        self.problems: list[tuple[int, str]] = []
        self.checked: list[str] = []
        self.scopes: list[dict[str, str]] = [{}]

    def type_of(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            for scope in reversed(self.scopes):
                if node.id in scope:
                    return scope[node.id]
            return None
        dotted = _dotted(node)
        if dotted == "slicer.mrmlScene":
            return "vtkMRMLScene"
        if isinstance(node, ast.Attribute) and node.attr in self.fields:
            return self.fields[node.attr]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr == "SafeDownCast" and isinstance(node.func.value, ast.Name):
                return node.func.value.id
            if _dotted(node.func) == "slicer.modules.colors.logic":
                return "vtkSlicerColorLogic"
            owner = _dotted(node.func.value)
            if owner == "slicer.util":
                return RETURNS.get(("slicer.util", node.func.attr))
            owner_type = self.type_of(node.func.value)
            if owner_type:
                return RETURNS.get((owner_type, node.func.attr))
        return None

    def visit_FunctionDef(self, node):
        scope = {}
        for arg in node.args.args + node.args.kwonlyargs:
            ann = arg.annotation
            if isinstance(ann, ast.BinOp):  # "X | None"
                ann = ann.left
            if isinstance(ann, ast.Name) and ann.id.startswith("vtk"):
                scope[arg.arg] = ann.id
        self.scopes.append(scope)
        self.generic_visit(node)
        self.scopes.pop()

    def visit_Assign(self, node):
        self.generic_visit(node)
        t = self.type_of(node.value)
        for target in node.targets:
            if isinstance(target, ast.Name) and t:
                self.scopes[-1][target.id] = t

    def visit_Attribute(self, node):
        dotted = _dotted(node)
        if dotted and dotted.startswith("slicer.") and isinstance(node.ctx, ast.Load):
            parts = dotted.split(".")
            if parts[1] == "util" and len(parts) > 2:
                self._check(node.lineno, f"slicer.util.{parts[2]}", parts[2] in self.api["util"])
            elif parts[1] == "packaging" and len(parts) > 2:
                self._check(node.lineno, dotted, ".".join(parts[:3]) in self.api["other"])
            elif len(parts) == 2:
                ok = (parts[1] in SLICER_TOPLEVEL or parts[1] in self.api["parents"]
                      or parts[1] in self.api["methods"] or parts[1].startswith("qMRML"))
                self._check(node.lineno, dotted, ok)
            elif parts[1] == "mrmlScene" and len(parts) == 3 and parts[2][0].isupper():
                ok = (_has_method(self.api, "vtkMRMLScene", parts[2])
                      or f"vtkMRMLScene.{parts[2]}" in self.api["enums"])
                self._check(node.lineno, dotted, ok)
        self.generic_visit(node)

    def visit_Call(self, node):
        if isinstance(node.func, ast.Attribute) and node.func.attr[:1].isupper():
            method = node.func.attr
            receiver = self.type_of(node.func.value)
            if _dotted(node.func.value) == "slicer.mrmlScene":
                pass  # checked in visit_Attribute
            elif receiver:
                self._check(node.lineno, f"{receiver}.{method}", _has_method(self.api, receiver, method))
            elif (_dotted(node.func.value) or "").split(".")[0] not in ("vtk", "qt", "ctk", "PyTorchUtils") \
                    and not (_dotted(node.func.value) or "").startswith("slicer.util"):
                self._check(node.lineno, f"?.{method}",
                            method in self.api["all_methods"] or method in VTK_BASICS)
        self.generic_visit(node)

    def _check(self, line: int, name: str, ok: bool) -> None:
        self.checked.append(name)
        if not ok:
            self.problems.append((line, name))


@pytest.mark.parametrize("path", SLICER_FILES, ids=lambda p: p.name)
def test_every_slicer_call_exists_in_slicer_5_12(path, api):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    checker = _Checker(api, _wrapper_fields())
    checker.visit(tree)
    assert not checker.problems, f"{path.name}: not in the Slicer API lists: {checker.problems}"
    if any(isinstance(n, ast.Import) and any(a.name == "slicer" for a in n.names) for n in ast.walk(tree)):
        assert checker.checked, "nothing was checked"


def test_imports_from_slicer_exist(api):
    for path in SLICER_FILES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "slicer":
                for alias in node.names:
                    if node.module == "slicer":
                        ok = alias.name in api["parents"] or alias.name in api["methods"] \
                            or alias.name in SLICER_TOPLEVEL
                    elif node.module == "slicer.util":
                        ok = alias.name in api["util"]
                    else:
                        ok = f"{node.module}.{alias.name}" in api["other"]
                    assert ok, f"{path.name}:{node.lineno}: from {node.module} import {alias.name} is not Slicer API"


def test_no_deprecated_api():
    for path in SLICER_FILES + [MODULE_DIR / "MedDeepRecogLib" / "slicer_bridge" / p
                                for p in ("process_runner.py", "worker_command.py")]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Attribute):
                names.append(node.attr)
            elif isinstance(node, ast.Name):
                names.append(node.id)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names += [a.name.split(".")[0] for a in node.names] + ([node.module] if getattr(node, "module", None)
                                                                       else [])
            for name in names:
                assert "Master" not in name, f"{path.name}:{node.lineno}: deprecated *Master* API {name}"
                assert name not in DEPRECATED, f"{path.name}:{node.lineno}: deprecated {name}"


def test_the_checker_catches_mistakes(api):
    """The checker itself: an invented util function, a typo'd MRML method and a deprecated name are caught."""
    bad = ast.parse(
        "import slicer\n"
        "def f(v: vtkMRMLScalarVolumeNode):\n"
        "    slicer.util.loadVolumeMagic('x')\n"
        "    v.SetIJKToRASMatrixx(None)\n"
        "    v.GetDisplayNode().SetWindowLevelMinMax(0, 1)\n"
        "    v.GetDisplayNode().SetLowerThresholdd(0)\n"
        "    slicer.mrmlScene.AddNewNodeByClasss('x')\n")
    checker = _Checker(api, {})
    checker.visit(bad)
    found = {name for _, name in checker.problems}
    assert found == {"slicer.util.loadVolumeMagic", "vtkMRMLScalarVolumeNode.SetIJKToRASMatrixx",
                     "vtkMRMLScalarVolumeDisplayNode.SetLowerThresholdd", "slicer.mrmlScene.AddNewNodeByClasss"}
