"""The adaptive attacker of the detection track (issue #24): an attack that knows the explanation-based detector and
drives its score towards the clean image's while it flips the label (Carlini & Wagner 2017; Tramèr et al. 2020).

The detector scores it evades (:mod:`advcam.detection`), here as differentiable functions of x′ through
:func:`advcam.explainers.differentiable_cams`:

* ``disagreement`` — NISSIM between the maps of two CAM methods of x′ (one differentiable pass gives both);
* ``self_consistency`` — NISSIM between CAM(x′) and CAM(clip(x′ + ε_d·s)), averaged over ``draws`` random signs s.
  The defender's draws are secret: the attacker draws its own each step from its generator (expectation over
  transformation), and both maps explain x′'s predicted class, as the defender's do.

PGD in L∞ (steps as in BIM, optional random start) descends on ``±CE + λ·ReLU(score(x′) − score(x))``: −CE away from
the label (untargeted) or CE towards a target, plus the score's excess over the clean image's own score. Per image
the returned iterate is the successful one (label left, or target reached) with the lowest score, judged on
``model`` itself; the last iterate when none succeeds. With ``relu_beta`` the gradient is taken through the
softplus copy (:func:`advcam.models.relu_beta`) and every iterate is judged on the ReLU model.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .attacks import check_count, check_eps, check_positive, check_steps, labels_on_device, project_linf
from .errors import InputError
from .explainers import check_differentiable, differentiable_cams, explain_cams
from .explanation_attacks import map_dissimilarity, start_point
from .models import frozen_parameters, model_device, relu_beta as smooth_copy

__all__ = ["ADAPTIVE_SCORES", "detector_score", "adaptive_attack"]

#: the detector scores the adaptive attack can evade (those made from explanations)
ADAPTIVE_SCORES = ("disagreement", "self_consistency")


def _maps(model, layer, x, methods, target, create_graph):
    """({method: (N,H,W)}, logits) of x, with the graph to x (``create_graph``) or without."""
    if create_graph:
        return differentiable_cams(model, layer, x, methods, target)
    outs = explain_cams(model, layer, x, methods, target, batch_size=len(x), out_device=None)
    return {m: o.maps for m, o in outs.items()}, outs[methods[0]].logits


def detector_score(model: nn.Module, layer: str | nn.Module, x: torch.Tensor, score: str, *, method: str = "gradcam",
                   pair: Sequence[str] = ("gradcam", "layercam"), eps_d: float = 0.03, signs: torch.Tensor | None = None,
                   gaussian: bool = False, create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(score (N,) float64 in [0, 1], logits (N,C)) of a batch x (N,3,H,W) in [0,1] on the model's device: the
    detector score ``score`` of :data:`ADAPTIVE_SCORES` as :mod:`advcam.detection` defines it, differentiable in x
    with ``create_graph``. ``signs`` (draws,N,3,H,W) of ±1: self_consistency's noise draws (its mean over them)."""
    if score == "disagreement":
        a, b = pair
        maps, logits = _maps(model, layer, x, [a, b], None, create_graph)
        return map_dissimilarity(maps[a], maps[b], gaussian) / 2, logits
    if score != "self_consistency":
        raise InputError(f"score {score!r}: the adaptive attack evades one of {', '.join(ADAPTIVE_SCORES)}")
    if signs is None or len(signs) == 0:
        raise InputError("self_consistency needs at least one noise draw")
    maps, logits = _maps(model, layer, x, [method], None, create_graph)
    target = logits.detach().argmax(1)
    total = 0.0
    for s in signs:
        noisy, _ = _maps(model, layer, (x + eps_d * s.to(x.dtype)).clamp(0, 1), [method], target, create_graph)
        total = total + map_dissimilarity(maps[method], noisy[method], gaussian) / 2
    return total / len(signs), logits


def adaptive_attack(
    model: nn.Module,
    layer: str | nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float = 1 / 255,
    steps: int = 10,
    lam: float = 1.0,
    score: str = "disagreement",
    method: str = "gradcam",
    pair: Sequence[str] = ("gradcam", "layercam"),
    eps_d: float = 0.03,
    draws: int = 1,
    random_start: bool = False,
    generator: torch.Generator | None = None,
    relu_beta: float | None = None,
    gaussian: bool = False,
    target: torch.Tensor | None = None,
) -> torch.Tensor:
    """Flip the label and keep the detector quiet: (N,3,H,W) in [0,1] → (N,3,H,W) in [0,1] on ``x``'s device, within
    ε (L∞) of x. ``steps`` descent steps of size ``alpha`` on ``−CE(f(x′), y)`` (or ``CE(f(x′), target)``) plus
    ``lam``·ReLU(score(x′) − score(x)) (:func:`detector_score`; ``score`` one of :data:`ADAPTIVE_SCORES`, with
    ``method``, ``pair``, ``eps_d`` and ``draws`` as the detector's). Returns per image the successful iterate with the
    lowest score on ``model``, else the last. ``generator`` draws the random start and the attacker's own noise
    signs; ``relu_beta``: differentiate through the softplus copy; ``gaussian``: the study's SSIM window."""
    eps = check_eps(eps)
    check_steps(steps, alpha)
    check_positive("lam (the weight of the detector term)", lam, strict=False)
    if score not in ADAPTIVE_SCORES:
        raise InputError(f"score {score!r}: the adaptive attack evades one of {', '.join(ADAPTIVE_SCORES)}")
    methods = list(pair) if score == "disagreement" else [method]
    if score == "disagreement" and (len(methods) != 2 or methods[0] == methods[1]):
        raise InputError(f"pair {tuple(pair)!r}: must name two different CAM methods")
    check_differentiable(methods)
    check_positive("eps_d", eps_d)
    draws = check_count("draws", draws)
    if relu_beta is not None:
        check_positive("relu_beta", relu_beta, note=" (or None: the model's own ReLUs)")
    dev = model_device(model)
    x0 = x.detach().to(dev).float()
    yd = labels_on_device(model, y, None, len(x0))[0]
    goal = None if target is None else labels_on_device(model, y, target, len(x0))[0]
    grad_model = model if relu_beta is None else smooth_copy(model, relu_beta)
    kw = dict(method=method, pair=tuple(pair), eps_d=float(eps_d), gaussian=gaussian)

    def signs() -> torch.Tensor | None:  # the attacker's own draws (the defender's are secret)
        if score != "self_consistency":
            return None
        s = torch.randint(0, 2, (int(draws), *x0.shape), generator=generator, dtype=torch.int8) * 2 - 1
        return s.to(dev)

    # the clean score as the objective sees it: the same differentiable pass (on the softplus copy with relu_beta),
    # so at x itself the excess is exactly 0, not a rounding difference between two ways of computing one map
    x0g = x0.clone().requires_grad_(True)
    with frozen_parameters(grad_model), torch.enable_grad():
        clean = detector_score(grad_model, layer, x0g, score, signs=signs(), create_graph=True, **kw)[0].detach()
    adv = start_point(x0, eps, random_start, generator)
    best, best_v = adv.clone(), torch.full((len(x0),), float("inf"), dtype=torch.float64, device=dev)
    for step in range(steps + 1):
        draw = signs()
        xg = adv.detach().clone().requires_grad_(True)
        with frozen_parameters(grad_model), torch.enable_grad():
            v, logits = detector_score(grad_model, layer, xg, score, signs=draw, create_graph=step < steps, **kw)
            ce = F.cross_entropy(logits.float(), goal if goal is not None else yd, reduction="none")
            objective = (ce if goal is not None else -ce) + lam * (v - clean).clamp_min(0)
        if grad_model is not model:  # judge on the ReLU model, with the same draws
            v, logits = detector_score(model, layer, adv, score, signs=draw, **kw)
        pred, v = logits.detach().argmax(1), v.detach()
        won = (pred == goal) if goal is not None else (pred != yd)
        better = won & (v < best_v)
        best = torch.where(better[:, None, None, None], adv, best)
        best_v = torch.where(better, v, best_v)
        if step == steps:
            break
        (g,) = torch.autograd.grad(objective.sum(), xg)
        adv = project_linf(adv - alpha * g.sign(), x0, eps)
    never = torch.isinf(best_v)  # no iterate succeeded: the last one
    return torch.where(never[:, None, None, None], adv, best).to(x.device)
