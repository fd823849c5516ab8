"""The search offsets the pair-weighted filters visit (:mod:`.fast_denoise` on torch, :mod:`.fused_denoise` on CPU).

A (2r+1)-box search visits each pair of voxels (c, c + o) once: the distance of the pair is the distance of
(c + o, c), so only one of ``o`` and ``-o`` is listed and both ends are credited.
"""

from __future__ import annotations

from typing import Sequence


def half_offsets(radius: Sequence[int]) -> list[tuple[int, int, int]]:
    """Offsets ``(dz, dy, dx)`` in the ``(2r+1)`` box that are lexicographically positive (one of each ±o pair,
    zero excluded)."""
    rz, ry, rx = radius
    return [(dz, dy, dx) for dz in range(0, rz + 1) for dy in range(-ry, ry + 1) for dx in range(-rx, rx + 1)
            if (dz, dy, dx) > (0, 0, 0)]
