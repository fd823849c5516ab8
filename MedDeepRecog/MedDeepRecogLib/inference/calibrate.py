"""Choose a slice model's "uncertain" threshold on held-out data and record the decision rules in its package.

    python -m MedDeepRecogLib.inference.calibrate PACKAGE_DIR --data DATA.npz [--split val] [--quantile 0.02]
                                                  [--min-agreement 0.6] [--rules RULES.json]

Runs the packaged model on the held-out split (prepared exactly as ``meddeeprecog evaluate`` prepares it), takes
the per-image probability of the predicted class for the **correctly** classified images, and sets
``min_probability`` to its ``quantile`` (default 2 %: 98 % of correct held-out calls pass), rounded down to 0.05.
The result is written into the package's ``model.json`` as ``"decision"`` (with how it was chosen) and appended to
``MODEL_CARD.md``. The weights are not touched (their sha256 stays valid). Other rules (agreement, classes that
cannot describe a volume, class modality) come from ``--rules``/``--min-agreement`` and are recorded as given.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np


def held_out_confidence(package, data: str | Path, split: str = "val") -> dict[str, Any]:
    """Per-image top probability and correctness of ``package`` on ``split`` of ``data`` (a MedMNIST-style npz)."""
    import torch

    from ..training.data import load_eval_split
    from ..training.evaluate import _data_params

    intensity, size = _data_params(package)
    ds = load_eval_split(Path(data), split, package.input_spec["kind"], intensity, size)
    model = package.build_model("cpu")
    with torch.inference_mode():
        probs = torch.cat([torch.softmax(model(torch.as_tensor(ds.images[i:i + 256])), 1)
                           for i in range(0, len(ds), 256)]).numpy()
    pred = probs.argmax(1)
    return {"top_probability": probs.max(1), "correct": pred == ds.labels, "labels": ds.labels, "pred": pred}


def choose_threshold(top_probability: np.ndarray, correct: np.ndarray, quantile: float = 0.02) -> float:
    """The ``quantile`` of the correct calls' top probability, rounded down to a multiple of 0.05."""
    q = float(np.quantile(top_probability[correct], quantile))
    return max(0.05, np.floor(q * 20) / 20)


def calibrate_package(package_dir: str | Path, data: str | Path, *, split: str = "val", quantile: float = 0.02,
                      rules: Mapping[str, Any] | None = None, command: str | None = None) -> dict[str, Any]:
    """Write ``model.json["decision"]`` for the package in ``package_dir`` and return it."""
    from ..io import atomic_write_json, atomic_write_text
    from ..packages import load_package

    package = load_package(package_dir)
    stats = held_out_confidence(package, data, split)
    threshold = choose_threshold(stats["top_probability"], stats["correct"], quantile)
    correct = stats["correct"]
    passed_correct = float((stats["top_probability"][correct] >= threshold).mean())
    wrong = ~correct
    flagged_wrong = float((stats["top_probability"][wrong] < threshold).mean()) if wrong.any() else None
    decision = {**dict(rules or {}), "min_probability": threshold,
                "chosen_on": {"data": Path(data).name, "split": split, "n": int(len(correct)),
                              "accuracy": round(float(correct.mean()), 4),
                              "quantile_of_correct": quantile,
                              "correct_passing": round(passed_correct, 4),
                              "wrong_flagged": None if flagged_wrong is None else round(flagged_wrong, 4),
                              "command": command}}
    meta_path = Path(package.path) / "model.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["decision"] = decision
    atomic_write_json(meta_path, meta)
    card = Path(package.path) / "MODEL_CARD.md"
    if card.exists():
        text = card.read_text(encoding="utf-8")
        marker = "\n## Decision rules (calibrated)\n"
        text = text.split(marker)[0]
        text += (f"{marker}Chosen on `{Path(data).name}` split `{split}` ({len(correct)} images, accuracy "
                 f"{correct.mean():.4f}) by\n```\n{command}\n```\n"
                 f"- `min_probability` = **{threshold:.2f}**: the {quantile:.0%} quantile of the correct held-out calls' "
                 f"probability (rounded down); {passed_correct:.1%} of correct calls pass"
                 + (f", {flagged_wrong:.0%} of the {int(wrong.sum())} wrong calls are flagged" if flagged_wrong is not None
                    else "") + ".\n"
                 f"- Other rules as configured: `{json.dumps({k: v for k, v in decision.items() if k not in ('min_probability', 'chosen_on')})}`\n")
        atomic_write_text(card, text)
    return decision


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("package", help="package folder (its model.json is updated)")
    ap.add_argument("--data", required=True, help="held-out data (.npz), prepared as `meddeeprecog evaluate` does")
    ap.add_argument("--split", default="val")
    ap.add_argument("--quantile", type=float, default=0.02)
    ap.add_argument("--min-agreement", type=float, default=0.6)
    ap.add_argument("--rules", help="JSON file with more decision rules (volume_excluded_classes, class_modality)")
    args = ap.parse_args(argv)
    rules: dict[str, Any] = json.loads(Path(args.rules).read_text(encoding="utf-8")) if args.rules else {}
    rules["min_agreement"] = args.min_agreement
    command = "python -m MedDeepRecogLib.inference.calibrate " + " ".join(argv if argv is not None else sys.argv[1:])
    decision = calibrate_package(args.package, args.data, split=args.split, quantile=args.quantile, rules=rules,
                                 command=command)
    print(json.dumps(decision, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
