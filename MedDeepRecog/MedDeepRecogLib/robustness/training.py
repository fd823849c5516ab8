"""Adversarial training as a per-batch input transform for the training loop.

:class:`AdversarialTraining` is a callable ``(model, x, y) -> x_train``; its
:meth:`~AdversarialTraining.batch_transform` has the signature of ``training.loop.Hooks.batch_transform``
(called on each training batch right before the loss).
``"pgd"`` is PGD-k (Madry et al. 2018); ``"fgsm_rs"`` is "fast is better than free" FGSM with a random start and
step ``1.25 * eps`` (Wong et al. 2020), one extra forward/backward per batch.

In a training config (``meddeeprecog train CONFIG``) it is the ``adversarial`` block::

    adversarial: {attack: pgd, eps: 0.05, steps: 3, bounds: [0, 1], fraction: 1.0,
                  evaluate: {eps: [0.02, 0.05, 0.1], attack: pgd, steps: 10, baseline: adrenal-mass-3d}}

:func:`run_adversarial_training` runs such a config with B's ``training.train.run_training`` (it takes the
block out when the config loader does not know it yet), then measures clean and robust accuracy / AUC on the
config's validation split for the new model and the optional ``baseline`` package (a normally trained one)
and writes the package with that table in ``model.json`` (``"robustness"``) and in ``MODEL_CARD.md``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, ModelPackageError
from .attacks import check_eps, pgd

log = logging.getLogger(__name__)


@dataclass
class AdversarialTraining:
    """Replace (a share of) each training batch by adversarial examples.

    Attributes:
        attack: ``"pgd"`` or ``"fgsm_rs"``.
        eps: L-infinity budget in model input units.
        steps: PGD iterations (ignored for ``fgsm_rs``).
        bounds: valid intensity range ``[low, high]`` of model inputs, or None.
        fraction: share of each batch replaced (1.0 = all; 0.5 = half clean, half adversarial).
    """

    attack: str = "pgd"
    eps: float = 0.03
    steps: int = 3
    bounds: tuple[float, float] | None = (0.0, 1.0)
    fraction: float = 1.0

    def __post_init__(self) -> None:
        if self.attack not in ("pgd", "fgsm_rs"):
            raise ConfigError(f"adversarial.attack must be 'pgd' or 'fgsm_rs', got {self.attack!r}")
        self.bounds = None if self.bounds is None else (float(self.bounds[0]), float(self.bounds[1]))
        self.eps = check_eps(self.eps, self.bounds)
        if not 0.0 < float(self.fraction) <= 1.0:
            raise ConfigError(f"adversarial.fraction must be in (0, 1], got {self.fraction}")
        if int(self.steps) < 1:
            raise ConfigError(f"adversarial.steps must be >= 1, got {self.steps}")

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> "AdversarialTraining | None":
        """Build from a training config's ``"adversarial"`` block (None or ``{"enabled": false}`` -> None)."""
        if not config or not config.get("enabled", True):
            return None
        known = {k: v for k, v in config.items() if k in cls.__dataclass_fields__}
        unknown = set(config) - set(known) - {"enabled", "evaluate"}
        if unknown:
            raise ConfigError(f"unknown adversarial option(s): {', '.join(sorted(unknown))}")
        return cls(**known)

    def to_config(self) -> dict[str, Any]:
        return {"enabled": True, **asdict(self)}

    def batch_transform(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                        info: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``training.loop.Hooks.batch_transform``: ``(model, x, y, info) -> (x_adv, y)``."""
        return self(model, x, y), y

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n = x.shape[0] if self.fraction >= 1.0 else max(1, int(round(self.fraction * x.shape[0])))
        was_training = model.training
        # craft in eval mode so batch-norm running statistics only ever see the batches actually trained on
        model.eval()
        try:
            if self.attack == "pgd":
                adv = pgd(model, x[:n], y[:n], self.eps, steps=self.steps, bounds=self.bounds)
            else:
                adv = pgd(model, x[:n], y[:n], self.eps, steps=1, step_size=1.25 * self.eps,
                          random_start=True, bounds=self.bounds)
        finally:
            model.train(was_training)
        return adv if n == x.shape[0] else torch.cat([adv, x[n:]], dim=0)


def _read_raw_config(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml
            return yaml.safe_load(text) or {}
        return json.loads(text)
    except Exception as exc:
        raise ConfigError(f"cannot parse config ({str(exc).splitlines()[0]})", path) from None


def run_adversarial_training(config: str | Path, *, out: str | Path | None = None,
                             package_dest: str | Path | None = None, epochs: int | None = None,
                             progress=None, command: str | None = None) -> dict[str, Any]:
    """Train a config that has an ``adversarial`` block, with that block as the loop's ``batch_transform``.

    Runs ``training.train.run_training`` into a temporary catalog, then :func:`finalize_adversarial_package`
    measures clean vs robust metrics and writes the package to ``package_dest``.

    Raises:
        ConfigError: the config has no (enabled) ``adversarial`` block, or the block is malformed.
    """
    import tempfile

    from ..progress import null_progress
    from ..training.config import config_from_dict
    from ..training.loop import Hooks
    from ..training.train import run_training

    progress = progress or null_progress
    path = Path(config)
    if not path.is_file():
        raise ConfigError("training config not found", path)
    raw = _read_raw_config(path)
    adv = AdversarialTraining.from_config(raw.get("adversarial"))
    if adv is None:
        raise ConfigError("the config has no enabled 'adversarial' block", path)
    evaluate = dict((raw.get("adversarial") or {}).get("evaluate") or {})
    cfg = config_from_dict(raw, path)
    if epochs:
        cfg.training.epochs = int(epochs)
    cmd = command or f"meddeeprecog robustness --train-config {path}"
    with tempfile.TemporaryDirectory(prefix="adv-train-") as tmp:
        result = run_training(cfg, out=out, package_dest=tmp, progress=progress,
                              hooks=Hooks(batch_transform=adv.batch_transform), command=cmd)
        if result["package"] is None:  # a torchrun rank other than 0: rank 0 measures and writes
            return result
        final = finalize_adversarial_package(result["package"], cfg, adv, evaluate, package_dest, progress=progress)
    result["package"] = str(final)
    return result


def finalize_adversarial_package(trained: str | Path, cfg, adv: AdversarialTraining, evaluate: dict[str, Any],
                                 package_dest: str | Path | None, *, progress=None) -> Path:
    """Measure clean vs robust metrics on the config's validation split and save the package to ``package_dest``.

    ``evaluate``: ``{"eps": [...], "attack": "pgd", "steps": 10, "baseline": package id or path or None}``.
    The table goes to ``model.json["robustness"]`` and to a "Robustness" section of ``MODEL_CARD.md``.
    """
    from ..packages import load_package, save_package
    from ..progress import null_progress
    from ..training.config import resolve_data_path
    from ..training.data import load_train_val
    from .curve import evaluate_robustness

    progress = progress or null_progress
    pkg = load_package(trained)
    eps = [float(e) for e in evaluate.get("eps", [adv.eps / 2, adv.eps, 2 * adv.eps])]
    attack_name = evaluate.get("attack", "pgd")
    steps = int(evaluate.get("steps", 10))
    data = load_train_val(cfg, resolve_data_path(cfg))
    x, y = torch.from_numpy(data.val.images), torch.from_numpy(data.val.labels)
    batches = [(x[i:i + 64], y[i:i + 64]) for i in range(0, len(y), 64)]
    rows = {}
    models = {f"{pkg.id} (adversarial, {adv.attack} eps {adv.eps:g})": pkg.build_model("cpu")}
    baseline = evaluate.get("baseline")
    if baseline:
        try:
            base = load_package(baseline)
            models[f"{base.id}@{base.version} (normal training)"] = base.build_model("cpu")
        except ModelPackageError as exc:
            # the adversarial model is still worth keeping; its card then lacks the comparison row
            log.warning("baseline %s not available, robustness table without it: %s", baseline, exc)
    for i, (name, model) in enumerate(models.items()):
        torch.manual_seed(0)
        progress("robustness", 0.98, model=name)
        rows[name] = evaluate_robustness(model, batches, eps, attack_name=attack_name, steps=steps,
                                         bounds=adv.bounds)
    meta = dict(pkg.meta)
    meta.pop("weights", None)
    prov = dict(meta["provenance"])
    prov.pop("created", None)
    prov["adversarial_training"] = adv.to_config()
    meta["provenance"] = prov
    meta["robustness"] = {"split": "val", "attack": attack_name, "steps": steps, "eps": eps,
                          "bounds": list(adv.bounds) if adv.bounds else None, "n": int(len(y)),
                          "adversarial_training": adv.to_config(),
                          "models": {name: {"clean": r["clean"], "robust": r["robust"]} for name, r in rows.items()}}
    card = (pkg.path / "MODEL_CARD.md").read_text(encoding="utf-8") + robustness_card_section(meta["robustness"])
    extra: dict[str, Any] = {"MODEL_CARD.md": card}
    for f in pkg.path.iterdir():
        if f.is_file() and f.name not in ("model.json", "MODEL_CARD.md", pkg.meta["weights"]["file"]):
            extra[f.name] = f
    return save_package(pkg.build_model("cpu"), meta, package_dest, extra_files=extra)


def robustness_card_section(rob: dict[str, Any]) -> str:
    """Markdown table: clean and robust accuracy / balanced accuracy / AUC per model and eps."""

    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}"

    lines = []
    adv = rob.get("adversarial_training")
    if adv:
        how = (f"PGD-{adv['steps']}" if adv["attack"] == "pgd" else "FGSM with random start (step 1.25 eps)")
        lines += ["\n## Adversarial training",
                  f"Each training batch: {adv['fraction']:.0%} replaced by {how} examples at eps {adv['eps']:g} "
                  f"(L-inf, model input units, clipped to {adv['bounds']}), crafted with the model in eval mode "
                  "(`robustness.training.AdversarialTraining` as the training loop's `batch_transform`)."]
    lines += [f"\n## Robustness ({rob['attack'].upper()}"
              f"{'-' + str(rob['steps']) if rob['attack'] == 'pgd' else ''}, L-inf, {rob['split']} split, "
              f"n = {rob['n']}; eps in model input units, valid range {rob['bounds']})",
              "", "| model | eps | accuracy | balanced accuracy | AUC |", "|---|---|---|---|---|"]
    for name, r in rob["models"].items():
        c = r["clean"]
        lines.append(f"| {name} | 0 (clean) | {fmt(c['accuracy'])} | {fmt(c.get('balanced_accuracy'))} | "
                     f"{fmt(c['auc'])} |")
        for p in r["robust"]:
            lines.append(f"| {name} | {p['eps']:g} | {fmt(p['accuracy'])} | {fmt(p.get('balanced_accuracy'))} | "
                         f"{fmt(p['auc'])} |")
    lines.append("\nMeasured by `robustness.training.finalize_adversarial_package` (same attack for every model, "
                 "untargeted on the true label, PGD with a seeded random start). The validation split was also used "
                 "to pick the best epoch, so clean figures are optimistic. eps is in model input units: after a "
                 "`window` step it is eps x window width in the scan's units (HU for CT); "
                 "`meddeeprecog robustness --input` reports it in HU per scan.\n")
    return "\n".join(lines)
