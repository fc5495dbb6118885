"""How well a finished study packed its jobs onto the cores: the ideal-packing bound (sum of every job's
CPU-seconds, from snakemake's ``benchmark:`` files, divided by the cores) against the wall time it took.

    python -m bench.packing results/benchmarks --cores 2 --wall 655 [--log .snakemake/log/<run>.snakemake.log]

``--wall`` is the study's wall time in seconds (e.g. from ``time snakemake ...``); without it the bound is
printed alone. Per stage, the table gives job count, CPU-seconds, wall seconds and the share of the total.

Two bounds, because snakemake's ``cpu_time`` under-reports: it samples a job's CPU time every 0.5 s for the
job's first 15 s and every 30 s after, so a 20-s job shows about 15 s. The CPU bound (Σ cpu_time / cores) is the
issue's definition; the wall bound (Σ job wall × threads / cores) is what the jobs occupied. ``--log`` reads the
run's job timeline (start and finish of every job, with its threads) and gives the core-seconds no job held:
the scheduling loss itself.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from collections import defaultdict
from datetime import datetime
from pathlib import Path

from advcam.io.benchmark_file import read_benchmark_rows


def read_benchmarks(root: str | os.PathLike) -> list[dict]:
    """Every job under ``root`` as {stage, job, s (wall), cpu_time, threads}, read by
    :func:`advcam.io.benchmark_file.read_benchmark_rows`; the stage is the first folder below ``root`` (or the
    file's stem for top-level files such as ``synth.tsv``)."""
    jobs = []
    for job, row in read_benchmark_rows(root).items():
        parts = Path(job).parts
        top = len(parts) == 1
        jobs.append({"stage": parts[0] if not top else job, "job": job, "s": row["s"], "cpu_time": row["cpu_time"],
                     "threads": 2 if top and job == "synth" else 1})
    return jobs


def report(jobs: list[dict], cores: int, wall: float | None = None) -> str:
    total = sum(j["cpu_time"] for j in jobs)
    held = sum(j["s"] * j["threads"] for j in jobs)
    by_stage: dict[str, list[dict]] = defaultdict(list)
    for j in jobs:
        by_stage[j["stage"]].append(j)
    lines = ["| stage | jobs | CPU-s | wall × threads, s | share (wall) | mean wall s per job |",
             "|---|---|---|---|---|---|"]
    for stage, js in sorted(by_stage.items(), key=lambda kv: -sum(j["s"] * j["threads"] for j in kv[1])):
        c = sum(j["cpu_time"] for j in js)
        w = sum(j["s"] * j["threads"] for j in js)
        lines.append(f"| {stage} | {len(js)} | {c:.0f} | {w:.0f} | {w / held:.1%} | {w / len(js):.1f} |")
    bound, wall_bound = total / cores, held / cores
    lines.append("")
    lines.append(f"{len(jobs)} jobs, {total:.0f} CPU-s (snakemake's samples), {held:.0f} core-s held (wall × "
                 f"threads); ideal packing on {cores} cores: CPU bound {bound:.0f} s ({bound / 60:.1f} min), wall "
                 f"bound {wall_bound:.0f} s ({wall_bound / 60:.1f} min)")
    if wall:
        lines.append(f"wall {wall:.0f} s ({wall / 60:.1f} min) = {wall / bound:.2f} x the CPU bound, "
                     f"{wall / wall_bound:.2f} x the wall bound")
    return "\n".join(lines)


_DATE = re.compile(r"\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]")


def idle_from_log(path: str | os.PathLike, cores: int) -> tuple[float, float]:
    """(core-seconds no job held, the run's span in s) from a snakemake log: each job from the time stamp before
    its ``rule …:`` block to the one before its ``Finished jobid: N``, holding min(threads, cores) cores."""
    start: dict[int, datetime] = {}
    end: dict[int, datetime] = {}
    threads: dict[int, int] = {}
    now = rule_at = job = None
    for line in Path(path).read_text().splitlines():
        if m := _DATE.match(line):
            now = datetime.strptime(" ".join(m.group(1).split()), "%a %b %d %H:%M:%S %Y")
        elif m := re.match(r"\s*(?:local)?rule (\w+):", line):
            rule_at, job = (now if m.group(1) != "all" else None), None
        elif (m := re.match(r"\s*jobid: (\d+)", line)) and rule_at is not None:
            job = int(m.group(1))
            start[job], threads[job] = rule_at, 1
        elif (m := re.match(r"\s*threads: (\d+)", line)) and job is not None:
            threads[job] = int(m.group(1))
        elif m := re.search(r"Finished jobid: (\d+)", line):
            end[int(m.group(1))] = now
    done = [j for j in start if j in end]
    if not done:
        raise ValueError(f"no finished job in snakemake log '{path}'")
    t0, t1 = min(start[j] for j in done), max(end[j] for j in done)
    span = int((t1 - t0).total_seconds())
    busy = [0] * span
    for j in done:
        for k in range(int((start[j] - t0).total_seconds()), int((end[j] - t0).total_seconds())):
            busy[k] += min(threads[j], cores)
    return float(sum(max(cores - b, 0) for b in busy)), float(span)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.packing", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("benchmarks", nargs="?", default="results/benchmarks")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    p.add_argument("--wall", type=float, default=None, help="the study's wall time in seconds")
    p.add_argument("--log", help="the run's snakemake log (.snakemake/log/…): the core-seconds no job held")
    args = p.parse_args(argv)
    try:
        print(report(read_benchmarks(args.benchmarks), args.cores, args.wall))
        if args.log:
            idle, span = idle_from_log(args.log, args.cores)
            print(f"job timeline: {span:.0f} s from the first job's start to the last one's end; {idle:.0f} core-s "
                  f"held by no job ({idle / (span * args.cores):.1%} of the cores)")
    except (FileNotFoundError, ValueError) as e:
        print(f"bench.packing: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
