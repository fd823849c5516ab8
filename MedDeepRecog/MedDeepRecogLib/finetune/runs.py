"""The work folder of a fine-tuning run: where its checkpoint lives, what ran there, what it saved.

The folder is keyed by the data (fingerprint), the base package and every setting that changes what is learnt,
so running the same command again resumes the run. The number of epochs is not part of the key: re-running with
more epochs continues the same run up to the new number instead of starting over, its learning-rate schedule
rebuilt for the new total (:func:`..training.loop.make_scheduler`); a finished run re-run unchanged returns the
package it saved.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .config import FinetuneConfig

#: Settings that change nothing the run learns (where it writes, how it is resumed, where it runs).
NOT_IN_KEY = ("work_dir", "resume", "command", "dest", "version")
#: ``training`` settings left out of the key: how long it runs, and where.
NOT_IN_KEY_TRAINING = ("epochs", "device")


def run_key(cfg: FinetuneConfig, fingerprint: str, base_ref: str | None) -> str:
    """Work-folder name: same data, base and settings (whatever the epochs) → same folder (so a re-run resumes)."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in NOT_IN_KEY}
    settings["training"] = {k: v for k, v in settings["training"].items() if k not in NOT_IN_KEY_TRAINING}
    blob = json.dumps({"fingerprint": fingerprint, "base": base_ref, "settings": settings}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_work_dir(key: str) -> Path:
    """``$MEDDEEPRECOG_HOME/finetune_runs/<key>`` (beside the user catalog)."""
    from ..packages import user_models_dir

    return user_models_dir().parent / "finetune_runs" / key


def write_run(work_dir: Path, cfg: FinetuneConfig, fingerprint: str, base_ref: str | None, classes: list[str]) -> None:
    """``run.json``: what this folder's run was started with."""
    from ..io import atomic_write_json

    atomic_write_json(work_dir / "run.json", {"config": asdict(cfg), "dataset_fingerprint": fingerprint,
                                              "base": base_ref, "classes": classes})


def write_result(work_dir: Path, summary: dict[str, Any], epochs_run: int) -> None:
    """``result.json``: the package this folder's run saved after ``epochs_run`` epochs."""
    from ..io import atomic_write_json

    atomic_write_json(work_dir / "result.json", {"package": summary["package"], "id": summary["id"],
                                                 "version": summary["version"], "epochs_run": epochs_run,
                                                 "stopped": summary["epochs"]["stopped"]})


def rerun_package(work_dir: Path, cfg: FinetuneConfig, dest: Path) -> Path | None:
    """The package in catalog ``dest`` that this work folder's finished run saved, when running it again with
    ``cfg`` trains no further and so returns that package (:func:`previous_result`) rather than saving another:
    resumed from the checkpoint there, asking no more epochs than the run ran, or the run stopped early."""
    from ..training.loop import CHECKPOINT

    try:
        saved = json.loads((work_dir / "result.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    package = Path(str(saved.get("package") or ""))
    if not cfg.resume or not (work_dir / CHECKPOINT).is_file() or not package.is_dir():
        return None
    if package.parent.parent.resolve() != Path(dest).expanduser().resolve():
        return None
    ran = saved.get("epochs_run")
    if not isinstance(ran, int) or (ran < cfg.training.epochs and saved.get("stopped") != "early_stopping"):
        return None
    return package


def previous_result(work_dir: Path, epochs_run: int, *, dest: str | Path | None = None, version: str | None = None,
                    pkg_id: str | None = None) -> dict[str, Any] | None:
    """The package an earlier, finished run of this work folder saved, if it saw the same epochs, still exists, and
    is what this command asks for: in ``dest``, of ``version`` and ``pkg_id``, each when given (a re-run that names
    another destination, version or id gets a new package from the same weights)."""
    path = work_dir / "result.json"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    package = Path(saved.get("package", ""))
    if saved.get("epochs_run") != epochs_run or not package.is_dir():
        return None
    if dest is not None and package.parent.parent.resolve() != Path(dest).expanduser().resolve():
        return None
    if (version is not None and saved.get("version") != version) or (pkg_id is not None and saved.get("id") != pkg_id):
        return None
    return {k: saved[k] for k in ("package", "id", "version")}
