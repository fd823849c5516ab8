"""``meddeeprecog segment INPUT --model ID --out OUT.seg.nrrd|OUT.dcm``: segment a scan with a segmentation package.

``OUT.dcm`` (DICOM series input): a DICOM Segmentation object referencing the source series (``io.dicom_seg``).

The result is a Slicer ``.seg.nrrd`` on the scan's own grid (one segment per class, named as in training), so it
loads over the scan in Slicer's slice and 3D views. ``--progress json`` ends with
``{"stage": "done", "fraction": 1.0, "result": {"output": PATH, "caveat": ..., "segments": {...}, ...}}``; the
``caveat`` is what the package says of its own limits and its validation Dice (``inference.segment.stated_limits``);
``input_notes`` (also printed as warnings) what reading the scan changed or assumed, e.g. a DICOM series with slice
gaps read with ``--allow-slice-gaps``, whose ``.seg.nrrd`` is then written on the series' true slice grid
(``io.slice_grid``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..contract import PROGRESS_MODES
from ..devices import DEVICE_CHOICES
from ..progress import DEVICE_HELP, PROGRESS_HELP


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("segment", help="segment a scan with a segmentation package (writes .seg.nrrd)")
    p.add_argument("input", help="NIfTI/NRRD/MHA file or DICOM series folder")
    p.add_argument("--model", required=True, help="segmentation package: ID, ID@VERSION, folder or .zip")
    p.add_argument("--out", required=True,
                   help="output .seg.nrrd, or .dcm for a DICOM series input: a DICOM Segmentation object "
                        "referencing the series (what a PACS stores)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help=DEVICE_HELP)
    p.add_argument("--progress", choices=PROGRESS_MODES, default="none", help=PROGRESS_HELP)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..devices import resolve_device
    from ..errors import InputImageError, OutputError
    from ..inference.segment import segment_file
    from ..progress import Progress

    if not args.out.lower().endswith((".seg.nrrd", ".dcm")):
        raise InputImageError("the output must be a .seg.nrrd file, or .dcm (DICOM Segmentation) for a DICOM "
                              "input", args.out)
    if Path(args.out).exists():
        raise OutputError("already exists; name a new file (an earlier segmentation is never replaced)", args.out)
    device = str(resolve_device(args.device))
    progress = Progress(args.progress)
    result = segment_file(args.input, args.model, args.out, device=device, progress=progress)
    for note in result.get("input_notes", ()):   # as preprocess says them: a gapped series read anyway
        print(f"meddeeprecog segment: warning: {args.input}: {note}", file=sys.stderr)
    if args.progress == "json":
        progress("done", 1.0, result=result)
    else:
        print(json.dumps(result, indent=2))
    return 0
