"""Spearman, top-k intersection and centre-of-mass shift against scipy and a numpy reference, on fresh maps
(with and without ties), plus their edge cases and bad arguments."""
import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.stats import spearmanr

from advcam.similarity import com_shift, spearman, topk_intersection


def _maps(rng, n=6, h=23, w=17, ties=False):
    a = rng.random((n, h, w))
    b = 0.6 * a + 0.4 * rng.random((n, h, w))
    if ties:  # CAM maps saturate: many pixels share 0 or 1, and quantised values tie
        a = np.clip(np.round(a * 8) / 8 - 0.2, 0, 1)
        b = np.clip(np.round(b * 5) / 5 - 0.1, 0, 1)
    return a, b


@pytest.mark.parametrize("ties", [False, True])
def test_spearman_matches_scipy(rng, ties):
    a, b = _maps(rng, ties=ties)
    b = b.astype(np.float32)  # a float32 map beside a float64 one; the reference ranks the same float32 values
    ours = spearman(torch.as_tensor(a), torch.as_tensor(b))  # (rounding to float32 can tie two float64 values)
    ref = [spearmanr(x.ravel(), y.ravel()).statistic for x, y in zip(a, b)]
    assert ours.dtype == torch.float64 and ours.shape == (len(a),)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=0, atol=1e-9)


def test_spearman_of_a_constant_map_is_nan_as_in_scipy(rng):
    a, b = _maps(rng, n=2)
    a[1] = 0.0
    ours = spearman(torch.as_tensor(a), torch.as_tensor(b))
    with pytest.warns(Warning):
        ref = spearmanr(a[1].ravel(), b[1].ravel()).statistic
    assert np.isnan(ref) and np.isnan(ours[1].item()) and np.isfinite(ours[0].item())


def _topk_reference(a, b, k):
    def top(x):
        return set(np.argsort(-x.ravel(), kind="stable")[:k].tolist())

    return np.array([len(top(x) & top(y)) / k for x, y in zip(a, b)])


@pytest.mark.parametrize("ties", [False, True])
def test_topk_intersection_matches_numpy(rng, ties):
    a, b = _maps(rng, ties=ties)
    p = a.shape[1] * a.shape[2]
    for k in (1, 7, p // 3, p):
        np.testing.assert_array_equal(topk_intersection(torch.as_tensor(a), torch.as_tensor(b), k).numpy(),
                                      _topk_reference(a, b, k))
    # a fraction of the pixels, rounded to the nearest count
    np.testing.assert_array_equal(topk_intersection(torch.as_tensor(a), torch.as_tensor(b), 0.1).numpy(),
                                  _topk_reference(a, b, round(0.1 * p)))
    assert (topk_intersection(torch.as_tensor(a), torch.as_tensor(a), 0.25) == 1).all()


def test_com_shift_matches_scipy_center_of_mass(rng):
    a, b = _maps(rng, ties=True)
    ours = com_shift(torch.as_tensor(a), torch.as_tensor(b))
    ref = [np.linalg.norm(np.subtract(ndimage.center_of_mass(x), ndimage.center_of_mass(y))) for x, y in zip(a, b)]
    np.testing.assert_allclose(ours.numpy(), ref, rtol=0, atol=1e-9)
    # a single bright pixel moved by (3, 4) moves the centre by 5 pixels
    x, y = np.zeros((1, 10, 10)), np.zeros((1, 10, 10))
    x[0, 1, 1], y[0, 4, 5] = 1, 1
    assert com_shift(torch.as_tensor(x), torch.as_tensor(y)).item() == pytest.approx(5.0)


def test_com_shift_of_an_all_zero_map_is_nan(rng):
    a, b = _maps(rng, n=3)
    b[2] = 0
    ours = com_shift(torch.as_tensor(a), torch.as_tensor(b))
    assert np.isfinite(ours[:2].numpy()).all() and np.isnan(ours[2].item())


def test_bad_arguments_name_what_is_wrong(rng):
    a, b = (torch.as_tensor(m) for m in _maps(rng, n=2))
    for f in (spearman, topk_intersection, com_shift):
        with pytest.raises(ValueError, match="same shape"):
            f(a, b[:, :-1])
        bad = a.clone()
        bad[1, 0, 0] = float("nan")
        with pytest.raises(ValueError, match=r"^a holds NaN"):
            f(bad, b)
        with pytest.raises(ValueError, match=r"^b holds NaN"):
            f(a, bad)
    for k in (0, a.shape[1] * a.shape[2] + 1, 0.0, 1.0, -0.5, "10%", True):
        with pytest.raises(ValueError, match="k "):
            topk_intersection(a, b, k)
    with pytest.raises(ValueError, match="non-negative"):
        com_shift(a - 0.5, b)
