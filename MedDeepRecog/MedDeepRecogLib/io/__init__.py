"""Reading and writing scans, label maps and segmentations without losing geometry."""

from .atomic import atomic_output, atomic_save_figure, check_output_dir, free_version, atomic_write_bytes, atomic_write_json, atomic_write_text
from .geometry import Geometry, LPSView, lps_view
from .image_content import describe_geometry
from .image_io import (
    array_from_image,
    as_single_slice,
    image_from_array,
    read_image,
    as_volume,
    require_3d,
    same_geometry,
    validate_intensities,
    write_image,
)
from .image_meta import carry_notes, image_notes, is_picture
from .segmentation_io import SegmentSpec, read_lesion_mask, read_segmentation, write_segment_masks, write_segmentation

__all__ = [
    "atomic_output",
    "atomic_save_figure",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_output_dir",
    "free_version",
    "Geometry",
    "LPSView",
    "lps_view",
    "array_from_image",
    "as_single_slice",
    "carry_notes",
    "describe_geometry",
    "image_notes",
    "is_picture",
    "image_from_array",
    "read_image",
    "as_volume",
    "require_3d",
    "same_geometry",
    "validate_intensities",
    "write_image",
    "SegmentSpec",
    "read_lesion_mask",
    "read_segmentation",
    "write_segmentation",
    "write_segment_masks",
]
