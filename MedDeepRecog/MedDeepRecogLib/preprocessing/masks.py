"""Segmentation steps: thresholds (Otsu, manual), edges (Canny, gradient magnitude), lung / body / head masks.

Mask steps return a binary ``uint8`` image on the input grid; the pipeline keeps it under the step's ``segment`` name
(written as a segment by ``meddeeprecog preprocess --mask``). With ``apply: true`` the image is also set to its
minimum outside the mask. CT values are HU; sizes are mm / mL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import SimpleITK as sitk

from ..io import image_from_array
from .intensity import as_float32, float_array
from .steps import RECURSIVE_GAUSSIAN_MIN_SIDE, Grid, param, register, window_problem

#: Default segment colors (RGB 0..1) by mask name, close to Slicer's anatomy colors.
MASK_COLORS: dict[str, tuple[float, float, float]] = {
    "lungs": (0.77, 0.68, 0.56),
    "body": (0.89, 0.85, 0.79),
    "head": (0.89, 0.85, 0.79),
    "foreground": (0.50, 0.68, 0.50),
    "threshold": (0.44, 0.72, 0.82),
}


def _largest_components(mask: sitk.Image, keep: int = 1) -> sitk.Image:
    """The ``keep`` largest 3D connected components (face-connected) of a binary mask."""
    cc = sitk.RelabelComponent(sitk.ConnectedComponent(mask, False), sortByObjectSize=True)
    return sitk.Cast((cc > 0) & (cc <= keep), sitk.sitkUInt8)


def fill_holes_slicewise(mask: sitk.Image) -> sitk.Image:
    """Fill holes in every axial (k) slice; 3D hole filling misses cavities that open at the volume's ends."""
    arr = sitk.GetArrayFromImage(mask).astype(np.uint8)
    for k in range(arr.shape[0]):
        if arr[k].any():
            arr[k] = sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.GetImageFromArray(arr[k]), False, 1))
    return image_from_array(arr, mask)


def _radius_vox(image: sitk.Image | Grid, mm: float) -> list[int]:
    """A radius of ``mm`` in voxels per axis (x, y, z) on ``image``'s grid."""
    spacing = image.spacing if isinstance(image, Grid) else image.GetSpacing()
    return [max(0, int(round(mm / s))) for s in spacing]


#: the closing radius lung_mask uses (mm): vessels and airway walls at the lung border are bridged
LUNG_CLOSING_MM = 2.0


def _closing_problem(setting: str | None, mm: float, grid: Grid) -> str | None:
    """A closing ball of ``mm`` (from parameter ``setting``; None: the step's fixed closing) holding more than
    :data:`~..limits.MAX_MORPHOLOGY_WINDOW_VOXELS` on this grid (a 0.001 mm grid turned a 3 mm closing into a
    6001^3 ball that could not be allocated)."""
    from ..limits import MAX_MORPHOLOGY_WINDOW_VOXELS

    what = f"parameter {setting!r} {mm:g}" if setting else f"the step's fixed {mm:g} mm closing"
    fix = (f"give a smaller {setting!r} or " if setting else "") + "resample to a coarser spacing first"
    return window_problem(what, _radius_vox(grid, mm), MAX_MORPHOLOGY_WINDOW_VOXELS, grid, fix)


@dataclass(frozen=True)
class OtsuParams:
    segment: str = param("foreground", "segment name of the mask")
    bins: int = param(128, "histogram bins", minimum=8, maximum=4096)
    apply: bool = param(False, "also set the image to its minimum outside the mask")


@register("otsu", OtsuParams, kind="mask", summary="Otsu threshold: voxels above it form the mask",
          aliases=("otsu_threshold",))
def otsu(image: sitk.Image, p: OtsuParams) -> sitk.Image:
    return sitk.OtsuThreshold(as_float32(image), 0, 1, p.bins)


@dataclass(frozen=True)
class ThresholdParams:
    lower: float | None = param(None, "lowest intensity inside the mask (inclusive)")
    upper: float | None = param(None, "highest intensity inside the mask (inclusive)")
    segment: str = param("threshold", "segment name of the mask")
    apply: bool = param(False, "also set the image to its minimum outside the mask")

    def validate(self) -> str | None:
        if self.lower is None and self.upper is None:
            return "give 'lower' and/or 'upper'"
        if self.lower is not None and self.upper is not None and self.lower > self.upper:
            return "'lower' must not exceed 'upper'"
        return None


@register("threshold", ThresholdParams, kind="mask", summary="manual threshold: lower <= intensity <= upper")
def threshold(image: sitk.Image, p: ThresholdParams) -> sitk.Image:
    lo = -np.inf if p.lower is None else p.lower
    hi = np.inf if p.upper is None else p.upper
    return sitk.BinaryThreshold(as_float32(image), float(max(lo, -3.4e38)), float(min(hi, 3.4e38)), 1, 0)


@dataclass(frozen=True)
class CannyParams:
    sigma_mm: float = param(1.0, "Gaussian smoothing sigma in mm before edge detection", minimum=0.0)
    lower: float | None = param(None, "lower hysteresis threshold on gradient magnitude; "
                                      "default 0.5 x upper", minimum=0.0)
    upper: float | None = param(None, "upper hysteresis threshold; default the 90th percentile of "
                                      "the gradient magnitude", minimum=0.0)


#: Coefficients a side of the Gaussian kernel ITK's Canny filter smooths with, at most: its ``DiscreteGaussian``'s
#: ``MaximumKernelWidth`` (32), which SimpleITK's ``CannyEdgeDetection`` cannot raise. A sigma needing more is cut
#: there without a word, so the edges are those of another filter: on the TotalSegmentator example CT (3 mm voxels)
#: a larger sigma finds fewer edges up to 12 voxels (33,179 edge voxels), then more (42,889 at 15 voxels, 82,190 at
#: 20) and none at all from 30 (sigma_mm 90 or 100). The cut bounds the work (3 passes of at most 63 taps a voxel,
#: ~2 s on its 1.4 Mvox at any sigma; the default 1 mm 1 s), so the wrong result is what this limit refuses.
CANNY_MAX_KERNEL_SIDE = 32
#: Sigmas a kernel must reach out to on each side: the Gaussian beyond +-2.576 sigma holds 1 %, ITK's MaximumError
#: (0.01) (12-voxel sigma: 32 coefficients a side, the most; 12.5: 33).
_KERNEL_SIGMAS = 2.576


def _canny_problem(p: CannyParams, grid: Grid) -> str | None:
    """A ``sigma_mm`` whose Gaussian needs more than :data:`CANNY_MAX_KERNEL_SIDE` coefficients a side on this grid
    (the filter would cut it: edges of another sigma, none at all for a large one)."""
    sigma_vox = max(p.sigma_mm / s for s in grid.spacing)
    side = math.ceil(_KERNEL_SIGMAS * sigma_vox) + 1
    if side <= CANNY_MAX_KERNEL_SIDE:
        return None
    return (f"parameter 'sigma_mm' {p.sigma_mm:g} is a Gaussian of {sigma_vox:.3g} voxels on this scan's "
            f"{' x '.join(f'{s:g}' for s in grid.spacing)} mm spacing, whose kernel needs {2 * side - 1} voxels an "
            f"axis; ITK's Canny filter builds at most {2 * CANNY_MAX_KERNEL_SIDE - 1} and cuts the rest (the edges "
            "of another sigma, or none): give a smaller 'sigma_mm' (or resample to a coarser spacing first)")


@register("canny", CannyParams, summary="Canny edges (SimpleITK): 1 on edges, 0 elsewhere (float32)",
          check=_canny_problem, min_side=RECURSIVE_GAUSSIAN_MIN_SIDE)
def canny(image: sitk.Image, p: CannyParams) -> sitk.Image:
    img = as_float32(image)
    upper = p.upper
    if upper is None:
        grad = sitk.GradientMagnitudeRecursiveGaussian(img, max(p.sigma_mm, min(img.GetSpacing()) * 0.5))
        upper = float(np.percentile(sitk.GetArrayViewFromImage(grad), 90))
    lower = p.lower if p.lower is not None else 0.5 * upper
    variance = [(p.sigma_mm) ** 2] * 3
    return sitk.CannyEdgeDetection(img, min(lower, upper), upper, variance)


@dataclass(frozen=True)
class GradientParams:
    sigma_mm: float = param(1.0, "Gaussian derivative sigma in mm", minimum=1e-3)


@register("gradient_magnitude", GradientParams, summary="gradient magnitude of Gaussian (intensity/mm, float32)",
          aliases=("gradient",), min_side=RECURSIVE_GAUSSIAN_MIN_SIDE)
def gradient_magnitude(image: sitk.Image, p: GradientParams) -> sitk.Image:
    return sitk.GradientMagnitudeRecursiveGaussian(as_float32(image), p.sigma_mm)


@dataclass(frozen=True)
class LungParams:
    threshold_hu: float = param(-400.0, "voxels below this HU are air-like candidates")
    min_volume_ml: float = param(10.0, "drop candidate components smaller than this", minimum=0.0)
    max_pure_air_fraction: float = param(0.4, "a lung component has fewer voxels below -950 HU than this "
                                               "fraction (outside air, bowel gas and trachea are mostly below)",
                                         minimum=0.0, maximum=1.0)
    segment: str = param("lungs", "segment name of the mask")
    apply: bool = param(False, "also set the image to its minimum outside the mask")


@register("lung_mask", LungParams, kind="mask", summary="lungs from CT (HU): air-like components with "
                                                           "parenchyma density, holes (vessels) filled",
          reads_hu=True, check=lambda p, grid: _closing_problem(None, LUNG_CLOSING_MM, grid))
def lung_mask(image: sitk.Image, p: LungParams) -> sitk.Image:
    """Lung mask from a CT in HU.

    Candidates are connected regions below ``threshold_hu`` (after a 1-voxel median). Lung parenchyma sits
    around -850..-700 HU, while outside air, bowel gas and the trachea are nearly pure air (< -950 HU), so
    components that are mostly pure air are discarded: this works on crops where the lungs touch the border
    (no "remove what touches the border" rule). Vessels are filled slice by slice.
    """
    smooth = sitk.Median(image, [1, 1, 1])
    arr = sitk.GetArrayViewFromImage(smooth)
    air = image_from_array((arr < p.threshold_hu).astype(np.uint8), image)
    cc = sitk.ConnectedComponent(air, False)
    labels = sitk.GetArrayViewFromImage(cc).ravel()
    n = int(labels.max())
    if n == 0:
        return image_from_array(np.zeros(arr.shape, np.uint8), image)
    counts = np.bincount(labels, minlength=n + 1).astype(float)
    pure = np.bincount(labels, weights=(arr.ravel() < -950).astype(float), minlength=n + 1)
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    keep = (counts * voxel_ml >= p.min_volume_ml) & (pure <= p.max_pure_air_fraction * counts)
    keep[0] = False
    if keep.any():
        keep &= counts >= 0.05 * counts[keep].max()  # drop small leftovers next to real lungs
    lungs = image_from_array(keep[sitk.GetArrayViewFromImage(cc)].astype(np.uint8), image)
    if not keep.any():
        return lungs
    lungs = sitk.BinaryMorphologicalClosing(lungs, _radius_vox(image, LUNG_CLOSING_MM), sitk.sitkBall, 1)
    return fill_holes_slicewise(lungs)


@dataclass(frozen=True)
class BodyParams:
    modality: Literal["auto", "CT", "MR"] = param("auto", "CT: threshold in HU; MR: Otsu; auto: guess")
    threshold_hu: float = param(-500.0, "CT: voxels above this HU are tissue", )
    closing_mm: float = param(3.0, "closing radius in mm (bridges thin gaps in the skin)", minimum=0.0)
    mr_background: float = param(0.1, "MR: voxels brighter than this fraction of the 99th percentile are tissue "
                                      "too (Otsu alone splits fat from glandular tissue on a crop with little air)",
                                 minimum=0.0, maximum=1.0)
    segment: str = param("body", "segment name of the mask")
    apply: bool = param(False, "also set the image to its minimum outside the mask")


def _mr_smoothed(image: sitk.Image) -> sitk.Image:
    """The MR image smoothed at its in-plane voxel size, what both MR foreground rules threshold."""
    return sitk.SmoothingRecursiveGaussian(as_float32(image), max(image.GetSpacing()[:2]))


def _mr_tissue(smooth: sitk.Image, fraction: float) -> sitk.Image:
    """MR voxels of the smoothed image brighter than ``fraction`` of its 99th percentile (air is near 0 in MR)."""
    level = float(np.percentile(sitk.GetArrayViewFromImage(smooth), 99)) * fraction
    return sitk.BinaryThreshold(smooth, level, 3.4e38, 1, 0)


def _foreground(image: sitk.Image, modality: str, threshold_hu: float,
                smooth: sitk.Image | None = None) -> sitk.Image:
    """Tissue voxels: CT above ``threshold_hu`` (after a 3x3x3 median); MR by Otsu on ``smooth``
    (:func:`_mr_smoothed` of ``image``, computed here when not given)."""
    if modality == "CT":
        return sitk.BinaryThreshold(sitk.Median(as_float32(image), [1, 1, 1]), threshold_hu, 3.4e38, 1, 0)
    # Otsu on the whole histogram lands between background noise and tissue for MR
    return sitk.OtsuThreshold(_mr_smoothed(image) if smooth is None else smooth, 0, 1, 128)


def _solid(mask: sitk.Image, image: sitk.Image, closing_mm: float) -> sitk.Image:
    mask = _largest_components(mask, 1)
    if closing_mm > 0:
        radius = _radius_vox(image, closing_mm)
        # pad so that closing does not stick to the volume border
        pad = [r + 1 for r in radius]
        padded = sitk.ConstantPad(mask, pad, pad, 0)
        closed = sitk.BinaryMorphologicalClosing(padded, radius, sitk.sitkBall, 1)
        mask = sitk.Crop(closed, pad, pad)
    mask = fill_holes_slicewise(mask)
    return _largest_components(mask, 1)


@register("body_mask", BodyParams, kind="mask", summary="body (or head) outline from CT (HU threshold) or MR (Otsu)",
          reads_hu=lambda p: p.modality == "CT", reads_mr=lambda p: p.modality == "MR",
          # MR (and "auto", which may choose MR) smooths with a recursive Gaussian; CT thresholds a median
          min_side=lambda p: 1 if p.modality == "CT" else RECURSIVE_GAUSSIAN_MIN_SIDE,
          check=lambda p, grid: _closing_problem("closing_mm", p.closing_mm, grid))
def body_mask(image: sitk.Image, p: BodyParams) -> sitk.Image:
    """Largest tissue component, closed and with holes (lungs, bowel gas) filled slice by slice.

    MR: Otsu's class above the background, or brighter than ``mr_background`` of the 99th percentile: on a breast
    crop with almost no air Otsu's threshold falls between fat and glandular tissue, and the mask alone would keep
    a few percent of the breast.
    """
    modality = p.modality
    if modality == "auto":
        from ..io.image_content import guess_modality

        modality = "CT" if guess_modality(image) == "CT" else "MR"
    smooth = _mr_smoothed(image) if modality == "MR" else None
    foreground = _foreground(image, modality, p.threshold_hu, smooth)
    if modality == "MR" and p.mr_background > 0:
        foreground = sitk.Or(foreground, _mr_tissue(smooth, p.mr_background))
    return _solid(foreground, image, p.closing_mm)


@dataclass(frozen=True)
class HeadParams:
    closing_mm: float = param(5.0, "closing radius in mm", minimum=0.0)
    segment: str = param("head", "segment name of the mask")
    apply: bool = param(False, "also set the image to its minimum outside the mask")


@register("head_mask", HeadParams, kind="mask", summary="head (brain, skull, scalp) from MR: Otsu, largest "
                                                           "component, closed, holes filled",
          min_side=RECURSIVE_GAUSSIAN_MIN_SIDE, reads_mr=True,
          check=lambda p, grid: _closing_problem("closing_mm", p.closing_mm, grid))
def head_mask(image: sitk.Image, p: HeadParams) -> sitk.Image:
    """Head mask from a brain MR (any weighting with dark background)."""
    return _solid(_foreground(image, "MR", 0.0), image, p.closing_mm)


def default_color(name: str) -> tuple[float, float, float] | None:
    """Color for a mask name (None lets the writer pick from its palette)."""
    return MASK_COLORS.get(name)


def apply_mask(image: sitk.Image, mask: sitk.Image) -> sitk.Image:
    """``image`` with voxels outside ``mask`` set to the image minimum (float32)."""
    arr = float_array(image)
    inside = sitk.GetArrayViewFromImage(mask) > 0
    out = np.where(inside, arr, arr.min()).astype(np.float32)
    return image_from_array(out, image)
