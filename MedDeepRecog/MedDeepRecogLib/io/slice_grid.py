"""Where the slices of a gapped DICOM series were acquired, and outputs written there.

A series read with ``--allow-slice-gaps`` whose slices are not evenly spaced comes back from ITK on an evenly
*stretched* grid: 16 slices 2 mm apart with a 10 mm gap read as 16 slices 2.533 mm apart, so slice ``k`` sits up
to several mm from where it was acquired. The model sees that image (the reader's note says distances along z are
not exact), but what is written for the user to lay over the scan must not move a slice's result away from its
slice.

Decision: an output on the scan's grid (a ``.seg.nrrd``, a heatmap, a preprocessed scan and its masks) is written
on a regular grid at the series' *true* slice step that covers the acquired positions (:func:`acquired_grid`):
slice ``k``'s result lands on the grid slice at its own position, and the grid slices no file was acquired at hold
nothing (no label, no heat, the fill value said in the note). This keeps every value at its source slice's
physical position, as the DICOM SEG written from the same series does (its frames reference the source slices),
and volumes counted on it use the true voxel size. Only when the acquired positions do not fall on such a grid
(gaps that are not whole steps, slices shifted in plane) is there no honest regular grid:
:func:`acquired_grid` then raises, naming the DICOM SEG output (``segment --out X.dcm``) that places each frame at
its slice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..errors import InputImageError
from .dicom_read import SLICE_POSITIONS_KEY


@dataclass(frozen=True)
class AcquiredGrid:
    """The regular grid at the series' true slice step (``reference``, no voxels of its own worth keeping), the
    grid slice of each of the image's slices (``index``), and the grid slices no file was acquired at
    (``missing``)."""

    reference: sitk.Image
    index: np.ndarray
    missing: tuple[int, ...]

    @property
    def step(self) -> float:
        return float(self.reference.GetSpacing()[2])

    def note(self, what: str, fill: str = "nothing") -> str:
        """One sentence for the output's notes: where ``what`` was written and what the absent slices hold."""
        runs = _runs(self.missing)
        return (f"{what} is written on the series' true {self.step:.4g} mm slice grid, each slice at its acquired "
                f"position; the {len(self.missing)} grid slice{'s' if len(self.missing) != 1 else ''} the series "
                f"lacks ({runs}) hold {fill}")

    def place(self, array: np.ndarray, fill: float = 0) -> np.ndarray:
        """``(Z, Y, X)`` ``array`` on the image's grid -> the same slices on :attr:`reference`'s grid, the absent
        slices filled with ``fill``."""
        out = np.full((int(self.reference.GetSize()[2]),) + tuple(array.shape[1:]), fill, dtype=array.dtype)
        out[self.index] = array
        return out

    def place_image(self, image: sitk.Image, fill: float = 0) -> sitk.Image:
        """:meth:`place` for a SimpleITK image on the scan's grid (its metadata kept)."""
        placed = sitk.GetImageFromArray(self.place(sitk.GetArrayFromImage(image), fill),
                                        isVector=image.GetNumberOfComponentsPerPixel() > 1)
        placed.CopyInformation(self.reference)
        for key in image.GetMetaDataKeys():
            placed.SetMetaData(key, image.GetMetaData(key))
        return placed


def _runs(indices) -> str:
    """``"grid slices 8-11"`` for (8, 9, 10, 11)."""
    parts, start = [], None
    items = list(indices)
    for i, k in enumerate(items):
        if start is None:
            start = k
        if i + 1 == len(items) or items[i + 1] != k + 1:
            parts.append(f"{start}" if start == k else f"{start}-{k}")
            start = None
    return "grid slice" + ("s " if len(items) != 1 else " ") + ", ".join(parts)


DICOM_SEG_INSTEAD = "write a DICOM SEG instead (segment --out NAME.dcm: each frame references its source slice)"


def acquired_grid(image: sitk.Image, source=None, output: str = "this output",
                  instead: str = DICOM_SEG_INSTEAD) -> AcquiredGrid | None:
    """The regular grid at the true slice step of a gapped DICOM series (see the module's docstring), or ``None``
    for any other image (its own grid places every slice where it was acquired).

    Raises:
        InputImageError: the acquired positions lie on no regular grid (a gap that is not a whole number of steps,
            slices shifted in plane): ``output`` cannot place them honestly; ``instead`` says what can (the DICOM
            SEG for a segmentation).
    """
    if image.GetDimension() != 3 or not image.HasMetaDataKey(SLICE_POSITIONS_KEY):
        return None
    positions = np.array(json.loads(image.GetMetaData(SLICE_POSITIONS_KEY)), dtype=float)
    if positions.ndim != 2 or positions.shape != (image.GetSize()[2], 3) or len(positions) < 2:
        return None
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    spacing = np.array(image.GetSpacing(), dtype=float)
    offsets = positions - positions[0]
    z = offsets @ direction[:, 2]
    step = float(np.median(np.diff(z)))
    index = np.rint(z / step).astype(int) if step > 0 else np.zeros(len(z), dtype=int)
    in_plane = offsets - np.outer(z, direction[:, 2])
    problem = None
    if step <= 0 or np.any(np.diff(index) <= 0):
        problem = "its slices do not step one way along the slice normal"
    elif np.any(np.abs(index * step - z) > max(0.1 * step, 1e-3)):
        worst = int(np.argmax(np.abs(index * step - z)))
        problem = (f"slice {worst} lies {abs(index[worst] * step - z[worst]):.3g} mm off the regular "
                   f"{step:.4g} mm grid (a gap that is not a whole number of slice steps)")
    elif np.any(np.linalg.norm(in_plane, axis=1) > 0.1 * min(spacing[:2])):
        problem = "its slices are shifted in plane from one another"
    if problem is not None:
        raise InputImageError(f"the DICOM series has slice gaps and {problem}, so {output} cannot place every "
                              f"slice at its acquired position on a regular grid; {instead}", source)
    size = int(index[-1]) + 1
    if size == len(index):
        return None   # evenly spaced after all: the image's own grid is the true one
    reference = sitk.Image([int(image.GetSize()[0]), int(image.GetSize()[1]), size], sitk.sitkUInt8)
    reference.SetOrigin(tuple(float(v) for v in positions[0]))
    reference.SetSpacing((float(spacing[0]), float(spacing[1]), step))
    reference.SetDirection(image.GetDirection())
    missing = tuple(sorted(set(range(size)) - {int(k) for k in index}))
    return AcquiredGrid(reference, index, missing)
