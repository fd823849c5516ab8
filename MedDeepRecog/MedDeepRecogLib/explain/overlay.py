"""Overlay PNG: the three planes through the heatmap's peak, heatmap blended over the scan.

Planes are cut from LPS-ordered views of the volumes (no copies), so they show in radiological convention whatever
the scan's stored orientation: axial with anterior up and the patient's right on the left, coronal and sagittal with
superior up; pixel aspect follows the voxel spacing. Every panel carries its orientation letters and its slice
position in mm as Slicer shows it (RAS offsets: axial S, coronal A, sagittal R). The heatmap uses the Slicer panel's
colour map (Inferno) with a colour bar giving its value range; blending uses ``monai.visualize.blend_images`` with
the heatmap as per-pixel alpha (cold regions stay transparent). A one-slice input (a 2D picture) gets one panel.

``planes_through`` cuts the three planes (small arrays); ``ScanSlabs`` keeps thin slabs of a large scan around
the expected peak so a caller can let go of the scan before the full-size heatmap is allocated and still cut the
planes through the written heatmap's peak; ``planes_png`` draws them; ``three_plane_png`` does both from two
images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..io import atomic_save_figure
from ..io.geometry import lps_view

PLANE_NAMES = ("axial", "coronal", "sagittal")
#: The Slicer panel's heatmap colour map (MedDeepRecogSlicerLib shows the heatmap in Inferno).
HEATMAP_CMAP = "inferno"
#: Orientation letters (top, bottom, left, right) of each panel, radiological convention.
ORIENTATION = {"axial": ("A", "P", "R", "L"), "coronal": ("S", "I", "R", "L"), "sagittal": ("S", "I", "A", "P")}
#: Each panel's slice position as Slicer's slice offset (RAS, mm): axis letter and LPS coordinate sign.
_OFFSET_AXIS = {"axial": ("S", 2, 1.0), "coronal": ("A", 1, -1.0), "sagittal": ("R", 0, -1.0)}


@dataclass
class Planes:
    """Axial, coronal and sagittal planes ``(rows, cols)`` float32 through one voxel, and their pixel aspects.

    ``offsets_mm``: each plane's position as Slicer's slice offset (RAS mm: axial S, coronal A, sagittal R);
    ``n_axial``: axial slices in the image (1 for a 2D picture: only the axial plane means anything).
    """

    planes: list[np.ndarray]
    aspects: list[float]  # row spacing / column spacing for each plane
    peak_view_zyx: tuple[int, int, int]
    offsets_mm: list[float] = field(default_factory=lambda: [float("nan")] * 3)
    n_axial: int = 0
    #: False for a picture (PNG/JPEG), which stores no orientation: no patient letters or slice position are drawn
    oriented: bool = True


def _planes(axial: np.ndarray, coronal: np.ndarray, sagittal: np.ndarray, zyx: tuple[int, int, int], view,
            n_axial: int) -> Planes:
    """:class:`Planes` from the axial ``(Y, X)``, coronal ``(Z, X)`` and sagittal ``(Z, Y)`` cuts of an LPS view
    (``view``: its spacing, origin and direction) through the view index ``zyx``."""
    z, y, x = zyx
    planes = [np.array(axial, dtype=np.float32),
              np.array(coronal[::-1], dtype=np.float32),    # coronal, superior up
              np.array(sagittal[::-1], dtype=np.float32)]   # sagittal, superior up, anterior left
    sx, sy, sz = view.spacing
    point = view.origin + view.direction @ (np.array([x, y, z], dtype=float) * view.spacing)  # LPS mm
    offsets = [float(sign * point[axis]) for _, axis, sign in (_OFFSET_AXIS[n] for n in PLANE_NAMES)]
    return Planes(planes, [sy / sx, sz / sx, sz / sy], (z, y, x), offsets, int(n_axial))


def planes_through(image: sitk.Image, peak_view_zyx: tuple[int, int, int]) -> Planes:
    """The three planes of ``image`` through ``peak_view_zyx`` (an index of its LPS view, ``(z, y, x)``)."""
    view = lps_view(image)
    a = view.array
    z, y, x = (int(np.clip(v, 0, n - 1)) for v, n in zip(peak_view_zyx, a.shape))
    return _planes(a[z], a[:, y, :], a[:, :, x], (z, y, x), view, a.shape[0])


@dataclass
class ScanSlabs:
    """Thin slabs of a scan's LPS view around where the heatmap is expected to peak: enough to cut the overlay's
    planes through the written heatmap's peak after the scan itself is let go of (a 512x512x300 scan's slabs of 5
    voxels hold under 3 % of it). ``starts``: the view index ``(z, y, x)`` where each slab begins."""

    axial: np.ndarray      # (nz, Y, X)
    coronal: np.ndarray    # (Z, ny, X)
    sagittal: np.ndarray   # (Z, Y, nx)
    starts: tuple[int, int, int]
    view: object           # the LPS view's spacing, origin and direction (its array dropped)
    shape: tuple[int, int, int]

    @classmethod
    def cut(cls, image: sitk.Image, centre_zyx: tuple[int, int, int], radius: int = 2) -> "ScanSlabs":
        """Copies of the view's slabs ``centre ± radius`` along each axis (clipped to the scan)."""
        from dataclasses import replace

        view = lps_view(image)
        a = view.array
        lo = [int(np.clip(c - radius, 0, n - 1)) for c, n in zip(centre_zyx, a.shape)]
        hi = [int(np.clip(c + radius + 1, 1, n)) for c, n in zip(centre_zyx, a.shape)]
        return cls(np.array(a[lo[0]:hi[0]]), np.array(a[:, lo[1]:hi[1], :]), np.array(a[:, :, lo[2]:hi[2]]),
                   (lo[0], lo[1], lo[2]), replace(view, array=None), tuple(int(n) for n in a.shape))

    def planes(self, peak_view_zyx: tuple[int, int, int]) -> Planes | None:
        """The planes through ``peak_view_zyx``, or ``None`` when it lies outside the slabs."""
        z, y, x = (int(np.clip(v, 0, n - 1)) for v, n in zip(peak_view_zyx, self.shape))
        (z0, y0, x0), sizes = self.starts, (self.axial.shape[0], self.coronal.shape[1], self.sagittal.shape[2])
        if not all(0 <= v - v0 < n for v, v0, n in zip((z, y, x), (z0, y0, x0), sizes)):
            return None
        return _planes(self.axial[z - z0], self.coronal[:, y - y0, :], self.sagittal[:, :, x - x0], (z, y, x),
                       self.view, self.shape[0])


def peak_view_index(heatmap: sitk.Image, *, none_if_empty: bool = False) -> tuple[int, int, int] | None:
    """``(z, y, x)`` index, in the heatmap's LPS view, of its maximum as stored: the overlay's planes go through it.

    The one peak of the overlay (``classify`` calls it on the heatmap it writes, after resampling onto the scan's
    grid, so the PNG's planes cross the NRRD's hottest voxel). Ties: the first maximum in C order of the stored
    ``(z, y, x)`` array (``sitk.GetArrayFromImage``, the NRRD's voxel order), i.e.
    ``np.unravel_index(np.argmax(array), array.shape)``, whatever the scan's orientation. ``none_if_empty``: ``None``
    for a map with no heat above 0 (no peak to go through), found in the same pass.
    """
    arr = sitk.GetArrayViewFromImage(heatmap)
    # np.argmax copies a read-only array (SimpleITK's view) whole: find the first slice holding the maximum (a
    # reduction, no copy), then the first maximum in it; the same voxel as np.argmax over the whole array.
    maxima = arr.max(axis=(1, 2))
    k = int(np.argmax(maxima))
    if none_if_empty and not float(maxima[k]) > 0.0:
        return None
    j, i = np.unravel_index(int(np.argmax(arr[k])), arr.shape[1:])
    point = np.array(heatmap.TransformIndexToPhysicalPoint((int(i), int(j), int(k))), dtype=float)
    view = lps_view(heatmap)  # the same voxels permuted/flipped: the point sits on an integer index of the view
    x, y, z = np.rint(np.linalg.solve(view.direction * view.spacing[None, :], point - view.origin)).astype(int)
    return int(z), int(y), int(x)


def _letters(ax, name: str) -> None:
    top, bottom, left, right = ORIENTATION[name]
    style = dict(color="white", fontsize=9, fontweight="bold", transform=ax.transAxes,
                 bbox=dict(boxstyle="round,pad=0.1", facecolor="black", alpha=0.5, linewidth=0))
    ax.text(0.5, 0.98, top, ha="center", va="top", **style)
    ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)
    ax.text(0.02, 0.5, left, ha="left", va="center", **style)
    ax.text(0.98, 0.5, right, ha="right", va="center", **style)


def planes_png(scan: Planes, heat: Planes, path: str | Path, *, title: str = "", alpha: float = 0.6,
               cmap: str = HEATMAP_CMAP, floor: float = 0.15, warning: str | None = None,
               colorbar_label: str = "heatmap") -> Path:
    """Draw scan planes with heat planes blended over them, a colour bar and orientation letters; write a PNG
    atomically.

    ``floor``: heat below it is fully transparent; above it the opacity rises linearly to ``alpha``.
    ``warning``: a red line under the title (e.g. :func:`..explain.faithfulness.unfaithful_warning`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from monai.visualize import blend_images

    shown = [0] if scan.n_axial == 1 else [0, 1, 2]  # a 2D picture: one panel, not 1-pixel strips
    lo, hi = np.percentile(np.concatenate([scan.planes[i].ravel() for i in shown]), [1, 99.5])
    import textwrap

    width = 6.4 if len(shown) == 1 else 12.6
    chars = int(width * 15)
    title = "\n".join(textwrap.fill(line, chars) for line in title.splitlines())
    warning = textwrap.fill(f"WARNING: {warning}", chars) if warning else None
    fig, axes = plt.subplots(1, len(shown), figsize=(width, 4.9), dpi=100, squeeze=False)
    for ax, i in zip(axes[0], shown):
        name, s, h, aspect = PLANE_NAMES[i], scan.planes[i], heat.planes[i], scan.aspects[i]
        s01 = np.clip((s - lo) / max(hi - lo, 1e-6), 0, 1)
        h01 = np.clip(h, 0, 1)
        opacity = alpha * np.clip((h01 - floor) / (1 - floor), 0, 1)
        rgb = blend_images(s01[None], h01[None], alpha=opacity[None], cmap=cmap, rescale_arrays=False,
                           transparent_background=True)
        ax.imshow(np.moveaxis(np.asarray(rgb), 0, -1).clip(0, 1), aspect=aspect, interpolation="antialiased")
        if scan.oriented:
            letter = _OFFSET_AXIS[name][0]
            offset = scan.offsets_mm[i]
            where = f"{letter} {offset:+.1f} mm" if np.isfinite(offset) else ""
            ax.set_title(f"{name}  {where}".strip(), fontsize=10)
            _letters(ax, name)
        else:  # a picture: as stored, top row up; the letters burned into it (if any) are its own
            ax.set_title("picture as stored (no patient orientation in the file)", fontsize=10)
        ax.axis("off")
    top = 0.92 - 0.035 * (title.count("\n") + 1)
    bottom = 0.02 + (0.035 * (warning.count("\n") + 1) if warning else 0)
    right = 0.84 if len(shown) == 1 else 0.91
    fig.subplots_adjust(left=0.01, right=right, bottom=bottom, top=top, wspace=0.04)
    cax = fig.add_axes([right + 0.02, bottom + 0.1, 0.014 if len(shown) > 1 else 0.03, top - bottom - 0.2], label="colorbar")
    bar = fig.colorbar(ScalarMappable(norm=Normalize(0.0, 1.0), cmap=cmap), cax=cax, ticks=[0, floor, 0.5, 1.0])
    # 1 is the peak of the model's own map; clearing the air and resampling onto the scan can leave less than 1
    bar.ax.set_yticklabels(["0", f"{floor:g}", "0.5", "1"], fontsize=7)
    bar.set_label(f"{colorbar_label}, 1 = the model map's peak; clear below {floor:g}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    if warning:
        fig.text(0.5, 0.01, warning, ha="center", va="bottom", color="red", fontsize=8,
                 fontweight="bold")
    path = Path(path)
    return atomic_save_figure(fig, path)


def three_plane_png(image: sitk.Image, heatmap: sitk.Image, path: str | Path, *, title: str = "",
                    alpha: float = 0.6, cmap: str = HEATMAP_CMAP, warning: str | None = None) -> Path:
    """PNG of the axial / coronal / sagittal planes through the maximum of ``heatmap`` (0..1, on ``image``'s grid)."""
    peak = peak_view_index(heatmap)
    return planes_png(planes_through(image, peak), planes_through(heatmap, peak), path, title=title,
                      alpha=alpha, cmap=cmap, warning=warning)
