"""How well a finished study packed its jobs onto the cores: the ideal-packing bound (sum of every job's
CPU-seconds, from snakemake's ``benchmark:`` files, divided by the cores) against the wall time it took.

    python -m bench.packing results/benchmarks --cores 2 --wall 655

``--wall`` is the study's wall time in seconds (e.g. from ``time snakemake ...``); without it the bound is
printed alone. Per stage, the table gives job count, CPU-seconds and the share of the total.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from collections import defaultdict
from pathlib import Path


def read_benchmarks(root: str | os.PathLike) -> list[dict]:
    """Every ``*.tsv`` under ``root`` as {stage, job, s (wall), cpu_time}; the stage is the first folder
    below ``root`` (or the file's stem for top-level files such as ``synth.tsv``)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"benchmark folder '{root}' does not exist (run the study first)")
    jobs = []
    for path in sorted(root.rglob("*.tsv")):
        rel = path.relative_to(root)
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if not rows:
            continue
        last = rows[-1]  # a rerun appends nothing: snakemake rewrites the file; take the last repeat
        jobs.append({"stage": rel.parts[0] if len(rel.parts) > 1 else rel.stem, "job": str(rel.with_suffix("")),
                     "s": float(last["s"]), "cpu_time": float(last["cpu_time"])})
    if not jobs:
        raise ValueError(f"no benchmark files under '{root}'")
    return jobs


def report(jobs: list[dict], cores: int, wall: float | None = None) -> str:
    total = sum(j["cpu_time"] for j in jobs)
    by_stage: dict[str, list[dict]] = defaultdict(list)
    for j in jobs:
        by_stage[j["stage"]].append(j)
    lines = ["| stage | jobs | CPU-s | share | mean CPU-s per job |", "|---|---|---|---|---|"]
    for stage, js in sorted(by_stage.items(), key=lambda kv: -sum(j["cpu_time"] for j in kv[1])):
        c = sum(j["cpu_time"] for j in js)
        lines.append(f"| {stage} | {len(js)} | {c:.0f} | {c / total:.1%} | {c / len(js):.1f} |")
    bound = total / cores
    lines.append("")
    lines.append(f"{len(jobs)} jobs, {total:.0f} CPU-s; ideal packing on {cores} cores: {bound:.0f} s "
                 f"({bound / 60:.1f} min)")
    if wall:
        lines.append(f"wall {wall:.0f} s ({wall / 60:.1f} min) = {wall / bound:.2f} x the bound")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.packing", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("benchmarks", nargs="?", default="results/benchmarks")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    p.add_argument("--wall", type=float, default=None, help="the study's wall time in seconds")
    args = p.parse_args(argv)
    try:
        print(report(read_benchmarks(args.benchmarks), args.cores, args.wall))
    except (FileNotFoundError, ValueError) as e:
        print(f"bench.packing: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
