"""Adversarial training: a batch transform for the training loop, the ``adversarial:`` config block that switches it
on, and the robustness table its package carries.

:class:`AdversarialTraining` is a callable ``(model, x, y) -> x_train``; its
:meth:`~AdversarialTraining.batch_transform` has the signature of ``training.loop.Hooks.batch_transform``
(called on each training batch ``(x, y)`` right before the loss).
``"pgd"`` is PGD-k (Madry et al. 2018); ``"fgsm_rs"`` is "fast is better than free" FGSM with a random start and
step ``1.25 * eps`` (Wong et al. 2020), one extra forward/backward per batch.

In a training config (``meddeeprecog train CONFIG``) it is the ``adversarial`` block::

    adversarial: {attack: pgd, eps: 0.05, steps: 3, bounds: [0, 1], fraction: 1.0,
                  evaluate: {eps: [0.02, 0.05, 0.1], attack: pgd, steps: 10, baseline: adrenal-mass-3d}}

This module registers that block with the training config (:data:`ADVERSARIAL_BLOCK`, through
``training.hooks.register_config_block``; importing ``MedDeepRecogLib.robustness`` is enough), so training never
names it: ``load_config`` validates the block, and ``run_training`` takes its :class:`~..training.hooks.RunHooks`:
the batch transform, and :func:`add_robustness_table`, which measures clean and robust accuracy / AUC on the
config's validation split for the new model and the optional ``baseline`` package (a normally trained one) and
puts the table in ``model.json`` (``"robustness"``) and ``MODEL_CARD.md`` before the package is saved (once).
:func:`run_adversarial_training` is ``meddeeprecog robustness --train-config``: the same run, for a config that
must hold the block.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, ModelPackageError
from ..training.hooks import ConfigBlock, PackageDraft, RunHooks, register_config_block
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

    def batch_transform(self, model: torch.nn.Module, batch: Any, info: dict | None = None) -> tuple[torch.Tensor,
                                                                                                   torch.Tensor]:
        """``training.loop.Hooks.batch_transform``: ``(model, (x, y), info) -> (x_adv, y)``."""
        x, y = batch
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


def validate_block(block: Any) -> dict[str, Any] | None:
    """The ``adversarial:`` block as kept in the config (``None`` when absent or ``enabled: false``); raises
    :class:`ConfigError` for unknown options or bad values."""
    if block is not None and not isinstance(block, dict):
        raise ConfigError(f"adversarial must be a mapping of options, got {block!r}")
    if AdversarialTraining.from_config(block) is None:
        return None
    evaluate = block.get("evaluate")
    if evaluate is not None and not isinstance(evaluate, dict):
        raise ConfigError(f"adversarial/evaluate must be a mapping, got {evaluate!r}")
    return dict(block)


def adversarial_hooks(block: dict[str, Any], cfg: Any = None) -> RunHooks:
    """The run hooks of an ``adversarial:`` block: its batch transform and, before the package is saved, the
    robustness table (:func:`add_robustness_table`)."""
    adv = AdversarialTraining.from_config(block)
    evaluate = dict(block.get("evaluate") or {})

    def before_save(draft: PackageDraft, progress) -> None:
        add_robustness_table(draft, adv, evaluate, progress=progress)

    return RunHooks(batch_transform=adv.batch_transform, before_save=before_save)


#: The ``adversarial:`` training-config block (registered when this module is imported).
ADVERSARIAL_BLOCK = register_config_block(ConfigBlock("adversarial", validate_block, adversarial_hooks))


def run_adversarial_training(config: str | Path, *, out: str | Path | None = None,
                             package_dest: str | Path | None = None, epochs: int | None = None,
                             progress=None, command: str | None = None, resume: bool = False,
                             device: str | None = None) -> dict[str, Any]:
    """``meddeeprecog robustness --train-config``: train a config that must hold an enabled ``adversarial`` block.

    The config is read once (``training.config.load_config``); ``epochs`` / ``device`` override its
    ``training`` section and ``resume`` continues from ``OUT/checkpoints/last.pt``, as with ``meddeeprecog train``.

    Raises:
        ConfigError: the config has no (enabled) ``adversarial`` block, or the block is malformed.
    """
    from ..training.config import load_config
    from ..training.train import run_training

    path = Path(config)
    cfg = load_config(path, {"training": {"epochs": epochs, "device": device}})
    if cfg.blocks.get(ADVERSARIAL_BLOCK.key) is None:
        raise ConfigError("the config has no enabled 'adversarial' block", path)
    if command is None:   # called from Python: the command line that does the same (only train reads --device)
        from ..contract import reproduce_command

        words = ["train", str(path)] if device else ["robustness", "--train-config", str(path)]
        command = reproduce_command(words, {"out": out, "package_dest": package_dest, "epochs": epochs,
                                            "device": device})
    return run_training(cfg, out=out, resume=resume, package_dest=package_dest, progress=progress, command=command)


def add_robustness_table(draft: PackageDraft, adv: AdversarialTraining, evaluate: dict[str, Any], *,
                         progress=None) -> None:
    """Measure clean vs robust metrics on the run's validation split and add them to the package draft.

    ``evaluate``: ``{"eps": [...], "attack": "pgd", "steps": 10, "baseline": package id or path or None}``.
    The table goes to ``model.json["robustness"]`` (and the attack to ``provenance.adversarial_training``) and to a
    "Robustness" section of ``MODEL_CARD.md``.
    """
    from ..packages import load_package
    from ..progress import null_progress
    from .curve import evaluate_robustness

    progress = progress or null_progress
    meta = draft.meta
    eps = [float(e) for e in evaluate.get("eps", [adv.eps / 2, adv.eps, 2 * adv.eps])]
    attack_name = evaluate.get("attack", "pgd")
    steps = int(evaluate.get("steps", 10))
    x, y = torch.from_numpy(draft.data.val.images), torch.from_numpy(draft.data.val.labels)
    batches = [(x[i:i + 64], y[i:i + 64]) for i in range(0, len(y), 64)]
    rows = {}
    models = {f"{meta['id']} (adversarial, {adv.attack} eps {adv.eps:g})": draft.model}
    baseline = evaluate.get("baseline")
    if baseline:
        try:
            base = load_package(baseline)
            models[f"{base.id}@{base.version} (normal training)"] = base.build_model("cpu")
        except ModelPackageError as exc:
            # the adversarial model is still worth keeping; its card then lacks the comparison row
            log.warning("baseline %s not available, robustness table without it: %s", baseline, exc)
    for name, model in models.items():
        torch.manual_seed(0)
        progress("robustness", 0.98, model=name)
        rows[name] = evaluate_robustness(model, batches, eps, attack_name=attack_name, steps=steps,
                                         bounds=adv.bounds)
    meta["provenance"]["adversarial_training"] = adv.to_config()
    from ..contract import chosen_on_validation
    from .scan import eps_conversion

    metrics = meta.get("metrics") or {}
    conv = eps_conversion(meta.get("input") or {}, meta.get("modality"))
    meta["robustness"] = {"split": "val", "attack": attack_name, "steps": steps, "eps": eps,
                          "bounds": list(adv.bounds) if adv.bounds else None, "n": int(len(y)),
                          # the run's own record of how the checkpoint was chosen (train's metrics.selected_by)
                          "selected_by": metrics.get("selected_by"),
                          "checkpoint_chosen_on_split": chosen_on_validation(metrics, meta.get("training")),
                          "eps_conversion": conv["how"], "eps_per_unit": conv["per_unit"], "eps_unit": conv["unit"],
                          "adversarial_training": adv.to_config(),
                          "models": {name: {"clean": r["clean"], "robust": r["robust"]} for name, r in rows.items()}}
    draft.card_sections.append(robustness_card_section(meta["robustness"]))


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
    lines.append("\nMeasured by `robustness.training.add_robustness_table` (same attack for every model, "
                 "untargeted on the true label, PGD with a seeded random start). "
                 f"{_selection_sentence(rob)} eps is in model input units: {_conversion_sentence(rob)}\n")
    return "\n".join(lines)


def _selection_sentence(rob: dict[str, Any]) -> str:
    """What the run's checkpoint selection means for the table's clean figures, in the words the run recorded
    (``metrics.selected_by``, which the card's training section reads too)."""
    selected_by = rob.get("selected_by")
    if selected_by is None:   # a table made before the run's selection was recorded with it
        return "How the checkpoint was chosen is not recorded with this table (see the card's training section)."
    what = ("optimistic (the checkpoint was chosen on this split)" if rob.get("checkpoint_chosen_on_split")
            else f"a held-out estimate (the {rob['split']} split chose no checkpoint)")
    return (f"Checkpoint selection, as the run recorded it (`metrics.selected_by`): {selected_by}; so the new "
            f"model's clean figures are {what}, as the card's training section says.")


def _conversion_sentence(rob: dict[str, Any]) -> str:
    """eps in the scan's units as the package's input defines it (:func:`.scan.eps_conversion`), or that it has
    none."""
    how = rob.get("eps_conversion")
    if how is None:
        return "`meddeeprecog robustness --input` reports it in the scan's units where they are defined."
    tail = " (`meddeeprecog robustness --input` measures it per scan)." if rob.get("eps_unit") == "HU" else "."
    return f"{how}{tail}"
