"""The smoke study submitted through SLURM (snakemake-executor-plugin-slurm, profiles/slurm) on a real
single-node cluster: every non-local job is an sbatch job, the model stages were allocated the GPU and the
CPU stages were not, the summary is byte-identical to the same study run locally, and adding an ε reruns
only the new jobs on the cluster.

Needs a running cluster: `tests/cluster/cluster.sh start` (root, Debian's slurm packages). Without one these
tests skip, unless ADVCAM_SLURM=required (set by .ci/run), where they fail instead.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import yaml

from workflow_run import REPO, snakemake

pytestmark = pytest.mark.slow

MODEL_RULES = {"train", "gradient", "attack", "explain_clean", "sanity", "detect"}
CPU_RULES = {"synth", "prepare", "score"}
SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: \S*/rule_(\w+?)/")


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
    partition = _profile()["default-resources"]["slurm_partition"]
    if not any(line.split()[0].rstrip("*") == partition for line in out.stdout.splitlines() if line.strip()):
        return f"no partition '{partition}' (profiles/slurm) in sinfo: {out.stdout.strip()}"
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
    })
    rules = prof.setdefault("set-resources", {}) or {}
    for rule in MODEL_RULES | CPU_RULES:
        rules.setdefault(rule, {})["mem_mb"] = 3000
    prof["set-resources"] = rules
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(yaml.safe_dump(prof))
    return path


def _submitted(run) -> dict[int, str]:
    """SLURM job id → rule, from the executor's 'has been submitted' lines."""
    return {int(j): rule for j, rule in SUBMITTED.findall(run.stdout + run.stderr)}


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
    run = snakemake(wd, "--profile", str(profile), config=REPO / "configs/smoke.yaml", cores=None)
    return wd, profile, run


def test_every_job_ran_on_slurm_and_only_model_jobs_got_the_gpu(slurm_run, smoke_run):
    wd, _, run = slurm_run
    jobs = _submitted(run)
    # the smoke DAG: 1 synth, 2 prepare (two sizes), per training run (resnet50 twice, vgg16 once)
    # train/gradient/explain_clean/score/sanity/detect and 7 attacks (fgsm, noise at 2 ε; explain, dual, adaptive at 1)
    assert Counter(jobs.values()) == {"synth": 1, "prepare": 2, "train": 3, "gradient": 3, "explain_clean": 3,
                                      "attack": 21, "score": 3, "sanity": 3, "detect": 3}
    for job_id, rule in jobs.items():
        info = _show_job(job_id)
        assert info["JobState"] == "COMPLETED", (job_id, rule, info["JobState"])
        assert info["Comment"].startswith(f"rule_{rule}"), (job_id, rule, info["Comment"])
        gres = info.get("TresPerJob", "")
        if rule in MODEL_RULES:
            assert gres == "gres:gpu:1" and info["JOB_GRES"] == "gpu:1", (job_id, rule, gres)
        else:
            assert "gpu" not in gres and info["JOB_GRES"] == "(null)", (job_id, rule, gres)
    # the job's own view, written by advcam into the rule log: which SLURM job, which GPU it was given
    res = wd / "results" / "logs"
    for log in [res / "train" / "resnet50" / "r1.log", res / "gradient" / "vgg16" / "r0.log",
                *sorted((res / "attack").rglob("*.log"))]:
        text = log.read_text()
        assert re.search(r"SLURM job (\d+) on \S+, GPUs allocated: 0", text), (log, text[:500])
        assert int(re.search(r"SLURM job (\d+)", text).group(1)) in jobs
    score_log = next((res / "score").rglob("*.log")).read_text()
    assert "GPUs allocated: none" in score_log, score_log[:500]
    # local rules ran on the submit host, and the local run (smoke_run) never saw SLURM
    assert "localrule summarise" in run.stdout + run.stderr
    assert "SLURM job" not in (smoke_run / "results/logs/train/resnet50/r0.log").read_text()


def test_summary_identical_to_the_local_run(slurm_run, smoke_run):
    wd, _, run = slurm_run
    for name in ("mod_vid.csv", "vid.csv", "vid_per_image.csv", "nissim.csv", "sanity.csv", "replicates.csv",
                 "claims.csv", "detection.csv"):
        here = (wd / "results/summary" / name).read_bytes()
        there = (smoke_run / "results/summary" / name).read_bytes()
        assert here == there, name
    local_s = float((smoke_run / "wall_seconds.txt").read_text())
    print(f"smoke study wall time: SLURM {run.seconds:.0f} s, local {local_s:.0f} s")


def test_adding_an_eps_reruns_only_its_jobs_on_the_cluster(slurm_run):
    wd, profile, _ = slurm_run
    cfg = yaml.safe_load((REPO / "configs/smoke.yaml").read_text())
    cfg["attacks"]["fgsm"]["eps"] = [*cfg["attacks"]["fgsm"]["eps"], 0.2]
    run = snakemake(wd, "--profile", str(profile), config=cfg, cores=None)
    jobs = _submitted(run)
    runs = sum(spec.get("replicates", cfg.get("replicates", 1)) for spec in cfg["models"].values())
    assert runs == 3  # resnet50 twice, vgg16 once
    assert sorted(jobs.values()) == ["attack"] * runs + ["detect"] * runs + ["score"] * runs, jobs
    for job_id, rule in jobs.items():
        assert _show_job(job_id).get("TresPerJob", "") == ("gres:gpu:1" if rule in MODEL_RULES else "")
    mod = (wd / "results/summary/mod_vid.csv").read_text()
    assert mod.count(",fgsm,0.2,") == runs * len(cfg["cams"]), mod  # a row per training run and CAM method
