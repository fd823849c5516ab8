"""Forward time of the registry's 3D classifiers on one volume, next to MONAI's ResNet-18-3D (the anchor).

    python bench/models_forward.py [--size 28] [--repeats 5] [--threads 1]

Prints seconds per forward (batch 1, eval mode, no grad) and the ratio to the anchor, same run, same machine.
The bundled adrenal models use ``simple_cnn3d`` and ``cnn_lstm`` at 28^3.
"""

from __future__ import annotations

import argparse
import time

import torch

from MedDeepRecogLib.models import build_model
from bench_args import at_least_one  # bench/ is the script's folder, first on sys.path

CANDIDATES = {
    "simple_cnn3d (adrenal-mass-3d 1.1.0)": ("simple_cnn3d", {"channels": [16, 32, 64], "hidden": 64}),
    "cnn_lstm (adrenal-mass-lstm 1.1.0)": ("cnn_lstm", {"channels": [16, 32, 64], "hidden": 64, "attention_dim": 32}),
    "attention_cnn3d": ("attention_cnn3d", {}),
    "densenet3d (121)": ("densenet3d", {}),
}
ANCHOR = ("resnet3d", {"depth": 18})


def time_forward(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    with torch.no_grad():
        model(x)  # warm-up
        t0 = time.perf_counter()
        for _ in range(repeats):
            model(x)
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--repeats", type=at_least_one, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.rand(1, 1, args.size, args.size, args.size)
    anchor = time_forward(build_model(ANCHOR[0], in_channels=1, num_classes=2, **ANCHOR[1]).eval(), x, args.repeats)
    print(f"input {tuple(x.shape)}, threads {args.threads}, repeats {args.repeats}")
    print(f"{'MONAI resnet18-3D (anchor)':<38} {anchor:8.4f} s  1.00x")
    for label, (name, kw) in CANDIDATES.items():
        if name == "densenet3d" and args.size < 32:  # its four pooling stages need at least 32^3
            continue
        model = build_model(name, in_channels=1, num_classes=2, **kw).eval()
        t = time_forward(model, x, args.repeats)
        params = sum(p.numel() for p in model.parameters())
        print(f"{label:<38} {t:8.4f} s  {t / anchor:5.2f}x of anchor  ({params / 1e3:.0f}k parameters)")


if __name__ == "__main__":
    main()
