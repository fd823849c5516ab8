"""bench/recipe_sweep.py writes the variant configs it trains: each a valid training config of fold members only,
and its standardised 8-bit copy of the training images equals what training would compute, to within 1/255."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import recipe_sweep  # noqa: E402

LUNG = REPO / "configs" / "lung-ct-cancer-cnn.yaml"
SHARED = REPO.parent / "shared" / "data"


def test_deep_merge_overrides_nested_keys_replaces_network_kwargs_whole_and_none_removes_a_key():
    base = {"a": {"b": 1, "c": 2}, "d": 3, "e": [1, 2], "model": {"name": "x", "kwargs": {"hidden": 0, "depth": 2}}}
    merged = recipe_sweep.deep_merge(base, {"a": {"c": 5}, "d": None, "e": [7],
                                            "model": {"name": "y", "kwargs": {"depth": 3}}})
    assert merged == {"a": {"b": 1, "c": 5}, "e": [7], "model": {"name": "y", "kwargs": {"depth": 3}}}
    assert base["a"] == {"b": 1, "c": 2} and base["d"] == 3 and base["model"]["kwargs"] == {"hidden": 0, "depth": 2}


@pytest.mark.parametrize("config,variants", [("lung-ct-cancer-cnn.yaml", "lung-ct-cancer.yaml"),
                                             ("brain-tumour-mri.yaml", "brain-tumour-mri.yaml"),
                                             ("breast-us-lesion-evidence.yaml", "breast-us-lesion.yaml")])
def test_every_committed_variant_is_a_valid_config_of_fold_members_whose_network_builds(tmp_path, config,
                                                                                       variants):
    from MedDeepRecogLib.commands import register_training_blocks
    register_training_blocks()  # the configs' localisation and placement blocks
    from MedDeepRecogLib.models import build_model
    from MedDeepRecogLib.training.config import load_config

    if not (SHARED / "brain_tumor_mri").is_dir():
        pytest.skip("../shared/data is not beside the checkout")
    table = yaml.safe_load((REPO / "bench" / "sweeps" / variants).read_text(encoding="utf-8"))
    paths = recipe_sweep.variant_configs(REPO / "configs" / config, table, [0, 100], tmp_path, None)
    assert len(paths) == 2 * len(table)
    for path in paths:
        cfg = load_config(path)
        assert cfg.training.refit == 0 and cfg.training.folds >= 2 and cfg.domain is None
        assert "localisation" not in cfg.blocks and "placement" not in cfg.blocks
        assert cfg.seed == (0 if path.stem.endswith("-s0") else 100)
        build_model(cfg.model.name, in_channels=1, num_classes=3, **cfg.model.kwargs)
    anchor = load_config(paths[0])
    base = load_config(REPO / "configs" / config)
    assert anchor.model == base.model and anchor.augmentation == base.augmentation
    assert anchor.optimizer == base.optimizer and anchor.data.size == base.data.size


def test_standardised_copy_matches_what_training_computes(tmp_path):
    from MedDeepRecogLib.commands import register_training_blocks
    register_training_blocks()  # the configs' localisation and placement blocks
    from MedDeepRecogLib.training.config import load_config, resolve_data_path
    from MedDeepRecogLib.training.data import load_train_val

    if not (SHARED / "lung_ct_iqothnccd").is_dir():
        pytest.skip("../shared/data is not beside the checkout")
    copy = tmp_path / "lung.npz"
    paths = recipe_sweep.variant_configs(LUNG, {"anchor": {}}, [0], tmp_path, copy)
    from_copy = load_config(paths[0])
    assert from_copy.input.slices is None
    original = load_config(LUNG)
    exact = load_train_val(original, resolve_data_path(original))
    quantised = load_train_val(from_copy, resolve_data_path(from_copy))
    assert quantised.train.images.shape == exact.train.images.shape
    np.testing.assert_array_equal(quantised.train.labels, exact.train.labels)
    np.testing.assert_array_equal(quantised.train_groups, exact.train_groups)
    assert np.abs(quantised.train.images - exact.train.images).max() <= 0.5 / 255 + 1e-6


def test_a_variant_that_changes_the_standardised_input_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="big"):
        recipe_sweep.variant_configs(LUNG, {"big": {"data": {"size": [224, 224]}}}, [0], tmp_path,
                                     tmp_path / "copy.npz")
