"""Denoising steps: bilateral, non-local means, curvature anisotropic diffusion, median.

Bilateral and non-local means default to the filters of :mod:`.fast_denoise` (a fused numba kernel on CPU, torch
ops on CUDA; 10×+ faster than the voxel-by-voxel SimpleITK filters, see ``bench/preprocess.py``); the backend is
still called ``"torch"`` so that saved pipelines keep working. ``backend="sitk"`` runs SimpleITK's
``Bilateral`` / ``PatchBasedDenoising`` instead; the settings those have no equivalent for (NLM's ``search_radius``,
``h`` and ``sigma``, bilateral's ``truncate``, and ``device`` for both) are refused with it rather than ignored
(:func:`torch_only_problem`). Spatial sizes are in mm, intensities in the image's units (HU for CT).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import SimpleITK as sitk

from ..devices import resolve_device
from ..io import image_from_array
from .intensity import as_float32, float_array
from .steps import Grid, check_params, param, register, window_problem


def torch_only_problem(params, torch_only: dict, filter_name: str) -> str | None:
    """The one-line refusal for the first of ``torch_only`` (setting -> default) that ``params`` sets away from its
    default while ``backend`` is ``"sitk"``, whose SimpleITK ``filter_name`` has no such setting; None otherwise."""
    if params.backend != "sitk":
        return None
    for name, default in torch_only.items():
        value = getattr(params, name)
        if value != default:
            leave = "unset" if default is None else f"at its default {default}"
            return (f"parameter {name!r} ({value}) has no effect with backend 'sitk' (SimpleITK's {filter_name} has "
                    f"no equivalent setting); use backend 'torch', which honours it, or leave {name!r} {leave}")
    return None


#: bilateral settings only the torch backend uses, with their defaults (SimpleITK's Bilateral truncates at 2.5
#: sigmas of its own and runs on the CPU)
BILATERAL_TORCH_ONLY = {"truncate": 2.0, "device": "auto"}


@dataclass(frozen=True)
class BilateralParams:
    sigma_spatial_mm: float = param(1.5, "spatial Gaussian sigma in mm", minimum=1e-3, maximum=100)
    sigma_range: float | None = param(None, "range Gaussian sigma in intensity units (HU for CT); "
                                            "default 2x the estimated noise sigma", minimum=1e-6)
    truncate: float = param(2.0, "window radius in sigmas (torch backend only; SimpleITK's Bilateral uses its own "
                                 "2.5, so set 2.5 with backend torch to compare the two; the volume's faces are "
                                 "mirrored where SimpleITK repeats the edge voxel, so the outer few voxels differ)",
                            minimum=0.5, maximum=4.0)
    backend: Literal["torch", "sitk"] = param("torch", "torch: fast filter (numba kernel on CPU, torch on CUDA); "
                                                          "sitk: SimpleITK Bilateral")
    device: Literal["auto", "cpu", "cuda"] = param("auto", "torch device (torch backend only)")

    def validate(self) -> str | None:
        """Refuse ``truncate`` and ``device`` away from their defaults with ``backend="sitk"``, which would ignore
        them."""
        return torch_only_problem(self, BILATERAL_TORCH_ONLY, "Bilateral")


#: SimpleITK's Bilateral cuts its spatial Gaussian at this many sigmas (ITK's DomainMu)
SITK_BILATERAL_TRUNCATE = 2.5


def _bilateral_problem(p: BilateralParams, grid: Grid) -> str | None:
    """A window of more than :data:`~..limits.MAX_FILTER_WINDOW_VOXELS` from ``sigma_spatial_mm`` on this grid."""
    from ..limits import MAX_FILTER_WINDOW_VOXELS
    from .fast_denoise import window_radius

    truncate = SITK_BILATERAL_TRUNCATE if p.backend == "sitk" else p.truncate
    radius = window_radius([p.sigma_spatial_mm / s for s in grid.spacing], truncate)
    return window_problem(f"parameter 'sigma_spatial_mm' {p.sigma_spatial_mm:g}", radius, MAX_FILTER_WINDOW_VOXELS,
                          grid, "give a smaller 'sigma_spatial_mm' (or resample to a coarser spacing first)")


@register("bilateral", BilateralParams, summary="edge-preserving bilateral filter (spatial x range Gaussian)",
          check=_bilateral_problem)
def bilateral(image: sitk.Image, p: BilateralParams) -> sitk.Image:
    """Bilateral filter; the spatial sigma is converted to voxels per axis with the image spacing."""
    from .fast_denoise import bilateral_filter, estimate_noise_sigma

    check_params("bilateral", p)  # parameters built in code skip make_step's check
    arr = float_array(image)
    sigma_range = p.sigma_range if p.sigma_range is not None else 2.0 * estimate_noise_sigma(arr)
    if p.backend == "sitk":
        return sitk.Bilateral(as_float32(image), p.sigma_spatial_mm, max(sigma_range, 1e-6))
    sig_vox = [p.sigma_spatial_mm / s for s in reversed(image.GetSpacing())]  # (z, y, x)
    out = bilateral_filter(arr, sig_vox, sigma_range, truncate=p.truncate,
                           device=str(resolve_device(p.device, setting="bilateral device")))
    return image_from_array(out.astype(np.float32), image)


#: NLM settings that only the torch backend uses, with their defaults; see :meth:`NlmParams.validate`.
NLM_TORCH_ONLY = {"search_radius": 2, "h": None, "sigma": None, "device": "auto"}


@dataclass(frozen=True)
class NlmParams:
    patch_size: int = param(2, "patch edge in voxels (patches are size^3)", minimum=1, maximum=9)
    search_radius: int = param(2, "search radius s in voxels (candidates in (2s+1)^3); torch backend only",
                               minimum=1, maximum=10)
    h: float | None = param(None, "filtering strength (intensity units); default 1.6 x noise sigma; torch backend "
                                  "only", minimum=1e-6)
    sigma: float | None = param(None, "noise sigma (intensity units); default estimated from the image; torch "
                                      "backend only", minimum=0.0)
    backend: Literal["torch", "sitk"] = param("torch", "torch: fast per-offset NLM (numba kernel on CPU, torch on "
                                                          "CUDA); sitk: SimpleITK PatchBasedDenoising (its own "
                                                          "random patch sampling and kernel bandwidth estimate)")
    device: Literal["auto", "cpu", "cuda"] = param("auto", "torch device (torch backend only)")

    def validate(self) -> str | None:
        """Refuse ``search_radius``, ``h`` and ``sigma`` away from their defaults with ``backend="sitk"``.

        SimpleITK's ``PatchBasedDenoisingImageFilter`` has no setting that means the same, so these would be
        silently ignored:

        * ``search_radius``: SimpleITK always samples ``NumberOfSamplePatches`` (200) candidate patches at random
          from a Gaussian of variance ``SampleVariance`` (400 voxels², cut at 2.5 standard deviations) around each
          voxel; there is no (2s+1)^3 box of every candidate. Mapping ``s`` to a variance would give another,
          random filter under the same name.
        * ``h``: the nearest knob, ``KernelBandwidthSigma``, is the bandwidth of a Gaussian kernel on a patch
          distance weighted by a smooth disc (Awate and Whitaker) and without the ``2 sigma²`` offset used here, so
          the same number filters with another strength; the backend estimates the bandwidth from the image.
        * ``sigma``: SimpleITK's ``NoiseSigma`` is read only by its noise-model fidelity term, which is off
          (``NoiseModelFidelityWeight`` 0): the value changes nothing (checked: outputs at 1 and 100 are equal);
          giving it used to switch the bandwidth estimate off, leaving SimpleITK's fixed bandwidth of 400.

        The work per voxel, ``patch_size^3 x (2 search_radius + 1)^3``, is bounded by
        :data:`~..limits.MAX_NLM_WORK` (patch 9 with search 10 ran for minutes on a small CT).

        Refusing is better than an approximate mapping: a pipeline that names these values promises the filter they
        define. ``patch_size`` maps to ``PatchRadius = max(patch_size // 2, 1)`` (coarsely: 1 to 3 all give radius
        1). ``device`` is refused too: SimpleITK runs on the CPU. The torch backend honours all of them.
        """
        from ..limits import MAX_NLM_WORK

        work = self.patch_size ** 3 * (2 * self.search_radius + 1) ** 3
        if work > MAX_NLM_WORK:
            return (f"'patch_size' {self.patch_size} with 'search_radius' {self.search_radius} compares "
                    f"{self.patch_size}^3 x {2 * self.search_radius + 1}^3 = {work:,} voxel pairs for each output "
                    f"voxel, above the limit of {MAX_NLM_WORK:,}: give a smaller patch or search radius")
        return torch_only_problem(self, NLM_TORCH_ONLY, "PatchBasedDenoising")


@register("nlm", NlmParams, summary="non-local means denoising", aliases=("non_local_means",))
def nlm(image: sitk.Image, p: NlmParams) -> sitk.Image:
    """Non-local means; the torch backend uses the weight rule of scikit-image's fast mode.

    ``backend="sitk"`` runs SimpleITK's PatchBasedDenoising with its own kernel bandwidth estimate; the settings it
    cannot honour (``search_radius``, ``h``, ``sigma``) are refused by :meth:`NlmParams.validate` when given.
    """
    from .fast_denoise import estimate_noise_sigma, nlm_filter

    check_params("nlm", p)  # parameters built in code skip make_step's check
    if p.backend == "sitk":
        f = sitk.PatchBasedDenoisingImageFilter()
        f.SetPatchRadius(max(p.patch_size // 2, 1))
        f.SetNumberOfIterations(1)
        f.SetKernelBandwidthEstimation(True)
        # on a unit-spacing copy: ITK weights the patch by physical distance and stops with "Patch weights must be
        # in the range [0,1]" on most anisotropic grids (e.g. 0.8 x 1.1 x 2.5 mm); the patch is in voxels, as the
        # torch backend's is
        grid = as_float32(image)
        unit = sitk.Image(grid)
        unit.SetSpacing((1.0,) * grid.GetDimension())
        unit.SetOrigin((0.0,) * grid.GetDimension())
        unit.SetDirection(np.eye(grid.GetDimension()).ravel().tolist())
        out = f.Execute(unit)
        out.CopyInformation(grid)
        return out
    arr = float_array(image)
    sigma = p.sigma if p.sigma is not None else estimate_noise_sigma(arr)
    if sigma <= 0:
        return as_float32(image)
    out = nlm_filter(arr, patch_size=p.patch_size, search_radius=p.search_radius, h=p.h, sigma=sigma,
                     device=str(resolve_device(p.device, setting="nlm device")))
    return image_from_array(out.astype(np.float32), image)


@dataclass(frozen=True)
class DiffusionParams:
    iterations: int = param(5, "number of diffusion iterations", minimum=1, maximum=100)
    conductance: float = param(3.0, "conductance (higher smooths across stronger edges)", minimum=0.0)
    time_step: float | None = param(None, "time step in ITK's physical units (mm); default and largest allowed: "
                                          "the stable limit min(spacing)/16", minimum=1e-6)


def stable_time_step(grid: Grid) -> float:
    """The largest stable time step of ITK's anisotropic diffusion filters on ``grid``: min(spacing) / 2^(dim+1)
    (mm; 1/16 of the finest spacing in 3D). ITK itself only prints a warning above it and the result grows
    without bound (values of ±8e9 from a CT at time step 10)."""
    return min(grid.spacing) / 2.0 ** (len(grid.spacing) + 1)


#: relative slack on the stable limit, so that the limit itself, written out in a pipeline file, is accepted
_STABLE_SLACK = 1e-6


def _diffusion_problem(p: DiffusionParams, grid: Grid) -> str | None:
    limit = stable_time_step(grid)
    if p.time_step is not None and p.time_step > limit * (1 + _STABLE_SLACK):
        spacing = " x ".join(f"{s:g}" for s in grid.spacing)
        return (f"parameter 'time_step' {p.time_step:g} is above the stable limit {limit:.6g} for this scan (its "
                f"smallest spacing {min(grid.spacing):g} mm / {2 ** (len(grid.spacing) + 1)}; spacing {spacing} mm): "
                "the diffusion would blow up; give at most that, or leave 'time_step' unset")
    return None


@register("anisotropic_diffusion", DiffusionParams, summary="curvature anisotropic diffusion (SimpleITK)",
          aliases=("curvature_anisotropic_diffusion",), check=_diffusion_problem)
def anisotropic_diffusion(image: sitk.Image, p: DiffusionParams) -> sitk.Image:
    """SimpleITK CurvatureAnisotropicDiffusion; the default time step is the stability bound
    (:func:`stable_time_step`), a larger one is refused by the pipeline's check before any step runs."""
    step = p.time_step if p.time_step is not None else stable_time_step(Grid.of(image))
    return sitk.CurvatureAnisotropicDiffusion(as_float32(image), timeStep=step, conductanceParameter=p.conductance,
                                              numberOfIterations=p.iterations)


@dataclass(frozen=True)
class MedianParams:
    radius_mm: float | None = param(None, "radius in mm (converted per axis, at least 1 voxel in-plane)",
                                    minimum=0.0)
    radius: int = param(1, "radius in voxels (used when radius_mm is not given)", minimum=0, maximum=10)


def _median_radius(p: MedianParams, grid: Grid) -> list[int]:
    """The median's radius in voxels per axis (x, y, z): ``radius_mm`` over the spacing, else ``radius``."""
    if p.radius_mm is not None:
        return [max(0, int(math.floor(p.radius_mm / s + 0.5))) for s in grid.spacing]
    return [p.radius] * len(grid.spacing)


def _median_problem(p: MedianParams, grid: Grid) -> str | None:
    """A window of more than :data:`~..limits.MAX_FILTER_WINDOW_VOXELS` (what ``radius`` 10 gives)."""
    from ..limits import MAX_FILTER_WINDOW_VOXELS

    setting, value = ("radius_mm", p.radius_mm) if p.radius_mm is not None else ("radius", p.radius)
    return window_problem(f"parameter {setting!r} {value:g}", _median_radius(p, grid), MAX_FILTER_WINDOW_VOXELS,
                          grid if p.radius_mm is not None else None, f"give a smaller {setting!r}")


@register("median", MedianParams, summary="median filter (SimpleITK)", check=_median_problem)
def median(image: sitk.Image, p: MedianParams) -> sitk.Image:
    """SimpleITK Median; keeps the pixel type (a median of integers is an integer)."""
    return sitk.Median(image, _median_radius(p, Grid.of(image)))
