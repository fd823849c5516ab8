"""``meddeeprecog robustness``: FGSM / PGD robustness of a model on one scan or a labelled data set.

One scan (``--input SCAN``; the Slicer panel's "Robustness check")::

    meddeeprecog robustness --model ID --input SCAN --out DIR [--attack fgsm|pgd] [--eps E ...] [--steps N]
                            [--write-perturbation] [--progress json]

writes ``DIR/<name>_robustness.json`` (probability of the clean label at each eps, ``smallest_flipping_eps`` or
null, the curve point where it flips, eps also in HU for CT), ``DIR/<name>_robustness.png`` (the curve) and with
``--write-perturbation`` ``DIR/<name>_perturbation.nrrd`` (the perturbation at the flipping eps, or the largest
eps, on the scan's grid, in model input units).

A data set (``--data NPZ [--split val]``): clean vs robust accuracy / balanced accuracy / AUC at each eps,
``DIR/robustness.json`` + ``DIR/robustness.png``.

Adversarial training (``--train-config CONFIG``): trains a config with an ``adversarial`` block
(see ``robustness/training.py``) into a new package version.

eps is in the model's input units (e.g. 0..1 after intensity scaling); eps <= 0 or >= the input's valid range
is refused. Default eps: 0.5 %, 1 %, 2 %, 5 % and 10 % of the valid range.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..progress import PROGRESS_HELP

DEFAULT_EPS_FRACTIONS = (0.005, 0.01, 0.02, 0.05, 0.1)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("robustness", help="adversarial robustness (FGSM/PGD) of a model on a scan or data set; "
                                                 "adversarial training")
    p.add_argument("--model", help="model package id, id@version, folder or .zip")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--input", nargs="+", metavar="SCAN", help="scan(s): how far does the prediction move?")
    src.add_argument("--data", help="labelled .npz (MedMNIST-style) for clean vs robust accuracy")
    src.add_argument("--train-config", help="train a config with an 'adversarial' block into a new package")
    p.add_argument("--split", default="val", help="split of --data (default val)")
    p.add_argument("--out", help="output folder")
    p.add_argument("--attack", choices=["fgsm", "pgd"], default="pgd",
                   help="fgsm: one signed-gradient step of size eps; pgd: --steps projected gradient steps inside "
                        "the eps ball (stronger; default)")
    p.add_argument("--eps", nargs="+", help="attack budget(s) in model input units (space or comma separated); "
                   "for CT scans the output also gives each in HU")
    p.add_argument("--steps", type=int, default=10, help="PGD iterations (default 10)")
    p.add_argument("--bounds", nargs=2, type=float, metavar=("LOW", "HIGH"),
                   help="valid intensity range of the model input (default: from the package's preprocessing, "
                        "else the input's own min/max)")
    p.add_argument("--refine", type=int, default=5, help="bisection steps refining the smallest flipping eps")
    p.add_argument("--write-perturbation", action="store_true", help="write the perturbation volume (scan mode)")
    p.add_argument("--max-cases", type=int, help="use at most N cases of --data")
    p.add_argument("--batch-size", type=int, default=32, help="--data cases attacked per batch (default 32)")
    p.add_argument("--package-dest", help="--train-config: catalog folder for the new package")
    p.add_argument("--epochs", type=int, help="--train-config: override training/epochs")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--progress", choices=["json", "bar", "none"], default="bar", help=PROGRESS_HELP)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..errors import ConfigError
    from ..progress import Progress

    if args.threads:
        torch.set_num_threads(args.threads)
    progress = Progress(args.progress)
    if args.train_config:
        from ..robustness.training import run_adversarial_training

        result = run_adversarial_training(args.train_config, out=args.out, package_dest=args.package_dest,
                                          epochs=args.epochs, progress=progress)
    else:
        if not args.model:
            raise ConfigError("--model is required (a package id, id@version, folder or .zip)")
        if not args.out:
            raise ConfigError("--out is required")
        if args.steps < 1:
            raise ConfigError(f"--steps must be >= 1, got {args.steps}")
        if args.input:
            result = _run_scans(args, progress)
        elif args.data:
            result = _run_data(args, progress)
        else:
            raise ConfigError("give --input SCAN, --data NPZ or --train-config CONFIG")
    if args.progress == "json":
        progress("done", 1.0, result=result)
    else:
        print(json.dumps(result, indent=2))
    return 0


def _eps_list(args, bounds) -> list[float]:
    from ..robustness import check_eps, parse_eps_list

    if args.eps:
        eps = parse_eps_list(",".join(args.eps))
    else:
        width = (bounds[1] - bounds[0]) if bounds else 1.0
        eps = [f * width for f in DEFAULT_EPS_FRACTIONS]
    return [check_eps(e, bounds) for e in eps]


def _bounds(args, spec, x) -> tuple[float, float]:
    from ..errors import ConfigError
    from ..robustness.scan import pipeline_bounds

    if args.bounds:
        lo, hi = args.bounds
        if not hi > lo:
            raise ConfigError(f"--bounds must have LOW < HIGH, got {lo} {hi}")
        return float(lo), float(hi)
    b = pipeline_bounds(spec)
    if b is not None:
        return b
    lo, hi = float(x.min()), float(x.max())
    if not hi > lo:
        raise ConfigError("the model input is constant, so no valid intensity range can be derived; give --bounds")
    return lo, hi


def _run_scans(args, progress) -> dict:
    from ..inference.classify import output_name
    from ..io import atomic_write_json, write_image
    from ..io.image_io import guess_modality
    from ..packages import load_package
    from ..robustness import save_curve_png, scan_robustness
    from ..robustness.scan import hu_per_unit, model_input_of, perturbation_on_scan

    pkg = load_package(args.model)
    from ..io import check_output_dir
    out = check_output_dir(args.out, "--out")  # made by the first (atomic) write, so a failed run leaves none
    results = []
    n = len(args.input)
    for i, scan in enumerate(args.input):
        name = output_name(scan)

        def prog(stage, fraction, **extra):
            progress(stage, (i + 0.1 + 0.8 * fraction) / n, case=name, **extra)

        prog("prepare", 0.0)
        res, x, forward = model_input_of(scan, pkg)
        bounds = _bounds(args, pkg.input_spec, x)
        eps = _eps_list(args, bounds)
        record, deltas = scan_robustness(forward, x, eps, attack_name=args.attack, steps=args.steps, bounds=bounds,
                                         refine_steps=args.refine, class_names=pkg.class_names, progress=prog)
        modality = pkg.meta.get("modality") if pkg.meta.get("modality") in ("CT", "MR") else guess_modality(res.image)
        units = hu_per_unit(res.image, pkg) if modality == "CT" else None
        record.update({"input": str(scan), "model": {"id": pkg.id, "version": pkg.version},
                       "eps_units": "model input", "modality": modality,
                       "hu_per_unit": None if units is None else 1.0 / units})
        if units is not None:
            for point in record["curve"] + ([record["flip"]] if record["flip"] else []):
                point["eps_hu"] = point["eps"] / units
            if record["smallest_flipping_eps"] is not None:
                record["smallest_flipping_eps_hu"] = record["smallest_flipping_eps"] / units
        outputs = {}
        png = out / f"{name}_robustness.png"
        save_curve_png(record, png, title=f"{pkg.id} {pkg.version} on {name}")
        outputs["png"] = str(png)
        if args.write_perturbation:
            e = record["smallest_flipping_eps"] if record["smallest_flipping_eps"] is not None else max(eps)
            vol = out / f"{name}_perturbation.nrrd"
            write_image(perturbation_on_scan(deltas[e], res), vol)
            outputs["perturbation"] = str(vol)
            record["perturbation_eps"] = e
        js = out / f"{name}_robustness.json"
        record["outputs"] = {**outputs, "json": str(js)}
        atomic_write_json(js, record)
        results.append({"input": str(scan), "json": str(js), **outputs,
                        "smallest_flipping_eps": record["smallest_flipping_eps"],
                        **({"smallest_flipping_eps_hu": record.get("smallest_flipping_eps_hu"),
                            "hu_per_unit": record["hu_per_unit"]} if units is not None else {})})
        if args.progress != "json":
            print(_scan_lines(record))
    return results[0] if len(results) == 1 else {"scans": results}


def _eps_text(eps: float, point: dict | None = None, per_unit: float | None = None) -> str:
    """``0.02 (5.1 HU)`` for CT, ``0.02`` (model input units) otherwise."""
    hu = (point or {}).get("eps_hu", eps * per_unit if per_unit else None)
    return f"{eps:.4g} ({hu:.1f} HU)" if hu is not None else f"{eps:.4g}"


def _scan_lines(record: dict) -> str:
    """The attack on one scan as text: eps in model units and, for CT, in HU; the probability of the clean label."""
    per_unit = record.get("hu_per_unit")
    unit = "model input units (HU in brackets)" if per_unit else "model input units"
    lines = [f"{record['input']}: {record['clean_label']} p={record['clean_probability']:.3f}; "
             f"{record['attack']} eps in {unit}"]
    for point in record["curve"]:
        lines.append(f"  eps {_eps_text(point['eps'], point)}: p({record['clean_label']})={point['probability']:.3f}"
                     f" -> {point.get('label', '')}")
    flip = record.get("smallest_flipping_eps")
    lines.append(f"  smallest eps that flips the label: {_eps_text(flip, None, per_unit)}" if flip is not None
                 else "  no eps tried flips the label")
    return "\n".join(lines)


def _run_data(args, progress) -> dict:
    import numpy as np
    import torch

    from ..errors import ConfigError
    from ..io import atomic_write_json
    from ..packages import load_package
    from ..robustness import evaluate_robustness, save_curve_png
    from ..training.data import load_eval_split
    from ..training.evaluate import _data_params

    pkg = load_package(args.model)
    data = Path(args.data)
    if not data.is_file():
        raise ConfigError("data file not found", data)
    intensity, size = _data_params(pkg)
    ds = load_eval_split(data, args.split, pkg.input_spec["kind"], intensity, size)
    x, y = ds.images, ds.labels
    if args.max_cases:
        x, y = x[: args.max_cases], y[: args.max_cases]
    if len(y) == 0:
        raise ConfigError(f"split {args.split!r} is empty", data)
    pkg.check_input(torch.as_tensor(x[:1]))
    model = pkg.build_model("cpu")
    bounds = tuple(args.bounds) if args.bounds else ((0.0, 1.0) if intensity is not None
                                                     else (float(np.min(x)), float(np.max(x))))
    eps = _eps_list(args, bounds)
    bs = max(1, args.batch_size)
    batches = [(torch.from_numpy(x[i:i + bs]), torch.from_numpy(y[i:i + bs])) for i in range(0, len(y), bs)]
    res = evaluate_robustness(model, batches, eps, attack_name=args.attack, steps=args.steps, bounds=bounds,
                              progress=progress)
    res.update({"model": {"id": pkg.id, "version": pkg.version}, "data": str(data), "split": args.split,
                "eps_units": "model input"})
    from ..io import check_output_dir
    out = check_output_dir(args.out, "--out")  # made by the first (atomic) write, so a failed run leaves none
    png = out / "robustness.png"
    save_curve_png(res, png, title=f"{pkg.id} {pkg.version}: {args.split} of {data.name}")
    js = out / "robustness.json"
    res["outputs"] = {"png": str(png), "json": str(js)}
    atomic_write_json(js, res)
    return {"json": str(js), "png": str(png), "clean": res["clean"], "robust": res["robust"]}
