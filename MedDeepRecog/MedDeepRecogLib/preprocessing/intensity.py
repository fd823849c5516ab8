"""Grid and intensity steps: resample, crop/pad, CT windowing, intensity normalisation.

All arrays are ``(Z, Y, X)``; spacings are in mm (SimpleITK ``(x, y, z)`` order in parameters); CT values in HU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import SimpleITK as sitk

from ..io import image_from_array
from ..limits import check_declared_image
from .steps import Grid, param, register

#: CT window presets as (center, width) in HU.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "brain": (40.0, 80.0),
    "abdomen": (40.0, 400.0),
    "bone": (400.0, 1800.0),
}

_INTERPOLATORS = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor, "bspline": sitk.sitkBSpline}


def as_float32(image: sitk.Image) -> sitk.Image:
    """``image`` cast to float32 (returned as is when it already is)."""
    return image if image.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(image, sitk.sitkFloat32)


def float_array(image: sitk.Image) -> np.ndarray:
    """A float32 ``(Z, Y, X)`` copy of the voxels."""
    return sitk.GetArrayFromImage(image).astype(np.float32, copy=False)


def resample_to_reference(image: sitk.Image, reference: sitk.Image, *, is_label: bool = False,
                          default: float | None = None) -> sitk.Image:
    """Resample ``image`` onto ``reference``'s grid (identity transform, physical space).

    Linear interpolation for images, nearest neighbour for labels/masks; voxels falling outside ``image`` get
    ``default`` (0 for labels, the image minimum otherwise).
    """
    if default is None:
        default = 0.0 if is_label else float(sitk.GetArrayViewFromImage(image).min())
    return sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear,
                         default, image.GetPixelID())


@dataclass(frozen=True)
class ResampleParams:
    spacing: tuple[float, ...] | None = param(None, "output spacing (x, y, z) in mm, or (x, y) keeping z (a 2D "
                                              "image); one number for isotropic", minimum=1e-3, length=(2, 3))
    size: tuple[int, ...] | None = param(None, "output size (x, y, z) in voxels, or (x, y) keeping z (the field "
                                         "of view is kept)", minimum=1, length=(2, 3))
    interpolator: Literal["linear", "bspline", "nearest"] = param("linear", "interpolation for the image")

    def validate(self) -> str | None:
        if (self.spacing is None) == (self.size is None):
            return "give exactly one of 'spacing' or 'size'"
        return None


def _resampled_grid(p: ResampleParams, grid: Grid) -> Grid:
    """The grid :func:`resample` makes from ``grid``: the physical extent kept, size = extent / spacing rounded
    (at least 1 voxel), or spacing = extent / size."""
    in_size = np.array(grid.size, dtype=float)
    in_spacing = np.array(grid.spacing, dtype=float)
    extent = in_size * in_spacing
    if p.spacing is not None:
        spacing = np.array(list(p.spacing) + list(in_spacing[len(p.spacing):]), dtype=float)   # (x, y): z kept
        size = np.maximum(np.round(extent / spacing), 1).astype(int)
    else:
        size = np.array(list(p.size) + list(in_size[len(p.size):]), dtype=int)
        spacing = extent / size
    return Grid(tuple(int(n) for n in size), tuple(float(s) for s in spacing))


@register("resample", ResampleParams, kind="grid", summary="resample to a spacing (mm) or size (voxels), same extent",
          regrid=_resampled_grid)
def resample(image: sitk.Image, p: ResampleParams) -> sitk.Image:
    """Resample keeping origin and direction; the physical extent is kept (size = extent / spacing, rounded)."""
    in_spacing = np.array(image.GetSpacing(), dtype=float)
    out = _resampled_grid(p, Grid.of(image))
    size, spacing = np.array(out.size), np.array(out.spacing)
    # Keep the physical box: the first voxel center moves by half the change of voxel size.
    direction = np.array(image.GetDirection()).reshape(3, 3)
    origin = np.array(image.GetOrigin()) + direction @ ((spacing - in_spacing) / 2.0)
    check_declared_image(size, 4, None, "resample's output")   # bounded before SimpleITK allocates it
    image_f = image if p.interpolator == "nearest" else as_float32(image)
    default = float(sitk.GetArrayViewFromImage(image).min())
    return sitk.Resample(image_f, [int(s) for s in size], sitk.Transform(), _INTERPOLATORS[p.interpolator],
                         origin.tolist(), spacing.tolist(), image.GetDirection(), default, image_f.GetPixelID())


@dataclass(frozen=True)
class CropPadParams:
    size: tuple[int, ...] = param((128, 128, 64), "output size (x, y, z) in voxels, or (x, y) keeping z (a 2D "
                                  "image); centred crop or pad", minimum=1, length=(2, 3))
    pad_value: float | None = param(None, "value of padded voxels (default: the image minimum)")


def _cropped_grid(p: CropPadParams, grid: Grid) -> Grid:
    """The grid :func:`crop_pad` makes: the new size ((x, y): z kept), the spacing unchanged."""
    return Grid(tuple(int(n) for n in p.size) + grid.size[len(p.size):], grid.spacing)


@register("crop_pad", CropPadParams, kind="grid", summary="centred crop and/or pad to a size (voxels)",
          aliases=("crop", "pad"), regrid=_cropped_grid)
def crop_pad(image: sitk.Image, p: CropPadParams) -> sitk.Image:
    """Centred crop/pad; the origin moves so every kept voxel stays at its physical position."""
    size = np.array(image.GetSize())
    target = np.array(list(p.size) + list(size[len(p.size):]))   # (x, y): z kept
    pad_value = float(sitk.GetArrayViewFromImage(image).min()) if p.pad_value is None else p.pad_value
    grow = np.maximum(target - size, 0)
    check_declared_image(np.maximum(target, size), 4, None, "crop_pad's output")   # bounded before padding
    if grow.any():
        lower = (grow // 2).astype(int).tolist()
        upper = (grow - grow // 2).astype(int).tolist()
        image = sitk.ConstantPad(image, lower, upper, pad_value)
        size = np.array(image.GetSize())
    shrink = np.maximum(size - target, 0)
    if shrink.any():
        lower = (shrink // 2).astype(int).tolist()
        upper = (shrink - shrink // 2).astype(int).tolist()
        image = sitk.Crop(image, lower, upper)
    return image


@dataclass(frozen=True)
class WindowParams:
    preset: Literal["lung", "mediastinum", "brain", "abdomen", "bone"] | None = param(
        None, "CT window preset: lung (-600/1500), mediastinum (50/350), brain (40/80), abdomen (40/400), "
              "bone (400/1800) as center/width HU")
    center: float | None = param(None, "window center in HU (instead of a preset)")
    width: float | None = param(None, "window width in HU (instead of a preset)", minimum=1e-3)
    output: Literal["unit", "hu"] = param("unit", "unit: map the window to 0..1; hu: clip to the window in HU")

    def validate(self) -> str | None:
        if self.preset is None and (self.center is None or self.width is None):
            return "give a 'preset' or both 'center' and 'width'"
        if self.preset is not None and (self.center is not None or self.width is not None):
            return "give either a 'preset' or 'center'/'width', not both"
        return None


@register("window", WindowParams, summary="CT windowing (HU) with presets; output 0..1 or clipped HU",
          reads_hu=True)
def window(image: sitk.Image, p: WindowParams) -> sitk.Image:
    """Clip to ``[center - width/2, center + width/2]`` HU and map to 0..1 (``output="unit"``) or keep HU."""
    center, width = WINDOW_PRESETS[p.preset] if p.preset else (p.center, p.width)
    lo, hi = center - width / 2.0, center + width / 2.0
    image = as_float32(image)
    if p.output == "hu":
        return sitk.Clamp(image, sitk.sitkFloat32, lo, hi)
    return sitk.IntensityWindowing(image, lo, hi, 0.0, 1.0)


@dataclass(frozen=True)
class NormalizeParams:
    method: Literal["zscore", "percentile", "minmax"] = param("zscore", "z-score, percentile range to 0..1, "
                                                                        "or min-max to 0..1")
    lower: float = param(1.0, "lower percentile (method=percentile)", minimum=0.0, maximum=100.0)
    upper: float = param(99.0, "upper percentile (method=percentile)", minimum=0.0, maximum=100.0)
    clip: bool = param(True, "clip to 0..1 after percentile scaling")
    mask: str | None = param(None, "name of a mask made by an earlier step: statistics inside it only")

    def validate(self) -> str | None:
        return "'lower' must be below 'upper'" if self.lower >= self.upper else None


def normalize_array(arr: np.ndarray, p: NormalizeParams, inside: np.ndarray | None = None) -> np.ndarray:
    """Normalise a float array; statistics come from ``arr[inside]`` when a mask is given."""
    sample = arr[inside] if inside is not None and inside.any() else arr
    if p.method == "zscore":
        std = float(sample.std())
        return (arr - float(sample.mean())) / (std if std > 0 else 1.0)
    if p.method == "percentile":
        lo, hi = np.percentile(sample, [p.lower, p.upper])
    else:
        lo, hi = float(sample.min()), float(sample.max())
    out = (arr - lo) / (hi - lo if hi > lo else 1.0)
    return np.clip(out, 0.0, 1.0) if (p.clip and p.method == "percentile") else out


@register("normalize", NormalizeParams, summary="intensity normalisation: z-score, percentile or min-max",
          aliases=("normalise",))
def normalize(image: sitk.Image, p: NormalizeParams, masks: dict[str, sitk.Image] | None = None) -> sitk.Image:
    """Normalise intensities (float32 out); ``mask`` restricts the statistics to a named earlier mask."""
    arr = float_array(image)
    inside = None
    if p.mask is not None:
        from ..errors import ConfigError
        if not masks or p.mask not in masks:
            raise ConfigError(f"step 'normalize': no mask named {p.mask!r} was made by an earlier step "
                              f"(available: {', '.join(masks or {}) or 'none'})")
        inside = sitk.GetArrayViewFromImage(masks[p.mask]) > 0
    return image_from_array(normalize_array(arr, p, inside).astype(np.float32), image)


normalize.uses_masks = True  # the pipeline passes the masks made so far


@dataclass(frozen=True)
class ScaleRangeParams:
    a_min: float = param(-1000.0, "input intensity mapped to b_min (HU for CT)")
    a_max: float = param(1000.0, "input intensity mapped to b_max")
    b_min: float = param(0.0, "output value at a_min")
    b_max: float = param(1.0, "output value at a_max")
    clip: bool = param(True, "clip the output to [b_min, b_max]")

    def validate(self) -> str | None:
        return "'a_min' must differ from 'a_max'" if self.a_min == self.a_max else None


@register("scale_intensity_range", ScaleRangeParams,
          summary="linear map [a_min, a_max] -> [b_min, b_max], optional clip (MONAI ScaleIntensityRange)")
def scale_intensity_range(image: sitk.Image, p: ScaleRangeParams) -> sitk.Image:
    """MONAI ``ScaleIntensityRange`` on the voxels (float32 out), as model packages declare it."""
    from monai.transforms import ScaleIntensityRange

    out = ScaleIntensityRange(p.a_min, p.a_max, p.b_min, p.b_max, clip=p.clip)(float_array(image))
    return image_from_array(np.asarray(out, dtype=np.float32), image)
