"""Uncertainty: Monte-Carlo dropout, test-time augmentation, seed-ensemble disagreement, temperature scaling, ECE, low-confidence flag.

- :func:`classify_uncertainty` — the optional ``"uncertainty"`` block of classify's per-scan JSON.
- :func:`calibrate_package` (in :mod:`.calibrate`) — fit the temperature and the low-confidence threshold on a
  validation split and write a NEW package version with a ``"calibration"`` block in model.json.
"""

from .calibration import (expected_calibration_error, fit_temperature, low_confidence_threshold,
                          normalized_entropy, softmax)
from .report import (apply_temperature, calibrated_probabilities, classification_uncertainty,
                     classify_uncertainty)
from .sampling import (default_tta, dropout_layers, ensemble_member_samples, mc_dropout_samples, summarize_samples,
                       tta_samples)

__all__ = ["expected_calibration_error", "fit_temperature", "low_confidence_threshold", "normalized_entropy",
           "softmax", "apply_temperature", "calibrated_probabilities", "classification_uncertainty",
           "classify_uncertainty", "default_tta", "dropout_layers", "ensemble_member_samples",
           "mc_dropout_samples", "summarize_samples", "tta_samples"]
