"""What a study costs before it runs: its jobs, each with its work in units, and their compute from measured costs.

A job's compute is ``startup(stage) + c(stage, arch) × units × GFLOPs(arch, size)``:

- ``units`` counts what the job does per image, in passes of its model (one forward + backward of one image = 1,
  a forward alone = 1/2), from the study's sizes, counts, attacks, ε and explainers (:func:`study_jobs`);
- ``GFLOPs(arch, size)`` is one forward of the architecture at the job's input size, counted by
  :class:`torch.utils.flop_counter.FlopCounterMode` on the meta device (no weights, no time): the measured cost per
  FLOP carries over to other sizes and, for an architecture never measured, from the nearest measured one by
  forward FLOPs, which the estimate says on its line;
- ``c`` is seconds per unit-GFLOP, measured on a finished study (:func:`calibrate` from its ``results/benchmarks``);
  ``startup`` is what every job of the stage pays besides: its imports, measured on the machine that calibrates,
  and for a model stage a fitted per-job overhead (loading the model and the store, writing its files).

Stages without a model (synth, prepare, score) scale with images × pixels instead; summarise, plot and gallery
cost a constant per job. The unit counts are approximations (a ScoreCAM or AblationCAM pass
counts as the FLOPs it reruns, not measured on its own); the fitted ``c`` of each stage absorbs what is common to
a stage, and the check against a study that was not the calibration's says how well it carries.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterable, Mapping, Sequence

import numpy as np
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from .errors import InputError
from .models import target_layer_name, timm_name
from .sanity import randomisation_blocks
from .settings import ATTRIBUTION_METHOD_NAMES, eps_label

__all__ = ["Job", "CostTable", "STAGES", "study_jobs", "explainer_units", "attack_units", "gflops", "calibrate",
           "predict", "gpu_cost_table"]

#: the stages as results/benchmarks names them (its first folder, or the file's stem), in the order they run
STAGES = ("synth", "prepare", "train", "gradient", "explain", "attack", "transfer", "score", "sanity", "detect",
          "summarise", "plot", "gallery")
#: stages whose jobs load a model (their work scales with the model's FLOPs; on a GPU, they run there)
MODEL_STAGES = ("train", "gradient", "explain", "attack", "transfer", "sanity", "detect")
#: stages whose work scales with images × pixels and no model
PIXEL_STAGES = ("synth", "prepare", "score")
#: one forward of one image, in units (a forward + backward to the input = 1): on the CPU a forward costs about half
#: of both (bench/results/cpu-2026-11-30.md, AMD EPYC: resnet50@128 50 img/s forward, 28 img/s forward + backward)
FORWARD = 0.5
#: the CAM methods' shared pass of one image: a forward and a backward from the logits to the target layer (the
#: network's last block: the backward stops there), in units: on the CPU about one forward (same table: 52 img/s)
CAM_PASS = 0.55
#: one step of an attack on the explanation (a backward through the map's gradient, i.e. a double backward), in
#: units: measured on the CPU at 1.25 (AMD EPYC, resnet50@112, 1 thread: the default's explain attack 0.072 s per
#: image-step, the robust study's PGD 0.058 s per image-step)
EXPLANATION_STEP = 1.25
#: the reference pixel count of the pixel stages' costs (112²)
REF_PIXELS = 112 * 112


@dataclass(frozen=True)
class Job:
    """One job of a study: its benchmark path below results/benchmarks without ``.tsv`` (``attack/resnet50/r0/fgsm/
    0.1``), stage, the architecture and input size it runs (None for the stages without a model), its work in
    units (see the module docstring) and the threads it holds."""

    id: str
    stage: str
    arch: str | None
    size: int | None
    units: float
    threads: int = 1


@dataclass
class CostTable:
    """Measured costs of one machine class: ``c[(stage, arch)]`` in seconds per unit-GFLOP (per unit-megapixel-
    image for the pixel stages, arch ``"-"``; per job for the fixed stages), ``startup[stage]`` in seconds per job,
    and what they were measured on (``source``)."""

    c: dict[tuple[str, str], float] = field(default_factory=dict)
    startup: dict[str, float] = field(default_factory=dict)
    source: str = ""
    kind: str = "CPU"  # CPU or GPU: what the model stages' seconds are

    def archs(self, stage: str) -> list[str]:
        return sorted(a for s, a in self.c if s == stage and a != "-")


# --------------------------------------------------------------------------------------------- architectures


def _meta_net(arch: str, num_classes: int = 10):
    """``arch`` built on the meta device (no weights, no time); InputError for one timm does not know."""
    if not timm.is_model(timm_name(arch)):
        raise InputError(f"unknown model '{arch}' (not a timm architecture)")
    with torch.device("meta"):
        return timm.create_model(timm_name(arch), num_classes=num_classes)


@lru_cache(maxsize=None)
def gflops(arch: str, size: int) -> float:
    """GFLOPs of one forward of ``arch`` (a timm name or advcam alias) on one (3,size,size) image, counted on the
    meta device (2 FLOPs per multiply-add). InputError for an architecture timm does not know."""
    net = _meta_net(arch)
    with FlopCounterMode(display=False) as counter:
        net(torch.empty(1, 3, size, size, device="meta"))
    return counter.get_total_flops() / 1e9


@lru_cache(maxsize=None)
def layer_channels(arch: str) -> int:
    """K: the channels of ``arch``'s CAM target layer (ScoreCAM and AblationCAM run K passes per image)."""
    net = _meta_net(arch)
    out = []
    dict(net.named_modules())[target_layer_name(arch, net)].register_forward_hook(
        lambda m, i, o: out.append(o.shape[1]) and None)
    net(torch.empty(1, 3, 224, 224, device="meta"))
    return int(out[0])


@lru_cache(maxsize=None)
def head_fraction(arch: str) -> float:
    """The share of a forward's FLOPs after ``arch``'s CAM target layer (what AblationCAM reruns per channel)."""
    net = _meta_net(arch)
    seen = []
    with FlopCounterMode(display=False) as counter:
        dict(net.named_modules())[target_layer_name(arch, net)].register_forward_hook(
            lambda m, i, o: seen.append(counter.get_total_flops()) and None)
        net(torch.empty(1, 3, 224, 224, device="meta"))
    total = counter.get_total_flops()
    return max(total - seen[0], 0) / total if total else 1.0


@lru_cache(maxsize=None)
def sanity_blocks(arch: str) -> int:
    """How many blocks the sanity check re-initialises in ``arch`` (one CAM pass per block and image)."""
    return len(randomisation_blocks(_meta_net(arch)))


# --------------------------------------------------------------------------------------------- units of work


def explainer_units(methods: Sequence[str], arch: str, attribution: Mapping) -> float:
    """Passes per image of one explain call with ``methods``: the shared CAM pass (:data:`CAM_PASS`, whatever CAMs
    it serves), ScoreCAM K forwards, AblationCAM K forwards of the layers after the target (:func:`head_fraction`),
    saliency/inputxgradient one backward together, guided backprop one (guided Grad-CAM: guided backprop and the
    CAM pass), SmoothGrad ``nt_samples``, IG ``n_steps``."""
    shared = [m for m in methods if m not in ATTRIBUTION_METHOD_NAMES and m not in ("scorecam", "ablationcam")]
    units = CAM_PASS if shared or "guided_gradcam" in methods else 0.0
    units += layer_channels(arch) * FORWARD if "scorecam" in methods else 0.0  # K full forwards
    # AblationCAM: one forward to the layer, then K heads (after a global-pooling layer almost nothing)
    units += FORWARD * (1 + layer_channels(arch) * head_fraction(arch)) if "ablationcam" in methods else 0.0
    units += 1.0 if {"saliency", "inputxgradient"} & set(methods) else 0.0
    units += sum(1.0 for m in methods if m in ("guided_backprop", "guided_gradcam"))
    units += float(attribution.get("nt_samples", 8)) if "smoothgrad" in methods else 0.0
    units += float(attribution.get("n_steps", 32)) if "integrated_gradients" in methods else 0.0
    return max(units, FORWARD)


def attack_units(attack: str, spec: Mapping, n_classes: int) -> float:
    """Passes per image an attack takes before its images are explained: 0 for FGSM (the sign is the gradient
    job's) and the noise control, ``steps`` for the iterative ones, :data:`EXPLANATION_STEP` per step for the
    attacks on the explanation (a double backward through the map), ``n_queries`` forwards for Square, ``steps`` ×
    classes for DeepFool."""
    steps = float(spec.get("steps", 10))
    restarts = float(spec.get("n_restarts", 1))
    if attack in ("fgsm", "noise"):
        return 1.0 if attack == "fgsm" and spec.get("targeted", "none") != "none" else 0.0
    if attack in ("explain", "dual"):
        return EXPLANATION_STEP * steps
    if attack == "adaptive":  # the map terms and the attacker's own noise draws, each a double backward
        return EXPLANATION_STEP * steps * (1 + float(spec.get("draws", 1)))
    if attack == "square":
        return float(spec.get("n_queries", 5000)) * restarts * FORWARD
    if attack == "deepfool":
        return float(spec.get("steps", 50)) * n_classes
    if attack == "apgd":
        return steps * restarts
    return steps  # pgd, bim, mifgsm, pgdl2, cw


def study_jobs(config: Mapping, counts: tuple[int, int, int, int]) -> list[Job]:
    """Every job the workflow runs for ``config`` (a study validated with the schema's defaults), as
    workflow/rules/*.smk enumerate them, with its units of work; ``counts``: the store's (train, val, test, classes)
    (:func:`advcam.stages.estimate.dataset_counts` reads them from the study's dataset)."""
    dataset, models = config["dataset"], config["models"]
    attacks = {a: s for a, s in (config.get("attacks") or {}).items() if s.get("eps")}
    cams = list(config["cams"])
    attribution = config.get("attribution") or {}
    n_train, n_val, n_test, n_classes = counts
    n_images = n_train + n_val + n_test
    reps = {m: spec.get("replicates") or config.get("replicates", 1) for m, spec in models.items()}
    arch = {m: spec.get("arch") or m for m, spec in models.items()}
    size = {m: int(spec["size"]) for m, spec in models.items()}
    sanity_images = int(config["sanity"]["images"])
    detection = config.get("detection")
    jobs: list[Job] = []
    if dataset["source"] == "synthetic":
        jobs.append(Job("synth", "synth", None, int(dataset["synthetic_size"]), n_images, threads=2))
    for s in sorted(set(size.values())):
        jobs.append(Job(f"prepare/{s}", "prepare", None, s, n_images))
    n_adv = sum(len(s["eps"]) for s in attacks.values())  # adversarial sets of one run
    for m, spec in models.items():
        a, s = arch[m], size[m]
        adv = spec.get("adv_train")
        per_train = 1.0 + (float(adv.get("steps", 7 if adv.get("attack", "pgd") == "pgd" else 1)) if adv else 0.0)
        train_units = int(spec["epochs"]) * (n_train * per_train + n_val * FORWARD) + n_test * FORWARD
        train_units += n_test * 10 if adv else 0.0  # robust accuracy: PGD, 10 steps
        e_units = explainer_units(cams, a, attribution)
        for r in range(reps[m]):
            run = f"{m}/r{r}"
            jobs.append(Job(f"train/{run}", "train", a, s, train_units, threads=int(config.get("threads", 1))))
            jobs.append(Job(f"gradient/{run}", "gradient", a, s, n_test))
            jobs.append(Job(f"explain/{run}/clean", "explain", a, s, n_test * (e_units + 1)))  # + alignment
            for name, spec_a in attacks.items():
                for e in spec_a["eps"]:
                    jobs.append(Job(f"attack/{run}/{name}/{eps_label(e)}", "attack", a, s,
                                    n_test * (attack_units(name, spec_a, n_classes) + e_units)))
            jobs.append(Job(f"score/{run}/white_box", "score", None, s, n_test * len(cams) * (n_adv + 1)))
            if sanity_images:
                jobs.append(Job(f"sanity/{run}", "sanity", a, s, sanity_images * (sanity_blocks(a) + 1) * e_units))
            if detection:
                draws = float(detection.get("draws", 1))
                jobs.append(Job(f"detect/{run}", "detect", a, s, n_test * (1 + n_adv) * (2 + draws)))
    for t in config.get("transfer") or []:
        src, tgt = t["source"], t["target"]
        for r in range(min(reps[src], reps[tgt])):
            e_units = explainer_units(cams, arch[tgt], attribution)
            n_sets = 0
            for name, spec_a in attacks.items():
                if name == "noise":
                    continue
                for e in spec_a["eps"]:
                    n_sets += 1
                    jobs.append(Job(f"transfer/{tgt}/r{r}/from_{src}/{name}/{eps_label(e)}", "transfer", arch[tgt],
                                    size[tgt], n_test * e_units))
            jobs.append(Job(f"score/{tgt}/r{r}/from_{src}", "score", None, size[tgt], n_test * len(cams) * n_sets))
    jobs.append(Job("summarise", "summarise", None, None, 1.0))
    jobs.append(Job("plot", "plot", None, None, 1.0))
    jobs.extend(Job(f"gallery/{m}", "gallery", None, None, 1.0) for m in models)
    return jobs


# --------------------------------------------------------------------------------------------- costs


def _scale(job: Job) -> float:
    """What a job's units are multiplied by: its model's GFLOPs (model stages), its pixels per image relative to
    112² (pixel stages), 1 (summarise, plot, gallery: a constant per job)."""
    if job.stage in MODEL_STAGES:
        return gflops(job.arch, job.size)
    if job.stage in PIXEL_STAGES:
        return job.size * job.size / REF_PIXELS
    return 1.0


def nearest_arch(arch: str, measured: Iterable[str], size: int = 224) -> str:
    """The measured architecture whose forward GFLOPs lie nearest ``arch``'s (on a log scale), compared at
    ``size`` (224², where every paper architecture runs; a small study size would not fit InceptionV3)."""
    g = gflops(arch, size)
    return min(measured, key=lambda a: (abs(math.log(gflops(a, size) / g)), a))


@dataclass(frozen=True)
class Prediction:
    """One job's predicted compute: ``seconds`` on the model's device (CPU or GPU), ``cpu_seconds`` of start-up
    and host work besides (0 on the CPU, where it is in ``seconds``), and a note when the cost came from elsewhere."""

    job: Job
    seconds: float
    cpu_seconds: float = 0.0
    note: str = ""


def _model_cost(job: Job, table: CostTable) -> tuple[float, str]:
    """(seconds per unit × scale, note) of a model stage's job: its own (stage, arch) cost; else the stage's cost of
    the nearest measured architecture by forward FLOPs; else, for a stage the table never measured, the attack
    stage's (a pass of the same model) — each fallback said in the note."""
    if (job.stage, job.arch) in table.c:
        return table.c[(job.stage, job.arch)], ""
    stage, note = job.stage, ""
    if not table.archs(stage):
        if not table.archs("attack"):
            raise InputError(f"no measured cost for stage '{job.stage}' (nor for attack) in {table.source}")
        stage, note = "attack", f"{job.stage}: not measured in the table, priced as the attack stage's passes"
        if (stage, job.arch) in table.c:
            return table.c[(stage, job.arch)], note
    near = nearest_arch(job.arch, table.archs(stage))
    note = (note + "; " if note else "") + (f"{job.arch}: no measured {stage} cost, estimated from {near} (nearest "
                                            "measured architecture by forward FLOPs) per FLOP")
    return table.c[(stage, near)], note


def predict(jobs: Sequence[Job], table: CostTable, cpu: CostTable | None = None) -> list[Prediction]:
    """Each job's predicted compute under ``table``. A GPU table (``kind == 'GPU'``) prices the model stages' work
    on the GPU and takes their start-up and the CPU stages from ``cpu`` (in ``cpu_seconds``). InputError when a
    CPU stage has no measured cost (a table calibrated on a study without it)."""
    if table.kind == "GPU" and cpu is None:
        raise InputError("a GPU cost table needs a CPU table for start-up and the CPU stages (--costs)")
    host = cpu if table.kind == "GPU" else table
    out = []
    for job in jobs:
        if job.stage in MODEL_STAGES:
            c, note = _model_cost(job, table)
            work = c * job.units * _scale(job)
            startup = host.startup.get(job.stage, host.startup.get("attack", 0.0))
            if table.kind == "GPU":
                out.append(Prediction(job, work, startup, note))
            else:
                out.append(Prediction(job, startup + work, 0.0, note))
            continue
        if (job.stage, "-") not in host.c:
            raise InputError(f"no measured cost for stage '{job.stage}' in {host.source}")
        seconds = host.startup.get(job.stage, 0.0) + host.c[(job.stage, "-")] * job.units * _scale(job)
        out.append(Prediction(job, 0.0, seconds) if table.kind == "GPU" else Prediction(job, seconds))
    return out


def _overhead(rows: Sequence[tuple[str, float, float]]) -> float | None:
    """The per-job seconds beyond start-up that one stage's jobs share, by least squares of ``y = a + c_arch · x``
    over (arch, x = units × scale, y = seconds less start-up); None when no architecture has two distinct ``x`` (a
    shared intercept is then not identified). Never below 0."""
    archs = sorted({a for a, _, _ in rows})
    spread = any(len({round(x, 9) for a2, x, _ in rows if a2 == a}) > 1 for a in archs)
    if not spread:
        return None
    design = np.zeros((len(rows), 1 + len(archs)))
    design[:, 0] = 1.0
    for k, (a, x, _) in enumerate(rows):
        design[k, 1 + archs.index(a)] = x
    coef, *_ = np.linalg.lstsq(design, np.array([y for _, _, y in rows]), rcond=None)
    return max(float(coef[0]), 0.0)


def calibrate(jobs: Sequence[Job], measured: Mapping[str, float], startup: Mapping[str, float],
              source: str = "") -> CostTable:
    """A cost table from a finished study. Per stage, a job's measured core-seconds (wall × threads, from
    :func:`advcam.io.benchmark_file.read_benchmarks`) less its ``startup`` (imports) is
    ``overhead + c(stage, arch) × units × scale``: the overhead (loading the model and the store, writing the
    outputs) is fitted by least squares where a stage's jobs of one architecture differ in units (the attack stage:
    FGSM and noise beside the explanation attack), and taken from the attack stage for the other model stages,
    which load the same files; ``c`` is then the rest over the units × scale of those jobs. The table's per-job
    seconds (``startup``) hold imports + overhead. Jobs without a benchmark file are skipped; InputError when none
    has one (benchmarks of another study)."""
    rows: dict[str, list[tuple[str, float, float]]] = {}
    for job in jobs:
        if job.id in measured:
            arch = job.arch if job.stage in MODEL_STAGES else "-"
            y = measured[job.id] * job.threads - startup.get(job.stage, 0.0)
            rows.setdefault(job.stage, []).append((arch, job.units * _scale(job), y))
    if not rows:
        raise InputError(f"none of the study's {len(jobs)} jobs has a benchmark file in {source or 'the folder'}: "
                         "benchmarks of another study?")
    fitted = {stage: _overhead(r) for stage, r in rows.items() if stage in MODEL_STAGES}
    shared = fitted.get("attack") or next((v for v in fitted.values() if v is not None), 0.0)
    table = CostTable(source=source)
    for stage, r in rows.items():
        over = (fitted.get(stage) if fitted.get(stage) is not None else shared) if stage in MODEL_STAGES else 0.0
        table.startup[stage] = startup.get(stage, 0.0) + over
        for arch in sorted({a for a, _, _ in r}):
            x = sum(x for a, x, _ in r if a == arch)
            y = sum(max(y - over, 0.0) for a, _, y in r if a == arch)
            if x > 0:
                table.c[(stage, arch)] = y / x
    return table


def gpu_cost_table(bench: Mapping, source: str = "") -> CostTable:
    """A GPU cost table from a ``python -m bench --device cuda`` JSON: a pass (forward + backward) costs
    1 / the FGSM floor's throughput, a training image 1 / advcam train_model's, each per GFLOP of the bench's
    input size; the other model stages price their units as passes. Architectures the bench did not run fall
    back to the nearest measured one (:func:`predict`)."""
    sizes = bench.get("sizes", {})
    rate: dict[tuple[str, str], float] = {}
    for row in bench["rows"]:
        model, what = row.get("model"), row.get("what", "")
        if model not in sizes or not row.get("throughput"):
            continue
        g = gflops(model, int(sizes[model]))
        if row["stage"] == "fgsm" and what.startswith("fwd+bwd to input"):
            for stage in MODEL_STAGES:
                if stage != "train":
                    rate[(stage, model)] = 1.0 / (row["throughput"] * g)
        elif row["stage"] == "train" and what.startswith("advcam train_model"):
            rate[("train", model)] = 1.0 / (row["throughput"] * g)
    if not rate:
        raise InputError(f"{source or 'the bench table'} has no fgsm or train throughput rows")
    return CostTable(rate, {}, source, kind="GPU")
