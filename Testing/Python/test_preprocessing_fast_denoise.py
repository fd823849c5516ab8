"""The vectorised torch bilateral and NLM filters equal a literal per-voxel implementation and denoise as well
as the SimpleITK / scikit-image filters they replace (speed is measured in bench/preprocess.py, not here)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MedDeepRecogLib.preprocessing.fast_denoise import bilateral_filter, estimate_noise_sigma, nlm_filter


def _naive(x: np.ndarray, search: int, patch_size: int, weight) -> np.ndarray:
    """Per-voxel reference: mirror padding, every offset of the (2s+1)^3 box, patches of patch_size^3."""
    before = (patch_size - 1) // 2
    after = patch_size - 1 - before
    m = search + max(before, after)
    xp = np.pad(x.astype(np.float64), m, mode="reflect")
    out = np.zeros(x.shape, np.float64)
    for z, y, xx in np.ndindex(*x.shape):
        c = (z + m, y + m, xx + m)
        ref = xp[c[0] - before:c[0] + after + 1, c[1] - before:c[1] + after + 1, c[2] - before:c[2] + after + 1]
        num = den = 0.0
        for dz, dy, dx in np.ndindex(2 * search + 1, 2 * search + 1, 2 * search + 1):
            o = (dz - search, dy - search, dx - search)
            q = (c[0] + o[0], c[1] + o[1], c[2] + o[2])
            cand = xp[q[0] - before:q[0] + after + 1, q[1] - before:q[1] + after + 1, q[2] - before:q[2] + after + 1]
            w = weight(float(((cand - ref) ** 2).mean()), o)
            num += w * xp[q]
            den += w
        out[z, y, xx] = num / den
    return out


@pytest.fixture(scope="module")
def tiny():
    return np.random.default_rng(0).standard_normal((5, 6, 7)).astype(np.float32) * 10


@pytest.mark.parametrize("patch_size", [3, 2, 1])
def test_nlm_equals_per_voxel_definition(tiny, patch_size):
    h, sigma = 8.0, 5.0
    ours = nlm_filter(tiny, patch_size=patch_size, search_radius=2, h=h, sigma=sigma)
    ref = _naive(tiny, 2, patch_size, lambda d2, o: np.exp(-max(d2 - 2 * sigma ** 2, 0.0) / h ** 2))
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_bilateral_equals_per_voxel_definition_with_anisotropic_sigma(tiny):
    sig = (0.6, 1.0, 1.4)  # (z, y, x) voxels
    ours = bilateral_filter(tiny, sig, 7.0, radius=(1, 2, 2))
    ref = _naive_bilateral(tiny, sig, 7.0, (1, 2, 2))
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def _naive_bilateral(x, sig, sigma_r, radius):
    rz, ry, rx = radius
    xp = np.pad(x.astype(np.float64), [(rz, rz), (ry, ry), (rx, rx)], mode="reflect")
    out = np.zeros(x.shape)
    for z, y, xx in np.ndindex(*x.shape):
        c = xp[z + rz, y + ry, xx + rx]
        block = xp[z:z + 2 * rz + 1, y:y + 2 * ry + 1, xx:xx + 2 * rx + 1]
        gz, gy, gx = np.meshgrid(np.arange(-rz, rz + 1), np.arange(-ry, ry + 1), np.arange(-rx, rx + 1),
                                 indexing="ij")
        w = np.exp(-0.5 * ((gz / sig[0]) ** 2 + (gy / sig[1]) ** 2 + (gx / sig[2]) ** 2)
                   - 0.5 * (block - c) ** 2 / sigma_r ** 2)
        out[z, y, xx] = (w * block).sum() / w.sum()
    return out


def test_torch_input_stays_torch_and_thin_volumes_work():
    x = torch.randn(2, 9, 10)  # thinner than the search window along z: mirrored repeatedly
    y = nlm_filter(x, patch_size=3, search_radius=3, sigma=1.0)
    assert isinstance(y, torch.Tensor) and y.shape == x.shape and torch.isfinite(y).all()
    b = bilateral_filter(x, 1.0, 1.0)
    assert isinstance(b, torch.Tensor) and b.shape == x.shape


def _phantom(shape=(20, 48, 48), noise=40.0, seed=0):
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    clean = np.where(x ** 2 + y ** 2 < 0.7, 40.0, -1000.0) + 300.0 * ((x - 0.2) ** 2 + y ** 2 + z ** 2 < 0.1)
    clean = clean.astype(np.float32)
    noisy = clean + np.random.default_rng(seed).normal(0, noise, shape).astype(np.float32)
    return clean, noisy


def _psnr(a, clean):
    return 10 * np.log10((clean.max() - clean.min()) ** 2 / np.mean((a.astype(np.float64) - clean) ** 2))


def test_noise_estimate_is_close_to_truth():
    clean, noisy = _phantom(noise=40.0)
    assert 34 < estimate_noise_sigma(noisy) < 46


def test_denoisers_beat_noisy_and_match_reference_filters():
    clean, noisy = _phantom()
    sigma = estimate_noise_sigma(noisy)
    base = _psnr(noisy, clean)
    ours_nlm = _psnr(nlm_filter(noisy, patch_size=3, search_radius=2), clean)
    ours_bil = _psnr(bilateral_filter(noisy, 1.0, 2.0 * sigma), clean)
    itk_bil = _psnr(sitk.GetArrayFromImage(sitk.Bilateral(sitk.GetImageFromArray(noisy), 1.0, 2.0 * sigma)), clean)
    assert ours_nlm > base + 6
    assert ours_bil > base + 4
    assert ours_bil > itk_bil - 0.5  # the same filter (ITK truncates its window at 2.5 sigma, ours at 2)
    skimage = pytest.importorskip("skimage.restoration")
    sk = skimage.denoise_nl_means(noisy, patch_size=5, patch_distance=3, h=0.8 * sigma, sigma=sigma,
                                  fast_mode=True, channel_axis=None)
    assert ours_nlm > _psnr(sk, clean) - 0.5


def _nlm_rule(k: int, h: float, sigma: float) -> tuple[float, float]:
    """(shift, scale) of nlm_filter's weight rule for patch size k."""
    return 2.0 * sigma ** 2 * k ** 3, -1.0 / (h * h * k ** 3)


@pytest.mark.parametrize("patch_size,search", [(2, (2, 2, 2)), (3, (1, 2, 3)), (1, (2, 1, 2))])
def test_symmetric_pairs_equal_the_plain_filter(patch_size, search):
    """Each ±o pair computed once and credited to both ends gives the plain every-offset average."""
    fused = pytest.importorskip("MedDeepRecogLib.preprocessing.fused_denoise")
    x = np.random.default_rng(3).normal(0, 10, (9, 11, 13)).astype(np.float32)
    shift, scale = _nlm_rule(patch_size, 8.0, 5.0)
    bias = lambda o: -0.1 * (o[0] ** 2 + o[1] ** 2 + o[2] ** 2)  # noqa: E731 (a spatial term, as the bilateral's)
    plain = fused.pair_average(x, search, patch_size, shift, scale, bias, symmetric=False)
    symmetric = fused.pair_average(x, search, patch_size, shift, scale, bias, symmetric=True)
    np.testing.assert_allclose(symmetric, plain, rtol=0, atol=2e-5)
    assert np.abs(symmetric - x).max() > 1.0  # it did filter


def test_fused_kernel_equals_the_torch_ops_and_threads_change_nothing():
    """The CPU kernel, the torch ops used on CUDA (run here on CPU) and 1 vs 3 threads agree; a search radius wider
    than a slab (5 > 4 slices) checks that slabs of one phase never credit the same slice."""
    fused = pytest.importorskip("MedDeepRecogLib.preprocessing.fused_denoise")
    from MedDeepRecogLib.preprocessing.fast_denoise import _symmetric_filter

    x = np.random.default_rng(4).normal(0, 10, (37, 12, 10)).astype(np.float32)
    shift, scale = _nlm_rule(2, 8.0, 5.0)
    zero = lambda o: 0.0  # noqa: E731
    one = fused.pair_average(x, (5, 2, 2), 2, shift, scale, zero, threads=1)
    three = fused.pair_average(x, (5, 2, 2), 2, shift, scale, zero, threads=3)
    ops = _symmetric_filter(torch.from_numpy(x), (5, 2, 2), 2, shift, scale, zero).numpy()
    np.testing.assert_array_equal(three, one)  # same sums in the same order per voxel
    np.testing.assert_allclose(one, ops, rtol=0, atol=1e-4)


@pytest.mark.parametrize("margin", [(1, 2, 3), (0, 4, 1), (3, 3, 3), (6, 1, 1)])
def test_mirror_pad_is_numpy_reflect(margin):
    from MedDeepRecogLib.preprocessing.fused_denoise import mirror_pad

    x = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)  # int16 in, float32 out, as a CT
    padded = mirror_pad(x, margin)
    assert padded.dtype == np.float32
    np.testing.assert_array_equal(padded, np.pad(x, [(m, m) for m in margin], mode="reflect").astype(np.float32))


def test_filters_return_the_input_type_on_cpu():
    x = np.random.default_rng(5).normal(0, 1, (6, 8, 9)).astype(np.float32)
    as_array = nlm_filter(x, patch_size=2, search_radius=1, sigma=1.0)
    as_tensor = nlm_filter(torch.from_numpy(x), patch_size=2, search_radius=1, sigma=1.0)
    assert isinstance(as_array, np.ndarray) and as_array.dtype == np.float32 and as_array.shape == x.shape
    assert isinstance(as_tensor, torch.Tensor)
    np.testing.assert_allclose(as_tensor.numpy(), as_array, atol=1e-6)


def test_noise_estimate_samples_large_volumes_by_slices():
    """Above 8 M voxels the estimate reads every n-th slice only; still close to the truth."""
    noisy = np.random.default_rng(6).normal(0, 25.0, (40, 460, 460)).astype(np.float32)
    assert 24.0 < estimate_noise_sigma(noisy) < 26.0


def test_noise_estimate_ignores_padding_of_one_value():
    """A CT's outside-the-field-of-view padding (one exact value, a fifth of the TotalSegmentator DICOM CT) has no
    noise: counted in, it halved the estimate and the default NLM barely denoised the scan."""
    noisy = np.random.default_rng(7).normal(40.0, 10.0, (8, 96, 96)).astype(np.float32)
    noisy[:, :, :40] = -1024.0   # 42 % of the voxels
    assert 9.5 < estimate_noise_sigma(noisy) < 10.5
