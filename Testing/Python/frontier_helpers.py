"""Tiny synthetic data and models shared by the robustness / uncertainty / fusion / faithfulness tests.

Task: 16^3 volumes in [0, 1]; class 1 holds a bright 4^3 cube at a random place, class 0 only noise. A
``simple_cnn3d`` with 4 and 8 channels learns it in a few seconds on one CPU core.
"""

from __future__ import annotations

import functools

import numpy as np
import torch


def blob_data(n: int = 64, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x (n, 1, size, size, size) in [0, 1], y (n,), masks (n, size, size, size) bool)``."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 0.3, size=(n, 1, size, size, size)).astype(np.float32)
    y = np.arange(n) % 2
    masks = np.zeros((n, size, size, size), dtype=bool)
    for i in np.flatnonzero(y):
        z0, y0, x0 = rng.integers(2, size - 6, size=3)
        masks[i, z0:z0 + 4, y0:y0 + 4, x0:x0 + 4] = True
    x[:, 0][masks] = rng.uniform(0.8, 1.0, size=int(masks.sum())).astype(np.float32)
    return torch.from_numpy(x), torch.from_numpy(y).long(), torch.from_numpy(masks)


def tiny_model(seed: int = 0, dropout: float = 0.25) -> torch.nn.Module:
    from MedDeepRecogLib.models import build_model

    torch.manual_seed(seed)
    return build_model("simple_cnn3d", in_channels=1, num_classes=2, channels=(4, 8), hidden=16, dropout=dropout)


def train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int = 60, hook=None,
          seed: int = 0) -> torch.nn.Module:
    """Adam, batch 16, ``steps`` steps; ``hook(model, xb, yb) -> xb`` transforms each batch (adversarial training)."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (16,), generator=g)
        xb, yb = x[idx], y[idx]
        if hook is not None:
            xb = hook(model, xb, yb)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()
    return model.eval()


@functools.lru_cache(maxsize=None)
def trained_blob_model() -> torch.nn.Module:
    """A tiny 3D CNN trained on :func:`blob_data` (cached for the session; copy before modifying)."""
    torch.set_num_threads(1)
    x, y, _ = blob_data(96, seed=1)
    return train(tiny_model(), x, y)


def save_blob_package(dest, *, pipeline=None, modality="CT", version="1.0.0", pkg_id="blob-test"):
    """Save :func:`trained_blob_model` as a ``volume3d`` package (input 16^3, one channel) under ``dest``."""
    from MedDeepRecogLib.packages import save_package

    meta = {"id": pkg_id, "version": version, "task": "classification", "description": "tiny test model",
            "architecture": {"name": "simple_cnn3d",
                             "kwargs": {"in_channels": 1, "num_classes": 2, "channels": [4, 8], "hidden": 16,
                                        "dropout": 0.25}},
            "class_names": ["normal", "mass"], "modality": modality,
            "input": {"kind": "volume3d", "size": [16, 16, 16], "spacing_mm": None, "channels": 1,
                      "pipeline": pipeline or {"steps": []}},
            "explain": {"methods": ["gradcam"], "target_layer": "features.conv2"},
            "provenance": {"data": "synthetic blobs", "command": "frontier_helpers", "seed": 0, "parent": None}}
    return save_package(trained_blob_model(), meta, dest, extra_files={"MODEL_CARD.md": "# blob-test\n"})


def write_blob_scan(path, label: int = 1, seed: int = 0, scale: float = 1.0, offset: float = 0.0):
    """A 16^3 scan (1 mm, identity direction) holding one :func:`blob_data` case of class ``label``."""
    import SimpleITK as sitk

    x, y, _ = blob_data(4, seed=seed)
    i = int(np.flatnonzero(y.numpy() == label)[0])
    img = sitk.GetImageFromArray((x[i, 0].numpy() * scale + offset).astype(np.float32))
    img.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(img, str(path))
    return path


def write_blob_npz(path, n: int = 40, seed: int = 4):
    x, y, _ = blob_data(n, seed=seed)
    np.savez_compressed(path, val_images=x[:, 0].numpy(), val_labels=y.numpy()[:, None],
                        train_images=x[:, 0].numpy(), train_labels=y.numpy()[:, None])
    return path
