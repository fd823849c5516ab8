"""How cost grows with size: time and peak memory of classify, NLM and bilateral from 128³ to a whole CT.

    python bench/scaling.py                                  # 128³ and 256³ (~2 min)
    python bench/scaling.py --sizes 128 256 512x150 512x300  # the full grid (~6 min)
    python bench/scaling.py --cases nlm bilateral --threads 2

Each case and size runs in a subprocess of its own, so peaks do not mix: the child builds a synthetic int16 CT
(``bench/classify.py``'s ``synthetic_ct``: air, an elliptic body, a spine, noise; 0.8 × 0.8 × 1.5 mm), warms the
step up on a 64 × 64 × 8 volume (model load, numba's cached kernels), resets its peak RSS (Linux
``/proc/self/clear_refs``; elsewhere the peak since start) and times one run. Cases:

* ``classify-body-region``, ``classify-brain-tumour-mri``: :func:`MedDeepRecogLib.inference.classify.classify_scan`
  (the public API behind ``meddeeprecog classify``) with its defaults: Grad-CAM heatmap on the scan grid,
  faithfulness score and the package's uncertainty block;
* ``nlm``: non-local means, patch 2³, search 7³ (``preprocessing.fast_denoise.nlm_filter``);
* ``bilateral``: bilateral filter, σs = 1 voxel, 7³ window (``bilateral_filter``).

Printed per case: seconds and peak memory added (MiB and × the int16 input) per size, and the exponent ``b`` of
``cost ∝ voxels^b`` fitted by least squares on log-log (time and memory). What to expect, and why:

* NLM and bilateral visit a fixed number of offsets per voxel: time and memory linear (b ≈ 1). Their memory is
  the float32 padded copy and the two float32 accumulators (the result is normalised in place): ≈ 3 × 4 B per voxel
  = 6× the int16 input, plus the padding halo (a fixed number of slices, rows and columns, relatively larger for
  small volumes). Measured b between 0.85 and 1.0: single runs on a shared machine move by ±30 %;
* classify resamples the scan to a fixed model input (slices of a fixed size; a 3D model at a fixed grid), so the
  network's cost does not grow with the scan; reading, resampling and the heatmap on the scan grid are linear.
  Its b is well below 1 while the fixed network cost dominates and tends to 1 for very large scans.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "MedDeepRecog"))
sys.path.insert(0, str(BENCH))

SIZES = {"128": (128, 128, 128), "256": (256, 256, 256), "512x150": (512, 512, 150), "512x300": (512, 512, 300)}
CASES = ("classify-body-region", "classify-brain-tumour-mri", "nlm", "bilateral")


def _peak_kb() -> tuple[int, bool]:
    """(peak RSS in KiB, whether it was reset before the timed run) of this process."""
    from classify import proc_kb

    peak = proc_kb("VmHWM")
    if peak > 0:
        return peak, True
    import resource

    scale = 1 if sys.platform != "darwin" else 1 / 1024  # ru_maxrss is in bytes on macOS
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale), False


def run_case(case: str, size_xyz: tuple[int, int, int], threads: int) -> dict:
    """Child process: warm up, then time one run of ``case`` on a synthetic CT; returns the figures."""
    import SimpleITK as sitk
    import torch
    from classify import proc_kb, reset_peak, synthetic_ct

    torch.set_num_threads(threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    if case.startswith("classify-"):
        from MedDeepRecogLib.inference.classify import classify_scan
        from MedDeepRecogLib.packages import load_package

        package = load_package(case[len("classify-"):])

        def step(image):
            return classify_scan(image, package, device="cpu")
    else:
        from MedDeepRecogLib.preprocessing.fast_denoise import bilateral_filter, nlm_filter

        def step(image):
            array = sitk.GetArrayViewFromImage(image)  # int16, no copy: the filter converts while padding
            if case == "nlm":
                return nlm_filter(array, patch_size=2, search_radius=3, sigma=15.0, threads=threads)
            return bilateral_filter(array, 1.0, 30.0, truncate=2.5, threads=threads)

    step(synthetic_ct((64, 64, 8)))
    image = synthetic_ct(size_xyz)
    input_bytes = image.GetNumberOfPixels() * image.GetSizeOfPixelComponent()
    base = proc_kb("VmRSS")
    reset = reset_peak()
    start = time.perf_counter()
    out = step(image)
    seconds = time.perf_counter() - start
    peak, _ = _peak_kb()
    del out
    return {"case": case, "size": list(size_xyz), "voxels": int(np.prod(size_xyz)), "seconds": seconds,
            "peak_added_mib": max(peak - base, 0) / 1024 if reset else None, "peak_rss_mib": peak / 1024,
            "input_mib": input_bytes / 2 ** 20}


def fit_exponent(voxels: list[int], cost: list[float]) -> float | None:
    """Least-squares slope of log(cost) on log(voxels): the b of cost ∝ voxels^b (None below 2 points)."""
    pairs = [(math.log(v), math.log(c)) for v, c in zip(voxels, cost) if c and c > 0]
    if len(pairs) < 2:
        return None
    x, y = np.array(pairs).T
    return float(np.polyfit(x, y, 1)[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["128", "256"], choices=list(SIZES),
                        help="128 = 128³, 256 = 256³, 512x150 = 512²×150, 512x300 = 512²×300 (default: 128 256)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", nargs=2, metavar=("CASE", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(run_case(args.child[0], SIZES[args.child[1]], args.threads)))
        return 0

    sizes = sorted(args.sizes, key=lambda s: np.prod(SIZES[s]))
    load = os.getloadavg()
    print(f"# scaling benchmark: {os.cpu_count()} CPUs, {args.threads} threads, load average {load[0]:.2f} "
          f"{load[1]:.2f} {load[2]:.2f} (shared machine: absolute seconds are noisy; the exponents less so)")
    print(f"# {'case':<27} {'size X×Y×Z':>13} {'Mvox':>6} {'seconds':>8} {'Mvox/s':>7} {'peak MiB':>9} "
          f"{'× input':>8}")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(BENCH.parent / "MedDeepRecog"),
                                                                      os.environ.get("PYTHONPATH")])))
    failures = 0
    for case in args.cases:
        results = []
        for size in sizes:
            proc = subprocess.run([sys.executable, __file__, "--child", case, size, "--threads", str(args.threads)],
                                  capture_output=True, text=True, env=env)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            if proc.returncode != 0 or not lines:
                failures += 1
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                print(f"  {case:<27} {size:>13}  failed (exit {proc.returncode}): {tail}")
                continue
            r = json.loads(lines[-1])
            results.append(r)
            peak = r["peak_added_mib"]
            print(f"  {case:<27} {'×'.join(map(str, r['size'])):>13} {r['voxels'] / 1e6:6.1f} {r['seconds']:8.2f} "
                  f"{r['voxels'] / r['seconds'] / 1e6:7.2f} "
                  + (f"{peak:9.0f} {peak / r['input_mib']:8.2f}" if peak is not None else
                     f"{r['peak_rss_mib']:9.0f}   (peak RSS since start)"), flush=True)
        voxels = [r["voxels"] for r in results]
        b_time = fit_exponent(voxels, [r["seconds"] for r in results])
        b_mem = fit_exponent(voxels, [r["peak_added_mib"] for r in results])
        if b_time is not None:
            print(f"  {case:<27} fitted exponent (cost ∝ voxels^b): time b = {b_time:.2f}"
                  + (f", peak memory b = {b_mem:.2f}" if b_mem is not None else ""))
    print("# b > 1 would mean worse than linear; see the docstring for what each step is expected to do and why")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
