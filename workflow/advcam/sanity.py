"""Model-parameter randomisation test (Adebayo et al. 2018, *Sanity Checks for Saliency Maps*, cascading).

An explanation that is to testify about a model must depend on the model's weights. Starting from the
trained network, the blocks are re-initialised from the output down, one more per step — the classifier
head first, then each stage of the backbone (timm's ``feature_info`` stages: ResNet's layer4 … layer1 and
stem) — and each step's maps of the same test images (explaining the same classes as the trained model)
are compared with the trained model's, by Spearman rank correlation and NISSIM. Maps that hardly move
while the weights are destroyed say nothing about those weights.

Re-initialisation is each layer's own default (``reset_parameters``: PyTorch's init for convolutions and
linear layers; a batch norm returns to weight 1, bias 0, running mean 0 and variance 1), drawn from one
seeded generator, so a step is reproducible.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import nn

from .errors import InputError
from .explainers import explain_cams
from .settings import AttributionSettings

__all__ = ["randomisation_blocks", "reinitialise", "cascading_randomisation", "flag"]


def _own_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters(recurse=False))


def randomisation_blocks(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """The network's parameterised layers grouped into blocks, from the output down: ``head`` (everything
    after the last feature stage), then one block per timm ``feature_info`` stage, named after the module
    that ends it (ResNet50: head, layer4, layer3, layer2, layer1, act1). Blocks without parameters (a
    stage that ends in a pooling layer) are left out. ValueError for a network without ``feature_info``."""
    net = getattr(model, "net", model)
    info = getattr(net, "feature_info", None)
    if not info:
        raise InputError(f"{type(net).__name__} has no feature_info: its stages cannot be told apart")
    bounds = [d["module"] for d in (info if isinstance(info, list) else info.get_dicts())]
    names = [n for n, _ in net.named_modules()]
    # where each stage ends in definition order (timm defines its modules in forward order): its module's last
    # descendant
    ends = []
    for b in bounds:
        inside = [i for i, n in enumerate(names) if n == b or n.startswith(b + ".")]
        if not inside:
            raise InputError(f"feature_info names '{b}', which {type(net).__name__} does not have")
        ends.append(max(inside))
    blocks: dict[str, list[nn.Module]] = {b: [] for b in ["head", *reversed(bounds)]}
    for i, (n, m) in enumerate(net.named_modules()):
        if not _own_params(m):
            continue
        stage = next((b for b, e in zip(bounds, ends) if i <= e), "head")
        blocks[stage].append(m)
    return [(b, ms) for b, ms in blocks.items() if ms]


def reinitialise(modules: Sequence[nn.Module]) -> None:
    """Reset every module to its default initialisation (``reset_parameters``, in place; with the global
    torch generator). ValueError naming a module that holds parameters but has no such method."""
    for m in modules:
        if not hasattr(m, "reset_parameters"):
            raise InputError(f"cannot re-initialise {type(m).__name__}: it has no reset_parameters")
        m.reset_parameters()
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
            m.reset_running_stats()


def cascading_randomisation(
    model: nn.Module,
    layer: str | nn.Module,
    x: torch.Tensor,
    methods: Sequence[str],
    target: torch.Tensor,
    seed: int = 0,
    batch_size: int = 64,
    attribution: AttributionSettings | None = None,
    index: Sequence[int] | None = None,
) -> Iterator[tuple[int, str, dict[str, torch.Tensor]]]:
    """Yield (number of randomised blocks, the block just randomised, {method: maps (N,H,W) in [0,1]}) for the
    trained model (0, ``"none"``) and after each further block of :func:`randomisation_blocks`, from the
    output down. ``x`` (N,3,H,W) in [0,1] or uint8; ``target`` (N,) the classes explained at every step.
    Changes ``model`` in place (its weights are gone afterwards). ``methods``: any explainers
    (:func:`advcam.explainers.explain_cams`, with ``attribution`` and the images' store positions ``index``: a
    smoothgrad map draws the same noise at every step)."""

    blocks = randomisation_blocks(model)
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for step in range(len(blocks) + 1):
            if step:
                reinitialise(blocks[step - 1][1])
            outs = explain_cams(model, layer, x, list(methods), target, batch_size, attribution=attribution, index=index)
            yield step, "none" if step == 0 else blocks[step - 1][0], {m: o.maps for m, o in outs.items()}
    finally:
        torch.random.set_rng_state(gen_state)


def flag(spearman_head: float, spearman_all: float, threshold: float = 0.5, spearman_chance: float = float("-inf")) -> str:
    """The sanity verdict of one (model, method) from the mean Spearman correlation with the trained maps
    after randomising the head only and after randomising every block (a map that became constant has no
    ranks and counts 0 here). A correlation counts as "hardly moved" when it is at least ``threshold`` and at
    least ``spearman_chance``, the correlation between the trained model's maps of two different test images:
    on aligned faces two images' maps already agree (0.55–0.78 on the default's ResNets), and maps that moved
    no further than that under randomisation did not move for the weights. ``"ignores weights"`` when even the
    fully randomised model's maps hardly moved (Adebayo et al.'s failure), ``"ignores head"`` when the head
    alone hardly moves them (the map does not depend on the classifier, e.g. EigenCAM, which never looks past
    its layer), else ``"ok"``."""
    floor = max(threshold, spearman_chance)
    if spearman_all >= floor:
        return "ignores weights"
    if spearman_head >= floor:
        return "ignores head"
    return "ok"


