"""The fine-tuning epoch loop: any loss, any validation, DDP, checkpoints every epoch, resume, early stopping.

The shared ``training.loop.fit`` is built around batches ``(x, y)``, cross-entropy and classification metrics;
fine-tuning also needs voxel-wise losses, Dice/HD95 validation by sliding window and several processes
(``torchrun``). This loop takes the two task-specific parts as functions and reuses ``training.loop``'s
configuration (:class:`~..training.loop.FitConfig`), result (:class:`~..training.loop.History`), optimisers,
schedules, seeding, freezing, optimiser step and checkpoint writing:

- ``loss_fn(model, batch, device) -> (loss, n_samples)``;
- ``validate(model) -> dict`` holding ``monitor`` (every rank calls it and must get the same dict, e.g. by
  evaluating all validation cases or by sharding them and gathering with :func:`.distributed.gather_objects`).

Checkpoint ``last.pt`` (model, optimiser, scheduler, history, best weights, RNG) is written atomically by rank 0
after every epoch, so a killed or cancelled run resumes from its last complete epoch.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..progress import null_progress
from ..training.loop import (FitConfig, History, apply_frozen, cpu_state, make_optimizer, make_scheduler,
                             optimizer_step, save_checkpoint, seed_everything, set_train_mode)
from .distributed import DistContext, all_reduce_mean, barrier, unwrap_model, wrap_model

CHECKPOINT = "last.pt"


LossFn = Callable[[nn.Module, Any, torch.device], tuple[torch.Tensor, int]]


def run_loop(model: nn.Module, train_loader, loss_fn: LossFn,
             validate: Callable[[nn.Module], dict] | None, cfg: FitConfig, *, monitor: str, higher_is_better: bool,
             ctx: DistContext | None = None, frozen: Sequence[str] = (), sampler=None,
             progress: Callable[..., None] | None = None, should_stop: Callable[[], bool] | None = None,
             checkpoint_dir: str | Path | None = None, resume: bool = True) -> History:
    """Train ``model`` for ``cfg.epochs`` epochs; returns a :class:`~..training.loop.History` (model ends with best weights).

    Args:
        frozen: module paths whose parameters are not trained (their norm layers stay in eval mode).
        sampler: the loader's ``DistributedSampler`` (``set_epoch`` is called every epoch), if any.
        progress: called on rank 0 only: ``("train", fraction, epoch=, loss=)`` per batch and
            ``("validate", fraction, epoch=, val_metric=, ...)`` per epoch.
        checkpoint_dir: where ``last.pt`` lives; with ``resume`` an existing one is continued.
    """
    ctx = ctx or DistContext()
    progress = progress if (progress is not None and ctx.is_main) else null_progress
    device = torch.device(ctx.device)
    seed_everything(cfg.seed + ctx.rank)  # different augmentation per rank; DDP broadcasts rank 0's weights
    model.to(device)
    frozen_modules = apply_frozen(model, frozen)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("nothing to train: every parameter is frozen")
    optimizer = make_optimizer(params, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    amp = device.type == "cuda" and cfg.amp in (True, "auto", "true")
    scaler = torch.amp.GradScaler("cuda") if amp else None
    result = History(monitor=monitor)
    since_best = 0
    start_epoch = 1
    ckpt = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir else None
    if ckpt is not None and resume and ckpt.is_file():
        try:
            state = torch.load(str(ckpt), map_location="cpu", weights_only=True)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except Exception as exc:
            raise ConfigError(f"cannot resume from this checkpoint ({str(exc).splitlines()[0][:200]}); "
                              "delete it or pass --restart", ckpt) from None
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        result.epochs = list(state["history"])
        result.best_epoch, result.best_metric = state["best_epoch"], state["best_metric"]
        result.best_val, result.best_state = state.get("best_val"), state.get("best_state")
        since_best = int(state.get("since_best", 0))
        if ctx.rank == 0:
            torch.set_rng_state(state["torch_rng"])
        start_epoch = int(state["epoch"]) + 1
        result.resumed_from = int(state["epoch"])
        progress("resume", (start_epoch - 1) / max(cfg.epochs, 1), epoch=int(state["epoch"]))
    if cfg.early_stopping_patience and since_best >= cfg.early_stopping_patience:
        result.stopped = "early_stopping"  # the resumed run had already stopped
    ddp_model = wrap_model(model, ctx)
    better = (lambda a, b: a > b) if higher_is_better else (lambda a, b: a < b)
    n_batches = max(len(train_loader), 1)

    for epoch in range(start_epoch, cfg.epochs + 1):
        if result.stopped != "completed":
            break
        t0 = time.perf_counter()
        if sampler is not None:
            sampler.set_epoch(epoch)
        set_train_mode(ddp_model, frozen_modules)
        loss_sum, seen = 0.0, 0
        for step, batch in enumerate(train_loader):
            if should_stop is not None and should_stop():
                result.stopped = "cancelled"
                break
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                loss, n = loss_fn(ddp_model, batch, device)
            if not torch.isfinite(loss):
                raise ConfigError(f"training diverged (loss {float(loss)} at epoch {epoch}); lower the learning rate")
            optimizer_step(loss, optimizer, scaler, params, cfg.grad_clip)
            loss_sum += float(loss.detach()) * n
            seen += n
            progress("train", ((epoch - 1) + (step + 1) / n_batches) / cfg.epochs, epoch=epoch, epochs=cfg.epochs,
                     loss=round(loss_sum / max(seen, 1), 5))
        if result.stopped == "cancelled":
            break
        train_loss = all_reduce_mean(loss_sum / max(seen, 1), ctx, weight=seen)
        metrics = validate(unwrap_model(ddp_model)) if validate is not None else {monitor: -train_loss}
        current = metrics.get(monitor)
        current = float("nan") if current is None else float(current)
        improved = not math.isnan(current) and (result.best_metric is None or better(current, result.best_metric))
        if improved:
            result.best_epoch, result.best_metric, result.best_val = epoch, current, metrics
            result.best_state = cpu_state(unwrap_model(ddp_model))
            since_best = 0
        else:
            since_best += 1
        record = {"epoch": epoch, "train_loss": round(train_loss, 6),
                  "val_metric": None if math.isnan(current) else round(current, 6), "monitor": monitor,
                  "lr": optimizer.param_groups[0]["lr"], "time_s": round(time.perf_counter() - t0, 2),
                  "best": improved}
        result.epochs.append(record)
        if scheduler is not None:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(current if not math.isnan(current) else -train_loss)
            else:
                scheduler.step()
        if ckpt is not None and ctx.is_main:
            save_checkpoint(ckpt, {
                "epoch": epoch, "model": cpu_state(unwrap_model(ddp_model)), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None, "history": result.epochs,
                "best_epoch": result.best_epoch, "best_metric": result.best_metric, "best_val": result.best_val,
                "best_state": result.best_state, "since_best": since_best, "torch_rng": torch.get_rng_state()})
        barrier(ctx)
        progress("validate", epoch / cfg.epochs, epoch=epoch, epochs=cfg.epochs, train_loss=record["train_loss"],
                 val_metric=record["val_metric"], monitor=monitor, best_epoch=result.best_epoch)
        if cfg.early_stopping_patience and since_best >= cfg.early_stopping_patience:
            result.stopped = "early_stopping"
    if result.best_state is not None:
        model.load_state_dict(result.best_state)
    model.eval()
    return result
