"""Read and write scans with their full geometry (origin, spacing, direction in LPS, pixel type).

SimpleITK images are the geometry carrier everywhere in the core: arrays taken out of them are
``(Z, Y, X)`` (numpy order of ITK's ``(x, y, z)`` index), and every array that goes back to disk is put
back on the grid it came from with :func:`image_from_array`, so outputs overlay the input exactly in Slicer.
The file checks before a read are in :mod:`.file_checks`, DICOM in :mod:`.dicom_read`, the reader's metadata and
notes in :mod:`.image_meta`, and what an image holds (label map, modality) in :mod:`.image_content`.
"""

from __future__ import annotations

import contextlib
import locale
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..contract import PICTURE_SUFFIXES, suffix_of, unwritable_reason
from ..errors import NOT_TEXT_PATH, InputImageError, is_text_path, printable_path
from ..limits import check_declared_image
from .atomic import atomic_output
from .dicom_read import (apply_dicom_pixel_size, apply_single_frame_spacing, check_dicom_pixels, dicom_frames,
                         dicom_without_pixels, looks_like_dicom, note_frames, read_dicom_folder)
from .file_checks import (check_data_files, check_direction, check_nifti_complete, check_stream_complete,
                          declared_bytes_per_voxel, itk_error_line)
from .image_meta import PICTURE_KEY, SPACING_RANGE_MM, add_note

log = logging.getLogger(__name__)
# ITK prints its own warnings (e.g. "Non uniform sampling") as multi-line text on stderr; the reader checks those
# conditions itself and reports them as one line or as a note in the output
sitk.ProcessObject.SetGlobalWarningDisplay(False)

#: Pictures larger than this per side, or with more pixels than this in all, are refused before their pixels are
#: decoded (a PNG of zeros compresses about 1000:1, so a small file can declare gigabytes): checked on the header in
#: :func:`_check_picture_decodes`, before Pillow or ITK decodes anything.
MAX_PICTURE_SIDE = 16384
MAX_PICTURE_PIXELS = 64 << 20


#: The largest intensity magnitude accepted: filters and networks compute in float32, and squared sums of larger
#: values overflow it (no scanner stores values near this: CT spans about -1024..3071 HU, MR 12-16 bits).
MAX_ABS_INTENSITY = 1e12


#: Formats with a text header that :mod:`.file_checks` reads before ITK: NRRD and MetaImage, which may name their
#: voxel data in other files.
_TEXT_HEADER_SUFFIXES = (".nrrd", ".seg.nrrd", ".mha", ".nhdr", ".mhd")


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
        keeps its range. A single DICOM file with several frames is marked with :data:`.image_meta.FRAMES_KEY`.

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
        image = read_dicom_folder(path)
    else:
        if path.stat().st_size == 0:
            raise InputImageError("file is empty (0 bytes)", path)
        if suffix_of(path) in (".nii", ".nii.gz"):
            check_nifti_complete(path)
        picture = suffix_of(path) in PICTURE_SUFFIXES
        if picture and _check_picture_decodes(path) in ("LA", "La"):
            return _grey_alpha_picture(path, spacing, pixel_type)
        if suffix_of(path) in _TEXT_HEADER_SUFFIXES:
            check_data_files(path)   # before ITK reads the header: its NRRD reader opens the data file there
        try:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            declared = declared_bytes_per_voxel(reader)
            check_declared_image(reader.GetSize(), declared, path, "header")
            if suffix_of(path) in _TEXT_HEADER_SUFFIXES:
                n = declared
                for d in reader.GetSize():
                    n *= int(d)
                check_stream_complete(path, n)
            if reader.GetDimension() in (2, 3):
                check_direction(reader.GetDirection(), path, reader.GetDimension())
            frames = dicom_frames(reader)
            check_dicom_pixels(reader, path, frames)
            image = reader.Execute()
        except RuntimeError as exc:
            if looks_like_dicom(path) and (reason := dicom_without_pixels(path)) is not None:
                raise InputImageError(reason, path) from None
            raise InputImageError(f"cannot be read as an image ({itk_error_line(exc)})", path) from None
        if picture:
            image = _as_picture(image, path, spacing)
        else:
            apply_dicom_pixel_size(image, reader, path)
            apply_single_frame_spacing(image, reader)
            if suffix_of(path) in (".nii", ".nii.gz"):
                note_nifti_transform(image, reader)
            if frames > 1:
                note_frames(image, path, frames)
            if spacing is not None:
                add_note(image, "--spacing ignored: the file stores its own pixel size "
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


def note_nifti_transform(image: sitk.Image, reader: sitk.ImageFileReader) -> None:
    """Note which of a NIfTI header's two transforms ``image``'s geometry came from where it matters: ITK picks one
    without a word when the qform and sform disagree (nibabel and others prefer the sform, so the same file can sit
    elsewhere in another program), and falls back to the bare voxel grid when the header has neither."""
    def meta(key: str) -> str:
        return reader.GetMetaData(key) if reader.HasMetaDataKey(key) else ""

    try:
        q, s = int(meta("qform_code") or 0), int(meta("sform_code") or 0)
    except ValueError:
        return
    if q == 0 and s == 0:
        add_note(image, "NIfTI header with neither a qform nor an sform: geometry read as the bare voxel grid "
                        "(origin 0, axes along x y z, the header's voxel size)")
        return
    if q == 0 or s == 0 or image.GetDimension() != 3:
        return  # one transform only: nothing else to be read
    try:
        srow = np.array([[float(v) for v in meta(f"srow_{a}").split()] for a in "xyz"])
    except ValueError:
        return
    if srow.shape != (3, 4):
        return
    ras = np.diag([-1.0, -1.0, 1.0])  # ITK's geometry is LPS, the NIfTI header's RAS
    affine = ras @ np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    origin = ras @ np.asarray(image.GetOrigin())
    if np.allclose(affine, srow[:, :3], atol=1e-3) and np.allclose(origin, srow[:, 3], atol=1e-2):
        return  # the sform was read (or the two agree)
    fmt = ", ".join
    add_note(image, f"NIfTI qform (code {q}) and sform (code {s}) disagree: the geometry read is the qform's "
                    f"(origin ({fmt(f'{v:.2f}' for v in image.GetOrigin())}) mm LPS); the sform, which some programs "
                    f"read instead, puts it at ({fmt(f'{v:.2f}' for v in ras @ srow[:, 3])}) mm LPS")


def _grey_alpha_picture(path: Path, spacing, pixel_type) -> sitk.Image:
    """A grey picture with transparency (Pillow mode ``LA``), which ITK's PNG reader cannot read (two components):
    its grey channel, read with Pillow, as :func:`_as_picture` makes any picture, transparency dropped and noted."""
    from PIL import Image

    with Image.open(path) as picture:
        grey = np.asarray(picture.getchannel("L"))
    image = _as_picture(sitk.GetImageFromArray(grey), path, spacing)
    add_note(image, "grey picture with transparency: the transparency (alpha) was dropped")
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
        add_note(image, "picture file without physical pixel size: 1 mm pixels assumed (set --spacing)")
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
    add_note(out, f"colour image ({'RGBA' if comps == 4 else 'RGB'}{depth}) converted to grey (BT.601 luma, "
                   "32-bit float)")
    return out


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


def as_volume(image: sitk.Image, path: str | Path | None = None, *, allow_2d: bool) -> sitk.Image:
    """A 3D single-channel view of ``image``; a 2D image becomes a one-slice volume when ``allow_2d``.

    Raises:
        InputImageError: 4D series, vector pixels, or a 2D image given to a model that needs a volume.
    """
    if image.GetDimension() == 2:
        if not allow_2d:
            raise InputImageError(f"the model needs a 3D volume, but this image is 2D with size "
                                  f"{list(image.GetSize())}", path)
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise InputImageError(f"a single-channel image is needed, but pixels have "
                                  f"{image.GetNumberOfComponentsPerPixel()} components (colour image?)", path)
        return sitk.JoinSeries([image])
    return require_3d(image, path)


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
        # a picture or one slice (a 2D image, or one joined into a one-slice volume) is named as the user knows it
        size = list(image.GetSize())
        flat = image.GetDimension() == 2 or (image.GetDimension() == 3 and size[2] == 1)
        what, unit = ("image", "pixel") if flat else ("volume", "voxel")
        if arr.size == 1:  # not "empty": there is one value, and nothing around it to read
            raise InputImageError(f"a {' x '.join(map(str, size[:2] if flat else size))} {what} (a single {unit}, "
                                  f"value {lo}): there is nothing to process in it", path)
        raise InputImageError(f"the {what} is empty: every {unit} equals {lo}", path)


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
    if (reason := unwritable_reason(path)) is not None:
        raise InputImageError(reason, path)
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
