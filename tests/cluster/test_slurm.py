"""The smoke study submitted through SLURM (snakemake-executor-plugin-slurm, profiles/slurm) on a real
single-node cluster: synth, prepare and each training are sbatch jobs of their own, everything after a training
run's training is one group submission, no job asks for a GPU under `device: cpu`, a training cancelled with
`scancel` while it runs is retried (with twice the memory), the summary is byte-identical to the same study run
locally, and adding an ε reruns only the new jobs on the cluster, inside one submission per training run.

Needs a running cluster: `tests/cluster/cluster.sh start` (root, Debian's slurm packages). Without one these
tests skip, unless ADVCAM_SLURM=required (set by .ci/run), where they fail instead.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from workflow_run import REPO, snakemake

pytestmark = pytest.mark.slow

MODEL_RULES = {"train", "gradient", "attack", "explain_clean", "sanity", "detect"}
CPU_RULES = {"synth", "prepare", "score"}
# a job's log is .../rule_<rule>/<wildcards>/<id>.log, a group job's .../group_<group>_<its rules>.../<id>.log
SUBMITTED = re.compile(r"Job \S+ has been submitted with SLURM jobid (\d+) \(log: \S*/"
                       r"(?:rule_(\w+)/(\S*)|group_(run_[a-z0-9_]+?_r\d+)_\S*?/(\S+))\)\.")
GROUPS = {"run_resnet50_r0", "run_resnet50_r1", "run_vgg16_r0"}  # one per training run (RUN_GROUP)


def _cluster_problem() -> str | None:
    """Why the SLURM tests cannot run here, or None when a cluster with the profile's partition is up."""
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        return "SLURM client tools (sbatch, scontrol) not installed"
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        return "snakemake-executor-plugin-slurm not installed (pip install -e '.[slurm]')"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P %a %G"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo timed out"
    if out.returncode != 0:
        return f"no SLURM controller answers: {out.stderr.strip()}"
    if not any(line.split()[1] == "up" for line in out.stdout.splitlines() if line.strip()):
        return f"no partition is up in sinfo: {out.stdout.strip()}"
    return None


def _profile() -> dict:
    return yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())


def _test_profile(path: Path) -> Path:
    """profiles/slurm with what a one-node, accounting-free test cluster needs: no account, squeue status
    checks soon after submission, kept job logs, and per-rule memory that fits the node (the rules ask
    for paper-scale memory). Everything else — executor, partition, GPU requests — is the shipped profile."""
    prof = _profile()
    prof.update({
        "jobs": 4,
        "latency-wait": 10,
        "slurm-no-account": True,
        "slurm-status-command": "squeue",
        "slurm-init-seconds-before-status-checks": 2,
        "slurm-keep-successful-logs": True,
        # one CPU per group on the 2-CPU node: two groups side by side, each running its jobs one at a time (the
        # shipped profile's 8 lets a `device: cpu` group run up to 8 jobs at once, which this node cannot hold)
        "cores": 1,
    })
    rules = prof.setdefault("set-resources", {}) or {}
    for rule in MODEL_RULES | CPU_RULES:
        rules.setdefault(rule, {})["mem_mb"] = 3000
    rules["train"]["mem_mb"] = "1500 * attempt"  # the retry's memory doubles, as the rule's own does
    prof["set-resources"] = rules
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(yaml.safe_dump(prof))
    return path


def _submitted(run) -> dict[int, str]:
    """SLURM job id → rule (or group), from the executor's 'has been submitted' lines."""
    return {int(j): rule or group for j, rule, _, group, _ in SUBMITTED.findall(run.stdout + run.stderr)}


def _submitted_paths(run) -> dict[int, str]:
    """SLURM job id → its log path below the rule's or group's folder (<wildcards>/<id>.log for a rule's job)."""
    return {int(j): path or gpath for j, _, path, _, gpath in SUBMITTED.findall(run.stdout + run.stderr)}


class CancelOneTraining(threading.Thread):
    """Watches squeue while a study runs and cancels the first training job that has been running for a
    second (`scancel`), once: `cancelled` holds its SLURM job id."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.cancelled: int | None = None

    def run(self):
        seen: dict[int, float] = {}
        while not self.stop.is_set() and self.cancelled is None:
            out = subprocess.run(["squeue", "-h", "-o", "%i|%T|%k"], capture_output=True, text=True, timeout=15)
            for line in out.stdout.splitlines():
                job, state, comment = line.split("|", 2)
                if state == "RUNNING" and comment.startswith("rule_train"):
                    first = seen.setdefault(int(job), time.monotonic())
                    if time.monotonic() - first >= 1.0:
                        subprocess.run(["scancel", job], check=True, timeout=15)
                        self.cancelled = int(job)
                        break
            time.sleep(0.25)


def _show_job(job_id: int) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-d", "-o", str(job_id)], capture_output=True, text=True,
                         timeout=15)
    assert out.returncode == 0, f"scontrol show job {job_id}: {out.stderr}"
    return dict(re.findall(r"(\w+)=(\S*)", out.stdout))


# Checked once at collection, so a machine without a cluster skips before the (shared) local smoke run starts.
PROBLEM = _cluster_problem()
REQUIRED = os.environ.get("ADVCAM_SLURM") == "required"
if PROBLEM and not REQUIRED:
    pytestmark = [pytest.mark.slow, pytest.mark.skip(reason=PROBLEM)]


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory):
    if PROBLEM:
        pytest.fail(f"ADVCAM_SLURM=required but {PROBLEM}")
    base = tmp_path_factory.mktemp("slurm")
    profile = _test_profile(base / "profile")
    wd = base / "work"
    watcher = CancelOneTraining()
    watcher.start()
    try:
        run = snakemake(wd, "--profile", str(profile), config=REPO / "configs/smoke.yaml", cores=None)
    finally:
        watcher.stop.set()
        watcher.join(timeout=30)
    return wd, profile, run, watcher.cancelled


def test_one_submission_per_training_run_and_no_gpu_under_device_cpu(slurm_run, smoke_run):
    wd, _, run, cancelled = slurm_run
    jobs = _submitted(run)
    # the smoke DAG: 1 synth, 2 prepare (two sizes), a training per run (resnet50 twice, vgg16 once) plus the one
    # cancelled and retried, then per run one group job: gradient, clean CAMs, 7 attacks, score, sanity, detect
    assert Counter(jobs.values()) == {"synth": 1, "prepare": 2, "train": 4, **dict.fromkeys(GROUPS, 1)}, jobs
    for job_id, rule in jobs.items():
        info = _show_job(job_id)
        assert info["JobState"] == ("CANCELLED" if job_id == cancelled else "COMPLETED"), (job_id, rule, info)
        # `device: cpu`: nobody asks for the GPU (the dry-run tests check `gpu=1` under cuda and auto)
        assert "gpu" not in info.get("TresPerJob", "") and info["JOB_GRES"] == "(null)", (job_id, rule, info)
        if rule in GROUPS:  # the group's jobs run one at a time in one CPU
            assert info["NumCPUs"] == "1", (job_id, rule, info["NumCPUs"])
    # the job's own view, written by advcam into each rule log: the SLURM job it ran in; a group's jobs all in one
    res = wd / "results" / "logs"
    group_of = {r: [j for j, g in jobs.items() if g == r] for r in GROUPS}
    for log, group in [(res / "gradient" / "vgg16" / "r0.log", "run_vgg16_r0"),
                       (res / "score" / "resnet50" / "r1" / "white_box.log", "run_resnet50_r1"),
                       *[(p, "run_resnet50_r0") for p in sorted((res / "attack" / "resnet50" / "r0").rglob("*.log"))]]:
        text = log.read_text()
        assert re.search(r"SLURM job (\d+) on \S+, GPUs allocated: none", text), (log, text[:500])
        assert [int(re.search(r"SLURM job (\d+)", text).group(1))] == group_of[group], (log, text[:300])
    # local rules ran on the submit host, and the local run (smoke_run) never saw SLURM
    assert "localrule summarise" in run.stdout + run.stderr
    assert "SLURM job" not in (smoke_run / "results/logs/train/resnet50/r0.log").read_text()


def test_a_cancelled_training_is_retried_with_more_memory(slurm_run):
    """`scancel` on a running training: snakemake resubmits it (retries: 2), with `attempt` × its memory, and the
    study ends as if nothing happened (its summary: test_summary_identical_to_the_local_run)."""
    wd, _, run, cancelled = slurm_run
    assert cancelled is not None, "no training job was seen running for a second: nothing was cancelled"
    paths, rules = _submitted_paths(run), _submitted(run)
    wildcards = paths[cancelled].rsplit("/", 1)[0]
    retried = [j for j, p in paths.items() if j != cancelled and p.rsplit("/", 1)[0] == wildcards
               and rules[j] == "train"]
    assert len(retried) == 1 and retried[0] > cancelled, (cancelled, paths)
    first, second = _show_job(cancelled), _show_job(retried[0])
    assert second["JobState"] == "COMPLETED", second
    mem = lambda info: int(re.match(r"(\d+)M", info["MinMemoryNode"]).group(1))  # noqa: E731
    assert (mem(first), mem(second)) == (1500, 3000), (first["MinMemoryNode"], second["MinMemoryNode"])


def test_summary_identical_to_the_local_run(slurm_run, smoke_run):
    wd, _, run, _ = slurm_run
    for name in ("mod_vid.csv", "vid.csv", "vid_per_image.csv", "nissim.csv", "sanity.csv", "replicates.csv",
                 "claims.csv", "detection.csv"):
        here = (wd / "results/summary" / name).read_bytes()
        there = (smoke_run / "results/summary" / name).read_bytes()
        assert here == there, name
    local_s = float((smoke_run / "wall_seconds.txt").read_text())
    print(f"smoke study wall time: SLURM {run.seconds:.0f} s, local {local_s:.0f} s ({run.seconds / local_s:.2f} x)")


def test_adding_an_eps_reruns_only_its_jobs_on_the_cluster(slurm_run):
    wd, profile, _, _ = slurm_run
    cfg = yaml.safe_load((REPO / "configs/smoke.yaml").read_text())
    cfg["attacks"]["fgsm"]["eps"] = [*cfg["attacks"]["fgsm"]["eps"], 0.2]
    run = snakemake(wd, "--profile", str(profile), config=cfg, cores=None)
    jobs = _submitted(run)
    runs = sum(spec.get("replicates", cfg.get("replicates", 1)) for spec in cfg["models"].values())
    assert runs == 3  # resnet50 twice, vgg16 once
    # one submission per training run, holding its new attack, its rescoring and its detection
    assert sorted(jobs.values()) == sorted(GROUPS), jobs
    for group in GROUPS:  # the new ε's attack ran inside its run's submission
        model, rep = re.fullmatch(r"run_(\w+)_r(\d+)", group).groups()
        text = (wd / f"results/logs/attack/{model}/r{rep}/fgsm/0.2.log").read_text()
        assert int(re.search(r"SLURM job (\d+)", text).group(1)) == next(j for j, g in jobs.items() if g == group)
    for job_id in jobs:
        assert _show_job(job_id)["JobState"] == "COMPLETED"
    mod = (wd / "results/summary/mod_vid.csv").read_text()
    assert mod.count(",fgsm,0.2,") == runs * len(cfg["cams"]), mod  # a row per training run and CAM method
