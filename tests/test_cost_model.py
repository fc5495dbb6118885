"""advcam estimate: a study's jobs as the workflow plans them, costs fitted from benchmark files and predicted back,
the nearest-architecture fallback said on its line, GPU tables, and bad input."""
from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
import yaml

from advcam.cli import main
from advcam.cost_model import (
    MODEL_STAGES,
    CostTable,
    calibrate,
    gflops,
    gpu_cost_table,
    predict,
)
from advcam.errors import InputError
from advcam.io.benchmark_file import read_benchmarks
from advcam.io.cost_table_file import read_cost_table, write_cost_table
from advcam.stages.estimate import DEFAULT_COSTS, dataset_counts, load_study, plan, run_estimate
from workflow_run import REPO, job_counts, snakemake

# dry-run rule → the stage its benchmark files sit under
RULE_STAGE = {"explain_clean": "explain", "score_transfer": "score"}


def _paper(tmp_path: Path) -> Path:
    root = tmp_path / "vggface2" / "train"
    for ident, n in (("n000001", 12), ("n000002", 14), ("n000003", 3)):  # the third has too few images
        (root / ident).mkdir(parents=True)
        for i in range(n):
            (root / ident / f"{i:04d}.jpg").write_bytes(b"")
    cfg = yaml.safe_load((REPO / "configs/paper.yaml").read_text())
    cfg["dataset"]["root"] = str(root)
    cfg["dataset"]["min_images"] = 10
    cfg["dataset"]["identities"] = 2
    path = tmp_path / "paper.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("config", ["config.yaml", "configs/smoke.yaml", "configs/replicates.yaml", "paper"])
def test_jobs_are_the_workflows(config, tmp_path):
    """Per stage, as many jobs as snakemake plans for the same study (its dry run's job table)."""
    path = _paper(tmp_path) if config == "paper" else REPO / config
    planned = Counter()
    for rule, n in job_counts(snakemake(tmp_path / "wd", "-n", config=path)).items():
        if rule != "all":
            planned[RULE_STAGE.get(rule, rule)] += n
    jobs = plan(load_study(path))
    assert Counter(j.stage for j in jobs) == planned
    assert len({j.id for j in jobs}) == len(jobs)


def test_dataset_counts_are_prepares(tmp_path):
    """The store prepare will write: the synthetic set's identities × images, or a tree's identities with at least
    min_images (a third folder of 3 images is left out), each split as prepare splits it (12 → 10/1/1, 14 → 12/1/1)."""
    assert dataset_counts(load_study(REPO / "config.yaml")["dataset"]) == (576, 72, 72, 6)
    assert dataset_counts(load_study(_paper(tmp_path))["dataset"]) == (22, 2, 2, 2)


def test_job_ids_are_the_benchmark_paths(tmp_path):
    """Each job's id is its benchmark file's path below results/benchmarks, as the rules write them."""
    text = snakemake(tmp_path, "-n", config=REPO / "configs/smoke.yaml").stdout
    import re

    paths = {p for p in re.findall(r"benchmark: results/benchmarks/(\S+)\.tsv", text)}
    assert {j.id for j in plan(load_study(REPO / "configs/smoke.yaml"))} == paths


def _fake_benchmarks(root: Path, jobs, table: CostTable) -> None:
    for p in predict(jobs, table):
        f = root / f"{p.job.id}.tsv"
        f.parent.mkdir(parents=True, exist_ok=True)
        s = p.seconds / p.job.threads  # the wall time of a job that holds its threads the whole time
        f.write_text(f"s\th:m:s\tmax_rss\tcpu_time\n{s:.9f}\t0:00:01\t100\t{p.seconds:.9f}\n")


def test_calibration_recovers_the_costs_that_made_the_benchmarks(tmp_path):
    """Benchmarks written from known costs (drawn fresh: a cost per (stage, arch), an import start-up per stage and
    one per-job overhead of the model stages) calibrate back to those costs and overhead, and predict each stage's
    total to 1e-4."""
    rng = random.Random()
    config = load_study(REPO / "configs/smoke.yaml")
    jobs = plan(config)
    imports = {j.stage: rng.uniform(0.5, 5) for j in jobs}
    overhead = rng.uniform(0.5, 3)
    truth = CostTable(source="drawn")
    for j in jobs:
        truth.c[(j.stage, j.arch if j.stage in MODEL_STAGES else "-")] = rng.uniform(1e-3, 1e-1)
        truth.startup[j.stage] = imports[j.stage] + (overhead if j.stage in MODEL_STAGES else 0.0)
    _fake_benchmarks(tmp_path / "bench", jobs, truth)

    fitted = calibrate(jobs, read_benchmarks(tmp_path / "bench"), imports, source="fit")
    assert fitted.c.keys() == truth.c.keys()
    for k in truth.c:
        assert fitted.c[k] == pytest.approx(truth.c[k], rel=1e-4), k
    for stage in truth.startup:
        assert fitted.startup[stage] == pytest.approx(truth.startup[stage], rel=1e-4), stage
    write_cost_table(fitted, tmp_path / "costs.csv")
    text, ok = run_estimate(str(REPO / "configs/smoke.yaml"), costs=str(tmp_path / "costs.csv"),
                            check=str(tmp_path / "bench"), tolerance=1e-4)
    assert ok, text
    assert read_cost_table(tmp_path / "costs.csv").c == pytest.approx(fitted.c, rel=1e-5)


def test_work_scales_with_the_study():
    """More epochs cost proportionally more training; a larger input costs its FLOPs; an ε more is a job more."""
    table = read_cost_table(DEFAULT_COSTS)
    base = load_study(REPO / "config.yaml")

    def stage_seconds(cfg, stage):
        return sum(p.seconds - table.startup[stage] for p in predict(plan(cfg), table) if p.job.stage == stage)

    longer = load_study(REPO / "config.yaml")
    for spec in longer["models"].values():
        spec["epochs"] *= 2
    assert stage_seconds(longer, "train") == pytest.approx(2 * stage_seconds(base, "train"), rel=0.05)
    bigger = load_study(REPO / "config.yaml")
    bigger["models"]["resnet50"]["size"] = 224
    r50 = [p for p in predict(plan(bigger), table) if p.job.id == "gradient/resnet50/r0"][0]
    r50_base = [p for p in predict(plan(base), table) if p.job.id == "gradient/resnet50/r0"][0]
    flops_ratio = gflops("resnet50", 224) / gflops("resnet50", 112)
    assert (r50.seconds - table.startup["gradient"]) == pytest.approx(
        flops_ratio * (r50_base.seconds - table.startup["gradient"]), rel=1e-6)
    more = load_study(REPO / "config.yaml")
    more["attacks"]["fgsm"]["eps"].append(0.2)
    assert len(plan(more)) == len(plan(base)) + 5 + 1  # an attack per model, a transfer


def test_unmeasured_architecture_is_priced_from_the_nearest_and_said(tmp_path):
    cfg = yaml.safe_load((REPO / "configs/smoke.yaml").read_text())
    cfg["models"]["resnet18"] = {"size": 64, "epochs": 1, "batch_size": 8, "lr": 1e-3}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    text, _ = run_estimate(str(path))
    notes = [line for line in text.splitlines() if line.startswith("note: resnet18")]
    assert notes and all("nearest measured architecture by forward FLOPs" in n for n in notes), text
    assert {n.split("no measured ")[1].split(" ")[0] for n in notes} >= {"train", "attack", "gradient"}


def test_gpu_table_prices_model_work_in_gpu_seconds(tmp_path):
    bench = REPO / "bench/results/gpu-h200-2026-11-26.json"
    text, _ = run_estimate(str(_paper(tmp_path)), gpu_bench=str(bench))
    assert "predicted GPU-s" in text and "GPU-h) of model work" in text
    assert "note: resnet101: no measured train cost" in text  # the bench ran four of the five
    table = gpu_cost_table(json.loads(bench.read_text()))
    # a training image of resnet50 at the bench's size costs 1 / its measured throughput
    row = next(r for r in json.loads(bench.read_text())["rows"]
               if r["stage"] == "train" and r["model"] == "resnet50" and r["what"].startswith("advcam train_model"))
    assert table.c[("train", "resnet50")] * gflops("resnet50", 224) == pytest.approx(1 / row["throughput"])


def test_cli_prints_the_table_and_checks(tmp_path, capsys):
    assert main(["estimate"]) == 0
    out = capsys.readouterr().out
    assert "| train | 5 |" in out and "ideal packing on 2 cores" in out
    bench = tmp_path / "bench" / "train" / "vgg16"
    bench.mkdir(parents=True)
    (bench / "r0.tsv").write_text("s\tcpu_time\n1\t1.0\n")  # far below any prediction
    assert main(["estimate", "--check", str(tmp_path / "bench")]) == 2
    captured = capsys.readouterr()
    assert "outside ±25%" in captured.out and "error: a stage's prediction lies outside" in captured.err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--configfile", "nope.yaml"], "config file 'nope.yaml' does not exist"),
        (["--costs", "nope.csv"], "cost table 'nope.csv' does not exist"),
        (["--calibrate", "results/benchmarks"], "--calibrate needs --out"),
        (["--check", "no/such/benchmarks"], "benchmark folder 'no/such/benchmarks' does not exist"),
    ],
)
def test_bad_input_is_one_line(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["estimate", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_bad_study_names_the_key(tmp_path):
    bad = yaml.safe_load((REPO / "configs/smoke.yaml").read_text())
    bad["models"]["resnet50"]["epochs"] = 0
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(InputError, match="epochs"):
        load_study(tmp_path / "bad.yaml")
    bad["models"]["resnet50"]["epochs"] = 1
    bad["models"]["not_a_net"] = {"size": 64}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(InputError, match="unknown model 'not_a_net'"):
        run_estimate(str(tmp_path / "bad.yaml"))
    (tmp_path / "costs.csv").write_text("stage,arch,seconds_per_unit,startup_s,source\nwarp,-,1,1,x\n")
    with pytest.raises(InputError, match="line 2: unknown stage 'warp'"):
        read_cost_table(tmp_path / "costs.csv")
