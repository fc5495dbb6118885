"""Conclusions across training runs: the two-level bootstrap, the training-run flag, and the model claims.

One training run of a model is one draw of its weights: the same code on two CPUs (bf16 through other
kernels) ranked the models differently, outside each run's own image-bootstrap CI. A statement about a
*model* therefore needs several replicates (training runs with different seeds on the same split) and an
interval that covers both sources of variation.

**Two-level bootstrap** (:func:`two_level_bootstrap`). Every replicate of a model is scored on the same test
images, so replicates and images are crossed, not nested. One resample draws R replicates with replacement
and n test images with replacement — one image draw shared by the drawn replicates, since an image that is
hard for one training run is the same image for the others — and takes the mean over the drawn replicates
of each one's mean over the drawn images. Drawing images afresh inside each replicate would count one test
image as R independent ones and shrink the image part of the interval by about √R; with the shared draw,
R identical replicates give exactly the image bootstrap (:func:`advcam.summary.bootstrap_ci`, the same
draws as ``scipy.stats.bootstrap``). The image draw depends only on (seed, n): every model of a study
scored on the same test set is resampled on the same images, so differences between models are paired by
image, while each model's replicates are drawn from a stream of its own (``stream``).

**Training-run flag** (:func:`training_flag`): a run whose clean accuracy is not clearly above chance (the
Clopper–Pearson interval of its accuracy reaches 1/C) or below the study's ``min_accuracy`` says nothing
about its architecture; it is flagged, and left out of the across-replicate table and the claims by name.

**Claims** (:func:`pairwise_claims`, :func:`paper_claims`): the MOD difference of every pair of models
with its two-level CI and the share of replicate pairs in which the order holds, and the paper's two
statements, each with a verdict ``supported`` (the CI lies above 0), ``contradicted`` (below 0) or
``inconclusive`` (the CI spans 0, or a model has fewer than :data:`MIN_REPLICATES` usable replicates).
"""
from __future__ import annotations

import zlib
from functools import lru_cache
from typing import Mapping, Sequence

import numpy as np
from scipy.stats import binomtest

from .errors import InputError

__all__ = ["MIN_REPLICATES", "WIDE", "DEEP", "image_counts", "replicate_weights", "two_level_bootstrap",
           "percentile_ci", "model_stream", "training_flag", "order_share", "verdict", "mod_slope",
           "pairwise_claims", "paper_claims"]

#: fewer usable replicates than this on either side of a claim make it inconclusive, whatever its CI
MIN_REPLICATES = 3
#: the paper's "wide" and "deep" architectures (paper aliases and their timm names)
WIDE = ("inception_v3", "xception", "legacy_xception")
DEEP = ("vgg16", "resnet50", "resnet101")


@lru_cache(maxsize=64)
def image_counts(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """How often each of ``n`` images is drawn in each resample: (n_resamples, n) float64, from the draws
    ``np.random.default_rng(seed).integers(0, n, (n_resamples, n))`` — those of ``scipy.stats.bootstrap``
    with ``rng=default_rng(seed)`` and no batching, so one replicate gives its resamples exactly."""
    idx = np.random.default_rng(seed).integers(0, n, (n_resamples, n))
    counts = np.zeros((n_resamples, n))
    np.add.at(counts, (np.arange(n_resamples)[:, None], idx), 1.0)
    counts.setflags(write=False)
    return counts


@lru_cache(maxsize=256)
def replicate_weights(r: int, n_resamples: int, seed: int, stream: int) -> np.ndarray:
    """The weight of each of ``r`` replicates in each resample (how often it is drawn, over r):
    (n_resamples, r) float64 whose rows sum to 1, from ``default_rng((seed, stream)).integers(0, r,
    (n_resamples, r))``."""
    idx = np.random.default_rng((seed, stream)).integers(0, r, (n_resamples, r))
    w = np.zeros((n_resamples, r))
    np.add.at(w, (np.arange(n_resamples)[:, None], idx), 1.0 / r)
    w.setflags(write=False)
    return w


def model_stream(name: str) -> int:
    """A stable stream number for ``name`` (CRC-32): each model's replicates are drawn independently."""
    return zlib.crc32(str(name).encode())


def two_level_bootstrap(values: np.ndarray, n_resamples: int = 2000, seed: int = 0, stream: int = 0) -> np.ndarray:
    """Bootstrap distribution of the mean over replicates of the mean over images (module docstring).

    values : (R, n) float, replicate × test image (the same images, in the same order, for every replicate);
    NaN where a measure is undefined for an image: a replicate's mean is then over its defined drawn images,
    and a resample in which a drawn replicate has none is NaN. Returns (n_resamples,) float64. Vectorised:
    two matrix products, no Python loop over resamples."""
    v = np.asarray(values, float)
    if v.ndim != 2 or v.shape[0] < 1 or v.shape[1] < 1:
        raise InputError(f"values must be (replicates, images) with at least one of each, got shape {v.shape}")
    r, n = v.shape
    ok = ~np.isnan(v)
    ci = image_counts(n, n_resamples, seed)
    num, den = ci @ np.where(ok, v, 0.0).T, ci @ ok.T.astype(float)  # (B, R): each replicate on the drawn images
    with np.errstate(invalid="ignore", divide="ignore"):
        per_rep = num / den
    w = replicate_weights(r, n_resamples, seed, stream)
    drawn = w > 0
    out = np.where(drawn, w * np.nan_to_num(per_rep), 0.0).sum(1)
    out[(drawn & np.isnan(per_rep)).any(1)] = np.nan
    return out


def percentile_ci(stats: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of a bootstrap distribution (linear interpolation, as ``scipy.stats.bootstrap``);
    (nan, nan) when any resample is NaN."""
    s = np.asarray(stats, float)
    if s.size == 0 or np.isnan(s).any():
        return float("nan"), float("nan")
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(s, [alpha, 1 - alpha])
    return float(lo), float(hi)


def training_flag(correct: int, n: int, n_classes: int, min_accuracy: float = 0.0, confidence: float = 0.95) -> str:
    """The verdict on one training run from its clean test accuracy ``correct``/``n`` over ``n_classes``
    classes: ``"at chance"`` when the Clopper–Pearson ``confidence`` interval of the accuracy reaches
    1/``n_classes`` (not clearly above guessing), ``"below min_accuracy"`` when the accuracy is under
    ``min_accuracy`` (in [0, 1]), else ``"ok"``."""

    if n < 1 or n_classes < 2:
        raise InputError(f"a training run needs test images and at least 2 classes, got n={n}, classes={n_classes}")
    if not 0 <= min_accuracy <= 1:
        raise InputError(f"min_accuracy {min_accuracy:g} must lie in [0, 1]")
    low = binomtest(int(correct), int(n)).proportion_ci(confidence_level=confidence, method="exact").low
    if low <= 1.0 / n_classes:
        return "at chance"
    if correct / n < min_accuracy:
        return "below min_accuracy"
    return "ok"


def order_share(a: np.ndarray, b: np.ndarray) -> float:
    """Share of replicate pairs (i, j) with a[i] > b[j], ties counting one half (the common-language effect
    size; NaN for an empty side)."""
    a, b = np.asarray(a, float)[:, None], np.asarray(b, float)[None, :]
    if a.size == 0 or b.size == 0:
        return float("nan")
    return float(((a > b) + 0.5 * (a == b)).mean())


def verdict(ci_low: float, ci_high: float, n_replicates: int, min_replicates: int = MIN_REPLICATES) -> str:
    """``supported`` when the CI of a statistic that is positive under the claim lies above 0, ``contradicted``
    when it lies below 0, else (or with fewer than ``min_replicates`` usable replicates on a side, or no CI)
    ``inconclusive``."""
    if n_replicates < min_replicates or not (np.isfinite(ci_low) and np.isfinite(ci_high)):
        return "inconclusive"
    if ci_low > 0:
        return "supported"
    if ci_high < 0:
        return "contradicted"
    return "inconclusive"


def mod_slope(eps: Sequence[float], mods: np.ndarray) -> np.ndarray:
    """Least-squares slope of MOD against ε through the clean point (ε 0, MOD 0) and the given levels:
    Σ ε·MOD / Σ ε². eps : (E,) > 0; mods : (E, ...) → (...)."""
    e = np.asarray(eps, float)
    m = np.asarray(mods, float)
    return np.tensordot(e, m, axes=(0, 0)) / float((e ** 2).sum())


def _stats(groups: Mapping, key, n_resamples: int, seed: int) -> tuple[float, np.ndarray, np.ndarray]:
    """(mean over replicates of MOD, per-replicate MOD (R,), bootstrap distribution (B,)) of one model's group
    ``key`` = (model, cam, attack, eps) from ``groups`` {key: (R, n) NISSIM}."""
    v = groups[key]
    per_rep = np.nanmean(v, axis=1)
    return float(per_rep.mean()), per_rep, two_level_bootstrap(v, n_resamples, seed, model_stream(key[0]))


def pairwise_claims(groups: Mapping[tuple, np.ndarray], confidence: float = 0.95, n_resamples: int = 2000,
                    seed: int = 0) -> list[dict]:
    """For every (cam, attack, ε) and every pair of models (a, b) in ``groups`` ({(model, cam, attack, eps):
    (R, n) per-image NISSIM of the model's usable replicates, columns in test-image order}): MOD(a) − MOD(b)
    (means over replicates), its two-level CI (paired by image: models on the same n test images share the
    image draws), the share of replicate pairs in which MOD(a) > MOD(b), and the verdict on
    "a shifts more than b"."""
    rows = []
    cells: dict[tuple, list[str]] = {}
    for model, cam, attack, eps in groups:
        cells.setdefault((cam, attack, eps), []).append(model)
    cache: dict[tuple, tuple] = {}

    def stats(key):
        if key not in cache:
            cache[key] = _stats(groups, key, n_resamples, seed)
        return cache[key]

    for (cam, attack, eps), models in sorted(cells.items()):
        models = sorted(models)
        for i, a in enumerate(models):
            for b in models[i + 1:]:
                ma, ra, sa = stats((a, cam, attack, eps))
                mb, rb, sb = stats((b, cam, attack, eps))
                lo, hi = percentile_ci(sa - sb, confidence)
                n_rep = min(len(ra), len(rb))
                rows.append({"claim": "pair", "cam": cam, "attack": attack, "eps": float(eps), "model_a": a, "model_b": b,
                             "statistic": ma - mb, "ci_low": lo, "ci_high": hi, "order_share": order_share(ra, rb),
                             "n_replicates": n_rep, "verdict": verdict(lo, hi, n_rep),
                             "definition": f"MOD({a}) - MOD({b}) at eps {float(eps):g}: > 0 when {a} shifts more"})
    return rows


def paper_claims(groups: Mapping[tuple, np.ndarray], archs: Mapping[str, str], confidence: float = 0.95,
                 n_resamples: int = 2000, seed: int = 0) -> tuple[list[dict], list[str]]:
    """The paper's two statements per (cam, attack), from ``groups`` (as :func:`pairwise_claims`) and
    ``archs`` {model: architecture (paper alias or timm name)}:

    * ``vgg16_least`` — "VGG16 shifts least": at the study's largest ε, min over the other models of
      MOD(other) − MOD(VGG16) (> 0 when VGG16's MOD is below every other model's);
    * ``wide_gt_deep`` — "wide models (InceptionV3, Xception) fail more than deep ones (VGG16, ResNet50,
      ResNet101) as ε increases": the mean over wide models of the slope of MOD over ε (:func:`mod_slope`,
      through the clean point) minus the same mean over deep models (> 0 when MOD grows faster with ε for
      the wide models).

    Each statistic's CI comes from the models' two-level bootstrap distributions combined resample by
    resample. Returns (rows, notes): a claim the study cannot test (a model missing) is a row with verdict
    ``skipped`` and a note saying which."""
    rows, notes = [], []
    cells: dict[tuple, dict[str, list[float]]] = {}
    for model, cam, attack, eps in groups:
        cells.setdefault((cam, attack), {}).setdefault(model, []).append(eps)
    cache: dict[tuple, tuple] = {}

    def stats(key):
        if key not in cache:
            cache[key] = _stats(groups, key, n_resamples, seed)
        return cache[key]

    def row(claim, cam, attack, eps, stat, dist, n_rep, models, definition):
        lo, hi = percentile_ci(dist, confidence) if dist is not None else (float("nan"), float("nan"))
        return {"claim": claim, "cam": cam, "attack": attack, "eps": eps, "model_a": models[0], "model_b": models[1],
                "statistic": stat, "ci_low": lo, "ci_high": hi, "order_share": float("nan"), "n_replicates": n_rep,
                "verdict": verdict(lo, hi, n_rep) if dist is not None else "skipped", "definition": definition}

    for (cam, attack), by_model in sorted(cells.items()):
        eps_all = sorted(set.intersection(*(set(e) for e in by_model.values())))
        vgg = sorted(m for m in by_model if archs.get(m) == "vgg16")
        others = sorted(m for m in by_model if m not in vgg)
        top = max(eps_all) if eps_all else float("nan")
        d1 = "at the largest eps, min over the other models of MOD(other) - MOD(vgg16): > 0 when VGG16 shifts least"
        if not vgg or not others:
            note = (f"vgg16_least ({cam}, {attack}): skipped: needs a vgg16 model and at least one other "
                    f"(the study has {', '.join(sorted(by_model))})")
            notes.append(note)
            rows.append({**row("vgg16_least", cam, attack, top, float("nan"), None, 0, ("", ""), d1), "note": note})
        else:
            for v in vgg:
                mv, rv, sv = stats((v, cam, attack, top))
                outs = [stats((o, cam, attack, top)) for o in others]
                stat = min(mo - mv for mo, _, _ in outs)
                dist = np.min(np.stack([so - sv for _, _, so in outs]), axis=0)
                n_rep = min([len(rv)] + [len(ro) for _, ro, _ in outs])
                rows.append({**row("vgg16_least", cam, attack, top, stat, dist, n_rep, (v, " ".join(others)), d1),
                             "note": ""})
        wide = sorted(m for m in by_model if archs.get(m) in WIDE)
        deep = sorted(m for m in by_model if archs.get(m) in DEEP)
        d2 = ("mean slope of MOD over eps (least squares through eps 0, MOD 0) of the wide models minus that of the "
              "deep models: > 0 when wide models shift more as eps grows")
        if not wide or not deep or not eps_all:
            note = (f"wide_gt_deep ({cam}, {attack}): skipped: needs a wide model (inception_v3, xception) and a deep "
                    f"one (vgg16, resnet50, resnet101) (the study has {', '.join(sorted(by_model))})")
            notes.append(note)
            rows.append({**row("wide_gt_deep", cam, attack, top, float("nan"), None, 0, ("", ""), d2), "note": note})
            continue

        def slope(models):
            per = [[stats((m, cam, attack, e)) for e in eps_all] for m in models]
            means = np.mean([mod_slope(eps_all, np.array([s[0] for s in p])) for p in per])
            dists = np.mean([mod_slope(eps_all, np.stack([s[2] for s in p])) for p in per], axis=0)
            n_rep = min(len(s[1]) for p in per for s in p)
            return means, dists, n_rep

        mw, sw, nw = slope(wide)
        md, sd, nd = slope(deep)
        rows.append({**row("wide_gt_deep", cam, attack, top, mw - md, sw - sd, min(nw, nd),
                           (" ".join(wide), " ".join(deep)), d2), "note": ""})
    return rows, notes
