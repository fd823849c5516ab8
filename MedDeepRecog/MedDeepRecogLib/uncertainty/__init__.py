"""Uncertainty as tensor maths: Monte-Carlo dropout, test-time augmentation, seed-ensemble disagreement,
temperature scaling, ECE, the low-confidence flag and the out-of-domain check.

- :mod:`.calibration`: softmax with a temperature, fitting it, ECE, normalised entropy, the low-confidence threshold.
- :mod:`.sampling`: stochastic predictions (MC dropout, TTA, ensemble members) and their spread.
- :mod:`.report`: :func:`classify_uncertainty`, the optional ``"uncertainty"`` block of one scan's prediction, and
  :func:`apply_temperature`.
- :mod:`.domain`: Mahalanobis distance of penultimate-layer features (is the image like the training images?).

Applying them to a classified scan is ``inference.trust``; fitting a package's temperature and writing the new
version is ``inference.calibrate`` (``meddeeprecog calibrate``).
"""

from .calibration import (expected_calibration_error, fit_temperature, low_confidence_threshold,
                          normalized_entropy, softmax)
from .report import apply_temperature, calibrated_probabilities, classify_uncertainty
from .sampling import (default_tta, dropout_layers, ensemble_member_samples, mc_dropout_samples, summarize_samples,
                       tta_samples)

__all__ = ["expected_calibration_error", "fit_temperature", "low_confidence_threshold", "normalized_entropy",
           "softmax", "apply_temperature", "calibrated_probabilities", "classify_uncertainty", "default_tta",
           "dropout_layers", "ensemble_member_samples", "mc_dropout_samples", "summarize_samples", "tta_samples"]
