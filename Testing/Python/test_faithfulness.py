"""Heatmap trust: deletion/insertion AUC, pointing game, mass inside the lesion, model-randomisation check."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from frontier_helpers import blob_data, trained_blob_model
from MedDeepRecogLib.explain.faithfulness import (deletion_insertion, faithfulness_scores, lesion_reliance,
                                                  localisation_scores, mass_inside, methods_passing_sanity,
                                                  model_randomization_check, pointing_game, randomized_copy,
                                                  saliency_to_input, spearman)
from MedDeepRecogLib.explain.gradcam import explained_forward
from MedDeepRecogLib.models import default_target_layer

LAYER = default_target_layer("simple_cnn3d", channels=(4, 8))


def gradcam(model, x):
    return explained_forward(model, x, LAYER, method="gradcam").maps


def gradcampp(model, x):
    return explained_forward(model, x, LAYER, method="gradcampp").maps


def input_only(model, x):
    """A "heatmap" that ignores the model (the image itself): the randomisation check must reject it."""
    return x[:, 0]


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    x, y, masks = blob_data(8, seed=3)
    return trained_blob_model(), x, y, masks


def test_curves_have_steps_plus_one_points_and_start_at_clean_probability(setup):
    model, x, y, _ = setup
    xi = x[1:2]
    with torch.no_grad():
        p = torch.softmax(model(xi), 1)[0, 1].item()
        p_base = torch.softmax(model(torch.full_like(xi, float(xi.min()))), 1)[0, 1].item()
    res = deletion_insertion(model, xi, torch.rand(1, 16, 16, 16), 1, steps=4)
    assert len(res["deletion_curve"]) == len(res["insertion_curve"]) == 5
    assert res["deletion_curve"][0] == pytest.approx(p, abs=1e-6)
    assert res["insertion_curve"][-1] == pytest.approx(p, abs=1e-6)
    assert res["deletion_curve"][-1] == pytest.approx(p_base, abs=1e-6)
    assert 0.0 <= res["deletion_auc"] <= 1.0 and 0.0 <= res["insertion_auc"] <= 1.0
    # trapezoid over 5 points
    c = np.array(res["deletion_curve"])
    assert res["deletion_auc"] == pytest.approx(((c[1:] + c[:-1]) / 2).sum() / 4)


def test_gradcam_is_more_faithful_than_random_order(setup):
    model, x, y, masks = setup
    for i in np.flatnonzero(y.numpy() == 1)[:2]:
        xi = x[i:i + 1]
        res = faithfulness_scores(model, xi, gradcam(model, xi), 1, steps=10)
        assert res["deletion_auc"] < res["random_deletion_auc"] - 0.1
        assert res["score"] > 0
        # an oracle map (the lesion itself) deletes the evidence faster than a map pointing elsewhere
        oracle = masks[i:i + 1].float()
        good = deletion_insertion(model, xi, oracle, 1, steps=10)["deletion_auc"]
        bad = deletion_insertion(model, xi, 1 - oracle, 1, steps=10)["deletion_auc"]
        assert good < bad


def test_saliency_is_upsampled_to_input_grid():
    x = torch.zeros(2, 1, 8, 8, 8)
    s = saliency_to_input(torch.rand(2, 2, 2, 2), x)
    assert s.shape == (2, 8, 8, 8)
    with pytest.raises(ValueError, match="does not match"):
        deletion_insertion(lambda t: torch.zeros(1, 2), x[:1], torch.rand(3, 8, 8, 8), 0)


def test_pointing_game_and_mass_inside():
    h = np.zeros((10, 10, 10))
    m = np.zeros((10, 10, 10), bool)
    m[2:4, 2:4, 2:4] = True
    h[m] = 1.0
    h[8, 8, 8] = 3.0  # the peak is outside the lesion
    pg = pointing_game(h, m)
    assert pg["hit"] is False and pg["peak_index"] == [8, 8, 8]
    assert pg["distance_mm"] == pytest.approx(np.sqrt(3 * 5 ** 2))
    # anisotropic spacing and a tolerance large enough to count it
    aniso = pointing_game(h, m, spacing=(2.0, 1.0, 1.0), tolerance_mm=12.5)
    assert aniso["hit"] is True and aniso["distance_mm"] == pytest.approx(np.sqrt(10 ** 2 + 2 * 5 ** 2))
    assert pointing_game(h, m, spacing=(2.0, 1.0, 1.0), tolerance_mm=12.0)["hit"] is False
    assert mass_inside(h, m) == pytest.approx(8 / 11)
    h[8, 8, 8] = 0.0
    assert pointing_game(h, m)["hit"] is True
    assert mass_inside(np.zeros_like(h), m) is None
    assert pointing_game(h, np.zeros_like(m))["hit"] is None
    rep = localisation_scores(h, m)
    assert rep["lesion_voxels"] == 8 and rep["mass_inside"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        mass_inside(h, m[:5])


def _slices_with_a_bright_lesion():
    x = torch.full((2, 1, 32, 32), 0.3)
    lesion = torch.zeros(2, 32, 32, dtype=torch.bool)
    lesion[0, 10:14, 20:24] = True
    lesion[1, 18:23, 6:10] = True
    x[:, 0][lesion] = 1.0
    x[:, :, :2] = 0.0  # air above the body
    return x, lesion, x[:, 0] > 0.1


def test_lesion_reliance_tells_a_lesion_detector_from_a_model_that_ignores_the_lesion():
    x, lesion, body = _slices_with_a_bright_lesion()

    def detector(b):  # class 1 when the slice holds something much brighter than tissue
        return torch.stack([torch.zeros(len(b)), 20 * (b.amax(dim=(1, 2, 3)) - 0.6)], dim=1)

    def context(b):  # class 1 from the air strip only: the lesion plays no part
        return torch.stack([torch.zeros(len(b)), 5 - 20 * b[:, 0, :2].mean(dim=(1, 2))], dim=1)

    rel = lesion_reliance(detector, x, lesion, body, placements=6)
    assert rel["images"] == 2 and rel["lesion_above_elsewhere"] == 2
    assert rel["drop_lesion"] > 0.99 and abs(rel["drop_elsewhere"]) < 1e-6
    assert [r["placements"] for r in rel["per_image"]] == [6, 6]
    assert all(r["class_index"] == 1 for r in rel["per_image"])
    ignored = lesion_reliance(context, x, lesion, body, placements=6)
    assert abs(ignored["drop_lesion"]) < 1e-6 and ignored["lesion_above_elsewhere"] == 0
    assert lesion_reliance(detector, x, torch.zeros_like(lesion), body) is None


def test_gradcam_on_trained_model_points_at_the_lesion(setup):
    model, x, y, masks = setup
    hits = []
    for i in np.flatnonzero(y.numpy() == 1):
        up = saliency_to_input(gradcam(model, x[i:i + 1]), x[i:i + 1])[0].numpy()
        hits.append(pointing_game(up, masks[i].numpy(), tolerance_mm=1.0)["hit"])
    assert np.mean(hits) >= 0.75


def test_spearman_matches_known_values():
    a = np.arange(10.0)
    assert spearman(a, a ** 3) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(a, np.ones(10)) == 0.0


def test_randomized_copy_changes_weights_but_not_original(setup):
    model = setup[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rnd = randomized_copy(model, seed=0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    changed = [k for k, v in rnd.state_dict().items() if v.is_floating_point() and "running" not in k
               and not torch.equal(v, before[k])]
    assert len(changed) >= len([k for k in before if "weight" in k])


def test_randomization_sanity_check_accepts_gradcam_and_rejects_model_independent_maps(setup):
    """Adebayo et al.: with randomised weights a faithful method's map must change substantially."""
    model, x, y, _ = setup
    xb = x[np.flatnonzero(y.numpy() == 1)[:3]]
    offered, reports = methods_passing_sanity(model, xb, {"gradcam": gradcam, "gradcampp": gradcampp,
                                                         "input_only": input_only})
    assert "gradcam" in offered and "gradcampp" in offered
    assert "input_only" not in offered
    assert reports["input_only"]["spearman"] > 0.99
    assert reports["gradcam"]["spearman"] < 0.5
    single = model_randomization_check(model, xb, gradcam, threshold=0.5)
    assert single["passed"] and len(single["per_seed"]) == 2


def test_batched_curves_with_shared_end_points_equal_one_input_at_a_time():
    """The variants of all curves go through the network in batches, the unperturbed and all-baseline inputs once;
    the figures are those of classifying every point of every curve on its own."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool3d(2),
                                torch.nn.Flatten(), torch.nn.Linear(32, 3)).eval()
    x = torch.rand(1, 1, 8, 10, 12)
    sal = torch.rand(1, 4, 5, 6)  # coarser than x: upsampled
    batched = faithfulness_scores(model, x, sal, 2, steps=5)
    single = faithfulness_scores(model, x, sal, 2, steps=5, batch_size=1)
    for key in ("deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc", "score"):
        assert batched[key] == pytest.approx(single[key], abs=1e-6), key
    with torch.no_grad():
        p = torch.softmax(model(x), 1)[0, 2].item()
        p_base = torch.softmax(model(torch.full_like(x, float(x.min()))), 1)[0, 2].item()
    assert single["deletion_curve"][0] == pytest.approx(p, abs=1e-6)
    assert single["insertion_curve"][0] == pytest.approx(p_base, abs=1e-6)
    curve = deletion_insertion(model, x, sal, 2, steps=5)
    assert curve["deletion_curve"] == pytest.approx(batched["deletion_curve"], abs=1e-6)
    with pytest.raises(ValueError, match="batch 1"):
        deletion_insertion(model, torch.cat([x, x]), torch.cat([sal, sal]), 2)


@pytest.mark.parametrize("aucs, expected", [
    # deletion better than random (0.67 < 0.74), insertion worse: only insertion is named
    ((0.67, 0.74, 0.30, 0.40), ["restoring them first raises it less"]),
    ((0.80, 0.70, 0.60, 0.55), ["removing its hot pixels first lowers the prediction less"]),
    ((0.80, 0.70, 0.50, 0.55), ["removing its hot pixels first lowers the prediction less",
                                "restoring them first raises it less"]),
    ((0.70, 0.70, 0.496, 0.50), None),   # score -0.004: printed as -0.00, no warning
    ((0.60, 0.70, 0.60, 0.55), None)])   # faithful
def test_the_unfaithful_warning_names_the_part_that_failed(aucs, expected):
    """The warning's reason matches the AUCs printed beside it, and a score that rounds to 0.00 does not warn."""
    from MedDeepRecogLib.explain.faithfulness import unfaithful_warning

    deletion, random_deletion, insertion, random_insertion = aucs
    scores = {"deletion_auc": deletion, "random_deletion_auc": random_deletion, "insertion_auc": insertion,
              "random_insertion_auc": random_insertion,
              "score": (insertion - deletion) - (random_insertion - random_deletion)}
    warning = unfaithful_warning(scores)
    if expected is None:
        assert warning is None
    else:
        assert warning.startswith("this heatmap is not a faithful explanation (")
        for part in expected:
            assert part in warning
        assert len(expected) == warning.count(";") + 1
