"""Where a scan's voxels sit in physical space (LPS, mm), without copying them.

- :class:`Geometry`: a scan's grid without its voxels (size, origin, spacing, direction), so a full-size output
  can be made on it after the scan's voxels are released.
- :func:`lps_view`: a 3D image seen in the axis order and sense nearest to LPS as a numpy view, with that view's
  geometry (:class:`LPSView`). Model inputs, heatmaps, overlays and localisation scores all index scans this way.
- :func:`physical_box`, :func:`overlap_fraction`: how much of one scan's space another covers (a segmentation on
  its scan, a second modality on the first).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np
import SimpleITK as sitk

from ..axes import lps_axis_order


@dataclass(frozen=True)
class Geometry:
    """A scan's grid without its voxels: ``size`` (x, y, z), ``origin``, ``spacing``, ``direction`` (LPS, mm)."""

    size: tuple
    origin: tuple
    spacing: tuple
    direction: tuple

    @classmethod
    def of(cls, image: sitk.Image) -> "Geometry":
        return cls(tuple(image.GetSize()), tuple(image.GetOrigin()), tuple(image.GetSpacing()),
                   tuple(image.GetDirection()))

    def new_image(self, pixel_type: int = sitk.sitkFloat32) -> sitk.Image:
        """A zero-filled image on this grid."""
        image = sitk.Image(list(self.size), pixel_type)
        image.SetOrigin(self.origin)
        image.SetSpacing(self.spacing)
        image.SetDirection(self.direction)
        return image


@dataclass
class LPSView:
    """A volume seen as an LPS-ordered ``(Z, Y, X)`` array view, with that view's geometry.

    ``array`` indexes the input's voxels (no copy); ``origin``/``spacing``/``direction`` describe the view as an
    ITK image would (x = L, y = P, z = S nearest axes, increasing index along +L, +P, +S).
    """

    array: np.ndarray
    origin: np.ndarray
    spacing: np.ndarray
    direction: np.ndarray  # 3x3, columns are the index axes' directions


def lps_view(image: sitk.Image, array: np.ndarray | None = None) -> LPSView:
    """View ``image`` (3D, one component) in the axis order and sense nearest to LPS, as a numpy view.

    Equivalent to ``sitk.DICOMOrient(image, "LPS")`` but without copying voxels (a 512x512x300 CT stays one copy).
    ``array``: another ``(Z, Y, X)`` array on ``image``'s grid to view the same way (e.g. a writable output buffer);
    default the image's own (read-only) voxels.
    """
    arr = sitk.GetArrayViewFromImage(image) if array is None else array  # (z, y, x) = index axes (2, 1, 0)
    d = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    size = np.array(image.GetSize())
    spacing = np.array(image.GetSpacing(), dtype=float)
    perm, signs = lps_axis_order(d)
    # numpy axis of index axis i is (2 - i); new numpy axis (2 - k) takes old numpy axis (2 - perm[k]).
    view = np.transpose(arr, [2 - perm[2 - a] for a in range(3)])
    slicer = tuple(slice(None, None, -1) if signs[2 - a] < 0 else slice(None) for a in range(3))
    view = view[slicer]
    corner = [0, 0, 0]
    for k in range(3):
        corner[perm[k]] = 0 if signs[k] > 0 else int(size[perm[k]] - 1)
    origin = np.array(image.TransformIndexToPhysicalPoint(corner), dtype=float)
    new_dir = np.stack([d[:, perm[k]] * signs[k] for k in range(3)], axis=1)
    new_spacing = np.array([spacing[perm[k]] for k in range(3)])
    return LPSView(array=view, origin=origin, spacing=new_spacing, direction=new_dir)


def physical_box(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned bounding box ``(low, high)`` (LPS, mm) of the image's voxel-edge corners."""
    size = np.array(image.GetSize(), dtype=float)
    # voxel centres are at integer indices, so the outer edges are at -0.5 and size - 0.5
    corners = [image.TransformContinuousIndexToPhysicalPoint(tuple(float(c) - 0.5 for c in np.array(sel) * size))
               for sel in product((0, 1), repeat=3)]
    pts = np.array(corners)
    return pts.min(0), pts.max(0)


def overlap_fraction(reference: sitk.Image, moving: sitk.Image) -> float:
    """Share of the reference's bounding box (by volume) that the moving image's box covers, 0..1."""
    lo_r, hi_r = physical_box(reference)
    lo_m, hi_m = physical_box(moving)
    inter = np.clip(np.minimum(hi_r, hi_m) - np.maximum(lo_r, lo_m), 0, None)
    vol_r = np.prod(hi_r - lo_r)
    return float(np.prod(inter) / vol_r) if vol_r > 0 else 0.0
