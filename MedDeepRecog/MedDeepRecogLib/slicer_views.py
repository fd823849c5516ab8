"""What a radiologist sees in Slicer after Classify, rendered headless with Slicer's own core (``slicer-core``).

:class:`CoreApp` is a real MRML scene with the logics Slicer's application sets up (application, colours, volumes,
segmentations, subject hierarchy, tables) and the three slice views' and the 3D view's logics. The red slice view
is rendered by Slicer's slice logic (its layer blending: background, foreground with opacity, colour table,
threshold) and the segmentations' 2D displayable manager (outlines, fill); the 3D view by the segmentations' 3D
displayable manager (closed surfaces). Rendering is offscreen VTK.

The same code renders the module's own scene in the tests (``Testing/Python/slicer_core_fixture.py``) and the two
PNGs of ``meddeeprecog demo --slicer-views``. Nothing here is imported at module level: ``slicer-core`` (which
pins ``vtk``) is optional, and the rest of the core never needs it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

#: Slicer's matplotlib "Inferno" colour table (a file colour node; Slicer loads it from share/.../ColorFiles).
HEATMAP_COLOR_NODE_ID = "vtkMRMLColorTableNodeFileInferno.txt"
#: Where Slicer's application logic looks for colour files, relative to its home directory.
SHARE_DIRECTORY = "share/Slicer-5.12"
SLICE_VIEWS = {"Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}


class SlicerCoreMissing(RuntimeError):
    """``slicer-core`` is not installed."""


def import_slicer_core():
    """``(slicer, vtk)`` from the ``slicer-core`` wheel, or :class:`SlicerCoreMissing` with the install line."""
    try:
        import slicer
        import vtk
        slicer.vtkMRMLScene  # noqa: B018 - a plain 'slicer' stub (e.g. a test's) is not Slicer's core
    except (ImportError, AttributeError):
        raise SlicerCoreMissing("needs Slicer's core: pip install slicer-core==5.12.4.0 "
                                "(or pip install 'meddeeprecog[test]')") from None
    return slicer, vtk


def default_color_files() -> Path | None:
    """Slicer's colour tables beside the checkout (``../shared/slicer-colorfiles/ColorFiles``) or
    ``$MEDDEEPRECOG_SLICER_COLORFILES``; the wheel does not ship them."""
    env = os.environ.get("MEDDEEPRECOG_SLICER_COLORFILES")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[3] / "shared" / "slicer-colorfiles" / "ColorFiles")
    return next((p for p in candidates if p.is_dir()), None)


def inferno_table_file(path: Path) -> Path:
    """Write Slicer's ``Inferno.txt`` colour file (256 entries, from matplotlib's inferno) to ``path``."""
    from matplotlib import colormaps

    cmap = colormaps["inferno"]
    lines = ["# Color table file inferno (matplotlib), the same 256 entries as Slicer's Inferno.txt",
             "# 256 values"]
    for i in range(256):
        r, g, b, _ = cmap(i / 255.0)
        lines.append(f"{i} inferno{i} {round(r * 255)} {round(g * 255)} {round(b * 255)} 255")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class CoreApp:
    """A real MRML scene with Slicer's logics, slice views Red/Yellow/Green and one 3D view.

    Args:
        color_files: a folder of Slicer colour tables (``Inferno.txt``...). ``None``: :func:`default_color_files`,
            else an ``Inferno.txt`` written from matplotlib's table, so the heatmap colour node ID exists.
    """

    def __init__(self, color_files: Path | None = None):
        slicer, vtk = import_slicer_core()
        self.slicer, self.vtk = slicer, vtk
        self._home = tempfile.TemporaryDirectory(prefix="meddeeprecog-slicer-home-")
        colors = Path(self._home.name) / SHARE_DIRECTORY / "ColorFiles"
        source = Path(color_files) if color_files else default_color_files()
        if source is not None:
            colors.parent.mkdir(parents=True)
            colors.symlink_to(Path(source).resolve(), target_is_directory=True)
        else:
            inferno_table_file(colors / "Inferno.txt")

        self.scene = scene = slicer.vtkMRMLScene()
        self.app_logic = app = slicer.vtkSlicerApplicationLogic()
        app.SetMRMLScene(scene)
        app.SetHomeDirectory(self._home.name)
        app.SetShareDirectory(SHARE_DIRECTORY)
        app.SetSliceLogics(vtk.vtkCollection())
        app.SetViewLogics(vtk.vtkCollection())
        slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance().SetMRMLApplicationLogic(app)
        slicer.vtkMRMLThreeDViewDisplayableManagerFactory.GetInstance().SetMRMLApplicationLogic(app)
        self.logics = {}
        for name, cls in (("Colors", slicer.vtkSlicerColorLogic), ("Volumes", slicer.vtkSlicerVolumesLogic),
                          ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
                          ("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic),
                          ("Tables", slicer.vtkSlicerTablesLogic)):
            logic = cls()
            logic.SetMRMLApplicationLogic(app)
            logic.SetMRMLScene(scene)
            app.SetModuleLogic(name, logic)
            self.logics[name] = logic
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
        self.slice_logics = {}
        for name, orientation in SLICE_VIEWS.items():
            logic = slicer.vtkMRMLSliceLogic()
            logic.SetMRMLApplicationLogic(app)
            app.GetSliceLogics().AddItem(logic)
            logic.SetMRMLScene(scene)
            logic.AddSliceNode(name).SetOrientation(orientation)
            self.slice_logics[name] = logic
        self.view_logic = slicer.vtkMRMLViewLogic()
        self.view_logic.SetMRMLApplicationLogic(app)
        app.GetViewLogics().AddItem(self.view_logic)
        self.view_logic.SetMRMLScene(scene)
        self.view_node = self.view_logic.AddViewNode("1")

    def slice_node(self, name: str = "Red"):
        return self.slice_logics[name].GetSliceNode()

    def composite_node(self, name: str = "Red"):
        return self.slice_logics[name].GetSliceCompositeNode()

    def close(self) -> None:
        self.scene.Clear(True)
        self._home.cleanup()


# ------------------------------------------------------------------------------------------------ rendering
def _window(vtk, size):
    if not os.environ.get("DISPLAY"):  # headless: EGL directly, without VTK first trying (and warning about) X
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetMultiSamples(0)
    window.SetSize(*size)
    renderer = vtk.vtkRenderer()
    window.AddRenderer(renderer)
    interactor = vtk.vtkRenderWindowInteractor()  # the displayable managers need one
    interactor.SetRenderWindow(window)
    interactor.Initialize()
    return window, renderer, interactor


def _save(vtk, window, path: Path) -> Path:
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.ReadFrontBufferOff()
    grab.Update()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(str(path))
    writer.SetInputConnection(grab.GetOutputPort())
    writer.Write()
    return path


def render_slice_view(app: CoreApp, path: Path, view: str = "Red", size=(512, 512), fit: bool = True) -> Path:
    """Render slice view ``view`` as Slicer shows it (layers blended by its slice logic, segment outlines and fill
    by the segmentations' 2D displayable manager) into the PNG ``path``. ``fit`` zooms to the background without
    moving the slice offset."""
    slicer, vtk = app.slicer, app.vtk
    window, renderer, interactor = _window(vtk, size)
    renderer.GetActiveCamera().ParallelProjectionOn()
    factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
    for manager in ("vtkMRMLSegmentationsDisplayableManager2D",):
        if not factory.IsDisplayableManagerRegistered(manager):
            factory.RegisterDisplayableManager(manager)
    group = slicer.vtkMRMLDisplayableManagerGroup()
    group.Initialize(factory, renderer)
    logic = app.slice_logics[view]
    group.SetMRMLDisplayableNode(logic.GetSliceNode())
    offset = logic.GetSliceOffset()
    logic.ResizeSliceNode(*size)
    if fit:
        logic.FitSliceToBackground()
        logic.SetSliceOffset(offset)
    mapper = vtk.vtkImageMapper()  # the slice logic's output is RGBA 0..255
    mapper.SetColorWindow(255)
    mapper.SetColorLevel(127.5)
    mapper.SetInputConnection(logic.GetImageDataConnection())
    actor = vtk.vtkActor2D()
    actor.SetMapper(mapper)
    actor.GetProperty().SetDisplayLocationToBackground()
    renderer.AddViewProp(actor)
    window.Render()
    out = _save(vtk, window, path)
    group.SetMRMLDisplayableNode(None)
    window.Finalize()
    del interactor
    return out


def render_3d_view(app: CoreApp, path: Path, size=(512, 512), direction: str = "anterior") -> Path:
    """Render the 3D view (segments as closed surfaces, by the segmentations' 3D displayable manager), seen from
    ``direction`` (anterior: the patient faces the viewer), into the PNG ``path``."""
    slicer, vtk = app.slicer, app.vtk
    window, renderer, interactor = _window(vtk, size)
    renderer.SetBackground(0.76, 0.76, 0.9)  # Slicer's default 3D background (light blue-grey)
    renderer.SetBackground2(0.1, 0.1, 0.2)
    renderer.GradientBackgroundOn()
    factory = slicer.vtkMRMLThreeDViewDisplayableManagerFactory.GetInstance()
    for manager in ("vtkMRMLSegmentationsDisplayableManager3D", "vtkMRMLModelDisplayableManager"):
        if not factory.IsDisplayableManagerRegistered(manager):
            factory.RegisterDisplayableManager(manager)
    group = slicer.vtkMRMLDisplayableManagerGroup()
    group.Initialize(factory, renderer)
    group.SetMRMLDisplayableNode(app.view_node)
    window.Render()
    renderer.ResetCamera()
    camera = renderer.GetActiveCamera()
    fx, fy, fz = camera.GetFocalPoint()
    distance = camera.GetDistance()
    offsets = {"anterior": (0, 1, 0), "left": (-1, 0, 0), "superior": (0, 0, 1)}[direction]
    camera.SetPosition(fx + offsets[0] * distance, fy + offsets[1] * distance, fz + offsets[2] * distance)
    camera.SetViewUp(0, 0, 1) if direction != "superior" else camera.SetViewUp(0, 1, 0)
    renderer.ResetCamera()
    renderer.ResetCameraClippingRange()
    window.Render()
    out = _save(vtk, window, path)
    group.SetMRMLDisplayableNode(None)
    window.Finalize()
    del interactor
    return out


# ------------------------------------------------------------------------------------------------ the demo's scene
def show_classification(app: CoreApp, scan: Path, heatmap: Path | None, segmentation: Path | None = None,
                        threshold: float = 0.2, opacity: float = 0.5, hot_threshold: float = 0.5):
    """Load a scan and the worker's outputs into ``app`` and display them as the panel does after Classify:
    the scan as background, the heatmap as foreground in Inferno (0..1, transparent below ``threshold``, layer
    ``opacity``), the hot region (heatmap >= ``hot_threshold``) and any segments as outlines in 2D and closed
    surfaces in 3D; the red view on the slice through the heatmap's peak. Returns ``(scan, heatmap, seg)`` nodes."""
    import numpy as np

    vtk = app.vtk
    volumes = app.logics["Volumes"]
    scanNode = volumes.AddArchetypeVolume(str(scan), Path(scan).name.split(".")[0], 0)
    heatNode = None
    segNode = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "segmentations")
    segNode.CreateDefaultDisplayNodes()
    segNode.SetReferenceImageGeometryParameterFromVolumeNode(scanNode)
    if segmentation is not None:
        app.logics["Segmentations"].ImportLabelmapToSegmentationNode  # noqa: B018 - exists in 5.12
        loaded = app.logics["Segmentations"].LoadSegmentationFromFile(str(segmentation), False, "loaded")
        if loaded is not None:
            for segmentId in list(loaded.GetSegmentation().GetSegmentIDs()):
                segNode.GetSegmentation().CopySegmentFromSegmentation(loaded.GetSegmentation(), segmentId)
            remove_node_and_helpers(app.scene, loaded)
    for name in SLICE_VIEWS:
        app.composite_node(name).SetBackgroundVolumeID(scanNode.GetID())
    if heatmap is not None:
        heatNode = volumes.AddArchetypeVolume(str(heatmap), "heatmap", 0)
        heatNode.CreateDefaultDisplayNodes()
        apply_heatmap_display(heatNode.GetDisplayNode(), threshold)
        for name in SLICE_VIEWS:
            composite = app.composite_node(name)
            composite.SetForegroundVolumeID(heatNode.GetID())
            composite.SetForegroundOpacity(opacity)
        heat = _array(heatNode)
        hot = (heat >= hot_threshold).astype(np.uint8)
        if hot.any():
            segmentId = segNode.GetSegmentation().AddEmptySegment(f"heatmap >= {hot_threshold}",
                                                                  f"heatmap >= {hot_threshold}", [0.99, 0.65, 0.04])
            labelmap = app.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__temp__")
            labelmap.CopyOrientation(heatNode)
            image = vtk.vtkImageData()
            image.DeepCopy(_image_from_array(vtk, hot))
            labelmap.SetAndObserveImageData(image)
            ids = vtk.vtkStringArray()
            ids.InsertNextValue(segmentId)
            app.logics["Segmentations"].ImportLabelmapToSegmentationNode(labelmap, segNode, ids)
            remove_node_and_helpers(app.scene, labelmap)
        k = int(np.unravel_index(int(np.argmax(heat)), heat.shape)[0])
        ijk_to_ras = vtk.vtkMatrix4x4()
        heatNode.GetIJKToRASMatrix(ijk_to_ras)
        centre = ijk_to_ras.MultiplyPoint(((heat.shape[2] - 1) / 2, (heat.shape[1] - 1) / 2, k, 1))
        app.slice_logics["Red"].SetSliceOffset(centre[2])
    else:
        app.slice_logics["Red"].SetSliceOffset(_centre(scanNode, vtk)[2])
    apply_segmentation_display(segNode)
    return scanNode, heatNode, segNode


def apply_heatmap_display(displayNode, threshold: float) -> None:
    """The panel's heatmap display: Inferno over 0..1, values below ``threshold`` (and zero) transparent."""
    displayNode.SetAndObserveColorNodeID(HEATMAP_COLOR_NODE_ID)
    displayNode.SetAutoWindowLevel(False)
    displayNode.SetWindowLevelMinMax(0.0, 1.0)
    apply_heatmap_threshold(displayNode, threshold)


def apply_heatmap_threshold(displayNode, threshold: float) -> None:
    displayNode.SetApplyThreshold(True)
    displayNode.SetLowerThreshold(max(float(threshold), 1e-6))  # zero is "no evidence": always transparent
    displayNode.SetUpperThreshold(1.0)


def apply_segmentation_display(segmentationNode) -> None:
    """What "Show 3D" displays: closed surfaces in 3D, outlines and a translucent fill in 2D."""
    segmentationNode.CreateDefaultDisplayNodes()
    segmentationNode.CreateClosedSurfaceRepresentation()
    displayNode = segmentationNode.GetDisplayNode()
    displayNode.SetVisibility3D(True)
    displayNode.SetVisibility2DOutline(True)
    displayNode.SetOpacity2DFill(0.3)


def remove_node_and_helpers(scene, node) -> None:
    """Remove ``node`` with its display and storage nodes (``RemoveNode`` alone leaves them in the scene, and a
    saved scene would list them)."""
    if node is None or not scene.IsNodePresent(node):
        return
    helpers = []
    for i in range(node.GetNumberOfDisplayNodes() if hasattr(node, "GetNumberOfDisplayNodes") else 0):
        helpers.append(node.GetNthDisplayNode(i))
    for i in range(node.GetNumberOfStorageNodes() if hasattr(node, "GetNumberOfStorageNodes") else 0):
        helpers.append(node.GetNthStorageNode(i))
    scene.RemoveNode(node)
    for helper in helpers:
        if helper is not None and scene.IsNodePresent(helper):
            scene.RemoveNode(helper)


def _array(volumeNode):
    from vtk.util.numpy_support import vtk_to_numpy

    image = volumeNode.GetImageData()
    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(tuple(reversed(image.GetDimensions())))


def _image_from_array(vtk, array):
    from vtk.util.numpy_support import numpy_to_vtk

    image = vtk.vtkImageData()
    image.SetDimensions(*reversed(array.shape))
    image.GetPointData().SetScalars(numpy_to_vtk(array.ravel(), deep=True))
    return image


def _centre(volumeNode, vtk):
    dims = volumeNode.GetImageData().GetDimensions()
    m = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(m)
    return m.MultiplyPoint(((dims[0] - 1) / 2, (dims[1] - 1) / 2, (dims[2] - 1) / 2, 1))


def render_classification(scan: Path, heatmap: Path | None, out_dir: Path, name: str,
                          segmentation: Path | None = None, threshold: float = 0.2, opacity: float = 0.5,
                          size=(512, 512)) -> list[Path]:
    """:func:`show_classification` in a fresh :class:`CoreApp`, then ``<name>_slicer_red.png`` and
    ``<name>_slicer_3d.png`` in ``out_dir``."""
    app = CoreApp()
    try:
        show_classification(app, scan, heatmap, segmentation, threshold, opacity)
        out_dir = Path(out_dir)
        return [render_slice_view(app, out_dir / f"{name}_slicer_red.png", size=size),
                render_3d_view(app, out_dir / f"{name}_slicer_3d.png", size=size)]
    finally:
        app.close()
