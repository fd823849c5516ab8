"""One answer to "which torch device": every command, training run and filter resolves its ``device`` setting here.

Accepted names: ``auto`` (CUDA when torch sees a GPU, else CPU), ``cpu``, ``cuda`` and ``cuda:N``. Asking for CUDA
on a machine without it is a user error that names the setting, never a torch traceback.

Also what torch sees on this machine (:func:`device_report`, the ``meddeeprecog device`` command) and its one-line
summary (:func:`describe`, which the Slicer module shows beside its device selector). torch is imported inside the
functions only, so the Slicer module can import this file at start-up.
"""

from __future__ import annotations

from typing import Any

from .errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(device: str = "auto", *, setting: str = "--device"):
    """``device`` name → ``torch.device``; raises :class:`ConfigError` naming ``setting`` when it cannot be used."""
    import torch

    name = str(device or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ConfigError(f"{setting} {device} was asked for but no CUDA GPU is available (use auto or cpu)")
        index = int(name[5:]) if ":" in name else None
        if index is not None and index >= torch.cuda.device_count():
            raise ConfigError(f"{setting} {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return torch.device(name)
    raise ConfigError(f"{setting} {device!r} is not a device; use auto, cpu, cuda or cuda:N")


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
