"""Read and write scans with their full geometry (origin, spacing, direction in LPS, pixel type).

SimpleITK images are the geometry carrier everywhere in the core: arrays taken out of them are
``(Z, Y, X)`` (numpy order of ITK's ``(x, y, z)`` index), and every array that goes back to disk is put
back on the grid it came from with :func:`image_from_array`, so outputs overlay the input exactly in Slicer.
CT read from DICOM is in HU: ITK's GDCM reader applies Rescale Slope/Intercept.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import locale
import logging
import os
import struct
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..contract import PICTURE_SUFFIXES, WRITABLE_SUFFIXES, suffix_of
from ..errors import NOT_TEXT_PATH, InputImageError, is_text_path, printable_path
from ..limits import ALLOW_GAPS_ENV, check_declared_image
from .atomic import atomic_output

log = logging.getLogger(__name__)
# ITK prints its own warnings (e.g. "Non uniform sampling") as multi-line text on stderr; the reader checks those
# conditions itself and reports them as one line or as a note in the output
sitk.ProcessObject.SetGlobalWarningDisplay(False)


#: Metadata keys the reader sets on the images it returns (plain strings, carried into the outputs' JSON).
NOTES_KEY = "MedDeepRecog|notes"      # what the reader changed, e.g. colour made grey; "; "-separated
FRAMES_KEY = "MedDeepRecog|frames"    # a single file holding several frames (multi-frame DICOM): their number
PICTURE_KEY = "MedDeepRecog|picture"  # "png" / "jpeg": a picture file, no physical spacing of its own

#: Pictures larger than this per side, or with more pixels than this in all, are refused before their pixels are
#: decoded (a PNG of zeros compresses about 1000:1, so a small file can declare gigabytes): checked on the header in
#: :func:`_check_picture_decodes`, before Pillow or ITK decodes anything.
MAX_PICTURE_SIDE = 16384
MAX_PICTURE_PIXELS = 64 << 20
#: The pixel sizes (mm) a picture's --spacing or a DICOM file's PixelSpacing may give: from 1 micrometre to 1 metre.
SPACING_RANGE_MM = (1e-3, 1e3)
#: The EstimatedRadiographicMagnificationFactor (0018,1114) a radiograph may give: source-to-detector over
#: source-to-object distance, so at least 1; 10 is far beyond any projection geometry.
MAGNIFICATION_RANGE = (1.0, 10.0)
#: The largest intensity magnitude accepted: filters and networks compute in float32, and squared sums of larger
#: values overflow it (no scanner stores values near this: CT spans about -1024..3071 HU, MR 12-16 bits).
MAX_ABS_INTENSITY = 1e12
#: DICOM transfer syntaxes whose pixel data is stored raw, so its length follows from rows, columns and bits.
_UNCOMPRESSED_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")


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


def _mentions(path: Path, uid: str, limit: int = 1 << 16) -> bool:
    """True if the file's first bytes (its header) hold the series UID: a slice of that series."""
    try:
        with open(path, "rb") as fh:
            return uid.encode("ascii") in fh.read(limit)
    except (OSError, UnicodeEncodeError):
        return False


def _check_slice_positions(folder: Path, files: list[str], label: str, unassigned: list[Path],
                           allow: bool) -> str | None:
    """Refuse (or, with ``allow``, describe) a series whose slices are not evenly spaced along their normal.

    GDCM silently leaves out slices it cannot read (no pixel data, truncated) and ITK then spreads the remaining
    slices over the whole extent (a 2.0 mm series read as 2.111 mm). The positions (0020,0032) projected on the
    slice normal (0020,0037) must step evenly; a gap names the files on both sides, and files of the folder that
    could not be read as slices are named too. Returns a note for the image when ``allow`` lets it through.
    """
    positions = []
    for name in files:
        r = sitk.ImageFileReader()
        r.SetFileName(name)
        r.LoadPrivateTagsOff()
        try:
            r.ReadImageInformation()
            ipp = [float(v) for v in _dicom_tag(r, "0020|0032").split("\\")]
            iop = [float(v) for v in _dicom_tag(r, "0020|0037").split("\\")]
        except (RuntimeError, ValueError):
            return None  # positions unknown: ITK's own ordering is all there is
        if len(ipp) != 3 or len(iop) != 6:
            return None
        normal = np.cross(iop[:3], iop[3:])
        positions.append((float(np.dot(ipp, normal)), Path(name).name))
    if len(positions) < 3:
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
        if files and not any(looks_like_dicom(f) for f in files):
            names = ", ".join(f.name for f in files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
            raise InputImageError(f"the folder holds no scan: no DICOM file and no NIfTI, NRRD, MHA, PNG or JPEG file "
                                  f"(it holds {names})", folder)
        raise InputImageError("folder contains no readable DICOM series", folder)
    files_by_series = {sid: tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid))
                       for sid in series_ids}
    return files_by_series, max(files_by_series, key=lambda sid: len(files_by_series[sid]))


def _read_dicom_folder(folder: Path) -> sitk.Image:
    """Read the DICOM series with most slices in ``folder``, named by SeriesInstanceUID and description (other
    series are named in the log and the image's notes). Missing or unreadable slices and uneven spacing are
    refused (see :func:`_check_slice_positions`). The pixel size comes from the first slice's tags as for one file
    (:func:`_dicom_pixel_size`: a radiograph's ImagerPixelSpacing, an ultrasound's region calibration), and an
    unusable one is refused (:func:`_check_dicom_pixels`)."""
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
    check_declared_image(list(first.GetSize()[:2]) + [len(files) * max(1, _dicom_frames(first))],
                         declared_bytes_per_voxel(first), folder, f"DICOM series {label}")
    _check_dicom_pixels(first, Path(files[0]), _dicom_frames(first))  # pixel size and data, as for one file
    allow = os.environ.get(ALLOW_GAPS_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    broken = [p for p in unassigned if _mentions(p, chosen)]  # slices of this series GDCM could not read
    gap_note = _check_slice_positions(folder, files, label, unassigned, allow)
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
    _dicom_pixel_size(image, first, Path(files[0]))
    image.SetMetaData(SERIES_KEY, json.dumps({"uid": chosen, "description": description(chosen),
                                              "slices": len(files), "others": others}))
    if others:
        _add_note(image, f"DICOM series {label} read ({len(files)} slices); also present: {'; '.join(others)}")
    if gap_note:
        _add_note(image, gap_note)
    return image


def itk_error_line(exc: BaseException) -> str:
    """ITK exceptions carry multi-line C++ context; the last non-empty line is the description."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.lower().startswith("description:"):
            return ln.split(":", 1)[1].strip()
    return lines[-1] if lines else type(exc).__name__


def _check_nifti_complete(path: Path) -> None:
    """Refuse truncated NIfTI files, which ITK reads without complaint (missing voxels become zeros).

    Reads the header's dimensions, bits per voxel and data offset and checks that the (decompressed) file
    holds all voxel bytes; a broken gzip stream is reported as corrupt. Float voxels are also checked for
    NaN/Inf here, because ITK's NIfTI reader silently turns them into zeros.
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            header = fh.read(540)
            if len(header) < 348:
                raise InputImageError("truncated NIfTI: header is incomplete", path)
            for endian in ("<", ">"):
                sizeof_hdr = struct.unpack(endian + "i", header[:4])[0]
                if sizeof_hdr in (348, 540):
                    break
            else:
                return  # not NIfTI-1/2: let ITK decide
            if sizeof_hdr == 348:
                dims = struct.unpack(endian + "8h", header[40:56])
                datatype = struct.unpack(endian + "h", header[70:72])[0]
                bitpix = struct.unpack(endian + "h", header[72:74])[0]
                vox_offset = int(struct.unpack(endian + "f", header[108:112])[0])
            else:
                dims = struct.unpack(endian + "8q", header[16:80])
                datatype = struct.unpack(endian + "h", header[12:14])[0]
                bitpix = struct.unpack(endian + "h", header[14:16])[0]
                vox_offset = int(struct.unpack(endian + "q", header[168:176])[0])
            n_dims = max(1, min(int(dims[0]), 7))
            n_voxels = 1
            for d in dims[1:1 + n_dims]:
                n_voxels *= max(int(d), 1)
            n_dims_all = [max(int(d), 1) for d in dims[1:1 + n_dims]]
            if any(int(d) < 0 for d in dims[1:1 + n_dims]):
                raise InputImageError(f"NIfTI header declares a negative size {list(dims[1:1 + n_dims])}", path)
            check_declared_image(n_dims_all, max(int(bitpix), 8) // 8, path, "NIfTI header")
            _check_nifti_pixdim(header, endian, sizeof_hdr, n_dims, path)
            expected = max(vox_offset, sizeof_hdr) + n_voxels * max(int(bitpix), 8) // 8
            float_dtype = {16: "f4", 64: "f8"}.get(int(datatype))  # NIFTI_TYPE_FLOAT32 / FLOAT64
            start = max(vox_offset, sizeof_hdr)
            non_finite = 0
            if float_dtype is not None:
                fh.seek(start)
                dtype = np.dtype(endian + float_dtype)
                available = start
                tail = b""
                while available < expected and (chunk := fh.read(min(1 << 22, expected - available))):
                    available += len(chunk)
                    data = tail + chunk
                    usable = len(data) - len(data) % dtype.itemsize
                    values = np.frombuffer(data[:usable], dtype=dtype)
                    non_finite += int(values.size - np.count_nonzero(np.isfinite(values)))
                    tail = data[usable:]
            elif opener is open:
                available = fh.seek(0, 2)
            else:  # gzip cannot seek to the end without decompressing; stream up to the declared size, no further
                available = len(header)
                while available < expected and (chunk := fh.read(min(1 << 22, expected - available))):
                    available += len(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputImageError(f"corrupt or truncated compressed data ({exc})", path) from None
    if available < expected:
        raise InputImageError(f"truncated NIfTI: {available} of {expected} bytes present", path)
    if non_finite:
        raise InputImageError(f"{non_finite} voxel(s) are NaN or infinite", path)


def _check_nifti_pixdim(header: bytes, endian: str, sizeof_hdr: int, n_dims: int, path: Path) -> None:
    """Refuse a zero, NaN or infinite voxel size in a NIfTI header (ITK silently reports 1 mm instead)."""
    if sizeof_hdr == 348:
        pixdim = struct.unpack(endian + "8f", header[76:108])
    else:
        pixdim = struct.unpack(endian + "8d", header[104:168])
    for axis in range(1, min(n_dims, 3) + 1):
        value = float(pixdim[axis])
        if not np.isfinite(value) or value == 0.0:
            raise InputImageError(f"NIfTI header gives voxel size pixdim[{axis}] = {value} along {'xyz'[axis - 1]}; "
                                  "the scan's geometry is unknown (fix the header's pixdim)", path)


#: bytes per component of each SimpleITK pixel type name (vector types count per component)
def _component_bytes(pixel_id: int) -> int:
    name = sitk.GetPixelIDValueAsString(pixel_id).lower()
    if "complex" in name:
        return 16 if "64" in name else 8
    for bits in ("64", "32", "16", "8"):
        if bits in name:
            return int(bits) // 8
    return 8


def declared_bytes_per_voxel(reader: sitk.ImageFileReader) -> int:
    return _component_bytes(reader.GetPixelID()) * max(1, int(reader.GetNumberOfComponents()))


def _text_header(path: Path, limit: int = 1 << 16) -> tuple[list[str], int] | None:
    """The text header lines of an attached-header NRRD (ended by a blank line) or MHA (ended by the
    ``ElementDataFile`` line), and the byte offset where the voxel data start; ``None`` if not found."""
    with open(path, "rb") as fh:
        head = fh.read(limit)
    is_nrrd = head.startswith(b"NRRD")
    lines, pos = [], 0
    while True:
        end = head.find(b"\n", pos)
        if end < 0:
            return None
        line = head[pos:end].decode("latin-1").rstrip("\r")
        pos = end + 1
        if is_nrrd and not line.strip():
            return lines, pos
        lines.append(line)
        if not is_nrrd and line.replace(" ", "").lower().startswith("elementdatafile="):
            return lines, pos


def _check_stream_complete(path: Path, declared: int) -> None:
    """Refuse an NRRD/MHA whose voxel data are shorter than its header declares, before ITK allocates the image.

    ITK allocates the declared size first and only then finds the data short, so a tiny file declaring gigabytes
    would take that memory. Raw data are checked against the file size; gzip/zlib data are decompressed in
    bounded chunks up to the declared size and no further (a longer stream is not read). Hand-written because
    neither ITK nor pynrrd offer a header-only size check that stops at the declared size.
    """
    try:
        found = _text_header(path)
    except OSError:
        return
    if found is None:
        return
    lines, data_start = found
    if lines and lines[0].startswith("NRRD"):
        fields = {}
        for ln in lines[1:]:
            if ln.startswith("#") or ":" not in ln:
                continue
            key, value = ln.split(":", 1)
            fields[key.strip().lower()] = value.lstrip("=").strip()
        encoding = fields.get("encoding", "raw").lower()
        compressed = encoding in ("gzip", "gz")
        detached = fields.get("data file", fields.get("datafile"))
        if detached is not None:
            _check_detached(path, detached, declared, compressed or encoding != "raw")
            return
        if fields.get("byte skip", "0") not in ("0", "") or fields.get("line skip", "0") not in ("0", ""):
            return  # skipped bytes: ITK checks those itself
        if not compressed and encoding != "raw":
            return  # text, hex, bzip2: ITK reads those
    else:
        fields = {}
        for ln in lines:
            if "=" in ln:
                key, value = ln.split("=", 1)
                fields[key.strip().lower()] = value.strip()
        compressed = fields.get("compresseddata", "false").lower() == "true"
        data_file = fields.get("elementdatafile", "")
        if data_file.upper() != "LOCAL":
            if data_file and data_file.split()[0].upper() not in ("LIST",) and "%" not in data_file:
                _check_detached(path, data_file, declared, compressed)
            return
    size = path.stat().st_size
    if not compressed:
        available = size - data_start
    else:
        available = 0
        inflater = zlib.decompressobj(47)  # zlib or gzip stream, header detected
        try:
            with open(path, "rb") as fh:
                fh.seek(data_start)
                while available < declared:
                    chunk = fh.read(1 << 20)
                    if not chunk:
                        break
                    while chunk and available < declared:
                        out = inflater.decompress(chunk, min(1 << 22, declared - available))
                        available += len(out)
                        chunk = inflater.unconsumed_tail
                        if inflater.eof:
                            break
                    if inflater.eof:
                        break
        except zlib.error as exc:
            raise InputImageError(f"corrupt compressed voxel data ({exc})", path) from None
    if available < declared:
        raise InputImageError(f"truncated file: {max(available, 0)} of {declared} voxel bytes the header declares "
                              "are present", path)


def _check_detached(header: Path, name: str, declared: int, compressed: bool) -> None:
    """A detached header's data file (NRRD ``data file``, MetaImage ``ElementDataFile``) must be a regular file and,
    when raw, hold the declared bytes (a device such as ``/dev/zero`` would feed the allocator without end)."""
    if name.split()[0].upper() == "LIST" or "%" in name:
        return  # a list of slice files: ITK checks each
    data = Path(name)
    if not data.is_absolute():
        data = header.parent / data
    if not data.exists():
        raise InputImageError(f"the header's data file {name!r} does not exist", header)
    if not data.is_file():
        raise InputImageError(f"the header's data file {name!r} is not a regular file", header)
    if not compressed and data.stat().st_size < declared:
        raise InputImageError(f"truncated data file {name!r}: {data.stat().st_size} of {declared} voxel bytes the "
                              "header declares are present", header)


def _check_direction(direction, path, dimension: int) -> None:
    """Refuse a direction matrix that is not orthonormal (a sheared or scaled NRRD ``space directions``):
    ITK would carry it on and every resampling and LPS view would be silently wrong."""
    d = np.asarray(direction, dtype=float).reshape(dimension, dimension)
    if not np.isfinite(d).all():
        raise InputImageError("direction matrix has NaN or infinite values", path)
    error = float(np.abs(d.T @ d - np.eye(dimension)).max())
    if error > 1e-3:
        raise InputImageError(f"direction matrix is not orthonormal (axes sheared or scaled, deviation "
                              f"{error:.3g}); the geometry is ambiguous: {np.round(d, 4).tolist()}", path)


def read_image(path: str | Path, *, pixel_type: int | None = None,
               spacing: tuple[float, float] | None = None) -> sitk.Image:
    """Read a scan from NIfTI, NRRD, MHA/MHD, a DICOM file or series folder, or a PNG/JPEG picture.

    Args:
        path: a file, or a folder holding a DICOM series (the series with most slices is read).
        pixel_type: optional ``sitk.sitkFloat32`` etc. to cast to; by default the stored type is kept.
        spacing: pixel size (mm, (x, y)) of a PNG/JPEG picture, which stores none; default 1 mm. Ignored for
            formats that carry their own geometry.

    Returns:
        The image with origin, spacing and direction (LPS) as stored. Colour pictures (and colour DICOM such as
        ultrasound) become one grey channel (ITU-R BT.601 luma), noted under :data:`NOTES_KEY`; a 16-bit picture
        keeps its range. A single DICOM file with several frames is marked with :data:`FRAMES_KEY`.

    Raises:
        InputImageError: missing path, unreadable or truncated file, no DICOM series, a picture too large.
    """
    with _kept_locale():  # GDCM switches the C locale to "C" and leaves it so (Python's text files turn ASCII)
        return _read_image(Path(path), pixel_type, spacing)


@contextlib.contextmanager
def _kept_locale():
    try:
        saved = locale.setlocale(locale.LC_ALL)
    except locale.Error:
        saved = None
    try:
        yield
    finally:
        if saved is not None:
            with contextlib.suppress(locale.Error):
                if locale.setlocale(locale.LC_ALL) != saved:
                    locale.setlocale(locale.LC_ALL, saved)


def _read_image(path: Path, pixel_type, spacing) -> sitk.Image:
    if not is_text_path(path):
        raise InputImageError(NOT_TEXT_PATH, printable_path(path))
    if not path.exists():
        raise InputImageError("no such file or folder", path)
    if path.is_dir():
        image = _read_dicom_folder(path)
    else:
        if path.stat().st_size == 0:
            raise InputImageError("file is empty (0 bytes)", path)
        if suffix_of(path) in (".nii", ".nii.gz"):
            _check_nifti_complete(path)
        picture = suffix_of(path) in PICTURE_SUFFIXES
        if picture and _check_picture_decodes(path) in ("LA", "La"):
            return _grey_alpha_picture(path, spacing, pixel_type)
        try:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            declared = declared_bytes_per_voxel(reader)
            check_declared_image(reader.GetSize(), declared, path, "header")
            if suffix_of(path) in (".nrrd", ".seg.nrrd", ".mha", ".nhdr", ".mhd"):
                n = declared
                for d in reader.GetSize():
                    n *= int(d)
                _check_stream_complete(path, n)
            if reader.GetDimension() in (2, 3):
                _check_direction(reader.GetDirection(), path, reader.GetDimension())
            frames = _dicom_frames(reader)
            _check_dicom_pixels(reader, path, frames)
            image = reader.Execute()
        except RuntimeError as exc:
            raise InputImageError(f"cannot be read as an image ({itk_error_line(exc)})", path) from None
        if picture:
            image = _as_picture(image, path, spacing)
        else:
            _dicom_pixel_size(image, reader, path)
            if frames > 1:
                image.SetMetaData(FRAMES_KEY, str(frames))
            if spacing is not None:
                _add_note(image, "--spacing ignored: the file stores its own pixel size "
                                 f"({' x '.join(f'{s:g}' for s in image.GetSpacing())} mm)")
    # Colour: pictures and DICOM, and 8/16-bit RGB(A) in any format (an ultrasound that Slicer loaded as a vector
    # volume reaches the worker as such a NRRD). A float vector NRRD/MHA (e.g. a displacement field) is left as is.
    colour_source = (path.is_dir() or suffix_of(path) in PICTURE_SUFFIXES + (".dcm", ".ima")
                     or image.GetPixelID() in (sitk.sitkVectorUInt8, sitk.sitkVectorUInt16))
    if colour_source and image.GetNumberOfComponentsPerPixel() in (3, 4) and image.GetDimension() in (2, 3):
        image = _to_grey(image)
    if pixel_type is not None:
        image = sitk.Cast(image, pixel_type)
    return image


def _grey_alpha_picture(path: Path, spacing, pixel_type) -> sitk.Image:
    """A grey picture with transparency (Pillow mode ``LA``), which ITK's PNG reader cannot read (two components):
    its grey channel, read with Pillow, as :func:`_as_picture` makes any picture, transparency dropped and noted."""
    from PIL import Image

    with Image.open(path) as picture:
        grey = np.asarray(picture.getchannel("L"))
    image = _as_picture(sitk.GetImageFromArray(grey), path, spacing)
    _add_note(image, "grey picture with transparency: the transparency (alpha) was dropped")
    return image if pixel_type is None else sitk.Cast(image, pixel_type)


def _check_picture_decodes(path: Path) -> str:
    """Decode a PNG/JPEG once with Pillow before ITK reads it, within the picture size limits (checked on the header
    first), and return its Pillow mode (``L``, ``RGB``, ``LA``, ...). ITK's libjpeg fills a truncated JPEG with grey
    and only prints "Premature end of JPEG file", so a damaged picture would be classified as if whole; and libpng
    prints its own lines before ITK's error. Pillow raises instead, which gives one line naming the file."""
    from PIL import Image, UnidentifiedImageError

    pillow_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # our own limits, below, are checked on the header before anything is decoded
    try:
        with Image.open(path) as picture:
            w, h = picture.size
            if max(w, h) > MAX_PICTURE_SIDE:
                raise InputImageError(f"picture of {w} x {h} pixels is larger than {MAX_PICTURE_SIDE} per side", path)
            if w * h > MAX_PICTURE_PIXELS:
                raise InputImageError(f"picture of {w} x {h} pixels has more than {MAX_PICTURE_PIXELS:,} pixels", path)
            picture.load()
            return picture.mode
    except InputImageError:
        raise
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as exc:
        raise InputImageError(f"cannot be read as a picture: damaged or not a PNG/JPEG ({exc})", path) from None
    finally:
        Image.MAX_IMAGE_PIXELS = pillow_limit


def _dicom_frames(reader: sitk.ImageFileReader) -> int:
    """Number of frames of a DICOM file (tag 0028,0008), 1 for any other file."""
    try:
        if reader.HasMetaDataKey("0028|0008"):
            return max(1, int(float(reader.GetMetaData("0028|0008").strip() or 1)))
    except (RuntimeError, ValueError):
        pass
    return 1


def _dicom_pixel_size(image: sitk.Image, header, path: Path) -> None:
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
        _add_note(image, f"pixel size {sx:g} x {sy:g} mm from the ultrasound region calibration (no PixelSpacing)")
    elif sizes:
        _add_note(image, "ultrasound regions give different pixel sizes and there is no PixelSpacing: 1 mm pixels "
                         "assumed, so sizes in mm are not physical")
    else:
        _add_note(image, "DICOM file without a pixel size (no ImagerPixelSpacing, no PixelSpacing, no calibrated "
                         "ultrasound region): 1 mm pixels assumed, so sizes in mm are not physical")


def _dicom_pixel_spacing_over_imager_spacing(image: sitk.Image, header) -> None:
    """Give a DICOM image the pixel size of its PixelSpacing (0028,0030) where the reader took another.

    GDCM takes ImagerPixelSpacing (0018,1164), the size at the detector, for some radiograph storage classes (CR,
    DX, MG, XA) even when PixelSpacing is present; PixelSpacing is then the size in the patient plane (DICOM PS3.3
    10.7.1.3), calibrated as PixelSpacingCalibrationType (0028,0A02) says when it is there. PixelSpacing is checked
    before the read (:func:`_check_dicom_pixels`); the note says which size was used, how it was calibrated, and
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
    _add_note(image, f"pixel size {sx:g} x {sy:g} mm from PixelSpacing (0028,0030), {how}; the reader had taken "
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
    ImagerPixelSpacing is refused earlier (:func:`_check_dicom_pixels`).
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
    _add_note(image, note)
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


def _check_dicom_pixels(reader: sitk.ImageFileReader, path: Path, frames: int) -> None:
    """Refuse a DICOM file whose PixelSpacing (0028,0030), or without it ImagerPixelSpacing (0018,1164), is not two
    sizes in :data:`SPACING_RANGE_MM` (the reader would silently take 1 mm for 0 or NaN, and flip the image for a
    negative size), or whose raw pixel data is shorter than its rows x columns x frames declare (the reader would
    fill the rest with whatever follows)."""
    def tag(key: str) -> str:
        return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""

    if not (tag("0008|0016") or tag("0002|0010")):
        return  # not DICOM
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


def _as_picture(image: sitk.Image, path: Path, spacing) -> sitk.Image:
    """A PNG/JPEG as a 2D image: 1 mm pixels (or ``spacing``), origin 0, rows running down (+y)."""
    if image.GetDimension() != 2:
        raise InputImageError(f"a picture file should hold one 2D image, got {image.GetDimension()}D "
                              f"{list(image.GetSize())}", path)
    sx, sy = (1.0, 1.0) if spacing is None else (float(spacing[0]), float(spacing[1]))
    lo, hi = SPACING_RANGE_MM
    if not (np.isfinite([sx, sy]).all() and lo <= sx <= hi and lo <= sy <= hi):
        raise InputImageError(f"--spacing must be two pixel sizes of {lo:g} to {hi:g} mm, got {list(spacing)}", path)
    image.SetSpacing((sx, sy))
    image.SetOrigin((0.0, 0.0))
    image.SetDirection((1.0, 0.0, 0.0, 1.0))
    image.SetMetaData(PICTURE_KEY, "jpeg" if suffix_of(path) in (".jpg", ".jpeg") else "png")
    if spacing is None:
        _add_note(image, "picture file without physical pixel size: 1 mm pixels assumed (set --spacing)")
    return image


def luma(rgb: np.ndarray) -> np.ndarray:
    """``(..., C)`` RGB(A) values (C >= 3) → float32 grey ``0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601; alpha
    dropped), accumulated into one grey plane: no float copy of every channel."""
    grey = rgb[..., 0].astype(np.float32)
    grey *= 0.299
    grey += np.float32(0.587) * rgb[..., 1]
    grey += np.float32(0.114) * rgb[..., 2]
    return grey


def _to_grey(image: sitk.Image) -> sitk.Image:
    """RGB(A) pixels → one float32 grey channel (:func:`luma`)."""
    comps = image.GetNumberOfComponentsPerPixel()
    arr = sitk.GetArrayViewFromImage(image)
    grey = luma(arr)
    out = sitk.GetImageFromArray(grey)
    del grey, arr
    out.CopyInformation(image)
    for key in image.GetMetaDataKeys():
        out.SetMetaData(key, image.GetMetaData(key))
    depth = {sitk.sitkVectorUInt8: ", 8-bit", sitk.sitkVectorUInt16: ", 16-bit"}.get(image.GetPixelID(), "")
    # info's pixel_type is the grey image's (32-bit float): the note keeps what the file held
    _add_note(out, f"colour image ({'RGBA' if comps == 4 else 'RGB'}{depth}) converted to grey (BT.601 luma, "
                   "32-bit float)")
    return out


def _add_note(image: sitk.Image, note: str) -> None:
    note = note.replace("; ", ", ")  # notes are stored "; "-separated
    old = image.GetMetaData(NOTES_KEY) if image.HasMetaDataKey(NOTES_KEY) else ""
    image.SetMetaData(NOTES_KEY, f"{old}; {note}" if old else note)


def image_notes(image: sitk.Image) -> list[str]:
    """What the reader changed about ``image`` (:data:`NOTES_KEY`), as a list of sentences."""
    return [n for n in image.GetMetaData(NOTES_KEY).split("; ") if n] if image.HasMetaDataKey(NOTES_KEY) else []


def carry_notes(source: sitk.Image, target: sitk.Image) -> sitk.Image:
    """Put ``source``'s notes (:data:`NOTES_KEY`) on ``target`` and return it: a filtered image is a new image
    without the reader's metadata, and a format with key/value metadata (NRRD, MetaImage) then keeps what the
    reader changed or assumed beside the voxels it concerns."""
    if source.HasMetaDataKey(NOTES_KEY):
        target.SetMetaData(NOTES_KEY, source.GetMetaData(NOTES_KEY))
    return target


def is_picture(image: sitk.Image) -> bool:
    """True for an image read from a PNG/JPEG (display values, no physical units or spacing of its own)."""
    return image.HasMetaDataKey(PICTURE_KEY)


def as_single_slice(image: sitk.Image) -> sitk.Image | None:
    """A 2D image, or a 3D image one voxel thick, as a 2D image (geometry kept); ``None`` for a real volume."""
    if image.GetDimension() == 2:
        return image
    if image.GetDimension() == 3 and image.GetSize()[2] == 1:
        return image[:, :, 0]
    return None


def require_3d(image: sitk.Image, path: str | Path | None = None) -> sitk.Image:
    """Return ``image`` as a single-component 3D volume, or raise a clear error.

    A 3D image with a singleton 4th axis is squeezed; a 2D image or a real 4D series is refused.
    """
    dim = image.GetDimension()
    size = image.GetSize()
    if dim == 4 and size[3] == 1:
        image = image[:, :, :, 0]
        dim, size = 3, image.GetSize()
    if dim != 3:
        raise InputImageError(f"a 3D volume is needed, but this image is {dim}D with size {list(size)}", path)
    if min(size) == 0:
        raise InputImageError(f"the volume has no voxels (size {list(size)})", path)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputImageError(
            f"a single-channel volume is needed, but voxels have {image.GetNumberOfComponentsPerPixel()} components",
            path)
    return image


def validate_intensities(image: sitk.Image, path: str | Path | None = None, *, allow_constant: bool = False) -> None:
    """Refuse volumes with NaN/Inf voxels or (unless ``allow_constant``) no contrast at all."""
    arr = sitk.GetArrayViewFromImage(image)
    if arr.size == 0:
        raise InputImageError("the volume has no voxels", path)
    if np.issubdtype(arr.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            raise InputImageError(f"{bad} voxel(s) are NaN or infinite", path)
    lo, hi = arr.min(), arr.max()
    if max(abs(float(lo)), abs(float(hi))) > MAX_ABS_INTENSITY:
        raise InputImageError(f"intensities reach {max(abs(float(lo)), abs(float(hi))):.3g}, beyond the "
                              f"{MAX_ABS_INTENSITY:.0e} that filters and models compute with", path)
    if not allow_constant and lo == hi:
        raise InputImageError(f"the volume is empty: every voxel equals {lo}", path)


def array_from_image(image: sitk.Image, dtype: Any = None) -> np.ndarray:
    """Copy the voxels out as a ``(Z, Y, X)`` array (``(Y, X)`` for 2D), optionally cast to ``dtype``."""
    arr = sitk.GetArrayFromImage(image)
    return arr if dtype is None else arr.astype(dtype, copy=False)


def image_from_array(array: np.ndarray, reference: sitk.Image, *, copy_metadata: bool = False) -> sitk.Image:
    """Put a ``(Z, Y, X)`` array on ``reference``'s grid (origin, spacing, direction).

    Raises:
        ValueError: if the array's shape is not the reference's size reversed (a programming error).
    """
    expected = tuple(reversed(reference.GetSize()))
    if tuple(array.shape) != expected:
        raise ValueError(f"array shape {tuple(array.shape)} does not match reference grid {expected}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.CopyInformation(reference)
    if copy_metadata:
        for key in reference.GetMetaDataKeys():
            image.SetMetaData(key, reference.GetMetaData(key))
    return image


#: Formats whose header names a separate data file (written beside it by :func:`.atomic.atomic_output_pair`).
DETACHED_HEADER_SUFFIXES = (".nhdr", ".mhd")


def write_image(image: sitk.Image, path: str | Path, *, compress: bool = True) -> Path:
    """Write ``image`` atomically; the format follows the extension (NRRD, NIfTI, MHA...).

    Raises:
        InputImageError: unsupported extension.
    """
    path = Path(path)
    if suffix_of(path) not in WRITABLE_SUFFIXES:
        raise InputImageError(f"unsupported output format {suffix_of(path) or '(none)'}; use one of "
                              f"{', '.join(WRITABLE_SUFFIXES)}", path)
    from .atomic import atomic_output_pair, output_error

    with (atomic_output_pair if suffix_of(path) in DETACHED_HEADER_SUFFIXES else atomic_output)(path) as tmp:
        try:
            with _writer_messages_captured() as messages:
                sitk.WriteImage(image, str(tmp), compress)
        except RuntimeError as exc:  # ITK reports a full disk or a failed write as a RuntimeError
            raise output_error(exc, path) from None
        if suffix_of(path) in (".nii", ".nii.gz") and _nifti_write_failed(image, tmp):
            raise output_error(RuntimeError("the NIfTI writer wrote only part of the image"), path)
        if messages:
            logging.getLogger(__name__).info("%s: the writer said: %s", path, " ".join(messages))
    return path


@contextlib.contextmanager
def _writer_messages_captured():
    """Collect what the C writers print on the process's stderr during a write (the NIfTI library's "NWAD: wrote
    only ..." on a full disk, MetaImage's stream errors) into the yielded list, so the command's own one-line error
    is all the user reads; a successful write's messages go to the log."""
    messages: list[str] = []
    try:
        sys.stderr.flush()
        sink = tempfile.TemporaryFile()
    except (OSError, ValueError):  # no real stderr, or no room for the capture: the messages stay where they go
        yield messages
        return
    with sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield messages
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            messages.extend(line.strip() for line in sink.read().decode("utf-8", "replace").splitlines()
                            if line.strip())


def _nifti_write_failed(image: sitk.Image, written: Path) -> bool:
    """ITK's NIfTI writer reports a short write (a full disk) only on stderr and returns normally, so the file is
    checked: an uncompressed ``.nii`` shorter than its voxels, or any NIfTI after which the disk is full."""
    from . import atomic  # looked up at call time, as atomic_output's own check is

    if atomic.disk_nearly_full(written.parent):
        return True
    if suffix_of(written) == ".nii":
        voxels = int(np.prod(image.GetSize())) * image.GetNumberOfComponentsPerPixel()
        return written.stat().st_size < voxels * image.GetSizeOfPixelComponent()
    return False


def same_geometry(a: sitk.Image, b: sitk.Image, *, tolerance: float = 1e-4) -> bool:
    """True when ``a`` and ``b`` share size, origin, spacing and direction (within ``tolerance`` mm)."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tolerance)
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tolerance)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tolerance)
    )


def dicom_modality(image: sitk.Image) -> str:
    """The DICOM Modality tag (0008,0060) of ``image`` as read, upper case (``"CT"``, ``"MR"``, ``"US"``...), or ``""``
    for an image without one (NIfTI, NRRD, a picture)."""
    return image.GetMetaData("0008|0060").strip().upper() if image.HasMetaDataKey("0008|0060") else ""


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
    """The distinct values when ``image`` looks like a label map or mask, else ``None``: integer voxels with at most
    :data:`MAX_LABEL_VALUES` values; or a volume (more than one slice, not a picture) with background 0 and at most
    256 values that change between neighbouring voxels (along x) less often than :data:`LABEL_BORDER_SHARE` outside
    the background. Counted on a strided sample of about a million voxels (values) and of about 65,000 rows
    (neighbours)."""
    arr = sitk.GetArrayViewFromImage(image)
    if not np.issubdtype(arr.dtype, np.integer) or not arr.size:
        return None
    flat = arr.reshape(-1)
    values = np.unique(flat[:: max(1, flat.size // 1_000_003)])
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

