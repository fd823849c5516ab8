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

1. Foreground (above the body threshold) is closed along rows only (:func:`row_closing`), so a table line broken by
   dithering becomes one piece while the air gap between table and patient stays open.
2. The lowest piece under the middle fifth of the foreground's columns is a table layer if it is wide (at least
   ``min_span`` of the foreground's width), its top edge under the middle is level (its rows vary by at most
   ``max_top_range`` of the foreground's height: a table's surface is smooth, the spine's is not), it is no thicker
   than ``max_thickness`` of that height under the middle, and at least 80 % of the rest lies above it. Above its
   highest row under the middle only its lowest run in each column counts (closing along rows can merge a curved
   table's rising sides with the patient's flanks beside them). The pieces wholly under its top edge and under its
   level in the middle (a block under a line) are table too; a piece reaching above is not.
3. One more layer up may be table: a second rail of a double-railed table, or the line above a block. It must be
   wider (``min_span_further`` of the first layer's foreground width), and thin if the first was thick; a third is
   never taken (on the exports, the layers found third were the patient's back).

When the patient lies directly on the table, so that no air separates them, nothing is removed (the slice keeps
its table). A slice without a table (a tight field of view) loses nothing either: its lowest piece is the spine,
whose top edge is not level (on the IQ-OTH/NCCD exports the table's top edge varied by at most 1.5 % of the
foreground's height under the middle, the spine's by 19-82 %). On those exports a table is found on 598 of 678
training and 123 of 139 validation images; the heatmap figures on it: ``bench/heat_placement.py``.
"""

from __future__ import annotations

import numpy as np

#: Thresholds of the table rule, as fractions of the foreground's extent (see the module docstring).
TABLE_RULE = {"thin": 0.05, "max_thickness": 0.17, "min_span": 0.35, "min_span_further": 0.6, "max_top_range": 0.05,
              "layers": 2}


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
    closed = sitk.GetImageFromArray(row_closing(fg, reach).astype(np.uint8))
    pieces = sitk.GetArrayFromImage(sitk.ConnectedComponent(closed))
    rows = np.arange(h)[:, None]
    table = np.zeros((h, w), dtype=bool)
    thick_taken = False
    # the foreground's extent, fixed from the first layer on: a further layer must be wide against the table too
    cols, fg_rows = np.flatnonzero((pieces > 0).any(0)), np.flatnonzero((pieces > 0).any(1))
    c0, c1 = int(cols[0]), int(cols[-1]) + 1
    height = float(fg_rows[-1] - fg_rows[0] + 1)
    middle = slice(c0 + int(0.4 * (c1 - c0)), c0 + int(0.6 * (c1 - c0)) + 1)
    for layer in range(int(TABLE_RULE["layers"])):
        live = (pieces > 0) & ~table
        under = np.where(live[:, middle], pieces[:, middle], 0)
        present = under.any(0)
        if not present.any():
            break
        bottom = h - 1 - np.argmax(under[::-1] > 0, axis=0)
        piece = (pieces == np.bincount(under[bottom[present], np.flatnonzero(present)]).argmax()) & live
        level_row = int(np.argmax(piece[:, middle].any(1)))  # the piece's highest row under the middle
        # Above that row a curved table's sides rise; closing along rows can merge them with the patient's flanks
        # beside them. There only the piece's lowest run of foreground in each column is table (on the foreground
        # itself, since the closing also fills the air between a side and a flank), the rest is patient.
        piece &= (rows >= level_row) | lowest_runs(piece & fg)
        thickness = float(np.median(piece[:, middle].sum(0))) / height
        piece_cols = np.flatnonzero(piece.any(0))
        span = (piece_cols[-1] - piece_cols[0] + 1) / (c1 - c0)
        is_thick = thickness > TABLE_RULE["thin"]
        top = np.argmax(piece, axis=0)
        top_middle = top[middle][piece[:, middle].any(0)]
        level = top_middle.size > 0 and (top_middle.max() - top_middle.min()) <= TABLE_RULE["max_top_range"] * height
        if (span < TABLE_RULE["min_span" if layer == 0 else "min_span_further"]
                or thickness > TABLE_RULE["max_thickness"] or not level or (is_thick and thick_taken)):
            break
        in_cols = piece.any(0)[None, :]
        rest = live & ~piece
        if (rest & ((rows < top[None, :]) | ~in_cols)).sum() < 0.8 * rest.sum():
            break  # much of the image lies below it: not under the patient
        thick_taken |= is_thick
        # the pieces wholly under its top edge and under its level in the middle (a block under a line) are table
        # too; a piece reaching above that is not (the patient's sides inside the U of a curved table)
        under = (rows >= np.maximum(top, top_middle.min())[None, :]) & in_cols
        labels = np.arange(int(pieces.max()) + 1)
        reaching_out = np.isin(labels, pieces[rest & ~under])
        wholly_under = np.isin(labels, pieces[rest & under]) & ~reaching_out
        table |= piece | (rest & wholly_under[pieces])
    return table & fg


def lowest_runs(mask: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool: in each column of ``mask``, its lowest run of True pixels."""
    from_bottom = mask[::-1]
    started = np.cumsum(from_bottom, axis=0) > 0
    ended = np.cumsum(started & ~from_bottom, axis=0) > 0
    return (from_bottom & ~ended)[::-1]


def row_closing(mask: np.ndarray, radius: int) -> np.ndarray:
    """``(H, W)`` bool: binary closing of ``mask`` along rows only, by a line of ``2 radius + 1`` pixels.

    Why not SimpleITK's ``BinaryMorphologicalClosing(mask, [radius, 0])``: it gives the same pixels (its default
    safe border included; checked on all 817 IQ-OTH/NCCD images and 300 random masks) at 3.3 ms a 224² slice, which
    was most of the table finder's time on a volume; these running sums take 0.5 ms.
    """
    h, w = mask.shape
    width = w + 4 * radius  # room for the dilation to spread past the edges, as the safe border allows
    padded = np.zeros((h, width), dtype=np.int32)
    padded[:, 2 * radius:2 * radius + w] = mask
    j = np.arange(width)
    lo, hi = np.clip(j - radius, 0, width), np.clip(j + radius + 1, 0, width)

    def window_sum(a: np.ndarray) -> np.ndarray:
        sums = np.zeros((h, width + 1), dtype=np.int32)
        np.cumsum(a, axis=1, out=sums[:, 1:])
        return sums[:, hi] - sums[:, lo]

    dilated = window_sum(padded) > 0
    closed = window_sum(~dilated) == 0
    return closed[:, 2 * radius:2 * radius + w]
