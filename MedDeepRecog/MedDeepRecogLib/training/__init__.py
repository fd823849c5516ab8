"""Training and evaluation: config sections, in-memory datasets, the one epoch loop, metrics, evaluation.

- ``fit(model, train_loader, step, validate, cfg, hooks, progress, ctx) -> History`` (``loop``): the one epoch
  loop, with pluggable step and validation functions; classification training (``classification.fit_classifier``),
  segmentation and ROI fine-tuning (``finetune/``) run it. Checkpoints, resume, EMA, AMP, early stopping, DDP.
- ``sections``: the ``optimizer`` / ``schedule`` / ``training`` config sections train and fine-tune configs share.
- ``distributed``: ``torchrun`` / DDP helpers (rank 0 writes).
- ``hooks``: config blocks other parts register (adversarial training from ``robustness/``) and the run hooks they
  give: a batch transform, additions to the package before it is saved.
- ``run_training(config, out, resume, package_dest, progress)`` (``train``): ``meddeeprecog train``.
- ``evaluate_package(model, data, split)`` (``evaluate``): ``meddeeprecog evaluate``.
- ``metrics``: numpy metrics (accuracy, balanced accuracy, precision/recall/F1, one-vs-rest AUC, ROC, confusion).

torch is imported lazily by the submodules that need it; import from them directly.
"""
