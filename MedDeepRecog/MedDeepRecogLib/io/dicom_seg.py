"""DICOM in, DICOM out: a DICOM Segmentation object (SEG) referencing the source series, written with highdicom,
and the non-identifying tags that say what a DICOM series is (``meddeeprecog info``).

PACS store SEG, not ``.seg.nrrd``: ``segment SCAN_DIR --out x.dcm`` and ``classify SCAN_DIR --segments SEG --out x.dcm``
write one. The label map must be on the grid ``read_image`` gives the series (slice k = the k-th file in GDCM's
order); each segment gets its name as its label, a SNOMED CT code where the name is a known structure (liver,
spleen, kidney, ...), else a local code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import InputImageError
from .atomic import atomic_output
from .dicom_read import dicom_series, looks_like_dicom
from .segmentation_io import segment_color

#: Tags ``info`` prints for a DICOM input: what the series is, never who the patient is.
DESCRIPTIVE_TAGS = ("Modality", "SeriesDescription", "StudyDescription", "BodyPartExamined", "ProtocolName",
                    "SliceThickness", "SpacingBetweenSlices", "Manufacturer", "ManufacturerModelName",
                    "MagneticFieldStrength", "KVP", "ConvolutionKernel", "ContrastBolusAgent", "ImageType",
                    "SeriesNumber", "PhotometricInterpretation", "BitsStored")
#: Never printed, whatever the allow-list above says (identifying attributes).
IDENTIFYING_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "PatientAddress",
                    "AccessionNumber", "InstitutionName", "ReferringPhysicianName", "OperatorsName")


def dicom_series_files(path: str | Path) -> list[Path]:
    """The files of the series ``read_image`` reads from ``path`` (a DICOM folder: the series with most files, in
    GDCM's order, which is the slice order of the image), or ``[path]`` for one DICOM file.

    Raises:
        InputImageError: ``path`` is not a DICOM file or a folder with a DICOM series.
    """
    path = Path(path)
    if path.is_file():
        if not looks_like_dicom(path):   # a NIfTI, NRRD... (pydicom's own words would be "Use force=True")
            raise InputImageError(f"not a DICOM file ({_format_name(path)}): a DICOM Segmentation (.dcm) output "
                                  "references the DICOM series it was made from, so it needs a DICOM series input; "
                                  "write a .seg.nrrd instead", path)
        return [path]
    try:
        files_by_series, chosen = dicom_series(path)
    except InputImageError:
        raise InputImageError("not a DICOM series: a DICOM Segmentation (.dcm) needs a DICOM input to reference; "
                              "write a .seg.nrrd instead", path) from None
    return [Path(f) for f in files_by_series[chosen]]


def _format_name(path: Path) -> str:
    """What kind of file ``path`` is by its name, for a message: "a NIfTI file", or "no DICOM header"."""
    low = path.name.lower()
    for suffixes, kind in (((".nii", ".nii.gz"), "NIfTI"), ((".nrrd", ".nhdr"), "NRRD"), ((".mha", ".mhd"), "MetaImage"),
                           ((".png", ".jpg", ".jpeg"), "picture")):
        if low.endswith(suffixes):
            return f"a {kind} file"
    return "no DICOM header"


def _read_header(path: Path):
    import pydicom

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception as exc:  # pydicom.errors.InvalidDicomError and friends
        reason = str(exc).replace(" Use force=True to force reading.", "").strip()   # not advice for our users
        raise InputImageError(f"not a DICOM file ({reason})", path) from None


def describe_dicom(path: str | Path) -> dict:
    """The series' descriptive tags (:data:`DESCRIPTIVE_TAGS` present in its first file) and its file count."""
    files = dicom_series_files(path)
    ds = _read_header(files[0])
    out: dict = {}
    for keyword in DESCRIPTIVE_TAGS:
        if keyword in IDENTIFYING_TAGS or keyword not in ds:
            continue
        element = ds.data_element(keyword)
        value = element.value
        if value in (None, ""):
            continue
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            value = [str(v) for v in value]
        elif element.VR in ("DS", "IS", "US", "UL", "SS", "SL", "FL", "FD"):
            try:
                number = float(str(value))
                value = int(number) if number.is_integer() and element.VR != "DS" else number
            except ValueError:
                value = str(value)
        else:
            value = str(value)
        out[keyword] = value
    out["files"] = len(files)
    return out


def source_datasets(files: Sequence[Path], source: str | Path) -> list:
    """The series' files as pydicom datasets, with an empty SOP Class / SOP Instance UID taken from the file's own
    meta header (some anonymisers blank them there only).

    Raises:
        InputImageError: the series has no Study or Series Instance UID (a SEG must reference them).
    """
    import pydicom

    datasets = []
    for f in files:
        ds = pydicom.dcmread(str(f))
        meta = getattr(ds, "file_meta", None)
        for keyword, meta_keyword in (("SOPClassUID", "MediaStorageSOPClassUID"),
                                      ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
            if not str(ds.get(keyword, "") or "") and meta is not None and meta.get(meta_keyword):
                setattr(ds, keyword, meta.get(meta_keyword))
        missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
                   if not str(ds.get(k, "") or "")]
        if missing:
            raise InputImageError(f"{f.name} has no {', '.join(missing)} (anonymised without UIDs?): a DICOM "
                                  "Segmentation must reference the source series by them; write a .seg.nrrd "
                                  "instead", source)
        datasets.append(ds)
    return datasets


def check_dicom_seg_source(source: str | Path) -> None:
    """Refuse, before any work, a source a DICOM SEG cannot reference (not DICOM, or without its UIDs)."""
    files = dicom_series_files(source)
    for f in (files[0], files[-1]):
        ds = _read_header(f)
        meta = getattr(ds, "file_meta", None)
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
            if not str(ds.get(keyword, "") or ""):
                raise InputImageError(f"{f.name} has no {keyword} (anonymised without UIDs?): a DICOM "
                                      "Segmentation must reference the source series by it; write a .seg.nrrd "
                                      "instead", source)
        if not str(ds.get("SOPInstanceUID", "") or "") and not (meta is not None and
                                                               meta.get("MediaStorageSOPInstanceUID")):
            raise InputImageError(f"{f.name} has no SOPInstanceUID: a DICOM Segmentation references every source "
                                  "image by it; write a .seg.nrrd instead", source)


def _codes(name: str):
    """(category, type) coded concepts of a segment named ``name`` (:func:`.segmentation_io.segment_codes`)."""
    from highdicom.sr.coding import CodedConcept

    from .segmentation_io import segment_codes

    return tuple(CodedConcept(value, scheme, meaning) for scheme, value, meaning in segment_codes(name))


def write_dicom_seg(labels: np.ndarray, image: sitk.Image, source: str | Path, segments: Sequence[tuple[int, str]],
                    out_path: str | Path, *, series_description: str = "MedDeepRecog segmentation",
                    algorithm: str = "MedDeepRecog", algorithm_version: str = "") -> Path:
    """Write ``labels`` (``(z, y, x)`` integers on ``image``'s grid, ``image`` read from the DICOM ``source``) as a
    binary DICOM Segmentation referencing the source series; ``segments``: ``(label value, name)`` pairs.

    Raises:
        InputImageError: ``source`` is not DICOM, or its files do not match ``image``'s slices.
    """
    import highdicom as hd

    from .. import __version__

    files = dicom_series_files(source)
    if labels.shape != sitk.GetArrayViewFromImage(image).shape[-3:] or labels.shape[0] != len(files):
        raise InputImageError(f"the segmentation ({labels.shape[0]} slices) does not match the DICOM series "
                              f"({len(files)} files)", source)
    datasets = source_datasets(files, source)
    first = np.array([float(v) for v in datasets[0].ImagePositionPatient])
    if not np.allclose(first, image.GetOrigin(), atol=1e-2 * max(image.GetSpacing())):
        raise InputImageError("the DICOM series' first file is not the segmentation's first slice", source)
    algorithm_id = hd.AlgorithmIdentificationSequence(
        name=algorithm[:64], version=(algorithm_version or __version__)[:64],
        family=hd.sr.CodedConcept("123110", "DCM", "Artificial Intelligence"))
    present = [(int(v), str(n)) for v, n in segments if v > 0]
    lut = np.zeros(int(max([v for v, _ in present] + [int(labels.max()), 0])) + 1, dtype=np.uint16)
    descriptions = []
    for number, (value, name) in enumerate(present, start=1):
        lut[value] = number
        category, kind = _codes(name)
        # the colour the .seg.nrrd gives it (Slicer's anatomy colour for an organ), as RecommendedDisplayCIELabValue
        rgb = [round(255 * c) for c in segment_color(name, number - 1)]
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name[:64], segmented_property_category=category,
            segmented_property_type=kind, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm_id, display_color=hd.color.CIELabColor.from_rgb(*rgb)))
    # the label values index the look-up table as they are (an int64 copy of the volume was 8 bytes a voxel)
    pixel = lut.astype(np.uint16 if len(present) > 255 else np.uint8)[labels]
    ref = datasets[0]
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=pixel, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(),
        series_number=int(getattr(ref, "SeriesNumber", 0) or 0) + 1000, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="MedDeepRecog", manufacturer_model_name=algorithm[:64],
        software_versions=__version__, device_serial_number="0", series_description=series_description[:64],
        omit_empty_frames=False)
    out_path = Path(out_path)
    with atomic_output(out_path) as tmp:
        seg.save_as(str(tmp))
    return out_path
