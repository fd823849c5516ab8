"""Segmentation inference: segment a scan with a segmentation package and write the result on the scan's own grid.

The scan is reoriented to the package's ``input.orientation`` (voxels permuted and flipped by SimpleITK's
``DICOMOrient``, no interpolation), so the network sees the same anatomy in the same array axes however the file
stores it, then resampled to ``input.spacing_mm``, normalised as in training (``input.normalize``),
predicted patch by patch with ``monai.inferers.sliding_window_inference`` (Gaussian blending), and the class
probabilities are resampled back onto the scan's grid (linear) before the arg-max, so the segments overlay the
scan exactly in Slicer's slice and 3D views. Specks smaller than ``input.inference.min_component_fraction`` of a
class's largest component are removed, as in validation.

The steps are shared with fine-tuning, which prepares its training volumes and validates the same way:
:func:`orient`, :func:`normalize_intensity`, :func:`resample_to_spacing`, :func:`sliding_window_logits`,
:func:`remove_small_components`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import ConfigError, InputImageError, ModelPackageError
from ..io import SegmentSpec, read_image, require_3d, validate_intensities, write_segmentation
from ..io.image_content import guess_modality
from ..progress import null_progress
from .model_input import is_hounsfield

if TYPE_CHECKING:
    import torch

#: Default intensity normalisation: CT in a soft-tissue window (HU), MR by per-scan percentiles; result in 0..1.
DEFAULT_NORMALIZE: dict[str, Any] = {"kind": "auto", "ct_window_hu": [-200.0, 300.0], "percentiles": [0.5, 99.5]}

#: Orientation (SimpleITK ``DICOMOrient`` code: the direction each index axis x, y, z runs towards) the network sees
#: a scan in when the package's ``input.orientation`` does not say: the storage order of the CT the bundled
#: ts-organs-seg 1.0.0 was trained on (NIfTI RAS, as SimpleITK reads it), which predates the key. A default here
#: rather than an edit of that package's model.json, which records what fine-tuning wrote when it trained.
DEFAULT_ORIENTATION = "RAS"


def load_segmentation_package(model: Any):
    """``load_package`` for a segmentation model (refuses classification packages with a clear message)."""
    from ..packages import load_package

    pkg = load_package(model) if not hasattr(model, "meta") else model
    if pkg.meta.get("task") != "segmentation":
        raise ModelPackageError(f"model {pkg.id}@{pkg.version} is a {pkg.meta.get('task', 'classification')} "
                                "model; segment needs a segmentation package", pkg.path)
    return pkg


def check_scan_modality(image: sitk.Image, pkg: Any, source: str | Path | None = None) -> None:
    """Refuse a scan that is not in Hounsfield units for a package trained on CT (``"modality": "CT"``), and a CT
    in HU for a package trained on MR.

    A network of the other modality runs without complaint and returns organ volumes that are all wrong: the HU
    window turns MR intensities into near-constant soft tissue, and per-scan percentiles of a CT are not an MR's.
    Same test as classify's (:func:`.model_input.is_hounsfield`: DICOM modality, else air below -500).

    Raises:
        InputImageError: naming ``source``, before any model work.
    """
    modality = str(pkg.meta.get("modality", "")).upper()
    if modality == "CT" and not is_hounsfield(image):
        raise InputImageError(f"not a CT scan in Hounsfield units (no air below -500, or a DICOM modality other than "
                              f"CT), but model {pkg.id}@{pkg.version} segments CT only: give it a CT scan, or use a "
                              "package trained on this modality", source)
    if modality == "MR" and is_hounsfield(image):
        raise InputImageError(f"a CT scan in Hounsfield units (DICOM modality CT, or air below -500), but model "
                              f"{pkg.id}@{pkg.version} segments MR only: give it an MR scan, or use a package trained "
                              "on CT", source)


def package_orientation(spec: dict[str, Any], where: str | Path | None = None) -> str:
    """The orientation code a package's network sees scans in: ``input.orientation``, else
    :data:`DEFAULT_ORIENTATION` (packages made before the key was written)."""
    code = spec.get("orientation") or DEFAULT_ORIENTATION
    if not is_orientation_code(code):
        raise ModelPackageError(f"model.json input.orientation {code!r} must be a three-letter orientation code "
                                "such as RAS or LPS (one of R/L, A/P, S/I each)", where)
    return str(code).upper()


def is_orientation_code(code: Any) -> bool:
    """Whether ``code`` is a ``DICOMOrient`` code: three letters, one from each of R/L, A/P and S/I."""
    if not isinstance(code, str) or len(code) != 3:
        return False
    axes = [next((i for i, pair in enumerate(("RL", "AP", "SI")) if c in pair), None) for c in code.upper()]
    return sorted(a for a in axes if a is not None) == [0, 1, 2]


def orientation_of(image: sitk.Image) -> str:
    """The ``DICOMOrient`` code of the order ``image`` is stored in (nearest one for an oblique scan)."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def orient(image: sitk.Image, orientation: str) -> sitk.Image:
    """``image`` with its voxels permuted and flipped so the index axes run towards ``orientation`` (e.g.
    ``"RAS"``: x towards the patient's right, y anterior, z superior); the same voxels at the same physical
    places, only stored in another order. An oblique scan gets the nearest orientation (SimpleITK ``DICOMOrient``).
    """
    if orientation_of(image) == orientation:
        return image  # already stored so: no copy of a large scan
    return sitk.DICOMOrient(image, orientation)


def segment_image(image: sitk.Image, package: Any, *, device: str = "cpu", overlap: float | None = None,
                  min_component_fraction: float | None = None, progress: Callable[..., None] = null_progress,
                  source: str | Path | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Label map ``(Z, Y, X)`` uint8 on ``image``'s grid (0 background, ``i`` = ``class_names[i]``) and timings.

    ``overlap`` / ``min_component_fraction``: override the package's ``input.inference`` settings. ``source``:
    the file named in errors.

    Raises:
        InputImageError: a CT package and a scan not in HU (:func:`check_scan_modality`).
    """
    import torch

    pkg = load_segmentation_package(package)
    spec = pkg.input_spec
    check_scan_modality(image, pkg, source)
    orientation = package_orientation(spec, pkg.path)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    model = pkg.build_model(device)
    timings["load_model"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    image = sitk.Cast(image, sitk.sitkFloat32)
    modality = guess_modality(image)
    # the network was trained on arrays in this orientation: a scan stored otherwise is the same anatomy in
    # permuted / mirrored array axes, which it does not recognise
    oriented = work = orient(image, orientation)
    if spec.get("spacing_mm"):
        work = resample_to_spacing(oriented, spec["spacing_mm"], interpolator=sitk.sitkLinear,
                                   default=float(sitk.GetArrayViewFromImage(image).min()))
    array = normalize_intensity(sitk.GetArrayViewFromImage(work), modality, spec.get("normalize"))
    timings["preprocess"] = time.perf_counter() - t0
    progress("predict", 0.2)
    t0 = time.perf_counter()
    inference = spec.get("inference") or {}
    logits = sliding_window_logits(model, torch.from_numpy(array)[None, None].to(device), spec["size"],
                                   overlap=overlap if overlap is not None else float(inference.get("overlap", 0.25)),
                                   amp=device.startswith("cuda"))
    probs = torch.softmax(logits, 1)[0].cpu().numpy()
    timings["predict"] = time.perf_counter() - t0
    progress("resample", 0.8)
    t0 = time.perf_counter()
    if work is oriented:  # the scan's own voxels, maybe stored in another order: put the labels back in its order
        labels = sitk.GetImageFromArray(probs.argmax(0).astype(np.uint8))
        labels.CopyInformation(work)
        labels = sitk.GetArrayFromImage(orient(labels, orientation_of(image)))
    else:  # probabilities back onto the scan grid, then arg-max: smoother borders than resampling labels
        # The work grid keeps the scan's origin and a rounded size, so its last sample can lie up to about half a
        # work voxel inside the scan's last slice: nearest-neighbour extrapolation carries its probabilities out
        # to the scan's edge (with a default of 0 the scan's last slice came back all background).
        back = []
        for channel in probs:
            p = sitk.GetImageFromArray(channel)
            p.CopyInformation(work)
            back.append(sitk.GetArrayFromImage(sitk.Resample(p, image, sitk.Transform(), sitk.sitkLinear, 0.0,
                                                             sitk.sitkFloat32, True)))
        labels = np.stack(back).argmax(0).astype(np.uint8)
    timings["resample"] = time.perf_counter() - t0
    if min_component_fraction is None:
        min_component_fraction = float(inference.get("min_component_fraction", 0.0))
    labels = remove_small_components(labels, min_component_fraction)
    return labels, {"timing_s": {k: round(v, 3) for k, v in timings.items()}, "model": {"id": pkg.id,
                                                                                          "version": pkg.version}}


def segment_file(input_path: str | Path, package: Any, out_path: str | Path, *, device: str = "cpu",
                 progress: Callable[..., None] = null_progress) -> dict[str, Any]:
    """Segment ``input_path`` and write ``out_path``: one segment per class, named as in training; a ``.seg.nrrd``,
    or for a DICOM series input a DICOM Segmentation (``.dcm``, referencing the series; ``io.dicom_seg``).

    Returns a JSON-ready summary: input, output, model, per-class voxel count and volume (ml), timings.
    """
    input_path, out_path = Path(input_path), Path(out_path)
    dicom_out = out_path.name.lower().endswith(".dcm")
    if dicom_out:
        from ..io.dicom_seg import check_dicom_seg_source

        check_dicom_seg_source(input_path)  # before any work
    progress("read", 0.0)
    image = require_3d(read_image(input_path), input_path)
    validate_intensities(image, input_path)
    pkg = load_segmentation_package(package)
    labels, info = segment_image(image, pkg, device=device, progress=progress, source=input_path)
    names = pkg.class_names[1:]
    specs = [SegmentSpec(name, i) for i, name in enumerate(names, start=1)]
    if dicom_out:
        from ..io.dicom_seg import write_dicom_seg

        write_dicom_seg(labels, image, input_path, [(i, n) for i, n in enumerate(names, start=1)], out_path,
                        series_description=f"{pkg.id} {pkg.version} segmentation",
                        algorithm=pkg.id, algorithm_version=pkg.version)
    else:
        write_segmentation(labels, image, specs, out_path)
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    counts = np.bincount(labels.ravel(), minlength=len(names) + 1)
    return {"input": str(input_path), "output": str(out_path), **info,
            "segments": {name: {"voxels": int(counts[i]), "volume_ml": round(counts[i] * voxel_ml, 2)}
                         for i, name in enumerate(names, start=1)}}


def normalize_intensity(array: np.ndarray, modality: str, spec: dict[str, Any] | None = None) -> np.ndarray:
    """Scale a scan's voxels to about 0..1: CT by a fixed HU window, anything else by per-scan percentiles.

    ``spec`` is configuration as data (stored in the model package): ``{"kind": "auto"|"ct_window"|"percentile",
    "ct_window_hu": [lo, hi], "percentiles": [lo, hi]}``. Returns float32.
    """
    spec = {**DEFAULT_NORMALIZE, **(spec or {})}
    kind = spec["kind"]
    if kind == "auto":
        kind = "ct_window" if modality == "CT" else "percentile"
    array = np.asarray(array, dtype=np.float32)
    if kind == "ct_window":
        lo, hi = spec["ct_window_hu"]
    elif kind == "percentile":
        lo, hi = np.percentile(array, spec["percentiles"])
    else:
        raise ConfigError(f"unknown intensity normalisation {kind!r}")
    scale = float(hi - lo) or 1.0
    return np.clip((array - lo) / scale, 0.0, 1.0).astype(np.float32)


def resampled_size(size: Sequence[int], spacing_mm: Sequence[float], new_spacing_mm: Sequence[float]) -> list[int]:
    """Voxels per axis (x, y, z) of a grid of ``size`` at ``spacing_mm`` resampled to ``new_spacing_mm`` over the same
    physical extent (what :func:`resample_to_spacing` makes; its size is known before anything is resampled)."""
    old, new = np.array([float(s) for s in spacing_mm]), np.array([float(s) for s in new_spacing_mm])
    if np.allclose(new, old, rtol=1e-4):
        return [int(n) for n in size]
    return [int(n) for n in np.maximum(1, np.round(np.array([int(n) for n in size]) * old / new))]


def oriented_grid(image: sitk.Image, orientation: str) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """``(size, spacing)`` (x, y, z) that :func:`orient` gives ``image``, found without copying its voxels: the same
    direction on a stand-in of 1 x 2 x 3 voxels shows which of ``image``'s axes each oriented axis is."""
    if orientation_of(image) == orientation:
        return tuple(image.GetSize()), tuple(image.GetSpacing())
    stand_in = sitk.Image([1, 2, 3], sitk.sitkUInt8)
    stand_in.SetDirection(image.GetDirection())
    stand_in.SetSpacing(image.GetSpacing())
    moved = sitk.DICOMOrient(stand_in, orientation)
    size = image.GetSize()
    return tuple(size[int(n) - 1] for n in moved.GetSize()), tuple(moved.GetSpacing())


def resample_to_spacing(image: sitk.Image, spacing_mm: Sequence[float], *, interpolator: int = sitk.sitkLinear,
                        default: float = 0.0) -> sitk.Image:
    """Resample ``image`` to ``spacing_mm`` (x, y, z) over the same physical extent, keeping origin and direction."""
    spacing = [float(s) for s in spacing_mm]
    if np.allclose(spacing, image.GetSpacing(), rtol=1e-4):
        return image
    size = resampled_size(image.GetSize(), image.GetSpacing(), spacing)
    return sitk.Resample(image, size, sitk.Transform(), interpolator, image.GetOrigin(), spacing,
                         image.GetDirection(), default, image.GetPixelID())


def sliding_window_logits(model: torch.nn.Module, image: torch.Tensor, patch_size: Sequence[int], *,
                          overlap: float = 0.25, sw_batch_size: int = 4, amp: bool = False) -> torch.Tensor:
    """Logits ``(1, K, Z, Y, X)`` for one volume ``(1, 1, Z, Y, X)`` by ``monai.inferers.sliding_window_inference``
    (Gaussian blending); volumes smaller than a patch are padded and cropped back by MONAI."""
    import torch
    from monai.inferers import sliding_window_inference

    with torch.no_grad(), torch.autocast(image.device.type, enabled=amp and image.device.type == "cuda"):
        return sliding_window_inference(image, tuple(patch_size), sw_batch_size, model, overlap=overlap,
                                        mode="gaussian").float()


def remove_small_components(labels: np.ndarray, min_fraction: float = 0.1) -> np.ndarray:
    """Drop, per class, connected components smaller than ``min_fraction`` of that class's largest one.

    Organs are one or two large objects (kidneys: two); a network trained on a few scans also fires in small
    scattered spots, which HD95 punishes and users must erase by hand. Uses SimpleITK's 26-connected
    ``ConnectedComponent`` + ``RelabelComponent``. ``min_fraction <= 0`` returns ``labels`` unchanged.
    """
    if min_fraction <= 0:
        return labels
    out = labels.copy()
    for value in np.unique(labels):
        if value == 0:
            continue
        mask = sitk.GetImageFromArray((labels == value).astype(np.uint8))
        components = sitk.RelabelComponent(sitk.ConnectedComponent(mask, True))  # 1 = largest
        comp = sitk.GetArrayViewFromImage(components)
        sizes = np.bincount(comp.ravel())
        if len(sizes) <= 2:
            continue
        small = np.nonzero(sizes[1:] < min_fraction * sizes[1])[0] + 1
        out[np.isin(comp, small)] = 0
    return out
