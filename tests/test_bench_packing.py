"""bench.packing: the two packing bounds from benchmark files and the idle core-seconds of a run's job timeline."""
from __future__ import annotations

import sys

import pytest

from advcam.errors import InputError
from advcam.io.benchmark_file import read_benchmark_rows
from advcam.io.benchmark_file import read_benchmarks as wall_seconds
from workflow_run import REPO

sys.path.insert(0, str(REPO))  # bench/ is a folder of the repository, not an installed package
from bench.packing import idle_from_log, read_benchmarks, report  # noqa: E402

LOG = """Building DAG of jobs...
[Sat Dec  5 10:00:00 2026]
localrule synth:
    jobid: 1
    threads: 2
[Sat Dec  5 10:00:10 2026]
Finished jobid: 1 (Rule: synth)
[Sat Dec  5 10:00:10 2026]
localrule train:
    jobid: 2
[Sat Dec  5 10:00:10 2026]
localrule train:
    jobid: 3
[Sat Dec  5 10:00:40 2026]
Finished jobid: 3 (Rule: train)
[Sat Dec  5 10:01:10 2026]
Finished jobid: 2 (Rule: train)
[Sat Dec  5 10:01:10 2026]
localrule all:
    jobid: 0
"""


def test_idle_core_seconds_of_a_timeline(tmp_path):
    (tmp_path / "run.log").write_text(LOG)
    idle, span = idle_from_log(tmp_path / "run.log", cores=2)
    # synth holds both cores for 10 s, two trainings then 30 s side by side, one alone for 30 s more
    assert span == 70 and idle == 30


def test_bounds_from_benchmarks(tmp_path):
    for name, s, cpu in (("train/a/r0", 100, 80), ("train/b/r0", 50, 45), ("synth", 10, 14)):
        f = tmp_path / f"{name}.tsv"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(f"s\th:m:s\tcpu_time\n{s}\t0\t{cpu}\n")
    jobs = read_benchmarks(tmp_path)
    text = report(jobs, cores=2, wall=100)
    # CPU bound (80 + 45 + 14) / 2 = 69.5; wall bound (100 + 50 + 2 × 10) / 2 = 85
    assert "CPU bound 70 s" in text and "wall bound 85 s" in text
    assert "1.44 x the CPU bound, 1.18 x the wall bound" in text


def test_a_log_without_finished_jobs_is_an_error(tmp_path):
    (tmp_path / "run.log").write_text("Building DAG of jobs...\n")
    with pytest.raises(ValueError, match="no finished job"):
        idle_from_log(tmp_path / "run.log", cores=2)


def test_benchmark_files_read_once_for_packing_and_the_cost_model(tmp_path):
    # one reader (advcam.io.benchmark_file) serves bench.packing and the estimate stage: the last row of each file
    f = tmp_path / "attack" / "vgg16" / "r0" / "fgsm" / "0.1.tsv"
    f.parent.mkdir(parents=True)
    f.write_text("s\th:m:s\tcpu_time\n9\t0\t7\n12.5\t0\t11\n")
    (tmp_path / "empty.tsv").write_text("")
    assert read_benchmark_rows(tmp_path) == {"attack/vgg16/r0/fgsm/0.1": {"s": 12.5, "cpu_time": 11.0}}
    assert wall_seconds(tmp_path) == {"attack/vgg16/r0/fgsm/0.1": 12.5}
    assert read_benchmarks(tmp_path)[0]["stage"] == "attack"
    (tmp_path / "other.tsv").write_text("seconds\n3\n")
    with pytest.raises(InputError, match=r"other\.tsv: not a snakemake benchmark file"):
        read_benchmark_rows(tmp_path)
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "empty.tsv").write_text("")
    with pytest.raises(InputError, match="no benchmark files under"):
        read_benchmark_rows(tmp_path / "blank")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_benchmark_rows(tmp_path / "nowhere")
