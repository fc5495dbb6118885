"""Attacks on the explanation itself, in L∞ at radius ε on the [0, 1] pixel scale, through the differentiable CAMs
(:func:`advcam.explainers.differentiable_cams`).

* :func:`explain_attack` — keep the label, move the map (Ghorbani, Abid & Zou 2019; Dombrowski et al. 2019):
  PGD that maximises the dissimilarity ``D = 1 − SSIM(CAM(x′), CAM(x))`` of one CAM method, with the study's SSIM
  window; the returned image is, per image, the most dissimilar iterate whose prediction is still the clean one
  (the clean image itself, D = 0, when no iterate keeps it), so its flip rate is 0 by construction.
* :func:`dual_attack` — flip the label, keep the map (Zhang et al. 2020, ADV²): PGD that minimises
  ``CE(f(x′), t) + λ·D`` towards a target class t, or ``−CE(f(x′), y) + λ·D`` away from the label; the returned
  image is, per image, the least dissimilar iterate that succeeds (reaches t, or leaves y), else the last one.

Why 1 − SSIM: it is the quantity the study reports (NISSIM = D/2), differentiable as computed
(:func:`advcam.similarity.ssim`: filters, products and a quotient), with the same window. Its gradient vanishes
where the two maps are equal, i.e. at x itself, so the explanation attack starts from a uniform draw in the ε-ball
(``random_start``, as PGD's; seeded by ``generator``). Steps work as in BIM: ``adv ← Π(adv ± α·sign(∇))``, Π the
projection onto the ε-ball around x intersected with [0, 1].

Every result is judged on ``model`` itself: its prediction and its (non-differentiable) CAM decide which iterate is
kept. With ``relu_beta`` the gradient is taken through :func:`advcam.models.relu_beta` (softplus(β·x)/β for each
ReLU; a ReLU network's Grad-CAM weights have zero gradient almost everywhere); without it, through the model.
Costs per step: one forward and one double backward (logit → layer with a graph, then → x), plus with
``relu_beta`` one forward and one logit→layer backward of the ReLU model to judge the iterate.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attacks import check_eps, check_positive, check_steps, labels_on_device, project_linf
from .errors import InputError
from .explainers import check_differentiable, differentiable_cams, explain_cams
from .models import frozen_parameters, model_device, relu_beta as smooth_copy
from .similarity import ssim

__all__ = ["explain_attack", "dual_attack", "map_dissimilarity", "start_point"]


def map_dissimilarity(a: torch.Tensor, b: torch.Tensor, gaussian: bool = False) -> torch.Tensor:
    """``1 − SSIM(a, b)`` per image, (N,) float64 in [0, 2], differentiable in ``a`` and ``b`` (N,H,W): the study's
    SSIM window (uniform 7×7 with sample covariance, or ``gaussian`` σ = 1.5 with population covariance)."""
    return 1.0 - ssim(a, b, gaussian=gaussian)


def start_point(x: torch.Tensor, eps: float, random_start: bool, generator: torch.Generator | None) -> torch.Tensor:
    """The first iterate: x itself, or with ``random_start`` a uniform draw in its ε-ball (L∞) clipped to [0, 1],
    drawn on the CPU from ``generator`` (the same draws on every device)."""
    if not random_start:
        return x.clone()
    noise = torch.empty(x.shape, dtype=x.dtype)
    noise.uniform_(-eps, eps, generator=generator)  # drawn on the CPU: the same draws on every device
    return (x + noise.to(x.device)).clamp(0, 1)


class _Judge:
    """The model's own verdict on an iterate: its prediction and its CAM (non-differentiable, one forward and one
    logit→layer backward), or both taken from the differentiable pass when that ran on the model itself."""

    def __init__(self, model: nn.Module, layer: str | nn.Module, method: str, explained, clean_map: torch.Tensor,
                 gaussian: bool):
        self.model, self.layer, self.method, self.explained = model, layer, method, explained
        self.clean_map, self.gaussian = clean_map, gaussian

    def __call__(self, adv: torch.Tensor, maps: torch.Tensor | None = None, logits: torch.Tensor | None = None):
        """(pred (N,), D (N,) float64) of ``adv``; ``maps``/``logits``: the model's own, already computed."""
        if maps is None:
            out = explain_cams(self.model, self.layer, adv, [self.method], self.explained, batch_size=len(adv),
                               out_device=None)[self.method]
            maps, logits = out.maps, out.logits
        with torch.no_grad():
            return logits.argmax(1), map_dissimilarity(maps.detach(), self.clean_map, self.gaussian)


def _setup(model, layer, x, eps, alpha, steps, method, relu_beta, explain_label, y):
    eps = check_eps(eps)
    check_steps(steps, alpha)
    if not isinstance(method, str):
        raise InputError(f"method must be one CAM method name, got {method!r}")
    check_differentiable([method])
    if relu_beta is not None:
        check_positive("relu_beta", relu_beta, note=" (or None: the model's own ReLUs)")
    dev = model_device(model)
    x0 = x.detach().to(dev).float()
    yd = labels_on_device(model, y, None, x0.shape[0])[0]
    explained = yd if explain_label else None
    clean = explain_cams(model, layer, x0, [method], explained, batch_size=len(x0), out_device=None)[method]
    grad_model = model if relu_beta is None else smooth_copy(model, relu_beta)
    return eps, method, dev, x0, yd, explained, clean, grad_model


def _differentiable_step(grad_model, layer, adv, method, explained):
    """(maps, logits, x′ requiring grad) of the differentiable pass, parameters frozen."""
    xg = adv.detach().clone().requires_grad_(True)
    with frozen_parameters(grad_model), torch.enable_grad():
        maps, logits = differentiable_cams(grad_model, layer, xg, [method], explained)
    return maps[method], logits, xg


def _iterate(model, grad_model, layer, method, explained, x0, eps, alpha, steps, start, direction, objective, judge,
             consider) -> torch.Tensor:
    """The loop both attacks share: ``steps`` times the differentiable pass at the iterate, its verdict on ``model``
    handed to ``consider`` (the pass's own maps and logits when it ran on ``model``), then
    adv ← Π(adv + direction·α·sign(∇ Σ objective(maps, logits))); the last iterate is judged too and returned."""
    adv = start
    for _ in range(steps):
        maps, logits, xg = _differentiable_step(grad_model, layer, adv, method, explained)
        (g,) = torch.autograd.grad(objective(maps, logits).sum(), xg)
        own = (maps, logits) if grad_model is model else (None, None)
        consider(adv, *judge(adv, *own))
        adv = project_linf(adv + direction * alpha * g.sign(), x0, eps)
    consider(adv, *judge(adv))
    return adv


def explain_attack(
    model: nn.Module,
    layer: str | nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float = 1 / 255,
    steps: int = 10,
    method: str = "gradcam",
    random_start: bool = True,
    generator: torch.Generator | None = None,
    relu_beta: float | None = None,
    gaussian: bool = False,
    explain_label: bool = False,
) -> torch.Tensor:
    """Keep the label, move the map: (N,3,H,W) in [0,1] → (N,3,H,W) in [0,1] on ``x``'s device, within ε (L∞) of x.

    ``steps`` ascent steps of size ``alpha`` on ``D = 1 − SSIM(CAM_method(x′), CAM_method(x))`` (``gaussian``: the
    study's Gaussian SSIM window); the CAM explains each image's predicted class, or its label ``y`` with
    ``explain_label``. Returns per image the most dissimilar iterate (the start included) that ``model`` still
    classifies as it classifies x, or x itself when none does. ``method``: one of
    :data:`advcam.explainers.DIFFERENTIABLE_METHODS` (else InputError naming it); ``relu_beta``: differentiate
    through the softplus copy (see the module docstring). ``random_start`` draws the start in the ε-ball from
    ``generator`` (or the global RNG)."""
    eps, method, dev, x0, yd, explained, clean, grad_model = _setup(
        model, layer, x, eps, alpha, steps, method, relu_beta, explain_label, y)
    keep = clean.pred
    judge = _Judge(model, layer, method, explained, clean.maps, gaussian)
    best, best_d = x0.clone(), torch.zeros(len(x0), dtype=torch.float64, device=dev)

    def consider(candidate, pred, d):
        nonlocal best, best_d
        better = (pred == keep) & (d > best_d)
        best = torch.where(better[:, None, None, None], candidate, best)
        best_d = torch.where(better, d, best_d)

    _iterate(model, grad_model, layer, method, explained, x0, eps, alpha, steps,
             start_point(x0, eps, random_start, generator),
             +1, lambda maps, logits: map_dissimilarity(maps, clean.maps, gaussian), judge, consider)
    return best.to(x.device)


def dual_attack(
    model: nn.Module,
    layer: str | nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float = 1 / 255,
    steps: int = 10,
    lam: float = 1.0,
    method: str = "gradcam",
    random_start: bool = False,
    generator: torch.Generator | None = None,
    relu_beta: float | None = None,
    gaussian: bool = False,
    explain_label: bool = False,
    target: torch.Tensor | None = None,
) -> torch.Tensor:
    """Flip the label, keep the map (ADV²): (N,3,H,W) in [0,1] → (N,3,H,W) in [0,1] on ``x``'s device, within ε.

    ``steps`` descent steps of size ``alpha`` on ``CE(f(x′), target) + lam·D`` (``target`` (N,) or one class), or
    without a target on ``−CE(f(x′), y) + lam·D``; D = 1 − SSIM of the CAM of x′ (for its predicted class, or
    ``y`` with ``explain_label``) and the clean CAM. Returns per image the least dissimilar iterate that succeeds
    on ``model`` (predicts the target, or not y), else the last iterate. ``lam`` ≥ 0 (0: plain BIM/PGD on CE);
    other arguments as in :func:`explain_attack`."""
    check_positive("lam (the weight of the map term)", lam, strict=False)
    eps, method, dev, x0, yd, explained, clean, grad_model = _setup(
        model, layer, x, eps, alpha, steps, method, relu_beta, explain_label, y)
    goal = None if target is None else labels_on_device(model, y, target, x0.shape[0])[0]
    judge = _Judge(model, layer, method, explained, clean.maps, gaussian)
    inf = torch.full((len(x0),), float("inf"), dtype=torch.float64, device=dev)
    best, best_d = None, inf

    def consider(candidate, pred, d):
        nonlocal best, best_d
        won = (pred == goal) if goal is not None else (pred != yd)
        better = won & (d < best_d)
        best = candidate.clone() if best is None else torch.where(better[:, None, None, None], candidate, best)
        best_d = torch.where(better, d, best_d)

    def objective(maps, logits):
        ce = F.cross_entropy(logits.float(), goal if goal is not None else yd, reduction="none")
        return (ce if goal is not None else -ce) + lam * map_dissimilarity(maps, clean.maps, gaussian)

    adv = _iterate(model, grad_model, layer, method, explained, x0, eps, alpha, steps,
                   start_point(x0, eps, random_start, generator), -1, objective, judge, consider)
    never = torch.isinf(best_d)  # no iterate succeeded: the last one
    best = torch.where(never[:, None, None, None], adv, best)
    return best.to(x.device)
