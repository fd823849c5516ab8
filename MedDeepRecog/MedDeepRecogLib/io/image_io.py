"""Read and write scans with their full geometry (origin, spacing, direction in LPS, pixel type).

SimpleITK images are the geometry carrier everywhere in the core: arrays taken out of them are
``(Z, Y, X)`` (numpy order of ITK's ``(x, y, z)`` index), and every array that goes back to disk is put
back on the grid it came from with :func:`image_from_array`, so outputs overlay the input exactly in Slicer.
CT read from DICOM is in HU: ITK's GDCM reader applies Rescale Slope/Intercept.
"""

from __future__ import annotations

import gzip
import logging
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..errors import InputImageError
from .atomic import atomic_output

log = logging.getLogger(__name__)

#: Extensions SimpleITK writes and Slicer reads back with geometry intact.
WRITABLE_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
#: 2D picture formats: read as one grey slice, 1 mm pixels unless the caller gives a spacing.
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")
READABLE_SUFFIXES = WRITABLE_SUFFIXES + (".seg.nrrd", ".dcm", ".ima", ".img", ".hdr") + PICTURE_SUFFIXES

#: Metadata keys the reader sets on the images it returns (plain strings, carried into the outputs' JSON).
NOTES_KEY = "MedDeepRecog|notes"      # what the reader changed, e.g. colour made grey; "; "-separated
FRAMES_KEY = "MedDeepRecog|frames"    # a single file holding several frames (multi-frame DICOM): their number
PICTURE_KEY = "MedDeepRecog|picture"  # "png" / "jpeg": a picture file, no physical spacing of its own

#: Pictures larger than this per side are refused before their pixels are decoded.
MAX_PICTURE_SIDE = 16384


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for ext in (".seg.nrrd", ".nii.gz"):
        if name.endswith(ext):
            return ext
    return path.suffix.lower()


def _read_dicom_folder(folder: Path) -> sitk.Image:
    """Read the DICOM series with most slices in ``folder`` (other series are named in the log)."""
    try:
        series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or ()
    except RuntimeError as exc:  # GDCM raises on unreadable folders
        raise InputImageError(f"cannot scan folder for DICOM series ({exc})", folder) from None
    if not series_ids:
        raise InputImageError("folder contains no readable DICOM series", folder)
    files_by_series = {sid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series_ids}
    chosen = max(files_by_series, key=lambda sid: len(files_by_series[sid]))
    others = [f"{sid} ({len(f)} files)" for sid, f in files_by_series.items() if sid != chosen]
    if others:
        log.warning("%s: reading series %s (%d slices); also present: %s",
                    folder, chosen, len(files_by_series[chosen]), ", ".join(others))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files_by_series[chosen])
    reader.MetaDataDictionaryArrayUpdateOn()
    reader.LoadPrivateTagsOff()
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputImageError(f"DICOM series {chosen} could not be read ({_first_line(exc)})", folder) from None
    for key in ("0008|0060", "0008|103e", "0020|000e"):  # modality, series description, series UID
        if reader.HasMetaDataKey(0, key):
            image.SetMetaData(key, reader.GetMetaData(0, key).strip())
    return image


def _first_line(exc: BaseException) -> str:
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
            expected = max(vox_offset, sizeof_hdr) + n_voxels * max(int(bitpix), 8) // 8
            float_dtype = {16: "f4", 64: "f8"}.get(int(datatype))  # NIFTI_TYPE_FLOAT32 / FLOAT64
            start = max(vox_offset, sizeof_hdr)
            non_finite = 0
            if float_dtype is not None:
                fh.seek(start)
                dtype = np.dtype(endian + float_dtype)
                available = start
                tail = b""
                while chunk := fh.read(1 << 22):
                    available += len(chunk)
                    data = tail + chunk
                    usable = len(data) - len(data) % dtype.itemsize
                    values = np.frombuffer(data[:usable], dtype=dtype)
                    non_finite += int(values.size - np.count_nonzero(np.isfinite(values)))
                    tail = data[usable:]
            elif opener is open:
                available = fh.seek(0, 2)
            else:  # gzip cannot seek to the end without decompressing; stream through it
                available = len(header)
                while chunk := fh.read(1 << 22):
                    available += len(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputImageError(f"corrupt or truncated compressed data ({exc})", path) from None
    if available < expected:
        raise InputImageError(f"truncated NIfTI: {available} of {expected} bytes present", path)
    if non_finite:
        raise InputImageError(f"{non_finite} voxel(s) are NaN or infinite", path)


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
    path = Path(path)
    if not path.exists():
        raise InputImageError("no such file or folder", path)
    if path.is_dir():
        image = _read_dicom_folder(path)
    else:
        if path.stat().st_size == 0:
            raise InputImageError("file is empty (0 bytes)", path)
        if _suffix(path) in (".nii", ".nii.gz"):
            _check_nifti_complete(path)
        picture = _suffix(path) in PICTURE_SUFFIXES
        try:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            if picture and max(reader.GetSize()) > MAX_PICTURE_SIDE:
                raise InputImageError(f"picture of {' x '.join(map(str, reader.GetSize()))} pixels is larger than "
                                      f"{MAX_PICTURE_SIDE} per side", path)
            frames = _dicom_frames(reader)
            image = reader.Execute()
        except RuntimeError as exc:
            raise InputImageError(f"cannot be read as an image ({_first_line(exc)})", path) from None
        if picture:
            image = _as_picture(image, path, spacing)
        elif frames > 1:
            image.SetMetaData(FRAMES_KEY, str(frames))
    colour_source = path.is_dir() or _suffix(path) in PICTURE_SUFFIXES + (".dcm", ".ima")
    if colour_source and image.GetNumberOfComponentsPerPixel() in (3, 4) and image.GetDimension() in (2, 3):
        image = _to_grey(image)  # a vector NRRD/MHA (e.g. a displacement field) is left as it is
    if pixel_type is not None:
        image = sitk.Cast(image, pixel_type)
    return image


def _dicom_frames(reader: sitk.ImageFileReader) -> int:
    """Number of frames of a DICOM file (tag 0028,0008), 1 for any other file."""
    try:
        if reader.HasMetaDataKey("0028|0008"):
            return max(1, int(float(reader.GetMetaData("0028|0008").strip() or 1)))
    except (RuntimeError, ValueError):
        pass
    return 1


def _as_picture(image: sitk.Image, path: Path, spacing) -> sitk.Image:
    """A PNG/JPEG as a 2D image: 1 mm pixels (or ``spacing``), origin 0, rows running down (+y)."""
    if image.GetDimension() != 2:
        raise InputImageError(f"a picture file should hold one 2D image, got {image.GetDimension()}D "
                              f"{list(image.GetSize())}", path)
    sx, sy = (1.0, 1.0) if spacing is None else (float(spacing[0]), float(spacing[1]))
    if not (np.isfinite([sx, sy]).all() and sx > 0 and sy > 0):
        raise InputImageError(f"--spacing must be two positive sizes in mm, got {list(spacing)}", path)
    image.SetSpacing((sx, sy))
    image.SetOrigin((0.0, 0.0))
    image.SetDirection((1.0, 0.0, 0.0, 1.0))
    image.SetMetaData(PICTURE_KEY, "jpeg" if _suffix(path) in (".jpg", ".jpeg") else "png")
    if spacing is None:
        _add_note(image, "picture file without physical pixel size: 1 mm pixels assumed (set --spacing)")
    return image


def _to_grey(image: sitk.Image) -> sitk.Image:
    """RGB(A) pixels → one float32 grey channel, ``0.299 R + 0.587 G + 0.114 B`` (alpha dropped)."""
    comps = image.GetNumberOfComponentsPerPixel()
    arr = sitk.GetArrayViewFromImage(image).astype(np.float32)
    grey = arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114
    out = sitk.GetImageFromArray(grey)
    out.CopyInformation(image)
    for key in image.GetMetaDataKeys():
        out.SetMetaData(key, image.GetMetaData(key))
    _add_note(out, f"colour image ({'RGBA' if comps == 4 else 'RGB'}) converted to grey (BT.601 luma)")
    return out


def _add_note(image: sitk.Image, note: str) -> None:
    old = image.GetMetaData(NOTES_KEY) if image.HasMetaDataKey(NOTES_KEY) else ""
    image.SetMetaData(NOTES_KEY, f"{old}; {note}" if old else note)


def image_notes(image: sitk.Image) -> list[str]:
    """What the reader changed about ``image`` (:data:`NOTES_KEY`), as a list of sentences."""
    return [n for n in image.GetMetaData(NOTES_KEY).split("; ") if n] if image.HasMetaDataKey(NOTES_KEY) else []


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
    if not allow_constant:
        lo, hi = arr.min(), arr.max()
        if lo == hi:
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


def write_image(image: sitk.Image, path: str | Path, *, compress: bool = True) -> Path:
    """Write ``image`` atomically; the format follows the extension (NRRD, NIfTI, MHA...).

    Raises:
        InputImageError: unsupported extension.
    """
    path = Path(path)
    if _suffix(path) not in WRITABLE_SUFFIXES:
        raise InputImageError(f"unsupported output format {_suffix(path) or '(none)'}; use one of "
                              f"{', '.join(WRITABLE_SUFFIXES)}", path)
    with atomic_output(path) as tmp:
        sitk.WriteImage(image, str(tmp), compress)
    return path


def same_geometry(a: sitk.Image, b: sitk.Image, *, tolerance: float = 1e-4) -> bool:
    """True when ``a`` and ``b`` share size, origin, spacing and direction (within ``tolerance`` mm)."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tolerance)
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tolerance)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tolerance)
    )


def guess_modality(image: sitk.Image) -> str:
    """Best guess of ``"CT"``, ``"MR"`` or ``"unknown"``: DICOM tag first, else intensity statistics.

    CT voxels are in HU: air near -1000 and a minimum below -500; MR intensities are non-negative.
    """
    if image.HasMetaDataKey("0008|0060"):
        tag = image.GetMetaData("0008|0060").strip().upper()
        if tag in ("CT", "MR"):
            return tag
    arr = sitk.GetArrayViewFromImage(image)
    lo = float(np.percentile(arr, 1)) if arr.size else 0.0
    if lo < -500:
        return "CT"
    if is_picture(image):
        return "unknown"  # display values of a picture say nothing about the modality
    if float(arr.min()) >= 0:
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
        **({"notes": image_notes(image)} if image_notes(image) else {}),
        **({"frames": int(image.GetMetaData(FRAMES_KEY))} if image.HasMetaDataKey(FRAMES_KEY) else {}),
    }
