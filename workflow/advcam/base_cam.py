"""What every CAM method shares: the layer pass, the result type and the map's upsampling (pytorch-grad-cam 1.5.x).

:func:`layer_pass` gives the activations A (N,K,h,w) of the target layer and, when asked, ∂y_c/∂A for the
logit y_c of the explained class c; each method of :mod:`advcam.explainers` makes its raw map (N,h,w) from them
(Grad-CAM: ``w = mean_{h,w} ∂y_c/∂A``, ``raw = ReLU(Σ_k w_k A_k)``), and :func:`upsample_cam` turns it into the
map ``minmax(ReLU(upsample(minmax(raw))))`` with ``minmax(z) = (z - min z) / (max(z - min z) + 1e-7)`` per
image and bilinear upsampling (``align_corners=False``) to the input size. There is one CAM path:
:func:`advcam.explainers.explain_cams` (what the workflow's stages run), and ``advcam.gradcam`` is
``advcam.cam(method="gradcam")``.

Only the backward from the logit to the target layer runs: parameters are frozen during the call and
the activation is detached at the layer, so nothing before the layer is recorded by autograd and no
parameter gradient is computed. The forward hook is removed whatever happens.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError
from .models import eval_mode, frozen_parameters, resolve_layer

__all__ = ["CamOutput", "LayerPass", "layer_pass", "upsample_cam", "minmax", "real"]

EPS = 1e-7


@dataclass
class CamOutput:
    """Grad-CAM of a set of images.

    maps : (N,H,W) float32 in [0,1], the normalised map at input size (all zero when the raw CAM is).
    raw : (N,h,w) float32 ≥ 0, ReLU(Σ_k w_k A_k) at the target layer's resolution.
    logits : (N,C) float32 model outputs for the images.
    target : (N,) int64, the class each map explains.
    """

    maps: torch.Tensor
    raw: torch.Tensor
    logits: torch.Tensor
    target: torch.Tensor

    @property
    def pred(self) -> torch.Tensor:
        """(N,) int64 predicted class."""
        return self.logits.argmax(1)

    def to(self, device: str | torch.device) -> "CamOutput":
        """The same results on ``device``."""
        return CamOutput(*(getattr(self, f).to(device) for f in _FIELDS))

    @staticmethod
    def cat(outs: list["CamOutput"]) -> "CamOutput":
        """Concatenate batches along the image axis (a single batch is returned as is)."""
        if not outs:
            raise InputError("no images to explain")
        if len(outs) == 1:
            return outs[0]
        return CamOutput(*(torch.cat([getattr(o, f) for o in outs]) for f in _FIELDS))


_FIELDS = ("maps", "raw", "logits", "target")


def minmax(z: torch.Tensor) -> torch.Tensor:
    """Per-image ``(z - min) / (max(z - min) + 1e-7)`` over the last two axes of (N,H,W)."""
    z = z - z.amin(dim=(-2, -1), keepdim=True)
    return z / (z.amax(dim=(-2, -1), keepdim=True) + EPS)


def real(t: torch.Tensor) -> torch.Tensor:
    """``t`` as float32, or as it is when it is float64 (the differentiable path's gradient checks run in float64)."""
    return t if t.dtype == torch.float64 else t.float()


def upsample_cam(raw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Rebuild the normalised map (N,H,W) in [0,1] from the raw CAM (N,h,w); ``size`` = (H, W).

    Deterministic: the stored raw CAM and this function give back the stored map exactly. Differentiable (made of
    clamp, min-max and bilinear interpolation): a raw map that carries a graph gives a map that carries it.
    """
    c = minmax(real(raw).clamp_min(0))
    c = F.interpolate(c[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    return minmax(c.clamp_min(0))


def _as_target(target, logits: torch.Tensor) -> torch.Tensor:
    if target is None:
        return logits.argmax(1)
    t = torch.as_tensor(target, device=logits.device).long().view(-1)
    if t.numel() == 1 and logits.shape[0] != 1:
        t = t.expand(logits.shape[0])
    if t.shape[0] != logits.shape[0]:
        raise InputError(f"target has {t.shape[0]} entries for {logits.shape[0]} images")
    if (t < 0).any() or (t >= logits.shape[1]).any():
        raise InputError(f"target classes must lie in [0, {logits.shape[1] - 1}]")
    return t


@dataclass
class LayerPass:
    """What one forward (and, when asked, one logit→layer backward) gives every CAM method.

    acts : (N,K,h,w) float32, the target layer's activations A. grads : (N,K,h,w) float32 ∂y_c/∂A for the
    explained class c of each image (None when no gradient was asked for). logits : (N,C) float32.
    target : (N,) int64, the explained class c.
    """

    acts: torch.Tensor
    grads: torch.Tensor | None
    logits: torch.Tensor
    target: torch.Tensor


def layer_pass(
    model: nn.Module,
    layer: str | nn.Module,
    x: torch.Tensor,
    target: torch.Tensor | None = None,
    need_grad: bool = True,
    amp: bool = False,
    create_graph: bool = False,
) -> LayerPass:
    """One forward of ``x`` (N,3,H,W) in [0,1] through ``model``, keeping the activations of ``layer``, and
    with ``need_grad`` one backward from the explained logits to that layer — never further: parameters
    are frozen and the activation is detached at the layer, so autograd records nothing upstream and no
    parameter gradient is computed. ``target`` None → each image's predicted class, else (N,) or scalar
    class indices. ``amp``: bfloat16 autocast for the forward (CUDA only). Runs where ``x`` lives; the
    forward hook is removed whatever happens. Raises TypeError naming the layer when its output is not a
    4-D tensor.

    ``create_graph``: the differentiable form. Nothing is detached: the activations, ∂y_c/∂A (a double-backward
    graph) and the logits carry the graph back to ``x`` (and float64 stays float64), so a map made from them can
    be differentiated with respect to the input. Parameters stay frozen.
    """
    module = resolve_layer(model, layer)
    name = layer if isinstance(layer, str) else type(layer).__name__
    store: dict[str, torch.Tensor] = {}

    def hook(_m, _inp, out):
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            what = f"a {out.dim()}-D tensor" if isinstance(out, torch.Tensor) else type(out).__name__
            raise TypeError(f"CAM layer '{name}' must output a 4-D tensor (N,K,h,w), got {what}")
        if create_graph:  # keep the graph to x; the output itself is A, as downstream sees it
            store["A"] = out
            return out
        a = out.detach().requires_grad_(need_grad)
        store["A"] = a
        return a

    handle = module.register_forward_hook(hook)
    autocast = (
        torch.autocast(device_type=x.device.type, dtype=torch.bfloat16)
        if amp and x.device.type == "cuda"
        else contextlib.nullcontext()
    )
    try:
        with eval_mode(model), frozen_parameters(model), torch.set_grad_enabled(need_grad or create_graph), autocast:
            logits = model(x if create_graph else x.detach())
            if "A" not in store:
                raise RuntimeError(f"the CAM layer '{name}' was not called in the forward pass")
            logits = real(logits) if create_graph else logits.float()
            tgt = _as_target(target, logits.detach())
            grad = None
            if need_grad:
                score = logits.gather(1, tgt[:, None]).sum()
                (grad,) = torch.autograd.grad(score, store["A"], create_graph=create_graph)
                grad = real(grad) if create_graph else grad.float()
    finally:
        handle.remove()
    if create_graph:
        return LayerPass(acts=real(store["A"]), grads=grad, logits=logits, target=tgt)
    return LayerPass(acts=store["A"].detach().float(), grads=grad, logits=logits.detach(), target=tgt)
