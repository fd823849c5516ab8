"""Enhancement steps: CLAHE / adaptive histogram equalisation, gamma, contrast, N4 bias-field correction (MRI)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import SimpleITK as sitk

from ..io import image_from_array
from .intensity import as_float32, float_array
from .steps import Grid, check_params, param, register, window_problem


@dataclass(frozen=True)
class ClaheParams:
    kernel_mm: float = param(32.0, "contextual region size in mm (per axis, at least 3 voxels)", minimum=1.0)
    clip_limit: float = param(0.01, "CLAHE clip limit, 0..1 (higher = more contrast)", minimum=0.0, maximum=1.0)
    alpha: float = param(0.3, "sitk backend: 0 = classical equalisation, 1 = unsharp mask", minimum=0.0,
                         maximum=1.0)
    beta: float = param(0.3, "sitk backend: 0 = unsharp mask, 1 = pass-through", minimum=0.0, maximum=1.0)
    backend: Literal["auto", "skimage", "sitk"] = param(
        "auto", "skimage: tile-interpolated CLAHE (fast; used by auto when scikit-image is installed); "
                "sitk: AdaptiveHistogramEqualization (slow, per-voxel histograms)")


def _clahe_backend(p: ClaheParams) -> str:
    """The backend that runs: ``auto`` is ``skimage`` when scikit-image is installed, else ``sitk``."""
    if p.backend != "auto":
        return p.backend
    try:
        import skimage.exposure  # noqa: F401
    except ImportError:
        return "sitk"
    return "skimage"


def _clahe_kernel(p: ClaheParams, grid: Grid) -> list[int]:
    """The contextual region in voxels (z, y, x): ``kernel_mm`` over the spacing, at least 3."""
    return [max(3, int(round(p.kernel_mm / s))) for s in reversed(grid.spacing)]


def _skimage_clahe_regions(kernel_zyx: Sequence[int], grid: Grid) -> list[int]:
    """The region scikit-image is given (z, y, x): the kernel, at most the image."""
    return [min(k, n) for k, n in zip(kernel_zyx, reversed(grid.size))]


def _sitk_clahe_radius(kernel_zyx: Sequence[int]) -> list[int]:
    """SimpleITK's ``AdaptiveHistogramEqualization`` radius (x, y, z) for a kernel (z, y, x)."""
    return [max(1, k // 2) for k in reversed(kernel_zyx)]


def _clahe_problem(p: ClaheParams, grid: Grid) -> str | None:
    """Too much work for the backend that runs: more regions than :data:`~..limits.MAX_CLAHE_REGIONS` for
    scikit-image's (a histogram each: 1 mm regions on a 512 x 512 x 200 CT ran out of memory), a window of more than
    :data:`~..limits.MAX_FILTER_WINDOW_VOXELS` for SimpleITK's (a histogram of the whole window at every voxel)."""
    from ..limits import MAX_CLAHE_REGIONS, MAX_FILTER_WINDOW_VOXELS

    kernel = _clahe_kernel(p, grid)
    if _clahe_backend(p) == "sitk":
        return window_problem(f"parameter 'kernel_mm' {p.kernel_mm:g} (backend 'sitk')", _sitk_clahe_radius(kernel),
                              MAX_FILTER_WINDOW_VOXELS, grid, "give a smaller 'kernel_mm', or backend 'skimage'")
    region = _skimage_clahe_regions(kernel, grid)
    regions = math.prod(math.ceil(n / k) for n, k in zip(reversed(grid.size), region))
    if regions <= MAX_CLAHE_REGIONS:
        return None
    return (f"parameter 'kernel_mm' {p.kernel_mm:g} makes regions of {' x '.join(map(str, reversed(region)))} voxels "
            f"on this scan's {' x '.join(f'{s:g}' for s in grid.spacing)} mm spacing, {regions:,} of them (a "
            f"256-bin histogram each), above the limit of {MAX_CLAHE_REGIONS:,}: give a larger 'kernel_mm'")


#: scikit-image's CLAHE takes a 3D array whose last axis (x) has 3 or 4 voxels for an RGB(A) picture and fails
#: ("Incorrect value of `kernel_size`"): the skimage backend needs at least 5 voxels per axis.
SKIMAGE_CLAHE_MIN_SIDE = 5


@register("clahe", ClaheParams, summary="contrast-limited adaptive histogram equalisation (0..1 output)",
          aliases=("adaptive_histogram_equalization",), check=_clahe_problem,
          min_side=lambda p: SKIMAGE_CLAHE_MIN_SIDE if _clahe_backend(p) == "skimage" else 1)
def clahe(image: sitk.Image, p: ClaheParams) -> sitk.Image:
    """CLAHE on intensities rescaled from the 0.5..99.5 percentile range to 0..1; float32 0..1 out."""
    arr = float_array(image)
    lo, hi = np.percentile(arr, [0.5, 99.5])
    unit = np.clip((arr - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    grid = Grid.of(image)
    kernel = _clahe_kernel(p, grid)
    if _clahe_backend(p) == "skimage":
        from skimage.exposure import equalize_adapthist

        out = equalize_adapthist(unit, kernel_size=_skimage_clahe_regions(kernel, grid),
                                 clip_limit=p.clip_limit).astype(np.float32)
        return image_from_array(out, image)
    out = sitk.AdaptiveHistogramEqualization(image_from_array(unit.astype(np.float32), image),
                                             _sitk_clahe_radius(kernel), alpha=p.alpha, beta=p.beta)
    return sitk.Clamp(out, sitk.sitkFloat32, 0.0, 1.0)


@dataclass(frozen=True)
class GammaParams:
    gamma: float = param(1.0, "gamma exponent on the min-max range (<1 brightens, >1 darkens)", minimum=1e-3,
                         maximum=10.0)


@register("gamma", GammaParams, summary="gamma correction on the min-max range (MONAI AdjustContrast)")
def gamma(image: sitk.Image, p: GammaParams) -> sitk.Image:
    """MONAI ``AdjustContrast``: ``((x - min) / range) ** gamma * range + min``; the intensity range is kept."""
    from monai.transforms import AdjustContrast

    arr = float_array(image)
    out = AdjustContrast(gamma=p.gamma)(arr[None])[0]
    return image_from_array(np.asarray(out, dtype=np.float32), image)


@dataclass(frozen=True)
class ContrastParams:
    factor: float = param(1.5, "contrast factor around the mean (1 = unchanged)", minimum=0.0, maximum=20.0)


@register("contrast", ContrastParams, summary="linear contrast change around the mean intensity")
def contrast(image: sitk.Image, p: ContrastParams) -> sitk.Image:
    """``mean + factor * (x - mean)``, float32."""
    arr = float_array(image)
    mean = float(arr.mean())
    return image_from_array((mean + p.factor * (arr - mean)).astype(np.float32), image)


@dataclass(frozen=True)
class N4Params:
    shrink: int = param(4, "in-plane shrink factor for fitting the bias field (speed)", minimum=1, maximum=16)
    iterations: tuple[int, ...] = param((30, 30, 20), "iterations per fitting level", minimum=1)
    mask: str | None = param(None, "name of an earlier mask to fit inside (default: Otsu foreground)")

    def validate(self) -> str | None:
        """Refuse more fitting levels than :data:`~..limits.MAX_N4_LEVELS` (each doubles the control-point lattice
        along every axis: 12 levels failed to allocate after minutes) and more iterations in all than
        :data:`~..limits.MAX_N4_ITERATIONS` (each a pass over the fitted voxels)."""
        from ..limits import MAX_N4_ITERATIONS, MAX_N4_LEVELS

        levels, total = len(self.iterations), sum(self.iterations)
        if not levels:
            return "'iterations' is empty: give the iterations of at least one fitting level"
        if levels > MAX_N4_LEVELS:
            side = 2 ** (levels - 1) + 3
            return (f"'iterations' lists {levels} fitting levels, above the limit of {MAX_N4_LEVELS}: each level "
                    f"doubles N4's control-point lattice along every axis ({levels} levels: {side}^3 = {side ** 3:,} "
                    "points); give fewer levels")
        if total > MAX_N4_ITERATIONS:
            return (f"'iterations' {list(self.iterations)} add up to {total:,} iterations, each a pass over the "
                    f"fitted voxels, above the limit of {MAX_N4_ITERATIONS:,}: give fewer")
        return None


# N4's B-spline fit fails on an axis of one voxel ("Refusing to change spacing ... to [0, ...]")
@register("n4", N4Params, summary="N4 bias-field correction for MRI (SimpleITK)", aliases=("n4_bias_correction",),
          min_side=2, reads_mr=True)
def n4(image: sitk.Image, p: N4Params, masks: dict[str, sitk.Image] | None = None) -> sitk.Image:
    """Fit the N4 bias field on a shrunk copy and divide the full-resolution image by it (float32 out).

    Intensities must be positive for N4's log model, so the image is shifted to a minimum of 1 and back.
    """
    from ..errors import ConfigError

    check_params("n4", p)  # parameters built in code skip make_step's check
    img = as_float32(image)
    offset = 1.0 - float(sitk.GetArrayViewFromImage(img).min())
    shifted = img + offset
    if p.mask is not None:
        if not masks or p.mask not in masks:
            raise ConfigError(f"step 'n4': no mask named {p.mask!r} was made by an earlier step")
        mask = sitk.Cast(masks[p.mask] > 0, sitk.sitkUInt8)
    else:
        mask = sitk.OtsuThreshold(shifted, 0, 1, 200)
    # Shrink an axis only if its shrunk voxel is no coarser than the thickest axis or the shrunk finest one: all
    # axes of a near-isotropic scan, only the in-plane axes of one with thick slices (0.8 x 0.8 x 6.5 mm: 3.1 x 3.1
    # x 6.5). Shrinking thick slices as well made the fit depend on how the voxels are stored (sitk.Shrink drops
    # the trailing slices that do not fill a block: a flipped copy of the same scan fitted another bias field).
    spacing = image.GetSpacing()
    coarsest = max(max(spacing), p.shrink * min(spacing))
    factors = [p.shrink if s * p.shrink <= coarsest * (1 + 1e-6) else 1 for s in spacing]
    factors = [f if n // f >= 4 else 1 for f, n in zip(factors, image.GetSize())]
    small = sitk.Shrink(shifted, factors)
    small_mask = sitk.Shrink(mask, factors)
    if not np.any(sitk.GetArrayViewFromImage(small_mask)):
        small_mask = small_mask + 1
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([int(i) for i in p.iterations])
    corrector.Execute(small, small_mask)
    log_bias = corrector.GetLogBiasFieldAsImage(shifted)
    corrected = shifted / sitk.Exp(log_bias) - offset
    return sitk.Cast(corrected, sitk.sitkFloat32)


n4.uses_masks = True
