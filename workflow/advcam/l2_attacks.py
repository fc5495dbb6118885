"""L2 attacks in [0, 1] pixel space, each equal to its torchattacks 3.5.1 class with the same parameter names and
defaults, batched on the model's device (torchattacks' DeepFool loops over images and classes in Python):

* :func:`pgdl2` — PGD in L2 (``torchattacks.PGDL2``): steps along the per-image L2-normalised gradient, projected
  onto the L2 ball of radius ε and [0, 1];
* :func:`cw` — Carlini & Wagner's L2 attack (``torchattacks.CW``): Adam on ``w`` with x′ = (tanh w + 1)/2, minimising
  ‖x′ − x‖² + c·f(x′), keeping per image the closest x′ that succeeds;
* :func:`deepfool` — DeepFool (``torchattacks.DeepFool``): per image the linearised step to the nearest decision
  boundary, overshot by ``overshoot``, until the label changes.

CW and DeepFool are minimum-norm attacks: they have no ε. :func:`l2_norms` gives the ‖δ‖₂ each image reached;
:func:`clip_l2` restricts their result to an L2 budget ε (Foolbox 3's convention for minimisation attacks), which is
how the workflow runs them at each ε.

Where they follow torchattacks rather than the papers, said per function. Models are used in ``eval()`` mode with
parameters frozen, so only input gradients are computed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attacks import check_positive, check_steps, labels_on_device
from .models import eval_mode, frozen_parameters, model_device

__all__ = ["pgdl2", "cw", "deepfool", "l2_norms", "clip_l2"]


def l2_norms(x: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    """‖adv − x‖₂ per image on the [0, 1] pixel scale: (N,) float32 for (N,3,H,W) inputs."""
    return (adv.float() - x.float()).flatten(1).norm(dim=1)


def clip_l2(x: torch.Tensor, adv: torch.Tensor, eps: float) -> torch.Tensor:
    """x + δ·min(1, ε/‖δ‖₂) per image, δ = adv − x: the perturbation scaled into the L2 ball of radius ``eps`` (> 0),
    as Foolbox's ``clip_perturbation`` under its ``l2`` distance. x, adv (N,3,H,W) in [0,1]; the result stays in
    [0, 1] (a convex combination of x and adv)."""
    eps = check_positive("eps", eps)
    delta = adv - x
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    factor = (eps / norms).view(-1, *([1] * (x.dim() - 1))).to(delta.dtype)
    return torch.where(factor < 1, x + delta * factor, adv)  # within the ball: adv itself, bit for bit


def pgdl2(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float = 1.0,
    alpha: float = 0.2,
    steps: int = 10,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    target=None,
    eps_for_division: float = 1e-10,
) -> torch.Tensor:
    """PGD-L2 as ``torchattacks.PGDL2(model, eps, alpha, steps, random_start)``: (N,3,H,W) in [0,1] → (N,3,H,W) in
    [0,1] on ``x``'s device with ‖x′ − x‖₂ ≤ ``eps`` per image.

    Each step adds ``alpha``·g/(‖g‖₂ + ``eps_for_division``) of the input gradient g of the cross-entropy (towards
    ``target`` when given), then scales δ back into the ball and clips to [0, 1]. ``random_start``: δ = r·ε·z/‖z‖₂
    with z standard normal and r uniform in [0, 1] per image, torchattacks' draw (not uniform in the ball), from
    ``generator`` (or the global RNG, in torchattacks' order: z, then r). The cross-entropy is summed over the batch
    (torchattacks averages): after the normalisation only ``eps_for_division`` sees the factor N."""
    eps = check_positive("eps", eps)
    check_steps(steps, alpha)
    dev = model_device(model)
    x0 = x.detach().to(dev).float()
    t, targeted = labels_on_device(model, y, target, x0.shape[0])
    n = x0.shape[0]
    adv = x0.clone()
    if random_start:
        z = torch.empty(x0.shape).normal_(generator=generator)
        r = torch.empty(n, 1, 1, 1).uniform_(0, 1, generator=generator)
        z, r = z.to(dev), r.to(dev)
        delta = z * (r / z.flatten(1).norm(p=2, dim=1).view(n, 1, 1, 1) * eps)
        adv = (adv + delta).clamp(0, 1)
    with eval_mode(model), frozen_parameters(model), torch.enable_grad():
        for _ in range(steps):
            xg = adv.detach().requires_grad_(True)
            loss = F.cross_entropy(model(xg).float(), t, reduction="sum")
            (g,) = torch.autograd.grad(-loss if targeted else loss, xg)
            g = g / (g.flatten(1).norm(p=2, dim=1) + eps_for_division).view(n, 1, 1, 1)
            adv = adv.detach() + alpha * g
            delta = adv - x0
            factor = torch.clamp(eps / delta.flatten(1).norm(p=2, dim=1), max=1.0)
            adv = (x0 + delta * factor.view(n, 1, 1, 1)).clamp(0, 1)
    return adv.detach().to(x.device)


def _cw_f(logits: torch.Tensor, labels: torch.Tensor, kappa: float, targeted: bool) -> torch.Tensor:
    """CW's f as torchattacks 3.5.1 computes it: ``other = max((1 − onehot)·z)``, ``real = max(onehot·z)`` (so a
    logit below 0 enters as 0: the products' zeros take part in the max), then clamp(±(other − real), min=−κ)."""
    one_hot = torch.eye(logits.shape[1], device=logits.device)[labels]
    other = ((1 - one_hot) * logits).max(dim=1)[0]
    real = (one_hot * logits).max(dim=1)[0]
    return torch.clamp(other - real if targeted else real - other, min=-kappa)


def cw(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    c: float = 1.0,
    kappa: float = 0.0,
    steps: int = 50,
    lr: float = 0.01,
    target=None,
) -> torch.Tensor:
    """Carlini–Wagner L2 as ``torchattacks.CW(model, c, kappa, steps, lr)``: (N,3,H,W) in [0,1] → (N,3,H,W) in
    [0,1] on ``x``'s device.

    Adam (learning rate ``lr``) on w, x′ = (tanh w + 1)/2 starting at x, for ``steps`` steps on
    Σ ‖x′ − x‖² + ``c``·f(x′) (f: see :func:`_cw_f`; towards ``target`` when given); per image the x′ of smallest
    ‖x′ − x‖₂ that was misclassified (or reached the target) at some step, else x itself. As torchattacks: one
    constant c (no binary search), and the early stop when the batch's summed cost rose since the last check (every
    max(steps // 10, 1) steps), so an image's result depends on the batch it is in. ``c`` > 0, ``kappa`` ≥ 0,
    ``steps`` ≥ 1, ``lr`` > 0, else InputError."""
    c = check_positive("c", c)
    kappa = check_positive("kappa", kappa, strict=False)
    check_steps(steps, 1.0)
    lr = check_positive("lr", lr)
    dev = model_device(model)
    x0 = x.detach().to(dev).float()
    t, targeted = labels_on_device(model, y, target, x0.shape[0])
    v = torch.clamp(x0 * 2 - 1, min=-1, max=1)
    w = (0.5 * torch.log((1 + v) / (1 - v))).detach().requires_grad_(True)  # ±inf at 0 and 1, as torchattacks
    best = x0.clone()
    best_l2 = torch.full((len(x0),), 1e10, device=dev)
    prev = 1e10
    opt = torch.optim.Adam([w], lr=lr)
    with eval_mode(model), frozen_parameters(model), torch.enable_grad():
        for step in range(steps):
            adv = 0.5 * (torch.tanh(w) + 1)
            l2 = (adv - x0).pow(2).flatten(1).sum(1)
            logits = model(adv).float()
            cost = l2.sum() + c * _cw_f(logits, t, kappa, targeted).sum()
            opt.zero_grad()
            cost.backward()
            opt.step()
            pred = logits.detach().argmax(1)
            won = (pred == t) if targeted else (pred != t)
            mask = won & (best_l2 > l2.detach())
            best_l2 = torch.where(mask, l2.detach(), best_l2)
            best = torch.where(mask[:, None, None, None], adv.detach(), best)
            if step % max(steps // 10, 1) == 0:
                if cost.item() > prev:
                    break
                prev = cost.item()
    return best.to(x.device)


def _jacobian(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (B,C), ∂logit_k/∂x (B,C,3,H,W)) of a batch: C backward passes of Σ_i logit_k(x_i) (each image's
    logits depend on that image only, in eval mode)."""
    xg = x.detach().requires_grad_(True)
    logits = model(xg).float()
    k = logits.shape[1]
    rows = [torch.autograd.grad(logits[:, j].sum(), xg, retain_graph=j + 1 < k)[0] for j in range(k)]
    return logits.detach(), torch.stack(rows, dim=1)


def deepfool(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 50, overshoot: float = 0.02) -> torch.Tensor:
    """DeepFool as ``torchattacks.DeepFool(model, steps, overshoot)``: (N,3,H,W) in [0,1] → (N,3,H,W) in [0,1] on
    ``x``'s device.

    At most ``steps`` rounds; in each, every image still classified as its label ``y`` moves to
    clamp(x′ + (1 + ``overshoot``)·|f′_l|·w′_l/‖w′_l‖², 0, 1), with f′_k = z_k − z_y, w′_k = ∇z_k − ∇z_y and l the
    class k ≠ y of least |f′_k|/‖w′_k‖; an image stops once misclassified. As torchattacks, each step starts from
    the current, clipped iterate (the paper accumulates the unclipped steps from x). The Jacobian takes C backward
    passes per batch of active images. ``steps`` ≥ 1, ``overshoot`` ≥ 0, else InputError."""
    check_steps(steps, 1.0)
    overshoot = check_positive("overshoot", overshoot, strict=False)
    dev = model_device(model)
    adv = x.detach().to(dev).float().clone()
    labels = labels_on_device(model, y, None, adv.shape[0])[0]
    active = torch.ones(len(adv), dtype=torch.bool, device=dev)
    with eval_mode(model), frozen_parameters(model), torch.enable_grad():
        for _ in range(steps):
            idx = active.nonzero().flatten()
            if len(idx) == 0:
                break
            logits, jac = _jacobian(model, adv[idx])
            lab = labels[idx]
            done = logits.argmax(1) != lab
            active[idx[done]] = False
            keep = ~done
            if not bool(keep.any()):
                break
            idx, logits, jac, lab = idx[keep], logits[keep], jac[keep], lab[keep]
            rows = torch.arange(len(idx), device=dev)
            f0, w0 = logits[rows, lab], jac[rows, lab]  # (B,), (B,3,H,W)
            f_prime = logits - f0[:, None]  # (B,C)
            w_prime = jac - w0[:, None]  # (B,C,3,H,W)
            value = f_prime.abs() / w_prime.flatten(2).norm(p=2, dim=2)
            value[rows, lab] = float("inf")  # the label is not a candidate
            best = value.argmin(1)
            fb, wb = f_prime[rows, best], w_prime[rows, best]
            delta = fb.abs()[:, None, None, None] * wb / wb.flatten(1).norm(p=2, dim=1).pow(2)[:, None, None, None]
            adv[idx] = (adv[idx] + (1 + overshoot) * delta).clamp(0, 1)
    return adv.to(x.device)
