"""FGSM / PGD against their defining properties, robustness curves, and adversarial training on tiny 3D data."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from frontier_helpers import blob_data, tiny_model, train, trained_blob_model
from MedDeepRecogLib.errors import ConfigError
from MedDeepRecogLib.robustness import (AdversarialTraining, evaluate_robustness, fgsm,
                                        parse_eps_list, pgd, scan_robustness)


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return trained_blob_model()


@pytest.fixture(scope="module")
def data():
    return blob_data(32, seed=7)


def _grad(model, x, y):
    x = x.clone().requires_grad_(True)
    F.cross_entropy(model(x), y).backward()
    return x.grad.detach()


def test_fgsm_is_eps_times_sign_of_gradient(model, data):
    x, y, _ = data
    eps = 0.01
    m = copy.deepcopy(model)
    expected = eps * _grad(m, x, y).sign()
    adv = fgsm(model, x, y, eps)
    assert torch.allclose(adv - x, expected, atol=1e-6)
    assert adv.shape == x.shape and adv.dtype == x.dtype


def test_fgsm_clips_to_intensity_range(model, data):
    x, y, _ = data
    eps = 0.2
    adv = fgsm(model, x, y, eps, bounds=(0.0, 1.0))
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    expected = (x + eps * _grad(copy.deepcopy(model), x, y).sign()).clamp(0, 1)
    assert torch.allclose(adv, expected, atol=1e-6)
    # at least one voxel was really clipped, so the check above is not vacuous
    assert bool(((x + eps) > 1).any())


def test_attacks_leave_parameter_gradients_alone(data):
    x, y, _ = data
    m = tiny_model()
    m.eval()
    pgd(m, x[:4], y[:4], 0.05, steps=2)
    assert all(p.grad is None for p in m.parameters())


def test_pgd_stays_in_eps_ball_and_range_and_beats_clean_loss(model, data):
    x, y, _ = data
    eps = 0.05
    adv = pgd(model, x, y, eps, steps=5, bounds=(0.0, 1.0))
    assert float((adv - x).abs().max()) <= eps + 1e-6
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    with torch.no_grad():
        clean_loss = F.cross_entropy(model(x), y)
        adv_loss = F.cross_entropy(model(adv), y)
        fgsm_loss = F.cross_entropy(model(fgsm(model, x, y, eps, bounds=(0, 1))), y)
    assert adv_loss > clean_loss
    # more steps of the same budget find at least as strong an attack as one step (up to a small slack)
    assert adv_loss >= 0.9 * fgsm_loss


@pytest.mark.parametrize("eps", [0.0, -0.1, float("nan")])
def test_non_positive_eps_is_refused(model, data, eps):
    x, y, _ = data
    with pytest.raises(ConfigError, match="eps"):
        fgsm(model, x, y, eps)
    with pytest.raises(ConfigError, match="eps"):
        pgd(model, x, y, eps)


def test_eps_outside_intensity_range_is_refused(model, data):
    x, y, _ = data
    with pytest.raises(ConfigError, match="intensity range"):
        pgd(model, x, y, 1.5, bounds=(0.0, 1.0))
    assert parse_eps_list("0.02, 0.01,0.02") == [0.01, 0.02]
    with pytest.raises(ConfigError):
        parse_eps_list("0.01,-1")


def test_robust_accuracy_falls_with_eps(model, data):
    x, y, _ = data
    res = evaluate_robustness(model, [(x[:16], y[:16]), (x[16:], y[16:])], [0.01, 0.05, 0.2], attack_name="pgd",
                              steps=4, bounds=(0.0, 1.0))
    accs = [r["accuracy"] for r in res["robust"]]
    assert res["n"] == 32 and res["clean"]["accuracy"] >= 0.9
    assert accs == sorted(accs, reverse=True)
    assert accs[-1] < res["clean"]["accuracy"]


def test_scan_robustness_finds_smallest_flipping_eps(model, data):
    x, y, _ = data
    i = int(torch.nonzero(y == 0)[0])  # "normal" flips easily: a faint blob is enough
    res, deltas = scan_robustness(model, x[i:i + 1], [0.01, 0.05, 0.1, 0.3], attack_name="pgd", steps=4,
                                  bounds=(0.0, 1.0), class_names=["normal", "mass"])
    assert res["clean_label"] == "normal"
    e = res["smallest_flipping_eps"]
    assert e is not None and 0 < e <= 0.3
    assert res["flip"]["flipped"] and res["flip"]["label"] == "mass"
    # the refinement stays at or below the first flipping eps of the list
    first = min(p["eps"] for p in res["curve"] if p["flipped"])
    assert e <= first
    assert float(deltas[e].abs().max()) <= e + 1e-6
    # a point just below the reported eps must not flip (bisection brackets it)
    below = [p for p in res["curve"] if p["eps"] < e]
    assert all(not p["flipped"] for p in below)


def test_scan_robustness_null_when_nothing_flips(model, data):
    x, y, _ = data
    res, _ = scan_robustness(model, x[:1], [1e-5], attack_name="fgsm", bounds=(0.0, 1.0))
    assert res["smallest_flipping_eps"] is None and res["flip"] is None


def test_slice_stack_is_one_attacked_sample():
    from MedDeepRecogLib.models.slice_stack import SliceStackClassifier, sample_as_stack, stack_as_sample

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x = torch.rand(5, 1, 4, 4)
    valid = torch.tensor([True, True, False, True, False])
    agg = SliceStackClassifier(net, valid)
    sample = stack_as_sample(x)
    out = agg(sample)
    assert sample.shape == (1, 1, 5, 4, 4) and out.shape == (1, 3)
    # classify's product of experts: mean log-probability over the voting slices only
    expected = torch.log_softmax(net(x), 1)[valid].mean(0)
    assert torch.allclose(out[0], expected, atol=1e-6)
    adv = fgsm(agg, sample, torch.tensor([int(out.argmax())]), 0.1)
    assert adv.shape == sample.shape and sample_as_stack(adv).shape == x.shape
    # only the voting slices move the scan's prediction, so only they are perturbed
    delta = sample_as_stack(adv - sample).abs().flatten(1).amax(1)
    assert torch.all(delta[~valid] == 0) and torch.all(delta[valid] > 0)


def test_adversarial_training_hook_config_and_shapes(data):
    x, y, _ = data
    hook = AdversarialTraining.from_config({"attack": "fgsm_rs", "eps": 0.05, "bounds": [0, 1], "fraction": 0.5})
    assert AdversarialTraining.from_config(None) is None
    assert AdversarialTraining.from_config({"enabled": False}) is None
    with pytest.raises(ConfigError):
        AdversarialTraining.from_config({"attack": "pgd", "eps": 0.05, "stepz": 3})
    m = tiny_model()
    m.train()
    out = hook(m, x[:8], y[:8])
    assert m.training  # mode restored
    assert out.shape == x[:8].shape
    assert torch.equal(out[4:], x[4:8])  # untouched half
    assert float((out[:4] - x[:4]).abs().max()) <= 0.05 + 1e-6


def test_adversarial_training_improves_robust_accuracy():
    torch.set_num_threads(1)
    xtr, ytr, _ = blob_data(96, seed=1)
    xte, yte, _ = blob_data(48, seed=9)
    eps = 0.1
    normal = trained_blob_model()
    robust = train(tiny_model(), xtr, ytr, steps=150,
                   hook=AdversarialTraining(attack="pgd", eps=eps, steps=3, bounds=(0.0, 1.0)))
    r_norm = evaluate_robustness(normal, [(xte, yte)], [eps], attack_name="pgd", steps=5, bounds=(0, 1))
    r_adv = evaluate_robustness(robust, [(xte, yte)], [eps], attack_name="pgd", steps=5, bounds=(0, 1))
    assert r_adv["clean"]["accuracy"] >= 0.8
    assert r_adv["robust"][0]["accuracy"] > r_norm["robust"][0]["accuracy"] + 0.2


def test_a_top_class_change_under_an_unchanged_reported_label_is_its_own_figure(model, data):
    """body-region on example_ct_sm: CTAbd -> CTChest at eps 0.01 while classify called both "uncertain"; the
    summary said "no eps tried changes the label classify reports" and nothing of the top class (audit F7)."""
    from MedDeepRecogLib.robustness.report import scan_lines

    x, y, _ = data
    i = int(torch.nonzero(y == 0)[0])
    judge = lambda _x: {"label": "uncertain", "confidence": 0.5, "reasons": ["low confidence"]}  # noqa: E731
    res, _ = scan_robustness(model, x[i:i + 1], [0.01, 0.3], attack_name="pgd", steps=4, bounds=(0.0, 1.0),
                             class_names=["normal", "mass"], judge=judge)
    assert res["smallest_flipping_eps"] is None            # the rule stays: the reported label never changed
    assert res["curve"][-1]["top_class"] == "mass"
    assert res["smallest_top_class_change_eps"] == min(p["eps"] for p in res["curve"] if p["top_class"] == "mass")
    res["input"] = "case.nii.gz"
    for p in res["curve"]:
        p["eps_hu"] = p["eps"] * 2000.0
    text = scan_lines(res)
    assert "no eps tried changes the label classify reports" in text
    change = res["smallest_top_class_change_eps"]
    assert (f"the network's top class changes from normal to mass at eps {change:.4g} ({change * 2000:.0f} HU), "
            "but both calls are uncertain") in text
    # without a judge a top-class change is the flip itself: no extra sentence
    plain, _ = scan_robustness(model, x[i:i + 1], [0.3], attack_name="pgd", steps=4, bounds=(0.0, 1.0),
                               class_names=["normal", "mass"])
    plain["input"] = "case.nii.gz"
    assert plain["smallest_top_class_change_eps"] == 0.3 and "top class changes" not in scan_lines(plain)
