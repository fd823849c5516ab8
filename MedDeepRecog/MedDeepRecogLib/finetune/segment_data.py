"""Fine-tuning cases as arrays on the scan's grid, their segments mapped to classes, and what the data hold.

Every case is read onto the scan's own grid by :func:`..inference.roi_classify.read_scan_segments` (the same
reading ROI classification uses at inference: geometry checks, label tables, resampling); here its segment names
are mapped to classes (:class:`.manifest.ClassMap`). Arrays are ``(Z, Y, X)``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import MedDeepRecogError
from ..inference.roi_classify import read_scan_segments
from .lineage import scan_id
from .manifest import Case, ClassMap

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentInfo:
    """A segment as found in a case: its name, its class (``None``: unmapped), its voxel count on the scan grid and
    the colour the user gave it (RGB 0-1 from a ``.seg.nrrd``, else ``None``): a fine-tuned package keeps it."""

    name: str
    class_name: str | None
    voxels: int
    color: tuple[float, float, float] | None = None


@dataclass
class CaseData:
    """One case on the scan's grid.

    Attributes:
        image: the scan as float32 (HU for CT), geometry as stored.
        segment_map: ``(Z, Y, X)`` uint16, ``k`` = the k-th segment of ``segments`` (0: none).
        segments: one :class:`SegmentInfo` per segment, in file order.
        modality: ``"CT"``, ``"MR"`` or ``"unknown"`` (DICOM tag, else intensities).
        warnings: problems worth telling the user (resampled, empty or unmapped segments), each naming the case.
        scan_id: the scan's :func:`.lineage.scan_id` (what a package records of the scans it trained on).
    """

    case: Case
    image: sitk.Image
    segment_map: np.ndarray
    segments: list[SegmentInfo]
    modality: str
    warnings: list[str] = field(default_factory=list)
    scan_id: str = ""

    def class_labels(self, classes: Sequence[str]) -> np.ndarray:
        """``(Z, Y, X)`` uint8 label map: 0 background (and unmapped segments), ``i + 1`` for ``classes[i]``."""
        lut = np.zeros(len(self.segments) + 1, dtype=np.uint8)
        for index, seg in enumerate(self.segments, start=1):
            if seg.class_name is not None and seg.class_name in classes:
                lut[index] = classes.index(seg.class_name) + 1
        return lut[self.segment_map]


def load_case(case: Case, class_map: ClassMap, *, geometry: str = "physical") -> CaseData:
    """Read one case: scan (float32) and its segments on the scan's grid
    (:func:`..inference.roi_classify.read_scan_segments`), segment names mapped to classes.

    Warnings (segments resampled, empty after resampling, or mapped to no class) are collected in
    ``CaseData.warnings``, each naming the case (the model card lists them). Resampling is logged here, per case;
    empty and unmapped segments are logged once for the whole data set by :func:`log_segment_summary`, since the
    same names usually recur in every case.

    Raises:
        MedDeepRecogError / InputImageError: unreadable files, grids that do not overlap, no segments at all,
            segments of two different classes that share voxels.
    """
    scan = read_scan_segments(case.image, case.segmentation, label_table=case.label_table,
                              geometry=case.geometry if geometry == "physical" else geometry, where=case.case_id)
    # only segments of two different classes cannot share a voxel: two segments of one class agree on it, and a
    # segment mapped to no class gives its voxels back to the class segment it covers (below)
    clash = [(a, b, n) for a, b, n in scan.overlaps
             if class_map.class_of(a) and class_map.class_of(b) and class_map.class_of(a) != class_map.class_of(b)]
    if clash:
        pairs = ", ".join(f"{a!r} and {b!r} in {n:,} voxel{'s' if n != 1 else ''}" for a, b, n in clash)
        raise MedDeepRecogError(f"case {case.case_id!r}: segments overlap: {pairs}; a voxel can be of one class "
                                "only: remove the overlap (Segment Editor) and save the segmentation again",
                                case.segmentation)
    segment_map = scan.segment_map
    if scan.covered:
        # the map gives shared voxels to the later segment: where that one maps to no class, they go back to the
        # earlier segment's class (a lesion drawn over its organ in another layer, left out, takes no organ voxel)
        segment_map = segment_map.copy()
        for index, covered in sorted(scan.covered.items()):
            if class_map.class_of(scan.names[index - 1]) is None:
                continue
            owner = segment_map[covered]
            unmapped = np.array([0] + [class_map.class_of(n) is None for n in scan.names], bool)[owner]
            where = np.flatnonzero(covered)[unmapped]
            segment_map.flat[where] = index
    for message in scan.warnings:  # resampling: case by case
        log.warning(message)
    warnings = list(scan.warnings)
    # a class's segment counts the voxels it labels; one mapped to no class its own (not empty when covered)
    counts = np.bincount(segment_map.ravel(), minlength=len(scan.names) + 1)
    drawn = np.bincount(scan.segment_map.ravel(), minlength=len(scan.names) + 1)
    colors = segment_colors(case.segmentation)
    segments = [SegmentInfo(name, class_map.class_of(name), int(counts[i]) if class_map.class_of(name) is not None
                            else int(drawn[i]) + int(scan.covered[i].sum() if i in scan.covered else 0),
                            colors.get(name))
                for i, name in enumerate(scan.names, start=1)]
    empty = [s.name for s in segments if s.voxels == 0]
    if empty:
        warnings.append(f"case {case.case_id!r}: empty segment(s) skipped: {', '.join(empty)}")
    unmapped = [s.name for s in segments if s.class_name is None and s.voxels > 0]
    if unmapped:
        warnings.append(f"case {case.case_id!r}: segment(s) mapped to no class (ignored): {', '.join(unmapped)}")
    return CaseData(case, scan.image, segment_map, segments, scan.modality, warnings, scan_id(scan.image))


def segment_colors(path) -> dict[str, tuple[float, float, float]]:
    """``{segment name: RGB 0-1}`` of a ``.seg.nrrd``'s segments as the user coloured them (its header only), ``{}``
    for a label map or a file without colours."""
    import slicerio

    if not str(path).lower().endswith(".seg.nrrd"):
        return {}
    try:
        header = slicerio.read_segmentation(str(path), skip_voxels=True)
    except Exception:  # noqa: BLE001 - read in full (and refused with its reason) by read_scan_segments already
        return {}
    colors = {}
    for segment in header.get("segments", []):
        try:
            rgb = tuple(float(c) for c in segment.get("color") or ())
        except (TypeError, ValueError):
            continue
        if len(rgb) == 3 and all(0.0 <= c <= 1.0 for c in rgb):
            colors.setdefault(str(segment.get("name")), rgb)
    return colors


def class_colors(data: Sequence[CaseData], classes: Sequence[str], inherited: dict | None = None) -> dict:
    """``{class: [r, g, b]}``: each class's colour as the user's segmentations give it (the first case's segment
    mapped to it that has one), else as ``inherited`` (the base package's ``class_colors``) gives it: what a
    fine-tuned package's ``class_colors`` records, so ``segment`` writes the class in the user's colour."""
    found: dict[str, list[float]] = {}
    for item in data:
        for seg in item.segments:
            if seg.class_name in classes and seg.color is not None and seg.class_name not in found:
                found[seg.class_name] = [round(float(c), 6) for c in seg.color]
    for name, rgb in (inherited or {}).items():
        if name in classes and name not in found and isinstance(rgb, (list, tuple)) and len(rgb) == 3:
            found[name] = [float(c) for c in rgb]
    return {name: found[name] for name in classes if name in found}


def log_segment_summary(data: Sequence[CaseData], source: str | Path) -> list[str]:
    """Log, once for all cases, the segments that were empty or mapped to no class, each name with the number of
    cases it was so in; returns the lines logged."""
    empty: dict[str, int] = {}
    unmapped: dict[str, int] = {}
    for item in data:
        for seg in item.segments:
            if seg.voxels == 0:
                empty[seg.name] = empty.get(seg.name, 0) + 1
            elif seg.class_name is None:
                unmapped[seg.name] = unmapped.get(seg.name, 0) + 1
    lines = []
    for what, counts in (("empty segment(s) skipped", empty), ("segment(s) mapped to no class (ignored)", unmapped)):
        if counts:
            names = ", ".join(f"{name} ({n} of {len(data)} cases)" for name, n in sorted(counts.items()))
            lines.append(f"{source}: {what}: {names}")
    for line in lines:
        log.warning(line)
    return lines


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
    if missing:  # a class the network never sees would be in the package, its output untrained
        names = sorted({s.name for d in data for s in d.segments if s.voxels > 0})
        raise MedDeepRecogError(f"class(es) {', '.join(missing)} of --class-map have no voxels in any case (non-empty "
                                f"segments: {', '.join(names[:20])}{' …' if len(names) > 20 else ''}); label them or "
                                "leave them out of the class map", source)
    return classes


def check_training_classes(train: Sequence[CaseData], val: Sequence[CaseData], classes: Sequence[str],
                           source: str | Path) -> None:
    """Refuse classes that only the validation cases hold (whether from segment names or, with ``label_source``
    ``"case"``, the cases' labels): the package would have an output the network never learnt, and validation
    would score it as if it had.

    Raises:
        MedDeepRecogError: naming the classes and the validation cases that hold them.
    """
    seen = {s.class_name for d in train for s in d.segments if s.class_name is not None and s.voxels > 0}
    missing = [c for c in classes if c not in seen]
    if not missing:
        return
    where = sorted({d.case.case_id for d in val for s in d.segments if s.class_name in missing and s.voxels > 0})
    raise MedDeepRecogError(f"class(es) {', '.join(missing)} appear only in the validation case(s) "
                            f"{', '.join(where) or '(none)'}, so the network would never learn them: put a case of "
                            "theirs in training (--val-cases names the validation cases) or leave them out",
                            source)
