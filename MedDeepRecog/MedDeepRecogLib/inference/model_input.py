"""Scan → model input, per the package's ``input.kind``, keeping the geometry needed to map heatmaps back.

Two kinds are handled:

- ``slices2d``: a 2D network applied to axial slices. The volume is viewed in LPS order **without copying it**
  (permuted/flipped numpy views, see :func:`..io.geometry.lps_view`), up to ``max_slices`` evenly spaced axial
  slices are taken, block-averaged in-plane to a working grid of about ``work_size`` pixels and standardised by
  :func:`..preprocessing.slices.standardise_slices` (intensity scaling to 0..1, crop to the body's box, square in mm,
  resize to the model's ``size``), the function training uses too, so training and inference see identical inputs.
- ``volume3d`` / ``roi3d``: the whole volume resampled (SimpleITK, linear) to ``size`` voxels, covering the scan's
  extent (or a centred field of ``size * spacing_mm`` when ``spacing_mm`` is set), in LPS orientation.

Every result carries a :class:`ModelGrid`: where each model-space value sits in physical space (LPS, mm), so
:mod:`MedDeepRecogLib.inference.heatmap` can resample maps onto the input's own grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import SimpleITK as sitk

from ..errors import InputImageError, ModelPackageError
from ..io.geometry import lps_view
from ..io.image_io import as_volume  # noqa: F401 (re-exported)
from ..io.dicom_read import dicom_modality
from ..preprocessing.mask_input import (  # noqa: F401 (re-exported: classify's content rules live there)
    MASK_VALUE, MAX_SHARE_OUTSIDE_FIELD, LabelMapError, check_input_content, image_for_model)
from ..preprocessing.model_grid import ModelGrid, VolumeInput, volume_from_image  # noqa: F401 (re-exported)
from ..preprocessing.slices import (SLICE_DEFAULTS, block_mean, slice_options, standardise_slices,
                                    work_grid_factors)

if TYPE_CHECKING:  # annotations only: torch is imported where it runs
    import torch

@dataclass
class SliceInput:
    """``slices2d`` model input.

    Attributes:
        x: ``(N, 1, H, W)`` float32 in 0..1, one standardised axial slice per row.
        slice_index: ``(N,)`` axial index of each slice in the LPS view (0 = most inferior).
        valid: ``(N,)`` bool, False for near-empty slices (kept for the heatmap grid, not voted).
        theta: ``(N, 2, 3)`` affine (``torch.nn.functional.affine_grid`` convention, ``align_corners=False``)
            from the model image to the working slice, in normalised coordinates.
        grid: where the working slices sit in physical space (heatmaps are put on it before resampling).
        work_shape: ``(Hw, Ww)`` of the working slices.
        display: ``(N, Hw, Ww)`` float32 0..1 working slices (for overlays and checks).
        extent_mm: ``(N, 2)`` height and width (mm) of each slice's body box.
    """

    x: np.ndarray
    slice_index: np.ndarray
    valid: np.ndarray
    theta: np.ndarray
    grid: ModelGrid
    work_shape: tuple[int, int]
    display: np.ndarray
    extent_mm: np.ndarray | None = None
    foreground_threshold: float | None = None  # the package's body threshold on ``display`` (``None``: default)
    whole_image_is_body: bool = False  # ultrasound: every pixel is tissue (see :func:`whole_image_is_body`)
    #: ``(N,)`` bool: the slices whose CT table was blanked (``input.slices.remove_table``); ``None`` when the
    #: package does not ask for it
    table_blanked: np.ndarray | None = None
    #: ``(N,)`` model-input units per unit of the scan's intensity (per HU for CT) on each slice: the slope of the
    #: slice standardisation (:attr:`..preprocessing.slices.StandardisedSlices.gain`); ``None`` when not known
    gain: np.ndarray | None = None

    def body(self, images: np.ndarray | "torch.Tensor") -> np.ndarray | "torch.Tensor":
        """Which pixels of ``images`` (``(..., H, W)`` on the 0..1 scale of ``display`` and of the model input) lie
        in the body: those above the package's foreground threshold, or all of them for ultrasound
        (:func:`whole_image_is_body`). The one body decision of the heatmap's clearing (:func:`.predict.body_masks`
        adds closing and hole filling on the working slices) and of lesion reliance (on the model grid); a bool
        array or tensor like ``images``."""
        import torch

        if self.whole_image_is_body:
            if isinstance(images, torch.Tensor):
                return torch.ones_like(images, dtype=torch.bool)
            return np.ones(np.shape(images), dtype=bool)
        threshold = (SLICE_DEFAULTS["foreground_threshold"] if self.foreground_threshold is None
                     else self.foreground_threshold)
        return images > float(threshold)


# --------------------------------------------------------------------------------------------- 2D slices
def is_hounsfield(image: sitk.Image) -> bool:
    """True for CT in HU: DICOM modality CT, or air present (0.5th intensity percentile below -500).

    Estimated on a strided subsample of about 200,000 voxels, so a 512x512x300 CT costs milliseconds.
    """
    tag = dicom_modality(image)
    if tag in ("CT", "MR"):
        return tag == "CT"
    flat = sitk.GetArrayViewFromImage(image).reshape(-1)
    arr = flat[:: max(1, flat.size // 200_003)]
    return bool(arr.size) and float(np.percentile(arr, 0.5)) < -500


def nearest_axial_slice(image: sitk.Image, superior_mm: float, source=None) -> tuple[int, float]:
    """``(k, s_k)``: the axial slice (index of the LPS view, 0 = most inferior) whose centre is nearest to the
    superior coordinate ``superior_mm`` (the same number in LPS and RAS: Slicer's axial slice offset), and the
    superior coordinate of that slice's centre, the ``position_mm`` that classify reports for it. On a tilted scan
    a slice's corner and centre lie at different heights, so centres are what both sides count.

    Raises:
        InputImageError: ``superior_mm`` is not a number, or lies more than half a slice beyond the scan's first or
            last slice (naming ``source`` and the scan's range), rather than silently taking the edge slice.
    """
    view = lps_view(image)
    nz, ny, nx = view.array.shape
    step = view.direction[2, 2] * view.spacing[2]
    in_plane_centre = view.direction[2, :2] @ (np.array([nx - 1, ny - 1]) / 2 * view.spacing[:2])
    s = view.origin[2] + in_plane_centre + step * np.arange(nz)
    half = abs(step) / 2
    target = float(superior_mm)
    if not (np.isfinite(target) and s.min() - half <= target <= s.max() + half):
        span = (f"its {nz} axial slices run from S {s.min():.1f} to {s.max():.1f} mm" if nz > 1 else
                f"its one slice lies at S {s[0]:.1f} mm")
        raise InputImageError(f"--slice-mm {superior_mm:g} lies outside the scan: {span}", source)
    k = int(np.argmin(np.abs(s - target)))
    return k, float(s[k])


def whole_image_is_body(modality: str | None) -> bool:
    """Whether every pixel of a ``modality`` image lies in the body. True for ultrasound (``US``): the image shows
    only what lies under the transducer, and dark there is anechoic or shadowed tissue (a cyst, a mass, its
    posterior acoustic shadow), not air, so no intensity threshold may tell body from background: one would clear
    the heatmap on the very lesion, and more so where its shadow reaches the image edge."""
    return str(modality or "").upper() == "US"


def slices_from_image(image: sitk.Image, spec: Mapping[str, Any], only_slice: int | None = None, *,
                      whole_image_body: bool = False) -> SliceInput:
    """Build the ``slices2d`` input of a 3D ``image`` (see the module docstring for the steps).

    ``only_slice``: classify that one axial slice (an index of the LPS view) instead of the evenly spaced stack.
    ``whole_image_body``: every pixel is body (:func:`whole_image_is_body` of the package's modality).

    Raises:
        ModelPackageError: if the package asks for more than one channel (one scan is one channel).
    """
    channels = int(spec.get("channels", 1))
    if channels != 1:
        raise ModelPackageError(f"the model expects {channels} input channels (modalities) per slice, but a "
                                "single scan gives one; provide a model trained on one channel")
    opt = slice_options(spec)
    size = tuple(int(s) for s in (spec.get("size") or (64, 64)))
    view = lps_view(image)
    nz, ny, nx = view.array.shape
    step = max(1, int(np.ceil(nz / int(opt["max_slices"]))))
    count = int(np.ceil(nz / step))
    z0 = max(0, (nz - 1 - (count - 1) * step) // 2)
    z_index = z0 + step * np.arange(count)
    z_index = z_index[z_index < nz]
    if only_slice is not None:
        step, z_index = 1, np.array([int(only_slice)])
    fy, fx = work_grid_factors((ny, nx), (view.spacing[1], view.spacing[0]), int(opt["work_size"]))
    work_slices = block_mean(view.array[z_index], fy, fx)
    spacing_w = np.array([view.spacing[0] * fx, view.spacing[1] * fy, view.spacing[2] * step])
    std = standardise_slices(work_slices, (spacing_w[1], spacing_w[0]), size=size, options=opt,
                             hounsfield=is_hounsfield(image))
    # Working pixel (i, j, k) centre = LPS-view index ((i + .5) fx - .5, (j + .5) fy - .5, z0 + k step).
    offset = np.array([(fx - 1) / 2.0, (fy - 1) / 2.0, float(z_index[0])]) * view.spacing
    origin = view.origin + view.direction @ offset
    grid = ModelGrid(origin=origin, spacing=spacing_w, direction=view.direction,
                     size=(work_slices.shape[2], work_slices.shape[1], work_slices.shape[0]))
    return SliceInput(x=std.x, slice_index=z_index, valid=std.valid, theta=std.theta, grid=grid,
                      work_shape=work_slices.shape[1:], display=std.scaled, extent_mm=std.extent_mm,
                      foreground_threshold=float(opt["foreground_threshold"]), whole_image_is_body=whole_image_body,
                      table_blanked=std.table_pixels > 0 if opt.get("remove_table") else None, gain=std.gain)
