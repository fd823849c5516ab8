"""The module on Slicer's real core: a real MRML scene with the logics Slicer's application sets up.

``slicer-core`` (Kitware's wheel of Slicer's C++ core, with Slicer's own ``slicer/util.py``) gives real
``vtkMRMLScene``, nodes, storage nodes, the Volumes/Segmentations/Colors/Tables/SubjectHierarchy logics and slice
logic. Only what needs Slicer's Qt application is replaced here, each written from Slicer's behaviour (its sources
were read, not copied):

- ``slicer.app.coreIOManager()``: the readers and writers ``slicer.util.loadVolume`` / ``loadSegmentation`` /
  ``exportNode`` / ``loadScene`` reach, done with the logic calls Slicer's own readers and writers make
  (``vtkSlicerVolumesLogic.AddArchetypeVolume``, ``vtkSlicerSegmentationsModuleLogic.LoadSegmentationFromFile``,
  a storage node's ``WriteData``). ``slicer.util`` itself is Slicer's, so e.g. ``exportNode``'s default arguments
  behave as they do in Slicer.
- ``qt``: a main-thread event loop with ``QTimer`` (``singleShot`` and repeating timers), which Slicer 5.12's
  ``launchConsoleProcess(blocking=False)`` uses to deliver its callbacks on the main thread.
- ``slicer.parameterNodeWrapper``: the wrapper stores every field in the real parameter node (a
  ``vtkMRMLScriptedModuleNode``) as Slicer's serializers do, and ``Choice`` / ``WithinRange`` / the type checks
  reject what Slicer 5.12 rejects. GUI binding (``connectGui``) is not emulated.
- ``slicer.ScriptedLoadableModule``: the base classes, with ``getParameterNode`` as Slicer's (a singleton
  ``vtkMRMLScriptedModuleNode`` named after the module) and a ``ScriptedLoadableModuleTest`` whose
  ``delayDisplay`` only logs.
"""

from __future__ import annotations

import heapq
import importlib
import itertools
import logging
import sys
import threading
import time
import types
import typing
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "MedDeepRecog"
COLOR_FILES = REPO.parent / "shared" / "slicer-colorfiles" / "ColorFiles"

#: Volume write formats of Slicer's volumes writer (the wheel's archetype storage node lists none: ITK's IO
#: factories that fill the list are registered by the application).
VOLUME_WRITE_FORMATS = ["NRRD (.nrrd)", "NRRD (.nhdr)", "NIfTI (.nii.gz)", "NIfTI (.nii)", "MetaImage (.mha)",
                        "MetaImage (.mhd)"]


# ------------------------------------------------------------------------------------------------------ qt
class EventLoop:
    """The GUI thread's event loop: timers fire only inside :meth:`processEvents`, on the calling thread."""

    def __init__(self):
        self._queue: list = []
        self._counter = itertools.count()
        self.thread = threading.main_thread()

    def schedule(self, delay_ms, callback):
        heapq.heappush(self._queue, (time.monotonic() + delay_ms / 1000.0, next(self._counter), callback))

    def processEvents(self, duration_s: float = 0.0):
        """Run the timers that are due (waiting up to ``duration_s`` for more)."""
        end = time.monotonic() + duration_s
        while True:
            now = time.monotonic()
            if self._queue and self._queue[0][0] <= now:
                _, _, callback = heapq.heappop(self._queue)
                callback()
                continue
            if now >= end:
                return
            time.sleep(min(0.01, end - now))

    def run_until(self, condition, timeout_s: float = 300.0):
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError("the event loop did not reach the condition")
            self.processEvents(0.02)


def make_qt(loop: EventLoop) -> types.ModuleType:
    qt = types.ModuleType("qt")

    class QTimer:
        instances: list = []

        def __init__(self, parent=None):
            self._interval, self._active, self._callbacks, self._single = 0, False, [], False
            QTimer.instances.append(self)

        @staticmethod
        def singleShot(ms, callback):
            loop.schedule(ms, callback)

        def setInterval(self, ms):
            self._interval = ms

        def setSingleShot(self, single):
            self._single = single

        def connect(self, signal, callback):
            assert signal == "timeout()", signal
            self._callbacks.append(callback)

        def start(self, ms=None):
            if ms is not None:
                self._interval = ms
            self._active = True
            loop.schedule(self._interval, self._fire)

        def stop(self):
            self._active = False

        def isActive(self):
            return self._active

        def _fire(self):
            if not self._active:
                return
            if self._single:
                self._active = False
            for callback in list(self._callbacks):
                callback()
            if self._active:
                loop.schedule(self._interval, self._fire)

    qt.QTimer = QTimer
    qt.Qt = types.SimpleNamespace(WaitCursor=3)
    return qt


# ------------------------------------------------------------------------------------------ parameter nodes
def make_parameter_node_wrapper(slicer) -> types.ModuleType:
    pnw = types.ModuleType("slicer.parameterNodeWrapper")

    class Validator:
        pass

    class Choice(Validator):
        def __init__(self, choices):
            self.choices = choices

        def validate(self, value):
            if value not in self.choices:
                raise ValueError(f"Value is {value}, but must be in one of the following: {self.choices}")

    class WithinRange(Validator):
        def __init__(self, minimum, maximum):
            self.minimum, self.maximum = minimum, maximum

        def validate(self, value):
            if not self.minimum <= value <= self.maximum:
                raise ValueError(f"Value must be within range [{self.minimum}, {self.maximum}], is {value}")

    def field(type_, validators):
        """(default, validate, write, read) for a field of ``type_``, as Slicer's serializers store it."""
        is_node = isinstance(type_, type) and issubclass(type_, slicer.vtkMRMLNode)

        def validate(value):
            if is_node:
                if value is not None and not isinstance(value, type_):
                    raise TypeError(f"Value must be of type '{type_}', is type '{type(value)}'")
            else:
                if value is None:
                    raise ValueError("Value must not be None")
                allowed = (int, float) if type_ is float else type_
                if not isinstance(value, allowed):
                    raise TypeError(f"Value must be of type '{allowed}', is type '{type(value)}' value '{value}'")
            for validator in validators:
                validator.validate(value)

        def write(node, name, value):
            if is_node:
                node.SetParameter(name, "")
                node.SetNodeReferenceID(name, value.GetID() if value is not None else None)
            elif type_ is bool:
                node.SetParameter(name, "True" if value else "False")
            else:
                node.SetParameter(name, str(value))

        def read(node, name):
            if is_node:
                return node.GetNodeReference(name)
            text = node.GetParameter(name)
            return text == "True" if type_ is bool else type_(text)

        default = None if is_node else {bool: False, int: 0, float: 0.0, str: ""}[type_]
        return default, validate, write, read

    def parameterNodeWrapper(cls):
        hints = typing.get_type_hints(cls, include_extras=True)
        fields = {}
        for name, hint in hints.items():
            validators = []
            if typing.get_origin(hint) is typing.Annotated:
                hint, *extras = typing.get_args(hint)
                validators = [e for e in extras if isinstance(e, Validator)]
            default, validate, write, read = field(hint, validators)
            fields[name] = (cls.__dict__.get(name, default), validate, write, read)

        def __init__(self, parameterNode):
            object.__setattr__(self, "parameterNode", parameterNode)
            for name, (default, validate, write, read) in fields.items():
                if not parameterNode.HasParameter(name):
                    validate(default)
                    write(parameterNode, name, default)

        def make_property(name, validate, write, read):
            def getter(self):
                return read(self.parameterNode, name)

            def setter(self, value):
                validate(value)
                write(self.parameterNode, name, value)
            return property(getter, setter)

        namespace = {"__init__": __init__, "allParameters": property(lambda self: dict(fields)),
                     "connectGui": lambda self, gui: object(), "disconnectGui": lambda self, tag: None,
                     "__doc__": cls.__doc__}
        for name, (_, validate, write, read) in fields.items():
            namespace[name] = make_property(name, validate, write, read)
        wrapper = type(cls.__name__, (), namespace)

        def __setattr__(self, key, value):
            if key not in fields:
                raise AttributeError(f"{cls.__name__} has no parameter {key!r}")
            object.__setattr__(self, key, value)
        wrapper.__setattr__ = __setattr__
        return wrapper

    pnw.Choice, pnw.WithinRange, pnw.parameterNodeWrapper = Choice, WithinRange, parameterNodeWrapper
    return pnw


def make_scripted_loadable_module(slicer) -> types.ModuleType:
    slm = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            self.moduleName = type(self).__name__[:-len("Logic")] if type(self).__name__.endswith("Logic") \
                else type(self).__name__

        def getParameterNode(self):
            scene = slicer.mrmlScene
            node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if node:
                return node
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetSingletonTag(self.moduleName)
            node.SetModuleName(self.moduleName)
            node.SetName(scene.GenerateUniqueName(self.moduleName))
            return scene.AddNode(node)

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, msec=1000):
            logging.info(message)

        def runTest(self):  # pragma: no cover - subclasses define it
            pass

    slm.ScriptedLoadableModule = ScriptedLoadableModule
    slm.ScriptedLoadableModuleWidget = ScriptedLoadableModuleWidget
    slm.ScriptedLoadableModuleLogic = ScriptedLoadableModuleLogic
    slm.ScriptedLoadableModuleTest = ScriptedLoadableModuleTest
    return slm


# ---------------------------------------------------------------------------------------------- IO manager
class CoreIOManager:
    """``qSlicerCoreIOManager`` for volumes, segmentations and scenes, through the logics and storage nodes."""

    def __init__(self, core):
        self.core, self.slicer = core, core.slicer
        self.exports: list[dict] = []  # every exportNodes call's properties, for the tests

    def fileType(self, fileName):
        name = str(fileName).lower()
        if name.endswith(".seg.nrrd"):
            return "SegmentationFile"
        if name.endswith((".mrml", ".mrb")):
            return "SceneFile"
        return "VolumeFile"

    def loadNodes(self, fileType, properties, loadedNodes=None, userMessages=None):
        scene, fileName = self.core.scene, str(properties["fileName"])
        if fileType == "VolumeFile":
            name = properties.get("name") or Path(fileName).name.split(".")[0]
            node = self.core.logics["Volumes"].AddArchetypeVolume(fileName, name,
                                                                  1 if properties.get("labelmap") else 0)
            if node is None:
                return False
            if properties.get("show", True):  # the volumes reader shows what it loaded
                for logic in self.core.slice_logics.values():
                    logic.GetSliceCompositeNode().SetBackgroundVolumeID(node.GetID())
            nodes = [node]
        elif fileType == "SegmentationFile":
            node = self.core.logics["Segmentations"].LoadSegmentationFromFile(
                fileName, bool(properties.get("autoOpacities", True)), properties.get("name") or "")
            if node is None:
                return False
            nodes = [node]
        elif fileType == "SceneFile":
            if properties.get("clear", True):
                scene.Clear(False)
            scene.SetURL(fileName)
            if not scene.Import():
                return False
            nodes = []
        else:
            return False
        for node in nodes:
            if loadedNodes is not None:
                loadedNodes.AddItem(node)
        return True

    def _storageNode(self, node):
        storage = node.CreateDefaultStorageNode()
        if storage is not None:
            storage.UnRegister(None)  # created with a reference (VTK 'New' semantics) in the Python wrapping
        return storage

    def fileWriterExtensions(self, node):
        storage = self._storageNode(node)
        types_ = storage.GetSupportedWriteFileTypes()
        formats = [types_.GetValue(i) for i in range(types_.GetNumberOfValues())]
        if not formats and node.IsA("vtkMRMLVolumeNode"):
            formats = list(VOLUME_WRITE_FORMATS)
        return formats

    def extractKnownExtension(self, fileName, node):
        name = str(fileName).lower()
        helper = self.slicer.vtkDataFileFormatHelper
        extensions = [helper.GetFileExtensionFromFormatString(f) for f in self.fileWriterExtensions(node)]
        matching = [e for e in extensions if name.endswith(e)]
        return max(matching, key=len) if matching else ""

    def exportNodes(self, nodeIDs, fileNames, properties, hardenTransform, userMessages=None):
        """Write each node with a new storage node (the node's own is untouched), in ``properties['fileFormat']``
        which must be one of the node's writer formats, as Slicer's exporter requires."""
        self.exports.append(dict(properties))
        fileFormat = properties.get("fileFormat")
        for nodeID, fileName in zip(nodeIDs, fileNames):
            node = self.core.scene.GetNodeByID(nodeID)
            if node is None or fileFormat not in self.fileWriterExtensions(node):
                if userMessages is not None:
                    userMessages.AddMessage(self.slicer.vtkCommand.ErrorEvent if hasattr(self.slicer, "vtkCommand")
                                            else 0, f"no writer for {nodeID} in format {fileFormat!r}")
                return False
            storage = self._storageNode(node)
            storage.SetFileName(str(fileName))
            if not storage.WriteData(node):
                return False
        return True


# -------------------------------------------------------------------------------------------- the fixture
class SlicerCore:
    """What the ``slicer_core`` fixture gives a test: the real scene (``core``), the module, the event loop."""

    def __init__(self, monkeypatch, tmp_path):
        from MedDeepRecogLib.slicer_views import CoreApp

        import slicer
        import slicer.util
        self.slicer = slicer
        self.core = CoreApp(COLOR_FILES if COLOR_FILES.is_dir() else None)
        self.scene = self.core.scene
        self.loop = EventLoop()
        self.io = CoreIOManager(self.core)
        self.temporaryPath = tmp_path / "slicer-temp"
        self.temporaryPath.mkdir()
        app = types.SimpleNamespace(
            temporaryPath=str(self.temporaryPath), coreIOManager=lambda: self.io,
            applicationLogic=lambda: self.core.app_logic, processEvents=lambda: self.loop.processEvents(),
            testingEnabled=lambda: True, setOverrideCursor=lambda cursor: None, restoreOverrideCursor=lambda: None)
        logic = lambda name: types.SimpleNamespace(logic=lambda: self.core.logics[name])  # noqa: E731
        modules = types.SimpleNamespace(volumes=logic("Volumes"), segmentations=logic("Segmentations"),
                                        colors=logic("Colors"), subjecthierarchy=logic("SubjectHierarchy"),
                                        tables=logic("Tables"))
        monkeypatch.setattr(slicer, "mrmlScene", self.scene, raising=False)
        monkeypatch.setattr(slicer, "app", app, raising=False)
        monkeypatch.setattr(slicer, "modules", modules, raising=False)
        monkeypatch.setattr(slicer.util, "delayDisplay", lambda message, *a, **k: logging.info(message))
        self.qt = make_qt(self.loop)
        for name, module in {"qt": self.qt, "slicer.parameterNodeWrapper": make_parameter_node_wrapper(slicer),
                             "slicer.ScriptedLoadableModule": make_scripted_loadable_module(slicer)}.items():
            monkeypatch.setitem(sys.modules, name, module)
            if name.startswith("slicer."):
                monkeypatch.setattr(slicer, name.split(".", 1)[1], module, raising=False)
        monkeypatch.syspath_prepend(str(MODULE_DIR))
        for name in ("MedDeepRecog", "MedDeepRecogSlicerLib.jobs", "MedDeepRecogSlicerLib.scene_io"):
            sys.modules.pop(name, None)
        self.module = importlib.import_module("MedDeepRecog")

    # -- helpers ---------------------------------------------------------------------------------------------
    def count(self, className: str) -> int:
        return self.scene.GetNumberOfNodesByClass(className)

    def save_scene(self, directory: Path) -> Path:
        """Save as Slicer's Save dialog does by default: every storable node marked modified is written into
        ``directory`` (a storage node is created if it has none, its file name set there); the others keep their
        storage nodes' file names. Then the ``.mrml`` is written. Returns the ``.mrml`` path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        scene = self.scene
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLStorableNode")):
            node = scene.GetNthNodeByClass(i, "vtkMRMLStorableNode")
            if not node.GetSaveWithScene() or node.GetHideFromEditors() and not node.GetStorageNode():
                continue
            if not node.GetModifiedSinceRead():
                continue
            storage = node.GetStorageNode()
            if storage is None:
                node.AddDefaultStorageNode()
                storage = node.GetStorageNode()
            extension = storage.GetDefaultWriteFileExtension()
            from MedDeepRecogSlicerLib.scene_io import safeFileName
            storage.SetFileName(str(directory / f"{safeFileName(node.GetName())}.{extension}"))
            assert storage.WriteData(node), f"could not write {node.GetName()}"
        path = directory / "scene.mrml"
        scene.SetRootDirectory(str(directory))
        scene.SetURL(str(path))
        assert scene.Commit(), "could not write the .mrml"
        return path


def load_scene_fresh(path: Path):
    """Load a saved ``.mrml`` into a new real scene (data read by the storage nodes); returns the CoreApp."""
    from MedDeepRecogLib.slicer_views import CoreApp

    core = CoreApp(COLOR_FILES if COLOR_FILES.is_dir() else None)
    core.scene.SetURL(str(path))
    core.scene.Import()
    return core
