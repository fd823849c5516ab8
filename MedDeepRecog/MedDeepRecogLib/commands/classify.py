"""``meddeeprecog classify INPUT... --model ID|PATH --out DIR [--explain ...] [--device ...] [--progress json]``.

For each scan writes ``DIR/<name>.json``, ``DIR/<name>_heatmap.nrrd`` (float32 0..1 on the scan's own grid) and
``DIR/<name>_heatmap.png`` (docs/worker-protocol.md). An INPUT folder holding a DICOM series is one scan; a folder of
NIfTI/NRRD/MHA files is one scan per file.

An ROI classifier (``input.kind roi3d``, from ``finetune --task classify``) labels the segments of a segmentation
instead: ``classify SCAN --model ROI_MODEL --segments SEG.seg.nrrd --out DIR`` writes ``DIR/<name>_segments.json``
(one ``{segment, label, probabilities, center_mm}`` per non-empty segment, crops taken exactly as in training).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputImageError

_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".jpg", ".jpeg")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("classify", help="classify scans with a model package; heatmap NRRD + PNG + JSON each")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="scan file(s) (NIfTI, NRRD, MHA, DICOM, PNG/JPEG), a DICOM series folder, or a folder of "
                        "NIfTI/NRRD/MHA scans or PNG/JPEG images (each file one case)")
    p.add_argument("--model", required=True,
                   help="model package id (e.g. brain-tumour-mri), id@version, folder or .zip; 'auto' picks the "
                        "disease model that applies to each scan (modality + body region, or the models' own "
                        "out-of-domain checks for pictures) and records why in the JSON")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--explain", choices=["gradcam", "gradcampp", "attention", "none"], default="gradcam",
                   help="heatmap method (default gradcam; attention for models with attention)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--uncertainty", choices=["auto", "none", "mc-dropout", "tta"], default="auto",
                   help="uncertainty block: calibrated probabilities, predictive entropy and the low-confidence flag, "
                        "plus MC-dropout (20 passes) or test-time-augmentation (8 flips) spread; auto = MC dropout "
                        "(8 passes) for volume models with dropout, else calibration only")
    p.add_argument("--no-faithfulness", action="store_true",
                   help="skip the heatmap's deletion/insertion faithfulness score")
    p.add_argument("--lesion", metavar="SEG",
                   help="lesion label image (one INPUT): pointing game and heatmap mass inside the lesion")
    p.add_argument("--second-input", metavar="SCAN",
                   help="second modality for a multi-modal (fusion) model (one INPUT); resampled onto INPUT's grid")
    p.add_argument("--register", action="store_true",
                   help="with --second-input: rigidly register the second scan to INPUT first")
    p.add_argument("--segments", metavar="SEG",
                   help="segmentation (.seg.nrrd or label map) whose segments an ROI classifier labels (one INPUT)")
    p.add_argument("--no-png", action="store_true", help="skip the three-plane PNG")
    p.add_argument("--spacing", type=float, nargs=2, metavar=("X_MM", "Y_MM"),
                   help="pixel size of PNG/JPEG inputs in mm (they store none; default 1 mm)")
    p.add_argument("--slice-mm", type=float, metavar="S",
                   help="2D (slice) models: classify only the axial slice nearest this superior coordinate (mm; "
                        "Slicer's red slice offset) and put its heatmap on that slice")
    p.add_argument("--progress", choices=["json", "bar", "none"], default="bar")
    p.set_defaults(func=run)


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Scans named by ``inputs``: files as given; a folder is one DICOM series, or every volume file inside it.

    Raises:
        InputImageError: a path that does not exist, or a folder with neither volumes nor DICOM files.
    """
    scans: list[Path] = []
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise InputImageError("no such file or folder", path)
        if path.is_file():
            scans.append(path)
            continue
        volumes = sorted(p for p in path.iterdir()
                         if p.is_file() and not p.name.startswith(".")
                         and p.name.lower().endswith(_VOLUME_SUFFIXES) and not p.name.lower().endswith(".seg.nrrd"))
        if volumes:
            scans.extend(volumes)
        else:
            scans.append(path)  # read_image reads it as a DICOM series or says why it cannot
    return scans


def _unique_names(scans: list[Path]) -> list[str]:
    from ..inference.classify import output_name

    names, seen = [], {}
    for s in scans:
        base = output_name(s)
        n = seen.get(base, 0)
        seen[base] = n + 1
        names.append(base if n == 0 else f"{base}_{n + 1}")
    return names


def _read_lesion(path: str):
    """A lesion mask as a SimpleITK label image: any segmentation (``.seg.nrrd``, label map) read by
    :func:`MedDeepRecogLib.io.read_segmentation` (every segment counts as lesion)."""
    import SimpleITK as sitk

    from ..io import read_segmentation

    labelmap, reference, _ = read_segmentation(path)
    lesion = sitk.GetImageFromArray((labelmap != 0).astype("uint8"))
    lesion.CopyInformation(reference)
    return lesion


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..inference.classify import check_classifier, classify_fusion, classify_scan, resolve_device, write_outputs
    from ..io import check_output_dir
    from ..packages import load_package
    from ..progress import Progress

    progress = Progress(args.progress)
    check_output_dir(args.out, "--out")
    scans = expand_inputs(args.inputs)
    auto = args.model == "auto"
    if auto and (args.segments or args.second_input):
        raise ConfigError("--model auto chooses among whole-scan disease models; name the model for --segments or "
                          "--second-input")
    package = None if auto else load_package(args.model)
    if args.segments:
        return _classify_segments(args, scans, package, progress)
    if package is not None:
        check_classifier(package)
    device = resolve_device(args.device)
    for option in ("lesion", "second_input"):
        if getattr(args, option) and len(scans) != 1:
            raise ConfigError(f"--{option.replace('_', '-')} goes with exactly one INPUT scan, got {len(scans)}")
    second = None
    if args.second_input:
        second = Path(args.second_input)
        if not second.exists():
            raise InputImageError("no such file or folder (--second-input)", second)
    lesion = _read_lesion(args.lesion) if args.lesion else None
    out = Path(args.out)
    results = []
    n = len(scans)
    for i, (scan, name) in enumerate(zip(scans, _unique_names(scans))):
        def report(stage, fraction, _i=i, _name=name, **extra):
            progress(stage, (_i + fraction) / n, case=_name, **extra)

        route = None
        if auto:
            from ..inference.route import require_route, route_image
            from ..io import read_image

            report("route", 0.0)
            route = route_image(read_image(scan, spacing=args.spacing), device)
            package = load_package(require_route(route, scan))
        if second is not None or len(package.input_spec.get("modalities") or []) > 1:
            result = classify_fusion(scan, second, package, name=name, register=args.register)
        else:
            result = classify_scan(scan, package, explain=args.explain, device=device, progress=report, name=name,
                                   uncertainty=args.uncertainty, faithfulness=not args.no_faithfulness,
                                   lesion=lesion, spacing=args.spacing, slice_mm=args.slice_mm)
        if route is not None:
            result.route = route.to_json()
        outputs = write_outputs(result, out, png=not args.no_png, progress=report)
        results.append({"input": str(scan), "label": result.label, "probabilities": result.probability_map(),
                        **outputs})
        if args.progress != "json":
            probs = ", ".join(f"{k} {v:.3f}" for k, v in
                              sorted(result.probability_map().items(), key=lambda kv: -kv[1]))
            extra = f" [{'; '.join(result.decision['reasons'])}]" if result.decision["uncertain"] else ""
            mod = result.decision.get("modality") or {}
            mod_txt = f" (modality {mod['label']})" if mod.get("source") else ""
            caption = result.explain.get("faithfulness_caption")
            trust = f"\n  heatmap {caption}" if caption else ""
            routed = f"\n  model {result.model['id']} chosen: {result.route['reason']}" if result.route else ""
            finding = result.finding
            where = (f"\n  finding on slices {finding['first_index']}-{finding['last_index']} "
                     f"(S {finding['from_mm']:.1f} to {finding['to_mm']:.1f} mm)") if finding else ""
            print(f"{scan}: {result.label}{mod_txt}{extra}{routed}\n  {probs}{where}{trust}\n  -> {outputs['json']}")
    if args.progress == "json":
        progress("done", 1.0, result={"outputs": results})
    return 0


def _classify_segments(args: argparse.Namespace, scans: list[Path], package, progress) -> int:
    """``--segments``: label every segment of one segmentation with an ROI classifier (``<name>_segments.json``)."""
    from ..errors import ConfigError
    from ..finetune.roi_crops import classify_segments
    from ..inference.classify import resolve_device
    from ..io import atomic_write_json

    kind = package.input_spec.get("kind")
    if kind != "roi3d":
        raise ConfigError(f"--segments needs an ROI classifier (input.kind roi3d, from `meddeeprecog finetune --task "
                          f"classify`); {package.id}@{package.version} has input.kind {kind!r}")
    if len(scans) != 1:
        raise ConfigError(f"--segments goes with exactly one INPUT scan, got {len(scans)}")
    segmentation = Path(args.segments)
    if not segmentation.exists():
        raise InputImageError("no such file (--segments)", segmentation)
    progress("classify segments", 0.05)
    rows = classify_segments(scans[0], segmentation, package, device=resolve_device(args.device))
    name = _unique_names(scans)[0]
    record = {"input": str(scans[0]), "segmentation": str(segmentation),
              "model": {"id": package.id, "version": package.version}, "class_names": list(package.class_names),
              "segments": rows}
    path = atomic_write_json(Path(args.out) / f"{name}_segments.json", record)
    if args.progress == "json":
        progress("done", 1.0, result={"outputs": [{"input": str(scans[0]), "segments_json": str(path)}]})
    else:
        for r in rows:
            probs = ", ".join(f"{k} {v:.3f}" for k, v in sorted(r["probabilities"].items(), key=lambda kv: -kv[1]))
            print(f"{r['segment']}: {r['label']}  ({probs})")
        print(f"-> {path}" if rows else f"no non-empty segment in {segmentation}; wrote {path}")
    return 0
