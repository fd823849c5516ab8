"""Segmentation training data and evaluation: volumes cached once at the training spacing, patch sampling with
MONAI augmentation, validation by sliding window with Dice and HD95 (mm), predicted as at inference
(:mod:`..inference.segment`: the same normalisation, resampling, sliding window and speck removal).

Speed comes from doing the expensive work once: every case is read, reoriented to the package's orientation,
resampled to ``spacing_mm`` and normalised when the data set is built, and foreground/background voxel indices
for ``RandCropByPosNegLabeld`` are computed once per volume (MONAI's ``FgBgToIndicesd``) instead of on every step;
training steps only crop and augment in-memory tensors. Volumes are ``(1, Z, Y, X)`` tensors (channel first),
labels are class indices.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from ..errors import ConfigError, MedDeepRecogError
from ..training.augment import random_state, set_random_state
from ..inference.segment import (DEFAULT_ORIENTATION, normalize_intensity, orient, oriented_grid,
                                 remove_small_components, resample_to_spacing, resampled_size, sliding_window_logits)
from .segment_data import CaseData

log = logging.getLogger(__name__)


@dataclass
class SegVolume:
    """A case ready for training: ``image (1, Z, Y, X)`` float32 in 0..1 and ``label (1, Z, Y, X)`` class indices
    at ``spacing_mm`` (x, y, z), the axes in the package's orientation (e.g. RAS: Z runs inferior to superior)."""

    case_id: str
    image: np.ndarray
    label: np.ndarray
    spacing_mm: tuple[float, float, float]
    #: validation: only slices ``[start, stop)`` are scored; the whole volume is predicted, as ``segment`` runs
    score_z: tuple[int, int] | None = None


#: Bytes a voxel of the training grid takes once its case is cached: the case 5 (float32 scan, uint8 labels) and
#: its patch cache 25 (labels as int64 8, foreground/background voxel indices as int64 8, and what MONAI's index
#: search leaves behind: measured 25.4 B a voxel on a 300^3 volume); a validation case's prediction takes as much
#: (logits, 4 B a class, and their arg-max, 8 B).
CACHED_VOXEL_BYTES = 30


def check_training_grid(items: Sequence[CaseData], spacing_mm: Sequence[float], orientation: str, setting: str,
                        source=None) -> None:
    """Refuse, before any case is resampled, a training spacing whose grids would take more than
    :func:`..limits.max_dataset_bytes` once cached (:data:`CACHED_VOXEL_BYTES` a voxel): ``--spacing 0.05,0.05,0.05``
    turned three cases of 32 x 32 x 24 voxels into grids of 960 x 960 x 960 and ran the machine out of memory.
    ``setting`` names where the spacing comes from; the grid of each case is the one :func:`prepare_volume` makes
    (reoriented, then resampled)."""
    from ..limits import check_dataset_bytes

    grids = [resampled_size(*oriented_grid(item.image, orientation), spacing_mm) for item in items]
    if not grids:
        return
    voxels = [math.prod(g) for g in grids]
    largest = voxels.index(max(voxels))
    what = (f"{len(items)} case{'s' if len(items) != 1 else ''} on its grid ({' x '.join(map(str, grids[largest]))} "
            f"voxels for {items[largest].case.case_id!r}, the largest; {sum(voxels):,} in all, about "
            f"{CACHED_VOXEL_BYTES} bytes each once cached)")
    check_dataset_bytes(sum(voxels) * CACHED_VOXEL_BYTES, what, setting, source,
                        "give a coarser spacing (--spacing) or fewer cases")


def prepare_volume(item: CaseData, classes: Sequence[str], spacing_mm: Sequence[float] | None,
                   normalize: dict[str, Any] | None, orientation: str = DEFAULT_ORIENTATION) -> SegVolume:
    """Reorient a case to ``orientation`` (``DICOMOrient`` code, as :func:`..inference.segment.segment_image` does
    before its network sees a scan, so a package learns the array order it is run in), resample it to
    ``spacing_mm`` (linear for the scan, nearest for labels) and normalise intensities."""
    labels = sitk.GetImageFromArray(item.class_labels(list(classes)))
    labels.CopyInformation(item.image)
    image, labels = orient(item.image, orientation), orient(labels, orientation)
    if spacing_mm is not None:
        image = resample_to_spacing(image, spacing_mm, interpolator=sitk.sitkLinear,
                                    default=float(sitk.GetArrayViewFromImage(item.image).min()))
        labels = resample_to_spacing(labels, spacing_mm, interpolator=sitk.sitkNearestNeighbor)
    array = normalize_intensity(sitk.GetArrayViewFromImage(image), item.modality, normalize)
    return SegVolume(item.case.case_id, array[None], sitk.GetArrayFromImage(labels)[None].astype(np.uint8),
                     tuple(float(s) for s in image.GetSpacing()))


def split_slab(volume: SegVolume, start: int, stop: int, gap: int = 2) -> tuple[SegVolume, SegVolume]:
    """Hold out slices ``start:stop`` (Z, at the training spacing) of one volume for validation; the slab must lie
    inside the volume (``0 <= start < stop <= depth``).

    The training part is the rest minus ``gap`` slices on each side of the slab, so no training patch centre
    sits right next to a validation slice. Returns ``(train, val)``; the train part is the two remaining pieces
    joined along Z only when the slab is at one end (a slab in the middle keeps the larger piece). The val part is
    the whole volume with only the slab scored (``score_z``): ``segment`` predicts a slab with the rest of the scan
    around it, and a slab predicted alone scored higher than that (Dice 0.54 against 0.45 for the same slab).

    Raises:
        ConfigError: a slab not inside the volume, one without a labelled voxel (it would score nothing, and the
            run would be reported as having no validation data), or one that leaves fewer than 4 slices to train on.
    """
    depth = volume.image.shape[1]
    # a slab reaching past the volume is refused, not clipped: 25:40 of 30 slices scored 25:30 while the card said
    # 25:40, and the figure a reader compares with another run's must be of the slab named
    if start < 0 or stop > depth:
        where = "is outside" if start >= depth else "reaches beyond"
        raise ConfigError(f"--val-slab {start}:{stop} {where} the volume's {depth} slices (0:{depth} at the training "
                          f"spacing): give a slab inside 0:{depth}")
    if not volume.label[:, start:stop].any():
        raise ConfigError(f"--val-slab {start}:{stop} holds no voxel of the classes learnt, so it would score nothing: "
                          "give a slab across the labelled structures")
    below = (0, max(0, start - gap))
    above = (min(depth, stop + gap), depth)
    keep = max((below, above), key=lambda r: r[1] - r[0])
    if keep[1] - keep[0] < 4:
        raise ConfigError(f"--val-slab {start}:{stop} leaves fewer than 4 slices of {depth} for training")

    def part(lo: int, hi: int, suffix: str) -> SegVolume:
        return SegVolume(f"{volume.case_id}[{suffix}]", volume.image[:, lo:hi].copy(), volume.label[:, lo:hi].copy(),
                         volume.spacing_mm)

    val = SegVolume(f"{volume.case_id}[z{start}:{stop}]", volume.image, volume.label, volume.spacing_mm,
                    score_z=(start, stop))
    return part(keep[0], keep[1], f"z{keep[0]}:{keep[1]}"), val


def train_transforms(patch_size: Sequence[int], num_classes: int, *, strong: bool = True, samples: int = 1,
                     pad: bool = True):
    """MONAI dict transforms for cached volumes: pad (unless ``pad=False``: volumes already padded to at least
    ``patch_size``), positive/negative patch crop, then (``strong``) affine, intensity, contrast, noise and smoothing
    augmentation. No flips: left/right organs keep their side.

    Expects ``{"image", "label", "image_fg_indices", "image_bg_indices"}`` (indices from ``FgBgToIndicesd``, computed
    on the padded volume).
    """
    from monai import transforms as T

    keys = ["image", "label"]
    steps = [T.SpatialPadd(keys, spatial_size=tuple(patch_size), mode="constant")] if pad else []
    steps += [
        T.RandCropByPosNegLabeld(keys, label_key="label", spatial_size=tuple(patch_size), pos=2, neg=1,
                                 num_samples=samples, fg_indices_key="image_fg_indices",
                                 bg_indices_key="image_bg_indices", allow_smaller=True),
    ]
    if strong:
        steps += [
            T.RandAffined(keys, prob=0.7, rotate_range=(0.26, 0.26, 0.26), scale_range=(0.15, 0.15, 0.15),
                          translate_range=(4, 4, 4), mode=("bilinear", "nearest"), padding_mode="zeros",
                          spatial_size=tuple(patch_size), cache_grid=True),
            T.RandScaleIntensityd("image", factors=0.15, prob=0.5),
            T.RandShiftIntensityd("image", offsets=0.1, prob=0.5),
            T.RandAdjustContrastd("image", gamma=(0.7, 1.5), prob=0.3),
            T.RandGaussianNoised("image", std=0.03, prob=0.3),
            T.RandGaussianSmoothd("image", sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0), prob=0.15),
        ]
    steps.append(T.EnsureTyped(keys, dtype=(torch.float32, torch.long), track_meta=False))
    return T.Compose(steps)


class CachedPatchDataset(torch.utils.data.Dataset):
    """``length`` random training patches drawn from in-memory volumes (volume ``i % n``), augmented on the fly.

    Padding to ``patch_size`` and foreground/background indices are done once here, not per step (``SpatialPadd``
    on a whole cached volume cost more than all the augmentation of a patch). Items: ``{"image": (1, *patch),
    "label": (1, *patch)}``. The augmentation draws from ``seed``.
    """

    def __init__(self, volumes: Sequence[SegVolume], patch_size: Sequence[int], num_classes: int, length: int,
                 strong_augmentation: bool = True, seed: int = 0):
        from monai.transforms import FgBgToIndicesd, SpatialPadd

        if not volumes:
            raise MedDeepRecogError("no training volumes")
        padder = SpatialPadd(["image", "label"], spatial_size=tuple(patch_size), mode="constant")
        indexer = FgBgToIndicesd("label", image_key="image", image_threshold=-1.0)  # every voxel is "image"
        self.items = []
        for vol in volumes:
            padded = padder({"image": torch.from_numpy(vol.image),
                             "label": torch.from_numpy(vol.label.astype(np.int64))})
            item = indexer({"image": torch.as_tensor(padded["image"]).as_subclass(torch.Tensor),
                            "label": torch.as_tensor(padded["label"]).as_subclass(torch.Tensor)})
            self.items.append({"image": item["image"], "label": item["label"],
                               "image_fg_indices": item["label_fg_indices"],
                               "image_bg_indices": item["label_bg_indices"]})
        # seeded: MONAI's unseeded random transforms draw from OS entropy, and a run must be reproducible
        self.transform = train_transforms(patch_size, num_classes, strong=strong_augmentation, pad=False)
        self.transform.set_random_state(seed=seed)
        self.length = int(length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = self.items[index % len(self.items)]
        out = self.transform(dict(item))
        out = out[0] if isinstance(out, list) else out
        return {"image": out["image"], "label": out["label"]}

    def get_state(self) -> dict:
        """The augmentation's random state (the training loop checkpoints it, so a resumed run draws the same
        patches and augmentations as an uninterrupted one)."""
        return random_state(self.transform)

    def set_state(self, state: dict) -> None:
        set_random_state(self.transform, state)


def segmentation_metrics(pred: np.ndarray, truth: np.ndarray, classes: Sequence[str],
                         spacing_mm: Sequence[float]) -> dict[str, Any]:
    """Dice and HD95 (mm, MONAI) per class for ``(Z, Y, X)`` label maps; means over classes present in ``truth``.

    A class absent from ``truth`` has Dice/HD95 ``None`` (not counted in the means); one present in ``truth`` but
    never predicted has Dice 0 and HD95 ``None`` (infinite), so the mean HD95 cannot count it: ``hd95_missed``
    names such classes, since the mean over the others alone would flatter the model.
    """
    from monai.metrics import compute_dice, compute_hausdorff_distance
    from monai.networks.utils import one_hot

    k = len(classes) + 1
    p = one_hot(torch.from_numpy(pred.astype(np.int64))[None, None], k)
    t = one_hot(torch.from_numpy(truth.astype(np.int64))[None, None], k)
    dice = compute_dice(p, t, include_background=False, ignore_empty=True)[0]
    spacing_zyx = [float(s) for s in reversed(tuple(spacing_mm))]
    per_class: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(classes, start=1):
        present = bool(t[0, i].any())
        predicted = bool(p[0, i].any())
        hd = None
        if present and predicted:
            with warnings.catch_warnings():  # MONAI 1.5+ deprecation notice from inside its own metric
                warnings.simplefilter("ignore", FutureWarning)
                hd = float(compute_hausdorff_distance(p[:, [0, i]], t[:, [0, i]], include_background=False,
                                                      percentile=95, spacing=spacing_zyx)[0, 0])
        d = float(dice[i - 1])
        per_class[name] = {"dice": None if not present or np.isnan(d) else round(d, 4),
                           "hd95_mm": None if hd is None or not np.isfinite(hd) else round(hd, 2),
                           "voxels_true": int(t[0, i].sum()), "voxels_pred": int(p[0, i].sum())}
    dices = [v["dice"] for v in per_class.values() if v["dice"] is not None]
    hds = [v["hd95_mm"] for v in per_class.values() if v["hd95_mm"] is not None]
    missed = [name for name, v in per_class.items() if v["voxels_true"] and not v["voxels_pred"]]
    return {"dice": round(float(np.mean(dices)), 4) if dices else None,
            "hd95_mm": round(float(np.mean(hds)), 2) if hds else None, "hd95_missed": missed, "per_class": per_class}


def evaluate_volumes(model: torch.nn.Module, volumes: Sequence[SegVolume], classes: Sequence[str],
                     patch_size: Sequence[int], device: str = "cpu", amp: bool = False,
                     min_component_fraction: float = 0.1) -> dict[str, dict]:
    """Sliding-window prediction of every volume, small components removed as at inference;
    ``{case_id: segmentation_metrics(...)}`` over the whole volume, or its ``score_z`` slices."""
    was_training = model.training
    model.eval()
    per_case = {}
    for vol in volumes:
        logits = sliding_window_logits(model, torch.from_numpy(vol.image)[None].to(device), patch_size, amp=amp)
        pred = remove_small_components(logits.argmax(1)[0].cpu().numpy(), min_component_fraction)
        truth = vol.label[0]
        if vol.score_z is not None:
            pred, truth = pred[slice(*vol.score_z)], truth[slice(*vol.score_z)]
        per_case[vol.case_id] = segmentation_metrics(pred, truth, classes, vol.spacing_mm)
    model.train(was_training)
    return per_case


def summarize_cases(per_case: dict[str, dict], classes: Sequence[str]) -> dict[str, Any]:
    """Mean Dice / HD95 over cases (each case's mean over its present classes) and per class over cases;
    ``hd95_missed``: the classes some case holds but the model never predicted there (no distance, so not in the
    HD95 means), each once."""
    dices = [m["dice"] for m in per_case.values() if m["dice"] is not None]
    hds = [m["hd95_mm"] for m in per_case.values() if m["hd95_mm"] is not None]
    per_class = {c: {"dice": _mean([m["per_class"][c]["dice"] for m in per_case.values()]),
                     "hd95_mm": _mean([m["per_class"][c]["hd95_mm"] for m in per_case.values()])} for c in classes}
    missed = [c for c in classes if any(c in m.get("hd95_missed", ()) for m in per_case.values())]
    return {"split": "val", "cases": len(per_case), "dice": _mean(dices), "hd95_mm": _mean(hds),
            "hd95_missed": missed, "per_class": per_class, "per_case": per_case}


def _mean(values: Sequence[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return round(float(np.mean(values)), 4) if values else None
