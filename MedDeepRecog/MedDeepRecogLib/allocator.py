"""Process-wide C allocator setting for the processes that run many gradient steps: ``train``, ``pretrain``,
``finetune`` and ``robustness`` (attacks, adversarial training).

Why: glibc's ``malloc`` serves a block above its mmap threshold (128 KiB, raised adaptively to at most 32 MiB) with
fresh pages from the kernel and hands them back on ``free``. A training step frees and re-allocates its
activations and gradients, tens to hundreds of MB, every step, so every step page-faults and the kernel zeroes those
pages again. Measured on this project's 2-core CPU (one thread, batch 32 at 128x128, channels-last): the
class-evidence network spent 1.40 s of system time against 2.35 s of user time over 4 steps (680,919 page faults);
with the setting below 0.07 s (49,153 faults), and the steps ran 1.8x faster; the brain ResNet's steps 1.13x
(``python bench/disease.py`` part 3 prints the figures of the training loop itself).

The setting keeps freed blocks in the heap for the next step (``mallopt``: mmap threshold and trim threshold 1 GiB).
The price: the process keeps its peak memory resident instead of returning it between steps, which for a training
loop is its steady state anyway. Applied only where glibc is the C library (Linux); elsewhere nothing changes.
This is a hand-written ``ctypes`` call rather than a dependency: jemalloc or tcmalloc would need ``LD_PRELOAD``
before the process starts, which neither ``pip`` nor Slicer's worker process can arrange.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

#: glibc's ``mallopt`` parameters (``malloc.h``).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Blocks up to this size come from (and go back to) the heap; so does freed memory up to this size at its top.
KEEP_BYTES = 1 << 30


def reuse_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the kernel (see the module docstring).

    Returns True when applied, False where the C library is not glibc or refused the setting."""
    if not sys.platform.startswith("linux"):
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
