import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from advcam.similarity import SSIMWindowError, gaussian_window, nissim, ssim


def _pairs(rng, n, h, w):
    a = rng.random((n, h, w))
    b = np.clip(a + rng.normal(0, rng.uniform(0.01, 0.5), a.shape), 0, 1)
    b[0] = rng.random((h, w))  # an unrelated pair too
    return a, b


@pytest.mark.parametrize("shape", [(7, 7), (11, 11), (14, 29), (64, 64), (33, 100)])
def test_uniform_matches_skimage(rng, shape):
    a, b = _pairs(rng, 5, *shape)
    ours = ssim(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    ref = np.array([structural_similarity(x, y, data_range=1.0) for x, y in zip(a, b)])
    assert np.abs(ours - ref).max() < 1e-6


@pytest.mark.parametrize("shape", [(11, 11), (20, 37), (64, 64)])
def test_gaussian_matches_skimage(rng, shape):
    a, b = _pairs(rng, 5, *shape)
    ours = ssim(torch.from_numpy(a), torch.from_numpy(b), gaussian=True).numpy()
    ref = np.array([
        structural_similarity(x, y, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        for x, y in zip(a, b)
    ])
    assert np.abs(ours - ref).max() < 1e-6


def test_float32_input_and_other_win_size(rng):
    a, b = _pairs(rng, 3, 30, 30)
    ours = ssim(torch.from_numpy(a).float(), torch.from_numpy(b).float(), win_size=5).numpy()
    ref = np.array([structural_similarity(x, y, data_range=1.0, win_size=5)
                    for x, y in zip(a.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(np.float64))])
    assert np.abs(ours - ref).max() < 1e-6


def test_hand_computed_constant_images():
    # constant images x=p, y=q: variances 0, so S = (2pq+C1)/(p²+q²+C1) everywhere
    p, q = 0.2, 0.7
    c1 = 0.01**2
    expected = (2 * p * q + c1) / (p * p + q * q + c1)
    got = ssim(torch.full((1, 9, 9), p, dtype=torch.float64), torch.full((1, 9, 9), q, dtype=torch.float64)).item()
    assert got == pytest.approx(expected, abs=1e-12)
    assert nissim(torch.full((1, 9, 9), p, dtype=torch.float64), torch.full((1, 9, 9), q, dtype=torch.float64)).item() == pytest.approx((1 - expected) / 2, abs=1e-12)


def test_identical_and_zero_maps_give_zero_nissim(rng):
    a = torch.from_numpy(rng.random((3, 16, 16)))
    assert torch.allclose(nissim(a, a), torch.zeros(3, dtype=torch.float64), atol=1e-12)
    z = torch.zeros(2, 16, 16)
    assert torch.equal(nissim(z, z), torch.zeros(2, dtype=torch.float64))


def test_nearly_equal_maps_stay_in_range(rng):
    # upsampled 2x2 CAMs and the same CAMs a float32 rounding apart (a noise control): without the clip, rounding
    # put ~15% of these SSIMs a few ulps above 1, so NISSIM < 0 and a MOD CI below 0 (smoke study, AMX machine)
    raw = torch.from_numpy(rng.random((400, 1, 2, 2)))
    raw[:, 0, 0, 0] = 0

    def cam(r):
        m = torch.nn.functional.interpolate(r.float(), size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
        m = m - m.amin((1, 2), keepdim=True)
        return m / m.amax((1, 2), keepdim=True)

    a, b = cam(raw), cam(raw * (1 + 1e-7 * torch.from_numpy(rng.standard_normal(raw.shape))))
    s = ssim(a, b)
    assert (s <= 1).all() and (nissim(a, b) >= 0).all()
    ref = np.array([structural_similarity(x, y, data_range=1.0) for x, y in zip(a.double().numpy(), b.double().numpy())])
    assert np.abs(s.numpy() - ref).max() < 1e-9


def test_nissim_range_and_opposite(rng):
    a = torch.from_numpy(rng.random((4, 20, 20)))
    v = nissim(a, 1 - a)
    assert (v > 0.5).all() and (v <= 1).all()


def test_window_too_large():
    with pytest.raises(SSIMWindowError, match="6x6"):
        ssim(torch.rand(1, 6, 6), torch.rand(1, 6, 6))
    with pytest.raises(SSIMWindowError, match="11x11"):
        ssim(torch.rand(1, 10, 40), torch.rand(1, 10, 40), gaussian=True)


def test_shape_errors():
    with pytest.raises(ValueError, match="same shape"):
        ssim(torch.rand(2, 8, 8), torch.rand(2, 9, 8))
    with pytest.raises(ValueError, match=r"\(N,H,W\)"):
        ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))


def test_gaussian_window_is_scipys():
    from scipy.ndimage import gaussian_filter1d

    impulse = np.zeros(21)
    impulse[10] = 1
    ref = gaussian_filter1d(impulse, 1.5, truncate=3.5, mode="constant")[5:16]
    assert np.allclose(gaussian_window(1.5).numpy(), ref, atol=1e-15)


def test_chunking_does_not_change_results(rng):
    a, b = _pairs(rng, 7, 12, 12)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    assert torch.equal(ssim(ta, tb, chunk=2), ssim(ta, tb, chunk=100))


def test_ssim_refuses_non_finite_maps():
    a = torch.rand(3, 16, 16)
    b = a.clone()
    b[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match=r"b holds NaN or infinite values \(images \[1\]\)"):
        ssim(a, b)
    a[2, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"a holds NaN or infinite values \(images \[2\]\)"):
        ssim(a, a)
