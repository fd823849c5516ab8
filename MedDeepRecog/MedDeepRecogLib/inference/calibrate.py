"""``calibrate_package``: fit a package's calibration on held-out data and write it as a NEW package version.

The source package is never edited (``meddeeprecog calibrate`` is the one command behind this). Three things can
be fitted, together or apart:

- **temperature scaling** and the **low-confidence threshold** (default): the new ``model.json`` gets::

      "calibration": {"temperature", "ece_before", "ece_after", "nll_before", "nll_after", "n_bins",
                      "low_confidence_threshold", "low_confidence_rate", "split", "data", "n", ...}

  and the model card a "Calibration" section plus ``reliability.png`` (reliability diagram before/after);
- the **low-confidence threshold alone** (``low_confidence`` with ``temperature=False``; ``--no-temperature
  --low-confidence``): the same threshold (:func:`..uncertainty.calibration.low_confidence_threshold`: Youden's J
  for telling wrong calls from right ones by their normalised predictive entropy) fitted on the network's own
  probabilities, which stay as they are; ``"calibration"`` then has no ``temperature``, only
  ``low_confidence_threshold`` and how it was chosen, with ``figures`` of the report split as classify would report
  them (images the out-of-domain check flags get no class and are left out of the fit: the flag never applies to
  them); the model card gets a "Low-confidence threshold" section;
- **decision rules** (``decision_rules``, ``--decision-rules RULES.json``): ``min_probability``, the "uncertain"
  threshold, is set to the ``quantile`` (default 2 %) of the correct held-out calls' probability, rounded down to a
  multiple of 0.05 (the probability classify compares: for a slice model on a volume, the voting slices' mean
  probability of the scan's class; cases the out-of-domain check flags get no class and are left out), and
  written with the other rules of the file (``min_agreement``, ``volume_excluded_classes``, ``class_modality``,
  ``min_section_mm``; see ``inference.predict.decide``) as ``"decision"``, with how it was chosen; the model card gets a "Decision rules (calibrated)" section. A new temperature without new rules
  chooses the parent's ``min_probability`` again, on the new scale, with the parent's rules and quantile;
- the **out-of-domain threshold** (``domain_quantile``, ``--domain-quantile Q``): moved to quantile Q of the split's
  distances (the check's statistics are kept), the other data sets of ``--domain-negatives CONFIG`` measured there;
  ``domain.chosen_on`` records how, and the card's out-of-domain section is rewritten.

The new version is the parent's next free patch version unless ``--version`` names one that no catalog holds; the
card says under its title what was fitted after training and on which split. The package's own training split is
refused as fitting data.

Validation data: a MedMNIST-style ``.npz`` split or an image folder with its labels CSV as ``train`` reads it (both
prepared as ``meddeeprecog evaluate`` prepares them), or a CSV of scans (a file column, e.g. ``path`` or ``file``,
and ``label``: the columns train's labels CSV has; each scan prepared and predicted exactly as ``classify`` does,
slice models aggregated).
The weights are copied unchanged.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

import numpy as np
from pydantic import Field

from ..errors import ConfigError
from ..progress import ProgressCallback, null_progress
from ..schema import List, NonNegFloat, load_mapping, read_config
from ..uncertainty.calibration import (expected_calibration_error, fit_temperature, low_confidence_threshold,
                                       normalized_entropy, softmax)
from ..uncertainty.report import calibrated_probabilities, package_temperature


def _npz_split(pkg, path: Path, split: str):
    """``split`` of a labelled ``.npz`` as an ``ArrayDataset``, prepared as ``evaluate`` prepares it (images
    ``(N, C, ...)`` standardised as in training and classify)."""
    import torch

    from ..training.data import load_package_split

    ds = load_package_split(pkg, path, split)
    if len(ds) == 0:
        raise ConfigError(f"split {split!r} is empty", path)
    pkg.check_input(torch.as_tensor(ds.images[:1]), path)
    return ds


def _npz_logits(pkg, path: Path, split: str, batch_size: int = 64, features: bool = False
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Logits and labels of ``split`` of a labelled ``.npz``, prepared as ``evaluate`` prepares it; with
    ``features`` also the penultimate features ``(N, D)`` the out-of-domain check scores, from the same pass."""
    import contextlib

    import torch

    from ..uncertainty.domain import capture_features

    ds = _npz_split(pkg, path, split)
    model = pkg.build_model("cpu")
    out = []
    with torch.no_grad(), capture_features(model) if features else contextlib.nullcontext() as store:
        for i in range(0, len(ds), batch_size):
            out.append(model(torch.as_tensor(ds.images[i:i + batch_size])).float().numpy())
    return np.concatenate(out), ds.labels, (store.array() if features else None)


def _report_split_logits(pkg, data: Path, report_split: str, features: bool = False
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """:func:`_npz_logits` of ``--report-split``, whose labels must be the model's classes."""
    logits, labels, split_features = _npz_logits(pkg, data, report_split, features=features)
    k = len(pkg.class_names)
    if labels.max() >= k or labels.min() < 0:
        raise ConfigError(f"labels of split {report_split!r} do not fit the model's {k} classes", data)
    return logits, labels, split_features


def _refuse_training_split(pkg, data: Path, split: str, option: str = "--split") -> None:
    """Refuse fitting on, or reporting on (``option`` ``--report-split``), the split the package was trained on
    (:func:`..training.data.holds_training_rows`). A network's scores on its own training images are not those of
    unseen ones: a threshold or temperature fitted there fails on real images, and figures reported there flatter
    it."""
    from ..training.data import holds_training_rows

    held = holds_training_rows(pkg, data, split)
    if held:
        verb = "report on" if option == "--report-split" else "fit on"
        raise ConfigError(f"{option} {split!r}: this split of the file {held} what {pkg.id}@{pkg.version} was trained "
                          f"on: scores on training images are not those of unseen ones; {verb} held-out data "
                          f"(e.g. {option} val)", data)


def _npz_split_exists(pkg, path: Path, split: str) -> None:
    """Refuse a split the ``.npz`` does not hold, by ``load_eval_split``'s rule, before any prediction."""
    from ..training.data import eval_split_source, open_npz, package_val_fraction

    if path.is_dir():   # an image folder: its labels CSV's split is checked as it is read
        return
    eval_split_source(open_npz(path), split, path, package_val_fraction(pkg))


def _csv_logits(pkg, path: Path, progress: ProgressCallback
                ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray | None], np.ndarray]:
    """Each CSV scan classified as ``classify`` does: ``(logits (N, K), labels (N,), voting logits, in_domain (N,))``.

    ``voting logits``: per scan, a slice model's logits ``(V, K)`` of the slices whose mean probability the
    ``min_probability`` rule compares (:func:`.predict.slice_confidence`), else ``None``. ``in_domain``: false for a
    scan ``classify`` reports outside the model's domain."""
    from .classify import OUT_OF_DOMAIN, classify_scan

    from ..training.data import labels_csv_columns

    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ConfigError("a calibration CSV needs a header (a file column and a label column) and at least one "
                          "row", path)
    fcol, lcol = labels_csv_columns(list(rows[0]), path)   # the labels CSV columns train reads
    names = pkg.class_names
    # classify's probabilities are temperature-scaled when the package is calibrated: T * log p gives the raw
    # logits back (up to a constant, which softmax ignores), so a temperature is fitted on the network's own output
    t = package_temperature(pkg.meta)
    logits, labels, voting, in_domain = [], [], [], []
    for i, row in enumerate(rows):
        label = str(row[lcol] or "").strip()
        if label not in names:
            raise ConfigError(f"line {i + 2}: label {label!r} is not one of the model's classes {names}", path)
        scan = Path(row[fcol]) if Path(row[fcol]).is_absolute() else path.parent / row[fcol]
        res = classify_scan(scan, pkg, explain="none", device="cpu")
        logits.append(t * np.log(np.clip(np.asarray(res.probabilities, dtype=np.float64), 1e-12, 1.0)))
        labels.append(names.index(label))
        voting.append(res.voting_logits)
        in_domain.append(res.label != OUT_OF_DOMAIN)
        progress("predict", 0.8 * (i + 1) / len(rows), case=res.name)
    return np.stack(logits), np.asarray(labels), voting, np.asarray(in_domain, dtype=bool)


def reliability_png(probs_before: np.ndarray, probs_after: np.ndarray, labels: np.ndarray, path: Path,
                    n_bins: int = 10, title: str = "") -> Path:
    """Reliability diagram (accuracy vs confidence per bin) before and after temperature scaling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_save_figure

    fig, ax = plt.subplots(figsize=(4.5, 4), dpi=100)
    edges = np.linspace(0, 1, n_bins + 1)
    for probs, name, style in ((probs_before, "before", "o--"), (probs_after, "after", "s-")):
        conf, correct = probs.max(1), probs.argmax(1) == labels
        idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
        xs = [conf[idx == b].mean() for b in range(n_bins) if (idx == b).any()]
        ys = [correct[idx == b].mean() for b in range(n_bins) if (idx == b).any()]
        ax.plot(xs, ys, style, label=f"{name} (ECE {expected_calibration_error(probs, labels, n_bins):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return atomic_save_figure(fig, path)


def choose_min_probability(top_probability: np.ndarray, correct: np.ndarray, quantile: float = 0.02) -> float:
    """The ``quantile`` of the correct calls' top probability, rounded down to a multiple of 0.05 (at least 0.05)."""
    if not correct.any():
        raise ConfigError("no held-out case is classified correctly, so no probability threshold can be chosen")
    q = float(np.quantile(top_probability[correct], quantile))
    return max(0.05, np.floor(q * 20) / 20)


@dataclasses.dataclass
class DecisionRules:
    """The decision rules a rules file may give, all optional (``min_probability`` is chosen on the data here; what
    each rule does: ``inference.predict.decide``).

    ``min_agreement``: fraction of voting slices, 0 to 1; ``volume_excluded_classes``: class names;
    ``class_modality``: ``{class name: "CT" | "MR"}``; ``min_section_mm``: mm, 0 to 1000."""

    min_agreement: Annotated[NonNegFloat, Field(le=1)] | None = None
    volume_excluded_classes: List(str) | None = None
    class_modality: dict[str, Literal["CT", "MR"]] | None = None
    min_section_mm: Annotated[NonNegFloat, Field(le=1000)] | None = None


def read_decision_rules(rules: Mapping[str, Any] | str | Path, class_names: list[str]) -> dict[str, Any]:
    """``rules`` (a mapping, or a JSON/YAML file named in every error) checked against :class:`DecisionRules` and
    the model's ``class_names`` (a class the model lacks, a typo, would leave its rule silently unused); returns
    the rules as given."""
    source = None
    if isinstance(rules, (str, Path)):
        source = Path(rules)
        rules = load_mapping(source, "decision rules file")
    if isinstance(rules, Mapping) and "min_probability" in rules:
        raise ConfigError("decision rule min_probability is chosen on the data by calibrate (--quantile): leave it "
                          "out of the rules", source)
    read_config(DecisionRules, rules, source, noun="decision rule")
    named = [*(rules.get("volume_excluded_classes") or []), *(rules.get("class_modality") or {})]
    unknown = [name for name in named if name not in class_names]
    if unknown:
        raise ConfigError(f"decision rules name class {unknown[0]!r}, which the model does not have (its classes: "
                          f"{', '.join(class_names)})", source)
    return dict(rules)


def decision_block(probabilities: np.ndarray, labels: np.ndarray, rules: Mapping[str, Any], *, quantile: float,
                   data: Path, split: str, command: str, confidence: np.ndarray | None = None,
                   in_domain: np.ndarray | None = None) -> dict[str, Any]:
    """``model.json["decision"]``: ``rules`` (checked by :func:`read_decision_rules`) plus ``min_probability``
    chosen on held-out ``probabilities`` ``(N, K)`` (those classify reports: temperature-scaled when the package
    is calibrated) and how it was chosen.

    ``confidence`` ``(N,)``: what classify compares with ``min_probability`` (default: the top probability; for a
    slice model on a volume, the voting slices' mean probability of the scan's class). ``in_domain`` ``(N,)``: the
    cases the out-of-domain check lets through; classify gives the others no class, so the rule never sees them and
    they are left out of the choice and of the figures (``chosen_on.out_of_domain`` counts them, when any)."""
    if not 0.0 <= quantile < 1.0:
        raise ConfigError(f"--quantile must be in [0, 1), got {quantile}")
    kept = np.ones(len(labels), bool) if in_domain is None else np.asarray(in_domain, bool)
    if not kept.any():
        raise ConfigError("every held-out case is flagged outside the model's domain, so no probability threshold "
                          "can be chosen", data)
    top = (probabilities.max(1) if confidence is None else np.asarray(confidence, dtype=np.float64))[kept]
    correct = (probabilities.argmax(1) == labels)[kept]
    threshold = choose_min_probability(top, correct, quantile)
    wrong = ~correct
    passed_correct = float((top[correct] >= threshold).mean())
    flagged_wrong = float((top[wrong] < threshold).mean()) if wrong.any() else None
    chosen_on = {"data": data.name, "split": split, "n": int(kept.sum()),
                 "accuracy": round(float(correct.mean()), 4), "quantile_of_correct": quantile,
                 "correct_passing": round(passed_correct, 4),
                 "wrong_flagged": None if flagged_wrong is None else round(flagged_wrong, 4), "command": command}
    if not kept.all():  # recorded when cases were left out (absent: none was)
        chosen_on = {**dict(list(chosen_on.items())[:3]), "out_of_domain": int((~kept).sum()),
                     **dict(list(chosen_on.items())[3:])}
    return {**dict(rules), "min_probability": threshold, "chosen_on": chosen_on}


def calibrate_package(model_ref: str | Path, data: str | Path, *, split: str = "val", dest: str | Path | None = None,
                      version: str | None = None, n_bins: int = 10, progress: ProgressCallback = null_progress,
                      command: str | None = None, report_split: str | None = None, temperature: bool = True,
                      decision_rules: Mapping[str, Any] | str | Path | None = None,
                      quantile: float | None = None, domain_quantile: float | None = None,
                      domain_negatives: str | Path | None = None, low_confidence: bool = False) -> dict[str, Any]:
    """Fit the package's calibration on ``split`` of ``data``; write a new package version.

    Args:
        model_ref: package id / id@version / folder / zip.
        data: ``.npz`` or image folder with a labels CSV (``split`` is used) or ``.csv`` of scans with a file
            column (:data:`..training.data.FILE_COLUMNS`) and ``label`` (every row is used).
        split: the split the temperature, the low-confidence threshold and ``min_probability`` are fitted on.
        report_split: the split the ECE / NLL / flag-rate figures (or, with ``low_confidence``, the threshold's
            figures) are reported on (``.npz`` only; default
            ``split``: then ``calibration.same_split`` is true and ``calibration.note`` says the "after" figures
            are optimistic).
        dest: catalog root for the new version (default: the user catalog).
        version: version of the new package (default: the next free patch version).
        temperature: fit temperature scaling and the low-confidence threshold (``calibration`` block).
        low_confidence: with ``temperature=False``: fit the low-confidence threshold alone, on the probabilities as
            they are (a ``calibration`` block without a temperature; the parent must have none).
        decision_rules: write a ``decision`` block: these rules (a mapping, or a JSON/YAML file; checked by
            :func:`read_decision_rules` before any prediction) plus ``min_probability`` at ``quantile`` of the
            correct calls' probability (see the module docstring).
        domain_quantile: move the out-of-domain threshold to this quantile of ``split``'s scores (``.npz`` only;
            the package's check statistics are kept, :func:`..training.domain.rethreshold_domain`).
        domain_negatives: a train config whose ``domain/negatives`` are measured at the new threshold.

        quantile: with ``decision_rules``: the quantile of the correct calls' probability ``min_probability`` is
            set at (default 0.02; refused without rules).

    Returns:
        ``{"package": new folder, "id", "version", "parent", "calibration": {...} or None, "decision": {...} or
        None, "domain": the new out-of-domain block (without its file checksum) or None}``.

    Raises:
        ConfigError: nothing to fit, missing or unusable data, too few cases.
    """
    import tempfile

    from ..packages import catalogs_with, check_version, derived_version, load_package, save_package

    # what the options ask for, before anything is read
    if domain_negatives is not None and domain_quantile is None:
        raise ConfigError("--domain-negatives measures the negatives at a new out-of-domain threshold: give "
                          "--domain-quantile Q with it")
    if low_confidence and temperature:
        raise ConfigError("--low-confidence fits the low-confidence threshold on the probabilities as they are: give "
                          "it with --no-temperature (a temperature fit writes a threshold of its own)")
    if not temperature and not low_confidence and decision_rules is None and domain_quantile is None:
        raise ConfigError("nothing to calibrate: drop --no-temperature, or give --low-confidence, --decision-rules "
                          "RULES or --domain-quantile Q")
    if report_split is not None and not temperature and not low_confidence:
        raise ConfigError("--report-split is where the temperature's (or --low-confidence's) figures are reported: "
                          "it does nothing with --no-temperature alone (drop one of them)")
    if quantile is not None and decision_rules is None:
        raise ConfigError("--quantile chooses the decision rules' min_probability: give --decision-rules RULES with "
                          "it")
    if version is not None:
        check_version(version, "--version")
    quantile = 0.02 if quantile is None else quantile
    if not 0.0 <= quantile < 1.0:  # NaN too
        raise ConfigError(f"--quantile must be in [0, 1), got {quantile}")
    if domain_quantile is not None and (isinstance(domain_quantile, bool)
                                        or not isinstance(domain_quantile, (int, float))
                                        or not 0.5 <= float(domain_quantile) < 1.0):
        raise ConfigError(f"--domain-quantile must be a number in [0.5, 1), got {domain_quantile!r}")
    data = Path(data)
    if not data.exists():
        raise ConfigError("calibration data not found", data)
    csv_data = data.suffix.lower() == ".csv"
    if csv_data and report_split is not None:
        raise ConfigError("--report-split picks a split of an .npz; a CSV is one set (every row): give the "
                          "report data as another .npz, or drop --report-split", data)
    if csv_data and domain_quantile is not None:
        raise ConfigError("--domain-quantile sets the threshold on an .npz split (images as in training); a "
                          "CSV of scans is not supported for it", data)
    negatives = None
    if domain_negatives is not None:
        from ..training.domain import check_domain_block

        domain_negatives = Path(domain_negatives)
        block = load_mapping(domain_negatives, "train config").get("domain")
        if block is not None and not isinstance(block, Mapping):
            raise ConfigError("domain must be a mapping {quantile, negatives}", domain_negatives)
        negatives = (block or {}).get("negatives")
        if not negatives:
            raise ConfigError("no domain/negatives in this config to measure", domain_negatives)
        check_domain_block({"negatives": negatives}, domain_negatives)
    pkg = load_package(model_ref)
    if domain_quantile is not None:
        from ..training.domain import require_domain_check

        require_domain_check(pkg)
    if low_confidence and (pkg.meta.get("calibration") or {}).get("temperature") is not None:
        raise ConfigError(f"{pkg.id}@{pkg.version} has a temperature ({package_temperature(pkg.meta):g}), whose "
                          "low-confidence threshold was fitted with it: refit both (drop --no-temperature and "
                          "--low-confidence)")
    if decision_rules is not None:
        decision_rules = read_decision_rules(decision_rules, pkg.class_names)
    elif temperature and (pkg.meta.get("decision") or {}).get("chosen_on"):
        # the parent's min_probability was chosen at its temperature: choose it again at the new one, with the
        # parent's other rules and quantile
        parent_rules = pkg.meta["decision"]
        decision_rules = {k: v for k, v in parent_rules.items() if k not in ("min_probability", "chosen_on")}
        quantile = float(parent_rules["chosen_on"].get("quantile_of_correct", quantile))
    if not csv_data:
        _refuse_training_split(pkg, data, split)
    roots = catalogs_with(dest)
    if roots[0].exists() and not roots[0].is_dir():
        raise ConfigError("--dest is a file, not a catalog folder", roots[0])
    version = derived_version(pkg.id, pkg.version, version, roots)
    negative_images = None
    if negatives:  # read before any prediction: a bad negative set is refused first
        from ..training.domain import negative_image_sets

        _, size = pkg.data_params()
        negative_images = negative_image_sets(negatives, pkg.input_spec.get("slices") or {}, list(size),
                                              domain_negatives)
    command = command or " ".join(shlex.quote(a) for a in ["meddeeprecog", *sys.argv[1:]])
    progress("predict", 0.0)
    voting, in_domain, split_features = None, None, None
    if csv_data:
        logits, labels, voting, in_domain = _csv_logits(pkg, data, progress)
        split_desc = "all rows of the CSV"
    else:
        if report_split is not None:
            _npz_split_exists(pkg, data, report_split)
            _refuse_training_split(pkg, data, report_split, "--report-split")
        with_features = domain_quantile is not None or ((decision_rules is not None or low_confidence)
                                                        and pkg.domain is not None)
        logits, labels, split_features = _npz_logits(pkg, data, split, features=with_features)
        split_desc = split
    k = len(pkg.class_names)
    if labels.max() >= k or labels.min() < 0:
        raise ConfigError(f"labels {labels.min()}..{labels.max()} do not fit the model's {k} classes", data)
    if len(labels) < 10:
        raise ConfigError(f"only {len(labels)} validation cases: too few to calibrate (need >= 10)", data)
    if len(np.unique(labels)) < 2:
        raise ConfigError(f"every case is of class {pkg.class_names[int(labels[0])]!r}: calibration needs held-out "
                          "cases of at least two classes", data)
    meta = copy.deepcopy(pkg.meta)
    cal, plots = None, None
    if temperature:
        progress("fit temperature", 0.85)
        cal, plots = _fit_temperature(pkg, data, logits, labels, split, split_desc, report_split, n_bins, progress)
        meta["calibration"] = cal
    if domain_quantile is not None:
        from ..training.domain import rethreshold_domain

        progress("out-of-domain threshold", 0.9)
        domain = rethreshold_domain(pkg, split_features, domain_quantile, negative_images)
        domain["chosen_on"] = {"data": data.name, "split": split, "n": int(len(labels)),
                               "parent_threshold": pkg.meta["domain"]["threshold"],
                               "parent_quantile": pkg.meta["domain"].get("quantile"), "command": command}
        meta["domain"] = domain
    if low_confidence:
        progress("low-confidence threshold", 0.92)
        meta["calibration"] = low_confidence_block(
            pkg, meta, data, logits, labels, _in_domain(pkg, meta, split_features, in_domain), split_desc,
            report_split, command)
    decision = None
    if decision_rules is not None:
        probabilities = calibrated_probabilities(logits, meta)
        confidence = None
        if voting is not None and any(v is not None for v in voting):
            from .predict import slice_confidence

            t_new = package_temperature(meta)
            confidence = np.array([p.max() if v is None else slice_confidence(v, int(p.argmax()), t_new)
                                   for p, v in zip(probabilities, voting)])
        decision = decision_block(probabilities, labels, decision_rules, quantile=quantile, data=data,
                                  split=split_desc, command=command, confidence=confidence,
                                  in_domain=_in_domain(pkg, meta, split_features, in_domain))
        meta["decision"] = decision

    meta.pop("weights", None)
    meta["version"] = version
    metrics = meta.get("metrics")
    old_selected_by = metrics.get("selected_by") if isinstance(metrics, dict) else None
    if old_selected_by is not None:
        # the weights were chosen without that split, but this version's calibration was fitted on it
        metrics["selected_by"] = f"{old_selected_by.split(CALIBRATED_MARK)[0]}{CALIBRATED_MARK}{fitted_parts(meta)}"
    prov = dict(meta.get("provenance") or {})
    prov.pop("created", None)
    prov["parent"] = f"{pkg.id}@{pkg.version}"
    prov["command"] = command
    meta["provenance"] = prov
    card_path = pkg.path / "MODEL_CARD.md"
    card = card_path.read_text(encoding="utf-8") if card_path.is_file() else f"# {pkg.id}\n"
    card = calibrated_card_head(card, pkg.id, pkg.version, version, fitted_parts(meta))
    from ..training.train import scratch_reproduce_section

    card = scratch_reproduce_section(card, pkg.id, calibrated=True)   # a parent's card may name its folder
    if old_selected_by is not None and old_selected_by != metrics["selected_by"]:
        card = card.replace(old_selected_by, metrics["selected_by"])  # the card's metrics table, as model.json
    if cal is not None:
        card = replace_card_section(card, CALIBRATION_HEADING,
                                    calibration_card_section(cal, f"{pkg.id}@{pkg.version}").lstrip("\n"))
        card = drop_card_section(card, LOW_CONFIDENCE_HEADING)  # a parent's threshold alone: replaced by this fit
    if low_confidence:
        card = replace_card_section(card, LOW_CONFIDENCE_HEADING,
                                    low_confidence_card_section(meta["calibration"], f"{pkg.id}@{pkg.version}"))
    if decision is not None:
        card = decision_card_section(card, decision)
    if domain_quantile is not None:
        card = domain_card_section(card, meta["domain"])
    extra: dict[str, Any] = {"MODEL_CARD.md": card}
    replaced = {"model.json", "MODEL_CARD.md", pkg.meta["weights"]["file"]} | ({"reliability.png"} if cal else set())
    for f in pkg.path.iterdir():
        if f.is_file() and f.name not in replaced:
            extra[f.name] = f
    with tempfile.TemporaryDirectory() as tmp:
        if plots is not None:
            before, after, report_labels = plots
            extra["reliability.png"] = reliability_png(before, after, report_labels, Path(tmp) / "reliability.png",
                                                       n_bins, title=f"{pkg.id}: {split_desc} of {data.name}, "
                                                                     f"T={cal['temperature']:.2f}")
        progress("save", 0.95)
        new = save_package(pkg.build_model("cpu"), meta, dest, extra_files=extra)
    return {"package": str(new), "id": pkg.id, "version": new.name, "parent": f"{pkg.id}@{pkg.version}",
            "calibration": meta["calibration"] if low_confidence else cal, "decision": decision,
            "domain": None if domain_quantile is None else {k: v for k, v in meta["domain"].items()
                                                            if k not in ("file", "sha256", "features")}}


def written_threshold(threshold: float) -> float:
    """A low-confidence ``threshold`` as model.json holds it: 6 places, rounded down, never up, so every case the
    fitted value flags is still flagged by the written one (classify flags entropy >= it)."""
    return float(np.floor(float(threshold) * 1e6) / 1e6)


def _fit_temperature(pkg, data: Path, logits: np.ndarray, labels: np.ndarray, split: str, split_desc: str,
                     report_split: str | None, n_bins: int, progress: ProgressCallback):
    """The ``calibration`` block and the (before, after, labels) probabilities of the report split."""
    same = report_split is None or report_split == split
    t = fit_temperature(logits, labels)
    after = softmax(logits, t)
    threshold = written_threshold(low_confidence_threshold(normalized_entropy(after), after.argmax(1) == labels))
    fit_n = int(len(labels))
    if not same:  # report on data the fit did not see
        progress("predict", 0.9, split=report_split)
        logits, labels, _ = _report_split_logits(pkg, data, report_split)
    before, after = softmax(logits), softmax(logits, t)
    h = normalized_entropy(after)

    def nll(p: np.ndarray) -> float:  # on the report split's labels
        return float(-np.mean(np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, 1.0))))

    report_desc = split_desc if same else report_split
    cal = {"temperature": round(t, 6),
           "ece_before": round(expected_calibration_error(before, labels, n_bins), 6),
           "ece_after": round(expected_calibration_error(after, labels, n_bins), 6),
           "nll_before": round(nll(before), 6), "nll_after": round(nll(after), 6), "n_bins": n_bins,
           "low_confidence_threshold": threshold,
           "low_confidence_rate": round(float((h >= threshold).mean()), 6),
           "low_confidence_measure": "normalised predictive entropy of the calibrated probabilities (0..1)",
           "split": split_desc, "data": str(data), "n": fit_n,
           "fit_split": split_desc, "report_split": report_desc, "report_n": int(len(labels)), "same_split": same,
           "note": (f"fitted and reported on the same split ({split_desc}): the 'after' figures are optimistic; "
                    "give --report-split for figures on data the fit did not see") if same else
                   f"fitted on {split_desc} ({fit_n} cases), reported on {report_desc} ({len(labels)} cases)"}
    return cal, (before, after, labels)


def _in_domain(pkg, meta: Mapping[str, Any], features: np.ndarray | None,
               in_domain: np.ndarray | None) -> np.ndarray | None:
    """The cases classify gives a class: ``in_domain`` as classify judged a CSV's scans, else an ``.npz``'s images
    scored against this version's out-of-domain threshold (``None``: no check, every case)."""
    if in_domain is None and features is not None and pkg.domain is not None:
        return pkg.domain.scores(features) <= float(meta["domain"]["threshold"])
    return in_domain


def low_confidence_figures(entropy: np.ndarray, correct: np.ndarray, in_domain: np.ndarray,
                           threshold: float) -> dict[str, Any]:
    """What a low-confidence ``threshold`` does to cases as classify reports them: ``n`` cases, ``out_of_domain``
    (no class, never "uncertain"), ``uncertain`` (inside the domain, normalised entropy at or above the threshold)
    and its share of all ``n``, the ``accuracy_of_the_rest`` (the cases given a class), and how many of the
    uncertain were ``wrong`` calls, next to all wrong calls inside the domain."""
    flagged = in_domain & (entropy >= threshold)
    rest = in_domain & ~flagged
    return {"n": int(len(entropy)), "out_of_domain": int((~in_domain).sum()), "uncertain": int(flagged.sum()),
            "uncertain_share": round(float(flagged.mean()), 4), "given_a_class": int(rest.sum()),
            "accuracy_of_the_rest": round(float(correct[rest].mean()), 4) if rest.any() else None,
            "wrong_among_uncertain": int((flagged & ~correct).sum()),
            "wrong_in_domain": int((in_domain & ~correct).sum()),
            "accuracy_in_domain": round(float(correct[in_domain].mean()), 4) if in_domain.any() else None}


def low_confidence_block(pkg, meta: Mapping[str, Any], data: Path, logits: np.ndarray, labels: np.ndarray,
                         in_domain: np.ndarray | None, split_desc: str, report_split: str | None,
                         command: str) -> dict[str, Any]:
    """``model.json["calibration"]`` holding a low-confidence threshold and no temperature: the threshold
    (:func:`..uncertainty.calibration.low_confidence_threshold`) fitted on the network's own probabilities of the
    fitting cases inside the model's domain (``in_domain``; the others get no class, so the flag never applies to
    them), with its :func:`low_confidence_figures` on ``report_split`` (default: the fitting cases, and then the
    note says those figures are tuned on them)."""
    kept = np.ones(len(labels), bool) if in_domain is None else np.asarray(in_domain, bool)
    if not kept.any():
        raise ConfigError("every held-out case is flagged outside the model's domain, so no low-confidence threshold "
                          "can be fitted", data)
    p = calibrated_probabilities(logits, meta)  # the network's softmax: a parent with a temperature is refused
    h, correct = normalized_entropy(p), p.argmax(1) == labels
    threshold = written_threshold(low_confidence_threshold(h[kept], correct[kept]))  # the figures use it as written
    fit_n, fit_kept = int(len(labels)), int(kept.sum())
    same = report_split is None or report_split == split_desc
    if not same:  # figures on data the fit did not see
        logits, labels, features = _report_split_logits(pkg, data, report_split, features=pkg.domain is not None)
        p = calibrated_probabilities(logits, meta)
        h, correct = normalized_entropy(p), p.argmax(1) == labels
        kept = _in_domain(pkg, meta, features, None)
        kept = np.ones(len(labels), bool) if kept is None else kept
    figures = low_confidence_figures(h, correct, kept, threshold)
    report_desc = split_desc if same else report_split
    return {"low_confidence_threshold": threshold,
            "low_confidence_rate": figures["uncertain_share"],
            "low_confidence_measure": "normalised predictive entropy of the network's own probabilities (0..1): no "
                                      "temperature, the probabilities are the network's",
            "low_confidence_chosen_by": "Youden's J (wrong calls against right ones, by their entropy) over the "
                                        "fitting cases inside the model's domain",
            "split": split_desc, "data": str(data), "n": fit_n, "fit_n_in_domain": fit_kept,
            "fit_split": split_desc, "report_split": report_desc, "report_n": figures["n"], "same_split": same,
            "figures": figures, "command": command,
            **({"scale": "fitted on single images; on a volume, classify compares the entropy of the scan's "
                         "probabilities (the voting slices' geometric mean), a scale it was not fitted on"}
               if pkg.input_spec.get("kind") == "slices2d" and not str(data).lower().endswith(".csv") else {}),
            "note": (f"threshold fitted and its figures measured on the same split ({split_desc}): they are tuned on "
                     "it, not held-out estimates; give --report-split for figures on data the fit did not see")
            if same else f"fitted on {split_desc} ({fit_n} cases), figures on {report_desc} ({figures['n']} cases)"}


#: Where a calibrated version's ``selected_by`` says what was fitted after training (and on which split).
CALIBRATED_MARK = "; fitted after training: "
#: The card's line (just under the title) that says which parts of a calibrated version were fitted, and on what.
CALIBRATED_LINE = "> **Calibrated version**"


def fitted_parts(meta: Mapping[str, Any]) -> str:
    """What calibration fitted into the package ``meta`` describes, with the split each was fitted on: its
    temperature, its decision rules' threshold, its moved out-of-domain threshold (empty when none)."""
    parts = []
    cal = meta.get("calibration") or {}
    if cal.get("temperature") is not None:
        parts.append(f"the temperature and low-confidence threshold ({cal.get('fit_split', cal.get('split'))})")
    elif cal.get("low_confidence_threshold") is not None:
        parts.append(f"the low-confidence threshold ({cal.get('fit_split', cal.get('split'))})")
    chosen = (meta.get("decision") or {}).get("chosen_on")
    if chosen:
        parts.append(f"the decision rules' min_probability ({chosen.get('split')})")
    chosen = (meta.get("domain") or {}).get("chosen_on")
    if chosen:
        parts.append(f"the out-of-domain threshold ({chosen.get('split')})")
    return ", ".join(parts)


def calibrated_card_head(card: str, pkg_id: str, parent_version: str, version: str, parts: str) -> str:
    """``card`` with its title naming ``version`` and, under it, one line saying this version is ``parent_version``
    recalibrated: the weights are the parent's (so the card's training and validation figures describe them) and
    ``parts`` (:func:`fitted_parts`) were fitted afterwards. A parent's own such line is replaced, not repeated."""
    lines = card.split("\n")
    if lines and lines[0].startswith("# "):
        lines[0] = f"# {pkg_id} {version}"
    else:
        lines.insert(0, f"# {pkg_id} {version}")
    line = (f"{CALIBRATED_LINE} of `{pkg_id}@{parent_version}`, same weights: the training, selection and "
            f"validation figures below are the network's; fitted afterwards: {parts}.")
    rest = [ln for ln in lines[1:] if not ln.startswith(CALIBRATED_LINE)]
    while rest and not rest[0].strip():
        rest.pop(0)
    return "\n".join([lines[0], "", line, "", *rest])


def replace_card_section(card: str, heading: str, section: str) -> str:
    """``card`` with the section under ``heading`` (up to the next ``## `` heading) replaced by ``section``, or
    ``section`` appended when the card has none."""
    start = card.find(f"\n{heading}\n")
    if start < 0:
        return card.rstrip("\n") + "\n\n" + section
    end = card.find("\n## ", start + 1)
    return card[:start + 1] + section + ("" if end < 0 else card[end:])


def drop_card_section(card: str, heading: str) -> str:
    """``card`` without the section under ``heading`` (up to the next ``## `` heading), if it has one."""
    start = card.find(f"\n{heading}\n")
    if start < 0:
        return card
    end = card.find("\n## ", start + 1)
    return card[:start].rstrip("\n") + ("\n" if end < 0 else "\n" + card[end:])


CALIBRATION_HEADING = "## Calibration (temperature scaling)"


def calibration_card_section(cal: dict[str, Any], parent: str) -> str:
    """Markdown "Calibration" section for a model card."""
    return f"""
## Calibration (temperature scaling)
Fitted on {cal['split']} of `{cal['data']}` ({cal['n']} cases) for parent `{parent}`; figures below on
{cal.get('report_split', cal['split'])} ({cal.get('report_n', cal['n'])} cases).

| | ECE ({cal['n_bins']} bins) | NLL |
|---|---|---|
| before (T = 1) | {cal['ece_before']:.4f} | {cal['nll_before']:.4f} |
| after (T = {cal['temperature']:.3f}) | {cal['ece_after']:.4f} | {cal['nll_after']:.4f} |

Low-confidence flag: normalised predictive entropy >= {cal['low_confidence_threshold']:.3f} (threshold maximising
Youden's J for telling wrong from right predictions on the fitting data; {cal['low_confidence_rate']:.1%} of these
cases are flagged). {"Fitted and reported on the same split, so the 'after' figures are optimistic." if
cal.get('same_split', True) else "Reported on data the fit did not see."}
"""


LOW_CONFIDENCE_HEADING = "## Low-confidence threshold"


def low_confidence_card_section(cal: dict[str, Any], parent: str) -> str:
    """Markdown "Low-confidence threshold" section for a model card (a threshold fitted without a temperature)."""
    f = cal["figures"]
    rest = "n/a" if f["accuracy_of_the_rest"] is None else f"{f['accuracy_of_the_rest']:.3f}"
    where = (f"split `{cal['report_split']}`, the split the threshold was fitted on, so these figures are **tuned on "
             "it, not held-out estimates**" if cal.get("same_split", True) else
             f"split `{cal['report_split']}`, which the fit did not see")
    ood = (f"; {f['out_of_domain']} more are flagged outside the model's domain, which get no class (never "
           "\"uncertain\")" if f["out_of_domain"] else "")
    return (f"{LOW_CONFIDENCE_HEADING}\n"
            f"An image whose normalised predictive entropy (0: all probability on one class, 1: spread evenly) is at "
            f"or above **{cal['low_confidence_threshold']:.3f}** is reported **uncertain** (its most likely class "
            f"is still named, with the reason). The probabilities are the network's own: no temperature was "
            f"fitted. The threshold maximises Youden's J for telling wrong calls from right ones by their entropy "
            f"on split `{cal['fit_split']}` of `{Path(cal['data']).name}` ({cal['fit_n_in_domain']} images inside "
            f"the model's domain), for parent `{parent}`, by\n```\n{cal['command']}\n```\n"
            f"On {where}: {f['uncertain']} of {f['n']} images ({f['uncertain_share']:.1%}) are reported uncertain"
            f"{ood}; the {f['given_a_class']} given a class have accuracy {rest} (all {f['n'] - f['out_of_domain']} "
            f"in-domain images: {f['accuracy_in_domain']:.3f}); {f['wrong_among_uncertain']} of the "
            f"{f['uncertain']} uncertain were wrong calls, of {f['wrong_in_domain']} wrong calls inside the domain.\n"
            + (f"The threshold was {cal['scale']}.\n" if cal.get("scale") else ""))


DECISION_HEADING = "## Decision rules (calibrated)"


def decision_card_section(card: str, decision: dict[str, Any]) -> str:
    """``card`` with its "Decision rules (calibrated)" section written for ``decision`` (replacing the parent's,
    up to the next section, or appended)."""
    chosen = decision["chosen_on"]
    others = {k: v for k, v in decision.items() if k not in ("min_probability", "chosen_on")}
    wrong = chosen["n"] - round(chosen["accuracy"] * chosen["n"])
    flagged = (f", {chosen['wrong_flagged']:.0%} of the {wrong} wrong calls are flagged"
               if chosen["wrong_flagged"] is not None else "")
    left_out = (f"; {chosen['out_of_domain']} more flagged outside the model's domain, which get no class, are left "
                "out" if chosen.get("out_of_domain") else "")
    section = (f"{DECISION_HEADING}\nChosen on `{chosen['data']}` split `{chosen['split']}` ({chosen['n']} images, "
               f"accuracy {chosen['accuracy']:.4f}{left_out}) by\n```\n{chosen['command']}\n```\n"
               f"- `min_probability` = **{decision['min_probability']:.2f}**: the "
               f"{chosen['quantile_of_correct']:.0%} quantile of the correct held-out calls' probability (rounded "
               f"down); {chosen['correct_passing']:.2%} of correct calls pass{flagged}.\n"
               f"- Other rules as configured: `{json.dumps(others)}`\n")
    return replace_card_section(card, DECISION_HEADING, section)


DOMAIN_HEADING = "## Out-of-domain check"


def domain_card_section(card: str, domain: dict[str, Any]) -> str:
    """``card`` with its out-of-domain section written for ``domain`` (replacing the parent's, up to the next
    section, or appended)."""
    from ..training.domain import domain_card_lines

    return replace_card_section(card, DOMAIN_HEADING, domain_card_lines(domain).lstrip("\n"))
