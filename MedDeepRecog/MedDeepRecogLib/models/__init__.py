"""Architecture registry: networks built by name with keyword arguments (configuration as data).

``build_model(name, **kwargs) -> torch.nn.Module`` returns a model whose ``forward(x)`` gives logits
``(B, num_classes)``. Every architecture takes ``in_channels`` and ``num_classes``; other kwargs are passed on.

Input conventions: 2D ``(B, C, H, W)``; 3D ``(B, C, Z, Y, X)``; CNN-LSTM ``(B, C, Z, Y, X)`` with Z the slice
sequence. Models with attention (``cnn_lstm``, ``attention_cnn3d``) also have
``forward_with_attention(x) -> (logits, attention)`` and keep the last attention in ``model.last_attention``
(CNN-LSTM: per-slice weights ``(B, Z)`` summing to 1; attention CNN: spatial map ``(B, 1, z, y, x)`` in 0..1 on the
feature grid, to be upsampled to the input).

``default_target_layer(name, **kwargs) -> str`` is the module path that Grad-CAM should hook for that
architecture, or a pattern with ``*`` over several modules (ensembles, late fusion) that
``explain.gradcam.resolve_layers`` expands; for ``cnn_lstm`` the layer runs on every slice, so its activations have batch
``B*Z`` (reshape to ``(B, Z, ...)``). ``available_models()`` lists the names with their input kind.

Names: ``simple_cnn2d``, ``simple_cnn3d``, ``densenet2d``, ``densenet3d``, ``resnet2d``, ``resnet3d``,
``efficientnet2d``, ``seresnet3d``, ``cnn_lstm``, ``attention_cnn3d``, ``ensemble`` (N copies of one of
the others, mean probabilities returned as log-probabilities; Grad-CAM target ``members.*.<layer>``, a pattern over
all members), ``early_fusion3d`` / ``late_fusion3d`` (several modalities, :mod:`.fusion_nets`) and the
segmentation networks ``monai_unet`` / ``monai_segresnet`` (voxel logits ``(B, num_classes, Z, Y, X)``). Every one
registers the same way: ``@register_model`` in a module the registry imports.

:mod:`.slice_stack`: a slice network read as a scan classifier (the one aggregation of a slice stack).
"""

from .registry import ArchSpec, available_models, build_model, default_target_layer, input_kind, register_model

__all__ = ["ArchSpec", "available_models", "build_model", "default_target_layer", "input_kind", "register_model"]
