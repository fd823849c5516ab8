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


def rigid_register(fixed: sitk.Image, moving: sitk.Image, *, iterations: int = 100, seed: int = 0) -> sitk.Transform:
    """Rigid (rotation + translation) transform mapping ``fixed`` physical points into ``moving``.

    Mattes mutual information (multi-modal), regular-step gradient descent, 3 resolution levels, 20 % random
    sampling; initialised by aligning the intensity centres of mass (``MOMENTS``).
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
    log.info("rigid registration: metric %.4f after %d iterations (%s)", reg.GetMetricValue(),
             reg.GetOptimizerIteration(), reg.GetOptimizerStopConditionDescription())
    return transform


def align_modalities(images: Mapping[str, sitk.Image], reference: str | None = None, *, register: bool = False,
                     min_overlap: float = 0.5) -> dict[str, sitk.Image]:
    """Resample every modality onto the ``reference`` modality's grid (float32, linear interpolation).

    Args:
        images: modality name -> 3D volume (with its own origin / spacing / direction).
        reference: name of the grid to use; default the first modality.
        register: estimate a rigid transform for each other modality first (:func:`rigid_register`).
        min_overlap: refuse (without ``register``) when a modality covers less than this share of the reference.

    Returns:
        modality name -> float32 volume on the reference grid (outside its own extent: its minimum intensity).

    Raises:
        InputImageError: no images, an unknown reference, or modalities that do not overlap.
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
            transform = rigid_register(ref, img)
        else:
            frac = overlap_fraction(ref, img)
            if frac < min_overlap:
                raise InputImageError(
                    f"modality {name!r} covers only {frac:.0%} of the reference {reference!r}'s extent: the volumes "
                    "do not overlap (different patients or frames?); align them first or pass --register")
            transform = sitk.Transform()
        fill = float(np.min(sitk.GetArrayViewFromImage(img)))
        out[name] = sitk.Resample(sitk.Cast(img, sitk.sitkFloat32), ref, transform, sitk.sitkLinear, fill,
                                  sitk.sitkFloat32)
    return out


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
