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
                  per_slice=[{"index": k, "label": labels[k], "probability": 0.9, "voted": True,
                              "position_mm": round(float(s[k]), 4)} for k in range(n)])
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

    logic.classify(p, waitForCompletion=True)  # the whole volume: one row per axial slice
    table = p.sliceTable
    assert [table.GetColumnName(i) for i in range(4)] == ["index", "position_mm", "label", "probability"]
    assert table.GetNumberOfRows() == 14
    positions = [module.scene_io.slicePositionOfRow(table, r) for r in range(14)]
    assert positions == pytest.approx([-30.0 + 2.5 * k for k in range(14)])
    assert [table.GetCellText(r, 2) for r in (5, 6, 9, 10)] == ["normal", "lesion", "lesion", "normal"]

    logic.jumpToSlice(positions[7])  # clicking row 7
    red = env.core.slice_logics["Red"]
    assert red.GetSliceOffset() == pytest.approx(positions[7])
    red.SetSliceOffset(positions[7] + 0.9)  # the radiologist scrolls a little: still nearest to slice 7
    result = logic.classifySlice(p, waitForCompletion=True)
    assert float(slice_model[-1][slice_model[-1].index("--slice-mm") + 1]) == pytest.approx(positions[7] + 0.9)
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

    logic.jumpToSlice(positions[4])
    env.core.slice_logics["Red"].SetSliceOffset(positions[4] - 1.0)
    result = logic.classifySlice(p, waitForCompletion=True)
    assert result.raw["slice"]["index"] == 4 and result.raw["slice"]["position_mm"] == pytest.approx(positions[4])
    heat = env.slicer.util.arrayFromVolume(p.outputHeatmap)
    assert heat.shape == (14, 20, 24) and heat[4].max() > 0 and np.delete(heat, 4, axis=0).max() == 0
