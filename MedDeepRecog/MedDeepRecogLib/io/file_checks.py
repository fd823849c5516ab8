"""Checks of a scan file's header and data before ITK reads it: truncated or corrupt NIfTI, NRRD and MetaImage
data, declared sizes beyond the limits, detached data files, NaN voxel sizes and sheared directions.

ITK reads many damaged files without complaint (missing voxels become zeros, a NaN spacing becomes 1 mm) or
allocates the declared size before finding the data short; these checks refuse such files in one line first.
"""

from __future__ import annotations

import gzip
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputImageError
from ..limits import check_declared_image


#: ``ITK ERROR: SmoothingRecursiveGaussianImageFilter(0x564d9e107da0): ...``: the filter object's memory address
#: (and the "ITK ERROR" prefix) tell the user nothing and differ from run to run; the filter's name is kept.
_ITK_OBJECT_ADDRESS = re.compile(r"^(?:ITK ERROR:\s*)?(\w+)\(0x[0-9a-fA-F]+\):\s*")


def itk_error_line(exc: BaseException) -> str:
    """ITK exceptions carry multi-line C++ context; the last non-empty line is the description, without the C++
    object's memory address (``Filter(0x...): problem`` becomes ``Filter: problem``)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    line = lines[-1] if lines else type(exc).__name__
    for ln in reversed(lines):
        if ln.lower().startswith("description:"):
            line = ln.split(":", 1)[1].strip()
            break
    return _ITK_OBJECT_ADDRESS.sub(r"\1: ", line)


def check_nifti_complete(path: Path) -> None:
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


#: Bytes a NRRD/MetaImage text header may take, a detached header's ``LIST`` of data files included; read line by
#: line up to this and no further. Slicer's ``.seg.nrrd`` carries about 1 KB of fields a segment (TotalSegmentator's
#: 117 segments: ~0.15 MB); a header ITK read but that does not end within this is refused, since its data file
#: could not be checked.
MAX_TEXT_HEADER_BYTES = 16 << 20
#: Data files a detached header may name (NRRD/MetaImage ``LIST`` or a numbered ``%d`` pattern): one a slice of a
#: 10,000-slice scan. Each is checked before ITK opens any, so this also bounds that work.
MAX_DATA_FILES = 10_000


def _text_header(path: Path) -> tuple[list[str], int] | None:
    """The text header lines of a NRRD (ended by a blank line, or, for a detached ``.nhdr``, by the end of the file:
    ITK writes no blank line there, and a ``LIST`` of data files runs to the end) or MHA/MHD (ended by the
    ``ElementDataFile`` line), and the byte offset where the voxel data start; ``None`` for an MHA/MHD without
    ``ElementDataFile`` (ITK reports it).

    Raises:
        InputImageError: a header that does not end within :data:`MAX_TEXT_HEADER_BYTES`.
    """
    lines: list[str] = []
    pos = 0
    with open(path, "rb") as fh:
        is_nrrd = fh.read(4) == b"NRRD"
        fh.seek(0)
        while pos < MAX_TEXT_HEADER_BYTES:
            raw = fh.readline(MAX_TEXT_HEADER_BYTES - pos)
            if not raw:  # the end of the file: a detached NRRD header ends here
                return (lines, pos) if is_nrrd else None
            pos += len(raw)
            line = raw.decode("latin-1").rstrip("\n").rstrip("\r")
            if is_nrrd and not line.strip():
                return lines, pos
            lines.append(line)
            if not is_nrrd and line.replace(" ", "").lower().startswith("elementdatafile="):
                return lines, pos
    raise InputImageError(f"the {'NRRD' if is_nrrd else 'MetaImage'} header does not end within "
                          f"{MAX_TEXT_HEADER_BYTES >> 20} MiB, so the data it names cannot be checked", path)


def _listed_lines(path: Path, start: int) -> list[str]:
    """The non-empty lines of ``path`` from byte ``start`` to its end (a MetaImage ``ElementDataFile = LIST``'s file
    names), read up to :data:`MAX_TEXT_HEADER_BYTES`."""
    with open(path, "rb") as fh:
        fh.seek(start)
        text = fh.read(MAX_TEXT_HEADER_BYTES + 1)
    if len(text) > MAX_TEXT_HEADER_BYTES:
        raise InputImageError(f"the header's LIST of data files is longer than {MAX_TEXT_HEADER_BYTES >> 20} MiB",
                              path)
    return [ln.strip() for ln in text.decode("latin-1").splitlines() if ln.strip()]


def _parse_text_header(path: Path) -> tuple[dict[str, str], list[tuple[str, list[str]]], int, bool] | None:
    """``(fields, detached, data_start, nrrd)`` of a NRRD or MHA/MHD header (:func:`_text_header`): its fields (keys
    lower case), each data file field that names other files (NRRD ``data file``, MetaImage ``ElementDataFile`` other
    than ``LOCAL``) as ``(value, the lines a LIST form names)``, where attached voxel data start, and whether it is
    NRRD; ``None`` when no header is found or the file cannot be opened (the reader reports it)."""
    try:
        found = _text_header(path)
    except OSError:
        return None
    if found is None:
        return None
    lines, data_start = found
    fields: dict[str, str] = {}
    detached: list[tuple[str, list[str]]] = []
    if lines and lines[0].startswith("NRRD"):
        for i, ln in enumerate(lines[1:], 1):
            if ln.startswith("#") or ":" not in ln:
                continue
            key, value = ln.split(":", 1)
            key = key.strip().lower()
            fields[key] = value.lstrip("=").strip()
            if key.replace(" ", "") == "datafile" and not value.startswith("="):   # every one: teem takes the field
                listed = lines[i + 1:]   # a LIST's names: the lines after it, and past a blank line too
                if fields[key].split()[:1] == ["LIST"] and data_start < path.stat().st_size:
                    listed = listed + _listed_lines(path, data_start)
                detached.append((fields[key], listed))
        return fields, detached, data_start, True
    for ln in lines:
        if "=" in ln:
            key, value = ln.split("=", 1)
            fields[key.strip().lower()] = value.strip()
    data_file = fields.get("elementdatafile", "")
    if data_file and data_file.upper() != "LOCAL":
        detached.append((data_file, _listed_lines(path, data_start) if data_file.split()[0] == "LIST" else []))
    return fields, detached, data_start, False


def check_data_files(path: Path) -> None:
    """Refuse a detached NRRD/MetaImage header whose data files lie outside its folder, are missing or are not
    regular files (:func:`_data_files`), before any reader opens them: ITK's NRRD reader opens the first data file
    while it reads the header alone (a FIFO hung it), pynrrd and slicerio when they read the voxels."""
    parsed = _parse_text_header(path)
    for spec, listed in parsed[1] if parsed is not None else []:
        _data_files(path, spec, listed)


def check_stream_complete(path: Path, declared: int) -> None:
    """Refuse an NRRD/MHA whose voxel data are shorter than its header declares, before ITK allocates the image; a
    detached header's data files are checked as :func:`check_data_files` checks them, and their size too.

    ITK allocates the declared size first and only then finds the data short, so a tiny file declaring gigabytes
    would take that memory. Raw data are checked against the file size; gzip/zlib data are decompressed in
    bounded chunks up to the declared size and no further (a longer stream is not read). Hand-written because
    neither ITK nor pynrrd offer a header-only size check that stops at the declared size.
    """
    parsed = _parse_text_header(path)
    if parsed is None:
        return
    fields, detached, data_start, nrrd = parsed
    if nrrd:
        encoding = fields.get("encoding", "raw").lower()
        compressed = encoding in ("gzip", "gz")
    else:
        encoding, compressed = "raw", fields.get("compresseddata", "false").lower() == "true"
    if detached:
        for spec, listed in detached:
            _check_detached(path, spec, declared, compressed or encoding != "raw", listed)
        return
    if nrrd:
        if fields.get("byte skip", "0") not in ("0", "") or fields.get("line skip", "0") not in ("0", ""):
            return  # skipped bytes: ITK checks those itself
        if not compressed and encoding != "raw":
            return  # text, hex, bzip2: ITK reads those
    elif fields.get("elementdatafile", "").upper() != "LOCAL":
        return  # no ElementDataFile: ITK reports it
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


def _data_file_names(header: Path, spec: str, listed: list[str]) -> list[str]:
    """The data file names a detached header's ``spec`` (NRRD ``data file``, MetaImage ``ElementDataFile``) gives, as
    teem and MetaIO read it: ``LIST [subdim]``: the ``listed`` lines after it; a numbered pattern ``FORMAT MIN MAX STEP
    [subdim]`` (``slice%03d.raw 1 40 1``): each name it makes; anything else: one name, the whole value.

    Raises:
        InputImageError: a pattern without exactly one ``%d`` number, a step of 0, no names, more than
            :data:`MAX_DATA_FILES`.
    """
    import re

    words = spec.split()
    if not words:
        raise InputImageError("the header's data file field is empty", header)
    if words[0] == "LIST":
        names = [ln.strip() for ln in listed if ln.strip()]
        what = "LIST of data files"
    elif "%" in spec and len(words) in (4, 5) and all(re.fullmatch(r"[-+]?\d+", w) for w in words[1:]):
        fmt, (lo, hi, step) = words[0], (int(w) for w in words[1:4])
        conversions = [c for c in re.findall(r"%%|%\d*d|%", fmt) if c != "%%"]   # teem's test: % digits d
        if len(conversions) != 1 or conversions[0] == "%":
            raise InputImageError(f"the header's data file pattern {fmt!r} must hold one %d number and no other %",
                                  header)
        if step == 0:
            raise InputImageError(f"the header's data file pattern {spec!r} has a step of 0", header)
        numbered = range(lo, hi + (1 if step > 0 else -1), step)
        if len(numbered) > MAX_DATA_FILES:
            raise InputImageError(f"the header's data file pattern {spec!r} names {len(numbered):,} files, more than "
                                  f"{MAX_DATA_FILES:,}", header)
        names = [fmt % i for i in numbered]
        what = f"data file pattern {spec!r}"
    else:
        return [spec]
    if not names:
        raise InputImageError(f"the header's {what} names no file", header)
    if len(names) > MAX_DATA_FILES:
        raise InputImageError(f"the header's {what} names {len(names):,} files, more than {MAX_DATA_FILES:,}", header)
    return names


def _data_files(header: Path, spec: str, listed: list[str]) -> list[Path]:
    """The data files a detached header's ``spec`` names (NRRD ``data file``, MetaImage ``ElementDataFile``: one name,
    a ``LIST`` or a numbered pattern, see :func:`_data_file_names`), resolved. Each must lie in the header's own
    folder or a folder below it, after ``..`` and symbolic links are followed (``data file: /etc/passwd`` was read as
    voxels), exist, and be a regular file (a device such as ``/dev/zero`` would feed the allocator without end, a
    FIFO hang the reader); in that order, so nothing is said of a file outside the folder."""
    folder = header.parent.resolve()
    files = []
    for name in _data_file_names(header, spec, listed):
        data = Path(name)
        if not data.is_absolute():
            data = header.parent / data   # teem and MetaIO read a relative name from the header's folder
        try:
            resolved = data.resolve()
        except (OSError, RuntimeError, ValueError) as exc:   # a symbolic link loop, a NUL byte in the name
            raise InputImageError(f"the header's data file {name!r} is not a usable path ({exc})", header) from None
        if not resolved.is_relative_to(folder):
            shown = "" if str(resolved) == name else f" (that is {resolved})"
            raise InputImageError(f"the header's data file {name!r}{shown} is outside the header's folder {folder}; "
                                  "a detached header's data must lie in its own folder or one below it", header)
        if not resolved.exists():
            raise InputImageError(f"the header's data file {name!r} does not exist", header)
        if not resolved.is_file():
            raise InputImageError(f"the header's data file {name!r} is not a regular file", header)
        files.append(resolved)
    return files


def _check_detached(header: Path, spec: str, declared: int, compressed: bool, listed: list[str]) -> None:
    """The data files of :func:`_data_files`; raw ones must hold the ``declared`` voxel bytes, all together."""
    files = _data_files(header, spec, listed)
    if not compressed:
        present = sum(f.stat().st_size for f in files)
        if present < declared:
            what = f"data file {spec!r}" if len(files) == 1 else f"data files ({len(files)} named by {spec!r})"
            raise InputImageError(f"truncated {what}: {present} of {declared} voxel bytes the header declares are "
                                  "present", header)


def check_direction(direction, path, dimension: int) -> None:
    """Refuse a direction matrix that is not orthonormal (a sheared or scaled NRRD ``space directions``):
    ITK would carry it on and every resampling and LPS view would be silently wrong."""
    d = np.asarray(direction, dtype=float).reshape(dimension, dimension)
    if not np.isfinite(d).all():
        raise InputImageError("direction matrix has NaN or infinite values", path)
    error = float(np.abs(d.T @ d - np.eye(dimension)).max())
    if error > 1e-3:
        raise InputImageError(f"direction matrix is not orthonormal (axes sheared or scaled, deviation "
                              f"{error:.3g}); the geometry is ambiguous: {np.round(d, 4).tolist()}", path)
