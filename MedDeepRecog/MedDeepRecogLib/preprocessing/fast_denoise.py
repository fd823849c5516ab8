"""Fast 3D bilateral and non-local-means filters: a fused numba kernel on CPU, torch ops on CUDA.

Hand-written on purpose: SimpleITK's ``Bilateral`` and ``PatchBasedDenoising`` and scikit-image's 3D
``denoise_nl_means`` visit every neighbourhood voxel by voxel (≈0.03–0.3 Mvox/s on 2 cores). Here each filter is
vectorised over *offsets* instead: for one offset ``o`` the whole volume is compared with itself shifted by ``o``,
so a (2r+1)^3 window costs (2r+1)^3 passes of a few vector ops each.

Two more savings:

* symmetry — the weight of the pair (x, x+o) equals that of (x+o, x), so only half of the offsets are visited and
  each weight is added to both ends of the pair;
* for NLM the patch distance for one offset is a box filter of squared differences (Darbon et al. 2008, the
  classical "fast NLM"), computed with separable running sums, not per patch.

Both filters are one weighted average with the weight ``exp(max(S - shift, 0) * scale + bias(o))``, ``S`` the sum
of squared differences over the patches (one voxel for the bilateral filter): :func:`_pair_filter` runs it with the
fused per-offset CPU kernel of :mod:`.fused_denoise` (numba), or with whole-array torch ops on CUDA
(:func:`_symmetric_filter`, processed in blocks so temporaries stay bounded); the torch ops also serve CPU when
numba is missing. Shapes: volumes are ``(Z, Y, X)`` float tensors/arrays; radii are ``(rz, ry, rx)`` voxels.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .search_offsets import half_offsets

#: Voxels per block of the torch path (per temporary array): 64K float32 = 256 KB keeps the working set in the L2
#: cache on CPU; on CUDA large blocks keep the GPU busy.
BLOCK_VOXELS_CPU = 1 << 16
BLOCK_VOXELS_CUDA = 1 << 26
#: Below this many voxels the CPU filters run single-threaded: threads cost more than they save there.
SMALL_VOLUME_VOXELS = 1 << 18
#: :func:`estimate_noise_sigma` samples whole slices of volumes above twice this many voxels.
SAMPLE_VOXELS = 1 << 22


def estimate_noise_sigma(volume: np.ndarray | torch.Tensor) -> float:
    """Robust Gaussian noise standard deviation of a ``(Z, Y, X)`` volume.

    Uses the second difference along X (``x[i] - (x[i-1] + x[i+1]) / 2``, variance 1.5 σ² for white noise) and
    the median absolute deviation, so edges and smooth anatomy barely bias it; voxels in runs of one exact value
    (padding, clipped air) are left out. Large volumes are sampled by whole
    slices (at least 4 M voxels), so a CT costs a few slices, not a pass over the volume.
    """
    v = volume
    if v.ndim == 3 and math.prod(v.shape) > 2 * SAMPLE_VOXELS:
        v = v[:: max(1, math.prod(v.shape) // SAMPLE_VOXELS)]
    v = v.float() if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
    if v.shape[-1] < 3:
        return float(v.std())
    mid = v[..., 1:-1]
    r = mid - 0.5 * (v[..., :-2] + v[..., 2:])
    # Runs of one exact value carry no noise: the padding outside a CT's field of view (a fifth of the
    # TotalSegmentator DICOM CT, at -1024), air clipped at the scanner's minimum, a mask's background. Counted in,
    # their zero residuals halved the estimate there (3.6 HU against 6.7 HU measured inside the liver).
    varying = (mid != v[..., :-2]) | (mid != v[..., 2:])
    if int(varying.sum()) >= 1000:
        r = r[varying]
    r = r.flatten()
    if r.numel() > 2_000_000:  # a strided sample is enough for a median
        r = r[:: r.numel() // 2_000_000 + 1]
    mad = (r - r.median()).abs().median()
    return float(mad) * 1.4826 / math.sqrt(1.5)


def _pad(x: torch.Tensor, pad: Sequence[int]) -> torch.Tensor:
    """Mirror-pad ``(Z, Y, X)`` by ``pad`` = (pz, py, px) (``numpy.pad(mode="reflect")``, any width)."""
    pz, py, px = pad
    if all(p < n for p, n in zip(pad, x.shape)):
        return F.pad(x[None, None], (px, px, py, py, pz, pz), mode="reflect")[0, 0]
    # torch cannot mirror by more than the axis length; numpy mirrors repeatedly
    padded = np.pad(x.cpu().numpy(), [(pz, pz), (py, py), (px, px)], mode="reflect")
    return torch.from_numpy(padded).to(x.device)


def _box_sum(v: torch.Tensor, size: int) -> torch.Tensor:
    """Sum over a ``size``^3 box, valid part only (each axis shrinks by size-1); separable shifted adds."""
    if size <= 1:
        return v
    for axis in (0, 1, 2):
        n = v.shape[axis] - (size - 1)
        out = torch.add(v.narrow(axis, 0, n), v.narrow(axis, 1, n))
        for i in range(2, size):
            out.add_(v.narrow(axis, i, n))
        v = out
    return v


def _symmetric_filter(x: torch.Tensor, search: Sequence[int], patch: int, shift: float, scale: float,
                      bias: Callable[[tuple[int, int, int]], float],
                      progress: Callable[[float], None] | None = None) -> torch.Tensor:
    """The pair-weighted average of :func:`_pair_filter` with whole-array torch ops (the CUDA path).

    For each block of voxels and offset ``o``: squared differences ``(x[y+o] - x[y])^2`` with a margin for the
    ``patch``^3 patches (``(patch - 1) // 2`` before, the rest after each voxel), their box sum ``S``, the weight
    ``exp(max(S - shift, 0) * scale + bias(o))``, credited to both ends of the pair; ``w(y, y) = 1``.
    """
    sz, sy, sx = (int(s) for s in search)
    Z, Y, X = x.shape
    k = max(int(patch), 1)
    p = (k - 1) // 2  # patch margin before the voxel
    q = k - 1 - p  # and after it
    # E: voxels whose pairs are evaluated (the volume plus a margin of `search`); A: where credits can land.
    m = (2 * sz + q, 2 * sy + q, 2 * sx + q)
    xp = _pad(x, m)
    ez, ey, ex = Z + 2 * sz, Y + 2 * sy, X + 2 * sx
    num = torch.zeros(Z + 4 * sz, Y + 4 * sy, X + 4 * sx, dtype=x.dtype, device=x.device)
    den = torch.zeros_like(num)
    offsets = half_offsets((sz, sy, sx))
    # blocks of (bz_n, by_n) rows x the full X width, so that temporaries and local accumulators stay in cache
    block_voxels = BLOCK_VOXELS_CUDA if x.is_cuda else BLOCK_VOXELS_CPU
    rows = max(1, block_voxels // (ex + k))
    nz_block = max(1, min(ez, int(math.sqrt(rows / 4.0))))
    ny_block = max(1, min(ey, rows // nz_block))
    starts = [(e0, f0) for e0 in range(0, ez, nz_block) for f0 in range(0, ey, ny_block)]
    # E index e corresponds to padded index e + (m - search) = e + search + q.
    bz, by, bx = sz + q, sy + q, sx + q
    for i_block, (e0, f0) in enumerate(starts):
        e1, f1 = min(ez, e0 + nz_block), min(ey, f0 + ny_block)
        n, ny = e1 - e0, f1 - f0
        c_patch = xp[bz + e0 - p: bz + e1 + q, by + f0 - p: by + f1 + q, bx - p: bx + ex + q]
        c_val = c_patch[p: p + n, p: p + ny, p: p + ex]
        # local accumulators: the block plus room for credits at x + o (o_z >= 0, |o_y|, |o_x| <= search)
        loc_num = torch.zeros(n + sz, ny + 2 * sy, ex + 2 * sx, dtype=x.dtype, device=x.device)
        loc_den = torch.zeros_like(loc_num)
        centre = (slice(0, n), slice(sy, sy + ny), slice(sx, sx + ex))
        loc_num[centre].add_(c_val)
        loc_den[centre].add_(1.0)
        diff = torch.empty_like(c_patch)
        for dz, dy, dx in offsets:
            s_patch = xp[bz + e0 - p + dz: bz + e1 + q + dz, by + f0 - p + dy: by + f1 + q + dy,
                         bx - p + dx: bx + ex + q + dx]
            torch.sub(s_patch, c_patch, out=diff)
            diff.mul_(diff)
            w = _box_sum(diff, k)
            if k == 1:
                w = w.clone()
            w.sub_(shift).clamp_(min=0.0).mul_(scale).add_(bias((dz, dy, dx))).exp_()
            loc_num[centre].addcmul_(w, s_patch[p: p + n, p: p + ny, p: p + ex])
            loc_den[centre].add_(w)
            # the same weight credits the other end of the pair, x + o
            other = (slice(dz, dz + n), slice(sy + dy, sy + dy + ny), slice(sx + dx, sx + dx + ex))
            loc_num[other].addcmul_(w, c_val)
            loc_den[other].add_(w)
        # A index = E index + search; local (a, b, c) -> A (e0 + sz + a, f0 + b, c)
        target = (slice(e0 + sz, e0 + sz + n + sz), slice(f0, f0 + ny + 2 * sy), slice(0, ex + 2 * sx))
        num[target].add_(loc_num)
        den[target].add_(loc_den)
        if progress is not None:
            progress((i_block + 1) / len(starts))
    core = (slice(2 * sz, 2 * sz + Z), slice(2 * sy, 2 * sy + Y), slice(2 * sx, 2 * sx + X))
    return num[core] / den[core]


def _fused_kernel_available() -> bool:
    """Whether the numba kernel of :mod:`.fused_denoise` imports (numba is a dependency; a broken install falls
    back to the torch ops)."""
    try:
        from . import fused_denoise  # noqa: F401
    except ImportError:
        return False
    return True


def _pair_filter(volume: np.ndarray | torch.Tensor, search: Sequence[int], patch: int, shift: float, scale: float,
                 bias: Callable[[tuple[int, int, int]], float], device: str | torch.device | None,
                 progress: Callable[[float], None] | None, threads: int | None) -> np.ndarray | torch.Tensor:
    """Weighted average over ``|o_i| <= search_i`` with ``w = exp(max(S - shift, 0) * scale + bias(o))``.

    CPU (arrays, CPU tensors, ``device="cpu"``): the fused numba kernel with ``threads`` threads (default torch's
    thread count; one for volumes under :data:`SMALL_VOLUME_VOXELS`). CUDA: torch ops. Returns float32, numpy or
    torch like the input (a tensor comes back on the device it was computed on).
    """
    was_numpy = not isinstance(volume, torch.Tensor)
    shape = tuple(np.shape(volume))
    if len(shape) != 3:
        raise ValueError(f"expected a (Z, Y, X) volume, got shape {shape}")
    target = torch.device(device) if device is not None else (torch.device("cpu") if was_numpy else volume.device)
    if target.type == "cpu" and _fused_kernel_available():
        from .fused_denoise import pair_average

        if threads is None:
            threads = 1 if math.prod(shape) < SMALL_VOLUME_VOXELS else torch.get_num_threads()
        array = np.asarray(volume) if was_numpy else volume.detach().cpu().numpy()
        out = pair_average(array, search, patch, shift, scale, bias, threads=threads, progress=progress)
        return out if was_numpy else torch.from_numpy(out)
    x = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32)) if was_numpy else volume.float()
    x = x.to(target)
    previous = torch.get_num_threads()
    if target.type == "cpu":
        torch.set_num_threads(threads or (1 if x.numel() < SMALL_VOLUME_VOXELS else previous))
    try:
        out = _symmetric_filter(x, search, patch, shift, scale, bias, progress)
    finally:
        torch.set_num_threads(previous)
    return out.cpu().numpy() if was_numpy else out


def window_radius(sigma: Sequence[float], truncate: float) -> list[int]:
    """The bilateral window radius in voxels per axis: ``ceil(truncate * sigma)``, ``sigma`` in voxels."""
    return [max(0, int(math.ceil(truncate * s))) for s in sigma]


def bilateral_filter(volume: np.ndarray | torch.Tensor, sigma_spatial: float | Sequence[float] = 1.0,
                     sigma_range: float | None = None, *, radius: Sequence[int] | None = None,
                     truncate: float = 2.0, device: str | torch.device | None = None,
                     progress: Callable[[float], None] | None = None,
                     threads: int | None = None) -> np.ndarray | torch.Tensor:
    """True 3D bilateral filter: spatial Gaussian × range Gaussian over a (2r+1)^3 window.

    Args:
        volume: ``(Z, Y, X)`` array or tensor.
        sigma_spatial: spatial sigma in *voxels*, one number or ``(sz, sy, sx)`` (convert mm with the spacing).
        sigma_range: range sigma in intensity units (HU for CT); default 2× the estimated noise sigma.
        radius: window radius ``(rz, ry, rx)`` in voxels; default ``ceil(truncate * sigma)`` per axis.
        device: torch device to compute on (default: the tensor's, CPU for arrays).
        threads: CPU threads (default torch's thread count, one for small volumes).

    Returns:
        The filtered volume, float32, same type (numpy or torch) and shape as ``volume``.
    """
    sig = np.broadcast_to(np.asarray(sigma_spatial, dtype=float), (3,))
    if radius is None:
        radius = window_radius(sig, truncate)
    if sigma_range is None:
        sigma_range = 2.0 * estimate_noise_sigma(volume)
    sigma_range = max(float(sigma_range), 1e-6)

    def spatial(o: tuple[int, int, int]) -> float:
        return -sum(0.5 * (d / s) ** 2 for d, s in zip(o, sig))

    return _pair_filter(volume, radius, 1, 0.0, -0.5 / sigma_range ** 2, spatial, device, progress, threads)


def nlm_filter(volume: np.ndarray | torch.Tensor, *, patch_size: int = 2, search_radius: int = 2,
               h: float | None = None, sigma: float | None = None, device: str | torch.device | None = None,
               progress: Callable[[float], None] | None = None,
               threads: int | None = None) -> np.ndarray | torch.Tensor:
    """Non-local means (fast, per-offset patch distances) on a ``(Z, Y, X)`` volume.

    Weight of the pair (x, y): ``exp(-max(d² - 2σ², 0) / h²)`` with ``d²`` the mean squared difference of the
    ``patch_size``^3 patches at x and y (Buades et al.; the rule of scikit-image's ``fast_mode``). An even patch size
    puts the voxel just before the patch centre.

    The same rule, not the same parameters, as ``skimage.restoration.denoise_nl_means(fast_mode=True)``: for its odd
    ``patch_size=p`` scikit-image sums the squared differences over ``(p-1)^3`` voxels but divides by ``p^3``, and it
    drops weights whose normalised distance exceeds 5. Its result at ``(p, h)`` is ours at ``patch_size=p-1`` and
    ``h * (p / (p-1)) ** 1.5`` (PSNR 69-71 dB between the two on a breast MR, the cut-off making the rest of the
    difference); ``bench/preprocess.py`` compares them so.

    Args:
        patch_size: patch edge in voxels (1..9); 2 is best on the CT phantom of ``bench/preprocess.py``.
        search_radius: s, candidates within the (2s+1)^3 box.
        h: filtering strength in intensity units; default ``1.6 * sigma`` (best PSNR on that phantom with 2³
            patches; distances are patch *means*, so a larger patch needs a smaller h).
        sigma: noise standard deviation; default estimated (:func:`estimate_noise_sigma`).
        threads: CPU threads (default torch's thread count, one for small volumes).

    Returns:
        The filtered volume, float32, numpy or torch like the input.
    """
    if sigma is None:
        sigma = estimate_noise_sigma(volume)
    if h is None:
        h = 1.6 * sigma
    h = max(float(h), 1e-6)
    k = max(int(patch_size), 1)
    k3 = float(k ** 3)
    # box *sums* are compared, so scale the thresholds by the patch size instead of dividing every sum
    s = int(search_radius)
    return _pair_filter(volume, (s, s, s), k, 2.0 * float(sigma) ** 2 * k3, -1.0 / (h * h * k3),
                        lambda o: 0.0, device, progress, threads)
