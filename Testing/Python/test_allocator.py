"""The training processes' C allocator setting (``allocator.py``): freed memory is reused, not faulted in again."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

#: Three training steps of a small convolutional network (after a warm-up step), printing whether the setting was
#: applied and the page faults the three steps took. Run in a fresh process: the setting cannot be undone.
PROBE = """
import resource, sys
import torch
from MedDeepRecogLib.allocator import reuse_freed_memory
applied = reuse_freed_memory() if sys.argv[1] == "keep" else None
torch.set_num_threads(1)
net = torch.nn.Sequential(torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(32, 32, 3, padding=1))
images = torch.randn(16, 1, 128, 128)   # 32 MiB an activation
def step():
    net.zero_grad(set_to_none=True)
    net(images).square().mean().backward()
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(mode: str, env: dict | None = None) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **(env or {})}).stdout
    applied, faults = out.split()
    return applied, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_training_steps_reuse_kept_memory_where_a_fresh_process_faults_it_in_again():
    applied, kept = _probe("keep")
    if applied != "True":
        pytest.skip("this C library takes no mallopt setting (not glibc)")
    _, default = _probe("default")
    assert default > 10_000, default    # the control: glibc hands each activation back and faults it in again
    assert kept * 10 < default, (kept, default)
    applied, off = _probe("keep", {"MEDDEEPRECOG_KEEP_FREED_MEMORY": "0"})   # the opt-out leaves it as it starts
    assert applied == "False" and off > 10_000, (applied, off)


@pytest.mark.parametrize("argv", [
    ["train", "missing.yaml"],
    ["pretrain", "missing.yaml", "--pool", "missing.yaml", "--out", "start.safetensors"],
    ["finetune", "--base", "ts-organs-seg", "--task", "segment", "--data", "missing_cases"],
    ["robustness", "--model", "body-region", "--input", "missing.nii.gz", "--out", "rob", "--attack", "fgsm"],
])
def test_the_gradient_step_commands_set_it_before_their_first_step(run_cli_all, monkeypatch, tmp_path, argv):
    from MedDeepRecogLib import allocator

    calls = []
    monkeypatch.setattr(allocator, "reuse_freed_memory", lambda: calls.append(argv[0]) or False)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli_all(*argv)
    assert code == 2 and "missing" in err, err   # refused further on, on the missing input
    assert calls == [argv[0]]


def test_other_commands_leave_the_allocator_as_it_starts(run_cli_all, monkeypatch, tmp_path):
    from MedDeepRecogLib import allocator

    calls = []
    monkeypatch.setattr(allocator, "reuse_freed_memory", lambda: calls.append(1) or False)
    code, _, err = run_cli_all("info", tmp_path / "missing.nii.gz")
    assert code == 2 and "missing" in err, err
    assert calls == []
