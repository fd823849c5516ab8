"""Segmentation fine-tuning on the one loop: the data, the network, the training step and the validation.

:class:`SegmentationTask` prepares the cases (resampled to the training spacing, normalised, cached; a held-out
slab when there is one case), the network (the base's, or MONAI UNet from scratch; encoder frozen on request), a
loader of random patches, and what :func:`..training.loop.fit` plugs in: :meth:`SegmentationTask.step` (Dice +
cross-entropy on a patch batch) and :meth:`SegmentationTask.validate` (mean Dice / HD95 by sliding window over
the validation volumes, sharded over DDP ranks and gathered).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import MedDeepRecogError
from ..training.loop import StepOutput, Validation, use_amp
from .base import build_from_base
from .config import FinetuneConfig
from .segment_data import CaseData

log = logging.getLogger(__name__)


class SegmentationTask:
    """Data, model, loss and validation for voxel-wise fine-tuning.

    Batches are ``{"image": (B, 1, *patch) float32, "label": (B, 1, *patch) class indices}``; the network and the
    images train in ``channels_last_3d`` layout (about 25% faster 3D convolutions on the CPU, suits tensor cores).
    """

    monitor = "dice"
    memory_format = torch.channels_last_3d

    def __init__(self, cfg: FinetuneConfig, base, classes: list[str], train: list[CaseData], val: list[CaseData],
                 ctx):
        from monai.losses import DiceCELoss

        from ..inference.segment import package_orientation
        from ..models.transfer import encoder_module_paths
        from ..training.distributed import make_sampler, per_rank_batch
        from .seg_training import CachedPatchDataset, check_training_grid, prepare_volume, split_slab

        self.cfg, self.ctx, self.classes = cfg, ctx, classes
        self.modalities = [d.modality for d in train + val]
        from .segment_data import class_colors
        self.class_colors = class_colors(train + val, classes,
                                         (base.meta.get("class_colors") if base is not None else None))
        spec = base.input_spec if base is not None else {}
        self.spacing = list(cfg.spacing_mm or spec.get("spacing_mm") or median_spacing(train + val))
        self.patch = list(cfg.patch_size or spec.get("size") or [64, 64, 64])
        self.normalize = cfg.normalize or spec.get("normalize")
        # a base's weights learnt anatomy in its orientation: keep it (the default for a package without the key)
        self.orientation = package_orientation(spec, base.path if base is not None else None)
        # the memory the run takes is bounded before any of it is taken: the cached grids, then a step's batch
        check_training_grid(train + val, self.spacing, self.orientation, spacing_setting(cfg, spec, self.spacing),
                            cfg.data)
        self.model, self.arch, self.arch_kwargs, self.weight_report = build_from_base(
            cfg, base, len(classes) + 1, 1, ["background"] + list(classes), input_size=self.patch,
            batch_size=per_rank_batch(cfg.training.batch_size, ctx))
        train_vols = [prepare_volume(d, classes, self.spacing, self.normalize, self.orientation) for d in train]
        val_vols = [prepare_volume(d, classes, self.spacing, self.normalize, self.orientation) for d in val]
        #: the slab held out (``{"case", "scan", "slices", "spacing_mm", "orientation"}``: slices on this grid), or
        #: ``None``: what model.json's metrics say was scored, and what a package records it did not train on
        self.val_slab: dict[str, Any] | None = None
        if cfg.val_slab is not None:
            target = cfg.val_cases[0] if cfg.val_cases else train_vols[0].case_id
            pieces = []
            for vol, item in zip(train_vols, train):
                if vol.case_id == target:
                    tr, va = split_slab(vol, int(cfg.val_slab[0]), int(cfg.val_slab[1]))
                    pieces.append(tr)
                    val_vols.append(va)
                    self.val_slab = {"case": target, "scan": item.scan_id, "slices": [int(z) for z in va.score_z],
                                     "spacing_mm": [float(s) for s in self.spacing], "orientation": self.orientation}
                else:
                    pieces.append(vol)
            train_vols = pieces
        if not any(v.label.any() for v in train_vols):
            raise MedDeepRecogError("the training cases hold no labelled voxel of classes " + ", ".join(classes),
                                    cfg.data)
        self.train_vols, self.val_vols = train_vols, val_vols
        self.frozen = encoder_module_paths(self.model, self.arch) if cfg.freeze_encoder else []
        dataset = CachedPatchDataset(train_vols, self.patch, len(classes) + 1, cfg.patches_per_epoch,
                                     cfg.strong_augmentation, seed=cfg.seed + ctx.rank)
        self.sampler = make_sampler(dataset, ctx, shuffle=True, seed=cfg.seed)
        generator = torch.Generator().manual_seed(cfg.seed)
        self.train_loader = torch.utils.data.DataLoader(
            dataset, batch_size=per_rank_batch(cfg.training.batch_size, ctx), shuffle=self.sampler is None,
            sampler=self.sampler, generator=generator, num_workers=0)
        self.criterion = DiceCELoss(to_onehot_y=True, softmax=True)
        self.has_val = bool(val_vols)

    def step(self, net: torch.nn.Module, batch: dict[str, torch.Tensor]) -> StepOutput:
        x, y = batch["image"], batch["label"]
        return StepOutput(self.criterion(net(x).float(), y), len(x))

    def validate(self, model: torch.nn.Module, device: torch.device) -> Validation:
        from ..training.distributed import gather_objects, shard
        from .seg_training import evaluate_volumes, summarize_cases

        mine = evaluate_volumes(model, shard(self.val_vols, self.ctx), self.classes, self.patch, str(device),
                                amp=use_amp(device, self.cfg.training.amp),
                                min_component_fraction=self.cfg.min_component_fraction)
        merged: dict[str, Any] = {}
        for part in gather_objects(mine, self.ctx):
            merged.update(part)
        return Validation(summarize_cases(merged, self.classes))

    def package_meta(self) -> dict[str, Any]:
        return {
            "task": "segmentation",
            "description": f"Segmentation of {', '.join(self.classes)} fine-tuned from segments "
                           f"({len(self.train_vols)} training volume(s)).",
            "architecture": {"name": self.arch, "kwargs": self.arch_kwargs},
            "class_names": ["background"] + list(self.classes),
            # the colours the user gave the classes in their .seg.nrrd: segment writes them (inference.segment)
            **({"class_colors": self.class_colors} if self.class_colors else {}),
            "modality": modality_of(self.modalities),
            "input": {"kind": "volume3d", "size": [int(s) for s in self.patch],
                      "spacing_mm": [float(s) for s in self.spacing], "orientation": self.orientation,
                      "channels": 1,
                      "normalize": self.normalize or None, "pipeline": None,
                      "inference": {"method": "sliding_window", "overlap": 0.25,
                                    "min_component_fraction": self.cfg.min_component_fraction}},
            "explain": {"methods": []},
        }


def spacing_setting(cfg: FinetuneConfig, spec: dict, spacing: Sequence[float]) -> str:
    """Where the training spacing comes from, as a refusal names it: ``--spacing`` (``spacing_mm``), the base's
    ``input.spacing_mm``, or the cases' median spacing."""
    text = ",".join(f"{float(s):g}" for s in spacing)
    if cfg.spacing_mm:
        return f"--spacing {text}"
    if spec.get("spacing_mm"):
        return f"the base's spacing_mm {text} (--spacing unset)"
    return f"the cases' median spacing {text} mm (--spacing unset)"


def median_spacing(data: Sequence[CaseData]) -> list[float]:
    """Median voxel spacing (x, y, z mm) of the cases' scans: the training spacing when none is given."""
    spacings = np.array([d.image.GetSpacing() for d in data])
    return [float(round(s, 3)) for s in np.median(spacings, axis=0)]


def modality_of(modalities: Sequence[str]) -> str:
    """The package's modality: the cases' one modality when they share CT or MR, else ``"any"``."""
    unique = set(modalities)
    return unique.pop() if len(unique) == 1 and unique <= {"CT", "MR"} else "any"
