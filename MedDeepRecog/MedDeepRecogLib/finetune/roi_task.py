"""ROI classification fine-tuning on the one loop: crops around segments, the network, the step, the validation.

:class:`RoiClassificationTask` takes several jittered crops per labelled segment (and negatives) from the training
cases and one per segment from the validation cases (:mod:`.roi_crops`), builds the network (the base's, or
``simple_cnn3d`` from scratch; all but the head frozen on request), an augmenting loader
(:class:`AugmentedArrays`), and what :func:`..training.loop.fit` plugs in: :meth:`RoiClassificationTask.step`
(weighted cross-entropy) and :meth:`RoiClassificationTask.validate` (AUC, balanced accuracy... on the validation
crops, computed alike on every rank).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import MedDeepRecogError
from ..training.augment import random_state, set_random_state
from ..training.loop import StepOutput, Validation
from .base import build_from_base
from .config import FinetuneConfig
from .segment_data import CaseData


class RoiClassificationTask:
    """Data, model, loss and validation for ROI classification from segments.

    Batches are ``(x (B, C, *roi) float32, y (B,) class indices)``; the loss is cross-entropy with inverse-frequency
    class weights; the monitor is AUC when the validation crops hold two classes or more, else balanced accuracy.
    """

    memory_format = None

    def __init__(self, cfg: FinetuneConfig, base, classes: list[str], train: list[CaseData], val: list[CaseData],
                 ctx):
        from ..inference.roi_classify import RoiSpec
        from ..models.transfer import encoder_module_paths
        from ..training.distributed import make_sampler, per_rank_batch
        from .roi_crops import check_crops, crop_count, crops_to_arrays, segment_crops

        self.cfg, self.ctx, self.classes = cfg, ctx, classes
        # the package's modality, as the segmentation task records it: classify --segments refuses a scan of another
        # (the crops are normalised by modality, and a CT-only classifier labels an MR's segments as organs)
        self.modalities = [d.modality for d in train + val]
        spec = base.input_spec if base is not None else {}
        size = cfg.roi_size or (spec.get("size") if spec.get("kind") in ("volume3d", "roi3d") else None) or [32] * 3
        self.roi = RoiSpec(tuple(int(s) for s in size), cfg.margin_mm, cfg.roi_size_mm, cfg.mask_channel,
                           cfg.normalize)
        # the memory the run takes is bounded before any of it is taken: the crops, then a step's batch
        crops = (sum(crop_count(item, classes, cfg.samples_per_segment, cfg.negatives * cfg.samples_per_segment)
                     for item in train) + sum(crop_count(item, classes, 1, cfg.negatives) for item in val))
        check_crops(crops, self.roi, roi_size_setting(cfg, size), cfg.data)
        self.model, self.arch, self.arch_kwargs, self.weight_report = build_from_base(
            cfg, base, len(classes), self.roi.channels, classes, input_size=self.roi.size_vox,
            batch_size=per_rank_batch(cfg.training.batch_size, ctx))
        train_samples, val_samples = [], []
        for i, item in enumerate(train):
            train_samples += segment_crops(item, classes, self.roi, samples_per_segment=cfg.samples_per_segment,
                                           jitter_mm=cfg.jitter_mm, negatives=cfg.negatives * cfg.samples_per_segment,
                                           seed=cfg.seed + i)
        for i, item in enumerate(val):
            val_samples += segment_crops(item, classes, self.roi, negatives=cfg.negatives, seed=cfg.seed + 1000 + i)
        self.x_train, self.y_train = crops_to_arrays(train_samples, classes)
        present = sorted({classes[i] for i in np.unique(self.y_train)})
        if len(present) < 2:
            raise MedDeepRecogError(f"the training cases hold only class {present}; ROI classification needs two",
                                    cfg.data)
        self.x_val, self.y_val = crops_to_arrays(val_samples, classes) if val_samples else (None, None)
        self.frozen = encoder_module_paths(self.model, self.arch) if cfg.freeze_encoder else []
        dataset = AugmentedArrays(self.x_train, self.y_train, cfg.strong_augmentation)
        self.sampler = make_sampler(dataset, ctx, shuffle=True, seed=cfg.seed)
        self.train_loader = torch.utils.data.DataLoader(
            dataset, batch_size=per_rank_batch(cfg.training.batch_size, ctx), shuffle=self.sampler is None,
            sampler=self.sampler, generator=torch.Generator().manual_seed(cfg.seed), num_workers=0,
            drop_last=len(dataset) > cfg.training.batch_size)
        counts = np.bincount(self.y_train, minlength=len(classes)).astype(float)
        weights = np.where(counts > 0, counts.sum() / (len(classes) * np.maximum(counts, 1)), 0.0)
        self.criterion = torch.nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32))
        self.has_val = self.x_val is not None
        val_classes = set(np.unique(self.y_val).tolist()) if self.has_val else set()
        self.monitor = "auc" if len(val_classes) >= 2 else "balanced_accuracy"
        self.samples = {"train": len(self.y_train), "val": 0 if self.y_val is None else len(self.y_val)}

    def step(self, net: torch.nn.Module, batch: Any) -> StepOutput:
        x, y = batch
        return StepOutput(self.criterion.to(x.device)(net(x).float(), y), len(x))

    def validate(self, model: torch.nn.Module, device: torch.device) -> Validation:
        from ..training.metrics import classification_metrics

        model.eval()
        with torch.no_grad():
            logits = torch.cat([model(torch.from_numpy(self.x_val[i:i + 16]).to(device)).float().cpu()
                                for i in range(0, len(self.x_val), 16)])
        metrics = classification_metrics(self.y_val, torch.softmax(logits, 1).numpy(), self.classes)
        metrics["split"] = "val"
        return Validation(metrics)

    def package_meta(self) -> dict[str, Any]:
        from ..models import default_target_layer
        from .segmentation_task import modality_of

        try:
            layer = default_target_layer(self.arch, **self.arch_kwargs)
        except Exception:  # an architecture without a Grad-CAM default
            layer = None
        return {
            "task": "classification",
            "description": f"ROI classification ({', '.join(self.classes)}) of crops around segments, "
                           f"fine-tuned on {self.samples['train']} training crops.",
            "architecture": {"name": self.arch, "kwargs": self.arch_kwargs},
            "class_names": list(self.classes),
            "modality": modality_of(self.modalities),
            "input": {"kind": "roi3d", "size": [int(s) for s in self.roi.size_vox], "spacing_mm": None,
                      "channels": self.roi.channels, "roi": self.roi.to_json(), "pipeline": None},
            "explain": {"methods": ["gradcam"], "target_layer": layer},
        }


def roi_size_setting(cfg: FinetuneConfig, size) -> str:
    """Where the crop size comes from, as a refusal names it: ``--roi-size`` (``roi_size``), the base's input size,
    or the default."""
    text = ",".join(str(int(s)) for s in size)
    if cfg.roi_size:
        return f"--roi-size {text}"
    return f"the crop size {text} (the base's input size or the default; --roi-size unset)"


class AugmentedArrays:
    """In-memory ROI crops ``(N, C, Z, Y, X)`` with MONAI array augmentation per item (affine, intensity, noise).

    Only channel 0 (the scan) gets intensity changes; a mask channel moves with the scan under the affine.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, strong: bool = True):
        from monai import transforms as T

        self.x, self.y = x, y
        self.spatial = T.RandAffine(prob=0.8, rotate_range=(0.3, 0.3, 0.3), scale_range=(0.15, 0.15, 0.15),
                                    translate_range=(2, 2, 2), padding_mode="border", cache_grid=True,
                                    spatial_size=x.shape[2:]) if strong else None
        self.intensity = T.Compose([T.RandScaleIntensity(0.15, prob=0.5), T.RandShiftIntensity(0.1, prob=0.5),
                                    T.RandGaussianNoise(prob=0.3, std=0.03)]) if strong else None
        self._rng_seeded = False

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        # a copy: a crop the affine leaves alone comes back as the same storage, and the intensity changes
        # written into it must not reach the stored training crops (they would pile up epoch after epoch)
        x = torch.from_numpy(self.x[i].copy())
        if self.spatial is not None:
            if not self._rng_seeded:
                self._seed()
            x = torch.as_tensor(self.spatial(x), dtype=torch.float32)
            x[0] = torch.as_tensor(self.intensity(x[:1]), dtype=torch.float32)[0]
        return x.float(), int(self.y[i])

    def _seed(self) -> None:
        """Follow torch's seed (set per rank by the loop) for reproducible runs; this also gives every transform
        its own generator (unseeded MONAI transforms share one class-wide generator)."""
        seed = int(torch.initial_seed() % (2 ** 32))
        self.spatial.set_random_state(seed)
        self.intensity.set_random_state(seed + 1)
        self._rng_seeded = True

    def get_state(self) -> dict:
        """The augmentation's random state (checkpointed by the training loop, so a resumed run draws the same)."""
        if self.spatial is None or not self._rng_seeded:
            return {}
        return {"spatial": random_state(self.spatial), "intensity": random_state(self.intensity)}

    def set_state(self, state: dict) -> None:
        if self.spatial is None or not state:
            return
        self._seed()  # own generators first, then their saved states
        set_random_state(self.spatial, state["spatial"])
        set_random_state(self.intensity, state["intensity"])
