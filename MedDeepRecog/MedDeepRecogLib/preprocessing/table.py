"""The CT table under the patient, found on a standardised axial slice so that a model cannot read it.

In a chest CT slice the patient lies on the scanner's table: a bright curved line, often with a block under its
middle, separated from the patient's back by air. Table designs differ between scanners and sites, so a model trained
on one hospital's exports can learn the table instead of the patient (the lung model's heatmap peaked on it). The
slice standardisation (:func:`.slices.standardise_slices`, option ``remove_table``) blanks what this module finds, so
the model never sees it and the heatmap cannot land on it.

Why hand-written: SimpleITK, MONAI and scikit-image offer thresholds, morphology and connected components but no
table finder, and a thresholded body mask cannot be used here: narrow-window 8-bit exports show fat and lungs as
black, so the body falls apart into pieces and the largest piece is often the table itself. The rule below works on
those pieces instead, from the bottom of the slice up:

1. Foreground (above the body threshold) is closed along rows only, so a table line broken by dithering becomes one
   piece while the air gap between table and patient stays open.
2. The lowest piece under the middle fifth of the body's columns is a table layer if it is wide (at least
   ``min_span`` of the foreground's width), flat (width at least ``min_aspect`` times its thickness under the
   middle), no thicker than ``max_thickness`` of the foreground's height, and the rest of the image lies above it.
   Then it, and everything under its top edge in its columns, is table.
3. Repeat for the next piece up: further thin lines (double-railed tables) are removed, but only one thick layer (the
   block), so the patient's back is never taken for a second block.

When the patient lies directly on the table, so that no air separates them, nothing is removed (the slice keeps
its table). A slice without a table (a tight field of view) loses nothing either: its lowest piece is the spine,
which is too thick or too narrow. Measured on the IQ-OTH/NCCD exports by ``bench/heat_placement.py`` (the placement figures "on the table").
"""

from __future__ import annotations

import numpy as np

#: Thresholds of the table rule, as fractions of the foreground's extent (see the module docstring).
TABLE_RULE = {"thin": 0.05, "max_thickness": 0.17, "min_span": 0.45, "min_aspect": 4.5, "layers": 4}


def table_mask(slice_01: np.ndarray, threshold: float) -> np.ndarray:
    """``(H, W)`` bool: the pixels of the CT table on one axial slice.

    Args:
        slice_01: ``(H, W)`` the standardised slice, 0..1, anterior at row 0 (the LPS view every slice model reads).
        threshold: the body threshold on that scale (``input.slices.foreground_threshold``).
    """
    import SimpleITK as sitk

    h, w = slice_01.shape
    fg = slice_01 > threshold
    if not fg.any():
        return np.zeros((h, w), dtype=bool)
    reach = 4 * max(1, round(min(h, w) / 128))
    closed = sitk.BinaryMorphologicalClosing(sitk.GetImageFromArray(fg.astype(np.uint8)), [reach, 0])
    pieces = sitk.GetArrayFromImage(sitk.ConnectedComponent(closed))
    rows = np.arange(h)[:, None]
    table = np.zeros((h, w), dtype=bool)
    thick_taken = False
    for _ in range(int(TABLE_RULE["layers"])):
        live = (pieces > 0) & ~table
        cols, live_rows = np.flatnonzero(live.any(0)), np.flatnonzero(live.any(1))
        if cols.size == 0:
            break
        c0, c1 = int(cols[0]), int(cols[-1]) + 1
        height = float(live_rows[-1] - live_rows[0] + 1)
        middle = slice(c0 + int(0.4 * (c1 - c0)), c0 + int(0.6 * (c1 - c0)) + 1)
        under = np.where(live[:, middle], pieces[:, middle], 0)
        present = under.any(0)
        if not present.any():
            break
        bottom = h - 1 - np.argmax(under[::-1] > 0, axis=0)
        piece = pieces == np.bincount(under[bottom[present], np.flatnonzero(present)]).argmax()
        thickness = float(np.median(piece[:, middle].sum(0))) / height
        piece_cols = np.flatnonzero(piece.any(0))
        span = (piece_cols[-1] - piece_cols[0] + 1) / (c1 - c0)
        is_thick = thickness > TABLE_RULE["thin"]
        if (span < TABLE_RULE["min_span"] or thickness > TABLE_RULE["max_thickness"]
                or span < TABLE_RULE["min_aspect"] * thickness or (is_thick and thick_taken)):
            break
        top = np.argmax(piece, axis=0)
        in_cols = piece.any(0)[None, :]
        rest = live & ~piece
        if (rest & ((rows < top[None, :]) | ~in_cols)).sum() < 0.8 * rest.sum():
            break  # much of the image lies below it: not under the patient
        thick_taken |= is_thick
        table |= piece
        table[:, piece_cols] |= (rows >= top[None, piece_cols]) & live[:, piece_cols]
    return table & fg
