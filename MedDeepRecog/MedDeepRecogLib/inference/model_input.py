"""Scan → model input, per the package's ``input.kind``, keeping the geometry needed to map heatmaps back.

Two kinds are handled:

- ``slices2d``: a 2D network applied to axial slices. The volume is viewed in LPS order **without copying it**
  (permuted/flipped numpy views, see :func:`lps_view`), up to ``max_slices`` evenly spaced axial slices are taken,
  block-averaged in-plane to a working grid of about ``work_size`` pixels, scaled per slice to 0..1 between
  intensity percentiles (MedNIST-style slices are display-windowed 8-bit images, so a per-slice stretch bridges HU
  and arbitrary MR units), cropped to the body's bounding box, padded to a square (in mm) and resized to the
  model's ``size``. The same :func:`standardise_slices` is used to prepare training images, so training and
  inference see identical inputs.
- ``volume3d`` / ``roi3d``: the whole volume resampled (SimpleITK, linear) to ``size`` voxels, covering the scan's
  extent (or a centred field of ``size * spacing_mm`` when ``spacing_mm`` is set), in LPS orientation.

Every result carries a :class:`ModelGrid`: where each model-space value sits in physical space (LPS, mm), so
:mod:`MedDeepRecogLib.inference.heatmap` can resample maps onto the input's own grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import InputImageError, ModelPackageError

#: Defaults of ``input.slices`` for ``slices2d`` packages (any key may be overridden in model.json).
SLICE_DEFAULTS: dict[str, Any] = {
    "max_slices": 48,          # evenly spaced axial slices classified per volume
    "work_size": 128,          # in-plane working grid (pixels) the slices are block-averaged to
    # CT (scan in HU): a fixed display window to 0..1. [-1000, 1000] HU puts air at 0 and water / soft tissue at
    # 0.5, the median foreground intensity of MedNIST's CT slices (0.498 over its 1,200 CT images, /255).
    "ct_window": [-1000.0, 1000.0],
    # Other scans (MR, 8-bit images): per-slice stretch, the low percentile to 0 and the high one to
    # ``percentile_target`` (MedNIST MR slices: median per-image 99.5th percentile 0.604 of full scale), clipped.
    "percentiles": [0.5, 99.5],
    "percentile_target": 0.6,
    "foreground_threshold": 0.1,  # on the 0..1 slice: what counts as body for the bounding box
    "min_foreground": 0.03,    # slices with less body than this fraction are skipped (not voted)
    "margin": 0.04,            # added around the body box, as a fraction of its side
    "crop_foreground": True,
    # an image smaller than this per side is refused rather than upsampled; None: half the model's input side
    # (enlarging more than 2x invents the detail the model was trained to read)
    "min_pixels": None,
}


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
    # Assign each physical axis k the index axis most aligned with it (greedy on the largest cosines).
    perm = [-1, -1, -1]
    free_idx, free_phys = {0, 1, 2}, {0, 1, 2}
    for _ in range(3):
        k, i = max(((k, i) for k in free_phys for i in free_idx), key=lambda ki: abs(d[ki[0], ki[1]]))
        perm[k] = i
        free_phys.discard(k)
        free_idx.discard(i)
    signs = [1 if d[k, perm[k]] >= 0 else -1 for k in range(3)]
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


@dataclass
class VolumeInput:
    """``volume3d``/``roi3d`` model input: ``x`` is ``(1, C, D, H, W)`` float32 on ``grid``."""

    x: np.ndarray
    grid: ModelGrid
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- 2D slices
def _block_mean(slices: np.ndarray, fy: int, fx: int) -> np.ndarray:
    """``(N, H, W)`` → ``(N, H // fy, W // fx)`` float32 block means (area downsampling, no aliasing)."""
    import torch
    import torch.nn.functional as F

    n, h, w = slices.shape
    s = np.asarray(slices[:, : (h // fy) * fy, : (w // fx) * fx], dtype=np.float32)
    if fy == 1 and fx == 1:
        return s
    return F.avg_pool2d(torch.from_numpy(np.ascontiguousarray(s))[:, None], (fy, fx))[:, 0].numpy()


def standardise_slices(slices: np.ndarray, spacing_yx: Sequence[float] = (1.0, 1.0), *,
                       size: Sequence[int] = (64, 64), options: Mapping[str, Any] | None = None,
                       hounsfield: bool = False
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Standardise 2D slices the way every ``slices2d`` model sees them (training and inference alike).

    Args:
        slices: ``(N, H, W)`` raw intensities (HU, MR units, or 8-bit display values).
        spacing_yx: pixel size (mm) along rows and columns; the body box is made square in mm.
        size: model image ``(H, W)``.
        options: overrides of :data:`SLICE_DEFAULTS`.
        hounsfield: the slices are CT in HU: use the fixed ``ct_window`` instead of the per-slice stretch.

    Returns:
        ``(x, valid, theta, scaled, extent_mm)``: ``x`` ``(N, 1, H, W)`` float32 0..1; ``valid`` ``(N,)`` bool
        (enough body); ``theta`` ``(N, 2, 3)`` affine from the model image to the slice (normalised coordinates,
        ``align_corners=False``); ``scaled`` ``(N, H_in, W_in)`` the 0..1 slices before cropping; ``extent_mm``
        ``(N, 2)`` the body box's height and width in mm.
    """
    import torch
    import torch.nn.functional as F

    opt = {**SLICE_DEFAULTS, **(options or {})}
    slices = np.asarray(slices, dtype=np.float32)
    n, h, w = slices.shape
    flat = slices.reshape(n, -1)
    lo, hi = np.percentile(flat, opt["percentiles"], axis=1).astype(np.float32)
    span = hi - lo
    if hounsfield and opt.get("ct_window"):
        w0, w1 = (float(v) for v in opt["ct_window"])
        scaled = np.clip((slices - w0) / (w1 - w0), 0.0, 1.0, dtype=np.float32)
    else:
        gain = float(opt.get("percentile_target", 1.0)) / np.maximum(span, 1e-6)
        scaled = np.clip((slices - lo[:, None, None]) * gain[:, None, None], 0.0, 1.0, dtype=np.float32)
    fg = scaled > float(opt["foreground_threshold"])
    frac = fg.reshape(n, -1).mean(axis=1)
    valid = (frac >= float(opt["min_foreground"])) & (span > 1e-6)

    sy, sx = float(spacing_yx[0]), float(spacing_yx[1])
    theta = np.zeros((n, 2, 3), dtype=np.float32)
    extent = np.zeros((n, 2), dtype=np.float32)
    for i in range(n):
        if opt["crop_foreground"] and valid[i]:
            rows = np.flatnonzero(fg[i].any(axis=1))
            cols = np.flatnonzero(fg[i].any(axis=0))
            y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        else:
            y0, y1, x0, x1 = 0, h, 0, w
        extent[i] = ((y1 - y0) * sy, (x1 - x0) * sx)
        side_mm = max(extent[i]) * (1.0 + 2 * float(opt["margin"]))
        ly, lx = side_mm / sy, side_mm / sx  # box side in pixels per axis (square in mm)
        cy, cx = (y0 + y1) / 2.0, (x0 + x1) / 2.0
        # affine_grid maps output u in [-1, 1] to input n = c + s u with pixel edges at n = 2 p / W - 1.
        theta[i, 0] = (lx / w, 0.0, 2.0 * cx / w - 1.0)
        theta[i, 1] = (0.0, ly / h, 2.0 * cy / h - 1.0)
    t = torch.from_numpy(theta)
    grid = F.affine_grid(t, [n, 1, int(size[0]), int(size[1])], align_corners=False)
    src = torch.from_numpy(scaled[:, None])
    # Antialias: when the box is much larger than the model image, pre-shrink with area pooling.
    shrink = int(max(1, np.floor(min(h, w) / (2 * max(size)))))
    if shrink > 1:
        src = F.avg_pool2d(src, shrink, ceil_mode=True)
    x = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return x.numpy().astype(np.float32, copy=False), valid, theta, scaled, extent


def is_hounsfield(image: sitk.Image) -> bool:
    """True for CT in HU: DICOM modality CT, or air present (0.5th intensity percentile below -500).

    Estimated on a strided subsample of about 200,000 voxels, so a 512x512x300 CT costs milliseconds.
    """
    if image.HasMetaDataKey("0008|0060"):
        tag = image.GetMetaData("0008|0060").strip().upper()
        if tag in ("CT", "MR"):
            return tag == "CT"
    flat = sitk.GetArrayViewFromImage(image).reshape(-1)
    arr = flat[:: max(1, flat.size // 200_003)]
    return bool(arr.size) and float(np.percentile(arr, 0.5)) < -500


def nearest_axial_slice(image: sitk.Image, superior_mm: float) -> tuple[int, float]:
    """``(k, s_k)``: the axial slice (index of the LPS view, 0 = most inferior) whose centre is nearest to the
    superior coordinate ``superior_mm`` (the same number in LPS and RAS: Slicer's axial slice offset), and that
    slice's own superior coordinate."""
    view = lps_view(image)
    nz = view.array.shape[0]
    s = view.origin[2] + view.direction[2, 2] * view.spacing[2] * np.arange(nz)
    k = int(np.argmin(np.abs(s - float(superior_mm))))
    return k, float(s[k])


def slices_from_image(image: sitk.Image, spec: Mapping[str, Any], only_slice: int | None = None) -> SliceInput:
    """Build the ``slices2d`` input of a 3D ``image`` (see the module docstring for the steps).

    ``only_slice``: classify that one axial slice (an index of the LPS view) instead of the evenly spaced stack.

    Raises:
        ModelPackageError: if the package asks for more than one channel (one scan is one channel).
    """
    channels = int(spec.get("channels", 1))
    if channels != 1:
        raise ModelPackageError(f"the model expects {channels} input channels (modalities) per slice, but a "
                                "single scan gives one; provide a model trained on one channel")
    opt = {**SLICE_DEFAULTS, **(spec.get("slices") or {})}
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
    # Block-average in-plane towards ~work_size pixels, with blocks square in mm where spacing allows.
    work = int(opt["work_size"])
    base = max(1, int(max(ny, nx) // work))
    fy = max(1, int(round(base * min(view.spacing[0], view.spacing[1]) / view.spacing[1])))
    fx = max(1, int(round(base * min(view.spacing[0], view.spacing[1]) / view.spacing[0])))
    work_slices = _block_mean(view.array[z_index], fy, fx)
    spacing_w = np.array([view.spacing[0] * fx, view.spacing[1] * fy, view.spacing[2] * step])
    x, valid, theta, scaled, extent = standardise_slices(work_slices, (spacing_w[1], spacing_w[0]), size=size, options=opt,
                                                 hounsfield=is_hounsfield(image))
    # Working pixel (i, j, k) centre = LPS-view index ((i + .5) fx - .5, (j + .5) fy - .5, z0 + k step).
    offset = np.array([(fx - 1) / 2.0, (fy - 1) / 2.0, float(z_index[0])]) * view.spacing
    origin = view.origin + view.direction @ offset
    grid = ModelGrid(origin=origin, spacing=spacing_w, direction=view.direction,
                     size=(work_slices.shape[2], work_slices.shape[1], work_slices.shape[0]))
    return SliceInput(x=x, slice_index=z_index, valid=valid, theta=theta, grid=grid,
                      work_shape=work_slices.shape[1:], display=scaled, extent_mm=extent,
                      foreground_threshold=float(opt["foreground_threshold"]))


# --------------------------------------------------------------------------------------------- 3D volumes
class LabelMapError(InputImageError):
    """A label map or mask given to a grey-level model (``classify`` skips these in a folder, naming them)."""


def check_input_content(image: sitk.Image, spec: Mapping[str, Any], path: Any = None) -> None:
    """Refuse a scan whose kind of content differs from what the model was trained on.

    ``input.content == "binary_mask"`` (e.g. the AdrenalMNIST3D models, which saw only 0/255 shape masks of one
    gland) needs a volume with at most two distinct values: a grey-level CT or MR would be classified with
    meaningless confidence.
    """
    if spec.get("content") != "binary_mask":
        labels = label_map_values(image)
        if labels is not None:
            raise LabelMapError(
                f"this looks like a label map or mask, not a scan: integer voxels with only {len(labels)} distinct "
                f"values ({', '.join(map(str, labels[:6]))}{'…' if len(labels) > 6 else ''}); the model classifies "
                "grey-level images", path)
        return
    values = np.unique(sitk.GetArrayViewFromImage(image)[::2, ::2, ::2])
    if values.size > 2:
        raise InputImageError(
            f"this model classifies a binary mask of one structure (a segment exported as a label map, "
            f"cropped around it), but the image has {values.size}+ distinct intensities: it looks like a scan, "
            f"not a mask", path)


#: An integer image with at most this many distinct values is a label map or mask, not a scan (a real CT, MR or
#: 8-bit picture has hundreds).
MAX_LABEL_VALUES = 16


def label_map_values(image: sitk.Image) -> list[int] | None:
    """The distinct values when ``image`` looks like a label map or mask (integer voxels, at most
    :data:`MAX_LABEL_VALUES` values, counted on a strided sample of about a million voxels), else ``None``."""
    arr = sitk.GetArrayViewFromImage(image)
    if not np.issubdtype(arr.dtype, np.integer):
        return None
    flat = arr.reshape(-1)
    values = np.unique(flat[:: max(1, flat.size // 1_000_003)])
    return [int(v) for v in values] if values.size <= MAX_LABEL_VALUES else None


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


def as_volume(image: sitk.Image, path: Any = None, *, allow_2d: bool) -> sitk.Image:
    """A 3D single-channel view of ``image``; a 2D image becomes a one-slice volume when ``allow_2d``.

    Raises:
        InputImageError: 4D series, vector pixels, or a 2D image given to a model that needs a volume.
    """
    if image.GetDimension() == 2:
        if not allow_2d:
            raise InputImageError(f"the model needs a 3D volume, but this image is 2D with size "
                                  f"{list(image.GetSize())}", path)
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise InputImageError(f"a single-channel image is needed, but pixels have "
                                  f"{image.GetNumberOfComponentsPerPixel()} components (colour image?)", path)
        return sitk.JoinSeries([image])
    from ..io import require_3d

    return require_3d(image, path)
