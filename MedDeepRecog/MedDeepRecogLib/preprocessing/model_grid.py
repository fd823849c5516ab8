"""Where a model's input sits in physical space, and a scan resampled onto a volume model's grid.

The one home of :class:`ModelGrid`, :class:`VolumeInput` and :func:`volume_from_image`, below the layers that use
them: ``classify`` (``inference/model_input``) feeds a volume model with :func:`volume_from_image`, and ``train``
reads a folder of volumes through the same function (``training/data``), so both give the network the same array.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import SimpleITK as sitk

from ..errors import ModelPackageError
from ..io.geometry import lps_view


@dataclass
class ModelGrid:
    """Physical placement of a model-space map: an ITK-style grid (LPS, mm) of ``size`` (x, y, z)."""

    origin: np.ndarray
    spacing: np.ndarray
    direction: np.ndarray
    size: tuple[int, int, int]

    def image_from(self, array_zyx: np.ndarray) -> sitk.Image:
        """A float32 SimpleITK image holding ``array_zyx`` (shape ``size`` reversed) on this grid."""
        if tuple(array_zyx.shape) != tuple(reversed(self.size)):
            raise ValueError(f"map shape {array_zyx.shape} does not match grid {tuple(reversed(self.size))}")
        img = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx, dtype=np.float32))
        img.SetOrigin(tuple(float(v) for v in self.origin))
        img.SetSpacing(tuple(float(v) for v in self.spacing))
        img.SetDirection(tuple(float(v) for v in self.direction.reshape(-1)))
        return img


@dataclass
class VolumeInput:
    """``volume3d``/``roi3d`` model input: ``x`` is ``(1, C, D, H, W)`` float32 on ``grid``."""

    x: np.ndarray
    grid: ModelGrid
    extra: dict = field(default_factory=dict)


def volume_from_image(image: sitk.Image, spec: Mapping[str, Any]) -> VolumeInput:
    """Resample ``image`` to the model's ``size`` ``(D, H, W)`` in LPS orientation (linear interpolation).

    With ``spacing_mm`` (x, y, z) set, the grid is ``size`` voxels of that spacing centred on the scan;
    otherwise it spans the scan's whole extent.

    Raises:
        ModelPackageError: if the package needs more than one channel or has no 3D ``size``.
    """
    channels = int(spec.get("channels", 1))
    if channels != 1:
        raise ModelPackageError(f"the model expects {channels} input channels (modalities), but a single scan "
                                "gives one; the other modality is missing")
    size_dhw = spec.get("size")
    if not size_dhw or len(size_dhw) != 3:
        raise ModelPackageError(f"a volume model needs input.size with 3 values, got {size_dhw!r}")
    size_xyz = np.array(list(reversed([int(s) for s in size_dhw])))
    view = lps_view(image)
    extent = np.array(view.array.shape[::-1]) * view.spacing  # (x, y, z) mm, LPS view order
    if spec.get("spacing_mm"):
        spacing = np.array([float(s) for s in spec["spacing_mm"]], dtype=float)
    else:
        spacing = extent / size_xyz
    centre_idx = (np.array(view.array.shape[::-1]) - 1) / 2.0
    centre = view.origin + view.direction @ (centre_idx * view.spacing)
    origin = centre - view.direction @ ((size_xyz - 1) / 2.0 * spacing)
    grid = ModelGrid(origin=origin, spacing=spacing, direction=view.direction, size=tuple(int(s) for s in size_xyz))
    ref = grid.image_from(np.zeros(tuple(reversed(grid.size)), dtype=np.float32))
    src = image if image.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(image, sitk.sitkFloat32)
    # Fill outside the scan with its minimum (air for CT, background for MR), not 0 which is water in HU.
    fill = float(np.min(sitk.GetArrayViewFromImage(image)))
    out = sitk.Resample(src, ref, sitk.Transform(), sitk.sitkLinear, fill, sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(out)[None, None]
    return VolumeInput(x=arr.astype(np.float32, copy=False), grid=grid)
