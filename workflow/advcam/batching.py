"""The one batch loop of every stage: slices of a test set, moved to a device and scaled to [0, 1].

Images are kept as uint8 (N,3,H,W) until their batch is needed: a batch is sliced, moved to the device, and only
then converted to float32 in [0, 1] (x / 255), so the whole set never sits in memory as float.
"""
from __future__ import annotations

from typing import Iterator

import torch
from tqdm import tqdm

from .errors import InputError

__all__ = ["batches"]


def batches(
    x: torch.Tensor,
    batch_size: int,
    device: str | torch.device | None = None,
    *,
    progress: str | None = None,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """``(sl, xb)`` for consecutive batches of ``x`` (N,3,H,W), uint8 in [0, 255] or float in [0, 1]:
    ``sl`` the batch's slice of the N images, ``xb = x[sl]`` on ``device`` (None: where ``x`` is) as float
    in [0, 1] (uint8 divided by 255 after the move; float passed as is). ``progress``: a tqdm bar with
    this label. InputError when ``batch_size`` < 1."""
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise InputError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    starts = range(0, x.shape[0], int(batch_size))
    for s in tqdm(starts, desc=progress, unit="batch") if progress else starts:
        sl = slice(s, s + int(batch_size))
        xb = x[sl] if device is None else x[sl].to(device, non_blocking=True)
        yield sl, (xb.float().div_(255) if xb.dtype == torch.uint8 else xb)
