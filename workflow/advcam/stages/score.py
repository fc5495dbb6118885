"""The score stage: every measure of each clean/adversarial heatmap pair, one row per test image."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..atomic import atomic_path
from ..errors import InputError
from ..io.heatmap_file import method_of, read_pairs, require_finite
from ..io.store import read_attrs, read_h5
from ..localisation import mask_fraction
from ..measures import localise, measure_fns, score_maps
from ..references import derangement
from ..settings import ScoreSettings
from ..similarity import topk_count

__all__ = ["score"]


def _store_masks(data: str | os.PathLike | None) -> np.ndarray | None:
    """The part masks (N,H,W) of the prepared store ``data``, or None when there is no store or it has none."""
    if data is None:
        return None

    if not read_attrs(data).get("masks"):
        return None
    return read_h5(data, ["masks"])["masks"]


@dataclass
class _Clean:
    """One clean heatmap file, read and checked once: its attributes and datasets, the maps on the scoring
    device, and with part masks the masks of its images and where its maps lie against them."""

    attrs: dict
    data: dict
    maps: torch.Tensor
    masks: torch.Tensor | None
    loc: dict[str, np.ndarray] | None
    mask_frac: np.ndarray | None


def score(
    clean: Sequence[str | os.PathLike],
    adv: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    settings: ScoreSettings = ScoreSettings(),
    *,
    data: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
):
    """Read the heatmap files of one model (``clean``: one per CAM method; ``adv``: one per method for each
    attack and ε, or transfer source), score every pair and write the per-image CSV ``out`` atomically.

    ``settings``: the measures besides SSIM/NISSIM, top-k's k, the SSIM window and ``chance_seed`` (add the
    chance rows, attack ``chance``, ε 0, when not None). ``data``: the prepared store, whose part masks (when it
    has them) give the localisation columns. Returns the table (a DataFrame)."""
    measures, k, gaussian, chance_seed = settings.measures, settings.topk, settings.ssim == "gaussian", settings.chance_seed
    fns = measure_fns(measures, k)
    store_masks = _store_masks(data)
    cleans: dict[str, _Clean] = {}

    def clean_of(path, attrs=None, c=None) -> _Clean:
        """The clean file at ``path`` (its attributes and datasets as read_pairs read them, else read here)."""
        if str(path) not in cleans:
            if c is None:
                attrs, c = read_attrs(path), read_h5(path)
            require_finite(path, "heatmaps", c["maps"])
            maps = torch.as_tensor(c["maps"]).to(device)
            masks = loc = frac = None
            if store_masks is not None:
                if c["index"].max(initial=-1) >= len(store_masks):
                    raise InputError(f"{data}: the heatmaps name test images the store does not have; rerun the study on it")
                masks = torch.as_tensor(store_masks[c["index"]]).to(device)
                loc, frac = localise(maps, masks), mask_fraction(masks).cpu().numpy()
            cleans[str(path)] = _Clean(attrs, c, maps, masks, loc, frac)
        return cleans[str(path)]

    def frame(attrs, method, cl: _Clean, adv_maps, pred_adv, zero_adv, a=None):
        c = cl.data
        scores = score_maps(cl.maps, adv_maps, fns, gaussian)
        if cl.masks is not None:
            la = localise(adv_maps, cl.masks)
            scores.update({"energy_clean": cl.loc["energy"], "energy_adv": la["energy"], "point_clean": cl.loc["point"],
                           "point_adv": la["point"], "mask_frac": cl.mask_frac})
        cols = {
            "model": attrs.get("model"), "replicate": int(attrs.get("replicate", 0)), "source_model": attrs.get("source_model") or attrs.get("model"), "cam": method,
            "attack": attrs.get("attack"), "eps": float(attrs.get("eps")), "norm": attrs.get("norm", "Linf"),
            "index": c["index"], "label": c["labels"], "pred_clean": c["pred"], "pred_adv": pred_adv, **scores,
            "zero_cam_clean": c["zero_cam"], "zero_cam_adv": zero_adv,
            # the clean image's gradient–image alignment (Etmann et al. 2019; clean files written before it: NaN)
            "alignment": c["alignment"] if "alignment" in c else np.nan,
            "zero_grad": a["zero_grad"] if a is not None and "zero_grad" in a else False,
            "targeted": attrs.get("targeted", "none"),
            "attack_target": a["attack_target"] if a is not None and "attack_target" in a else -1,
            "target_mode": attrs.get("target_mode"), "ssim_mode": "gaussian" if gaussian else "uniform",
            # each image's ‖x′ − x‖₂ and ‖x′ − x‖∞ on the [0,1] scale (files written before these existed: NaN)
            **{k: a[k] if a is not None and k in a else np.nan for k in ("delta_l2", "delta_linf")},
        }
        if "topk" in scores:
            cols["topk_k"] = topk_count(k, *c["maps"].shape[1:])
        return pd.DataFrame(cols)

    frames = []
    for pair in read_pairs(clean, adv):
        cl = clean_of(pair.clean_path, pair.clean_attrs, pair.clean)
        a = pair.adv
        require_finite(pair.adv_path, "heatmaps", a["maps"])
        frames.append(frame(pair.adv_attrs, pair.method, cl, torch.as_tensor(a["maps"]).to(device), a["pred"],
                            a["zero_cam"], a))
    if chance_seed is not None:
        for p in clean:
            cl = clean_of(p)
            c, perm = cl.data, derangement(len(cl.data["index"]), chance_seed)
            attrs = {**cl.attrs, "attack": "chance", "eps": 0.0, "norm": "none", "targeted": "none",
                     "source_model": cl.attrs.get("model")}
            f = frame(attrs, method_of(cl.attrs), cl, cl.maps[torch.as_tensor(perm, device=cl.maps.device)],
                      c["pred"][perm], c["zero_cam"][perm])
            frames.append(f.assign(partner=c["index"][perm]))
    df = pd.concat(frames, ignore_index=True)
    with atomic_path(out) as tmp:
        df.to_csv(tmp, index=False, float_format="%.9g")
    return df
