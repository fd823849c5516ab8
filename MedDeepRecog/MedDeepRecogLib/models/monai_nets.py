"""MONAI DenseNet / ResNet / SEResNet / EfficientNet under registry names, with uniform ``in_channels`` /
``num_classes`` keyword arguments (other kwargs go to the MONAI constructor). Never pretrained: no downloads."""

from __future__ import annotations

from typing import Any

from monai.networks import nets

from .registry import register_model


def _densenet(spatial_dims: int, in_channels: int, num_classes: int, **kwargs: Any):
    return nets.DenseNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes, **kwargs)


def _resnet(spatial_dims: int, in_channels: int, num_classes: int, depth: int | None = 18, **kwargs: Any):
    """A MONAI ResNet: ``depth`` 10/18/34/50 (the standard layouts), or ``depth: null`` with ``layers`` (blocks per
    stage) and ``block_inplanes`` (channels per stage) for a custom basic-block ResNet, e.g. a small one a 2-core
    CPU trains in minutes (``layers: [2, 2, 2, 2], block_inplanes: [16, 32, 64, 128], no_max_pool: true``)."""
    if depth is None or "layers" in kwargs:
        if "layers" not in kwargs or "block_inplanes" not in kwargs:
            raise ValueError("a custom resnet needs both layers and block_inplanes")
        return nets.ResNet(kwargs.pop("block", "basic"), kwargs.pop("layers"), kwargs.pop("block_inplanes"),
                           spatial_dims=spatial_dims, n_input_channels=in_channels, num_classes=num_classes, **kwargs)
    factories = {10: nets.resnet10, 18: nets.resnet18, 34: nets.resnet34, 50: nets.resnet50}
    if depth not in factories:
        raise ValueError(f"resnet depth must be one of {sorted(factories)}, got {depth}")
    return factories[depth](pretrained=False, spatial_dims=spatial_dims, n_input_channels=in_channels,
                            num_classes=num_classes, **kwargs)


@register_model("densenet2d", "class_layers.relu", "slices2d", "MONAI DenseNet (default 121 layout) on 2D slices")
def densenet2d(in_channels: int = 1, num_classes: int = 2, **kwargs: Any):
    return _densenet(2, in_channels, num_classes, **kwargs)


@register_model("densenet3d", "class_layers.relu", "volume3d", "MONAI DenseNet (default 121 layout) on volumes")
def densenet3d(in_channels: int = 1, num_classes: int = 2, **kwargs: Any):
    return _densenet(3, in_channels, num_classes, **kwargs)


@register_model("resnet2d", "layer4", "slices2d", "MONAI ResNet (depth 10/18/34/50, or layers + block_inplanes) on 2D slices")
def resnet2d(in_channels: int = 1, num_classes: int = 2, depth: int | None = 18, **kwargs: Any):
    return _resnet(2, in_channels, num_classes, depth, **kwargs)


@register_model("resnet3d", "layer4", "volume3d",
                "MONAI ResNet (depth 10/18/34/50) on volumes; conv1_t_stride=2 makes it ~4x cheaper")
def resnet3d(in_channels: int = 1, num_classes: int = 2, depth: int = 18, **kwargs: Any):
    return _resnet(3, in_channels, num_classes, depth, **kwargs)


@register_model("seresnet3d", "layer4", "volume3d", "MONAI SEResNet50 on volumes")
def seresnet3d(in_channels: int = 1, num_classes: int = 2, **kwargs: Any):
    return nets.SEResNet50(spatial_dims=3, in_channels=in_channels, num_classes=num_classes, pretrained=False,
                           **kwargs)


@register_model("efficientnet2d", "_bn1", "slices2d", "MONAI EfficientNet-BN (default b0) on 2D slices")
def efficientnet2d(in_channels: int = 1, num_classes: int = 2, model_name: str = "efficientnet-b0", **kwargs: Any):
    return nets.EfficientNetBN(model_name, pretrained=False, spatial_dims=2, in_channels=in_channels,
                               num_classes=num_classes, **kwargs)
