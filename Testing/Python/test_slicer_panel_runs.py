"""The module's panel and runs on Slicer's real core (``slicer_core`` fixture), for what a user meets: a fresh Slicer
without the module's dependencies, results of one scan kept apart from the next, the panel's words."""

from __future__ import annotations

import sys

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
