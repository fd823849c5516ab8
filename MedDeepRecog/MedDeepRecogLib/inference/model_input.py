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

from ..contract import MASK_CONTENT
from ..errors import InputImageError, ModelPackageError
from ..io.geometry import lps_view
from ..io.dicom_read import dicom_modality
from ..io.image_content import MAX_LABEL_VALUES, label_map_values
from ..preprocessing.model_grid import ModelGrid, VolumeInput, volume_from_image  # noqa: F401 (re-exported)
from ..preprocessing.slices import SLICE_DEFAULTS, slice_options, standardise_slices

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
def _block_mean(slices: np.ndarray, fy: int, fx: int) -> np.ndarray:
    """``(N, H, W)`` → ``(N, H // fy, W // fx)`` float32 block means (area downsampling, no aliasing)."""
    import torch
    import torch.nn.functional as F

    n, h, w = slices.shape
    s = np.asarray(slices[:, : (h // fy) * fy, : (w // fx) * fx], dtype=np.float32)
    if fy == 1 and fx == 1:
        return s
    return F.avg_pool2d(torch.from_numpy(np.ascontiguousarray(s))[:, None], (fy, fx))[:, 0].numpy()


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
    # Block-average in-plane towards ~work_size pixels, with blocks square in mm where spacing allows.
    work = int(opt["work_size"])
    base = max(1, int(max(ny, nx) // work))
    fy = max(1, int(round(base * min(view.spacing[0], view.spacing[1]) / view.spacing[1])))
    fx = max(1, int(round(base * min(view.spacing[0], view.spacing[1]) / view.spacing[0])))
    work_slices = _block_mean(view.array[z_index], fy, fx)
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


# --------------------------------------------------------------------------------------------- 3D volumes
class LabelMapError(InputImageError):
    """A label map or mask given to a grey-level model (``classify`` skips these in a folder, naming them)."""


#: The structure's value in the masks such packages learnt from (AdrenalMNIST3D: 0/255 uint8); a label map's own
#: value (1 in Slicer, any label in a multi-label export) is set to it, since a 1 on a 0..255 window reads as empty.
MASK_VALUE = 255


def check_input_content(image: sitk.Image, spec: Mapping[str, Any], path: Any = None) -> None:
    """Refuse a scan whose kind of content differs from what the model was trained on.

    A grey-level model refuses a label map or mask (:func:`..io.image_content.label_map_values`). A
    ``input.content == "binary_mask"`` model (e.g. the AdrenalMNIST3D models, which saw only 0/255 shape masks of one
    gland) needs the mask of one structure: background 0 and one other value; a grey-level CT or MR would be
    classified with meaningless confidence, and a label map of several structures names none.
    """
    if spec.get("content") != MASK_CONTENT:
        labels = label_map_values(image)
        if labels is not None:
            raise LabelMapError(
                f"this looks like a label map or mask, not a scan: integer voxels with {len(labels)} distinct "
                f"values ({', '.join(map(str, labels[:6]))}{'…' if len(labels) > 6 else ''}) in regions of one "
                "value each; the model reads grey-level images", path)
        return
    _mask_value(image, path)


def _mask_value(image: sitk.Image, path: Any = None) -> float:
    """The one non-zero value of a mask of one structure, or an :class:`InputImageError` naming what it is instead
    (a scan, several labels, no background, empty). A strided sample refuses a scan before every voxel is read."""
    arr = sitk.GetArrayViewFromImage(image)
    scan = ("this model classifies the mask of one structure (a segment exported as a label map), but the image "
            "has {}+ distinct intensities: it looks like a scan, not a mask")
    sample = np.unique(arr[::2, ::2, ::2])
    if sample.size > MAX_LABEL_VALUES:
        raise InputImageError(scan.format(sample.size), path)
    values = np.unique(arr)
    if values.size > MAX_LABEL_VALUES:
        raise InputImageError(scan.format(values.size), path)
    labels = values[values != 0]
    if labels.size == 0:
        raise InputImageError("the mask is empty: no voxel is labelled, so there is no structure to classify", path)
    if labels.size > 1:
        shown = ", ".join(f"{v:g}" for v in labels[:6]) + ("…" if labels.size > 6 else "")
        background = "" if labels.size < values.size else " and no background 0"
        raise InputImageError(f"the mask holds {labels.size} labels ({shown}){background}: this model classifies "
                              "the mask of one structure; give a label map of that structure alone", path)
    if values.size == 1:
        raise InputImageError(f"every voxel is {labels[0]:g}: a mask needs background 0 around its structure", path)
    return float(labels[0])


#: Share of a structure's voxels that may fall outside a mask model's field of view before the structure is no
#: longer one the model learnt: 98.8 % of the AdrenalMNIST3D train masks lie inside their cube (1.2 % touch its
#: border), and a spleen given to the adrenal models lost 40 % of its voxels to the cut and read "mass, p = 1.00".
MAX_SHARE_OUTSIDE_FIELD = 0.05


def image_for_model(image: sitk.Image, spec: Mapping[str, Any],
                    path: Any = None) -> tuple[sitk.Image, list[str], str | None]:
    """The image a package's input pipeline reads, notes on what was changed, and why the input is outside the
    model's domain (``None`` when it is not): a grey-level package's image is ``image`` itself, once
    :func:`check_input_content` lets it through.

    For a ``binary_mask`` package: ``image``'s one structure as its training masks hold it (:data:`MASK_VALUE`
    on 0, uint8); on a grid larger than the model's field of view (``size`` x ``spacing_mm``, e.g. 32 x 2 mm =
    64 mm), cut to that field centred on the structure's centre of mass, on ``image``'s own grid (voxel size and
    direction kept; 0 where the field leaves the grid); and notes on what was changed. The packages learnt from
    masks cut so about their gland (AdrenalMNIST3D: a 64 mm cube): a label map on a whole scan's grid would
    otherwise be shrunk or cut at the scan's centre, and a label map's 1 read as nearly empty. Without
    ``spacing_mm`` only the value is set. A structure more than :data:`MAX_SHARE_OUTSIDE_FIELD` of which lies
    outside the field is larger than the structures the model learnt, which its training cubes held whole: the
    third value says so, and classify reports no class.

    Raises:
        InputImageError: what :func:`check_input_content` refuses.
    """
    if spec.get("content") != MASK_CONTENT:
        check_input_content(image, spec, path)
        return image, [], None
    value = _mask_value(image, path)
    notes = [] if value == MASK_VALUE else [f"mask value {value:g} read as the structure ({MASK_VALUE} as the model "
                                            "learnt)"]
    mask = sitk.Cast(sitk.NotEqual(image, 0), sitk.sitkUInt8) * MASK_VALUE
    size, spacing = spec.get("size"), spec.get("spacing_mm")
    if not (size and spacing and len(size) == 3 and len(spacing) == 3):
        return mask, notes, None
    field_xyz = np.array([int(n) for n in reversed(size)], float) * np.array([float(v) for v in spacing])
    direction = np.array(image.GetDirection(), float).reshape(3, 3)
    axis = np.abs(direction).argmax(axis=0)   # the physical axis (x, y, z) each index axis (i, j, k) runs along
    voxels = np.maximum(1, np.floor(field_xyz[axis] / np.array(image.GetSpacing()) + 0.5)).astype(int)
    dims = np.array(image.GetSize())
    if (dims <= voxels + 1).all():
        # already a cut of the model's field (or smaller), as its training masks were: kept as it is, centred as
        # given (the 64^3 AdrenalMNIST3D masks hold their centroid 1 voxel off centre, the 28^3 ones 0.4: a recut
        # would move half of them by a voxel)
        return mask, notes, None
    inside = np.nonzero(sitk.GetArrayViewFromImage(mask))   # (k, j, i)
    # centred as AdrenalMNIST3D's 28^3 cubes are: the structure's centre of mass in voxel n // 2 along each stored
    # axis (so in 872 of the first 900 train masks; their bounding-box centre lies 0.7-1.8 +- 0.8 voxels off). A
    # mirrored storage order can cut one voxel further along an axis; the models feel that (a symmetric rounding
    # gave the val masks AUC 0.886 / 0.822 on a larger grid, this one 0.904 / 0.835, the cubes 0.903 / 0.830)
    centroid = np.array([w.mean() for w in reversed(inside)])   # (i, j, k)
    start = np.floor(centroid + 0.5).astype(int) - voxels // 2
    lower, upper = np.maximum(0, -start), np.maximum(0, start + voxels - dims)
    kept = sitk.GetArrayViewFromImage(mask)[tuple(slice(max(s, 0), min(s + n, d)) for s, n, d in
                                                  zip(start[::-1], voxels[::-1], dims[::-1]))]
    total, within = inside[0].size, int(np.count_nonzero(kept))
    padded = sitk.ConstantPad(mask, [int(v) for v in lower], [int(v) for v in upper], 0)
    cut = sitk.RegionOfInterest(padded, [int(v) for v in voxels], [int(v) for v in start + lower])
    extent = " x ".join(f"{v:g}" for v in field_xyz)
    notes.append(f"mask cut to the model's {extent} mm field of view centred on the structure")
    outside = None
    if within < total:
        notes.append(f"the structure reaches beyond the model's {extent} mm field of view: {total - within} of its "
                     f"{total} voxels were left out")
        if total - within > MAX_SHARE_OUTSIDE_FIELD * total:
            outside = (f"the structure is larger than the model's {extent} mm field of view ({total - within} of its "
                       f"{total} voxels, {(total - within) / total:.0%}, lie outside it), and the masks it learnt "
                       "lay within it: it is not a structure this model classifies")
    return cut, notes, outside


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
