"""What an image holds, judged from its voxels and tags: a label map or a scan, which modality, and the summary
``meddeeprecog info`` prints."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import SimpleITK as sitk

from .dicom_read import SERIES_KEY, dicom_modality
from .image_meta import FRAMES_KEY, image_notes, is_picture


#: An integer image with at most this many distinct values is a label map or mask, not a scan (a real CT, MR or
#: 8-bit picture has hundreds).
MAX_LABEL_VALUES = 16


#: A multi-label map (TotalSegmentator's: 24-42 labels) has up to 256 distinct values, as an 8-bit volume can; it
#: is piecewise constant, so neighbouring voxels differ only at label borders. Measured share of x-neighbour pairs
#: (not both 0) that differ: TotalSegmentator label maps 0.05-0.17, pyradiomics lesion labels 0.10-0.38; volumes
#: 0.78 (an 8-bit breast MR crop) to 0.98 (CT). Pictures are left out: windowed 8-bit head CT slices (MedNIST
#: CTHead) have large flat regions and shares down to 0.19.
LABEL_BORDER_SHARE = 0.3


def label_map_values(image: sitk.Image) -> list[int] | None:
    """The distinct values when ``image`` looks like a label map or mask, else ``None``: integer voxels (or float
    voxels that are all whole numbers, from 0 up) with at most
    :data:`MAX_LABEL_VALUES` values; or a volume (more than one slice, not a picture) with background 0 and at most
    256 values that change between neighbouring voxels (along x) less often than :data:`LABEL_BORDER_SHARE` outside
    the background. Counted on a strided sample of about a million voxels (values) and of about 65,000 rows
    (neighbours)."""
    arr = sitk.GetArrayViewFromImage(image)
    floating = np.issubdtype(arr.dtype, np.floating)
    if not (np.issubdtype(arr.dtype, np.integer) or floating) or not arr.size:
        return None
    flat = arr.reshape(-1)
    values = np.unique(flat[:: max(1, flat.size // 1_000_003)])
    # a label map saved as float (a mask cast to float32 by a script, a segmentation exported as a float volume)
    # holds whole numbers from a background 0 up; a float scan's intensities are fractional, or whole numbers in
    # their hundreds (a float copy of a CT in HU), which the value count and the border share below tell from labels
    # as for integers. Background 0 is asked of floats alone: a float phantom of a few flat tissue intensities
    # (10, 110, 260, 360) is a synthetic scan, while integer images keep the rule they always had
    if floating and not (values.size <= 256 and np.all(np.isfinite(values)) and np.all(values == np.round(values))
                         and values[0] == 0 and values[-1] < 2 ** 31):
        return None
    if values.size <= MAX_LABEL_VALUES:
        return [int(v) for v in values]
    if (values.size > 256 or values[0] != 0 or arr.ndim != 3 or arr.shape[0] < 2 or arr.shape[-1] < 2
            or is_picture(image)):
        return None
    rows = arr.reshape(-1, arr.shape[-1])
    rows = rows[:: max(1, rows.shape[0] // 65_536)]
    left, right = rows[:, :-1], rows[:, 1:]
    inside = (left != 0) | (right != 0)
    changes = np.count_nonzero((left != right) & inside) / max(int(np.count_nonzero(inside)), 1)
    return [int(v) for v in values] if changes < LABEL_BORDER_SHARE else None


def guess_modality(image: sitk.Image) -> str:
    """Best guess of ``"CT"``, ``"MR"``, ``"US"`` or ``"unknown"``: DICOM tag first, else intensity statistics
    (only HU makes a CT of a DICOM object tagged otherwise).

    CT voxels are in HU: air near -1000 and a minimum below -500; MR intensities are non-negative. Ultrasound is
    known only from its DICOM tag (its intensities look like an MR's or a picture's).
    """
    tag = dicom_modality(image)
    if tag in ("CT", "MR", "US"):
        return tag
    arr = sitk.GetArrayViewFromImage(image)
    if not arr.size:
        return "unknown"
    lo, hi = (float(v) for v in np.percentile(arr, [1, 99]))
    if lo < -500:
        return "CT"
    if is_picture(image) or label_map_values(image) is not None or tag:
        # display values of a picture, or the labels of a mask, say nothing about the modality; nor do non-negative
        # values of a DICOM object whose tag names another one (RTDOSE, OT, PT, DX...)
        return "unknown"
    # MR intensities are non-negative; resampling with a smooth kernel undershoots a little at edges (down to
    # about -2 at the 1st percentile of the TotalSegmentator abdominal MR, range 0..~800)
    if lo >= -0.02 * max(hi, 1.0):
        return "MR"
    return "unknown"


def describe_geometry(image: sitk.Image) -> dict[str, Any]:
    """Geometry and intensity summary as plain JSON-able data (what ``meddeeprecog info`` prints)."""
    arr = sitk.GetArrayViewFromImage(image)
    finite = arr[np.isfinite(arr)] if np.issubdtype(arr.dtype, np.floating) else arr
    size = list(image.GetSize())
    spacing = [float(s) for s in image.GetSpacing()]
    return {
        "dimension": image.GetDimension(),
        "size": size,
        "spacing_mm": spacing,
        "origin_mm": [float(o) for o in image.GetOrigin()],
        "direction": [float(d) for d in image.GetDirection()],
        "extent_mm": [float(n * s) for n, s in zip(size, spacing)],
        "pixel_type": image.GetPixelIDTypeAsString(),
        "components": image.GetNumberOfComponentsPerPixel(),
        "intensity": {
            "min": float(finite.min()) if finite.size else None,
            "max": float(finite.max()) if finite.size else None,
            "mean": float(finite.mean()) if finite.size else None,
            "p1": float(np.percentile(finite, 1)) if finite.size else None,
            "p99": float(np.percentile(finite, 99)) if finite.size else None,
        },
        "modality_guess": guess_modality(image),
        **({"label_map_values": labels} if (labels := label_map_values(image)) is not None else {}),
        **({"notes": image_notes(image)} if image_notes(image) else {}),
        **({"frames": int(image.GetMetaData(FRAMES_KEY))} if image.HasMetaDataKey(FRAMES_KEY) else {}),
        **({"dicom_series": json.loads(image.GetMetaData(SERIES_KEY))} if image.HasMetaDataKey(SERIES_KEY) else {}),
    }
