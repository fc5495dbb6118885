"""Batched SSIM and NISSIM, equal to ``skimage.metrics.structural_similarity`` (to 1e-6).

The local statistics are computed with *valid* filters (no padding): skimage filters with reflective
padding and then crops ``(win_size - 1) // 2`` pixels from every border before averaging, which leaves
exactly the positions where the window lies inside the image. Everything runs in float64 on the device
of the inputs, a whole batch at a time.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import InputError

__all__ = ["ssim", "nissim", "spearman", "topk_intersection", "topk_count", "com_shift", "gaussian_window", "SSIMWindowError"]

K1 = 0.01
K2 = 0.03


class SSIMWindowError(InputError):
    """The images are smaller than the SSIM window."""


def gaussian_window(sigma: float = 1.5, truncate: float = 3.5, dtype=torch.float64, device=None) -> torch.Tensor:
    """1-D Gaussian weights as scipy.ndimage.gaussian_filter uses them: radius ``int(truncate*sigma+0.5)``,
    weights ``exp(-x²/2σ²)`` normalised to sum 1. Shape (2r+1,)."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def _box_mean_valid(t: torch.Tensor, win: int) -> torch.Tensor:
    """Mean over every win×win window lying inside the image (valid filter), by running sums along each
    axis: O(1) per pixel whatever the window. (n,c,H,W) float64 → (n,c,H-win+1,W-win+1)."""
    c = F.pad(t.cumsum(-1), (1, 0))
    t = c[..., win:] - c[..., :-win]
    c = F.pad(t.cumsum(-2), (0, 0, 1, 0))
    return (c[..., win:, :] - c[..., :-win, :]) / (win * win)


def _as_batch(x: torch.Tensor, name: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise InputError(f"{name} must have shape (N,H,W) or (H,W), got {tuple(x.shape)}")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x)).flatten(1).any(1).nonzero().flatten().tolist()
        raise InputError(f"{name} holds NaN or infinite values (images {bad[:10]}{' …' if len(bad) > 10 else ''}); "
                         "SSIM of such maps is undefined")
    return x


def ssim(
    a: torch.Tensor,
    b: torch.Tensor,
    gaussian: bool = False,
    data_range: float = 1.0,
    win_size: int | None = None,
    sigma: float = 1.5,
    chunk: int | None = None,
) -> torch.Tensor:
    """Mean structural similarity of each pair of greyscale images.

    Parameters
    ----------
    a, b : tensors of shape (N,H,W) (or (H,W)), any real dtype; values on the scale of ``data_range``
        (heatmaps in [0,1] with the default 1.0).
    gaussian : False → uniform ``win_size``×``win_size`` window (default 7) with sample covariance,
        skimage's defaults. True → Gaussian window of ``sigma`` (truncated at 3.5σ, i.e. 11×11 for
        σ=1.5) with population covariance, i.e. skimage's
        ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False`` (Wang et al. 2004).
    data_range : R in C1=(0.01R)², C2=(0.03R)².
    win_size : side of the uniform window (odd, ≥3); ignored when ``gaussian``.
    chunk : pairs processed at once (about 10·chunk·H·W float64 values live at once). None: on the CPU as
        many as keep that working set in cache (one pair at 224²), on a GPU up to 2²⁶ pixels at once.

    Returns
    -------
    (N,) float64 tensor on the inputs' device, SSIM in [-1, 1]. Clipped to that range: on nearly equal maps
    rounding can put the mean a few ulps past 1 (skimage's too, on either side), which would make NISSIM
    negative; the clip moves no value by more than ~1e-12.

    Raises ValueError naming ``a`` or ``b`` (and the images) when either holds NaN or infinite values.
    """
    a = _as_batch(a, "a")
    b = _as_batch(b, "b")
    if a.shape != b.shape:
        raise InputError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if gaussian:
        w1 = gaussian_window(sigma, device=a.device)
        win = w1.numel()
        cov_norm = 1.0
    else:
        win = 7 if win_size is None else int(win_size)
        if win < 3 or win % 2 == 0:
            raise InputError(f"win_size must be odd and >= 3, got {win}")
        np_ = win * win
        cov_norm = np_ / (np_ - 1.0)
    h, w = a.shape[-2:]
    if h < win or w < win:
        raise SSIMWindowError(
            f"images of {h}x{w} are smaller than the {win}x{win} SSIM window; use larger heatmaps"
            + ("" if gaussian else " or a smaller win_size")
        )
    if chunk is None:
        chunk = max(1, (2**26 if a.device.type == "cuda" else 2**16) // (h * w))
    c1 = (K1 * data_range) ** 2
    c2 = (K2 * data_range) ** 2
    out = []
    for s in range(0, a.shape[0], chunk):
        x = a[s : s + chunk].to(torch.float64)
        y = b[s : s + chunk].to(x.device, torch.float64)
        stack = torch.stack([x, y, x * x, y * y, x * y], dim=1)  # (n,5,H,W)
        if gaussian:
            kh = w1.view(1, 1, -1, 1).expand(5, 1, -1, 1)
            kw = w1.view(1, 1, 1, -1).expand(5, 1, 1, -1)
            m = F.conv2d(F.conv2d(stack, kh, groups=5), kw, groups=5)
        else:
            m = _box_mean_valid(stack, win)
        ux, uy, uxx, uyy, uxy = m.unbind(1)
        vx = cov_norm * (uxx - ux * ux)
        vy = cov_norm * (uyy - uy * uy)
        vxy = cov_norm * (uxy - ux * uy)
        s_map = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
        out.append(s_map.mean(dim=(-2, -1)))
    if not out:
        return torch.empty(0, dtype=torch.float64, device=a.device)
    return torch.cat(out).clamp_(-1.0, 1.0)


def nissim(a: torch.Tensor, b: torch.Tensor, gaussian: bool = False, **kwargs) -> torch.Tensor:
    """Normalised inverse SSIM, ``(1 - SSIM(a, b)) / 2``: 0 for identical maps, 1 for opposite ones.

    Takes the same arguments as :func:`ssim`; returns (N,) float64 in [0, 1].
    """
    return (1.0 - ssim(a, b, gaussian=gaussian, **kwargs)) / 2.0


def _pair(a: torch.Tensor, b: torch.Tensor, exact_dtype: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Two finite batches of maps of one shape (N,H,W) on ``a``'s device, as float64 (``exact_dtype``: in
    their common floating dtype instead, for order-only uses such as ranks, where widening changes nothing)."""
    a = _as_batch(a, "a")
    b = _as_batch(b, "b")
    if a.shape != b.shape:
        raise InputError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if exact_dtype:
        dt = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
        return a.to(dt), b.to(a.device, dt)
    return a.double(), b.to(a.device).double()


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..P of each row of ``x`` (N,P), ties given the mean of their positions (scipy's 'average')."""
    v, order = x.sort(dim=1)
    n, p = v.shape
    pos = torch.arange(1, p + 1, dtype=torch.float64, device=x.device).expand(n, p)
    new_run = torch.ones_like(v, dtype=torch.bool)
    new_run[:, 1:] = v[:, 1:] != v[:, :-1]
    run = new_run.long().cumsum(1) - 1  # (N,P) index of each sorted position's run of equal values
    total = torch.zeros(n, p, dtype=torch.float64, device=x.device).scatter_add_(1, run, pos)
    count = torch.zeros(n, p, dtype=torch.float64, device=x.device).scatter_add_(1, run, torch.ones_like(pos))
    avg = (total / count.clamp_min(1)).gather(1, run)
    return torch.empty_like(avg).scatter_(1, order, avg)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each pair of maps over their pixels, ties at average ranks:
    ``scipy.stats.spearmanr(a[i].ravel(), b[i].ravel()).statistic`` (to 1e-9).

    a, b : (N,H,W) (or (H,W)) finite maps of one shape. Returns (N,) float64 in [-1, 1]; NaN where a map is
    constant (its ranks have no variance), as scipy gives."""
    # ranks depend on order only: sorted in the maps' own precision (float32 sorts ~2x faster than float64)
    a, b = _pair(a, b, exact_dtype=True)
    ra, rb = _average_ranks(a.flatten(1)), _average_ranks(b.flatten(1))
    ra = ra - ra.mean(1, keepdim=True)
    rb = rb - rb.mean(1, keepdim=True)
    den = (ra.square().sum(1) * rb.square().sum(1)).sqrt()
    r = (ra * rb).sum(1) / den
    return torch.where(den > 0, r.clamp(-1, 1), torch.full_like(r, float("nan")))


def topk_count(k: int | float, h: int, w: int) -> int:
    """The number of pixels :func:`topk_intersection` compares for ``k`` on (h, w) maps: an int k itself
    (1 ≤ k ≤ h·w), a float fraction in (0, 1) rounded to the nearest count, at least 1. ValueError naming
    ``k`` otherwise."""
    p = h * w
    if isinstance(k, bool) or not isinstance(k, (int, float)):
        raise InputError(f"k must be a pixel count or a fraction in (0, 1), got {k!r}")
    if isinstance(k, float):
        if not 0 < k < 1:
            raise InputError(f"k as a fraction must lie in (0, 1), got {k}")
        return max(1, int(round(k * p)))
    if not 1 <= k <= p:
        raise InputError(f"k must lie in [1, {p}] pixels for {h}x{w} maps, got {k}")
    return int(k)


def topk_intersection(a: torch.Tensor, b: torch.Tensor, k: int | float = 0.1) -> torch.Tensor:
    """|top-k(a) ∩ top-k(b)| / k for each pair of maps: the share of a's k highest pixels that are also
    among b's (Ghorbani et al. 2019).

    a, b : (N,H,W) (or (H,W)) finite maps of one shape. k : a number of pixels (int, 1 ≤ k ≤ H·W) or a
    fraction of them (float in (0, 1), rounded to the nearest count, at least 1). Ties are broken by the
    lower flat (row-major) index. Returns (N,) float64 in [0, 1]."""
    a, b = _pair(a, b)
    kk = topk_count(k, a.shape[1], a.shape[2])

    def top(x: torch.Tensor) -> torch.Tensor:
        # the k-th largest value by a partial selection (not a full sort: 15x faster at 171x171); every pixel
        # above it is in, and of the pixels equal to it the ones of lowest flat index fill the rest
        v = x.flatten(1)
        kth = v.topk(kk, dim=1).values[:, -1:]
        above = v > kth
        tied = v == kth
        return above | (tied & (tied.long().cumsum(1) <= kk - above.sum(1, keepdim=True)))

    return (top(a) & top(b)).sum(1).double() / kk


def com_shift(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distance in pixels between the centres of mass (row, column) of each pair of maps
    (Ghorbani et al.'s "center dislocation"); the centre of mass is ``scipy.ndimage.center_of_mass``'s.

    a, b : (N,H,W) (or (H,W)) finite, non-negative maps of one shape. Returns (N,) float64 ≥ 0; NaN where
    either map sums to zero (it has no centre), to be counted, not dropped."""
    a, b = _pair(a, b)
    if bool((a < 0).any()) or bool((b < 0).any()):
        raise InputError("a and b must be non-negative maps (a centre of mass needs non-negative mass)")
    h, w = a.shape[1:]
    rows = torch.arange(h, dtype=torch.float64, device=a.device)[:, None]
    cols = torch.arange(w, dtype=torch.float64, device=a.device)[None, :]

    def centre(x: torch.Tensor) -> torch.Tensor:
        m = x.sum(dim=(1, 2))
        c = torch.stack([(x * rows).sum(dim=(1, 2)), (x * cols).sum(dim=(1, 2))], 1) / m[:, None]
        return torch.where((m > 0)[:, None], c, torch.full_like(c, float("nan")))

    return (centre(a) - centre(b)).norm(dim=1)
