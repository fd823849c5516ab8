"""Samples/s of the segmentation fine-tuning loop next to a plain MONAI-tutorial-style loop, same data, one run.

Both loops train the same network (``monai_unet``, default fine-tuning width) with the same loss (DiceCE), optimiser
(AdamW), patch size (64³), batch (8 patches) and the same augmentation (pos/neg patch crop, affine, intensity,
contrast, noise, smoothing). They differ only in the data path:

- plain (as in MONAI's tutorials): ``Dataset`` of file dicts + ``DataLoader``; every step runs ``LoadImaged``,
  ``EnsureChannelFirstd``, ``Orientationd``, ``Spacingd``, ``ScaleIntensityRanged``, ``MapLabelValued`` and
  ``RandCropByPosNegLabeld(num_samples=4)`` on the files (batch 2 volumes × 4 patches = 8);
- ours (``finetune.seg_training.CachedPatchDataset`` + the fine-tuning loop's layout): the cases are read, resampled
  and normalised once, and the foreground/background indices computed once; steps only crop and augment in-memory
  tensors; model and batches use ``torch.channels_last_3d`` (oneDNN's faster 3D-convolution layout on CPU), and the
  fine-tuning loop runs eager and, in runs long enough for ``training/compile: auto`` (``training/compilation.py``),
  compiled with ``torch.compile`` (and in shorter runs once inductor's disk cache holds the compiled network). Both
  are timed. The compile is a one-off cost, timed apart in the warm-up step (the first round's is cold unless the
  cache already holds the graph; later rounds find it there, as a radiologist's second fine-tune does); whole runs of
  the default fine-tune (20 epochs x 4 steps) and of five times as many steps are then estimated with it, and with
  what ``auto`` would choose. On the CPU the rounds are run twice: with the C allocator as the process starts, then
with freed memory kept for reuse as ``finetune`` sets it (``allocator.py``; irreversible within a process, hence
second) in both loops; the ratio a user sees (``finetune`` against a plain script) is printed from the two.

Data: the real TotalSegmentator CT examples in ``../shared/data`` (``example_ct_sm`` + the 20-slice DICOM series,
converted once to NIfTI before timing, with their label maps; liver / spleen / kidneys), resampled to 1.5 mm. Prints samples/s of both, the ratio, the data-only
rate of both loaders, and, on CUDA, the same with AMP (there eager only, as ``auto`` runs it), with the GPU's busy
share (NVML) and peak memory while each loop trains.

    python bench/finetune.py [--steps 4] [--threads 1] [--device cpu|cuda|auto] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from gpu_monitor import GpuUtilisation, backward_and_step, synchronise
from bench_args import at_least_one, bench_device  # bench/ is the script's folder, first on sys.path


SHARED = Path(os.environ.get("MEDDEEPRECOG_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
TS = SHARED / "totalsegmentator_examples"
CLASSES = {"liver": [5], "spleen": [1], "kidney": [2, 3]}  # TotalSegmentator 'total' ids → our classes
SPACING = (1.5, 1.5, 1.5)
PATCH = (64, 64, 64)
BATCH = 8


_DICOM_NIFTI: list[Path] = []


def _cases():
    """The two CT cases as files both loops read; the DICOM series is converted once to NIfTI (MONAI's
    ``LoadImaged`` needs the ``itk`` package for DICOM folders, which is not installed; SimpleITK is)."""
    if not _DICOM_NIFTI:
        import tempfile

        import SimpleITK as sitk

        from MedDeepRecogLib.io import read_image

        out = Path(tempfile.mkdtemp(prefix="bench_finetune_")) / "example_ct_dicom.nii.gz"
        sitk.WriteImage(read_image(TS / "example_ct_dicom"), str(out))
        _DICOM_NIFTI.append(out)
    return [("ct_sm", TS / "example_ct_sm.nii.gz", TS / "example_seg.nii.gz"),
            ("dicom", _DICOM_NIFTI[0], TS / "example_seg_dicom.nii.gz")]


def _augment(keys):
    from monai import transforms as T

    return [
        T.RandAffined(keys, prob=0.7, rotate_range=(0.26,) * 3, scale_range=(0.15,) * 3, translate_range=(4,) * 3,
                      mode=("bilinear", "nearest"), padding_mode="zeros", spatial_size=PATCH, cache_grid=True),
        T.RandScaleIntensityd("image", factors=0.15, prob=0.5),
        T.RandShiftIntensityd("image", offsets=0.1, prob=0.5),
        T.RandAdjustContrastd("image", gamma=(0.7, 1.5), prob=0.3),
        T.RandGaussianNoised("image", std=0.03, prob=0.3),
        T.RandGaussianSmoothd("image", sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0), prob=0.15),
    ]


def plain_loader():
    """MONAI tutorial style: transforms from files on every step (spleen-tutorial pipeline, num_samples=4)."""
    import torch
    from monai import transforms as T
    from monai.data import DataLoader, Dataset

    keys = ["image", "label"]
    orig, target = [], []
    for cls_index, ids in enumerate(CLASSES.values(), start=1):
        orig += ids
        target += [cls_index] * len(ids)
    other = [v for v in range(1, 118) if v not in orig]  # every other TotalSegmentator structure → background
    transform = T.Compose([
        T.LoadImaged(keys),
        T.EnsureChannelFirstd(keys),
        T.Orientationd(keys, axcodes="RAS"),
        T.Spacingd(keys, pixdim=SPACING, mode=("bilinear", "nearest")),
        T.ScaleIntensityRanged("image", a_min=-200, a_max=300, b_min=0.0, b_max=1.0, clip=True),
        T.MapLabelValued("label", orig + other, target + [0] * len(other)),
        T.SpatialPadd(keys, spatial_size=PATCH),
        T.RandCropByPosNegLabeld(keys, label_key="label", spatial_size=PATCH, pos=2, neg=1, num_samples=4,
                                 image_key="image", image_threshold=0),
        *_augment(keys),
        T.EnsureTyped(keys, dtype=(torch.float32, torch.long), track_meta=False),
    ])
    files = [{"image": str(img), "label": str(seg)} for _, img, seg in _cases()] * 64
    return DataLoader(Dataset(files, transform), batch_size=BATCH // 4, shuffle=True, num_workers=0)


def cached_loader():
    """Ours: read + resample + normalise once, then in-memory patch sampling with the same augmentation."""
    import torch

    from MedDeepRecogLib.finetune.manifest import Case, parse_class_map
    from MedDeepRecogLib.finetune.seg_training import CachedPatchDataset, prepare_volume
    from MedDeepRecogLib.finetune.segment_data import load_case

    names = {}
    table = json.loads((TS / "label_names_total_and_total_mr.json").read_text(encoding="utf-8"))["total"]
    for cls, ids in CLASSES.items():
        for i in ids:
            names[table[str(i)]] = cls
    class_map = parse_class_map(names)
    volumes = []
    for case_id, img, seg in _cases():
        item = load_case(Case(case_id, img, seg, label_table=f"{TS / 'label_names_total_and_total_mr.json'}#total"),
                         class_map)
        volumes.append(prepare_volume(item, list(CLASSES), SPACING, None))
    dataset = CachedPatchDataset(volumes, PATCH, len(CLASSES) + 1, length=BATCH * 64)
    return torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=0)


def _batches(loader):
    for batch in loader:
        yield batch["image"], batch["label"]


def data_rate(loader_fn, steps: int) -> tuple[float, float]:
    """(setup seconds, patches/s of the data path alone)."""
    t0 = time.perf_counter()
    loader = loader_fn()
    it = _batches(loader)
    next(it)  # first batch includes lazy setup
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    n = 0
    for _ in range(steps):
        x, _ = next(it)
        n += len(x)
    return setup, n / (time.perf_counter() - t0)


def train_rate(loader_fn, steps: int, device: str, amp: bool, channels_last: bool,
               compile_step: bool = False) -> tuple[float, float, float, str]:
    """(setup seconds, training samples/s over ``steps`` optimiser steps after one warm-up step, warm-up seconds,
    the GPU's busy share and peak memory over those steps (``gpu_monitor.py``; says so on the CPU)).

    ``channels_last``: the fine-tuning loop's memory layout (``torch.channels_last_3d``) for model and batches.
    ``compile_step``: the network compiled as the fine-tuning loop compiles it (the warm-up step compiles).
    """
    import torch
    from monai.losses import DiceCELoss

    from MedDeepRecogLib.models.segmentation import monai_unet

    torch.manual_seed(0)
    model = monai_unet(1, len(CLASSES) + 1).to(device)
    layout = torch.channels_last_3d if channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    net = model
    if compile_step:
        from MedDeepRecogLib.training.compilation import compiled

        net = compiled(model)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    scaler = torch.amp.GradScaler("cuda") if amp else None
    t0 = time.perf_counter()
    loader = loader_fn()
    it = _batches(loader)
    setup = time.perf_counter() - t0

    def step():
        x, y = next(it)
        x, y = x.to(device, non_blocking=True, memory_format=layout), y.to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            loss = loss_fn(net(x).float(), y)
        backward_and_step(loss, opt, scaler)
        return len(x)

    t0 = time.perf_counter()
    step()  # warm-up (allocator, cuDNN autotune, first-batch setup; the compile)
    synchronise(device)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    with GpuUtilisation(device) as util:
        n = sum(step() for _ in range(steps))  # leaving the block waits for the GPU
    return setup, n / (time.perf_counter() - t0), warm, util.summary()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=at_least_one, default=4, help="timed optimiser steps per loop (after a warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine is shared)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds of plain and ours; every round's ratio is printed, and the smallest")
    args = parser.parse_args()
    import logging

    import torch

    logging.disable(logging.WARNING)  # unmapped-segment notices of the 41-structure label maps
    torch.set_num_threads(args.threads)
    if not TS.exists():
        raise SystemExit(f"shared data not found at {TS}")
    device = bench_device(args.device)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, patch {PATCH}, "
          f"batch {BATCH}, spacing {SPACING} mm, cases: ct_sm + 20-slice DICOM CT (real, TotalSegmentator examples)")
    setup_p, data_p = data_rate(plain_loader, args.steps)
    setup_c, data_c = data_rate(cached_loader, args.steps)
    print(f"data path only   plain (files each step): {data_p:8.2f} patches/s | cached (ours): {data_c:8.2f} patches/s "
          f"| ratio {data_c / data_p:5.1f}x  (setup: plain {setup_p:.1f}s, cached {setup_c:.1f}s incl. one-time "
          "read+resample)")
    rows = [("cpu", False)] if device == "cpu" else [(device, False), (device, True)]
    from MedDeepRecogLib.contract import FINETUNE_EPOCHS
    from MedDeepRecogLib.models.segmentation import monai_unet
    from MedDeepRecogLib.training.compilation import decide_compile

    default_steps = FINETUNE_EPOCHS * (32 // BATCH)  # the default fine-tune: 20 epochs of 32 patches
    runs = (default_steps, 5 * default_steps)  # whole runs estimated with the compile included
    phases = [("allocator as the process starts", False)]
    if device == "cpu":
        phases.append(("freed memory kept for reuse, as `finetune` sets it (allocator.py), in both loops", True))
    medians = {}
    for phase, keep in phases:
        if keep:  # cannot be undone within a process, so it comes second
            from MedDeepRecogLib.allocator import reuse_freed_memory

            if not reuse_freed_memory():
                print("(this C library takes no mallopt setting: the second phase is skipped)")
                break
        print(f"-- {phase}")
        eager_ratios, compiled_ratios, plains, eagers, fasts = [], [], [], [], []
        for dev, amp in rows:
            tag = f"{dev}{' AMP' if amp else ''}"
            unet = monai_unet(1, len(CLASSES) + 1)
            auto = {n: decide_compile("auto", unet, torch.device(dev), n, False) for n in runs}
            for r in range(args.rounds):
                _, plain, _, util_plain = train_rate(plain_loader, args.steps, dev, amp, channels_last=False)
                _, eager, _, util_eager = train_rate(cached_loader, args.steps, dev, amp, channels_last=True)
                eager_ratios.append(eager / plain)
                plains.append(plain)
                eagers.append(eager)
                if dev != "cpu":
                    # training/compile: auto compiles only on the CPU; the fine-tuning loop runs eager on CUDA
                    print(f"training {tag} round {r + 1}/{args.rounds}: plain MONAI-tutorial loop {plain:7.2f} "
                          f"samples/s ({util_plain}) | fine-tuning loop (cached + channels-last) {eager:7.2f} "
                          f"({eager / plain:4.2f}x; {util_eager})", flush=True)
                    continue
                _, fast, warm, _ = train_rate(cached_loader, args.steps, dev, amp, channels_last=True,
                                              compile_step=True)
                compiled_ratios.append(fast / plain)
                fasts.append(fast)
                whole = []
                for n in runs:
                    t_plain, t_eager = n * BATCH / plain, n * BATCH / eager
                    t_fast = warm + (n - 1) * BATCH / fast
                    choice = ("compiled" if auto[n].compile else "compiled once the compile cache holds it, eager "
                              "before" if auto[n].if_cache_holds else "eager")
                    whole.append(f"{n} steps: plain {t_plain:.0f} s, eager {t_eager:.0f} s, compiled {t_fast:.0f} s "
                                 f"(auto: {choice})")
                print(f"training {tag} round {r + 1}/{args.rounds}: plain MONAI-tutorial loop {plain:7.2f} samples/s | "
                      f"fine-tuning loop eager (cached + channels-last) {eager:7.2f} ({eager / plain:4.2f}x) | "
                      f"compiled {fast:7.2f} ({fast / plain:4.2f}x), its first step (the compile) {warm:4.1f} s | "
                      f"whole runs: {'; '.join(whole)}", flush=True)
        for name, ratios in (("eager", eager_ratios), ("compiled", compiled_ratios)):
            if ratios:
                print(f"fine-tuning loop {name}: smallest ratio over {len(ratios)} round(s) {min(ratios):.2f}x "
                      f"(all: {', '.join(f'{v:.2f}' for v in ratios)})")
        medians[keep] = {k: statistics.median(v) for k, v in (("plain", plains), ("eager", eagers), ("compiled", fasts))
                         if v}
    if True in medians:
        plain_default = medians[False]["plain"]
        print("as a user runs them, `meddeeprecog finetune` (memory kept) against a plain tutorial script (allocator "
              "as it starts), medians: " + ", ".join(f"{k} {v:.2f} vs {plain_default:.2f} samples/s "
                                                     f"({v / plain_default:.2f}x)"
                                                     for k, v in medians[True].items() if k != "plain"))
    print(json.dumps({"device": device, "threads": torch.get_num_threads(), "data_plain_patches_s": round(data_p, 3),
                      "data_cached_patches_s": round(data_c, 3)}))


if __name__ == "__main__":
    main()
