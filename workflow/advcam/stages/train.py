"""The train stage: a prepared store in, a checkpoint and its train.json out."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch

from .._version import __version__
from ..datasets import load_prepared
from ..io.checkpoint import save_checkpoint
from ..io.store import write_json
from ..models import build_model, predict, resolve_layer, target_layer_name, timm_name, to_tensor_images
from ..precision import choose_precision, probe_batch_for
from ..train import TrainResult, accuracy, log_epoch, replicate_seed, train_model
from .runtime import log_runtime

__all__ = ["run_training"]


def run_training(
    data: str | os.PathLike,
    out: str | os.PathLike,
    arch: str,
    *,
    report: str | os.PathLike | None = None,
    layer: str | None = None,
    pretrained: bool = False,
    pretrained_file: str | None = None,
    amp: str = "auto",
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 1e-3,
    optimizer: str = "adamw",
    weight_decay: float = 0.05,
    warmup_epochs: float = 1.0,
    label_smoothing: float = 0.1,
    seed: int = 0,
    replicate: int = 0,
    name: str | None = None,
    augment_strength: float = 1.0,
    pixel_noise: float = 0.0,
    pixel_noise_from: int = 1,
    device: str | torch.device = "cpu",
    progress: bool = True,
    meta: Mapping[str, str] | None = None,
) -> tuple[TrainResult, dict[str, Any]]:
    """The train stage: fine-tune ``arch`` (a paper alias or a timm name; ImageNet weights with ``pretrained``
    or from ``pretrained_file``) on the prepared store ``data`` with :func:`train_model`, save the best epoch's
    checkpoint to ``out`` and the report (settings, precision, history, test accuracy) to ``report`` (default
    ``train.json`` beside it). ``layer``: the CAM layer to record (default: the paper's, else timm's last
    feature stage), checked before training. ``amp``: "auto" (chosen for the machine), "on" or "off".
    ``replicate``: which training run of this model it is (0, 1, …); it trains with
    :func:`replicate_seed` (``seed``, ``replicate``) on the same split, and the checkpoint, train.json and every
    output made from the checkpoint record it. ``name``: the study's name for the model (default ``arch``),
    recorded as ``model``. Returns the result and the checkpoint's metadata."""

    dev = torch.device(device)
    ds = load_prepared(data)
    size = int(ds.images.shape[1])
    train_seed = replicate_seed(seed, replicate)
    torch.manual_seed(train_seed)
    model = build_model(arch, len(ds.identities), pretrained=pretrained, pretrained_file=pretrained_file)
    layer = target_layer_name(arch, model, layer)
    resolve_layer(model, layer)  # fail before training on a bad layer name
    model.to(dev)
    # the probe draws its own random images: the training's random stream is untouched
    precision = choose_precision(model, dev, size, {"auto": None, "on": True, "off": False}[amp],
                                 probe_batch=probe_batch_for(batch_size))
    log_runtime(dev, precision.describe())
    xt, yt, _ = ds.subset("train")
    xv, yv, _ = ds.subset("val")
    xs, ys, _ = ds.subset("test")
    # the training settings, passed to train_model and recorded as they are in train.json
    settings = {
        "epochs": epochs, "batch_size": batch_size, "lr": lr, "optimizer": optimizer, "weight_decay": weight_decay,
        "warmup_epochs": warmup_epochs, "label_smoothing": label_smoothing, "seed": train_seed,
        "augment_strength": augment_strength, "pixel_noise": pixel_noise, "pixel_noise_from": pixel_noise_from,
    }
    res = train_model(
        model, to_tensor_images(xt), torch.as_tensor(yt), to_tensor_images(xv), torch.as_tensor(yv), **settings,
        precision=precision, progress=progress, on_epoch=lambda rec: log_epoch(rec, epochs),
    )
    test_acc = accuracy(predict(model, to_tensor_images(xs)), torch.as_tensor(ys))
    info = {"model": name or arch, "arch": arch, "timm_name": timm_name(arch), "num_classes": len(ds.identities), "identities": ds.identities,
            "input_size": size, "layer": layer, "pretrained": bool(pretrained or pretrained_file),
            "replicate": int(replicate), "config_seed": int(seed), "train_seed": train_seed,
            "best_epoch": res.best_epoch, "val_acc": res.best_val_acc, "test_acc": test_acc, "data": str(data),
            "advcam_version": __version__, **dict(meta or {})}
    save_checkpoint(out, model, info)
    write_json(report or Path(out).with_name("train.json"), {
        **info, "device": str(dev), **settings, "amp": amp, "precision": precision.as_dict(), "seconds": res.seconds,
        "train_images_per_second": res.images_per_second, "history": res.history,
    })
    return res, info
