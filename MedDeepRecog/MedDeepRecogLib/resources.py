"""Paths of what ships inside the package: sample scans and bundled model packages."""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"
SAMPLES_DIR = DATA_DIR / "samples"
BUNDLED_MODELS_DIR = DATA_DIR / "models"


def sample_path(name: str) -> Path:
    """Path of a bundled sample scan, e.g. ``sample_path("brain1_mr.nrrd")`` (see ``data/samples/SOURCES.md``)."""
    path = SAMPLES_DIR / name
    if not path.exists():
        available = ", ".join(sorted(p.name for p in SAMPLES_DIR.iterdir() if p.suffix != ".md"))
        raise FileNotFoundError(f"no bundled sample {name!r}; available: {available}")
    return path
