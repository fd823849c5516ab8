"""Fine-tuning from segments labelled in Slicer: ROI classification and segmentation, versioned and resumable.

- :mod:`.manifest`: cases (scan + segmentation), manifests, folders of pairs, segment → class maps, fingerprints.
- :mod:`.segment_data`: a case on the scan's grid (geometry checks, label tables), intensity normalisation.
- :mod:`.roi_crops`: one fixed-size crop (mm) per labelled segment, negatives away from segments.
- :mod:`.seg_models`: MONAI UNet / SegResNet builders and their encoder parts (for ``--freeze-encoder``).
- :mod:`.seg_training`: cached patch datasets, augmentation, Dice/HD95 validation by sliding window.
- :mod:`.sliding_window`: segment a scan with a package; write ``.seg.nrrd`` on the scan's grid.
- :mod:`.distributed`: ``torchrun`` / DDP (gloo on CPU) helpers; rank 0 writes.
- :mod:`.finetune`: ``finetune(...)``: base package → new package version with provenance.

Heavy modules (torch, monai) are imported by the submodules, not here.
"""
