"""``meddeeprecog device [--json]``: what torch sees (version, CUDA, device names and memory).

The Slicer module shows this next to its device selector (auto/CPU/GPU), so users see at once whether the GPU they
expect is usable by the worker's torch. JSON: ``{"torch": ver, "cuda_available": bool, "cuda_version": str|null,
"mps_available": bool, "devices": [{"index", "name", "memory_gb", "capability"}], "default": "cuda"|"mps"|"cpu"}``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("device", help="show the torch version and the GPUs torch can use")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=run)


def device_report() -> dict[str, Any]:
    """What torch sees on this machine; ``torch`` is ``None`` when torch is not installed."""
    try:
        import torch
    except ImportError:
        return {"torch": None, "cuda_available": False, "cuda_version": None, "mps_available": False,
                "devices": [], "default": "cpu",
                "message": "PyTorch is not installed (in Slicer: install the PyTorch extension)"}
    cuda = bool(torch.cuda.is_available())
    devices = []
    if cuda:
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            devices.append({"index": index, "name": props.name,
                            "memory_gb": round(props.total_memory / 1024 ** 3, 2),
                            "capability": f"{props.major}.{props.minor}"})
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return {"torch": torch.__version__, "cuda_available": cuda, "cuda_version": torch.version.cuda,
            "mps_available": mps, "devices": devices, "default": "cuda" if cuda else ("mps" if mps else "cpu")}


def describe(report: dict[str, Any]) -> str:
    """One line for people, e.g. ``torch 2.13.0, CUDA 12.8: NVIDIA H100 (79.1 GB)`` or ``torch 2.13.0+cpu, CPU only``."""
    if report.get("torch") is None:
        return report.get("message", "PyTorch is not installed")
    if report["devices"]:
        gpus = ", ".join(f"{d['name']} ({d['memory_gb']:g} GB)" for d in report["devices"])
        return f"torch {report['torch']}, CUDA {report.get('cuda_version')}: {gpus}"
    if report.get("mps_available"):
        return f"torch {report['torch']}, Apple MPS"
    return f"torch {report['torch']}, CPU only"


def run(args: argparse.Namespace) -> int:
    report = device_report()
    print(json.dumps(report, indent=2) if args.json else describe(report))
    return 0
