"""Temporary: the segmentation networks moved to :mod:`..models.segmentation` and the weight-transfer helpers to
:mod:`..models.transfer`. ``models/registry.EXTENSION_MODULES`` still imports this module by name to register
``monai_unet`` / ``monai_segresnet``; delete it once the registry imports :mod:`..models.segmentation`.
"""

from ..models.segmentation import SEGMENTATION_ARCHITECTURES, monai_segresnet, monai_unet  # noqa: F401
