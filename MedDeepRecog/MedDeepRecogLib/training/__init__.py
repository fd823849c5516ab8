"""Training and evaluation: configs, in-memory datasets, the reusable loop, metrics, evaluation.

- ``fit(model, train_loader, val_loader, cfg: FitConfig, hooks: Hooks, progress) -> History`` (``loop``): the loop
  reused by fine-tuning (``Hooks.frozen`` / ``param_groups``, checkpoints + resume, ``should_stop``) and
  adversarial training (``Hooks.batch_transform``).
- ``run_training(config, out, resume, package_dest, progress)`` (``train``): ``meddeeprecog train``.
- ``evaluate_package(model, data, split)`` (``evaluate``): ``meddeeprecog evaluate``.
- ``metrics``: numpy metrics (accuracy, balanced accuracy, precision/recall/F1, one-vs-rest AUC, ROC, confusion).

torch is imported lazily by the submodules that need it; import from them directly.
"""
