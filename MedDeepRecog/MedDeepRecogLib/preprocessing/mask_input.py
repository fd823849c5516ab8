"""What a volume model reads of a scan by the kind of content it learnt from (``input.content``).

The one home of the content rules that ``classify`` (``inference/model_input``, ``inference/classify``) and
``train`` (``training/data``, reading a folder of label maps) both apply: a grey-level model refuses label maps
(:func:`check_input_content`); a ``binary_mask`` model reads a label map's one structure at :data:`MASK_VALUE`, cut to
the model's field of view about the structure (:func:`image_for_model`), so a network trained on a folder of label
maps learns from the very cut classify later gives it.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import SimpleITK as sitk

from ..contract import MASK_CONTENT
from ..errors import InputImageError
from ..io.image_content import MAX_LABEL_VALUES, label_map_values


#: Float pixel types: a label map stored as float is named so in the refusal (its voxels are whole numbers).
_FLOAT_TYPES = (sitk.sitkFloat32, sitk.sitkFloat64)


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
            kind = "whole-number float" if image.GetPixelID() in _FLOAT_TYPES else "integer"
            raise LabelMapError(
                f"this looks like a label map or mask, not a scan: {kind} voxels with {len(labels)} distinct "
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
