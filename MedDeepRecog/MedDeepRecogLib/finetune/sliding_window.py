"""Segment a scan with a segmentation package and write the result as ``.seg.nrrd`` on the scan's own grid.

The scan is resampled to the package's ``input.spacing_mm``, normalised as in training (``input.normalize``),
predicted patch by patch with ``monai.inferers.sliding_window_inference`` (Gaussian blending), and the class
probabilities are resampled back onto the scan's grid (linear) before the arg-max, so the segments overlay the
scan exactly in Slicer's slice and 3D views. Specks smaller than ``input.inference.min_component_fraction`` of a
class's largest component are removed, as in validation.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import SimpleITK as sitk

from ..errors import ModelPackageError
from ..io import SegmentSpec, read_image, require_3d, validate_intensities, write_segmentation
from ..io.image_io import guess_modality
from ..progress import null_progress
from .segment_data import normalize_intensity, resample_to_spacing


def load_segmentation_package(model: Any):
    """``load_package`` for a segmentation model (refuses classification packages with a clear message)."""
    from ..packages import load_package
    from . import seg_models  # noqa: F401  (registers monai_unet / monai_segresnet)

    pkg = load_package(model) if not hasattr(model, "meta") else model
    if pkg.meta.get("task") != "segmentation":
        raise ModelPackageError(f"model {pkg.id}@{pkg.version} is a {pkg.meta.get('task', 'classification')} "
                                "model; segment needs a segmentation package", pkg.path)
    return pkg


def segment_image(image: sitk.Image, package: Any, *, device: str = "cpu", overlap: float | None = None,
                  min_component_fraction: float | None = None,
                  progress: Callable[..., None] = null_progress) -> tuple[np.ndarray, dict[str, Any]]:
    """Label map ``(Z, Y, X)`` uint8 on ``image``'s grid (0 background, ``i`` = ``class_names[i]``) and timings.

    ``overlap`` / ``min_component_fraction``: override the package's ``input.inference`` settings.
    """
    import torch

    from .seg_training import remove_small_components, sliding_window_logits

    pkg = load_segmentation_package(package)
    spec = pkg.input_spec
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    model = pkg.build_model(device)
    timings["load_model"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    image = sitk.Cast(image, sitk.sitkFloat32)
    modality = guess_modality(image)
    work = image
    if spec.get("spacing_mm"):
        work = resample_to_spacing(image, spec["spacing_mm"], interpolator=sitk.sitkLinear,
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
    if work is image:
        labels = probs.argmax(0).astype(np.uint8)
    else:  # probabilities back onto the scan grid, then arg-max: smoother borders than resampling labels
        back = []
        for channel in probs:
            p = sitk.GetImageFromArray(channel)
            p.CopyInformation(work)
            back.append(sitk.GetArrayFromImage(sitk.Resample(p, image, sitk.Transform(), sitk.sitkLinear, 0.0,
                                                             sitk.sitkFloat32)))
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
    labels, info = segment_image(image, pkg, device=device, progress=progress)
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
