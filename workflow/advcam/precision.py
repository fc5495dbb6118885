"""Precision and memory layout for training, chosen from the machine rather than from a config constant.

bf16 autocast is fast only where the hardware computes bf16 natively. Measured on this project's 2-core
machines (resnet50@128, batch 16, one thread, ms per image per training step):

=============================================  =======  ==================  =============
CPU (oneDNN ISA)                               fp32     fp32 channels_last  bf16 autocast
=============================================  =======  ==================  =============
AMD EPYC, AVX-512 + AVX512-BF16, no AMX        112      92                  52
another one, AVX-512 + AVX512-BF16, no AMX     92       81                  119
either, capped at ``ONEDNN_MAX_CPU_ISA=AVX2``  122-206  104                 3,147
=============================================  =======  ==================  =============

So the same ISA flags can mean bf16 1.8× faster or 1.3× slower, and a laptop CPU (AVX2) emulates bf16
at 15× the cost. :func:`choose_precision` therefore decides per machine:

- CUDA: bf16 where the GPU supports it, channels_last;
- CPU with AMX tiles (and no ``ONEDNN_MAX_CPU_ISA`` cap below AMX): bf16, channels_last;
- CPU where oneDNN has no native bf16 (``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` is false, as
  under an AVX2 cap): fp32, no bf16 step is ever timed; the layout is probed (fp32 contiguous against
  channels_last: channels_last is 15% faster for resnet50 under AVX2 and 7% slower for VGG16 at 64²);
- any other CPU: a one-off micro-benchmark of the model's own training step (forward + backward, eval
  mode so no state changes, a batch of the training's size, up to 32) in fp32 contiguous, fp32 channels_last and bf16
  channels_last; the fastest wins, bf16 only when at least ``BF16_MARGIN`` faster than the best fp32.

The choice carries a one-line reason for logs and train.json, e.g. ``fp32 channels_last (no AMX; bf16
measured 1.31x slower)``.

A probe's verdict is kept per machine and workload (CPU model, torch version, ISA cap, architecture,
parameter count, input size) in ``$ADVCAM_CACHE_DIR/precision.json`` (default
``~/.cache/advcam/precision.json``) and reused, so reruns and every job of a study on one machine make the
same choice even where the two precisions are close; delete the file to probe again, or force ``amp``.
Probes take a lock (``precision.json.lock`` beside it), so jobs that start together — two replicates of a model —
wait for one probe and take its verdict instead of timing side by side and choosing apart (two VGG16 replicates
probed together under an AVX2 cap picked contiguous, 1.03x, and channels_last, 1.08x: other kernels, other
weights, for a reason that is neither the seed nor the recipe).
"""
from __future__ import annotations

import contextlib
import fcntl  # POSIX, as every target of the workflow (Linux workstations, SLURM nodes)
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .atomic import atomic_path

__all__ = ["Precision", "choose_precision", "cpu_has_amx", "cpu_has_native_bf16", "onednn_isa_cap", "time_training_step",
           "probe_batch_for",
           "cache_file", "cpu_model", "BF16_MARGIN"]

#: bf16 must beat the best fp32 step by this factor to be chosen on a CPU (timing noise and the bf16
#: accuracy cost make a near-tie a loss).
BF16_MARGIN = 1.1


@dataclass(frozen=True)
class Precision:
    """How a model runs: ``amp`` = bf16 autocast, ``channels_last`` = NHWC memory format.

    reason : one line saying why (for job logs and train.json); timings : ms per image of the probe's
    steps by configuration name ("fp32", "fp32_cl", "bf16_cl"), empty when nothing was timed.
    """

    amp: bool
    channels_last: bool
    reason: str
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """e.g. ``bf16 channels_last`` or ``fp32``."""
        return ("bf16" if self.amp else "fp32") + (" channels_last" if self.channels_last else "")

    def describe(self) -> str:
        """``<name> (<reason>)``, the job log's precision line."""
        return f"{self.name} ({self.reason})"

    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def as_dict(self) -> dict:
        """JSON-ready record for train.json."""
        return {"amp": self.amp, "channels_last": self.channels_last, "name": self.name, "reason": self.reason,
                "probe_ms_per_image": {k: round(v, 3) for k, v in self.timings.items()}}


def onednn_isa_cap() -> str | None:
    """The ISA cap the user set for oneDNN (``ONEDNN_MAX_CPU_ISA``, or the older ``DNNL_MAX_CPU_ISA``),
    upper-cased; None when unset or ``ALL``/``DEFAULT``."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    if not cap or cap.upper() in ("ALL", "DEFAULT"):
        return None
    return cap.upper()


def cpu_has_amx() -> bool:
    """True when the CPU has AMX tiles and oneDNN may use them (no ``ONEDNN_MAX_CPU_ISA`` cap below AMX)."""
    cap = onednn_isa_cap()
    if cap is not None and "AMX" not in cap:
        return False
    fn = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(fn()) if fn is not None else False


def cpu_has_native_bf16() -> bool:
    """oneDNN's own answer to "does this CPU (under the current ISA cap) compute bf16 natively"."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def time_training_step(
    model: nn.Module, x: torch.Tensor, amp: bool, channels_last: bool, reps: int = 2, give_up_after: float | None = None
) -> float:
    """Seconds per image of the fastest of ``reps`` forward + backward passes of ``model`` on ``x``
    (N,3,H,W) in [0,1], after one untimed warm-up. Eval mode (batch-norm statistics and dropout untouched);
    the parameters' ``.grad`` are left as they were. When the warm-up alone takes longer than
    ``give_up_after`` seconds per image, that figure is returned without the timed repetitions."""
    was_training = model.training
    saved = [(p, p.grad) for p in model.parameters()]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.eval().to(memory_format=fmt)
    xb = x.contiguous(memory_format=fmt)
    dev = xb.device
    y = torch.zeros(xb.shape[0], dtype=torch.long, device=dev)

    def step() -> float:
        t = time.perf_counter()
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
            out = model(xb)
        F.cross_entropy(out.float(), y).backward()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        for p in model.parameters():
            p.grad = None
        return (time.perf_counter() - t) / xb.shape[0]

    try:
        first = step()
        if give_up_after is not None and first > give_up_after:
            return first
        return min(step() for _ in range(reps))
    finally:
        for p, g in saved:
            p.grad = g
        model.train(was_training)


#: The largest batch a probe times (a step of VGG16@64 at 32 images takes ~3 s in fp32 here).
MAX_PROBE_BATCH = 32


def probe_batch_for(batch_size: int) -> int:
    """The batch a probe should time for training at ``batch_size``: the same, up to :data:`MAX_PROBE_BATCH`.
    Per-image cost depends on the batch where a model's weights are large: VGG16@64 (a 103 M-weight head)
    measured bf16 1.29x *slower* than fp32 at 4 images and trains faster in bf16 at its batch of 32."""
    return max(1, min(int(batch_size), MAX_PROBE_BATCH))


def choose_precision(
    model: nn.Module,
    device: torch.device | str,
    input_size: int | tuple[int, int],
    amp: bool | None = None,
    probe_batch: int = 4,
) -> Precision:
    """Pick bf16 autocast or fp32, and the memory layout, for training ``model`` on ``device``.

    amp : None → decide from the machine (module docstring); True/False → forced (the layout is still
    channels_last, measured the faster layout for every paper model on the CPU as found here).
    input_size : the training images' side in pixels (or (H, W)), used by the CPU micro-benchmark, which
    runs ``probe_batch`` random images through the model and leaves its weights, gradients and statistics
    unchanged (its memory format ends contiguous: apply ``Precision.memory_format()`` afterwards).
    """
    dev = torch.device(device)
    if amp is not None:
        return Precision(bool(amp), True, f"forced: amp {'on' if amp else 'off'}")
    if dev.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision(True, True, "CUDA with bf16")
        return Precision(False, True, "CUDA without bf16")
    if dev.type != "cpu":
        return Precision(False, False, f"{dev.type}: fp32")
    if cpu_has_amx():
        return Precision(True, True, "AMX: native bf16")
    if not cpu_has_native_bf16():
        # bf16 is never timed here (emulated, it can cost 15x fp32); the layout still is: channels_last is
        # faster for ResNets and slower for VGG16 under AVX2
        return _probe_cpu(model, dev, input_size, probe_batch, bf16=False)
    return _probe_cpu(model, dev, input_size, probe_batch)


def cache_file() -> Path:
    """Where probe verdicts are kept: ``$ADVCAM_CACHE_DIR/precision.json``, else
    ``$XDG_CACHE_HOME/advcam/precision.json`` (``~/.cache/advcam/precision.json``)."""
    root = os.environ.get("ADVCAM_CACHE_DIR")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "advcam")
    return Path(root) / "precision.json"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else what ``platform`` says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _workload_key(model: nn.Module, h: int, w: int, batch: int) -> str:
    net = getattr(model, "net", model)
    n = sum(p.numel() for p in model.parameters())
    return (f"{cpu_model()} | torch {torch.__version__} | isa cap {onednn_isa_cap() or 'none'} | "
            f"{type(net).__name__} {n} params | {h}x{w} batch {batch}")


def _read_cache() -> dict:
    try:
        return json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(key: str, entry: dict) -> None:

    try:
        cache = _read_cache()
        cache[key] = entry
        with atomic_path(cache_file()) as tmp:
            tmp.write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n")
    except (OSError, ValueError):  # a cache that cannot be written only costs a probe next time
        pass


@contextlib.contextmanager
def _probe_lock() -> Iterator[None]:
    """Hold an exclusive lock on ``precision.json.lock`` beside the cache for the block (one probe on this
    machine at a time, and its verdict written before the next job reads the cache); released when the
    process ends, however it ends. Where no lock can be taken (an unwritable cache directory) the block runs
    unlocked: a lock only saves a probe and keeps concurrent choices equal."""
    cache = cache_file()
    path = cache.with_name(cache.name + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _probe_cpu(model: nn.Module, dev: torch.device, input_size, batch: int, bf16: bool = True) -> Precision:
    h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    key = _workload_key(model, h, w, batch) + ("" if bf16 else " | fp32 only")
    with _probe_lock():
        hit = _read_cache().get(key)
        if isinstance(hit, dict) and {"amp", "channels_last", "reason"} <= set(hit):
            return Precision(bool(hit["amp"]), bool(hit["channels_last"]),
                             f"{hit['reason']}; probe of {hit.get('date', '?')} reused from {cache_file()}",
                             dict(hit.get("ms", {})))
        p = _measure_cpu(model, dev, h, w, batch, bf16)
        _write_cache(key, {"amp": p.amp, "channels_last": p.channels_last, "reason": p.reason, "ms": p.timings,
                           "date": time.strftime("%Y-%m-%d")})
    return p


def _measure_cpu(model: nn.Module, dev: torch.device, h: int, w: int, batch: int, bf16: bool = True) -> Precision:
    x = torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(0)).to(dev)
    # one timed step after the warm-up once a step holds 16 images or more (VGG16@64 at 32: ~3 s a step)
    reps = 2 if batch < 16 else 1
    t = {"fp32": time_training_step(model, x, False, False, reps), "fp32_cl": time_training_step(model, x, False, True, reps)}
    cl = t["fp32_cl"] <= t["fp32"]
    best32 = min(t["fp32"], t["fp32_cl"])
    layout = "channels_last" if cl else "contiguous"
    if not bf16:
        model.to(memory_format=torch.contiguous_format)
        cap = onednn_isa_cap()
        why = f"ONEDNN_MAX_CPU_ISA={cap}" if cap else "no AVX512-BF16/AMX"
        ratio = max(t["fp32"], t["fp32_cl"]) / best32
        return Precision(False, cl, f"{why}: oneDNN would emulate bf16; {layout} measured {ratio:.2f}x faster",
                         {k: v * 1000 for k, v in t.items()})
    # bf16 emulated in software can cost 15x fp32: one warm-up step tells, without timed repetitions
    t["bf16_cl"] = time_training_step(model, x, True, True, reps, give_up_after=4 * best32)
    model.to(memory_format=torch.contiguous_format)
    ms = {k: v * 1000 for k, v in t.items()}
    ratio = t["bf16_cl"] / best32
    if ratio * BF16_MARGIN <= 1:
        return Precision(True, True, f"no AMX; bf16 measured {1 / ratio:.2f}x faster than fp32", ms)
    return Precision(False, cl, f"no AMX; bf16 measured {ratio:.2f}x slower than fp32, {layout} fastest"
                     if ratio > 1 else f"no AMX; bf16 only {1 / ratio:.2f}x faster, under the {BF16_MARGIN}x margin", ms)
