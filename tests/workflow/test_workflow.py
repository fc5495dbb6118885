"""The Snakemake workflow: lint, dry-run DAGs of every shipped config, schema errors, partial reruns,
and one real end-to-end run of the smoke config."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from workflow_run import REPO, SNAKEFILE, job_counts, snakemake


def torch_load(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def load(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


def test_lint_is_clean(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--lint"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr


def test_rules_are_snakefmt_clean():
    """The Snakefile and every rule file as snakefmt writes them (line length from pyproject.toml)."""
    files = [str(SNAKEFILE), *map(str, sorted((REPO / "workflow/rules").glob("*.smk")))]
    proc = subprocess.run([sys.executable, "-m", "snakefmt", "--check", *files], capture_output=True, text=True,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def train_priorities(proc, rule: str = "train", wildcard: str = "model") -> dict[str, int]:
    """wildcard value → priority of that rule's job in a dry run (snakemake prints 'priority: N' when it is
    not 0); by default model → priority of its train job."""
    out = {}
    for block in (proc.stdout + proc.stderr).split(f"rule {rule}:")[1:]:
        block = block.split("\n\n")[0].split("rule ")[0]
        model = re.search(rf"wildcards: (?:.*, )?{wildcard}=([^,\s]+)", block).group(1)
        m = re.search(r"priority: (\d+)", block)
        out[model] = int(m.group(1)) if m else 0
    return out


def test_default_dag(tmp_path):
    proc = snakemake(tmp_path, "-n", config=REPO / "config.yaml")
    c = job_counts(proc)
    cfg = load("config.yaml")
    n_models, n_eps, n_explain = 5, len(cfg["attacks"]["fgsm"]["eps"]), len(cfg["attacks"]["explain"]["eps"])
    assert cfg["attacks"]["noise"]["eps"] == cfg["attacks"]["fgsm"]["eps"]
    assert c["train"] == n_models and c["gradient"] == n_models and c["explain_clean"] == n_models
    # a score job per model: every attack and ε
    assert c["attack"] == n_models * (2 * n_eps + n_explain) and c["score"] == n_models
    assert c["transfer"] == n_eps + n_explain and c["score_transfer"] == 1  # resnet101's FGSM, explain images on resnet50
    assert c["synth"] == 1 and c["summarise"] == 1 and c["plot"] == 1 and c["gallery"] == n_models
    assert c["sanity"] == n_models  # one sanity-check job per model, every CAM method
    # the trainings start longest first (VGG16 first, not last as snakemake's preference for large inputs had
    # it), each before any job downstream; then a model's score and gallery as soon as they are ready; then the
    # models' attacks, model by model in the same order
    rank = {p: i for i, p in enumerate(sorted({spec["priority"] for spec in cfg["models"].values()}))}
    top = len(rank)
    expected = {m: top + 1 + rank[spec["priority"]] for m, spec in cfg["models"].items()}
    assert train_priorities(proc) == expected and max(expected, key=expected.get) == "vgg16"
    attacks = train_priorities(proc, "attack")  # the last model's attack of each is parsed: one per model
    assert attacks == {m: rank[spec["priority"]] for m, spec in cfg["models"].items()}
    assert max(attacks.values()) < top == min(train_priorities(proc, "score").values()) < min(expected.values())
    assert set(train_priorities(proc, "sanity").values()) == set(attacks.values())
    # and its store is built first (it inherits the highest priority of the models trained on it)
    sizes = {str(m["size"]) for m in cfg["models"].values()}
    assert train_priorities(proc, "prepare", "size") == {
        s: max(expected[k] for k, m in cfg["models"].items() if str(m["size"]) == s) for s in sizes}


def test_replicate_dag(tmp_path):
    """Replicates multiply every per-run job; a model's own count overrides the study's; transfer maps replicate r
    of the source onto replicate r of the target, for the replicates both have."""
    cfg = load("config.yaml")
    n_eps = len(cfg["attacks"]["fgsm"]["eps"]) + len(cfg["attacks"]["explain"]["eps"])  # the attacks transferred
    n_jobs = sum(len(a["eps"]) for a in cfg["attacks"].values())
    c = job_counts(snakemake(tmp_path, "-n", config={**cfg, "replicates": 3}))
    assert c["train"] == 15 and c["gradient"] == 15 and c["explain_clean"] == 15 and c["sanity"] == 15
    assert c["attack"] == 15 * n_jobs and c["score"] == 15
    assert c["transfer"] == 3 * n_eps and c["score_transfer"] == 3
    assert c["gallery"] == 5 and c["summarise"] == 1 and c["prepare"] == 3  # one gallery per model (replicate 0)
    models = {**cfg["models"], "resnet50": {**cfg["models"]["resnet50"], "replicates": 1}}
    proc = snakemake(tmp_path, "-n", "-p", config={**cfg, "replicates": 2, "models": models})
    c = job_counts(proc)
    assert c["train"] == 9 and c["score"] == 9 and c["transfer"] == n_eps and c["score_transfer"] == 1
    out = proc.stdout + proc.stderr
    assert "--replicate 1" in out and "resnet50/r1" not in out and "resnet101/r1/model.pt" in out
    assert "--name resnet101" in out


def test_paper_dag(tmp_path):
    root = tmp_path / "vggface2" / "train"
    for ident in ("n000001", "n000002"):
        (root / ident).mkdir(parents=True)
    cfg = load("configs/paper.yaml")
    cfg["dataset"]["root"] = str(root)
    c = job_counts(snakemake(tmp_path, "-n", config=cfg))
    assert "synth" not in c and c["prepare"] == 2  # 224 and 299
    # fgsm, noise, bim, targeted mifgsm, explain, dual; pgdl2, apgd, square, cw, deepfool; adaptive
    assert c["train"] == 5 and c["attack"] == 5 * (4 + 4 + 3 + 3 + 3 + 3 + 3 * 5 + 3)
    assert c["detect"] == 5  # every detector score, one job per model


def test_smoke_dag(tmp_path):
    c = job_counts(snakemake(tmp_path, "-n", config=REPO / "configs/smoke.yaml"))
    # resnet50 twice (its own replicates: 2); fgsm and noise at 2 ε, explain, dual and adaptive at 1
    assert c["train"] == 3 and c["attack"] == 3 * 7 and c["prepare"] == 2
    assert c["detect"] == 3  # one detection job per training run


def _job_resources(proc) -> dict[str, list[dict[str, str]]]:
    """rule → the resources of each of its jobs in a dry run ('resources: a=1, b=2' lines)."""
    out: dict[str, list[dict[str, str]]] = {}
    for block in re.split(r"\n\s*rule ", proc.stdout + proc.stderr)[1:]:
        rule = block.split(":", 1)[0]
        m = re.search(r"resources: (.*)", block.split("\n\n")[0])
        if m:
            out.setdefault(rule, []).append(dict(kv.split("=", 1) for kv in m.group(1).split(", ")))
    return out


MODEL_RULES = {"train", "gradient", "attack", "explain_clean", "sanity", "detect"}


@pytest.mark.parametrize("device,gpu", [("cpu", "0"), ("cuda", "1"), ("auto", "1")])
def test_gpu_resource_follows_device(tmp_path, device, gpu):
    """Every job that loads a model asks a cluster for a GPU unless the study runs on the CPU; CPU stages never."""
    cfg = {**load("configs/smoke.yaml"), "device": device}
    res = _job_resources(snakemake(tmp_path, "-n", config=cfg))
    assert MODEL_RULES <= set(res)
    for rule, jobs in res.items():
        for r in jobs:
            assert r.get("gpu", "0") == (gpu if rule in MODEL_RULES else "0"), (rule, r)


def test_cluster_plan_one_submission_per_training_run(tmp_path):
    """Through profiles/slurm (group-components included): synth, prepare and train are jobs of their own, and
    everything after each training run's training is one group job named after the run, holding every one of
    its jobs; train and prepare ask for `attempt` times their memory on a retry (first attempt shown here)."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    proc = snakemake(tmp_path, "-n", "--profile", str(REPO / "profiles/slurm"), "--slurm-no-account",
                     config=REPO / "configs/smoke.yaml", cores=None)
    text = proc.stdout + proc.stderr
    groups = re.split(r"Group job (run_\w+) \(jobs in lexicogr\. order\):", text)
    members = {name: re.findall(r"\n\s+rule (\w+):", body.split("Group job")[0])
               for name, body in zip(groups[1::2], groups[2::2])}
    assert set(members) == {"run_resnet50_r0", "run_resnet50_r1", "run_vgg16_r0"}, list(members)
    for name, rules in members.items():
        # per run: gradient, clean CAMs, 7 attacks, score, sanity, detect
        assert sorted(rules) == sorted(["gradient", "explain_clean", "score", "sanity", "detect"] + ["attack"] * 7), (
            name, rules)
    res = _job_resources(proc)
    assert [r["mem_mb"] for r in res["prepare"]] == ["16000"] * 2
    assert {r["mem_mb"] for r in res["train"]} == {"24000"}


@pytest.mark.parametrize(
    "patch,message",
    [
        ({"modles": {}}, "modles"),
        ({"models": {"resnet50": {"size": 64, "epoch": 3}}}, "epoch"),
        ({"attacks": {"fgsm": {"eps": [0.1, 1.5]}}}, "1.5"),
        ({"attacks": {"fgsm": {"eps": [-0.1]}}}, "-0.1"),
        ({"models": {"resnet5O": {"size": 64}}}, "unknown model 'resnet5O'"),
        ({"dataset": {"source": "folder", "root": "/no/such/tree"}}, "/no/such/tree"),
        ({"device": "gpu"}, "gpu"),
        ({"cam": {"target": "true"}}, "true"),
        ({"models": {"resnet50": {"size": 64, "epochs": 3, "pixel_noise": 0.1, "pixel_noise_from": 4}}}, "pixel_noise_from 4"),
        ({"metrics": {"measures": ["spearman", "kendall"]}}, "kendall"),
        ({"metrics": {"k": 2.5}}, "k 2.5"),
        ({"metrics": {"chance_seed": -1}}, "-1"),
        ({"sanity": {"images": 1}}, "sanity: images 1"),
        ({"sanity": {"treshold": 0.5}}, "treshold"),
        ({"dataset": {"source": "synthetic", "maks": True}}, "maks"),
        ({"cams": ["gradcam", "eigencam", "lime"]}, "'lime' is not one of ['gradcam', 'hirescam'"),
        ({"models": {"resnet50": {"size": 64, "adv_train": {"attack": "trades", "eps": 0.03}}}}, "'trades' is not one of"),
        ({"models": {"resnet50": {"size": 64, "adv_train": {"attack": "fgsm_rs", "eps": 0.03, "steps": 3}}}},
         "config: models: resnet50: adv_train: steps 3: fgsm_rs takes exactly one step"),
        ({"attribution": {"n_steps": 0}}, "n_steps"),
        ({"attribution": {"ig_method": "riemann_left", "n_steps": 1}}, "config: attribution: n_steps 1: must be >= 2"),
        ({"attribution": {"nt_samples": 0}}, "nt_samples"),
        ({"attribution": {"stdevs": -0.5}}, "stdevs"),
        ({"attribution": {"ig_method": "simpson"}}, "simpson"),
        ({"models": {"vit_tiny_patch16_224": {"size": 32}}},
         "config: models: vit_tiny_patch16_224: has no nn.ReLU module, so guided_gradcam"),
        ({"cams": []}, "cams"),
        ({"attacks": {"bim": {"eps": [0.05], "steps": 0}}}, "steps"),
        ({"attacks": {"mifgsm": {"eps": [0.05], "alpha": 0}}}, "alpha"),
        ({"attacks": {"fgsm": {"eps": [0.05], "targeted": "farthest"}}}, "farthest"),
        ({"attacks": {"explain": {"eps": [0.05], "method": "scorecam"}}}, "scorecam"),
        ({"attacks": {"explain": {"eps": [0.05], "method": "layercam"}}}, "method 'layercam' is not one of the study's cams"),
        ({"attacks": {"dual": {"eps": [0.05], "lam": -1}}}, "lam"),
        ({"attacks": {"explain": {"eps": [0.05], "steps": 0}}}, "steps"),
        ({"attacks": {"explain": {"eps": [0.05], "relu_beta": 0}}}, "relu_beta"),
        ({"attacks": {"square": {"eps": [2.0]}}}, "2.0 is greater than the maximum of 1"),
        ({"attacks": {"apgd": {"eps": [0.05, 2.0]}}}, "attacks: apgd: eps 2.0: apgd's eps is an L∞ radius"),
        ({"attacks": {"cw": {"eps": [0.5], "kappa": -1}}}, "kappa"),
        ({"attacks": {"square": {"eps": [0.05], "n_queries": 0}}}, "n_queries"),
        ({"transfer": [{"source": "resnet50", "target": "vgg16"}]}, "must share the input size (resnet50 64, vgg16 48)"),
        ({"transfer": [{"source": "resnet18", "target": "resnet50"}]}, "'resnet18' is not a model of this study"),
        ({"replicates": 0}, "schema['properties']['replicates']"),
        ({"replicates": 1.5}, "1.5 is not of type 'integer'"),
        ({"models": {"resnet50": {"size": 64, "replicates": 0}}}, "['replicates']"),
        ({"min_accuracy": 1.2}, "schema['properties']['min_accuracy']"),
        ({"min_accuracy": -0.1}, "min_accuracy"),
        ({"detection": {"scores": ["entropy"]}}, "'entropy' is not one of ['self_consistency'"),
        ({"detection": {"eps_d": 0}}, "['eps_d']"),
        ({"detection": {"eps_d": 1.5}}, "1.5 is greater than the maximum of 1"),
        ({"detection": {"draws": 0}}, "['draws']"),
        ({"detection": {"pair": ["gradcam", "layercam"]}}, "detection: pair: 'layercam' is not one of the study's cams"),
        ({"detection": {"method": "gradcampp"}}, "detection: method: 'gradcampp' is not one of the study's cams"),
        ({"detection": {"pair": ["gradcam", "gradcam"]}}, "['pair']"),
        ({"detection": None}, "attacks: adaptive: evades the study's detector: give a detection entry"),
        ({"attacks": {"adaptive": {"eps": [0.1], "score": "self_consistency", "method": "eigencam"}}},
         "attacks: adaptive: method 'eigencam' is not the detector's (detection: method 'gradcam')"),
        ({"detection": {"scores": ["max_softmax"]}}, "attacks: adaptive: score 'disagreement' is not one of detection: scores"),
        ({"attacks": {"adaptive": {"eps": [0.1], "score": "squeeze"}}}, "'squeeze' is not one of ['disagreement'"),
    ],
)
def test_bad_config_fails_before_any_job(tmp_path, patch, message):
    cfg = load("configs/smoke.yaml")
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict) and k != "models":
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    proc = snakemake(tmp_path, "-n", config=cfg, check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_the_schema_lists_every_cam_method():
    from advcam.explainers import METHODS

    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    assert tuple(schema["properties"]["cams"]["items"]["enum"]) == METHODS
    assert load("configs/paper.yaml")["cams"] == list(METHODS)  # every CAM and every gradient attribution
    # the CPU default: a method of each family served by the shared pass (none that equals another on these
    # models, not the K-forward ones)
    assert load("config.yaml")["cams"] == ["gradcam", "gradcampp", "layercam", "eigencam", "eigengradcam"]


@pytest.mark.slow
def test_smoke_end_to_end(smoke_run):
    res = smoke_run / "results"
    s = pd.read_csv(res / "summary" / "mod_vid.csv")
    # run (model, replicate) × explainer (2 CAMs, 3 attributions) × (fgsm and noise at 2 ε, explain, dual and adaptive
    # at 1, the chance reference)
    cams = {"gradcam", "eigencam", "saliency", "smoothgrad", "guided_gradcam"}
    assert len(s) == 3 * 5 * (2 * 2 + 3 + 1)
    assert set(s["model"]) == {"resnet50", "vgg16"}
    assert set(s["attack"]) == {"fgsm", "noise", "explain", "dual", "adaptive", "chance"}
    kept = s[s["attack"] == "explain"]  # keep the label, move the map: no prediction changes
    assert kept["flip_rate"].eq(0).all() and kept["success_rate"].eq(1).all()
    ref = s[s["attack"] == "chance"]
    assert ref["eps"].eq(0).all() and ref["mod_rel"].eq(1).all()
    s = s[s["attack"] != "chance"]
    assert s.loc[s["attack"] == "noise", "mod_rel"].abs().max() < 1e-12
    # localisation on the synthetic part masks, and each (model, method)'s sanity verdict
    for col in ("energy_clean_mean", "energy_adv_mean", "point_clean_mean", "point_adv_mean", "mask_frac_mean"):
        assert s[col].between(0, 1).all(), col
    assert s["sanity"].isin(["ok", "ignores head", "ignores weights"]).all()
    # every run is named and judged by its training; resnet50 has a second replicate (the smoke config's override)
    assert s["training_flag"].isin(["ok", "at chance", "below min_accuracy"]).all()
    assert sorted(set(zip(s["model"], s["replicate"]))) == [("resnet50", 0), ("resnet50", 1), ("vgg16", 0)]
    r0, r1 = (torch_load(res / f"models/resnet50/r{r}/model.pt") for r in (0, 1))
    assert r0["meta"]["replicate"] == 0 and r1["meta"]["replicate"] == 1 and r0["meta"]["model"] == "resnet50"
    assert r0["meta"]["train_seed"] == 0 and r1["meta"]["train_seed"] not in (0, 1)
    assert any((r0["state_dict"][k] != r1["state_dict"][k]).any() for k in r0["state_dict"] if k.endswith("weight"))
    reps = pd.read_csv(res / "summary" / "replicates.csv")
    assert set(reps["model"]) == {"resnet50", "vgg16"} and not reps.duplicated(["model", "source_model", "cam", "attack", "eps"]).any()
    for _, r in reps.iterrows():  # a run at chance (4 test images after one epoch) is left out by name
        flagged = s[(s["model"] == r["model"]) & (s["training_flag"] != "ok")]["replicate"].unique()
        assert r["n_replicates"] == (2 if r["model"] == "resnet50" else 1) - len(flagged)
        assert all(f"{r['model']}/r{f}" in r["left_out"] for f in flagged)
        assert (r["n_replicates"] >= 2) == np.isfinite(r["mod_ci_low"]) and (r["ci_note"] == "") == (r["n_replicates"] >= 2)
    claims = pd.read_csv(res / "summary" / "claims.csv")
    assert set(claims.columns) >= {"claim", "statistic", "ci_low", "ci_high", "verdict", "left_out"}
    assert claims["verdict"].isin(["supported", "contradicted", "inconclusive", "skipped"]).all()
    s = s[s["replicate"] == 0]
    san = pd.read_csv(res / "summary" / "sanity.csv")
    assert set(san["model"]) == {"resnet50", "vgg16"} and set(san["cam"]) == cams
    assert san["blocks"].max() == 6 and san.loc[san["blocks"] == 0, "nissim_mean"].eq(0).all()
    assert set(s["cam"]) == cams
    # the robustness columns of every run: standard training here, and each run's mean gradient–image alignment
    assert s["adv_train"].eq("none").all() and s["robust_acc"].isna().all() and s["alignment"].between(0, 1).all()
    # the predictions do not depend on the method
    assert s.groupby(["model", "attack", "eps"])["acc_adv"].nunique().eq(1).all()
    assert set(s["eps"]) == {0.05, 0.1} and set(s.loc[s["attack"].isin(["explain", "dual"]), "eps"]) == {0.1}
    for col in ("mod", "mod_ci_low", "mod_ci_high", "acc_clean", "acc_adv", "flip_rate"):
        assert s[col].between(0, 1).all(), col
    assert (s["n"] == s["n"].iloc[0]).all() and s["n"].iloc[0] >= 4
    required = {"model", "attack", "eps", "n", "mod", "mod_ci_low", "mod_ci_high", "nissim_var", "acc_clean", "acc_adv",
                "flip_rate", "spearman_mean", "spearman_ci_low", "spearman_ci_high", "spearman_nan", "topk_mean",
                "topk_nan", "com_shift_mean", "com_shift_nan"}
    assert required <= set(s.columns)
    assert s["spearman_mean"].between(-1, 1).all() and s["topk_mean"].between(0, 1).all()
    assert (s["com_shift_mean"] >= 0).all()
    v = pd.read_csv(res / "summary" / "vid.csv")
    assert len(v) == 3 * 5 * 2 and v["vid"].between(0, 1).all() and set(v["attack"]) == {"fgsm", "noise"}  # 1-ε attacks: none
    assert set(v["cam"]) == cams
    assert "training_flag" in v and set(v["replicate"]) == {0, 1}
    # an attribution's raw map is at the input's size (the CAMs' at their layer's); the clean files hold the alignment
    with h5py.File(res / "heatmaps" / "vgg16" / "r0" / "clean" / "saliency.h5") as f:
        assert f["raw"].shape == f["maps"].shape and f["alignment"].shape == f["index"].shape
    with h5py.File(res / "heatmaps" / "vgg16" / "r0" / "clean" / "gradcam.h5") as f:
        assert f["raw"].shape[1:] < f["maps"].shape[1:]
    for m in cams:
        assert (res / "heatmaps" / "vgg16" / "r0" / "clean" / f"{m}.h5").is_file()
        assert (res / "heatmaps" / "vgg16" / "r0" / "fgsm" / "0.1" / f"{m}.h5").is_file()
        assert (res / "heatmaps" / "resnet50" / "r1" / "fgsm" / "0.1" / f"{m}.h5").is_file()
    assert set(san["replicate"]) == {0, 1} and "training_flag" in san
    for name in ("mod", "accuracy", "vid", "nissim_fgsm", "nissim_noise", "nissim_explain", "nissim_dual", "nissim_adaptive", "gallery_resnet50", "gallery_vgg16",
                 "localisation", "sanity_resnet50", "sanity_vgg16", "claims"):
        assert (res / "plots" / f"{name}.png").stat().st_size > 1000
    assert (res / "logs" / "train" / "resnet50" / "r1.log").is_file()
    assert (res / "benchmarks" / "train" / "resnet50" / "r0.tsv").is_file()
    assert not list(res.rglob(".*.tmp-*"))


@pytest.mark.slow
def test_partial_reruns(smoke_run):
    cfg = load("configs/smoke.yaml")
    # nothing to do after a complete run
    proc = snakemake(smoke_run, "-n", config=cfg)
    assert "Nothing to be done" in proc.stdout + proc.stderr
    # one more FGSM ε: only its attack/heatmap jobs and the score job (per model), summary, plots and FGSM galleries
    more_eps = {**cfg, "attacks": {**cfg["attacks"], "fgsm": {"eps": [0.05, 0.1, 0.2]}}}
    c = job_counts(snakemake(smoke_run, "-n", config=more_eps))
    # 3 runs: resnet50 r0, r1, vgg16; each run's detection job scores the new ε's images too
    assert c == {"attack": 3, "score": 3, "detect": 3, "summarise": 1, "plot": 1, "gallery": 2, "all": 1}
    # one more replicate of vgg16: only its training run's jobs; one fewer of resnet50: nothing upstream reruns
    models = cfg["models"]
    more_reps = {**cfg, "models": {**models, "vgg16": {**models["vgg16"], "replicates": 2}}}
    c = job_counts(snakemake(smoke_run, "-n", config=more_reps))
    assert c == {"train": 1, "gradient": 1, "explain_clean": 1, "attack": 7, "score": 1, "sanity": 1, "detect": 1,
                 "summarise": 1, "plot": 1, "all": 1}
    # an attribution setting reruns every job that writes heatmaps and what reads them, as a CAM setting does; a
    # study without attributions is not passed it (dropping the last attribution reruns them too, for that reason)
    c = job_counts(snakemake(smoke_run, "-n", config={**cfg, "attribution": {"nt_samples": 3}}))
    assert c == {"attack": 21, "explain_clean": 3, "sanity": 3, "detect": 3, "gallery": 2, "score": 3, "summarise": 1,
                 "plot": 1, "all": 1}
    fewer_reps = {**cfg, "models": {**models, "resnet50": {**models["resnet50"], "replicates": 1}}}
    assert job_counts(snakemake(smoke_run, "-n", config=fewer_reps)) == {"summarise": 1, "plot": 1, "all": 1}
    assert job_counts(snakemake(smoke_run, "-n", config={**cfg, "min_accuracy": 0.5})) == {"summarise": 1, "plot": 1,
                                                                                           "all": 1}
    # one more model at an existing size: only that model is trained
    more_models = {**cfg, "models": {**cfg["models"], "resnet18": {"size": 64, "epochs": 1, "batch_size": 8}}}
    c = job_counts(snakemake(smoke_run, "-n", config=more_models))
    assert c["train"] == 1 and c["gradient"] == 1 and c["explain_clean"] == 1
    assert c["attack"] == 7 and c["score"] == 1 and c["detect"] == 1  # fgsm, noise at 2 ε; explain, dual, adaptive at 1
    assert "prepare" not in c and "synth" not in c
    # a measure dropped or k changed: only scoring and the summaries rerun
    fewer = {**cfg, "metrics": {"measures": ["spearman"], "k": 0.2}}
    c = job_counts(snakemake(smoke_run, "-n", config=fewer))
    assert c == {"score": 3, "summarise": 1, "plot": 1, "all": 1}
    # a CAM method added: its heatmaps come from the attack and clean-explain jobs (no training, no gradient sign)
    more_cams = {**cfg, "cams": cfg["cams"] + ["gradcampp"]}
    c = job_counts(snakemake(smoke_run, "-n", config=more_cams))
    # (the attack jobs rewrite their attack files, which the detection jobs read)
    assert c == {"explain_clean": 3, "attack": 21, "score": 3, "sanity": 3, "detect": 3, "summarise": 1, "plot": 1,
                 "gallery": 2, "all": 1}
    # a CAM method removed: no heatmap is recomputed; scores, summaries and galleries drop it
    # (the detection pair and the adaptive attack use eigencam: they are left out with it, which reruns nothing upstream)
    without_adaptive = {k: v for k, v in cfg["attacks"].items() if k != "adaptive"}
    fewer_cams = {**{k: v for k, v in cfg.items() if k != "detection"}, "attacks": without_adaptive,
                  "cams": [m for m in cfg["cams"] if m != "eigencam"]}
    c = job_counts(snakemake(smoke_run, "-n", config=fewer_cams))
    assert c == {"score": 3, "summarise": 1, "plot": 1, "gallery": 2, "all": 1}
    # the chance pairing reseeded: only scoring and the summaries; the sanity threshold: only the summaries; its
    # image count: the sanity jobs and the summaries
    reseeded = {**cfg, "metrics": {"chance_seed": 3}}
    assert job_counts(snakemake(smoke_run, "-n", config=reseeded)) == {"score": 3, "summarise": 1, "plot": 1, "all": 1}
    stricter = {**cfg, "sanity": {"threshold": 0.3}}
    assert job_counts(snakemake(smoke_run, "-n", config=stricter)) == {"summarise": 1, "plot": 1, "all": 1}
    more_images = {**cfg, "sanity": {"images": 8}}
    assert job_counts(snakemake(smoke_run, "-n", config=more_images)) == {"sanity": 3, "summarise": 1, "plot": 1, "all": 1}
    # an iterative attack, a targeted one, an L2 minimum-norm one and a gradient-free one added: only their own
    # attack and score jobs (and the summaries); their new settings leave the other attacks' jobs alone
    more_attacks = {**cfg, "attacks": {**cfg["attacks"], "bim": {"eps": [0.05], "steps": 2},
                                       "mifgsm": {"eps": [0.05], "steps": 2, "targeted": "next"},
                                       "cw": {"eps": [0.5], "steps": 2}, "square": {"eps": [0.05], "n_queries": 4}}}
    c = job_counts(snakemake(smoke_run, "-n", config=more_attacks))
    assert c == {"attack": 12, "score": 3, "detect": 3, "summarise": 1, "plot": 1, "all": 1}
    # an explanation attack's setting changed: only its own attack jobs and the scores
    longer = {**cfg, "attacks": {**cfg["attacks"], "explain": {**cfg["attacks"]["explain"], "steps": 3}}}
    assert job_counts(snakemake(smoke_run, "-n", config=longer)) == {"attack": 3, "score": 3, "detect": 3,
                                                                        "summarise": 1, "plot": 1, "all": 1}
    # a detection setting changed: only the detection jobs and the summaries; the FPR read: only the summaries
    quieter = {**cfg, "detection": {**cfg["detection"], "eps_d": 0.05,
                                    "scores": ["self_consistency", "disagreement", "squeeze"]}}
    # (the adaptive attack evades this detector with its eps_d: its attack jobs and the scores rerun too)
    assert job_counts(snakemake(smoke_run, "-n", config=quieter)) == {"attack": 3, "score": 3, "detect": 3, "summarise": 1,
                                                                      "plot": 1, "all": 1}
    stricter_fpr = {**cfg, "detection": {**cfg["detection"], "fpr": 0.1}}
    assert job_counts(snakemake(smoke_run, "-n", config=stricter_fpr)) == {"summarise": 1, "plot": 1, "all": 1}
    # detection dropped (with the adaptive attack, which evades it): nothing upstream reruns; the score jobs drop its rows
    off = {**{k: v for k, v in cfg.items() if k != "detection"}, "attacks": without_adaptive}
    assert job_counts(snakemake(smoke_run, "-n", config=off)) == {"score": 3, "summarise": 1, "plot": 1, "all": 1}
    # a transfer pair (a model at the source's size added): only that model's own jobs and the pair's
    pair = {**cfg, "models": {**cfg["models"], "resnet18": {"size": 64, "epochs": 1, "batch_size": 8}},
            "transfer": [{"source": "resnet50", "target": "resnet18"}]}
    c = job_counts(snakemake(smoke_run, "-n", config=pair))
    # resnet50 has 2 replicates, resnet18 1: replicate 0 of each is paired
    # fgsm at 2 ε, explain, dual and adaptive at 1 are transferred (not the noise control)
    assert c["transfer"] == 5 and c["score_transfer"] == 1 and c["train"] == 1 and c["attack"] == 7
    # a scheduling priority is not provenance: nothing reruns
    prio = {**cfg, "models": {**cfg["models"], "vgg16": {**cfg["models"]["vgg16"], "priority": 5}}}
    proc = snakemake(smoke_run, "-n", config=prio)
    assert "Nothing to be done" in proc.stdout + proc.stderr
    # a training setting is: starting the pixel noise later retrains that model and what depends on it
    later = {**cfg, "models": {**cfg["models"], "vgg16": {**cfg["models"]["vgg16"], "epochs": 2, "pixel_noise": 0.1,
                                                          "pixel_noise_from": 2}}}
    c = job_counts(snakemake(smoke_run, "-n", config=later))
    assert c["train"] == 1 and c["attack"] == 7 and "prepare" not in c


@pytest.mark.slow
def test_report(smoke_run):
    snakemake(smoke_run, "--report", "report.html", config=REPO / "configs/smoke.yaml")
    html = (smoke_run / "report.html").read_text(errors="ignore")
    assert "MOD" in html and len(html) > 10_000


def test_a_configfile_is_the_whole_study_from_the_repo_root(tmp_path):
    """From the repo root, where config.yaml lies, a study given with --configfile takes nothing from config.yaml
    (snakemake would deep-merge it over the Snakefile's configfile): only its own models are planned, each
    with its own training values or the schema's defaults. Without --configfile, config.yaml is the study."""
    user = tmp_path / "two.yaml"
    user.write_text(yaml.safe_dump({
        "dataset": {"source": "synthetic", "identities": 3, "images_per_identity": 12, "synthetic_size": 48},
        "models": {"resnet18": {"size": 48, "epochs": 2}, "vgg16": {"size": 48, "epochs": 3, "lr": 1e-4}},
        "attacks": {"fgsm": {"eps": [0.1]}},
    }))
    paper = load("configs/paper.yaml")
    root = tmp_path / "vggface2" / "train"
    for ident in ("n000001", "n000002"):
        (root / ident).mkdir(parents=True)
    paper["dataset"]["root"] = str(root)
    (tmp_path / "paper.yaml").write_text(yaml.safe_dump(paper))
    defaults = {"lr": 0.001, "warmup_epochs": 1, "augment": 1.0, "pixel_noise": 0.0, "pixel_noise_from": 1}
    for cfg in (None, REPO / "configs/smoke.yaml", tmp_path / "paper.yaml", user):
        study = yaml.safe_load((cfg or REPO / "config.yaml").read_text())
        cmd = [sys.executable, "-m", "snakemake", "-n", "-p", "--cores", "2", "--config", f"results={tmp_path / 'results'}"]
        proc = subprocess.run(cmd + (["--configfile", str(cfg)] if cfg else []),
                              capture_output=True, text=True, cwd=REPO, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        out = proc.stdout + proc.stderr
        trains = [line for line in out.splitlines() if "advcam train " in line]
        archs = sorted(re.search(r"--arch (\S+)", t).group(1) for t in trains)
        # one training run per replicate (top-level `replicates`, a model's own overriding it, 1 where absent)
        runs = {m: spec.get("replicates", study.get("replicates", 1)) for m, spec in study["models"].items()}
        assert archs == sorted(m for m, n in runs.items() for _ in range(n)), (cfg, archs)
        for t in trains:
            spec = {**defaults, **study["models"][re.search(r"--arch (\S+)", t).group(1)]}
            passed = json.loads(re.search(r"--settings '(\{.*?\})'", t).group(1))  # the job's TrainSettings
            for key in ("epochs", *defaults):
                assert passed[key] == spec[key], (cfg, key, t)
            assert passed["amp"] is None, t  # chosen per machine unless the config says
        assert ("--attack noise" in out) == ("noise" in study["attacks"]), cfg


SUMMARIES = ("mod_vid.csv", "vid.csv", "vid_per_image.csv", "nissim.csv", "replicates.csv", "claims.csv")


@pytest.mark.slow
def test_killed_mid_attack_resumes_to_identical_summaries(smoke_run, tmp_path):
    """SIGKILL the whole smoke study (snakemake and its jobs) while an attack job runs; the same command is then
    refused until `--unlock`, after which it finishes the study with summaries byte-identical to the
    uninterrupted run's (README: "When a run is interrupted")."""
    wd = tmp_path / "killed"
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(wd), "--cores", "2",
           "--configfile", str(REPO / "configs/smoke.yaml")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    logs = wd / "results" / "logs" / "attack"
    deadline = time.monotonic() + 900
    try:
        while not (logs.is_dir() and any(logs.rglob("*.log"))):  # a job's log opens when the job starts
            assert proc.poll() is None, "the study ended before any attack job started"
            assert time.monotonic() < deadline, "no attack job started in 900 s"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (wd / "results" / "summary" / "mod_vid.csv").exists()
    locked = snakemake(wd, config=REPO / "configs/smoke.yaml", check=False)
    assert locked.returncode != 0 and "LockException" in locked.stdout + locked.stderr
    snakemake(wd, "--unlock", config=REPO / "configs/smoke.yaml")
    snakemake(wd, config=REPO / "configs/smoke.yaml")
    for name in SUMMARIES:
        assert (wd / "results/summary" / name).read_bytes() == (smoke_run / "results/summary" / name).read_bytes(), name
