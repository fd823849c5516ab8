"""``meddeeprecog info INPUT``: geometry, intensity range and modality guess of a scan, as JSON.

For a DICOM input it adds ``"dicom"``: the non-identifying tags that say what the series is (Modality,
SeriesDescription, BodyPartExamined, SliceThickness, Manufacturer, ...; ``io.dicom_seg.DESCRIPTIVE_TAGS``), never
patient names or IDs.
"""

from __future__ import annotations

import argparse
import json

from ..contract import PICTURE_SUFFIXES, WRITABLE_SUFFIXES, suffix_of
from ..errors import InputImageError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("info", help="print a scan's geometry, intensity range and modality guess (JSON)")
    p.add_argument("input", help="NIfTI/NRRD/MHA file, DICOM file or DICOM series folder (its descriptive tags are "
                                 "printed too, never patient names or IDs), PNG/JPEG image")
    p.add_argument("--spacing", type=float, nargs=2, metavar=("X_MM", "Y_MM"),
                   help="pixel size of a PNG/JPEG input in mm (it stores none; default 1 mm)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..io import describe_geometry, read_image  # SimpleITK, slicerio: not when the parser is only built

    image = read_image(args.input, spacing=args.spacing)
    record = {"input": str(args.input), **describe_geometry(image)}
    if suffix_of(args.input) not in WRITABLE_SUFFIXES + PICTURE_SUFFIXES:
        from ..io.dicom_seg import describe_dicom

        try:
            record["dicom"] = describe_dicom(args.input)
        except InputImageError:
            pass  # read, but not as DICOM (an Analyze .img/.hdr pair, say)
    print(json.dumps(record, indent=2))
    return 0
