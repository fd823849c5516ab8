"""ROI classification training samples: crops around labelled segments (several per segment, jittered) and
negatives away from all segments.

One crop is made as at inference (:mod:`..inference.roi_classify`: :class:`~..inference.roi_classify.RoiSpec`,
the same normalisation, geometry and mask channel); here a segment also gets extra crops whose centres move by up
to ``jitter_mm``, and a case gets background crops centred away from every labelled voxel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import MedDeepRecogError
from ..inference.roi_classify import RoiSpec, crop_cube, normalized_scan, roi_crop, segment_roi
from .segment_data import CaseData, SegmentInfo


@dataclass
class RoiSample:
    """A crop ``(C, Z, Y, X)`` float32 with its origin: case, segment name (``None`` for a negative), class."""

    case_id: str
    segment: str | None
    class_name: str
    array: np.ndarray
    center_mm: tuple[float, float, float]


def cropped_segments(item: CaseData, classes: Sequence[str]) -> list[tuple[int, SegmentInfo]]:
    """``(index in the segment map, segment)`` of every segment of ``item`` that gets crops: those of ``classes``
    that hold voxels."""
    return [(index, seg) for index, seg in enumerate(item.segments, start=1)
            if seg.class_name in classes and seg.voxels > 0]


def crop_count(item: CaseData, classes: Sequence[str], samples_per_segment: int = 1, negatives: int = 0) -> int:
    """How many crops :func:`segment_crops` makes of ``item`` with these settings, at most (a scan with too few
    places away from its segments gives fewer negatives): known before any is made."""
    return len(cropped_segments(item, classes)) * samples_per_segment + negatives


def check_crops(count: int, spec: RoiSpec, setting: str, source=None) -> None:
    """Refuse, before any is made, ``count`` crops of ``spec`` whose float32 arrays would take more than
    :func:`..limits.max_dataset_bytes` (``--roi-size 1024,1024,1024``: 4 GiB a crop, and the run ran out of
    memory); ``setting`` names where the crop size comes from."""
    from ..limits import check_dataset_bytes

    shape = [spec.channels, *(int(s) for s in spec.size_vox)]
    check_dataset_bytes(4 * count * math.prod(shape), f"{count:,} crops of {' x '.join(map(str, shape))} voxels as "
                        "float32 (every segment's samples, negatives and validation crops)", setting, source,
                        "give a smaller --roi-size or fewer samples_per_segment / --negatives")


def segment_crops(item: CaseData, classes: Sequence[str], spec: RoiSpec, *, samples_per_segment: int = 1,
                  jitter_mm: float = 0.0, negatives: int = 0, negative_class: str = "background",
                  min_distance_mm: float | None = None, seed: int = 0) -> list[RoiSample]:
    """Crops of every segment of ``item`` whose class is in ``classes`` (and ``negatives`` crops away from them).

    Args:
        samples_per_segment: crops per segment; beyond the first, centres move by up to ``jitter_mm``.
        negatives: crops centred at random points inside the scan at least ``min_distance_mm`` (default: half the
            crop edge) from every labelled voxel, labelled ``negative_class``.

    Returns:
        Samples in segment order, then negatives. A case with no eligible segment gives only negatives.
    """
    rng = np.random.default_rng(seed)
    normalized = normalized_scan(item.image, item.modality, spec)
    samples: list[RoiSample] = []
    edges = []
    for index, seg in cropped_segments(item, classes):
        center, edge, mask_image = segment_roi(item.image, item.segment_map == index, spec)
        edges.append(edge)
        for k in range(samples_per_segment):
            c = center + (rng.uniform(-jitter_mm, jitter_mm, 3) if k and jitter_mm else 0.0)
            samples.append(RoiSample(item.case.case_id, seg.name, seg.class_name,
                                     roi_crop(normalized, mask_image, c, edge, spec), tuple(c)))
    if negatives:
        samples.extend(negative_crops(item, spec, negatives, edge_mm=float(np.median(edges)) if edges else
                                      (spec.size_mm or 40.0), negative_class=negative_class,
                                      min_distance_mm=min_distance_mm, normalized=normalized, rng=rng))
    return samples


def negative_crops(item: CaseData, spec: RoiSpec, count: int, *, edge_mm: float, negative_class: str,
                   min_distance_mm: float | None, normalized: sitk.Image, rng: np.random.Generator) -> list[RoiSample]:
    """``count`` crops centred away from every segment (and inside the body where the scan has one).

    Raises:
        MedDeepRecogError: the scan has no place far enough from the segments.
    """
    min_distance = edge_mm / 2 if min_distance_mm is None else min_distance_mm
    labelled = sitk.GetImageFromArray((item.segment_map > 0).astype(np.uint8))
    labelled.CopyInformation(item.image)
    if item.segment_map.any():
        distance = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(labelled, insideIsPositive=False,
                                                                       squaredDistance=False, useImageSpacing=True))
    else:
        distance = np.full(item.segment_map.shape, np.inf, dtype=np.float32)
    values = sitk.GetArrayViewFromImage(normalized)
    allowed = (distance >= min_distance) & (values > 0.05)  # skip air / empty background outside the body
    candidates = np.argwhere(allowed)
    if len(candidates) == 0:
        raise MedDeepRecogError(f"case {item.case.case_id!r}: no place at least {min_distance:.0f} mm away from the "
                                "segments for negative samples; lower the distance or the number of negatives",
                                item.case.image)
    picks = candidates[rng.choice(len(candidates), size=min(count, len(candidates)), replace=False)]
    zero_mask = np.zeros(spec.size_vox, dtype=np.float32)
    out = []
    for zyx in picks:
        center = np.array(item.image.TransformIndexToPhysicalPoint([int(i) for i in zyx[::-1]]))
        channels = [crop_cube(normalized, center, edge_mm, spec.size_vox, sitk.sitkLinear)]
        if spec.mask_channel:
            channels.append(zero_mask)
        out.append(RoiSample(item.case.case_id, None, negative_class, np.stack(channels), tuple(center)))
    return out


def crops_to_arrays(samples: Sequence[RoiSample], classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Stack samples into ``x (N, C, Z, Y, X)`` float32 and ``y (N,)`` int64 class indices into ``classes``."""
    if not samples:
        raise MedDeepRecogError("no ROI samples: no segment maps to one of the classes " + ", ".join(classes))
    x = np.stack([s.array for s in samples]).astype(np.float32, copy=False)   # crops are float32: no third copy
    y = np.array([list(classes).index(s.class_name) for s in samples], dtype=np.int64)
    return x, y
