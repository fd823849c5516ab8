"""``training/compile``: the ``auto`` rule, a compiled run that trains like the eager one, and the eager fallback
when compiling fails. Speed is measured in ``bench/finetune.py``, not here."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from MedDeepRecogLib.training import compilation
from MedDeepRecogLib.training.compilation import AUTO_MIN_STEPS, decide_compile
from MedDeepRecogLib.training.loop import FitConfig, StepOutput, fit
from MedDeepRecogLib.training.sections import LoopConfig, OptimizerConfig

CPU = torch.device("cpu")


def _net3d() -> nn.Module:
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.InstanceNorm3d(4), nn.ReLU(), nn.Conv3d(4, 2, 1))


def _net2d() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 2))


def test_auto_compiles_long_3d_runs_on_the_cpu_only(monkeypatch):
    monkeypatch.setattr(compilation, "cxx_compiler", lambda: "/usr/bin/g++")
    on = decide_compile("auto", _net3d(), CPU, AUTO_MIN_STEPS, distributed=False)
    assert on.compile and "3D network" in on.reason
    refusals = {
        "2D": decide_compile("auto", _net2d(), CPU, 10 * AUTO_MIN_STEPS, distributed=False),
        "short": decide_compile("auto", _net3d(), CPU, AUTO_MIN_STEPS - 1, distributed=False),
        "ddp": decide_compile("auto", _net3d(), CPU, 10 * AUTO_MIN_STEPS, distributed=True),
        "cuda": decide_compile("auto", _net3d(), torch.device("cuda"), 10 * AUTO_MIN_STEPS, distributed=False),
        "off": decide_compile(False, _net3d(), CPU, 10 * AUTO_MIN_STEPS, distributed=False),
    }
    assert not any(d.compile for d in refusals.values())
    assert "2D" in refusals["2D"].reason and str(AUTO_MIN_STEPS) in refusals["short"].reason
    assert "distributed" in refusals["ddp"].reason and "cuda" in refusals["cuda"].reason
    assert decide_compile(True, _net2d(), CPU, 1, distributed=False).compile  # true: whatever the network
    monkeypatch.setattr(compilation, "cxx_compiler", lambda: None)
    missing = decide_compile("auto", _net3d(), CPU, 10 * AUTO_MIN_STEPS, distributed=False)
    assert not missing.compile and "C++ compiler" in missing.reason


def _problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1, 8, 8, 8, generator=g)
    y = (x > 0.3).long().squeeze(1)  # voxel labels a 3D network can learn
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4, shuffle=False)


def _run(setting) -> tuple[dict, object]:
    torch.manual_seed(0)
    model = _net3d()

    def step(net, batch):
        xb, yb = batch
        return StepOutput(nn.functional.cross_entropy(net(xb), yb), len(xb))

    cfg = FitConfig(optimizer=OptimizerConfig(name="sgd", lr=0.1, weight_decay=0.0),
                    loop=LoopConfig(epochs=2, compile=setting, device="cpu"), monitor="loss")
    history = fit(model, _problem(), step, None, cfg)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, history


@pytest.mark.skipif(compilation.cxx_compiler() is None, reason="torch.compile needs a C++ compiler on the CPU")
@pytest.mark.timeout(600)
def test_compiled_training_matches_eager_training():
    eager, eager_history = _run(False)
    compiled, compiled_history = _run(True)
    assert eager_history.compiled.startswith("off: training/compile is false")
    assert compiled_history.compiled == "on: training/compile is true"
    for name in eager:  # the saved (eager) module holds the compiled run's weights
        torch.testing.assert_close(compiled[name], eager[name], rtol=1e-4, atol=1e-5)
    assert [r["train_loss"] for r in compiled_history.epochs] == pytest.approx(
        [r["train_loss"] for r in eager_history.epochs], rel=1e-4)


class _FailingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("inductor: backward graph failed to compile")


class _BrokenForward(nn.Module):
    def forward(self, *args):
        raise RuntimeError("inductor: no working C++ compiler")


class _BrokenBackward(nn.Module):
    """Compiles the forward, fails in the backward (inductor compiles the backward lazily, at the first one)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return _FailingBackward.apply(self.net(x))


@pytest.mark.parametrize("broken", [lambda net: _BrokenForward(), _BrokenBackward], ids=["forward", "backward"])
def test_a_failing_compile_falls_back_to_the_eager_network(monkeypatch, broken):
    monkeypatch.setattr(compilation, "compiled", broken)
    eager, _ = _run(False)
    fallback, history = _run(True)
    assert history.compiled == "off: torch.compile failed (RuntimeError)"
    for name in eager:  # the failed step moved nothing; the eager network redid it
        torch.testing.assert_close(fallback[name], eager[name])
