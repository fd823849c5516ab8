"""Scan → prediction: model input per ``input.kind``, prediction and slice aggregation, heatmap on the scan grid.

- ``model_input``: ``slices_from_image`` / ``volume_from_image`` (LPS views without copies, MedNIST-style slice
  standardisation, :class:`ModelGrid` placement of model-space maps).
- ``predict``: ``predict_slices`` / ``predict_volume`` (Grad-CAM in the same pass), ``decide`` (uncertainty rules).
- ``heatmap``: ``heatmap_on_input_grid`` (float32 0..1 on the input's own grid).
- ``classify``: ``classify_scan(path_or_image, package, explain=..., device=..., progress=...)`` and
  ``write_outputs(result, out_dir)`` behind ``meddeeprecog classify`` (contract in docs/worker-protocol.md).
- ``calibrate``: choose a package's "uncertain" threshold on held-out data.

Import the submodules directly (``from MedDeepRecogLib.inference.classify import classify_scan``); this package
imports nothing heavy by itself.
"""
