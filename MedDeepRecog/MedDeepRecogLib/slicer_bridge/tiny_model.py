"""A tiny untrained model package for the Slicer module's self-test and the bridge's tests (no weights shipped).

``python -m MedDeepRecogLib.slicer_bridge.tiny_model DEST`` writes ``DEST/<id>/<version>/`` with a 2-class
``simple_cnn3d`` (channels 4, 8) on 16³ volumes and prints the package folder. It runs in a worker process, so the
Slicer self-test never imports torch into Slicer. Predictions are meaningless; the file exchange is what is tested.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

TINY_ID = "tiny-test-cnn3d"


def make_tiny_package(dest: str | Path, class_names: Sequence[str] = ("normal", "lesion"),
                      model_id: str = TINY_ID, seed: int = 0) -> Path:
    """Save a freshly initialised ``simple_cnn3d`` as a model package under ``dest``; return its folder."""
    import torch

    from ..models import build_model
    from ..packages import save_package

    torch.manual_seed(seed)
    kwargs = {"in_channels": 1, "num_classes": len(class_names), "channels": [4, 8]}
    model = build_model("simple_cnn3d", **kwargs)
    meta = {
        "id": model_id, "version": None, "task": "classification",
        "description": "Untrained 2-class 3D CNN for tests of the Slicer module (predictions are meaningless).",
        "architecture": {"name": "simple_cnn3d", "kwargs": kwargs},
        "class_names": list(class_names), "modality": "any",
        "input": {"kind": "volume3d", "size": [16, 16, 16], "spacing_mm": None, "channels": 1,
                  "pipeline": {"steps": []}},
        "explain": {"methods": ["gradcam"]},
        "provenance": {"data": "none (random initialisation)", "command": "slicer_bridge.tiny_model", "seed": seed,
                       "parent": None},
        "metrics": {},
    }
    return save_package(model, meta, dest=dest)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", help="catalog folder to write <id>/<version>/ into")
    parser.add_argument("--id", default=TINY_ID)
    args = parser.parse_args(argv)
    print(make_tiny_package(args.dest, model_id=args.id))
    return 0


if __name__ == "__main__":
    sys.exit(main())
