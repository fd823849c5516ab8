"""Seed ensembles: mean of members, Grad-CAM over all members, ``train`` with ``training/ensemble: N``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from MedDeepRecogLib.errors import ConfigError
from MedDeepRecogLib.explain.gradcam import explained_forward, resolve_layers
from MedDeepRecogLib.models import build_model, default_target_layer
from MedDeepRecogLib.packages import load_package
from MedDeepRecogLib.training.config import config_from_dict
from MedDeepRecogLib.training.evaluate import evaluate_package
from MedDeepRecogLib.training.classification import fit_classifier as fit, make_loader
from MedDeepRecogLib.training.train import run_training

from test_training import _config, fit_config, npz, separable  # noqa: F401  (npz: fixture)

MEMBER = {"channels": [4, 8], "hidden": 8, "dropout": 0.0}


def _ensemble(members: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("ensemble", in_channels=1, num_classes=2, member="simple_cnn3d", member_kwargs=MEMBER,
                       members=members).eval()


def test_softmax_of_the_output_is_the_mean_of_the_members_probabilities():
    model = _ensemble(3)
    x = torch.rand(2, 1, 8, 8, 8)
    with torch.no_grad():
        expected = torch.stack([torch.softmax(m(x), 1) for m in model.members]).mean(0)
        assert torch.allclose(torch.softmax(model(x), 1), expected, atol=1e-6)
        assert torch.allclose(torch.exp(model(x)).sum(1), torch.ones(2), atol=1e-5)  # log-probabilities
    assert not torch.equal(model.members[0].features.conv1.conv.weight, model.members[1].features.conv1.conv.weight)


def test_gradcam_pattern_explains_every_member_as_one_layer():
    model = _ensemble(2)
    layer = default_target_layer("ensemble", member="simple_cnn3d", member_kwargs=MEMBER, members=2)
    assert layer == "members.*.features.conv2"
    assert [n for n, _ in resolve_layers(model, layer)] == ["members.0.features.conv2", "members.1.features.conv2"]
    x = torch.rand(2, 1, 8, 8, 8)
    nontrivial = 0
    for cls in (0, 1):
        got = explained_forward(model, x, layer, class_index=[cls])
        # reference: Grad-CAM of the ensemble's class score with both members' activations as one channel stack
        acts = []
        hooks = [m.features.conv2.register_forward_hook(lambda _m, _i, out: acts.append(out)) for m in model.members]
        logits = model(x)
        for h in hooks:
            h.remove()
        grads = torch.autograd.grad(logits[:, cls].sum(), acts)
        a, g = torch.cat(acts, 1), torch.cat(grads, 1)
        cam = torch.relu((g.mean(dim=(2, 3, 4), keepdim=True) * a).sum(1)).detach()
        lo, hi = cam.amin(dim=(1, 2, 3), keepdim=True), cam.amax(dim=(1, 2, 3), keepdim=True)
        cam = (cam - lo) / (hi - lo).clamp_min(1e-12)
        assert got.maps.shape == (2, 4, 4, 4)
        assert torch.allclose(got.maps, cam, atol=1e-5)
        assert torch.allclose(got.logits, logits.detach())
        nontrivial += int(got.maps.max() > 0.99)
    assert nontrivial >= 1  # a class whose map is not all zero (ReLU) was compared
    with pytest.raises(KeyError, match="no layer"):
        resolve_layers(model, "members.*.features.conv9")


def test_ensemble_must_have_a_whole_number_of_members(npz):
    for bad in (0, 2.5, "3", True):
        with pytest.raises(ConfigError, match="training/ensemble"):
            config_from_dict(_config(npz, training={"epochs": 1, "batch_size": 16, "ensemble": bad}))


def test_train_builds_an_ensemble_whose_first_member_is_the_single_model(tmp_path, npz):
    """Member i is trained exactly as a single model with seed ``seed + i`` would be; the package holds all
    members, ``evaluate`` reproduces its recorded metrics, and Grad-CAM runs on the stored target layer."""
    single = run_training(config_from_dict(_config(npz, id="single")), out=tmp_path / "single",
                          package_dest=tmp_path / "cat")
    stages = []
    ens = run_training(config_from_dict(_config(npz, id="ens", training={"epochs": 3, "batch_size": 16,
                                                                          "ensemble": 2})),
                       out=tmp_path / "ens", package_dest=tmp_path / "cat",
                       progress=lambda stage, fraction, **kw: stages.append((stage, fraction, kw.get("member"))))
    pkg, ref = load_package(ens["package"]), load_package(single["package"])
    assert pkg.meta["architecture"]["name"] == "ensemble"
    assert pkg.meta["architecture"]["kwargs"]["members"] == 2
    model, single_model = pkg.build_model("cpu"), ref.build_model("cpu")
    for k, v in single_model.state_dict().items():
        assert torch.equal(model.members[0].state_dict()[k], v), k
    assert not torch.equal(model.members[1].classifier.out.weight, model.members[0].classifier.out.weight)
    # progress covers both members in order, fractions rising through the whole run
    train_fracs = [(f, m) for s, f, m in stages if s == "train"]
    assert {m for _, m in train_fracs} == {1, 2} and train_fracs == sorted(train_fracs)
    assert train_fracs[-1][0] == pytest.approx(1.0)
    assert len(pkg.meta["metrics"]["best_epoch"]) == 2
    card = (pkg.path / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "member 1: seed 0" in card and "member 2: seed 1" in card
    hist = json.loads((tmp_path / "ens" / "history.json").read_text(encoding="utf-8"))
    assert [m["seed"] for m in hist["members"]] == [0, 1]
    metrics = evaluate_package(pkg.path, npz, split="val")
    assert metrics["auc"] == pytest.approx(pkg.meta["metrics"]["auc"], abs=1e-6)
    x = torch.rand(2, 1, 12, 12)
    assert explained_forward(model, x, pkg.target_layer).maps.shape == (2, 6, 6)


def test_resuming_an_early_stopped_run_trains_no_further(tmp_path):
    x, y = separable(64, seed=1)
    xv, yv = separable(32, seed=2)
    cfg = fit_config(30, lr=1e-9, monitor="loss", early_stopping_patience=2)
    cfg.checkpoint_dir = str(tmp_path)
    torch.manual_seed(0)
    model = build_model("simple_cnn2d", in_channels=1, num_classes=2, channels=[4, 8], hidden=8)
    first = fit(model, make_loader(x, y, 16, True), make_loader(xv, yv, 64, False), cfg)
    assert first.stopped == "early_stopping"
    cfg.resume = True
    again = fit(model, make_loader(x, y, 16, True), make_loader(xv, yv, 64, False), cfg)
    assert again.stopped == "early_stopping" and len(again.epochs) == len(first.epochs)
    assert np.isclose(again.best_metric, first.best_metric)


def test_uncertainty_block_reports_the_members_disagreement():
    from MedDeepRecogLib.uncertainty import classify_uncertainty, ensemble_member_samples

    model = _ensemble(3)
    x = torch.rand(1, 1, 8, 8, 8)
    samples = ensemble_member_samples(model, x)
    assert samples.shape == (3, 1, 2)
    out = classify_uncertainty(model, x, {"class_names": ["a", "b"]}, mc_samples=0, tta=0)
    block = out["ensemble"]
    assert block["samples"] == 3
    expected = samples[:, 0].mean(0).numpy()
    assert np.allclose([block["mean_probabilities"]["a"], block["mean_probabilities"]["b"]], expected, atol=1e-6)
    assert block["variance"] == pytest.approx(float(samples[:, 0, int(expected.argmax())].var(unbiased=False)),
                                              abs=1e-6)
    with pytest.raises(ValueError, match="not an ensemble"):
        ensemble_member_samples(model.members[0], x)


def _split_npz(path, val_labels_flipped: bool):
    x, y = separable(90, seed=3)
    xv, yv = separable(30, seed=4)
    to_u8 = lambda a: (a[:, 0] * 100 + 100).clip(0, 255).astype(np.uint8)  # noqa: E731
    np.savez(path, train_images=to_u8(x), train_labels=y[:, None], val_images=to_u8(xv),
             val_labels=(1 - yv if val_labels_flipped else yv)[:, None])
    return path


def test_stratified_folds_cover_every_case_once_with_each_class_in_every_fold():
    from MedDeepRecogLib.training.data import stratified_folds

    labels = np.array([0] * 929 + [1] * 259)
    folds = stratified_folds(labels, 5, seed=0)
    assert np.array_equal(np.sort(np.concatenate(folds)), np.arange(len(labels)))
    assert [int(labels[f].sum()) for f in folds] == [52, 52, 52, 52, 51]
    assert all(np.array_equal(a, b) for a, b in zip(folds, stratified_folds(labels, 5, seed=0)))
    assert not all(np.array_equal(a, b) for a, b in zip(folds, stratified_folds(labels, 5, seed=1)))
    with pytest.raises(ConfigError, match="at least one case per fold"):
        stratified_folds(np.array([0, 0, 0, 1]), 2, seed=0)


def test_folds_config_is_checked(npz):
    for bad in (1, -2, 2.5, True):
        with pytest.raises(ConfigError, match="training/folds"):
            config_from_dict(_config(npz, training={"epochs": 1, "folds": bad}))
    with pytest.raises(ConfigError, match="leave training/ensemble at 1"):
        config_from_dict(_config(npz, training={"epochs": 1, "folds": 3, "ensemble": 2}))


def test_cross_validation_ensemble_never_sees_the_validation_split(tmp_path):
    """``training/folds: 3``: members select on their own train fold, so the weights do not depend on the val split
    (here: the same run with the val labels flipped gives identical weights); the out-of-fold metrics are what
    each member scores on its held-out fold, and ``evaluate`` reproduces the val figures."""
    from MedDeepRecogLib.training.data import standardise_images, stratified_folds
    from MedDeepRecogLib.training.metrics import classification_metrics

    training = {"epochs": 3, "batch_size": 16, "folds": 3, "monitor": "loss"}
    runs = {}
    for flipped in (False, True):
        data = _split_npz(tmp_path / f"split{int(flipped)}.npz", flipped)
        runs[flipped] = run_training(config_from_dict(_config(data, id=f"cv{int(flipped)}", training=training)),
                                     out=tmp_path / f"cv{int(flipped)}", package_dest=tmp_path / "cat")
    pkg, other = load_package(runs[False]["package"]), load_package(runs[True]["package"])
    assert pkg.meta["architecture"]["kwargs"]["members"] == 3
    model, other_model = pkg.build_model("cpu"), other.build_model("cpu")
    for k, v in model.state_dict().items():
        assert torch.equal(other_model.state_dict()[k], v), k
    assert runs[False]["val_auc"] > 0.9 and runs[True]["val_auc"] < 0.1  # same model, val labels flipped

    cv = pkg.meta["metrics"]["cross_validation"]
    assert cv == other.meta["metrics"]["cross_validation"]
    assert "val split unseen" in pkg.meta["metrics"]["selected_by"]
    z = np.load(tmp_path / "split0.npz")
    # as training prepared them: standardised as classify's slices (training_slices: {})
    x = standardise_images(z["train_images"], {}, None, tmp_path)
    y = z["train_labels"].ravel()
    folds = stratified_folds(y, 3, seed=0)
    assert cv["n"] == len(y) == sum(len(f) for f in folds)
    oof = np.zeros((len(y), 2))
    with torch.no_grad():
        for member, held in zip(model.members, folds):
            oof[held] = torch.softmax(member(torch.from_numpy(x[held])), 1).numpy()
    expected = classification_metrics(y, oof, ["left", "right"])
    assert cv["auc"] == pytest.approx(expected["auc"], abs=1e-6)
    assert cv["balanced_accuracy"] == pytest.approx(expected["balanced_accuracy"], abs=1e-6)
    assert cv["fold_auc"] == pytest.approx([classification_metrics(y[f], oof[f])["auc"] for f in folds], abs=1e-6)
    assert cv["fold_class_counts"] == [np.bincount(y[f], minlength=2).tolist() for f in folds]
    metrics = evaluate_package(pkg.path, tmp_path / "split0.npz", split="val")
    assert metrics["auc"] == pytest.approx(pkg.meta["metrics"]["auc"], abs=1e-6)
    card = (pkg.path / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "Cross-validation ensemble" in card and "fold 2 of the train split" in card
    sizes = ", ".join("/".join(str(c) for c in np.bincount(y[f], minlength=2)) for f in folds)
    assert f"cases per class in each fold {sizes}." in card


def test_refit_packages_members_trained_on_every_train_case(tmp_path):
    """``training/folds: 3, refit: 2``: the fold members give the out-of-fold estimate and are not packaged; the
    package holds 2 members that each equal a single model trained on the whole train split with its seed
    (seed + folds + j), so every train case shaped them; val still decides nothing."""
    data = _split_npz(tmp_path / "split.npz", False)
    training = {"epochs": 2, "batch_size": 16, "folds": 3, "refit": 2, "monitor": "last"}
    run = run_training(config_from_dict(_config(data, id="refit", training=training)), out=tmp_path / "refit",
                       package_dest=tmp_path / "cat")
    pkg = load_package(run["package"])
    assert pkg.meta["architecture"]["kwargs"]["members"] == 2
    cv = pkg.meta["metrics"]["cross_validation"]
    assert cv["folds"] == 3 and cv["n"] == 90 and "refitted" in cv["members"]
    model = pkg.build_model("cpu")

    # the same recipe as a plain single model on the whole train split, seed 0 + 3 folds + 1
    single = run_training(config_from_dict(_config(data, id="single", seed=4,
                                                   training={"epochs": 2, "batch_size": 16, "monitor": "last"})),
                          out=tmp_path / "single", package_dest=tmp_path / "cat")
    alone = load_package(single["package"]).build_model("cpu")
    for k, v in alone.state_dict().items():
        assert torch.equal(model.members[1].state_dict()[k], v), k
    card = (pkg.path / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "Cross-validation estimate of the recipe" in card and "refitted on the whole train split" in card
    assert sum(map(sum, cv["fold_class_counts"])) == 90 and "cases per class in each fold " in card
    history = json.loads((tmp_path / "refit" / "history.json").read_text())
    assert len(history["fold_members"]) == 3 and len(history["members"]) == 2
    assert (tmp_path / "refit" / "checkpoints" / "refit2").is_dir()


def test_refit_config_is_checked(npz):
    with pytest.raises(ConfigError, match="training/refit needs training/folds"):
        config_from_dict(_config(npz, training={"epochs": 1, "refit": 2, "monitor": "last"}))
    with pytest.raises(ConfigError, match="training/refit must be 0"):
        config_from_dict(_config(npz, training={"epochs": 1, "folds": 3, "refit": 1, "monitor": "last"}))
    with pytest.raises(ConfigError, match="set training/monitor to last"):
        config_from_dict(_config(npz, training={"epochs": 1, "folds": 3, "refit": 2, "monitor": "auc"}))


def test_prior_shift_offsets_raise_balanced_accuracy_of_a_rare_class():
    """Probabilities that under-call a rare class: the fitted offsets favour it and lift balanced accuracy; a
    metric the shift cannot improve keeps the plain argmax (all offsets 0)."""
    from MedDeepRecogLib.training.metrics import classification_metrics
    from MedDeepRecogLib.uncertainty.calibration import fit_class_offsets, softmax

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], [400, 40, 200])
    logits = rng.normal(0.0, 1.0, (len(y), 3))
    logits[np.arange(len(y)), y] += 1.5
    logits[:, 1] -= 1.5  # the rare class is systematically under-called
    p = softmax(logits)
    offsets = fit_class_offsets(p, y, "balanced_accuracy")
    assert offsets[0] == 0.0 and offsets[1] > 0.5
    before = classification_metrics(y, p)["balanced_accuracy"]
    after = classification_metrics(y, softmax(np.log(p) + offsets))["balanced_accuracy"]
    assert after > before + 0.05
    perfect = np.eye(3)[y] * 0.9 + 0.05
    assert np.array_equal(fit_class_offsets(perfect, y, "accuracy"), np.zeros(3))
    with pytest.raises(ValueError, match="metric must be one of"):
        fit_class_offsets(p, y, "auc")


def test_ensemble_class_offsets_shift_the_mean_probabilities():
    model = _ensemble(2)
    torch.manual_seed(0)
    shifted = build_model("ensemble", in_channels=1, num_classes=2, member="simple_cnn3d", member_kwargs=MEMBER,
                          members=2, class_log_offsets=[0.0, 1.25]).eval()
    assert set(shifted.state_dict()) == set(model.state_dict())  # offsets live in model.json, not the weights
    x = torch.rand(3, 1, 8, 8, 8)
    with torch.no_grad():
        mean = torch.softmax(model(x), 1) * torch.exp(torch.tensor([0.0, 1.25]))
        assert torch.allclose(torch.softmax(shifted(x), 1), mean / mean.sum(1, keepdim=True), atol=1e-6)
        assert torch.allclose(torch.exp(shifted(x)).sum(1), torch.ones(3), atol=1e-5)
        member = torch.softmax(shifted.members[1](x), 1) * torch.exp(torch.tensor([0.0, 1.25]))
        assert torch.allclose(shifted.member_probabilities(x)[1], member / member.sum(1, keepdim=True), atol=1e-6)
    assert "class_log_offsets" in dict(shifted.named_buffers()) and shifted.to(torch.float64).class_log_offsets.dtype \
        == torch.float64  # a buffer: it follows .to()
    with pytest.raises(ConfigError, match="class_log_offsets must be 2 finite numbers"):
        build_model("ensemble", in_channels=1, num_classes=2, member="simple_cnn3d", member_kwargs=MEMBER,
                    members=2, class_log_offsets=[0.0, 1.0, 2.0])
    # written by hand as whole numbers, negative ones included, they are the same real offsets
    whole = build_model("ensemble", in_channels=1, num_classes=2, member="simple_cnn3d", member_kwargs=MEMBER,
                        members=2, class_log_offsets=[-1, 2])
    assert whole.class_log_offsets.tolist() == [-1.0, 2.0]


def test_prior_shift_is_fitted_out_of_fold_and_applied_by_the_package(tmp_path):
    """``training/prior_shift``: the offsets reach the best out-of-fold balanced accuracy of the members' own
    out-of-fold probabilities; the package applies them, so ``evaluate`` reproduces its val figures."""
    from MedDeepRecogLib.training.data import standardise_images, stratified_folds
    from MedDeepRecogLib.training.metrics import classification_metrics
    from MedDeepRecogLib.uncertainty.calibration import fit_class_offsets, softmax

    rng = np.random.default_rng(5)
    x, y = separable(160, seed=5)
    keep = np.flatnonzero((y == 0) | (rng.random(len(y)) < 0.3))  # class 1 rare
    noisy = lambda a: (a[:, 0] * 100 + 100 + rng.normal(0, 60, a[:, 0].shape)).clip(0, 255).astype(np.uint8)  # noqa
    path = tmp_path / "rare.npz"
    np.savez(path, train_images=noisy(x[keep][:100]), train_labels=y[keep][:100, None],
             val_images=noisy(x[keep][100:]), val_labels=y[keep][100:, None])
    training = {"epochs": 2, "batch_size": 16, "folds": 3, "monitor": "last", "prior_shift": "balanced_accuracy",
                "class_weights": "none"}  # trained on the class frequencies: the rare class is under-called
    run = run_training(config_from_dict(_config(path, id="shift", training=training)), out=tmp_path / "shift",
                       package_dest=tmp_path / "cat")
    pkg = load_package(run["package"])
    offsets = pkg.meta["architecture"]["kwargs"]["class_log_offsets"]
    shift = pkg.meta["metrics"]["cross_validation"]["prior_shift"]
    assert shift["class_log_offsets"] == offsets and shift["metric"] == "balanced_accuracy"

    z = np.load(path)
    xt, yt = standardise_images(z["train_images"], {}, None, path), z["train_labels"].ravel()   # as trained on
    model = pkg.build_model("cpu")
    oof = np.zeros((len(yt), 2))
    with torch.no_grad():
        for member, held in zip(model.members, stratified_folds(yt, 3, seed=0)):
            oof[held] = torch.softmax(member(torch.from_numpy(xt[held])), 1).numpy()
    bal = lambda b: classification_metrics(yt, softmax(np.log(oof) + b))["balanced_accuracy"]  # noqa: E731
    assert bal(offsets) == pytest.approx(shift["tuned"]["balanced_accuracy"], abs=1e-6)
    folds = stratified_folds(yt, 3, seed=0)
    crossed = np.zeros_like(oof)
    for held in folds:
        rest = np.setdiff1d(np.arange(len(yt)), held)
        crossed[held] = softmax(np.log(oof[held]) + fit_class_offsets(oof[rest], yt[rest]))
    assert shift["cross_fitted"]["balanced_accuracy"] == pytest.approx(
        classification_metrics(yt, crossed)["balanced_accuracy"], abs=1e-6)
    assert bal(offsets) == pytest.approx(bal(fit_class_offsets(oof, yt)), abs=1e-6)  # the grid's best
    assert bal(offsets) >= pkg.meta["metrics"]["cross_validation"]["balanced_accuracy"] - 1e-6
    with torch.no_grad():  # the package applies the offsets (whatever they came out as on this CPU)
        mean = torch.stack([torch.softmax(m(torch.from_numpy(xt)), 1) for m in model.members]).mean(0)
        mean = mean * torch.exp(torch.tensor(offsets))
        assert torch.allclose(torch.softmax(model(torch.from_numpy(xt)), 1), mean / mean.sum(1, keepdim=True),
                              atol=1e-5)
        assert torch.allclose(model.member_probabilities(torch.from_numpy(xt)).sum(-1), torch.ones(len(model.members), len(yt)),
                              atol=1e-5)
    metrics = evaluate_package(pkg.path, path, split="val")
    assert metrics["balanced_accuracy"] == pytest.approx(pkg.meta["metrics"]["balanced_accuracy"], abs=1e-6)
    assert "Prior shift" in (pkg.path / "MODEL_CARD.md").read_text(encoding="utf-8")
    with pytest.raises(ConfigError, match="training/prior_shift is fitted on out-of-fold"):
        config_from_dict(_config(path, training={"epochs": 1, "prior_shift": "accuracy"}))
    five = tmp_path / "five.npz"
    np.savez(five, images=rng.integers(0, 255, (50, 8, 8), dtype=np.uint8), labels=np.arange(50)[:, None] % 5)
    cfg = _config(five, id="five", training={"epochs": 1, "folds": 2, "prior_shift": "accuracy"})
    cfg["data"]["class_names"] = list("abcde")
    with pytest.raises(ConfigError, match="at most 4 classes; the data have 5"):
        run_training(config_from_dict(cfg), out=tmp_path / "five", package_dest=tmp_path / "cat")
    assert not (tmp_path / "five").exists()


def _flip_ensemble(flip_axes) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("ensemble", in_channels=1, num_classes=3, member="evidence_cnn2d",
                       member_kwargs={"channels": [4, 8, 8, 8]}, members=2, flip_axes=flip_axes).eval()


def test_test_time_flip_averages_both_views_and_mirrors_the_heatmap():
    """``flip_axes``: the output is the mean of the members' probabilities over the image and its mirror image;
    Grad-CAM of a mirrored image is the mirrored map, and the domain features of both are the same."""
    from MedDeepRecogLib.uncertainty.domain import capture_features

    flipped, plain = _flip_ensemble([1]), _flip_ensemble(None)
    assert flipped.views == 2 and flipped.flip_dims == (3,) and plain.views == 1
    x = torch.rand(3, 1, 48, 40)
    with torch.no_grad():
        expected = (torch.softmax(plain(x), 1) + torch.softmax(plain(x.flip(3)), 1)) / 2
        assert torch.allclose(torch.softmax(flipped(x), 1), expected, atol=1e-6)
        assert torch.allclose(flipped(x), flipped(x.flip(3)), atol=1e-5)  # a mirror image gets the same answer
        members = flipped.member_probabilities(x)
        assert members.shape == (2, 3, 3) and torch.allclose(members.mean(0), expected, atol=1e-6)
        assert (plain(x) - plain(x.flip(3))).abs().max() > 1e-5  # without the flip it would not
    layer = "members.*.classmap"
    for method in ("gradcam", "gradcampp"):
        here = explained_forward(flipped, x, layer, method=method)
        mirrored = explained_forward(flipped, x.flip(3), layer, method=method)
        assert here.maps.shape == (3, 6, 5)  # one map per image, on the layer's grid (stride 8)
        assert torch.allclose(mirrored.maps, here.maps.flip(2), atol=1e-4)
        assert torch.equal(here.class_index, mirrored.class_index)
    # the maps are not those of the original view alone: the mirror view's evidence is joined in
    alone = explained_forward(plain, x, layer).maps
    assert (alone - explained_forward(flipped, x, layer).maps).abs().max() > 1e-2
    with capture_features(flipped) as a, torch.no_grad():
        flipped(x)
    with capture_features(flipped) as b, torch.no_grad():
        flipped(x.flip(3))
    assert a.array().shape == (3, 16) and np.allclose(a.array(), b.array(), atol=1e-5)


def test_test_time_flip_is_refused_without_an_ensemble_or_mirror_augmentation(tmp_path, npz):
    with pytest.raises(ConfigError, match="training/test_time_flip is applied by an ensemble"):
        config_from_dict(_config(npz, training={"epochs": 1, "test_time_flip": [1]}))
    with pytest.raises(ConfigError, match=r"axes \[1\] are not flipped by augmentation/flip"):
        config_from_dict(_config(npz, augmentation={"flip": {"prob": 0.5, "axes": [0]}},
                                 training={"epochs": 1, "folds": 2, "test_time_flip": [1]}))
    with pytest.raises(ConfigError, match="not flipped by augmentation/flip"):  # probability 0 flips nothing
        config_from_dict(_config(npz, training={"epochs": 1, "folds": 2, "test_time_flip": [1]}))
    with pytest.raises(ConfigError, match="test_time_flip"):
        config_from_dict(_config(npz, augmentation={"flip": {"prob": 0.5}},
                                 training={"epochs": 1, "folds": 2, "test_time_flip": [5]}))
    with pytest.raises(ConfigError, match="flip_axes are spatial axes"):
        _flip_ensemble([3])


def test_test_time_flip_is_packaged_and_its_figures_are_of_the_averaged_prediction(tmp_path, npz):
    """``training/test_time_flip``: the package's ensemble flips, the out-of-fold figures are those of the fold
    members with the flip, ``evaluate`` reproduces the val figures, and the card says so."""
    from MedDeepRecogLib.training.data import load_train_val, stratified_folds
    from MedDeepRecogLib.training.metrics import classification_metrics

    cfg = config_from_dict(_config(npz, id="mirror", augmentation={"flip": {"prob": 0.5, "axes": [1]}},
                                   training={"epochs": 2, "batch_size": 16, "folds": 2, "monitor": "last",
                                             "test_time_flip": [1]}))
    run = run_training(cfg, out=tmp_path / "mirror", package_dest=tmp_path / "cat")
    pkg = load_package(run["package"])
    assert pkg.meta["architecture"]["kwargs"]["flip_axes"] == [1]
    model = pkg.build_model("cpu")
    assert model.flip_dims == (3,)
    data = load_train_val(cfg, npz)
    x, y = torch.from_numpy(data.train.images), data.train.labels
    oof = np.zeros((len(y), 2))
    with torch.no_grad():  # without refit the package's members are the fold members
        for member, held in zip(model.members, stratified_folds(y, 2, seed=0)):
            views = [torch.softmax(member(x[held].flip(dims)), 1) for dims in ((), (3,))]
            oof[held] = ((views[0] + views[1]) / 2).numpy()
    cv = pkg.meta["metrics"]["cross_validation"]
    by_hand = classification_metrics(y, oof)
    assert cv["auc"] == pytest.approx(by_hand["auc"], abs=1e-5)
    assert cv["accuracy"] == pytest.approx(by_hand["accuracy"], abs=1e-6)
    val = evaluate_package(pkg.path, npz, split="val")
    assert val["accuracy"] == pytest.approx(pkg.meta["metrics"]["accuracy"], abs=1e-6)
    assert val["auc"] == pytest.approx(pkg.meta["metrics"]["auc"], abs=1e-6)
    card = (pkg.path / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "Test-time flip" in card and "test_time_flip: [1]" in card


def test_seed_ensemble_card_says_what_selected_each_member():
    """A seed ensemble whose members keep their final epoch (``monitor: last``) selected nothing on the validation
    split: its card says so instead of calling the val figures optimistic; best-epoch members still are."""
    from MedDeepRecogLib.training.train import _selection_lines

    def member(seed, monitor):
        return {"seed": seed, "monitor": monitor, "best_epoch": 5, "epochs": [{}] * 5, "best_metric": 0.9,
                "stopped": "completed"}

    last = _selection_lines({"members": [member(0, "last"), member(1, "last")]})
    assert "No checkpoint selection" in last and "held-out estimate" in last
    assert "optimistic" not in last and "best epoch" not in last
    best = _selection_lines({"members": [member(0, "auc"), member(1, "auc")]})
    assert "each member's best epoch on the validation split" in best and "optimistic" in best
