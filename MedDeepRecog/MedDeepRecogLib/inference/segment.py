"""Segmentation inference: segment a scan with a segmentation package and write the result on the scan's own grid.

The scan is reoriented to the package's ``input.orientation`` (voxels permuted and flipped by SimpleITK's
``DICOMOrient``, no interpolation), so the network sees the same anatomy in the same array axes however the file
stores it, then resampled to ``input.spacing_mm``, normalised as in training (``input.normalize``),
predicted patch by patch with ``monai.inferers.sliding_window_inference`` (Gaussian blending), and the class
probabilities are resampled back onto the scan's grid (linear) before the arg-max, so the segments overlay the
scan exactly in Slicer's slice and 3D views. Specks smaller than ``input.inference.min_component_fraction`` of a
class's largest component are removed, as in validation.

Memory: the scan is never copied to float32 as a whole, and the probabilities are taken back onto the scan's grid
one class at a time, keeping a running maximum and the uint8 arg-max (:func:`argmax_labels`): about 10 bytes per
scan voxel besides the scan, where the class stack and an int64 arg-max took ~60 (a 512x512x400 int16 CT at
0.8 x 0.8 x 1 mm peaked at 7.0 GB RSS, now 1.9 GB; the same voxels at the model's 3 mm 7.4 GB, now 3.4 GB). :func:`check_segment_input` refuses, before the network is built, a scan too
small for the package's patches, a label map, a scan of the other modality, and a run whose estimated memory
(:func:`segment_memory_bytes`) exceeds ``MEDDEEPRECOG_MAX_SEGMENT_BYTES``.

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

from ..contract import LOW_DICE, chosen_on_validation, validation_caveats
from ..errors import ConfigError, InputImageError, ModelPackageError
from ..io import SegmentSpec, image_notes, read_image, require_3d, validate_intensities, write_segmentation
from ..io.slice_grid import acquired_grid
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


#: Share of the package's patch (``input.size``) a scan must span along each axis of the work grid (its voxels at
#: ``input.spacing_mm``, in the package's orientation). A segmentation network recognises an organ by its
#: surroundings; a scan smaller than that gave ts-organs-seg's 32x64x64 patches (3 mm) almost nothing but padding,
#: and they came back as "liver: 179 voxels" on a 20x20 single-slice crop. A quarter of the patch (ts-organs-seg:
#: 16 x 16 x 8 voxels, x y z: 48 x 48 x 24 mm) still lets through the 20-slice DICOM CT of its card (13 work slices),
#: and refuses single slices and crops of a few voxels. Classify refuses slices under half its size per side; a 3D
#: package's training slabs were themselves padded along z (ts-organs-seg: 18 slices in a 32-slice patch).
MIN_PATCH_SHARE = 0.25

#: Memory of a ``segment`` run besides what grows with the scan: Python, torch, MONAI, SimpleITK and the network
#: (a 122x101x112 CT peaked at 0.69 GB RSS, the 512x512x20 DICOM series at 0.70 GB).
SEGMENT_BASE_BYTES = 3 << 28   # 0.75 GiB
#: float32 values per work-grid voxel (padded to the patch) held while the network runs, besides one per class: its
#: input and MONAI's weight map (:func:`segment_memory_bytes`).
WORK_VOXEL_FLOAT32 = 2
#: Bytes per scan voxel held on the way back to the scan's grid, besides the scan and the class probabilities on the
#: work grid: a float32 running maximum and the resampled class (8), the uint8 labels and the comparison (2). The
#: small-component clean-up after it holds ~7 (labels, their copy, the class mask, ITK's uint32 component map), the
#: .seg.nrrd writer ~3.
SCAN_VOXEL_BYTES = 10


def work_grid_size(image: sitk.Image, spec: dict[str, Any], orientation: str) -> list[int]:
    """Voxels ``(x, y, z)`` of the grid the network reads ``image`` on: reoriented to ``orientation`` (axes
    permuted, :func:`orient`) and resampled to ``input.spacing_mm`` (:func:`resample_to_spacing`), from the
    header alone (:func:`oriented_grid`, :func:`resampled_size`)."""
    size, spacing = oriented_grid(image, orientation)
    return resampled_size(size, spacing, spec["spacing_mm"]) if spec.get("spacing_mm") else [int(n) for n in size]


def segment_memory_bytes(image: sitk.Image, pkg: Any, orientation: str | None = None) -> int:
    """Estimated peak memory (bytes) of segmenting ``image`` with ``pkg`` on the CPU, from the header alone:
    :data:`SEGMENT_BASE_BYTES`, the scan as read (and a reoriented copy), and the larger of the network's step (its
    float32 input, class sums and weight map on the work grid padded to the patch) and the way back (the class
    probabilities on the work grid and :data:`SCAN_VOXEL_BYTES` per scan voxel). Measured peaks lie 7-20 % below:
    a 512x512x400 CT (the example CT tiled) 1.8 GiB at 0.8 x 0.8 x 1 mm (estimated 2.0) and 3.2 GiB at the model's
    3 mm (3.5), a 512x512x200 DICOM series written as a DICOM SEG 1.2 GiB (1.5), the 122x101x112 example 0.67 GiB
    (0.79)."""
    spec = pkg.input_spec
    orientation = orientation or package_orientation(spec, pkg.path)
    scan_voxels = int(np.prod([int(n) for n in image.GetSize()]))
    scan_bytes = scan_voxels * image.GetSizeOfPixelComponent() * image.GetNumberOfComponentsPerPixel()
    if orientation_of(image) != orientation:
        scan_bytes *= 2
    patch_xyz = [int(n) for n in reversed(spec.get("size") or [1, 1, 1])]
    work = int(np.prod([max(n, p) for n, p in zip(work_grid_size(image, spec, orientation), patch_xyz)]))
    classes = max(2, len(pkg.class_names))
    network = 4 * work * (classes + WORK_VOXEL_FLOAT32)
    back = 4 * work * classes + SCAN_VOXEL_BYTES * scan_voxels
    return int(SEGMENT_BASE_BYTES + scan_bytes + max(network, back))


def check_segment_input(image: sitk.Image, pkg: Any, source: str | Path | None = None) -> None:
    """Refuse, before the network is built, what ``pkg`` cannot segment, in this order: a scan smaller than
    :data:`MIN_PATCH_SHARE` of its patch along an axis (a few voxels are also "not HU" and "a label map", but too
    small is what is wrong with them), a label map or mask (classify's test,
    :func:`.model_input.check_input_content`), a scan of the other modality (:func:`check_scan_modality`), and a
    run whose estimated memory (:func:`segment_memory_bytes`) exceeds :func:`..limits.max_segment_bytes`.

    Raises:
        InputImageError: naming ``source`` and the problem.
    """
    from ..limits import MAX_SEGMENT_ENV, human_bytes, max_segment_bytes
    from .model_input import check_input_content

    spec = pkg.input_spec
    orientation = package_orientation(spec, pkg.path)
    patch_xyz = [int(n) for n in reversed(spec.get("size") or [])]
    if len(patch_xyz) == 3:
        work = work_grid_size(image, spec, orientation)
        minimum = [max(1, int(np.ceil(MIN_PATCH_SHARE * p))) for p in patch_xyz]
        if any(n < m for n, m in zip(work, minimum)):
            def xyz(values) -> str:
                return " x ".join(f"{float(v):g}" for v in values)

            spacing = spec.get("spacing_mm")
            extent = [n * float(v) for n, v in zip(image.GetSize(), image.GetSpacing())]
            grid = f"{xyz(work)} on its {xyz(spacing)} mm grid" if spacing else f"{xyz(work)} as it reads it"
            mm = f" = {xyz(m * float(v) for m, v in zip(minimum, spacing))} mm" if spacing else ""
            raise InputImageError(
                f"the scan is {xyz(image.GetSize())} voxels ({xyz(extent)} mm), too small for model {pkg.id}: "
                f"{grid}, where it needs at least {xyz(minimum)}{mm}, a quarter of the {xyz(patch_xyz)}-voxel "
                "patches it segments", source)
    check_input_content(image, spec, source)
    check_scan_modality(image, pkg, source)
    need, limit = segment_memory_bytes(image, pkg, orientation), max_segment_bytes()
    if need > limit:
        raise InputImageError(
            f"segmenting this {' x '.join(map(str, image.GetSize()))}-voxel scan with model {pkg.id} needs about "
            f"{human_bytes(need)} of memory (estimated), more than the limit of {human_bytes(limit)}; raise it with "
            f"{MAX_SEGMENT_ENV} if the machine has the memory", source)


def check_scan_modality(image: sitk.Image, pkg: Any, source: str | Path | None = None, *,
                        does: str = "segments") -> None:
    """Refuse a scan that is not in Hounsfield units for a package trained on CT (``"modality": "CT"``), and a CT
    in HU for a package trained on MR.

    A network of the other modality runs without complaint and returns organ volumes that are all wrong: the HU
    window turns MR intensities into near-constant soft tissue, and per-scan percentiles of a CT are not an MR's.
    Same test as classify's (:func:`.model_input.is_hounsfield`: DICOM modality, else air below -500). ``image``:
    as read (a DICOM series' tags say its modality). ``does``: what the model does, in the message (``segment``'s
    "segments"; ``classify --segments``' ROI classifiers "classifies segments of").

    Raises:
        InputImageError: naming ``source``, before any model work.
    """
    modality = str(pkg.meta.get("modality", "")).upper()
    if modality == "CT" and not is_hounsfield(image):
        guess = guess_modality(image)
        seen = f"it reads as {guess}: " if guess in ("MR", "US") else ""
        raise InputImageError(f"not a CT scan in Hounsfield units ({seen}no air below -500, or a DICOM modality other "
                              f"than CT), but model {pkg.id}@{pkg.version} {does} CT only: give it a CT scan, or use a "
                              "package trained on this modality", source)
    if modality == "MR" and is_hounsfield(image):
        raise InputImageError(f"a CT scan in Hounsfield units (DICOM modality CT, or air below -500), but model "
                              f"{pkg.id}@{pkg.version} {does} MR only: give it an MR scan, or use a package trained "
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
        InputImageError: what :func:`check_segment_input` refuses, before the network is built.
    """
    import torch

    pkg = load_segmentation_package(package)
    spec = pkg.input_spec
    orientation = package_orientation(spec, pkg.path)
    check_segment_input(image, pkg, source)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    model = pkg.build_model(device)
    timings["load_model"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    # normalisation "auto" only tells CT (air below -500 HU) from the rest: the same answer on the scan as stored as on
    # a float32 copy, which is not made (a 512x512x400 CT is 0.4 GB more as float32)
    modality = guess_modality(image)
    # the network was trained on arrays in this orientation: a scan stored otherwise is the same anatomy in
    # permuted / mirrored array axes, which it does not recognise
    oriented = work = orient(image, orientation)
    if spec.get("spacing_mm"):
        # linear interpolation runs in double whatever the stored type; float32 out, as from a float32 copy
        work = resample_to_spacing(oriented, spec["spacing_mm"], interpolator=sitk.sitkLinear,
                                   default=float(sitk.GetArrayViewFromImage(image).min()),
                                   pixel_type=sitk.sitkFloat32)
    resampled = work is not oriented
    work_grid = (work.GetSize(), work.GetOrigin(), work.GetSpacing(), work.GetDirection())
    array = normalize_intensity(sitk.GetArrayViewFromImage(work), modality, spec.get("normalize"))
    del oriented, work   # a reoriented copy of the scan, or the work grid's float32 image: the array is what is used
    timings["preprocess"] = time.perf_counter() - t0
    progress("predict", 0.2)
    t0 = time.perf_counter()
    inference = spec.get("inference") or {}
    logits = sliding_window_logits(model, torch.from_numpy(array)[None, None].to(device), spec["size"],
                                   overlap=overlap if overlap is not None else float(inference.get("overlap", 0.25)),
                                   amp=device.startswith("cuda"))
    del array
    probs = softmax_in_place(logits[0]).cpu().numpy()   # (K, Z, Y, X) float32, the logits' own memory on the CPU
    del logits
    timings["predict"] = time.perf_counter() - t0
    progress("resample", 0.8)
    t0 = time.perf_counter()
    if not resampled:  # the scan's own voxels, maybe stored in another order: put the labels back in its order
        labels = sitk.GetImageFromArray(argmax_labels(probs))
        _set_grid(labels, work_grid)
        labels = sitk.GetArrayFromImage(orient(labels, orientation_of(image)))
    else:  # probabilities back onto the scan grid, then arg-max: smoother borders than resampling labels
        # The work grid keeps the scan's origin and a rounded size, so its last sample can lie up to about half a
        # work voxel inside the scan's last slice: nearest-neighbour extrapolation carries its probabilities out
        # to the scan's edge (with a default of 0 the scan's last slice came back all background).
        def on_scan_grid(maps: np.ndarray):
            for channel in maps:
                p = sitk.GetImageFromArray(channel)
                _set_grid(p, work_grid)
                back = sitk.Resample(p, image, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32, True)
                del p
                yield sitk.GetArrayViewFromImage(back)   # a view, no copy: valid while ``back`` is held, until the
                del back                                 # arg-max asks for the next class

        labels = argmax_labels(on_scan_grid(probs))
    del probs
    timings["resample"] = time.perf_counter() - t0
    if min_component_fraction is None:
        min_component_fraction = float(inference.get("min_component_fraction", 0.0))
    labels = remove_small_components(labels, min_component_fraction)
    return labels, {"timing_s": {k: round(v, 3) for k, v in timings.items()}, "model": {"id": pkg.id,
                                                                                          "version": pkg.version}}


def _set_grid(image: sitk.Image, grid: tuple) -> None:
    size, origin, spacing, direction = grid
    assert tuple(image.GetSize()) == tuple(size)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)


def softmax_in_place(logits: torch.Tensor, chunk_elements: int = 1 << 24) -> torch.Tensor:
    """``torch.softmax(logits, 0)`` for ``(K, Z, Y, X)`` logits, written over them slab by slab along Z, so no
    second ``K x`` volume is allocated (4 classes of a 512x512x400 grid: 1.7 GB). Returns ``logits``."""
    import torch

    k, depth = logits.shape[0], logits.shape[1]
    step = max(1, chunk_elements // max(1, logits[0, 0].numel() * k))
    for z in range(0, depth, step):
        logits[:, z:z + step] = torch.softmax(logits[:, z:z + step], 0)
    return logits


def argmax_labels(channels) -> np.ndarray:
    """The arg-max over class maps given one at a time (an iterable of equally shaped arrays, class 0 first), as
    uint8 (uint16 from the 257th class on): the first class wins a tie, as ``np.argmax`` does, but only a float32
    running maximum, the labels and one class map are held, never the stack of all classes or an int64 index."""
    best = labels = None
    for index, channel in enumerate(channels):
        if best is None:
            best = np.array(channel, dtype=np.float32, copy=True)
            labels = np.zeros(best.shape, dtype=np.uint8)
            continue
        if index > np.iinfo(labels.dtype).max:   # a model of more than 256 classes
            labels = labels.astype(np.uint16)
        higher = channel > best
        labels[higher] = index
        np.copyto(best, channel, where=higher)
        del higher
    if labels is None:
        raise ValueError("no class maps to take the arg-max of")
    return labels


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
    notes = image_notes(image)   # what reading changed or assumed (a gapped series read anyway), as classify says
    # a gapped series is read on an evenly stretched grid: the .seg.nrrd goes on the true one (io.slice_grid),
    # decided before any work; the DICOM SEG references each source slice and needs no other grid
    try:
        acquired = acquired_grid(image, input_path, "a .seg.nrrd")
    except InputImageError:
        if not dicom_out:
            raise
        acquired = None
    pkg = load_segmentation_package(package)
    labels, info = segment_image(image, pkg, device=device, progress=progress, source=input_path)
    names = pkg.class_names[1:]
    colors = pkg.meta.get("class_colors") or {}
    specs = [SegmentSpec(name, i, _color(colors.get(name))) for i, name in enumerate(names, start=1)]
    grid = image
    if dicom_out:
        from ..io.dicom_seg import write_dicom_seg

        write_dicom_seg(labels, image, input_path, [(i, n) for i, n in enumerate(names, start=1)], out_path,
                        series_description=f"{pkg.id} {pkg.version} segmentation",
                        algorithm=pkg.id, algorithm_version=pkg.version)
    else:
        if acquired is not None:
            labels, grid = acquired.place(labels), acquired.reference
            notes.append(acquired.note("the segmentation", "no label") + "; volumes count the acquired slices")
        write_segmentation(labels, grid, specs, out_path)
    if acquired is not None:   # volumes on the true slice step, not the stretched grid's
        grid = acquired.reference
    voxel_ml = float(np.prod(grid.GetSpacing())) / 1000.0
    counts = [int(np.count_nonzero(labels == i)) for i in range(len(names) + 1)]   # no int64 copy of the grid
    limits = stated_limits(pkg)
    caveat = limits.pop("caveat")
    dice = (limits.get("validation") or {}).get("dice") or {}
    return {"input": str(input_path), "output": str(out_path), "model": info["model"], "caveat": caveat,
            "model_limits": limits, "timing_s": info["timing_s"],
            "segments": {name: {"voxels": int(counts[i]), "volume_ml": round(counts[i] * voxel_ml, 2),
                                **({"validation_dice": dice[name]} if name in dice else {})}
                         for i, name in enumerate(names, start=1)},
            **({"input_notes": notes} if notes else {})}


def _color(value: Any) -> tuple[float, float, float] | None:
    """A class's colour from a package's ``class_colors`` (RGB 0-1, as the user's segmentation gave it), else
    ``None`` (the organ's Slicer colour or the palette's)."""
    try:
        rgb = tuple(float(c) for c in value)
    except (TypeError, ValueError):
        return None
    return rgb if len(rgb) == 3 and all(0.0 <= c <= 1.0 for c in rgb) else None




def stated_limits(pkg: Any) -> dict[str, Any]:
    """What a segmentation package says of its own limits, for ``segment``'s output: its ``use`` (intended use,
    not-for list: what classify's report shows, ``report.model_card``), else its ``description`` (the bundled and
    fine-tuned packages state their limits there: ts-organs-seg "Demo: ... not for clinical use"), its validation
    figures per class (``metrics.per_class``), and ``caveat``: all of it in one line of words, naming the classes
    validated below :data:`LOW_DICE`, and saying when the figures also chose the checkpoint (optimistic:
    :func:`..contract.chosen_on_validation`) or are not held out (``metrics.held_out`` false: the model had trained on
    the voxels scored). Read from model.json as shipped; nothing is added to a package."""
    meta = pkg.meta
    use = meta.get("use") if isinstance(meta.get("use"), dict) else {}
    metrics = meta.get("metrics") if isinstance(meta.get("metrics"), dict) else {}
    per_class = metrics.get("per_class") if isinstance(metrics.get("per_class"), dict) else {}
    dice = {name: float(v["dice"]) for name, v in per_class.items()
            if isinstance(v, dict) and isinstance(v.get("dice"), (int, float))}
    out: dict[str, Any] = {}
    words = [f"{pkg.id}@{pkg.version}"]
    if use.get("intended_use") or use.get("not_for"):
        out["intended_use"] = str(use.get("intended_use") or "")
        out["not_for"] = [str(v) for v in use.get("not_for") or []]
        if out["intended_use"]:
            words.append(f"intended use: {out['intended_use'].rstrip('.')}.")
        if out["not_for"]:
            words.append(f"Not for: {'; '.join(v.rstrip('.') for v in out['not_for'])}.")
    elif str(meta.get("description") or "").strip():
        out["description"] = str(meta["description"]).strip()
        words.append(f"says of itself: {out['description'].rstrip('.')}.")
    else:
        words.append("states no intended use.")
    if dice:
        cases = metrics.get("cases")
        out["validation"] = {"split": metrics.get("split"), "cases": cases, "dice": dice}
        about = [f"{cases} case{'s' if cases != 1 else ''}"] if isinstance(cases, int) else []
        training = meta.get("training") if isinstance(meta.get("training"), dict) else {}
        if chosen_on_validation(metrics, training):
            # the bundled cards say so of their figures; a number printed beside a volume must carry it too
            out["validation"]["selected_on_validation"] = True
        if metrics.get("held_out") is False:
            out["validation"]["held_out"] = False
        about += validation_caveats(metrics, training)   # the words the model list shows too
        on = f" ({'; '.join(about)})" if about else ""
        words.append(f"Validation Dice recorded in the package{on}: "
                     f"{', '.join(f'{n} {d:.2f}' for n, d in dice.items())}.")
        low = [n for n, d in dice.items() if d < LOW_DICE]
        if metrics.get("held_out") is False:
            # a high Dice on voxels the model had trained on clears no class: without this, only the classes below
            # LOW_DICE would be named, and the others' volumes read as measurements
            words.append("Figures not held out validate no volume.")
        if low:
            words.append(f"Below Dice {LOW_DICE:g} in validation: {', '.join(low)}, so "
                         f"{'its volume is' if len(low) == 1 else 'their volumes are'} not a measurement.")
    else:
        words.append("The package records no validation Dice per class.")
    out["caveat"] = " ".join(words)
    return out


def normalize_intensity(array: np.ndarray, modality: str, spec: dict[str, Any] | None = None) -> np.ndarray:
    """Scale a scan's voxels to about 0..1: CT by a fixed HU window, anything else by per-scan percentiles.

    ``spec`` is configuration as data (stored in the model package): ``{"kind": "auto"|"ct_window"|"percentile",
    "ct_window_hu": [lo, hi], "percentiles": [lo, hi]}``. Returns float32.
    """
    spec = {**DEFAULT_NORMALIZE, **(spec or {})}
    kind = spec["kind"]
    if kind == "auto":
        kind = "ct_window" if modality == "CT" else "percentile"
    values = np.asarray(array, dtype=np.float32)
    if kind == "ct_window":
        lo, hi = spec["ct_window_hu"]
    elif kind == "percentile":
        lo, hi = np.percentile(values, spec["percentiles"])
    else:
        raise ConfigError(f"unknown intensity normalisation {kind!r}")
    scale = float(hi - lo) or 1.0
    # in place on one copy, in the type ``(values - lo) / scale`` computes in (float64 with numpy's percentiles),
    # so the values are the expression's without its four temporaries of the whole grid; the caller's array is
    # never written
    out = values.astype(np.result_type(values, lo, scale), copy=np.may_share_memory(values, array))
    out -= lo
    out /= scale
    np.clip(out, 0.0, 1.0, out=out)
    return out.astype(np.float32, copy=False)


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
                        default: float = 0.0, pixel_type: int | None = None) -> sitk.Image:
    """Resample ``image`` to ``spacing_mm`` (x, y, z) over the same physical extent, keeping origin and direction.

    ``pixel_type``: the result's (default: ``image``'s); ``image`` itself is returned when the spacing is already
    ``spacing_mm``, whatever its type."""
    spacing = [float(s) for s in spacing_mm]
    if np.allclose(spacing, image.GetSpacing(), rtol=1e-4):
        return image
    size = resampled_size(image.GetSize(), image.GetSpacing(), spacing)
    return sitk.Resample(image, size, sitk.Transform(), interpolator, image.GetOrigin(), spacing,
                         image.GetDirection(), default, image.GetPixelID() if pixel_type is None else pixel_type)


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
    ``ConnectedComponent``; component sizes are counted slab by slab, so besides the labels and their copy only the
    class mask and ITK's uint32 component map are held (a relabelled map and ``np.bincount``'s int64 copy of the
    whole grid were). ``min_fraction <= 0`` returns ``labels`` unchanged.
    """
    if min_fraction <= 0:
        return labels
    out = labels.copy()
    slab = max(1, (1 << 22) // max(1, int(np.prod(labels.shape[1:]))))
    for value in range(1, int(labels.max(initial=0)) + 1):
        mask = sitk.GetImageFromArray((labels == value).view(np.uint8))
        finder = sitk.ConnectedComponentImageFilter()
        finder.FullyConnectedOn()
        components = finder.Execute(mask)
        del mask
        count = finder.GetObjectCount()
        if count <= 1:
            continue
        comp = sitk.GetArrayViewFromImage(components)
        sizes = np.zeros(count + 1, dtype=np.int64)
        for z in range(0, comp.shape[0], slab):
            sizes += np.bincount(comp[z:z + slab].ravel(), minlength=count + 1)
        small = np.nonzero(sizes[1:] < min_fraction * sizes[1:].max())[0] + 1
        if small.size:
            for z in range(0, comp.shape[0], slab):
                out[z:z + slab][np.isin(comp[z:z + slab], small)] = 0
        del comp, components
    return out
