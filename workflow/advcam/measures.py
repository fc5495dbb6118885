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

from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from .errors import InputError
from .localisation import energy_in_mask, pointing_game
from .settings import SCORE_MEASURES
from .similarity import com_shift, spearman, ssim, topk_intersection

__all__ = ["MEASURES", "LOCALISATION", "measure_fns", "score_maps", "localise"]

#: measures the score stage can add beside SSIM/NISSIM (score-table column → what it is)
MEASURES = {
    "spearman": "Spearman rank correlation of the two maps' pixels (1 = same order)",
    "topk": "share of the clean map's top-k pixels among the adversarial map's top-k",
    "com_shift": "distance in pixels between the maps' centres of mass (NaN for an all-zero map)",
}
assert tuple(MEASURES) == SCORE_MEASURES, "advcam.settings.SCORE_MEASURES names these measures, in this order"
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

    fns = {"spearman": spearman, "topk": lambda x, y: topk_intersection(x, y, k), "com_shift": com_shift}
    unknown = [m for m in measures if m not in fns]
    if unknown:
        raise InputError(f"unknown measure(s) {', '.join(unknown)}; known: {', '.join(fns)}")
    return {m: fns[m] for m in dict.fromkeys(measures)}


def score_maps(
    clean: torch.Tensor,
    adv: torch.Tensor,
    fns: Mapping[str, Callable],
    gaussian: bool = False,
) -> dict[str, np.ndarray]:
    """The dissimilarity of each pair of maps: ``ssim``, ``nissim`` and one column per function of ``fns``
    (:func:`measure_fns`). clean, adv : (N,H,W) maps in [0,1]. Returns {column: (N,) float64 array}."""

    s = ssim(clean, adv, gaussian=gaussian).cpu().numpy()
    out = {"ssim": s, "nissim": (1 - s) / 2}
    out.update({m: fn(clean, adv).cpu().numpy() for m, fn in fns.items()})
    return out


def localise(maps: torch.Tensor, masks: torch.Tensor) -> dict[str, np.ndarray]:
    """Where each map lies against its mask: ``energy`` (share of its mass inside) and ``point`` (1 where its
    maximum is inside). maps : (N,H,W) in [0,1]; masks : (N,H,W), nonzero on the region (the face parts).
    ValueError when their shapes differ."""

    if tuple(masks.shape) != tuple(maps.shape):
        raise InputError(f"part masks are {tuple(masks.shape[1:])}, the maps {tuple(maps.shape[1:])}")
    return {"energy": energy_in_mask(maps, masks).cpu().numpy(), "point": pointing_game(maps, masks).cpu().numpy()}


