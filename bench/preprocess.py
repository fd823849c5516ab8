"""Benchmark of the denoisers: Mvox/s and PSNR, ours next to SimpleITK and scikit-image, in one run.

    python bench/preprocess.py [--threads 2] [--size 256 256 128] [--noise 40]

A CT-like phantom (X×Y×Z = 256×256×128 voxels, 1 mm, HU: air, fat, soft tissue, organs, lungs with vessels,
bone) gets Gaussian noise (σ = 40 HU). Every denoiser is timed (wall clock, after a warm-up) and scored by PSNR
against the clean phantom (data range = clean max - min) on the same central sub-volume, so slow reference
filters (scikit-image NLM, SimpleITK Bilateral / PatchBasedDenoising) can be run on that sub-volume only —
Mvox/s are per voxel processed either way. Where torch.cuda is available our filters are timed on the GPU too.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MedDeepRecog"))


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1,
                        help="threads for torch and SimpleITK (scikit-image NLM is single-threaded). Default 1: on a "
                             "shared, busy machine torch's OpenMP threads wait on each other and 2 threads ran 20x "
                             "slower than 1; use 2+ on an idle machine")
    parser.add_argument("--size", type=int, nargs=3, default=(256, 256, 128), metavar=("X", "Y", "Z"))
    parser.add_argument("--noise", type=float, default=40.0, help="noise sigma in HU")
    parser.add_argument("--skip-slow", action="store_true", help="skip SimpleITK PatchBasedDenoising")
    args = parser.parse_args()

    import SimpleITK as sitk
    import torch
    from skimage.restoration import denoise_nl_means

    from MedDeepRecogLib.preprocessing.fast_denoise import bilateral_filter, estimate_noise_sigma, nlm_filter

    torch.set_num_threads(args.threads)
    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(args.threads)
    rng = np.random.default_rng(1)
    clean = phantom(tuple(args.size))
    noisy = (clean + rng.normal(0.0, args.noise, clean.shape)).astype(np.float32)
    data_range = float(clean.max() - clean.min())
    nz, ny, nx = clean.shape
    # central sub-volume (32 slices x 128 x 128 at the default size) for the slow reference filters
    sub = (slice(nz // 2 - min(16, nz // 4), nz // 2 + min(16, nz // 4)),
           slice(ny // 4, ny // 4 + ny // 2), slice(nx // 4, nx // 4 + nx // 2))
    tiny = (slice(nz // 2 - 8, nz // 2 + 8), slice(ny // 2 - 32, ny // 2 + 32), slice(nx // 2 - 32, nx // 2 + 32))
    sigma_est = estimate_noise_sigma(noisy)

    print(f"# denoiser benchmark  {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"threads={args.threads}, torch {torch.__version__}, SimpleITK {sitk.Version_VersionString()}")
    print(f"# volume X×Y×Z = {nx}×{ny}×{nz} = {clean.size / 1e6:.2f} Mvox, noise σ = {args.noise} HU "
          f"(estimated {sigma_est:.1f}); PSNR on the central sub-volume {clean[sub].shape[::-1]} (X×Y×Z), "
          f"range {data_range:.0f} HU; noisy PSNR {psnr(noisy[sub], clean[sub], data_range):.2f} dB")
    print("# slow reference filters (skimage NLM, SimpleITK Bilateral) run on that sub-volume only, "
          "SimpleITK PatchBasedDenoising on a 64×64×16 block; Mvox/s = voxels processed / seconds")
    rows: list[tuple[str, str, float, float | None, str]] = []

    def add(name: str, device: str, seconds: float, voxels: int, estimate: np.ndarray | None, region) -> float:
        mvox = voxels / seconds / 1e6
        score = psnr(estimate, clean[region], data_range) if estimate is not None else None
        rows.append((name, device, mvox, score, f"{voxels / 1e6:.2f} Mvox in {seconds:.2f} s"))
        print(f"{name:<52} {device:<5} {mvox:9.3f} Mvox/s  PSNR {score if score is None else f'{score:6.2f}'} dB  "
              f"({voxels / 1e6:.2f} Mvox in {seconds:.2f} s)", flush=True)
        return mvox

    sigma_r = 2.0 * args.noise
    bilateral_filter(noisy[:8, :64, :64], 1.0, sigma_r)  # warm-up
    out, t = timed(bilateral_filter, noisy, 1.0, sigma_r, truncate=2.0)
    ours_bil = add("ours bilateral σs=1 vox, σr=2σ, r=2 (5³)", "cpu", t, noisy.size, out[sub], sub)
    out, t = timed(bilateral_filter, noisy, 1.0, sigma_r, truncate=2.5)
    ours_bil3 = add("ours bilateral σs=1 vox, σr=2σ, r=3 (7³, ITK's window)", "cpu", t, noisy.size, out[sub], sub)
    img_sub = sitk.GetImageFromArray(noisy[sub])
    res, t = timed(sitk.Bilateral, img_sub, 1.0, sigma_r)
    itk_bil = add("SimpleITK Bilateral σd=1 mm, σr=2σ (r=3)", "cpu", t, noisy[sub].size,
                  sitk.GetArrayFromImage(res), sub)

    nlm_filter(noisy[:8, :64, :64], patch_size=2, search_radius=2, sigma=args.noise)  # warm-up
    out, t = timed(nlm_filter, noisy, patch_size=2, search_radius=2, h=1.6 * sigma_est, sigma=sigma_est)
    ours_nlm_fast = add("ours NLM patch 2³, search 5³, h=1.6σ", "cpu", t, noisy.size, out[sub], sub)
    psnr_ours_fast = rows[-1][3]
    out, t = timed(nlm_filter, noisy, patch_size=2, search_radius=3, h=1.6 * sigma_est, sigma=sigma_est)
    ours_nlm_same = add("ours NLM patch 2³, search 7³, h=1.6σ", "cpu", t, noisy.size, out[sub], sub)
    psnr_ours_same = rows[-1][3]
    out, t = timed(nlm_filter, noisy, patch_size=3, search_radius=2, h=1.0 * sigma_est, sigma=sigma_est)
    add("ours NLM patch 3³, search 5³, h=1.0σ", "cpu", t, noisy.size, out[sub], sub)

    def skimage_nlm(patch_size: int, distance: int, label: str) -> tuple[float, float]:
        pad = distance + patch_size
        padded_sub = tuple(slice(max(s.start - pad, 0), s.stop + pad) for s in sub)
        inner = tuple(slice(s.start - p.start, s.start - p.start + (s.stop - s.start))
                      for s, p in zip(sub, padded_sub))
        out, t = timed(denoise_nl_means, noisy[padded_sub], patch_size=patch_size, patch_distance=distance,
                       h=0.8 * sigma_est, sigma=sigma_est, fast_mode=True, channel_axis=None)
        mvox = add(label, "cpu", t, noisy[padded_sub].size, out[inner].astype(np.float32), sub)
        return mvox, rows[-1][3]

    # skimage's fast mode sums patch_size-1 voxels per axis (box from -offset exclusive to +offset), so its
    # patch_size=3 compares 2³ patches: the same work as our patch 2³
    sk_same, psnr_sk_same = skimage_nlm(3, 3, "skimage denoise_nl_means fast, patch_size=3 (2³), search 7³")
    sk_typ, psnr_sk_typ = skimage_nlm(5, 6, "skimage denoise_nl_means fast, patch_size=5 (4³), search 13³")

    if not args.skip_slow:
        f = sitk.PatchBasedDenoisingImageFilter()
        f.SetPatchRadius(1)
        f.SetNumberOfIterations(1)
        f.SetKernelBandwidthEstimation(False)
        f.SetNoiseSigma(sigma_est)
        f.SetNoiseModel(f.GAUSSIAN)
        res, t = timed(f.Execute, sitk.GetImageFromArray(noisy[tiny]))
        add("SimpleITK PatchBasedDenoising patch 3³, 1 iteration", "cpu", t, noisy[tiny].size,
            sitk.GetArrayFromImage(res), tiny)

    img = sitk.GetImageFromArray(noisy)
    res, t = timed(sitk.Median, img, [1, 1, 1])
    add("SimpleITK Median r=1 (3³)", "cpu", t, noisy.size, sitk.GetArrayFromImage(res)[sub], sub)
    res, t = timed(sitk.CurvatureAnisotropicDiffusion, img, 0.0625, 3.0, 1, 5)
    add("SimpleITK CurvatureAnisotropicDiffusion 5 it.", "cpu", t, noisy.size, sitk.GetArrayFromImage(res)[sub], sub)

    if torch.cuda.is_available():
        x = torch.from_numpy(noisy).cuda()
        for fn, kw, label in ((bilateral_filter, dict(sigma_spatial=1.0, sigma_range=sigma_r), "ours bilateral r=2"),
                              (nlm_filter, dict(patch_size=2, search_radius=3, h=1.6 * sigma_est, sigma=sigma_est),
                               "ours NLM patch 2³, search 7³")):
            fn(x, **kw)
            torch.cuda.synchronize()
            start = time.perf_counter()
            y = fn(x, **kw)
            torch.cuda.synchronize()
            add(label, "cuda", time.perf_counter() - start, noisy.size, y.cpu().numpy()[sub], sub)
    else:
        print("# no CUDA device: GPU timings skipped")

    print("\n# ratios (same run)")
    print(f"ours bilateral r=2 / SimpleITK Bilateral            : {ours_bil / itk_bil:6.1f}x  (target >= 10x)")
    print(f"ours bilateral r=3 / SimpleITK Bilateral (same 7³)  : {ours_bil3 / itk_bil:6.1f}x")
    print(f"ours NLM 2³/7³ / skimage fast NLM patch_size=3 (2³)/7³, same work : {ours_nlm_same / sk_same:6.1f}x, "
          f"PSNR {psnr_ours_same:.2f} vs {psnr_sk_same:.2f} dB")
    print(f"ours NLM 2³/5³ / skimage fast NLM patch_size=3 (2³)/7³           : {ours_nlm_fast / sk_same:6.1f}x, "
          f"PSNR {psnr_ours_fast:.2f} vs {psnr_sk_same:.2f} dB")
    print(f"ours NLM 2³/5³ / skimage fast NLM patch_size=5 (4³)/13³          : {ours_nlm_fast / sk_typ:6.1f}x, "
          f"PSNR {psnr_ours_fast:.2f} vs {psnr_sk_typ:.2f} dB (target >= 10x at >= PSNR)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
