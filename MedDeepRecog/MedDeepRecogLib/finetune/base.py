"""The network a fine-tuning run starts from: the base package (checked against the task), its architecture with
the new number of classes and input channels, and its weights wherever they still fit."""

from __future__ import annotations

from typing import Any, Sequence

from ..errors import ConfigError
from .config import FinetuneConfig


def base_package(ref: str | None, task: str):
    """The base package ``ref`` (``None``, ``"none"`` or ``"scratch"``: train from scratch, returns ``None``).

    Raises:
        ConfigError: a classification base for ``task`` segment, a segmentation base for ``task`` classify, or a
            2D-slice base for ``task`` classify (its crops are 3D volumes).
    """
    if not ref or ref.lower() in ("none", "scratch"):
        return None
    from ..packages import load_package
    from ..packages.package import INPUT_KINDS

    pkg = load_package(ref)
    base_task = pkg.meta.get("task", "classification")
    if task == "segment" and base_task != "segmentation":
        raise ConfigError(f"base model {pkg.id}@{pkg.version} is a {base_task} model; --task segment needs a "
                          "segmentation base (or --base none)", pkg.path)
    if task == "classify" and base_task == "segmentation":
        raise ConfigError(f"base model {pkg.id}@{pkg.version} is a segmentation model; --task classify needs a "
                          "classification base (or --base none)", pkg.path)
    kind = pkg.input_spec.get("kind")
    if task == "classify" and INPUT_KINDS.get(kind) == 2:
        # refused here, before any run folder is made: its 2D convolutions would fail on the first 3D crop batch
        raise ConfigError(f"base model {pkg.id}@{pkg.version} reads 2D slices (input kind {kind}); --task classify "
                          "crops 3D volumes around segments and needs a 3D volume network (a volume3d or roi3d "
                          "base, or --base none)", pkg.path)
    return pkg


def base_classes(base) -> list[str]:
    """The classes a base package's output layer predicts apart from a segmentation model's ``background``."""
    names = list(base.class_names)
    return names[1:] if base.meta.get("task") == "segmentation" and names[:1] == ["background"] else names


def in_base_order(classes: Sequence[str], base) -> list[str]:
    """``classes`` in the base's order when they are the base's classes, else as they are.

    A folder of pairs without a class map gives its classes sorted (kidney, liver, spleen), a class map in the
    order written; either, in another order than the base's (liver, spleen, kidney), re-initialised the base's
    trained output layer and a one-epoch fine-tune scored Dice 0.08 where keeping it scored 0.66. The base's
    order keeps the network exactly the base's (an ensemble's prior shift too); :func:`build_from_base` now keeps
    the output rows of shared classes by name in any order. The order of classes means nothing else to a package
    (each segment and probability is named)."""
    if base is None:
        return list(classes)
    theirs = base_classes(base)
    return theirs if sorted(theirs) == sorted(classes) and len(set(classes)) == len(classes) else list(classes)


def build_from_base(cfg: FinetuneConfig, base, num_outputs: int, in_channels: int,
                    class_names: Sequence[str] = (), input_size: Sequence[int] | None = None,
                    batch_size: int = 1) -> tuple[Any, str, dict, dict]:
    """Network for the new package: the base's architecture with new output/input sizes, base weights where
    shapes match. When the class names differ from the base's (a subset, a superset, other names; even in the
    same number: "mass" must not become "lesion" by position), the layers whose size follows the classes (the
    output layer) are built by name: each class the base has too (a segmentation's background included) keeps
    the base's weights and bias for it, and only the classes new to the base start fresh
    (:func:`..models.transfer.copy_class_rows`). Its activations on a patch or crop of ``input_size`` (Z, Y, X;
    default ``patch_size`` / ``roi_size``), and on a training step of ``batch_size`` of them (this process's share
    of ``training/batch_size``), are checked against the limits before it is built
    (:func:`..models.registry.check_budget`). Returns ``(model, arch_name, arch_kwargs, weight_report)``; the report
    counts the weights ``loaded``, names those ``reinitialised`` and those ``partly_loaded`` (the base's rows for
    the shared classes) and, when the classes differ from a base's, gives ``output_layer`` (``{"kept": classes
    that keep the base's output weights, "fresh": classes that start fresh}``) and a ``warning`` saying so."""
    from ..models import build_model
    from ..models.transfer import class_indexed, copy_class_rows, head_module_names, load_matching_weights

    if base is not None:
        name = base.meta["architecture"]["name"]
        kwargs = dict(base.meta["architecture"].get("kwargs") or {})
    else:
        name = cfg.arch or ("monai_unet" if cfg.task == "segment" else "simple_cnn3d")
        kwargs = {}
    kwargs.update(cfg.arch_kwargs or {})
    kwargs["num_classes"] = num_outputs
    kwargs["in_channels"] = in_channels
    kwargs.pop("out_channels", None)
    same_classes = base is not None and (not class_names or list(base.class_names) == list(class_names))
    if not same_classes:
        # an ensemble's prior shift was fitted to the base's classes: it would shift the new ones by position
        kwargs.pop("class_log_offsets", None)
    size = input_size if input_size is not None else (cfg.patch_size if cfg.task == "segment" else cfg.roi_size)
    model = build_model(name, input_shape=[in_channels, *size] if size else None, batch_size=batch_size,
                        **kwargs)
    report: dict[str, Any] = {"loaded": 0, "reinitialised": []}
    if base is not None:
        dims_of: dict[str, tuple[int, ...]] = {}
        skip: list[str] = []
        if not same_classes:
            # the tensors that answer the classes: never copied by position, only row by row by class name
            dims_of = class_indexed(model.state_dict(), _with_one_class_more(name, kwargs))
            skip = head_module_names(model) + sorted({n.rpartition(".")[0] for n in dims_of})
        # the base's weights as its package gives them (checked against its checksum and architecture)
        base_state = base.build_model("cpu").state_dict()
        loaded, fresh = load_matching_weights(model, base_state, skip)
        if not loaded:
            raise ConfigError(f"no weight of base {base.id}@{base.version} fits the new network; "
                              "check --arch-kwargs", base.path)
        report = {"loaded": len(loaded), "reinitialised": fresh}
        if not same_classes:
            theirs, ours = list(base.class_names), list(class_names)
            pairs = [(i, theirs.index(c)) for i, c in enumerate(ours) if c in theirs] \
                if len(ours) == num_outputs else []
            partly = copy_class_rows(model, base_state, dims_of, pairs) if pairs else []
            kept = [ours[i] for i, _ in pairs] if partly else []
            report["reinitialised"] = [n for n in fresh if n not in partly]
            report["partly_loaded"] = partly
            report["output_layer"] = {"kept": kept, "fresh": [c for c in ours if c not in kept]}
            # said aloud (console, the run's JSON, model.json and the card: :func:`.finetune.finetune`)
            report["warning"] = output_layer_note(base, ours, kept)
    return model, name, kwargs, report


def _with_one_class_more(name: str, kwargs: dict) -> dict:
    """The state dict (shapes only, on the ``meta`` device) of architecture ``name`` with one class more than
    ``kwargs`` say: what tells which tensors follow the number of classes."""
    import torch

    from ..models.registry import _spec

    with torch.device("meta"):
        return _spec(name).factory(**{**kwargs, "num_classes": int(kwargs["num_classes"]) + 1}).state_dict()


def output_layer_note(base, ours: Sequence[str], kept: Sequence[str]) -> str:
    """The line that says which classes of a fine-tune keep the base's output weights and which start fresh."""
    ref = f"{base.id}@{base.version}"
    segmentation = base.meta.get("task") == "segmentation"
    classes = [c for c in ours if not (segmentation and c == "background")]
    fresh = [c for c in classes if c not in kept]
    own = [c for c in classes if c in kept]
    dropped = [c for c in base_classes(base) if c not in ours]
    if not own:   # the wording of a head that starts over (no class in common)
        note = (f"the output layer of base {ref} is re-initialised: the classes {', '.join(classes)} are not the "
                f"base's {', '.join(base_classes(base))}, so it learns them from scratch")
        return note + ("; background keeps the base's output weights" if "background" in kept else "")
    note = f"the output layer of base {ref} keeps the base's output weights for {', '.join(kept)}"
    if fresh:
        note += (f"; {', '.join(fresh)} {'is' if len(fresh) == 1 else 'are'} not the base's "
                 f"({', '.join(base_classes(base))}), so {'its output starts' if len(fresh) == 1 else 'theirs start'}"
                 f" fresh and learn{'s' if len(fresh) == 1 else ''} from scratch")
    if dropped:
        note += f"; the base's {', '.join(dropped)} {'is' if len(dropped) == 1 else 'are'} left out"
    return note
