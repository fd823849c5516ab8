"""Which index axis of a scan is its left-right, front-back and axial axis (numpy only).

One rule, used wherever a scan is seen in LPS order: by the core's :func:`.io.geometry.lps_view` (model inputs,
heatmaps, the slices a 2D model classifies) and by the Slicer module's "Classify current slice"
(:mod:`.slicer_bridge.slice_geometry`), so that the slice the panel asks for is the slice the core counts. It
imports nothing heavier than numpy, because the Slicer module imports it at start-up.
"""

from __future__ import annotations

import numpy as np


def lps_axis_order(direction: np.ndarray) -> tuple[list[int], list[int]]:
    """``(perm, signs)`` for a 3x3 direction matrix (columns: the index axes' unit directions, LPS).

    ``perm[k]`` is the index axis nearest physical axis ``k`` (0 = L, 1 = P, 2 = S) and ``signs[k]`` is +1 when
    that index axis runs towards +L / +P / +S. Axes are assigned greedily, the largest cosine first, so an oblique
    scan gets the nearest orientation and every index axis is used once.
    """
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    perm = [-1, -1, -1]
    free_idx, free_phys = {0, 1, 2}, {0, 1, 2}
    for _ in range(3):
        k, i = max(((k, i) for k in sorted(free_phys) for i in sorted(free_idx)), key=lambda ki: abs(d[ki[0], ki[1]]))
        perm[k] = i
        free_phys.discard(k)
        free_idx.discard(i)
    signs = [1 if d[k, perm[k]] >= 0 else -1 for k in range(3)]
    return perm, signs
