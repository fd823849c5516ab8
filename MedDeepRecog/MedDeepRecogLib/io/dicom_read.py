"""DICOM as the reader takes it: series in a folder (the one with most slices, slice gaps refused), frames, the
pixel size from the tags that hold it (PixelSpacing, a radiograph's ImagerPixelSpacing, an ultrasound's region
calibration), and checks of the pixel data's length.

CT read from DICOM is in HU: ITK's GDCM reader applies Rescale Slope/Intercept.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputImageError
from ..limits import ALLOW_GAPS_ENV, check_declared_image
from .file_checks import declared_bytes_per_voxel, itk_error_line
from .image_meta import SPACING_RANGE_MM, add_note

log = logging.getLogger(__name__)


#: The EstimatedRadiographicMagnificationFactor (0018,1114) a radiograph may give: source-to-detector over
#: source-to-object distance, so at least 1; 10 is far beyond any projection geometry.
MAGNIFICATION_RANGE = (1.0, 10.0)


#: DICOM transfer syntaxes whose pixel data is stored raw, so its length follows from rows, columns and bits.
_UNCOMPRESSED_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")
#: JSON list of each slice's ImagePositionPatient (LPS mm), in slice order: set on a series read with
#: --allow-slice-gaps whose slices are not evenly spaced (the image's own grid spreads them evenly)
SLICE_POSITIONS_KEY = "MedDeepRecog|slice_positions"
SERIES_KEY = "MedDeepRecog|series"  # JSON: {"uid", "description", "slices", "others": [...]}


def _dicom_tag(reader: sitk.ImageFileReader, key: str) -> str:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""


def _series_label(uid: str, description: str) -> str:
    """How notes and errors name a series: its SeriesInstanceUID and description, either of which may be missing."""
    uid = uid.strip() or "without SeriesInstanceUID"
    return f"{uid} ({description!r})" if description else f"{uid} (no description)"


def looks_like_dicom(path: Path) -> bool:
    """A DICOM file by its extension (.dcm, .ima, .dicom) or its "DICM" preamble (files of a series often have
    no extension)."""
    if path.suffix.lower() in (".dcm", ".ima", ".dicom"):
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _holds_dicom(folder: Path, probe: int = 16) -> bool:
    """Whether ``folder`` holds a DICOM file among its first ``probe`` files (a series folder of a study)."""
    try:
        files = [f for f in sorted(folder.iterdir()) if f.is_file() and not f.name.startswith(".")]
    except OSError:
        return False
    return any(looks_like_dicom(f) for f in files[:probe])


def _mentions(path: Path, uid: str, limit: int = 1 << 16) -> bool:
    """True if the file's first bytes (its header) hold the series UID: a slice of that series."""
    try:
        with open(path, "rb") as fh:
            return uid.encode("ascii") in fh.read(limit)
    except (OSError, UnicodeEncodeError):
        return False


def _check_slice_positions(folder: Path, files: list[str], label: str, unassigned: list[Path],
                           allow: bool, record: list | None = None) -> str | None:
    """Refuse (or, with ``allow``, describe) a series whose slices are not evenly spaced along their normal.

    GDCM silently leaves out slices it cannot read (no pixel data, truncated) and ITK then spreads the remaining
    slices over the whole extent (a 2.0 mm series read as 2.111 mm). The positions (0020,0032) projected on the
    slice normal (0020,0037) must step evenly; a gap names the files on both sides, and files of the folder that
    could not be read as slices are named too. Returns a note for the image when ``allow`` lets it through, and
    then fills ``record`` with each file's ImagePositionPatient in ``files``' order (the image's slice order), so
    the outputs can put each slice back where it was acquired (:func:`.slice_grid.acquired_grid`).

    Each slice's header is read here once, so each slice's pixel data is checked here too
    (:func:`check_dicom_pixels`): GDCM reads a slice whose raw pixel data is shorter than its rows x columns declare
    and fills the rest (half a CT slice came back as -1024 HU air).
    """
    positions: list[tuple[float, str]] | None = []
    for name in files:
        r = sitk.ImageFileReader()
        r.SetFileName(name)
        r.LoadPrivateTagsOff()
        try:
            r.ReadImageInformation()
        except RuntimeError:
            positions = None  # positions unknown: ITK's own ordering is all there is
            continue
        check_dicom_pixels(r, Path(name), dicom_frames(r))
        if positions is None:
            continue
        try:
            ipp = [float(v) for v in _dicom_tag(r, "0020|0032").split("\\")]
            iop = [float(v) for v in _dicom_tag(r, "0020|0037").split("\\")]
        except ValueError:
            positions = None
            continue
        if len(ipp) != 3 or len(iop) != 6:
            positions = None
            continue
        normal = np.cross(iop[:3], iop[3:])
        positions.append((float(np.dot(ipp, normal)), Path(name).name))
        if record is not None:
            record.append(ipp)
    if positions is None or len(positions) < 3:
        return None
    positions.sort()
    z = np.array([p for p, _ in positions])
    steps = np.diff(z)
    step = float(np.median(steps))
    bad = [i for i, d in enumerate(steps) if step <= 0 or abs(d - step) > max(0.1 * step, 1e-3)]
    if not bad:
        return None
    i = max(bad, key=lambda k: abs(steps[k] - step))
    gap = (f"slices are not evenly spaced: {steps[i]:.3g} mm between {positions[i][1]} (at {z[i]:.2f} mm) and "
           f"{positions[i + 1][1]} (at {z[i + 1]:.2f} mm) where the series steps {step:.3g} mm"
           f"{f' ({len(bad)} uneven steps)' if len(bad) > 1 else ''}")
    if unassigned:
        names = ", ".join(p.name for p in unassigned[:5]) + (f" and {len(unassigned) - 5} more" if len(unassigned) > 5
                                                             else "")
        gap += f"; not readable as slices (no pixel data, truncated or damaged): {names}"
    if allow:
        if record is not None and len(record) != len(files):
            record.clear()
        return f"DICOM series {label}: {gap}; read anyway (--allow-slice-gaps), so distances along z are not exact"
    raise InputImageError(f"DICOM series {label}: {gap}. Refusing to guess the geometry; pass --allow-slice-gaps "
                          "to read it anyway", folder)


def dicom_series(folder: str | Path) -> tuple[dict[str, tuple[str, ...]], str]:
    """The DICOM series in ``folder`` (SeriesInstanceUID -> files in GDCM's order, the slice order of the image)
    and the one :func:`read_image` reads: the series with most files.

    Raises:
        InputImageError: the folder cannot be scanned or holds no readable DICOM series.
    """
    try:
        series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or ()
    except RuntimeError as exc:  # GDCM raises on unreadable folders
        raise InputImageError(f"cannot scan folder for DICOM series ({exc})", folder) from None
    if not series_ids:
        if not any(Path(folder).iterdir()):
            raise InputImageError("the folder is empty: give a scan, a DICOM series folder or a folder of PNG/JPEG "
                                  "pictures", folder)
        files = sorted(f for f in Path(folder).iterdir() if f.is_file() and not f.name.startswith("."))
        series_folders = [d for d in sorted(Path(folder).iterdir()) if d.is_dir() and not d.name.startswith(".")
                          and _holds_dicom(d)]
        if series_folders and not any(looks_like_dicom(f) for f in files):
            names = ", ".join(d.name for d in series_folders[:5]) + (
                f" and {len(series_folders) - 5} more" if len(series_folders) > 5 else "")
            raise InputImageError(f"a folder of {len(series_folders)} DICOM series folder"
                                  f"{'s' if len(series_folders) > 1 else ''} ({names}), not one series: give the "
                                  f"series folder itself, e.g. {Path(folder) / series_folders[0].name}", folder)
        if files and not any(looks_like_dicom(f) for f in files):
            names = ", ".join(f.name for f in files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
            raise InputImageError(f"the folder holds no scan: no DICOM file and no NIfTI, NRRD, MHA, PNG or JPEG file "
                                  f"(it holds {names})", folder)
        raise InputImageError("folder contains no readable DICOM series", folder)
    files_by_series = {sid: tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid))
                       for sid in series_ids}
    return files_by_series, max(files_by_series, key=lambda sid: len(files_by_series[sid]))


def read_dicom_folder(folder: Path) -> sitk.Image:
    """Read the DICOM series with most slices in ``folder``, named by SeriesInstanceUID and description (other
    series are named in the log and the image's notes). Missing or unreadable slices and uneven spacing are
    refused (see :func:`_check_slice_positions`). The pixel size comes from the first slice's tags as for one file
    (:func:`apply_dicom_pixel_size`: a radiograph's ImagerPixelSpacing, an ultrasound's region calibration), and an
    unusable one is refused (:func:`check_dicom_pixels`)."""
    import os

    files_by_series, chosen = dicom_series(folder)
    files = list(files_by_series[chosen])

    def description(sid: str) -> str:
        r = sitk.ImageFileReader()
        r.SetFileName(files_by_series[sid][0])
        r.LoadPrivateTagsOff()
        try:
            r.ReadImageInformation()
        except RuntimeError:
            return ""
        return _dicom_tag(r, "0008|103e")

    label = _series_label(chosen, description(chosen))
    others = [f"{_series_label(sid, description(sid))}, {len(f)} files"
              for sid, f in files_by_series.items() if sid != chosen]
    if others:
        log.warning("%s: reading series %s (%d slices); also present: %s",
                    folder, label, len(files), "; ".join(others))
    assigned = {Path(f).resolve() for fs in files_by_series.values() for f in fs}
    unassigned = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                        and p.resolve() not in assigned and p.name.upper() != "DICOMDIR" and looks_like_dicom(p))
    # the declared size (one slice's header x the number of slices) is bounded before any voxel is read
    first = sitk.ImageFileReader()
    first.SetFileName(files[0])
    first.LoadPrivateTagsOff()
    try:
        first.ReadImageInformation()
    except RuntimeError as exc:
        raise InputImageError(f"DICOM series {label}: first slice cannot be read ({itk_error_line(exc)})",
                              files[0]) from None
    check_declared_image(list(first.GetSize()[:2]) + [len(files) * max(1, dicom_frames(first))],
                         declared_bytes_per_voxel(first), folder, f"DICOM series {label}")
    check_dicom_pixels(first, Path(files[0]), dicom_frames(first))  # pixel size and data, as for one file
    allow = os.environ.get(ALLOW_GAPS_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    broken = [p for p in unassigned if _mentions(p, chosen)]  # slices of this series GDCM could not read
    acquired: list[list[float]] = []
    gap_note = _check_slice_positions(folder, files, label, unassigned, allow, acquired)
    if broken and gap_note is None:
        names = ", ".join(p.name for p in broken[:5]) + (f" and {len(broken) - 5} more" if len(broken) > 5 else "")
        problem = (f"DICOM series {label}: {len(broken)} slice file(s) of this series cannot be read (no pixel data, "
                   f"truncated or damaged): {names}")
        if not allow:
            raise InputImageError(problem + ". Refusing to read an incomplete series; pass --allow-slice-gaps to "
                                  "read the rest anyway", folder)
        gap_note = problem + "; the rest read anyway (--allow-slice-gaps)"
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    reader.LoadPrivateTagsOff()
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputImageError(f"DICOM series {label} could not be read ({itk_error_line(exc)})", folder) from None
    for key in ("0008|0060", "0008|103e", "0020|000e"):  # modality, series description, series UID
        if reader.HasMetaDataKey(0, key):
            image.SetMetaData(key, reader.GetMetaData(0, key).strip())
    # a radiograph or ultrasound image in a folder: its pixel size from the same tags as the file alone
    apply_dicom_pixel_size(image, first, Path(files[0]))
    apply_single_frame_spacing(image, first)
    image.SetMetaData(SERIES_KEY, json.dumps({"uid": chosen, "description": description(chosen),
                                              "slices": len(files), "others": others}))
    if others:
        add_note(image, f"DICOM series {label} read ({len(files)} slices); also present: {'; '.join(others)}")
    if gap_note:
        add_note(image, gap_note)
        if acquired:  # where each slice was acquired: the outputs are written there (io.slice_grid)
            image.SetMetaData(SLICE_POSITIONS_KEY, json.dumps(acquired))
    return image


def dicom_frames(reader: sitk.ImageFileReader) -> int:
    """Number of frames of a DICOM file (tag 0028,0008), 1 for any other file."""
    try:
        if reader.HasMetaDataKey("0028|0008"):
            return max(1, int(float(reader.GetMetaData("0028|0008").strip() or 1)))
    except (RuntimeError, ValueError):
        pass
    return 1


def frame_geometry(path: Path) -> str | None:
    """Where a multi-frame DICOM file's frame spacing comes from when the file places its frames in space, else
    ``None`` (the reader then assumes 1 mm, and the frames may be time points of one plane).

    GDCM takes the spacing from SpacingBetweenSlices (0018,0088), or from an enhanced object's functional groups
    (PS3.3 C.7.6.16): the plane positions of its frames, which must differ (a cine loop repeats one position).
    pydicom reads the header only.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError, TypeError, AttributeError, EOFError):
        return None
    if ds.get("SpacingBetweenSlices") not in (None, ""):
        return "SpacingBetweenSlices (0018,0088)"
    positions = set()
    for frame in ds.get("PerFrameFunctionalGroupsSequence") or []:
        for plane in frame.get("PlanePositionSequence") or []:
            if plane.get("ImagePositionPatient") is not None:
                positions.add(tuple(round(float(v), 3) for v in plane.ImagePositionPatient))
    return "the frames' plane positions (PerFrameFunctionalGroupsSequence)" if len(positions) > 1 else None


def note_frames(image: sitk.Image, path: Path, frames: int) -> None:
    """Mark a multi-frame ``image`` read from ``path`` (:data:`FRAMES_KEY`, and :data:`FRAME_GEOMETRY_KEY` when the
    file places its frames) and say in a note how its frames were read: ``info`` and the outputs show it, since a
    cine loop read as slices 1 mm apart looks like any small volume."""
    from .image_meta import FRAME_GEOMETRY_KEY, FRAMES_KEY

    image.SetMetaData(FRAMES_KEY, str(frames))
    spacing = image.GetSpacing()[2] if image.GetDimension() == 3 else 1.0
    source = frame_geometry(path)
    if source is not None:
        image.SetMetaData(FRAME_GEOMETRY_KEY, source)
        add_note(image, f"multi-frame DICOM ({frames} frames in one object) read as a volume of {frames} slices "
                        f"{spacing:g} mm apart (from {source})")
    else:
        add_note(image, f"multi-frame DICOM ({frames} frames in one object) read as {frames} slices: the frames may "
                        f"be time points of a cine loop rather than slices, and their {spacing:g} mm spacing is "
                        "assumed (the file gives no SpacingBetweenSlices or frame positions)")


def apply_single_frame_spacing(image: sitk.Image, header) -> None:
    """Give a one-slice DICOM ``image`` (a single-frame file, or a series of one file) the slice thickness its
    ``header`` says: with one slice there is no neighbour to measure the spacing from, and GDCM then takes 1 mm,
    which makes a 3 mm CT slice's outputs (heatmaps, masks) 1 mm thick. SpacingBetweenSlices (0018,0088) when
    positive, else SliceThickness (0018,0050) when positive, else 1 mm; the note says which. Only a slice placed
    in space (ImagePositionPatient, as CT, MR and PET slices are): a radiograph or ultrasound picture is a 2D image
    whose thickness means nothing. Not DICOM (no SOPClassUID), not one slice, or a multi-frame file
    (:func:`note_frames` says how its frames were read): nothing."""
    if (not header.HasMetaDataKey("0008|0016") or not header.HasMetaDataKey("0020|0032")
            or image.GetDimension() != 3 or image.GetSize()[2] != 1 or dicom_frames(header) > 1):
        return
    for key, name in (("0018|0088", "SpacingBetweenSlices (0018,0088)"), ("0018|0050", "SliceThickness (0018,0050)")):
        try:
            value = float(_dicom_tag(header, key).split("\\")[0])
        except ValueError:
            value = 0.0
        if value > 0 and SPACING_RANGE_MM[0] <= value <= SPACING_RANGE_MM[1]:
            sx, sy, _ = image.GetSpacing()
            image.SetSpacing((sx, sy, value))
            add_note(image, f"single DICOM slice: z spacing {value:g} mm from its {name}")
            return
    add_note(image, "single DICOM slice without SliceThickness or SpacingBetweenSlices: 1 mm thickness assumed")


def apply_dicom_pixel_size(image: sitk.Image, header, path: Path) -> None:
    """Give a DICOM ``image`` the pixel size its ``header`` (the file's reader; a series' first slice) says, where
    the reader took another or none: :func:`_dicom_pixel_size_without_pixel_spacing` without PixelSpacing, else
    :func:`_dicom_pixel_spacing_over_imager_spacing`. Not DICOM (no SOPClassUID): nothing."""
    if not header.HasMetaDataKey("0008|0016"):
        return
    if header.HasMetaDataKey("0028|0030"):
        _dicom_pixel_spacing_over_imager_spacing(image, header)
    else:
        _dicom_pixel_size_without_pixel_spacing(image, header, path)


def _dicom_pixel_size_without_pixel_spacing(image: sitk.Image, header, path: Path) -> None:
    """Set the pixel size of a DICOM image that has no PixelSpacing (0028,0030), or say that 1 mm is assumed.

    A projection radiograph (CR, DX, MG, XA, ...) stores the size at the detector instead, as ImagerPixelSpacing
    (0018,1164): see :func:`_radiograph_pixel_size`. Ultrasound stores its calibration per region (Sequence of
    Ultrasound Regions, PhysicalDeltaX/Y in cm when the units code is 3): when every calibrated region gives the
    same size, that size is the image's. GDCM does not expose sequences to SimpleITK, so pydicom reads them (header
    only). "1 mm pixels assumed" is said only when the image keeps 1 mm.
    """
    import pydicom

    if _radiograph_pixel_size(image, header):
        return
    if not np.allclose(image.GetSpacing()[:2], (1.0, 1.0)):
        return  # the reader found a pixel size in another tag it knows
    sizes: set[tuple[float, float]] = set()
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["SequenceOfUltrasoundRegions"])
        for region in ds.get("SequenceOfUltrasoundRegions") or []:
            if region.get("PhysicalUnitsXDirection") == 3 and region.get("PhysicalUnitsYDirection") == 3:
                sizes.add((abs(float(region.PhysicalDeltaX)) * 10, abs(float(region.PhysicalDeltaY)) * 10))
    except (pydicom.errors.InvalidDicomError, AttributeError, TypeError, ValueError, OSError):
        sizes = set()
    lo, hi = SPACING_RANGE_MM
    if len(sizes) == 1 and all(lo <= v <= hi for v in next(iter(sizes))):
        sx, sy = sizes.pop()
        image.SetSpacing((sx, sy, *image.GetSpacing()[2:]))
        add_note(image, f"pixel size {sx:g} x {sy:g} mm from the ultrasound region calibration (no PixelSpacing)")
    elif sizes:
        add_note(image, "ultrasound regions give different pixel sizes and there is no PixelSpacing: 1 mm pixels "
                         "assumed, so sizes in mm are not physical")
    else:
        add_note(image, "DICOM file without a pixel size (no ImagerPixelSpacing, no PixelSpacing, no calibrated "
                         "ultrasound region): 1 mm pixels assumed, so sizes in mm are not physical")


def _dicom_pixel_spacing_over_imager_spacing(image: sitk.Image, header) -> None:
    """Give a DICOM image the pixel size of its PixelSpacing (0028,0030) where the reader took another.

    GDCM takes ImagerPixelSpacing (0018,1164), the size at the detector, for some radiograph storage classes (CR,
    DX, MG, XA) even when PixelSpacing is present; PixelSpacing is then the size in the patient plane (DICOM PS3.3
    10.7.1.3), calibrated as PixelSpacingCalibrationType (0028,0A02) says when it is there. PixelSpacing is checked
    before the read (:func:`check_dicom_pixels`); the note says which size was used, how it was calibrated, and
    what the detector size was.
    """
    sizes = _pixel_sizes(_dicom_tag(header, "0028|0030")) if header.HasMetaDataKey("0028|0030") else None
    if sizes is None:
        return
    sy, sx = sizes  # DICOM order: row spacing (y), column spacing (x)
    if np.allclose(image.GetSpacing()[:2], (sx, sy), rtol=1e-6):
        return
    detector = _dicom_tag(header, "0018|1164") or "not given"
    kind = _dicom_tag(header, "0028|0a02")
    how = (f"calibrated to the patient ({kind}, PixelSpacingCalibrationType (0028,0A02))" if kind else
           "the file's pixel size for the patient plane (no PixelSpacingCalibrationType (0028,0A02) says how it "
           "was calibrated; some devices copy the detector size into it)")
    add_note(image, f"pixel size {sx:g} x {sy:g} mm from PixelSpacing (0028,0030), {how}; the reader had taken "
                     f"{' x '.join(f'{v:g}' for v in image.GetSpacing()[:2])} mm (ImagerPixelSpacing (0018,1164), at "
                     f"the detector: '{detector}')")
    image.SetSpacing((sx, sy, *image.GetSpacing()[2:]))


def _pixel_sizes(raw: str) -> list[float] | None:
    """The (row, column) sizes of a DICOM PixelSpacing-like value ``"0.15\\0.2"``, or ``None`` unless they are two
    finite sizes in :data:`SPACING_RANGE_MM`."""
    try:
        sizes = [float(v) for v in raw.replace(" ", "").split("\\") if v]
    except ValueError:
        return None
    lo, hi = SPACING_RANGE_MM
    return sizes if len(sizes) == 2 and all(np.isfinite(v) and lo <= v <= hi for v in sizes) else None


def _radiograph_pixel_size(image: sitk.Image, header) -> bool:
    """Give a DICOM image without PixelSpacing the pixel size of its ImagerPixelSpacing (0018,1164), with a note;
    False when it has none.

    ImagerPixelSpacing is measured at the front of the detector; the anatomy, nearer the source, is magnified onto
    it (the more, the further it lies from the detector). With EstimatedRadiographicMagnificationFactor
    (0018,1114) (source-to-detector over source-to-object distance) the size is divided by it, as DICOM's "pixel
    spacing calibration" does; without it the detector size is kept and the note says lengths in mm are larger than
    in the patient. GDCM itself takes ImagerPixelSpacing, uncorrected and unsaid, for some storage classes only (CR,
    DX, MG and XA among them; a secondary capture gets 1 mm): the size is set here for all. An unusable
    ImagerPixelSpacing is refused earlier (:func:`check_dicom_pixels`).
    """
    raw = _dicom_tag(header, "0018|1164")
    sizes = _pixel_sizes(raw) if raw else None
    if sizes is None:
        return False
    iy, ix = sizes  # DICOM order: row spacing (y), column spacing (x)
    where = "ImagerPixelSpacing (0018,1164)"
    factor_raw = _dicom_tag(header, "0018|1114")
    factor = None
    if factor_raw:
        try:
            factor = float(factor_raw)
        except ValueError:
            factor = None
        m_lo, m_hi = MAGNIFICATION_RANGE
        lo, hi = SPACING_RANGE_MM
        if factor is not None and not (np.isfinite(factor) and m_lo <= factor <= m_hi
                                       and all(lo <= v / factor <= hi for v in (ix, iy))):
            factor = None
    if factor is not None:
        sx, sy = ix / factor, iy / factor
        note = (f"pixel size {sx:g} x {sy:g} mm: {where} {ix:g} x {iy:g} mm at the detector plane divided by "
                f"EstimatedRadiographicMagnificationFactor (0018,1114) {factor:g}, correcting the geometric "
                f"magnification (no PixelSpacing)")
    else:
        sx, sy = ix, iy
        why = (f"EstimatedRadiographicMagnificationFactor (0018,1114) '{factor_raw}' is not a factor of "
               f"{MAGNIFICATION_RANGE[0]:g} to {MAGNIFICATION_RANGE[1]:g}" if factor_raw
               else "no EstimatedRadiographicMagnificationFactor (0018,1114) to correct it")
        note = (f"pixel size {sx:g} x {sy:g} mm from {where} (no PixelSpacing): measured at the detector plane, "
                f"not corrected for geometric magnification ({why}), so lengths in mm are larger than in the patient")
    image.SetSpacing((sx, sy, *image.GetSpacing()[2:]))
    add_note(image, note)
    return True


def _transfer_syntax(path: Path, header_value: str) -> str:
    """The file's TransferSyntaxUID (0002,0010), "" when it has none (implicit VR little endian, raw pixels).

    GDCM does not always pass the file meta group to SimpleITK (a JPEG 2000 CT slice comes without 0002|0010), so
    when the reader gives none, pydicom reads the meta group alone (well under a millisecond)."""
    import pydicom
    from pydicom.filereader import read_file_meta_info

    if header_value.strip("\x00 "):
        return header_value.strip("\x00 ")
    try:
        return str(read_file_meta_info(str(path)).get("TransferSyntaxUID", "")).strip("\x00 ")
    except (pydicom.errors.InvalidDicomError, OSError, ValueError, TypeError, AttributeError):
        return ""


def check_dicom_pixels(reader: sitk.ImageFileReader, path: Path, frames: int) -> None:
    """Refuse a DICOM file whose PixelSpacing (0028,0030), or without it ImagerPixelSpacing (0018,1164), is not two
    sizes in :data:`SPACING_RANGE_MM` (the reader would silently take 1 mm for 0 or NaN, and flip the image for a
    negative size), or whose raw pixel data is shorter than its rows x columns x frames declare (the reader would
    fill the rest with whatever follows)."""
    def tag(key: str) -> str:
        return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""

    if not (tag("0008|0016") or tag("0002|0010") or looks_like_dicom(path)):
        return  # not DICOM (an anonymised file may lack SOPClassUID and GDCM may hide the meta group: the preamble)
    raw = tag("0028|0030")
    lo, hi = SPACING_RANGE_MM
    if raw:
        if _pixel_sizes(raw) is None:
            raise InputImageError(f"DICOM PixelSpacing (0028,0030) is '{raw}': not two pixel sizes of {lo:g} to "
                                  f"{hi:g} mm", path)
    elif (imager := tag("0018|1164")) and _pixel_sizes(imager) is None:
        raise InputImageError(f"DICOM ImagerPixelSpacing (0018,1164) is '{imager}' and there is no PixelSpacing: "
                              f"not two pixel sizes of {lo:g} to {hi:g} mm", path)
    if _transfer_syntax(path, tag("0002|0010")) in _UNCOMPRESSED_SYNTAXES + ("",):   # none given: implicit VR, raw
        try:
            rows, cols = int(tag("0028|0010")), int(tag("0028|0011"))
            bits, samples = int(tag("0028|0100") or 16), int(tag("0028|0002") or 1)
        except ValueError:
            return
        if bits % 8:
            return  # bit-packed (1-bit segmentations): not checked
        need = rows * cols * max(1, frames) * samples * (bits // 8)
        if path.stat().st_size < need:
            raise InputImageError(f"DICOM pixel data is shorter than its {cols} x {rows} pixels"
                                  f"{f' x {frames} frames' if frames > 1 else ''} declare ({need:,} bytes; the "
                                  f"file holds {path.stat().st_size:,}): truncated or inconsistent header", path)


#: The elements that hold a DICOM object's image: integer, float and double-float pixel data (PS3.3 C.7.6.3).
_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def dicom_without_pixels(path: Path) -> str | None:
    """Why the DICOM file ``path`` is not an image when it holds no pixel data (a structured report, a
    presentation state, or a file whose PixelData was removed), else ``None``.

    GDCM then finds no image and ITK only says "Unable to determine ImageIO reader", which names neither the file's
    kind nor its problem; pydicom reads the header (values above 1 KB are skipped, so pixel data is not loaded) and
    the reason names the SOP class and modality the file says it is.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), defer_size=1024)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError, TypeError, AttributeError, EOFError):
        return None  # not DICOM as pydicom reads it: the reader's own error stands
    if any(keyword in ds for keyword in _PIXEL_DATA_KEYWORDS):
        return None
    sop = ds.get("SOPClassUID")
    kind = [f"SOP class {getattr(sop, 'name', sop)}"] if sop else []
    if str(ds.get("Modality", "")).strip():
        kind.append(f"Modality {str(ds.Modality).strip()}")
    return f"DICOM file has no pixel data (no PixelData element{'; ' if kind else ''}{', '.join(kind)}): not an image"


def dicom_modality(image: sitk.Image) -> str:
    """The DICOM Modality tag (0008,0060) of ``image`` as read, upper case (``"CT"``, ``"MR"``, ``"US"``...), or ``""``
    for an image without one (NIfTI, NRRD, a picture)."""
    return image.GetMetaData("0008|0060").strip().upper() if image.HasMetaDataKey("0008|0060") else ""
