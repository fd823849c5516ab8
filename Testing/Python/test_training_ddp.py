"""``meddeeprecog train`` as distributed data parallel: 2 CPU processes on gloo, launched like ``torchrun``.

Runs ``python -m torch.distributed.run --nproc_per_node=2 -m MedDeepRecogLib train CFG ...`` (the console-script
shim may be a shell script, so the module form is used) and checks that rank 0 alone wrote one package version,
and that the validation metrics it recorded are what evaluating the written package gives.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch


def _separable(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class 1: a bright square top-left, class 0: bottom-right, plus noise; images (N, size, size) float32."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = 0.2 * rng.standard_normal((n, size, size)).astype(np.float32)
    h = size // 2
    for i, label in enumerate(y):
        region = (slice(1, h - 1), slice(1, h - 1)) if label else (slice(h + 1, -1), slice(h + 1, -1))
        x[i][region] += 1.0
    return x, y.astype(np.int64)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(180)
def test_train_two_gloo_ranks_rank0_writes_one_package(tmp_path):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    x_tr, y_tr = _separable(40, 12, seed=0)
    x_va, y_va = _separable(16, 12, seed=1)
    data = tmp_path / "tiny.npz"
    np.savez(data, train_images=x_tr, train_labels=y_tr, val_images=x_va, val_labels=y_va)
    cfg = {"id": "ddp-tiny", "seed": 0,
           "data": {"path": str(data), "kind": "slices2d", "class_names": ["bottom", "top"]},
           "model": {"name": "simple_cnn2d", "kwargs": {"channels": [4, 8], "hidden": 8}},
           "optimizer": {"name": "adam", "lr": 0.003},
           "training": {"epochs": 2, "batch_size": 8, "device": "cpu"}}
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(cfg), encoding="utf-8")
    cat, out = tmp_path / "cat", tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDDEEPRECOG_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={_free_port()}", "-m", "MedDeepRecogLib", "train", str(cfg_path),
                           "--package-dest", str(cat), "--out", str(out), "--progress", "none"],
                          env=env, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    versions = sorted(p.name for p in (cat / "ddp-tiny").iterdir())
    assert versions == ["1.0.0"]  # one package version, written once (rank 0), no temporary leftovers
    assert sorted(p.name for p in cat.iterdir()) == ["ddp-tiny"]
    pkg = cat / "ddp-tiny" / "1.0.0"
    meta = json.loads((pkg / "model.json").read_text(encoding="utf-8"))
    assert meta["provenance"]["world_size"] == 2
    history = json.loads((out / "history.json").read_text(encoding="utf-8"))
    assert [r["epoch"] for r in history["epochs"]] == [1, 2]
    assert (out / "checkpoints" / "last.pt").is_file() and (out / "training_curve.png").is_file()
    # only rank 0 reports, naming the package it wrote (a reader taking the last result line gets the real one)
    printed = proc.stdout.replace("\n", "")
    assert '"package": null' not in printed and printed.count(str(pkg)) >= 1

    from MedDeepRecogLib.training.evaluate import evaluate_package

    again = evaluate_package(pkg, data, split="val", device="cpu")
    recorded = meta["metrics"]
    assert recorded["n"] == again["n"] == 16
    for key in ("auc", "balanced_accuracy", "accuracy", "f1"):
        assert recorded[key] == pytest.approx(again[key], abs=1e-6), key
    assert recorded["confusion_matrix"] == again["confusion_matrix"]
    assert recorded["auc"] > 0.8  # the two ranks together still learn the task
