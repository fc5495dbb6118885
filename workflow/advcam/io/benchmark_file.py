"""Snakemake's ``benchmark:`` files: one TSV per job under a study's ``results/benchmarks``, named after the job
(``train/vgg16/r0.tsv``). The estimate stage calibrates and checks the cost model on them, and ``bench.packing``
sums them into the packing bounds; both read them here."""
from __future__ import annotations

import csv
import os
from pathlib import Path

from ..errors import InputError

__all__ = ["read_benchmark_rows", "read_benchmarks"]


def read_benchmark_rows(root: str | os.PathLike) -> dict[str, dict[str, float]]:
    """Every job under ``root``: job id (the path below ``root`` without ``.tsv``) → ``{"s": wall seconds,
    "cpu_time": seconds}`` of the file's last row (snakemake rewrites a rerun job's file; with ``repeat`` the last
    repeat). Empty files are left out. FileNotFoundError naming a missing folder, InputError naming a folder
    without benchmark files or a file without those columns."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"benchmark folder '{root}' does not exist (run the study first)")
    out = {}
    for path in sorted(root.rglob("*.tsv")):
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if not rows:
            continue
        try:
            out[str(path.relative_to(root).with_suffix(""))] = {k: float(rows[-1][k]) for k in ("s", "cpu_time")}
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{path}: not a snakemake benchmark file (needs numeric 's' and 'cpu_time' "
                             "columns)") from None
    if not out:
        raise InputError(f"no benchmark files under '{root}'")
    return out


def read_benchmarks(root: str | os.PathLike) -> dict[str, float]:
    """Wall seconds of every job under ``root``: job id → the last row's ``s``. Not its ``cpu_time``: snakemake
    samples a job's CPU time every 0.5 s for its first 15 s and every 30 s after, so a job of 20 s shows ~15; a
    job's wall time × its threads is what it occupies. Errors as :func:`read_benchmark_rows`."""
    return {job: row["s"] for job, row in read_benchmark_rows(root).items()}
