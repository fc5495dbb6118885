# Config validation (defaults filled in), derived names, and the input functions the rules share.
import dataclasses
import hashlib
import json
import os
import re
import shlex
import sys
from pathlib import Path

from snakemake.utils import validate
from snakemake_interface_executor_plugins.settings import ExecMode

# `detection:` left empty in YAML reads as null: the same as leaving it out (no detection)
if "detection" in config and config["detection"] is None:
    del config["detection"]
validate(config, schema="../schemas/config.schema.yaml", set_default=True)

RESULTS = config["results"]
DEVICE = config["device"]
DATASET = config["dataset"]
MODELS = config["models"]
# training replicates per model (the model's own `replicates`, else the study's): replicate r trains with a seed
# derived from (seed, r) on the same split; every per-model path carries r{r}
REPLICATES = {m: spec["replicates"] or config["replicates"] for m, spec in MODELS.items()}
CAMS = config["cams"]  # the CAM methods of the study: a heatmap file and a score row per method
ATTACKS = {name: spec for name, spec in config.get("attacks", {}).items() if spec.get("eps")}
# Rules call the CLI as `python -m advcam <stage>`: the library is found whether it was pip-installed or not
# (e.g. inside a --use-conda environment that holds only the dependencies).
# The package's folder, workflow/, found from this file (not from the main Snakefile's folder, which is another
# one when this workflow is used as a module or through a Snakefile elsewhere).
ADVCAM_PATH = str(Path(str(workflow.current_basedir)).resolve().parent)
shell.prefix(f"export PYTHONPATH={ADVCAM_PATH}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; ")
# the settings dataclasses check each family's entries here, at parse time (advcam.settings imports no torch)
if ADVCAM_PATH not in sys.path:
    sys.path.insert(0, ADVCAM_PATH)
from advcam.settings import ATTACKS as ATTACK_NAMES
from advcam.settings import EXPLANATION_ATTACKS, eps_label
from advcam.settings import WORKFLOW_ONLY, AttackSettings, CamSettings, ScoreSettings, SettingsError, TrainSettings
from advcam.settings import DetectionSettings
from advcam.settings import ATTRIBUTION_METHOD_NAMES, AttributionSettings

if not ATTACKS:
    raise ValueError("config: attacks: give at least one attack with a non-empty eps list")
for _name, _spec in ATTACKS.items():
    if 0 in _spec["eps"]:
        raise ValueError(f"config: attacks: {_name}: eps: 0 is the clean set and is always included; remove it")
if DATASET["source"] == "folder":
    if not DATASET["root"]:
        raise ValueError("config: dataset: root is required when dataset: source is 'folder'")
    if not Path(DATASET["root"]).is_dir():
        raise ValueError(f"config: dataset: root '{DATASET['root']}' does not exist or is not a folder")
# localisation needs part masks: the synthetic set always has them, a folder tree when it says so
LOCALISE = DATASET["source"] == "synthetic" or DATASET["masks"]
SANITY = config["sanity"]["images"] > 0
if config["sanity"]["images"] == 1:
    raise ValueError("config: sanity: images 1: the check compares maps over at least 2 test images (0 turns it off)")
TRANSFER = [(t["source"], t["target"]) for t in config["transfer"]]
for _src, _tgt in TRANSFER:
    for _m in (_src, _tgt):
        if _m not in MODELS:
            raise ValueError(
                f"config: transfer: {_src} -> {_tgt}: '{_m}' is not a model of this study ({', '.join(MODELS)})"
            )
    if _src == _tgt:
        raise ValueError(f"config: transfer: {_src} -> {_tgt}: a model's own attacks are already its white-box rows")
    if MODELS[_src]["size"] != MODELS[_tgt]["size"]:
        raise ValueError(
            f"config: transfer: {_src} -> {_tgt}: the two must share the input size "
            f"({_src} {MODELS[_src]['size']}, {_tgt} {MODELS[_tgt]['size']})"
        )
if len(set(TRANSFER)) != len(TRANSFER):
    raise ValueError("config: transfer: a (source, target) pair is listed twice")
if abs(sum(DATASET["split"]) - 1) > 1e-6:
    raise ValueError(f"config: dataset: split {DATASET['split']} must sum to 1")


def _settings(cls, where, spec, family):
    """One family's settings from its validated config entry: their own checks run here, before any job starts."""
    try:
        return cls.from_mapping(spec, ignore=WORKFLOW_ONLY[family])
    except SettingsError as e:
        raise ValueError(f"config: {where}: {e}") from None


TRAIN_SETTINGS = {m: _settings(TrainSettings, f"models: {m}", spec, "train") for m, spec in MODELS.items()}
# detection from the input alone (advcam.detection): off unless the config has a detection entry
DETECTION = config.get("detection") is not None
DETECTION_SETTINGS = _settings(DetectionSettings, "detection", config["detection"], "detection") if DETECTION else None
for _m in DETECTION_SETTINGS.methods if DETECTION else ():  # the CAM methods the chosen scores use
    if _m not in CAMS:
        _key = (
            "method" if "self_consistency" in DETECTION_SETTINGS.scores and _m == DETECTION_SETTINGS.method else "pair"
        )
        raise ValueError(
            f"config: detection: {_key}: '{_m}' is not one of the study's cams ({', '.join(CAMS)}): "
            "a detector score must use a method the study runs"
        )


def _from_study(attack, spec):
    """What an attack's settings take from the study's other entries: the explanation attacks measure their map's
    dissimilarity with the study's SSIM window; the adaptive attack evades the study's detector (its CAM methods,
    noise and draws are the detection entry's)."""
    extra = {"ssim": config["ssim"]} if attack in EXPLANATION_ATTACKS else {}
    if attack == "adaptive":
        if not DETECTION:
            raise ValueError("config: attacks: adaptive: evades the study's detector: give a detection entry")
        d = DETECTION_SETTINGS
        score = spec.get("score", "disagreement")
        if score not in d.scores:
            raise ValueError(
                f"config: attacks: adaptive: score '{score}' is not one of detection: scores ({', '.join(d.scores)})"
            )
        if score == "self_consistency" and spec.get("method", d.method) != d.method:
            raise ValueError(
                f"config: attacks: adaptive: method '{spec['method']}' is not the detector's (detection: method "
                f"'{d.method}')"
            )
        extra.update(pair=d.pair, eps_d=d.eps_d, draws=d.draws, method=spec.get("method") or d.method)
    return extra


ATTACK_SETTINGS = {
    a: _settings(AttackSettings, f"attacks: {a}", {"attack": a, **spec, **_from_study(a, spec)}, "attack")
    for a, spec in ATTACKS.items()
}
for _name, _spec in ATTACKS.items():  # an L∞ radius lies in (0, 1]; an L2 one is > 0 (advcam.settings.L2_ATTACKS)
    for _e in _spec["eps"]:
        try:
            ATTACK_SETTINGS[_name].check_eps(_e)
        except SettingsError as e:
            raise ValueError(f"config: attacks: {_name}: {e}") from None
for _name in set(ATTACKS) & set(EXPLANATION_ATTACKS) - {"adaptive"}:  # the adaptive attack's are the detector's
    if ATTACK_SETTINGS[_name].method not in CAMS:
        raise ValueError(
            f"config: attacks: {_name}: method '{ATTACK_SETTINGS[_name].method}' is not one of the study's cams "
            f"({', '.join(CAMS)}): its map would not be scored"
        )
CAM_SETTINGS = _settings(CamSettings, "cam", config["cam"], "cam")
# the gradient attributions among the study's explainers, and their parameters (passed only when there is one, so
# that a change to them reruns no job of a CAM-only study)
ATTRIBUTIONS = [m for m in CAMS if m in ATTRIBUTION_METHOD_NAMES]
ATTRIBUTION_SETTINGS = _settings(AttributionSettings, "attribution", config["attribution"], "attribution")
ATTRIBUTION_ARG = f"--attribution {shlex.quote(ATTRIBUTION_SETTINGS.to_json())}" if ATTRIBUTIONS else ""
# the white-box tables carry the chance reference; a transfer table's would repeat its target's
SCORE_SETTINGS = _settings(ScoreSettings, "metrics", {**config["metrics"], "ssim": config["ssim"]}, "score")
TRANSFER_SCORE_SETTINGS = dataclasses.replace(SCORE_SETTINGS, chance_seed=None)
# The GPU a job that loads a model asks of a cluster node follows `device`: none under `device: cpu`, one under
# `cuda` or `auto` (auto uses CUDA wherever the node has it). CPU-only stages never ask for one.
GPU = 0 if DEVICE == "cpu" else 1
# what every job that loads a model asks of a cluster node (the GPU and the limits of one attack or CAM job)
GPU_JOB = dict(gpu=GPU, runtime=60, mem_mb=8000)
# Train and prepare are retried (a node lost, a job cancelled, memory or time too short), each attempt with
# `attempt` times the first one's memory and time: snakemake passes attempt = 1, 2, 3.
RETRIES = 2


def scaled(base):
    """A resource of ``base`` on the first attempt, ``attempt`` times that on the next ones."""
    return lambda wildcards, attempt: base * attempt


# On a cluster, every job after a training run's training (its gradient, attacks, transfers onto it, clean CAMs,
# score tables, sanity check, detection) goes as one submission, `run_<model>_r<replicate>`: a group job runs its
# jobs one after another inside its allocation (profiles/slurm scopes `gpu` per submission), so the chain pays one
# queue wait and one snakemake start-up instead of one per job. The sanity check shares no file with the rest of
# the chain, so the profile lets a group span its connected components (`group-components`). Locally groups are
# ignored.
RUN_GROUP = "run_{model}_r{rep}"

# the CAM settings of every job that writes heatmaps (a plain dict: snakemake reruns a job when a value changes)
CAM_PARAMS = dict(
    target=CAM_SETTINGS.target,
    batch=CAM_SETTINGS.batch_size,
    amp="--amp" if CAM_SETTINGS.amp else "",
    attribution=ATTRIBUTION_ARG,
    device=DEVICE,
)


def _check_models():
    """Unknown architectures and missing weight files fail here, before any job starts."""
    import timm
    from advcam.models import timm_name

    for key, spec in MODELS.items():
        arch = spec["arch"] or key
        if not timm.is_model(timm_name(arch)):
            raise ValueError(f"config: models: {key}: unknown model '{arch}' (not a timm architecture)")
        if spec["pretrained_file"] and not Path(spec["pretrained_file"]).is_file():
            raise ValueError(f"config: models: {key}: pretrained_file '{spec['pretrained_file']}' does not exist")
    guided = [m for m in CAMS if m in ("guided_backprop", "guided_gradcam")]
    if guided:  # guided backprop rewrites nn.ReLU modules: a network without one cannot be given it
        import torch

        for key, spec in MODELS.items():
            with torch.device("meta"):  # the architecture without weights: no memory, no time
                net = timm.create_model(timm_name(spec["arch"] or key), num_classes=2)
            if not any(type(m) is torch.nn.ReLU for m in net.modules()):
                raise ValueError(
                    f"config: models: {key}: has no nn.ReLU module, so {', '.join(guided)} (guided backprop) cannot "
                    "be given to it; drop it from cams or the model from the study"
                )


# Only where the run is planned: a job's own snakemake (inside a SLURM job, or a subprocess) re-parses this file,
# and importing timm there cost ~3.6 s per parse, twice per cluster job (batch script and job step).
if workflow.exec_mode == ExecMode.DEFAULT:
    _check_models()


def arch(model):
    return MODELS[model]["arch"] or model


def size(model):
    return MODELS[model]["size"]


def config_hash(*parts):
    """Short hash of the config parts that determine an output (recorded as provenance)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


#: model keys that only steer scheduling or how many runs there are: left out of the provenance hash, so changing
#: them retrains nothing (the replicate itself is in each training's path and command)
SCHEDULING_KEYS = ("priority", "replicates")


def model_hash(model):
    return config_hash(DATASET, {k: v for k, v in MODELS[model].items() if k not in SCHEDULING_KEYS})


# Scheduling, in three tiers: every training first (they gate the rest of the study; on few cores the last training
# to start otherwise waits behind the others' attacks), longest first; then the jobs that end a model's chain (score,
# gallery) as soon as they are ready, so they overlap the next model's attacks instead of piling up at the end;
# then each model's attacks, explanations and sanity check, model by model in the same order (the model trained
# last comes last). Priorities only order jobs that are ready; ranks keep the tiers apart whatever the config's values.
_RANK = {p: i for i, p in enumerate(sorted({m["priority"] for m in MODELS.values()}))}


def _rank(model):
    return _RANK[MODELS[model]["priority"]]


def train_priority(wildcards):
    """Above every job downstream of a training, in the order of the models' ``priority``."""
    return len(_RANK) + 1 + _rank(wildcards.model)


def prepare_priority(wildcards):
    """A store inherits the highest priority of the trainings on it, so the first model's data is ready first
    (else its training waits behind the others')."""
    return max(
        (len(_RANK) + 1 + _rank(k) for k, m in MODELS.items() if str(m["size"]) == str(wildcards.size)), default=0
    )


def collect_priority(wildcards):
    """The jobs that end a model's chain (score, gallery): below the trainings, above every attack."""
    return len(_RANK)


def model_priority(wildcards):
    """A model's attacks, explanations and sanity check: model by model, in the order of ``priority``."""
    return _rank(wildcards.model)


def dataset_root(wildcards):
    """The synthetic tree is built by rule synth; an external tree is checked at parse time instead."""
    return synthetic_dir() if DATASET["source"] == "synthetic" else []


def synthetic_dir():
    return f"{RESULTS}/data/synthetic"


def attack_settings(wildcards):
    """The attack's settings as one JSON argument (advcam.settings.AttackSettings; checked at parse time)."""
    return ATTACK_SETTINGS[wildcards.attack].to_json()


def train_settings(wildcards):
    """The model's recipe as one JSON argument (advcam.settings.TrainSettings; checked at parse time)."""
    return TRAIN_SETTINGS[wildcards.model].to_json()


def data_store(wildcards):
    return f"{RESULTS}/data/{size(wildcards.model)}.h5"


def runs():
    """(model, replicate) of every training run of the study."""
    return [(m, r) for m in MODELS for r in range(REPLICATES[m])]


def run_dir(model="{model}", rep="{rep}"):
    """Where everything of one training run lives below each stage's folder: <model>/r<replicate>."""
    return f"{model}/r{rep}"


def model_file(model="{model}", rep="{rep}"):
    return f"{RESULTS}/models/{run_dir(model, rep)}/model.pt"


def train_reports():
    """Every training run's train.json (the summaries read each run's architecture and class count)."""
    return [f"{RESULTS}/models/{run_dir(m, r)}/train.json" for m, r in runs()]


def attack_jobs():
    """(model, replicate, attack, eps) of every attack in the config."""
    return [(m, r, a, eps_label(e)) for m, r in runs() for a, spec in ATTACKS.items() for e in spec["eps"]]


def score_files():
    """One score table per training run (every attack and ε of it)."""
    return [f"{RESULTS}/scores/{run_dir(m, r)}/white_box.csv" for m, r in runs()]


def model_adv_heatmaps(model, rep):
    """Every adversarial heatmap file of one training run: each attack, ε and CAM method."""
    return [
        f for m, r, a, e in attack_jobs() if (m, str(r)) == (model, str(rep)) for f in adv_heatmap_files(m, r, a, e)
    ]


def transfer_runs():
    """(target, source, replicate) of every transfer pair: replicate r of the source onto replicate r of the target,
    for the replicates both have."""
    return [(t, s, r) for s, t in TRANSFER for r in range(min(REPLICATES[s], REPLICATES[t]))]


def transfer_jobs():
    """(target, source, replicate, attack, eps) of every transfer pair and attack but the noise control."""
    return [
        (t, s, r, a, eps_label(e))
        for t, s, r in transfer_runs()
        for a, spec in ATTACKS.items()
        if a != "noise"
        for e in spec["eps"]
    ]


def transfer_score_files():
    """One score table per transfer pair and replicate (every attack and ε of it)."""
    return [f"{RESULTS}/scores/{run_dir(t, r)}/from_{s}.csv" for t, s, r in transfer_runs()]


def pair_transfer_heatmaps(target, source, rep):
    """Every heatmap file of the source's adversarial images explained by the target (one replicate of each): each
    attack, ε and method."""
    return [
        f
        for t, s, r, a, e in transfer_jobs()
        if (t, s, str(r)) == (target, source, str(rep))
        for f in transfer_heatmap_files(t, s, r, a, e)
    ]


def transfer_heatmap_files(model="{model}", source="{source}", rep="{rep}", attack="{attack}", eps="{eps}"):
    return [f"{RESULTS}/heatmaps/{run_dir(model, rep)}/from_{source}/{attack}/{eps}/{cam}.h5" for cam in CAMS]


def transfer_sign(wildcards):
    """Untargeted FGSM's perturbation lives in the source's gradient-sign file, not in its attack file."""
    if wildcards.attack == "fgsm" and ATTACK_SETTINGS["fgsm"].targeted == "none":
        return f"{RESULTS}/attacks/{run_dir(wildcards.source, wildcards.rep)}/fgsm_sign.h5"
    return []


def transfer_targets():
    return sorted({t for _, t in TRANSFER})


def clean_heatmap_files(model="{model}", rep="{rep}"):
    """One clean heatmap file per CAM method (named after it: the stages read the method from the name)."""
    return [f"{RESULTS}/heatmaps/{run_dir(model, rep)}/clean/{cam}.h5" for cam in CAMS]


def adv_heatmap_files(model="{model}", rep="{rep}", attack="{attack}", eps="{eps}"):
    return [f"{RESULTS}/heatmaps/{run_dir(model, rep)}/{attack}/{eps}/{cam}.h5" for cam in CAMS]


def gallery_heatmaps(model, attack="fgsm"):
    """Every method's adversarial heatmaps of ``attack`` (the first attack when absent) at each ε, of the model's
    first replicate (the gallery shows one training run)."""
    attack = attack if attack in ATTACKS else next(iter(ATTACKS))
    return [f for e in ATTACKS[attack]["eps"] for f in adv_heatmap_files(model, 0, attack, eps_label(e))]


def sanity_model_files(model="{model}", rep="{rep}"):
    """The sanity-check tables of one training run, one per CAM method (named after it, as the heatmap files are)."""
    return [f"{RESULTS}/sanity/{run_dir(model, rep)}/{cam}.csv" for cam in CAMS]


def sanity_files():
    """Every training run's sanity-check tables, when the check is on."""
    return [f for m, r in runs() for f in sanity_model_files(m, r)] if SANITY else []


def model_attack_files(model, rep):
    """Every white-box attack file of one training run: each attack and ε."""
    return [
        f"{RESULTS}/attacks/{run_dir(m, r)}/{a}/{e}.h5"
        for m, r, a, e in attack_jobs()
        if (m, str(r)) == (model, str(rep))
    ]


def detection_files():
    """One per-image detection table per training run, when detection is on."""
    return [f"{RESULTS}/detection/{run_dir(m, r)}/scores.csv" for m, r in runs()] if DETECTION else []


def summary_plots():
    """The figures rule plot draws from the summaries."""
    plots = [f"{RESULTS}/plots/{name}.png" for name in ("mod", "accuracy", "vid")]
    plots += [f"{RESULTS}/plots/localisation.png"] if LOCALISE else []
    plots += [f"{RESULTS}/plots/sanity_{m}.png" for m in MODELS] if SANITY else []
    plots += [f"{RESULTS}/plots/roc_{m}.png" for m in MODELS] if DETECTION else []
    return plots


def final_targets():
    plots = summary_plots()
    plots += [f"{RESULTS}/plots/nissim_{a}.png" for a in ATTACKS]
    plots += [f"{RESULTS}/plots/gallery_{m}.png" for m in MODELS]
    plots += [f"{RESULTS}/plots/transfer_{t}.png" for t in transfer_targets()]
    plots += [f"{RESULTS}/plots/claims.png"]
    tables = [f"{RESULTS}/summary/{name}.csv" for name in ("mod_vid", "vid", "replicates", "claims")]
    tables += [f"{RESULTS}/summary/sanity.csv"] if SANITY else []
    tables += [f"{RESULTS}/summary/detection.csv"] if DETECTION else []
    return tables + plots


wildcard_constraints:
    model="|".join(map(re.escape, MODELS)) if MODELS else "(?!)",
    source="|".join(map(re.escape, MODELS)) if MODELS else "(?!)",
    attack="|".join(ATTACK_NAMES),  # the attack registry's names (advcam.attacks.REGISTRY)
    eps=r"[0-9]+(\.[0-9]+)?(e-?[0-9]+)?",
    size=r"[0-9]+",
    rep=r"[0-9]+",
