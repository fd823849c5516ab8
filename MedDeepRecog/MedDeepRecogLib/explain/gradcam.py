"""Grad-CAM and Grad-CAM++ computed in the same pass as the prediction.

Why not ``monai.visualize.GradCAM``: it runs its own forward pass and a full ``backward()`` that also fills every
parameter's ``.grad``; measured on this project's CNNs it costs about 2.9x a plain forward pass (captum's
``LayerGradCam`` about 1.2x). Here the classifier runs **once** with a forward hook that keeps the target layer's
activation ``A``; the logits of that pass are the prediction, and ``torch.autograd.grad(score, A)`` takes the
gradient to that activation only — parameters have ``requires_grad`` switched off for the call, so autograd records
and differentiates nothing below the target layer and fills no ``.grad``. ``bench/classify.py`` prints the ratio
next to MONAI's.

Every method returns a **model-space** map: ``(N, *spatial)`` float32 in 0..1 on the target layer's grid
(``(N, h, w)`` for 2D models, ``(N, d, h, w)`` for 3D), one map per input of the batch; bringing it back to the
scan grid is :mod:`MedDeepRecogLib.inference.heatmap`'s job.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import nn


@dataclass
class ExplainedPass:
    """The result of one forward pass with an explanation.

    Attributes:
        logits: ``(N, num_classes)`` logits of the pass (detached).
        maps: ``(N, *spatial)`` float32 maps in 0..1 on the target layer's grid, or ``None`` if none was asked.
        class_index: ``(N,)`` class whose score was explained for each input.
        raw: ``(N, *spatial)`` the maps before scaling (ReLU'd weighted activations): :func:`scale_maps` of any
            subset of them is what a pass over that subset alone would return, with the same classes and weights.
    """

    logits: torch.Tensor
    maps: torch.Tensor | None
    class_index: torch.Tensor
    raw: torch.Tensor | None = None


def resolve_layers(model: nn.Module, name: str) -> list[tuple[str, nn.Module]]:
    """The sub-modules called ``name``: a dotted path as in ``model.named_modules()``, or a pattern where ``*``
    stands for one path component (``members.*.features.conv4``: that layer in every member of an ensemble).

    Raises:
        KeyError: naming the closest available layers, when nothing matches.
    """
    modules = dict(model.named_modules())
    if name in modules:
        return [(name, modules[name])]
    if "*" in name:
        pattern = re.compile("^" + re.escape(name).replace(r"\*", r"[^.]+") + "$")
        found = [(n, m) for n, m in modules.items() if pattern.match(n)]
        if found:
            return found
    convs = [n for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    raise KeyError(f"model has no layer {name!r}; convolution layers are: {', '.join(convs[-6:]) or 'none'}")


def has_layer(model: nn.Module, name: str) -> bool:
    """Whether ``name`` (a dotted path or a ``*`` pattern, as :func:`resolve_layers` reads it) names a layer of
    ``model``."""
    try:
        return bool(resolve_layers(model, name))
    except KeyError:
        return False


def last_conv_layer(model: nn.Module) -> str:
    """Name of the last ``Conv2d``/``Conv3d`` in registration order (a sensible default Grad-CAM target)."""
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    if not names:
        raise KeyError("model has no convolution layer to explain")
    return names[-1]


@contextlib.contextmanager
def _frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Switch ``requires_grad`` off on every parameter for the duration (restored afterwards)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _activation_tensor(output) -> torch.Tensor:
    # Some blocks return tuples (e.g. (features, state)); the first tensor is the activation map.
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    raise TypeError(f"target layer returned {type(output).__name__}, not a tensor")


def scale_maps(cam: torch.Tensor) -> torch.Tensor:
    """Scale each map of ``(N, *spatial)`` to 0..1 (a flat map becomes all zeros)."""
    flat = cam.reshape(cam.shape[0], -1)
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    flat = (flat - lo) / (hi - lo).clamp_min(1e-12)
    return flat.reshape(cam.shape)


def _merge_flip_view(model: nn.Module, act: torch.Tensor, grad: torch.Tensor, n: int,
                     input_ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A model with a test-time flip (``flip_dims``, :class:`..models.ensemble.MeanEnsemble`) runs each input twice
    in one batch, ``(2n, K, *spatial)``: the originals, then their mirror images. The mirror view's activation and
    gradient are flipped back onto the input's orientation and joined as further channels ``(n, 2K, *spatial)``:
    Grad-CAM of the view-averaged score, as the members of an ensemble are joined. The channel weights of both
    methods are spatial sums, which a flip leaves unchanged, so the map of a mirrored input is the mirrored map."""
    dims = tuple(getattr(model, "flip_dims", ()) or ())
    if not dims or act.shape[0] != 2 * n:
        return act, grad
    if act.ndim != input_ndim:
        raise ValueError(f"a test-time flip is explained on a layer laid out like the input; this one has shape "
                         f"{tuple(act.shape)}")
    return (torch.cat([act[:n], act[n:].flip(dims)], dim=1), torch.cat([grad[:n], grad[n:].flip(dims)], dim=1))


def explained_forward(model: nn.Module, x: torch.Tensor, target_layer: str, *, method: str = "gradcam",
                      class_index: Sequence[int] | torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None = None,
                      score_weight: torch.Tensor | None = None, joint: bool = False,
                      forward=None) -> ExplainedPass:
    """Run ``model`` once on ``x`` and explain the chosen class with Grad-CAM or Grad-CAM++.

    Args:
        model: a classifier in eval mode returning ``(N, num_classes)`` logits.
        x: ``(N, C, H, W)`` or ``(N, C, D, H, W)`` input batch.
        target_layer: dotted name of the layer whose activation ``(N, K, *spatial)`` is explained, or a pattern
            with ``*`` (:func:`resolve_layers`) matching several layers of the same shape, explained together.
        method: ``"gradcam"`` (Selvaraju et al. 2017: weights = spatial mean of the gradient) or ``"gradcampp"``
            (Chattopadhay et al. 2018: weights from second/third-order terms, sharper for several instances).
        class_index: class to explain per input; or a function ``logits (N, K) -> (N,)`` called on this pass's
            logits (e.g. to explain a slice stack's aggregated class); default the arg-max class of each input.
        score_weight: ``(N,)`` weights of each input's score (0 leaves an input out, e.g. empty slices).
        joint: scale all maps of the batch together (one slice stack) instead of each map to its own 0..1.
        forward: optional callable ``forward(model, x) -> logits`` (for models that need extra arguments).

    Returns:
        :class:`ExplainedPass` with the pass's logits and ``(N, *spatial)`` maps in 0..1 (ReLU'd, per-map scaled).
    """
    if method not in ("gradcam", "gradcampp"):
        raise ValueError(f"unknown Grad-CAM method {method!r}")
    layers = resolve_layers(model, target_layer)
    kept: list[list[torch.Tensor]] = [[] for _ in layers]

    def make_hook(slot: int):
        def hook(_module, _inputs, output):
            # Cut the graph at the target layer: its output becomes a leaf that requires grad, so autograd records
            # only the layers after it (nothing upstream is kept for backward, no parameter gets a gradient).
            act = _activation_tensor(output).detach().requires_grad_(True)
            kept[slot].append(act)
            # The network goes on with a copy: an in-place op after the layer (an in-place ReLU) may change it,
            # never the kept activation, and the gradient still reaches the activation through the copy.
            flowing = act.clone()
            if isinstance(output, torch.Tensor):
                return flowing
            items = list(output)
            items[next(i for i, v in enumerate(items) if isinstance(v, torch.Tensor))] = flowing
            return type(output)(items) if isinstance(output, tuple) else items
        return hook

    handles = [layer.register_forward_hook(make_hook(i)) for i, (_, layer) in enumerate(layers)]
    try:
        with _frozen_parameters(model), torch.enable_grad():
            logits = forward(model, x) if forward is not None else model(x)
            missing = [n for (n, _), group in zip(layers, kept) if not group]
            if missing:
                raise RuntimeError(f"layer {missing[0]!r} was not called in the forward pass")
            if class_index is None:
                idx = logits.argmax(dim=1)
            elif callable(class_index):
                idx = class_index(logits.detach())
            else:
                idx = torch.as_tensor(class_index, device=logits.device).reshape(-1).expand(logits.shape[0])
            scores = logits.gather(1, idx[:, None])[:, 0]
            if score_weight is not None:
                scores = scores * score_weight.to(scores)
            score = scores.sum()
            flat = [a for group in kept for a in group]
            flat_grads = iter(torch.autograd.grad(score, flat, allow_unused=True))
            grads = [[next(flat_grads) for _ in group] for group in kept]
    finally:
        for handle in handles:
            handle.remove()
    # A layer reused by the network (a per-slice encoder inside a sequence model is called once per batch):
    # its calls are concatenated along the batch axis in call order. Several layers (a pattern over ensemble
    # members): their activations are concatenated along the channel axis, i.e. explained as one layer.
    acts, grad_parts = [], []
    for group, group_grads in zip(kept, grads):
        group_grads = [torch.zeros_like(a) if g is None else g for a, g in zip(group, group_grads)]
        acts.append(group[0] if len(group) == 1 else torch.cat(group, dim=0))
        grad_parts.append(group_grads[0] if len(group_grads) == 1 else torch.cat(group_grads, dim=0))
    if len({tuple(a.shape[:1]) + tuple(a.shape[2:]) for a in acts}) != 1:
        raise ValueError(f"the layers matching {target_layer!r} have different shapes "
                         f"{[tuple(a.shape) for a in acts]}; they cannot be explained together")
    act = acts[0] if len(acts) == 1 else torch.cat(acts, dim=1)
    grad = grad_parts[0] if len(grad_parts) == 1 else torch.cat(grad_parts, dim=1)
    act = act.detach()
    n = logits.shape[0]
    act, grad = _merge_flip_view(model, act, grad, n, x.ndim)
    if act.shape[0] != n and act.shape[0] % n == 0:
        # A per-slice encoder inside a sequence model (CNN-LSTM): activations are (N*Z, K, y, x); explain the
        # volume as one 3D map (N, K, Z, y, x) so weights and scaling are shared across its slices.
        z = act.shape[0] // n
        act = act.reshape(n, z, *act.shape[1:]).transpose(1, 2)
        grad = grad.reshape(n, z, *grad.shape[1:]).transpose(1, 2)
    spatial_dims = tuple(range(2, act.ndim))
    if method == "gradcam":
        weights = grad.mean(dim=spatial_dims, keepdim=True)
    else:
        # Grad-CAM++ closed form with exp(score): alpha = g^2 / (2 g^2 + sum(A) g^3); weights = sum(alpha relu(g)).
        g2, g3 = grad.pow(2), grad.pow(3)
        denom = 2 * g2 + act.sum(dim=spatial_dims, keepdim=True) * g3
        alpha = g2 / torch.where(denom != 0, denom, torch.ones_like(denom))
        weights = (alpha * torch.relu(grad)).sum(dim=spatial_dims, keepdim=True)
    cam = torch.relu((weights * act).sum(dim=1))
    scaled = scale_maps(cam[None])[0] if joint else scale_maps(cam)
    return ExplainedPass(logits=logits.detach(), maps=scaled.float(), class_index=idx.detach(), raw=cam.detach())


def plain_forward(model: nn.Module, x: torch.Tensor, forward=None) -> torch.Tensor:
    """The prediction without explanation (``torch.inference_mode``): ``(N, num_classes)`` logits."""
    with torch.inference_mode():
        return forward(model, x) if forward is not None else model(x)
