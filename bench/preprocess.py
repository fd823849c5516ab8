"""Benchmark of the denoisers: Mvox/s, PSNR and where the time goes, ours next to SimpleITK and scikit-image.

    python bench/preprocess.py                              # 256x256x128 phantom, 1 and 2 threads (~2 min)
    python bench/preprocess.py --size 512 512 300           # a whole CT: the <= 10 s target (~5 min)
    python bench/preprocess.py --size 512 512 300 --gpu-only   # CUDA rows + the same-run CPU anchors only

A CT-like phantom (X×Y×Z voxels, 1 mm, HU: air, fat, soft tissue, organs, lungs with vessels, bone) gets Gaussian
noise (σ = 40 HU) and is rounded to int16, as a CT is stored. Every denoiser is timed (wall clock, after a warm-up)
and scored by PSNR against the clean phantom (data range = clean max - min) on the same central sub-volume (at most
128×128×32 voxels), so slow reference filters (scikit-image NLM, SimpleITK Bilateral / PatchBasedDenoising) run on
that sub-volume only; Mvox/s are per voxel processed either way. Ours runs on the whole volume with 1 thread and
with ``--threads`` (side by side: the 2-core scaling); the earlier whole-array torch formulation (still the CUDA
path) and the plain filter without the pair symmetry run on a central block of at most 256×256×64 voxels, to show
what each lever buys.
Where torch.cuda is available our filters are timed on the GPU too; on CPU-only machines those rows are skipped.
``--gpu-only`` times only those rows and the CPU anchors of the same run (SimpleITK Bilateral and scikit-image NLM
on the sub-volume), and sets them against the GPU's own memory-bound limit: BW_GPU / (n × 20 B) as below, with
BW_GPU a 1 GiB device-to-device copy (read + write) timed in the same run.

Per-stage profile (NLM and bilateral, 1 thread, on the block): mirror padding + accumulators, the kernel's three
steps (``fused_denoise._slab_kernel``'s ``stages``: patch distances; weight + the centre's credit; the partner's
credit; each timed as the difference of runs with fewer steps) and the normalisation.

Limits, per core, for a (2s+1)³ search (n = ((2s+1)³ - 1) / 2 = 171 pair offsets visited at s = 3):

* memory-bound limit of the per-offset formulation (the issue's estimate): every visited offset streams its
  operands through main memory, ≥ 20 B per voxel (read the shifted value, write and read back the distance or
  weight, read and write the two accumulators, 4 B each), so Mvox/s <= BW_DRAM / (n × 20 B); with BW_DRAM
  measured below (a 256 MB copy, read + write) — e.g. 20 GB/s / (171 × 20 B) = 5.8 Mvox/s;
* the fused kernel keeps its tile in the L2 cache (``fused_denoise.TILE_*``), so main memory sees the volume a
  few times per filter, not per offset; its bound is the L1<->L2 traffic: ≈ 81 B per voxel and visited offset
  (patch distances 3 × 4 B × 1.41 rows of halo = 17 B; the weight step reads k² = 4 rows of distances, the moved
  value and both accumulators and writes them and the weight, 40 B; the partner's credit reads the weight, the
  centre value and two accumulators and writes two, 24 B), so Mvox/s <= BW_L2 / (n × 81 B), BW_L2 measured as a
  256 KB copy. Both fractions are printed; above 100 % of the first means the memory-bound limit is beaten.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MedDeepRecog"))

#: bytes per voxel and visited offset: streamed by the per-offset formulation / moved L1<->L2 by the fused kernel
BYTES_PER_OFFSET_STREAMED = 20
BYTES_PER_OFFSET_FUSED = 81


def phantom(size_xyz: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A (Z, Y, X) float32 CT-like volume in HU with edges at several contrasts."""
    nx, ny, nz = size_xyz
    z, y, x = np.meshgrid(np.linspace(-1, 1, nz), np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij")
    vol = np.full((nz, ny, nx), -1000.0, np.float32)
    body = (x / 0.85) ** 2 + (y / 0.65) ** 2 < 1
    vol[body] = -100.0  # fat
    muscle = (x / 0.78) ** 2 + (y / 0.58) ** 2 < 1
    vol[muscle] = 45.0
    for cx in (-0.38, 0.38):  # lungs with vessels
        lung = ((x - cx) / 0.28) ** 2 + (y / 0.4) ** 2 + (z / 1.3) ** 2 < 1
        vol[lung] = -850.0
        rng = np.random.default_rng(seed)
        for _ in range(12):
            px, py = cx + rng.uniform(-0.2, 0.2), rng.uniform(-0.3, 0.3)
            vessel = lung & ((x - px) ** 2 + (y - py) ** 2 < 0.0006)
            vol[vessel] = 40.0
    organ = ((x - 0.0) / 0.18) ** 2 + ((y + 0.2) / 0.15) ** 2 + (z / 0.7) ** 2 < 1
    vol[organ] = 60.0
    lesion = (x ** 2 + (y + 0.2) ** 2 + z ** 2) < 0.004
    vol[lesion] = 90.0
    spine = (x ** 2 + (y - 0.45) ** 2) < 0.012
    vol[spine] = 700.0
    return vol


def psnr(estimate: np.ndarray, clean: np.ndarray, data_range: float) -> float:
    mse = float(np.mean((estimate.astype(np.float64) - clean) ** 2))
    return 10.0 * np.log10(data_range ** 2 / mse)


def timed(fn, *args, repeat: int = 1, **kwargs):
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
    return out, best


def bandwidth() -> tuple[float, float]:
    """(main memory, L2) copy bandwidth of one core in GB/s, counting bytes read + written; best of a few runs."""
    big = np.ones(64 << 20, np.float32)  # 256 MB
    dst = np.empty_like(big)
    _, t = timed(np.copyto, dst, big, repeat=3)
    dram = 2 * big.nbytes / t / 1e9
    small = np.ones(64 << 10, np.float32)  # 256 KB: source and destination stay in a 1 MB L2
    small_dst = np.empty_like(small)
    reps = 2000

    def copies():
        for _ in range(reps):
            np.copyto(small_dst, small)

    _, t = timed(copies, repeat=3)
    return dram, 2 * small.nbytes * reps / t / 1e9


def stage_profile(x: np.ndarray, search: int | tuple[int, int, int], patch: int, shift: float, scale: float,
                  bias) -> dict[str, float]:
    """Seconds per stage of one single-threaded ``pair_average`` run on ``x`` (see the module docstring)."""
    from MedDeepRecogLib.preprocessing.fused_denoise import pair_average

    search = (search,) * 3 if isinstance(search, int) else search
    kernel = {}
    full: dict[str, float] = {}
    for stages in (1, 3, 7):  # the best of two runs each
        best = float("inf")
        for _ in range(2):
            timings: dict[str, float] = {}
            pair_average(x, search, patch, shift, scale, bias, threads=1, stages=stages, timings=timings)
            if timings["pairs"] < best:
                best = timings["pairs"]
                if stages == 7:
                    full = timings
        kernel[stages] = best
    return {"pad + accumulators": full["pad"], "patch distances": kernel[1],
            "weights + centre credit": max(kernel[3] - kernel[1], 0.0),
            "partner credit (symmetry)": max(kernel[7] - kernel[3], 0.0), "normalise": full["normalise"]}


def gpu_bandwidth() -> float:
    """Device-to-device copy bandwidth of the GPU in GB/s (1 GiB, bytes read + written, best of 5)."""
    import torch

    src = torch.empty(1 << 28, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(6):
        torch.cuda.synchronize()
        start = time.perf_counter()
        dst.copy_(src)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best / 1e9


def itk_bilateral_anchor(noisy: np.ndarray, sub, sigma_r: float, threads: int, add) -> None:
    """SimpleITK's Bilateral (the same 7³ window as ours) on the sub-volume ``sub``: row ``itk_bil``."""
    import SimpleITK as sitk

    res, t = timed(sitk.Bilateral, sitk.GetImageFromArray(noisy[sub].astype(np.float32)), 1.0, sigma_r)
    add("itk_bil", f"SimpleITK Bilateral σd=1 mm, σr=2σ (r=3), {threads} thr", "cpu", t, noisy[sub].size,
        sitk.GetArrayFromImage(res), sub)


def skimage_nlm_anchor(noisy: np.ndarray, sub, sigma_est: float, add, key: str, patch_size: int, distance: int,
                       h_sk: float, label: str) -> None:
    """scikit-image's fast NLM on the sub-volume ``sub`` (padded by its reach, scored inside): row ``key``."""
    from skimage.restoration import denoise_nl_means

    pad = distance + patch_size
    padded_sub = tuple(slice(max(s.start - pad, 0), s.stop + pad) for s in sub)
    inner = tuple(slice(s.start - p.start, s.start - p.start + (s.stop - s.start)) for s, p in zip(sub, padded_sub))
    region = noisy[padded_sub].astype(np.float32)
    out, t = timed(denoise_nl_means, region, patch_size=patch_size, patch_distance=distance, h=h_sk,
                   sigma=sigma_est, fast_mode=True, channel_axis=None)
    add(key, label, "cpu", t, region.size, out[inner].astype(np.float32), sub)


def skimage_same_h(h: float) -> float:
    """skimage's h giving our weights: its fast mode sums patch_size-1 voxels per axis (box from -offset exclusive to
    +offset), so its patch_size=3 compares 2³ patches, the same work as our patch 2³; it divides that 2³ sum by
    3³ h² where we divide by 2³ h², so its h = ours × sqrt(8/27) (it also drops weights below e^-5)."""
    return h * math.sqrt(8.0 / 27.0)


def gpu_only(args, noisy, sub, sigma_est, h, sigma_r, add, rows, cuda_rows) -> int:
    """The CUDA rows of ``main`` with the same-run CPU anchors on the sub-volume, and the GPU's memory-bound limit."""
    import torch

    itk_bilateral_anchor(noisy, sub, sigma_r, args.threads, add)
    skimage_nlm_anchor(noisy, sub, sigma_est, add, "sk7", 3, 3, skimage_same_h(h),
                       "skimage fast NLM patch_size=3 (2³), 7³ (= ours), 1 thr")
    cuda_rows()
    if "nlm7_cuda" not in rows:
        return 0
    r = {k: v[0] for k, v in rows.items()}
    p = {k: v[1] for k, v in rows.items()}
    bw = gpu_bandwidth()
    n_pairs = (7 ** 3 - 1) // 2
    limit = bw * 1e9 / (n_pairs * BYTES_PER_OFFSET_STREAMED) / 1e6
    print(f"\n# {torch.cuda.get_device_name()}: copy bandwidth {bw:.0f} GB/s; memory-bound limit of the per-offset "
          f"formulation (the CUDA path) {bw:.0f} GB/s / ({n_pairs} × {BYTES_PER_OFFSET_STREAMED} B) = {limit:.0f} "
          f"Mvox/s; ours NLM {r['nlm7_cuda']:.0f} Mvox/s = {100 * r['nlm7_cuda'] / limit:.0f} % of it")
    ct = 512 * 512 * 300 / 1e6
    print(f"ours NLM 2³/7³ on CUDA: {ct / r['nlm7_cuda']:.2f} s for a 512×512×300 CT at this rate; "
          f"{r['nlm7_cuda'] / r['sk7']:.0f}x skimage fast NLM (1 CPU thread), PSNR {p['nlm7_cuda']:.2f} vs "
          f"{p['sk7']:.2f} dB")
    print(f"ours bilateral 7³ on CUDA: {ct / r['bil7_cuda']:.2f} s for a 512×512×300 CT; "
          f"{r['bil7_cuda'] / r['itk_bil']:.0f}x SimpleITK Bilateral ({args.threads} CPU thr), PSNR "
          f"{p['bil7_cuda']:.2f} vs {p['itk_bil']:.2f} dB")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2,
                        help="threads for ours (also run with 1, side by side) and SimpleITK; scikit-image's NLM is "
                             "single-threaded")
    parser.add_argument("--size", type=int, nargs=3, default=(256, 256, 128), metavar=("X", "Y", "Z"))
    parser.add_argument("--noise", type=float, default=40.0, help="noise sigma in HU")
    parser.add_argument("--skip-slow", action="store_true", help="skip SimpleITK PatchBasedDenoising")
    parser.add_argument("--gpu-only", action="store_true",
                        help="only the CUDA rows and the CPU anchors (SimpleITK Bilateral, scikit-image NLM)")
    args = parser.parse_args()

    import SimpleITK as sitk
    import torch

    from MedDeepRecogLib.preprocessing.fast_denoise import (_symmetric_filter, bilateral_filter,
                                                             estimate_noise_sigma, nlm_filter)
    from MedDeepRecogLib.preprocessing.fused_denoise import pair_average

    threads = max(1, args.threads)
    torch.set_num_threads(threads)
    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(threads)
    load_before = os.getloadavg()
    rng = np.random.default_rng(1)
    clean = phantom(tuple(args.size))
    noisy = np.round(clean + rng.normal(0.0, args.noise, clean.shape)).astype(np.int16)  # stored as a CT
    data_range = float(clean.max() - clean.min())
    nz, ny, nx = clean.shape
    # central sub-volume (at most 32 slices x 128 x 128, whatever the size) for the slow reference filters
    sub = (slice(nz // 2 - min(16, nz // 4), nz // 2 + min(16, nz // 4)),
           slice(ny // 2 - min(64, ny // 4), ny // 2 + min(64, ny // 4)),
           slice(nx // 2 - min(64, nx // 4), nx // 2 + min(64, nx // 4)))
    tiny = (slice(nz // 2 - 8, nz // 2 + 8), slice(ny // 2 - 32, ny // 2 + 32), slice(nx // 2 - 32, nx // 2 + 32))
    # central block (at most 64 x 256 x 256) for the formulations we replaced and the stage profile
    block = tuple(slice(max(0, n // 2 - b // 2), max(0, n // 2 - b // 2) + min(n, b)) for n, b in
                  zip(clean.shape, (64, 256, 256)))
    block_f = np.ascontiguousarray(noisy[block], dtype=np.float32)
    sub_in_block = tuple(slice(max(s.start, b.start) - b.start, min(s.stop, b.stop) - b.start)
                         for s, b in zip(sub, block))
    sub_of_block = tuple(slice(s.start + b.start, s.stop + b.start) for s, b in zip(sub_in_block, block))
    sigma_est = estimate_noise_sigma(noisy)
    h = 1.6 * sigma_est

    print(f"# denoiser benchmark  {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"threads=1 and {threads}, torch {torch.__version__}, SimpleITK {sitk.Version_VersionString()}")
    print(f"# load average before (1, 5, 15 min): {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f} "
          f"(the CPU is shared: compare ratios within this run, not absolute seconds across runs)")
    print(f"# volume X×Y×Z = {nx}×{ny}×{nz} = {clean.size / 1e6:.2f} Mvox int16, noise σ = {args.noise} HU "
          f"(estimated {sigma_est:.1f}); PSNR on the central sub-volume {clean[sub].shape[::-1]} (X×Y×Z), "
          f"range {data_range:.0f} HU; noisy PSNR {psnr(noisy[sub], clean[sub], data_range):.2f} dB")
    print(f"# slow reference filters (skimage NLM, SimpleITK Bilateral) run on that sub-volume only, SimpleITK "
          f"PatchBasedDenoising on a 64×64×16 block; the replaced formulations on the block "
          f"{block_f.shape[::-1]}; Mvox/s = voxels processed / seconds")
    rows: dict[str, tuple[float, float | None, float]] = {}

    def add(key: str, name: str, device: str, seconds: float, voxels: int, estimate: np.ndarray | None,
            region) -> float:
        mvox = voxels / seconds / 1e6
        score = psnr(estimate, clean[region], data_range) if estimate is not None else None
        rows[key] = (mvox, score, seconds)
        print(f"{name:<58} {device:<5} {mvox:9.3f} Mvox/s  PSNR {score if score is None else f'{score:6.2f}'} dB  "
              f"({voxels / 1e6:.2f} Mvox in {seconds:.2f} s)", flush=True)
        return mvox

    sigma_r = 2.0 * args.noise

    def cuda_rows() -> None:
        if not torch.cuda.is_available():
            print("# no CUDA device: GPU timings skipped")
            return
        x = torch.from_numpy(noisy.astype(np.float32)).cuda()
        for fn, kw, key, label in ((bilateral_filter, dict(sigma_spatial=1.0, sigma_range=sigma_r, truncate=2.5),
                                    "bil7_cuda", "ours bilateral r=3 (7³)"),
                                   (nlm_filter, dict(patch_size=2, search_radius=3, h=h, sigma=sigma_est),
                                    "nlm7_cuda", "ours NLM patch 2³, search 7³")):
            fn(x, **kw)
            torch.cuda.synchronize()
            start = time.perf_counter()
            y = fn(x, **kw)
            torch.cuda.synchronize()
            add(key, label, "cuda", time.perf_counter() - start, noisy.size, y.cpu().numpy()[sub], sub)

    if args.gpu_only:
        return gpu_only(args, noisy, sub, sigma_est, h, sigma_r, add, rows, cuda_rows)
    bilateral_filter(noisy[:8, :64, :64], 1.0, sigma_r)  # warm-up (numba loads its cached kernels)
    nlm_filter(noisy[:8, :64, :64], patch_size=2, search_radius=3, sigma=args.noise)
    for n_threads in sorted({1, threads}):
        out, t = timed(bilateral_filter, noisy, 1.0, sigma_r, truncate=2.0, threads=n_threads)
        add(f"bil5_{n_threads}", f"ours bilateral σs=1 vox, σr=2σ, r=2 (5³), {n_threads} thr", "cpu", t,
            noisy.size, out[sub], sub)
        out, t = timed(bilateral_filter, noisy, 1.0, sigma_r, truncate=2.5, threads=n_threads)
        add(f"bil7_{n_threads}", f"ours bilateral r=3 (7³, ITK's window), {n_threads} thr", "cpu", t,
            noisy.size, out[sub], sub)
    itk_bilateral_anchor(noisy, sub, sigma_r, threads, add)
    sig3 = np.array([1.0, 1.0, 1.0])

    def spatial(o):
        return -sum(0.5 * (d / s) ** 2 for d, s in zip(o, sig3))

    torch.set_num_threads(1)
    out, t = timed(_symmetric_filter, torch.from_numpy(block_f), (3, 3, 3), 1, 0.0, -0.5 / sigma_r ** 2, spatial)
    add("bil7_ops", "  earlier torch ops bilateral 7³ (the CUDA path), 1 thr", "cpu", t, block_f.size,
        out.numpy()[sub_in_block], sub_of_block)
    torch.set_num_threads(threads)

    for n_threads in sorted({1, threads}):
        out, t = timed(nlm_filter, noisy, patch_size=2, search_radius=3, h=h, sigma=sigma_est, threads=n_threads)
        add(f"nlm7_{n_threads}", f"ours NLM patch 2³, search 7³, h=1.6σ, {n_threads} thr", "cpu", t, noisy.size,
            out[sub], sub)
    out, t = timed(nlm_filter, noisy, patch_size=2, search_radius=2, h=h, sigma=sigma_est, threads=threads)
    add("nlm5", f"ours NLM patch 2³, search 5³, h=1.6σ, {threads} thr", "cpu", t, noisy.size, out[sub], sub)
    out, t = timed(nlm_filter, noisy, patch_size=3, search_radius=2, h=1.0 * sigma_est, sigma=sigma_est,
                   threads=threads)
    add("nlm3", f"ours NLM patch 3³, search 5³, h=1.0σ, {threads} thr", "cpu", t, noisy.size, out[sub], sub)
    k3 = 8.0
    shift, scale = 2.0 * sigma_est ** 2 * k3, -1.0 / (h * h * k3)
    out, t = timed(pair_average, block_f, (3, 3, 3), 2, shift, scale, lambda o: 0.0, symmetric=False, threads=1)
    add("nlm7_plain", "  ours NLM 2³/7³ without the pair symmetry (plain), 1 thr", "cpu", t, block_f.size,
        out[sub_in_block], sub_of_block)
    out, t = timed(pair_average, block_f, (3, 3, 3), 2, shift, scale, lambda o: 0.0, threads=1)
    add("nlm7_block", "  ours NLM 2³/7³ on the same block, 1 thr", "cpu", t, block_f.size, out[sub_in_block],
        sub_of_block)
    torch.set_num_threads(1)
    out, t = timed(_symmetric_filter, torch.from_numpy(block_f), (3, 3, 3), 2, shift, scale, lambda o: 0.0)
    add("nlm7_ops", "  earlier torch ops NLM 2³/7³ (the CUDA path), 1 thr", "cpu", t, block_f.size,
        out.numpy()[sub_in_block], sub_of_block)
    torch.set_num_threads(threads)

    def skimage_nlm(key: str, patch_size: int, distance: int, h_sk: float, label: str) -> None:
        skimage_nlm_anchor(noisy, sub, sigma_est, add, key, patch_size, distance, h_sk, label)

    h_same = skimage_same_h(h)
    skimage_nlm("sk7", 3, 3, h_same, f"skimage fast NLM patch_size=3 (2³), 7³, h={h_same / sigma_est:.2f}σ (= ours)")
    skimage_nlm("sk7doc", 3, 3, 0.8 * sigma_est, "skimage fast NLM patch_size=3 (2³), 7³, h=0.8σ (its advice)")
    skimage_nlm("sk13", 5, 6, 0.8 * sigma_est, "skimage fast NLM patch_size=5 (4³), 13³, h=0.8σ")

    if not args.skip_slow:
        f = sitk.PatchBasedDenoisingImageFilter()
        f.SetPatchRadius(1)
        f.SetNumberOfIterations(1)
        f.SetKernelBandwidthEstimation(False)
        f.SetNoiseSigma(sigma_est)
        f.SetNoiseModel(f.GAUSSIAN)
        res, t = timed(f.Execute, sitk.GetImageFromArray(noisy[tiny].astype(np.float32)))
        add("itk_pbd", "SimpleITK PatchBasedDenoising patch 3³, 1 iteration", "cpu", t, noisy[tiny].size,
            sitk.GetArrayFromImage(res), tiny)

    img = sitk.GetImageFromArray(block_f)
    res, t = timed(sitk.Median, img, [1, 1, 1])
    add("median", "SimpleITK Median r=1 (3³)", "cpu", t, block_f.size,
        sitk.GetArrayFromImage(res)[sub_in_block], sub_of_block)
    res, t = timed(sitk.CurvatureAnisotropicDiffusion, img, 0.0625, 3.0, 1, 5)
    add("diffusion", "SimpleITK CurvatureAnisotropicDiffusion 5 it.", "cpu", t, block_f.size,
        sitk.GetArrayFromImage(res)[sub_in_block], sub_of_block)

    cuda_rows()

    print("\n# where the time goes: stage profile, 1 thread, on the block "
          f"{block_f.shape[::-1]} ({block_f.size / 1e6:.2f} Mvox)")
    profiles = {"NLM 2³/7³": stage_profile(block_f, 3, 2, shift, scale, lambda o: 0.0),
                "bilateral 7³": stage_profile(block_f, 3, 1, 0.0, -0.5 / sigma_r ** 2, spatial)}
    for name, profile in profiles.items():
        total = sum(profile.values())
        print(f"{name:<14} total {total:6.2f} s: " + ", ".join(
            f"{k} {v:.2f} s ({100 * v / total:.0f} %)" for k, v in profile.items()))
    dram, l2 = bandwidth()
    n_pairs = (7 ** 3 - 1) // 2
    limit_streamed = dram * 1e9 / (n_pairs * BYTES_PER_OFFSET_STREAMED) / 1e6
    limit_fused = l2 * 1e9 / (n_pairs * BYTES_PER_OFFSET_FUSED) / 1e6
    ours_1 = rows["nlm7_1"][0]
    print(f"# bandwidth of one core (copy, read + write): main memory {dram:.1f} GB/s, L2 {l2:.1f} GB/s")
    print(f"# memory-bound limit of the per-offset formulation: {dram:.1f} GB/s / ({n_pairs} × "
          f"{BYTES_PER_OFFSET_STREAMED} B) = {limit_streamed:.2f} Mvox/s per core; ours NLM 2³/7³ at 1 thread "
          f"{ours_1:.2f} Mvox/s = {100 * ours_1 / limit_streamed:.0f} % of it")
    print(f"# L2 bound of the fused kernel: {l2:.1f} GB/s / ({n_pairs} × {BYTES_PER_OFFSET_FUSED} B) = "
          f"{limit_fused:.2f} Mvox/s per core; ours = {100 * ours_1 / limit_fused:.0f} % of it")

    load_after = os.getloadavg()
    print(f"\n# ratios (same run; load average after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f})")
    r = {k: v[0] for k, v in rows.items()}
    p = {k: v[1] for k, v in rows.items()}
    secs_nlm = rows[f"nlm7_{threads}"][2]
    ct_voxels = 512 * 512 * 300
    print(f"ours NLM 2³/7³, {threads} thr: {secs_nlm:.2f} s for {noisy.size / 1e6:.1f} Mvox = "
          f"{ct_voxels / 1e6 / r[f'nlm7_{threads}']:.1f} s for a 512×512×300 CT at this rate (target <= 10 s)")
    print(f"ours NLM 2³/7³ 1 thr / skimage fast NLM 2³/7³ (same work, 1 thread each): "
          f"{r['nlm7_1'] / r['sk7']:6.1f}x, PSNR {p['nlm7_1']:.2f} vs {p['sk7']:.2f} dB at the same weights "
          f"({p['sk7doc']:.2f} dB at skimage's h=0.8σ)")
    print(f"ours NLM 2³/7³ {threads} thr / skimage fast NLM 2³/7³                    : "
          f"{r[f'nlm7_{threads}'] / r['sk7']:6.1f}x")
    print(f"ours NLM 2³/5³ / skimage fast NLM patch_size=5 (4³)/13³                : "
          f"{r['nlm5'] / r['sk13']:6.1f}x, PSNR {p['nlm5']:.2f} vs {p['sk13']:.2f} dB")
    print(f"ours bilateral 7³ / SimpleITK Bilateral (same 7³ window, {threads} thr each)   : "
          f"{r[f'bil7_{threads}'] / r['itk_bil']:6.1f}x  (target >= 10x), PSNR {p[f'bil7_{threads}']:.2f} vs "
          f"{p['itk_bil']:.2f} dB")
    print(f"ours bilateral 5³ / SimpleITK Bilateral 7³                              : "
          f"{r[f'bil5_{threads}'] / r['itk_bil']:6.1f}x")
    print(f"2-core scaling, {threads} thr / 1 thr: NLM {r[f'nlm7_{threads}'] / r['nlm7_1']:.2f}x, "
          f"bilateral 7³ {r[f'bil7_{threads}'] / r['bil7_1']:.2f}x")
    print(f"levers on the block, 1 thr: fused kernel / earlier torch ops: NLM {r['nlm7_block'] / r['nlm7_ops']:.1f}x, "
          f"bilateral {r['bil7_1'] / r['bil7_ops']:.1f}x (whole volume vs block); pair symmetry / plain: "
          f"{r['nlm7_block'] / r['nlm7_plain']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
