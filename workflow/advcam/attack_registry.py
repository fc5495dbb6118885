"""The attack registry: every attack the workflow runs, by name, with the function that crafts it on a batch.

:data:`advcam.settings.ATTACKS` names the registry's attacks (the workflow's attack wildcard, the schema's
``attacks:`` entries); an assert holds the two together. The attack stage calls :func:`craft`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .adaptive_attack import adaptive_attack
from .attacks import bim, fgsm, mifgsm, pgd
from .autoattack import apgd, square
from .errors import InputError
from .explanation_attacks import dual_attack, explain_attack
from .l2_attacks import clip_l2, cw, deepfool, pgdl2
from .settings import ATTACKS, AttackSettings

__all__ = ["Attack", "REGISTRY", "ITERATIVE", "EXPLANATION", "craft"]

#: ``craft(model, x, y, eps, settings, generator, target, layer=, explain_label=)`` → adversarial (N,3,H,W) in [0,1]
Crafter = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Attack:
    """One attack of the registry. ``craft`` runs it on a batch (None: the attack is only ever rebuilt from what
    the gradient stage stored, by :func:`advcam.attacks.perturb`); ``stores_delta``: its perturbation goes into the
    attack file (the iterative attacks, and every targeted one); ``reference``: what it equals (a torchattacks
    class, or the paper it follows); ``needs_cam``: it differentiates a CAM of the model's CAM layer."""

    name: str
    craft: Crafter | None
    stores_delta: bool
    reference: str
    needs_cam: bool = False


def _explain(m, x, y, e, s: AttackSettings, g, t, *, layer, explain_label):
    return explain_attack(m, layer, x, y, e, s.alpha, s.steps, s.method, s.random_start, g, s.relu_beta,
                          s.ssim == "gaussian", explain_label)


def _dual(m, x, y, e, s: AttackSettings, g, t, *, layer, explain_label):
    return dual_attack(m, layer, x, y, e, s.alpha, s.steps, s.lam, s.method, s.random_start, g, s.relu_beta,
                       s.ssim == "gaussian", explain_label, target=t)


def _adaptive(m, x, y, e, s: AttackSettings, g, t, *, layer, explain_label):
    # the detector's maps explain the predicted class (a defender has no label): explain_label does not apply
    return adaptive_attack(m, layer, x, y, e, s.alpha, s.steps, s.lam, s.score, s.method, s.pair, s.eps_d, s.draws,
                           s.random_start, g, s.relu_beta, s.ssim == "gaussian", target=t)


REGISTRY: dict[str, Attack] = {a.name: a for a in (
    # untargeted FGSM is rebuilt from the gradient sign (one gradient per model, every ε a cheap step);
    # targeted FGSM is a per-ε gradient and stores its delta
    Attack("fgsm", lambda m, x, y, e, s, g, t, **_: fgsm(m, x, y, e, target=t), False, "torchattacks.FGSM"),
    Attack("noise", None, False, "(random-sign control: no reference)"),
    Attack("pgd", lambda m, x, y, e, s, g, t, **_: pgd(m, x, y, e, s.alpha, s.steps, s.random_start, g, target=t),
           True, "torchattacks.PGD"),
    Attack("bim", lambda m, x, y, e, s, g, t, **_: bim(m, x, y, e, s.alpha, s.steps, target=t), True,
           "torchattacks.BIM"),
    Attack("mifgsm", lambda m, x, y, e, s, g, t, **_: mifgsm(m, x, y, e, s.alpha, s.steps, s.decay, target=t), True,
           "torchattacks.MIFGSM"),
    Attack("explain", _explain, True, "Ghorbani et al. 2019 / Dombrowski et al. 2019 (keep the label, move the map)",
           needs_cam=True),
    Attack("dual", _dual, True, "Zhang et al. 2020, ADV² (flip the label, keep the map)", needs_cam=True),
    Attack("pgdl2", lambda m, x, y, e, s, g, t, **_: pgdl2(m, x, y, e, s.alpha, s.steps, s.random_start, g, target=t),
           True, "torchattacks.PGDL2"),
    # APGD and Square draw from a generator seeded with the attack's seed on every batch, as a torchattacks call does
    Attack("apgd", lambda m, x, y, e, s, g, t, **_: apgd(m, x, y, s.norm, e, s.steps, s.n_restarts, s.seed, s.loss,
                                                         1, s.rho), True, "torchattacks.APGD"),
    Attack("square", lambda m, x, y, e, s, g, t, **_: square(m, x, y, "Linf", e, s.n_queries, s.n_restarts, s.p_init,
                                                             s.loss, True, s.seed, target=t), True, "torchattacks.Square"),
    # minimum-norm attacks: the perturbation found, scaled into the L2 ball of radius ε (Foolbox's convention)
    Attack("cw", lambda m, x, y, e, s, g, t, **_: clip_l2(x, cw(m, x, y, s.c, s.kappa, s.steps, s.lr, target=t), e),
           True, "torchattacks.CW, clipped to the L2 ball of ε"),
    Attack("deepfool", lambda m, x, y, e, s, g, t, **_: clip_l2(x, deepfool(m, x, y, s.steps, s.overshoot), e), True,
           "torchattacks.DeepFool, clipped to the L2 ball of ε"),
    Attack("adaptive", _adaptive, True, "Carlini & Wagner 2017; Tramèr et al. 2020 (an adaptive attacker: flip the "
           "label, keep the explanation-based detector's score at its clean value)", needs_cam=True),
)}
assert tuple(REGISTRY) == ATTACKS, "advcam.settings.ATTACKS names the registry's attacks, in its order"
#: attacks computed per ε in the attack job, whose perturbation the attack file stores (``delta``)
ITERATIVE = tuple(a.name for a in REGISTRY.values() if a.stores_delta)
#: attacks on the explanation (they differentiate a CAM of the model's CAM layer)
EXPLANATION = tuple(a.name for a in REGISTRY.values() if a.needs_cam)


def craft(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, settings: AttackSettings,
          generator: torch.Generator | None = None, target: torch.Tensor | None = None, *,
          layer: str | nn.Module | None = None, explain_label: bool = False) -> torch.Tensor:
    """Run ``settings.attack`` from :data:`REGISTRY` on a batch x (N,3,H,W) in [0,1] at radius ``eps`` (L∞ or L2:
    ``settings.eps_norm``; the minimum-norm attacks' result clipped to it), towards ``target`` (N,) when given. The explanation attacks need the CAM ``layer`` and whether the maps
    explain the label (``explain_label``) or the predicted class. Attacks without a crafter (the noise control)
    raise InputError."""
    a = REGISTRY[settings.attack]
    eps = settings.check_eps(eps)
    if a.craft is None:
        raise InputError(f"{a.name} is rebuilt from stored draws (advcam.attacks.perturb), not crafted")
    if a.needs_cam and layer is None:
        raise InputError(f"the {a.name} attack needs the CAM layer")
    return a.craft(model, x, y, eps, settings, generator, target, layer=layer, explain_label=explain_label)
