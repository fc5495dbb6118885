"""The score stage: a per-image table of how far each adversarial map moved from its clean one.

For each clean/adversarial pair of heatmap files of one model (one CAM method, one attack and ε): SSIM and
NISSIM = (1 − SSIM)/2 (:mod:`advcam.similarity`), the other dissimilarity measures asked for (Spearman,
top-k intersection, centre-of-mass shift), and, when the test images have part masks, how much of each
map lies on the face parts (:mod:`advcam.localisation`, clean and adversarial). With a chance seed the
table also gets the upper reference, attack ``chance`` (ε 0): every measure between the clean maps of
image i and of image π(i), π a seeded derangement of the test set (:func:`advcam.references.derangement`);
its ``pred_adv`` is the partner's prediction and its ``adv`` localisation the partner's map on image i's
mask.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

__all__ = ["MEASURES", "LOCALISATION", "measure_fns", "score_maps", "localise", "score"]

#: measures the score stage can add beside SSIM/NISSIM (score-table column → what it is)
MEASURES = {
    "spearman": "Spearman rank correlation of the two maps' pixels (1 = same order)",
    "topk": "share of the clean map's top-k pixels among the adversarial map's top-k",
    "com_shift": "distance in pixels between the maps' centres of mass (NaN for an all-zero map)",
}
#: localisation columns, present when the test images have part masks
LOCALISATION = {
    "energy_clean": "share of the clean map's mass on the face parts (energy-based pointing game)",
    "energy_adv": "the same for the adversarial map",
    "point_clean": "1 when the clean map's maximum lies on a face part (pointing game), else 0",
    "point_adv": "the same for the adversarial map",
    "mask_frac": "share of the image the face parts cover: the energy of a uniform map",
}


def measure_fns(measures: Sequence[str], k: int | float) -> dict[str, Callable]:
    """The functions of ``measures`` (keys of :data:`MEASURES`), each (N,H,W), (N,H,W) → (N,) float64."""
    from .similarity import com_shift, spearman, topk_intersection

    fns = {"spearman": spearman, "topk": lambda x, y: topk_intersection(x, y, k), "com_shift": com_shift}
    unknown = [m for m in measures if m not in fns]
    if unknown:
        raise ValueError(f"unknown measure(s) {', '.join(unknown)}; known: {', '.join(fns)}")
    return {m: fns[m] for m in dict.fromkeys(measures)}


def score_maps(
    clean: torch.Tensor,
    adv: torch.Tensor,
    fns: Mapping[str, Callable],
    gaussian: bool = False,
) -> dict[str, np.ndarray]:
    """The dissimilarity of each pair of maps: ``ssim``, ``nissim`` and one column per function of ``fns``
    (:func:`measure_fns`). clean, adv : (N,H,W) maps in [0,1]. Returns {column: (N,) float64 array}."""
    from .similarity import ssim

    s = ssim(clean, adv, gaussian=gaussian).cpu().numpy()
    out = {"ssim": s, "nissim": (1 - s) / 2}
    out.update({m: fn(clean, adv).cpu().numpy() for m, fn in fns.items()})
    return out


def localise(maps: torch.Tensor, masks: torch.Tensor) -> dict[str, np.ndarray]:
    """Where each map lies against its mask: ``energy`` (share of its mass inside) and ``point`` (1 where its
    maximum is inside). maps : (N,H,W) in [0,1]; masks : (N,H,W), nonzero on the region (the face parts).
    ValueError when their shapes differ."""
    from .localisation import energy_in_mask, pointing_game

    if tuple(masks.shape) != tuple(maps.shape):
        raise ValueError(f"part masks are {tuple(masks.shape[1:])}, the maps {tuple(maps.shape[1:])}")
    return {"energy": energy_in_mask(maps, masks).cpu().numpy(), "point": pointing_game(maps, masks).cpu().numpy()}


def _store_masks(data: str | os.PathLike | None) -> np.ndarray | None:
    """The part masks (N,H,W) of the prepared store ``data``, or None when there is no store or it has none."""
    if data is None:
        return None
    from .store import read_attrs, read_h5

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
    measures: Sequence[str] = tuple(MEASURES),
    k: int | float = 0.1,
    gaussian: bool = False,
    data: str | os.PathLike | None = None,
    chance_seed: int | None = None,
    device: str | torch.device = "cpu",
):
    """Read the heatmap files of one model (``clean``: one per CAM method; ``adv``: one per method for each
    attack and ε, or transfer source), score every pair and write the per-image CSV ``out`` atomically.

    ``data``: the prepared store, whose part masks (when it has them) give the localisation columns.
    ``chance_seed``: add the chance rows (attack ``chance``, ε 0). Returns the table (a DataFrame)."""
    import pandas as pd

    from .heatmaps import method_of, read_pairs, require_finite
    from .localisation import mask_fraction
    from .references import derangement
    from .similarity import topk_count
    from .store import atomic_path, read_attrs, read_h5

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
                    raise ValueError(f"{data}: the heatmaps name test images the store does not have; rerun the study on it")
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
            "attack": attrs.get("attack"), "eps": float(attrs.get("eps")),
            "index": c["index"], "label": c["labels"], "pred_clean": c["pred"], "pred_adv": pred_adv, **scores,
            "zero_cam_clean": c["zero_cam"], "zero_cam_adv": zero_adv,
            "zero_grad": a["zero_grad"] if a is not None and "zero_grad" in a else False,
            "targeted": attrs.get("targeted", "none"),
            "attack_target": a["attack_target"] if a is not None and "attack_target" in a else -1,
            "target_mode": attrs.get("target_mode"), "ssim_mode": "gaussian" if gaussian else "uniform",
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
            attrs = {**cl.attrs, "attack": "chance", "eps": 0.0, "targeted": "none", "source_model": cl.attrs.get("model")}
            f = frame(attrs, method_of(cl.attrs), cl, cl.maps[torch.as_tensor(perm, device=cl.maps.device)],
                      c["pred"][perm], c["zero_cam"][perm])
            frames.append(f.assign(partner=c["index"][perm]))
    df = pd.concat(frames, ignore_index=True)
    with atomic_path(out) as tmp:
        df.to_csv(tmp, index=False, float_format="%.9g")
    return df
