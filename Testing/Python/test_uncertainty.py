"""Temperature scaling, ECE, low-confidence threshold, MC dropout and TTA on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from frontier_helpers import blob_data, tiny_model, trained_blob_model
from MedDeepRecogLib.uncertainty import (classify_uncertainty, default_tta, dropout_layers,
                                         expected_calibration_error, fit_temperature, low_confidence_threshold,
                                         mc_dropout_samples, normalized_entropy, softmax, summarize_samples,
                                         tta_samples)


def _overconfident(n=2000, seed=0, true_t=3.0):
    """Logits whose calibrated temperature is ``true_t``: labels drawn from softmax(z / true_t)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 4.0, size=(n, 3))
    p = softmax(z, true_t)
    y = np.array([rng.choice(3, p=row) for row in p])
    return z, y


def test_ece_known_values():
    # all predictions at confidence 0.8, 80 % right -> perfectly calibrated
    p = np.tile([[0.8, 0.2]], (10, 1))
    y = np.array([0] * 8 + [1] * 2)
    assert expected_calibration_error(p, y) == pytest.approx(0.0, abs=1e-12)
    # confidence 1.0, half right -> ECE 0.5
    p = np.tile([[1.0, 0.0]], (10, 1))
    y = np.array([0] * 5 + [1] * 5)
    assert expected_calibration_error(p, y) == pytest.approx(0.5)


def test_temperature_recovers_true_temperature_and_lowers_ece():
    z, y = _overconfident()
    t = fit_temperature(z, y)
    assert t == pytest.approx(3.0, rel=0.15)
    before = expected_calibration_error(softmax(z), y)
    after = expected_calibration_error(softmax(z, t), y)
    assert after < before / 2
    # temperature never changes the predicted class
    assert (softmax(z, t).argmax(1) == z.argmax(1)).all()


def test_normalized_entropy_bounds():
    h = normalized_entropy(np.array([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]]))
    assert h[0] == pytest.approx(0.0, abs=1e-9) and h[1] == pytest.approx(1.0)


def test_low_confidence_threshold_separates_errors():
    rng = np.random.default_rng(0)
    h_ok = rng.uniform(0.0, 0.5, 200)
    h_bad = rng.uniform(0.4, 1.0, 40)
    t = low_confidence_threshold(np.r_[h_ok, h_bad], np.r_[np.ones(200), np.zeros(40)].astype(bool))
    assert 0.35 <= t <= 0.55
    # no error at all on validation -> 95th percentile of the right predictions
    t2 = low_confidence_threshold(h_ok, np.ones(200, bool))
    assert t2 == pytest.approx(np.quantile(h_ok, 0.95))


def test_low_confidence_threshold_sits_between_cases_not_on_one():
    """The threshold flags the cases Youden's J picks but lies halfway below the lowest of them, so that case's
    entropy from another pass (classify's, a hair lower: breast-us-lesion 1.5.2's val image 62 at 0.74983990 against
    calibrate's 0.74984017) is still flagged."""
    h = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8])
    correct = np.array([True, True, True, False, False, True])
    t = low_confidence_threshold(h, correct)
    assert t == pytest.approx(0.45)  # between 0.3 (right, not flagged) and 0.6 (the first wrong one)
    assert list(h >= t) == [False, False, False, True, True, True]
    from MedDeepRecogLib.inference.calibrate import written_threshold

    assert written_threshold(0.7498405) == 0.74984  # 6 places rounded down (round() would give 0.749841)
    assert written_threshold(0.74984017) <= 0.74984017


def test_mc_dropout_spreads_and_restores_mode():
    torch.set_num_threads(1)
    x, _, _ = blob_data(4, seed=2)
    model = tiny_model(dropout=0.5).eval()
    assert dropout_layers(model)
    s = mc_dropout_samples(model, x, n=6)
    assert s.shape == (6, 4, 2)
    assert not model.training and not any(m.training for m in model.modules())
    assert float(s.std(0).max()) > 0  # dropout active -> the passes differ
    # seeded: same samples twice
    assert torch.equal(s, mc_dropout_samples(model, x, n=6))
    with pytest.raises(ValueError, match="no dropout"):
        mc_dropout_samples(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 ** 3, 2)), x)


def test_tta_flips_and_summary():
    x = torch.arange(2 * 1 * 2 * 3 * 4, dtype=torch.float32).reshape(2, 1, 2, 3, 4)
    ts = default_tta(3, n=8)
    assert len(ts) == 8 and torch.equal(ts[0](x), x)
    assert torch.equal(ts[1](x), torch.flip(x, (4,)))
    assert len({tuple(t(x).flatten().tolist()) for t in ts}) == 8  # all different
    s = tta_samples(lambda t: t.flatten(1)[:, :3], x, ts)
    assert s.shape == (8, 2, 3)
    summ = summarize_samples(torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]]))
    assert summ["predictive_entropy"][0] == pytest.approx(1.0)
    assert summ["mutual_information"][0] == pytest.approx(1.0, abs=1e-6)  # all disagreement is epistemic
    same = summarize_samples(torch.tensor([[[0.5, 0.5]], [[0.5, 0.5]]]))
    assert same["mutual_information"][0] == pytest.approx(0.0, abs=1e-9)
    assert same["variance"][0] == 0.0


def test_classify_uncertainty_uses_calibration_block():
    torch.set_num_threads(1)
    model = trained_blob_model()
    x, y, _ = blob_data(4, seed=11)
    xi = x[:1]
    meta = {"class_names": ["normal", "mass"]}
    plain = classify_uncertainty(model, xi, meta, mc_samples=4, tta=4)
    assert plain["calibrated"] is False and plain["low_confidence"] is None and plain["temperature"] == 1.0
    assert plain["mc_dropout"]["available"] and plain["mc_dropout"]["samples"] == 4
    assert plain["tta"]["samples"] == 4 and set(plain["tta"]["mean_probabilities"]) == {"normal", "mass"}
    hot = classify_uncertainty(model, xi, {**meta, "calibration": {"temperature": 1000.0,
                                                                    "low_confidence_threshold": 0.5}},
                               mc_samples=0, tta=0)
    # a huge temperature makes the prediction uniform -> entropy ~1 -> flagged
    assert hot["predictive_entropy"] > 0.99 and hot["low_confidence"] is True
    assert "mc_dropout" not in hot and "tta" not in hot
    cold = classify_uncertainty(model, xi, {**meta, "calibration": {"temperature": 1.0,
                                                                     "low_confidence_threshold": 0.99}},
                                mc_samples=0, tta=0)
    assert cold["low_confidence"] is False
    nodrop = classify_uncertainty(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 ** 3, 2)), xi, meta,
                                  mc_samples=3, tta=0)
    assert nodrop["mc_dropout"] == {"available": False, "reason": "the model has no dropout layer"}
