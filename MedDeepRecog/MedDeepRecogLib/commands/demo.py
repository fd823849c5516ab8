"""``meddeeprecog demo [--out DIR]``: recognise the tumour in the bundled brain MR, and route the bundled CT.

1. ``data/samples/brain1_mr.nrrd`` (a post-contrast T1 brain MR with a tumour) goes through ``--model auto``: the
   router reads the modality and body region and picks ``brain-tumour-mri``, which names the tumour type slice by
   slice, says which slices carry it (mm), and puts its Grad-CAM heatmap on the scan's grid. The bundled tumour
   label (``brain1_tumour_label.nrrd``) scores the heatmap: on how many tumour slices its peak lies in the tumour.
2. ``abdomen_ct.nii.gz`` goes through the same router, which says plainly that no bundled disease model covers an
   abdominal CT, instead of guessing.

Writes each scan's JSON, heatmap NRRD and overlay PNG into DIR (default ``./meddeeprecog-demo``). Needs no data
beyond the installed package.

``--slicer-views`` also writes ``<name>_slicer_red.png`` and ``<name>_slicer_3d.png``: what the Slicer panel shows
after Classify (the red slice view with the heatmap in Inferno over the scan and the hot region outlined; the 3D
view with the hot region as a closed surface), rendered headless by Slicer's own core (``slicer-core``, optional:
``pip install slicer-core==5.12.4.0``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..contract import GRADCAM_METHODS, PROGRESS_MODES
from ..devices import DEVICE_CHOICES

DEMO_SCAN = "brain1_mr.nrrd"
DEMO_LESION = "brain1_tumour_label.nrrd"
DEMO_UNCOVERED = "abdomen_ct.nii.gz"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="classify the bundled brain MR's tumour (and route the bundled CT)")
    p.add_argument("--out", default="meddeeprecog-demo", help="output folder (default ./meddeeprecog-demo)")
    p.add_argument("--explain", choices=(*GRADCAM_METHODS, "none"), default="gradcam",
                   help="heatmap method (default gradcam)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                   help="where the network runs: auto (a CUDA GPU when torch sees one), cpu or cuda")
    p.add_argument("--progress", choices=PROGRESS_MODES, default="none",
                   help="progress as JSON lines on stdout, a bar on stderr, or none (default)")
    p.add_argument("--no-report", dest="report", action="store_false",
                   help="skip the per-case HTML report (written by default: <name>_report.html)")
    p.add_argument("--slicer-views", action="store_true",
                   help="also render the Slicer panel's red slice and 3D views (needs slicer-core)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..devices import resolve_device
    from ..inference.classify import classify_scan, finding_words, write_outputs
    from ..inference.route import route_image
    from ..io import read_image, read_lesion_mask
    from ..packages import load_package
    from ..progress import Progress
    from ..resources import sample_path
    from . import case_report

    if args.slicer_views:  # checked before any work
        from ..slicer_views import SlicerCoreMissing, import_slicer_core
        try:
            import_slicer_core()
        except SlicerCoreMissing as exc:
            print(f"meddeeprecog demo --slicer-views: {exc}", file=sys.stderr)
            return 2
    progress = Progress(args.progress)
    device = str(resolve_device(args.device))
    out = Path(args.out)
    results = []

    progress("route", 0.0, case=DEMO_SCAN)
    scan = read_image(sample_path(DEMO_SCAN))  # read once: routed, then classified
    route = route_image(scan, device)
    if route.model is None:  # the bundled brain MR always routes; a broken install should say so plainly
        from ..errors import ModelPackageError
        raise ModelPackageError(f"the demo's brain MR was not routed to a disease model: {route.reason}")
    package = load_package(route.model)
    result = classify_scan(scan, package, source=sample_path(DEMO_SCAN), explain=args.explain, device=device,
                           lesion=read_lesion_mask(sample_path(DEMO_LESION)),
                           progress=lambda stage, f, **extra: progress(stage, 0.05 + 0.85 * f, case=DEMO_SCAN, **extra))
    result.route = route.to_json()
    outputs = write_outputs(result, out, extra=case_report(result, package, out) if args.report else None)
    if args.slicer_views and outputs.get("heatmap"):
        from ..slicer_views import render_classification
        views = render_classification(sample_path(DEMO_SCAN), Path(outputs["heatmap"]), out, result.name)
        outputs = {**outputs, "slicer_views": [str(v) for v in views]}
    results.append({"input": DEMO_SCAN, "label": result.label, "model": f"{package.id}@{package.version}", **outputs})

    progress("route", 0.92, case=DEMO_UNCOVERED)
    other = route_image(read_image(sample_path(DEMO_UNCOVERED)), device)
    results.append({"input": DEMO_UNCOVERED, "model": other.model, "route": other.reason})

    if args.progress == "json":
        progress("done", 1.0, result={"outputs": results})
        return 0
    from ..inference.classify import headline, probabilities_label

    probs = "  ".join(f"{k} {v:.3f}" for k, v in sorted(result.probability_map().items(), key=lambda kv: -kv[1]))
    note = f"  ({'; '.join(result.decision['reasons'])})" if result.decision["uncertain"] else ""
    basis = probabilities_label(result)
    print(f"{DEMO_SCAN}: {headline(result)}{note}\n  model {package.id}@{package.version}: {route.reason}"
          f"\n  {basis}: {probs}")
    if result.finding:
        print(f"  {finding_words(result.finding)}")
    from ..report import lesion_words

    for line in lesion_words(result):  # the heatmap against the bundled tumour label, as the report words it
        print(f"  {line}")
    if result.explain.get("faithfulness_caption"):
        print(f"  heatmap {result.explain['faithfulness_caption']}")
    print(f"  outputs: {out / result.name}{{.json,_heatmap.nrrd,_heatmap.png"
          + (",_report.html" if args.report else "") + "}"
          + ("  Slicer views: _slicer_red.png, _slicer_3d.png" if args.slicer_views else ""))
    print(f"{DEMO_UNCOVERED}: {other.reason}")
    print(f"results in {out.resolve()}")
    return 0
