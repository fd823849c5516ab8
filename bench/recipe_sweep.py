"""Compare training recipes on their group-aware out-of-fold figures, many ``train`` runs side by side.

Each variant is the base config with some keys overridden (a YAML mapping of variant name to a partial config,
deep-merged, except ``model/kwargs``, which a variant replaces whole; ``null`` removes a key). Every variant runs
``meddeeprecog train`` with the config's own ``training/folds`` and no refit, no out-of-domain fit and no lesion
scoring: only the fold members, whose out-of-fold figures are what a recipe is chosen on (the val split is never
used to choose). Runs go in parallel (``--parallel``), each in its own process under its own time limit, so one
failure costs only itself.

    python bench/recipe_sweep.py CONFIG VARIANTS.yaml --out DIR [--seeds 0 100] [--parallel 4] [--threads 1]
        [--device cpu|cuda] [--limit-s 3600] [--standardised-copy FILE]

Prints one row per variant and seed, then the mean over seeds: out-of-fold accuracy, balanced accuracy, AUC and the
recall of each class; the table is also written to DIR/summary.json. A different seed also draws different folds,
so the spread between seeds shows how much of a difference is noise.

``--standardised-copy FILE``: write the training images once, already through the config's ``input/slices`` at
``data/size``, as 8-bit (steps of 1/255 of the 0..1 range), and train every variant from that file. Made for GPU
machines that take only a small working tree: the brain tumour file at 224² is 61 MB, its 128² standardised copy
21 MB. Variants may then not change ``data/size`` or ``input``.

Sweeps run so far (variant files in ``bench/sweeps/``, figures in the README and the configs' comments):
``bench/sweeps/lung-ct-cancer.yaml``, ``bench/sweeps/brain-tumour-mri.yaml`` and ``bench/sweeps/breast-us-lesion.yaml``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]


#: Mappings an override replaces whole instead of merging into: a network's keyword arguments belong to that network.
REPLACED_WHOLE = {"kwargs"}


def deep_merge(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` merged in, recursively for mappings except :data:`REPLACED_WHOLE`; a ``None``
    value removes the key."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict) and key not in REPLACED_WHOLE:
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def standardised_copy(cfg, raw: dict, dest: Path) -> float:
    """Write ``dest``: the train split of ``cfg`` (the loaded config) standardised as training would
    (``input/slices`` at ``data/size``), 8-bit, with the first 30 val images (the file format wants a val split; the
    sweep does not use its figures). Returns the intensity scale to put in ``data/intensity_range``."""
    from MedDeepRecogLib.training.config import resolve_data_path
    from MedDeepRecogLib.training.data import standardise_images

    source = np.load(resolve_data_path(cfg))
    arrays = {}
    scale = None
    for split, count in (("train", None), ("val", 30)):
        x = standardise_images(source[f"{split}_images"][:count], raw["input"]["slices"], cfg.data.size, cfg.source)
        scale = scale or 255.0 / max(1.0, float(x.max()))
        arrays[f"{split}_images"] = np.clip(np.round(x[:, 0] * scale), 0, 255).astype(np.uint8)
        for key in ("labels", "groups"):
            arrays[f"{split}_{key}"] = source[f"{split}_{key}"][:count]
    dest.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(dest, class_names=source["class_names"], **arrays)
    return scale


def variant_configs(config: Path, variants: dict, seeds: list[int], out: Path, copy_path: Path | None) -> list[Path]:
    from MedDeepRecogLib.commands import register_training_blocks
    register_training_blocks()  # the configs' localisation and placement blocks
    from MedDeepRecogLib.training.config import load_config, resolve_data_path

    loaded = load_config(config)
    raw = yaml.safe_load(config.read_text(encoding="utf-8"))
    raw.pop("version", None)
    raw.pop("localisation", None)
    raw.pop("placement", None)
    raw["domain"] = None
    raw["training"]["refit"] = 0
    raw["data"]["path"] = str(resolve_data_path(loaded))
    if copy_path is not None:
        bad = [name for name, v in variants.items() if "input" in v or "size" in (v.get("data") or {})]
        if bad:
            raise SystemExit(f"recipe_sweep: --standardised-copy fixes data/size and input; variants {bad} change them")
        scale = standardised_copy(loaded, raw, copy_path)
        raw["data"]["path"] = str(copy_path.resolve())
        raw["data"]["intensity_range"] = [0.0, scale]
        raw["input"]["slices"] = None
        raw["input"]["slices_as_stored"] = True   # already standardised: training_slices would do it again
    (out / "configs").mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in seeds:
        for name, overrides in variants.items():
            cfg = deep_merge(raw, overrides or {})
            cfg["seed"] = seed
            cfg["id"] = f"{raw['id']}-sweep-{name}-s{seed}"
            path = out / "configs" / f"{name}-s{seed}.yaml"
            path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
            paths.append(path)
    return paths


def run_one(config: Path, out: Path, device: str, threads: int, limit_s: float) -> dict:
    name = config.stem
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "MedDeepRecogLib", "train", str(config), "--out", str(out / "runs" / name),
           "--package-dest", str(out / "packages" / name), "--device", device, "--threads", str(threads),
           "--progress", "none"]
    with open(out / "logs" / f"{name}.log", "w", encoding="utf-8") as log:
        try:
            code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=limit_s).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    row = {"run": name, "exit": code, "seconds": round(time.perf_counter() - start, 1)}
    found = sorted((out / "packages" / name).glob("*/*/model.json"))
    if found:
        cv = json.loads(found[-1].read_text(encoding="utf-8"))["metrics"]["cross_validation"]
        cm = np.asarray(cv["confusion_matrix"], float)
        row.update(accuracy=cv["accuracy"], balanced_accuracy=cv["balanced_accuracy"], auc=cv["auc"],
                   recall=[round(float(r), 3) for r in np.diag(cm) / np.maximum(cm.sum(1), 1)])
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("variants", type=Path, help="YAML: variant name -> keys overriding the config")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per run")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--limit-s", type=float, default=3600.0, help="time limit of each run")
    ap.add_argument("--standardised-copy", type=Path, default=None)
    args = ap.parse_args(argv)
    variants = yaml.safe_load(args.variants.read_text(encoding="utf-8"))
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    configs = variant_configs(args.config, variants, args.seeds, args.out, args.standardised_copy)
    with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
        rows = list(pool.map(lambda c: run_one(c, args.out, args.device, args.threads, args.limit_s), configs))
    print(f"{args.config.name}: out-of-fold figures of each variant (fold members only; val unused), "
          f"device {args.device}")
    print("run | exit | s | accuracy | balanced | AUC | recall per class")
    for r in rows:
        print(f"{r['run']} | {r['exit']} | {r['seconds']} | {r.get('accuracy')} | {r.get('balanced_accuracy')} | "
              f"{r.get('auc')} | {r.get('recall')}")
    print("mean over seeds: variant | accuracy | balanced | AUC")
    for name in variants:
        done = [r for r in rows if r["run"].rsplit("-s", 1)[0] == name and "accuracy" in r]
        if done:
            means = [statistics.mean(v) if (v := [r[k] for r in done if r[k] is not None]) else float("nan")
                     for k in ("accuracy", "balanced_accuracy", "auc")]
            print(f"{name} | " + " | ".join(f"{m:.3f}" for m in means) + f"  ({len(done)} seed(s))")
    (args.out / "summary.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return 0 if all("accuracy" in r for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
