"""Localisation of a map against a ground-truth region: does the explanation point at where the identity is?

On the synthetic faces every image comes with a part mask (eyes, brows, nose, mouth: where the identities
differ); :func:`energy_in_mask` and :func:`pointing_game` score a clean or an adversarial map against it.
Both are batched over (N,H,W) tensors and return (N,) float64.

* Energy-based pointing game (Wang et al. 2020, *Score-CAM*, §5.2): the share of the map's mass inside the
  region, Σ_mask L / Σ L. A map spread evenly scores the region's area fraction (:func:`mask_fraction`),
  the level that says "no localisation".
* Pointing game (Zhang et al. 2016, *Top-down neural attention by excitation backprop*): 1 when the map's
  maximum lies inside the region, else 0 — here without the original's 15-pixel tolerance, and with ties
  broken by the lowest flat (row-major) index, as ``torch.argmax`` does.

An all-zero map has neither mass nor a maximum: NaN, to be counted, never dropped.
"""
from __future__ import annotations

import torch

from .errors import InputError

__all__ = ["energy_in_mask", "pointing_game", "mask_fraction"]


def _check(maps: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    maps, masks = torch.as_tensor(maps), torch.as_tensor(masks)
    if maps.ndim == 2:
        maps, masks = maps[None], masks[None] if masks.ndim == 2 else masks
    if maps.ndim != 3:
        raise InputError(f"maps must have shape (N,H,W) or (H,W), got {tuple(maps.shape)}")
    if masks.shape != maps.shape:
        raise InputError(f"masks must have the maps' shape {tuple(maps.shape)}, got {tuple(masks.shape)}")
    if maps.is_floating_point() and not bool(torch.isfinite(maps).all()):
        raise InputError("maps hold NaN or infinite values")
    if bool((maps < 0).any()):
        raise InputError("maps must be non-negative (a share of the map's mass needs non-negative mass)")
    return maps.double(), masks != 0


def energy_in_mask(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Share of each map's mass inside its mask: Σ maps·[mask] / Σ maps.

    maps : (N,H,W) (or (H,W)) finite, non-negative (e.g. CAMs in [0,1]). masks : same shape, any dtype;
    nonzero = inside the region. Returns (N,) float64 in [0, 1]; NaN where a map sums to zero."""
    m, r = _check(maps, masks)
    total = m.sum(dim=(1, 2))
    inside = (m * r).sum(dim=(1, 2))
    return torch.where(total > 0, inside / total, torch.full_like(total, float("nan")))


def pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """1.0 where each map's maximum (first in row-major order among equal ones) lies inside its mask, 0.0
    where it lies outside, NaN where the map is all zero (it points nowhere).

    maps, masks : as in :func:`energy_in_mask`. Returns (N,) float64."""
    m, r = _check(maps, masks)
    flat = m.flatten(1)
    hit = r.flatten(1).gather(1, flat.argmax(1, keepdim=True))[:, 0].double()
    return torch.where(flat.amax(1) > 0, hit, torch.full_like(hit, float("nan")))


def mask_fraction(masks: torch.Tensor) -> torch.Tensor:
    """Share of the pixels inside each mask (N,H,W) → (N,) float64: the energy a uniform map puts in it."""
    masks = torch.as_tensor(masks)
    if masks.ndim == 2:
        masks = masks[None]
    return (masks != 0).flatten(1).double().mean(1)
