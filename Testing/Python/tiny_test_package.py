"""A tiny model package (a few KB, random but seeded weights) for tests of the classify path and the Slicer module.

Not shipped: tests create it in a temporary folder with the project's own ``save_package``::

    from tiny_test_package import make_tiny_package
    pkg_dir = make_tiny_package(tmp_path)                      # slices2d, 3 classes, simple_cnn2d
    pkg_dir = make_tiny_package(tmp_path, kind="volume3d")     # 3D CNN on a 16^3 resampled volume

then ``meddeeprecog classify SCAN --model <pkg_dir> --out OUT``. The weights are random, so labels are
meaningless; geometry, file formats, progress lines and errors are what such a package can test.
"""

from __future__ import annotations

from pathlib import Path

TINY_CLASSES = ["alpha", "beta", "gamma"]


def make_tiny_package(dest: str | Path, *, kind: str = "slices2d", channels: int = 1, version: str = "0.0.1",
                      package_id: str | None = None, seed: int = 0) -> Path:
    """Write a tiny package under ``dest/<id>/<version>/`` and return that folder.

    Args:
        kind: ``"slices2d"`` (``simple_cnn2d`` on 32x32 slices), ``"volume3d"`` (``simple_cnn3d`` on 16^3),
            ``"attention3d"`` (``attention_cnn3d``, 16^3), ``"ensemble3d"`` (three ``simple_cnn3d`` members, 16^3) or
            ``"cnn_lstm"`` (``cnn_lstm`` on 8x32x32).
        channels: input channels (2 makes a model that no single scan fits, for error tests).
    """
    import torch

    from MedDeepRecogLib.models import build_model
    from MedDeepRecogLib.packages import save_package

    torch.manual_seed(seed)
    arch = {"slices2d": ("simple_cnn2d", {"channels": [4, 8], "hidden": 8, "pooled_size": 2}, "slices2d", [32, 32]),
            "volume3d": ("simple_cnn3d", {"channels": [4, 8], "hidden": 8}, "volume3d", [16, 16, 16]),
            "ensemble3d": ("ensemble", {"member": "simple_cnn3d", "members": 3,
                                        "member_kwargs": {"channels": [4, 8], "hidden": 8, "dropout": 0.2}},
                           "volume3d", [16, 16, 16]),
            "attention3d": ("attention_cnn3d", {"channels": [4, 8], "gate_channels": 4}, "volume3d", [16, 16, 16]),
            "cnn_lstm": ("cnn_lstm", {"channels": [4, 8], "hidden": 8, "attention_dim": 4}, "volume3d",
                         [8, 32, 32])}[kind]
    name, kwargs, input_kind, size = arch
    kwargs = {**kwargs, "in_channels": channels, "num_classes": len(TINY_CLASSES)}
    model = build_model(name, **kwargs)
    meta = {
        "id": package_id or f"tiny-test-{kind}",
        "version": version,
        "task": "classification",
        "description": "random tiny model for tests (not a real classifier)",
        "architecture": {"name": name, "kwargs": kwargs},
        "class_names": list(TINY_CLASSES),
        "modality": "any",
        "input": {"kind": input_kind, "size": size, "spacing_mm": None, "channels": channels,
                  "pipeline": {"steps": []}},
        "explain": {"methods": ["gradcam", "gradcampp"] + (["attention"] if kind in ("attention3d", "cnn_lstm")
                                                            else [])},
        "provenance": {"data": "none", "command": "tiny_test_package.make_tiny_package", "seed": seed},
    }
    return save_package(model, meta, dest)
