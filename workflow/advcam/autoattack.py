"""AutoAttack's gradient attack APGD and its gradient-free one, Square, each equal to its torchattacks 3.5.1 class
with the same parameter names and defaults.

:func:`apgd` (Croce & Hein 2020): ``norm`` Linf or L2, ``eps``, ``steps``, ``n_restarts``, ``seed``, ``loss`` ce or
dlr, ``eot_iter``, ``rho``.

Per restart, on the images not yet fooled: a random start on the sphere of radius ε (L∞: a uniform draw scaled so
its largest entry is ε), then ``steps`` steps of size η (first 2ε) with momentum 0.75 from the second step; at the
checkpoints (after ⌈0.22·steps⌉ steps, then at intervals shrinking by 0.03·steps to at least 0.06·steps) η halves
for each image whose loss rose in fewer than ρ of the steps since the last checkpoint, or whose best loss did not
improve while η was kept, and that image restarts from its best point. An image counts as fooled when some
iterate is misclassified; the returned image is the last such iterate, and x itself for an image never fooled
(torchattacks' ``perturb(cheap=True)``).

Draws come from a generator seeded with ``seed`` (torchattacks reseeds the global RNG with it, the same draws on
the CPU), so calling this leaves the global RNG alone. The losses are summed over the batch, as torchattacks sums
them here.

:func:`square` (Andriushchenko et al. 2020), L∞: a random search that needs only the model's outputs (a check for
gradient masking). From a start of random ±ε vertical stripes, each query adds a square of side
s = round(√(p·H·W)) (p from ``p_init`` on the fixed schedule, rescaled to ``n_queries``) of ±2ε per channel at a
random place, projects, and keeps it where the loss (``margin`` or ``ce``) fell or the image became misclassified;
images stop once misclassified. As torchattacks: the square's place and colour of a query are one draw for the
whole batch (the paper draws per image), so an image's result depends on its batch.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .attacks import check_count, check_positive, check_steps, labels_on_device
from .errors import InputError
from .models import eval_mode, frozen_parameters, model_device

__all__ = ["apgd", "square", "dlr_loss", "APGD_LOSSES", "APGD_NORMS", "SQUARE_LOSSES"]

APGD_LOSSES = ("ce", "dlr")
APGD_NORMS = ("Linf", "L2")
SQUARE_LOSSES = ("margin", "ce")


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The difference-of-logits-ratio loss per image (Croce & Hein 2020): −(z_y − max_{k≠y} z_k)/(z_π1 − z_π3 + 1e-12),
    z sorted descending as z_π1 ≥ z_π2 ≥ z_π3; (N,) for logits (N,C), C ≥ 3."""
    z, order = logits.sort(dim=1)
    top_is_y = (order[:, -1] == y).float()
    zy = logits.gather(1, y[:, None])[:, 0]
    return -(zy - z[:, -2] * top_is_y - z[:, -1] * (1.0 - top_is_y)) / (z[:, -1] - z[:, -3] + 1e-12)


def _l2(t: torch.Tensor) -> torch.Tensor:
    return (t ** 2).sum(dim=(1, 2, 3), keepdim=True).sqrt()


def _single_run(model, x, y, eps, steps, norm, loss_fn, eot_iter, rho, gen):
    """One restart on a batch: (x_best, still_correct, best_loss, x_best_adv), torchattacks' attack_single_run."""
    n, dev = x.shape[0], x.device
    steps_2, steps_min, size_decr = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    if norm == "Linf":
        t = (2 * torch.rand(x.shape, generator=gen) - 1).to(dev)
        x_adv = x + eps * t / t.reshape(n, -1).abs().max(dim=1, keepdim=True)[0].reshape(-1, 1, 1, 1)
    else:
        t = torch.randn(x.shape, generator=gen).to(dev)
        x_adv = x + eps * t / (_l2(t) + 1e-12)
    x_adv = x_adv.clamp(0.0, 1.0)
    x_best, x_best_adv = x_adv.clone(), x_adv.clone()
    loss_steps = torch.zeros(steps, n)

    def loss_and_grad(xa):
        grad = torch.zeros_like(x)
        for _ in range(eot_iter):
            xg = xa.detach().requires_grad_(True)
            logits = model(xg).float()
            loss_indiv = loss_fn(logits, y)
            grad += torch.autograd.grad(loss_indiv.sum(), xg)[0]
        return logits.detach(), loss_indiv.detach(), grad / float(eot_iter)

    logits, loss_indiv, grad = loss_and_grad(x_adv)
    grad_best = grad.clone()
    acc = logits.argmax(1) == y
    loss_best = loss_indiv.clone()
    step_size = torch.full((n, 1, 1, 1), 2.0 * eps, device=dev)
    x_adv_old = x_adv.clone()
    k, counter3 = steps_2, 0
    loss_best_last_check = loss_best.clone()
    reduced_last_check = np.ones(n, dtype=bool)
    for i in range(steps):
        with torch.no_grad():
            grad2 = x_adv - x_adv_old
            x_adv_old = x_adv.clone()
            a = 0.75 if i > 0 else 1.0
            if norm == "Linf":
                x1 = x_adv + step_size * grad.sign()
                x1 = torch.min(torch.max(x1, x - eps), x + eps).clamp(0.0, 1.0)
                x1 = torch.min(torch.max(x_adv + (x1 - x_adv) * a + grad2 * (1 - a), x - eps), x + eps).clamp(0.0, 1.0)
            else:
                x1 = x_adv + step_size * grad / (_l2(grad) + 1e-12)
                d = x1 - x
                x1 = (x + d / (_l2(d) + 1e-12) * torch.min(torch.full_like(x, eps), _l2(d))).clamp(0.0, 1.0)
                x1 = x_adv + (x1 - x_adv) * a + grad2 * (1 - a)
                d = x1 - x
                x1 = (x + d / (_l2(d) + 1e-12) * torch.min(torch.full_like(x, eps), _l2(d) + 1e-12)).clamp(0.0, 1.0)
            x_adv = x1
        logits, loss_indiv, grad = loss_and_grad(x_adv)
        pred = logits.argmax(1) == y
        acc = acc & pred
        fooled = ~pred
        x_best_adv[fooled] = x_adv[fooled]
        with torch.no_grad():
            loss_steps[i] = loss_indiv.cpu()
            better = loss_indiv > loss_best
            x_best[better] = x_adv[better]
            grad_best[better] = grad[better]
            loss_best[better] = loss_indiv[better]
            counter3 += 1
            if counter3 == k:
                ls = loss_steps.numpy()
                rises = np.zeros(n)
                for c5 in range(k):
                    rises += ls[i - c5] > ls[i - c5 - 1]
                oscillating = rises <= k * rho * np.ones(n)
                no_improvement = ~reduced_last_check & (loss_best_last_check.cpu().numpy() >= loss_best.cpu().numpy())
                reduce = oscillating | no_improvement
                reduced_last_check = reduce.copy()
                loss_best_last_check = loss_best.clone()
                if reduce.any():
                    idx = torch.as_tensor(np.nonzero(reduce)[0], device=dev)
                    step_size[idx] /= 2.0
                    x_adv[idx] = x_best[idx]
                    grad[idx] = grad_best[idx]
                counter3 = 0
                k = max(k - size_decr, steps_min)
    return x_best, acc, loss_best, x_best_adv


def apgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    norm: str = "Linf",
    eps: float = 8 / 255,
    steps: int = 10,
    n_restarts: int = 1,
    seed: int = 0,
    loss: str = "ce",
    eot_iter: int = 1,
    rho: float = 0.75,
) -> torch.Tensor:
    """APGD as ``torchattacks.APGD(model, norm, eps, steps, n_restarts, seed, loss, eot_iter, rho)``: (N,3,H,W) in
    [0,1] → (N,3,H,W) in [0,1] on ``x``'s device; see the module docstring. ``y``: (N,) true labels. Raises
    InputError naming a bad ``norm``, ``loss``, ``eps`` (> 0), ``steps``/``n_restarts``/``eot_iter`` (≥ 1) or
    ``rho`` (in [0, 1])."""
    if norm not in APGD_NORMS:
        raise InputError(f"norm must be one of {', '.join(APGD_NORMS)}, got {norm!r}")
    if loss not in APGD_LOSSES:
        raise InputError(f"loss must be one of {', '.join(APGD_LOSSES)}, got {loss!r}")
    check_positive("eps", eps)
    check_steps(steps, 1.0)
    check_count("n_restarts", n_restarts)
    check_count("eot_iter", eot_iter)
    if not (isinstance(rho, (int, float)) and 0 <= rho <= 1):
        raise InputError(f"rho must lie in [0, 1], got {rho!r}")
    dev = model_device(model)
    x0 = x.detach().to(dev).float()
    yd = labels_on_device(model, y, None, x0.shape[0])[0]
    loss_fn = dlr_loss if loss == "dlr" else (lambda z, t: F.cross_entropy(z, t, reduction="none"))
    gen = torch.Generator().manual_seed(int(seed))
    adv = x0.clone()
    with eval_mode(model), frozen_parameters(model), torch.enable_grad():
        with torch.no_grad():
            acc = model(x0).argmax(1) == yd
        for _ in range(n_restarts):
            idx = acc.nonzero().flatten()
            if idx.numel() == 0:
                break
            _, acc_curr, _, adv_curr = _single_run(model, x0[idx], yd[idx], float(eps), steps, norm, loss_fn,
                                                    eot_iter, float(rho), gen)
            won = ~acc_curr
            acc[idx[won]] = False
            adv[idx[won]] = adv_curr[won]
    return adv.to(x.device)


def _square_schedule(p_init: float, it: int, n_queries: int) -> float:
    """Square's p at query ``it``: ``p_init`` halved at the schedule's steps, rescaled to 10,000 queries."""
    it = int(it / n_queries * 10000)
    for bound, div in ((8000, 512), (6000, 256), (4000, 128), (2000, 64), (1000, 32), (500, 16), (200, 8), (50, 4),
                       (10, 2)):
        if it > bound:
            return p_init / div
    return p_init


def _margin_and_loss(model, x, y, loss: str, targeted: bool):
    logits = model(x).float()
    xent = F.cross_entropy(logits, y, reduction="none")
    u = torch.arange(x.shape[0], device=x.device)
    y_corr = logits[u, y].clone()
    logits[u, y] = -float("inf")
    y_others = logits.max(dim=-1)[0]
    margin = (y_others - y_corr) if targeted else (y_corr - y_others)
    if loss == "margin":
        return margin, margin
    return margin, (xent if targeted else -xent)


def square(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    norm: str = "Linf",
    eps: float = 8 / 255,
    n_queries: int = 5000,
    n_restarts: int = 1,
    p_init: float = 0.8,
    loss: str = "margin",
    resc_schedule: bool = True,
    seed: int = 0,
    target=None,
) -> torch.Tensor:
    """Square (L∞) as ``torchattacks.Square(model, norm, eps, n_queries, n_restarts, p_init, loss, resc_schedule,
    seed)``: (N,3,H,W) in [0,1] → (N,3,H,W) in [0,1] on ``x``'s device within ε (L∞); see the module docstring.
    ``target``: classes to reach (torchattacks' targeted mode). Only ``norm="Linf"`` and ``resc_schedule=True`` are
    implemented (InputError otherwise), as are checks of ``eps`` (> 0), ``n_queries``/``n_restarts`` (≥ 1),
    ``p_init`` (in (0, 1]) and ``loss``."""
    if norm != "Linf":
        raise InputError(f"square: norm must be 'Linf' (the L2 version is not implemented), got {norm!r}")
    if resc_schedule is not True:
        raise InputError("square: only resc_schedule=True (the schedule rescaled to n_queries) is implemented")
    if loss not in SQUARE_LOSSES:
        raise InputError(f"loss must be one of {', '.join(SQUARE_LOSSES)}, got {loss!r}")
    check_positive("eps", eps)
    check_count("n_queries", n_queries)
    check_count("n_restarts", n_restarts)
    if not (isinstance(p_init, (int, float)) and 0 < p_init <= 1):
        raise InputError(f"p_init must lie in (0, 1], got {p_init!r}")
    eps = float(eps)
    dev = model_device(model)
    x0 = x.detach().to(dev).float()
    t, targeted = labels_on_device(model, y, target, x0.shape[0])
    gen = torch.Generator().manual_seed(int(seed))

    def rand(shape):
        return torch.rand(shape, generator=gen).to(dev)

    def sign(shape):
        return torch.sign(2 * rand(shape) - 1)

    adv = x0.clone()
    with eval_mode(model), frozen_parameters(model), torch.no_grad():
        pred = model(x0).argmax(1)
        acc = (pred != t) if targeted else (pred == t)
        for _ in range(n_restarts):
            idx = acc.nonzero().flatten()
            if idx.numel() == 0:
                break
            xs, ys = x0[idx], t[idx]
            c, h, w = xs.shape[1:]
            n_features = c * h * w
            x_best = (xs + eps * sign([xs.shape[0], c, 1, w])).clamp(0.0, 1.0)
            margin_min, loss_min = _margin_and_loss(model, x_best, ys, loss, targeted)
            for i_iter in range(n_queries):
                fool = (margin_min > 0.0).nonzero().flatten()
                if len(fool) == 0:
                    break
                x_curr, x_best_curr, y_curr = xs[fool], x_best[fool], ys[fool]
                margin_curr, loss_curr = margin_min[fool], loss_min[fool]
                p = _square_schedule(p_init, i_iter, n_queries)
                s = max(int(round(math.sqrt(p * n_features / c))), 1)
                vh = int((h - s) * rand([1]).item())  # drawn even when h = s, as torchattacks
                vw = int((w - s) * rand([1]).item())
                deltas = torch.zeros(c, h, w, device=dev)
                deltas[:, vh: vh + s, vw: vw + s] = 2.0 * eps * sign([c, 1, 1])
                x_new = torch.min(torch.max(x_best_curr + deltas, x_curr - eps), x_curr + eps).clamp(0.0, 1.0)
                margin, loss_new = _margin_and_loss(model, x_new, y_curr, loss, targeted)
                improved = (loss_new < loss_curr).float()
                loss_min[fool] = improved * loss_new + (1.0 - improved) * loss_curr
                improved = torch.max(improved, (margin <= 0.0).float())
                margin_min[fool] = improved * margin + (1.0 - improved) * margin_curr
                improved = improved.reshape(-1, 1, 1, 1)
                x_best[fool] = improved * x_new + (1.0 - improved) * x_best_curr
                if bool((margin_min <= 0.0).all()):
                    break
            out = model(x_best).argmax(1)
            won = (out == ys) if targeted else (out != ys)
            acc[idx[won]] = False
            adv[idx[won]] = x_best[won]
    return adv.to(x.device)
