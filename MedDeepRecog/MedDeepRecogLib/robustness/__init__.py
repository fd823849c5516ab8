"""Adversarial robustness: FGSM / PGD attacks, robustness curves, adversarial training hook, eps in HU.

- :mod:`.attacks`: FGSM and PGD on any classifier, eps checks.
- :mod:`.curve`: clean vs adversarial metrics over a data set, one scan's probability under growing eps, the plot.
- :mod:`.scan`: one scan's model input as classify builds it, the valid intensity range, eps in HU.
- :mod:`.report`: the work of ``meddeeprecog robustness`` (JSON, PNG and perturbation files).
- :mod:`.training`: adversarial training as a hook of the training loop.
"""

from .attacks import ATTACKS, attack, check_eps, fgsm, parse_eps_list, pgd
from .curve import evaluate_robustness, save_curve_png, scan_robustness
from .training import AdversarialTraining

__all__ = ["ATTACKS", "attack", "check_eps", "fgsm", "parse_eps_list", "pgd", "evaluate_robustness",
           "save_curve_png", "scan_robustness", "AdversarialTraining"]
