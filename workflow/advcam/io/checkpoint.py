"""Checkpoint files: a model's weights and what the study knows of it, loadable without running any pickle."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_path
from ..errors import InputError
from ..models import Normalized, build_model

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint"]


class CheckpointError(InputError):
    """A file that is not a loadable, weights-only advcam checkpoint (foreign pickle, truncated file,
    another program's weights, weights of another architecture)."""


def save_checkpoint(path: str | os.PathLike, model: Normalized, meta: dict[str, Any]) -> None:
    """Save the state dict and ``meta`` (arch, num_classes, input_size, layer, mean/std, accuracies, …)
    atomically; loadable with ``torch.load(weights_only=True)``."""
    meta = dict(meta)
    meta.setdefault("mean", [float(v) for v in model.mean.flatten()])
    meta.setdefault("std", [float(v) for v in model.std.flatten()])
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"state_dict": state, "meta": meta}, tmp)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Normalized, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint`; returns (model in eval mode on ``device``, meta)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist")
    try:
        # weights_only: a pickle that would run code (or build foreign objects) is refused, never executed
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError, … by case
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint '{path}' is not a weights-only advcam checkpoint (torch.load refused it: "
                              f"{first[:200]})") from None
    if not (isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict) and isinstance(ckpt.get("meta"), dict)
            and {"arch", "num_classes"} <= set(ckpt["meta"])):
        keys = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"checkpoint '{path}' is not an advcam checkpoint (expected 'state_dict' and 'meta' with "
                              f"'arch' and 'num_classes'; found {keys})")
    meta = ckpt["meta"]
    # build on the meta device (no random initialisation to pay for), then take the stored tensors
    with torch.device("meta"):
        model = build_model(meta["arch"], int(meta["num_classes"]))
    try:
        model.load_state_dict(ckpt["state_dict"], assign=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint '{path}': its weights do not fit {meta['arch']} with {meta['num_classes']} "
                              f"classes ({str(e).splitlines()[0][:200]})") from None
    return model.to(device).eval(), meta
