"""MedDeepRecog core: plain-Python deep-learning recognition for CT/MRI/US (no Slicer, Qt or VTK import).

Layers, lowest first (a module imports only from its own layer or below; ``Testing/Python/test_architecture.py``
checks it):

- ``errors``, ``limits``, ``progress``, ``contract`` (file suffixes, output names, choice lists shared with the
  Slicer module), ``devices`` (the one ``resolve_device``), ``schema`` (the one config-file reader), ``resources``;
- ``io``: reading and writing scans, segmentations and DICOM SEG without losing geometry (``io.geometry``: LPS views);
- ``preprocessing``: named steps composed into pipelines declared as data; the slices every 2D model reads;
- ``models``: every architecture, registered by name; ``models.slice_stack``: a slice model read as a scan model;
- ``explain``, ``uncertainty``: heatmaps, their faithfulness, and uncertainty, as tensor maths;
- ``packages``: model packages (a network plus everything needed to use it safely);
- ``training``: configs, data, the training loop, metrics, evaluation;
- ``inference``: classify a scan (model input, prediction, heatmap on the scan's grid, the trust fields, routing)
  and calibrate a package;
- ``robustness`` (adversarial attacks and training), ``fusion`` (several modalities of one case), ``finetune``
  (from segments labelled in Slicer);
- ``report`` (one HTML page per case), ``slicer_views`` (Slicer's own views rendered headless; imports Slicer's
  core lazily, the one module here that does);
- ``commands`` (one module per ``meddeeprecog`` sub-command: a thin argparse layer), ``cli``;
- ``slicer_bridge``: the Slicer-free half of the Slicer module (worker command lines, progress, outputs).
"""

__version__ = "0.1.0"
