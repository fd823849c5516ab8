"""The radiologist's view after Classify, rendered by Slicer's own slice logic and displayable managers (offscreen).

The module's scene code (``scene_io``) displays a heatmap over a scan on the real-MRML fixture; the red slice view
is rendered and the overlay must be visible where the heatmap is above the panel's threshold, invisible below it,
and sit on the scan's structure it marks; the 3D view must show the segment's closed surface.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk


def _png(path):
    from vtk.util.numpy_support import vtk_to_numpy
    import vtk
    reader = vtk.vtkPNGReader()
    reader.SetFileName(str(path))
    reader.Update()
    image = reader.GetOutput()
    w, h, _ = image.GetDimensions()
    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(h, w, -1)[::-1, :, :3].astype(int)


@pytest.fixture
def scene_with_overlay(slicer_core, tmp_path):
    """A scan with a bright blob off-centre and a heatmap on its grid that marks exactly that blob."""
    env = slicer_core
    z, y, x = np.mgrid[:20, :48, :64]
    blob = ((x - 44) ** 2 + (y - 16) ** 2 + (z - 10) ** 2) < 36
    scan = sitk.GetImageFromArray((100 + 800 * blob).astype(np.int16))
    scan.SetSpacing((0.8, 0.8, 2.0))
    scan.SetOrigin((-20.0, 30.0, -15.0))
    heat = sitk.GetImageFromArray(np.where(blob, 0.9, 0.05).astype(np.float32))
    heat.CopyInformation(scan)
    sitk.WriteImage(scan, str(tmp_path / "scan.nrrd"))
    sitk.WriteImage(heat, str(tmp_path / "heat.nrrd"))
    scene_io = env.module.scene_io
    volume = env.slicer.util.loadVolume(str(tmp_path / "scan.nrrd"), {"name": "scan"})
    heatmap = scene_io.loadVolumeInto(tmp_path / "heat.nrrd", None, "scan heatmap")
    scene_io.showHeatmap(heatmap, volume, threshold=0.2, opacity=0.6)
    segmentation = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "scan segmentations")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segmentation.CreateDefaultDisplayNodes()
    scene_io.setSegmentFromMask(segmentation, "heatmap >= 0.5", blob, (0.99, 0.65, 0.04), heatmap)
    scene_io.showSegmentationIn3D(segmentation)
    import vtk
    m = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(m)
    ijk_to_ras = env.slicer.util.arrayFromVTKMatrix(m)
    env.core.slice_logics["Red"].SetSliceOffset((ijk_to_ras @ [0, 0, 10, 1])[2])  # through the blob's centre
    return env, volume, heatmap, segmentation, blob


def test_red_view_shows_the_heatmap_on_the_structure_it_marks(scene_with_overlay, tmp_path):
    from MedDeepRecogLib.slicer_views import render_3d_view, render_slice_view
    env, volume, heatmap, segmentation, blob = scene_with_overlay
    segmentation.GetDisplayNode().SetVisibility(False)  # heatmap layer alone first
    composite = env.core.composite_node("Red")
    composite.SetForegroundOpacity(0.0)
    plain = _png(render_slice_view(env.core, tmp_path / "plain.png", size=(320, 240)))
    composite.SetForegroundOpacity(0.6)
    overlay = _png(render_slice_view(env.core, tmp_path / "overlay.png", size=(320, 240)))

    bright = plain.mean(axis=2) > 200  # the blob, as the scan shows it (window/level from the data)
    changed = np.abs(overlay - plain).sum(axis=2) > 30  # where the heatmap layer shows
    assert bright.sum() > 200, "the scan's blob is not in the red view"
    assert changed.sum() > 200, "the heatmap overlay is not visible"
    # visible on the blob (heat 0.9) and nowhere else (heat 0.05 is below the 0.2 threshold: transparent)
    assert (changed & bright).sum() / bright.sum() > 0.9
    from scipy.ndimage import binary_dilation  # edge: interpolated heat crosses 0.2 where the
    # interpolated scan is not yet "bright"
    assert (changed & ~binary_dilation(bright, iterations=4)).sum() == 0  # 4 px: about one voxel
    centre = lambda mask: np.array(np.nonzero(mask)).mean(axis=1)  # noqa: E731
    assert np.abs(centre(changed) - centre(bright)).max() < 2.0  # aligned to within 2 pixels
    # Inferno at 0.9 is a light yellow-orange: red channel up, blue down compared with the grey scan
    d = (overlay - plain)[changed & bright].mean(axis=0)
    assert d[0] > d[2]

    segmentation.GetDisplayNode().SetVisibility(True)
    outlined = _png(render_slice_view(env.core, tmp_path / "outlined.png", size=(320, 240)))
    assert (np.abs(outlined - overlay).sum(axis=2) > 30).sum() > 50  # the segment's outline and fill show
    view3d = _png(render_3d_view(env.core, tmp_path / "3d.png", size=(200, 200)))
    orange = (view3d[..., 0] > 150) & (view3d[..., 2] < 100)
    assert orange.sum() > 200  # the hot region as a closed surface in its colour


def test_demo_slicer_views_without_slicer_core_is_one_line(monkeypatch, capsys):
    """Without slicer-core, ``demo --slicer-views`` says what to install, exit 2, before classifying anything."""
    import argparse
    from MedDeepRecogLib.commands import demo
    monkeypatch.setitem(__import__("sys").modules, "slicer", None)  # import slicer -> ImportError
    code = demo.run(argparse.Namespace(out="unused", explain="none", device="cpu", progress="none",
                                       slicer_views=True))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pip install slicer-core" in err[0]
