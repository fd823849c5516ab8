"""The work of ``meddeeprecog robustness``: attack one scan or a labelled data set and write what was found.

One scan (:func:`scan_reports`): ``<name>_robustness.json`` (the label and confidence classify reports, the
network's probability of its clean top class, its top class and classify's reported label at each eps,
``smallest_flipping_eps`` (the smallest eps that changes that label) or null, ``smallest_top_class_change_eps`` (the
smallest eps of the list that changes the network's top class, which may leave the reported label as it was) or
null, the curve point where it flips, eps also in HU for CT),
``<name>_robustness.png`` (the curve) and optionally ``<name>_perturbation.nrrd`` (the perturbation at the flipping
eps, or the largest eps, on the scan's grid, in model input units). A data set (:func:`dataset_report`): clean vs robust accuracy /
balanced accuracy / AUC at each eps, ``robustness.json`` + ``robustness.png``.

eps is in the model's input units (e.g. 0..1 after intensity scaling); eps <= 0 or >= the input's valid range is
refused. Default eps: :data:`DEFAULT_EPS_FRACTIONS` of the valid range.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..contract import MASK_CONTENT
from ..errors import ConfigError
from ..progress import ProgressCallback, null_progress
from .attacks import Bounds, check_eps, parse_eps_list

#: the seed of the cases ``--max-cases`` draws: the same cases every run, so that runs compare
CASE_SEED = 0

#: Default attack budgets as fractions of the valid intensity range: 0.5 %, 1 %, 2 %, 5 % and 10 %.
DEFAULT_EPS_FRACTIONS = (0.005, 0.01, 0.02, 0.05, 0.1)


def eps_values(eps: Sequence[float | str] | None, bounds: Bounds) -> list[float]:
    """The attack budgets: ``eps`` as given (numbers or ``"0.01,0.02"`` texts), else :data:`DEFAULT_EPS_FRACTIONS`
    of the valid range; each checked against ``bounds``."""
    if eps:
        values = parse_eps_list(",".join(str(e) for e in eps))
    else:
        width = (bounds[1] - bounds[0]) if bounds else 1.0
        values = [f * width for f in DEFAULT_EPS_FRACTIONS]
    return [check_eps(e, bounds) for e in values]


def check_input_within(x, lo: float, hi: float) -> None:
    """Refuse ``--bounds`` that do not contain the clean model input: every attacked input is clipped to them, so the
    clip would move the scan itself by more than eps (a perturbation of -0.5 at eps 0.01) and the curve would
    measure that, not the attack."""
    x_lo, x_hi = float(x.min()), float(x.max())  # a tensor (one scan) or an array (a data set)
    slack = 1e-6 * max(1.0, hi - lo)
    if x_lo < lo - slack or x_hi > hi + slack:
        raise ConfigError(f"--bounds {lo:g} {hi:g} do not contain the model input, which runs from {x_lo:.4g} to "
                          f"{x_hi:.4g}: clipping to them would change the input by more than eps; widen them or "
                          "leave them to the package")


def input_bounds(bounds: Sequence[float] | None, spec: dict, x) -> tuple[float, float]:
    """The valid intensity range of the model input: ``bounds`` as given, else what the package's preprocessing
    fixes (:func:`.scan.pipeline_bounds`), else the input's own min/max."""
    from .scan import pipeline_bounds

    if bounds:
        lo, hi = (float(v) for v in bounds)
        if not hi > lo:
            raise ConfigError(f"--bounds must have LOW < HIGH, got {lo} {hi}")
        check_input_within(x, lo, hi)
        return lo, hi
    b = pipeline_bounds(spec)
    if b is not None:
        return b
    lo, hi = float(x.min()), float(x.max())
    if not hi > lo:
        raise ConfigError("the model input is constant, so no valid intensity range can be derived; give --bounds")
    return lo, hi


def scan_reports(model_ref: str | Path, scans: Sequence[str | Path], out: str | Path, *, attack: str = "pgd",
                 eps: Sequence[float | str] | None = None, steps: int = 10, bounds: Sequence[float] | None = None,
                 refine: int = 5, write_perturbation: bool = False, progress: ProgressCallback = null_progress,
                 on_record: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Attack each scan's prediction with growing eps and write its JSON, PNG (and perturbation) into ``out``.

    All or nothing: every scan is first prepared as classify prepares it (every refusal classify makes: unreadable,
    4D, a label map, too small, ...) and checked against ``bounds`` / ``eps``, then attacked, and only when all of
    them succeeded are the files written, so a bad scan anywhere in the list leaves no output of the others (a write
    that fails removes this call's files again). ``on_record(record)`` is called with each scan's record once every
    file is written. Returns the one scan's summary (``json``, ``png``, ``smallest_flipping_eps`` ...), or
    ``{"scans": [...]}`` for several.
    """
    from ..contract import output_stem
    from ..io import check_output_dir
    from ..io.geometry import Geometry
    from ..packages import load_package
    from .curve import scan_robustness
    from ..uncertainty.report import UNCALIBRATED_SCALE
    from ..inference.classify import out_of_domain_reason
    from .scan import decision_of, model_input_of, units_per_hu

    if int(steps) < 1:
        raise ConfigError(f"--steps must be >= 1, got {steps}")
    pkg = load_package(model_ref)
    out = check_output_dir(out, "--out")  # made by the first (atomic) write, so a failed run leaves none
    n = len(scans)
    prepared = []
    for i, scan in enumerate(scans):   # every refusal, for every scan, before any attack or write
        progress("prepare", 0.1 * i / n, case=output_stem(scan))
        res, x, forward = model_input_of(scan, pkg)
        valid = input_bounds(bounds, pkg.input_spec, x)
        budgets = eps_values(eps, valid)
        model_modality = pkg.meta.get("modality")
        # HU only where the input is a CT's intensities (the model's, else the scan's; a binary-mask package reads
        # shapes, not HU)
        reads = model_modality if model_modality in ("CT", "MR") else res.modality_guess
        in_hu = reads == "CT" and pkg.input_spec.get("content") != MASK_CONTENT
        units = units_per_hu(res.image, pkg, voting=res.voting, model_input=res.model_input) if in_hu else None
        geometry = Geometry.of(res.image)
        res.image = None  # the perturbation needs only the scan's grid: no scan's voxels wait for the others
        prepared.append({"scan": scan, "result": res, "x": x, "forward": forward, "valid": valid,
                         "budgets": budgets, "units": units, "geometry": geometry, "model_modality": model_modality})
    done = []
    for i, p in enumerate(prepared):
        def prog(stage, fraction, _i=i, _name=output_stem(p["scan"]), **extra):
            progress(stage, 0.1 + 0.8 * (_i + fraction) / n, case=_name, **extra)

        res, units = p["result"], p["units"]
        # a flip is a change of the label classify reports; outside the domain it reports none whatever the attack
        # does (the domain and the modality are the clean scan's), so the network's top class is followed there
        judge = (None if out_of_domain_reason(res.decision) is not None
                 else (lambda x, _res=res, _fwd=p["forward"]: decision_of(_res, pkg, _fwd, x)))
        record, deltas = scan_robustness(p["forward"], p["x"], p["budgets"], attack_name=attack, steps=steps,
                                         bounds=p["valid"], refine_steps=refine, class_names=pkg.class_names,
                                         judge=judge, progress=prog)
        mark_out_of_domain(record, res.decision)
        record.update({"input": str(p["scan"]), "model": {"id": pkg.id, "version": pkg.version},
                       "eps_units": "model input", "model_modality": p["model_modality"],
                       "probability_means": "'probability' and 'clean_probability': the network's scan probability "
                                            "of the clean top class (classify's 'probabilities', before the "
                                            "package's temperature), not classify's confidence",
                       "scan_modality": res.modality_guess,   # classify's guess: DICOM tag, else HU or not
                       "hu_per_unit": None if units is None else 1.0 / units,
                       **({"probability_scale": f"{UNCALIBRATED_SCALE} (classify reports calibrated probabilities)"}
                          if (pkg.meta.get("calibration") or {}).get("temperature") else {})})
        if units is not None:
            for point in record["curve"] + ([record["flip"]] if record["flip"] else []):
                point["eps_hu"] = point["eps"] / units
            for key in ("smallest_flipping_eps", "smallest_top_class_change_eps"):
                if record.get(key) is not None:
                    record[f"{key}_hu"] = record[key] / units
        delta = None
        if write_perturbation:
            e = record["smallest_flipping_eps"] if record["smallest_flipping_eps"] is not None else max(p["budgets"])
            record["perturbation_eps"] = e
            delta = deltas[e]
        done.append((p, record, delta))
    results = write_scan_reports(pkg, out, done, progress)
    if on_record is not None:
        for _, record, _ in done:
            on_record(record)
    return results[0] if len(results) == 1 else {"scans": results}


def write_scan_reports(pkg, out: Path, done: list, progress: ProgressCallback = null_progress
                       ) -> list[dict[str, Any]]:
    """Write each attacked scan's PNG (and perturbation) and then its JSON into ``out``, all or nothing: when a write
    fails, the files this call wrote are removed again, and so is ``out`` when this call made it. Each scan's files
    take the first free version of its name (an earlier run's files, and a user's, are kept; so are the ones of an
    earlier scan of this call with the same name), chosen just before they are written. ``done``: ``(prepared,
    record, delta or None)`` per scan, as :func:`scan_reports` makes them. Returns each scan's summary."""
    from ..contract import output_file, output_stem
    from ..io import atomic_write_json, free_version, write_image
    from .curve import save_curve_png
    from .scan import perturbation_on_scan

    roles = ("robustness_png", "perturbation", "robustness")
    had_dir = out.exists()
    written: list[Path] = []
    results = []
    try:
        for i, (p, record, delta) in enumerate(done):
            name = free_version(out, output_stem(p["scan"]), lambda stem: [output_file(stem, r) for r in roles])
            progress("write", 0.9 + 0.1 * i / len(done), case=name)
            units = p["units"]
            outputs = {}
            png = out / output_file(name, "robustness_png")
            guess = " (out-of-domain: the class is a guess)" if "out_of_domain" in record else ""
            save_curve_png(record, png, title=f"{pkg.id} {pkg.version} on {name}{guess}")
            written.append(png)   # each write is atomic: a file is listed once it is there, complete, and ours
            outputs["png"] = str(png)
            if delta is not None:
                vol = out / output_file(name, "perturbation")
                write_image(perturbation_on_scan(delta, p["result"], p["geometry"]), vol)
                written.append(vol)
                outputs["perturbation"] = str(vol)
            js = out / output_file(name, "robustness")
            record["outputs"] = {**outputs, "json": str(js)}
            atomic_write_json(js, record)
            written.append(js)
            results.append({"input": str(p["scan"]), "json": str(js), **outputs,
                            **({"out_of_domain": record["out_of_domain"]} if "out_of_domain" in record else {}),
                            "smallest_flipping_eps": record["smallest_flipping_eps"],
                            "smallest_top_class_change_eps": record.get("smallest_top_class_change_eps"),
                            **({"smallest_flipping_eps_hu": record.get("smallest_flipping_eps_hu"),
                                "hu_per_unit": record["hu_per_unit"]} if units is not None else {})})
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        if not had_dir:
            try:
                out.rmdir()
            except OSError:
                pass
        raise
    return results


def mark_out_of_domain(record: dict[str, Any], decision: dict) -> None:
    """Carry classify's judgement of the scan into its robustness record: for a scan classify reports no class for
    (:func:`..inference.classify.out_of_domain_reason`), ``clean_label`` is ``out-of-domain`` and
    ``out_of_domain`` says why; ``top_class`` stays the class the network's output favours, whose probability the
    curve follows (a guess outside the domain, and so is how far an attack moves it)."""
    from ..inference.classify import OUT_OF_DOMAIN, out_of_domain_reason
    from .curve import FLIP_OF_TOP_CLASS

    why = out_of_domain_reason(decision)
    if why is not None:
        record.update({"clean_label": OUT_OF_DOMAIN, "out_of_domain": why,
                       "flip_means": f"{FLIP_OF_TOP_CLASS}: classify reports {OUT_OF_DOMAIN} for this scan "
                                     "whatever the attack does (its domain and modality stay the clean scan's)"})


def _eps_text(eps: float, point: dict | None = None, per_unit: float | None = None) -> str:
    """``0.02 (5.1 HU)`` for CT, ``0.02`` (model input units) otherwise."""
    hu = (point or {}).get("eps_hu", eps * per_unit if per_unit else None)
    return f"{eps:.4g} ({hu:.1f} HU)" if hu is not None else f"{eps:.4g}"


def scan_lines(record: dict[str, Any]) -> str:
    """The attack on one scan as text: eps in model units and, for CT, in HU; at each eps the network's probability
    of the clean top class and what classify reports (its label and confidence, as its own first line says them)."""
    from ..inference.classify import decision_headline

    per_unit = record.get("hu_per_unit")
    unit = "model input units (HU in brackets)" if per_unit else "model input units"
    top = record.get("top_class", record["clean_label"])
    reported = "clean_confidence" in record  # flips compare classify's reported label (else the top class)

    def said(point: dict) -> str:
        return decision_headline(point) if "confidence" in point else str(point.get("label", ""))

    if record.get("out_of_domain"):
        lines = [f"{record['input']}: {record['clean_label']}: {record['out_of_domain']}",
                 f"  the network's top class {top} p={record['clean_probability']:.3f} is a guess, and so is how far "
                 f"an attack moves it; {record['attack']} eps in {unit}"]
    elif reported:
        clean = {"label": record["clean_label"], "top_class": top, "confidence": record["clean_confidence"]}
        why = "; ".join(record.get("clean_uncertain_reasons") or [])
        lines = [f"{record['input']}: {decision_headline(clean)}{f' [{why}]' if why else ''}",
                 f"  {record['attack']} eps in {unit}; p({top}): the network's scan probability of {top} (before the "
                 "decision rules); after the arrow: what classify reports"]
    else:
        lines = [f"{record['input']}: {top} p={record['clean_probability']:.3f}; {record['attack']} eps in {unit}"]
    for point in record["curve"]:
        lines.append(f"  eps {_eps_text(point['eps'], point)}: p({top})={point['probability']:.3f} -> {said(point)}")
    flip = record.get("smallest_flipping_eps")
    what = f"changes the label classify reports ({record['clean_label']})" if reported else "flips the label"
    lines.append(f"  smallest eps that {what}: {_eps_text(flip, None, per_unit)}"
                 + (f" -> {said(record['flip'])}" if reported and record.get("flip") else "") if flip is not None
                 else f"  no eps tried {'changes the label classify reports' if reported else 'flips the label'}")
    line = top_class_change_line(record)
    if line:
        lines.append(line)
    return "\n".join(lines)


def top_class_change_line(record: dict[str, Any]) -> str:
    """The sentence for a network top class that changes while the label classify reports does not (at the eps
    where it first changes): no flip by the rule (a flip changes the reported label), but not robustness either.
    Empty when the top class never changes, or when the reported label has changed by then."""
    if "clean_confidence" not in record or record.get("out_of_domain"):
        return ""
    change = record.get("smallest_top_class_change_eps")
    if change is None:
        return ""
    flip = record.get("smallest_flipping_eps")
    if flip is not None and flip <= change:
        return ""
    point = next(p for p in record["curve"] if p["eps"] == change)
    if point["label"] != record["clean_label"]:
        return ""
    hu = point.get("eps_hu")
    at = f"{change:.4g}" + (f" ({hu:.0f} HU)" if hu is not None else "")
    return (f"  the network's top class changes from {record.get('top_class')} to {point['top_class']} at eps {at}, "
            f"but both calls are {record['clean_label']}")


def dataset_report(model_ref: str | Path, data: str | Path, out: str | Path, *, split: str = "val",
                   attack: str = "pgd", eps: Sequence[float | str] | None = None, steps: int = 10,
                   bounds: Sequence[float] | None = None, max_cases: int | None = None, batch_size: int = 32,
                   progress: ProgressCallback = null_progress) -> dict[str, Any]:
    """Clean vs robust metrics of a package on ``split`` of a labelled ``.npz`` (prepared as ``evaluate``
    prepares it); writes ``robustness.json`` and ``robustness.png`` into ``out``.

    ``max_cases``: at most that many cases, as even over the classes as their counts allow and drawn with a fixed
    seed (:func:`..training.data.even_class_sample`); ``"cases"`` in the output says how they were chosen."""
    import torch

    from ..io import atomic_write_json, check_output_dir, free_version
    from ..packages import load_package
    from ..training.data import even_class_sample, load_package_split
    from .curve import evaluate_robustness, save_curve_png

    if int(steps) < 1:
        raise ConfigError(f"--steps must be >= 1, got {steps}")
    pkg = load_package(model_ref)
    data = Path(data)
    if not data.exists():   # a .npz, or an image folder with its labels CSV as train reads it
        raise ConfigError("data not found", data)
    ds = load_package_split(pkg, data, split)
    x, y = ds.images, ds.labels
    if len(y) == 0:
        raise ConfigError(f"split {split!r} is empty", data)
    k = len(pkg.class_names)
    if y.min() < 0 or y.max() >= k:
        raise ConfigError(f"labels range {y.min()}..{y.max()} does not fit the model's {k} classes "
                          f"{pkg.class_names}", data)
    keep = even_class_sample(y, max_cases or len(y), seed=CASE_SEED)
    cases = chosen_cases(y, keep, pkg.class_names, max_cases)
    if len(keep) < len(y):
        x, y = x[keep], y[keep]
    out = check_output_dir(out, "--out")  # before the attack; made by the first (atomic) write
    version = free_version(out, "", lambda v: [f"robustness{v}.json", f"robustness{v}.png"])  # earlier ones kept
    pkg.check_input(torch.as_tensor(x[:1]), data)
    model = pkg.build_model("cpu")
    valid = (tuple(float(v) for v in bounds) if bounds else
             ((0.0, 1.0) if pkg.data_params()[0] is not None else (float(np.min(x)), float(np.max(x)))))
    if bounds:
        check_input_within(x, *valid)
    budgets = eps_values(eps, valid)
    bs = max(1, int(batch_size))
    batches = [(torch.from_numpy(x[i:i + bs]), torch.from_numpy(y[i:i + bs])) for i in range(0, len(y), bs)]
    res = evaluate_robustness(model, batches, budgets, attack_name=attack, steps=steps, bounds=valid,
                              progress=progress, class_names=pkg.class_names)
    res.update({"model": {"id": pkg.id, "version": pkg.version}, "data": str(data), "split": split,
                "eps_units": "model input", "cases": cases})
    add_eps_conversion(res, pkg.input_spec, pkg.meta.get("modality"))
    png = out / f"robustness{version}.png"
    how = f"{attack.upper()}" + (f"-{res['steps']}" if attack == "pgd" else "")
    save_curve_png(res, png, title=f"{pkg.id} {pkg.version}: {split} of {data.name}\n"
                                   f"n = {cases['n']} of {cases['of']} cases, {how}")
    js = out / f"robustness{version}.json"
    res["outputs"] = {"png": str(png), "json": str(js)}
    atomic_write_json(js, res)
    summary = {"json": str(js), "png": str(png), "attack": res["attack"], "steps": res["steps"], "split": split,
               "n": cases["n"], "of": cases["of"], "cases": cases, "eps_conversion": res["eps_conversion"],
               "clean": res["clean"], "robust": res["robust"]}
    return {**summary, "note": res["note"]} if "note" in res else summary


def add_eps_conversion(res: dict[str, Any], spec: dict, modality: str | None) -> None:
    """Give a data-set result's eps also in the scan's units where the package's input defines the conversion
    (:func:`.scan.eps_conversion`: HU for a CT model, as ``--input`` gives them), else say there is none:
    ``eps_conversion`` (how), ``eps_per_unit`` / ``eps_unit`` and per point ``eps_converted`` (``eps_hu`` for HU;
    ``hu_per_unit`` puts an HU axis on the plot)."""
    from .scan import eps_conversion

    conv = eps_conversion(spec, modality)
    res["eps_conversion"] = conv["how"]
    res["eps_per_unit"], res["eps_unit"] = conv["per_unit"], conv["unit"]
    if conv["per_unit"] is None:
        return
    for point in res["robust"]:
        point["eps_converted"] = point["eps"] * conv["per_unit"]
        if conv["unit"] == "HU":
            point["eps_hu"] = point["eps_converted"]
    if conv["unit"] == "HU":
        res["hu_per_unit"] = conv["per_unit"]


def chosen_cases(labels: np.ndarray, keep: np.ndarray, class_names: Sequence[str], max_cases: int | None
                 ) -> dict[str, Any]:
    """How the cases of a data-set report were chosen, for its JSON: the rule, and per class the cases taken of
    those the split holds."""
    taken = np.bincount(labels[keep], minlength=len(class_names))
    held = np.bincount(labels, minlength=len(class_names))
    per_class = {name: {"used": int(taken[i]), "of": int(held[i])} for i, name in enumerate(class_names)}
    if len(keep) == len(labels):
        return {"n": int(len(keep)), "of": int(len(labels)), "chosen": "all cases of the split", "per_class": per_class}
    return {"n": int(len(keep)), "of": int(len(labels)), "per_class": per_class, "seed": CASE_SEED,
            "chosen": f"--max-cases {max_cases}: as even over the classes as their counts allow, drawn at random "
                      f"within each class (seed {CASE_SEED}, the same every run)"}
