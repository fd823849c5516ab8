"""``meddeeprecog classify INPUT... --model ID|PATH --out DIR [--explain ...] [--device ...] [--progress json]``.

For each scan writes ``DIR/<name>.json``, ``DIR/<name>_heatmap.nrrd`` (float32 0..1 on the scan's own grid) and
``DIR/<name>_heatmap.png`` (docs/worker-protocol.md). An INPUT folder holding a DICOM series is one scan; a folder of
NIfTI/NRRD/MHA files is one scan per file; segmentations and label maps in it (``.seg.nrrd``, ``*_label*``, integer
images with a few distinct values) are skipped by grey-level models and named. Several inputs make a batch: it goes
on past a bad file, writes ``DIR/summary.csv`` and ``DIR/summary.json`` (one row per input: label, confidence,
uncertain flag and reasons, model, outputs, or the file's one-line error) and exits 2 at the end if any input
failed. ``--report`` writes ``DIR/<name>_report.html`` per case (``report.write_case_report``).

An ROI classifier (``input.kind roi3d``, from ``finetune --task classify``) labels the segments of a segmentation
instead: ``classify SCAN --model ROI_MODEL --segments SEG.seg.nrrd --out DIR`` writes ``DIR/<name>_segments.json``
(one ``{segment, label, probabilities, center_mm}`` per non-empty segment, crops taken exactly as in training); a
plain label map's values are named by ``--label-table`` (else ``label_<value>``), and a scan of another modality
than the classifier's training cases is refused.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from ..contract import (EXPLAIN_METHODS, LABEL_TABLE_FORMATS, MASK_CONTENT, PICTURE_SUFFIXES, PROGRESS_MODES,
                        UNCERTAINTY_MODES, WRITABLE_SUFFIXES)
from ..devices import DEVICE_CHOICES
from ..errors import NOT_TEXT_PATH, InputImageError, is_text_path, printable_path
from ..progress import DEVICE_HELP, PROGRESS_HELP

#: Files of a folder input that are scans (one case each); DICOM files in a folder make one series instead.
_VOLUME_SUFFIXES = WRITABLE_SUFFIXES + PICTURE_SUFFIXES


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("classify", help="classify scans with a model package; heatmap NRRD + PNG + JSON each")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="scan file(s) (NIfTI, NRRD, MHA, DICOM, PNG/JPEG), a DICOM series folder, or a folder of "
                        "NIfTI/NRRD/MHA scans or PNG/JPEG images (each file one case)")
    p.add_argument("--model", required=True,
                   help="model package id (e.g. brain-tumour-mri), id@version, folder or .zip; 'auto' picks the "
                        "disease model that applies to each scan (modality + body region, or the models' own "
                        "out-of-domain checks for pictures) and records why in the JSON")
    p.add_argument("--out", required=True,
                   help="output folder; with --segments and a DICOM series INPUT, x.dcm writes the labelled "
                        "segments as a DICOM Segmentation referencing the series (the JSON goes beside it)")
    p.add_argument("--explain", choices=EXPLAIN_METHODS, default="gradcam",
                   help="heatmap method (default gradcam; attention for models with attention)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help=DEVICE_HELP)
    p.add_argument("--uncertainty", choices=UNCERTAINTY_MODES, default="auto",
                   help="uncertainty block: calibrated probabilities, predictive entropy and the low-confidence flag, "
                        f"plus MC-dropout ({MC_PASSES} passes) or test-time-augmentation spread (the scan and its "
                        f"flipped copies: {TTA_SAMPLES_2D} samples for slice models, {TTA_SAMPLES_3D} for volume "
                        "models); auto = MC dropout (8 passes) for volume models with dropout, else calibration "
                        "only")
    p.add_argument("--no-faithfulness", action="store_true",
                   help="skip the heatmap's deletion/insertion faithfulness score")
    p.add_argument("--lesion", metavar="SEG",
                   help="lesion label image (one INPUT): pointing game and heatmap mass inside the lesion")
    p.add_argument("--second-input", metavar="SCAN",
                   help="second modality for a multi-modal (fusion) model (one INPUT); resampled onto INPUT's grid")
    p.add_argument("--register", action="store_true",
                   help="with --second-input: rigidly register the second scan to INPUT first (scans of one patient "
                        "that moved a little; refused when it rotates over 30 degrees, shifts INPUT's centre by over "
                        "a quarter of its field, or then covers under half of INPUT); what it did, convergence "
                        "included, goes in the JSON's \"registration\"")
    p.add_argument("--segments", metavar="SEG",
                   help="segmentation (.seg.nrrd or label map) whose segments an ROI classifier labels (one INPUT)")
    p.add_argument("--label-table", metavar="FILE[#KEY]",
                   help=f"--segments with a plain label map (which stores only numbers): its id -> name table, "
                        f"{LABEL_TABLE_FORMATS}; values it does not name read label_<value>")
    p.add_argument("--no-png", action="store_true", help="skip the three-plane PNG")
    p.add_argument("--report", action="store_true",
                   help="also write DIR/<name>_report.html: one self-contained page with the overlay, the "
                        "probabilities, uncertainty and faithfulness in words, the model card and the command")
    p.add_argument("--spacing", type=float, nargs=2, metavar=("X_MM", "Y_MM"),
                   help="pixel size of PNG/JPEG inputs in mm (they store none; default 1 mm)")
    p.add_argument("--slice-mm", type=float, metavar="S",
                   help="2D (slice) models: classify only the axial slice whose centre is nearest this superior "
                        "coordinate (mm, the scan's own coordinates; a per-slice position_mm) and put its heatmap "
                        "on that slice")
    p.add_argument("--progress", choices=PROGRESS_MODES, default="bar", help=PROGRESS_HELP)
    p.set_defaults(func=run)


#: ``--uncertainty`` sample counts, as the JSON's ``samples`` reports them (``uncertainty.sampling.default_tta``:
#: the identity and flips over the in-plane axes, plus the slice axis for volumes).
MC_PASSES = 20
TTA_SAMPLES_2D = 4
TTA_SAMPLES_3D = 8


def mask_reason(path: Path) -> str | None:
    """Why a file found in an input folder is a segmentation or label map by its name, else ``None``."""
    low = path.name.lower()
    if low.endswith(".seg.nrrd"):
        return "a segmentation (.seg.nrrd), not a scan"
    if "_label" in low:
        return "a label map by its name (*_label*), not a scan"
    return None


def earlier_output_reason(path: Path) -> str | None:
    """Why a file found in an input folder is an output of an earlier classify or robustness run, else ``None``: a
    heatmap or perturbation image (``<stem>_heatmap.nrrd``, ``<stem>_heatmap.png``, ``<stem>_perturbation.nrrd``)
    or report beside its run's result (``<stem>.json`` or ``<stem>_robustness.json``), that result beside its
    heatmap, or a batch summary (``summary.csv``, ``summary-2.json``...). A rerun with ``--out`` on the input folder
    would otherwise classify its own heatmaps as scans."""
    from ..contract import OUTPUT_SUFFIXES

    name = path.name
    if re.fullmatch(r"summary(-\d+)?\.(csv|json)", name):
        return "a batch summary of an earlier run"
    results = (OUTPUT_SUFFIXES["result"], OUTPUT_SUFFIXES["robustness"])
    for role in ("heatmap", "heatmap_png", "perturbation", "report"):
        suffix = OUTPUT_SUFFIXES[role]
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            for result in (stem + r for r in results):
                if (path.parent / result).is_file():
                    return f"an output of an earlier run (beside {result}), not a scan"
    for suffix in results:
        stem = name[: -len(suffix)] if name.endswith(suffix) else None
        beside = ("heatmap", "perturbation")
        if stem and any((path.parent / (stem + OUTPUT_SUFFIXES[role])).is_file() for role in beside):
            return "the result of an earlier run"
    return None


def expand_inputs(inputs: list[str], *, skip_masks: bool = True,
                  skipped: list[dict] | None = None) -> list[Path]:
    """Scans named by ``inputs``: files as given; a folder is one DICOM series, or every volume file inside it,
    or (a study: subfolders and no DICOM file of its own) each of its subfolders, one series each.

    ``skip_masks``: leave out of a folder the files :func:`mask_reason` names (grey-level models; a binary-mask
    model classifies masks), appending ``{"input", "reason"}`` to ``skipped``. A file named explicitly is kept
    (the model refuses a mask with the reason). ``.seg.nrrd`` files in a folder are always left out.

    Raises:
        InputImageError: a path that does not exist, or a folder with neither volumes nor DICOM files.
    """
    scans: list[Path] = []
    skipped = skipped if skipped is not None else []
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise InputImageError("no such file or folder", path)
        if path.is_file():
            scans.append(path)
            continue
        found = sorted(p for p in path.iterdir()
                       if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(_VOLUME_SUFFIXES))
        volumes = []
        for f in found:
            if not is_text_path(f):
                skipped.append({"input": printable_path(f),
                                "reason": NOT_TEXT_PATH})
                continue
            reason = mask_reason(f)
            if reason and (skip_masks or f.name.lower().endswith(".seg.nrrd")):
                skipped.append({"input": str(f), "reason": reason})
            elif reason := earlier_output_reason(f):
                skipped.append({"input": str(f), "reason": reason})
            else:
                volumes.append(f)
        if volumes:
            scans.extend(volumes)
            skipped.extend(_left_in_folder(path, set(found)))
        elif not found:
            series = _study_series(path)
            scans.extend(series or [path])  # read_image reads each as a DICOM series or says why it cannot
    return scans


def _study_series(folder: Path) -> list[Path]:
    """The subfolders of a study folder (one DICOM series each, as PACS exports and DICOMDIR media lay them out),
    or ``[]`` when ``folder`` holds DICOM files itself (it is then one series) or has no subfolder."""
    from ..io.dicom_read import looks_like_dicom

    entries = [e for e in folder.iterdir() if not e.name.startswith(".")]
    subfolders = sorted(e for e in entries if e.is_dir())
    own = [e for e in entries if e.is_file() and e.name.upper() != "DICOMDIR" and looks_like_dicom(e)]
    return [] if own else subfolders


def _left_in_folder(folder: Path, taken: set[Path]) -> list[dict]:
    """``{"input", "reason"}`` for what a folder of scan files holds besides them (other files, subfolders), so a
    batch names everything it did not classify: a DICOM series in a subfolder is read only when given itself. A
    scan's sidecar (``scan.json`` beside ``scan.nii.gz``, as BIDS keeps them) is not a left-out file."""
    from ..contract import output_stem

    stems = {output_stem(t) for t in taken}
    left = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or entry in taken or (entry.is_file() and output_stem(entry) in stems):
            continue
        if entry.is_dir():
            left.append({"input": printable_path(entry), "reason": "a subfolder (a DICOM series is classified when "
                                                                  "its folder is given as an input)"})
        elif entry.is_file() and (reason := earlier_output_reason(entry)):
            left.append({"input": printable_path(entry), "reason": reason})
        elif entry.is_file():
            left.append({"input": printable_path(entry), "reason": "not a scan file classify reads from a folder "
                                                                   f"({', '.join(_VOLUME_SUFFIXES)})"})
    return left


def check_options(args: argparse.Namespace, package) -> None:
    """Refuse options that cannot apply to this model before any scan is read.

    Raises:
        ConfigError: ``--explain attention`` for a model without attention (slice models, ``--model auto``, whose
            disease models classify slices), ``--slice-mm`` for a volume model, ``--register`` without
            ``--second-input``, ``--uncertainty tta / mc-dropout`` with ``--second-input``. (``--uncertainty
            mc-dropout`` for a model without dropout is refused in ``run``,
            once the network is built.)
    """
    from ..errors import ConfigError

    if args.register and not args.second_input:
        raise ConfigError("--register aligns --second-input to INPUT; give --second-input SCAN or drop --register")
    if args.second_input and args.uncertainty in ("tta", "mc-dropout"):  # the fusion path computes neither
        raise ConfigError(f"--uncertainty {args.uncertainty} is not available with --second-input (fusion models): "
                          "leave it at auto")
    if package is None:
        if args.explain == "attention":
            raise ConfigError("--model auto chooses among slice (2D) models, which have no attention to show; use "
                              "--explain gradcam or gradcampp")
        return
    kind = package.input_spec.get("kind")
    methods = (package.meta.get("explain") or {}).get("methods")
    if args.explain == "attention" and (kind == "slices2d" or (methods is not None and "attention" not in methods)):
        what = "classifies single slices" if kind == "slices2d" else "has no attention"
        raise ConfigError(f"model {package.id}@{package.version} {what}: it has no attention map to show; use "
                          "--explain gradcam or gradcampp")
    if args.slice_mm is not None and kind != "slices2d":
        raise ConfigError(f"--slice-mm classifies one slice with a 2D (slice) model; {package.id} is a {kind} model")


def _unique_names(scans: list[Path], out_dir: Path | None = None) -> list[str]:
    """One output name per scan (:func:`..contract.output_stem`), unique in the batch: a second scan of the same
    stem (``a.png`` beside ``a.jpg``) gets the first free ``a-2``, ``a-3``... that is neither another scan's own
    stem (a real ``a-2.png``) nor the name of another scan's output file (``a_heatmap`` is ``a.jpg``'s heatmap, so
    a scan ``a_heatmap.png`` is named ``a_heatmap-2``): a result file never carries another image's name.

    With ``out_dir``, a name whose output files (:func:`..inference.classify.write_outputs`' roles) already exist
    there (an earlier run's results, a user's file) is taken too: the same ``-N`` rule as
    :func:`..io.free_version`, which ``write_outputs`` applies again just before writing, so a rerun and a clash
    inside one batch suffix the same way and existing files are never overwritten."""
    from ..contract import OUTPUT_SUFFIXES, output_file, output_stem

    stems = [output_stem(s) for s in scans]
    roles = [suffix.split(".")[0] for suffix in OUTPUT_SUFFIXES.values() if suffix.startswith("_")]
    outputs = {stem + role for stem in stems for role in roles}
    from ..inference.classify import CASE_OUTPUT_ROLES

    def on_disk(name: str) -> bool:
        return out_dir is not None and any((out_dir / output_file(name, r)).exists() for r in CASE_OUTPUT_ROLES)

    names: list[str] = []
    for i, base in enumerate(stems):
        others = set(stems[:i] + stems[i + 1:])
        name, k = base, 1
        while name in names or (name != base and name in others) or name in outputs or on_disk(name):
            k += 1
            name = f"{base}-{k}"
        names.append(name)
        outputs.update(name + role for role in roles)
    return names


def run(args: argparse.Namespace) -> int:
    import sys

    from ..devices import resolve_device
    from ..errors import ConfigError
    from ..inference.classify import check_classifier
    from ..io import check_output_dir
    from ..packages import load_package
    from ..progress import Progress

    progress = Progress(args.progress)
    check_output_dir(args.out, "--out")
    auto = args.model == "auto"
    if args.label_table and not args.segments:
        raise ConfigError("--label-table names the values of a --segments label map: give --segments SEG or drop "
                          "--label-table")
    if auto and (args.segments or args.second_input):
        raise ConfigError("--model auto chooses among whole-scan disease models; name the model for --segments or "
                          "--second-input")
    package = None if auto else load_package(args.model)
    skip_masks = package is None or package.input_spec.get("content") != MASK_CONTENT
    skipped: list[dict] = []
    scans = expand_inputs(args.inputs, skip_masks=skip_masks, skipped=skipped)
    if args.segments:
        return _classify_segments(args, scans, package, progress)
    if package is not None:
        check_classifier(package)
    check_options(args, package)
    device = str(resolve_device(args.device))
    if args.uncertainty == "mc-dropout" and package is not None:
        from ..inference.classify import model_for
        from ..uncertainty import dropout_layers

        if not dropout_layers(model_for(package, device)):
            raise ConfigError(f"model {package.id}@{package.version} has no dropout layer, so Monte-Carlo dropout "
                              "is not available; use --uncertainty tta")
    for option in ("lesion", "second_input"):
        if getattr(args, option) and len(scans) != 1:
            raise ConfigError(f"--{option.replace('_', '-')} goes with exactly one INPUT scan, got {len(scans)}")
    second = None
    if args.second_input:
        second = Path(args.second_input)
        if not second.exists():
            raise InputImageError("no such file or folder (--second-input)", second)
    if not scans:
        raise InputImageError("nothing to classify: every file was skipped ("
                              + "; ".join(f"{Path(s['input']).name}: {s['reason']}" for s in skipped) + ")",
                              Path(args.inputs[0]))
    from ..io import read_lesion_mask

    if args.lesion and any(Path(args.lesion).resolve() == Path(scan).resolve() for scan in scans):
        raise InputImageError("--lesion names the scan itself; give the scan's lesion label", Path(args.lesion))
    lesion = read_lesion_mask(args.lesion) if args.lesion else None
    out = Path(args.out)
    batch = len(scans) + len(skipped) > 1
    for s in skipped:
        if args.progress != "json":
            print(f"skipped {s['input']}: {s['reason']}")
    rows: list[dict] = []
    done: list[dict] = []  # the progress "done" result, as before: input, label, probabilities and output paths
    explicit = {str(Path(raw)) for raw in args.inputs}
    n = len(scans)
    for i, (scan, name) in enumerate(zip(scans, _unique_names(scans, out))):
        def report(stage, fraction, _i=i, _name=name, **extra):
            progress(stage, (_i + fraction) / n, case=_name, **extra)

        try:
            result, outputs = _classify_one(args, scan, name, package, device, second, lesion, out, report)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # a batch goes on past a bad file; one input fails as before
            if not batch:
                raise
            from ..errors import MedDeepRecogError
            from ..inference.model_input import LabelMapError

            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if not isinstance(exc, MedDeepRecogError):
                message = f"{scan}: {type(exc).__name__}: {message}"
            if isinstance(exc, LabelMapError) and skip_masks and str(scan) not in explicit:
                reason = getattr(exc, "problem", message).split(";")[0]
                skipped.append({"input": str(scan), "reason": reason})
                if args.progress != "json":
                    print(f"skipped {scan}: {reason}")
                continue
            rows.append({"input": str(scan), "status": "error", "error": message})
            print(f"meddeeprecog classify: error: {message}", file=sys.stderr)
            continue
        rows.append(_summary_row(result, outputs))
        done.append({"input": str(scan), "label": result.label, "probabilities": result.probability_map(),
                     **outputs})
        if args.progress != "json":
            _print_result(scan, result, outputs)
    failed = [r for r in rows if r["status"] == "error"]
    summary = _write_summary(out, rows, skipped) if batch else {}
    if args.progress == "json":
        if not failed:
            progress("done", 1.0, result={"outputs": done, **summary})
    elif summary:
        print(f"batch: {len(rows) - len(failed)} classified, {len(failed)} failed, {len(skipped)} skipped "
              f"-> {summary['summary_csv']}")
    if failed:
        print(f"meddeeprecog classify: error: {len(failed)} of {len(rows)} inputs failed "
              f"({', '.join(Path(r['input']).name for r in failed)}); see {summary.get('summary_csv')}",
              file=sys.stderr)
        return 2
    return 0


def _classify_one(args, scan: Path, name: str, package, device: str, second, lesion, out: Path, report):
    """Classify one input (routing it first with ``--model auto``) and write its outputs."""
    from ..fusion import classify_fusion
    from ..inference.classify import classify_scan, write_outputs
    from ..packages import load_package
    from . import case_report

    route = None
    if package is None:
        from ..inference.model_input import check_input_content
        from ..inference.route import require_route, route_image
        from ..io import read_image

        report("route", 0.0)
        image = read_image(scan, spacing=args.spacing)
        check_input_content(image, {}, scan)  # a label map is not routed
        route = route_image(image, device, source=scan)
        package = load_package(require_route(route, scan))
    if second is not None or len(package.input_spec.get("modalities") or []) > 1:
        result = classify_fusion(scan, second, package, name=name, register=args.register)
    else:
        # a routed scan is not read twice
        result = classify_scan(scan if route is None else image, package, explain=args.explain, device=device,
                               progress=report, name=name, uncertainty=args.uncertainty,
                               faithfulness=not args.no_faithfulness, lesion=lesion, lesion_source=args.lesion,
                               spacing=args.spacing, slice_mm=args.slice_mm, source=scan)
    if route is not None:
        result.route = route.to_json()
    outputs = write_outputs(result, out, png=not args.no_png, progress=report,
                            extra=case_report(result, package, out) if args.report else None)
    return result, outputs


def _summary_row(result, outputs: dict) -> dict:
    d = result.decision
    return {"input": result.input, "status": "ok", "label": d["label"], "top_class": d["top_class"],
            "probability": d["confidence"], "uncertain": bool(d["uncertain"]),
            "uncertain_reasons": list(d["reasons"]), "model": f"{result.model['id']}@{result.model['version']}",
            "outputs": {k: v for k, v in outputs.items() if v}}


#: Columns of ``summary.csv`` (``probability`` is ``confidence`` in the case's JSON).
SUMMARY_COLUMNS = ("input", "status", "label", "top_class", "probability", "uncertain", "uncertain_reason", "model",
                   "json", "heatmap", "png", "report", "error")


def _write_summary(out: Path, rows: list[dict], skipped: list[dict]) -> dict:
    """``summary.csv`` (one line per input, skipped files too) and ``summary.json``, atomically."""
    import csv
    import io

    from ..io import atomic_output, atomic_write_json, free_version

    out.mkdir(parents=True, exist_ok=True)
    stem = free_version(out, "summary", lambda v: [f"{v}.csv", f"{v}.json"])   # an earlier batch's summary is kept
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        o = r.get("outputs") or {}
        writer.writerow({"input": r["input"], "status": r["status"], "label": r.get("label", ""),
                         "top_class": r.get("top_class", ""),
                         "probability": "" if r.get("probability") is None else f"{r['probability']:.4f}",
                         "uncertain": "" if "uncertain" not in r else str(r["uncertain"]).lower(),
                         "uncertain_reason": "; ".join(r.get("uncertain_reasons") or []), "model": r.get("model", ""),
                         "json": o.get("json", ""), "heatmap": o.get("heatmap", ""), "png": o.get("png", ""),
                         "report": o.get("report", ""), "error": r.get("error", "")})
    for s in skipped:
        writer.writerow({"input": s["input"], "status": "skipped", "error": s["reason"]})
    csv_path = out / f"{stem}.csv"
    with atomic_output(csv_path) as tmp:
        Path(tmp).write_text(buf.getvalue(), encoding="utf-8")
    json_path = atomic_write_json(out / f"{stem}.json", {
        "cases": rows, "skipped": skipped,
        "counts": {"classified": sum(r["status"] == "ok" for r in rows),
                   "failed": sum(r["status"] == "error" for r in rows), "skipped": len(skipped)}})
    return {"summary_csv": str(csv_path), "summary_json": str(json_path)}


def _print_result(scan: Path, result, outputs: dict) -> None:
    from ..inference.classify import headline, probabilities_label, slice_words

    basis = probabilities_label(result)   # it names the headline's confidence beside the scan probabilities
    probs = ", ".join(f"{k} {v:.3f}" for k, v in sorted(result.probability_map().items(), key=lambda kv: -kv[1]))
    extra = f" [{'; '.join(result.decision['reasons'])}]" if result.decision["uncertain"] else ""
    mod = result.decision.get("modality") or {}
    mod_txt = f" (modality {mod['label']})" if mod.get("source") else ""
    caption = result.explain.get("faithfulness_caption")
    trust = f"\n  heatmap {caption}" if caption else ""
    from ..inference.classify import finding_words, heatmap_warning
    warning = heatmap_warning(result)
    if warning:
        trust += f"\n  WARNING: {warning}"
    routed = f"\n  model {result.model['id']} chosen: {result.route['reason']}" if result.route else ""
    if result.explain.get("missing"):   # a late-fusion model classified without a modality it was trained on
        routed += (f"\n  NOTE: classified without {', '.join(result.explain['missing'])}: not given (the model "
                   f"was trained on {', '.join(result.explain.get('modalities') or [])})")
    if result.registration:   # --register: what it did, as the JSON's "registration" records it
        routed += "".join(f"\n  NOTE: {n}" for n in result.input_notes if n.startswith("--register"))
    finding = result.finding
    where = f"\n  {finding_words(finding)}" if finding else ""
    from ..report import lesion_words

    where += "".join(f"\n  lesion: {line}" for line in lesion_words(result))   # --lesion: the heatmap against it
    report = f"\n  report: {outputs['report']}" if outputs.get("report") else ""
    one = slice_words(result)   # --slice-mm: one slice's answer, not the scan's
    scan = f"{scan}, {one} only" if one else scan
    print(f"{scan}: {headline(result)}{mod_txt}{extra}{routed}\n  {basis}: {probs}{where}{trust}"
          f"\n  -> {outputs['json']}{report}")


#: Options a whole-scan classification uses and ``--segments`` does not, and when each counts as given.
SEGMENTS_IGNORE = {
    "--report": lambda a: a.report, "--lesion": lambda a: a.lesion is not None,
    "--slice-mm": lambda a: a.slice_mm is not None, "--second-input": lambda a: a.second_input is not None,
    "--register": lambda a: a.register, "--no-png": lambda a: a.no_png,
    "--no-faithfulness": lambda a: a.no_faithfulness,
    "--explain": lambda a: a.explain != "gradcam", "--uncertainty": lambda a: a.uncertainty != "auto",
    "--spacing": lambda a: a.spacing is not None,
}


def _classify_segments(args: argparse.Namespace, scans: list[Path], package, progress) -> int:
    """``--segments``: label every segment of one segmentation with an ROI classifier (``<name>_segments.json``)."""
    from ..contract import output_file
    from ..devices import resolve_device
    from ..errors import ConfigError
    from ..inference.roi_classify import checked_label_table, classify_scan_segments, read_scan_segments
    from ..io import atomic_write_json, free_version

    kind = package.input_spec.get("kind")
    if kind != "roi3d":
        raise ConfigError(f"--segments needs an ROI classifier (input.kind roi3d, from `meddeeprecog finetune --task "
                          f"classify`); {package.id}@{package.version} has input.kind {kind!r}")
    if len(scans) != 1:
        raise ConfigError(f"--segments goes with exactly one INPUT scan, got {len(scans)}")
    ignored = [option for option, given in SEGMENTS_IGNORE.items() if given(args)]
    if ignored:   # said rather than silently dropped: these shape a whole-scan classification's outputs
        raise ConfigError(f"{', '.join(ignored)} {'does' if len(ignored) == 1 else 'do'} not apply with --segments "
                          "(each segment gets a label and probabilities in <name>_segments.json, with no heatmap, "
                          "report or uncertainty): drop " + ("it" if len(ignored) == 1 else "them"))
    segmentation = Path(args.segments)
    if not segmentation.exists():
        raise InputImageError("no such file (--segments)", segmentation)
    if args.label_table:
        if segmentation.name.lower().endswith(".seg.nrrd"):  # said rather than ignored: its segments carry names
            raise ConfigError(f"--label-table names the values of a plain label map; {segmentation} is a .seg.nrrd, "
                              "whose segments are named in the file: drop --label-table")
        checked_label_table(args.label_table)  # unreadable or empty: refused before any work
    dicom_out = str(args.out).lower().endswith(".dcm")
    out_dir = Path(args.out).parent if dicom_out else Path(args.out)
    if dicom_out:
        from ..io.dicom_seg import check_dicom_seg_source

        check_dicom_seg_source(scans[0])  # before any work
    progress("classify segments", 0.05)
    scan = read_scan_segments(scans[0], segmentation, label_table=args.label_table, model=package)
    rows = classify_scan_segments(scan, package, device=str(resolve_device(args.device)))
    name = _unique_names(scans)[0]
    record = {"input": str(scans[0]), "segmentation": str(segmentation),
              **({"label_table": str(args.label_table)} if args.label_table else {}),
              "model": {"id": package.id, "version": package.version}, "class_names": list(package.class_names),
              "segments": rows}
    if dicom_out:
        record["dicom_seg"] = str(_write_segments_dicom(scans[0], scan, rows, package, Path(args.out)))
    name = free_version(out_dir, name, lambda stem: [output_file(stem, "segment_labels")])   # earlier kept
    path = atomic_write_json(out_dir / output_file(name, "segment_labels"), record)
    if args.progress == "json":
        progress("done", 1.0, result={"outputs": [{"input": str(scans[0]), "segments_json": str(path)}]})
    else:
        for r in rows:
            probs = ", ".join(f"{k} {v:.3f}" for k, v in sorted(r["probabilities"].items(), key=lambda kv: -kv[1]))
            print(f"{r['segment']}: {r['label']}  ({probs})")
        print(f"-> {path}" if rows else f"no non-empty segment in {segmentation}; wrote {path}")
        if record.get("dicom_seg"):
            print(f"-> {record['dicom_seg']} (DICOM Segmentation referencing {scans[0]})")
    return 0


def _write_segments_dicom(source: Path, scan, rows: list[dict], package, out: Path) -> Path:
    """The classified segments (``scan``: the :class:`..inference.roi_classify.ScanSegments` they were read as) as
    a DICOM Segmentation referencing the ``source`` series; each segment's label reads
    ``<segment>: <class> <probability>``."""
    import numpy as np

    from ..io.dicom_seg import write_dicom_seg

    by_name = {r["segment"]: r for r in rows}
    pairs = []
    for k, name in enumerate(scan.names, start=1):
        r = by_name.get(name)
        if r is not None:
            pairs.append((k, f"{name}: {r['label']} {r['probabilities'][r['label']]:.2f}"))
    keep = np.isin(scan.segment_map, [k for k, _ in pairs])
    labels = np.where(keep, scan.segment_map, 0)
    return write_dicom_seg(labels, scan.image, source, pairs, out,
                           series_description=f"{package.id} {package.version} segment labels",
                           algorithm=package.id, algorithm_version=package.version)
