"""What the "trust" features cost, next to their anchors (same run, same model, same input).

Model: ``simple_cnn3d`` with the bundled adrenal-mass-3d architecture (channels 16/32/64) on a batch of one
28^3 volume (or ``--size``). Anchors: one forward pass (inference) and one forward+backward to the input
(the unit of work of a gradient attack). Prints seconds per call and the ratio to the anchor.

    python bench/trust_overhead.py [--size 28] [--repeat 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch
from bench_args import at_least_one  # bench/ is the script's folder, first on sys.path


def best_of(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--repeat", type=at_least_one, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from MedDeepRecogLib.explain.faithfulness import faithfulness_scores
    from MedDeepRecogLib.explain.gradcam import explained_forward
    from MedDeepRecogLib.models import build_model
    from MedDeepRecogLib.robustness import fgsm, pgd
    from MedDeepRecogLib.uncertainty import default_tta, mc_dropout_samples, tta_samples

    torch.manual_seed(0)
    model = build_model("simple_cnn3d", in_channels=1, num_classes=2, channels=[16, 32, 64], hidden=64,
                        dropout=0.3).eval()
    x = torch.rand(1, 1, args.size, args.size, args.size)
    y = torch.tensor([1])

    def forward():
        with torch.no_grad():
            model(x)

    def fwd_bwd():
        xi = x.clone().requires_grad_(True)
        torch.autograd.grad(torch.nn.functional.cross_entropy(model(xi), y), xi)

    t_fwd = best_of(forward, args.repeat)
    t_fb = best_of(fwd_bwd, args.repeat)
    sal = explained_forward(model, x, "features.conv3").maps
    rows = [
        ("forward (anchor)", t_fwd, t_fwd),
        ("forward+backward to input (anchor)", t_fb, t_fb),
        ("FGSM", best_of(lambda: fgsm(model, x, y, 0.05, bounds=(0, 1)), args.repeat), t_fb),
        ("PGD-10", best_of(lambda: pgd(model, x, y, 0.05, steps=10, bounds=(0, 1)), args.repeat), 10 * t_fb),
        ("faithfulness, 10 steps + random ref", best_of(lambda: faithfulness_scores(model, x, sal, 1, steps=10),
                                                       args.repeat), 38 * t_fwd),
        ("MC dropout, 20 samples", best_of(lambda: mc_dropout_samples(model, x, 20), args.repeat), 20 * t_fwd),
        ("TTA, 8 flips", best_of(lambda: tta_samples(model, x, default_tta(3, 8)), args.repeat), 8 * t_fwd),
    ]
    print(f"simple_cnn3d [16, 32, 64], input 1x1x{args.size}^3, {args.threads} thread(s), best of {args.repeat}")
    print(f"{'operation':40s} {'seconds':>10s} {'anchor s':>10s} {'ratio':>7s}")
    for name, t, anchor in rows:
        print(f"{name:40s} {t:10.4f} {anchor:10.4f} {t / anchor:7.2f}")
    print("anchors for the derived rows: FGSM = 1 fwd+bwd, PGD-10 = 10 fwd+bwd, faithfulness = 38 forwards "
          "(4 curves x 11 points sharing their 2 end points), MC dropout = 20 forwards, TTA = 8 forwards")


if __name__ == "__main__":
    main()
