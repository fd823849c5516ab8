"""Classify benchmark: a CT-sized volume end to end, and Grad-CAM's cost next to MONAI's GradCAM.

    python bench/classify.py [--size 512 512 300] [--model body-region] [--repeats 3] [--threads 2]
                             [--device cpu|cuda|auto]

Prints, for a synthetic int16 CT of ``--size`` (x, y, z) voxels written as uncompressed NRRD:
- end-to-end time (read, preprocess, predict + Grad-CAM, heatmap resampled onto the scan grid, write NRRD/PNG/JSON),
  per stage, best of ``--repeats``;
- peak resident memory added by the run (Linux ``/proc/self/status`` VmHWM after resetting it through
  ``/proc/self/clear_refs``), as a multiple of the input's size in memory;
- the heatmap's cost as a multiple of a plain forward pass on the same slice batch: our same-pass Grad-CAM
  (``explain/gradcam.py``) and MONAI's ``GradCAM`` in the same run (interleaved rounds, medians), with their ratio.
Targets (2-core CPU): <= 3 s end to end, heatmap <= 1.2x a forward pass, peak memory <= 3x the input.
On CUDA (``--device cuda``) the model runs on the GPU (reading, resampling and writing stay on the CPU) and the
GPU's peak allocated memory is printed too.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from gpu_monitor import synchronise
from bench_args import at_least_one, bench_device  # bench/ is the script's folder, first on sys.path


def proc_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def synthetic_ct(size_xyz, seed: int = 0):
    """An int16 CT-like volume in HU: air, an elliptic body with soft tissue, a spine and noise; 0.8x0.8x1.5 mm."""
    import SimpleITK as sitk

    nx, ny, nz = size_xyz
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(-1, 1, ny, dtype=np.float32), np.linspace(-1, 1, nx, dtype=np.float32),
                         indexing="ij")
    body = (xx / 0.8) ** 2 + (yy / 0.6) ** 2 < 1
    spine = (xx ** 2 + (yy - 0.35) ** 2) < 0.01
    base = np.where(body, 40, -1000).astype(np.int16)
    base[spine] = 700
    arr = np.empty((nz, ny, nx), dtype=np.int16)
    noise = rng.normal(0, 15, size=(8, ny, nx)).astype(np.int16)
    for z in range(nz):
        arr[z] = base + noise[z % 8]
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((0.8, 0.8, 1.5))
    image.SetOrigin((-200.0, -180.0, -400.0))
    return image


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, nargs=3, default=[512, 512, 300], metavar=("X", "Y", "Z"))
    ap.add_argument("--model", default="body-region", help="package id/path (default: bundled body-region)")
    ap.add_argument("--repeats", type=at_least_one, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--no-trust", action="store_true",
                    help="classify without the faithfulness score and uncertainty block (the figures before them)")
    args = ap.parse_args(argv)

    import SimpleITK as sitk
    import torch

    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    from MedDeepRecogLib.explain.gradcam import explained_forward, plain_forward
    from MedDeepRecogLib.inference.classify import classify_scan, model_for, target_layer_of, write_outputs
    from MedDeepRecogLib.inference.model_input import slices_from_image
    from MedDeepRecogLib.packages import load_package

    device = bench_device(args.device)
    on_cuda = device.startswith("cuda")

    package = load_package(args.model)
    tmp = Path(tempfile.mkdtemp(prefix="bench_classify_"))
    try:
        image = synthetic_ct(args.size)
        scan = tmp / "ct.nrrd"
        sitk.WriteImage(image, str(scan), False)
        input_bytes = image.GetNumberOfPixels() * image.GetSizeOfPixelComponent()
        del image
        # Warm-up on a small volume (torch kernels, model build, matplotlib import) so timings are steady state.
        small = tmp / "small.nrrd"
        sitk.WriteImage(synthetic_ct((64, 64, 8)), str(small), False)
        write_outputs(classify_scan(small, package, device=device), tmp / "warm")
        if on_cuda:
            torch.cuda.reset_peak_memory_stats()

        stages: dict[str, list[float]] = {}
        totals, peaks = [], []
        for r in range(args.repeats):
            out = tmp / f"out{r}"
            base_rss = proc_kb("VmRSS")
            can_peak = reset_peak()
            t = time.perf_counter()
            result = classify_scan(scan, package, explain="gradcam", device=device,
                                   faithfulness=not args.no_trust, uncertainty="none" if args.no_trust else "auto")
            write_outputs(result, out)
            totals.append(time.perf_counter() - t)
            if can_peak:
                peaks.append((proc_kb("VmHWM") - base_rss) * 1024)
            for k, v in result.timing_s.items():
                stages.setdefault(k, []).append(v)
            del result
            shutil.rmtree(out)

        # Heatmap cost on the model's real input for this scan: the slice batch.
        image = sitk.ReadImage(str(scan))
        inp = slices_from_image(image, package.input_spec)
        del image
        gpu_peak = torch.cuda.max_memory_allocated() if on_cuda else None
        model = model_for(package, device)
        layer = target_layer_of(package, model)
        x = torch.from_numpy(inp.x).to(device)
        from monai.visualize import GradCAM

        # MONAI's GradCAM hooks the module it is given for good: on its own copy, so the plain forward and ours are
        # not timed with its hooks firing (they added about 20 % to the forward pass)
        monai_cam = GradCAM(nn_module=copy.deepcopy(model), target_layers=layer)
        built = package.build_model(device).eval()  # the network as built, without classify's inference fusion
        runs = {"fwd": lambda: plain_forward(model, x),
                "fwd_built": lambda: plain_forward(built, x),
                "ours": lambda: explained_forward(model, x, layer, method="gradcam"),
                "monai": lambda: monai_cam(x)}
        # Interleaved rounds, median per method: on a shared machine, back-to-back blocks see different loads.
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(max(9, args.repeats * 5)):
            for k, fn in runs.items():
                synchronise(device)
                t = time.perf_counter()
                fn()
                synchronise(device)
                times[k].append(time.perf_counter() - t)
        t_fwd, t_ours, t_monai = (statistics.median(times[k]) for k in ("fwd", "ours", "monai"))
        for p in model.parameters():
            p.grad = None

        print(f"classify benchmark: {package.id}@{package.version}, volume {args.size[0]}x{args.size[1]}x{args.size[2]} "
              f"int16 ({input_bytes / 2**20:.0f} MiB), {device}"
              f"{' (' + torch.cuda.get_device_name() + ')' if on_cuda else ''}, {torch.get_num_threads()} torch "
              f"threads, best of {args.repeats}"
              + (", without faithfulness/uncertainty" if args.no_trust else ""))
        print(f"  end to end (read .. write): {min(totals):.2f} s   (target <= 3 s)  runs: "
              + ", ".join(f"{t:.2f}" for t in totals))
        print("  stages (best): " + ", ".join(f"{k} {min(v):.3f}s" for k, v in stages.items()))
        if peaks:
            print(f"  peak memory added: {max(peaks) / 2**20:.0f} MiB = {max(peaks) / input_bytes:.2f}x the input "
                  f"(target <= 3x)")
        else:
            print("  peak memory: /proc/self/clear_refs not writable here; not measured")
        if gpu_peak is not None:
            print(f"  peak GPU memory allocated by classify: {gpu_peak / 2**20:.0f} MiB")
        print(f"  slice batch {tuple(x.shape)}, target layer {layer}; medians of {len(times['fwd'])} interleaved rounds")
        print(f"  plain forward      {t_fwd * 1e3:8.1f} ms  1.00x  (classify's network, fused for inference)")
        t_built = statistics.median(times["fwd_built"])
        print(f"  as built, unfused  {t_built * 1e3:8.1f} ms  {t_built / t_fwd:.2f}x forward")
        print(f"  ours Grad-CAM      {t_ours * 1e3:8.1f} ms  {t_ours / t_fwd:.2f}x forward  (target <= 1.2x)")
        print(f"  MONAI GradCAM      {t_monai * 1e3:8.1f} ms  {t_monai / t_fwd:.2f}x forward")
        print(f"  MONAI / ours       {t_monai / t_ours:.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
