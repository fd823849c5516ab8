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
measured), only when a C++ compiler is on the machine (inductor writes C++ for the CPU; Slicer's Python on Windows
usually has none), and only when the compile pays: in runs of at least :data:`AUTO_MIN_STEPS` optimiser steps, or in
runs of at least :data:`AUTO_WARM_MIN_STEPS` when inductor's disk cache already holds this network's compiled steps at
the run's batch shape (a compile of about 1-3.5 s instead of about 30; :func:`compiled_graph_marker`), as it does
after one compiled run (``training/compile: true``, or a long run) on a machine. ``true`` compiles whatever the
network and device. Either way a compile that fails falls back to the eager network with a warning
(:func:`..loop.fit` does this at the first step). Only the training forward/backward is compiled: validation,
checkpoints and the saved package use the eager module, whose weights are the same tensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

#: ``auto`` compiles runs of at least this many optimiser steps. The fine-tuning UNet on 2 threads: the first compile
#: takes about 28-36 s (1 s when inductor's disk cache already holds the graph) and saves about 0.2 s per step, so it
#: is paid back after about 150 steps; the default fine-tune (80 steps) stays eager unless the cache is warm.
AUTO_MIN_STEPS = 300

#: ``auto`` compiles a shorter run from a warm compile cache only from this many steps on. A compile from the cache
#: still costs about 3.5 s in a new process (importing the compiler, tracing, loading the kernels; 0.9 s in one that
#: has compiled before). The default fine-tune (80 steps of 8 patches of 64³) saves about 0.24 s a step compiled, so
#: it repays that about five times over; a 20-step run of 8 patches of 32x64x64 saved 0.03 s a step and took 2.6 s
#: longer compiled (``meddeeprecog finetune`` on the TotalSegmentator example CT, 2 threads, 2026-12-04).
AUTO_WARM_MIN_STEPS = 50


@dataclass(frozen=True)
class CompileDecision:
    """Whether the training steps run compiled, and why (logged, and kept in the training history)."""

    compile: bool
    reason: str
    #: a run too short to pay back a cold compile, otherwise one ``auto`` would compile: it compiles after all if
    #: its first batch finds the compile cache holding this network at that batch's shape (:func:`warm_decision`)
    if_cache_holds: bool = False


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
    if cxx_compiler() is None:
        return CompileDecision(False, "auto: no C++ compiler found (set CXX), which torch.compile needs on the CPU")
    if steps < AUTO_WARM_MIN_STEPS:
        return CompileDecision(False, f"auto: {steps} optimiser steps are too few to pay back even a compile from "
                                      f"the cache (at least {AUTO_WARM_MIN_STEPS})")
    if steps < AUTO_MIN_STEPS:
        return CompileDecision(False, f"auto: {steps} optimiser steps are too few to pay back the compile "
                                      f"(at least {AUTO_MIN_STEPS}, or {AUTO_WARM_MIN_STEPS} with a compile cache "
                                      "that holds this network)", if_cache_holds=True)
    return CompileDecision(True, f"auto: a 3D network on the CPU for {steps} optimiser steps")


def warm_decision(decision: CompileDecision, model: nn.Module, device: torch.device,
                  batch_shape: tuple[int, ...]) -> CompileDecision:
    """``decision`` revised at a run's first batch: a short run (``if_cache_holds``) compiles when a compiled run of
    the same network at the same batch shape noted that inductor's disk cache holds its steps."""
    if decision.compile or not decision.if_cache_holds:
        return decision
    marker = compiled_graph_marker(model, device, batch_shape)
    if marker is not None and marker.is_file():
        return CompileDecision(True, f"auto: a run under {AUTO_MIN_STEPS} optimiser steps, but the compile cache "
                                     f"holds this network's compiled steps at batch shape {list(batch_shape)} (a "
                                     "compile of a few seconds)")
    return decision


def compiled_graph_marker(model: nn.Module, device: torch.device, batch_shape: tuple[int, ...]) -> Path | None:
    """Where a run notes that inductor's disk cache holds ``model``'s compiled training steps for batches of
    ``batch_shape``; ``None`` when inductor's cache folder cannot be found.

    The note lives inside inductor's own cache folder (``TORCHINDUCTOR_CACHE_DIR``, by default under the system's
    temporary folder), so whatever clears that cache clears the note with it. It is named by a hash of what makes
    inductor's cache key for these steps: the torch version, the device type, the network's structure
    (``str(model)``: layers, channels, kernels) and the input's shape."""
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir
        folder = Path(cache_dir())
    except Exception:  # a torch without inductor, or the helper moved: no note, never a failure
        return None
    key = f"{torch.__version__}\n{device.type}\n{list(batch_shape)}\n{model}"
    return folder / "meddeeprecog-compiled" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def note_compiled(model: nn.Module, device: torch.device, batch_shape: tuple[int, ...]) -> None:
    """Record, after a first compiled training step succeeded, that the compile cache now holds ``model``'s steps
    at ``batch_shape`` (:func:`compiled_graph_marker`). Written atomically; a cache folder that cannot be written
    only loses the note."""
    marker = compiled_graph_marker(model, device, batch_shape)
    if marker is None:
        return
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_name(f".{marker.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"torch": torch.__version__, "device": device.type, "batch_shape": list(batch_shape),
                                   "network": type(model).__name__}), encoding="utf-8")
        os.replace(tmp, marker)
    except OSError:
        pass


def batch_shape(batch) -> tuple[int, ...] | None:
    """The shape of a batch's first tensor (the images: a tensor, or the first of a list / tuple / dict)."""
    if isinstance(batch, torch.Tensor):
        return tuple(batch.shape)
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for value in values:
        shape = batch_shape(value)
        if shape is not None:
            return shape
    return None


def compiled(net: nn.Module) -> nn.Module:
    """``torch.compile(net)`` with static shapes: a smaller last batch compiles once more for its own shape instead
    of a slower shape-generic graph."""
    return torch.compile(net, dynamic=False)
