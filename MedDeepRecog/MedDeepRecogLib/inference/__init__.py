"""Scan → prediction: model input per ``input.kind``, prediction, heatmap on the scan grid, and how far to trust it.

- ``model_input``: ``slices_from_image`` / ``volume_from_image`` (LPS views without copies, the slices standardised
  by ``preprocessing.slices``, :class:`ModelGrid` placement of model-space maps).
- ``predict``: ``predict_slices`` / ``predict_volume`` (Grad-CAM in the same pass; slice stacks aggregated by
  ``models.slice_stack``), ``decide`` (the package's decision rules).
- ``heatmap``: ``heatmap_on_input_grid`` (float32 0..1 on the input's own grid).
- ``trust``: the one trust path: faithfulness, lesion localisation and uncertainty of a classify result.
- ``classify``: ``classify_scan(path_or_image, package, explain=..., device=..., progress=...)`` and
  ``write_outputs(result, out_dir)`` behind ``meddeeprecog classify`` (contract in docs/worker-protocol.md).
- ``route``: ``--model auto`` (which bundled disease model applies to a scan).
- ``calibrate``: ``calibrate_package`` behind ``meddeeprecog calibrate``: temperature, low-confidence threshold and
  decision rules fitted on held-out data, written as a new package version.

Import the submodules directly (``from MedDeepRecogLib.inference.classify import classify_scan``); this package
imports nothing heavy by itself.
"""
