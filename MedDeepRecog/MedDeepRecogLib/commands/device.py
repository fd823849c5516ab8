"""``meddeeprecog device [--json]``: what torch sees (version, CUDA, device names and memory).

The Slicer module shows this next to its device selector (auto/CPU/GPU), so users see at once whether the GPU they
expect is usable by the worker's torch. JSON: ``{"torch": ver, "cuda_available": bool, "cuda_version": str|null,
"mps_available": bool, "devices": [{"index", "name", "memory_gb", "capability"}], "default": "cuda"|"mps"|"cpu"}``.
"""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("device", help="show the torch version and the GPUs torch can use")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..devices import describe, device_report

    report = device_report()
    print(json.dumps(report, indent=2) if args.json else describe(report))
    return 0
