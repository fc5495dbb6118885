"""What every stage starts with: torch threads and device, the job log's first line, the checkpoint ready
for inference, the test split as tensors, and the provenance attributes its outputs record.
"""
from __future__ import annotations

import os
import sys
from typing import Mapping

import torch

from ..datasets import load_prepared
from ..errors import InputError
from ..io.checkpoint import load_checkpoint
from ..models import pick_device, to_tensor_images
from ..precision import onednn_isa_cap

__all__ = ["INFERENCE_PRECISION", "setup_torch", "runtime_line", "log_runtime", "load_for_inference", "replicate_of",
           "test_set"]

#: what the inference stages (gradient, attack, explain, sanity) run in: fp32 so FGSM equals torchattacks and
#: the maps equal pytorch-grad-cam; channels_last is the faster layout on oneDNN CPUs and CUDA
INFERENCE_PRECISION = "fp32 channels_last (inference stages stay fp32 so results equal the reference libraries)"


def setup_torch(device: str = "auto", threads: int = 0) -> torch.device:
    """Set torch's CPU threads (0: torch's default) and return the device ``device`` names ("auto": CUDA when
    present). The stage then logs :func:`runtime_line` once it knows its precision."""

    if threads:
        torch.set_num_threads(threads)
    return pick_device(device)


def runtime_line(dev: torch.device, threads: int, precision: str | None = None) -> str:
    """Where and how this stage runs, for the job log: device, torch threads, precision and why, the oneDNN
    ISA cap if one is set and, under SLURM, the job and the GPUs it was allocated (so a cluster run shows
    which jobs got a GPU, and a GPU job that fell back to the CPU)."""

    line = f"advcam: device {dev}, {threads} torch thread(s)"
    if precision:
        line += f", {precision}"
    cap = onednn_isa_cap()
    if cap and dev.type == "cpu" and f"ONEDNN_MAX_CPU_ISA={cap}" not in line:
        line += f"; ONEDNN_MAX_CPU_ISA={cap}"
    env = os.environ
    if env.get("SLURM_JOB_ID"):
        gpus = env.get("SLURM_JOB_GPUS") or env.get("SLURM_STEP_GPUS") or "none"
        line += f"; SLURM job {env['SLURM_JOB_ID']} on {env.get('SLURMD_NODENAME', '?')}, GPUs allocated: {gpus}"
    if "CUDA_VISIBLE_DEVICES" in env:
        line += f"; CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']}"
    return line


def log_runtime(dev: torch.device, precision: str) -> None:
    """Write :func:`runtime_line` to stderr: the job log's first line."""
    print(runtime_line(dev, torch.get_num_threads(), precision), file=sys.stderr, flush=True)


def load_for_inference(path: str | os.PathLike, dev: torch.device) -> tuple[torch.nn.Module, dict]:
    """The checkpoint's model on ``dev`` in eval mode and channels_last, and its metadata; the job log's first
    line written."""

    model, meta = load_checkpoint(path, dev)
    model.to(memory_format=torch.channels_last)
    log_runtime(dev, INFERENCE_PRECISION)
    return model, meta


def replicate_of(info: Mapping) -> int:
    """The training replicate a checkpoint's metadata records (0 for checkpoints written before replicates)."""
    return int(info.get("replicate", 0))


def test_set(data: str | os.PathLike):
    """The test split of the prepared store ``data``: (Prepared, images (N,3,H,W) uint8, labels (N,) int64,
    store indices (N,)). ValueError naming the store when the split is empty."""

    ds = load_prepared(data)
    imgs, labels, idx = ds.subset("test")
    if len(idx) == 0:
        raise InputError(f"{data}: the test split is empty")
    return ds, to_tensor_images(imgs), torch.as_tensor(labels), idx


test_set.__test__ = False  # not a pytest test, whatever imports it


