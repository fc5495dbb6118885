"""The sanity stage: cascading model-parameter randomisation of a few test images, one table per method."""
from __future__ import annotations

import os
from typing import Mapping

import numpy as np
import pandas as pd
import torch

from ..atomic import atomic_path
from ..errors import InputError
from ..explainers import check_methods
from ..settings import AttributionSettings
from ..models import predict
from ..references import derangement
from ..sanity import cascading_randomisation
from ..similarity import nissim, spearman
from .runtime import load_for_inference, replicate_of, test_set

__all__ = ["run_sanity"]


def run_sanity(
    model_path: str | os.PathLike,
    data: str | os.PathLike,
    out: Mapping[str, str | os.PathLike],
    *,
    images: int = 16,
    seed: int = 0,
    target_mode: str = "predicted",
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    name: str | None = None,
    attribution: AttributionSettings = AttributionSettings(),
):
    """The sanity stage: ``images`` test images of the store ``data`` (a seeded draw, at most the whole test
    set) explained by the checkpoint ``model_path`` at every step of :func:`cascading_randomisation`, each
    step compared with the trained model's maps. ``out``: {CAM method: CSV path}; each method's per-image table
    is written atomically to its path (model, replicate, cam, blocks (how many randomised), block (the last one), index,
    spearman, nissim, zero_cam, and the chance level on the same images — spearman_chance and nissim_chance
    between the trained maps of the image and of its partner in a seeded derangement). ``attribution``: the
    gradient attributions' parameters. Returns all of them in one table."""


    methods = check_methods(list(out))
    if images < 2:
        raise InputError(f"images: the sanity check needs at least 2 test images, got {images}")
    model, meta = load_for_inference(model_path, torch.device(device))
    _, x, y, idx = test_set(data)
    pick = np.sort(np.random.default_rng(seed).choice(len(idx), size=min(images, len(idx)), replace=False))
    x, y, idx = x[pick], y[pick], idx[pick]
    layer = meta["layer"]
    target = predict(model, x, batch_size).argmax(1) if target_mode == "predicted" else y
    perm = torch.as_tensor(derangement(len(idx), seed))
    rows, trained, chance = [], None, {}
    for step, block, maps in cascading_randomisation(model, layer, x, methods, target, seed, batch_size, attribution,
                                                     idx):
        if trained is None:
            trained = maps
            chance = {m: {"spearman_chance": spearman(maps[m], maps[m][perm]).numpy(),
                          "nissim_chance": nissim(maps[m], maps[m][perm]).numpy()} for m in methods}
        for m in methods:
            rows.append(pd.DataFrame({
                "model": name or meta.get("arch"), "replicate": replicate_of(meta), "cam": m, "blocks": step, "block": block, "index": idx,
                "spearman": spearman(trained[m], maps[m]).numpy(), "nissim": nissim(trained[m], maps[m]).numpy(),
                "zero_cam": (maps[m].flatten(1).amax(1) == 0).numpy(), **chance[m],
            }))
    df = pd.concat(rows, ignore_index=True)
    for m, path in out.items():
        with atomic_path(path) as tmp:
            df[df["cam"] == m].to_csv(tmp, index=False, float_format="%.9g")
    return df
