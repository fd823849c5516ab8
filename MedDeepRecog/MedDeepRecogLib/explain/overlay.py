"""Overlay PNG: the three planes through the heatmap's peak, heatmap blended over the scan.

Planes are cut from LPS-ordered views of the volumes (no copies), so they show in radiological convention whatever
the scan's stored orientation: axial with anterior up and the patient's right on the left, coronal and sagittal with
superior up; pixel aspect follows the voxel spacing. Blending uses ``monai.visualize.blend_images`` with the heatmap
as per-pixel alpha (cold regions stay transparent).

``planes_through`` cuts the three planes (small arrays) so a caller can let go of a large scan before the
full-size heatmap is allocated; ``planes_png`` draws them; ``three_plane_png`` does both from two images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..io import atomic_save_figure

PLANE_NAMES = ("axial", "coronal", "sagittal")


@dataclass
class Planes:
    """Axial, coronal and sagittal planes ``(rows, cols)`` float32 through one voxel, and their pixel aspects."""

    planes: list[np.ndarray]
    aspects: list[float]  # row spacing / column spacing for each plane
    peak_view_zyx: tuple[int, int, int]


def planes_through(image: sitk.Image, peak_view_zyx: tuple[int, int, int]) -> Planes:
    """The three planes of ``image`` through ``peak_view_zyx`` (an index of its LPS view, ``(z, y, x)``)."""
    from ..inference.model_input import lps_view

    view = lps_view(image)
    z, y, x = (int(np.clip(v, 0, n - 1)) for v, n in zip(peak_view_zyx, view.array.shape))
    a = view.array
    planes = [np.array(a[z], dtype=np.float32),
              np.array(a[:, y, :][::-1], dtype=np.float32),   # coronal, superior up
              np.array(a[:, :, x][::-1], dtype=np.float32)]   # sagittal, superior up, anterior left
    sx, sy, sz = view.spacing
    return Planes(planes, [sy / sx, sz / sx, sz / sy], (z, y, x))


def peak_view_index(heatmap: sitk.Image) -> tuple[int, int, int]:
    """``(z, y, x)`` index of the heatmap's maximum in its LPS view."""
    from ..inference.model_input import lps_view

    hv = lps_view(heatmap).array
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(hv)), hv.shape))


def planes_png(scan: Planes, heat: Planes, path: str | Path, *, title: str = "", alpha: float = 0.6,
               cmap: str = "jet", floor: float = 0.15) -> Path:
    """Draw scan planes with heat planes blended over them and write a PNG atomically.

    ``floor``: heat below it is fully transparent; above it the opacity rises linearly to ``alpha``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from monai.visualize import blend_images

    lo, hi = np.percentile(np.concatenate([p.ravel() for p in scan.planes]), [1, 99.5])
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4), dpi=100)
    for ax, name, s, h, aspect in zip(axes, PLANE_NAMES, scan.planes, heat.planes, scan.aspects):
        s01 = np.clip((s - lo) / max(hi - lo, 1e-6), 0, 1)
        h01 = np.clip(h, 0, 1)
        opacity = alpha * np.clip((h01 - floor) / (1 - floor), 0, 1)
        rgb = blend_images(s01[None], h01[None], alpha=opacity[None], cmap=cmap, rescale_arrays=False,
                           transparent_background=True)
        ax.imshow(np.moveaxis(np.asarray(rgb), 0, -1).clip(0, 1), aspect=aspect, interpolation="antialiased")
        ax.set_title(name, fontsize=10)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.86, wspace=0.04)  # tight_layout costs ~0.3 s
    path = Path(path)
    return atomic_save_figure(fig, path)


def three_plane_png(image: sitk.Image, heatmap: sitk.Image, path: str | Path, *, title: str = "",
                    alpha: float = 0.6, cmap: str = "jet") -> Path:
    """PNG of the axial / coronal / sagittal planes through the maximum of ``heatmap`` (0..1, on ``image``'s grid)."""
    peak = peak_view_index(heatmap)
    return planes_png(planes_through(image, peak), planes_through(heatmap, peak), path, title=title,
                      alpha=alpha, cmap=cmap)
