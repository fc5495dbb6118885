"""Typed settings: one frozen, keyword-only dataclass per stage family, built once at the edge.

The workflow validates the config against its schema, then builds these from each model's and each attack's
entry (``from_mapping``): their checks run there, at parse time, before any job starts, and nowhere else. A rule
passes one entry to its job as one JSON argument (``--settings``); the CLI rebuilds the same dataclass (its flags,
generated from the fields, override single values), and the stage and the library take the dataclass.

Adding a setting touches the schema, its field here and the code that uses it: the CLI flag, the rule's argument
and the record in train.json follow from the field. ``tests/test_settings.py`` checks that each schema family's
keys are the fields plus :data:`WORKFLOW_ONLY` of that family.

No torch here: the workflow imports this module at parse time.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, TypeVar

from .errors import InputError

__all__ = [
    "TrainSettings",
    "AdvTrainSettings",
    "AttackSettings",
    "CamSettings",
    "AttributionSettings",
    "ScoreSettings",
    "DetectionSettings",
    "SettingsError",
    "OPTIMIZERS",
    "ADV_TRAIN_ATTACKS",
    "ATTACKS",
    "ATTACK_PARAMS",
    "L2_ATTACKS",
    "MIN_NORM_ATTACKS",
    "eps_label",
    "EXPLANATION_ATTACKS",
    "ADAPTIVE_SCORES",
    "DIFFERENTIABLE_CAMS",
    "TARGET_RULES",
    "CAM_TARGETS",
    "SCORE_MEASURES",
    "SSIM_WINDOWS",
    "DETECTION_SCORES",
    "CAM_METHOD_NAMES",
    "ATTRIBUTION_METHOD_NAMES",
    "EXPLAINER_NAMES",
    "IG_METHODS",
    "WORKFLOW_ONLY",
    "FROM_STUDY",
    "add_arguments",
    "from_arguments",
]

#: optimisers of the training loop
OPTIMIZERS = ("adamw", "sgd")
#: adversarial training's attacks: PGD (Madry et al. 2018) and FGSM from a random start (Wong, Rice & Kolter 2020)
ADV_TRAIN_ATTACKS = ("pgd", "fgsm_rs")
#: the attacks (the workflow's attack wildcard; :data:`advcam.attack_registry.REGISTRY` holds each one's function)
ATTACKS = ("fgsm", "noise", "pgd", "bim", "mifgsm", "explain", "dual", "pgdl2", "apgd", "square", "cw", "deepfool",
           "adaptive")
#: the settings each attack uses: its rule's JSON carries these alone, so a setting added for another attack (or a
#: change to another attack's value) reruns none of its jobs; ``eps`` is each job's own
ATTACK_PARAMS: dict[str, tuple[str, ...]] = {
    "fgsm": ("targeted", "seed"),
    "noise": ("seed",),
    "pgd": ("steps", "alpha", "random_start", "targeted", "seed"),
    "bim": ("steps", "alpha", "targeted", "seed"),
    "mifgsm": ("steps", "alpha", "decay", "targeted", "seed"),
    "explain": ("steps", "alpha", "random_start", "method", "relu_beta", "ssim", "seed"),
    "dual": ("steps", "alpha", "lam", "random_start", "method", "relu_beta", "ssim", "targeted", "seed"),
    "pgdl2": ("steps", "alpha", "random_start", "targeted", "seed"),
    "apgd": ("norm", "loss", "steps", "n_restarts", "rho", "seed"),
    "square": ("loss", "n_queries", "n_restarts", "p_init", "targeted", "seed"),
    "cw": ("c", "kappa", "steps", "lr", "targeted"),
    "deepfool": ("steps", "overshoot"),
    "adaptive": ("steps", "alpha", "lam", "random_start", "score", "method", "pair", "eps_d", "draws", "relu_beta", "ssim",
                 "targeted", "seed"),
}
assert tuple(ATTACK_PARAMS) == ATTACKS
#: attacks whose ε is an L2 radius on the [0, 1] pixel scale (> 0; apgd's too under ``norm: L2``); every other
#: attack's ε is an L∞ radius in (0, 1]
L2_ATTACKS = ("pgdl2", "cw", "deepfool")
#: minimum-norm attacks (no radius of their own): each ε clips the perturbation they find to the L2 ball of radius ε,
#: and success is judged on the clipped image (Foolbox's convention for minimisation attacks)
MIN_NORM_ATTACKS = ("cw", "deepfool")


def eps_label(eps: float | str) -> str:
    """ε as it appears in the study's paths and job names (``attack/{run}/{attack}/{eps}``): ``%g`` of the
    float, so 0.05, 0.075, 0.1 and ``"0.10"`` → ``"0.1"``; one function for the workflow and the cost model."""
    return f"{float(eps):g}"
#: APGD's norms and losses (torchattacks.APGD), Square's losses (torchattacks.Square)
APGD_NORMS = ("Linf", "L2")
ATTACK_LOSSES = {"apgd": ("ce", "dlr"), "square": ("margin", "ce")}
#: the attacks on the explanation (they differentiate a CAM method: :data:`DIFFERENTIABLE_CAMS`); ``adaptive`` evades
#: the study's explanation-based detector (its CAM methods, noise and draws are the detection entry's)
EXPLANATION_ATTACKS = ("explain", "dual", "adaptive")
#: the detector scores the adaptive attack can evade (:data:`advcam.adaptive_attack.ADAPTIVE_SCORES`)
ADAPTIVE_SCORES = ("disagreement", "self_consistency")
#: CAM methods with a differentiable form (:data:`advcam.explainers.DIFFERENTIABLE_METHODS`; no torch here)
DIFFERENTIABLE_CAMS = ("gradcam", "hirescam", "gradcam_elementwise", "gradcampp", "xgradcam", "layercam", "eigencam",
                       "eigengradcam")
#: how a targeted attack picks each image's target class
TARGET_RULES = ("next", "least_likely", "random")
#: CAM classes a map can explain
CAM_TARGETS = ("predicted", "label")
#: measures of the scoring stage besides SSIM/NISSIM (:data:`advcam.measures.MEASURES` describes each)
SCORE_MEASURES = ("spearman", "topk", "com_shift")
#: SSIM windows of the scoring stage
SSIM_WINDOWS = ("uniform", "gaussian")
#: every CAM method (:data:`advcam.explainers.CAM_METHODS`; no torch here)
CAM_METHOD_NAMES = DIFFERENTIABLE_CAMS + ("scorecam", "ablationcam")
#: every gradient attribution (:data:`advcam.attributions.ATTRIBUTION_METHODS`; no torch here)
ATTRIBUTION_METHOD_NAMES = ("saliency", "inputxgradient", "integrated_gradients", "smoothgrad", "guided_backprop",
                            "guided_gradcam")
#: every explainer a study's ``cams`` list can name: the CAMs, then the attributions (one name space)
EXPLAINER_NAMES = CAM_METHOD_NAMES + ATTRIBUTION_METHOD_NAMES


def check_methods(methods: str | Iterable[str], cams_only: bool = False) -> list[str]:
    """The explainer names as a list without repeats; InputError naming an unknown one and listing
    :data:`EXPLAINER_NAMES` (with ``cams_only``, :data:`CAM_METHOD_NAMES`: where a gradient attribution has no
    meaning). Here, not in :mod:`advcam.explainers`, so that a stage that only reads heatmap files (score) checks
    names without importing timm and torchvision."""
    names = [methods] if isinstance(methods, str) else list(methods)
    known = CAM_METHOD_NAMES if cams_only else EXPLAINER_NAMES
    what = "CAM method" if cams_only else "explainer"
    for m in names:
        if m not in known:
            raise InputError(f"unknown {what} '{m}': choose from {', '.join(known)}")
    if not names:
        raise InputError(f"no {what} given: choose from {', '.join(known)}")
    return list(dict.fromkeys(names))


#: integrated_gradients' quadratures (Captum's ``method``)
IG_METHODS = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")
#: detector scores of the detection stage (:mod:`advcam.detection`), each computed from the input alone
DETECTION_SCORES = ("self_consistency", "disagreement", "max_softmax", "squeeze")


class SettingsError(InputError):
    """A setting out of range, of the wrong type, or unknown (named, with its value)."""


S = TypeVar("S", bound="_Settings")


def _opt(default: Any, help: str = "", **cli: Any) -> Any:
    """A field with its CLI help (``cli``: argparse keywords such as ``choices``, ``aliases``, ``metavar``)."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass(frozen=True, kw_only=True)
class _Settings:
    @classmethod
    def from_mapping(cls: type[S], values: Mapping[str, Any], *, ignore: tuple[str, ...] = ()) -> S:
        """Build from a config entry or a JSON object; keys in ``ignore`` are skipped, any other unknown key is a
        :class:`SettingsError` naming it."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names - set(ignore))
        if unknown:
            raise SettingsError(f"unknown setting{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))} "
                                f"(known: {', '.join(sorted(names))})")
        try:
            return cls(**{k: v for k, v in values.items() if k in names})
        except TypeError as e:  # a required field is missing
            raise SettingsError(str(e)) from None

    @classmethod
    def from_json(cls: type[S], text: str, flag: str = "--settings") -> S:
        """Build from one JSON object given on the command line as ``flag``; SettingsError naming the flag."""
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise SettingsError(f"{flag} is not a JSON object: {e}") from None
        if not isinstance(values, dict):
            raise SettingsError(f"{flag} must be a JSON object, got {text!r}")
        return cls.from_mapping(values)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """One line of JSON, keys sorted (what a rule passes as ``--settings``)."""
        return json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))

    def _check(self, ok: bool, name: str, what: str) -> None:
        if not ok:
            raise SettingsError(f"{name} {getattr(self, name)!r}: {what}")

    def _number(self, name: str, kind: type, lo: float | None = None, hi: float | None = None, *,
                open_lo: bool = False) -> None:
        v = getattr(self, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not float(v).is_integer()):
            raise SettingsError(f"{name} {v!r}: must be {'a whole number' if kind is int else 'a number'}")
        object.__setattr__(self, name, kind(v))
        if lo is not None:
            self._check(v > lo if open_lo else v >= lo, name, f"must be {'>' if open_lo else '>='} {lo:g}")
        if hi is not None:
            self._check(v <= hi, name, f"must be <= {hi:g}")


@dataclass(frozen=True, kw_only=True)
class AdvTrainSettings(_Settings):
    """Adversarial training (a model entry's ``adv_train``): every training batch is replaced by its adversarial
    version under ``attack`` at L∞ radius ``eps`` ([0,1] pixel scale) before the step. ``pgd``: ``steps`` steps of
    size ``alpha`` from a uniform random start in the ε-ball (Madry et al. 2018; defaults 7 steps, α = 2.5·ε/steps);
    ``fgsm_rs``: one step of α from a uniform random start (Wong, Rice & Kolter 2020; steps 1, α = 1.25·ε). Unset
    ``steps``/``alpha`` take those defaults here, so the JSON a job gets holds the values it ran with."""

    attack: str = _opt("fgsm_rs", "the attack of adversarial training", choices=ADV_TRAIN_ATTACKS)
    eps: float = _opt(8 / 255, "L∞ radius on the [0,1] pixel scale, in (0, 1]")
    steps: int | None = _opt(None, "attack steps (pgd; default 7; fgsm_rs takes 1)")
    alpha: float | None = _opt(None, "step size (default: pgd 2.5·eps/steps, fgsm_rs 1.25·eps)")

    def __post_init__(self) -> None:
        self._check(self.attack in ADV_TRAIN_ATTACKS, "attack", f"choose one of {', '.join(ADV_TRAIN_ATTACKS)}")
        self._number("eps", float, 0, 1, open_lo=True)
        pgd = self.attack == "pgd"
        if self.steps is None:
            object.__setattr__(self, "steps", 7 if pgd else 1)
        self._number("steps", int, 1)
        self._check(pgd or self.steps == 1, "steps", "fgsm_rs takes exactly one step (use pgd for more)")
        if self.alpha is None:
            object.__setattr__(self, "alpha", 2.5 * self.eps / self.steps if pgd else 1.25 * self.eps)
        self._number("alpha", float, 0, open_lo=True)


def _json_object(name: str, text: str) -> dict | None:
    """The JSON object (or null) a command line gives for setting ``name``; SettingsError naming it otherwise."""
    try:
        v = json.loads(text)
    except json.JSONDecodeError as e:
        raise SettingsError(f"{name} {text!r}: not a JSON object ({e})") from None
    if v is not None and not isinstance(v, dict):
        raise SettingsError(f"{name} {text!r}: not a JSON object")
    return v


@dataclass(frozen=True, kw_only=True)
class TrainSettings(_Settings):
    """How one model is built and fine-tuned: a model entry of the config, less :data:`WORKFLOW_ONLY` ``["train"]``.

    Units: ``lr`` per step at the peak of the schedule; ``warmup_epochs`` in epochs (may be fractional);
    ``augment`` a strength ≥ 0 (0 = none); ``pixel_noise`` the largest per-image std of the Gaussian training
    noise on the [0, 1] pixel scale, added from epoch ``pixel_noise_from`` (1-based). ``amp``: None = chosen for
    the machine, True/False = bf16 autocast on/off. ``seed``: the model's configured seed (replicate r trains with
    :func:`advcam.train.replicate_seed` (seed, r))."""

    epochs: int = _opt(10, "training epochs (>= 1)")
    batch_size: int = _opt(32, "images per step (>= 2)")
    lr: float = _opt(1e-3, "peak learning rate (> 0)")
    optimizer: str = _opt("adamw", "optimiser", choices=OPTIMIZERS)
    weight_decay: float = _opt(0.05, "decoupled weight decay (>= 0)")
    warmup_epochs: float = _opt(1.0, "linear warm-up, in epochs, before the cosine decay")
    label_smoothing: float = _opt(0.1, "label smoothing of the cross-entropy, in [0, 1]")
    augment: float = _opt(1.0, "augmentation strength (0 = none)")
    pixel_noise: float = _opt(0.0, "Gaussian training noise: per-image std drawn from U(0, this) ([0,1] scale)")
    pixel_noise_from: int = _opt(1, "first epoch (1-based) that adds pixel_noise", metavar="EPOCH")
    seed: int = _opt(0, "the model's seed (weight init, data order, noise draws; replicate r > 0 derives its own)")
    amp: bool | None = _opt(None, "bf16 autocast for training: auto = chosen per machine (CUDA, AMX, or a probe finds "
                                  "it faster); on/off force it", tristate=True)
    layer: str | None = _opt(None, "Grad-CAM target layer (default: the paper's, else timm feature_info[-1])")
    pretrained: bool = _opt(False, "timm ImageNet weights (needs network or a warm cache)")
    pretrained_file: str | None = _opt(None, "local weights file loaded through timm")
    adv_train: AdvTrainSettings | None = _opt(None, "adversarial training as a JSON object {attack: pgd|fgsm_rs, eps, "
                                                    "steps, alpha} (advcam.settings.AdvTrainSettings; none: standard)",
                                              metavar="JSON")

    def __post_init__(self) -> None:
        self._number("epochs", int, 1)
        self._number("batch_size", int, 2)
        self._number("lr", float, 0, open_lo=True)
        self._check(self.optimizer in OPTIMIZERS, "optimizer", f"choose one of {', '.join(OPTIMIZERS)}")
        self._number("weight_decay", float, 0)
        self._number("warmup_epochs", float, 0)
        self._number("label_smoothing", float, 0, 1)
        self._number("augment", float, 0)
        self._number("pixel_noise", float, 0, 1)
        self._number("pixel_noise_from", int, 1)
        if isinstance(self.adv_train, str):  # the command line's --adv-train
            object.__setattr__(self, "adv_train", _json_object("adv_train", self.adv_train))
        if isinstance(self.adv_train, Mapping):
            try:
                object.__setattr__(self, "adv_train", AdvTrainSettings.from_mapping(self.adv_train))
            except SettingsError as e:
                raise SettingsError(f"adv_train: {e}") from None
        self._number("seed", int)
        self._check(self.amp in (None, True, False), "amp", "must be null (auto), true or false")
        self._check(isinstance(self.pretrained, bool), "pretrained", "must be true or false")
        self._check(not (self.pixel_noise > 0 and self.pixel_noise_from > self.epochs), "pixel_noise_from",
                    f"is after the last epoch ({self.epochs}), so pixel_noise would never be added")
        self._check(self.adv_train is None or isinstance(self.adv_train, AdvTrainSettings), "adv_train",
                    "must be an object {attack, eps, steps, alpha} or none")

    def to_json(self) -> str:
        """One line of JSON, keys sorted; ``adv_train`` only when set, so the recipe of a standard model (and the
        training jobs of results made before adversarial training existed) stays as it was."""
        d = self.as_dict()
        if d["adv_train"] is None:
            d.pop("adv_train")
        return json.dumps(d, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True, kw_only=True)
class AttackSettings(_Settings):
    """How one attack runs at every ε: an attack entry of the config (less ``eps``, which each job gets) and its name.

    ``alpha``: the step of the iterative attacks on the [0, 1] pixel scale; ``steps`` their iterations;
    ``decay`` MI-FGSM's momentum decay; ``random_start`` PGD's start in the ε-ball; ``targeted``: "none" (the
    config's false) or a rule of :data:`TARGET_RULES`; ``seed``: noise signs, PGD's start, random targets, APGD's
    and Square's draws. ``norm`` … ``overshoot``: the strong attacks' torchattacks 3.5.1 parameters, under their
    names. Each attack uses the fields :data:`ATTACK_PARAMS` names (its JSON holds those alone). The defaults are
    PGD's; each attack's own defaults are in the schema."""

    attack: str = _opt("fgsm", "fgsm, noise (random-sign control), pgd, bim, mifgsm, explain (keep the label, move "
                               "the map), dual (flip the label, keep the map), pgdl2, apgd, square, cw, deepfool or "
                               "adaptive (flip the label, keep an explanation-based detector quiet)")
    targeted: str = _opt("none", "step towards a target class per image: the next identity, the least likely one "
                                 "(clean logits), or one drawn at random (seeded); never the true label",
                         choices=("none",) + TARGET_RULES)
    steps: int = _opt(10, "iterations of pgd, bim, mifgsm (>= 1)", aliases=("--pgd-steps",))
    alpha: float = _opt(2 / 255, "step size of pgd, bim, mifgsm (> 0)", aliases=("--pgd-alpha",))
    decay: float = _opt(1.0, "mifgsm's momentum decay (>= 0)")
    random_start: bool = _opt(True, "pgd, explain and dual start in the ε-ball (--no-random-start: at the image)")
    seed: int = _opt(0, "noise signs / PGD random start / random targets")
    method: str = _opt("gradcam", "explain, dual: the CAM method whose map is moved or kept; adaptive: the "
                                  "self-consistency detector's method (one with a "
                                  "differentiable form)", choices=DIFFERENTIABLE_CAMS)
    lam: float = _opt(1.0, "dual: the weight λ of the map term, CE + λ·(1 − SSIM); adaptive: of the detector term "
                           "(>= 0)")
    relu_beta: float | None = _opt(None, "explain, dual: differentiate through softplus(β·x)/β in place of each ReLU "
                                         "(> 0; none = the model's own ReLUs); results are judged on the ReLU model",
                                   type=float)
    ssim: str = _opt("uniform", "explain, dual: the SSIM window of the map dissimilarity (the workflow passes the "
                                "study's ssim)", choices=SSIM_WINDOWS)
    norm: str = _opt("Linf", "apgd: the ball of eps, Linf or L2", choices=APGD_NORMS)
    loss: str = _opt("ce", "apgd: ce or dlr; square: margin or ce", choices=("ce", "dlr", "margin"))
    n_restarts: int = _opt(1, "apgd, square: restarts (>= 1)")
    rho: float = _opt(0.75, "apgd: the step-size checkpoint threshold, in [0, 1]")
    n_queries: int = _opt(5000, "square: queries per image (>= 1)")
    p_init: float = _opt(0.8, "square: the initial share of pixels a square covers, in (0, 1]")
    c: float = _opt(1.0, "cw: the weight of the classification term (> 0)")
    kappa: float = _opt(0.0, "cw: the confidence margin (>= 0)")
    lr: float = _opt(0.01, "cw: Adam's learning rate (> 0)")
    overshoot: float = _opt(0.02, "deepfool: the overshoot (>= 0)")
    score: str = _opt("disagreement", "adaptive: the explanation-based detector score it drives to its clean value",
                      choices=ADAPTIVE_SCORES)
    pair: tuple[str, ...] = _opt(("gradcam", "layercam"), "adaptive, score disagreement: the detector's two CAM methods "
                                 "(the workflow passes the detection entry's)", choices=DIFFERENTIABLE_CAMS)
    eps_d: float = _opt(0.03, "adaptive, score self_consistency: the detector's noise size, in (0, 1] (the workflow "
                              "passes the detection entry's)")
    draws: int = _opt(1, "adaptive, score self_consistency: the attacker's own noise draws per step (>= 1; the "
                         "workflow passes the detection entry's)")

    @property
    def eps_norm(self) -> str:
        """The ball of this attack's ε: "L2" for :data:`L2_ATTACKS` and apgd under ``norm: L2``, else "Linf"."""
        return "L2" if self.attack in L2_ATTACKS or (self.attack == "apgd" and self.norm == "L2") else "Linf"

    def check_eps(self, eps: float) -> float:
        """``eps`` as a float: an L∞ radius in (0, 1], or an L2 radius > 0 (:attr:`eps_norm`); else SettingsError."""
        if isinstance(eps, bool) or not isinstance(eps, (int, float)):
            raise SettingsError(f"eps {eps!r}: must be a number")
        if self.eps_norm == "Linf" and not 0 < eps <= 1:
            raise SettingsError(f"eps {eps!r}: {self.attack}'s eps is an L∞ radius on the [0,1] pixel scale, in (0, 1]")
        if not eps > 0:
            raise SettingsError(f"eps {eps!r}: must be > 0")
        return float(eps)

    def to_json(self) -> str:
        """One line of JSON of the fields the attack uses (:data:`ATTACK_PARAMS`) and its name, keys sorted."""
        d = self.as_dict()
        return json.dumps({k: d[k] for k in ("attack", *ATTACK_PARAMS[self.attack])}, sort_keys=True,
                          separators=(",", ":"))

    def __post_init__(self) -> None:
        if self.targeted is False or self.targeted is None:
            object.__setattr__(self, "targeted", "none")
        if self.attack not in ATTACKS:
            raise SettingsError(f"unknown attack {self.attack!r}: choose one of {', '.join(ATTACKS)}")
        self._check(self.targeted in ("none",) + TARGET_RULES, "targeted",
                    f"choose false/none or one of {', '.join(TARGET_RULES)}")
        self._check(not (self.attack == "noise" and self.targeted != "none"), "targeted",
                    "the noise control has no target class; leave it untargeted")
        self._check("targeted" in ATTACK_PARAMS[self.attack] or self.targeted == "none", "targeted",
                    f"{self.attack} has no targeted form; leave it untargeted")
        self._number("steps", int, 1)
        self._number("alpha", float, 0, open_lo=True)
        self._number("decay", float, 0)
        self._check(isinstance(self.random_start, bool), "random_start", "must be true or false")
        self._number("seed", int)
        self._check(self.method in DIFFERENTIABLE_CAMS, "method",
                    f"has no differentiable form: choose one of {', '.join(DIFFERENTIABLE_CAMS)}")
        self._number("lam", float, 0)
        if self.relu_beta is not None:
            self._number("relu_beta", float, 0, open_lo=True)
        self._check(self.ssim in SSIM_WINDOWS, "ssim", f"choose one of {', '.join(SSIM_WINDOWS)}")
        self._check(not (self.attack == "explain" and self.targeted != "none"), "targeted",
                    "the explain attack keeps the predicted class; leave it untargeted")
        self._check(self.norm in APGD_NORMS, "norm", f"choose one of {', '.join(APGD_NORMS)}")
        losses = ATTACK_LOSSES.get(self.attack, ("ce", "dlr", "margin"))
        self._check(self.loss in losses, "loss", f"{self.attack} takes {' or '.join(losses)}")
        self._number("n_restarts", int, 1)
        self._number("rho", float, 0, 1)
        self._number("n_queries", int, 1)
        self._number("p_init", float, 0, 1, open_lo=True)
        self._number("c", float, 0, open_lo=True)
        self._number("kappa", float, 0)
        self._number("lr", float, 0, open_lo=True)
        self._number("overshoot", float, 0)
        self._check(self.score in ADAPTIVE_SCORES, "score", f"choose one of {', '.join(ADAPTIVE_SCORES)}")
        object.__setattr__(self, "pair", tuple(self.pair))
        bad = [m for m in self.pair if m not in DIFFERENTIABLE_CAMS]
        self._check(not bad, "pair", f"has no differentiable form: choose from {', '.join(DIFFERENTIABLE_CAMS)}")
        self._check(len(self.pair) == 2 and self.pair[0] != self.pair[1], "pair", "must name two different CAM methods")
        self._number("eps_d", float, 0, 1, open_lo=True)
        self._number("draws", int, 1)


@dataclass(frozen=True, kw_only=True)
class CamSettings(_Settings):
    """How the heatmaps are made: the config's ``cam`` entry. ``target``: the class each map explains;
    ``batch_size``: images per forward; ``amp``: bf16 autocast on CUDA."""

    target: str = _opt("predicted", "class each map explains: the predicted one or the true label", choices=CAM_TARGETS)
    batch_size: int = _opt(64, "images per batch (>= 1)")
    amp: bool = _opt(False, "bf16 autocast for the CAMs on CUDA (maps moved by 9e-3 to 9e-2 vs fp32 on an H200)")

    def __post_init__(self) -> None:
        self._check(self.target in CAM_TARGETS, "target", f"choose one of {', '.join(CAM_TARGETS)}")
        self._number("batch_size", int, 1)
        self._check(isinstance(self.amp, bool), "amp", "must be true or false")


@dataclass(frozen=True, kw_only=True)
class AttributionSettings(_Settings):
    """The gradient attributions' parameters: the config's ``attribution`` entry (used by the methods of
    :data:`ATTRIBUTION_METHOD_NAMES` among the study's explainers; the CAMs ignore it)."""

    n_steps: int = _opt(32, "integrated_gradients: integration nodes (>= 1; >= 2 for a Riemann rule)")
    ig_method: str = _opt("gausslegendre", "integrated_gradients: the quadrature (Captum's method)", choices=IG_METHODS)
    nt_samples: int = _opt(8, "smoothgrad: noisy copies per image (>= 1)")
    stdevs: float = _opt(0.15, "smoothgrad: the noise's standard deviation on the [0,1] pixel scale (>= 0)")
    seed: int = _opt(0, "smoothgrad: seed of the noise (an image's draws depend on it and its store position only)")

    def __post_init__(self) -> None:
        self._check(self.ig_method in IG_METHODS, "ig_method", f"choose one of {', '.join(IG_METHODS)}")
        self._number("n_steps", int, 1 if self.ig_method == "gausslegendre" else 2)
        self._number("nt_samples", int, 1)
        self._number("stdevs", float, 0)
        self._number("seed", int)


@dataclass(frozen=True, kw_only=True)
class ScoreSettings(_Settings):
    """How each clean/adversarial pair of maps is compared: the config's ``metrics`` entry and ``ssim``.

    ``k``: the top-k intersection's size, a fraction of the pixels in (0, 1) or a whole number of pixels;
    ``chance_seed``: the derangement of the chance reference (None: no chance rows)."""

    measures: tuple[str, ...] = _opt(SCORE_MEASURES, "dissimilarity measures besides SSIM/NISSIM, a column each: "
                                     "spearman (rank correlation), topk (top-k intersection), com_shift (centre-of-"
                                     "mass distance, pixels)", choices=SCORE_MEASURES)
    k: float = _opt(0.1, "top-k intersection: a fraction of the pixels in (0, 1) or a whole number of pixels")
    chance_seed: int | None = _opt(None, "add the chance reference (attack 'chance', ε 0): each clean map against "
                                         "another test image's, paired by a derangement drawn with this seed "
                                         "(omit: no chance rows)")
    ssim: str = _opt("uniform", "uniform 7x7 with sample covariance, or Gaussian sigma=1.5 with population covariance", choices=SSIM_WINDOWS)

    def __post_init__(self) -> None:
        object.__setattr__(self, "measures", tuple(self.measures))
        unknown = [m for m in self.measures if m not in SCORE_MEASURES]
        self._check(not unknown, "measures", f"unknown {', '.join(map(repr, unknown))}: choose from "
                                             f"{', '.join(SCORE_MEASURES)}")
        self._number("k", float, 0, open_lo=True)
        self._check(self.k < 1 or float(self.k).is_integer(), "k",
                    "must be a fraction of the pixels in (0, 1) or a whole number of pixels")
        if self.chance_seed is not None:
            self._number("chance_seed", int, 0)
        self._check(self.ssim in SSIM_WINDOWS, "ssim", f"choose one of {', '.join(SSIM_WINDOWS)}")

    @property
    def topk(self) -> int | float:
        """``k`` as :func:`advcam.similarity.topk_intersection` takes it: a fraction stays a float, a count an int."""
        return float(self.k) if self.k < 1 else int(self.k)


@dataclass(frozen=True, kw_only=True)
class DetectionSettings(_Settings):
    """How adversarial inputs are detected from the input alone: the config's ``detection`` entry
    (:mod:`advcam.detection`). ``eps_d``: the self-consistency noise on the [0, 1] pixel scale, in (0, 1];
    ``draws``: its seeded draws per image; ``method``: its CAM method; ``pair``: the two CAM methods whose maps'
    disagreement is a score; ``bits`` (1–8) and ``median`` (a window side in pixels): feature squeezing's two
    squeezers; ``fpr``: the false-positive rate at which the true-positive rate is read; ``seed``: the noise
    draws."""

    scores: tuple[str, ...] = _opt(DETECTION_SCORES, "detector scores, each from the input alone: self_consistency "
                                   "(NISSIM of the map of x and of x plus random-sign noise), disagreement (NISSIM of "
                                   "two methods' maps of x), max_softmax (1 - max softmax), squeeze (feature "
                                   "squeezing)", choices=DETECTION_SCORES)
    method: str = _opt("gradcam", "self_consistency: the CAM method", choices=CAM_METHOD_NAMES)
    pair: tuple[str, ...] = _opt(("gradcam", "layercam"), "disagreement: the two CAM methods compared",
                                 choices=CAM_METHOD_NAMES)
    eps_d: float = _opt(0.03, "self_consistency: the noise's size on the [0,1] pixel scale, in (0, 1]")
    draws: int = _opt(4, "self_consistency: noise draws averaged per image (>= 1)")
    bits: int = _opt(5, "squeeze: bit depth of the bit-depth squeezer, in [1, 8]")
    median: int = _opt(2, "squeeze: side of the median filter, pixels (>= 1)")
    fpr: float = _opt(0.05, "the false-positive rate at which the true-positive rate is read, in (0, 1)")
    seed: int = _opt(0, "seed of the self-consistency noise draws")

    def __post_init__(self) -> None:
        object.__setattr__(self, "scores", tuple(self.scores))
        object.__setattr__(self, "pair", tuple(self.pair))
        unknown = [m for m in self.scores if m not in DETECTION_SCORES]
        self._check(not unknown, "scores", f"unknown {', '.join(map(repr, unknown))}: choose from "
                                           f"{', '.join(DETECTION_SCORES)}")
        self._check(len(set(self.scores)) == len(self.scores), "scores", "lists a score twice")
        self._check(self.method in CAM_METHOD_NAMES, "method", f"choose one of {', '.join(CAM_METHOD_NAMES)}")
        bad = [m for m in self.pair if m not in CAM_METHOD_NAMES]
        self._check(not bad, "pair", f"unknown CAM method {', '.join(map(repr, bad))}: choose from "
                                     f"{', '.join(CAM_METHOD_NAMES)}")
        self._check(len(self.pair) == 2 and self.pair[0] != self.pair[1], "pair", "must name two different CAM methods")
        self._number("eps_d", float, 0, 1, open_lo=True)
        self._number("draws", int, 1)
        self._number("bits", int, 1, 8)
        self._number("median", int, 1)
        self._number("fpr", float, 0, open_lo=True)
        self._check(self.fpr < 1, "fpr", "must be < 1")
        self._number("seed", int)

    def to_json(self) -> str:
        """One line of JSON of the fields the detection stage uses, keys sorted: ``fpr`` is left out (the summaries
        read it), so changing it reruns no detection job."""
        d = self.as_dict()
        d.pop("fpr")
        return json.dumps(d, sort_keys=True, separators=(",", ":"))

    @property
    def methods(self) -> tuple[str, ...]:
        """The CAM methods the chosen scores compute (self_consistency's, then the pair's)."""
        out: list[str] = []
        if "self_consistency" in self.scores:
            out.append(self.method)
        if "disagreement" in self.scores:
            out += [m for m in self.pair if m not in out]
        return tuple(out)


#: config keys of each family that steer the workflow, not the stage (the schema's keys are the fields plus these)
WORKFLOW_ONLY: dict[str, tuple[str, ...]] = {
    "train": ("arch", "size", "replicates", "priority"),  # the rule's --arch, the store, the runs, the scheduling
    "attack": ("eps",),  # each ε is its own job
    "cam": (),
    "attribution": (),
    "score": (),  # the config's metrics entry and its top-level ssim
    "detection": (),
}
#: fields of each family the workflow fills from the study's top-level keys, not from the family's entries
FROM_STUDY: dict[str, tuple[str, ...]] = {
    # the explanation attacks use the study's SSIM window; the adaptive attack the detection entry's pair, noise, draws
    "train": (), "attack": ("ssim", "pair", "eps_d", "draws"), "cam": (), "attribution": (), "score": (),
    "detection": (),
}


# ---------------------------------------------------------------- the CLI's flags, generated from the fields


def add_arguments(parser: argparse.ArgumentParser, cls: type[_Settings], *, skip: tuple[str, ...] = ()) -> None:
    """``--settings JSON`` and one flag per field of ``cls`` (``--batch-size`` for ``batch_size``; booleans as
    ``--x/--no-x``; a tri-state as auto/on/off). An absent flag leaves the JSON's value, or the field's default."""
    parser.add_argument("--settings", metavar="JSON",
                        help=f"every {cls.__name__} field as one JSON object (what the workflow passes); a flag "
                             "below overrides one value")
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        meta = dict(f.metadata)
        flags = [f"--{f.name.replace('_', '-')}", *meta.pop("aliases", ())]
        text = meta.pop("help", "")
        tristate = meta.pop("tristate", False)
        shown = "auto" if tristate else _show(f.default)
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS,
                              "help": text if "default" in text else f"{text} (default: {shown})"}
        if tristate:
            kw.update(choices=["auto", "on", "off"], type=str)
        elif isinstance(f.default, bool):
            kw["action"] = argparse.BooleanOptionalAction
        elif isinstance(f.default, tuple):
            kw["nargs"] = "*"
        elif f.default is not None:
            kw["type"] = type(f.default)
        elif "int" in str(f.type):
            kw["type"] = int
        kw.update(meta)
        parser.add_argument(*flags, **kw)


def _show(v: Any) -> str:
    return {None: "none", True: "true", False: "false"}.get(v, str(v)) if not isinstance(v, (int, float)) or \
        isinstance(v, bool) else f"{v:g}"


def from_arguments(cls: type[S], args: argparse.Namespace) -> S:
    """The settings of a parsed command line: ``--settings`` (if given), then every flag given, over the defaults."""
    values: dict[str, Any] = {}
    if getattr(args, "settings", None):
        values.update(cls.from_json(args.settings).as_dict())
    for f in dataclasses.fields(cls):
        if hasattr(args, f.name):
            v = getattr(args, f.name)
            values[f.name] = {"auto": None, "on": True, "off": False}[v] if f.metadata.get("tristate") else v
    return cls.from_mapping(values)
