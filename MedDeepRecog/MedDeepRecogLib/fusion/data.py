"""Multi-modal cases from a manifest: one CSV column per modality, brought onto one grid, as ``(M, Z, Y, X)``.

Manifest (CSV, header row; relative paths are relative to the manifest's folder)::

    case,CT,MR,label
    p001,p001_ct.nii.gz,p001_mr.nii.gz,mass
    p002,p002_ct.nii.gz,,normal          <- MR missing: a NaN channel (late fusion copes, early fusion refuses)

Each case: the modalities are read (``io.read_image``), aligned onto the reference modality's grid
(:func:`..fusion.grid.align_modalities`), resampled to the model's ``input.size`` by the same code as single-scan
inference (:func:`..inference.model_input.volume_from_image`), and scaled per modality to 0..1 between the
0.5 and 99.5 intensity percentiles (MR units are arbitrary, so a fixed window cannot serve every modality).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ConfigError, InputImageError
from ..io import read_image
from .grid import align_modalities


@dataclass
class FusionCase:
    """One manifest row: ``paths`` maps modality -> file (None when missing); ``label`` as written."""

    case: str
    paths: dict[str, Path | None]
    label: str | None


def read_manifest(path: str | Path, modalities: Sequence[str] | None = None, *,
                  label_column: str = "label") -> tuple[list[str], list[FusionCase]]:
    """Parse a fusion manifest; ``modalities`` default: every column except ``case`` and ``label_column``.

    Raises:
        ConfigError: missing columns, no rows, a row without any modality, a file that does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError("fusion manifest not found", path)
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    mods = list(modalities) if modalities else [c for c in columns if c not in ("case", label_column)]
    missing = [m for m in mods if m not in columns]
    if missing or not mods:
        raise ConfigError(f"manifest lacks modality column(s) {missing or '(none given)'}; columns are {columns}", path)
    if not rows:
        raise ConfigError("manifest has no cases", path)
    cases = []
    for i, row in enumerate(rows, start=2):
        paths: dict[str, Path | None] = {}
        for m in mods:
            cell = (row.get(m) or "").strip()
            if not cell:
                paths[m] = None
                continue
            p = Path(cell) if Path(cell).is_absolute() else path.parent / cell
            if not p.exists():
                raise ConfigError(f"line {i}: {m} file {p} does not exist", path)
            paths[m] = p
        if all(v is None for v in paths.values()):
            raise ConfigError(f"line {i}: no modality given", path)
        cases.append(FusionCase(row.get("case") or f"line{i}", paths, row.get(label_column)))
    return mods, cases


def _scale01(arr: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(arr, [0.5, 99.5])
    return np.clip((arr - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0).astype(np.float32)


def checked_modality(image, modality: str, path: Path):
    """``image`` as one single-channel 3D volume of ``modality``, refused in one line naming ``path`` otherwise:
    a 2D, 4D or colour (vector) image, a label map or mask, and a CT in HU given as any other modality (its HU
    would be scaled as MR intensities)."""
    from ..inference.model_input import as_volume, check_input_content, is_hounsfield

    image = as_volume(image, path, allow_2d=False)
    check_input_content(image, {}, path)
    if modality.upper() != "CT" and is_hounsfield(image):
        raise InputImageError(f"given as the {modality} channel, but it is a CT in Hounsfield units (DICOM modality, "
                              "or air below -500 HU)", path)
    return image


def read_case_images(case: FusionCase) -> tuple[dict[str, Any], dict[str, str]]:
    """The scans of one case that are given, by modality, each checked (:func:`checked_modality`), and what each
    reads as: :func:`..io.image_content.guess_modality` (``info``'s guess: DICOM tag, else HU or not) of the file as
    read, whose DICOM tags the checks may not keep."""
    from ..io.image_content import guess_modality

    images, guesses = {}, {}
    for m, p in case.paths.items():
        if p is None:
            continue
        image = read_image(p)
        guesses[m] = guess_modality(image)
        images[m] = checked_modality(image, base_modality(m), p)
    return images, guesses


def base_modality(key: str) -> str:
    """The modality of a channel key (:func:`..fusion.infer.channel_keys`): ``"MR#2"`` -> ``"MR"``."""
    return key.split("#", 1)[0]


def load_case(case: FusionCase, spec: Mapping[str, Any], *, reference: str | None = None,
              register: bool = False, images: Mapping[str, Any] | None = None,
              registration: dict | None = None) -> np.ndarray:
    """Model input of one case: ``(M, D, H, W)`` float32 in 0..1, NaN channels for missing modalities.

    The reference grid is ``reference`` if given and present, else the first modality present. ``images``: the
    case's scans as :func:`read_case_images` read them (default: read here). ``registration``: filled with
    modality -> what ``register`` found (:func:`.grid.registration_record`).
    """
    images = dict(images) if images is not None else read_case_images(case)[0]
    ref = reference if reference in images else next(iter(images))
    aligned = align_modalities(images, ref, register=register, records=registration,
                               sources={m: p for m, p in case.paths.items() if p is not None})
    from ..inference.model_input import volume_from_image

    one = {**dict(spec), "channels": 1}
    size = tuple(int(s) for s in spec["size"])
    channels = []
    for m in case.paths:
        if m not in aligned:
            channels.append(np.full(size, np.nan, dtype=np.float32))
            continue
        vol = volume_from_image(aligned[m], one).x[0, 0]
        channels.append(_scale01(vol))
    return np.stack(channels)


def check_modalities(model_modalities: Sequence[str], given: Sequence[str], *, tolerant: bool) -> None:
    """Refuse inputs that lack a modality the model needs (``tolerant`` = late fusion: at least one needed)."""
    missing = [m for m in model_modalities if m not in given]
    if not tolerant and missing:
        raise InputImageError(f"the model needs modalities {list(model_modalities)} but {missing} "
                              f"{'is' if len(missing) == 1 else 'are'} missing")
    if tolerant and len(missing) == len(model_modalities):
        raise InputImageError(f"none of the model's modalities {list(model_modalities)} was given")


def manifest_to_npz(manifest: str | Path, out: str | Path, *, size: Sequence[int],
                    modalities: Sequence[str] | None = None, class_names: Sequence[str] | None = None,
                    register: bool = False, val_cases: Sequence[str] = ()) -> Path:
    """Prepare every manifest case (:func:`load_case`) into a MedMNIST-style ``.npz`` that ``meddeeprecog train``
    reads (``data: {format: npz, kind: volume3d}`` with ``model: {name: late_fusion3d}``).

    Writes ``train_images`` / ``train_labels`` (and ``val_*`` for the cases named in ``val_cases``), images
    ``(N, M, D, H, W)`` float32 in 0..1 with NaN channels for missing modalities, plus ``class_names`` and
    ``modalities``. Labels are the manifest's ``label`` column mapped to ``class_names`` (default: sorted).
    """
    from ..io import atomic_output

    mods, cases = read_manifest(manifest, modalities)
    labels = [c.label for c in cases]
    if any(not lab for lab in labels):
        raise ConfigError("every case needs a label to build training data", manifest)
    names = list(class_names) if class_names else sorted(set(labels))
    unknown = sorted(set(labels) - set(names))
    if unknown:
        raise ConfigError(f"labels {unknown} are not among class_names {names}", manifest)
    spec = {"kind": "volume3d", "size": list(size), "channels": len(mods)}
    x = np.stack([load_case(c, spec, register=register) for c in cases])
    y = np.array([names.index(lab) for lab in labels], dtype=np.int64)[:, None]
    is_val = np.array([c.case in set(val_cases) for c in cases])
    arrays = {"train_images": x[~is_val], "train_labels": y[~is_val], "class_names": np.array(names),
              "modalities": np.array(mods)}
    if is_val.any():
        arrays.update(val_images=x[is_val], val_labels=y[is_val])
    out = Path(out)
    with atomic_output(out) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    return out
