"""The GPU paths give what the CPU paths give: classify with its trust checks (heatmap faithfulness, lesion
reliance, uncertainty), whose inputs, masks and orders are built on the CPU while the model runs on the GPU, and a
fine-tune with mixed precision.

Skipped without CUDA (CI has none); on a GPU machine: ``python -m pytest Testing/Python/test_cuda_paths.py``.
TF32 convolutions on the GPU round differently from the CPU's float32, so values are compared with tolerances.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _both(scan, package, **kwargs):
    from MedDeepRecogLib.inference.classify import classify_scan

    return [classify_scan(scan, package, device=device, **kwargs) for device in ("cpu", "cuda")]


def _heat_correlation(a, b) -> float:
    return float(np.corrcoef(sitk.GetArrayViewFromImage(a.heatmap).ravel(),
                             sitk.GetArrayViewFromImage(b.heatmap).ravel())[0, 1])


def test_brain_slice_model_with_every_trust_check_on_cuda_matches_cpu():
    from MedDeepRecogLib.packages import load_package
    from MedDeepRecogLib.resources import sample_path

    package = load_package("brain-tumour-mri")
    lesion = sitk.ReadImage(str(sample_path("brain1_tumour_label.nrrd")))
    cpu, gpu = _both(sample_path("brain1_mr.nrrd"), package, lesion=lesion)
    assert gpu.decision["label"] == cpu.decision["label"]
    np.testing.assert_allclose(gpu.probabilities, cpu.probabilities, atol=0.02)
    assert _heat_correlation(cpu, gpu) > 0.99
    for key in ("deletion_auc", "insertion_auc", "score"):
        assert abs(gpu.explain["faithfulness"][key] - cpu.explain["faithfulness"][key]) < 0.05, key
    reliance_cpu = cpu.explain["localisation"]["lesion_reliance"]
    reliance_gpu = gpu.explain["localisation"]["lesion_reliance"]
    assert reliance_gpu["images"] == reliance_cpu["images"] > 0
    assert abs(reliance_gpu["drop_lesion"] - reliance_cpu["drop_lesion"]) < 0.02
    assert gpu.uncertainty["mode"] == cpu.uncertainty["mode"]
    assert abs(gpu.uncertainty["predictive_entropy"] - cpu.uncertainty["predictive_entropy"]) < 0.02


@pytest.mark.parametrize("model_id,sample", [("breast-us-lesion", "mr"), ("lung-ct-cancer", "ct")])
def test_mirrored_ensembles_fused_for_inference_on_cuda_match_cpu(tmp_path, model_id, sample):
    """The newest breast and lung packages (test-time flip, batch norms folded by classify) on one 2D slice. The
    slices are outside both models' domains, which does not matter here: the probabilities, heatmap and domain
    distance are still computed, and must agree between the devices."""
    from MedDeepRecogLib.packages import load_package
    from MedDeepRecogLib.resources import sample_path

    if sample == "mr":
        image = sitk.ReadImage(str(sample_path("brain1_mr.nrrd")))[:, :, 12]
    else:
        ct = sitk.ReadImage(str(sample_path("abdomen_ct.nii.gz")))
        image = ct[:, :, ct.GetSize()[2] // 2]
    scan = tmp_path / "slice.nrrd"
    sitk.WriteImage(image, str(scan))
    cpu, gpu = _both(scan, load_package(model_id))
    np.testing.assert_allclose(gpu.probabilities, cpu.probabilities, atol=0.02)
    assert gpu.decision["top_class"] == cpu.decision["top_class"]
    assert gpu.decision["domain"]["slices_in_domain"] == cpu.decision["domain"]["slices_in_domain"]
    assert _heat_correlation(cpu, gpu) > 0.99
    assert abs(gpu.explain["faithfulness"]["score"] - cpu.explain["faithfulness"]["score"]) < 0.05


@pytest.mark.parametrize("mode", ["mc-dropout", "tta"])
def test_volume_model_uncertainty_on_cuda_matches_cpu(tmp_path, mode):
    from tiny_test_package import make_tiny_package

    from MedDeepRecogLib.packages import load_package

    package = load_package(make_tiny_package(tmp_path, kind="volume3d"))
    arr = np.zeros((24, 24, 24), np.float32)
    arr[6:18, 8:16, 5:19] = 1.0
    scan = sitk.GetImageFromArray(arr)
    scan.SetSpacing((1.5, 1.5, 1.5))
    scan_path = tmp_path / "mask.nrrd"
    sitk.WriteImage(scan, str(scan_path))
    cpu, gpu = _both(scan_path, package, uncertainty=mode)
    np.testing.assert_allclose(gpu.probabilities, cpu.probabilities, atol=0.02)
    assert gpu.uncertainty["mode"] == mode
    assert abs(gpu.uncertainty["predictive_entropy"] - cpu.uncertainty["predictive_entropy"]) < 0.02
    assert abs(gpu.explain["faithfulness"]["score"] - cpu.explain["faithfulness"]["score"]) < 0.1


def test_finetune_on_cuda_with_mixed_precision_writes_a_package_that_segments(tmp_path):
    from finetune_helpers import TINY_UNET, synthetic_dataset

    from MedDeepRecogLib.cli import main
    from MedDeepRecogLib.finetune.config import FinetuneConfig
    from MedDeepRecogLib.finetune.finetune import finetune
    from MedDeepRecogLib.io import read_segmentation

    data = synthetic_dataset(tmp_path / "data", n=3)
    cfg = FinetuneConfig.from_dict({
        "task": "segment", "patch_size": [16, 16, 16], "patches_per_epoch": 4, "arch_kwargs": TINY_UNET,
        "spacing_mm": [3.0, 3.0, 3.0], "optimizer": {"lr": 3e-3}, "data": str(data), "base": None, "id": "organs",
        "val_cases": ["case2"], "dest": str(tmp_path / "catalog"), "work_dir": str(tmp_path / "work"),
        "training": {"epochs": 2, "batch_size": 2, "early_stopping_patience": 0, "device": "cuda"}})
    result = finetune(cfg)
    meta = json.loads((Path(result["package"]) / "model.json").read_text(encoding="utf-8"))
    assert 0.0 <= meta["metrics"]["dice"] <= 1.0
    out = tmp_path / "pred.seg.nrrd"
    assert main(["segment", str(data / "case2.nii.gz"), "--model", result["package"], "--out", str(out),
                 "--device", "cuda"]) == 0
    labelmap, grid, _ = read_segmentation(out)
    assert grid.GetSize() == sitk.ReadImage(str(data / "case2.nii.gz")).GetSize()


def test_batch_augmentation_on_cuda_equals_the_cpu_one_and_training_runs_there():
    from MedDeepRecogLib.models import build_model
    from MedDeepRecogLib.training.augment import BatchAugment
    from MedDeepRecogLib.training.classification import fit_classifier, make_loader
    from MedDeepRecogLib.training.loop import FitConfig, Hooks
    from MedDeepRecogLib.training.sections import LoopConfig

    spec = {"flip": {"prob": 0.5, "axes": [1]}, "rotate": {"prob": 0.7, "degrees": 15},
            "zoom": {"prob": 0.6, "min": 0.85, "max": 1.2}, "noise": {"prob": 0.5, "std": 0.05},
            "intensity_shift": {"prob": 0.5, "offset": 0.1}, "gamma": {"prob": 0.5, "min": 0.7, "max": 1.4}}
    x = torch.rand(16, 1, 48, 48, generator=torch.Generator().manual_seed(0))
    on_cpu = BatchAugment(spec, spatial_dims=2, seed=5)(x)
    on_gpu = BatchAugment(spec, spatial_dims=2, seed=5)(x.cuda())
    assert on_gpu.is_cuda
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, atol=1e-4, rtol=1e-4)

    images = np.random.default_rng(0).random((64, 1, 32, 32), dtype=np.float32)
    labels = np.arange(64) % 3
    model = build_model("simple_cnn2d", in_channels=1, num_classes=3)
    history = fit_classifier(model, make_loader(images, labels, 16, shuffle=True),
                             make_loader(images[:16], labels[:16], 16, shuffle=False),
                             FitConfig(loop=LoopConfig(epochs=2, device="cuda")),
                             hooks=Hooks(augment=BatchAugment(spec, spatial_dims=2, seed=0)))
    assert len(history.epochs) == 2 and all(np.isfinite(e["train_loss"]) for e in history.epochs)
