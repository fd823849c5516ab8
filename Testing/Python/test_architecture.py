"""The core's shape, read from its import statements (``ast``, imports inside functions included).

(a) The core never imports Slicer, Qt or VTK (``slicer_views`` alone reaches Slicer's core, inside functions), and
the Slicer module reaches the core only through torch-free seams. (b) No import runs back up the layers listed in
:data:`LAYERS`. (c) The only import cycles are the two registries (architectures, preprocessing steps), whose
decorators live in the modules the registry imports.

Parts above training add to it by registering (adversarial training and the heatmap localisation register their
training-config blocks, ``training.hooks``), never by training importing them.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CORE = REPO / "MedDeepRecog" / "MedDeepRecogLib"
MODULE_FILES = [REPO / "MedDeepRecog" / "MedDeepRecog.py", *sorted((REPO / "MedDeepRecog" / "MedDeepRecogSlicerLib")
                                                                   .glob("*.py"))]

#: Top-level parts of ``MedDeepRecogLib``, lowest layer first; a part imports only from its own layer or below.
LAYERS: list[set[str]] = [
    # plain building blocks, no part of the core below them
    {"__init__", "errors", "limits", "progress", "contract", "devices", "schema", "resources", "allocator", "axes"},
    {"io"},
    {"preprocessing"},
    {"models"},
    {"explain", "uncertainty"},        # tensor maths on models' inputs and outputs
    {"packages"},                      # a network plus its model.json (builds models, loads domain checks)
    {"training"},
    {"inference"},
    {"robustness", "fusion", "finetune"},
    # presentation: one HTML page per case; Slicer's own views rendered headless (it imports nothing of the core,
    # and Slicer's core only inside its functions)
    {"report", "slicer_views"},
    {"commands"},                      # a thin argparse layer over the parts below
    {"cli", "__main__"},
    # the Slicer module's side of the worker protocol: it builds command lines against cli's parser and reads what
    # the commands wrote, so it sits above cli; nothing in the core imports it
    {"slicer_bridge"},
]

#: The two registry cycles: the registry imports its members so that their decorators run.
REGISTRY_CYCLES = [
    {"models.registry", "models.attention_cnn", "models.cnn_lstm", "models.ensemble", "models.evidence_cnn",
     "models.fusion_nets", "models.monai_nets", "models.segmentation", "models.simple_cnn"},
    {"preprocessing.steps", "preprocessing.denoise", "preprocessing.enhance", "preprocessing.intensity",
     "preprocessing.masks"},
]

FORBIDDEN = {"slicer", "qt", "vtk", "ctk", "PythonQt", "mrml"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(CORE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _is_module(name: str) -> bool:
    path = CORE.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports(path: Path, package: str) -> list[tuple[str, int, bool]]:
    """``(absolute module name, line, at module level)`` of every import in ``path``; ``from P import x`` names
    ``P.x`` when ``x`` is a module of the core (importing it runs ``P`` too, as its parent), else ``P``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(n) for n in tree.body}
    for node in tree.body:  # imports under a top-level if/try run at import time too
        if isinstance(node, (ast.If, ast.Try)):
            top |= {id(n) for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                inner = sub.removeprefix("MedDeepRecogLib.")
                is_sub = sub.startswith("MedDeepRecogLib.") and _is_module(inner)
                found.append((sub if is_sub else module, node.lineno, id(node) in top))
    return found


def _graph() -> tuple[dict[str, set[str]], dict[str, list[tuple[str, int, bool]]]]:
    """Module → core modules it imports (``MedDeepRecogLib.`` dropped; the root package is ``__init__``), and every
    module's raw imports."""
    edges: dict[str, set[str]] = defaultdict(set)
    raw = {}
    for path in sorted(CORE.rglob("*.py")):
        name = _module_name(path)
        package = "MedDeepRecogLib" + ("" if name == "__init__" else "." + name)
        if path.name != "__init__.py":
            package = package.rsplit(".", 1)[0]
        imports = _imports(path, package)
        raw[name] = imports
        edges[name]  # every module is a node
        for module, _, _ in imports:
            if module != "MedDeepRecogLib" and not module.startswith("MedDeepRecogLib."):
                continue
            target = module.removeprefix("MedDeepRecogLib").lstrip(".") or "__init__"
            assert target == "__init__" or _is_module(target), f"{name} imports {module}, which is not a module"
            if target != name:
                edges[name].add(target)
    return edges, raw


def _part(module: str) -> str:
    return module.split(".")[0]


def _layer(module: str) -> int:
    part = _part(module)
    for i, layer in enumerate(LAYERS):
        if part in layer:
            return i
    raise AssertionError(f"{module}: its part {part!r} is in no layer of LAYERS; add it where it belongs")


def _cycles(edges: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_imports_inside_functions():
    edges, _ = _graph()
    assert len(edges) > 100
    assert "inference.classify" in edges["commands.classify"]   # imported inside run()
    assert "inference.trust" in edges["inference.classify"]     # imported inside _add_trust()


def test_core_never_imports_slicer_qt_or_vtk():
    _, raw = _graph()
    for module, imports in raw.items():
        for name, line, top in imports:
            root = name.split(".")[0]
            if root not in FORBIDDEN:
                continue
            where = f"MedDeepRecogLib/{module.replace('.', '/')}.py:{line} imports {name}"
            assert module == "slicer_views", where
            assert not top and root != "qt", f"{where} (slicer_views reaches Slicer's core inside functions only)"


def test_slicer_module_reaches_the_core_through_torch_free_seams():
    seams = {"slicer_bridge", "slicer_views", "contract", "devices"}
    used = set()
    for path in MODULE_FILES:
        for name, line, _ in _imports(path, "MedDeepRecogSlicerLib"):
            if name.startswith("MedDeepRecogLib."):
                part = name.split(".")[1]
                assert part in seams, f"{path.name}:{line} imports {name}; the module goes through {sorted(seams)}"
                used.add(part)
    assert {"slicer_bridge", "contract", "devices"} <= used
    code = ("import sys, MedDeepRecogLib.slicer_bridge, MedDeepRecogLib.slicer_bridge.outputs, "
            "MedDeepRecogLib.slicer_bridge.pipeline_spec, MedDeepRecogLib.slicer_views, MedDeepRecogLib.contract, "
            "MedDeepRecogLib.devices; heavy = sorted({'torch', 'SimpleITK', 'numpy', 'monai'} & set(sys.modules)); "
            "print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"the seams import {proc.stdout.strip()} {proc.stderr[-500:]}"


def test_no_import_runs_up_the_layers():
    edges, _ = _graph()
    up = {(m, t) for m, targets in edges.items() for t in targets if _layer(t) > _layer(m)}
    assert not up, "imports running up the layers: " + "; ".join(f"{m} -> {t}" for m, t in sorted(up))


def test_only_the_registry_cycles():
    edges, _ = _graph()
    cycles = _cycles(edges)
    expected = [frozenset(c) for c in REGISTRY_CYCLES]
    for comp in cycles:
        assert frozenset(comp) in expected, f"import cycle: {sorted(comp)}"
    assert len(cycles) == len(REGISTRY_CYCLES), cycles
