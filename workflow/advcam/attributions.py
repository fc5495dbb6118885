"""Gradient attributions as explainers beside the CAMs, each equal to Captum 0.9's ``attribute()`` of the same
class (the fragility literature's methods: Ghorbani et al. 2019, Dombrowski et al. 2019, Adebayo et al. 2018).

An attribution is (N,3,H,W) at the input's resolution, a function of ∂y_c/∂x for the explained logit y_c of
``x`` (N,3,H,W) in [0,1] (the model's normalisation is inside the model, so gradients are with respect to the
[0,1] pixels):

==================== ================================================================ ============================
method               attribution (Captum class and its defaults)                      passes per batch
==================== ================================================================ ============================
saliency             |∂y_c/∂x|                          (``Saliency``, ``abs=True``)   one forward + backward
inputxgradient       x ⊙ ∂y_c/∂x                        (``InputXGradient``)           the same pass as saliency
integrated_gradients x ⊙ Σ_k w_k ∂y_c/∂x(α_k x), black baseline (``IntegratedGradients``: ``n_steps`` nodes of
                     ``ig_method``, Gauss–Legendre by default)                         n_steps·N rows, batched
smoothgrad           mean over ``nt_samples`` of |∂y_c/∂x(x + n)|, n ~ N(0, stdevs²)   nt_samples·N rows, batched
                     (``NoiseTunnel(Saliency)``, ``nt_type="smoothgrad"``)
guided_backprop      ∂y_c/∂x with every ReLU's backward replaced by ReLU(grad)·[x > 0]  one forward + backward
                     (``GuidedBackprop``), on a copy of the model that shares its weights
guided_gradcam       guided_backprop ⊙ nearest-upsampled ReLU(Grad-CAM) of the CAM layer (``GuidedGradCam``)
==================== ================================================================ ============================

The map the study scores is :func:`attribution_map`: Σ over channels of |attribution| (N,H,W) ≥ 0, the "raw"
map; min-max per image then gives the map in [0,1] exactly as the CAMs' tail does (``upsample_cam`` at the
input's size is the identity resize), so SSIM, every measure, localisation, sanity and the summaries read them
as they read CAMs. The explained class y_c is the prediction at ``x`` (or ``target``), also for the integration
path and the noisy copies. Parameters are frozen for every pass (no parameter gradient is ever computed).

Not reproduced from Captum: its smoothgrad draws its noise from the global RNG; ours from a generator (given,
or seeded per image in the workflow so that an image's clean and adversarial maps share their noise draws and a
batch's composition does not change them); seeded alike, the draws are Captum's.
"""
from __future__ import annotations

import copy
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base_cam import layer_pass
from .errors import InputError
from .models import eval_mode, frozen_parameters, model_device
from .settings import ATTRIBUTION_METHOD_NAMES, IG_METHODS

__all__ = [
    "ATTRIBUTION_METHODS", "IG_METHODS", "attribution", "attribution_map", "attributions_batch", "check_attributions",
    "guided_model", "ig_nodes", "input_gradients", "smoothgrad_noise", "image_noise_seed",
]

#: every attribution method, in the order of the table above
ATTRIBUTION_METHODS: tuple[str, ...] = ATTRIBUTION_METHOD_NAMES


def check_attributions(methods: str | Iterable[str]) -> list[str]:
    """The names as a list without repeats; InputError naming one that is not an attribution method."""
    names = [methods] if isinstance(methods, str) else list(methods)
    for m in names:
        if m not in ATTRIBUTION_METHODS:
            raise InputError(f"unknown attribution method '{m}': choose from {', '.join(ATTRIBUTION_METHODS)}")
    return list(dict.fromkeys(names))


def _whole(name: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise InputError(f"{name} must be a whole number >= {lo}, got {v!r}")
    return int(v)


def ig_nodes(n_steps: int, method: str = "gausslegendre") -> tuple[torch.Tensor, torch.Tensor]:
    """(alphas, weights), each (n_steps,) float64: the integration path's nodes α_k in [0,1] and their weights
    w_k (summing to 1), as Captum's ``approximation_parameters(method)`` builds them: Gauss–Legendre nodes of
    ``numpy.polynomial.legendre.leggauss`` mapped to [0,1], or a Riemann sum (left, right, middle, trapezoid; these
    need n_steps >= 2). InputError naming an unknown method or a count out of range."""
    if method not in IG_METHODS:
        raise InputError(f"unknown integrated_gradients method '{method}': choose from {', '.join(IG_METHODS)}")
    n = _whole("n_steps", n_steps, 1 if method == "gausslegendre" else 2)
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return torch.from_numpy(0.5 * (nodes + 1)), torch.from_numpy(0.5 * weights)
    rule = method.split("_")[1]
    w = torch.full((n,), 1 / n, dtype=torch.float64)
    if rule == "trapezoid":
        w[0] /= 2
        w[-1] /= 2
        a = torch.linspace(0, 1, n)
    elif rule == "left":
        a = torch.linspace(0, 1 - 1 / n, n)
    elif rule == "middle":
        a = torch.linspace(1 / (2 * n), 1 - 1 / (2 * n), n)
    else:
        a = torch.linspace(1 / n, 1, n)
    return a.double(), w  # Captum builds the α of a Riemann rule in float32 (torch.linspace), then lists them


def _rectify(grad: torch.Tensor) -> torch.Tensor:
    return grad.clamp_min(0)


class GuidedReLU(nn.Module):
    """ReLU forward; in the backward, the gradient of its input tensor is rectified (ReLU(∂/∂input)): guided
    backpropagation (Springenberg et al. 2015) as Captum's ``GuidedBackprop`` does it. Captum hooks the ReLU's
    *input tensor*, so the gradient it rectifies is that tensor's whole gradient — the ReLU's own ∂/∂out·[out > 0]
    plus every other consumer's. Where the ReLU alone reads its input (VGG, ResNet, Inception) that is the textbook
    rule; in Xception's blocks the skip branch reads it too, and its gradient is rectified with the ReLU's (a
    module backward hook, rectifying the ReLU's share alone, differs from Captum there by 4× the map's maximum on a
    random xception at 71²; measured in tests/test_attributions.py's history)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            x.register_hook(_rectify)
        return torch.relu(x)


def guided_model(model: nn.Module, name: str | None = None) -> nn.Module:
    """A copy of ``model`` whose ``nn.ReLU`` modules are :class:`GuidedReLU` — its parameters and buffers are the
    original's tensors (shared, not copied: cheap, and a change to the original's weights shows in the copy), the
    original untouched. Every ReLU of the five paper architectures in timm is an ``nn.ReLU`` module (what Captum
    hooks too); InputError naming the model (``name``, else its class) when it has none."""
    shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
    guided = copy.deepcopy(model, memo=dict(shared))
    swapped = 0
    for parent in list(guided.modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is nn.ReLU:
                setattr(parent, child_name, GuidedReLU())
                swapped += 1
    if not swapped:
        who = name or type(getattr(model, "net", model)).__name__
        raise InputError(f"model '{who}' has no nn.ReLU module: guided backprop (guided_backprop, guided_gradcam) "
                         "cannot be given to it")
    return guided


def image_noise_seed(seed: int, index: int) -> int:
    """The seed of smoothgrad's noise for the test image at store position ``index``: a stream of its own (numpy
    SeedSequence of (seed, 25, index)), so an image's clean and adversarial maps get the same draws whatever the
    batch they fall in."""
    return int(np.random.SeedSequence([int(seed), 25, int(index)]).generate_state(1)[0])


def smoothgrad_noise(x: torch.Tensor, nt_samples: int, stdevs: float, generator: torch.Generator | None = None,
                     seeds: Sequence[int] | None = None) -> torch.Tensor:
    """Gaussian noise (N·nt_samples,3,H,W) of std ``stdevs`` for ``x`` (N,3,H,W), image-major (image i's samples
    are rows i·nt … i·nt + nt − 1, Captum's ``repeat_interleave`` order), float32 on ``x``'s device. Drawn on the CPU
    from ``generator`` (None: the global RNG) in one call, as Captum draws it; or, with ``seeds`` (N,), image i's
    samples from a generator seeded with ``seeds[i]``. InputError for ``nt_samples`` < 1 or ``stdevs`` < 0."""
    nt_samples = _whole("nt_samples", nt_samples, 1)
    if isinstance(stdevs, bool) or not isinstance(stdevs, (int, float)) or not stdevs >= 0:
        raise InputError(f"stdevs must be a number >= 0, got {stdevs!r}")
    shape = (x.shape[0] * nt_samples, *x.shape[1:])
    std = torch.full(shape, float(stdevs))
    if seeds is None:
        noise = torch.normal(0.0, std, generator=generator)
    else:
        if len(seeds) != x.shape[0]:
            raise InputError(f"{len(seeds)} noise seeds for {x.shape[0]} images")
        per = std[:nt_samples]
        noise = torch.cat([torch.normal(0.0, per, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
    return noise.to(x.device)


def _gather_sum(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if target.shape != logits.shape[:1]:
        raise InputError(f"target has {target.numel()} entries for {logits.shape[0]} images")
    if bool(((target < 0) | (target >= logits.shape[1])).any()):
        raise InputError(f"target classes must lie in [0, {logits.shape[1] - 1}]")
    return logits.gather(1, target[:, None]).sum()


def input_gradients(model: nn.Module, x: torch.Tensor, target: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂y_c/∂x (N,3,H,W), logits (N,C)) of one forward and one backward of ``x`` on the model's device, the logit
    ``target`` (N,) of each image (None: its predicted class); parameters frozen, the model in eval mode, nothing
    kept."""
    xg = x.detach().clone().requires_grad_(True)
    with eval_mode(model), frozen_parameters(model), torch.enable_grad():
        logits = model(xg)
        t = logits.detach().argmax(1) if target is None else target
        (g,) = torch.autograd.grad(_gather_sum(logits, t), xg)
    return g, logits.detach().float()


def _rows_gradients(model: nn.Module, rows: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, n: int,
                    batch_size: int, absolute: bool = False) -> torch.Tensor:
    """Σ_k weights[k]·∂y_c/∂x at the rows (K·N,3,H,W) (row k·N + i is image i's k-th point; ``target`` (N,)), in
    forward+backward chunks of ``batch_size`` rows, accumulated per image: (N,3,H,W); ``absolute``: of |∂y_c/∂x|."""
    total = torch.zeros((n, *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
    image = torch.arange(rows.shape[0], device=rows.device) % n
    w = weights.to(rows.device, rows.dtype).repeat_interleave(n)
    for s in range(0, rows.shape[0], batch_size):
        g, _ = input_gradients(model, rows[s:s + batch_size], target[image[s:s + batch_size]])
        g = g.abs() if absolute else g
        total.index_add_(0, image[s:s + batch_size], g * w[s:s + batch_size, None, None, None])
    return total


def attributions_batch(
    model: nn.Module,
    x: torch.Tensor,
    methods: Iterable[str],
    target: torch.Tensor | None,
    *,
    gradcam_raw: torch.Tensor | None = None,
    n_steps: int = 50,
    ig_method: str = "gausslegendre",
    nt_samples: int = 5,
    stdevs: float = 1.0,
    noise_seeds: Sequence[int] | None = None,
    noise: torch.Tensor | None = None,
    batch_size: int = 64,
    name: str | None = None,
    need_logits: bool = True,
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """({method: attribution (N,3,H,W) float32}, logits (N,C) at ``x``) for one batch ``x`` (N,3,H,W) in [0,1] on
    the model's device and the explained classes ``target`` (N,) (None: each image's predicted class). saliency and inputxgradient share one forward and
    backward (which gives the logits; otherwise one forward without a graph does); guided_gradcam needs
    ``gradcam_raw`` (N,h,w), ReLU(Grad-CAM) of the CAM layer for the same classes. ``batch_size`` bounds the rows of
    integrated_gradients' and smoothgrad's passes. smoothgrad's noise: ``noise`` (N·nt_samples,3,H,W) when given,
    else drawn by :func:`smoothgrad_noise` per image from ``noise_seeds`` (None: from the global RNG). ``name``: the
    model's name in errors. ``need_logits`` False: no forward is run only to return the logits (None then, unless
    a pass gave them). Other parameters as in :func:`attribution`."""
    names = check_attributions(methods)
    if target is not None:
        target = torch.as_tensor(target, device=x.device).long().view(-1)
        if target.numel() == 1 and len(x) != 1:
            target = target.expand(len(x))
    out: dict[str, torch.Tensor] = {}
    logits = None
    if "saliency" in names or "inputxgradient" in names:
        g, logits = input_gradients(model, x, target)
        if "saliency" in names:
            out["saliency"] = g.abs()
        if "inputxgradient" in names:
            out["inputxgradient"] = x * g
    if target is None:
        if logits is None:
            with eval_mode(model), torch.no_grad():
                logits = model(x).float()
        target = logits.argmax(1)
    if "integrated_gradients" in names:
        alphas, weights = ig_nodes(n_steps, ig_method)
        # Captum's scaled inputs: baseline + α·(x − baseline) with a float α, a black (zero) baseline
        rows = torch.cat([float(a) * x for a in alphas.tolist()])
        out["integrated_gradients"] = _rows_gradients(model, rows, target, weights.float(), len(x), batch_size) * x
    if "smoothgrad" in names:
        nt = _whole("nt_samples", nt_samples, 1)
        if noise is None:
            noise = smoothgrad_noise(x, nt, stdevs, seeds=noise_seeds)
        noisy = x.repeat_interleave(nt, dim=0) + noise.to(x.device)
        # image-major rows → step-major, the order _rows_gradients sums over; Captum's mean: the sum, then / nt
        rows = noisy.view(len(x), nt, *x.shape[1:]).transpose(0, 1).reshape(-1, *x.shape[1:])
        out["smoothgrad"] = _rows_gradients(model, rows, target, torch.ones(nt), len(x), batch_size, absolute=True) / nt
    if "guided_backprop" in names or "guided_gradcam" in names:
        gb, _ = input_gradients(guided_model(model, name), x, target)
        if "guided_backprop" in names:
            out["guided_backprop"] = gb
        if "guided_gradcam" in names:
            if gradcam_raw is None:
                raise InputError("guided_gradcam needs the Grad-CAM of the CAM layer (gradcam_raw)")
            up = F.interpolate(gradcam_raw[:, None].to(gb.dtype), size=tuple(x.shape[-2:]), mode="nearest")
            out["guided_gradcam"] = gb * up
    if logits is None and need_logits:
        with eval_mode(model), torch.no_grad():
            logits = model(x).float()
    return {m: out[m] for m in names}, logits


def attribution(
    model: nn.Module,
    x: torch.Tensor,
    method: str,
    target: torch.Tensor | int | None = None,
    *,
    layer: str | nn.Module | None = None,
    n_steps: int = 50,
    ig_method: str = "gausslegendre",
    nt_samples: int = 5,
    stdevs: float = 1.0,
    generator: torch.Generator | None = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """The raw attribution (N,3,H,W) float32 of ``x`` (N,3,H,W) float in [0,1] by ``method`` (one of
    :data:`ATTRIBUTION_METHODS`), on ``x``'s device; equal to Captum 0.9's ``attribute()`` of the same class with
    the same arguments (defaults are Captum's) to 1e-5 of the map's largest magnitude.

    ``target`` None explains each image's predicted class, else (N,) or one class index. ``layer`` (a module or its
    name): guided_gradcam's Grad-CAM layer (required for it). integrated_gradients: ``n_steps`` >= 1 nodes of
    ``ig_method`` (Captum's ``method``: gausslegendre, riemann_trapezoid/left/right/middle), a black baseline.
    smoothgrad: ``nt_samples`` >= 1 noisy copies with Gaussian noise of std ``stdevs`` >= 0 (on the [0,1] scale)
    drawn from ``generator`` (None: the global RNG, as Captum). ``batch_size``: images per pass, and rows per pass
    of integrated_gradients and smoothgrad. InputError for an unknown method, a count out of range, a negative
    ``stdevs``, or a model without ``nn.ReLU`` modules under guided backprop."""
    if not isinstance(method, str):
        raise InputError(f"method must be one name of {', '.join(ATTRIBUTION_METHODS)}, got {method!r}")
    check_attributions([method])
    if not x.is_floating_point():
        raise InputError(f"attributions need float images in [0,1], got {x.dtype}")
    batch_size = _whole("batch_size", batch_size, 1)
    dev = model_device(model)
    noise = None
    if method == "smoothgrad":  # drawn for the whole call, as Captum draws it: the batching does not change it
        nt_samples = _whole("nt_samples", nt_samples, 1)
        noise = smoothgrad_noise(x, nt_samples, stdevs, generator)
    if target is not None and torch.as_tensor(target).numel() not in (1, x.shape[0]):
        raise InputError(f"target has {torch.as_tensor(target).numel()} entries for {x.shape[0]} images")
    parts = []
    for s in range(0, x.shape[0], batch_size):
        xb = x[s:s + batch_size].to(dev)
        tb = None if target is None else torch.as_tensor(target)
        if tb is not None and tb.numel() > 1:
            tb = tb[s:s + batch_size]
        raw_cam = None
        tt = None if tb is None else tb.to(dev)
        if method == "guided_gradcam":
            if layer is None:
                raise InputError("guided_gradcam needs the Grad-CAM layer: pass layer=")
            with eval_mode(model):
                lp = layer_pass(model, layer, xb, tt)
            tt = lp.target
            raw_cam = (lp.grads.mean(dim=(2, 3), keepdim=True) * lp.acts).sum(1).clamp_min(0)
        nb = None if noise is None else noise[s * nt_samples:(s + len(xb)) * nt_samples]
        a, _ = attributions_batch(model, xb, [method], tt, gradcam_raw=raw_cam, n_steps=n_steps, ig_method=ig_method,
                                  nt_samples=nt_samples, stdevs=stdevs, noise=nb, batch_size=batch_size,
                                  need_logits=False)
        parts.append(a[method].to(x.device))
    return torch.cat(parts)


def attribution_map(attr: torch.Tensor) -> torch.Tensor:
    """The raw map of an attribution (N,3,H,W): Σ over channels of |attr|, (N,H,W) float32 ≥ 0 at the input's
    resolution; :func:`advcam.base_cam.upsample_cam` at the same size min-maxes it per image into [0,1], the CAMs'
    tail."""
    return attr.abs().sum(1).float()
