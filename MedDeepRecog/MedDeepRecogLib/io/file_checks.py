"""Checks of a scan file's header and data before ITK reads it: truncated or corrupt NIfTI, NRRD and MetaImage
data, declared sizes beyond the limits, detached data files, NaN voxel sizes and sheared directions.

ITK reads many damaged files without complaint (missing voxels become zeros, a NaN spacing becomes 1 mm) or
allocates the declared size before finding the data short; these checks refuse such files in one line first.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputImageError
from ..limits import check_declared_image


def itk_error_line(exc: BaseException) -> str:
    """ITK exceptions carry multi-line C++ context; the last non-empty line is the description."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.lower().startswith("description:"):
            return ln.split(":", 1)[1].strip()
    return lines[-1] if lines else type(exc).__name__


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


def check_stream_complete(path: Path, declared: int) -> None:
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
