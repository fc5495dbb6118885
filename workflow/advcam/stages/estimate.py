"""The estimate stage: a study's config in, its jobs and predicted compute per stage out (before anything runs);
and the calibration that measures a machine's cost table from a finished study's results/benchmarks."""
from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Mapping, Sequence

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from ..atomic import atomic_path
from ..cost_model import (
    STAGES,
    CostTable,
    Job,
    Prediction,
    calibrate,
    gpu_cost_table,
    predict,
    study_jobs,
)
from ..datasets import index_tree, select_identities, split_counts
from ..errors import InputError
from ..io.benchmark_file import read_benchmarks
from ..io.cost_table_file import read_cost_table, write_cost_table

__all__ = ["DEFAULT_COSTS", "dataset_counts", "load_study", "measure_startup", "plan", "run_calibrate", "run_estimate",
           "report"]

_WORKFLOW = Path(__file__).resolve().parents[2]  # workflow/: the Snakefile, schemas and the package
_REPO = _WORKFLOW.parent
#: the cost table shipped with advcam (measured on a 2-core AMD EPYC, AVX-512 + AVX512-BF16, no AMX)
DEFAULT_COSTS = Path(__file__).resolve().parents[1] / "costs" / "cpu-amd-epyc-avx512bf16.csv"
#: the module each stage's job imports first (its start-up: interpreter, torch, timm where used)
STAGE_MODULES = {
    "synth": "advcam.faces", "prepare": "advcam.datasets", "train": "advcam.stages.train",
    "gradient": "advcam.stages.attack", "attack": "advcam.stages.attack", "transfer": "advcam.stages.attack",
    "explain": "advcam.stages.explain", "score": "advcam.stages.score", "sanity": "advcam.stages.sanity",
    "detect": "advcam.stages.detect", "summarise": "advcam.stages.summarise", "plot": "advcam.stages.plot",
    "gallery": "advcam.stages.plot",
}


def load_study(configfile: str | os.PathLike | None) -> dict:
    """The study as the workflow reads it: ``configfile`` alone (snakemake's ``--configfile`` replaces the embedded
    default), else the repository's config.yaml, validated against workflow/schemas with its defaults filled in.
    FileNotFoundError naming a missing file; InputError naming the key of a schema error."""
    path = Path(configfile) if configfile else _REPO / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"config file '{path}' does not exist")
    config = yaml.safe_load(path.read_text()) or {}
    if not isinstance(config, dict):
        raise InputError(f"config file '{path}' is not a mapping of keys")
    if "detection" in config and config["detection"] is None:
        del config["detection"]
    try:
        validate(config, schema=str(_WORKFLOW / "schemas" / "config.schema.yaml"), set_default=True)
    except WorkflowError as e:
        text = str(e)
        what = next((ln for ln in text.splitlines() if ln.startswith("ValidationError:")), text.strip()[:200])
        where = re.search(r"On instance((?:\[[^\]]*\])+)", text)
        key = ": ".join(k.strip("'") for k in re.findall(r"\[([^\]]*)\]", where.group(1))) if where else ""
        raise InputError(f"config file '{path}': {key + ': ' if key else ''}{what[len('ValidationError: '):]}") from None
    if not config.get("models"):
        raise InputError(f"config file '{path}': models: give at least one model")
    return config


def dataset_counts(dataset: Mapping) -> tuple[int, int, int, int]:
    """(train, val, test, classes) of the store the study's prepare job will write: the synthetic set's sizes, or
    the identities prepare picks from a folder tree (:func:`advcam.datasets.index_tree`, then
    :func:`~advcam.datasets.select_identities` with the study's count, ``min_images`` and seed), each split as
    :func:`~advcam.datasets.split_counts` splits it. DatasetError (one line) for a missing tree or too few
    identities, as prepare would raise."""
    if dataset["source"] == "synthetic":
        per = [int(dataset["images_per_identity"])] * int(dataset["identities"])
    else:
        index = index_tree(dataset["root"])
        picked = select_identities(index, dataset["identities"], int(dataset["min_images"]), int(dataset["seed"]))
        per = [len(index[k]) for k in picked]
    train, val, test = (sum(c) for c in zip(*(split_counts(n, tuple(dataset["split"])) for n in per)))
    return train, val, test, len(per)


def plan(config: Mapping) -> list[Job]:
    """The study's jobs with their units of work (:func:`advcam.cost_model.study_jobs` on its dataset's counts)."""
    return study_jobs(config, dataset_counts(config["dataset"]))


def measure_startup(repeats: int = 3) -> dict[str, float]:
    """CPU-seconds (user + system) of a fresh interpreter importing each stage's module, the least of
    ``repeats`` runs: what every job of the stage pays before its work."""
    out: dict[str, float] = {}
    by_module: dict[str, float] = {}
    for stage, module in STAGE_MODULES.items():
        if module not in by_module:
            times = []
            for _ in range(repeats):
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                times.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
            by_module[module] = min(times)
        out[stage] = by_module[module]
    return out


def _stage_rows(preds: Sequence[Prediction]) -> dict[str, dict]:
    rows: dict[str, dict] = defaultdict(lambda: {"jobs": 0, "seconds": 0.0, "cpu": 0.0})
    for p in preds:
        r = rows[p.job.stage]
        r["jobs"] += 1
        r["seconds"] += p.seconds
        r["cpu"] += p.cpu_seconds
    return rows


def report(preds: Sequence[Prediction], table: CostTable, cores: int,
           measured: dict[str, float] | None = None, tolerance: float = 0.25) -> tuple[str, bool]:
    """The estimate as a table per stage (jobs, predicted compute, share; with ``measured``, the measured
    core-seconds (wall × threads) of the same jobs and predicted / measured), the notes of jobs priced from another
    architecture, and whether every stage lies within ``tolerance`` of its measurement."""
    gpu = table.kind == "GPU"
    rows = _stage_rows(preds)
    total = sum(r["seconds"] for r in rows.values())
    unit = "GPU-s" if gpu else "core-s"
    head = f"| stage | jobs | predicted {unit} |" + (" host core-s |" if gpu else "") + " share |"
    sep = "|---|---|---|" + ("---|" if gpu else "") + "---|"
    if measured is not None:
        head += " measured core-s | predicted / measured |"
        sep += "---|---|"
    lines = [f"cost table: {table.source}" + (" (GPU work; host start-up and CPU stages from the CPU table)"
                                              if gpu else ""), "", head, sep]
    ok = True
    got_by_stage: dict[str, float] = defaultdict(float)
    if measured is not None:
        for p in preds:
            if p.job.id in measured:
                got_by_stage[p.job.stage] += measured[p.job.id] * p.job.threads
    for stage in sorted(rows, key=STAGES.index):
        r = rows[stage]
        line = f"| {stage} | {r['jobs']} | {r['seconds']:.0f} |" + (f" {r['cpu']:.0f} |" if gpu else "")
        line += f" {r['seconds'] / total:.1%} |" if total else " - |"
        if measured is not None:
            if stage not in got_by_stage:  # e.g. a store made by an earlier run: nothing to compare
                line += " not run | - |"
            else:
                got = got_by_stage[stage]
                ratio = (r["seconds"] + r["cpu"]) / got if got else float("inf")
                within = abs(ratio - 1) <= tolerance
                ok &= within
                line += f" {got:.0f} | {ratio:.2f}{'' if within else ' (outside ±' + f'{tolerance:.0%})'} |"
        lines.append(line)
    n_jobs = sum(r["jobs"] for r in rows.values())
    lines.append("")
    if gpu:
        host = sum(r["cpu"] for r in rows.values())
        lines.append(f"{n_jobs} jobs: {total:.0f} GPU-s ({total / 3600:.1f} GPU-h) of model work on the GPU; "
                     f"{host:.0f} core-s ({host / 3600:.1f} core-h) of start-up and CPU stages on the hosts")
    else:
        lines.append(f"{n_jobs} jobs, {total:.0f} core-s; ideal packing on {cores} cores: {total / cores:.0f} s "
                     f"({total / cores / 60:.1f} min)")
    if measured is not None:
        m = sum(got_by_stage.values())
        same = sum(p.seconds + p.cpu_seconds for p in preds if p.job.id in measured)
        lines.append(f"measured: {m:.0f} core-s over {sum(p.job.id in measured for p in preds)} jobs; predicted / "
                     f"measured for those jobs: {same / m:.2f}" if m else
                     "measured: none of the study's jobs has a benchmark file")
    notes = sorted({p.note for p in preds if p.note})
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines), ok


def run_estimate(configfile: str | None, costs: str | None = None, gpu_bench: str | None = None,
                 check: str | None = None, cores: int = 2, tolerance: float = 0.25) -> tuple[str, bool]:
    """The estimate of the study in ``configfile`` (see :func:`load_study`) under the cost table ``costs``
    (default :data:`DEFAULT_COSTS`), its model stages on the GPU of ``gpu_bench`` (a ``python -m bench`` JSON)
    when given; ``check``: a finished run's results/benchmarks to compare each stage with."""
    config = load_study(configfile)
    cpu = read_cost_table(costs or DEFAULT_COSTS)
    table = cpu
    if gpu_bench:
        path = Path(gpu_bench)
        if not path.is_file():
            raise FileNotFoundError(f"bench table '{path}' does not exist")
        bench = json.loads(path.read_text())
        table = gpu_cost_table(bench, source=f"{path} ({bench.get('device', '?')})")
    preds = predict(plan(config), table, cpu=cpu)
    measured = read_benchmarks(check) if check else None
    return report(preds, table, cores, measured, tolerance)


def run_calibrate(configfile: str | None, benchmarks: str, out: str | os.PathLike, source: str = "",
                  repeats: int = 3) -> CostTable:
    """Measure this machine's start-up per stage and fit the cost table of the finished study ``configfile``
    from its ``benchmarks`` folder; written to ``out`` (CSV) atomically."""
    config = load_study(configfile)
    table = calibrate(plan(config), read_benchmarks(benchmarks), measure_startup(repeats),
                      source=source or f"{benchmarks}")
    with atomic_path(out) as tmp:
        write_cost_table(table, tmp)
    return table
