"""Self-supervised pretraining of a 2D classifier's network on unlabelled training slices (SimCLR), as an experiment.

    python bench/ssl_pretrain.py CONFIG --pool CONFIG [CONFIG ...] --out WEIGHTS.safetensors [--epochs 40] [--batch 64]
                                 [--threads 2] [--temperature 0.2]

The network of ``CONFIG`` (``model/name`` and ``kwargs``, its last layer widened to a 128-wide embedding) learns to
tell each image's two random views from every other image's in the batch (NT-Xent loss, Chen et al. 2020, through a
small projection head). The images are the *train* splits of the ``--pool`` configs, each standardised by its own
config's ``input/slices`` at ``CONFIG``'s ``data/size``; labels are never read and no val split is used, so a model
fine-tuned from these weights keeps its val split unseen. The views: the config-level batch augmentation
(:class:`MedDeepRecogLib.training.augment.BatchAugment`: flip, rotation, zoom, noise, intensity shift, contrast) plus
a random shift of up to 10 % of the side. The weights (head dropped) go to ``WEIGHTS`` (``.safetensors``, or ``.pt``
of plain tensors) for ``model/init``. A checkpoint after every epoch (``WEIGHTS.ckpt``, tensors and numbers only,
loaded with ``weights_only``) lets an interrupted run continue where it stopped.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MedDeepRecog"))

VIEW_AUGMENTATION = {"flip": {"prob": 0.5, "axes": [1]}, "rotate": {"prob": 0.8, "degrees": 20},
                     "zoom": {"prob": 1.0, "min": 0.75, "max": 1.3}, "noise": {"prob": 0.5, "std": 0.05},
                     "intensity_shift": {"prob": 0.8, "offset": 0.2}, "gamma": {"prob": 0.8, "min": 0.6, "max": 1.6}}


def pool_images(configs: list[Path], size: list[int]) -> np.ndarray:
    """The train images of every config, standardised by its own ``input/slices`` at ``size``: (N, 1, H, W)."""
    from MedDeepRecogLib.commands import register_training_blocks
    from MedDeepRecogLib.training.config import load_config, resolve_data_path
    from MedDeepRecogLib.training.data import load_train_val

    register_training_blocks()
    out = []
    for path in configs:
        cfg = load_config(path)
        cfg.data.size = list(size)
        data = load_train_val(cfg, resolve_data_path(cfg))
        out.append(data.train.images.astype(np.float32))
        print(f"{path.name}: {len(data.train.images)} train images", flush=True)
    return np.concatenate(out)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss for embeddings (B, D) of two views: each view's partner is its positive, the other 2B - 2 views
    its negatives."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    n = z1.shape[0]
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


def shifted(x: torch.Tensor, rng: np.random.RandomState, fraction: float = 0.1) -> torch.Tensor:
    """Each sample moved by a random whole-pixel shift of up to ``fraction`` of its side (zeros come in)."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    for i in range(len(x)):
        dy, dx = (int(v) for v in rng.randint(-int(fraction * h), int(fraction * h) + 1, size=2))
        ys, yd = (slice(dy, h), slice(0, h - dy)) if dy >= 0 else (slice(0, h + dy), slice(-dy, h))
        xs, xd = (slice(dx, w), slice(0, w - dx)) if dx >= 0 else (slice(0, w + dx), slice(-dx, w))
        out[i, :, yd, xd] = x[i, :, ys, xs]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("--pool", type=Path, nargs="+", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--temperature", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from MedDeepRecogLib.commands import register_training_blocks
    from MedDeepRecogLib.models import build_model
    from MedDeepRecogLib.models.transfer import head_module_name
    from MedDeepRecogLib.training.augment import BatchAugment, _generator_state, _set_generator_state
    from MedDeepRecogLib.training.config import load_config

    register_training_blocks()
    cfg = load_config(args.config)
    x_all = torch.from_numpy(pool_images(args.pool, cfg.data.size))
    torch.manual_seed(0)
    net = build_model(cfg.model.name, in_channels=1, num_classes=128, **cfg.model.kwargs)
    head = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(128, 64))
    params = list(net.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = len(x_all) // args.batch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch,
                                                pct_start=0.05)
    views = [BatchAugment(VIEW_AUGMENTATION, spatial_dims=2, seed=s) for s in (1, 2)]
    rng = np.random.RandomState(0)
    ckpt, start = args.out.with_name(args.out.name + ".ckpt"), 0
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=True)
        net.load_state_dict(state["net"]), head.load_state_dict(state["head"]), opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"]), _set_generator_state(rng, state["rng"])
        for v, s in zip(views, state["views"]):
            v.set_state(s)
        start = state["epoch"]
        print(f"resumed after epoch {start}", flush=True)
    net.train(), head.train()
    net = net.to(memory_format=torch.channels_last)
    for epoch in range(start, args.epochs):
        t, total = time.perf_counter(), 0.0
        order = rng.permutation(len(x_all))
        for s in range(steps_per_epoch):
            xb = x_all[order[s * args.batch:(s + 1) * args.batch]]
            a, b = (shifted(v(xb), rng).contiguous(memory_format=torch.channels_last) for v in views)
            loss = nt_xent(head(net(a)), head(net(b)), args.temperature)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        print(f"epoch {epoch + 1}/{args.epochs}: loss {total / steps_per_epoch:.4f} ({time.perf_counter() - t:.0f} s)",
              flush=True)
        torch.save({"net": net.state_dict(), "head": head.state_dict(), "opt": opt.state_dict(),
                    "sched": sched.state_dict(), "rng": _generator_state(rng), "views": [v.get_state() for v in views],
                    "epoch": epoch + 1}, ckpt)
    head_prefix = f"{head_module_name(net)}."  # the 128-wide embedding layer; a classifier gets its own head
    weights = {k: v.contiguous() for k, v in net.state_dict().items() if not k.startswith(head_prefix)}
    if args.out.suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(weights, str(args.out))
    else:
        torch.save(weights, args.out)
    print(f"wrote {args.out} ({len(weights)} tensors)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
