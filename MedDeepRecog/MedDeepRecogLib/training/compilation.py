"""``torch.compile`` for the training steps (``training/compile: auto | true | false``).

What was measured on this project's 2-core CPU (torch 2.13, inductor; ``bench/finetune.py`` for the first):

- the fine-tuning UNet (MONAI ``UNet`` 16-32-64-128, instance norm, 64³ patches, batch 8, channels-last-3d): a
  training step 1.2× faster compiled than eager on 2 threads (7.2 against 6.0 samples/s) after a first compile of
  28 s; on one thread 1.3× in the bench (3.18 against 2.50 samples/s, another job on the other core) and 1.9×
  on a bare forward/backward of random patches, after 45 s;
- the adrenal 3D classifier (``simple_cnn3d`` 16-32-64-128, batch norm, 32³, batch 32): 1.46× per step (0.97 →
  0.66 s on one thread), compile 25 s;
- the 2D disease networks (the ResNet, the class-evidence network and the plain CNN at 128², batch 32,
  channels-last) were no faster compiled (0.9-1.0× per step, compile 12-40 s).

So ``auto`` compiles only 3D networks (any ``Conv3d``), only on the CPU, only in one process (DDP + compile was not
measured), only when the run has at least :data:`AUTO_MIN_STEPS` optimiser steps to pay the compile back, and only
when a C++ compiler is on the machine (inductor writes C++ for the CPU; Slicer's Python on Windows usually has
none). ``true`` compiles whatever the network and device. Either way a compile that fails falls back to the eager
network with a warning (:func:`..loop.fit` does this at the first step). Only the training forward/backward is
compiled: validation, checkpoints and the saved package use the eager module, whose weights are the same tensors.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

#: ``auto`` compiles runs of at least this many optimiser steps. The fine-tuning UNet on 2 threads: the first compile
#: takes about 28 s (1 s when inductor's disk cache already holds the graph) and saves about 0.2 s per step, so it is
#: paid back after about 150 steps; the default fine-tune (80 steps) stays eager.
AUTO_MIN_STEPS = 300


@dataclass(frozen=True)
class CompileDecision:
    """Whether the training steps run compiled, and why (logged, and kept in the training history)."""

    compile: bool
    reason: str


def cxx_compiler() -> str | None:
    """Path of the C++ compiler inductor would use on the CPU (``$CXX``, else g++ / clang++ / c++), or ``None``."""
    for name in (os.environ.get("CXX"), "g++", "clang++", "c++"):
        path = shutil.which(name) if name else None
        if path:
            return path
    return None


def decide_compile(setting: Literal["auto"] | bool, model: nn.Module, device: torch.device, steps: int,
                   distributed: bool) -> CompileDecision:
    """Apply the ``training/compile`` rule (module docstring) to one run of ``steps`` optimiser steps."""
    if setting is False:
        return CompileDecision(False, "training/compile is false")
    if setting is True:
        return CompileDecision(True, "training/compile is true")
    if device.type != "cpu":
        return CompileDecision(False, f"auto: compiling was measured on the CPU only, not on {device.type}")
    if not any(isinstance(m, nn.Conv3d) for m in model.modules()):
        return CompileDecision(False, "auto: 2D networks trained no faster compiled")
    if distributed:
        return CompileDecision(False, "auto: not used under distributed data parallel")
    if steps < AUTO_MIN_STEPS:
        return CompileDecision(False, f"auto: {steps} optimiser steps are too few to pay back the compile "
                                      f"(at least {AUTO_MIN_STEPS})")
    if cxx_compiler() is None:
        return CompileDecision(False, "auto: no C++ compiler found (set CXX), which torch.compile needs on the CPU")
    return CompileDecision(True, f"auto: a 3D network on the CPU for {steps} optimiser steps")


def compiled(net: nn.Module) -> nn.Module:
    """``torch.compile(net)`` with static shapes: a smaller last batch compiles once more for its own shape instead
    of a slower shape-generic graph."""
    return torch.compile(net, dynamic=False)
