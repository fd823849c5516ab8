"""What a fine-tuned package says about itself: ``model.json`` metrics and the Markdown model card."""

from __future__ import annotations

import json
from typing import Any

from ..contract import chosen_on_validation
from .config import FinetuneConfig

#: What a package fine-tuned without validation data says in place of metrics (model.json, card, ``models``).
NOT_SCORED = "no validation data: not scored"
#: How such a run picks its weights: nothing measures the epochs, so the last one is kept.
KEPT_WITHOUT_VALIDATION = "nothing: the last epoch is kept (no validation data)"


def clean_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics for model.json: drop bulky parts (per-case detail stays in the model card)."""
    out = {k: v for k, v in metrics.items() if k not in ("per_case", "confusion_matrix")}
    out.setdefault("split", "val")
    return out


def unscored_metrics(kept_epoch: int | None) -> dict[str, Any]:
    """Metrics of a run without validation data: a plain note and the epoch kept, no figure at all (the loop
    ranked its epochs by the training loss, which is no Dice or accuracy)."""
    return {"note": NOT_SCORED, "selected_by": KEPT_WITHOUT_VALIDATION, "best_epoch": kept_epoch}


#: What the card says of figures that chose the checkpoint (``metrics.selected_by`` ``val <monitor>``).
SELECTED_ON_VALIDATION = ("the checkpoint kept is the epoch that scored best on these validation voxels, so the "
                          "figures are optimistic (the best of several looks at the same data)")


def package_metrics(best_val: dict[str, Any] | None, kept_epoch: int | None, monitor: str | None = None, *,
                    val_slab: dict[str, Any] | None = None,
                    held_out: tuple[bool | None, str | None] = (None, None)) -> dict[str, Any]:
    """model.json ``metrics``: the kept epoch's validation metrics, or :func:`unscored_metrics` without them.

    Scored figures say what chose the epoch: ``selected_by`` ``val <monitor>`` (``train``'s words), because the loop
    keeps the epoch that scored best on this same validation data, so the figures are optimistic
    (:func:`..contract.chosen_on_validation`); ``best_epoch``; the slab scored (``val_slab``: case, ``slices``
    [start, stop) on the training grid, ``spacing_mm``, ``orientation``); and ``held_out`` (with
    ``held_out_note`` when false) where it is known (:func:`.lineage.held_out_status`)."""
    if not best_val:
        return unscored_metrics(kept_epoch)
    out = clean_metrics(best_val)
    out["best_epoch"] = kept_epoch
    if monitor:
        out["selected_by"] = f"val {monitor}"
    if val_slab:
        out["val_slab"] = {k: val_slab[k] for k in ("case", "slices", "spacing_mm", "orientation")}
    if held_out[0] is not None:
        out["held_out"] = held_out[0]
    if held_out[1]:
        out["held_out_note"] = held_out[1]
    return out


def model_card(meta: dict[str, Any], cfg: FinetuneConfig, report: dict[str, Any], result) -> str:
    """Markdown model card: what it does, what it started from, how many cases it saw, metrics, caveats."""
    prov = meta["provenance"]
    parent = prov["parent"]
    metrics = meta.get("metrics") or {}
    scored = metrics.get("note") != NOT_SCORED
    slab = metrics.get("val_slab")
    lines = [f"# {meta['id']} (fine-tuned, task {meta['task']})", "",
             meta.get("description", ""), "",
             "## Origin",
             f"- Base model: {parent['id'] + ' ' + parent['version'] if parent else 'none (trained from scratch)'}",
             f"- Command: `{prov['command']}`",
             f"- Data: `{prov['data']}` (fingerprint `{prov['dataset_fingerprint']}`)",
             f"- Frozen encoder: {cfg.freeze_encoder}; epochs run {len(result.epochs)} of {cfg.training.epochs}, "
             + (f"best epoch {result.best_epoch}" if scored else f"kept epoch {result.best_epoch} (the last: no "
                "validation data to select on)") + f", stopped: {result.stopped}", "",
             "## Data it saw",
             f"- **{len(prov['cases']['train'])} training case(s)**: {', '.join(prov['cases']['train'])}",
             f"- {len(prov['cases']['val'])} validation case(s): {', '.join(prov['cases']['val']) or 'none'}"
             + (f" (held-out slab {slab['slices'][0]}:{slab['slices'][1]} of the training scan {slab['case']!r}, "
                f"slices at {','.join(f'{v:g}' for v in slab['spacing_mm'])} mm in {slab['orientation']} order)"
                if slab else ""),
             "- Segments per class in the training case(s) (cases / segments / voxels)"
             + (f"; {report['note']}" if report.get("note") else "") + ":"]
    for name, c in report["classes"].items():
        lines.append(f"  - {name}: {c['cases']} / {c['segments']} / {c['voxels']}")
    if report.get("validation"):
        lines.append("- Segments per class in the validation case(s):")
        for name, c in report["validation"]["classes"].items():
            lines.append(f"  - {name}: {c['cases']} / {c['segments']} / {c['voxels']}")
    if meta["training"]["base_weights"].get("warning"):
        lines.insert(lines.index("## Data it saw") - 1,
                     f"- Output layer: {meta['training']['base_weights']['warning']}")
    lines += ["", "## Validation metrics"]
    if not scored:
        lines.append(f"- {NOT_SCORED}; kept: the last epoch's weights (nothing selected them)")
    else:
        if metrics.get("held_out") is False:
            lines.append(f"- **Not held out**: {metrics['held_out_note']}, so these figures do not measure the "
                         "model on data it has not seen")
        if chosen_on_validation(metrics):
            lines.append(f"- Selected on validation: {SELECTED_ON_VALIDATION}")
    for key in ("dice", "hd95_mm", "auc", "balanced_accuracy", "accuracy", "n"):
        if key in metrics:
            lines.append(f"- {key}: {metrics[key]}")
    if metrics.get("hd95_missed"):
        lines.append(f"- hd95_mm leaves out {', '.join(metrics['hd95_missed'])}: labelled but never predicted, so no "
                     "distance exists (infinitely far); the mean is over the classes found")
    if "per_class" in metrics:
        lines.append(f"- per class: `{json.dumps(metrics['per_class'])}`")
    lines += ["", "## Caveats",
              "- Few labelled cases: metrics on so small a validation set are rough; check results visually in Slicer."
              if scored else "- Nothing measured this model on data it did not train on; check results visually in "
                             "Slicer before relying on it.",
              "- Labels are whatever segments the user supplied; their quality bounds the model's."]
    if report["warnings"]:
        lines += ["", "## Data warnings"] + [f"- {w}" for w in report["warnings"]]
    return "\n".join(lines) + "\n"
