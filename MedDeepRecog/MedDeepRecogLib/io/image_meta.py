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
#: a multi-frame file whose frames the file places in space (their spacing not assumed): where the spacing came from
FRAME_GEOMETRY_KEY = "MedDeepRecog|frame_geometry"


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


def multi_frame_refusal(image: sitk.Image, target: str, action: str, *, volume_ok: bool = False) -> str | None:
    """Why a multi-frame file (:data:`FRAMES_KEY`) cannot go to ``target`` (``"the 2D model X"``, ``"pipeline
    'brain-mri'"``), else ``None``; ``action`` is what the user does with a frame (``"classify"``). With
    ``volume_ok``, a file that places its frames in space (:data:`FRAME_GEOMETRY_KEY`) is a volume and passes.

    A multi-frame object's frames may be time points of one plane (a cine loop, an ultrasound clip): a 2D model, or
    a 3D filter that smooths across frames at an assumed 1 mm, would mix moments in time as if they were slices.
    """
    if not image.HasMetaDataKey(FRAMES_KEY) or (volume_ok and image.HasMetaDataKey(FRAME_GEOMETRY_KEY)):
        return None
    return (f"a multi-frame file ({image.GetMetaData(FRAMES_KEY)} frames in one DICOM object) cannot go to {target}: "
            "its frames may be time points of a cine loop rather than slices of a volume"
            f"{'' if not volume_ok else ' (the file gives no frame spacing or frame positions)'}; export the frame "
            f"to {action} as its own file, or give a DICOM series folder")
