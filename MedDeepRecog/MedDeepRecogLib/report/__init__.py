"""Per-case HTML report (``classify --report``, on by default in ``demo``): one self-contained page.

The page is rendered from a Jinja2 template (``templates/case_report.html.j2``, autoescaped); the overlay PNG is
embedded as a data URI, the probabilities are a bar chart drawn with CSS widths, so the file opens anywhere without
the output folder. It holds the three planes with the overlay, the probabilities, uncertainty and faithfulness with
their meaning in words, the model's card (data, validation figures, intended use, what not to use it for; the
package's ``MODEL_CARD.md`` in full) and the exact command that made it.
"""

from __future__ import annotations

import base64
import datetime as _dt
from pathlib import Path
from typing import Any

from ..contract import output_file

TEMPLATE = "case_report.html.j2"


def _environment():
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    env = Environment(loader=FileSystemLoader(str(Path(__file__).parent / "templates")),
                      autoescape=select_autoescape(["html", "j2"]), undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = lambda v: f"{100 * float(v):.1f} %"
    env.filters["num"] = lambda v, d=3: (str(v) if isinstance(v, int) and not isinstance(v, bool) else
                                         f"{float(v):.{d}f}" if isinstance(v, float) else str(v))
    return env


def _places(h: float, threshold: float | None) -> int:
    """Decimal places (2 to 6) that show entropy ``h`` on its side of ``threshold``: at 2 places an image just
    under it would read "0.75 is below 0.75" (or one just over, "0.75 is at or above 0.75" where it is not 0.75)."""
    if threshold is None:
        return 2
    for d in range(2, 7):
        if round(h, d) != round(threshold, d):  # rounding keeps the order, so unequal figures show the side
            return d
    return 6


def uncertainty_words(result) -> list[str]:
    """The uncertainty block as sentences; the low-confidence one follows the label reported (an out-of-domain
    image stays out-of-domain, however spread its probabilities)."""
    from ..inference.classify import OUT_OF_DOMAIN

    u = result.uncertainty or {}
    out = []
    threshold = u.get("low_confidence_threshold")
    d = 2
    if u.get("predictive_entropy") is not None:
        h = float(u["predictive_entropy"])
        d = _places(h, None if threshold is None else float(threshold))
        level = "low" if h < 0.3 else "moderate" if h < 0.6 else "high"
        out.append(f"Predictive entropy {h:.{d}f} on a 0 (all probability on one class) to 1 (spread evenly over "
                   f"all classes) scale: {level} spread.")
    if u.get("low_confidence") is True:
        then = ("but the image is outside the model's domain, which says more: it stays out-of-domain and no class "
                "is reported" if getattr(result, "label", None) == OUT_OF_DOMAIN else
                "so the label is reported as uncertain")
        out.append(f"The entropy is at or above the model's low-confidence threshold {float(threshold):.{d}f} (set on "
                   f"held-out images; see the model card), {then}.")
    elif u.get("low_confidence") is False:
        out.append(f"The entropy is below the model's low-confidence threshold {float(threshold):.{d}f} "
                   f"(set on held-out images; see the model card).")
    else:
        out.append("This package has no low-confidence threshold (it was not calibrated), so a high spread does not "
                   "make the label uncertain.")
    for key, what in (("mc_dropout", "Monte-Carlo dropout passes"), ("tta", "test-time augmentations (the scan "
                      "and flipped copies)"), ("ensemble", "ensemble members")):
        block = u.get(key)
        if isinstance(block, dict) and block.get("available", True) and "samples" in block:
            spread = block.get("std") or block.get("variance")
            extra = f"; spread of the top class probability {float(spread):.3f}" if isinstance(spread, (int, float)) \
                else ""
            out.append(f"{block['samples']} {what}{extra}: the larger the spread, the less the model agrees "
                       f"with itself.")
    return out


def lesion_words(result) -> list[str]:
    """This case's heatmap against the lesion label given with ``--lesion`` (none without one): the pointing game,
    the heat inside the lesion, per lesion slice for a slice model, and how much the label rests on the lesion."""
    loc = result.explain.get("localisation") or {}
    if not loc:
        return []
    words = []
    per_slice = loc.get("per_slice") or {}
    if per_slice.get("slices"):
        words.append(f"Heatmap peak inside the lesion on {per_slice['pointing_hits']} of {per_slice['slices']} lesion "
                     f"slices; {per_slice['mean_mass_inside']:.0%} of their heat inside it (the lesion covers "
                     f"{per_slice['lesion_area_share']:.1%} of those slices).")
    game = loc.get("pointing_game") or {}
    if "hit" in game:
        where = "inside" if game["hit"] else f"outside, {game.get('distance_mm', float('nan')):.1f} mm from"
        words.append(f"Peak of the whole heatmap: {where} the lesion; {loc.get('mass_inside', float('nan')):.1%} of "
                     f"all heat inside it ({loc.get('lesion_voxels', 0)} lesion voxels).")
    reliance = loc.get("lesion_reliance") or {}
    if reliance.get("drop_elsewhere") is not None:
        words.append(f"Filling the lesion with the surrounding tissue changes each slice's label probability by "
                     f"{signed_change(-float(reliance['drop_lesion']))} on average; the same fill elsewhere: "
                     f"{signed_change(-float(reliance['drop_elsewhere']))}.")
    return words


def signed_change(change: float) -> str:
    """A probability change as a signed figure with its direction in words (``-0.025 (a drop)``, ``+0.004 (a
    rise)``): the JSON stores drops (``drop_lesion``, positive when the probability falls), and "lowers by -0.004"
    read as a fall when it was a rise."""
    shown = f"{change:+.3f}"
    if float(shown) == 0:
        return f"{shown.replace('-', '+')} (no change)"
    return f"{shown} ({'a drop' if change < 0 else 'a rise'})"


def faithfulness_words(result) -> list[str]:
    """The faithfulness score in words (what the heatmap's hot pixels do to the prediction)."""
    f = result.explain.get("faithfulness") or {}
    if result.explain.get("empty"):
        return ["The heatmap is empty: the method found no evidence for the label on this input (0 everywhere), so "
                "it shows nothing and its faithfulness is not scored."]
    if "score" not in f:
        return ["The heatmap's faithfulness was not scored."]
    s = float(f["score"])
    words = [f"Faithfulness {s:+.2f} (from -2 to +2: insertion less deletion area, less the same for a random "
             f"order; 0 is no better than random). Deleting the hottest pixels first drops the class "
             f"probability with area {f['deletion_auc']:.2f} under the curve (random order: "
             f"{f.get('random_deletion_auc', float('nan')):.2f}; lower is better); revealing them first restores it "
             f"with area {f['insertion_auc']:.2f} (random: {f.get('random_insertion_auc', float('nan')):.2f}; "
             f"higher is better)."]
    if s < 0:
        words.append("This heatmap is not a faithful explanation: the pixels it marks matter less to the model "
                     "than random ones. Do not read it as where the finding is.")
    elif s < 0.1:
        words.append("The heatmap explains the prediction only slightly better than random pixels.")
    else:
        words.append("The heatmap's hot pixels do drive the prediction.")
    return words


def model_card(package) -> dict[str, Any]:
    """What the report shows of the package: data, validation figures, intended use, not-for, the card text."""
    meta = package.meta
    metrics = {k: v for k, v in (meta.get("metrics") or {}).items()
               if isinstance(v, (int, float, str)) and k not in ("train_time_s",)}
    use = meta.get("use") or {}
    card_path = Path(package.path) / "MODEL_CARD.md"
    domain = meta.get("domain") or {}
    return {
        "id": meta["id"], "version": meta["version"], "description": meta.get("description", ""),
        "architecture": (meta.get("architecture") or {}).get("name", ""),
        "classes": list(meta.get("class_names") or []),
        "data": (meta.get("provenance") or {}).get("data", "not recorded"),
        "split": (meta.get("provenance") or {}).get("split", ""),
        "metrics": metrics,
        "intended_use": use.get("intended_use") or "not stated in the package",
        "not_for": list(use.get("not_for") or []),
        "domain": ({"threshold": domain.get("threshold"), "val_in_domain_rate": domain.get("val_in_domain_rate")}
                   if domain else None),
        "localisation": meta.get("localisation") or None,
        "card_text": card_path.read_text(encoding="utf-8") if card_path.is_file() else None,
    }


def render_case_report(result, outputs: dict, package, *, command: str) -> str:
    """The HTML page (a string) for one classified case."""
    from ..inference.classify import confidence_basis, finding_words, headline, heatmap_warning, probabilities_basis

    png = outputs.get("png")
    image = None
    if png and Path(png).is_file():
        image = "data:image/png;base64," + base64.b64encode(Path(png).read_bytes()).decode("ascii")
    probs = sorted(result.probability_map().items(), key=lambda kv: -kv[1])
    d = result.decision
    return _environment().get_template(TEMPLATE).render(
        name=result.name, input=result.input, inputs=result.inputs, headline=headline(result), label=d["label"],
        top_class=d["top_class"],
        confidence=d["confidence"], confidence_basis=confidence_basis(result),
        probabilities=probs, probabilities_basis=probabilities_basis(result),
        uncertain=d["uncertain"], reasons=list(d["reasons"]), image=image,
        method=result.explain.get("method"), explained_class=result.explain.get("class"),
        warning=heatmap_warning(result), uncertainty=uncertainty_words(result),
        faithfulness=faithfulness_words(result), lesion=lesion_words(result), finding=result.finding,
        finding_words=finding_words(result.finding) if result.finding else None,
        route=result.route,
        card=model_card(package), command=command, cwd=str(Path.cwd()),
        outputs={k: Path(v).name for k, v in outputs.items() if v},
        created=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))


def write_case_report(result, outputs: dict, package, out_dir: str | Path, *, command: str) -> Path:
    """Write ``out_dir/<name>_report.html`` atomically and return its path."""
    from ..io import atomic_write_text

    path = Path(out_dir) / output_file(result.name, "report")
    return atomic_write_text(path, render_case_report(result, outputs, package, command=command))
