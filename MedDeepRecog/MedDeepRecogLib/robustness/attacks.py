"""FGSM and PGD (L-infinity) attacks on any classifier, for 2D slices or 3D volumes.

Inputs are batches in the model's own input units: ``(B, C, Z, Y, X)`` for volumes or ``(B, C, Y, X)`` for
slices. ``eps`` is in those units (e.g. 0.01 of a [0, 1]-scaled CT window); :func:`eps_in_hu` converts it.

Why the attacks are written here rather than taken from a library (``torchattacks``, ``foolbox`` and
``adversarial-robustness-toolbox`` are all on PyPI): torchattacks checks and clamps every input to [0, 1]
(its ``Attack._check_inputs`` raises otherwise), which breaks z-scored MR inputs and HU-scaled CT;
foolbox 3 and ART wrap the model in their own tensor/numpy abstractions (eagerpy / ``PyTorchClassifier`` with
a fixed ``input_shape``), add a dependency each, and we would still need our own eps-ball / intensity-range
checks and the adversarial-training hook. Both attacks are a few lines; they are tested against their
defining properties (FGSM's perturbation is ``eps * sign(grad)`` up to clipping; PGD stays inside the
eps-ball and the valid intensity range) in ``Testing/Python/test_robustness.py``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError

Bounds = tuple[float, float] | None
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_eps(eps: float, bounds: Bounds = None) -> float:
    """Validate an attack budget: ``eps > 0`` and smaller than the valid intensity range ``bounds``.

    Raises:
        ConfigError: eps is not a positive finite number, or is at least the whole intensity range (every
            input could then be replaced by any other, which is not a robustness question).
    """
    try:
        eps = float(eps)
    except (TypeError, ValueError):
        raise ConfigError(f"--eps must be a number, got {eps!r}") from None
    if not eps > 0 or eps != eps or eps == float("inf"):
        raise ConfigError(f"--eps must be > 0 (in the model's input units), got {eps}")
    if bounds is not None:
        lo, hi = float(bounds[0]), float(bounds[1])
        if not hi > lo:
            raise ConfigError(f"the valid intensity range must have low < high, got [{lo}, {hi}]")
        if eps >= hi - lo:
            raise ConfigError(f"--eps {eps} is outside the model's intensity range [{lo:.4g}, {hi:.4g}] "
                              f"(it must be smaller than the range width {hi - lo:.4g})")
    return eps


def _clip(x: torch.Tensor, bounds: Bounds) -> torch.Tensor:
    return x if bounds is None else x.clamp(float(bounds[0]), float(bounds[1]))


def _input_gradient(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor,
                    loss_fn: LossFn) -> torch.Tensor:
    """d loss / d x, without touching the parameters' ``.grad`` (safe inside a training step)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = loss_fn(model(x), target)
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def fgsm(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, eps: float, *,
         bounds: Bounds = None, loss_fn: LossFn = F.cross_entropy) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow et al. 2015): ``x + eps * sign(grad_x loss)``, clipped to ``bounds``.

    Args:
        model: classifier mapping ``x`` to logits ``(B, num_classes)``; its train/eval mode is left as is.
        x: input batch in model units, ``(B, C, *spatial)``.
        target: true (or predicted) class indices ``(B,)``; the attack increases their loss.
        eps: L-infinity budget in model input units (> 0).
        bounds: valid intensity range ``(low, high)`` of the model input, or None for no clipping.
        loss_fn: ``loss_fn(logits, target)``, cross-entropy by default.

    Returns:
        The adversarial batch, same shape and dtype as ``x``, detached.
    """
    eps = check_eps(eps, bounds)
    grad = _input_gradient(model, x, target, loss_fn)
    return _clip(x.detach() + eps * grad.sign(), bounds).detach()


def pgd(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, eps: float, *, steps: int = 10,
        step_size: float | None = None, random_start: bool = True, bounds: Bounds = None,
        loss_fn: LossFn = F.cross_entropy, generator: torch.Generator | None = None) -> torch.Tensor:
    """Projected gradient descent, L-infinity (Madry et al. 2018).

    Each of ``steps`` iterations takes a signed-gradient step of ``step_size`` (default ``2.5 * eps / steps``)
    and projects back onto the eps-ball around ``x`` and onto ``bounds``. With ``random_start`` the search
    starts at a uniform point of the ball. Same arguments and shapes as :func:`fgsm`.
    """
    eps = check_eps(eps, bounds)
    if int(steps) < 1:
        raise ConfigError(f"--steps must be >= 1, got {steps}")
    steps = int(steps)
    step_size = 2.5 * eps / steps if step_size is None else float(step_size)
    clean = x.detach()
    adv = clean.clone()
    if random_start:
        noise = torch.rand(clean.shape, generator=generator, dtype=clean.dtype).to(clean.device)
        adv = _clip(clean + (2 * noise - 1) * eps, bounds)
    for _ in range(steps):
        grad = _input_gradient(model, adv, target, loss_fn)
        adv = adv + step_size * grad.sign()
        adv = _clip(torch.max(torch.min(adv, clean + eps), clean - eps), bounds).detach()
    return adv


ATTACKS: dict[str, Callable[..., torch.Tensor]] = {"fgsm": fgsm, "pgd": pgd}


def attack(name: str, model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, eps: float, *,
           steps: int = 10, bounds: Bounds = None, random_start: bool = True,
           loss_fn: LossFn = F.cross_entropy) -> torch.Tensor:
    """Run the attack called ``name`` (``"fgsm"`` or ``"pgd"``); ``steps``/``random_start`` apply to PGD."""
    if name not in ATTACKS:
        raise ConfigError(f"unknown attack {name!r}; choose one of {', '.join(ATTACKS)}")
    if name == "fgsm":
        return fgsm(model, x, target, eps, bounds=bounds, loss_fn=loss_fn)
    return pgd(model, x, target, eps, steps=steps, bounds=bounds, random_start=random_start, loss_fn=loss_fn)


def parse_eps_list(values: Sequence[float | str] | str) -> list[float]:
    """``"0.01,0.02"`` or ``[0.01, "0.02"]`` -> sorted unique positive floats (each validated by :func:`check_eps`)."""
    if isinstance(values, str):
        parts = [part.strip() for part in values.strip().split(",")]
        if not all(parts):
            raise ConfigError(f"--eps {values!r} has an empty item; give numbers separated by commas")
        values = [v for part in parts for v in part.split()]
    out = sorted({check_eps(v) for v in values})
    if not out:
        raise ConfigError("--eps needs at least one value")
    return out
