"""Several modalities of one case: aligned on one grid, prepared like training data, classified by a fusion model.

- :mod:`.grid`: overlap check (``io.geometry``), optional rigid registration, resampling onto the reference modality.
- :mod:`.data`: manifests of cases (one column per modality) and their arrays; a missing modality is NaN.
- :mod:`.infer`: ``classify_modalities`` (probabilities of one case) and ``classify_fusion`` (classify's result for
  ``meddeeprecog classify INPUT --second-input SCAN``).

The fusion networks (``early_fusion3d``, ``late_fusion3d``) are architectures like any other:
:mod:`MedDeepRecogLib.models.fusion_nets`.
"""

from .data import FusionCase, check_modalities, load_case, manifest_to_npz, read_manifest
from ..io.geometry import overlap_fraction, physical_box
from .grid import align_modalities, rigid_register, stack_arrays
from .infer import channel_keys, classify_fusion, classify_modalities, package_modalities

__all__ = ["channel_keys", "classify_fusion", "classify_modalities", "package_modalities",
           "FusionCase", "check_modalities", "load_case", "manifest_to_npz", "read_manifest", "align_modalities",
           "overlap_fraction", "physical_box", "rigid_register", "stack_arrays"]
