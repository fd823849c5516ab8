"""Bring several co-registered (or nearly so) volumes onto one grid before fusing them.

Every modality is resampled (SimpleITK, linear) onto a reference volume's grid. When the scans were not
acquired in the same frame, ``register=True`` first estimates a rigid transform (Euler 3D, Mattes mutual
information, so CT vs MR intensities need not match). Volumes whose physical extents barely overlap are
refused with a clear error instead of producing a channel that is mostly padding.
"""

from __future__ import annotations

import logging
from typing import Mapping

import numpy as np
import SimpleITK as sitk

from ..errors import InputImageError
from ..io import same_geometry
from ..io.geometry import overlap_fraction

log = logging.getLogger(__name__)


#: The most a ``--register`` transform may move the second scan: a rotation of 30 degrees, and a shift of the
#: reference's centre by a quarter of the reference's largest physical extent. Rigid registration here corrects a
#: patient who moved between two scans of one session (a few degrees, a few centimetres); when the optimum lies
#: further away, mutual information has matched different anatomy (another body part, another patient), which no
#: rigid move of one patient's scan explains.
MAX_ROTATION_DEG = 30.0
MAX_SHIFT_FRACTION = 0.25


def rigid_register(fixed: sitk.Image, moving: sitk.Image, *, iterations: int = 100, seed: int = 0,
                   record: dict | None = None) -> sitk.Transform:
    """Rigid (rotation + translation) transform mapping ``fixed`` physical points into ``moving``.

    Mattes mutual information (multi-modal), regular-step gradient descent, 3 resolution levels, 20 % random
    sampling; initialised by aligning the intensity centres of mass (``MOMENTS``). ``record`` (a dict) is filled
    with what the registration found (:func:`registration_record`).
    """
    f = sitk.Cast(fixed, sitk.sitkFloat32)
    m = sitk.Cast(moving, sitk.sitkFloat32)
    init = sitk.CenteredTransformInitializer(f, m, sitk.Euler3DTransform(),
                                             sitk.CenteredTransformInitializerFilter.MOMENTS)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.2, seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=iterations,
                                                 gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2, 1, 0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetInitialTransform(init, inPlace=False)
    transform = reg.Execute(f, m)
    stop = reg.GetOptimizerStopConditionDescription()
    log.info("rigid registration: metric %.4f after %d iterations (%s)", reg.GetMetricValue(),
             reg.GetOptimizerIteration(), stop)
    if record is not None:
        record.update(registration_record(fixed, moving, transform, metric=reg.GetMetricValue(),
                                          iterations=reg.GetOptimizerIteration(), stop=stop,
                                          converged="Maximum number of iterations" not in stop))
    return transform


def covered_fraction(reference: sitk.Image, moving: sitk.Image, transform: sitk.Transform) -> float:
    """Share of the reference's voxels that ``moving``'s field covers once moved by ``transform`` (0..1): the
    :func:`..io.geometry.overlap_fraction` of a registered pair."""
    ones = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(moving)
    cover = sitk.Resample(ones, reference, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return float(sitk.GetArrayViewFromImage(cover).mean())


def registration_record(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform, **found) -> dict:
    """What a registration did, as JSON: method, ``found`` (metric, iterations, stop, converged), the transform's
    name and parameters, its rotation (degrees) and the shift of the reference's centre (mm, and as a share of the
    reference's largest extent), and ``overlap``: :func:`covered_fraction` after it."""
    from ..io.geometry import physical_box

    lo, hi = physical_box(fixed)
    centre = (lo + hi) / 2
    moved = np.asarray(transform.TransformPoint(tuple(map(float, centre))))
    cols = [np.asarray(transform.TransformPoint(tuple(map(float, centre + e)))) - moved for e in np.eye(3)]
    cos = (float(np.trace(np.stack(cols, 1))) - 1.0) / 2.0
    shift = moved - centre
    extent = float(np.max(hi - lo)) or 1.0
    params = list(transform.GetParameters())
    if not params and transform.GetName() == "CompositeTransform":
        params = list(sitk.CompositeTransform(transform).GetNthTransform(0).GetParameters())
    return {"method": "rigid (Euler 3D), Mattes mutual information, regular-step gradient descent",
            **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in found.items()},
            "parameters": [round(float(v), 6) for v in params],
            "rotation_deg": round(float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))), 3),
            "shift_mm": [round(float(v), 3) for v in shift], "shift_norm_mm": round(float(np.linalg.norm(shift)), 3),
            "shift_fraction": round(float(np.linalg.norm(shift)) / extent, 4),
            "overlap": round(covered_fraction(fixed, moving, transform), 4)}


def registration_words(record: dict) -> str:
    """One line for the printed notes: what ``--register`` found."""
    return (f"rigid, Mattes MI {record['metric']:.4f}, "
            f"{'converged' if record['converged'] else 'NOT converged'} after {record['iterations']} iterations; "
            f"rotation {record['rotation_deg']:.1f} deg, shift {record['shift_norm_mm']:.1f} mm; it then covers "
            f"{record['overlap']:.0%} of the reference")


def _name(key: str, sources: Mapping[str, object] | None) -> str:
    src = (sources or {}).get(key)
    return f"{src} ({key})" if src is not None else f"modality {key!r}"


def align_modalities(images: Mapping[str, sitk.Image], reference: str | None = None, *, register: bool = False,
                     min_overlap: float = 0.5, sources: Mapping[str, object] | None = None,
                     records: dict | None = None) -> dict[str, sitk.Image]:
    """Resample every modality onto the ``reference`` modality's grid (float32, linear interpolation).

    Args:
        images: modality name -> 3D volume (with its own origin / spacing / direction).
        reference: name of the grid to use; default the first modality.
        register: estimate a rigid transform for each other modality first (:func:`rigid_register`).
        min_overlap: refuse when a modality covers less than this share of the reference (with ``register``:
            after registration, :func:`covered_fraction`).
        sources: modality name -> the file it came from, named in the refusals.
        records: filled with modality name -> :func:`registration_record` of each registered modality.

    Returns:
        modality name -> float32 volume on the reference grid (outside its own extent: its minimum intensity).

    Raises:
        InputImageError: no images, an unknown reference, modalities that do not overlap (after registration too),
            or a registration that moved further than :data:`MAX_ROTATION_DEG` /
            :data:`MAX_SHIFT_FRACTION` allow.
    """
    if not images:
        raise InputImageError("no modality was given")
    names = list(images)
    reference = reference or names[0]
    if reference not in images:
        raise InputImageError(f"reference modality {reference!r} is not among the inputs ({', '.join(names)})")
    ref = images[reference]
    out: dict[str, sitk.Image] = {}
    for name in names:
        img = images[name]
        if img.GetDimension() != 3:
            raise InputImageError(f"modality {name!r} is {img.GetDimension()}D; fusion needs 3D volumes")
        # with register=True a volume on the same grid may still hold a moved patient, so it is registered too
        if name == reference or (same_geometry(img, ref) and not register):
            out[name] = sitk.Cast(img, sitk.sitkFloat32)
            continue
        if register:
            record: dict = {}
            transform = rigid_register(ref, img, record=record)
            if records is not None:
                records[name] = record
            _check_registration(record, _name(name, sources), _name(reference, sources), min_overlap)
        else:
            frac = overlap_fraction(ref, img)
            if frac < min_overlap:
                raise InputImageError(
                    f"{_name(name, sources)} covers only {frac:.0%} of {_name(reference, sources)}'s extent: the "
                    "volumes do not overlap (different patients or frames?); align them first, or pass --register "
                    "for scans of one patient that moved a little")
            transform = sitk.Transform()
        fill = float(np.min(sitk.GetArrayViewFromImage(img)))
        out[name] = sitk.Resample(sitk.Cast(img, sitk.sitkFloat32), ref, transform, sitk.sitkLinear, fill,
                                  sitk.sitkFloat32)
    return out


def _check_registration(record: dict, moving: str, reference: str, min_overlap: float) -> None:
    # Stopping at the iteration limit alone is no refusal: a regular-step descent often ends there a fraction of a
    # millimetre from its optimum on a good pair. It is recorded and printed ("NOT converged"), and named among the
    # reasons when the move or the overlap is refused.
    problems = []
    if record["rotation_deg"] > MAX_ROTATION_DEG or record["shift_fraction"] > MAX_SHIFT_FRACTION:
        problems.append(f"it moved implausibly far (rotation {record['rotation_deg']:.0f} deg, shift "
                        f"{record['shift_norm_mm']:.0f} mm = {record['shift_fraction']:.0%} of the reference's extent; "
                        f"at most {MAX_ROTATION_DEG:.0f} deg and {MAX_SHIFT_FRACTION:.0%} are taken for one patient)")
    if record["overlap"] < min_overlap:
        problems.append(f"afterwards it covers only {record['overlap']:.0%} of the reference (at least "
                        f"{min_overlap:.0%} needed)")
    if problems and not record["converged"]:
        problems.insert(0, f"it did not converge ({record['stop']})")
    if problems:
        raise InputImageError(f"--register could not align {moving} to {reference}: " + "; ".join(problems)
                              + f" (Mattes MI {record['metric']:.4f}); are they scans of one patient and body part?")


def stack_arrays(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """Stack plain ``(Z, Y, X)`` arrays (no geometry) as channels ``(M, Z, Y, X)``.

    Raises:
        InputImageError: when their shapes differ — without geometry there is no safe way to align them.
    """
    shapes = {name: tuple(np.shape(a)) for name, a in arrays.items()}
    if len(set(shapes.values())) != 1:
        listed = ", ".join(f"{n} {list(s)}" for n, s in shapes.items())
        raise InputImageError(f"modalities have different sizes ({listed}) and no geometry to align them; "
                              "give images with origin/spacing (NIfTI, NRRD) or resample them to one grid first")
    return np.stack([np.asarray(a, dtype=np.float32) for a in arrays.values()])
