"""Locate and summarise what the worker wrote, so the Slicer side only loads files into the scene.

``classify`` writes per input ``<name>.json`` (label, class probabilities, explain section, output paths) and
``<name>_heatmap.nrrd`` on the input's grid (``docs/worker-protocol.md``); the names come from
:mod:`..contract` (``output_stem``, ``output_file``), as the writer's do. Paths inside the JSON may be relative to
the output folder; they are resolved here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..contract import LOW_DICE, finding_words, output_file, output_stem
from ..errors import MedDeepRecogError


@dataclass
class ClassifyResult:
    """One classified scan, as the panel shows it.

    Attributes:
        label: predicted class name, or ``"uncertain"`` (then ``top_class`` is the most probable class and
            ``uncertain_reasons`` says why it is not reported).
        probabilities: ``[(class, p), ...]`` sorted by decreasing probability.
        heatmap: path of the heatmap volume (float 0..1 on the input grid) or ``None``.
        png: path of the overlay PNG or ``None``.
        segmentations: ``.seg.nrrd`` files the worker wrote (model segmentations, heatmap regions).
        explain_method: e.g. ``"gradcam"``; ``faithfulness``: the heatmap's faithfulness score if reported;
            ``faithfulness_caption``: its deletion / insertion AUCs in words.
        low_confidence: the low-confidence flag (None when the model has no low-confidence threshold);
            ``predictive_entropy``: normalised 0..1 (None when not reported).
        input_notes: what reading or preparing the scan changed (colour made grey, the CT table blanked, ...).
        raw: the whole JSON record.
    """

    label: str
    probabilities: list[tuple[str, float]]
    heatmap: Path | None = None
    png: Path | None = None
    segmentations: list[Path] = field(default_factory=list)
    explain_method: str | None = None
    faithfulness: float | None = None
    model: str = ""
    raw: dict[str, Any] = field(default_factory=dict)
    top_class: str = ""
    uncertain_reasons: list[str] = field(default_factory=list)
    faithfulness_caption: str = ""
    heatmap_note: str = ""  # explain.note of an empty heatmap (0 everywhere): shown instead of a score
    low_confidence: bool | None = None
    predictive_entropy: float | None = None
    input_notes: list[str] = field(default_factory=list)

    @property
    def confidence(self) -> float:
        """The JSON's ``confidence``, the one number the command line, the PNG and the report show (for a slice
        model on a volume, the mean over the voting slices of their probability for the label); the top class's
        probability when the record has none (also when the label is ``"uncertain"``)."""
        value = self.raw.get("confidence")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        return dict(self.probabilities).get(self.top_class or self.label, 0.0)

    @property
    def out_of_domain(self) -> bool:
        """The scan is outside the model's domain: no class is reported, and its probabilities and heatmap are what
        the network computed on something it was not made for, not a finding."""
        return self.label == "out-of-domain"

    @property
    def uncertain(self) -> bool:
        return self.label == "uncertain" or bool(self.uncertain_reasons)

    def result_text(self) -> str:
        """Rich text for the panel's result line: label and probability, or the top class and why it is uncertain."""
        import html

        top = html.escape(self.top_class or self.label)
        if self.out_of_domain:  # no class is reported: not even as "most likely"
            why = "; ".join(html.escape(r) for r in self.uncertain_reasons) or "unlike the model's training images"
            text = f"<b>outside this model's domain</b>: no class reported<br><i>{why}</i>"
        elif not self.uncertain:  # the core's word for the label's figure (not a scan probability)
            text = f"<b>{top}</b> (confidence {self.confidence:.2f})"
        else:
            why = "; ".join(html.escape(r) for r in self.uncertain_reasons) or "no reason given"
            text = f"<b>uncertain</b>: most likely {top} (confidence {self.confidence:.2f})<br><i>{why}</i>"
        # low confidence once: not again when a reason above already gives the entropy against its threshold
        said = any("entropy" in r or "low confidence" in r for r in self.uncertain_reasons)
        entropy = ("" if self.predictive_entropy is None or said
                   else f" (predictive entropy {self.predictive_entropy:.2f})")
        if self.low_confidence and not said:
            text += f"<br><b>low confidence</b>{entropy}"
        elif entropy:
            text += f"<br>{entropy.strip()[1:-1]}"
        finding = self.raw.get("finding")
        if isinstance(finding, dict) and not self.out_of_domain:  # a slice model's: where it reads its label
            text += f"<br><small>{html.escape(finding_words(finding))}</small>"
        if self.input_notes:  # what was changed in the scan before the model saw it
            text += "<br><small>" + "<br>".join(html.escape(n) for n in self.input_notes) + "</small>"
        return text

    def heatmap_text(self) -> str:
        """The heatmap's faithfulness for the panel, next to the heatmap controls ("" without a score)."""
        if self.out_of_domain:  # the panel shows no heatmap then
            return "no heatmap shown: the scan is outside this model's domain"
        if self.heatmap_note:
            return self.heatmap_note
        if self.faithfulness is None:
            return ""
        method = self.explain_method or "heatmap"
        if self.faithfulness_caption:  # the core's caption gives the score itself: said once (the label's
            # confidence is the result line's, not repeated here)
            return f"Heatmap ({method}): {self.faithfulness_caption}"
        return f"Heatmap ({method}): faithfulness {self.faithfulness:+.2f} (better than random when > 0)"


def model_words(model) -> str:
    """``id@version`` of a worker JSON's ``model`` record (a dict), else the value as text."""
    return f"{model.get('id', '')}@{model.get('version', '')}" if isinstance(model, dict) else str(model)


def _resolve(out_dir: Path, value: Any) -> Path | None:
    if not value or not isinstance(value, str):
        return None
    path = Path(value)
    if not path.is_absolute():
        path = out_dir / path
    return path if path.exists() else None


def _faithfulness(explain: dict[str, Any]) -> float | None:
    """A single faithfulness number from the explain section, whatever its exact key.

    Accepts ``{"faithfulness": 0.7}``, ``{"faithfulness": {"score": 0.7, ...}}`` or ``{"faithfulness_score": 0.7}``.
    """
    for key, value in explain.items():
        if "faithful" not in key.lower():
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, dict):
            for sub in ("score", "value", "faithfulness", "deletion_gap", "auc_gap"):
                if isinstance(value.get(sub), (int, float)):
                    return float(value[sub])
    return None


def _read_record(json_path: Path, what: str) -> dict[str, Any]:
    """The JSON object classify wrote at ``json_path``; a clear error when it is missing or not JSON."""
    if not json_path.is_file():
        raise MedDeepRecogError(f"classify wrote no {what} here (did the worker finish?)", json_path)
    try:
        record = json.loads(json_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise MedDeepRecogError(f"{what} is not valid JSON ({exc})", json_path) from None
    if not isinstance(record, dict):
        raise MedDeepRecogError(f"{what} is not a JSON object", json_path)
    return record


def read_classify_result(out_dir: str | Path, input_path: str | Path) -> ClassifyResult:
    """Read ``out_dir/<name>.json`` for ``input_path`` and resolve its output files.

    Raises:
        MedDeepRecogError: the JSON is missing or has no label/probabilities (the worker did not finish).
    """
    out_dir = Path(out_dir)
    stem = output_stem(input_path)
    json_path = out_dir / output_file(stem, "result")
    record = _read_record(json_path, "result file")
    probs = record.get("probabilities")
    if not isinstance(probs, dict) or not probs or "label" not in record:
        raise MedDeepRecogError("result file has no label or class probabilities", json_path)
    outputs = record.get("outputs") or {}
    heatmap = _resolve(out_dir, outputs.get("heatmap")) or _resolve(out_dir, output_file(stem, "heatmap"))
    png = _resolve(out_dir, outputs.get("png")) or _resolve(out_dir, output_file(stem, "heatmap_png"))
    segs = [p for v in outputs.values() if isinstance(v, str) and v.lower().endswith(".seg.nrrd")
            for p in [_resolve(out_dir, v)] if p is not None]
    explain = record.get("explain") if isinstance(record.get("explain"), dict) else {}
    model = record.get("model") or {}
    uncertainty = record.get("uncertainty") if isinstance(record.get("uncertainty"), dict) else {}
    entropy = uncertainty.get("predictive_entropy")
    low = uncertainty.get("low_confidence")
    reasons = record.get("uncertain_reasons")
    notes = record.get("input_notes")
    model_name = model_words(model)
    return ClassifyResult(
        label=str(record["label"]),
        probabilities=sorted(((str(k), float(v)) for k, v in probs.items()), key=lambda kv: -kv[1]),
        heatmap=heatmap, png=png, segmentations=segs,
        explain_method=explain.get("method"), faithfulness=_faithfulness(explain),
        heatmap_note=str(explain.get("note") or "") if explain.get("empty") else "",
        model=model_name.strip("@"), raw=record, top_class=str(record.get("top_class") or record["label"]),
        uncertain_reasons=[str(r) for r in reasons] if isinstance(reasons, list) else [],
        faithfulness_caption=str(explain.get("faithfulness_caption") or ""),
        low_confidence=low if isinstance(low, bool) else None,
        predictive_entropy=float(entropy) if isinstance(entropy, (int, float)) else None,
        input_notes=[str(n) for n in notes] if isinstance(notes, list) else [])


@dataclass
class SegmentLabels:
    """What an ROI classifier said about each segment (``classify --segments``).

    Attributes:
        model: ``id@version``; ``class_names``: in model order.
        segments: ``[{"segment", "label", "probabilities": {class: p}, "center_mm"}, ...]``.
    """

    model: str
    class_names: list[str]
    segments: list[dict[str, Any]]

    def result_text(self) -> str:
        """Rich text for the panel's result line: one ``segment: label (p)`` per segment."""
        if not self.segments:
            return "No non-empty segment to classify."
        import html

        return "<br>".join(f"{html.escape(str(s['segment']))}: <b>{html.escape(str(s['label']))}</b> "
                           f"({float(s['probabilities'].get(s['label'], 0.0)):.2f})" for s in self.segments)

    def heatmap_text(self) -> str:
        return ""  # ROI classifiers label segments; no heatmap


def read_segment_labels(out_dir: str | Path, input_path: str | Path) -> SegmentLabels:
    """Read ``out_dir/<name>_segments.json`` (``classify --segments``) for ``input_path``.

    Raises:
        MedDeepRecogError: the JSON is missing or malformed (the worker did not finish).
    """
    json_path = Path(out_dir) / output_file(output_stem(input_path), "segment_labels")
    record = _read_record(json_path, "segment labels file")
    rows = record.get("segments")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "segment" in r and "label" in r for r in rows):
        raise MedDeepRecogError("segment labels file has no list of {segment, label}", json_path)
    model = record.get("model") or {}
    return SegmentLabels(model=model_words(model).strip("@"),
                         class_names=[str(c) for c in record.get("class_names") or []], segments=rows)


@dataclass
class SegmentVolumes:
    """What ``segment`` reported (the ``result`` of its final progress line).

    Attributes:
        model: ``id@version``; ``output``: the ``.seg.nrrd`` it wrote (one segment per class, on the input's grid).
        segments: ``[(name, volume_ml, voxels), ...]`` in the package's class order (an empty class has 0 voxels).
        raw: the whole result.
    """

    model: str
    output: Path
    segments: list[tuple[str, float, int]]
    raw: dict[str, Any] = field(default_factory=dict)

    def result_text(self) -> str:
        """Rich text for the panel's result line: one ``segment: N ml`` per segment, a segment whose recorded
        validation Dice is low marked so, then the package's own statement of its limits (``caveat``, as the
        command line prints it)."""
        if not self.segments:
            return "The model has no segment classes."
        import html

        dice = ((self.raw.get("model_limits") or {}).get("validation") or {}).get("dice") or {}
        low = {name for name, d in dice.items() if isinstance(d, (int, float)) and d < LOW_DICE}
        lines = [f"{html.escape(name)}: <b>{ml:.1f} ml</b>" + (" (not found)" if voxels == 0 else "")
                 + (f" (validation Dice {dice[name]:.2f}: not a measurement)" if name in low else "")
                 for name, ml, voxels in self.segments]
        caveat = self.raw.get("caveat")
        return "<br>".join(lines + ([f"<i>{html.escape(str(caveat))}</i>"] if caveat else []))

    def heatmap_text(self) -> str:
        return ""  # segmentation packages have no heatmap


def read_segment_volumes(result: dict[str, Any], out_path: str | Path) -> SegmentVolumes:
    """The ``segment`` run's ``result`` (``{"output", "model": {"id", "version"}, "segments": {name: {"voxels",
    "volume_ml"}}, ...}``) with the ``.seg.nrrd`` it wrote at ``out_path``.

    Raises:
        MedDeepRecogError: no segmentation file, or no per-segment volumes (the worker did not finish).
    """
    out_path = Path(out_path)
    if not out_path.is_file():
        raise MedDeepRecogError("segment wrote no segmentation here (did the worker finish?)", out_path)
    rows = result.get("segments")
    if not isinstance(rows, dict) or not all(isinstance(r, dict) and "volume_ml" in r for r in rows.values()):
        raise MedDeepRecogError("the segment result has no per-segment volumes (unexpected worker output)", out_path)
    model = result.get("model") or {}
    model_name = model_words(model)
    return SegmentVolumes(model=model_name.strip("@"), output=out_path,
                          segments=[(str(name), float(r["volume_ml"]), int(r.get("voxels", 0)))
                                    for name, r in rows.items()], raw=result)


def parse_json_output(lines: list[str] | str) -> Any:
    """The JSON document a ``--json`` command (``models``, ``device``) printed, ignoring log lines around it.

    Raises:
        MedDeepRecogError: no JSON document in the output.
    """
    text = lines if isinstance(lines, str) else "\n".join(lines)
    starts = [i for i, ch in enumerate(text) if ch in "[{"]
    decoder = json.JSONDecoder()
    for start in starts:
        try:
            value, _ = decoder.raw_decode(text[start:])
        except ValueError:
            continue
        if not (isinstance(value, dict) and "stage" in value):  # not a progress line
            return value
    raise MedDeepRecogError("the worker printed no JSON document")


def _first_json(result: dict[str, Any]) -> dict[str, Any] | None:
    for value in result.values():
        if isinstance(value, str) and value.lower().endswith(".json") and Path(value).is_file():
            try:
                record = json.loads(Path(value).read_text(encoding="utf-8"))
            except ValueError:
                continue
            if isinstance(record, dict):
                return record
    return None


def robustness_summary(result: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """One sentence for the panel from a ``robustness --input`` run's final ``result`` (or the JSON it names).

    Reads ``clean_label`` / ``top_class``, ``clean_probability``, ``clean_confidence``, ``smallest_flipping_eps``,
    ``flip`` (the curve point at that eps) and ``out_of_domain`` as ``robustness.report.scan_reports`` writes them.
    With ``clean_confidence`` the labels are the ones classify reports (after the package's decision rules, with
    classify's confidence) and a flip is a change of that label; the probabilities are the network's of its clean
    top class. Returns ``(text, record)``.
    """
    record = result if "clean_label" in result else (_first_json(result) or {})
    if isinstance(record.get("scans"), list) and record["scans"]:  # one record per input
        record = record["scans"][0]
    if "clean_label" not in record:
        raise MedDeepRecogError("the robustness result has no clean_label (unexpected worker output)")
    from ..report import signed_change

    top, p = record.get("top_class", record["clean_label"]), float(record.get("clean_probability", float("nan")))
    attack = str(record.get("attack") or "")
    steps = record.get("steps")
    under = ""  # which attack: a one-step FGSM "did not flip" says less than PGD's
    if attack:
        under = (f" under a {int(steps)}-step {attack.upper()} attack" if attack == "pgd" and steps
                 else f" under a one-step {attack.upper()} attack" if attack == "fgsm" else f" under {attack}")
    # a scan classify reports no class for: said first, as classify says it (the class below is a guess)
    ood = (f"Out-of-domain ({record['out_of_domain']}): no class is reported; the network's guess "
           if record.get("out_of_domain") else "")
    reported = "clean_confidence" in record and not ood

    def said(point: dict[str, Any]) -> str:  # classify's label and confidence, as its headline gives them
        label, shown = point.get("label", "?"), point.get("top_class", top)
        if not reported:
            return f"'{label}'"
        extra = f"top class {shown}, " if label != shown else ""
        return f"'{label}' ({extra}confidence {float(point.get('confidence', float('nan'))):.2f})"

    clean = (said({"label": record["clean_label"], "top_class": top, "confidence": record["clean_confidence"]})
             if reported else f"'{top}' (p={p:.2f})")
    eps = record.get("smallest_flipping_eps")
    if eps is None:
        curve = record.get("curve") or []
        most = max((c.get("eps", 0.0) for c in curve), default=0.0)
        drop = record.get("probability_drop_at_max_eps")
        text = f"{ood}{clean} did not flip up to eps={most:.3g}{under}"
        if isinstance(drop, (int, float)):  # the record's drop is positive for a fall: said with its direction
            text += (f"; {'the probability of ' + repr(top) if reported else 'its probability'} changed by "
                     f"{signed_change(-float(drop))}")
        return text + ".", record
    flip = record.get("flip") or {}
    hu = record.get("smallest_flipping_eps_hu")
    at = f"eps={float(eps):.3g}" + (f" (≈{float(hu):.3g} HU)" if isinstance(hu, (int, float)) else "")
    text = (f"{ood}{clean} flips to {said(flip)} at {at}{under}; "
            f"p('{top}') {p:.2f} → {float(flip.get('probability', float('nan'))):.2f}.")
    return text, record
