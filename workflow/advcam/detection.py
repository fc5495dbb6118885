"""Detecting adversarial inputs from the input alone, and judging a detector (issue #24).

A defender sees only x′, never the clean image, so MOD cannot detect anything. Each score below is computed from
one input, per image, oriented so that **higher means "more likely adversarial"**:

================= ================================================================================== ==============
score             per image                                                                          reference
================= ================================================================================== ==============
self_consistency  NISSIM between CAM(x) and CAM(clip(x + ε_d·s)), s a seeded random sign per pixel,   —
                  averaged over ``draws`` draws; both maps explain x's predicted class
disagreement      NISSIM between two CAM methods' maps of x (one shared pass)                        —
max_softmax       1 − max_c softmax(f(x))_c                                                         Hendrycks &
                                                                                                     Gimpel 2017
squeeze           max over squeezers q of ‖softmax(f(x)) − softmax(f(q(x)))‖₁; q: bit-depth           Xu et al. 2018
                  reduction to ``bits`` bits and a ``median``×``median`` median filter
================= ================================================================================== ==============

The bit-depth squeezer is Xu et al.'s ``rint(x·(2ᵇ − 1)) / (2ᵇ − 1)``; the median filter equals
``scipy.ndimage.median_filter(x, size=(1, 1, k, k), mode="reflect")`` (their code's call; for an even k the window
reaches one pixel further up and left, and the median of an even count is the upper of the two middle values).

A detector is judged on the clean test images (negatives) against their adversarial versions (positives):
:func:`roc_auc` (the Mann–Whitney statistic with average ranks for ties, equal to
``sklearn.metrics.roc_auc_score``), :func:`tpr_at_fpr` (the best true-positive rate of the ROC's points whose
false-positive rate is at most ``fpr``, as read from ``sklearn.metrics.roc_curve``) and :func:`auc_bootstrap`
(images resampled with their clean and adversarial versions together, vectorised over resamples).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .attacks import random_sign
from .batching import batches
from .errors import InputError
from .explainers import check_methods, explain_cams
from .models import eval_mode, model_device
from .settings import DetectionSettings
from .similarity import nissim

# judging a detector (ROC-AUC, its bootstrap, TPR at an FPR, the summary table) needs no model: it lives in
# advcam.roc, so that summarise and plot import neither torch's models nor timm; re-exported here
from .roc import DETECTION_KEYS, auc_bootstrap, detection_summary, roc_auc, roc_curve, tpr_at_fpr  # noqa: F401

__all__ = ["squeeze_bits", "median_filter", "softmax_l1", "max_softmax_score", "squeeze_score", "noise_seed",
           "self_consistency_score", "detection_scores", "roc_auc", "roc_curve", "tpr_at_fpr", "auc_bootstrap",
           "DETECTION_KEYS", "detection_summary"]


def squeeze_bits(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Xu et al.'s bit-depth reduction of (N,3,H,W) in [0,1] to ``bits`` bits: ``rint(x·(2ᵇ−1)) / (2ᵇ−1)``."""
    if isinstance(bits, bool) or int(bits) != bits or not 1 <= bits <= 8:
        raise InputError(f"bits {bits!r}: must be a whole number in [1, 8]")
    m = float(2 ** int(bits) - 1)
    return torch.round(x * m) / m


def _symmetric_index(n: int, before: int, after: int, device) -> torch.Tensor:
    """Indices of a length-``n`` axis padded by ``before``/``after`` in scipy's 'reflect' (numpy's 'symmetric')
    mode: d c b a | a b c d | d c b a."""
    idx = np.pad(np.arange(n), (before, after), mode="symmetric")
    return torch.as_tensor(idx, device=device)


def median_filter(x: torch.Tensor, size: int) -> torch.Tensor:
    """Per-channel ``size``×``size`` median of (N,C,H,W), equal to ``scipy.ndimage.median_filter(x, size=(1, 1,
    size, size), mode="reflect")``: the window of output (i, j) covers rows i − size//2 … i + (size − 1)//2 (likewise
    columns), and of an even count the upper middle value is taken (rank size²//2)."""
    if isinstance(size, bool) or int(size) != size or size < 1:
        raise InputError(f"median {size!r}: the filter's side must be a whole number >= 1")
    size = int(size)
    if size == 1:
        return x.clone()
    before, after = size // 2, (size - 1) // 2
    h, w = x.shape[-2:]
    xp = x.index_select(-2, _symmetric_index(h, before, after, x.device))
    xp = xp.index_select(-1, _symmetric_index(w, before, after, x.device))
    win = xp.unfold(-2, size, 1).unfold(-2, size, 1)  # (N,C,H,W,size,size)
    return win.flatten(-2).kthvalue(size * size // 2 + 1, dim=-1).values


def softmax_l1(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """‖softmax(a) − softmax(b)‖₁ per row of two (N,C) logit tensors: (N,) float64 in [0, 2]."""
    return (logits_a.double().softmax(1) - logits_b.double().softmax(1)).abs().sum(1)


def max_softmax_score(logits: torch.Tensor) -> torch.Tensor:
    """1 − max softmax probability of (N,C) logits: (N,) float64 in [0, 1 − 1/C] (Hendrycks & Gimpel 2017)."""
    return 1.0 - logits.double().softmax(1).amax(1)


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with eval_mode(model):
        return model(x.to(model_device(model))).float()


def squeeze_score(model: nn.Module, x: torch.Tensor, bits: int = 5, median: int = 2,
                  logits: torch.Tensor | None = None) -> torch.Tensor:
    """Feature squeezing (Xu et al. 2018) of one batch (N,3,H,W) in [0,1]: the larger L1 distance between the
    softmax of x and that of its ``bits``-bit and of its ``median``-filtered version, (N,) float64 in [0, 2].
    ``logits``: x's own, when already computed."""
    base = _logits(model, x) if logits is None else logits.to(model_device(model))
    a = softmax_l1(base, _logits(model, squeeze_bits(x, bits)))
    b = softmax_l1(base, _logits(model, median_filter(x, median)))
    return torch.maximum(a, b)


def noise_seed(seed: int, draw: int) -> int:
    """The seed of self-consistency draw ``draw``: a stream of its own (numpy SeedSequence of (seed, 24, draw)), so
    the defender's signs are not the noise control's (:func:`advcam.attacks.random_sign` with the attack's seed)."""
    return int(np.random.SeedSequence([int(seed), 24, int(draw)]).generate_state(1)[0])


def self_consistency_score(model: nn.Module, layer: str | nn.Module, x: torch.Tensor, indices, *, method: str = "gradcam",
                           eps_d: float = 0.03, draws: int = 1, seed: int = 0, clean_maps: torch.Tensor | None = None,
                           target: torch.Tensor | None = None, gaussian: bool = False) -> torch.Tensor:
    """Mean over ``draws`` of NISSIM(CAM(x), CAM(clip(x + ε_d·s_d))) for one batch (N,3,H,W) in [0,1]: (N,) float64
    in [0, 1]. ``s_d`` is :func:`advcam.attacks.random_sign` of the images' test-set ``indices`` with
    :func:`noise_seed` (seed, d), so an image's draws do not depend on its batch. Both maps explain ``target``
    (default: x's predicted class); ``clean_maps`` (N,H,W): CAM(x), when already computed."""
    if clean_maps is None or target is None:
        out = explain_cams(model, layer, x, [method], target, batch_size=len(x), out_device="cpu")[method]
        clean_maps, target = out.maps, out.target
    total = torch.zeros(len(x), dtype=torch.float64)
    for d in range(int(draws)):
        s = random_sign(tuple(x.shape[1:]), indices, noise_seed(seed, d)).to(x.device, x.dtype)
        xn = (x + eps_d * s).clamp(0, 1)
        noisy = explain_cams(model, layer, xn, [method], target, batch_size=len(x), out_device="cpu")[method].maps
        total += nissim(clean_maps.cpu(), noisy, gaussian=gaussian).cpu()
    return total / int(draws)


def detection_scores(model: nn.Module, layer: str | nn.Module, x: torch.Tensor, indices, settings: DetectionSettings, *,
                     batch_size: int = 64, gaussian: bool = False) -> dict[str, np.ndarray]:
    """Every score of ``settings.scores`` for each image of ``x`` (N,3,H,W) in [0,1] or uint8: {score: (N,) float64},
    plus ``"pred"`` (N,) the model's prediction. One CAM pass per batch gives the maps of ``settings.method`` and of
    ``settings.pair`` and the logits (max_softmax, squeeze's base); self_consistency adds one CAM pass per draw,
    squeeze two forwards. ``indices``: the images' test-set positions (the noise draws); ``gaussian``: the study's
    SSIM window for the NISSIMs."""
    scores = tuple(settings.scores)
    methods = check_methods(list(settings.methods)) if settings.methods else []
    indices = np.asarray(indices)
    parts: dict[str, list[torch.Tensor]] = {s: [] for s in scores + ("pred",)}
    for sl, xb in batches(x, batch_size, model_device(model)):
        if methods:
            outs = explain_cams(model, layer, xb, methods, None, batch_size=len(xb), out_device="cpu")
            first = outs[methods[0]]
            logits, target = first.logits, first.target
        else:
            logits, target = _logits(model, xb).cpu(), None
        parts["pred"].append(logits.argmax(1))
        if "max_softmax" in scores:
            parts["max_softmax"].append(max_softmax_score(logits))
        if "squeeze" in scores:
            parts["squeeze"].append(squeeze_score(model, xb, settings.bits, settings.median, logits).cpu())
        if "disagreement" in scores:
            a, b = settings.pair
            parts["disagreement"].append(nissim(outs[a].maps, outs[b].maps, gaussian=gaussian).cpu())
        if "self_consistency" in scores:
            parts["self_consistency"].append(self_consistency_score(
                model, layer, xb, indices[sl], method=settings.method, eps_d=settings.eps_d, draws=settings.draws,
                seed=settings.seed, clean_maps=outs[settings.method].maps, target=target, gaussian=gaussian))
    return {k: torch.cat(v).numpy().astype(np.int64 if k == "pred" else np.float64) for k, v in parts.items()}


# ---------------------------------------------------------------- judging a detector
