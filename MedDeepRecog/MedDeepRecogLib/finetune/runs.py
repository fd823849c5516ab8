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


#: The files a fine-tuning run writes in its work folder (run record, checkpoint, what it saved).
RUN_RECORD, RESULT = "run.json", "result.json"


def key_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The settings of a run's config (``asdict(cfg)``, or the one its ``run.json`` recorded) that change what it
    learns, as JSON values: everything but :data:`NOT_IN_KEY` and the training's :data:`NOT_IN_KEY_TRAINING`."""
    settings = {k: v for k, v in config.items() if k not in NOT_IN_KEY}
    settings["training"] = {k: v for k, v in (settings.get("training") or {}).items()
                            if k not in NOT_IN_KEY_TRAINING}
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


def run_identity(cfg: FinetuneConfig, fingerprint: str, base_ref: str | None) -> dict[str, Any]:
    """What makes two runs the same run: data (fingerprint), base and :func:`key_settings`."""
    return {"fingerprint": fingerprint, "base": base_ref, "settings": key_settings(asdict(cfg))}


def run_key(cfg: FinetuneConfig, fingerprint: str, base_ref: str | None) -> str:
    """Work-folder name: same data, base and settings (whatever the epochs) → same folder (so a re-run resumes)."""
    blob = json.dumps(run_identity(cfg, fingerprint, base_ref), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _differences(recorded: Any, current: Any, prefix: str = "") -> list[str]:
    """``name (there → here)`` for each setting that differs, nested sections as ``section.name``."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        out = []
        for k in sorted(set(recorded) | set(current)):
            out += _differences(recorded.get(k), current.get(k), f"{prefix}{k}.")
        return out
    if recorded == current:
        return []
    return [f"{prefix.rstrip('.')} ({json.dumps(recorded, default=str)} there, {json.dumps(current, default=str)} "
            "here)"]


def check_work_dir(work_dir: Path, cfg: FinetuneConfig, fingerprint: str, base_ref: str | None) -> None:
    """Refuse a work folder this run must not continue or write into, before anything is read or written there:

    - files a fine-tuning run does not write (the user's own, or another command's): they would be replaced;
    - another run's record (``run.json``: other data, base, class map or a setting that changes training): its
      checkpoint would be continued as if it were this run's, and its files replaced.

    The same run (only the epochs, device, destination, version or id may differ) resumes or returns its package.

    Raises:
        ConfigError: naming what is in the way or what differs, and asking for a new ``--work-dir``.
    """
    from ..errors import ConfigError
    from ..training.loop import CHECKPOINT

    if not work_dir.exists():
        return
    if not work_dir.is_dir():
        raise ConfigError("--work-dir is an existing file; name a folder for the run's checkpoints", work_dir)
    own = {RUN_RECORD, RESULT, CHECKPOINT}
    # an interrupted atomic write leaves ".<name>.*.partial" beside its file: the run's own too
    entries = sorted(p.name for p in work_dir.iterdir()
                     if not (p.name.endswith(".partial") and any(p.name.startswith(f".{o}.") for o in own)))
    if not entries:
        return
    foreign = [e for e in entries if e not in own]
    if foreign:
        raise ConfigError(f"holds files fine-tuning did not write ({', '.join(foreign[:3])}"
                          f"{', ...' if len(foreign) > 3 else ''}): give a new or empty --work-dir", work_dir)
    try:
        record = json.loads((work_dir / RUN_RECORD).read_text(encoding="utf-8"))
        recorded = {"fingerprint": record["dataset_fingerprint"], "base": record["base"],
                    "settings": key_settings(record["config"])}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise ConfigError(f"holds {', '.join(entries)} but no {RUN_RECORD} that a fine-tuning run wrote: give a "
                          "new or empty --work-dir", work_dir) from None
    current = run_identity(cfg, fingerprint, base_ref)
    if recorded == current:
        return
    if entries == [RUN_RECORD]:  # a run that stopped before its first checkpoint: nothing of it to keep
        return
    diffs = []
    if recorded["base"] != current["base"]:
        diffs.append(f"base ({recorded['base'] or 'none'} there, {current['base'] or 'none'} here)")
    if recorded["fingerprint"] != current["fingerprint"]:
        diffs.append("data or class map (another dataset fingerprint)")
    diffs += _differences(recorded["settings"], current["settings"])
    raise ConfigError(f"holds another fine-tuning run, which differs in {'; '.join(diffs[:4])}"
                      f"{'; ...' if len(diffs) > 4 else ''}: give a new --work-dir for this run (or the same "
                      "settings to continue that one)", work_dir)


def default_work_dir(key: str) -> Path:
    """``$MEDDEEPRECOG_HOME/finetune_runs/<key>`` (beside the user catalog)."""
    from ..packages import user_models_dir

    return user_models_dir().parent / "finetune_runs" / key


def write_run(work_dir: Path, cfg: FinetuneConfig, fingerprint: str, base_ref: str | None, classes: list[str]) -> None:
    """``run.json``: what this folder's run was started with."""
    from ..io import atomic_write_json

    atomic_write_json(work_dir / RUN_RECORD, {"config": asdict(cfg), "dataset_fingerprint": fingerprint,
                                              "base": base_ref, "classes": classes})


def write_result(work_dir: Path, summary: dict[str, Any], epochs_run: int) -> None:
    """``result.json``: the package this folder's run saved after ``epochs_run`` epochs."""
    from ..io import atomic_write_json

    atomic_write_json(work_dir / RESULT, {"package": summary["package"], "id": summary["id"],
                                                 "version": summary["version"], "epochs_run": epochs_run,
                                                 "stopped": summary["epochs"]["stopped"]})


def rerun_package(work_dir: Path, cfg: FinetuneConfig, dest: Path) -> Path | None:
    """The package in catalog ``dest`` that this work folder's finished run saved, when running it again with
    ``cfg`` trains no further and so returns that package (:func:`previous_result`) rather than saving another:
    resumed from the checkpoint there, asking no more epochs than the run ran, or the run stopped early."""
    from ..training.loop import CHECKPOINT

    try:
        saved = json.loads((work_dir / RESULT).read_text(encoding="utf-8"))
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
    path = work_dir / RESULT
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
