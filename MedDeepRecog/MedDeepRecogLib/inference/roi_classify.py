"""ROI classification inference: the scan with its segments on one grid, a crop around each segment, its class.

An ROI classifier (``input.kind roi3d``, from ``meddeeprecog finetune --task classify``) labels every segment of a
segmentation. Its input is made here, the same way for training (``finetune/roi_crops.py``) and inference:

- :func:`read_scan_segments`: the scan (float32, HU for CT) and its segments on the scan's own grid. A segmentation
  on another grid (a Slicer ``.seg.nrrd`` cropped to its extent, a label map with a flipped axis, another spacing)
  is resampled onto the scan with nearest-neighbour interpolation; one that does not overlap the scan in space is
  refused. Plain label maps are named by a label table (:func:`read_label_table`). Arrays are ``(Z, Y, X)``.
- :class:`RoiSpec` (stored in the package as ``input.roi``) and :func:`roi_crop`: a small grid of ``size_vox``
  voxels laid along the scan's axes, centred on the segment's centre of mass; its physical extent is fixed
  (``size_mm``) or the segment's bounding box plus ``margin_mm`` on each side (made cubic so shapes are not
  distorted). Intensities are normalised first (:func:`.segment.normalize_intensity`); the segment's own mask
  can be a second channel.
- :func:`classify_segments`: one crop per segment through the package's network.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import ConfigError, MedDeepRecogError
from ..io import array_from_image, read_image, require_3d, same_geometry, validate_intensities
from ..io.geometry import overlap_fraction, physical_box
from ..io.image_content import guess_modality
from ..io.segmentation_io import read_segmentation_with_covered
from .segment import check_scan_modality, normalize_intensity

log = logging.getLogger(__name__)


@dataclass
class ScanSegments:
    """A scan and its segments on the scan's grid.

    Attributes:
        image: the scan as float32 (HU for CT), geometry as stored.
        segment_map: ``(Z, Y, X)`` uint16, ``k`` = the k-th name of ``names`` (0: none).
        names: segment names in file order.
        modality: ``"CT"``, ``"MR"`` or ``"unknown"`` (DICOM tag, else intensities).
        warnings: problems worth telling the user (a resampled segmentation), each naming the case.
        overlaps: ``(earlier name, later name, voxels)`` for segments of a layered ``.seg.nrrd`` that share voxels;
            ``segment_map`` gives those voxels to the later one.
        covered: ``{k: (Z, Y, X) bool}``, the voxels of the k-th segment that a later one covers in
            ``segment_map`` (empty without overlaps); :meth:`mask` puts them back.
    """

    image: sitk.Image
    segment_map: np.ndarray
    names: list[str]
    modality: str
    warnings: list[str] = field(default_factory=list)
    overlaps: list[tuple[str, str, int]] = field(default_factory=list)
    covered: dict[int, np.ndarray] = field(default_factory=dict)

    def mask(self, index: int) -> np.ndarray:
        """The whole ``(Z, Y, X)`` bool mask of the ``index``-th segment (1-based), its overlapped voxels included."""
        mask = self.segment_map == index
        if index in self.covered:
            mask |= self.covered[index]
        return mask


def read_scan_segments(image_path: str | Path, segmentation_path: str | Path, *, label_table: str | None = None,
                       geometry: str = "physical", where: str = "input", model: Any = None) -> ScanSegments:
    """Read a scan (float32) and its segments onto the scan's grid (see the module docstring).

    Args:
        geometry: ``"physical"`` (resample by position) or ``"array"`` (pair voxels by index: for a file whose
            header is known to be wrong, sizes equal).
        where: the case name used in messages.
        model: the ROI classifier the segments are read for: a scan of another modality than its ``modality``
            (the training cases') is refused as ``segment`` refuses one (:func:`.segment.check_scan_modality`),
            before the segmentation is read.

    Raises:
        MedDeepRecogError / InputImageError: unreadable files, grids that do not overlap, no segments at all, a
        scan of another modality than ``model``'s.
    """
    image_path, segmentation_path = Path(image_path), Path(segmentation_path)
    stored = require_3d(read_image(image_path), image_path)
    if model is not None:  # on the image as read: a DICOM series' tag says its modality, and the cast drops it
        check_scan_modality(stored, model, image_path, does="classifies segments of")
    modality = guess_modality(stored)  # before the cast, which drops the DICOM tags
    image = sitk.Cast(stored, sitk.sitkFloat32)
    del stored
    validate_intensities(image, image_path)
    warnings: list[str] = []
    segment_map, grid, names, overlaps, covered = read_segment_map(segmentation_path, label_table, where)
    if not names:
        raise MedDeepRecogError(f"case {where!r}: segmentation has no segments (all voxels are 0)", segmentation_path)
    segment_map = align_to_scan(segment_map, grid, image, where=where, path=segmentation_path, geometry=geometry,
                                warnings=warnings)
    covered = {k: align_to_scan(m.astype(np.uint16), grid, image, where=where, path=segmentation_path,
                                geometry=geometry) > 0 for k, m in covered.items()}
    return ScanSegments(image, segment_map, names, modality, warnings, overlaps, covered)


def read_segment_map(path: Path, label_table: str | None = None, where: str = "input"
                     ) -> tuple[np.ndarray, sitk.Image, list[str], list[tuple[str, str, int]], dict[int, np.ndarray]]:
    """Segment map ``(Z, Y, X)`` (1..N), its grid, segment names, overlaps (``(earlier, later, voxels)``) and the
    voxels later segments cover (``{k: (Z, Y, X) bool}``; both a layered ``.seg.nrrd``'s only), from a ``.seg.nrrd``
    or a label map (whose values ``label_table`` names; unnamed values read ``label_<value>``). ``where`` names the
    case in messages."""
    if path.name.lower().endswith(".seg.nrrd"):
        labelmap, grid, specs, covered = read_segmentation_with_covered(path)
        overlaps = [(earlier, s.name, n) for s in specs for earlier, n in s.overlaps]
        return labelmap.astype(np.uint16), grid, [s.name for s in specs], overlaps, covered
    image = require_3d(read_image(path), path)
    values = array_from_image(image)
    if np.issubdtype(values.dtype, np.floating):
        if not np.all(np.isfinite(values)) or not np.allclose(values, np.round(values)):
            raise MedDeepRecogError(f"case {where!r}: label map holds non-integer values", path)
    values = np.round(values).astype(np.int64)
    table = read_label_table(label_table) if label_table else {}
    ids = [int(v) for v in np.unique(values) if v != 0]
    if table and ids and not any(v in table for v in ids):   # another file's table (e.g. #total for an MR's map)
        shown = ", ".join(map(str, ids[:8])) + (", ..." if len(ids) > 8 else "")
        raise ConfigError(f"case {where!r}: the label table {label_table} names none of the label map's values "
                          f"({shown}); give the table this label map was written with", path)
    names = [table.get(v, f"label_{v}") for v in ids]
    lut_size = (max(ids) + 1) if ids else 1
    if min(ids, default=0) < 0 or lut_size > 1 << 16:
        raise MedDeepRecogError(f"case {where!r}: label values must lie in 0..65535", path)
    lut = np.zeros(lut_size, dtype=np.uint16)
    for index, value in enumerate(ids, start=1):
        lut[value] = index
    grid = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    grid.CopyInformation(image)
    return lut[values], grid, names, [], {}


def checked_label_table(spec: str | Path) -> dict[int, str]:
    """:func:`read_label_table`, refusing an empty table (the label map's values would keep their numbers), so a
    command reads it before any work.

    Raises:
        ConfigError: unreadable, malformed or empty table.
    """
    table = read_label_table(spec)
    if not table:
        raise ConfigError("label table is empty", spec)
    return table


def read_label_table(spec: str | Path) -> dict[int, str]:
    """Read an id → name table: JSON ``{"5": "liver"}`` (``FILE#KEY`` picks a nested table) or a Slicer color table
    (:data:`..contract.LABEL_TABLE_FORMATS`).

    Raises:
        ConfigError: unreadable or malformed table, or one giving a value an empty name or two values one name.
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
            table = {int(k): str(v) for k, v in data.items()}
        except (ValueError, AttributeError):
            raise ConfigError("label table must map integer ids to names", path) from None
        return _distinct_names(table, path)
    table = {}
    for line in text.splitlines():  # Slicer color table: "value name r g b a"
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        try:
            table[int(parts[0])] = parts[1]
        except (ValueError, IndexError):
            raise ConfigError(f"label table line {line!r} is not 'value name r g b a'", path) from None
    return _distinct_names(table, path)


def _distinct_names(table: dict[int, str], path: Path) -> dict[int, str]:
    """``table`` when every value has a name of its own: segments are reported (and finetune's classes matched) by
    name alone, so two values named alike would be two segments no output tells apart, and an empty name none."""
    empty = sorted(v for v, name in table.items() if not name.strip())
    if empty:
        raise ConfigError(f"label table gives value(s) {', '.join(map(str, empty))} an empty name", path)
    values: dict[str, list[int]] = {}
    for v, name in table.items():
        values.setdefault(name, []).append(v)
    twice = {name: vs for name, vs in values.items() if len(vs) > 1}
    if twice:
        raise ConfigError("label table gives one name to several values: " + "; ".join(
            f"{name!r} to {', '.join(map(str, sorted(vs)))}" for name, vs in sorted(twice.items())), path)
    return table


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
        lo_s, hi_s = physical_box(seg_grid)
        lo_i, hi_i = physical_box(scan)
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


# ------------------------------------------------------------------------------------------------ crops
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


def crop_cube(volume: sitk.Image, center_mm: Sequence[float], edge_mm: float, size_vox: Sequence[int],
              interpolator: int = sitk.sitkLinear) -> np.ndarray:
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


def segment_geometry(image: sitk.Image, mask: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre of mass (LPS mm) and largest physical bounding-box edge (mm) of a ``(Z, Y, X)`` mask on ``image``'s
    grid."""
    idx = np.argwhere(mask)
    center_zyx = idx.mean(axis=0)
    center = image.TransformContinuousIndexToPhysicalPoint([float(c) for c in center_zyx[::-1]])
    extent_xyz = (idx.max(axis=0) - idx.min(axis=0) + 1)[::-1] * np.array(image.GetSpacing())
    return np.array(center), float(extent_xyz.max())


def normalized_scan(image: sitk.Image, modality: str, spec: RoiSpec) -> sitk.Image:
    """The scan with intensities normalised as ``spec`` says (crops are taken from this image)."""
    normalized = sitk.GetImageFromArray(normalize_intensity(sitk.GetArrayViewFromImage(image), modality,
                                                            spec.normalize))
    normalized.CopyInformation(image)
    return normalized


def segment_roi(image: sitk.Image, mask: np.ndarray, spec: RoiSpec) -> tuple[np.ndarray, float, sitk.Image | None]:
    """Where a segment's crops go: its centre (LPS mm), the crop edge (mm: ``spec.size_mm``, else the bounding
    box plus the margins) and, with ``spec.mask_channel``, the mask as an image on the scan's grid."""
    center, extent = segment_geometry(image, mask)
    edge = spec.size_mm if spec.size_mm else extent + 2 * spec.margin_mm
    mask_image = None
    if spec.mask_channel:
        mask_image = sitk.GetImageFromArray(mask.astype(np.float32))
        mask_image.CopyInformation(image)
    return center, float(edge), mask_image


def roi_crop(normalized: sitk.Image, mask_image: sitk.Image | None, center_mm: Sequence[float], edge_mm: float,
             spec: RoiSpec) -> np.ndarray:
    """The network input for one crop: ``(C, *spec.size_vox)`` float32, the scan then (optionally) the mask."""
    channels = [crop_cube(normalized, center_mm, edge_mm, spec.size_vox, sitk.sitkLinear)]
    if mask_image is not None:
        channels.append(crop_cube(mask_image, center_mm, edge_mm, spec.size_vox, sitk.sitkLinear))
    return np.stack(channels)


def classify_segments(image_path: Any, segmentation_path: Any, package: Any, *, device: str = "cpu",
                      label_table: str | None = None) -> list[dict[str, Any]]:
    """Apply an ROI classification package (``input.kind == "roi3d"``) to every segment of a segmentation.

    Crops are taken exactly as in training (``input.roi``: size, margin or fixed mm, mask channel, normalisation).
    The files are read by :func:`read_scan_segments`, then classified by :func:`classify_scan_segments`.

    Returns:
        One ``{"segment", "label", "probabilities": {class: p}, "center_mm"}`` per non-empty segment.

    Raises:
        ModelPackageError: the package is not an ROI classifier. InputImageError: a scan of another modality than
        the package's.
    """
    pkg = roi_package(package)
    return classify_scan_segments(read_scan_segments(image_path, segmentation_path, label_table=label_table,
                                                     model=pkg), pkg, device=device)


def roi_package(package: Any):
    """The loaded ROI classification package (``input.kind == "roi3d"`` with ``input.roi``) ``package`` names.

    Raises:
        ModelPackageError: the package is not an ROI classifier.
    """
    from ..errors import ModelPackageError
    from ..packages import load_package

    pkg = load_package(package) if not hasattr(package, "meta") else package
    spec_json = pkg.input_spec
    if spec_json.get("kind") != "roi3d" or "roi" not in spec_json:
        raise ModelPackageError(f"model {pkg.id}@{pkg.version} is not an ROI classifier (input.kind "
                                f"{spec_json.get('kind')!r})", pkg.path)
    return pkg


def classify_scan_segments(scan: ScanSegments, package: Any, *, device: str = "cpu") -> list[dict[str, Any]]:
    """:func:`classify_segments` on a scan and segments already read (:func:`read_scan_segments`)."""
    import torch

    pkg = roi_package(package)
    spec = RoiSpec.from_json(pkg.input_spec["roi"])
    for message in scan.warnings:
        log.warning(message)
    normalized = normalized_scan(scan.image, scan.modality, spec)
    names, crops = [], []
    for index, name in enumerate(scan.names, start=1):
        mask = scan.mask(index)   # whole, also where a later segment overlaps it
        if not mask.any():
            continue
        center, edge, mask_image = segment_roi(scan.image, mask, spec)
        names.append((name, center))
        crops.append(roi_crop(normalized, mask_image, center, edge, spec))
    if not crops:
        return []
    model = pkg.build_model(device)
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(np.stack(crops)).to(device)).float(), 1).cpu().numpy()
    classes = pkg.class_names
    return [{"segment": name, "label": classes[int(p.argmax())],
             "probabilities": {n: round(float(v), 4) for n, v in zip(classes, p)},
             "center_mm": [round(float(c), 2) for c in center]} for (name, center), p in zip(names, probs)]
