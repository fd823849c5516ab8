"""``run_training(config)``: data → model → :func:`.classification.fit_classifier` → one model package + metrics
JSON + training curve.

Blocks of the config that other parts registered (:mod:`.hooks`, e.g. adversarial training) give the run their
batch transform and add to the package (``model.json`` entries, model-card sections) before it is saved, once.

Outputs in ``out`` (config ``out`` or the ``out`` argument): ``checkpoints/last.pt`` (resume), ``history.json``,
``metrics.json``, ``training_curve.png``; the package goes to ``package_dest/<id>/<version>/`` (default the user
catalog) as a new version with ``MODEL_CARD.md`` and ``training_curve.png`` inside.

Distributed data parallel: under ``torchrun --nproc_per_node=N -m MedDeepRecogLib train ...`` (``WORLD_SIZE`` > 1)
every rank loads the data, joins the process group (gloo on CPU, NCCL on CUDA; :mod:`.distributed`),
trains on its ``DistributedSampler`` share with **per-rank batch = ``training/batch_size`` // N** (so one optimiser
step still sees about ``batch_size`` samples; results match one process up to BatchNorm batch effects), and follows
rank 0's validation. Only rank 0 writes checkpoints, the package, metrics and plots; the other ranks wait at a
barrier and return ``{"package": None, "rank": r}``.

Ensembles (one package, architecture ``ensemble``, probabilities averaged):

- ``training/ensemble: N`` — a seed ensemble: member i is the single model trained with seed ``seed + i``; every
  member picks its best epoch on the validation split (``monitor: last``: keeps its final epoch, and the card says
  the validation split selected nothing).
- ``training/folds: K`` — a cross-validation ensemble: the train split is cut into K class-stratified folds; member
  i (seed ``seed + i``) trains on the other K-1 folds and picks its best epoch / stops early on fold i. The
  validation split takes no part in training or selection, so the package's ``val`` metrics are a held-out
  estimate, and ``metrics.cross_validation`` adds out-of-fold metrics over the whole train split (each case
  predicted by the one member that did not train on it) — with a small validation split, the steadier figure for
  comparing configs.
- ``training/folds: K`` with ``training/refit: N`` — the K fold members only estimate the recipe (out-of-fold
  metrics); then N members (seeds ``seed + K + i``) train on the whole train split, final epoch kept
  (``monitor: last``), and they alone form the package. Every member of the package has seen every train case;
  the val split still takes no part.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import ConfigError
from ..io import atomic_write_json
from ..progress import null_progress
from .classification import class_weights_from_labels, fit_classifier, make_loader, predict_proba
from .config import TrainConfig, load_config, resolve_data_path, resolve_init_path
# default_pipeline: the package's pipeline when the config declares none; at home beside the folder reader
# that runs it on training images as classify runs it on a scan
from .data import default_pipeline, load_train_val, stratified_folds, training_slices
from .hooks import PackageDraft, RunHooks, run_hooks
from .loop import CHECKPOINT, FitConfig, History, Hooks
from .metrics import classification_metrics

log = logging.getLogger(__name__)


def fit_config_from(cfg: TrainConfig, checkpoint_dir: Path | None, resume: bool, seed: int | None = None) -> FitConfig:
    """The loop's :class:`FitConfig`: the config's optimizer / schedule / training sections as they are."""
    return FitConfig(optimizer=cfg.optimizer, schedule=cfg.schedule, loop=cfg.training, monitor=cfg.training.monitor,
                     seed=int(cfg.seed if seed is None else seed),
                     checkpoint_dir=str(checkpoint_dir) if checkpoint_dir else None, resume=resume)


def class_weights_for(cfg: TrainConfig, train_labels: np.ndarray, num_classes: int) -> list[float] | None:
    """``training/class_weights``: ``auto`` (inverse class frequency of ``train_labels``), ``none`` or the list."""
    cw = cfg.training.class_weights  # the schema admits only "auto", "none" or a list of positive numbers
    if cw == "auto":
        return class_weights_from_labels(train_labels, num_classes)
    if cw == "none":
        return None
    if len(cw) == num_classes:
        return [float(v) for v in cw]
    raise ConfigError(f"training/class_weights must be auto, none or {num_classes} numbers, got {cw!r}", cfg.source)


def check_pipeline(pipeline: dict, source) -> None:
    """Validate the declared pipeline with the preprocessing module (when present) before training starts."""
    try:
        from ..preprocessing import Pipeline
    except ImportError:  # preprocessing is optional for training
        return
    try:
        Pipeline.from_data(pipeline)
    except Exception as exc:
        raise ConfigError(f"input/pipeline is not a valid preprocessing pipeline: {exc}", source) from None


def model_card(meta: dict, history: dict, data_desc: str) -> str:
    """A short Markdown model card from the package metadata and the training history."""
    from .domain import domain_card_lines
    m = meta.get("metrics", {})
    p = meta.get("provenance", {})
    skip = ("per_class", "confusion_matrix", "class_names", "cross_validation")  # shown elsewhere or not scalars
    rows = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                     for k, v in m.items() if k not in skip)
    lead = _axes_line(meta['input']) + _init_line(p.get('init'))
    return f"""# {meta['id']} {meta['version']}

{meta.get('description', '')}

- **Architecture**: `{meta['architecture']['name']}` {json.dumps(meta['architecture'].get('kwargs', {}))}
- **Classes**: {', '.join(meta['class_names'])}
- **Input**: {meta['input']['kind']}, size {meta['input'].get('size')}, {meta['input'].get('channels', 1)} channel(s);
  pipeline {json.dumps(meta['input'].get('pipeline'))}
- **Data**: {p.get('data')} — {data_desc}
{lead}{_selection_lines(history)}{_test_time_flip_line(meta['architecture'])}
{_use_lines(meta.get('use'), meta.get('explain'))}
## Validation metrics ({m.get('split', 'val')})
| metric | value |
|---|---|
{rows}

Confusion matrix (rows true, columns predicted; {', '.join(meta['class_names'])}): `{m.get('confusion_matrix')}`

{domain_card_lines(meta.get('domain'))}
## Reproduce
{reproduce_block(str(p.get('command')), meta['id'])}
seed {p.get('seed')}, code version {p.get('code_version')}, data fingerprint `{p.get('dataset_fingerprint')}`.
"""


#: Where a card's reproduce command writes its package and its run: the folders the package was made with hold that
#: version and that run once it is made (the bundled folder is never overwritten, ``check_new_version`` refuses a
#: version a destination holds, and ``train`` refuses an ``--out`` holding an earlier run), so the command as run
#: would be refused; scratch folders outside the catalogs take both.
REPRODUCE_DEST = "/tmp/meddeeprecog-reproduce"
REPRODUCE_OUT = "/tmp/meddeeprecog-reproduce-run"


def scratch_command(command: str) -> tuple[str, dict[str, str] | None]:
    """``(command, folders as run)``: a ``train`` or ``robustness --train-config`` command with its ``--out`` pointed
    at :data:`REPRODUCE_OUT` and its ``--package-dest`` at :data:`REPRODUCE_DEST` (added when the run used the
    default, the user catalog, which holds the version too); the folders it named, by option. Any other command
    unchanged, with ``None``. model.json's provenance keeps the command as run: only the card's reproduce text
    changes."""
    try:
        words = shlex.split(command)
    except ValueError:
        return command, None
    if "train" not in words and "--train-config" not in words:
        return command, None
    as_run = {"--package-dest": "the user catalog (the default)"}
    for option, scratch in (("--out", REPRODUCE_OUT), ("--package-dest", REPRODUCE_DEST)):
        for k, word in enumerate(words):
            if word == option and k + 1 < len(words):
                as_run[option], words[k + 1] = words[k + 1], scratch
                break
            if word.startswith(f"{option}="):
                as_run[option], words[k] = word.split("=", 1)[1], f"{option}={scratch}"
                break
        else:
            if option == "--package-dest":
                words += [option, scratch]
    return shlex.join(words), as_run


def reproduce_block(command: str, pkg_id: str) -> str:
    """The card's reproduce command in a code block, into scratch folders (:func:`scratch_command`), and a line on
    where the run and the package were made."""
    shown, as_run = scratch_command(command)
    block = f"```\n{shown}\n```"
    if as_run is None:
        return block
    made = ((f"its run in {as_run['--out']} and " if "--out" in as_run else "")
            + f"the package in {as_run['--package-dest']}")
    return (f"{block}\nThe command writes into scratch folders (`{REPRODUCE_OUT}` for the run, `{REPRODUCE_DEST}` for "
            f"the package; any empty folders outside the catalogs will do): this card's {pkg_id} network was "
            f"trained with {made}, which hold them now and would refuse them again. model.json's provenance keeps "
            f"the command as run.")


#: The Reproduce section's line on a calibrated version's further steps (their commands are records of what ran,
#: in the card's calibration sections, and keep the folder they wrote to).
CALIBRATE_REPRODUCE = (f"Then run this card's `meddeeprecog calibrate` commands (in its calibration, out-of-domain and "
                       f"low-confidence sections) in the order of the versions they made, each with `--model` naming "
                       f"the package the step before wrote (`--model {REPRODUCE_DEST}/ID/VERSION`: an `ID@VERSION` "
                       f"names the installed package, not the one just made) and `--dest {REPRODUCE_DEST}` in place "
                       f"of the folder it names (that folder holds those versions too).")


def scratch_reproduce_section(card: str, pkg_id: str, calibrated: bool = False) -> str:
    """``card`` with the command of its "## Reproduce" section in a scratch destination (:func:`reproduce_block`)
    and, for a ``calibrated`` version, :data:`CALIBRATE_REPRODUCE` after it; the rest of the card, and a card
    without that section, unchanged (``calibrate`` copies a parent's card, which may predate this)."""
    start = card.find("\n## Reproduce\n```\n")
    body = start + len("\n## Reproduce\n")
    end = card.find("\n```", body + 3) if start >= 0 else -1
    if end < 0 or "\n" in card[body + 4:end]:
        return card
    command = card[body + 4:end]
    if REPRODUCE_DEST not in command:
        block = reproduce_block(command, pkg_id)
        card = card[:body] + block + card[end + 4:]
        end = body + len(block) - 4
    if calibrated and CALIBRATE_REPRODUCE not in card:
        line_end = card.find("\n", end + 4 + 1)   # past the scratch-folder line under the code block
        line_end = len(card) if line_end < 0 else line_end
        card = card[:line_end] + "\n" + CALIBRATE_REPRODUCE + card[line_end:]
    return card


def _test_time_flip_line(architecture: dict) -> str:
    """The card's line on ``training/test_time_flip`` (empty without one), starting with a newline."""
    axes = (architecture.get("kwargs") or {}).get("flip_axes")
    if not axes:
        return ""
    return (f"\n- **Test-time flip** (`training/test_time_flip: {axes}`): every member also sees the image mirrored "
            f"along spatial axis {' and '.join(str(a) for a in axes)}, and the probabilities are averaged over both "
            f"views; the out-of-fold, validation and calibration figures are of that averaged prediction, and the "
            f"heatmap joins both views (the mirror view flipped back).")


def _use_lines(use: dict | None, explain: dict | None) -> str:
    """The card's intended use, what not to use the model for, and why its heatmap method was chosen."""
    lines = []
    if use:
        lines.append(f"\n## Intended use\n{use.get('intended_use', '')}\n")
        if use.get("not_for"):
            lines.append("## Do not use it for\n" + "\n".join(f"- {item}" for item in use["not_for"]) + "\n")
    if explain and explain.get("rationale"):
        lines.append(f"## Heatmap method\n`{(explain.get('methods') or ['gradcam'])[0]}` on "
                     f"`{explain.get('target_layer')}`: {explain['rationale']}\n")
    return "\n".join(lines)


def explain_method(meta: dict) -> str:
    explain = meta.get("explain") or {}
    return f"{(explain.get('methods') or ['gradcam'])[0]} on `{explain.get('target_layer')}`"


def _selection_lines(history: dict) -> str:
    members = history.get("members")
    if not members:
        if history.get("monitor") == "last":
            return (f"- **No checkpoint selection**: the weights of the final epoch are kept (monitor `last`), so the "
                    f"validation split decided nothing and its figures are a held-out estimate.\n- **Stopped**: "
                    f"{history.get('stopped')} after {len(history.get('epochs', []))} epochs.")
        return (f"- **Checkpoint selection**: best epoch {history.get('best_epoch')} by validation "
                f"`{history.get('monitor')}`\n  (the validation split was used for model selection, so its figures "
                f"are optimistic; decision = argmax).\n- **Stopped**: {history.get('stopped')} after "
                f"{len(history.get('epochs', []))} epochs.")

    def member_line(i: int, m: dict) -> str:
        if m["monitor"] == "last":
            return (f"  - member {i}: seed {m['seed']}, final epoch {m['best_epoch']} kept (no selection), "
                    f"{m['stopped']}")
        return (f"  - member {i}: seed {m['seed']}, best epoch {m['best_epoch']} of {len(m['epochs'])} by "
                f"`{m['monitor']}` {m['best_metric']:.4f} on {m.get('selected_on', 'the validation split')}, "
                f"{m['stopped']}")

    rows = "\n".join(member_line(i, m) for i, m in enumerate(members, start=1))
    cv = history.get("cross_validation")
    if cv and history.get("fold_members"):
        folds = "\n".join(member_line(i, m) for i, m in enumerate(history["fold_members"], start=1))
        return (f"- **Cross-validation estimate of the recipe**: the train split cut into {cv['folds']} class-stratified "
                f"folds{' that keep each patient group whole' if cv.get('grouped') else ''}; fold member i trains on "
                f"the other folds and is scored on fold i (these members are not in the package):\n{folds}\n"
                f"- **Out-of-fold** (every train case scored by the fold member that did not train on it, n={cv['n']}): "
                f"AUC {_figure(cv['auc'])}, balanced accuracy {_figure(cv['balanced_accuracy'])}, accuracy "
                f"{_figure(cv.get('accuracy'))}; per fold AUC {', '.join(_figure(a) for a in cv['fold_auc'])}"
                f"{_fold_sizes(cv)}.\n"
                f"{_prior_shift_line(cv)}"
                f"- **The package: {len(members)} members refitted on the whole train split** with the same recipe "
                f"(own seed, final epoch kept). Probabilities averaged; decision = argmax"
                f"{' after the prior shift' if cv.get('prior_shift') else ''}. The validation split took "
                f"no part in training or selection, so its figures below are a held-out estimate.\n{rows}")
    if not cv:
        if all(m["monitor"] == "last" for m in members):
            return (f"- **Seed ensemble** of {len(members)} members trained independently (own seed, data order, "
                    f"augmentation); probabilities averaged; decision = argmax.\n- **No checkpoint selection**: each "
                    f"member keeps its final epoch (monitor `last`), so the validation split decided nothing and its "
                    f"figures are a held-out estimate:\n{rows}")
        return (f"- **Seed ensemble** of {len(members)} members trained independently (own seed, data order, "
                f"augmentation, best epoch); probabilities averaged.\n- **Checkpoint selection**: each member's best "
                f"epoch on the validation split (used for model selection, so its figures are optimistic; decision = "
                f"argmax):\n{rows}")
    return (f"- **Cross-validation ensemble** of {len(members)} members: the train split cut into {cv['folds']} "
            f"class-stratified folds{' that keep each patient group whole' if cv.get('grouped') else ''}; member i "
            f"trains on the other folds and is scored on fold i. Probabilities averaged; decision = argmax"
            f"{' after the prior shift' if cv.get('prior_shift') else ''}.\n"
            f"- **The validation split took no part in training or checkpoint selection**, so its figures below are a "
            f"held-out estimate.\n{rows}\n"
            f"- **Out-of-fold** (every train case scored by the member that did not train on it, n={cv['n']}): "
            f"AUC {_figure(cv['auc'])}, balanced accuracy {_figure(cv['balanced_accuracy'])}, accuracy "
            f"{_figure(cv.get('accuracy'))}; per fold AUC {', '.join(_figure(a) for a in cv['fold_auc'])}"
            f"{_fold_sizes(cv)}."
            + (f"\n{_prior_shift_line(cv).rstrip()}" if cv.get("prior_shift") else ""))


def _fold_sizes(cv: dict) -> str:
    """The card's clause on each fold's cases per class (empty for a record made before they were kept)."""
    counts = cv.get("fold_class_counts")
    if not counts:
        return ""
    return "; cases per class in each fold " + ", ".join("/".join(str(c) for c in fold) for fold in counts)


#: Which patient axis each array axis of a ``volume3d`` model's input is: classify reads a scan in its LPS view as
#: ``(Z, Y, X)`` (:func:`..preprocessing.model_grid.volume_from_image`), and training feeds a ``(N, D, H, W)`` array
#: as it is, so a training array's axes are those.
VOLUME_AXES_LINE = (
    "- **Array axes** (volume3d): axis 0 of a training array (after the case axis) is inferior→superior (LPS z), "
    "axis 1 anterior→posterior (LPS y), axis 2 right→left (LPS x): `classify` reads a scan in its LPS view as "
    "(Z, Y, X) (`preprocessing.model_grid.volume_from_image`). To run an array `a` of such data through the model, "
    "write it with `SimpleITK.GetImageFromArray(a)` (identity direction), or with nibabel as "
    "`Nifti1Image(a.transpose(2, 1, 0), np.diag([-1, -1, 1, 1]))`; nibabel with an identity affine reaches the "
    "model transposed and mirrored.\n")


def _axes_line(input_spec: dict) -> str:
    """The card's line on which patient axis each training-array axis is (volume3d inputs only), newline-terminated."""
    return VOLUME_AXES_LINE if input_spec.get("kind") == "volume3d" else ""


def _init_line(init: dict | None) -> str:
    """The card's line on ``model/init`` (empty without one), newline-terminated."""
    if not init:
        return ""
    from .init_weights import init_words

    if "pretraining" in init:   # weights read before pools were recorded keep the line they had
        pre = f"; pretraining: {init_words(init)}"
    else:
        pre = ""
    warn = "".join(f"- **WARNING**: {w}\n" for w in init.get("pool_warnings") or [])
    return (f"- **Started from** `{init['file']}` (SHA-256 {init['sha256'][:16]}…): {init['tensors_set']} of the "
            f"network's {init['tensors_total']} tensors, the rest initialised afresh (`model/init`)"
            + (f"; fresh layers: {', '.join(init['fresh_layers'])}" if init.get("fresh_layers") else "")
            + (f"; made for {init['made_for_config']}: {init['made_for_other_config']}"
               if init.get("made_for_other_config") else "") + f"{pre}\n{warn}")


def _prior_shift_line(cv: dict) -> str:
    """The card's line on ``training/prior_shift`` (empty without one), newline-terminated."""
    shift = cv.get("prior_shift")
    if not shift:
        return ""
    metric = shift["metric"]
    return (f"- **Prior shift** (`training/prior_shift: {metric}`): class log-odds offsets "
            f"{shift['class_log_offsets']} chosen on the out-of-fold probabilities to maximise "
            f"{metric.replace('_', ' ')} there. Out of fold {_figure(cv.get(metric))} without the shift; with it "
            f"{_figure(shift['cross_fitted'][metric])} cross-fitted (each fold scored with offsets fitted on the "
            f"other folds: the estimate) and {_figure(shift['tuned'][metric])} tuned on all of them (optimistic); "
            f"both are the fold members' figures, and refitted members may be calibrated differently. "
            f"The packaged ensemble adds the offsets to its output, so every decision (scan, slices, heatmap class) "
            f"and the validation figures below include them.\n")


def _figure(value: float | None) -> str:
    """A card figure to 4 places; ``n/a`` where there is none (a fold without every class has no AUC)."""
    return "n/a" if value is None else f"{value:.4f}"


def run_training(config: TrainConfig | str | Path, out: str | Path | None = None, resume: bool = False,
                 package_dest: str | Path | None = None, progress: Callable[..., None] | None = None,
                 hooks: Hooks | None = None, command: str | None = None) -> dict[str, Any]:
    """Train from a config (file or :class:`TrainConfig`) and write a new package version; returns the paths.

    Fails before training (nothing written) if the config, data or target package version are wrong.
    Under ``torchrun`` every rank calls this (see the module docstring); only rank 0 writes.
    ``hooks``: the loop's extension points (:class:`.loop.Hooks`); the config's registered blocks add theirs.
    """
    import torch.distributed as dist

    from .distributed import init_distributed, leaving_together

    cfg = config if isinstance(config, TrainConfig) else load_config(config)
    extensions = run_hooks(cfg.blocks, cfg)
    owned = not (dist.is_available() and dist.is_initialized())
    ctx = init_distributed(cfg.training.device)
    made: list[Path] = []   # the run folders this call creates
    where: dict[str, Path] = {}   # the run folder, once chosen (what a cancelled run says is kept there)
    with leaving_together(ctx, owned):  # a process group that the caller set up is left to the caller
        try:
            return _run_training(cfg, ctx, out, resume, package_dest, progress if ctx.is_main else None,
                                 _with_batch_transforms(hooks, extensions), extensions, command, made, where)
        except BaseException as exc:
            if made:   # a run refused at its first step leaves no folder behind (its record goes with it)
                if not (made[0] / "checkpoints").exists():
                    (made[0] / RUN_RECORD).unlink(missing_ok=True)
                remove_empty_folders(made[0], made)
            if isinstance(exc, KeyboardInterrupt):   # Ctrl-C / SIGTERM: say where to resume, if anywhere
                out_dir = where.get("out_dir")
                epochs = completed_epochs(out_dir) if out_dir is not None and out_dir.is_dir() else None
                raise TrainingCancelled(out_dir, epochs) from exc
            raise


class TrainingCancelled(KeyboardInterrupt):
    """A run stopped by Ctrl-C or SIGTERM: ``out_dir`` its run folder (``None`` before one was chosen) and
    ``epochs`` the most epochs its checkpoints hold (``None``: none, e.g. cancelled while the data loaded)."""

    def __init__(self, out_dir: Path | None, epochs: int | None):
        super().__init__()
        self.out_dir, self.epochs = out_dir, epochs

    def message(self) -> str:
        """What the user is told: where to resume from, only when there are checkpoints to resume."""
        if self.epochs:
            return (f"cancelled; the checkpoints of the epochs completed are kept in {self.out_dir} ({self.epochs} "
                    "epoch(s)): run the same command with --resume to continue")
        return ("cancelled before any epoch was completed: no checkpoint was kept, so the same command starts "
                "again from the first epoch")


#: What a run folder records of the run that made it, so that ``--resume`` continues only that run.
RUN_RECORD = "run.json"
#: The config sections that decide the weights (the package's id, version, card and domain check do not).
RUN_SECTIONS = ("seed", "data", "model", "input", "augmentation", "optimizer", "schedule", "training")
#: ``training`` settings a resume may change: how long the run goes on (a finished run resumed with more epochs
#: continues it), and where and how the steps run.
RESUMABLE_TRAINING = ("epochs", "device", "compile")


def run_record(cfg: TrainConfig, data_fingerprint: str) -> dict:
    """The settings that decide a run's weights, as JSON data: those sections of the config (the data file by
    content, not by the path it was named by) and the data's fingerprint."""
    import dataclasses

    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k in RUN_SECTIONS}
    settings["data"] = {k: v for k, v in settings["data"].items() if k != "path"}
    settings["training"] = {k: v for k, v in settings["training"].items() if k not in RESUMABLE_TRAINING}
    return json.loads(json.dumps({"settings": settings, "data_sha256": data_fingerprint}, sort_keys=True,
                                 default=str))


def _differences(before: Any, now: Any, where: str = "") -> list[str]:
    """``section/key: before -> now`` for every value both records hold and that differs (a key only one holds is
    a setting added or dropped by another version of the code, not a change of the run)."""
    if isinstance(before, dict) and isinstance(now, dict):
        return [d for k in sorted(set(before) & set(now))
                for d in _differences(before[k], now[k], f"{where}/{k}" if where else k)]
    return [] if before == now else [f"{where}: {before!r} -> {now!r}"]


def check_resumed_run(out_dir: Path, record: dict, resume: bool) -> None:
    """Record this run's settings in ``out_dir``; with ``resume`` and checkpoints there, first refuse a folder whose
    run had other settings (its checkpoints would be continued as if they were this config's, and the package
    would claim settings its weights were not trained with)."""
    path = out_dir / RUN_RECORD
    if resume and (out_dir / "checkpoints").is_dir():
        if path.is_file():
            try:
                before = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                before = None
            if not isinstance(before, dict):
                raise ConfigError(f"--resume: {RUN_RECORD} cannot be read, so the run there cannot be matched to "
                                  "this config; give a new --out folder", out_dir)
            changed = _differences(before, record)
            if changed:
                raise ConfigError(f"--resume: the run in this folder had other settings ({'; '.join(changed[:3])}"
                                  f"{'; ...' if len(changed) > 3 else ''}); resume it with its own config and "
                                  "options, or give a new --out folder", out_dir)
            if before == record:
                return   # unchanged: a resumed run that trains nothing leaves its folder as it was
        else:
            log.warning("--resume: %s has no %s (made by an earlier version), so its settings cannot be matched to "
                        "this config's", out_dir, RUN_RECORD)
    atomic_write_json(path, record)


def completed_epochs(out_dir: Path) -> int | None:
    """The most epochs any network of the run in ``out_dir`` has completed, read from its checkpoints (one
    ``last.pt``, or one per ensemble member); ``None`` when it holds none that can be read (a damaged checkpoint is
    refused where the loop loads it)."""
    import torch

    counts = []
    for ckpt in sorted((out_dir / "checkpoints").rglob(CHECKPOINT)):
        try:   # mapped, not read: only the epoch number is wanted
            counts.append(int(torch.load(str(ckpt), map_location="cpu", weights_only=True, mmap=True)["epoch"]))
        except Exception:
            continue
    return max(counts) if counts else None


def check_resume_epochs(out_dir: Path, epochs: int) -> None:
    """Refuse ``--resume`` with fewer epochs than the run in ``out_dir`` has completed: the loop would train
    nothing, and the package would carry the longer run's weights and metrics under the shorter run's config and
    reproduce command."""
    done = completed_epochs(out_dir)
    if done is not None and done > epochs:
        raise ConfigError(f"--resume: the run in this folder has completed {done} epochs, more than the {epochs} "
                          f"asked (training/epochs or --epochs); a run is not shortened: resume it with --epochs "
                          f"{done} or more, or give a new --out folder", out_dir)


def finished_run(out_dir: Path, epochs: int) -> dict[str, Any] | None:
    """What the finished run in ``out_dir`` wrote, when resuming it to ``epochs`` would train nothing more: its
    package is written (``metrics.json`` names it), no checkpoint is further than that package, and every network
    has either reached ``epochs`` or stopped early. ``None`` otherwise (the run goes on, or has not finished).
    A resumed run that trains nothing writes no second package with the same weights."""
    try:
        metrics = json.loads((out_dir / "metrics.json").read_text(encoding="utf-8"))
        history = json.loads((out_dir / "history.json").read_text(encoding="utf-8"))
        package = Path(metrics["package"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    networks = [*(history.get("members") or [history]), *(history.get("fold_members") or [])]
    trained = [len(n.get("epochs") or []) for n in networks]
    if not trained or completed_epochs(out_dir) != max(trained):
        return None   # a resumed run went further after the package was written (then stopped)
    if any(n.get("stopped") == "completed" and count < epochs for n, count in zip(networks, trained)):
        return None
    return {"package": str(package), "id": package.parent.name, "version": package.name,
            "metrics": str(out_dir / "metrics.json"), "training_curve": str(out_dir / "training_curve.png"),
            "history": str(out_dir / "history.json"), "val_auc": metrics.get("auc"),
            "val_balanced_accuracy": metrics.get("balanced_accuracy"),
            "complete": f"already trained {max(trained)} epochs; nothing trained, no package written"}


def check_run_folder(out_dir: Path, resume: bool) -> None:
    """Refuse ``--out`` when it holds an earlier run and ``resume`` is off (its checkpoints, history and metrics
    would be replaced), or any other files (a run does not write into a user's folder); an empty or new folder is
    fine, and so is a run with ``resume`` (which says so when there is nothing to resume)."""
    if resume and not (out_dir / "checkpoints").is_dir():
        log.warning("--resume: %s holds no checkpoint; the run starts from its first epoch", out_dir)
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ConfigError("--out is an existing file; name a folder for the run", out_dir)
    entries = sorted(p.name for p in out_dir.iterdir())
    if not entries or entries == [RUN_RECORD]:  # a run that stopped before its first checkpoint
        return
    if {"checkpoints", "history.json"} & set(entries):
        if not resume:
            raise ConfigError("holds an earlier run: --resume continues it, or give a new --out folder", out_dir)
        return
    raise ConfigError(f"is not empty ({', '.join(entries[:3])}{', ...' if len(entries) > 3 else ''}): give a new "
                      f"or empty --out folder for the run", out_dir)


def remove_empty_folders(top: Path, made: list[Path]) -> None:
    """Remove the empty folders under ``top`` and those of ``made`` (folders this run created) left empty."""
    if top.is_dir():
        for folder in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            try:
                folder.rmdir()
            except OSError:
                pass
    for folder in made:   # deepest first
        try:
            folder.rmdir()
        except OSError:
            break


def _with_batch_transforms(hooks: Hooks | None, extensions: list[RunHooks]) -> Hooks | None:
    """``hooks`` with the blocks' batch transforms after its own (applied in that order)."""
    transforms = [h.batch_transform for h in extensions if h.batch_transform is not None]
    if not transforms:
        return hooks
    hooks = replace(hooks) if hooks is not None else Hooks()
    chain = ([hooks.batch_transform] if hooks.batch_transform is not None else []) + transforms

    def batch_transform(model, batch, info):
        for transform in chain:
            batch = transform(model, batch, info)
        return batch

    hooks.batch_transform = batch_transform if len(chain) > 1 else chain[0]
    return hooks


def _run_training(cfg: TrainConfig, ctx, out, resume, package_dest, progress, hooks, extensions,
                  command, made: list[Path], where: dict[str, Path] | None = None) -> dict[str, Any]:
    import torch

    from ..io import check_output_dir
    from ..models import build_model, default_target_layer
    from ..models.ensemble import ensemble_around
    from ..packages import catalogs_with, check_new_version, check_same_kind, next_version
    from ..packages.package import validate_meta
    from ..uncertainty.calibration import PRIOR_SHIFT_MAX_CLASSES
    from .distributed import barrier, broadcast_object, per_rank_batch

    progress = progress or null_progress
    if out is None and cfg.out is None and not resume:   # the default folder: an earlier run there is kept
        from ..io import free_version
        out = broadcast_object(str(Path("runs") / free_version("runs", cfg.id, lambda name: [name])), ctx)
    out_dir = Path(out or cfg.out or f"runs/{cfg.id}")
    if not Path(out_dir).is_absolute() and out is None and cfg.out and cfg.source:
        out_dir = Path(cfg.source).resolve().parent / out_dir
    if where is not None:
        where["out_dir"] = out_dir
    roots = catalogs_with(package_dest or None)
    dest = roots[0]
    # resuming a finished run trains nothing and writes nothing: it names the run's package (its version is taken)
    finished = broadcast_object(finished_run(out_dir, int(cfg.training.epochs)) if resume and ctx.is_main
                                else None, ctx)
    # a chosen version is refused before anything is read if any catalog holds it (the bundled package a config
    # in configs/ rebuilt included); the default is the next version free in all of them
    version = broadcast_object(check_new_version(cfg.id, cfg.version, roots, "version", cfg.source)
                               if cfg.version is not None and finished is None else next_version(cfg.id, roots), ctx)
    if finished is None:
        check_same_kind(cfg.id, "classification", cfg.data.kind, roots, "id", cfg.source)
    if ctx.is_main:   # both folders are checked before the data are read: a run never fails on them at its end
        check_output_dir(dest, "--package-dest")
        check_run_folder(out_dir, resume)
        if resume:
            check_resume_epochs(out_dir, int(cfg.training.epochs))
        warmup, epochs = int(cfg.schedule.warmup_epochs or 0), int(cfg.training.epochs)
        if warmup >= epochs > 1:   # allowed (a short --epochs override of a long recipe), but worth a word
            log.warning(
                "schedule/warmup_epochs (%d) is not below training/epochs (%d): the learning rate never leaves its "
                "warm-up ramp", warmup, epochs)

    progress("load data", 0.0)
    data_path = resolve_data_path(cfg)
    data = load_train_val(cfg, data_path)
    if cfg.domain:  # the negatives are read after training: a set that cannot be read is refused now
        from .domain import check_negative_files

        check_negative_files((cfg.domain or {}).get("negatives") or [], cfg.source)
    for extension in extensions:   # so are the files the config's blocks read after training
        if extension.check is not None:
            extension.check()
    if ctx.is_main:
        made.extend(d for d in (out_dir, *out_dir.parents) if not d.exists())   # deepest first
        out_dir.mkdir(parents=True, exist_ok=True)
        check_resumed_run(out_dir, run_record(cfg, data.fingerprint), resume)
    if finished is not None:   # its settings matched (check_resumed_run): the run is this config's
        log.warning("--resume: the run in %s is complete (%d epochs); its package is %s: nothing to train, no new "
                    "package (more epochs continue it; a new --out folder starts another run)", out_dir,
                    completed_epochs(out_dir), finished["package"])
        return finished
    k = len(data.class_names)
    if cfg.training.prior_shift != "none" and k > PRIOR_SHIFT_MAX_CLASSES:
        raise ConfigError(f"training/prior_shift is fitted for at most {PRIOR_SHIFT_MAX_CLASSES} classes; the data "
                          f"have {k}", cfg.source)
    channels = int(data.train.images.shape[1])
    kwargs = {**cfg.model.kwargs, "in_channels": channels, "num_classes": k}
    size = list(int(s) for s in data.train.images.shape[2:])
    input_spec = {"kind": data.kind, "size": size, "spacing_mm": cfg.input.spacing_mm, "channels": channels,
                  "pipeline": cfg.input.pipeline or default_pipeline(cfg)}
    if cfg.input.content:
        input_spec["content"] = cfg.input.content
    slices = training_slices(cfg)
    if slices is not None:   # {} too: evaluate then standardises as training and classify did
        input_spec["slices"] = slices
    cmd = command or " ".join(shlex.quote(a) for a in ["meddeeprecog", *sys.argv[1:]])
    n_folds = int(cfg.training.folds)
    n_refit = int(cfg.training.refit)
    n_members = n_refit or n_folds or int(cfg.training.ensemble)
    arch = {"name": cfg.model.name, "kwargs": kwargs}
    if n_members > 1:
        arch = {"name": "ensemble", "kwargs": {"member": cfg.model.name, "member_kwargs": dict(cfg.model.kwargs),
                                               "members": n_members, "in_channels": channels, "num_classes": k}}
        if cfg.training.test_time_flip:
            arch["kwargs"]["flip_axes"] = sorted(int(a) for a in cfg.training.test_time_flip)
    attention = ["attention"] if cfg.model.name in ("cnn_lstm", "attention_cnn3d") and n_members == 1 else []
    meta = {"id": cfg.id, "version": version, "task": "classification", "description": cfg.description,
            "architecture": arch, "class_names": data.class_names,
            "modality": cfg.modality, "input": input_spec,
            "explain": cfg.explain or {"methods": ["gradcam"] + attention,
                                       "target_layer": default_target_layer(arch["name"], **arch["kwargs"])},
            # explain.target_layer is named for the network the package holds once it is built (package_explain)
            "provenance": {"data": str(data_path), "split": data.description, "command": cmd, "seed": cfg.seed,
                           "parent": None, "dataset_fingerprint": data.fingerprint, "config": cfg.to_dict(),
                           **({"world_size": ctx.world_size} if ctx.enabled else {})},
            "weights": {"file": "weights.safetensors", "sha256": "pending"}}
    if cfg.card:
        meta["use"] = {"intended_use": cfg.card.get("intended_use", ""), "not_for": list(cfg.card.get("not_for", []))}
    validate_meta(meta, cfg.source)
    check_pipeline(input_spec["pipeline"], cfg.source)

    torch.manual_seed(cfg.seed)
    try:   # a step's batch is bounded here too: per process, as the loader below splits it (distributed)
        model = build_model(cfg.model.name, input_shape=tuple(data.train.images.shape[1:]),
                            batch_size=per_rank_batch(int(cfg.training.batch_size), ctx), **kwargs)
    except ConfigError as exc:   # the budget names the setting; the line names the config too
        raise ConfigError(exc.problem, exc.path or cfg.source) from None
    with torch.no_grad():  # fail early (before any epoch) if the data do not fit the network
        try:
            model.eval()(torch.as_tensor(data.train.images[:2]))
        except RuntimeError as exc:
            raise ConfigError(f"model {cfg.model.name} does not accept inputs of shape "
                              f"{tuple(data.train.images.shape[1:])}: {str(exc).splitlines()[0][:200]}",
                              cfg.source) from None
    # the package's network: one trained network, or an ensemble of them (its layers are its members')
    meta["explain"] = package_explain(meta["explain"], model if n_members == 1 else
                                      ensemble_around(model, **arch["kwargs"]), cfg)
    init = None
    if cfg.model.init:  # checked against the network before anything trains; every member starts from it
        from .init_weights import read_init_state
        init, record = read_init_state(resolve_init_path(cfg), model, cfg.source,
                                       model_section={"name": cfg.model.name, "kwargs": cfg.model.kwargs})
        from .init_weights import pool_warnings

        record["pool_warnings"] = pool_warnings(record, data.fingerprint, data_path, cfg.data.val_split,
                                                cfg.data.val_fraction)
        for warning in record["pool_warnings"]:
            log.warning("model/init %s: %s", record["file"], warning)
        meta["provenance"]["init"] = record
    bs = int(cfg.training.batch_size)
    val_loader = make_loader(data.val.images, data.val.labels, max(bs, 64), shuffle=False)
    t0 = time.perf_counter()
    if n_members == 1:
        history = _fit_member(cfg, model, data, val_loader, out_dir / "checkpoints", cfg.seed, resume, hooks,
                              progress, ctx, init)
    else:
        model = build_model(arch["name"], **arch["kwargs"])
        folds = stratified_folds(data.train.labels, n_folds, cfg.seed, cfg.source,
                                 groups=data.train_groups) if n_folds else None
        oof = np.full((len(data.train), k), np.nan) if folds is not None else None  # out-of-fold probabilities
        stages = n_folds + n_refit if n_refit else n_members  # members trained, for the progress fraction
        fold_model = build_model(arch["name"], **{**arch["kwargs"], "members": n_folds}) if n_refit else model
        member_histories = []
        for i in range(n_folds or n_members):
            seed = cfg.seed + i
            torch.manual_seed(seed)
            fold_model.members[i] = build_model(cfg.model.name, **kwargs)  # initialised as the single model with seed
            member_data, member_val = data, val_loader
            if folds is not None:
                held = folds[i]
                member_data = replace(data, train=data.train.subset(np.setdiff1d(np.arange(len(data.train)), held)))
                member_val = make_loader(data.train.images[held], data.train.labels[held], max(bs, 64), shuffle=False)
            history = _fit_member(cfg, fold_model.members[i], member_data, member_val,
                                  out_dir / "checkpoints" / f"member{i + 1}", seed, resume, hooks,
                                  _member_progress(progress, i, stages), ctx, init)
            member_histories.append(history)
            if history.stopped == "cancelled":
                break
            if folds is not None and ctx.is_main:
                # scored as the package predicts: with its test-time flip when it has one
                member = fold_model.members[i]
                scored = ensemble_around(member, **arch["kwargs"]) if arch["kwargs"].get("flip_axes") else member
                oof[folds[i]] = predict_proba(scored, member_val, torch.device(ctx.device))[0]
        history = EnsembleHistory(member_histories, seeds=[cfg.seed + i for i in range(len(member_histories))],
                                  folds=folds)
        if folds is not None and history.stopped != "cancelled" and ctx.is_main:
            history.cross_validation = cross_validation_metrics(data.train.labels, oof, folds, data.class_names)
            history.cross_validation["grouped"] = data.train_groups is not None
        if n_refit and history.stopped != "cancelled":
            history = _refit(cfg, model, kwargs, data, val_loader, out_dir, resume, hooks, progress, ctx,
                             estimate=history, first_stage=n_folds, stages=stages, init=init)
        if cfg.training.prior_shift != "none" and history.stopped != "cancelled" and ctx.is_main:
            arch["kwargs"]["class_log_offsets"] = _fit_prior_shift(cfg.training.prior_shift, model, oof, folds,
                                                                   data, history.cross_validation)
    train_s = max(time.perf_counter() - t0, epoch_seconds(history))
    if history.stopped == "cancelled":
        raise KeyboardInterrupt
    if not ctx.is_main:
        barrier(ctx)  # wait until rank 0 has written the package
        return {"package": None, "id": cfg.id, "version": version, "rank": ctx.rank}
    try:
        return _write_outputs(cfg, model, meta, version, history, train_s, data, val_loader, ctx, out_dir, dest,
                              progress, extensions)
    finally:
        barrier(ctx)


#: How an ensemble names a layer of every member (:mod:`..models.ensemble`): ``members.*.<member layer>``.
MEMBER_LAYERS = "members.*."


def package_explain(explain: dict, network, cfg: TrainConfig) -> dict:
    """``model.json``'s ``explain`` with its ``target_layer`` named as a layer of ``network``, the network the
    package holds, checked before anything trains (classify refuses a package whose layer it cannot find).

    Why the name may change: a config names the layer for the network it describes, but whether train wraps that
    network in an ensemble is decided by ``training/folds``, ``refit`` and ``ensemble`` (a quick run with folds 0
    packages one network). So a member's layer (``features.conv3``) gets the ensemble's ``members.*.`` prefix when
    the package is an ensemble, and a layer named with that prefix loses it when the package is one network.

    Raises:
        ConfigError: naming ``explain/target_layer``, when neither form is a layer of ``network``.
    """
    from ..explain.gradcam import has_layer, last_conv_layer
    from ..models.ensemble import MeanEnsemble

    named = explain.get("target_layer")
    if not named:   # none named: classify takes the registry's default layer, else the last convolution
        return explain
    is_ensemble = isinstance(network, MeanEnsemble)
    other = MEMBER_LAYERS + named if is_ensemble else named.removeprefix(MEMBER_LAYERS)
    layer = next((name for name in (named, other) if has_layer(network, name)), None)
    if layer is None:
        what = f"an ensemble of {cfg.model.name}" if is_ensemble else cfg.model.name
        raise ConfigError(f"explain/target_layer {named!r} is not a layer of the network this run packages "
                          f"({what}; its last convolution is {last_conv_layer(network)})", cfg.source)
    if layer != named:
        log.info("explain/target_layer %r is %r in the package (%s)", named, layer,
                 "an ensemble" if is_ensemble else "one network, not an ensemble")
    return {**explain, "target_layer": layer}


def _fit_member(cfg: TrainConfig, model, data, val_loader, checkpoint_dir: Path, seed: int, resume: bool,
                hooks: Hooks | None, progress, ctx, init: dict | None = None) -> History:
    """Train ``model`` (one network, or one member of an ensemble) with ``seed`` deciding its data order and
    augmentation; checkpoints in ``checkpoint_dir``, on the device of ``ctx`` (this rank's GPU under DDP). ``init``
    (``model/init``): the weights it starts from, where name and shape match. Returns its :class:`History`."""
    from ..models.transfer import load_matching_weights
    from .distributed import per_rank_batch

    if init is not None:
        load_matching_weights(model, init)

    k = len(data.class_names)
    # DDP: each rank loads batch_size // world_size samples per step (the global batch stays ~batch_size)
    train_loader = make_loader(data.train.images, data.train.labels,
                               per_rank_batch(int(cfg.training.batch_size), ctx), shuffle=True, seed=seed, ctx=ctx)
    fit_cfg = fit_config_from(cfg, checkpoint_dir, resume, seed)
    hooks = replace(hooks) if hooks is not None else Hooks()  # members must not share one augmenter's state
    if hooks.augment is None and cfg.augmentation:
        from .augment import BatchAugment
        # each rank draws its own augmentations (one process: seed unchanged)
        hooks.augment = BatchAugment(cfg.augmentation, spatial_dims=data.train.images.ndim - 2, seed=seed + ctx.rank,
                                     num_classes=k)
    t = cfg.training
    history = fit_classifier(model, train_loader, val_loader, fit_cfg,
                             class_weights=class_weights_for(cfg, data.train.labels, k),
                             label_smoothing=float(t.label_smoothing), l1=float(t.l1), hooks=hooks,
                             progress=progress, class_names=data.class_names, ctx=ctx)
    return history


def _refit(cfg: TrainConfig, model, kwargs: dict, data, val_loader, out_dir: Path, resume: bool, hooks, progress,
           ctx, estimate: "EnsembleHistory", first_stage: int, stages: int,
           init: dict | None = None) -> "EnsembleHistory":
    """``training/refit``: train the package's members on the whole train split (seeds after the folds'), final
    epoch kept; ``estimate`` (the fold members' history) keeps the out-of-fold metrics of the recipe."""
    import torch

    from ..models import build_model

    histories = []
    for j in range(len(model.members)):
        seed = cfg.seed + first_stage + j
        torch.manual_seed(seed)
        model.members[j] = build_model(cfg.model.name, **kwargs)
        history = _fit_member(cfg, model.members[j], data, val_loader, out_dir / "checkpoints" / f"refit{j + 1}",
                              seed, resume, hooks, _member_progress(progress, first_stage + j, stages), ctx, init)
        histories.append(history)
        if history.stopped == "cancelled":
            break
    refit = EnsembleHistory(histories, seeds=[cfg.seed + first_stage + j for j in range(len(histories))])
    refit.cross_validation, refit.estimate = estimate.cross_validation, estimate
    return refit


def _fit_prior_shift(metric: str, model, oof: np.ndarray, folds: list[np.ndarray], data,
                     cross_validation: dict) -> list[float]:
    """``training/prior_shift``: class log-odds offsets maximising ``metric`` on the out-of-fold probabilities
    ``oof`` (N, K), set on the ensemble ``model``. ``cross_validation`` records them with two figures: the
    out-of-fold metric they reach (tuned on those cases, so optimistic) and a cross-fitted estimate of it (offsets
    fitted on the other folds' cases, scored on each fold in turn). Returns the offsets for ``model.json``."""
    from ..uncertainty.calibration import fit_class_offsets, softmax

    labels = data.train.labels
    log_p = np.log(np.clip(oof, 1e-12, 1.0))
    offsets = [round(float(v), 6) for v in fit_class_offsets(oof, labels, metric)]
    model.set_class_log_offsets(offsets, len(data.class_names))
    tuned = classification_metrics(labels, softmax(log_p + offsets), data.class_names)
    crossed = np.empty_like(log_p)
    for held in folds:
        rest = np.setdiff1d(np.arange(len(labels)), held)
        crossed[held] = softmax(log_p[held] + fit_class_offsets(oof[rest], labels[rest], metric))
    estimate = classification_metrics(labels, crossed, data.class_names)
    cross_validation["prior_shift"] = {
        "metric": metric, "class_log_offsets": offsets,
        "tuned": {key: tuned[key] for key in ("balanced_accuracy", "accuracy", "confusion_matrix")},
        "cross_fitted": {key: estimate[key] for key in ("balanced_accuracy", "accuracy", "confusion_matrix")},
        "note": "tuned: offsets fitted on these out-of-fold cases (optimistic); cross_fitted: each fold scored with "
                "offsets fitted on the other folds"}
    return offsets


def _member_progress(progress, index: int, count: int):
    """Member ``index`` of ``count`` reports its fraction as its share of the whole run, with ``member=``."""
    def report(stage: str, fraction: float, **info):
        progress(stage, (index + fraction) / count, member=index + 1, members=count, **info)
    return report


def epoch_seconds(history: "History | EnsembleHistory") -> float:
    """Seconds spent in training epochs over every invocation of the run, resumed ones included: the sum of the
    epochs' ``time_s`` over all members (and, after a refit, the fold members that estimated the recipe)."""
    if isinstance(history, EnsembleHistory):
        parts = list(history.members) + ([history.estimate] if history.estimate is not None else [])
        return sum(epoch_seconds(h) for h in parts)
    return float(sum(float(r.get("time_s", 0.0)) for r in history.epochs))


class EnsembleHistory:
    """The members' :class:`History` objects seen as one (what :func:`_write_outputs` and the card need).

    ``folds`` (cross-validation ensembles): member i's held-out train indices; ``cross_validation``: the
    out-of-fold metrics once every member has trained."""

    def __init__(self, members: list[History], seeds: list[int], folds: list[np.ndarray] | None = None):
        self.members, self.seeds, self.folds = members, seeds, folds
        self.monitor = members[0].monitor
        self.best_epoch = [h.best_epoch for h in members]
        stopped = [h.stopped for h in members]
        self.stopped = "cancelled" if "cancelled" in stopped else ",".join(stopped)
        self.cross_validation: dict | None = None
        self.estimate: EnsembleHistory | None = None  # refit: the fold members that estimated the recipe

    def to_dict(self) -> dict:
        members = [{"seed": s, **h.to_dict()} for s, h in zip(self.seeds, self.members)]
        if self.folds is not None:
            for i, m in enumerate(members):
                m["selected_on"] = f"fold {i + 1} of the train split ({len(self.folds[i])} cases)"
        out = {"monitor": self.monitor, "best_epoch": self.best_epoch, "stopped": self.stopped,
               "epochs": [{**r, "member": i + 1} for i, h in enumerate(self.members) for r in h.epochs],
               "members": members,
               **({"cross_validation": self.cross_validation} if self.cross_validation else {})}
        if self.estimate is not None:
            out["fold_members"] = self.estimate.to_dict()["members"]
        return out


def cross_validation_metrics(labels: np.ndarray, oof_probs: np.ndarray, folds: list[np.ndarray],
                             class_names: list[str]) -> dict:
    """Out-of-fold metrics: ``oof_probs`` (N, K) holds, for every train case, the probabilities of the member that
    did not train on it. Returns the pooled metrics plus each fold's AUC, balanced accuracy and cases per class (a
    large patient group makes its fold uneven, and the member scored on it trains on the rest: the card shows it)."""
    pooled = classification_metrics(labels, oof_probs, class_names)
    per_fold = [classification_metrics(labels[f], oof_probs[f], class_names) for f in folds]
    keys = ("n", "auc", "balanced_accuracy", "accuracy", "f1", "confusion_matrix")
    return {"split": "train, out of fold", "folds": len(folds), **{key: pooled[key] for key in keys},
            "fold_auc": [m["auc"] for m in per_fold],
            "fold_balanced_accuracy": [m["balanced_accuracy"] for m in per_fold],
            "fold_class_counts": [np.bincount(labels[f], minlength=len(class_names)).tolist() for f in folds]}


def _write_outputs(cfg, model, meta, version, history, train_s, data, val_loader, ctx, out_dir, dest,
                   progress, extensions: list[RunHooks]) -> dict[str, Any]:
    """Final validation of the selected weights, then the blocks' ``before_save`` hooks, the package (saved once),
    ``history.json``, ``metrics.json`` and the curve."""
    import torch

    from ..packages import save_package

    progress("evaluate", 0.97)
    device = torch.device(ctx.device)
    probs, labels, _ = predict_proba(model, val_loader, device)
    vm = classification_metrics(labels, probs, data.class_names)
    meta["metrics"] = {"split": "val", "n": vm["n"], "auc": vm["auc"], "balanced_accuracy": vm["balanced_accuracy"],
                       "accuracy": vm["accuracy"], "f1": vm["f1"], "precision": vm["precision"],
                       "recall": vm["recall"], "confusion_matrix": vm["confusion_matrix"],
                       "best_epoch": history.best_epoch, "selected_by": f"val {history.monitor}",
                       "train_time_s": round(train_s, 1)}
    if history.monitor == "last":
        meta["metrics"]["selected_by"] = "nothing: the final epoch is kept (val split unseen)"
    elif getattr(history, "folds", None) is not None:
        meta["metrics"]["selected_by"] = f"{history.monitor} on each member's own train fold (val split unseen)"
    if getattr(history, "cross_validation", None) is not None:
        meta["metrics"]["cross_validation"] = history.cross_validation
        if getattr(history, "estimate", None) is not None:
            meta["metrics"]["cross_validation"]["members"] = "fold members (not packaged); the package's members " \
                                                              "were refitted on the whole train split"
    extra_files = {}
    if cfg.domain is not None:
        from ..uncertainty.domain import DOMAIN_FILE
        from .domain import calibrate_domain
        progress("domain check", 0.98)
        meta["domain"], extra_files[DOMAIN_FILE] = calibrate_domain(model, data, cfg, device)
    hist = history.to_dict()
    if (meta["provenance"].get("init") or {}).get("warnings"):   # a partial or foreign model/init: said on the run
        hist["init"] = meta["provenance"]["init"]
    from .plots import training_curve_png
    curve = training_curve_png(hist["epochs"], out_dir / "training_curve.png", history.monitor)
    meta["version"] = version
    draft = PackageDraft(model.cpu().eval(), meta, data, cfg, extra_files=extra_files)
    for extension in extensions:
        if extension.before_save is not None:
            extension.before_save(draft, progress)
    card = model_card({**meta, "provenance": {**meta["provenance"], "code_version": _code_version()}},
                      hist, data.description) + "".join(draft.card_sections)
    pkg_path = save_package(draft.model, meta, dest, extra_files={"MODEL_CARD.md": card, "training_curve.png": curve,
                                                                  **extra_files})
    atomic_write_json(out_dir / "history.json", hist)
    metrics_path = atomic_write_json(out_dir / "metrics.json", {"package": str(pkg_path), **vm,
                                                                "best_epoch": history.best_epoch})
    result = {"package": str(pkg_path), "id": cfg.id, "version": version, "metrics": str(metrics_path),
              "training_curve": str(curve), "history": str(out_dir / "history.json"),
              "val_auc": vm["auc"], "val_balanced_accuracy": vm["balanced_accuracy"]}
    if (meta["provenance"].get("init") or {}).get("warnings"):
        result["warnings"] = list(meta["provenance"]["init"]["warnings"])
    return result


def _code_version() -> str:
    from .. import __version__
    return __version__
