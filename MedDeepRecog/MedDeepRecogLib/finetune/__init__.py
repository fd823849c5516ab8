"""Fine-tuning from segments labelled in Slicer (ROI classification and segmentation), versioned and resumable.

- :mod:`.finetune`: ``finetune(...)``: the workflow, base package → new package version with provenance.
- :mod:`.config`: :class:`~.config.FinetuneConfig` (with the ``optimizer`` / ``schedule`` / ``training`` sections
  shared with ``meddeeprecog train``).
- :mod:`.manifest`: cases (scan + segmentation), manifests, folders of pairs, segment → class maps, fingerprints.
- :mod:`.segment_data`: a case on the scan's grid with its segments mapped to classes; what the data hold.
- :mod:`.base`: the base package and the network built from it (matching weights).
- :mod:`.segmentation_task` / :mod:`.roi_task`: each task's data, step and validation for the one training loop.
- :mod:`.seg_training`: cached patch datasets, augmentation, Dice/HD95 validation by sliding window.
- :mod:`.roi_crops`: training crops around labelled segments (jittered), negatives away from segments.
- :mod:`.runs`: the work folder (keyed so a re-run resumes), ``run.json`` / ``result.json``.
- :mod:`.card`: the model card and ``model.json`` metrics.

What fine-tuned packages are used with lives elsewhere: the networks in ``models/`` (``segmentation``,
``transfer``), inference in ``inference/segment.py`` and ``inference/roi_classify.py``, the loop and DDP in
``training/``. Heavy modules (torch, monai) are imported by the submodules, not here.
"""
