"""Process-wide C allocator setting for the processes that run many gradient steps: the command line applies it to
``cli.GRADIENT_STEP_COMMANDS`` (``train``, ``pretrain``, ``finetune``, ``robustness``).

Why: glibc's ``malloc`` serves a block above its mmap threshold (128 KiB, raised adaptively to at most 32 MiB) with
fresh pages from the kernel and hands them back on ``free``. A training step frees and re-allocates its
activations and gradients, tens to hundreds of MB, every step, so every step page-faults and the kernel zeroes those
pages again. Measured on this project's 2-core CPU (2 threads, a few steps each, the process as it starts against
the same with this setting; 2026-12-05): the class-evidence network (batch 32 at 128x128) 3.04 / 3.39 s -> 1.66 /
2.08 s, its system time 1.83 / 2.39 s -> 0.09 / 0.06 s (page faults about 1,000,000 -> 25,000-53,000); the
fine-tuning UNet (batch 8 at 64^3) 3.99 -> 3.04 s, peak resident memory 1.25 -> 1.46 GB; the brain ResNet within
the machine's noise (2.24 / 1.94 -> 1.56 / 1.97 s). ``python bench/disease.py`` and ``python bench/finetune.py``
print the figures of the training loops themselves.

The setting keeps freed blocks in the heap for the next step (``mallopt``: mmap threshold and trim threshold 1 GiB).
The price: the process keeps its peak memory resident instead of returning it between steps (+17 % peak for the
UNet above), which for a training loop is its steady state anyway; ``MEDDEEPRECOG_KEEP_FREED_MEMORY=0`` turns it
off where memory is tighter than time. Applied only where glibc is the C library (Linux); elsewhere nothing changes.
This is a hand-written ``ctypes`` call rather than a dependency: jemalloc or tcmalloc would need ``LD_PRELOAD``
before the process starts, which neither ``pip`` nor Slicer's worker process can arrange.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

#: glibc's ``mallopt`` parameters (``malloc.h``).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Set to ``0`` to leave the allocator as the process starts.
KEEP_ENV = "MEDDEEPRECOG_KEEP_FREED_MEMORY"
#: Blocks up to this size come from (and go back to) the heap; so does freed memory up to this size at its top.
KEEP_BYTES = 1 << 30


def reuse_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the kernel (see the module docstring).

    Returns True when applied, False where the C library is not glibc or refused the setting, or where
    :data:`KEEP_ENV` is ``0``."""
    if os.environ.get(KEEP_ENV, "").strip() == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    applied = bool(mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))
    logging.getLogger(__name__).debug("malloc keeps freed memory for reuse: %s", applied)
    return applied
