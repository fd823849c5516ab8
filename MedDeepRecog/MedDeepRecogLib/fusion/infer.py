"""Classify one multi-modal case with a fusion package (``input.modalities`` lists the channels in order).

``classify_modalities({"CT": path, "MR": path_or_None}, package)``: the modalities are aligned on one grid
(:func:`.grid.align_modalities`, optional rigid registration), prepared like training data
(:func:`.data.load_case`) and classified. A late-fusion package tolerates missing modalities (they are reported in
``missing``); an early-fusion package refuses them with a clear error. :func:`classify_fusion` wraps it into the
result ``meddeeprecog classify`` writes (temperature, decision rules, JSON).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import ModelPackageError
from .data import FusionCase, check_modalities, load_case, read_case_images

TOLERANT_ARCHITECTURES = ("late_fusion3d",)


def package_modalities(package) -> list[str]:
    """The package's modality names (``input.modalities``), one per input channel."""
    mods = package.input_spec.get("modalities")
    channels = int(package.input_spec.get("channels", 1))
    if not mods or len(mods) != channels:
        raise ModelPackageError(f"model {package.id} is not a fusion model: input.modalities must list its "
                                f"{channels} channel(s), got {mods!r}")
    return list(mods)


def channel_keys(modalities) -> list[str]:
    """One distinct key per input channel: the modality names, numbered (``"MR#1"``, ``"MR#2"``) where a
    modality fills more than one channel (T1 + T2), so two channels of one modality are not one input."""
    mods = list(modalities)
    seen: dict[str, int] = {}
    keys = []
    for m in mods:
        seen[m] = seen.get(m, 0) + 1
        keys.append(f"{m}#{seen[m]}" if mods.count(m) > 1 else m)
    return keys


def classify_modalities(paths: Mapping[str, str | Path | None], package, *, register: bool = False,
                        reference: str | None = None) -> dict[str, Any]:
    """Probabilities of one case given as modality -> file (None or absent = missing); keyed by
    :func:`channel_keys` (``"MR#1"``, ``"MR#2"`` for a package with two MR channels).

    Returns:
        ``{"label", "probabilities": {class: p}, "modalities_used": [...], "missing": [...],
        "late_fusion": bool, "modality_guesses": {modality: what its scan reads as}}`` (as ``info`` guesses it),
        ``"registration"``: channel -> :func:`.grid.registration_record` of each registered scan (``register``).

    Raises:
        InputImageError: a required modality is missing (early fusion), none of the model's modalities is given,
            volumes that do not overlap. ModelPackageError: not a fusion package.
    """
    import torch

    mods = channel_keys(package_modalities(package))
    given = [m for m in mods if paths.get(m)]
    tolerant = package.meta["architecture"]["name"] in TOLERANT_ARCHITECTURES
    check_modalities(mods, given, tolerant=tolerant)
    case = FusionCase("case", {m: (Path(paths[m]) if paths.get(m) else None) for m in mods}, None)
    images, guesses = read_case_images(case)
    registration: dict = {}
    x = torch.from_numpy(load_case(case, package.input_spec, reference=reference, register=register,
                                   images=images, registration=registration))[None]
    del images
    model = package.build_model("cpu")
    with torch.no_grad():
        probs = torch.softmax(model(x), dim=1)[0].numpy()
    names = package.class_names
    return {"label": names[int(np.argmax(probs))], "probabilities": dict(zip(names, map(float, probs))),
            "modalities_used": given, "missing": [m for m in mods if m not in given], "late_fusion": tolerant,
            "modality_guesses": guesses, "registration": registration}


def classify_fusion(first: str | Path, second: str | Path | None, package, *, name: str | None = None,
                    register: bool = False):
    """Classify one case given as two co-registered scans with a multi-modal (fusion) package.

    ``first`` is the package's first modality (``input.modalities[0]``, the reference grid), ``second`` the next;
    the second is resampled onto the first's grid (:func:`.grid.align_modalities`, inside
    :func:`classify_modalities`). No heatmap is made for fusion models.

    Returns:
        a :class:`MedDeepRecogLib.inference.classify.ClassificationResult` (written by ``write_outputs``).

    Raises:
        ModelPackageError: a single-modality package (it takes one modality), or one that is not a classifier.
        InputImageError: a missing or non-overlapping modality (see :func:`classify_modalities`).
    """
    from ..contract import output_stem
    from ..inference.classify import ClassificationResult, as_package, check_classifier
    from ..inference.predict import decide
    from ..uncertainty import apply_temperature

    package = as_package(package)
    check_classifier(package)
    mods = package.input_spec.get("modalities") or []
    if len(mods) < 2:
        raise ModelPackageError(f"model {package.id} takes one modality (input.modalities {mods or 'not set'}); "
                                "drop --second-input, or choose a multi-modal (fusion) package")
    if len(mods) > 2:
        raise ModelPackageError(f"model {package.id} takes {len(mods)} modalities ({', '.join(mods)}); classify "
                                "accepts two (INPUT and --second-input)")
    t0 = time.perf_counter()
    keys = channel_keys(mods)
    out = classify_modalities({keys[0]: first, keys[1]: second}, package, register=register)
    probs = np.array([out["probabilities"][c] for c in package.class_names], dtype=np.float64)
    probs = apply_temperature(probs, package.meta)
    decision = decide(probs, package.class_names, package.meta.get("decision"))
    decision["modality"] = None  # no CT/MR call from class_modality rules: the inputs say which scan is which
    src = str(first)
    guesses = out["modality_guesses"]
    inputs = [{"modality": m, "path": None if path is None else str(path), "modality_guess": guesses.get(k)}
              for m, k, path in zip(mods, keys, (first, second))]
    registration = None
    notes = []
    if register:  # what --register did: method, metric, transform, overlap after it (it passed the checks)
        from .grid import registration_words

        registration = {"used": True, "reference": str(first), "moving": None if second is None else str(second),
                        **(out["registration"].get(keys[1]) or {"note": "not registered: the second scan is missing"})}
        if "metric" in registration:
            notes.append(f"--register: {second} onto {first}: {registration_words(registration)}")
    return ClassificationResult(
        input=src, name=name or output_stem(src), model={"id": package.id, "version": package.version},
        class_names=package.class_names, probabilities=probs, decision=decision,
        explain={"method": "none", "reason": "no heatmap for fusion models", "modalities": mods,
                 "modalities_used": out["modalities_used"], "missing": out["missing"],
                 "second_input": None if second is None else str(second)},
        modality_guess=guesses.get(keys[0], "unknown"), inputs=inputs, registration=registration, input_notes=notes,
        timing_s={"total": time.perf_counter() - t0})
