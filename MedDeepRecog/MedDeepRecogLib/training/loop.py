"""The one epoch loop: classification training, segmentation fine-tuning and ROI fine-tuning all run :func:`fit`.

``fit(model, train_loader, step, validate, cfg, hooks, progress, ctx, memory_format) -> History``

What a task plugs in:

- ``step(net, batch) -> StepOutput(loss, n, correct)``: the forward pass and loss of one training batch, already on
  the device (e.g. :class:`.classification.ClassificationStep`: cross-entropy plus L1; fine-tuning: Dice-CE).
- ``validate(model, device) -> Validation``: metrics of this epoch's weights (``metrics`` holds the monitored one,
  or ``loss`` for ``monitor: loss``). Under DDP every rank calls it and must get the same answer (validate on rank 0
  and broadcast, or shard and gather). ``None``: no validation data, so nothing is scored: ``best_val`` stays
  ``None``, every epoch records ``val_metric: null`` and the ``monitor`` it was ranked by, ``train_loss`` (lower is
  better) or, with ``monitor: last``, ``last`` (the final epoch is kept). A training loss is never reported as a
  validation metric.

What the loop owns, once for every task:

- ``cfg`` (:class:`FitConfig`): the shared config sections as they are (:mod:`.sections`: optimiser, schedule with
  warm-up, epochs, early stopping, gradient clipping, weight averaging ``ema_decay`` (validation, selection and the
  returned weights use an exponential moving average of the weights and BatchNorm statistics), AMP on CUDA, device)
  plus the monitored metric, the seed and the checkpoint folder.
- ``hooks`` (:class:`Hooks`), all optional:
    * ``augment(batch) -> batch``: random augmentation of a training batch (e.g. :class:`.augment.BatchAugment`),
      on the CPU, or on the GPU when training there (the batch is copied first); its ``get_state``/``set_state`` go
      into the checkpoint.
    * ``batch_transform(model, batch, info) -> batch``: called on every training batch on the device right before
      the loss (``info`` = {"epoch", "step", "device"}); other parts put their own batch work here (adversarial
      examples come from ``robustness/``). The model is in train mode and is put back in train mode afterwards.
    * ``frozen``: module paths (``"encoder"``, ``"features.conv1"``) whose parameters are not trained; their
      normalisation layers stay in eval mode.
    * ``param_groups(model) -> list[dict]``: optimiser parameter groups; default: all trainable parameters.
    * ``on_epoch_end(record, model) -> bool | None``: called after validation and checkpointing; ``True`` stops.
    * ``should_stop() -> bool``: polled before every batch; ``True`` cancels at once.
- ``progress(stage, fraction, **extra)`` (:class:`..progress.Progress` or any callable), on rank 0 only.
- Order of a training step: augment, to the device (on CUDA: to the device, then augment there), ``batch_transform``,
  forward and loss (autocast on CUDA with AMP), a non-finite loss stops the run **before** any optimiser step,
  backward (gradient clipping), step, EMA.

With ``cfg.checkpoint_dir`` the loop writes ``last.pt`` after every epoch (model, optimiser, scheduler, history,
best weights, EMA weights, the torch and loader random states, the augmentation state of ``hooks.augment`` and of
a training data set with ``get_state``/``set_state``) atomically, and with ``cfg.resume`` continues from it, so a
cancelled or killed run resumed to the end equals an uninterrupted one. Checkpoints are loaded with
``torch.load(weights_only=True)``. At the end the model holds the best weights (``restore_best``).

Distributed data parallel (``ctx``: a multi-process :class:`.distributed.DistContext`, as under ``torchrun``): the
model is wrapped in ``DistributedDataParallel`` for the training steps, each rank seeds ``seed + rank`` (its own
dropout and in-data-set augmentation), the loader's ``DistributedSampler`` gets ``set_epoch`` every epoch, training
loss and accuracy are averaged over ranks, the validation function gives every rank the same metrics, so all take the
same best-epoch, schedule and early-stopping decisions. Only rank 0 writes ``last.pt`` (with its own random states,
which only rank 0 restores). With ``ctx=None`` (or one process) nothing of this applies.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..errors import ConfigError
from ..progress import null_progress
from . import compilation
from .sections import HIGHER_IS_BETTER, LoopConfig, OptimizerConfig, ScheduleConfig

log = logging.getLogger(__name__)

# "last": no selection, the final epoch's weights are kept, so the validation split decides nothing and its
# figures are a held-out estimate (pair it with a schedule that anneals, e.g. cosine)

CHECKPOINT = "last.pt"


@dataclass
class FitConfig:
    """What one run of :func:`fit` follows: the shared config sections as they are, plus the run's own choices.

    Attributes:
        optimizer, schedule, loop: the ``optimizer:``, ``schedule:`` and ``training:`` sections (:mod:`.sections`;
            a train config's ``training`` section is a :class:`.sections.LoopConfig` with more fields).
        monitor: the validation metric that selects the best epoch (a key of :data:`HIGHER_IS_BETTER`).
        seed: seeds python, numpy and torch (plus the rank under DDP).
        checkpoint_dir: folder of ``last.pt``; ``None``: no checkpoints. resume: continue from it.
        restore_best: end with the best epoch's weights (else the last, or the EMA weights).
    """

    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    monitor: str = "auc"
    seed: int = 0
    checkpoint_dir: str | Path | None = None
    resume: bool = False
    restore_best: bool = True


@dataclass
class StepOutput:
    """One training batch's result: the scalar ``loss`` to back-propagate, the ``n`` samples it covers and,
    for classifiers, how many of them were ``correct`` (the training accuracy)."""

    loss: torch.Tensor
    n: int
    correct: int | None = None


@dataclass
class Validation:
    """One epoch's validation: ``metrics`` (kept as ``History.best_val`` for the best epoch), the validation
    ``loss`` when there is one (``monitor: loss``), and the fields it adds to the epoch's history ``record``."""

    metrics: dict
    loss: float | None = None
    record: dict = field(default_factory=dict)  # empty: the record shows ``val_metric`` and ``monitor``


StepFn = Callable[[nn.Module, Any], StepOutput]
ValidateFn = Callable[[nn.Module, torch.device], Validation]


@dataclass
class Hooks:
    """Extension points of :func:`fit` (see the module docstring)."""

    augment: Callable[[Any], Any] | None = None
    batch_transform: Callable[[nn.Module, Any, dict], Any] | None = None
    frozen: Sequence[str] = ()
    param_groups: Callable[[nn.Module], list[dict]] | None = None
    on_epoch_end: Callable[[dict, nn.Module], bool | None] | None = None
    should_stop: Callable[[], bool] | None = None


@dataclass
class History:
    """What :func:`fit` returns: one record per epoch plus the best epoch."""

    epochs: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    best_metric: float | None = None
    best_val: dict | None = None
    monitor: str = "auc"
    stopped: str = "completed"  # completed | early_stopping | cancelled | hook
    resumed_from: int | None = None
    compiled: str | None = None  # "on: <why>" / "off: <why>" (training/compile, :mod:`.compilation`)
    best_state: dict | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("best_state")
        return d

    def summary(self) -> dict[str, Any]:
        """The short form the fine-tuning outputs record (``epochs_run``, best epoch/metric, ``history``)."""
        return {"epochs_run": len(self.epochs), "best_epoch": self.best_epoch, "best_metric": self.best_metric,
                "stopped": self.stopped, "resumed_from": self.resumed_from, "compiled": self.compiled,
                "history": self.epochs}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def apply_frozen(model: nn.Module, frozen: Sequence[str]) -> list[nn.Module]:
    """Turn off gradients below each path in ``frozen``; returns the frozen modules."""
    mods = []
    for path in frozen:
        try:
            m = model.get_submodule(path)
        except AttributeError:
            raise ConfigError(f"cannot freeze {path!r}: the model has no such module") from None
        for p in m.parameters():
            p.requires_grad_(False)
        mods.append(m)
    return mods


def make_optimizer(params: Any, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    name = cfg.name.lower()
    if name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    raise ConfigError(f"unknown optimizer {cfg.name!r} (adam, adamw, sgd)")


def make_scheduler(opt: torch.optim.Optimizer, cfg: FitConfig):
    """Epoch-wise schedule from ``cfg.schedule``; ``warmup_epochs`` ramps the lr linearly first (step/cosine).

    The cosine curve spans ``cfg.loop.epochs``. A run resumed with more epochs (``train --resume``, a ``finetune``
    re-run) is rebuilt for the new total: the epochs already run keep the rates they had, the next ones follow the
    longer curve from the resumed epoch on (:func:`resume_schedule`), so the rate steps up once (the longer curve
    stands higher there than the shorter one ended) and only reaches ``min_lr`` after the new last epoch.
    """
    s, lr = cfg.schedule, cfg.optimizer.lr
    name = s.name.lower()
    if name == "plateau":
        mode = "max" if HIGHER_IS_BETTER[cfg.monitor] else "min"
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=mode, factor=s.factor, patience=s.patience,
                                                          min_lr=s.min_lr)
    w = max(int(s.warmup_epochs), 0)
    if name == "none":
        main = None
    elif name == "step":
        main = lambda e: s.gamma ** ((e - w) // max(s.step_size, 1))  # noqa: E731
    elif name == "cosine":
        span = max(cfg.loop.epochs - w, 1)
        floor = s.min_lr / lr if lr else 0.0
        main = lambda e: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(e - w, span) / span))  # noqa: E731
    else:
        raise ConfigError(f"unknown schedule {s.name!r} (none, step, cosine, plateau)")
    if main is None and w == 0:
        return None
    f = (lambda e: (e + 1) / (w + 1) if e < w else (main(e) if main else 1.0))
    return torch.optim.lr_scheduler.LambdaLR(opt, f)


def resume_schedule(scheduler, optimizer: torch.optim.Optimizer) -> None:
    """Give the resumed epoch the learning rate of this run's schedule, not the one the checkpoint carries.

    The checkpointed optimiser holds the rate that the schedule of the run which wrote it set for the next epoch:
    after a finished cosine run that is ``min_lr`` (0), and a run resumed with more epochs would train its first new
    epoch there. The schedule's function is rebuilt from this run's config (only the epoch reached comes from the
    checkpoint), so it gives the rate for the new total; with unchanged epochs it is the checkpointed one. A plateau
    schedule has no such function: its rate is its state, kept as it was.
    """
    if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        return
    for group, base_lr, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base_lr * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # what get_last_lr() reports


def autocast(device: torch.device, amp: bool):
    """fp16 autocast on CUDA with ``amp``; nothing otherwise (autocast on the CPU is very slow here)."""
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def use_amp(device: torch.device, amp: bool | str) -> bool:
    """Whether a run on ``device`` with the ``training/amp`` setting uses mixed precision (CUDA only)."""
    return device.type == "cuda" and amp in (True, "auto", "true")


def set_train_mode(model: nn.Module, frozen_modules: Sequence[nn.Module]) -> None:
    """``model.train()`` except the frozen modules, whose normalisation layers keep their statistics."""
    model.train()
    for m in frozen_modules:
        m.eval()


def cpu_state(model: nn.Module) -> dict:
    """A CPU copy of ``model.state_dict()`` (pass the plain module, not a DDP wrapper)."""
    return {k: v.detach().to("cpu").clone(memory_format=torch.contiguous_format) for k, v in model.state_dict().items()}


def save_checkpoint(path: Path, payload: dict) -> None:
    """``torch.save(payload)`` to ``path`` atomically (its folder is created)."""
    from ..io import atomic_output
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        torch.save(payload, str(tmp))


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler, clip_params,
                   grad_clip: float | None) -> None:
    """Backward pass and optimiser step, through the AMP ``scaler`` when there is one (CUDA), clipping the
    gradient norm of ``clip_params`` to ``grad_clip`` when set."""
    if scaler is not None:
        scaler.scale(loss).backward()
        if grad_clip:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(clip_params, grad_clip)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(clip_params, grad_clip)
        optimizer.step()


_FORMAT_NDIM = {torch.channels_last: 4, torch.channels_last_3d: 5}


def to_device(batch: Any, device: torch.device, memory_format: torch.memory_format | None = None) -> Any:
    """``batch`` (a tensor, or a list / tuple / dict of them) on ``device``; floating-point images of the rank that
    ``memory_format`` is for (4D for ``channels_last``, 5D for ``channels_last_3d``) in that layout."""
    if isinstance(batch, torch.Tensor):
        if memory_format is not None and batch.is_floating_point() and batch.ndim == _FORMAT_NDIM[memory_format]:
            return batch.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device, memory_format) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device, memory_format) for v in batch)
    return batch


def fit(model: nn.Module, train_loader, step: StepFn, validate: ValidateFn | None, cfg: FitConfig | None = None,
        hooks: Hooks | None = None, progress: Callable[..., None] | None = None, ctx: Any = None,
        memory_format: torch.memory_format | None = None) -> History:
    """Train ``model`` for ``cfg.loop.epochs`` epochs, keeping the best epoch by ``validate``'s ``cfg.monitor``.

    Args:
        step, validate: the task (see the module docstring).
        ctx: a :class:`.distributed.DistContext` (its ``device`` is used; multi-process: DDP); ``None``: one
            process on ``cfg.loop.device``.
        memory_format: layout of the network and the batch images (``channels_last`` for 2D classifiers:
            about 1.6x faster convolutions on the CPU, same results).

    Returns a :class:`History`; the model ends on the device, in eval mode, with the best weights.
    """
    from ..devices import resolve_device

    cfg = cfg or FitConfig()
    hooks = hooks or Hooks()
    dist_on = ctx is not None and ctx.enabled
    progress = progress if progress is not None and (ctx is None or ctx.is_main) else null_progress
    if cfg.monitor not in HIGHER_IS_BETTER:
        raise ConfigError(f"unknown monitor {cfg.monitor!r}; choose one of {', '.join(HIGHER_IS_BETTER)}")
    epochs = int(cfg.loop.epochs)
    rank = ctx.rank if ctx is not None else 0
    seed_everything(cfg.seed + rank)
    device = torch.device(ctx.device) if ctx is not None else resolve_device(cfg.loop.device, setting="training/device")
    amp = use_amp(device, cfg.loop.amp)
    model.to(device)
    if memory_format is not None:
        model.to(memory_format=memory_format)
    frozen_modules = apply_frozen(model, hooks.frozen)
    params = hooks.param_groups(model) if hooks.param_groups else [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("nothing to train: every parameter is frozen")
    optimizer = make_optimizer(params, cfg.optimizer)
    scheduler = make_scheduler(optimizer, cfg)
    scaler = torch.amp.GradScaler("cuda") if amp else None
    ema = None
    if cfg.loop.ema_decay:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(float(cfg.loop.ema_decay)), use_buffers=True)
    eval_model = ema.module if ema is not None else model
    net = model  # what the training steps call: the DDP wrapper in a multi-process run
    if dist_on:
        from .distributed import wrap_model
        net = wrap_model(model, ctx)
    random_states = _RandomStates(train_loader, hooks.augment)

    history = History(monitor=cfg.monitor)
    # without validation the epochs are ranked by minus the training loss: higher is better whatever the monitor
    higher = HIGHER_IS_BETTER[cfg.monitor] if validate is not None else True
    # what the records say ranked the epochs: without validation the training loss (or just the last epoch)
    ranked_by = cfg.monitor if validate is not None or cfg.monitor == "last" else "train_loss"
    better = (lambda a, b: a > b) if higher else (lambda a, b: a < b)
    since_best = 0
    start_epoch = 1
    ckpt = Path(cfg.checkpoint_dir) / CHECKPOINT if cfg.checkpoint_dir else None
    if ckpt is not None and cfg.resume and ckpt.is_file():
        try:
            state = torch.load(str(ckpt), map_location="cpu", weights_only=True)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except Exception as exc:
            raise ConfigError(f"cannot resume from this checkpoint ({checkpoint_fault(exc)}); delete it to start over",
                              ckpt) from None
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
            resume_schedule(scheduler, optimizer)
        history.epochs = list(state["history"])
        history.best_epoch, history.best_metric = state["best_epoch"], state["best_metric"]
        history.best_val, history.best_state = state.get("best_val"), state.get("best_state")
        since_best = int(state.get("since_best", 0))
        if ema is not None and state.get("ema"):
            ema.load_state_dict(state["ema"])
        if rank == 0:  # the checkpoint holds rank 0's random states
            random_states.restore(state)
        start_epoch = int(state["epoch"]) + 1
        history.resumed_from = int(state["epoch"])
        progress("resume", (start_epoch - 1) / epochs, epoch=int(state["epoch"]))
        if cfg.loop.early_stopping_patience and since_best >= cfg.loop.early_stopping_patience:
            history.stopped = "early_stopping"  # the resumed run had already stopped: train no further
            start_epoch = epochs + 1

    n_batches = max(len(train_loader), 1)
    eager_net, first_compiled_step, decision = net, False, None
    if start_epoch <= epochs:
        decision = compilation.decide_compile(cfg.loop.compile, model, device,
                                              (epochs - start_epoch + 1) * n_batches, dist_on)
        history.compiled = f"{'on' if decision.compile else 'off'}: {decision.reason}"
        if decision.compile:
            net, first_compiled_step = compilation.compiled(net), True
            progress("compile", (start_epoch - 1) / epochs, reason=decision.reason)
    for epoch in range(start_epoch, epochs + 1):
        t0 = time.perf_counter()
        if hasattr(getattr(train_loader, "sampler", None), "set_epoch"):  # DistributedSampler: a new shuffle
            train_loader.sampler.set_epoch(epoch)
        set_train_mode(model, frozen_modules)
        loss_sum, seen, correct = 0.0, 0, None
        for step_index, batch in enumerate(train_loader):
            if hooks.should_stop and hooks.should_stop():
                history.stopped = "cancelled"
                break
            if device.type == "cuda":  # the copy first: the batch's augmentation runs on the GPU
                batch = to_device(batch, device)
            if hooks.augment is not None:
                batch = hooks.augment(batch)
            batch = to_device(batch, device, memory_format)
            if hooks.batch_transform is not None:
                batch = hooks.batch_transform(model, batch, {"epoch": epoch, "step": step_index, "device": device})
                set_train_mode(model, frozen_modules)
            if decision is not None and decision.if_cache_holds:  # a short run's first batch: is the cache warm?
                decision = compilation.warm_decision(decision, model, device, compilation.batch_shape(batch) or ())
                if decision.compile:
                    history.compiled = f"on: {decision.reason}"
                    net, first_compiled_step = compilation.compiled(net), True
                    progress("compile", (epoch - 1) / epochs, reason=decision.reason)
                decision = compilation.CompileDecision(decision.compile, decision.reason)  # decided: ask once
            try:
                out = _train_step(net, step, batch, optimizer, scaler, model, cfg.loop.grad_clip, device, amp, epoch)
            except Exception as exc:
                if not first_compiled_step:
                    raise
                # the first compiled step compiles (forward, then backward): a failure there is torch.compile's (no
                # compiler, an unsupported layer); the eager network redoes the step and re-raises a genuine error
                log.warning("torch.compile failed (%s); training continues uncompiled",
                            str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
                history.compiled = f"off: torch.compile failed ({type(exc).__name__})"
                net = eager_net
                out = _train_step(net, step, batch, optimizer, scaler, model, cfg.loop.grad_clip, device, amp, epoch)
            if first_compiled_step and net is not eager_net:  # compiled, so the compile cache now holds it
                compilation.note_compiled(model, device, compilation.batch_shape(batch) or ())
            first_compiled_step = False
            if ema is not None:
                ema.update_parameters(model)
            loss_sum += float(out.loss.detach()) * out.n
            seen += out.n
            if out.correct is not None:
                correct = (correct or 0) + int(out.correct)
            progress("train", ((epoch - 1) + (step_index + 1) / n_batches) / epochs, epoch=epoch, epochs=epochs,
                     loss=round(loss_sum / max(seen, 1), 5))
        if history.stopped == "cancelled":
            break

        train_loss = _rank_mean(loss_sum, seen, ctx)
        if validate is not None:
            val = validate(eval_model, device)
            current = val.loss if cfg.monitor == "loss" else val.metrics.get(cfg.monitor)
        else:  # no validation data: minus the training loss ranks the epochs, but it is no validation metric
            current = -train_loss
            val = Validation({}, record={"val_metric": None, "monitor": ranked_by})
        if cfg.monitor == "last":
            current = float(epoch)
        current = float("nan") if current is None else float(current)
        improved = not math.isnan(current) and (history.best_metric is None or better(current, history.best_metric))
        if improved:
            history.best_epoch, history.best_metric, history.best_val = epoch, current, val.metrics or None
            history.best_state = cpu_state(eval_model)
            since_best = 0
        else:
            since_best += 1
        record = {"epoch": epoch, "train_loss": round(train_loss, 6)}
        if correct is not None:
            record["train_accuracy"] = round(_rank_mean(correct, seen, ctx), 6)
        # monitor: last ranks the epochs by their number, which is no metric: it is never shown as one
        shown = None if math.isnan(current) or validate is None or cfg.monitor == "last" else current
        record.update(val.record or {"val_metric": None if shown is None else round(shown, 6),
                                     "monitor": cfg.monitor})
        record.update({"lr": optimizer.param_groups[0]["lr"], "time_s": round(time.perf_counter() - t0, 2),
                       "best": improved})
        history.epochs.append(record)

        if scheduler is not None:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(current if not math.isnan(current) else (val.loss if val.loss is not None
                                                                        else -train_loss))
            else:
                scheduler.step()
        if ckpt is not None and (not dist_on or ctx.is_main):
            save_checkpoint(ckpt, {
                "epoch": epoch, "model": cpu_state(model), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "history": history.epochs, "best_epoch": history.best_epoch, "best_metric": history.best_metric,
                "best_val": history.best_val, "best_state": history.best_state, "since_best": since_best,
                "ema": {k: v.detach().cpu().clone() for k, v in ema.state_dict().items()} if ema is not None else None,
                **random_states.save()})
        if dist_on:
            from .distributed import barrier
            barrier(ctx)  # no rank runs ahead of rank 0's checkpoint
        progress("validate", epoch / epochs, epoch=epoch, epochs=epochs, train_loss=record["train_loss"],
                 val_metric=shown, monitor=ranked_by, best_epoch=history.best_epoch,
                 **({"val_loss": round(val.loss, 5)} if val.loss is not None else {}),
                 **{k: v for k, v in (val.record or {}).items()   # the validation figures computed (val_auc, ...)
                    if k.startswith("val_") and k not in ("val_loss", "val_metric")
                    and isinstance(v, (int, float)) and not isinstance(v, bool)})
        hook_stop = hooks.on_epoch_end is not None and bool(hooks.on_epoch_end(record, model))
        if dist_on:  # rank 0 decides, so no rank is left waiting in the next epoch's all-reduce
            from .distributed import broadcast_object
            hook_stop = broadcast_object(hook_stop, ctx)
        if hook_stop:
            history.stopped = "hook"
            break
        if cfg.loop.early_stopping_patience and since_best >= cfg.loop.early_stopping_patience:
            history.stopped = "early_stopping"
            break

    if cfg.restore_best and history.best_state is not None:
        model.load_state_dict(history.best_state)
    elif ema is not None:
        model.load_state_dict(cpu_state(ema.module))
    if memory_format is not None:
        model.to(memory_format=torch.contiguous_format)
    model.eval()
    return history


def _train_step(net: nn.Module, step: StepFn, batch, optimizer, scaler, model: nn.Module, grad_clip, device, amp: bool,
                epoch: int) -> StepOutput:
    """One optimiser step: gradients cleared, the task's ``step`` on ``net``, the loss checked, the update."""
    optimizer.zero_grad(set_to_none=True)
    with autocast(device, amp):
        out = step(net, batch)
    if not torch.isfinite(out.loss.detach()):  # before the step: a diverged loss never moves the weights
        raise ConfigError(f"training diverged (loss {float(out.loss.detach())} at epoch {epoch}); lower the "
                          "learning rate")
    optimizer_step(out.loss, optimizer, scaler, model.parameters(), grad_clip)
    return out


def _rank_mean(total: float, n: int, ctx) -> float:
    """``sum(total) / sum(n)`` over ranks (e.g. summed loss / samples); ``total / n`` in one process."""
    if ctx is None or not ctx.enabled:
        return total / max(n, 1)
    from .distributed import all_reduce_mean

    return all_reduce_mean(total / max(n, 1), ctx, weight=n)


class _RandomStates:
    """The random states a checkpoint carries so a resumed run draws what an uninterrupted one would: torch's,
    the loader's shuffling generator, and the augmentation state of ``augment`` and of the training data set
    (anything with ``get_state() -> dict`` / ``set_state(dict)``, e.g. data sets that augment inside
    ``__getitem__``)."""

    def __init__(self, loader, augment):
        self.generator = getattr(loader, "generator", None)
        dataset = getattr(loader, "dataset", None)
        self.augment = augment if hasattr(augment, "get_state") else None
        self.dataset = dataset if hasattr(dataset, "get_state") else None

    def save(self) -> dict:
        return {"torch_rng": torch.get_rng_state(),
                "loader_rng": self.generator.get_state() if self.generator is not None else None,
                "augment": self.augment.get_state() if self.augment is not None else None,
                "dataset_rng": self.dataset.get_state() if self.dataset is not None else None}

    def restore(self, state: dict) -> None:
        torch.set_rng_state(state["torch_rng"])
        if self.generator is not None and state.get("loader_rng") is not None:
            self.generator.set_state(state["loader_rng"])
        if self.augment is not None and state.get("augment"):
            self.augment.set_state(state["augment"])
        if self.dataset is not None and state.get("dataset_rng"):
            self.dataset.set_state(state["dataset_rng"])


def checkpoint_fault(exc: BaseException) -> str:
    """Why a checkpoint could not be loaded, in a few words: for weights of another network, its first missing,
    unexpected or mis-sized parameter (torch's first line only names the class); for a file torch cannot read at
    all, that it is not a checkpoint (torch's own words can be a bare number)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if lines and lines[0].startswith("Error(s) in loading state_dict"):
        detail = lines[1] if len(lines) > 1 else ""
        return f"weights of another network: {detail[:200]}"
    text = " ".join(lines).lower()
    if isinstance(exc, (KeyError, TypeError, EOFError)) or not lines or lines[0].isdigit() or any(
            word in text for word in ("pickle", "weights_only", "weights only", "zip archive", "streamreader")):
        # torch's own words for an unreadable file suggest loading it unsafely (weights_only=False): never done
        return f"not a training checkpoint ({type(exc).__name__})"
    return lines[0][:200]
