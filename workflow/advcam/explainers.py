"""Class activation maps beyond Grad-CAM, batched on the model's device, each equal to the
pytorch-grad-cam 1.5.x class of the same name.

Every method reduces the target layer's activations A (N,K,h,w) — and, for the gradient methods, the
gradient G = ∂y_c/∂A of the explained logit — to a raw map (N,h,w); all maps are then normalised the same
way (``minmax(ReLU(upsample(minmax(ReLU(raw)))))``, see :func:`advcam.base_cam.upsample_cam`). With
S = Σ_{h,w} A per channel and weights w (N,K) → raw = Σ_k w_k A_k:

================== ====================================================== ===========================
method             raw map                                                passes per batch
================== ====================================================== ===========================
gradcam            w = mean_{h,w} G                                       shared forward + backward
hirescam           Σ_k G ⊙ A                                              shared
gradcam_elementwise Σ_k ReLU(G ⊙ A)                                       shared
gradcampp          w = Σ_{h,w} ReLU(G)·α, α = G²/(2G² + S·G³ + 1e-6)      shared
                   (α = 0 where G = 0)
xgradcam           w = Σ_{h,w} G ⊙ A / (S + 1e-7)                         shared
layercam           Σ_k ReLU(G) ⊙ A                                        shared
eigengradcam       first principal component of G ⊙ A (per image)         shared
eigencam           first principal component of A (per image)             forward only
scorecam           w = softmax_k y_c(x ⊙ norm(up(A_k)))                   forward + K forwards/image
ablationcam        w = (y_c − y_c(A with channel k ablated)) / y_c        forward + K forwards/image
================== ====================================================== ===========================

All gradient methods of a call share **one forward and one logit→layer backward per batch** (no
parameter gradient, nothing upstream of the layer recorded). The principal component is that of the
spatially centred (h·w, K) matrix; its sign, which the SVD leaves arbitrary (pytorch-grad-cam issue
#364), is fixed as pytorch-grad-cam's ``get_2d_projection_with_sign_correction`` fixes it: flipped when
|min| > |max|. It is computed from the (h·w, h·w) Gram matrix in float64 (σ₁u₁ = M v₁), not by an SVD
of the (h·w, K) matrix. ScoreCAM's masks are the activations upsampled bilinearly with
``align_corners=True`` and min-max normalised per channel (eps 1e-8). AblationCAM sets channel k to 0,
or, where the image's activations have no zero, to their minimum − 1e7 (pytorch-grad-cam lowers that
value by a further 1e7 for each earlier row of its ablation batch; we do not reproduce that artefact of
its loop, which never arises after a ReLU); the ablated activations run through the network after the
layer only (cut from a torch.fx trace), where pytorch-grad-cam reruns the whole network.
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch
import torch.fx as fx
from timm.layers import get_notrace_functions, get_notrace_modules
from torch import nn

from .attributions import ATTRIBUTION_METHODS, attribution_map, attributions_batch, image_noise_seed
from .base_cam import CamOutput, LayerPass, _as_target, layer_pass, upsample_cam
from .batching import batches
from .errors import InputError
from .models import eval_mode, frozen_parameters, model_device, resolve_layer
from .settings import CAM_METHOD_NAMES, DIFFERENTIABLE_CAMS, EXPLAINER_NAMES, AttributionSettings
from .settings import check_methods  # noqa: F401 (the explainers' name check; lives with the names)

__all__ = [
    "CAM_METHODS", "METHODS", "GRADIENT_METHODS", "DIFFERENTIABLE_METHODS", "cam", "cams", "cams_batch", "check_differentiable",
    "differentiable_cams", "explain_cams", "network_after", "raw_cams", "principal_projection", "gradcam",
]


def _weighted(w: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return torch.einsum("nk,nkhw->nhw", w, a)


def _gradcam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return _weighted(g.mean(dim=(2, 3)), a)


def _hirescam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return (g * a).sum(1)


def _gradcam_elementwise(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return (g * a).clamp_min(0).sum(1)


def _gradcampp(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    g2 = g * g
    s = a.sum(dim=(2, 3), keepdim=True)
    alpha = g2 / (2 * g2 + s * (g2 * g) + 1e-6)
    alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
    return _weighted((g.clamp_min(0) * alpha).sum(dim=(2, 3)), a)


def _xgradcam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    s = a.sum(dim=(2, 3), keepdim=True)
    return _weighted((g * a / (s + 1e-7)).sum(dim=(2, 3)), a)


def _layercam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return (g.clamp_min(0) * a).sum(1)


def principal_projection(z: torch.Tensor) -> torch.Tensor:
    """Per image, the projection of the spatially centred (h·w, K) matrix of ``z`` (N,K,h,w) on its first
    principal axis, sign-corrected (flipped when |min| > |max|); (N,h,w) float32.

    Computed in float64 from the Gram matrix M Mᵀ (h·w × h·w): its top eigenpair (λ₁, u₁) gives
    M v₁ = √λ₁ u₁. A matrix of zeros gives zeros. Differentiable where λ₁ is a simple eigenvalue (float64 in,
    float64 out)."""
    n, k, h, w = z.shape
    m = z.double().flatten(2).transpose(1, 2)  # (N, hw, K)
    m = m - m.mean(dim=1, keepdim=True)
    evals, evecs = torch.linalg.eigh(m @ m.transpose(1, 2))  # ascending
    proj = evecs[..., -1] * evals[..., -1].clamp_min(0).sqrt()[:, None]  # (N, hw)
    flip = proj.amin(1).abs() > proj.amax(1).abs()
    proj = torch.where(flip[:, None], -proj, proj)
    return proj.view(n, h, w) if z.dtype == torch.float64 else proj.view(n, h, w).float()


def _eigencam(a: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
    return principal_projection(a)


def _eigengradcam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return principal_projection(g * a)


#: methods computed from the shared pass: name → f(A, G) → raw map (N,h,w) before ReLU
_FROM_PASS: dict[str, Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]] = {
    "gradcam": _gradcam,
    "hirescam": _hirescam,
    "gradcam_elementwise": _gradcam_elementwise,
    "gradcampp": _gradcampp,
    "xgradcam": _xgradcam,
    "layercam": _layercam,
    "eigencam": _eigencam,
    "eigengradcam": _eigengradcam,
}

#: every method, in the order of the table above
CAM_METHODS: tuple[str, ...] = (
    "gradcam", "hirescam", "gradcam_elementwise", "gradcampp", "xgradcam", "layercam", "eigencam",
    "eigengradcam", "scorecam", "ablationcam",
)
#: the methods that need ∂y_c/∂A (all served by one backward per batch)
GRADIENT_METHODS: tuple[str, ...] = tuple(m for m in _FROM_PASS if m != "eigencam")
#: the methods with a differentiable form (``cams(..., create_graph=True)``): every method of the shared pass.
#: scorecam and ablationcam have none here: their weights come from K forwards of masked inputs or ablated
#: channels, whose graph to x would cost K double-backward passes per image.
DIFFERENTIABLE_METHODS: tuple[str, ...] = tuple(_FROM_PASS)
assert DIFFERENTIABLE_METHODS == DIFFERENTIABLE_CAMS, "advcam.settings.DIFFERENTIABLE_CAMS names these methods"
assert set(CAM_METHODS) == set(CAM_METHOD_NAMES), "advcam.settings.CAM_METHOD_NAMES names every method"
#: every explainer of a study, one name space: the CAMs, then the gradient attributions (:mod:`advcam.attributions`)
METHODS: tuple[str, ...] = CAM_METHODS + ATTRIBUTION_METHODS
assert METHODS == EXPLAINER_NAMES, "advcam.settings.EXPLAINER_NAMES names every explainer"


def _replace_layer_output(module: nn.Module, make: Callable[[], torch.Tensor]):
    """A forward hook on ``module`` that returns ``make()`` instead of its output; returns the handle."""
    return module.register_forward_hook(lambda _m, _i, _o: make())


def _channel_batches(n: int, k: int, batch_size: int, device: torch.device):
    """The (image, channel) pairs of n images × k channels, ``batch_size`` at a time, image-major: yields
    (images, channels), two (B,) int64 tensors on ``device``."""
    for s in range(0, n * k, batch_size):
        flat = torch.arange(s, min(s + batch_size, n * k), device=device)
        yield flat // k, flat % k


def _scorecam(model: nn.Module, x: torch.Tensor, lp: LayerPass, batch_size: int) -> torch.Tensor:
    """ScoreCAM weights (N,K): softmax over channels of the explained logit of ``x`` masked by each
    channel's upsampled, min-max normalised activation."""
    a = lp.acts
    n, k = a.shape[:2]
    scores = torch.empty(n, k, device=a.device)
    with torch.no_grad(), frozen_parameters(model):
        up = torch.nn.functional.interpolate(a, size=x.shape[-2:], mode="bilinear", align_corners=True)
        lo = up.flatten(2).amin(2)[:, :, None, None]
        hi = up.flatten(2).amax(2)[:, :, None, None]
        up = (up - lo) / (hi - lo + 1e-8)
        for ii, cc in _channel_batches(n, k, batch_size, a.device):
            xb = x[ii] * up[ii, cc][:, None]
            out = model(xb).float()
            scores[ii, cc] = out.gather(1, lp.target[ii][:, None])[:, 0]
    return _weighted(torch.softmax(scores, dim=1), a)


def network_after(model: nn.Module, layer: str | nn.Module) -> nn.Module | None:
    """The part of ``model`` after ``layer`` as a module mapping the layer's output (N,K,h,w) to the logits,
    so that nothing before the layer is recomputed; None when the traced graph cannot be cut there (a
    later node reads something computed before the layer, or the model does not trace with torch.fx).

    Traced with timm's leaf modules and functions (those it marks as not traceable) kept whole."""

    module = resolve_layer(model, layer)
    qualname = next((n for n, m in model.named_modules() if m is module), None)
    if qualname is None:
        return None
    try:

        leaves, autowrap = tuple(get_notrace_modules()), tuple(get_notrace_functions())
    except ImportError:  # pragma: no cover - timm is a dependency
        leaves, autowrap = (), ()

    class _Tracer(fx.Tracer):
        def __init__(self):
            super().__init__(autowrap_functions=autowrap)

        def is_leaf_module(self, m: nn.Module, name: str) -> bool:
            return name == qualname or isinstance(m, leaves) or super().is_leaf_module(m, name)

    try:
        graph = _Tracer().trace(model)
    except Exception:  # noqa: BLE001 - data-dependent control flow and the like: no cut, the caller falls back
        return None
    nodes = list(graph.nodes)
    cut = [i for i, nd in enumerate(nodes) if nd.op == "call_module" and nd.target == qualname]
    if len(cut) != 1:
        return None
    tail = fx.Graph()
    env = {nodes[cut[0]]: tail.placeholder("a")}
    for nd in nodes[cut[0] + 1 :]:
        if nd.op == "placeholder":
            return None
        missing = [arg for arg in nd.all_input_nodes if arg not in env and arg.op != "get_attr"]
        if missing:
            return None
        for arg in nd.all_input_nodes:
            if arg not in env:  # a parameter or buffer read by the tail
                env[arg] = tail.node_copy(arg, lambda n: env[n])
        env[nd] = tail.node_copy(nd, lambda n: env[n])
    gm = fx.GraphModule(model, tail)
    gm.eval()
    return gm


def _ablationcam(model: nn.Module, layer: str | nn.Module, x: torch.Tensor, lp: LayerPass, batch_size: int) -> torch.Tensor:
    """AblationCAM weights (N,K): the relative drop of the explained logit when channel k of the layer's
    output is ablated (set to 0, or to min − 1e7 where the activations have no zero). The ablated
    activations run through the network after the layer only (:func:`network_after`), or, where the
    graph cannot be cut there, through the whole network with the layer's output replaced."""
    a = lp.acts
    n, k = a.shape[:2]
    module = resolve_layer(model, layer)
    original = lp.logits.gather(1, lp.target[:, None])[:, 0]  # (N,)
    amin = a.flatten(1).amin(1)
    value = torch.where(amin == 0, torch.zeros_like(amin), amin - 1e7)  # (N,)
    scores = torch.empty(n, k, device=a.device)
    tail = network_after(model, layer)
    current: dict[str, torch.Tensor] = {}
    handle = None if tail is not None else _replace_layer_output(module, lambda: current["A"])
    try:
        with torch.no_grad(), frozen_parameters(model):
            for ii, cc in _channel_batches(n, k, batch_size, a.device):
                ab = a[ii].clone()
                ab[torch.arange(len(ii), device=a.device), cc] = value[ii][:, None, None].to(ab.dtype)
                if tail is not None:
                    out = tail(ab).float()
                else:
                    current["A"] = ab
                    out = model(x[ii]).float()
                scores[ii, cc] = out.gather(1, lp.target[ii][:, None])[:, 0]
    finally:
        if handle is not None:
            handle.remove()
    return _weighted((original[:, None] - scores) / original[:, None], a)


def raw_cams(
    model: nn.Module,
    layer: str | nn.Module,
    x: torch.Tensor,
    methods: str | Iterable[str],
    target: torch.Tensor | None = None,
    batch_size: int = 64,
    amp: bool = False,
) -> tuple[dict[str, torch.Tensor], LayerPass]:
    """Raw maps of one batch for each method: ({method: (N,h,w) float32 ≥ 0}, the shared
    :class:`~advcam.base_cam.LayerPass`). ``x`` (N,3,H,W) in [0,1] on the model's device; ``batch_size``
    bounds the perturbed forwards of scorecam/ablationcam. The gradient is computed only when a
    gradient method is asked for. CAM methods only (the attributions: :func:`explain_cams`)."""
    names = check_methods(methods, cams_only=True)
    need_grad = any(m in GRADIENT_METHODS for m in names)
    raw: dict[str, torch.Tensor] = {}
    # eval mode for every pass, the perturbed forwards of scorecam/ablationcam included (as pgc sets it)
    with eval_mode(model):
        lp = layer_pass(model, layer, x, target, need_grad=need_grad, amp=amp)
        for m in names:
            if m in _FROM_PASS:
                r = _FROM_PASS[m](lp.acts, lp.grads)
            elif m == "scorecam":
                r = _scorecam(model, x, lp, batch_size)
            else:
                r = _ablationcam(model, layer, x, lp, batch_size)
            raw[m] = r.clamp_min(0)
    return raw, lp


def cams_batch(
    model: nn.Module,
    layer: str | nn.Module,
    x: torch.Tensor,
    methods: str | Iterable[str],
    target: torch.Tensor | None = None,
    batch_size: int = 64,
    amp: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], LayerPass]:
    """(maps, raw, pass) of one batch: maps {method: (N,H,W) float32 in [0,1]} at ``x``'s size, raw
    {method: (N,h,w)}; see :func:`raw_cams`."""
    raw, lp = raw_cams(model, layer, x, methods, target, batch_size, amp)
    return {m: upsample_cam(r, x.shape[-2:]) for m, r in raw.items()}, raw, lp


def check_differentiable(methods: str | Iterable[str]) -> list[str]:
    """The method names as a list (see :func:`check_methods`); InputError naming a method with no differentiable
    form (scorecam, ablationcam) and listing :data:`DIFFERENTIABLE_METHODS`."""
    names = check_methods(methods)
    for m in names:
        if m not in DIFFERENTIABLE_METHODS:
            raise InputError(f"CAM method '{m}' has no differentiable form: choose from "
                             f"{', '.join(DIFFERENTIABLE_METHODS)}")
    return names


def differentiable_cams(
    model: nn.Module,
    layer: str | nn.Module,
    x: torch.Tensor,
    methods: str | Iterable[str],
    target: torch.Tensor | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Maps that carry the graph to ``x``: ({method: (N,H,W) in [0,1]}, logits (N,C)), both differentiable with
    respect to ``x`` (N,3,H,W) float in [0,1] (float64 stays float64). One batch, on the model's device (``x`` is
    moved there, differentiably); the caller batches. ``target`` None explains each image's predicted class.

    The maps equal those of :func:`cams` (the same functions of A and ∂y_c/∂A, with A and ∂y_c/∂A kept in the
    graph: one forward and one logit→layer backward with ``create_graph``). Every method of
    :data:`DIFFERENTIABLE_METHODS`; the eigen methods where the top eigenvalue is simple. Of a ReLU network the
    gradient methods' weights have zero gradient almost everywhere (second derivatives of a piecewise-linear
    function); :func:`advcam.models.relu_beta` gives the softplus copy an attack differentiates instead."""
    names = check_differentiable(methods)
    if not x.is_floating_point():
        raise InputError(f"the differentiable CAMs need float images in [0,1], got {x.dtype}")
    xd = x.to(model_device(model))
    need_grad = any(m in GRADIENT_METHODS for m in names)
    with eval_mode(model):
        lp = layer_pass(model, layer, xd, target, need_grad=need_grad, create_graph=True)
        maps = {m: upsample_cam(_FROM_PASS[m](lp.acts, lp.grads).clamp_min(0), x.shape[-2:]) for m in names}
    return maps, lp.logits


def cams(
    model: nn.Module,
    layer: str | nn.Module,
    x: torch.Tensor,
    methods: str | Iterable[str],
    target: torch.Tensor | None = None,
    batch_size: int = 64,
    create_graph: bool = False,
) -> dict[str, torch.Tensor]:
    """Maps of ``x`` (N,3,H,W) in [0,1] (or uint8) for every method in ``methods``:
    {method: (N,H,W) float32 in [0,1]} on ``x``'s device.

    ``layer``: a module or its name (e.g. ``"layer4"``); ``target`` None explains each image's predicted
    class, else (N,) class indices. Computed in batches of ``batch_size`` on the model's device; every
    gradient method of the call comes from one forward and one logit→layer backward per batch; scorecam
    and ablationcam add K forwards per image, batched ``batch_size`` at a time. Raises ValueError naming
    an unknown method (and listing :data:`CAM_METHODS`), TypeError naming a layer whose output is not 4-D.

    ``create_graph``: maps that carry the graph to ``x`` (float) for the methods of :data:`DIFFERENTIABLE_METHODS`
    (:func:`differentiable_cams`, in one batch on the model's device; ``batch_size`` is then ignored), equal to the
    maps without it; a method with no differentiable form raises InputError naming it.
    """
    if create_graph:
        maps, _ = differentiable_cams(model, layer, x, methods, target)
        return {m: v.to(x.device) for m, v in maps.items()}
    outs = explain_cams(model, layer, x, methods, target, batch_size, out_device=x.device)
    return {m: o.maps for m, o in outs.items()}


def explain_cams(
    model: nn.Module,
    layer: str | nn.Module,
    x: torch.Tensor,
    methods: str | Iterable[str],
    target: torch.Tensor | None = None,
    batch_size: int = 64,
    amp: bool = False,
    out_device: str | torch.device | None = "cpu",
    *,
    attribution: AttributionSettings | None = None,
    index: torch.Tensor | np.ndarray | None = None,
    name: str | None = None,
) -> dict[str, CamOutput]:
    """Every explainer's full result for ``x`` (N,3,H,W) in [0,1] or uint8, batched on the model's device:
    {method: :class:`~advcam.base_cam.CamOutput`} with the maps (N,H,W) in [0,1], the raw maps (N,h,w), and the
    logits and explained classes of the shared forward (the same object for every method).

    ``methods``: any of :data:`METHODS`. A gradient attribution's raw map is
    :func:`advcam.attributions.attribution_map` at the input's size (Σ_c |attribution|), its map that min-maxed;
    ``attribution`` holds their parameters (default :class:`~advcam.settings.AttributionSettings`), smoothgrad's
    noise drawn per image from (its seed, the image's ``index``: store positions (N,), default 0…N−1), so an image's
    clean and adversarial maps share their draws. They run in float32 whatever ``amp``. guided_gradcam takes the
    Grad-CAM of ``layer`` from the CAMs' shared pass. ``name``: the model's name in errors (guided backprop on a
    model without ``nn.ReLU`` modules).

    What the explain and attack stages write, one file per method. ``out_device``: where the results go
    ("cpu", for writing to disk); None keeps them on the model's device. Other arguments as in :func:`cams`.
    """
    names = check_methods(methods)
    cam_names = [m for m in names if m in CAM_METHODS]
    attr_names = [m for m in names if m in ATTRIBUTION_METHODS]
    pass_names = cam_names + (["gradcam"] if "guided_gradcam" in attr_names and "gradcam" not in cam_names else [])
    settings = attribution or AttributionSettings()
    index = np.arange(x.shape[0]) if index is None else np.asarray(index)
    if len(index) != x.shape[0]:
        raise InputError(f"{len(index)} image positions (index) for {x.shape[0]} images")
    dev = model_device(model)
    parts: dict[str, list[CamOutput]] = {m: [] for m in names}
    for sl, xb in batches(x, batch_size, dev):
        tb = None if target is None else torch.as_tensor(target)[sl].to(dev)
        maps: dict[str, torch.Tensor] = {}
        raw: dict[str, torch.Tensor] = {}
        logits = tgt = None
        if pass_names:
            maps, raw, lp = cams_batch(model, layer, xb, pass_names, tb, batch_size, amp)
            logits, tgt = lp.logits, lp.target
        if attr_names:
            seeds = [image_noise_seed(settings.seed, i) for i in index[sl]]
            attrs, alog = attributions_batch(
                model, xb, attr_names, tgt if tgt is not None else tb, gradcam_raw=raw.get("gradcam"),
                n_steps=settings.n_steps, ig_method=settings.ig_method, nt_samples=settings.nt_samples,
                stdevs=settings.stdevs, noise_seeds=seeds, batch_size=batch_size, name=name)
            if logits is None:
                logits, tgt = alog, _as_target(tb, alog)
            for m in attr_names:
                raw[m] = attribution_map(attrs[m])
                maps[m] = upsample_cam(raw[m], xb.shape[-2:])
        if out_device is not None:  # the shared logits and targets moved once, not once per method
            logits, tgt = logits.to(out_device), tgt.to(out_device)
        for m in names:
            parts[m].append(CamOutput(maps[m], raw[m], logits, tgt) if out_device is None
                            else CamOutput(maps[m].to(out_device), raw[m].to(out_device), logits, tgt))
    return {m: CamOutput.cat(v) for m, v in parts.items()}


def cam(
    model: nn.Module,
    layer: str | nn.Module,
    x: torch.Tensor,
    method: str = "gradcam",
    target: torch.Tensor | None = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """Maps (N,H,W) float32 in [0,1] of one ``method`` (see :data:`CAM_METHODS`) for ``x`` (N,3,H,W)
    in [0,1], on ``x``'s device; arguments as in :func:`cams`."""
    if not isinstance(method, str):
        raise InputError(f"method must be one name of {', '.join(CAM_METHODS)}, got {method!r}")
    return cams(model, layer, x, [method], target, batch_size)[method]


def gradcam(
    model: nn.Module,
    layer: str | nn.Module,
    x: torch.Tensor,
    target: torch.Tensor | None = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """Grad-CAM maps (N,H,W) float32 in [0,1] of ``x`` (N,3,H,W) in [0,1] (or uint8), on ``x``'s device:
    ``cam(method="gradcam")``, the path the workflow runs. Equals pytorch-grad-cam 1.5's GradCAM to 1e-5."""
    return cam(model, layer, x, "gradcam", target, batch_size)
