"""Classify one multi-modal case with a fusion package (``input.modalities`` lists the channels in order).

``classify_modalities({"CT": path, "MR": path_or_None}, package)``: the modalities are aligned on one grid
(:func:`..fusion.grid.align_modalities`, optional rigid registration), prepared like training data
(:func:`..fusion.data.load_case`) and classified. A late-fusion package tolerates missing modalities (they are
reported in ``missing``); an early-fusion package refuses them with a clear error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import ModelPackageError
from .data import FusionCase, check_modalities, load_case

TOLERANT_ARCHITECTURES = ("late_fusion3d",)


def package_modalities(package) -> list[str]:
    """The package's modality names (``input.modalities``), one per input channel."""
    mods = package.input_spec.get("modalities")
    channels = int(package.input_spec.get("channels", 1))
    if not mods or len(mods) != channels:
        raise ModelPackageError(f"model {package.id} is not a fusion model: input.modalities must list its "
                                f"{channels} channel(s), got {mods!r}")
    return list(mods)


def classify_modalities(paths: Mapping[str, str | Path | None], package, *, register: bool = False,
                        reference: str | None = None) -> dict[str, Any]:
    """Probabilities of one case given as modality -> file (None or absent = missing).

    Returns:
        ``{"label", "probabilities": {class: p}, "modalities_used": [...], "missing": [...],
        "late_fusion": bool}``.

    Raises:
        InputImageError: a required modality is missing (early fusion), none of the model's modalities is given,
            volumes that do not overlap. ModelPackageError: not a fusion package.
    """
    import torch

    mods = package_modalities(package)
    given = [m for m in mods if paths.get(m)]
    tolerant = package.meta["architecture"]["name"] in TOLERANT_ARCHITECTURES
    check_modalities(mods, given, tolerant=tolerant)
    case = FusionCase("case", {m: (Path(paths[m]) if paths.get(m) else None) for m in mods}, None)
    x = torch.from_numpy(load_case(case, package.input_spec, reference=reference, register=register))[None]
    model = package.build_model("cpu")
    with torch.no_grad():
        probs = torch.softmax(model(x), dim=1)[0].numpy()
    names = package.class_names
    return {"label": names[int(np.argmax(probs))], "probabilities": dict(zip(names, map(float, probs))),
            "modalities_used": given, "missing": [m for m in mods if m not in given], "late_fusion": tolerant}
