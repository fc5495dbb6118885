"""Attacks in [0, 1] pixel space: FGSM (gradient sign once, every ε a cheap step), the random-sign
control, and the iterative BIM, PGD-L∞ and MI-FGSM, each untargeted or targeted. Models are used in
``eval()`` mode; parameters are frozen during the gradient so only the input gradient is computed.

FGSM: ``g = ∇ₓ CE(f(x), y)``, ``x_adv = clamp(x + ε·sign(g), 0, 1)``, as torchattacks' ``FGSM``.
Targeted (``target=`` class indices, torchattacks' ``set_mode_targeted_by_label``): the loss is
``−CE(f(x), target)``, so each step moves towards the target class.

Loss reduction: we **sum** the cross-entropy over the batch where torchattacks averages it. Only the sign
(or, for MI-FGSM, the per-image normalised gradient) is used, and a positive factor 1/N changes neither —
except where a gradient component is so small (|g| ≈ 1e-15 and below) that dividing by N rounds it to
another float, or to zero, and its sign flips or vanishes. With the sum an image's attack does not depend
on the batch it sits in, which the cached per-ε workflow relies on.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .batching import batches
from .errors import InputError
from .models import eval_mode, frozen_parameters, model_device
from .settings import ATTACKS, TARGET_RULES

__all__ = [
    "ATTACKS",
    "project_linf",
    "check_eps",
    "gradient_sign",
    "GradientSign",
    "apply_sign",
    "fgsm",
    "random_sign",
    "pgd",
    "bim",
    "mifgsm",
    "EpsilonError",
    "perturb",
    "target_classes",
    "TARGET_RULES",
    "check_steps",
    "check_positive",
    "check_count",
    "labels_on_device",
]


class EpsilonError(InputError):
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


def _input_grad(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, targeted: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(∇ₓ Σᵢ CE(f(xᵢ), yᵢ), logits) for one batch, parameters frozen; ``targeted``: of −Σᵢ CE (y are then
    the target classes)."""
    with eval_mode(model), frozen_parameters(model), torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        logits = model(xg)
        loss = F.cross_entropy(logits.float(), y, reduction="sum")
        (g,) = torch.autograd.grad(-loss if targeted else loss, xg)
    return g, logits.detach().float()


def labels_on_device(model: nn.Module, y, target, n: int) -> tuple[torch.Tensor, bool]:
    """The classes the loss is taken against (the targets when given, else the true labels) on the model's
    device, and whether the attack is targeted. ValueError when their number is not ``n``."""
    dev = model_device(model)
    t = torch.as_tensor(y if target is None else target).long().to(dev).view(-1)
    if t.numel() == 1 and n != 1:
        t = t.expand(n)
    if t.shape[0] != n:
        raise InputError(f"{'target' if target is not None else 'y'} has {t.shape[0]} entries for {n} images")
    return t, target is not None


def check_positive(name: str, value, strict: bool = True, note: str = "") -> float:
    """``value`` as float when it is a number > 0 (``strict``) or ≥ 0, else InputError naming ``name`` and the value
    (``note`` follows the bound in the message)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 if strict else value >= 0):
        raise InputError(f"{name} must be {'>' if strict else '>='} 0{note}, got {value!r}")
    return float(value)


def check_count(name: str, value) -> int:
    """``value`` when it is a whole number ≥ 1, else InputError naming ``name`` and the value."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def check_steps(steps: int, alpha: float) -> None:
    """InputError unless ``steps`` is a whole number ≥ 1 and the step ``alpha`` > 0."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be an integer >= 1, got {steps!r}")
    if not (float(alpha) > 0):
        raise InputError(f"alpha (the step size) must be > 0, got {alpha!r}")


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
    for sl, xb in batches(x, batch_size, dev, progress="gradient" if progress else None):
        s = sl.start
        g, lg = _input_grad(model, xb, torch.as_tensor(y[sl]).long().to(dev))
        bad = ~torch.isfinite(g).flatten(1).all(1)
        if bool(bad.any()):  # one check per batch: the sign of NaN would be cast to int8 as garbage
            raise InputError(f"the input gradient holds NaN or infinite values for test images "
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


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, target=None) -> torch.Tensor:
    """FGSM: (N,3,H,W) images in [0,1] → adversarial images in [0,1], same device as ``x``.

    y : (N,) true labels. target : None (untargeted: away from y) or (N,) (or one) class indices to step
    towards. Equals ``torchattacks.FGSM(model, eps)(x, y)``, and with ``target`` the same attack after
    ``set_mode_targeted_by_label()`` called with the targets. For several ε, call :func:`gradient_sign`
    once and :func:`apply_sign` per ε.
    """
    eps = check_eps(eps)
    dev = model_device(model)
    t, targeted = labels_on_device(model, y, target, x.shape[0])
    g, _ = _input_grad(model, x.to(dev), t, targeted)
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


def _iterate(
    model: nn.Module,
    x: torch.Tensor,
    y,
    eps: float,
    alpha: float,
    steps: int,
    target,
    start: torch.Tensor | None = None,
    decay: float | None = None,
) -> torch.Tensor:
    """The L∞ iteration BIM, PGD and MI-FGSM share: ``steps`` times adv ← Π(adv + α·sign(d)), Π the
    projection onto the ε-ball around x intersected with [0,1], d the input gradient (MI-FGSM: its
    momentum of per-image L1-normalised gradients with ``decay``). ``start``: the first iterate (default x)."""
    eps = check_eps(eps)
    check_steps(steps, alpha)
    dev = model_device(model)
    x0 = x.detach().to(dev)
    t, targeted = labels_on_device(model, y, target, x.shape[0])
    adv = x0.clone() if start is None else start.to(dev)
    momentum = torch.zeros_like(x0) if decay is not None else None
    for _ in range(steps):
        g, _ = _input_grad(model, adv, t, targeted)
        if momentum is not None:
            m = g.abs().mean(dim=(1, 2, 3), keepdim=True)
            # an image with an all-zero gradient keeps a zero step (torchattacks divides 0 by 0: NaN images)
            g = g / m.masked_fill(m == 0, 1) + decay * momentum
            momentum = g
        adv = project_linf(adv.detach() + alpha * g.sign(), x0, eps)
    return adv.to(x.device)


def project_linf(adv: torch.Tensor, x0: torch.Tensor, eps: float) -> torch.Tensor:
    """``adv`` projected onto the L∞ ball of radius ε around ``x0`` and onto [0, 1], detached: every L∞ iterate's
    last step (the iterative attacks here, the explanation and adaptive attacks, adversarial training)."""
    return (x0 + (adv - x0).clamp(-eps, eps)).clamp(0, 1).detach()


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float = 2 / 255,
    steps: int = 10,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    target=None,
) -> torch.Tensor:
    """PGD-L∞ (Madry et al.) in [0,1] pixel space, as ``torchattacks.PGD`` (targeted with ``target``, as
    after its ``set_mode_targeted_by_label``).

    x : (N,3,H,W) float in [0,1]; y : (N,) labels; ε the L∞ radius; α the step (> 0); ``steps`` ≥ 1;
    ``random_start`` draws the start uniformly in the ε-ball (from ``generator``, or the global RNG; the
    same distribution as torchattacks', not its draws). Returns (N,3,H,W) in [0,1] on ``x``'s device.
    """
    eps = check_eps(eps)
    check_steps(steps, alpha)
    start = None
    if random_start:
        noise = torch.empty(x.shape, dtype=x.dtype)
        noise.uniform_(-eps, eps, generator=generator)
        start = (x.detach().cpu() + noise).clamp(0, 1)
    return _iterate(model, x, y, eps, alpha, steps, target, start=start)


def bim(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float = 1 / 255, steps: int = 10,
        target=None) -> torch.Tensor:
    """BIM / I-FGSM (Kurakin et al. 2017): ``steps`` FGSM steps of size α from x, each projected onto the
    ε-ball and [0,1]; as ``torchattacks.BIM(model, eps, alpha, steps)`` (targeted with ``target``).
    x (N,3,H,W) in [0,1] → (N,3,H,W) in [0,1] on ``x``'s device; steps ≥ 1, α > 0."""
    return _iterate(model, x, y, eps, alpha, steps, target)


def mifgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float = 2 / 255, steps: int = 10,
           decay: float = 1.0, target=None) -> torch.Tensor:
    """MI-FGSM (Dong et al. 2018): BIM whose step follows the sign of a momentum
    ``m ← g/mean|g| + decay·m`` (per image); as ``torchattacks.MIFGSM(model, eps, alpha, steps, decay)``
    (targeted with ``target``). x (N,3,H,W) in [0,1] → (N,3,H,W) in [0,1] on ``x``'s device."""
    if not float(decay) >= 0:
        raise InputError(f"decay must be >= 0, got {decay!r}")
    return _iterate(model, x, y, eps, alpha, steps, target, decay=float(decay))


def target_classes(rule: str, labels, n_classes: int, logits: torch.Tensor | None = None, indices=None,
                   seed: int = 0) -> torch.Tensor:
    """Each image's target class for a targeted attack, never its true label: (N,) int64.

    rule : ``next`` = (label + 1) mod C (the next identity); ``least_likely`` = the class of lowest clean
    logit among the classes other than the label (needs ``logits`` (N,C)); ``random`` = uniform over the
    other C − 1 classes, drawn from (``seed``, the image's test-set position in ``indices``) so it does not
    depend on the batch or the model. ValueError naming the rule when it is unknown, or when C < 2 (every
    rule would give the true label).
    """
    if rule not in TARGET_RULES:
        raise InputError(f"unknown target rule '{rule}': choose one of {', '.join(TARGET_RULES)}")
    y = torch.as_tensor(labels).long().view(-1)
    if n_classes < 2:
        raise InputError(f"target rule '{rule}' needs at least 2 classes; with {n_classes} it gives the true label")
    if rule == "next":
        t = (y + 1) % n_classes
    elif rule == "least_likely":
        if logits is None:
            raise InputError("target rule 'least_likely' needs the clean logits")
        lg = torch.as_tensor(logits).float().cpu().clone()
        lg[torch.arange(len(y)), y] = float("inf")
        t = lg.argmin(1)
    else:
        if indices is None:
            raise InputError("target rule 'random' needs the test-set indices of the images")
        t = torch.empty(len(y), dtype=torch.long)
        g = torch.Generator()
        for i, idx in enumerate(indices):
            g.manual_seed(int(seed) * 1_000_003 + int(idx) + 7)
            t[i] = (y[i] + 1 + torch.randint(0, n_classes - 1, (1,), generator=g)) % n_classes
    if bool((t == y).any()):  # pragma: no cover - guarded above; a rule that breaks this is a bug
        raise InputError(f"target rule '{rule}' gave the true label for {int((t == y).sum())} images")
    return t


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
    ``seed``; ``pgd``, ``bim``, ``mifgsm`` and targeted FGSM need the stored ``delta`` (n,3,H,W) (pass
    ``delta`` for any attack to rebuild it from the delta). Returns (n,3,H,W) in [0,1] on ``x``'s device.
    """
    if delta is not None and attack != "noise":  # ε (L∞ or L2) is in the stored delta already
        return (x + delta.to(x.device, x.dtype)).clamp_(0, 1)
    eps = check_eps(eps)
    if attack == "fgsm":
        if sign is None:
            raise InputError("fgsm needs the gradient sign file (advcam gradient)")
        return apply_sign(x, sign, eps)
    if attack == "noise":
        if indices is None:
            raise InputError("noise needs the test-set indices of the images")
        return apply_sign(x, random_sign(tuple(x.shape[1:]), indices, seed), eps)
    if attack in ATTACKS:  # every other attack is crafted per ε and stored
        raise InputError(f"{attack} needs the stored perturbation (advcam attack --attack {attack})")
    raise InputError(f"unknown attack '{attack}': choose one of {', '.join(ATTACKS)}")
