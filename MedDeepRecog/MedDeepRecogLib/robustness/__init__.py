"""Adversarial robustness: FGSM / PGD attacks, robustness curves, adversarial training hook, eps in HU."""

from .attacks import ATTACKS, attack, check_eps, fgsm, parse_eps_list, pgd
from .curve import ScanAggregate, evaluate_robustness, roc_auc, save_curve_png, scan_robustness
from .training import AdversarialTraining

__all__ = ["ATTACKS", "attack", "check_eps", "fgsm", "parse_eps_list", "pgd", "ScanAggregate",
           "evaluate_robustness", "roc_auc", "save_curve_png", "scan_robustness", "AdversarialTraining"]
