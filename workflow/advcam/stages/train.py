"""The train stage: a prepared store in, a checkpoint and its train.json out."""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

import torch

from .._version import __version__
from ..adversarial_training import robust_accuracy
from ..datasets import load_prepared
from ..io.checkpoint import save_checkpoint
from ..io.store import write_json
from ..models import build_model, predict, resolve_layer, target_layer_name, timm_name, to_tensor_images
from ..precision import choose_precision, probe_batch_for
from ..settings import TrainSettings
from ..train import TrainResult, accuracy, log_epoch, replicate_seed, train_model
from .runtime import log_runtime

__all__ = ["run_training"]


def run_training(
    data: str | os.PathLike,
    out: str | os.PathLike,
    arch: str,
    settings: TrainSettings = TrainSettings(),
    *,
    replicate: int = 0,
    name: str | None = None,
    report: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    meta: Mapping[str, str] | None = None,
) -> tuple[TrainResult, dict[str, Any]]:
    """The train stage: fine-tune ``arch`` (a paper alias or a timm name) with the recipe ``settings`` on the
    prepared store ``data`` with :func:`train_model`, save the best epoch's checkpoint to ``out`` and the report
    (settings, precision, history, test accuracy) to ``report`` (default ``train.json`` beside it).
    ``settings.pretrained`` / ``pretrained_file``: ImageNet weights through timm; ``settings.layer``: the CAM layer
    to record (default: the paper's, else timm's last feature stage), checked before training.
    ``replicate``: which training run of this model it is (0, 1, …); it trains with
    :func:`replicate_seed` (``settings.seed``, ``replicate``) on the same split, and the checkpoint, train.json and
    every output made from the checkpoint record it. ``name``: the study's name for the model (default ``arch``),
    recorded as ``model``. ``settings.adv_train``: adversarial training; the report and checkpoint then also hold
    ``robust_acc``, the test accuracy under PGD at the training ε (``robust_eps``). Returns the result and the
    checkpoint's metadata."""

    dev = torch.device(device)
    ds = load_prepared(data)
    size = int(ds.images.shape[1])
    train_seed = replicate_seed(settings.seed, replicate)
    torch.manual_seed(train_seed)
    model = build_model(arch, len(ds.identities), pretrained=settings.pretrained,
                        pretrained_file=settings.pretrained_file)
    layer = target_layer_name(arch, model, settings.layer)
    resolve_layer(model, layer)  # fail before training on a bad layer name
    model.to(dev)
    # the probe draws its own random images: the training's random stream is untouched
    precision = choose_precision(model, dev, size, settings.amp, probe_batch=probe_batch_for(settings.batch_size))
    log_runtime(dev, precision.describe())
    xt, yt, _ = ds.subset("train")
    xv, yv, _ = ds.subset("val")
    xs, ys, _ = ds.subset("test")
    # the replicate's run: its own seed, the rest of the recipe as configured (train.json records both seeds)
    run = replace(settings, seed=train_seed)
    res = train_model(
        model, to_tensor_images(xt), torch.as_tensor(yt), to_tensor_images(xv), torch.as_tensor(yv), run,
        precision=precision, progress=progress, on_epoch=lambda rec: log_epoch(rec, settings.epochs),
    )
    test_acc = accuracy(predict(model, to_tensor_images(xs)), torch.as_tensor(ys))
    robust = {}
    if settings.adv_train is not None:  # robust accuracy under PGD at the training ε (10 steps of ε/4, seeded)
        at = settings.adv_train
        robust = {"robust_eps": at.eps, "robust_acc": robust_accuracy(model, to_tensor_images(xs), torch.as_tensor(ys),
                                                                      at.eps, seed=train_seed)}
        print(f"robust accuracy under PGD at the training eps {at.eps:g}: {robust['robust_acc']:.3f} "
              f"(clean {test_acc:.3f})", flush=True)
    info = {"model": name or arch, "arch": arch, "timm_name": timm_name(arch), "num_classes": len(ds.identities), "identities": ds.identities,
            "input_size": size, "layer": layer, "pretrained": bool(settings.pretrained or settings.pretrained_file),
            "replicate": int(replicate), "config_seed": settings.seed, "train_seed": train_seed,
            "best_epoch": res.best_epoch, "val_acc": res.best_val_acc, "test_acc": test_acc, **robust, "data": str(data),
            "advcam_version": __version__, **dict(meta or {})}
    save_checkpoint(out, model, info)
    write_json(report or Path(out).with_name("train.json"), {
        **info, "device": str(dev), **run.as_dict(), "layer": layer, "precision": precision.as_dict(), "seconds": res.seconds,
        "train_images_per_second": res.images_per_second, "history": res.history,
    })
    return res, info
