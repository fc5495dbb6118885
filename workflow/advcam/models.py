"""timm model factory with the normalisation inside the module, Grad-CAM target layers and checkpoints.

Every model takes images in [0, 1] pixel space, shape (N,3,H,W): the wrapper :class:`Normalized`
subtracts the model's own ``pretrained_cfg`` mean and divides by its std, so attacks clip in [0, 1]
and never see normalised values.
"""
from __future__ import annotations

import contextlib
import copy
import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import timm
import torch
import torch.nn.functional as F
from timm.layers import register_notrace_module
from torch import nn

from .batching import batches
from .errors import InputError

__all__ = [
    "PaperModel",
    "PAPER_MODELS",
    "Normalized",
    "build_model",
    "target_layer_name",
    "resolve_layer",
    "UnknownModelError",
    "UnknownLayerError",
    "frozen_parameters",
    "eval_mode",
    "relu_beta",
    "model_device",
    "pick_device",
    "timm_name",
    "predict",
    "to_tensor_images",
    "WholeInputConv2d",
    "gemm_whole_input_convs",
]


class UnknownModelError(InputError):
    """The name is not a timm architecture."""


class UnknownLayerError(InputError):
    """The Grad-CAM target layer is not a submodule of the model."""


@dataclass(frozen=True)
class PaperModel:
    """A model of the paper: timm name, Grad-CAM layer and native input side (pixels)."""

    timm_name: str
    layer: str
    native_size: int


#: The five architectures of the paper (DESIGN.md §2), keyed by the name used in configs and paths.
PAPER_MODELS: dict[str, PaperModel] = {
    "vgg16": PaperModel("vgg16", "features.29", 224),
    "resnet50": PaperModel("resnet50", "layer4", 224),
    "resnet101": PaperModel("resnet101", "layer4", 224),
    "inception_v3": PaperModel("inception_v3", "Mixed_7c", 299),
    "xception": PaperModel("legacy_xception", "act4", 299),
}


def timm_name(arch: str) -> str:
    """The timm architecture behind ``arch`` (a paper alias such as ``xception`` or any timm name)."""
    return PAPER_MODELS[arch].timm_name if arch in PAPER_MODELS else arch


class Normalized(nn.Module):
    """``net((x - mean) / std)`` for x in [0, 1], shape (N,3,H,W); mean/std are (3,) buffers."""

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def _create(arch: str, num_classes: int, pretrained: bool, pretrained_file: str | None) -> nn.Module:

    name = timm_name(arch)
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(f"unknown model '{arch}': not a timm architecture{hint}")
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if pretrained_file is not None:
        path = Path(pretrained_file)
        if not path.is_file():
            raise FileNotFoundError(f"pretrained_file '{path}' for model '{arch}' does not exist")
        # timm's own loader: adapts the first conv and drops a classifier of another class count.
        kwargs["pretrained_cfg_overlay"] = {"file": str(path.resolve())}
        pretrained = True
    return timm.create_model(name, pretrained=pretrained, **kwargs)


def build_model(
    arch: str,
    num_classes: int,
    pretrained: bool = False,
    pretrained_file: str | os.PathLike | None = None,
) -> Normalized:
    """Build a timm model by name with ``num_classes`` outputs, normalisation inside.

    ``arch`` is a paper alias (``vgg16``, ``resnet50``, ``resnet101``, ``inception_v3``, ``xception``) or
    any timm name. ``pretrained=True`` uses timm's hub loading (needs the network or a warm cache);
    ``pretrained_file`` loads local weights through the same timm path; the default is random init.
    Raises :class:`UnknownModelError` for a name timm does not know.

    Trained from scratch, a network without normalisation layers (VGG16 here) gets He fan-in init on its
    convolutions instead of timm's fan-out, so the forward signal keeps its scale: with fan-out, VGG16@64
    stayed at chance for 6 epochs on the default synthetic set; with fan-in it reached 86% test accuracy
    in the same 6 epochs (AdamW 1e-4, batch 16; this project's 2-core CPU machine).
    """
    net = _create(arch, num_classes, pretrained, None if pretrained_file is None else str(pretrained_file))
    if not pretrained and pretrained_file is None and not _has_normalisation(net):
        fan_in_init(net)
    gemm_whole_input_convs(net)
    cfg = net.pretrained_cfg
    return Normalized(net, tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225))))


class WholeInputConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` computed as one matrix product whenever its kernel covers its whole input (no
    padding, no groups, no dilation): then each output is a 1×1 map and the convolution is exactly
    ``linear(x.flatten(1), weight.flatten(1), bias)``, the same sums in the same precision. timm's VGG head
    is such a layer (``pre_logits.fc1``: a 7×7 kernel over the 7×7 pooled map, 103 M weights), and oneDNN's
    convolution backward for it is the costliest part of a VGG16 training step on the CPU: at 64², batch
    32, one thread, fp32 forward+backward of that layer took 1,874 ms as a convolution and 534 ms as a
    matrix product (bf16: 1,220 / 643 ms; this project's 2-core AMD EPYC, AVX-512 without AMX). Any other
    input shape takes the ordinary convolution. Parameters and state-dict keys are those of the Conv2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (x.dim() != 4 or tuple(x.shape[-2:]) != tuple(w.shape[-2:]) or self.groups != 1
                or self.padding_mode != "zeros" or any(self.padding) or any(d != 1 for d in self.dilation)):
            return super().forward(x)
        if w.is_contiguous(memory_format=torch.channels_last):
            # NHWC weights: flatten both operands in (kh, kw, c) order, views rather than a weight copy
            y = F.linear(x.permute(0, 2, 3, 1).flatten(1), w.permute(0, 2, 3, 1).flatten(1), self.bias)
        else:
            y = F.linear(x.flatten(1), w.flatten(1), self.bias)
        return y[:, :, None, None]


def gemm_whole_input_convs(net: nn.Module, min_kernel: int = 2) -> nn.Module:
    """Make every plain ``nn.Conv2d`` of ``net`` without padding whose kernel is at least ``min_kernel``
    on a side a :class:`WholeInputConv2d` (in place: the class changes, the parameters stay); returns
    ``net``. Results are unchanged for every input; only a kernel that covers its input runs faster.
    The class is registered as one of timm's no-trace modules, so torch.fx traces through timm's leaf list
    (timm's feature extraction, :func:`advcam.explainers.network_after`) keep it whole, as they keep
    ``nn.Conv2d``: its test of the input's shape cannot be traced."""

    register_notrace_module(WholeInputConv2d)
    for m in net.modules():
        if type(m) is not nn.Conv2d or not isinstance(m.padding, tuple) or any(m.padding):
            continue
        if min(m.kernel_size) >= min_kernel and m.groups == 1:
            m.__class__ = WholeInputConv2d
    return net


_NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def _has_normalisation(net: nn.Module) -> bool:
    return any(isinstance(m, _NORM_LAYERS) for m in net.modules())


def fan_in_init(net: nn.Module) -> nn.Module:
    """He-normal init with fan-in (``kaiming_normal_(mode="fan_in", nonlinearity="relu")``) and zero bias
    for every ``nn.Conv2d`` of ``net``, in place; returns ``net``. Keeps activation variance through a deep
    ReLU stack without normalisation, where fan-out init shrinks it at every widening layer."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return net


def target_layer_name(arch: str, model: nn.Module | None = None, override: str | None = None) -> str:
    """The Grad-CAM layer for ``arch``: ``override`` if given, the paper's layer for a paper model,
    else the module of timm's last ``feature_info`` entry (needs ``model``)."""
    if override:
        return override
    if arch in PAPER_MODELS:
        return PAPER_MODELS[arch].layer
    for spec in PAPER_MODELS.values():
        if spec.timm_name == arch:
            return spec.layer
    net = getattr(model, "net", model)
    info = getattr(net, "feature_info", None)
    if not info:
        raise UnknownLayerError(f"model '{arch}' has no feature_info; give its Grad-CAM layer explicitly")
    last = info[-1] if isinstance(info, list) else info.get_dicts()[-1]
    return last["module"]


def resolve_layer(model: nn.Module, name: str | nn.Module) -> nn.Module:
    """The submodule called ``name`` of the wrapped network (names are relative to ``model.net``).

    Raises :class:`UnknownLayerError` listing close names when it does not exist.
    """
    if isinstance(name, nn.Module):
        return name
    net = getattr(model, "net", model)
    try:
        return net.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in net.named_modules() if n]
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        hint = f"; close names: {', '.join(close)}" if close else f"; top-level modules: {', '.join(n for n in names if '.' not in n)}"
        raise UnknownLayerError(f"layer '{name}' does not exist in {type(net).__name__}{hint}") from None


class frozen_parameters:
    """Context manager: parameters stop requiring grad inside (so autograd records only the paths
    through activations and inputs, and no parameter gradient is ever computed); restored on exit."""

    def __init__(self, model: nn.Module):
        self.model = model
        self._saved: list[tuple[nn.Parameter, bool]] = []

    def __enter__(self) -> nn.Module:
        self._saved = [(p, p.requires_grad) for p in self.model.parameters()]
        for p, _ in self._saved:
            p.requires_grad_(False)
        return self.model

    def __exit__(self, *exc) -> None:
        for p, flag in self._saved:
            p.requires_grad_(flag)
        self._saved = []


def relu_beta(model: nn.Module, beta: float) -> nn.Module:
    """A copy of ``model`` with every ``nn.ReLU`` module replaced by softplus(β·x)/β (``nn.Softplus(beta)``), the
    smooth network through which Dombrowski et al. (2019) differentiate an attack on an explanation: a ReLU
    network's second derivatives vanish almost everywhere, so Grad-CAM's weights give no gradient. The original
    is untouched (its weights are copied); judge every result on it. As β grows the copy tends to the original
    (``nn.Softplus`` is exactly linear where β·x > 20). Every ReLU of the five paper architectures in timm is an
    ``nn.ReLU`` module (counted against the functional calls of one forward); a functional ``F.relu`` elsewhere
    would stay a ReLU. ``beta`` > 0, else InputError."""
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta > 0:
        raise InputError(f"relu_beta: beta must be a number > 0, got {beta!r}")
    smooth = copy.deepcopy(model)
    for parent in list(smooth.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.ReLU:
                setattr(parent, name, nn.Softplus(beta=float(beta)))
    return smooth


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Context manager: ``model`` in eval mode inside (batch-norm running statistics, no dropout), its
    train/eval mode restored on exit whatever happens."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a model with neither)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA when available else CPU; otherwise ``torch.device(name)`` (checked to exist)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device '{name}' requested but CUDA is not available on this machine")
    return dev


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 128, amp: bool = False) -> torch.Tensor:
    """Logits (N,C) float32 on the CPU for images ``x`` (N,3,H,W) in [0,1] (or uint8), in batches on the
    model's device; the model is put in eval mode."""
    model.eval()
    dev = model_device(model)
    out = []
    for _, xb in batches(x, batch_size, dev):
        if amp:
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                out.append(model(xb).float().cpu())
        else:
            out.append(model(xb).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


def to_tensor_images(images) -> torch.Tensor:
    """(N,H,W,3) uint8 array → (N,3,H,W) uint8 tensor (no copy of the pixels beyond the permute)."""
    t = torch.as_tensor(images)
    if t.ndim != 4 or t.shape[-1] != 3:
        raise InputError(f"images must have shape (N,H,W,3), got {tuple(t.shape)}")
    return t.permute(0, 3, 1, 2).contiguous()
