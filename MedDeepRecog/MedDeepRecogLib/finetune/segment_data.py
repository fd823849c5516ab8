"""Scans and their segments as arrays on one grid: geometry checks, label tables, segment → class mapping.

Every case is read into the scan's own grid: a segmentation on another grid (a Slicer ``.seg.nrrd`` cropped to its
extent, a label map with a flipped axis, another spacing) is resampled onto the scan with nearest-neighbour
interpolation; one that does not overlap the scan in space is refused. Arrays are ``(Z, Y, X)``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import ConfigError, MedDeepRecogError
from ..io import array_from_image, read_image, read_segmentation, require_3d, same_geometry, validate_intensities
from ..io.image_io import guess_modality
from .manifest import Case, ClassMap

log = logging.getLogger(__name__)

#: Default intensity normalisation: CT in a soft-tissue window (HU), MR by per-scan percentiles; result in 0..1.
DEFAULT_NORMALIZE: dict[str, Any] = {"kind": "auto", "ct_window_hu": [-200.0, 300.0], "percentiles": [0.5, 99.5]}


@dataclass(frozen=True)
class SegmentInfo:
    """A segment as found in a case: its name, its class (``None``: unmapped) and its voxel count on the scan grid."""

    name: str
    class_name: str | None
    voxels: int


@dataclass
class CaseData:
    """One case on the scan's grid.

    Attributes:
        image: the scan as float32 (HU for CT), geometry as stored.
        segment_map: ``(Z, Y, X)`` uint16, ``k`` = the k-th segment of ``segments`` (0: none).
        segments: one :class:`SegmentInfo` per segment, in file order.
        modality: ``"CT"``, ``"MR"`` or ``"unknown"`` (DICOM tag, else intensities).
        warnings: problems worth telling the user (resampled, empty or unmapped segments), each naming the case.
    """

    case: Case
    image: sitk.Image
    segment_map: np.ndarray
    segments: list[SegmentInfo]
    modality: str
    warnings: list[str] = field(default_factory=list)

    def class_labels(self, classes: Sequence[str]) -> np.ndarray:
        """``(Z, Y, X)`` uint8 label map: 0 background (and unmapped segments), ``i + 1`` for ``classes[i]``."""
        lut = np.zeros(len(self.segments) + 1, dtype=np.uint8)
        for index, seg in enumerate(self.segments, start=1):
            if seg.class_name is not None and seg.class_name in classes:
                lut[index] = classes.index(seg.class_name) + 1
        return lut[self.segment_map]


def read_label_table(spec: str | Path) -> dict[int, str]:
    """Read an id → name table: JSON ``{"5": "liver"}`` (``FILE#KEY`` picks a nested table) or a Slicer color table.

    Raises:
        ConfigError: unreadable or malformed table.
    """
    file_part, _, key = str(spec).partition("#")
    path = Path(file_part)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"label table cannot be read ({exc})", path) from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"label table is not valid JSON ({exc})", path) from None
        if key:
            if key not in data:
                raise ConfigError(f"label table has no entry {key!r} (has {sorted(data)})", path)
            data = data[key]
        try:
            return {int(k): str(v) for k, v in data.items()}
        except (ValueError, AttributeError):
            raise ConfigError("label table must map integer ids to names", path) from None
    table = {}
    for line in text.splitlines():  # Slicer color table: "value name r g b a"
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        try:
            table[int(parts[0])] = parts[1]
        except (ValueError, IndexError):
            raise ConfigError(f"label table line {line!r} is not 'value name r g b a'", path) from None
    return table


def physical_bounds(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned physical box (LPS mm: min corner, max corner) covered by ``image``'s voxels, edges included."""
    size = np.array(image.GetSize())
    corners = []
    for corner in np.ndindex(2, 2, 2):
        index = np.where(np.array(corner) == 1, size - 0.5, -0.5)
        corners.append(image.TransformContinuousIndexToPhysicalPoint([float(i) for i in index]))
    corners = np.array(corners)
    return corners.min(axis=0), corners.max(axis=0)


def overlap_fraction(a: sitk.Image, b: sitk.Image) -> float:
    """Share of ``a``'s physical box that lies inside ``b``'s (0: disjoint)."""
    lo_a, hi_a = physical_bounds(a)
    lo_b, hi_b = physical_bounds(b)
    inter = np.clip(np.minimum(hi_a, hi_b) - np.maximum(lo_a, lo_b), 0, None)
    vol_a = float(np.prod(hi_a - lo_a))
    return float(np.prod(inter)) / vol_a if vol_a > 0 else 0.0


def align_to_scan(segment_map: np.ndarray, seg_grid: sitk.Image, scan: sitk.Image, *, where: str,
                  path: Path, geometry: str = "physical", warnings: list[str] | None = None) -> np.ndarray:
    """Put a ``(Z, Y, X)`` segment map from ``seg_grid`` onto ``scan``'s grid.

    Args:
        geometry: ``"physical"`` (resample by physical position, nearest neighbour) or ``"array"`` (take the voxels
            as they are when the sizes match: for files whose header is known to be wrong).
        where: the case name, used in messages.

    Raises:
        MedDeepRecogError: the two grids do not overlap in space, or ``"array"`` pairing with different sizes.
    """
    warnings = warnings if warnings is not None else []
    if same_geometry(seg_grid, scan, tolerance=1e-3):
        return segment_map
    if geometry == "array":
        if seg_grid.GetSize() != scan.GetSize():
            raise MedDeepRecogError(f"case {where!r}: 'array' pairing needs equal sizes, segmentation "
                                    f"{list(seg_grid.GetSize())} vs scan {list(scan.GetSize())}", path)
        warnings.append(f"case {where!r}: segmentation header differs from the scan's; voxels paired by array index")
        return segment_map
    fraction = overlap_fraction(seg_grid, scan)
    if fraction <= 0.0:
        lo_s, hi_s = physical_bounds(seg_grid)
        lo_i, hi_i = physical_bounds(scan)
        raise MedDeepRecogError(
            f"case {where!r}: segmentation and scan do not overlap in space (segmentation box "
            f"{np.round(lo_s, 1).tolist()}..{np.round(hi_s, 1).tolist()} mm, scan box "
            f"{np.round(lo_i, 1).tolist()}..{np.round(hi_i, 1).tolist()} mm)", path)
    source = sitk.GetImageFromArray(segment_map.astype(np.uint16))
    source.CopyInformation(seg_grid)
    resampled = sitk.Resample(source, scan, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt16)
    same_voxels = (np.allclose(seg_grid.GetSpacing(), scan.GetSpacing(), atol=1e-3)
                   and np.allclose(np.abs(np.array(seg_grid.GetDirection())), np.abs(np.array(scan.GetDirection())),
                                   atol=1e-3))
    message = (f"case {where!r}: segmentation grid differs from the scan's (size {list(seg_grid.GetSize())} vs "
               f"{list(scan.GetSize())}, spacing {np.round(seg_grid.GetSpacing(), 3).tolist()} vs "
               f"{np.round(scan.GetSpacing(), 3).tolist()}); resampled onto the scan (nearest neighbour)")
    if fraction < 0.999:
        message += f"; {100 * (1 - fraction):.0f}% of the segmentation lies outside the scan"
    if same_voxels and fraction >= 0.999:
        log.info(message)  # a cropped or axis-flipped grid on the same voxels: nothing is lost
    else:
        warnings.append(message)
    return array_from_image(resampled)


def _read_segments(case: Case) -> tuple[np.ndarray, sitk.Image, list[str]]:
    """Segment map ``(Z, Y, X)`` (1..N), its grid and segment names, from a ``.seg.nrrd`` or a label map."""
    path = case.segmentation
    if path.name.lower().endswith(".seg.nrrd"):
        labelmap, grid, specs = read_segmentation(path)
        return labelmap.astype(np.uint16), grid, [s.name for s in specs]
    image = require_3d(read_image(path), path)
    values = array_from_image(image)
    if np.issubdtype(values.dtype, np.floating):
        if not np.all(np.isfinite(values)) or not np.allclose(values, np.round(values)):
            raise MedDeepRecogError(f"case {case.case_id!r}: label map holds non-integer values", path)
    values = np.round(values).astype(np.int64)
    table = read_label_table(case.label_table) if case.label_table else {}
    ids = [int(v) for v in np.unique(values) if v != 0]
    names = [table.get(v, f"label_{v}") for v in ids]
    lut_size = (max(ids) + 1) if ids else 1
    if min(ids, default=0) < 0 or lut_size > 1 << 16:
        raise MedDeepRecogError(f"case {case.case_id!r}: label values must lie in 0..65535", path)
    lut = np.zeros(lut_size, dtype=np.uint16)
    for index, value in enumerate(ids, start=1):
        lut[value] = index
    grid = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    grid.CopyInformation(image)
    return lut[values], grid, names


def load_case(case: Case, class_map: ClassMap, *, geometry: str = "physical") -> CaseData:
    """Read one case: scan (float32) and its segments on the scan's grid, segment names mapped to classes.

    Warnings (segments resampled, empty after resampling, or mapped to no class) are collected in
    ``CaseData.warnings`` and logged, each naming the case.

    Raises:
        MedDeepRecogError / InputImageError: unreadable files, grids that do not overlap, no segments at all.
    """
    image = require_3d(read_image(case.image, pixel_type=sitk.sitkFloat32), case.image)
    validate_intensities(image, case.image)
    modality = guess_modality(read_image(case.image)) if case.image.is_dir() else guess_modality(image)
    warnings: list[str] = []
    segment_map, grid, names = _read_segments(case)
    if not names:
        raise MedDeepRecogError(f"case {case.case_id!r}: segmentation has no segments (all voxels are 0)",
                                case.segmentation)
    segment_map = align_to_scan(segment_map, grid, image, where=case.case_id, path=case.segmentation,
                                geometry=case.geometry if geometry == "physical" else geometry,
                                warnings=warnings)
    counts = np.bincount(segment_map.ravel(), minlength=len(names) + 1)
    segments = [SegmentInfo(name, class_map.class_of(name), int(counts[i])) for i, name in enumerate(names, start=1)]
    empty = [s.name for s in segments if s.voxels == 0]
    if empty:
        warnings.append(f"case {case.case_id!r}: empty segment(s) skipped: {', '.join(empty)}")
    unmapped = [s.name for s in segments if s.class_name is None and s.voxels > 0]
    if unmapped:
        warnings.append(f"case {case.case_id!r}: segment(s) mapped to no class (ignored): {', '.join(unmapped)}")
    for message in warnings:
        log.warning(message)
    return CaseData(case, image, segment_map, segments, modality, warnings)


def dataset_report(data: Sequence[CaseData], classes: Sequence[str]) -> dict[str, Any]:
    """Per-class segment and voxel counts, per-case warnings: what the model card says about the data."""
    report: dict[str, Any] = {"cases": len(data), "classes": {c: {"cases": 0, "segments": 0, "voxels": 0}
                                                                for c in classes}, "warnings": []}
    for item in data:
        seen = set()
        for seg in item.segments:
            if seg.class_name in report["classes"] and seg.voxels > 0:
                entry = report["classes"][seg.class_name]
                entry["segments"] += 1
                entry["voxels"] += seg.voxels
                seen.add(seg.class_name)
        for cls in seen:
            report["classes"][cls]["cases"] += 1
        report["warnings"].extend(item.warnings)
    return report


def resolve_classes(data: Sequence[CaseData], class_map: ClassMap, source: str | Path) -> list[str]:
    """Class order: the class map's, else every mapped segment name seen (sorted). Raises when nothing maps."""
    present = sorted({s.class_name for d in data for s in d.segments if s.class_name is not None and s.voxels > 0})
    if not present:
        names = sorted({s.name for d in data for s in d.segments})
        raise MedDeepRecogError(f"no segment maps to a class (segments found: {', '.join(names[:20])}"
                                f"{' …' if len(names) > 20 else ''}); give --class-map SEGMENT=CLASS,…", source)
    classes = list(class_map.classes) if class_map.mapping is not None else present
    missing = [c for c in classes if c not in present]
    if missing:
        log.warning("%s: class(es) with no voxels in any case: %s", source, ", ".join(missing))
    return classes


def normalize_intensity(array: np.ndarray, modality: str, spec: dict[str, Any] | None = None) -> np.ndarray:
    """Scale a scan's voxels to about 0..1: CT by a fixed HU window, anything else by per-scan percentiles.

    ``spec`` is configuration as data (stored in the model package): ``{"kind": "auto"|"ct_window"|"percentile",
    "ct_window_hu": [lo, hi], "percentiles": [lo, hi]}``. Returns float32.
    """
    spec = {**DEFAULT_NORMALIZE, **(spec or {})}
    kind = spec["kind"]
    if kind == "auto":
        kind = "ct_window" if modality == "CT" else "percentile"
    array = np.asarray(array, dtype=np.float32)
    if kind == "ct_window":
        lo, hi = spec["ct_window_hu"]
    elif kind == "percentile":
        lo, hi = np.percentile(array, spec["percentiles"])
    else:
        raise ConfigError(f"unknown intensity normalisation {kind!r}")
    scale = float(hi - lo) or 1.0
    return np.clip((array - lo) / scale, 0.0, 1.0).astype(np.float32)


def resample_to_spacing(image: sitk.Image, spacing_mm: Sequence[float], *, interpolator: int = sitk.sitkLinear,
                        default: float = 0.0) -> sitk.Image:
    """Resample ``image`` to ``spacing_mm`` (x, y, z) over the same physical extent, keeping origin and direction."""
    spacing = np.array([float(s) for s in spacing_mm])
    old_spacing = np.array(image.GetSpacing())
    if np.allclose(spacing, old_spacing, rtol=1e-4):
        return image
    size = np.maximum(1, np.round(np.array(image.GetSize()) * old_spacing / spacing)).astype(int)
    return sitk.Resample(image, [int(s) for s in size], sitk.Transform(), interpolator, image.GetOrigin(),
                         [float(s) for s in spacing], image.GetDirection(), default, image.GetPixelID())
