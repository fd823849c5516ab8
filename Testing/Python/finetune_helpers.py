"""Tiny synthetic scans with Slicer segmentations for the fine-tuning tests (not a test module itself)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MedDeepRecogLib.io import SegmentSpec, write_image, write_segmentation

TINY_UNET = {"channels": [4, 8], "strides": [2], "num_res_units": 0}
#: A small segmentation fine-tune: a tiny UNet on 16-voxel patches at 3 mm.
SEG = dict(task="segment", patch_size=[16, 16, 16], patches_per_epoch=4, arch_kwargs=TINY_UNET,
           spacing_mm=[3.0, 3.0, 3.0], optimizer={"lr": 3e-3})


def seg_config(epochs: int, **settings):
    """A :data:`SEG` fine-tune of ``epochs`` of 2 patch batches, no early stopping; ``settings`` add or replace."""
    from MedDeepRecogLib.finetune.config import FinetuneConfig

    return FinetuneConfig.from_dict({**SEG, "training": {"epochs": epochs, "batch_size": 2,
                                                          "early_stopping_patience": 0}, **settings})


def synthetic_case(folder: Path, name: str, seed: int = 0, size=(32, 32, 24), spacing=(1.5, 1.5, 2.0),
                   origin=(-20.0, 10.0, 5.0), shift: float = 0.0) -> tuple[Path, Path]:
    """A CT-like volume (HU) with a bright sphere ``organ_a`` and a dark box ``organ_b``; writes
    ``NAME.nii.gz`` and ``NAME.seg.nrrd`` (segment names kept) and returns both paths."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = size
    z, y, x = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    body = ((x - nx / 2) ** 2 / (0.45 * nx) ** 2 + (y - ny / 2) ** 2 / (0.45 * ny) ** 2) < 1
    a = (x - nx * 0.33 - shift) ** 2 + (y - ny * 0.4) ** 2 + ((z - nz / 2) * 1.33) ** 2 < (nx * 0.16) ** 2
    b = (np.abs(x - nx * 0.68 + shift) < nx * 0.1) & (np.abs(y - ny * 0.6) < ny * 0.1) & (np.abs(z - nz / 2) < nz * 0.2)
    hu = np.where(body, 40.0, -1000.0) + 10 * rng.standard_normal(body.shape)
    hu[a] = 150 + 10 * rng.standard_normal(int(a.sum()))
    hu[b] = -90 + 10 * rng.standard_normal(int(b.sum()))
    image = sitk.GetImageFromArray(hu.astype(np.int16))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    labels = np.zeros(hu.shape, np.uint8)
    labels[a] = 1
    labels[b] = 2
    image_path = write_image(image, folder / f"{name}.nii.gz")
    seg_path = write_segmentation(labels, image, [SegmentSpec("organ_a", 1), SegmentSpec("organ_b", 2)],
                                  folder / f"{name}.seg.nrrd")
    return image_path, seg_path


def synthetic_dataset(folder: Path, n: int = 3, manifest: bool = True) -> Path:
    """``n`` synthetic cases in ``folder`` (+ ``manifest.json`` when asked); returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    cases = []
    for i in range(n):
        image, seg = synthetic_case(folder, f"case{i}", seed=i, shift=float(i % 3) - 1.0)
        cases.append({"id": f"case{i}", "image": image.name, "segmentation": seg.name})
    if manifest:
        (folder / "manifest.json").write_text(json.dumps({"cases": cases}), encoding="utf-8")
    return folder
