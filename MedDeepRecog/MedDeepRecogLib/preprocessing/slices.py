"""The 2D slices every ``slices2d`` model reads, prepared one way for training and for inference.

MedNIST-style training slices are display-windowed 8-bit images, so a scan's slices are brought to the same look:
a fixed window for CT in HU, a per-slice percentile stretch for anything else, the CT table blanked where the package
asks (``remove_table``), then cropped to the body's box,
padded to a square in mm and resized to the model's size (:func:`standardise_slices`). Training
(``training.data``) and classify (``inference.model_input.slices_from_image``) both call it, so both see identical
inputs; a package can override any of :data:`SLICE_DEFAULTS` in ``input.slices``.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

#: Defaults of ``input.slices`` for ``slices2d`` packages (any key may be overridden in model.json).
SLICE_DEFAULTS: dict[str, Any] = {
    "max_slices": 48,          # evenly spaced axial slices classified per volume
    "work_size": 128,          # in-plane working grid (pixels) the slices are block-averaged to
    # CT (scan in HU): a fixed display window to 0..1. [-1000, 1000] HU puts air at 0 and water / soft tissue at
    # 0.5, the median foreground intensity of MedNIST's CT slices (0.498 over its 1,200 CT images, /255).
    "ct_window": [-1000.0, 1000.0],
    # Other scans (MR, 8-bit images): per-slice stretch, the low percentile to 0 and the high one to
    # ``percentile_target`` (MedNIST MR slices: median per-image 99.5th percentile 0.604 of full scale), clipped.
    "percentiles": [0.5, 99.5],
    "percentile_target": 0.6,
    "foreground_threshold": 0.1,  # on the 0..1 slice: what counts as body for the bounding box
    "min_foreground": 0.03,    # slices with less body than this fraction are skipped (not voted)
    "margin": 0.04,            # added around the body box, as a fraction of its side
    "crop_foreground": True,
    # blank the CT table under the patient before cropping (:func:`.table.table_mask`), so the model never reads it
    "remove_table": False,
    # an image smaller than this per side is refused rather than upsampled; None: half the model's input side
    # (enlarging more than 2x invents the detail the model was trained to read)
    "min_pixels": None,
}


def slice_options(input_spec: Mapping[str, Any]) -> dict[str, Any]:
    """A package's slice options: its ``input.slices`` (``input_spec``: the package's ``input``) over
    :data:`SLICE_DEFAULTS`."""
    return {**SLICE_DEFAULTS, **(input_spec.get("slices") or {})}


def min_slice_side(input_spec: Mapping[str, Any]) -> int:
    """The fewest pixels per side an image needs for a slice model: its ``input.slices.min_pixels``, else half the
    smaller side of the model's input size."""
    minimum = slice_options(input_spec)["min_pixels"]
    return int(minimum) if minimum else max(1, min(int(s) for s in input_spec.get("size") or [2]) // 2)


def work_grid_factors(shape_yx: Sequence[int], spacing_yx: Sequence[float], work_size: int) -> tuple[int, int]:
    """``(fy, fx)``: the in-plane blocks (pixels along rows, columns) that bring a slice of ``shape_yx`` pixels of
    ``spacing_yx`` mm towards ``work_size`` pixels (``input.slices.work_size``), square in mm where the spacing
    allows; ``(1, 1)`` for a slice under twice ``work_size`` per side. Classify's slices
    (:func:`..inference.model_input.slices_from_image`) and training's images (``training.data.standardise_images``)
    are both averaged over these blocks (:func:`block_mean`) before :func:`standardise_slices`, so a 512 x 512 picture
    reaches the network the same way from either."""
    sy, sx = float(spacing_yx[0]), float(spacing_yx[1])
    base = max(1, int(max(int(shape_yx[0]), int(shape_yx[1])) // int(work_size)))
    fy = max(1, int(round(base * min(sx, sy) / sy)))
    fx = max(1, int(round(base * min(sx, sy) / sx)))
    return fy, fx


def block_mean(slices: np.ndarray, fy: int, fx: int) -> np.ndarray:
    """``(N, H, W)`` → ``(N, H // fy, W // fx)`` float32 block means (area downsampling, no aliasing); the rows and
    columns beyond the last whole block are dropped."""
    import torch
    import torch.nn.functional as F

    n, h, w = slices.shape
    s = np.asarray(slices[:, : (h // fy) * fy, : (w // fx) * fx], dtype=np.float32)
    if fy == 1 and fx == 1:
        return s
    return F.avg_pool2d(torch.from_numpy(np.ascontiguousarray(s))[:, None], (fy, fx))[:, 0].numpy()


class StandardisedSlices(NamedTuple):
    """What :func:`standardise_slices` returns (a tuple, so ``[0]`` is the model input)."""

    x: np.ndarray  # (N, 1, H, W) float32 0..1, the model input
    valid: np.ndarray  # (N,) bool: enough body to classify
    theta: np.ndarray  # (N, 2, 3) affine from the model image to the slice (normalised, align_corners=False)
    scaled: np.ndarray  # (N, H_in, W_in) the 0..1 slices before cropping (table blanked where asked)
    extent_mm: np.ndarray  # (N, 2) the body box's height and width in mm
    table_pixels: np.ndarray  # (N,) int: pixels blanked as CT table (0 everywhere without ``remove_table``)
    #: (N,) float: model-input units per unit of the raw intensity (per HU for CT) of each slice, the slope of the
    #: intensity scaling within its unclipped range; the block averaging and resizing around it keep it (their
    #: weights sum to 1)
    gain: np.ndarray


def standardise_slices(slices: np.ndarray, spacing_yx: Sequence[float] = (1.0, 1.0), *,
                       size: Sequence[int] = (64, 64), options: Mapping[str, Any] | None = None,
                       hounsfield: bool = False) -> StandardisedSlices:
    """Standardise 2D slices the way every ``slices2d`` model sees them (training and inference alike).

    Args:
        slices: ``(N, H, W)`` raw intensities (HU, MR units, or 8-bit display values).
        spacing_yx: pixel size (mm) along rows and columns; the body box is made square in mm.
        size: model image ``(H, W)``.
        options: overrides of :data:`SLICE_DEFAULTS`.
        hounsfield: the slices are CT in HU: use the fixed ``ct_window`` instead of the per-slice stretch.

    Returns:
        :class:`StandardisedSlices` ``(x, valid, theta, scaled, extent_mm, table_pixels, gain)``.
    """
    import torch
    import torch.nn.functional as F

    opt = {**SLICE_DEFAULTS, **(options or {})}
    slices = np.asarray(slices, dtype=np.float32)
    n, h, w = slices.shape
    flat = slices.reshape(n, -1)
    lo, hi = np.percentile(flat, opt["percentiles"], axis=1).astype(np.float32)
    span = hi - lo
    if hounsfield and opt.get("ct_window"):
        w0, w1 = (float(v) for v in opt["ct_window"])
        scaled = np.clip((slices - w0) / (w1 - w0), 0.0, 1.0, dtype=np.float32)
        gain = np.full(n, 1.0 / (w1 - w0))
    else:
        gain = float(opt.get("percentile_target", 1.0)) / np.maximum(span, 1e-6)
        scaled = np.clip((slices - lo[:, None, None]) * gain[:, None, None], 0.0, 1.0, dtype=np.float32)
    table_pixels = np.zeros(n, dtype=np.int64)
    if opt.get("remove_table"):
        from .table import table_mask

        for i in range(n):
            table = table_mask(scaled[i], float(opt["foreground_threshold"]))
            scaled[i][table] = 0.0
            table_pixels[i] = int(table.sum())
    fg = scaled > float(opt["foreground_threshold"])
    frac = fg.reshape(n, -1).mean(axis=1)
    valid = (frac >= float(opt["min_foreground"])) & (span > 1e-6)

    sy, sx = float(spacing_yx[0]), float(spacing_yx[1])
    theta = np.zeros((n, 2, 3), dtype=np.float32)
    extent = np.zeros((n, 2), dtype=np.float32)
    for i in range(n):
        if opt["crop_foreground"] and valid[i]:
            rows = np.flatnonzero(fg[i].any(axis=1))
            cols = np.flatnonzero(fg[i].any(axis=0))
            y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        else:
            y0, y1, x0, x1 = 0, h, 0, w
        extent[i] = ((y1 - y0) * sy, (x1 - x0) * sx)
        side_mm = max(extent[i]) * (1.0 + 2 * float(opt["margin"]))
        ly, lx = side_mm / sy, side_mm / sx  # box side in pixels per axis (square in mm)
        cy, cx = (y0 + y1) / 2.0, (x0 + x1) / 2.0
        # affine_grid maps output u in [-1, 1] to input n = c + s u with pixel edges at n = 2 p / W - 1.
        theta[i, 0] = (lx / w, 0.0, 2.0 * cx / w - 1.0)
        theta[i, 1] = (0.0, ly / h, 2.0 * cy / h - 1.0)
    t = torch.from_numpy(theta)
    grid = F.affine_grid(t, [n, 1, int(size[0]), int(size[1])], align_corners=False)
    src = torch.from_numpy(scaled[:, None])
    # Antialias: when the box is much larger than the model image, pre-shrink with area pooling.
    shrink = int(max(1, np.floor(min(h, w) / (2 * max(size)))))
    if shrink > 1:
        src = F.avg_pool2d(src, shrink, ceil_mode=True)
    x = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return StandardisedSlices(x.numpy().astype(np.float32, copy=False), valid, theta, scaled, extent, table_pixels,
                              np.asarray(gain, dtype=np.float64))
