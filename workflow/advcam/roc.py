"""Judging a detector's scores (advcam.detection): ROC-AUC, the ROC curve, the TPR at a false-positive rate, an
image bootstrap of the AUC, and the per-(model, run, attack, ε, score) summary table. Numbers in, numbers out: no
model, so the summary and plot stages import neither torch's model code nor timm.

:func:`roc_auc` is the Mann–Whitney statistic with average ranks for ties (equal to
``sklearn.metrics.roc_auc_score``); :func:`tpr_at_fpr` the best true-positive rate of the ROC's points whose
false-positive rate is at most ``fpr`` (as read from ``sklearn.metrics.roc_curve``); :func:`auc_bootstrap`
resamples images with their clean and adversarial versions together, vectorised over resamples.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import InputError
from .replicates import image_counts

__all__ = ["DETECTION_KEYS", "auc_bootstrap", "detection_summary", "roc_auc", "roc_curve", "tpr_at_fpr"]


def _scores_pair(neg, pos) -> tuple[np.ndarray, np.ndarray]:
    neg, pos = np.asarray(neg, dtype=np.float64).ravel(), np.asarray(pos, dtype=np.float64).ravel()
    if not len(neg) or not len(pos):
        raise InputError(f"a detector needs negatives and positives, got {len(neg)} and {len(pos)}")
    if not (np.isfinite(neg).all() and np.isfinite(pos).all()):
        raise InputError("detector scores hold NaN or infinite values")
    return neg, pos


def roc_auc(neg, pos) -> float:
    """Area under the ROC of scores ``neg`` (label 0) and ``pos`` (label 1), higher meaning positive: the share of
    (positive, negative) pairs ordered correctly, ties counted ½ — ``sklearn.metrics.roc_auc_score``."""
    neg, pos = _scores_pair(neg, pos)
    return float(_pair_matrix(neg, pos).mean())


def _pair_matrix(neg: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """(len(pos), len(neg)): 1 where the positive scores higher, ½ on a tie, else 0."""
    return (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])


def roc_curve(neg, pos) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) at every distinct score, from the highest threshold (plus ∞: (0, 0)) down, a point
    flagging every score ≥ the threshold — ``sklearn.metrics.roc_curve(drop_intermediate=False)``."""
    neg, pos = _scores_pair(neg, pos)
    thr = np.unique(np.concatenate([neg, pos]))[::-1]
    fpr = (neg[None, :] >= thr[:, None]).mean(1)
    tpr = (pos[None, :] >= thr[:, None]).mean(1)
    return np.r_[0.0, fpr], np.r_[0.0, tpr], np.r_[np.inf, thr]


def tpr_at_fpr(neg, pos, fpr: float = 0.05) -> float:
    """The highest true-positive rate among the ROC's points (:func:`roc_curve`) whose false-positive rate is at most
    ``fpr`` in [0, 1]: how many adversarial inputs a threshold that flags at most that share of clean ones catches."""
    if not 0 <= fpr <= 1:
        raise InputError(f"fpr {fpr!r}: must be in [0, 1]")
    f, t, _ = roc_curve(neg, pos)
    return float(t[f <= fpr + 1e-12].max())


def auc_bootstrap(neg, pos, include=None, n_resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """Bootstrap distribution of :func:`roc_auc`, (n_resamples,) float64: image i's clean score ``neg[i]`` and
    adversarial score ``pos[i]`` (both (N,)) are drawn together (:func:`advcam.replicates.image_counts`), and
    ``include`` (N,) bool keeps only some adversarial images as positives (e.g. those that flipped the prediction;
    None: all). One matrix product over the resamples (no loop per resample): with c the draw counts,
    AUC_b = Σᵢⱼ c_bi·incᵢ·P_ij·c_bj / (Σᵢ c_bi·incᵢ · Σⱼ c_bj), P from :func:`roc_auc`'s pairs. A resample without
    a positive is NaN."""
    neg, pos = _scores_pair(neg, pos)
    if len(neg) != len(pos):
        raise InputError(f"paired scores: {len(neg)} clean and {len(pos)} adversarial images")
    inc = np.ones(len(pos), dtype=bool) if include is None else np.asarray(include, dtype=bool)
    counts = image_counts(len(neg), int(n_resamples), int(seed))
    cp = counts * inc
    num = np.einsum("bi,bi->b", cp @ _pair_matrix(neg, pos), counts)
    den = cp.sum(1) * counts.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


# ---------------------------------------------------------------- the detection table

#: the keys of one detection row (besides the score's): which inputs were the positives
DETECTION_KEYS = ["model", "replicate", "attack", "eps", "norm", "targeted", "score", "cam"]


def detection_summary(table: pd.DataFrame, fpr: float = 0.05, confidence: float = 0.95, n_resamples: int = 2000,
                      seed: int = 0) -> pd.DataFrame:
    """One row per (model, replicate, attack, ε, score, positives) of the detection stage's per-image tables
    (:data:`advcam.stages.detect.DETECTION_COLUMNS`): the clean test images (attack "clean") are the negatives, their
    adversarial versions the positives — all of them (``positives`` "all") or those whose prediction flipped
    ("flipped"; none for an attack that flips none, e.g. ``explain``: NaN). Columns: n_clean, n_adv, auc
    (:func:`roc_auc`), auc_ci_low/high (percentile interval of :func:`auc_bootstrap`, images resampled with both
    their versions), tpr_at_fpr (:func:`tpr_at_fpr` at ``fpr``, recorded in column ``fpr``), mean_clean, mean_adv."""
    required = set(DETECTION_KEYS) | {"index", "flipped", "value"}
    missing = required - set(table.columns)
    if missing:
        raise InputError(f"a detection table lacks the column(s) {', '.join(sorted(missing))}")
    alpha = (1 - confidence) / 2
    rows = []
    run_keys = ["model", "replicate", "score", "cam"]
    clean = {k: c.drop_duplicates("index").set_index("index")["value"]
             for k, c in table[table["attack"] == "clean"].groupby(run_keys, sort=False)}
    for key, g in table[table["attack"] != "clean"].groupby(DETECTION_KEYS, sort=False, dropna=False):
        k = dict(zip(DETECTION_KEYS, key))
        c = clean.get(tuple(k[r] for r in run_keys), pd.Series(dtype=float))
        g = g.drop_duplicates("index").set_index("index")
        if not c.index.equals(g.index):
            missing = sorted(set(c.index) ^ set(g.index))[:10]
            raise InputError(f"detection: {k['model']}/r{k['replicate']} {k['attack']} ε={k['eps']:g} {k['score']}: "
                             f"the clean and adversarial rows hold other test images ({missing})")
        neg, pos, flipped = c.to_numpy(float), g["value"].to_numpy(float), g["flipped"].to_numpy(bool)
        dist = auc_bootstrap(neg, pos, flipped, n_resamples, seed)
        dist_all = auc_bootstrap(neg, pos, None, n_resamples, seed)
        for positives, inc, d in (("all", np.ones(len(pos), bool), dist_all), ("flipped", flipped, dist)):
            p = pos[inc]
            ok = d[np.isfinite(d)]
            rows.append({**k, "positives": positives, "n_clean": len(neg), "n_adv": len(p),
                         "auc": roc_auc(neg, p) if len(p) else np.nan,
                         "auc_ci_low": float(np.quantile(ok, alpha)) if len(p) and len(ok) else np.nan,
                         "auc_ci_high": float(np.quantile(ok, 1 - alpha)) if len(p) and len(ok) else np.nan,
                         "tpr_at_fpr": tpr_at_fpr(neg, p, fpr) if len(p) else np.nan, "fpr": fpr,
                         "mean_clean": float(neg.mean()), "mean_adv": float(p.mean()) if len(p) else np.nan})
    return pd.DataFrame(rows, columns=DETECTION_KEYS + ["positives", "n_clean", "n_adv", "auc", "auc_ci_low",
                                                        "auc_ci_high", "tpr_at_fpr", "fpr", "mean_clean", "mean_adv"])
