"""Which of a scan's axial slices a slice view shows, as the core counts them (numpy only).

A 2D model classifies the axial slices of the scan's LPS view (:func:`..io.geometry.lps_view`), and ``classify
--slice-mm S`` picks the one whose centre lies nearest the superior coordinate ``S``
(:func:`..inference.model_input.nearest_axial_slice`). The Slicer view shows a plane somewhere in the scene, not
an index: on a tilted scan, a scan under a transform, or a view that is not axial, its offset is not that ``S``.
These functions work in the scan's own RAS (``IJKToRAS``; the panel maps the view into it through the scan's
parent transform) and return the ``S`` of the centre of the slice that holds the view's centre, so the core takes
exactly that slice, and back again for a row of the per-slice table.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..axes import lps_axis_order

#: A view whose plane is tilted more than this against the scan's axial slices shows no one slice of them.
MAX_VIEW_TILT_DEG = 10.0

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def _axial_axis(ijk_to_ras: np.ndarray) -> int:
    """The IJK axis the core classifies slices along: the index axis nearest S (:func:`..axes.lps_axis_order`)."""
    columns = _RAS_TO_LPS @ np.asarray(ijk_to_ras, dtype=float)[:3, :3]
    perm, _ = lps_axis_order(columns / np.linalg.norm(columns, axis=0))
    return perm[2]


def _slice_centre(ijk_to_ras: np.ndarray, dims: Sequence[int], axis: int, k: int) -> np.ndarray:
    """RAS centre (mm) of slice ``k`` along IJK ``axis``."""
    ijk = (np.asarray(dims, dtype=float) - 1) / 2
    ijk[axis] = k
    return (np.asarray(ijk_to_ras, dtype=float) @ np.append(ijk, 1.0))[:3]


def axial_slice_in_view(ijk_to_ras: np.ndarray, dims: Sequence[int], point_ras: Sequence[float],
                        normal_ras: Sequence[float], max_tilt_deg: float = MAX_VIEW_TILT_DEG,
                        view_offset_mm: float | None = None) -> float:
    """The ``--slice-mm`` value for the scan's axial slice that holds ``point_ras``.

    Args:
        ijk_to_ras: the scan's 4x4 IJK-to-RAS matrix (its own coordinates, before any parent transform).
        dims: the scan's voxel counts along I, J, K.
        point_ras: the view's centre in the scan's own RAS (mm).
        normal_ras: the view plane's normal in the same coordinates.
        max_tilt_deg: the largest angle between the view and the scan's axial slices that still shows one slice.
        view_offset_mm: the view's slice offset as the user set it, quoted when the view lies beyond the scan
            (``None``: a point beyond the scan gives the centre of a slice outside it, which the core refuses with
            that centre and the scan's range).

    Returns:
        The superior coordinate (mm) of the centre of that slice.

    Raises:
        ValueError: the view is tilted more than ``max_tilt_deg`` against the scan's axial slices (a sagittal or
            coronal view, or an oblique reformat), so it shows no one of the slices a 2D model classifies; or, with
            ``view_offset_mm``, its centre lies beyond the scan's first or last axial slice (more than half a slice
            out, as the core counts it), quoting that offset and the scan's range rather than a slice's centre.
    """
    m = np.asarray(ijk_to_ras, dtype=float)
    axis = _axial_axis(m)
    slice_normal = m[:3, axis] / np.linalg.norm(m[:3, axis])
    normal = np.asarray(normal_ras, dtype=float)
    cosine = abs(float(slice_normal @ normal)) / max(float(np.linalg.norm(normal)), 1e-12)
    tilt = math.degrees(math.acos(min(1.0, cosine)))
    if tilt > max_tilt_deg:
        raise ValueError(f"the view is {tilt:.0f}° from the scan's axial slices, which a 2D model classifies: "
                         "set the red view to Axial (or 'Rotate to volume plane' for a tilted scan) and try again")
    index = np.linalg.solve(m, np.append(np.asarray(point_ras, dtype=float), 1.0))[:3]
    k = int(round(float(index[axis])))
    n = int(dims[axis])
    if view_offset_mm is not None and not 0 <= k < n:
        ends = sorted(float(_slice_centre(m, dims, axis, i)[2]) for i in (0, n - 1))
        span = (f"its {n} axial slices run from S {ends[0]:.1f} to {ends[1]:.1f} mm" if n > 1 else
                f"its one slice lies at S {ends[0]:.1f} mm")
        raise ValueError(f"the red view's slice offset {float(view_offset_mm):g} lies outside the scan: {span}")
    return float(_slice_centre(m, dims, axis, k)[2])


def axial_slice_centre(ijk_to_ras: np.ndarray, dims: Sequence[int], superior_mm: float) -> np.ndarray:
    """RAS centre (mm, the scan's own coordinates) of the axial slice whose centre lies nearest ``superior_mm``:
    where the view goes for a row of the per-slice table (whose ``position_mm`` is that centre's S)."""
    m = np.asarray(ijk_to_ras, dtype=float)
    axis = _axial_axis(m)
    centres = np.array([_slice_centre(m, dims, axis, k) for k in range(int(dims[axis]))])
    return centres[int(np.argmin(np.abs(centres[:, 2] - float(superior_mm))))]
