"""One answer to "which torch device": every command, training run and filter resolves its ``device`` setting here.

Accepted names: ``auto`` (CUDA when torch sees a GPU, else CPU), ``cpu``, ``cuda`` and ``cuda:N``. Asking for CUDA
on a machine without it is a user error that names the setting, never a torch traceback.
"""

from __future__ import annotations

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
