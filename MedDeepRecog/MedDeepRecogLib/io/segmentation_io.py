"""Segmentations as Slicer ``.seg.nrrd`` files (segment names, colors, label values) via ``slicerio``.

Masks and label maps inside the core are ``(Z, Y, X)`` arrays on a SimpleITK reference grid; slicerio stores
voxels in ``(i, j, k)`` = ``(X, Y, Z)`` order with an ``ijkToLPS`` matrix, so this module converts between the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk
import slicerio

from ..errors import InputImageError
from .atomic import atomic_output

#: Distinct colors (RGB 0-1) for segments without an explicit color; Slicer's generic anatomy palette order.
DEFAULT_COLORS = [
    (0.50, 0.68, 0.50), (0.94, 0.82, 0.62), (0.69, 0.48, 0.40), (0.44, 0.72, 0.82), (0.85, 0.40, 0.36),
    (0.87, 0.80, 0.22), (0.56, 0.35, 0.65), (0.32, 0.55, 0.78), (0.90, 0.55, 0.20), (0.40, 0.75, 0.45),
]

#: Colours (RGB 0-255) of organs by their SNOMED CT code, as Slicer's GenericAnatomyColors table gives them (Slicer
#: Base/Logic/Resources/ColorFiles/GenericAnatomyColors.txt: liver, spleen, right_kidney / left_kidney), so a
#: segment named for the organ looks as Slicer colours it (by index the liver came out green "tissue", the spleen
#: bone-coloured).
ANATOMY_COLORS = {
    "10200004": (221, 130, 101),   # liver
    "78961009": (157, 108, 162),   # spleen
    "64033007": (185, 102, 83),    # kidney
}

#: Slicer's terminology context of the category and type codes written (pydicom's DICOM codes: CID 7150 / 7151)
#: and of the (empty) anatomic region: the ``TerminologyEntry`` tag's first and fifth fields.
TERMINOLOGY_CONTEXT = "Segmentation category and type - DICOM master list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


def segment_codes(name: str) -> tuple[tuple[str, str, str], tuple[str, str, str]]:
    """``(category, type)`` codes, each ``(scheme, value, meaning)``, of a segment named ``name``: SNOMED CT for a
    structure pydicom's code dictionary knows by that name (liver, spleen, kidney, lesion, ...: category Anatomical
    Structure, or Morphologically Abnormal Structure for lesions), else category Tissue and a local code (scheme
    ``99MDR``). The one place a segment's codes are decided: the DICOM SEG's coded concepts, the ``.seg.nrrd``'s
    terminology tags and its colour (:data:`ANATOMY_COLORS`) come from it."""
    from pydicom.sr.codedict import codes

    base = name.split(":")[0].strip()
    key = "".join(part.capitalize() for part in base.replace("-", "_").replace(" ", "_").split("_") if part)
    # British spellings, and preprocess's "body" mask (the body outline: SNOMED CT's Entire body, 38266002)
    key = {"Tumour": "Tumor", "Tumours": "Tumor", "Oesophagus": "Esophagus", "Body": "EntireBody"}.get(key, key)
    for candidate in (key, key.rstrip("s")):
        try:
            code = getattr(codes.SCT, candidate)
        except AttributeError:
            continue
        category = codes.SCT.MorphologicallyAbnormalStructure if candidate in (
            "Lesion", "Tumor", "Neoplasm", "Nodule", "Mass") else codes.SCT.AnatomicalStructure
        return ((category.scheme_designator, category.value, category.meaning),
                (code.scheme_designator, code.value, code.meaning))
    tissue = codes.SCT.Tissue
    return ((tissue.scheme_designator, tissue.value, tissue.meaning),
            ("99MDR", f"MDR-{key[:10] or 'SEGMENT'}", base[:64] or "segment"))


def segment_color(name: str, index: int, color: tuple[float, float, float] | None = None) -> tuple[float, ...]:
    """RGB 0-1 of the ``index``-th segment, named ``name``: ``color`` if given, else the organ's Slicer colour
    (:data:`ANATOMY_COLORS`, by :func:`segment_codes`), else :data:`DEFAULT_COLORS` by index."""
    if color:
        return tuple(float(c) for c in color)
    rgb = ANATOMY_COLORS.get(segment_codes(name)[1][1])
    if rgb:
        return tuple(round(c / 255.0, 6) for c in rgb)
    return DEFAULT_COLORS[index % len(DEFAULT_COLORS)]


def segment_terminology(name: str) -> dict | None:
    """The Slicer terminology entry (slicerio's ``terminology`` dict, written as the ``TerminologyEntry`` tag) of a
    segment whose name has a SNOMED CT code (:func:`segment_codes`), else ``None`` (a local code names nothing
    Slicer knows)."""
    category, kind = segment_codes(name)
    if kind[0] != "SCT":
        return None
    return {"contextName": TERMINOLOGY_CONTEXT, "category": list(category), "type": list(kind),
            "anatomicContextName": ANATOMIC_CONTEXT}


@dataclass(frozen=True)
class SegmentSpec:
    """One segment: a name shown in Slicer, a label value in the label map, an RGB color in 0-1."""

    name: str
    label: int
    color: tuple[float, float, float] | None = None
    #: ``(earlier segment's name, voxels)`` for each earlier segment of the file this one overlaps (a
    #: ``.seg.nrrd`` of several layers): in the label map those voxels are this segment's (see
    #: :func:`read_segmentation`)
    overlaps: tuple[tuple[str, int], ...] = ()


def ijk_to_lps(image: sitk.Image) -> np.ndarray:
    """4×4 matrix from voxel index ``(i, j, k)`` to physical LPS mm for a 3D SimpleITK image."""
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    spacing = np.array(image.GetSpacing(), dtype=float)
    matrix = np.eye(4)
    matrix[:3, :3] = direction * spacing[np.newaxis, :]
    matrix[:3, 3] = image.GetOrigin()
    return matrix


def write_segmentation(labelmap: np.ndarray, reference: sitk.Image, segments: Sequence[SegmentSpec],
                       path: str | Path) -> Path:
    """Write a ``(Z, Y, X)`` integer label map on ``reference``'s grid as a Slicer ``.seg.nrrd``.

    Each :class:`SegmentSpec` becomes one segment with its name and color; label values not listed are dropped.
    Overlapping masks are not needed here (one label per voxel), so all segments share layer 0.
    """
    path = Path(path)
    if not path.name.lower().endswith(".seg.nrrd"):
        raise InputImageError("segmentations are written as .seg.nrrd", path)
    expected = tuple(reversed(reference.GetSize()))
    if tuple(labelmap.shape) != expected:
        raise ValueError(f"label map shape {labelmap.shape} does not match reference grid {expected}")
    seg = slicerio.create_segmentation(reference.GetSize(), ijk_to_lps(reference), dtype="uint8")
    voxels_ijk = np.transpose(np.asarray(labelmap), (2, 1, 0))
    layer = seg["voxels"]
    for index, spec in enumerate(segments):
        fields = {"id": f"Segment_{spec.label}", "name": spec.name,
                  "color": [float(c) for c in segment_color(spec.name, index, spec.color)]}
        terminology = segment_terminology(spec.name)
        if terminology:
            fields["terminology"] = terminology
        mask = voxels_ijk == spec.label
        if len(segments) > np.iinfo(layer.dtype).max:
            slicerio.add_segment(seg, mask, fields)   # more segments than one uint8 layer holds: slicerio adds layers
            continue
        # what slicerio.add_segment does for segments that never overlap (label values 1, 2, ... in layer 0), with
        # the extent from the mask's projections: add_segment lists every voxel of the segment (24 bytes each)
        layer[mask] = index + 1
        seg.setdefault("segments", []).append({**fields, "labelValue": index + 1, "layer": 0,
                                               "extent": _extent(mask)})
        del mask
    with atomic_output(path) as tmp:
        slicerio.write_segmentation(str(tmp), seg)
    return path


def _extent(mask_ijk: np.ndarray) -> list[int]:
    """``[i0, i1, j0, j1, k0, k1]``: the first and last index along each axis holding a voxel of ``mask_ijk`` (a
    Slicer segment's extent), ``[0, -1, 0, -1, 0, -1]`` when it is empty."""
    out: list[int] = []
    for axis in range(3):
        hit = np.flatnonzero(mask_ijk.any(axis=tuple(a for a in range(3) if a != axis)))
        if not hit.size:
            return [0, -1, 0, -1, 0, -1]
        out += [int(hit[0]), int(hit[-1])]
    return out


def _check_segmentation_header(path: Path) -> None:
    """Bound the declared size (and check the data are all there) before slicerio/pynrrd allocate the voxels."""
    from ..limits import check_declared_image
    from .file_checks import check_data_files, check_stream_complete

    if not path.is_file() or not path.name.lower().endswith((".nrrd", ".nhdr")):
        return
    check_data_files(path)   # also where the header is too odd for the size check below: slicerio would read them
    import nrrd

    try:
        with open(path, "rb") as fh:
            header = nrrd.read_header(fh)
        kind = str(header["type"]).lower().replace("unsigned ", "u").replace("signed ", "").replace("_t", "")
        itemsize = next(b for names, b in ((("char", "uchar", "int8", "uint8"), 1),
                                           (("short", "ushort", "int16", "uint16", "short int", "ushort int"), 2),
                                           (("int", "uint", "int32", "uint32", "float"), 4),
                                           (("longlong", "ulonglong", "long long", "ulong long", "int64", "uint64",
                                             "double", "long long int", "ulong long int"), 8)) if kind in names)
        sizes = [int(s) for s in header["sizes"]]
    except Exception:  # not NRRD enough to say (or an exotic type): slicerio reports it
        return
    check_declared_image(sizes, itemsize, path, "segmentation header")
    n = itemsize
    for v in sizes:
        n *= v
    check_stream_complete(path, n)


def read_segmentation(path: str | Path) -> tuple[np.ndarray, sitk.Image, list[SegmentSpec]]:
    """Read a ``.seg.nrrd`` (or a plain label map) into a ``(Z, Y, X)`` label map, its grid and its segments.

    Overlapping segments (several layers) are flattened in segment order: later segments win where they overlap,
    and each segment's :attr:`SegmentSpec.overlaps` says which earlier ones it took voxels from, and how many (a
    caller that learns from the labels refuses them: :func:`..finetune.segment_data.load_case`; one that needs
    each segment whole reads :func:`read_segmentation_with_covered`).

    Returns:
        ``(labelmap, reference, segments)``: labels renumbered 1..N in segment order, ``reference`` an empty
        image carrying the geometry, and one :class:`SegmentSpec` per segment.
    """
    labelmap, reference, specs, _ = _read_segmentation(path, keep_covered=False)
    return labelmap, reference, specs


def read_segmentation_with_covered(path: str | Path
                                   ) -> tuple[np.ndarray, sitk.Image, list[SegmentSpec], dict[int, np.ndarray]]:
    """:func:`read_segmentation`, and for each segment that later segments overlap, the voxels they took from it:
    ``{label: (Z, Y, X) bool}`` (empty without overlaps), so the segment is whole again as
    ``(labelmap == label) | covered[label]``."""
    return _read_segmentation(path, keep_covered=True)


def _read_segmentation(path: str | Path, keep_covered: bool
                       ) -> tuple[np.ndarray, sitk.Image, list[SegmentSpec], dict[int, np.ndarray]]:
    path = Path(path)
    if not path.exists():
        raise InputImageError("no such file", path)
    _check_segmentation_header(path)
    try:
        seg = slicerio.read_segmentation(str(path))
    except Exception as exc:  # slicerio/pynrrd raise assorted errors on corrupt files
        raise InputImageError(f"cannot be read as a segmentation ({exc})", path) from None
    voxels = np.asarray(seg["voxels"])
    spatial = voxels.shape[-3:]
    matrix = np.asarray(seg["ijkToLPS"], dtype=float)
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    reference = sitk.Image([int(s) for s in spatial], sitk.sitkUInt8)
    reference.SetSpacing([float(s) for s in spacing])
    reference.SetOrigin([float(o) for o in matrix[:3, 3]])
    reference.SetDirection([float(d) for d in (matrix[:3, :3] / spacing[np.newaxis, :]).ravel()])
    labelmap_ijk = np.zeros(spatial, dtype=np.uint16)
    specs: list[SegmentSpec] = []
    overlapped: set[int] = set()   # labels of segments a later segment took voxels from
    segments = seg.get("segments") or []
    if not segments:  # a plain label map: one segment per value
        values = [int(v) for v in np.unique(voxels) if v != 0]
        segments = [{"name": f"label_{v}", "labelValue": v, "layer": 0} for v in values]
    for new_label, segment in enumerate(segments, start=1):
        layer = voxels[segment.get("layer", 0)] if voxels.ndim == 4 else voxels
        mask = layer == segment["labelValue"]
        overlaps: tuple[tuple[str, int], ...] = ()
        if voxels.ndim == 4 and voxels.shape[0] > 1:   # one layer holds one segment per voxel
            taken = np.bincount(labelmap_ijk[mask], minlength=new_label)[1:]
            overlaps = tuple((specs[k].name, int(n)) for k, n in enumerate(taken) if n)
            overlapped.update(k + 1 for k, n in enumerate(taken) if n)
        labelmap_ijk[mask] = new_label
        color = segment.get("color")
        specs.append(SegmentSpec(str(segment.get("name", f"label_{new_label}")), new_label,
                                 tuple(float(c) for c in color) if color is not None else None, overlaps))
    covered: dict[int, np.ndarray] = {}
    if keep_covered:
        for spec, segment in zip(specs, segments):
            if spec.label in overlapped:
                whole = voxels[segment.get("layer", 0)] == segment["labelValue"]
                covered[spec.label] = np.transpose(whole & (labelmap_ijk != spec.label), (2, 1, 0))
    return np.transpose(labelmap_ijk, (2, 1, 0)), reference, specs, covered



#: Distinct values a lesion label may hold (0 and the labels): more are an image's grey levels, not labels.
MAX_LESION_LABELS = 256


def read_lesion_mask(path: str | Path) -> sitk.Image:
    """A lesion mask as a uint8 0/1 SimpleITK image on the label's own grid, every non-zero label counting as lesion:
    a ``.seg.nrrd`` through :func:`read_segmentation`, any other label map (NRRD, NIfTI, a PNG drawn on a picture;
    2D or 3D) through the geometry-keeping image reader.

    Raises:
        InputImageError: naming the file, for a label without any labelled voxel, NaN or fractional values, or
            more than :data:`MAX_LESION_LABELS` distinct values (a scan given as its own label).
    """
    from .image_io import read_image
    from .image_meta import PICTURE_KEY

    path = Path(path)
    if path.name.lower().endswith(".seg.nrrd"):
        labelmap, reference, _ = read_segmentation(path)
    else:
        reference = read_image(path)
        if reference.GetNumberOfComponentsPerPixel() != 1:
            raise InputImageError("a lesion label needs one value per voxel, not "
                                  f"{reference.GetNumberOfComponentsPerPixel()} components", path)
        labelmap = sitk.GetArrayViewFromImage(reference)
        if np.issubdtype(labelmap.dtype, np.floating):
            if not np.isfinite(labelmap).all():
                raise InputImageError("a lesion label must hold whole-number labels; this one has NaN or infinite "
                                      "values", path)
            if not np.array_equal(labelmap, np.round(labelmap)):
                raise InputImageError("a lesion label must hold whole-number labels; this one has fractional "
                                      "values (a scan rather than its label map?)", path)
        distinct = np.unique(labelmap)
        if len(distinct) > MAX_LESION_LABELS:
            raise InputImageError(f"has {len(distinct):,} distinct values: a scan or image, not a lesion label "
                                  f"(at most {MAX_LESION_LABELS})", path)
    mask = (np.asarray(labelmap) != 0).astype(np.uint8)
    if not mask.any():
        raise InputImageError("the lesion label is empty: no voxel is labelled", path)
    lesion = sitk.GetImageFromArray(mask)
    lesion.CopyInformation(reference)
    if reference.HasMetaDataKey(PICTURE_KEY):   # a label drawn on a picture: pixels, no physical size of its own
        lesion.SetMetaData(PICTURE_KEY, reference.GetMetaData(PICTURE_KEY))
    return lesion

def write_segment_masks(masks: Sequence[tuple[SegmentSpec, np.ndarray]], reference: sitk.Image,
                        path: str | Path) -> Path:
    """Write possibly overlapping binary ``(Z, Y, X)`` masks as one Slicer ``.seg.nrrd`` (one segment each).

    Unlike :func:`write_segmentation` (one label per voxel), masks may overlap (e.g. body and lungs): slicerio
    puts an overlapping segment in a new layer, as Slicer itself does. ``spec.label`` is ignored. Each segment gets
    the terminology entry :func:`write_segmentation` gives it (:func:`segment_terminology`: body, lungs, head are
    SNOMED CT coded), so Slicer's DICOM SEG export of preprocess's masks needs no hand coding.
    """
    path = Path(path)
    if not path.name.lower().endswith(".seg.nrrd"):
        raise InputImageError("segmentations are written as .seg.nrrd", path)
    expected = tuple(reversed(reference.GetSize()))
    seg = slicerio.create_segmentation(reference.GetSize(), ijk_to_lps(reference), dtype="uint8")
    for index, (spec, mask) in enumerate(masks):
        if tuple(mask.shape) != expected:
            raise ValueError(f"mask {spec.name!r} shape {mask.shape} does not match reference grid {expected}")
        color = spec.color or DEFAULT_COLORS[index % len(DEFAULT_COLORS)]
        fields = {"id": f"Segment_{index + 1}", "name": spec.name, "color": [float(c) for c in color]}
        terminology = segment_terminology(spec.name)
        if terminology:
            fields["terminology"] = terminology
        slicerio.add_segment(seg, np.transpose(np.asarray(mask) > 0, (2, 1, 0)), fields)
    with atomic_output(path) as tmp:
        slicerio.write_segmentation(str(tmp), seg)
    return path
