"""``meddeeprecog demo [--out DIR]``: classify the bundled real scans with the bundled ``body-region`` model.

Runs ``classify`` with Grad-CAM on ``data/samples/brain1_mr.nrrd`` (brain MR) and ``abdomen_ct.nii.gz`` (abdominal CT)
and writes each scan's JSON, heatmap NRRD and overlay PNG into DIR (default ``./meddeeprecog-demo``), printing the
label and probabilities. Needs no data beyond the installed package.
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..inference.classify import classify_scan, resolve_device, write_outputs
    from ..packages import load_package
    from ..progress import Progress
    from ..resources import sample_path

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
        results.append({"input": sample, "label": result.label, **outputs})
        if args.progress != "json":
            probs = "  ".join(f"{k} {v:.3f}" for k, v in
                              sorted(result.probability_map().items(), key=lambda kv: -kv[1]))
            note = f"  ({'; '.join(result.decision['reasons'])})" if result.decision["uncertain"] else ""
            mod = (result.decision.get("modality") or {}).get("label")
            note = (f"  (modality {mod})" if mod else "") + note
            print(f"{sample}: {result.label}{note}\n  probabilities: {probs}\n  outputs: {out / result.name}"
                  f"{{.json,_heatmap.nrrd,_heatmap.png}}")
    if args.progress == "json":
        progress("done", 1.0, result={"outputs": results, "model": f"{package.id}@{package.version}"})
    else:
        print(f"model {package.id}@{package.version}; results in {out.resolve()}")
    return 0
