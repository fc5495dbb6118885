"""Attack files: what the attack stage writes and the explain and transfer stages read back."""
from __future__ import annotations

import os

import h5py
import torch

from ..errors import InputError
from .store import StoreError, read_h5

__all__ = ["h5_keys", "stored_perturbation"]


def h5_keys(path: str | os.PathLike) -> list[str]:


    try:
        with h5py.File(path, "r") as f:
            return list(f.keys())
    except OSError as e:
        raise StoreError(f"{path}: not a readable HDF5 file ({e})") from e


def stored_perturbation(attack: str, sign_file: str | os.PathLike | None, attack_file: str | os.PathLike | None, n: int,
                        targeted: bool = False):
    """What :func:`advcam.attacks.perturb` needs to rebuild ``n`` test images' attack from files: (sign (N,3,H,W)
    or None, delta (N,3,H,W) float32 or None, zero_grad (N,) bool or None). The perturbation itself when the
    attack file has one (the iterative and the targeted attacks), else, for untargeted FGSM, the gradient
    sign file's sign; the noise control needs neither."""

    if attack_file and "delta" in h5_keys(attack_file):
        return None, torch.as_tensor(read_h5(attack_file, ["delta"])["delta"]), None
    sign = zero = None
    if attack == "fgsm" and not targeted:
        if not sign_file:
            raise InputError("--sign is required for --attack fgsm")
        d = read_h5(sign_file, ["sign", "zero_grad"])
        sign, zero = torch.as_tensor(d["sign"]), d["zero_grad"]
        if sign.shape[0] != n:
            raise InputError(f"{sign_file}: has {sign.shape[0]} signs for {n} test images; rerun 'advcam gradient'")
    return sign, None, zero
