"""What the reader records on an image beside its voxels: metadata keys, notes, and the pixel sizes it accepts.

The keys are plain strings carried into the outputs' JSON; notes say what the reader changed or assumed (colour
made grey, 1 mm pixels assumed) and reach the user as warnings and in the outputs.
"""

from __future__ import annotations

import SimpleITK as sitk


#: Metadata keys the reader sets on the images it returns (plain strings, carried into the outputs' JSON).
NOTES_KEY = "MedDeepRecog|notes"      # what the reader changed, e.g. colour made grey; "; "-separated
FRAMES_KEY = "MedDeepRecog|frames"    # a single file holding several frames (multi-frame DICOM): their number
PICTURE_KEY = "MedDeepRecog|picture"  # "png" / "jpeg": a picture file, no physical spacing of its own


#: The pixel sizes (mm) a picture's --spacing or a DICOM file's PixelSpacing may give: from 1 micrometre to 1 metre.
SPACING_RANGE_MM = (1e-3, 1e3)


def add_note(image: sitk.Image, note: str) -> None:
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
