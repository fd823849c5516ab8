"""Starting a network from another one's weights: which parameters are encoder, the head, matching weights.

- :func:`encoder_parameter_names` / :func:`encoder_module_paths`: what ``--freeze-encoder`` freezes (the
  segmentation networks' own encoders, :data:`.segmentation.ENCODERS`; for a classifier everything but its head).
- :func:`head_module_name`: the last parameterised layer (a classifier's output layer, a segmentation network's
  final convolution); :func:`head_module_names`: every output layer (one per member of an ensemble).
- :func:`matching_names` / :func:`load_matching_weights`: which of a base's weights match by name and shape, and
  copying them (a new head or input layer keeps its fresh initialisation).
- :func:`class_indexed` / :func:`copy_class_rows`: which tensors follow the number of classes, and copying into
  them the base's entries for the classes a fine-tune shares with it (by name), the others starting fresh.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn as nn

from .segmentation import ENCODERS


def head_module_name(model: nn.Module) -> str | None:
    """The last parameterised convolution or linear layer (the classifier / final 1x1 conv), or ``None``."""
    head = None
    for module_name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose3d)) and \
                any(True for _ in module.parameters(recurse=False)):
            head = module_name
    return head


def head_module_names(model: nn.Module) -> list[str]:
    """Every layer that answers the classes: each member's :func:`head_module_name` for an ensemble (its members,
    ``members.<i>``, each have their own head and the ensemble averages them), else the one last layer."""
    members = getattr(model, "members", None)
    if isinstance(members, nn.ModuleList):
        return [f"members.{i}.{head}" for i, member in enumerate(members)
                if (head := head_module_name(member)) is not None]
    head = head_module_name(model)
    return [] if head is None else [head]


def encoder_parameter_names(model: nn.Module, arch_name: str) -> list[str]:
    """Names of the parameters ``--freeze-encoder`` freezes.

    - ``monai_unet``: the down path and the bottom block; ``monai_segresnet``: ``convInit`` and ``down_layers``.
    - any classification network: everything but its heads (:func:`head_module_names`: the last parameterised
      layer, or each ensemble member's).
    """
    names = [n for n, _ in model.named_parameters()]
    if arch_name in ENCODERS:
        return [n for n in names if ENCODERS[arch_name](n)]
    heads = tuple(head_module_names(model))
    if not heads:
        return []
    return [n for n in names if not (n in heads or n.startswith(tuple(f"{h}." for h in heads)))]


def encoder_module_paths(model: nn.Module, arch_name: str) -> list[str]:
    """The fewest module paths whose parameters are exactly :func:`encoder_parameter_names` (for ``Hooks.frozen``)."""
    encoder = set(encoder_parameter_names(model, arch_name))

    def visit(module: nn.Module, prefix: str) -> list[str]:
        names = {f"{prefix}{n}" for n, _ in module.named_parameters()}
        if not names:
            return []
        if names <= encoder:
            return [prefix.rstrip(".")]
        if not names & encoder:
            return []
        out = []
        for child_name, child in module.named_children():
            out += visit(child, f"{prefix}{child_name}.")
        return out

    paths = visit(model, "")
    return [p for p in paths if p]


def load_matching_weights(model: nn.Module, state: Mapping[str, torch.Tensor],
                          skip_prefixes: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """Copy every tensor of ``state`` whose name and shape match ``model``'s; the rest keep their fresh init.

    Used when the fine-tuned model has another number of classes (new head) or input channels (mask channel)
    than its base; ``skip_prefixes`` (e.g. the head when the class names changed but not their number) are never
    copied. Returns ``(loaded, reinitialised)`` parameter/buffer names.
    """
    own = model.state_dict()
    loaded = matching_names(own, state, skip_prefixes)
    own.update({name: state[name] for name in loaded})
    model.load_state_dict(own)
    copied = set(loaded)
    return loaded, [name for name in own if name not in copied]


def matching_names(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
                   skip_prefixes: Sequence[str] = ()) -> list[str]:
    """The names of ``own`` (a network's state dict) that ``state`` holds with the same shape, outside
    ``skip_prefixes``, in ``own``'s order: what :func:`load_matching_weights` copies."""
    skip = tuple(f"{p}." for p in skip_prefixes if p)
    return [name for name, tensor in own.items()
            if name in state and tuple(state[name].shape) == tuple(tensor.shape) and not name.startswith(skip)]


def class_indexed(own: Mapping[str, torch.Tensor], probe: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """The tensors of a network whose shape follows its number of classes, each with the dims that do: those
    whose size differs between ``own`` (a network's state dict) and ``probe`` (the same network with one class
    more). A segmentation UNet's last up-convolution and final convolution, a classifier's output layer."""
    dims_of = {}
    for name, tensor in own.items():
        other = probe.get(name)
        if other is None or other.ndim != tensor.ndim:
            continue
        dims = tuple(d for d in range(tensor.ndim) if tensor.shape[d] != other.shape[d])
        if dims:
            dims_of[name] = dims
    return dims_of


def copy_class_rows(model: nn.Module, state: Mapping[str, torch.Tensor], dims_of: Mapping[str, tuple[int, ...]],
                    pairs: Sequence[tuple[int, int]]) -> list[str]:
    """Copy into ``model``'s class-indexed tensors (``dims_of``: :func:`class_indexed`) the entries ``state`` (the
    base's) holds for the classes both have: ``pairs`` of (class index in ``model``, class index in the base),
    matched by name by the caller. The other classes' entries keep their fresh initialisation, except that a
    layer mixing classes (a final convolution whose input channels are classes too) takes nothing from a fresh
    class into a kept one (zero): the kept classes' outputs start as the base's. Returns the names copied into;
    a tensor whose other dims differ from the base's, or with more than two class dims, is left fresh."""
    own = model.state_dict()
    copied = []
    for name, dims in dims_of.items():
        base, tensor = state.get(name), own[name]
        if base is None or base.ndim != tensor.ndim or not pairs or len(dims) > 2:
            continue
        if any(base.shape[d] != tensor.shape[d] for d in range(tensor.ndim) if d not in dims):
            continue
        if any(j >= base.shape[d] for d in dims for _, j in pairs) or \
                any(i >= tensor.shape[d] for d in dims for i, _ in pairs):
            continue
        tensor = tensor.clone()

        def at(*where: tuple[int, int], ndim: int = tensor.ndim) -> tuple:   # index (dim, i), ... of a tensor
            index: list = [slice(None)] * ndim
            for d, i in where:
                index[d] = i
            return tuple(index)

        with torch.no_grad():
            if len(dims) == 1:
                for i, j in pairs:
                    tensor[at((dims[0], i))] = base[at((dims[0], j))]
            else:
                module = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
                transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
                out_d, in_d = (dims[1], dims[0]) if transposed else dims
                kept = {i for i, _ in pairs}
                fresh = [k for k in range(tensor.shape[in_d]) if k not in kept]
                for i, j in pairs:
                    for k, m in pairs:
                        tensor[at((out_d, i), (in_d, k))] = base[at((out_d, j), (in_d, m))]
                    for k in fresh:
                        tensor[at((out_d, i), (in_d, k))] = 0
        own[name] = tensor
        copied.append(name)
    model.load_state_dict(own)
    return copied
