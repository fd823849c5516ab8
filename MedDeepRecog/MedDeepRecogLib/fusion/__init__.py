"""Multi-modal inputs on one grid and early / late fusion models (registered as ``early_fusion3d``,
``late_fusion3d`` in :mod:`MedDeepRecogLib.models` when this package is imported)."""

from .data import FusionCase, check_modalities, load_case, manifest_to_npz, read_manifest
from .infer import classify_modalities, package_modalities
from .grid import align_modalities, overlap_fraction, physical_box, rigid_register, stack_arrays
from .models import EarlyFusionNet, LateFusionNet, present_modalities

__all__ = ["classify_modalities", "package_modalities",
           "FusionCase", "check_modalities", "load_case", "manifest_to_npz", "read_manifest", "align_modalities",
           "overlap_fraction",
           "physical_box", "rigid_register", "stack_arrays", "EarlyFusionNet", "LateFusionNet",
           "present_modalities"]
