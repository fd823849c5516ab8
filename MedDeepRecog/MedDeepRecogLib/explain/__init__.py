"""Explanations of a prediction, one function per method, each returning a model-space map ``(N, *spatial)`` in 0..1.

- ``gradcam``: ``explained_forward(model, x, target_layer, method="gradcam"|"gradcampp")`` — Grad-CAM(++) from the
  prediction's own forward pass (gradient to the target layer only).
- attention maps: models with attention keep ``model.last_attention`` (see ``inference.predict``).
- ``overlay``: the three-plane PNG of a heatmap over its scan.
- ``faithfulness``: deletion/insertion curves (one implementation, batched), pointing game and mass inside a lesion,
  randomisation check; on tensors and arrays (``inference.trust`` applies them to a classify result).
"""
