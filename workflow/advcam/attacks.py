"""Attacks in [0, 1] pixel space: FGSM (gradient sign once, every ε a cheap step), the random-sign
control, and PGD-L∞. Models are used in ``eval()`` mode; parameters are frozen during the gradient so
only the input gradient is computed.

FGSM: ``g = ∇ₓ CE(f(x), y)``, ``x_adv = clamp(x + ε·sign(g), 0, 1)``, as torchattacks' ``FGSM``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .models import eval_mode, frozen_parameters, model_device

__all__ = [
    "ATTACKS",
    "check_eps",
    "gradient_sign",
    "GradientSign",
    "apply_sign",
    "fgsm",
    "random_sign",
    "pgd",
    "EpsilonError",
    "perturb",
]

#: Attack names understood by the CLI and the workflow.
ATTACKS = ("fgsm", "noise", "pgd")


class EpsilonError(ValueError):
    """ε outside [0, 1] (pixel scale)."""


def check_eps(eps: float) -> float:
    """Return ``eps`` as float if it lies in [0, 1] (the pixel scale), else raise :class:`EpsilonError`."""
    try:
        e = float(eps)
    except (TypeError, ValueError):
        raise EpsilonError(f"epsilon {eps!r} is not a number") from None
    if not (0.0 <= e <= 1.0):
        raise EpsilonError(f"epsilon {eps!r} is outside [0, 1] (the [0,1] pixel scale; 8/255 ≈ 0.031)")
    return e


def _input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(∇ₓ Σᵢ CE(f(xᵢ), yᵢ), logits) for one batch, parameters frozen."""
    with eval_mode(model), frozen_parameters(model), torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        logits = model(xg)
        loss = F.cross_entropy(logits.float(), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, xg)
    return g, logits.detach().float()


@dataclass
class GradientSign:
    """sign : (N,3,H,W) int8 in {-1,0,1}; logits : (N,C) clean logits; zero_grad : (N,) bool, images whose
    input gradient is exactly zero (saturated softmax: FGSM leaves them unchanged)."""

    sign: torch.Tensor
    logits: torch.Tensor
    zero_grad: torch.Tensor


def gradient_sign(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 64,
    progress: bool = False,
    out_device: str | torch.device | None = "cpu",
) -> GradientSign:
    """FGSM's gradient sign for every image, computed once per model in batches on the model's device.

    x : (N,3,H,W) float in [0,1] or uint8; y : (N,) int64 true labels. Results go to ``out_device``
    (None: stay on the model's device). The loss is summed (not averaged) over the batch so each
    image's sign does not depend on the batch it sits in. A NaN or infinite gradient raises ValueError
    naming the images.
    """
    dev = model_device(model)
    signs, logits, zero = [], [], []
    it = range(0, x.shape[0], batch_size)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="gradient", unit="batch")
    for s in it:
        xb = x[s : s + batch_size].to(dev)
        if xb.dtype == torch.uint8:
            xb = xb.float().div_(255)
        g, lg = _input_grad(model, xb, torch.as_tensor(y[s : s + batch_size]).long().to(dev))
        bad = ~torch.isfinite(g).flatten(1).all(1)
        if bool(bad.any()):  # one check per batch: the sign of NaN would be cast to int8 as garbage
            raise ValueError(f"the input gradient holds NaN or infinite values for test images "
                             f"{(bad.nonzero().flatten() + s).tolist()[:10]}")
        sg = g.sign().to(torch.int8)
        z = (sg.flatten(1) == 0).all(1)
        if out_device is not None:
            sg, lg, z = sg.to(out_device), lg.to(out_device), z.to(out_device)
        signs.append(sg)
        logits.append(lg)
        zero.append(z)
    return GradientSign(torch.cat(signs), torch.cat(logits), torch.cat(zero))


def apply_sign(x: torch.Tensor, sign: torch.Tensor, eps: float) -> torch.Tensor:
    """``clamp(x + ε·sign, 0, 1)``: x (N,3,H,W) float in [0,1], sign same shape in {-1,0,1}."""
    eps = check_eps(eps)
    return (x + eps * sign.to(device=x.device, dtype=x.dtype)).clamp_(0.0, 1.0)


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Untargeted FGSM: (N,3,H,W) images in [0,1] → adversarial images in [0,1], same device as ``x``.

    Equals ``torchattacks.FGSM(model, eps)(x, y)``. For several ε, call :func:`gradient_sign` once and
    :func:`apply_sign` per ε.
    """
    eps = check_eps(eps)
    dev = model_device(model)
    g, _ = _input_grad(model, x.to(dev), torch.as_tensor(y).long().to(dev))
    return apply_sign(x.to(dev), g.sign(), eps).to(x.device)


def random_sign(shape: tuple[int, int, int], indices, seed: int) -> torch.Tensor:
    """Random ±1 signs (len(indices), *shape) int8 for the noise control.

    Each image's sign depends only on (``seed``, its index in the test set), so it is the same for every
    model and ε and whatever batch the image is in.
    """
    out = torch.empty((len(indices), *shape), dtype=torch.int8)
    g = torch.Generator()
    for i, idx in enumerate(indices):
        g.manual_seed(int(seed) * 1_000_003 + int(idx))
        out[i] = torch.randint(0, 2, shape, generator=g, dtype=torch.int8) * 2 - 1
    return out


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float = 2 / 255,
    steps: int = 10,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Untargeted PGD-L∞ (Madry et al.) in [0,1] pixel space, as ``torchattacks.PGD``.

    x : (N,3,H,W) float in [0,1]; y : (N,) labels; ε the L∞ radius; α the step; ``random_start`` draws
    the start uniformly in the ε-ball (from ``generator``, or the global RNG). Returns (N,3,H,W) in [0,1].
    """
    eps = check_eps(eps)
    if steps < 1:
        raise ValueError(f"pgd steps must be >= 1, got {steps}")
    dev = model_device(model)
    x0 = x.detach().to(dev)
    y = torch.as_tensor(y).long().to(dev)
    adv = x0.clone()
    if random_start:
        noise = torch.empty(x0.shape, dtype=x0.dtype)
        noise.uniform_(-eps, eps, generator=generator)
        adv = (adv + noise.to(dev)).clamp(0, 1)
    for _ in range(steps):
        g, _ = _input_grad(model, adv, y)
        # torchattacks averages the loss over the batch; the sign is the same.
        adv = adv.detach() + alpha * g.sign()
        delta = (adv - x0).clamp(-eps, eps)
        adv = (x0 + delta).clamp(0, 1).detach()
    return adv.to(x.device)


def perturb(
    x: torch.Tensor,
    attack: str,
    eps: float,
    indices=None,
    sign: torch.Tensor | None = None,
    delta: torch.Tensor | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Rebuild adversarial images from what the attack stage stored.

    x : (n,3,H,W) float clean images in [0,1]; ``fgsm`` needs ``sign`` (n,3,H,W) from
    :func:`gradient_sign`; ``noise`` draws :func:`random_sign` for ``indices`` (test-set positions) and
    ``seed``; ``pgd`` needs the stored ``delta`` (n,3,H,W). Returns (n,3,H,W) in [0,1] on ``x``'s device.
    """
    eps = check_eps(eps)
    if attack == "fgsm":
        if sign is None:
            raise ValueError("fgsm needs the gradient sign file (advcam gradient)")
        return apply_sign(x, sign, eps)
    if attack == "noise":
        if indices is None:
            raise ValueError("noise needs the test-set indices of the images")
        return apply_sign(x, random_sign(tuple(x.shape[1:]), indices, seed), eps)
    if attack == "pgd":
        if delta is None:
            raise ValueError("pgd needs the stored perturbation (advcam attack --attack pgd)")
        return (x + delta.to(x.device, x.dtype)).clamp_(0, 1)
    raise ValueError(f"unknown attack '{attack}': choose one of {', '.join(ATTACKS)}")
