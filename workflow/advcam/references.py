"""Reference levels for a dissimilarity between explanations.

The noise control (random-sign perturbation of the same ε) is the lower reference: what the measure reads
when the image changes but no attack steers it. The upper one is *chance*: the measure between the clean
maps of two different test images, paired by a fixed, seeded derangement of the test set
(:func:`derangement`) — what it reads when the two explanations have nothing to do with each other.
:func:`relative_mod` places a MOD between the two.
"""
from __future__ import annotations

import numpy as np

from .errors import InputError

__all__ = ["derangement", "relative_mod"]


def derangement(n: int, seed: int = 0) -> np.ndarray:
    """A seeded permutation of ``range(n)`` that moves every element (π(i) ≠ i for all i): Sattolo's
    algorithm, a uniformly drawn cyclic permutation, so image i is compared with image π(i) and every image
    serves once as a partner. (n,) int64; ValueError for n < 2 (one image has no other to be paired with)."""
    if isinstance(n, bool) or int(n) != n or n < 2:
        raise InputError(f"a derangement needs n ≥ 2 items, got n={n!r}")
    rng = np.random.default_rng(seed)
    p = np.arange(int(n), dtype=np.int64)
    for i in range(int(n) - 1, 0, -1):
        j = int(rng.integers(0, i))  # j < i: never i itself, which makes the permutation one n-cycle
        p[i], p[j] = p[j], p[i]
    return p


def relative_mod(mod: np.ndarray | float, noise: np.ndarray | float, chance: np.ndarray | float) -> np.ndarray:
    """(MOD − noise MOD) / (chance MOD − noise MOD): 0 = no more than the noise control of the same ε moves the
    maps, 1 = as far apart as the maps of two unrelated images. NaN where a reference is missing or the two
    references coincide."""
    mod, noise, chance = (np.asarray(v, float) for v in (mod, noise, chance))
    span = chance - noise
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(span != 0, (mod - noise) / span, np.nan)
