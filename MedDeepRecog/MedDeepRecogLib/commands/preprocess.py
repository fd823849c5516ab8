"""``meddeeprecog preprocess INPUT OUTPUT --pipeline NAME|FILE``: run a preprocessing pipeline on a scan.

The output overlays the input in Slicer: when the pipeline resamples or crops, the result is put back on the
input grid (``--keep-resampled-grid`` keeps the pipeline's grid). Masks made by mask steps are written with
``--mask OUT.seg.nrrd`` as named, colored segments. ``--list`` prints the steps, their parameters and the presets.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..contract import PROGRESS_MODES
from ..errors import ConfigError, InputImageError, OutputError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "preprocess", help="denoise / enhance / segment a scan with a pipeline (preset or JSON/YAML file)",
        description="Run a preprocessing pipeline on a scan. The output keeps the input's geometry unless "
                    "--keep-resampled-grid is given.")
    p.add_argument("input", nargs="?", help="NIfTI/NRRD/MHA file, DICOM file or DICOM series folder, or a 2D image "
                                            "(PNG/JPEG, single-frame DICOM, 2D NIfTI/NRRD), filtered as one slice")
    p.add_argument("output", nargs="?", help="output volume (.nrrd, .nii.gz, .nii, .mha)")
    p.add_argument("--pipeline", help="preset name (see --list) or a .json/.yaml pipeline file")
    p.add_argument("--mask", metavar="OUT.seg.nrrd", help="write the masks made by mask steps as a segmentation")
    p.add_argument("--progress", choices=PROGRESS_MODES, default="none",
                   help="progress as JSON lines on stdout, a bar on stderr, or none (default)")
    p.add_argument("--keep-resampled-grid", action="store_true",
                   help="write the result on the pipeline's grid instead of resampling back onto the input grid")
    p.add_argument("--spacing", type=float, nargs=2, metavar=("X_MM", "Y_MM"),
                   help="pixel size of a PNG/JPEG input in mm (it stores none; default 1 mm)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUTPUT (and the --mask file) if it exists (default: refuse)")
    p.add_argument("--list", action="store_true", help="list steps with their parameters and the presets, then exit")
    p.add_argument("--json", action="store_true", help="with --list: print JSON")
    p.set_defaults(func=run)


_FLAT_COPIES = 5  # copies of a 2D image filtered as a volume (see run)


def _same_file(a: Path, b: Path) -> bool:
    try:
        if b.exists() and a.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _print_list(as_json: bool) -> None:
    from ..preprocessing import describe_steps, list_presets, load_pipeline

    steps = describe_steps()
    presets = {name: load_pipeline(name).to_data() for name in list_presets()}
    if as_json:
        print(json.dumps({"steps": steps, "presets": presets}, indent=2))
        return
    print("Steps (kind: image = same grid, grid = new grid, mask = makes a segment):")
    for step in steps:
        alias = f" (aliases: {', '.join(step['aliases'])})" if step["aliases"] else ""
        print(f"\n  {step['name']} [{step['kind']}]{alias}: {step['summary']}")
        for prm in step["params"]:
            print(f"      {prm['name']}: {prm['type']} = {json.dumps(prm['default'])}  -- {prm['help']}")
    print("\nPresets:")
    for name, data in presets.items():
        print(f"  {name}: {' -> '.join(s['name'] for s in data['steps'])}")
        if data.get("description"):
            print(f"      {data['description']}")


def run(args: argparse.Namespace) -> int:
    if args.list:
        _print_list(args.json)
        return 0
    if not args.input or not args.output:
        raise ConfigError("INPUT and OUTPUT are required (or use --list)")
    if not args.pipeline:
        raise ConfigError("--pipeline NAME|FILE is required (presets: see --list)")
    from ..io import as_single_slice, carry_notes, image_notes, read_image, require_3d, validate_intensities
    from ..io.image_meta import add_note
    from ..io.image_meta import multi_frame_refusal
    from ..contract import unwritable_reason
    from ..preprocessing import load_pipeline
    from ..progress import Progress

    source, target = Path(args.input), Path(args.output)
    if _same_file(source, target):
        raise ConfigError("OUTPUT is the INPUT; refusing to overwrite the input scan", target)
    if (reason := unwritable_reason(target)) is not None:
        raise ConfigError(reason, target)
    mask_path = Path(args.mask) if args.mask else None
    if mask_path is not None:
        if not mask_path.name.lower().endswith(".seg.nrrd"):
            raise ConfigError("--mask must name a .seg.nrrd file", mask_path)
        if _same_file(source, mask_path) or _same_file(target, mask_path):
            raise ConfigError("--mask must differ from INPUT and OUTPUT", mask_path)

    from ..io import check_output_dir
    for out_path, option in ((target, "OUTPUT"), (mask_path, "--mask")):
        if out_path is None:
            continue
        if out_path.is_dir():
            raise OutputError(f"{option} is an existing folder; name a file", out_path)
        if out_path.exists() and not args.overwrite:
            raise OutputError(f"{option} already exists; pass --overwrite to replace it", out_path)
        check_output_dir(out_path.parent, f"{option}'s folder")

    progress = Progress(args.progress)
    pipeline = load_pipeline(args.pipeline)
    if mask_path is not None and not pipeline.makes_masks:
        raise ConfigError(f"pipeline {pipeline.name or args.pipeline!r} has no mask step, so --mask has nothing "
                          "to write", mask_path)
    progress("reading", 0.0, input=str(source))
    original = read_image(source, spacing=args.spacing)
    what = f"pipeline {pipeline.name or args.pipeline!r}"
    # Frames that the file does not place in space may be a cine loop: 3D filters would smooth across time points
    # at an assumed 1 mm. A multi-frame object that does place its frames (SpacingBetweenSlices, or an enhanced CT/MR
    # object's frame positions) is a whole series in one file, and a researcher expects it filtered as a volume.
    if (frames := multi_frame_refusal(original, what, "process", volume_ok=True)) is not None:
        raise InputImageError(frames, source)
    single = as_single_slice(original) if original.GetDimension() in (2, 3) else None
    flat = single is not None
    image = original
    if flat:
        # A 2D image (or a one-slice volume, e.g. one DICOM file) is filtered as a stack of identical copies (3D
        # filters need a few slices, e.g. recursive Gaussians need 4): with no variation along z every 3D filter
        # acts as its 2D form. The middle copy is written back on the input's own grid.
        import SimpleITK as sitk
        if single.GetNumberOfComponentsPerPixel() != 1:
            raise InputImageError(f"a single-channel image is needed, but pixels have "
                                  f"{single.GetNumberOfComponentsPerPixel()} components", source)
        image = sitk.JoinSeries([single] * _FLAT_COPIES)
    image = require_3d(image, source)
    _check_size(pipeline, what, single if flat else image, source)
    validate_intensities(single if flat else image, source)   # named as the user gave it: a 2D image's pixels
    _check_hounsfield(pipeline, args.pipeline, original, image, source)
    # a gapped series is read on an evenly stretched grid: OUTPUT and the masks go on the true one (io.slice_grid)
    from ..io.slice_grid import acquired_grid
    acquired = None if flat or args.keep_resampled_grid else acquired_grid(
        original, source, "OUTPUT", "fill the gap or process the series' evenly spaced runs one by one")

    def step_progress(stage: str, fraction: float, **extra) -> None:
        progress(stage, 0.05 + 0.85 * fraction, **extra)

    try:
        result = pipeline.run(image, progress=step_progress)
    except ConfigError as exc:
        raise ConfigError(f"pipeline {pipeline.name or args.pipeline!r}: {exc.problem}", source) from None
    if not args.keep_resampled_grid:
        result = result.on_grid(image)

    progress("writing", 0.92, output=str(target))
    out_image = carry_notes(original, _back_on_input_grid(result.image, original) if flat else result.image)
    notes = image_notes(original)
    if acquired is not None:
        import SimpleITK as sitk
        fill = float(sitk.GetArrayViewFromImage(out_image).min())   # the image's own lowest value, said in the note
        note = acquired.note("OUTPUT" + (" and the masks" if mask_path is not None else ""),
                             f"the output's lowest value {fill:.4g}"
                             + (" in OUTPUT and no mask" if mask_path is not None else "")) + " (filler, not data)"
        out_image = acquired.place_image(out_image, fill)
        add_note(out_image, note)
        notes.append(note)
    outputs = _write_outputs(out_image, target, result, mask_path, original if flat else None, acquired)
    # said after the writes, not before the work: a refusal on the way stays the one line the user reads
    for note in notes:
        print(f"meddeeprecog preprocess: warning: {source}: {note}", file=sys.stderr)
    progress("done", 1.0, result=outputs, **({"notes": notes} if notes else {}))
    return 0


def _write_outputs(out_image, target: Path, result, mask_path: Path | None, flat_input=None,
                   acquired=None) -> dict[str, str]:
    """Write OUTPUT and the ``--mask`` segmentation as one: both or neither.

    The mask is written first under a hidden temporary name beside ``mask_path``, then OUTPUT, then the mask is
    renamed into place. A failed write of either leaves no new file (so a rerun is not refused for an existing
    OUTPUT), and with ``--overwrite`` a failed mask write keeps the user's earlier OUTPUT. Only if the final rename
    fails after OUTPUT was written are the files this run added for OUTPUT removed again.
    """
    from ..errors import OutputError
    from ..io import atomic_output, write_image

    if mask_path is None:
        return {"output": str(write_image(out_image, target))}
    folder = target.parent
    before = set(os.listdir(folder)) if folder.is_dir() else set()
    written = False
    try:
        with atomic_output(mask_path) as staged:
            try:
                _write_masks(result, staged, flat_input, acquired)
            except OutputError as exc:  # name the user's --mask path, not the hidden temporary
                raise OutputError(exc.problem, mask_path) from None
            write_image(out_image, target)
            written = True
    except BaseException:
        if written:  # OUTPUT (and a .nhdr/.mhd's data file) is this run's own new file: remove it
            stem = target.name.split(".")[0]
            for name in set(os.listdir(folder)) - before:
                if name.split(".")[0] == stem:
                    (folder / name).unlink(missing_ok=True)
        raise
    return {"output": str(target), "mask": str(mask_path)}


def _check_size(pipeline, what: str, image, source: Path) -> None:
    """Refuse ``image`` (the 2D image as given, or the volume) when it has fewer pixels along a side than a step of
    ``pipeline`` needs (:meth:`..preprocessing.pipeline.Pipeline.min_side`), naming its size, before any step runs:
    ITK's own refusal names a filter and a dimension index, not the image."""
    need, step = pipeline.min_side()
    size = [int(n) for n in image.GetSize()]
    if min(size) >= need:
        return
    kind, unit = ("image", "pixels") if image.GetDimension() == 2 else ("volume", "voxels")
    raise InputImageError(f"the {kind} is {' x '.join(map(str, size))} {unit}, too small for {what} (needs at least "
                          f"{need} {unit} per side: its step {step} needs {need})", source)


def _check_hounsfield(pipeline, name: str, original, image, source: Path) -> None:
    """Refuse a picture (PNG/JPEG: grey levels, never HU) for a pipeline with steps that read CT intensities in HU,
    before any output; for another image whose intensities do not look like HU (no DICOM modality CT, no air below
    -500), print a warning and go on: a CT crop without air is still in HU. One rule by the modality each step is
    made for: steps made for MR (``Pipeline.mr_steps``: N4, the head mask, an MR body mask) on an image that reads
    as a CT in HU get the same warning."""
    from ..inference.model_input import is_hounsfield
    from ..io import is_picture

    mr_steps = pipeline.mr_steps
    if mr_steps and not is_picture(original) and is_hounsfield(image):   # the same rule the other way round
        what = f"pipeline {pipeline.name or name!r} step{'s' if len(mr_steps) > 1 else ''} {', '.join(mr_steps)}"
        print(f"meddeeprecog preprocess: warning: {source}: {what} {'are' if len(mr_steps) > 1 else 'is'} made for "
              "MR intensities, but this image reads as a CT in HU (DICOM modality CT, or air below -500): on a CT "
              "the result means nothing", file=sys.stderr)
    steps = pipeline.hu_steps
    if not steps:
        return
    what = f"pipeline {pipeline.name or name!r} step{'s' if len(steps) > 1 else ''} {', '.join(steps)}"
    if is_picture(original):
        raise InputImageError(f"{what} read{'' if len(steps) > 1 else 's'} CT intensities in HU, and a picture "
                              "(PNG/JPEG) holds grey levels, not HU: give the CT in HU (NIfTI, NRRD or DICOM) or "
                              "a pipeline without those steps", source)
    if not is_hounsfield(image):
        print(f"meddeeprecog preprocess: warning: {source}: {what} read{'' if len(steps) > 1 else 's'} CT "
              "intensities in HU, but this image has no DICOM modality CT and no air below -500: if it is not a CT "
              "in HU, the result means nothing", file=sys.stderr)


def _back_on_input_grid(filtered, original):
    """The middle copy of a flat input's filtered stack, on the input's own grid: 2D for a 2D input, a one-slice
    volume (with its own z position and direction) for a one-slice volume."""
    import SimpleITK as sitk

    middle = filtered[:, :, _FLAT_COPIES // 2]
    if original.GetDimension() == 2:
        return middle
    volume = sitk.JoinSeries([middle])
    volume.CopyInformation(original)
    return volume


def _write_masks(result, path: Path, flat_input=None, acquired=None) -> Path:
    """Every mask as one named, colored segment of a ``.seg.nrrd``; overlapping masks (body, lungs) stay whole.
    ``flat_input``: the 2D image (or one-slice volume) that was filtered as copies; the masks are then written as a
    one-slice segmentation on its grid. ``acquired``: a gapped series' true slice grid (``io.slice_grid``), where
    the masks are written, the slices the series lacks in no mask."""
    import SimpleITK as sitk

    from ..io import SegmentSpec, write_segment_masks
    from ..preprocessing.masks import default_color

    if not result.masks:
        raise InputImageError("the pipeline made no masks", path)

    def cut(image):  # a segmentation is a volume: a 2D input's masks become one slice
        if flat_input is None:
            return image
        one = _back_on_input_grid(image, flat_input)
        return sitk.JoinSeries([one]) if one.GetDimension() == 2 else one

    masks = [(SegmentSpec(name, index, default_color(name)), sitk.GetArrayFromImage(cut(mask)))
             for index, (name, mask) in enumerate(result.masks.items(), start=1)]
    if acquired is not None:
        return write_segment_masks([(spec, acquired.place(mask)) for spec, mask in masks], acquired.reference, path)
    return write_segment_masks(masks, cut(result.image), path)
