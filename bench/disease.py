"""Disease-model benchmark: what a radiologist waits for, and training throughput next to a plain MONAI loop.

    python bench/disease.py [--model brain-tumour-mri] [--threads 2] [--repeats 3] [--train-steps 20]
                            [--device cpu|cuda|auto] [--data NPZ]

Prints, on this machine, in one run:
1. **One 512x512 slice** (the brain MR sample's tumour slice, resampled to 512x512 and written as a 2D NRRD):
   ``classify`` with Grad-CAM, faithfulness (deletion/insertion) and the out-of-domain check, best of ``--repeats``
   (model loaded once beforehand, as in a batch or the Slicer worker); then the same with the outputs written
   (heatmap NRRD, overlay PNG, JSON). Target: <= 0.3 s.
2. **A 512x512x150 volume slice by slice** (the same scan resampled to 512x512x150, int16 NRRD on disk): read,
   standardise, classify its slices, explain, check, resample the heatmap onto the scan, write. Target: <= 3 s.
   Anchor in the same run: a plain forward pass of the model over the same slice batch.
3. **Training throughput** (images/s) on the model's own training images, same network and batch size:
   our loop (``training.classification.fit_classifier`` on ``training.loop.fit``: tensors decoded once, batch
   augmentation, channels-last) vs a plain MONAI-tutorial loop (``monai.data.Dataset`` with per-sample
   ``Compose`` of the same random transforms, a ``DataLoader``, default memory layout), interleaved, median of the
   rounds; the ratio is the figure to read (machines are noisy). On the CPU the rounds are run twice: with the C
   allocator as the process starts, then with freed memory kept for reuse as ``train`` sets it (``allocator.py``;
   irreversible within a process, hence second) in both loops, and the ratio a user sees (``train`` against a plain
   script) is printed from the two. Then where the plain loop's time goes (its per-sample data path, its network
   step in the default layout and in channels-last, each timed alone), which bounds the ratio any data path can give
   on this network: (data + network) / channels-last network. Then how close the step is to the CPU's compute
   limit: the network's floating-point work per image (``torch.utils.flop_counter``: convolutions and the linear
   layer, forward and backward; batch norms and ReLUs not counted), our loop's achieved rate (that work times our
   images/s), and, as the attainable rate of these cores at these threads, a large fp32 matrix product (2048^3, the
   best of 5) measured in the same run. A loop whose achieved rate is a large share of the product's is bound by
   the network's arithmetic, so a faster data path cannot raise the ratio further.

On CUDA (``--device cuda``) parts 1 and 2 run the model there, and in part 3 both loops use fp16 mixed precision
(ours through ``training/amp: auto``, the plain loop with ``torch.autocast`` + ``GradScaler`` as in MONAI's AMP
tutorial); the GPU's busy share while each loop runs (NVML, ``gpu_monitor.py``) and its peak memory are printed.
``--data`` points part 3 at another copy of the training file (a subset carried to a GPU machine).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path


from gpu_monitor import GpuUtilisation, backward_and_step, synchronise
from bench_args import at_least_one, bench_device  # bench/ is the script's folder, first on sys.path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MedDeepRecog"))


def _sample_slices(tmp: Path):
    """(2D NRRD path of a 512x512 tumour slice, 3D NRRD path of a 512x512x150 volume) from the bundled brain MR."""
    import SimpleITK as sitk

    from MedDeepRecogLib.resources import sample_path

    image = sitk.ReadImage(str(sample_path("brain1_mr.nrrd")))
    size = image.GetSize()
    spacing = image.GetSpacing()
    out_spacing = (size[0] * spacing[0] / 512, size[1] * spacing[1] / 512, size[2] * spacing[2] / 150)
    ref = sitk.Image([512, 512, 150], image.GetPixelID())
    ref.SetSpacing(out_spacing)
    ref.SetOrigin(image.GetOrigin())
    ref.SetDirection(image.GetDirection())
    volume = sitk.Resample(image, ref, sitk.Transform(), sitk.sitkLinear, 0, image.GetPixelID())
    vol_path = tmp / "volume_512x512x150.nrrd"
    sitk.WriteImage(volume, str(vol_path), False)
    slice_path = tmp / "slice_512.nrrd"
    sitk.WriteImage(volume[:, :, 84], str(slice_path), False)  # through the tumour (brain1 label: slices 11-17/25)
    return slice_path, vol_path


def _best(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), times


def _forward_seconds(model, x, device: str, repeats: int) -> float:
    """Best of ``repeats`` forward passes of ``model`` over ``x`` (after one warm-up), device work included."""
    import torch

    def forward():
        model(x)
        synchronise(device)

    with torch.inference_mode():
        forward()
        return _best(forward, repeats)[0]


def bench_inference(model_id: str, repeats: int, device: str = "cpu") -> None:
    import torch

    from MedDeepRecogLib.inference.classify import classify_scan, model_for, write_outputs
    from MedDeepRecogLib.inference.model_input import slices_from_image
    from MedDeepRecogLib.io import read_image
    from MedDeepRecogLib.packages import load_package

    package = load_package(model_id)
    tmp = Path(tempfile.mkdtemp(prefix="bench_disease_"))
    try:
        slice_path, vol_path = _sample_slices(tmp)
        classify_scan(slice_path, package, device=device)  # load the model once (cached), as the worker does
        best, runs = _best(lambda: classify_scan(slice_path, package, device=device, uncertainty="none"), repeats)
        print(f"1. one 512x512 slice, {package.id}@{package.version}: classify + Grad-CAM + faithfulness + domain "
              f"check {best:.3f} s (runs {', '.join(f'{t:.3f}' for t in runs)}); target <= 0.3 s")
        best_w, runs_w = _best(lambda: write_outputs(classify_scan(slice_path, package, device=device,
                                                                   uncertainty="none"), tmp / "out1"), repeats)
        print(f"   with outputs written (NRRD, PNG, JSON): {best_w:.3f} s (runs {', '.join(f'{t:.3f}' for t in runs_w)})")

        def volume_run():
            result = classify_scan(vol_path, package, device=device, uncertainty="none")
            write_outputs(result, tmp / "out2")
            return result

        best_v, runs_v = _best(volume_run, repeats)
        result = volume_run()
        stages = ", ".join(f"{k} {v:.2f}" for k, v in result.timing_s.items())
        print(f"2. 512x512x150 volume slice by slice ({len(result.per_slice)} slices classified): end to end "
              f"{best_v:.3f} s (runs {', '.join(f'{t:.3f}' for t in runs_v)}); stages of the last run: {stages}; "
              f"target <= 3 s")
        x = torch.from_numpy(slices_from_image(read_image(vol_path), package.input_spec).x).to(device)
        # classify's network is fused for inference (models/eval_fusion.py); the network as built runs beside it
        fwd = _forward_seconds(model_for(package, device), x, device, repeats)
        print(f"   anchor: one plain forward pass over the same {len(x)} slices {fwd:.3f} s; end to end = "
              f"{best_v / fwd:.1f}x a forward pass")
        fwd_built = _forward_seconds(package.build_model(device).eval(), x, device, repeats)
        print(f"   the same pass without inference fusion (batch norms unfolded, ReLUs not in place): "
              f"{fwd_built:.3f} s; fused {fwd_built / fwd:.2f}x faster")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench_training(config: Path, steps: int, rounds: int = 3, device: str = "cpu",
                   data_path: Path | None = None) -> None:
    import torch
    from monai.data import DataLoader, Dataset
    from monai.transforms import Compose

    from MedDeepRecogLib.models import build_model
    from MedDeepRecogLib.training.augment import BatchAugment, monai_transforms
    from MedDeepRecogLib.commands import register_training_blocks
    from MedDeepRecogLib.training.config import load_config, resolve_data_path
    from MedDeepRecogLib.training.data import load_train_val
    from MedDeepRecogLib.training.classification import fit_classifier, make_loader
    from MedDeepRecogLib.training.loop import FitConfig, Hooks
    from MedDeepRecogLib.training.sections import LoopConfig

    register_training_blocks()  # the config's localisation block
    cfg = load_config(config)
    data = load_train_val(cfg, data_path or resolve_data_path(cfg))
    bs = int(cfg.training.batch_size)
    n = steps * bs
    x, y = data.train.images[:n], data.train.labels[:n]
    k = len(data.class_names)
    utils: dict[str, str] = {}

    def ours() -> float:
        torch.manual_seed(0)
        model = build_model(cfg.model.name, in_channels=1, num_classes=k, **cfg.model.kwargs)
        loader = make_loader(x, y, bs, shuffle=True, seed=0)
        val = make_loader(x[:bs], y[:bs], bs, shuffle=False)
        t = time.perf_counter()
        with GpuUtilisation(device) as util:  # amp "auto": mixed precision on CUDA
            fit_classifier(model, loader, val, FitConfig(loop=LoopConfig(epochs=1, device=device)),
                           hooks=Hooks(augment=BatchAugment(cfg.augmentation, spatial_dims=2, seed=0)))
        utils["ours"] = util.summary()
        return len(x) / (time.perf_counter() - t)

    def tutorial_loader():
        # the MONAI tutorial pattern: per-sample dict-free transforms in a Dataset, a DataLoader
        augment = monai_transforms(cfg.augmentation, spatial_dims=2) or Compose([])
        augment.set_random_state(seed=0)
        ds = Dataset([{"x": x[i], "y": int(y[i])} for i in range(len(x))],
                     transform=lambda d: (torch.as_tensor(augment(d["x"])).as_subclass(torch.Tensor), d["y"]))
        return DataLoader(ds, batch_size=bs, shuffle=True, num_workers=0)

    def plain_model():
        torch.manual_seed(0)
        return build_model(cfg.model.name, in_channels=1, num_classes=k, **cfg.model.kwargs)

    def plain_steps(model, batches) -> None:
        # the tutorial's bare loop over ``batches`` (an iterable of (images, labels))
        amp = device.startswith("cuda")  # the tutorial's AMP recipe on CUDA, as ours uses it there
        scaler = torch.amp.GradScaler("cuda") if amp else None
        model.to(device).train()
        opt = torch.optim.AdamW(model.parameters(), 1e-3)
        loss_fn = torch.nn.CrossEntropyLoss()
        for xb, yb in batches:
            xb, yb = xb.float().to(device), torch.as_tensor(yb).to(device)
            opt.zero_grad()
            with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                loss = loss_fn(model(xb), yb)
            backward_and_step(loss, opt, scaler)

    def plain() -> float:
        model, loader = plain_model(), tutorial_loader()
        t = time.perf_counter()
        with GpuUtilisation(device) as util:
            plain_steps(model, loader)
        utils["plain"] = util.summary()
        return len(x) / (time.perf_counter() - t)

    def plain_parts() -> tuple[float, float, float]:
        """The plain loop's time taken apart, seconds per image: its per-sample data path alone (the same DataLoader,
        no network), its network step alone (the same batches, made beforehand, default layout), and that step in
        channels-last layout (the network and the batches), as our loop runs it. Both loops run the same network,
        so a loop whose data path cost nothing could reach at most (data + network) / channels-last network times
        the plain loop's throughput: the ceiling on the ratio at this network on this machine."""
        t = time.perf_counter()
        batches = [(xb.clone(), yb) for xb, yb in tutorial_loader()]
        data_s = time.perf_counter() - t
        step_s = []
        for layout in (torch.contiguous_format, torch.channels_last):
            model = plain_model().to(memory_format=layout)
            laid = [(xb.contiguous(memory_format=layout), yb) for xb, yb in batches]
            t = time.perf_counter()
            plain_steps(model, laid)
            synchronise(device)
            step_s.append(time.perf_counter() - t)
        return data_s / len(x), step_s[0] / len(x), step_s[1] / len(x)

    def interleaved(what: str) -> tuple[float, float]:
        a, b = [], []
        for _ in range(rounds):
            a.append(ours())
            b.append(plain())
        ma, mb = statistics.median(a), statistics.median(b)
        print(f"3. training throughput, {what}, {cfg.id} network at {list(data.train.images.shape[2:])}, "
              f"batch {bs}, {len(x)} images, {device}, {rounds} interleaved rounds: ours {ma:.1f} images/s "
              f"({', '.join(f'{v:.1f}' for v in a)}), plain MONAI-tutorial loop {mb:.1f} images/s "
              f"({', '.join(f'{v:.1f}' for v in b)}); ratio {ma / mb:.2f}x")
        return ma, mb

    ma, mb = interleaved("C allocator as the process starts")
    parts = [plain_parts() for _ in range(rounds)]
    data_s, net_s, net_cl_s = (statistics.median(p[i] for p in parts) for i in (0, 1, 2))
    print(f"   where the plain loop's time goes ({rounds} rounds, median, ms per image): per-sample data path "
          f"{data_s * 1e3:.2f}, network step {net_s * 1e3:.2f} (channels-last, as ours runs it: "
          f"{net_cl_s * 1e3:.2f}); ours in all {1e3 / ma:.2f}. Ceiling on the ratio at this network, a data path "
          f"that cost nothing in channels-last: {(data_s + net_s) / net_cl_s:.2f}x; ours {ma / mb:.2f}x")
    if not device.startswith("cuda"):
        # the setting cannot be undone within a process, so it comes second
        from MedDeepRecogLib.allocator import reuse_freed_memory

        if reuse_freed_memory():
            mb_default = mb
            ma, mb = interleaved("freed memory kept for reuse, as `train` sets it (allocator.py), in both loops")
            print(f"   as a user runs them, `meddeeprecog train` (memory kept) against a plain tutorial script "
                  f"(allocator as it starts): {ma:.1f} vs {mb_default:.1f} images/s, ratio {ma / mb_default:.2f}x")
        model = build_model(cfg.model.name, in_channels=1, num_classes=k, **cfg.model.kwargs)
        per_image = step_flops(model, torch.as_tensor(x[:bs]).float(), torch.as_tensor(y[:bs]).long()) / bs
        peak = matmul_rate()
        achieved = per_image * ma
        print(f"   compute: {per_image / 1e9:.3f} GFLOP per image (forward + backward); ours achieves "
              f"{achieved / 1e9:.0f} GFLOP/s, {achieved / peak:.0%} of a 2048^3 fp32 matrix product's "
              f"{peak / 1e9:.0f} GFLOP/s on the same threads; the plain loop {per_image * mb / 1e9:.0f} GFLOP/s")
    if device.startswith("cuda"):
        print(f"   {device}, AMP (fp16) in both; last round: ours {utils['ours']}; plain {utils['plain']}")


def step_flops(model, images, labels) -> float:
    """Floating-point operations of one training step (forward, loss, backward) of ``model`` on the batch
    ``images`` ``(B, C, Y, X)``, as ``torch.utils.flop_counter`` counts them (convolutions and matrix products)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model.train()
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(model(images), labels).backward()
    return float(counter.get_total_flops())


def matmul_rate(n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of an ``n``-cubed fp32 matrix product on the current torch threads, the best of ``repeats``: the
    rate these cores attain on dense arithmetic, the anchor for a compute-bound step."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up: threads, allocator
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2.0 * n ** 3 / best


def main(argv=None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="brain-tumour-mri")
    ap.add_argument("--config", default=str(REPO / "configs" / "brain-tumour-mri.yaml"),
                    help="training config whose data and network the throughput part uses")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=at_least_one, default=3)
    ap.add_argument("--train-steps", type=int, default=20, help="training batches per round (0: skip part 3)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--data", type=Path, default=None,
                    help="training images for part 3 (default: the config's data path), e.g. a subset carried to a "
                         "GPU machine")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = bench_device(args.device)
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU"
    print(f"torch {torch.__version__}, {args.threads} thread(s), device {device} ({name})")
    parts = [lambda: bench_inference(args.model, args.repeats, device)]
    if args.train_steps:
        parts.append(lambda: bench_training(Path(args.config), args.train_steps, device=device, data_path=args.data))
    failed = 0
    for part in parts:  # a part that fails (a new device, say) is reported and the others still run
        try:
            part()
        except Exception:  # noqa: BLE001
            traceback.print_exc()
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
