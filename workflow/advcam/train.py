"""Fine-tuning on a prepared store: AdamW or SGD, warm-up + cosine schedule, augmentation on the device,
best epoch selected on validation accuracy. Precision and memory layout are chosen from the machine
(:func:`advcam.precision.choose_precision`): bf16 on CUDA and where the CPU computes it fast, else fp32.

The whole uint8 training set is moved to the device once (when it fits in a quarter of free memory,
else it stays in pinned host memory), so a step never waits for decoding or host-side augmentation.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .adversarial_training import adversarial_batch
from .errors import InputError
from .models import model_device, predict
from .precision import Precision, choose_precision, probe_batch_for
from .settings import OPTIMIZERS, TrainSettings

__all__ = ["augment", "TrainResult", "TrainingDiverged", "train_model", "accuracy", "OPTIMIZERS", "replicate_seed", "log_epoch"]


def replicate_seed(seed: int, replicate: int) -> int:
    """The training seed of replicate ``replicate`` (0, 1, …) of a model configured with ``seed``: ``seed``
    itself for replicate 0 (a one-replicate study trains exactly as before replicates existed), else a
    31-bit draw of numpy's ``SeedSequence((seed, replicate))``, so replicates of one seed never share a
    stream with another seed's (``seed + replicate`` would make seed 0's replicate 1 seed 1's replicate 0).
    The seed drives weight initialisation, data order, augmentation and pixel-noise draws; never the split."""
    if replicate < 0 or int(replicate) != replicate:
        raise InputError(f"replicate must be a whole number >= 0, got {replicate}")
    if replicate == 0:
        return int(seed)
    return int(np.random.SeedSequence((int(seed) & 0xFFFFFFFF, int(replicate))).generate_state(1)[0] & 0x7FFFFFFF)


class TrainingDiverged(InputError):
    """The training loss became NaN or infinite; nothing trained past that point is worth keeping."""


def augment(x: torch.Tensor, generator: torch.Generator | None = None, strength: float = 1.0) -> torch.Tensor:
    """Random flip, rotation (±10°), scale (0.9–1.1), shift (±6%), brightness/contrast jitter, batched
    on ``x``'s device. x : (N,3,H,W) float in [0,1] → same shape in [0,1]. ``generator`` must live on
    ``x``'s device (or be None)."""
    if strength <= 0:
        return x
    n, dev = x.shape[0], x.device

    def U(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return torch.rand(n, *shape, device=dev, generator=generator) * (hi - lo) + lo

    ang = U(-10, 10) * (math.pi / 180) * strength
    sc = 1 + U(-0.1, 0.1) * strength
    flip = torch.where(U(0, 1) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, U(-0.06, 0.06) * 2 * strength], 1), torch.stack([sin * flip, cos, U(-0.06, 0.06) * 2 * strength], 1)],
        1,
    )
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    bright = U(-0.1, 0.1, 1, 1, 1) * strength
    contrast = 1 + U(-0.15, 0.15, 1, 1, 1) * strength
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return ((out - mean) * contrast + mean + bright).clamp_(0, 1)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose argmax equals the label (NaN for no rows)."""
    if len(labels) == 0:
        return float("nan")
    return float((logits.argmax(1) == torch.as_tensor(labels)).float().mean())


@dataclass
class TrainResult:
    """history : per-epoch dicts (epoch, lr, train_loss, train_acc, val_acc, seconds);
    best_epoch / best_val_acc : the selected epoch (1-based); state_dict : its weights (CPU)."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_val_acc: float = float("nan")
    state_dict: dict | None = None
    seconds: float = 0.0
    images_per_second: float = 0.0
    precision: Precision | None = None


def _diverged(value: float | str, epoch: int, step: int, steps: int, opt: torch.optim.Optimizer) -> None:
    raise TrainingDiverged(
        f"training diverged: the loss is {value} at epoch {epoch}, step {step} of {steps} "
        f"(learning rate {opt.param_groups[0]['lr']:.3g}); lower the learning rate or check the data"
    )


def log_epoch(rec: dict, epochs: int) -> None:
    """One line per finished epoch on stderr (the job log), so a long training shows how far it is."""
    print(f"epoch {rec['epoch']}/{epochs}: train loss {rec['train_loss']:.3f}, train acc {rec['train_acc']:.1%}, "
          f"val acc {rec['val_acc']:.1%}, {rec['seconds']:.0f} s", file=sys.stderr, flush=True)


def train_model(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    settings: TrainSettings = TrainSettings(),
    *,
    progress: bool = True,
    precision: Precision | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train ``model`` (already on its device) and load the best-validation weights into it.

    x_* : (N,3,H,W) uint8 tensors; y_* : (N,) int64. ``settings``: the recipe (:class:`~advcam.settings.TrainSettings`,
    whose own checks ran when it was built; its ``seed`` seeds this run's draws as it is: :func:`run_training`
    passes the replicate's seed). ``settings.amp``: None → decided from the machine (bf16 on CUDA,
    on CPUs with AMX, and on other CPUs only where a one-off micro-benchmark of this model's step finds it
    faster; see :mod:`advcam.precision`); True → bf16 autocast; False → fp32. ``precision``: a choice made
    beforehand (e.g. to log it first), which then overrides ``amp``; the one used is ``TrainResult.precision``.
    ``on_epoch``: called with each epoch's history record (see :class:`TrainResult`) as it ends.
    ``settings.pixel_noise`` adds Gaussian pixel noise to every training image (on the device), its std drawn per
    image from U(0, pixel_noise), so the model is not fragile to random perturbations of that size;
    ``pixel_noise_from`` is the first epoch (1-based) that adds it. Models that learn slowly from scratch
    (Inception-v3 here) lose accuracy when noise comes from the start, and keep it when the noise
    starts once the clean task is half learnt.
    ``settings.adv_train``: adversarial training, each batch (after augmentation and noise) replaced by
    :func:`advcam.adversarial_training.adversarial_batch` before the step.
    The learning rate warms up linearly for ``warmup_epochs`` then follows a cosine to zero.
    A NaN or infinite loss raises :class:`TrainingDiverged` naming the epoch and step (on the CPU at that
    step; on CUDA, where a per-step check would stall the device, at the end of that epoch).
    """
    c = settings
    epochs, batch_size, seed = c.epochs, c.batch_size, c.seed
    dev = model_device(model)
    cuda = dev.type == "cuda"
    if precision is None:
        precision = choose_precision(model, dev, tuple(x_train.shape[-2:]), c.amp, probe_batch=probe_batch_for(batch_size))
    amp, fmt = precision.amp, precision.memory_format()
    model = model.to(memory_format=fmt)
    if cuda:
        free, _ = torch.cuda.mem_get_info(dev)
        data_dev = dev if x_train.numel() < free // 4 else torch.device("cpu")
    else:
        data_dev = dev
    xs = x_train.to(data_dev)
    if data_dev.type == "cpu" and cuda:
        xs = xs.pin_memory()
    ys = torch.as_tensor(y_train).long().to(dev)
    n = xs.shape[0]
    steps_per_epoch = max(1, n // batch_size)
    total = epochs * steps_per_epoch
    warm = int(c.warmup_epochs * steps_per_epoch)

    params = [p for p in model.parameters() if p.requires_grad]
    # fused: one kernel over all parameters; on the CPU it cut VGG16's AdamW step from 520 to 316 ms
    # (134 M parameters, 1 thread, this project's 2-core machine)
    fused = all(p.dtype == torch.float32 and p.device.type in ("cpu", "cuda") for p in params)
    if c.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay, fused=fused)
    else:
        opt = torch.optim.SGD(params, lr=c.lr, momentum=0.9, weight_decay=c.weight_decay, nesterov=True, fused=fused)

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator(device=dev).manual_seed(seed)
    perm_gen = torch.Generator().manual_seed(seed)
    res = TrainResult(precision=precision)
    best = -1.0
    t_start = time.perf_counter()
    seen = 0
    bar = None
    if progress:

        bar = tqdm(total=total, desc="train", unit="step")
    for epoch in range(1, epochs + 1):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=perm_gen)
        # running sums stay on the device: no host synchronisation inside the step loop
        loss_sum = torch.zeros((), device=dev)
        correct = torch.zeros((), device=dev)
        first_bad = torch.zeros((), dtype=torch.long, device=dev)  # 1-based step of the first non-finite loss
        count = 0
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            xb = xs[idx.to(data_dev)].to(dev, non_blocking=True).float().div_(255)
            yb = ys[idx.to(dev)]
            if c.augment > 0:
                xb = augment(xb, gen, c.augment)
            if c.pixel_noise > 0 and epoch >= c.pixel_noise_from:
                sigma = torch.rand(xb.shape[0], 1, 1, 1, device=dev, generator=gen) * c.pixel_noise
                noise = torch.randn(xb.shape, device=dev, generator=gen, dtype=xb.dtype)
                xb = (xb + sigma * noise).clamp_(0, 1)
            xb = xb.contiguous(memory_format=fmt)
            if c.adv_train is not None:  # the batch replaced by its adversarial version (advcam.adversarial_training)
                xb = adversarial_batch(model, xb, yb, c.adv_train, gen, amp)
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(xb)
            loss = F.cross_entropy(logits.float(), yb, label_smoothing=c.label_smoothing)
            if cuda:
                first_bad = torch.where((first_bad == 0) & ~torch.isfinite(loss), i + 1, first_bad)
            elif not math.isfinite(loss.item()):
                _diverged(loss.item(), epoch, i + 1, steps_per_epoch, opt)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach() * len(idx)
            correct += (logits.detach().argmax(1) == yb).sum()
            count += len(idx)
            seen += len(idx)
            if bar is not None:
                bar.update(1)
        if cuda and int(first_bad):
            _diverged("NaN or infinite", epoch, int(first_bad), steps_per_epoch, opt)
        if bar is not None:
            bar.set_postfix(epoch=epoch, loss=f"{float(loss_sum) / max(count, 1):.3f}")
        val_acc = accuracy(predict(model, x_val, amp=amp), y_val) if len(y_val) else float("nan")
        rec = {
            "epoch": epoch,
            "lr": opt.param_groups[0]["lr"],
            "train_loss": float(loss_sum) / max(count, 1),
            "train_acc": float(correct) / max(count, 1),
            "val_acc": val_acc,
            "seconds": time.perf_counter() - t0,
        }
        res.history.append(rec)
        if on_epoch is not None:
            on_epoch(rec)
        score = val_acc if not math.isnan(val_acc) else rec["train_acc"]
        if score >= best:
            best = score
            res.best_epoch, res.best_val_acc = epoch, val_acc
            # kept on the device (a copy per improvement, no host transfer inside the loop)
            res.state_dict = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if bar is not None:
        bar.close()
    res.seconds = time.perf_counter() - t_start
    res.images_per_second = seen / res.seconds if res.seconds > 0 else float("nan")
    model.load_state_dict(res.state_dict)
    model.to(memory_format=torch.contiguous_format)
    res.state_dict = {k: v.cpu() for k, v in res.state_dict.items()}
    return res


