"""Running the workflow from tests: one `snakemake` call with a bounded wall time, and the dry-run job table."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow/Snakefile"
# Wall-clock bound of one snakemake call in the tests (seconds); the process group is killed past it.
TIMEOUT_S = int(os.environ.get("ADVCAM_TEST_TIMEOUT_S", 1200))


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def run_bounded(cmd: list[str], timeout: float = TIMEOUT_S) -> Run:
    """Run ``cmd`` in its own process group; past ``timeout`` s kill the whole group (snakemake and its jobs)
    and raise, so a stuck run never hangs the suite."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"timed out after {timeout:.0f} s: {' '.join(cmd)}\n{out[-3000:]}\n{err[-5000:]}")
    return Run(proc.returncode, out, err, time.perf_counter() - t0)


def snakemake_cmd(workdir: Path, *args: str, config: dict | Path | None = None, cores: str | None = "2") -> list[str]:
    """The command line of :func:`snakemake` (a dict config is written to ``workdir/config.test.yaml`` here)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(workdir)]
    if cores:
        cmd += ["--cores", cores]
    if config is not None:
        if isinstance(config, dict):
            path = Path(workdir) / "config.test.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(config))
            config = path
        cmd += ["--configfile", str(config)]
    return cmd + list(args)


def snakemake(workdir: Path, *args: str, config: dict | Path | None = None, check: bool = True,
              cores: str | None = "2", timeout: float = TIMEOUT_S) -> Run:
    """``snakemake -s Snakefile -d workdir [--cores N] [--configfile ...] *args``; a dict config is written
    to ``workdir/config.test.yaml`` first."""
    proc = run_bounded(snakemake_cmd(workdir, *args, config=config, cores=cores), timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def job_counts(proc: Run) -> dict[str, int]:
    """Parse the 'Job stats' table of a dry run into rule → count."""
    text = proc.stdout + proc.stderr
    block = text[text.index("Job stats:"):]
    counts = {}
    for line in block.splitlines()[3:]:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not m:
            break
        if m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts
