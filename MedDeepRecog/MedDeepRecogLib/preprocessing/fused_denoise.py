"""Fused per-offset CPU kernel (numba) for the symmetric pair-weighted filters of :mod:`.fast_denoise`.

Hand-written on purpose, as :mod:`.fast_denoise` explains for the filters themselves; this module only makes the
CPU path fast. The torch path of :mod:`.fast_denoise` runs each per-offset step (difference, square, box sum,
exponential, four accumulations) as a separate whole-array op, so every step streams its operands through memory:
≈ 20 B per voxel and offset, memory-bound. Here one compiled loop does all steps for a tile of
``tz × ty`` rows of the full width while the tile's inputs, row sums and accumulators stay in the L2 cache; only
the input and the accumulators cross main memory, once per tile, not once per offset.

Per offset ``o`` and tile (rows of centres ``c``, all of them in registers or L1/L2):

1. ``S_x(c) = sum_i (x[c + o + i e_x] - x[c + i e_x])^2`` over ``k`` voxels along X (row sums of the squared
   differences of the patch, ``k`` = patch size, 1 for the bilateral filter);
2. ``S(c) = sum_{a,b} S_x(c + a e_z + b e_y)`` over ``k × k`` rows: the patch distance (a box sum);
3. ``w = exp(max(S - shift, 0) * scale + bias_o)`` with a vectorisable exponential (:func:`_exp_nonpositive`);
4. ``num[c] += w x[c + o]``, ``den[c] += w`` and — the symmetry of the pair — ``num[c + o] += w x[c]``,
   ``den[c + o] += w``: the distance of (c, c + o) is the distance of (c + o, c) at the shifted position, so one
   distance volume serves both offsets ``o`` and ``-o``. Steps 2-4 are one loop over the row (the partner's credit
   gets a loop of its own only when ``c + o`` is on the same row, where it would overwrite what the loop reads).

Threads: Python threads over Z slabs of centres, the kernel releasing the GIL (``nogil``). A slab credits the
slices ``[z0, z1 + o_z]``, so slabs at least ``o_z`` thick run in two phases (even slabs, then odd slabs) and no two
running slabs write the same voxel. The threads are plain ``concurrent.futures`` threads, not numba's threading
layer, so the kernel is safe to call from several threads at once (numba's default workqueue layer is not).

Shapes: ``xp`` is the ``(Z, Y, X)`` float32 input mirror-padded by the caller; ``num``/``den`` have its shape;
offsets are ``(n, 3)`` int64 ``(dz, dy, dx)`` with ``dz >= 0`` (one of each ±o pair, see
:func:`.search_offsets.half_offsets`).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from .search_offsets import half_offsets

#: Tile of centres per kernel pass: ``TILE_Z`` slices x ``TILE_Y`` rows x the full padded width. With a 512-voxel
#: row and search radius 3 the tile's inputs, row sums and accumulators take ≈ 0.7 MB, inside a 1 MB L2 cache
#: (measured: 4 x 8 rows beat 2 x 8, 8 x 16 and X tiles of 64-128 voxels).
TILE_Z = 4
TILE_Y = 8
#: X tile: the full row (shorter rows cost more in loop overhead than they gain in cache hits).
TILE_X = 1 << 30


@intrinsic
def _int32_bits_as_float32(typingctx, value):
    """Reinterpret an int32's bits as a float32 (LLVM bitcast; numba has no vectorisable equivalent)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@njit(fastmath=True, inline="always", cache=True)
def _exp_nonpositive(t):
    """``exp(t)`` for float32 ``t <= 0`` (≈ 2e-7 relative error for t > -20; 2^-126 below t ≈ -87).

    ``2^n · P(f)`` with ``n = round(t log2 e)`` set in the exponent bits and Cephes' ``exp2f`` polynomial for
    ``f`` in [-0.5, 0.5]. Without Intel's SVML, LLVM would call the scalar ``expf`` for ``math.exp`` and the loop
    would not vectorise; this form compiles to a dozen AVX instructions per 8 or 16 voxels.
    """
    y = max(t * np.float32(1.4426950408889634), np.float32(-126.0))
    n = np.floor(y + np.float32(0.5))
    f = y - n
    poly = np.float32(1.535336188319500e-4)
    poly = poly * f + np.float32(1.339887440266574e-3)
    poly = poly * f + np.float32(9.618437357674640e-3)
    poly = poly * f + np.float32(5.550332471162809e-2)
    poly = poly * f + np.float32(2.402264791363012e-1)
    poly = poly * f + np.float32(6.931472028550421e-1)
    poly = poly * f + np.float32(1.0)
    return poly * _int32_bits_as_float32((np.int32(n) + np.int32(127)) << np.int32(23))


@njit(fastmath=True, inline="always", cache=True)
def _pair_weight(rows, moved, here, a, b, c, k, shift, scale, bias_o):
    """The weight of the pair (c, c + o): ``exp(max(S - shift, 0) * scale + bias_o)``, ``S`` summed from the k x k
    rows of ``rows`` at (a, b) (the squared difference itself for ``k = 1``)."""
    if k == 1:
        d = moved[c] - here[c]
        dist = d * d
    else:
        dist = np.float32(0.0)
        for i in range(k):
            for j in range(k):
                dist += rows[a + i, b + j, c]
    return _exp_nonpositive(max(dist - shift, np.float32(0.0)) * scale + bias_o)


@njit(fastmath=True, nogil=True, cache=True, boundscheck=False)
def _slab_kernel(xp, num, den, z0, z1, y0, y1, x_lo, x_hi, offsets, bias, patch, shift, scale, symmetric, stages):
    """Credit every pair (c, c + o) for centres ``c`` in ``[z0, z1) x [y0, y1) x [x_lo, x_hi)`` (padded coordinates).

    ``patch`` is a tuple of ``k`` zeros: its length, the patch size ``k``, is part of the argument's type, so numba
    compiles (and caches) one version per patch size in which the ``k``-loops unroll and the X loops vectorise.
    (A numba literal would do the same, but calls with literal arguments go through the dispatcher's compile
    lock and would serialise the threads.) ``symmetric``: also credit ``c + o`` (offsets hold one of each ±o
    pair); otherwise only ``c`` (offsets hold every non-zero offset; the plain filter, for tests and the bench).
    ``stages``: bit mask of the steps to run, 7 = all (1: patch distances, 2: weights and the centre's credit,
    4: the partner's credit); smaller masks only serve the per-stage profile of ``bench/preprocess.py``. For
    ``k = 1`` (bilateral) step 1 is empty: the squared difference is computed inside step 2.
    """
    k = len(patch)
    p = (k - 1) // 2
    kk = k - 1
    q = kk - p
    nx_max = min(TILE_X, x_hi - x_lo)
    rows = np.empty((TILE_Z + kk, TILE_Y + kk, nx_max), np.float32)  # S_x of the tile's rows
    w = np.empty(nx_max, np.float32)
    zero = np.float32(0.0)
    for za in range(z0, z1, TILE_Z):
        nz = min(TILE_Z, z1 - za)
        for ya in range(y0, y1, TILE_Y):
            ny = min(TILE_Y, y1 - ya)
            for x0 in range(x_lo, x_hi, nx_max):
                x1 = min(x0 + nx_max, x_hi)
                nx = x1 - x0
                for io in range(offsets.shape[0]):
                    dz = offsets[io, 0]
                    dy = offsets[io, 1]
                    dx = offsets[io, 2]
                    bias_o = bias[io]
                    if stages & 1 and k > 1:  # k = 1 (bilateral): the squared difference is taken inline below
                        for a in range(nz + kk):
                            zc = za - p + a
                            for b in range(ny + kk):
                                yc = ya - p + b
                                # row views indexed from 0: numba wraps negative indices, so an index LLVM cannot
                                # prove non-negative (an argument plus c) would turn every load into a gather
                                moved = xp[zc + dz, yc + dy, x0 - p + dx: x1 + q + dx]
                                here = xp[zc, yc, x0 - p: x1 + q]
                                out = rows[a, b]
                                for c in range(nx):
                                    acc = zero
                                    for i in range(k):
                                        d = moved[c + i] - here[c + i]
                                        acc += d * d
                                    out[c] = acc
                    if stages & 6:
                        for a in range(nz):
                            zc = za + a
                            for b in range(ny):
                                yc = ya + b
                                num_row = num[zc, yc, x0:x1]
                                den_row = den[zc, yc, x0:x1]
                                moved = xp[zc + dz, yc + dy, x0 + dx: x1 + dx]
                                here = xp[zc, yc, x0:x1]
                                if symmetric and stages & 4 and (dz != 0 or dy != 0):
                                    # the partner c + o lies on another row: both credits in one loop
                                    num_o = num[zc + dz, yc + dy, x0 + dx: x1 + dx]
                                    den_o = den[zc + dz, yc + dy, x0 + dx: x1 + dx]
                                    for c in range(nx):
                                        wc = _pair_weight(rows, moved, here, a, b, c, k, shift, scale, bias_o)
                                        num_row[c] += wc * moved[c]
                                        den_row[c] += wc
                                        num_o[c] += wc * here[c]
                                        den_o[c] += wc
                                    continue
                                for c in range(nx):
                                    wc = _pair_weight(rows, moved, here, a, b, c, k, shift, scale, bias_o)
                                    w[c] = wc
                                    num_row[c] += wc * moved[c]
                                    den_row[c] += wc
                                if symmetric and stages & 4:
                                    # o = (0, 0, dx): the partner's credit needs a loop of its own, since it
                                    # writes the row the loop above reads
                                    num_row = num[zc, yc, x0 + dx: x1 + dx]
                                    den_row = den[zc, yc, x0 + dx: x1 + dx]
                                    for c in range(nx):
                                        num_row[c] += w[c] * here[c]
                                        den_row[c] += w[c]


@njit(fastmath=True, nogil=True, cache=True, boundscheck=False)
def _normalise_slab(xp, num, den, m0, m1, m2, Y, X, z0, z1):
    """``num = (num + x) / (den + 1)`` in place on the volume's slices ``[z0, z1)`` (the centre's own weight is 1).

    In place, so the result needs no fourth volume-sized array: the peak stays at padded input + 2 accumulators.
    """
    for z in range(z0, z1):
        for y in range(Y):
            n_row = num[z + m0, y + m1, m2: m2 + X]
            d_row = den[z + m0, y + m1, m2: m2 + X]
            x_row = xp[z + m0, y + m1, m2: m2 + X]
            for c in range(X):
                n_row[c] = (n_row[c] + x_row[c]) / (d_row[c] + np.float32(1.0))


def mirror_pad(x: np.ndarray, margin: Sequence[int]) -> np.ndarray:
    """``numpy.pad(x, margin, mode="reflect")`` as float32, converting while copying (one pass, no float copy of
    ``x`` first); margins wider than an axis fall back to numpy, which mirrors repeatedly."""
    if any(m >= n for m, n in zip(margin, x.shape)):
        return np.pad(np.asarray(x, dtype=np.float32), [(m, m) for m in margin], mode="reflect")
    m0, m1, m2 = (int(m) for m in margin)
    Z, Y, X = x.shape
    xp = np.empty((Z + 2 * m0, Y + 2 * m1, X + 2 * m2), np.float32)
    xp[m0:m0 + Z, m1:m1 + Y, m2:m2 + X] = x
    for axis, m, n in ((2, m2, X), (1, m1, Y), (0, m0, Z)):
        if m == 0:
            continue
        # earlier axes first, over the part of the array already filled (as numpy.pad does)
        region = [slice(m0, m0 + Z), slice(m1, m1 + Y), slice(None)][: axis] + [slice(None)] * (3 - axis)
        view = xp[tuple(region)]
        lo = [slice(None)] * 3
        src = [slice(None)] * 3
        lo[axis], src[axis] = slice(0, m), slice(2 * m, m, -1)
        view[tuple(lo)] = view[tuple(src)]
        lo[axis], src[axis] = slice(m + n, 2 * m + n), slice(m + n - 2, n - 2 if n >= 2 else None, -1)
        view[tuple(lo)] = view[tuple(src)]
    return xp


def _slabs(start: int, stop: int, thickness: int) -> list[tuple[int, int]]:
    return [(z, min(z + thickness, stop)) for z in range(start, stop, thickness)]


def pair_average(x: np.ndarray, search: Sequence[int], patch: int, shift: float, scale: float,
                 bias: Callable[[tuple[int, int, int]], float], *, symmetric: bool = True, threads: int = 1,
                 progress: Callable[[float], None] | None = None, timings: dict[str, float] | None = None,
                 stages: int = 7) -> np.ndarray:
    """``sum_o w(c, c+o) x[c+o] / sum_o w(c, c+o)`` over ``|o_i| <= search_i``, ``w(c, c) = 1``, with
    ``w = exp(max(S - shift, 0) * scale + bias(o))`` and ``S`` the patch distance (module docstring).

    Args:
        x: ``(Z, Y, X)`` volume, any real dtype (converted to float32 while padding).
        search: ``(sz, sy, sx)`` in voxels.
        patch: patch edge ``k`` (voxels): ``S`` sums squared differences over ``k^3`` patches starting
            ``(k - 1) // 2`` voxels before each voxel; 1 for the bilateral filter.
        shift, scale: of the weight rule above (``scale <= 0``); ``bias(o) <= 0`` is added per offset ``o``.
        symmetric: visit each ±o pair once and credit both ends (the default; about half the work); False runs
            the plain filter, every offset for every voxel.
        threads: Python threads over Z slabs.
        timings: when given, seconds are added per stage: ``pad`` (mirror padding, float32 conversion,
            accumulators), ``pairs`` (the kernel), ``normalise``.
        stages: kernel steps to run (see :func:`_slab_kernel`); not 7 only for profiling.

    Returns:
        The filtered ``(Z, Y, X)`` float32 volume: a view into the padded accumulator (not C-contiguous), which
        saves a volume-sized copy at the peak.
    """
    import time

    clock = time.perf_counter
    t0 = clock()
    sz, sy, sx = (int(s) for s in search)
    k = max(int(patch), 1)
    q = (k - 1) - (k - 1) // 2
    Z, Y, X = x.shape
    # centres c reach `search` beyond the volume (their partner c + o is inside), partners another `search`,
    # patches p before and q >= p after: mirror-pad by 2 * search + q on each side
    m = (2 * sz + q, 2 * sy + q, 2 * sx + q)
    xp = mirror_pad(x, m)
    # np.zeros maps zero pages lazily (calloc): the pages are first touched by the kernel threads, in parallel,
    # instead of a single-threaded fill here
    num = np.zeros(xp.shape, np.float32)
    den = np.zeros(xp.shape, np.float32)
    if symmetric:
        offsets = half_offsets((sz, sy, sx))
        # centres: z in [-sz, Z), y in [-sy, Y + sy), x in [-sx, X + sx) (volume coordinates) + m
        lo, hi = (m[0] - sz, m[1] - sy, m[2] - sx), (m[0] + Z, m[1] + Y + sy, m[2] + X + sx)
    else:
        offsets = [(dz, dy, dx) for dz in range(-sz, sz + 1) for dy in range(-sy, sy + 1)
                   for dx in range(-sx, sx + 1) if (dz, dy, dx) != (0, 0, 0)]
        lo, hi = m, (m[0] + Z, m[1] + Y, m[2] + X)
    offs = np.asarray(offsets, dtype=np.int64).reshape(-1, 3)
    bias_arr = np.asarray([bias(tuple(int(v) for v in o)) for o in offs], dtype=np.float32)
    t1 = clock()
    threads = max(1, int(threads))
    # slabs at least sz thick, so that slabs of one phase (every other slab) never credit the same slice;
    # with several threads, about 4 slabs per thread and phase keep the threads busy to the end
    thickness = max(TILE_Z, sz)
    if threads > 1:
        thickness = max(thickness, min(4 * TILE_Z, math.ceil((hi[0] - lo[0]) / (8 * threads))))
    slabs = _slabs(lo[0], hi[0], thickness)
    args = (lo[1], hi[1], lo[2], hi[2], offs, bias_arr, (0,) * k, np.float32(shift), np.float32(scale),
            bool(symmetric), int(stages))
    done = 0

    def run(slab: tuple[int, int]) -> None:
        _slab_kernel(xp, num, den, slab[0], slab[1], *args)

    phases = (slabs[0::2], slabs[1::2]) if symmetric else (slabs,)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for phase in phases:
            for _ in (map(run, phase) if threads == 1 else pool.map(run, phase)):
                done += 1
                if progress is not None:
                    progress(done / len(slabs))
        t2 = clock()
        out_slabs = _slabs(0, Z, max(1, math.ceil(Z / (4 * threads))))
        list(pool.map(lambda s: _normalise_slab(xp, num, den, m[0], m[1], m[2], Y, X, s[0], s[1]), out_slabs))
    out = num[m[0]:m[0] + Z, m[1]:m[1] + Y, m[2]:m[2] + X]
    if timings is not None:
        for key, seconds in (("pad", t1 - t0), ("pairs", t2 - t1), ("normalise", clock() - t2)):
            timings[key] = timings.get(key, 0.0) + seconds
    return out
