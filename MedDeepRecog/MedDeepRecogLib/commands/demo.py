"""``meddeeprecog demo [--out DIR]``: classify the bundled real scans with the bundled ``body-region`` model.

Runs ``classify`` with Grad-CAM on ``data/samples/brain1_mr.nrrd`` (brain MR) and ``abdomen_ct.nii.gz`` (abdominal CT)
and writes each scan's JSON, heatmap NRRD and overlay PNG into DIR (default ``./meddeeprecog-demo``), printing the
label and probabilities. Needs no data beyond the installed package.

``--slicer-views`` also writes ``<name>_slicer_red.png`` and ``<name>_slicer_3d.png`` per scan: what the Slicer
panel shows after Classify (the red slice view with the heatmap in Inferno over the scan and the hot region
outlined; the 3D view with the hot region as a closed surface), rendered headless by Slicer's own core
(``slicer-core``, optional: ``pip install slicer-core==5.12.4.0``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEMO_SAMPLES = ("brain1_mr.nrrd", "abdomen_ct.nii.gz")
DEMO_MODEL = "body-region"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="classify the bundled sample scans with the bundled body-region model")
    p.add_argument("--out", default="meddeeprecog-demo", help="output folder (default ./meddeeprecog-demo)")
    p.add_argument("--explain", choices=["gradcam", "gradcampp", "none"], default="gradcam")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--progress", choices=["json", "bar", "none"], default="none")
    p.add_argument("--slicer-views", action="store_true",
                   help="also render the Slicer panel's red slice and 3D views (needs slicer-core)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..inference.classify import classify_scan, resolve_device, write_outputs
    from ..packages import load_package
    from ..progress import Progress
    from ..resources import sample_path

    if getattr(args, "slicer_views", False):
        from ..slicer_views import SlicerCoreMissing, import_slicer_core
        try:
            import_slicer_core()
        except SlicerCoreMissing as exc:
            print(f"meddeeprecog demo --slicer-views: {exc}", file=__import__("sys").stderr)
            return 2
    progress = Progress(args.progress)
    package = load_package(DEMO_MODEL)
    device = resolve_device(args.device)
    out = Path(args.out)
    results = []
    for i, sample in enumerate(DEMO_SAMPLES):
        def report(stage, fraction, _i=i, **extra):
            progress(stage, (_i + fraction) / len(DEMO_SAMPLES), case=sample, **extra)

        result = classify_scan(sample_path(sample), package, explain=args.explain, device=device, progress=report)
        outputs = write_outputs(result, out, progress=report)
        if getattr(args, "slicer_views", False):
            from ..slicer_views import render_classification
            views = render_classification(sample_path(sample), out / f"{result.name}_heatmap.nrrd", out, result.name)
            outputs = {**outputs, "slicer_views": [str(v) for v in views]}
        results.append({"input": sample, "label": result.label, **outputs})
        if args.progress != "json":
            probs = "  ".join(f"{k} {v:.3f}" for k, v in
                              sorted(result.probability_map().items(), key=lambda kv: -kv[1]))
            note = f"  ({'; '.join(result.decision['reasons'])})" if result.decision["uncertain"] else ""
            mod = (result.decision.get("modality") or {}).get("label")
            note = (f"  (modality {mod})" if mod else "") + note
            print(f"{sample}: {result.label}{note}\n  probabilities: {probs}\n  outputs: {out / result.name}"
                  f"{{.json,_heatmap.nrrd,_heatmap.png}}"
                  + ("  Slicer views: _slicer_red.png, _slicer_3d.png" if getattr(args, "slicer_views", False) else ""))
    if args.progress == "json":
        progress("done", 1.0, result={"outputs": results, "model": f"{package.id}@{package.version}"})
    else:
        print(f"model {package.id}@{package.version}; results in {out.resolve()}")
    return 0
