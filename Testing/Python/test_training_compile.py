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


def test_auto_compiles_a_short_run_when_the_compile_cache_holds_the_network(monkeypatch, tmp_path):
    """Under :data:`AUTO_MIN_STEPS` steps ``auto`` stays eager, unless a compiled run of the same network (same torch,
    same device, same layers) at the same batch shape already filled inductor's disk cache, which makes the compile
    about 1 s; the first batch decides."""
    monkeypatch.setattr(compilation, "cxx_compiler", lambda: "/usr/bin/g++")
    monkeypatch.setattr(compilation, "compiled_graph_marker",
                        lambda model, device, shape: tmp_path / f"{abs(hash((str(model), device.type, shape)))}.json")
    net, shape = _net3d(), (4, 1, 8, 8, 8)
    short = decide_compile("auto", net, CPU, 80, distributed=False)
    assert not short.compile and short.if_cache_holds
    assert not compilation.warm_decision(short, net, CPU, shape).compile  # a cold cache
    compilation.note_compiled(net, CPU, shape)
    warm = compilation.warm_decision(short, net, CPU, shape)
    assert warm.compile and "compile cache" in warm.reason and "[4, 1, 8, 8, 8]" in warm.reason
    assert not compilation.warm_decision(short, net, CPU, (2, 1, 8, 8, 8)).compile  # another shape compiles afresh
    other = nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 2, 1))  # another network
    assert not compilation.warm_decision(decide_compile("auto", other, CPU, 80, False), other, CPU, shape).compile
    too_short = decide_compile("auto", net, CPU, compilation.AUTO_WARM_MIN_STEPS - 1, distributed=False)
    assert "even a compile from the cache" in too_short.reason
    for never in (too_short, decide_compile("auto", _net2d(), CPU, 80, distributed=False),  # 2D, off, DDP too
                  decide_compile(False, net, CPU, 80, distributed=False),
                  decide_compile("auto", net, CPU, 80, distributed=True)):
        assert not never.if_cache_holds and not compilation.warm_decision(never, net, CPU, shape).compile


def test_the_cache_note_is_keyed_by_torch_device_network_and_shape():
    shape = (4, 1, 8, 8, 8)
    a = compilation.compiled_graph_marker(_net3d(), CPU, shape)
    if a is None:
        pytest.skip("this torch has no inductor cache folder")
    assert a == compilation.compiled_graph_marker(_net3d(), CPU, shape) and a.parent.name == "meddeeprecog-compiled"
    assert compilation.compiled_graph_marker(_net2d(), CPU, shape) != a
    assert compilation.compiled_graph_marker(_net3d(), torch.device("cuda"), shape) != a
    assert compilation.compiled_graph_marker(_net3d(), CPU, (2, 1, 8, 8, 8)) != a
    assert compilation.batch_shape([torch.zeros(shape), torch.zeros(4)]) == shape
    assert compilation.batch_shape({"image": torch.zeros(shape)}) == shape and compilation.batch_shape("x") is None


class _StandIn(nn.Module):
    """What ``compilation.compiled`` returns, without compiling: the same network behind another module."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)


def test_a_short_run_compiles_at_its_first_batch_when_the_cache_holds_it(monkeypatch, tmp_path):
    """In ``fit``: the first run (compiled on request) notes the cache; a short ``auto`` run of the same network and
    batches then compiles, and its history says why; a short run without the note stays eager."""
    monkeypatch.setattr(compilation, "cxx_compiler", lambda: "/usr/bin/g++")
    monkeypatch.setattr(compilation, "compiled_graph_marker",
                        lambda model, device, shape: tmp_path / f"{abs(hash((str(model), device.type, shape)))}.json")
    monkeypatch.setattr(compilation, "compiled", _StandIn)  # the decision is under test, not inductor
    epochs = compilation.AUTO_WARM_MIN_STEPS // 2  # 2 batches an epoch
    _, cold = _run("auto", epochs)
    assert cold.compiled.startswith("off: auto: ") and not list(tmp_path.iterdir())
    _, requested = _run(True)
    assert requested.compiled == "on: training/compile is true" and len(list(tmp_path.iterdir())) == 1
    _, warm = _run("auto", epochs)
    assert warm.compiled.startswith("on: auto: a run under") and "[4, 1, 8, 8, 8]" in warm.compiled
    _, short = _run("auto", 2)  # warm, but too short to repay even that
    assert short.compiled.startswith("off: auto:") and "even a compile from the cache" in short.compiled


def _problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1, 8, 8, 8, generator=g)
    y = (x > 0.3).long().squeeze(1)  # voxel labels a 3D network can learn
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4, shuffle=False)


def _run(setting, epochs: int = 2) -> tuple[dict, object]:
    torch.manual_seed(0)
    model = _net3d()

    def step(net, batch):
        xb, yb = batch
        return StepOutput(nn.functional.cross_entropy(net(xb), yb), len(xb))

    cfg = FitConfig(optimizer=OptimizerConfig(name="sgd", lr=0.1, weight_decay=0.0),
                    loop=LoopConfig(epochs=epochs, compile=setting, device="cpu"), monitor="loss")
    history = fit(model, _problem(), step, None, cfg)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, history


@pytest.mark.skipif(compilation.cxx_compiler() is None, reason="torch.compile needs a C++ compiler on the CPU")
@pytest.mark.timeout(600)
def test_compiled_training_matches_eager_training(monkeypatch, tmp_path):
    notes = []
    monkeypatch.setattr(compilation, "note_compiled", lambda model, device, shape: notes.append((type(model), device)))
    eager, eager_history = _run(False)
    assert notes == []
    compiled, compiled_history = _run(True)
    assert notes == [(nn.Sequential, CPU)]  # noted once, after the first compiled step
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
    notes = []
    monkeypatch.setattr(compilation, "note_compiled", lambda model, device, shape: notes.append(model))
    fallback, history = _run(True)
    assert history.compiled == "off: torch.compile failed (RuntimeError)"
    assert notes == []  # nothing was compiled: no note that the cache holds it
    for name in eager:  # the failed step moved nothing; the eager network redid it
        torch.testing.assert_close(fallback[name], eager[name])
