"""``meddeeprecog info INPUT``: geometry, intensity range and modality guess of a scan, as JSON."""

from __future__ import annotations

import argparse
import json

from ..io import describe_geometry, read_image


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("info", help="print a scan's geometry, intensity range and modality guess (JSON)")
    p.add_argument("input", help="NIfTI/NRRD/MHA file, DICOM file or DICOM series folder, PNG/JPEG image")
    p.add_argument("--spacing", type=float, nargs=2, metavar=("X_MM", "Y_MM"),
                   help="pixel size of a PNG/JPEG input in mm (it stores none; default 1 mm)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    image = read_image(args.input, spacing=args.spacing)
    print(json.dumps({"input": str(args.input), **describe_geometry(image)}, indent=2))
    return 0
