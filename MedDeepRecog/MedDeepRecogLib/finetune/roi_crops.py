"""ROI classification samples: one fixed-size crop around each labelled segment, negatives away from all segments.

A crop is a small grid of ``size_vox`` voxels (Z, Y, X) laid along the scan's axes and centred on the segment's
centre of mass. Its physical extent is either fixed (``size_mm``) or the segment's bounding box plus ``margin_mm`` on
each side (made cubic so shapes are not distorted). Intensities are normalised before cropping (see
:func:`..segment_data.normalize_intensity`); the segment's own mask can be added as a second channel.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import MedDeepRecogError
from .segment_data import CaseData, normalize_intensity


@dataclass(frozen=True)
class RoiSpec:
    """How a crop is taken (stored in the model package as ``input.roi``, so inference crops the same way).

    Attributes:
        size_vox: output shape ``(Z, Y, X)``.
        margin_mm: margin around the segment's bounding box (used when ``size_mm`` is ``None``).
        size_mm: fixed physical edge length of the crop (mm), or ``None`` for box + margin.
        mask_channel: add the segment's mask as channel 2.
        normalize: intensity normalisation spec (see ``normalize_intensity``).
    """

    size_vox: tuple[int, int, int] = (32, 32, 32)
    margin_mm: float = 10.0
    size_mm: float | None = None
    mask_channel: bool = False
    normalize: dict[str, Any] | None = None

    @property
    def channels(self) -> int:
        return 2 if self.mask_channel else 1

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["size_vox"] = list(self.size_vox)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RoiSpec":
        data = dict(data)
        data["size_vox"] = tuple(int(s) for s in data.get("size_vox", (32, 32, 32)))
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class RoiSample:
    """A crop ``(C, Z, Y, X)`` float32 with its origin: case, segment name (``None`` for a negative), class."""

    case_id: str
    segment: str | None
    class_name: str
    array: np.ndarray
    center_mm: tuple[float, float, float]


def _crop(volume: sitk.Image, center_mm: Sequence[float], edge_mm: float, size_vox: Sequence[int],
          interpolator: int) -> np.ndarray:
    """Resample ``volume`` onto a cube of ``edge_mm`` centred at ``center_mm`` along the scan's axes.

    Returns a ``(Z, Y, X)`` float32 array of shape ``size_vox``.
    """
    size_xyz = [int(s) for s in reversed(tuple(size_vox))]
    spacing = [edge_mm / s for s in size_xyz]
    direction = np.array(volume.GetDirection()).reshape(3, 3)
    half = np.array([(n - 1) * sp / 2 for n, sp in zip(size_xyz, spacing)])
    origin = np.asarray(center_mm, dtype=float) - direction @ half
    out = sitk.Resample(volume, size_xyz, sitk.Transform(), interpolator, [float(o) for o in origin], spacing,
                        volume.GetDirection(), 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def _segment_geometry(item: CaseData, mask: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre of mass (LPS mm) and largest physical bounding-box edge (mm) of a ``(Z, Y, X)`` mask."""
    idx = np.argwhere(mask)
    center_zyx = idx.mean(axis=0)
    center = item.image.TransformContinuousIndexToPhysicalPoint([float(c) for c in center_zyx[::-1]])
    extent_xyz = (idx.max(axis=0) - idx.min(axis=0) + 1)[::-1] * np.array(item.image.GetSpacing())
    return np.array(center), float(extent_xyz.max())


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
    normalized = sitk.GetImageFromArray(normalize_intensity(sitk.GetArrayViewFromImage(item.image), item.modality,
                                                            spec.normalize))
    normalized.CopyInformation(item.image)
    samples: list[RoiSample] = []
    edges = []
    for index, seg in enumerate(item.segments, start=1):
        if seg.class_name not in classes or seg.voxels == 0:
            continue
        mask = item.segment_map == index
        center, extent = _segment_geometry(item, mask)
        edge = spec.size_mm if spec.size_mm else extent + 2 * spec.margin_mm
        edges.append(edge)
        mask_image = None
        if spec.mask_channel:
            mask_image = sitk.GetImageFromArray(mask.astype(np.float32))
            mask_image.CopyInformation(item.image)
        for k in range(samples_per_segment):
            c = center + (rng.uniform(-jitter_mm, jitter_mm, 3) if k and jitter_mm else 0.0)
            channels = [_crop(normalized, c, edge, spec.size_vox, sitk.sitkLinear)]
            if mask_image is not None:
                channels.append(_crop(mask_image, c, edge, spec.size_vox, sitk.sitkLinear))
            samples.append(RoiSample(item.case.case_id, seg.name, seg.class_name, np.stack(channels), tuple(c)))
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
        channels = [_crop(normalized, center, edge_mm, spec.size_vox, sitk.sitkLinear)]
        if spec.mask_channel:
            channels.append(zero_mask)
        out.append(RoiSample(item.case.case_id, None, negative_class, np.stack(channels), tuple(center)))
    return out


def crops_to_arrays(samples: Sequence[RoiSample], classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Stack samples into ``x (N, C, Z, Y, X)`` float32 and ``y (N,)`` int64 class indices into ``classes``."""
    if not samples:
        raise MedDeepRecogError("no ROI samples: no segment maps to one of the classes " + ", ".join(classes))
    x = np.stack([s.array for s in samples]).astype(np.float32)
    y = np.array([list(classes).index(s.class_name) for s in samples], dtype=np.int64)
    return x, y


def classify_segments(image_path: Any, segmentation_path: Any, package: Any, *, device: str = "cpu",
                      label_table: str | None = None) -> list[dict[str, Any]]:
    """Apply an ROI classification package (``input.kind == "roi3d"``) to every segment of a segmentation.

    Crops are taken exactly as in training (``input.roi``: size, margin or fixed mm, mask channel, normalisation).

    Returns:
        One ``{"segment", "label", "probabilities": {class: p}, "center_mm"}`` per non-empty segment.

    Raises:
        ModelPackageError: the package is not an ROI classifier.
    """
    import torch

    from ..errors import ModelPackageError
    from ..packages import load_package
    from .manifest import Case, parse_class_map
    from .segment_data import load_case

    pkg = load_package(package) if not hasattr(package, "meta") else package
    spec_json = pkg.input_spec
    if spec_json.get("kind") != "roi3d" or "roi" not in spec_json:
        raise ModelPackageError(f"model {pkg.id}@{pkg.version} is not an ROI classifier (input.kind "
                                f"{spec_json.get('kind')!r})", pkg.path)
    spec = RoiSpec.from_json(spec_json["roi"])
    from pathlib import Path

    item = load_case(Case("input", Path(image_path), Path(segmentation_path), label_table=label_table),
                     parse_class_map(None))
    samples = segment_crops(item, [s.name for s in item.segments], spec)
    if not samples:
        return []
    model = pkg.build_model(device)
    with torch.no_grad():
        x = torch.from_numpy(np.stack([s.array for s in samples])).to(device)
        probs = torch.softmax(model(x).float(), 1).cpu().numpy()
    names = pkg.class_names
    return [{"segment": s.segment, "label": names[int(p.argmax())],
             "probabilities": {n: round(float(v), 4) for n, v in zip(names, p)},
             "center_mm": [round(float(c), 2) for c in s.center_mm]} for s, p in zip(samples, probs)]
