"""Self-supervised pretraining (SimCLR) of a 2D classifier's network on unlabelled training images, on the one loop.

``pretrain(config, pool, out, settings) -> dict`` (``meddeeprecog pretrain``): the network of a training config
(``model/name`` and ``kwargs``, its last layer widened to an ``embedding``-wide output) learns to tell each image's
two random views from every other image's in the batch: the NT-Xent loss of Chen et al. 2020 (:func:`nt_xent`)
through a small projection head (:class:`ProjectionNet`). The images are the *train* splits of the ``pool`` configs,
each standardised by its own config's ``input/slices`` at the pretrained config's ``data/size``; labels are never
used and no val split is read into the pool, so a model fine-tuned from these weights keeps its val split unseen.

The run is :func:`.loop.fit` with a contrastive step: :class:`ContrastiveViews` is its augment hook (two views of
every batch: the config-level :class:`.augment.BatchAugment` at :data:`VIEW_AUGMENTATION`'s strength, plus a random
whole-pixel shift), :class:`ContrastiveStep` its step, no validation (the training loss is recorded), the last
epoch's weights kept. The loop's checkpoint (``OUT.run/last.pt``, loaded with ``weights_only``) lets a cancelled or
killed run continue with ``--resume`` to the weights an uninterrupted run ends with. The weights, the widened last
layer and the projection head dropped, go atomically to ``OUT`` (``.safetensors``), which ``model/init`` reads
(:mod:`.init_weights`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from .augment import BatchAugment, generator_state, set_generator_state
from .loop import Hooks, StepOutput
from .pretrain_settings import PretrainSettings  # torch-free: the command line's parser shows its defaults

#: What the weights' metadata names as the method.
PRETRAIN_METHOD = "SimCLR (NT-Xent contrastive, Chen et al. 2020)"

#: The views' augmentation: stronger than a classifier's, since telling views apart is the whole task.
VIEW_AUGMENTATION = {"flip": {"prob": 0.5, "axes": [1]}, "rotate": {"prob": 0.8, "degrees": 20},
                     "zoom": {"prob": 1.0, "min": 0.75, "max": 1.3}, "noise": {"prob": 0.5, "std": 0.05},
                     "intensity_shift": {"prob": 0.8, "offset": 0.2}, "gamma": {"prob": 0.8, "min": 0.6, "max": 1.6}}


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss for the projections ``(B, D)`` of two views of the same ``B`` images: each view's partner is
    its positive, the other ``2B - 2`` views its negatives (cross-entropy over cosine similarities / temperature)."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = z @ z.T / temperature
    n = z1.shape[0]
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(sim.device)
    return F.cross_entropy(sim, target)


def shifted(x: torch.Tensor, rng: np.random.RandomState, fraction: float) -> torch.Tensor:
    """Each sample of ``x`` (B, C, H, W) moved by a random whole-pixel shift of up to ``fraction`` of its side, zeros
    coming in. Written here because ``BatchAugment`` has no translation; whole pixels keep the image values exact."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    my, mx = int(fraction * h), int(fraction * w)
    for i in range(len(x)):
        dy, dx = int(rng.randint(-my, my + 1)), int(rng.randint(-mx, mx + 1))
        ys, yd = (slice(dy, h), slice(0, h - dy)) if dy >= 0 else (slice(0, h + dy), slice(-dy, h))
        xs, xd = (slice(dx, w), slice(0, w - dx)) if dx >= 0 else (slice(0, w + dx), slice(-dx, w))
        out[i, :, yd, xd] = x[i, :, ys, xs]
    return out


class ContrastiveViews:
    """The loop's augment hook: a batch ``[x]`` (x: (B, 1, H, W)) becomes two random views ``(a, b)`` of it.

    Each view has its own :class:`.augment.BatchAugment` stream, and the shifts a third; ``get_state`` /
    ``set_state`` carry all three through the loop's checkpoint.
    """

    def __init__(self, settings: PretrainSettings, augmentation: dict | None = None):
        spec = VIEW_AUGMENTATION if augmentation is None else augmentation
        self.views = [BatchAugment(spec, spatial_dims=2, seed=settings.seed + k) for k in (1, 2)]
        self.rng = np.random.RandomState(settings.seed)
        self.fraction = settings.shift

    def __call__(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        a, b = (shifted(view(x), self.rng, self.fraction) for view in self.views)
        return a, b

    def get_state(self) -> dict:
        return {"views": [v.get_state() for v in self.views], "shift": generator_state(self.rng)}

    def set_state(self, state: dict) -> None:
        for view, s in zip(self.views, state["views"]):
            view.set_state(s)
        set_generator_state(self.rng, state["shift"])


class ProjectionNet(nn.Module):
    """``backbone`` (the classifier's network, last layer ``embedding`` wide) followed by the projection head
    (ReLU, linear to ``projection``): what the contrastive loss sees. Only the backbone's weights are kept."""

    def __init__(self, backbone: nn.Module, embedding: int, projection: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(embedding, projection))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class ContrastiveStep:
    """The loop's step: the NT-Xent loss of the two views' projections (``n``: the images of the batch)."""

    def __init__(self, temperature: float):
        self.temperature = temperature

    def __call__(self, net: nn.Module, views: tuple[torch.Tensor, torch.Tensor]) -> StepOutput:
        a, b = views
        return StepOutput(nt_xent(net(a), net(b), self.temperature), n=int(a.shape[0]))


def _train_split_name(data_path: Path, train_split: str) -> str:
    """The split of ``data_path`` that training trains on, as ``load_eval_split`` names it: ``train_split`` when the
    file holds it, else ``"train"`` (a file of images/labels only, which training cuts by class whatever
    ``train_split`` says)."""
    from .data import open_npz

    return train_split if f"{train_split}_images" in open_npz(data_path).files else "train"


def _npz_files(data_path: Path) -> list[str]:
    from .data import open_npz

    return list(open_npz(data_path).files)


def pool_images(configs: Sequence[str | Path], size: Sequence[int]) -> tuple[np.ndarray, list[dict]]:
    """The train images of every config, each standardised by its own ``input/slices`` at ``size``:
    ``(N, 1, H, W)`` float32, and per config its name and image count (``train_images``), its data (``path``,
    ``fingerprint`` as training's ``dataset_fingerprint`` gives it), the ``split`` read and ``split_in_data``
    (False: a file without named splits, or a folder without a split column, cut by class here, keeping the last
    ``val_fraction`` of each class out).

    Each config's images are bounded as training's are (:func:`..limits.max_dataset_bytes`, before they are made),
    and the pool's together, checked as each config's images join it, before the next config is read."""
    from ..limits import check_dataset_bytes
    from .config import load_config, resolve_data_path
    from ..preprocessing.slices import min_slice_side
    from .data import load_eval_split, load_train_val, max_train_rows, training_slices

    images, sources = [], []
    for k, path in enumerate(configs, 1):
        cfg = load_config(path)
        if cfg.data.kind != "slices2d":
            raise ConfigError(f"the pool takes 2D image sets (data/kind: slices2d), not {cfg.data.kind!r}", path)
        cfg.data.size = list(size)
        data_path = resolve_data_path(cfg)
        if cfg.data.format == "folder" or (cfg.data.format == "auto" and data_path.is_dir()):
            both = load_train_val(cfg, data_path)   # a folder's split is made while it is read
            train, fingerprint = both.train, both.fingerprint
            split_in_data = both.split_in_data   # the CSV's split column, or the tail train cuts
            split = cfg.data.train_split if split_in_data else f"train (all but the last {cfg.data.val_fraction:.0%} " \
                "of each class)"
        else:   # only the train split is standardised: the val images take no part
            from ..packages.package import sha256_file

            slices = training_slices(cfg)
            split = _train_split_name(data_path, cfg.data.train_split)
            split_in_data = f"{split}_images" in _npz_files(data_path)
            fingerprint = f"sha256:{sha256_file(data_path)}"
            train = load_eval_split(data_path, split, cfg.data.kind,
                                    cfg.data.intensity_range, cfg.data.size, cfg.data.val_fraction, slices,
                                    min_side=min_slice_side({"size": cfg.data.size, "slices": slices or {}}))
            keep = max_train_rows(train.labels, cfg.data.max_train, path)   # the rows training takes
            if keep is not None:
                train = train.subset(keep)
        if train.images.shape[1] != 1:
            raise ConfigError(f"the pool takes grey images (one channel); this set's images have "
                              f"{train.images.shape[1]}", data_path)
        images.append(np.asarray(train.images, dtype=np.float32))
        # what model/init's card shows, and how train tells a pool drawn from its own val split (init_weights)
        sources.append({"config": str(path), "train_images": int(len(train.images)), "path": str(data_path),
                        "split": split, "split_in_data": bool(split_in_data), "fingerprint": fingerprint,
                        **({} if split_in_data else {"val_fraction": float(cfg.data.val_fraction)})})
        check_dataset_bytes(sum(x.nbytes for x in images), f"{sum(len(x) for x in images):,} train images of 1 x "
                            f"{' x '.join(map(str, size))} voxels as float32 ({k} of {len(configs)} configs read)",
                            "--pool", None, "pool fewer or smaller image sets (data/max_train)")
    return np.concatenate(images), sources


def pretrain(config: str | Path, pool: Sequence[str | Path], out: str | Path, settings: PretrainSettings,
             resume: bool = False, progress=None) -> dict:
    """Pretrain ``config``'s network on the ``pool`` configs' train images and write its weights to ``out``.

    ``out`` must be a new ``.safetensors`` file (nothing is overwritten); the loop's checkpoint goes to
    ``out`` + ``.run/``, which a run without ``resume`` refuses to reuse. Returns what was done (the pool, the
    loss per epoch, the tensors written).
    """
    from safetensors.torch import save

    from ..io import atomic_write_bytes
    from ..models import build_model
    from ..models.transfer import head_module_name
    from .config import load_config
    from .loop import FitConfig, fit
    from .sections import LoopConfig, OptimizerConfig, ScheduleConfig

    settings.check()
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ConfigError("the pretrained weights go to a .safetensors file (what model/init reads)", out)
    if out.exists():
        raise ConfigError("already exists; pretraining writes a new file and never replaces one", out)
    run_dir = out.with_name(out.name + ".run")
    if (run_dir / "last.pt").exists() and not resume:
        raise ConfigError("holds an unfinished run: --resume continues it, or delete it to start over", run_dir)
    if resume and not (run_dir / "last.pt").exists():
        import logging

        logging.getLogger(__name__).warning("--resume: %s holds no checkpoint; pretraining starts from its first "
                                            "epoch", run_dir)
    cfg = load_config(config)
    if cfg.data.kind != "slices2d":
        raise ConfigError(f"pretraining is for 2D classifiers (data/kind: slices2d), not {cfg.data.kind!r}", config)
    if cfg.data.size is None:
        raise ConfigError("pretraining needs data/size: every pool image is standardised to it", config)

    torch.manual_seed(settings.seed)
    try:   # a step's batch is bounded as train's is, before the pool is read: two views of each image, both kept
        backbone = build_model(cfg.model.name, input_shape=(1, *cfg.data.size), batch_size=2 * settings.batch_size,
                               batch_setting=f"--batch {settings.batch_size} (two views of each image: "
                                             f"{2 * settings.batch_size} samples a step)",
                               in_channels=1, num_classes=settings.embedding, **cfg.model.kwargs)
    except ConfigError as exc:   # the line names the config too, whose network and data/size these are
        raise ConfigError(exc.problem, exc.path or config) from None
    images, sources = pool_images(pool, cfg.data.size)
    if len(images) < settings.batch_size:
        raise ConfigError(f"--batch {settings.batch_size} is more than the pool's {len(images)} images")
    net = ProjectionNet(backbone, settings.embedding, settings.projection)
    generator = torch.Generator().manual_seed(settings.seed)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(images)),
                                         batch_size=settings.batch_size, shuffle=True, drop_last=True,
                                         generator=generator)
    fit_cfg = FitConfig(optimizer=OptimizerConfig(name="adamw", lr=settings.lr, weight_decay=settings.weight_decay),
                        schedule=ScheduleConfig(name="cosine", warmup_epochs=settings.warmup_epochs, min_lr=0.0),
                        loop=LoopConfig(epochs=settings.epochs, batch_size=settings.batch_size, compile=False),
                        monitor="last", seed=settings.seed, checkpoint_dir=run_dir, resume=resume,
                        restore_best=False)
    history = fit(net, loader, ContrastiveStep(settings.temperature), None, fit_cfg,
                  hooks=Hooks(augment=ContrastiveViews(settings)), progress=progress,
                  memory_format=torch.channels_last)
    if history.stopped == "cancelled":
        return {"stopped": "cancelled", "checkpoint": str(run_dir / "last.pt")}
    dropped = f"{head_module_name(backbone)}."  # the widened last layer: a classifier brings its own head
    weights = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items() if not k.startswith(dropped)}
    # safetensors metadata is text: the pool (each source's data, split, images, fingerprint) and the method go in
    # as JSON, read back by model/init (init_weights.pretraining_record) for the card
    metadata = {"made_by": "meddeeprecog pretrain", "config": str(config), "method": PRETRAIN_METHOD,
                "epochs": str(settings.epochs), "pool": json.dumps(sources),
                "settings": json.dumps({"batch": settings.batch_size, "lr": settings.lr,
                                        "temperature": settings.temperature, "seed": settings.seed})}
    atomic_write_bytes(out, save(weights, metadata=metadata))
    return {"weights": str(out), "tensors": len(weights), "pool": sources, "pool_images": int(len(images)),
            "epochs": [{"epoch": r["epoch"], "loss": r["train_loss"], "time_s": r["time_s"]} for r in history.epochs],
            "resumed_from": history.resumed_from, "checkpoint": str(run_dir / "last.pt")}

