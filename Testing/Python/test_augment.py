"""Batch augmentation: the same geometry as MONAI's per-sample transforms, one draw per sample, a resumable stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Rotate, Zoom

from MedDeepRecogLib.training.augment import BatchAugment, monai_transforms

FULL = {"flip": {"prob": 0.5, "axes": [1]}, "rotate": {"prob": 0.6, "degrees": 15},
        "zoom": {"prob": 0.6, "min": 0.85, "max": 1.15}, "noise": {"prob": 0.3, "std": 0.03},
        "intensity_shift": {"prob": 0.5, "offset": 0.1}, "gamma": {"prob": 0.3}}


def _blob(h: int = 64, w: int = 80) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.exp(-((yy - 20) ** 2 / 50 + (xx - 50) ** 2 / 120)).astype(np.float32)[None]


def test_rotation_is_monai_rotate_on_a_non_square_image():
    img = _blob()
    aug = BatchAugment({"rotate": {"prob": 1.0, "degrees": 30}}, spatial_dims=2)
    out = aug._resample(torch.from_numpy(img)[None], np.array([[0.3]]), np.array([True]), np.array([1.0]),
                        np.array([False]))[0]
    ref = torch.as_tensor(Rotate(0.3, keep_size=True, padding_mode="zeros")(img)).as_subclass(torch.Tensor)
    assert float((out - ref).abs().max()) < 1e-5


@pytest.mark.parametrize("factor", [0.85, 1.2])
def test_zoom_matches_monai_zoom_about_the_centre(factor):
    img = _blob()
    aug = BatchAugment({"zoom": {"prob": 1.0}}, spatial_dims=2)
    out = aug._resample(torch.from_numpy(img)[None], np.zeros((1, 1)), np.array([False]), np.array([factor]),
                        np.array([True]))[0]
    ref = torch.as_tensor(Zoom(factor, keep_size=True, mode="bilinear", padding_mode="constant")(img))
    # MONAI zooms then crops/pads to the size (half-pixel offsets differ); the blob must sit at the same place
    assert float((out - ref.as_subclass(torch.Tensor)).abs().max()) < 0.03
    assert np.unravel_index(int(out.argmax()), out.shape) == np.unravel_index(int(ref.argmax()), ref.shape)


def test_every_sample_draws_for_itself_and_the_input_is_left_alone():
    x = torch.from_numpy(np.repeat(_blob(32, 32)[None], 16, axis=0))  # one image, sixteen times
    before = x.clone()
    out = BatchAugment(FULL, spatial_dims=2, seed=0)(x)
    assert torch.equal(x, before) and out.shape == x.shape and out.dtype == x.dtype
    distinct = {tuple(np.round(o.numpy().ravel()[::37], 5)) for o in out}
    assert len(distinct) >= 12  # each copy drew its own flip / angle / zoom / noise
    same = BatchAugment({"flip": {"prob": 0.0, "axes": [0, 1]}}, spatial_dims=2)(x)
    assert torch.equal(same, x)


def test_resumed_stream_continues_where_it_stopped():
    x = torch.rand(8, 1, 24, 24)
    first = BatchAugment(FULL, spatial_dims=2, seed=3)
    first(x)
    state = first.get_state()
    expected = first(x)
    resumed = BatchAugment(FULL, spatial_dims=2, seed=99)
    resumed.set_state(state)
    assert torch.equal(resumed(x), expected)


def test_three_dimensional_batches_and_quarter_turns():
    x = torch.rand(4, 1, 8, 8, 8)
    aug = BatchAugment({"rotate90": {"prob": 1.0, "axes": [1, 2]}, "rotate": {"prob": 1.0, "degrees": 10},
                        "flip": {"prob": 0.5}}, spatial_dims=3, seed=0)
    out = aug(x)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_the_monai_anchor_is_built_from_the_same_spec():
    compose = monai_transforms(FULL, spatial_dims=2)
    names = [type(t).__name__ for t in compose.transforms]
    assert names == ["RandFlip", "RandRotate", "RandZoom", "RandGaussianNoise", "RandShiftIntensity",
                     "RandAdjustContrast"]
    assert monai_transforms({}, spatial_dims=2) is None


def _coded_batch(n: int = 12, k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample i is the constant image i + 1 with label i % k: a blend shows which two samples it came from."""
    x = torch.arange(1, n + 1, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 6, 6).contiguous()
    return x, torch.arange(n) % k


def test_mixup_blends_each_sample_with_one_other_and_its_labels_alike():
    x, y = _coded_batch()
    mixed, targets = BatchAugment({"mixup": {"prob": 1.0, "alpha": 0.4}}, spatial_dims=2, seed=1, num_classes=3)((x, y))
    assert mixed.shape == x.shape and targets.shape == (12, 3) and targets.dtype == torch.float32
    assert torch.allclose(targets.sum(1), torch.ones(12))
    values = x[:, 0, 0, 0]
    for i in range(12):
        v = float(mixed[i, 0, 0, 0])
        assert torch.allclose(mixed[i], torch.full_like(mixed[i], v))  # a blend of two constant images is constant
        # some partner p and weight lam in [0, 1] give both the image and the target
        found = False
        for p in range(12):
            if values[p] == values[i]:
                continue
            lam = (v - float(values[p])) / float(values[i] - values[p])
            if -1e-5 <= lam <= 1 + 1e-5:
                expect = lam * torch.nn.functional.one_hot(y[i], 3) + (1 - lam) * torch.nn.functional.one_hot(y[p], 3)
                found = found or torch.allclose(targets[i], expect.float(), atol=1e-5)
        assert found or (float(v) == float(values[i]) and targets[i, y[i]] == 1.0), i
    assert not torch.equal(mixed, x)  # with alpha 0.4 some sample is visibly blended


def test_mixup_off_by_draw_keeps_images_and_gives_one_hot_targets_and_resumes():
    x, y = _coded_batch()
    kept, targets = BatchAugment({"mixup": {"prob": 0.0}}, spatial_dims=2, num_classes=3)((x, y))
    assert torch.equal(kept, x) and torch.equal(targets, torch.nn.functional.one_hot(y, 3).float())
    spec = {**FULL, "mixup": {"prob": 0.5, "alpha": 0.2}}
    first = BatchAugment(spec, spatial_dims=2, seed=5, num_classes=3)
    first((x, y))
    state = first.get_state()
    expected = [first((x, y)) for _ in range(3)]
    resumed = BatchAugment(spec, spatial_dims=2, seed=77, num_classes=3)
    resumed.set_state(state)
    for (ex, et), (rx, rt) in zip(expected, [resumed((x, y)) for _ in range(3)]):
        assert torch.equal(ex, rx) and torch.equal(et, rt)


def test_mixup_needs_labels_and_a_class_count():
    with pytest.raises(ValueError, match="number of classes"):
        BatchAugment({"mixup": {}}, spatial_dims=2)
    with pytest.raises(ValueError, match="labelled batches"):
        BatchAugment({"mixup": {}}, spatial_dims=2, num_classes=2)(torch.zeros(4, 1, 8, 8))
    assert monai_transforms({"mixup": {"alpha": 0.2}}, spatial_dims=2) is None  # not a per-sample transform
