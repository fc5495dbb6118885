"""Adversarial training's inner attack, robust accuracy, and the gradient–image alignment of Etmann et al. (2019).

Adversarial training replaces every training batch by its adversarial version before the step (no clean loss
term): PGD-L∞ from a uniform random start in the ε-ball (Madry et al. 2018) or its one-step special case with
α = 1.25·ε, FGSM-RS (Wong, Rice & Kolter 2020, *Fast is better than free*), whose reference code this follows:
δ ~ U(−ε, ε) clipped so that x + δ lies in [0, 1], then δ ← clip_ε(δ + α·sign ∇_δ CE(f(x + δ), y)) clipped again
to the image. The attack runs on the model as it trains (train mode, as both papers' code: batch-norm layers use
the batch's statistics and update their running ones), under the step's precision, with parameters frozen so no
parameter gradient is computed for it; the loss the attack ascends is the plain cross-entropy (no label smoothing).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attacks import pgd, project_linf
from .attributions import input_gradients
from .batching import batches
from .errors import InputError
from .models import eval_mode, frozen_parameters, model_device
from .settings import AdvTrainSettings

__all__ = ["adversarial_batch", "robust_accuracy", "alignment"]


def adversarial_batch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: AdvTrainSettings,
    generator: torch.Generator | None = None,
    amp: bool = False,
) -> torch.Tensor:
    """The adversarial version (N,3,H,W) in [0,1], detached, of the training batch ``x`` (N,3,H,W) in [0,1] with
    labels ``y`` (N,): ``settings.steps`` signed-gradient steps of ``settings.alpha`` from a uniform start in the
    L∞ ball of ``settings.eps`` (drawn on ``x``'s device from ``generator``), each projected onto the ball and
    [0, 1]. The model stays in the mode it is in; ``amp``: bf16 autocast for its forwards."""
    eps, alpha = float(settings.eps), float(settings.alpha)
    noise = torch.empty_like(x).uniform_(-eps, eps, generator=generator)
    adv = (x + noise).clamp(0, 1)
    with frozen_parameters(model), torch.enable_grad():
        for _ in range(int(settings.steps)):
            adv.requires_grad_(True)
            with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(adv)
            (g,) = torch.autograd.grad(F.cross_entropy(logits.float(), y), adv)
            adv = project_linf(adv.detach() + alpha * g.sign(), x, eps)
    return adv


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 10,
                    batch_size: int = 64, seed: int = 0) -> float:
    """Accuracy under PGD-L∞ at radius ``eps`` (``steps`` steps of ε/4 from a seeded uniform start; the model in
    eval mode) on ``x`` (N,3,H,W) uint8 or float in [0,1] with labels ``y`` (N,): the share still classified
    correctly, in [0, 1]."""
    if not 0 < eps <= 1:
        raise InputError(f"robust accuracy: eps {eps!r} must lie in (0, 1]")
    dev = model_device(model)
    gen = torch.Generator().manual_seed(seed)
    correct = 0
    with eval_mode(model):
        for sl, xb in batches(x, batch_size, dev):
            yb = torch.as_tensor(y)[sl].to(dev)
            adv = pgd(model, xb, yb, eps, alpha=eps / 4, steps=steps, random_start=True, generator=gen)
            with torch.no_grad():
                correct += int((model(adv.to(dev)).argmax(1) == yb).sum())
    return correct / max(len(y), 1)


def alignment(model: nn.Module, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Etmann et al.'s (2019) alignment of each image with its saliency: |⟨x, ∇ₓ y_c⟩| / (‖x‖·‖∇ₓ y_c‖) (N,) in
    [0, 1] float32 on ``x``'s device, y_c the logit of the predicted class (or of ``target`` (N,)), x (N,3,H,W) in
    [0,1] on the model's device. 0 where the gradient (or the image) is zero."""
    g, _ = input_gradients(model, x, target)
    xf, gf = x.flatten(1).double(), g.flatten(1).double()
    den = xf.norm(dim=1) * gf.norm(dim=1)
    num = (xf * gf).sum(1).abs()
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num)).float()
