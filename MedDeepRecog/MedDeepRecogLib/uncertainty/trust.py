"""One call that adds the "can I trust this?" fields to a ``classify_scan`` result.

``add_trust_fields(result, package, model)`` sets, on a
:class:`~MedDeepRecogLib.inference.classify.ClassificationResult`:

- ``result.explain["faithfulness"]``: deletion / insertion AUC of the heatmap (and of a random voxel order, and
  ``score`` = how much better than random), plus ``result.explain["faithfulness_caption"]`` (one line for the PNG);
- ``result.explain["localisation"]``: pointing game and heatmap mass inside the lesion, when a lesion mask is given;
- ``result.uncertainty``: MC-dropout / TTA spread, calibrated probabilities, predictive entropy and the
  ``low_confidence`` flag (threshold from ``meddeeprecog calibrate``), see :func:`.report.classify_uncertainty`.

Each part is optional and failure-tolerant: a part that cannot be computed for this model (e.g. no heatmap)
is left out rather than failing the classification.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def add_trust_fields(result: Any, package: Any, model: Any, *, faithfulness_steps: int = 10,
                     uncertainty: bool = True, mc_samples: int = 20, tta: int = 8, lesion: Any = None,
                     tolerance_mm: float = 0.0) -> Any:
    """Add faithfulness, localisation and uncertainty to ``result`` (in place; also returned).

    Args:
        result: ``classify_scan``'s result (needs ``model_input``; ``heatmap``/``model_map`` for faithfulness).
        package: the loaded ``ModelPackage`` (``meta`` gives class names, target layer, calibration).
        model: the package's network in eval mode (the one classify used).
        faithfulness_steps: deletion/insertion steps (0 = skip faithfulness).
        uncertainty: compute the uncertainty block.
        lesion: optional SimpleITK label image of the lesion (any grid; resampled onto the scan).
    """
    import time

    from ..explain.faithfulness import classification_faithfulness, classification_localisation, faithfulness_caption
    from .report import classification_uncertainty

    t0 = time.perf_counter()
    if faithfulness_steps and result.heatmap is not None:
        scores = classification_faithfulness(result, model, target_layer=package.target_layer,
                                             steps=faithfulness_steps)
        if scores is not None:
            result.explain["faithfulness"] = scores
            result.explain["faithfulness_caption"] = faithfulness_caption(scores)
    if lesion is not None and result.heatmap is not None:
        result.explain["localisation"] = classification_localisation(result, lesion, tolerance_mm=tolerance_mm)
    if uncertainty:
        result.uncertainty = classification_uncertainty(result, model, package.meta, mc_samples=mc_samples, tta=tta)
    if hasattr(result, "timing_s"):
        result.timing_s["trust"] = time.perf_counter() - t0
    return result
