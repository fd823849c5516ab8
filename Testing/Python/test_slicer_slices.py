"""The panel's 2D-model part on real MRML: Classify current slice (the red view's slice) and the per-slice table.

The worker's ``classify VOLUME --slice-mm S`` contract (being added to the core in parallel) is played by a small
stand-in worker script that writes exactly what the contract says: ``<name>.json`` with ``slice: {index,
position_mm}``, ``label``, ``probabilities`` (and ``per_slice`` records with ``position_mm`` for a volume run), and
``<name>_heatmap.nrrd`` on the volume's own grid with heat on that slice only. Everything on the Slicer side is
real: the job, the worker process, loading into MRML nodes, the red slice logic.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import pytest

FAKE_WORKER = r'''
import json, sys
from pathlib import Path
import numpy as np, SimpleITK as sitk
args = sys.argv[1:]
scan = Path(args[args.index("classify") + 1])
out = Path(args[args.index("--out") + 1]); out.mkdir(parents=True, exist_ok=True)
image = sitk.ReadImage(str(scan))
n = image.GetSize()[2]
s = np.array([image.TransformIndexToPhysicalPoint((0, 0, k))[2] for k in range(n)])  # superior coordinate, mm
labels = ["lesion" if 6 <= k <= 9 else "normal" for k in range(n)]
name = scan.name.split(".")[0]
heat = np.zeros(sitk.GetArrayViewFromImage(image).shape, np.float32)
record = {"model": {"id": "tiny-2d", "version": "1.0.0"}}
if "--slice-mm" in args:
    k = int(np.argmin(np.abs(s - float(args[args.index("--slice-mm") + 1]))))
    heat[k] = 0.8
    p = 0.9 if labels[k] == "lesion" else 0.2
    record.update(label=labels[k], probabilities={"lesion": p, "normal": 1 - p},
                  slice={"index": k, "position_mm": round(float(s[k]), 4)})
else:
    heat[6:10] = 0.7
    record.update(label="lesion", probabilities={"lesion": 0.7, "normal": 0.3},
                  per_slice=[{"index": k, "label": labels[k], "probability": 0.9, "voted": 0 < k < n - 2,
                              **({"in_domain": False} if k in (0, n - 1) else {}),
                              "position_mm": round(float(s[k]), 4)} for k in range(n)],
                  finding={"label": "lesion", "first_index": 6, "last_index": 9, "slices": 4,
                           "from_mm": float(s[6]), "to_mm": float(s[9]), "slices_with_label": 4, "extent": False,
                           "caveat": "where it reads lesion, not the extent of a lesion"})
out_heat = sitk.GetImageFromArray(heat); out_heat.CopyInformation(image)
sitk.WriteImage(out_heat, str(out / f"{name}_heatmap.nrrd"))
(out / f"{name}.json").write_text(json.dumps(record))
print(json.dumps({"stage": "done", "fraction": 1.0}))
'''


@pytest.fixture
def slice_model(slicer_core, tmp_path, monkeypatch):
    """Model 'tiny-2d' is a slices2d package; its classify runs the stand-in worker (commands are recorded)."""
    module = slicer_core.module
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER, encoding="utf-8")
    monkeypatch.setattr(module, "model_input_kind", lambda model: "slices2d" if model == "tiny-2d" else "cnn3d")
    real_build, commands = module.WorkerCommand.build, []

    @dataclasses.dataclass(frozen=True)
    class StandIn(module.WorkerCommand):
        def validate(self):  # the real parser learns --slice-mm on main; the contract is what is tested here
            return None

    def build(command, *positional, python, **options):
        real = real_build(command, *positional, python=python, **options)
        commands.append(real.args)
        return StandIn(command, [sys.executable, str(script), *real.args[3:]])
    monkeypatch.setattr(module.WorkerCommand, "build", staticmethod(build))
    return commands


def _volume(env):
    z, y, x = np.mgrid[:14, :20, :24]
    voxels = (100 * np.exp(-((x - 12) ** 2 + (y - 10) ** 2) / 40.0) * (z + 1)).astype(np.int16)
    ijk_to_ras = np.array([[-0.9, 0, 0, 10.0], [0, -0.9, 0, 20.0], [0, 0, 2.5, -30.0], [0, 0, 0, 1]])
    return env.slicer.util.addVolumeFromArray(voxels, ijkToRAS=ijk_to_ras, name="axial scan")


def test_classify_current_slice_and_jump_from_the_per_slice_table(slicer_core, slice_model):
    env, module = slicer_core, slicer_core.module
    logic = module.MedDeepRecogLogic()
    p = logic.getParameterNode()
    p.inputVolume, p.model, p.device = _volume(env), "tiny-2d", "cpu"
    assert logic.isSliceModel("tiny-2d") and not logic.isSliceModel("adrenal-mass-3d")

    whole = logic.classify(p, waitForCompletion=True)  # the whole volume: one row per axial slice
    table = p.sliceTable
    assert [table.GetColumnName(i) for i in range(5)] == ["index", "position_mm", "label", "probability", "vote"]
    # the slices that did not vote (outside the model's domain, or left out) are marked, the others say they voted
    assert table.GetColumnTitle("vote") == "counted in the result"
    assert [table.GetCellText(r, 4) for r in (0, 1, 12, 13)] == [
        "not voting: outside the model's domain", "voted", "not voting", "not voting: outside the model's domain"]
    # the finding's slice range, in the core's words, in the result line's notes
    assert "lesion on axial slices 6-9 counted from the most inferior (S -15.0 to -7.5 mm); where it reads lesion, " \
           "not the extent of a lesion" in whole.result_text()
    # the first column names the scan and the model these slices' results are of
    assert table.GetColumnTitle("index") == f"slice from inferior ('axial scan', {whole.model})"
    assert table.GetColumnDescription("index").endswith(f"not the volume's K index; results of 'axial scan' by the "
                                                        f"model {whole.model}")
    assert whole.model.startswith("tiny-2d@") and table.GetColumnTitle("position_mm") == "S (mm)"
    assert table.GetNumberOfRows() == 14
    positions = [module.scene_io.slicePositionOfRow(table, r) for r in range(14)]
    assert positions == pytest.approx([-30.0 + 2.5 * k for k in range(14)])
    assert [table.GetCellText(r, 2) for r in (5, 6, 9, 10)] == ["normal", "lesion", "lesion", "normal"]

    logic.jumpToSlice(p.inputVolume, positions[7])  # clicking row 7
    red = env.core.slice_logics["Red"]
    assert red.GetSliceOffset() == pytest.approx(positions[7])
    red.SetSliceOffset(positions[7] + 0.9)  # the radiologist scrolls a little: still within slice 7
    result = logic.classifySlice(p, waitForCompletion=True)
    assert float(slice_model[-1][slice_model[-1].index("--slice-mm") + 1]) == pytest.approx(positions[7])
    assert result.raw["slice"] == {"index": 7, "position_mm": pytest.approx(positions[7])}
    assert result.label == "lesion" and json.loads(p.outputTable.GetAttribute("MedDeepRecog.slice"))["index"] == 7
    heat = env.slicer.util.arrayFromVolume(p.outputHeatmap)
    assert heat.shape == (14, 20, 24) and heat[7].max() > 0 and np.delete(heat, 7, axis=0).max() == 0
    assert p.sliceTable.GetNumberOfRows() == 14  # the volume's per-slice table stays

    p.model = "adrenal-mass-3d"
    with pytest.raises(ValueError, match="not a 2D slice model"):
        logic.classifySlice(p, waitForCompletion=True)


def test_classify_current_slice_with_the_real_worker(slicer_core, tmp_path):
    """The same panel path against the real core command (``classify --slice-mm``) and a tiny 2D package."""
    from tiny_test_package import make_tiny_package

    env, module = slicer_core, slicer_core.module
    package = make_tiny_package(tmp_path / "catalog")
    logic = module.MedDeepRecogLogic()
    p = logic.getParameterNode()
    p.inputVolume, p.model, p.device = _volume(env), str(package), "cpu"
    assert logic.isSliceModel(str(package))
    logic.classify(p, waitForCompletion=True)
    table = p.sliceTable
    rows = table.GetNumberOfRows()
    positions = [module.scene_io.slicePositionOfRow(table, r) for r in range(rows)]
    assert rows == 14 and positions == pytest.approx([-30.0 + 2.5 * k for k in range(14)])

    logic.jumpToSlice(p.inputVolume, positions[4])
    env.core.slice_logics["Red"].SetSliceOffset(positions[4] - 1.0)
    result = logic.classifySlice(p, waitForCompletion=True)
    assert result.raw["slice"]["index"] == 4 and result.raw["slice"]["position_mm"] == pytest.approx(positions[4])
    heat = env.slicer.util.arrayFromVolume(p.outputHeatmap)
    assert heat.shape == (14, 20, 24) and heat[4].max() > 0 and np.delete(heat, 4, axis=0).max() == 0


def _tilted_volume(env, tilt_deg=15.0):
    """A 40x64x64 scan (0.7 x 0.7 x 2.5 mm) tilted about R-L, as an oblique acquisition is."""
    z, y, x = np.mgrid[:40, :64, :64]
    voxels = (100 * np.exp(-((x - 32) ** 2 + (y - 32) ** 2) / 200.0) * (z + 1)).astype(np.int16)
    a = np.radians(tilt_deg)
    rotation = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = rotation @ np.diag([0.7, 0.7, 2.5])
    ijk_to_ras[:3, 3] = [-20.0, 15.0, -40.0]
    return env.slicer.util.addVolumeFromArray(voxels, ijkToRAS=ijk_to_ras, name="tilted scan"), ijk_to_ras


def test_classify_current_slice_takes_the_slice_the_red_view_shows_on_tilted_and_transformed_scans(slicer_core,
                                                                                                    tmp_path):
    """The red view's plane, not its offset, picks the slice: on a scan tilted 15° (red view rotated to the volume
    plane, centred away from the slice centre) and under a parent transform, the real core classifies exactly the
    slice the view shows, a table row jumps the view back onto it, and a sagittal view is refused in words."""
    from tiny_test_package import make_tiny_package

    env, module = slicer_core, slicer_core.module
    slicer, vtk = env.slicer, module.vtk
    package = make_tiny_package(tmp_path / "catalog")
    logic = module.MedDeepRecogLogic()
    p = logic.getParameterNode()
    volume, ijk_to_ras = _tilted_volume(env)
    p.inputVolume, p.model, p.device = volume, str(package), "cpu"
    shift = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = vtk.vtkMatrix4x4()
    for row, value in enumerate((12.0, -7.0, 30.0)):
        matrix.SetElement(row, 3, value)
    shift.SetMatrixTransformToParent(matrix)
    volume.SetAndObserveTransformNodeID(shift.GetID())
    to_world = slicer.util.arrayFromVTKMatrix(matrix)

    red = env.core.slice_logics["Red"].GetSliceNode()
    slice_to_ras = np.eye(4)  # the red view rotated to the volume plane, centred 20 mm off the slice centre
    slice_to_ras[:3, :3] = ijk_to_ras[:3, :3] / np.array([0.7, 0.7, 2.5])
    for k in (9, 26):
        centre_local = ijk_to_ras @ [31.5, 31.5 + 20 / 0.7, k + 0.3, 1]
        slice_to_ras[:3, 3] = (to_world @ centre_local)[:3]
        red.GetSliceToRAS().DeepCopy(slicer.util.vtkMatrixFromArray(slice_to_ras))
        red.UpdateMatrices()
        result = logic.classifySlice(p, waitForCompletion=True)
        assert result.raw["slice"]["index"] == k
        heat = slicer.util.arrayFromVolume(p.outputHeatmap)
        assert heat[k].max() > 0 and np.delete(heat, k, axis=0).max() == 0

    logic.classify(p, waitForCompletion=True)  # the per-slice table; a row sends the view onto that slice
    rows = p.sliceTable.GetNumberOfRows()
    position = module.scene_io.slicePositionOfRow(p.sliceTable, rows // 2)
    index = int(p.sliceTable.GetCellText(rows // 2, 0))
    logic.jumpToSlice(volume, position)
    shown = logic.classifySlice(p, waitForCompletion=True).raw["slice"]
    assert shown["index"] == index and p.sliceTable.GetNumberOfRows() == rows  # the volume's table stays
    assert shown["position_mm"] == pytest.approx(position, abs=0.01)  # the table keeps 2 decimals

    red.SetOrientation("Sagittal")
    with pytest.raises(ValueError, match="90° from the scan's axial slices.*set the red view to Axial"):
        logic.classifySlice(p, waitForCompletion=True)


def test_classify_current_slice_of_another_scan_takes_the_last_scans_per_slice_table_off(slicer_core, slice_model):
    """Scan A classified slice by slice, then one slice of scan B: A's per-slice table stayed beside B's result (and
    clicking a row moved the red view to A's slice positions)."""
    env, module = slicer_core, slicer_core.module
    logic = module.MedDeepRecogLogic()
    p = logic.getParameterNode()
    p.inputVolume, p.model, p.device = _volume(env), "tiny-2d", "cpu"
    logic.classify(p, waitForCompletion=True)
    tableA = p.sliceTable
    assert tableA.GetNumberOfRows() == 14
    logic.classifySlice(p, waitForCompletion=True)
    assert p.sliceTable is tableA  # one slice of the same scan: its per-slice table stays

    p.inputVolume = _volume(env)
    p.inputVolume.SetName("scan B")
    logic.classifySlice(p, waitForCompletion=True)
    assert p.sliceTable is None and env.count("vtkMRMLTableNode") == 1
    index = json.loads(p.outputTable.GetAttribute("MedDeepRecog.slice"))["index"]
    assert p.outputTable.GetName() == f"scan B slice {index} probabilities"   # one slice's answer, named so


def test_a_red_view_beyond_the_scan_is_refused_quoting_the_offset_the_user_set(slicer_core, slice_model):
    """Offset 83.0 above brain1's top slice was refused as "the red view's slice offset 84.5 lies outside the scan":
    the centre of the slice beyond the scan that it rounded to, a number the user never set."""
    env, module = slicer_core, slicer_core.module
    logic = module.MedDeepRecogLogic()
    p = logic.getParameterNode()
    p.inputVolume, p.model, p.device = _volume(env), "tiny-2d", "cpu"   # slices at S -30.0 ... 2.5 mm
    red = env.core.slice_logics["Red"]
    for offset, where in ((3.9, "3.9"), (-31.6, "-31.6")):   # nearest a slice centre beyond the scan: 5.0, -32.5
        red.SetSliceOffset(offset)
        calls = len(slice_model)
        with pytest.raises(ValueError) as refused:
            logic.classifySlice(p, waitForCompletion=True)
        assert str(refused.value) == (f"the red view's slice offset {where} lies outside the scan: its 14 axial "
                                      "slices run from S -30.0 to 2.5 mm")
        assert len(slice_model) == calls   # refused before a worker started
    red.SetSliceOffset(3.7)   # within half a slice of the top slice: that slice
    assert logic.classifySlice(p, waitForCompletion=True).raw["slice"]["index"] == 13
