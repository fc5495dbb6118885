"""advcam.settings: each stage family's schema keys are its dataclass's fields (plus the named workflow-only keys),
the checks name the key and the value at fault, and the CLI builds the same settings the workflow passes."""
import argparse
import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from advcam.settings import (
    ATTACK_PARAMS,
    ATTACKS,
    FROM_STUDY,
    IG_METHODS,
    WORKFLOW_ONLY,
    AttackSettings,
    AttributionSettings,
    CamSettings,
    DETECTION_SCORES,
    DetectionSettings,
    ScoreSettings,
    SettingsError,
    TrainSettings,
    add_arguments,
    from_arguments,
)

_SCHEMA = yaml.safe_load((Path(__file__).parents[1] / "workflow/schemas/config.schema.yaml").read_text())
SCHEMA = _SCHEMA["properties"]
MODEL = _SCHEMA["definitions"]["model"]["properties"]  # one model's entry


def _fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_schema_keys_are_the_fields_plus_the_workflow_only_keys():
    assert SCHEMA["models"]["additionalProperties"] == {"$ref": "#/definitions/model"}
    assert set(MODEL) == _fields(TrainSettings) | set(WORKFLOW_ONLY["train"])
    attack_keys = set().union(*(set(a["properties"]) for a in SCHEMA["attacks"]["properties"].values()))
    assert attack_keys == (_fields(AttackSettings) - {"attack"} - set(FROM_STUDY["attack"])) | set(WORKFLOW_ONLY["attack"])
    assert set(SCHEMA["attacks"]["properties"]) == set(ATTACKS)  # the schema's attacks are the registry's
    for name, spec in SCHEMA["attacks"]["properties"].items():  # each entry: the settings its attack uses, and eps
        assert set(spec["properties"]) == (set(ATTACK_PARAMS[name]) - set(FROM_STUDY["attack"])) | {"eps"}, name
    assert set(SCHEMA["cam"]["properties"]) == _fields(CamSettings) | set(WORKFLOW_ONLY["cam"])
    assert set(SCHEMA["metrics"]["properties"]) | {"ssim"} == _fields(ScoreSettings) | set(WORKFLOW_ONLY["score"])
    assert set(SCHEMA["detection"]["properties"]) == _fields(DetectionSettings) | set(WORKFLOW_ONLY["detection"])
    assert tuple(SCHEMA["detection"]["properties"]["scores"]["items"]["enum"]) == DETECTION_SCORES
    assert set(SCHEMA["attribution"]["properties"]) == _fields(AttributionSettings) | set(WORKFLOW_ONLY["attribution"])
    assert tuple(SCHEMA["attribution"]["properties"]["ig_method"]["enum"]) == IG_METHODS


def test_schema_defaults_are_the_fields_defaults_where_they_share_one():
    """A default kept in two places can drift: where the schema's default is the family's, the field's is too."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainSettings)}
    for key, spec in MODEL.items():
        if key in defaults and "default" in spec:
            assert spec["default"] == defaults[key], key
    cam = {f.name: f.default for f in dataclasses.fields(CamSettings)}
    for key, spec in SCHEMA["cam"]["properties"].items():
        assert spec["default"] == cam[key], key
    assert ScoreSettings().k == SCHEMA["metrics"]["properties"]["k"]["default"]
    assert list(ScoreSettings().measures) == SCHEMA["metrics"]["properties"]["measures"]["default"]
    attr = {f.name: f.default for f in dataclasses.fields(AttributionSettings)}
    for key, spec in SCHEMA["attribution"]["properties"].items():
        assert spec["default"] == attr[key], key
    det = {f.name: f.default for f in dataclasses.fields(DetectionSettings)}
    for key, spec in SCHEMA["detection"]["properties"].items():
        assert spec["default"] == (list(det[key]) if isinstance(det[key], tuple) else det[key]), key


@pytest.mark.parametrize("cls, values, key", [
    (TrainSettings, {"epochs": 0}, "epochs"),
    (TrainSettings, {"lr": 0}, "lr"),
    (TrainSettings, {"batch_size": 2.5}, "batch_size"),
    (TrainSettings, {"optimizer": "adam"}, "optimizer"),
    (TrainSettings, {"epochs": 3, "pixel_noise": 0.1, "pixel_noise_from": 4}, "pixel_noise_from"),
    (TrainSettings, {"amp": "on"}, "amp"),
    (AttackSettings, {"attack": "fab"}, "attack"),
    (AttackSettings, {"attack": "cw", "kappa": -1}, "kappa"),
    (AttackSettings, {"attack": "cw", "c": 0}, "c"),
    (AttackSettings, {"attack": "square", "n_queries": 0}, "n_queries"),
    (AttackSettings, {"attack": "square", "p_init": 0}, "p_init"),
    (AttackSettings, {"attack": "square", "loss": "dlr"}, "loss"),
    (AttackSettings, {"attack": "apgd", "norm": "L1"}, "norm"),
    (AttackSettings, {"attack": "apgd", "n_restarts": 0}, "n_restarts"),
    (AttackSettings, {"attack": "apgd", "targeted": "next"}, "targeted"),
    (AttackSettings, {"attack": "deepfool", "overshoot": -0.1}, "overshoot"),
    (AttackSettings, {"attack": "deepfool", "steps": 0}, "steps"),
    (AttackSettings, {"attack": "pgd", "steps": 0}, "steps"),
    (AttackSettings, {"attack": "pgd", "alpha": 0}, "alpha"),
    (AttackSettings, {"attack": "noise", "targeted": "next"}, "targeted"),
    (AttackSettings, {"attack": "fgsm", "targeted": "nearest"}, "targeted"),
    (AttackSettings, {"attack": "dual", "lam": -1}, "lam"),
    (AttackSettings, {"attack": "explain", "steps": 0}, "steps"),
    (AttackSettings, {"attack": "explain", "method": "scorecam"}, "method"),
    (AttackSettings, {"attack": "explain", "relu_beta": 0}, "relu_beta"),
    (AttackSettings, {"attack": "explain", "targeted": "next"}, "targeted"),
    (CamSettings, {"target": "top"}, "target"),
    (CamSettings, {"batch_size": 0}, "batch_size"),
    (ScoreSettings, {"k": 1.5}, "k"),
    (ScoreSettings, {"k": 0}, "k"),
    (ScoreSettings, {"measures": ["spearman", "iou"]}, "measures"),
    (ScoreSettings, {"ssim": "box"}, "ssim"),
    (AttributionSettings, {"n_steps": 0}, "n_steps"),
    (AttributionSettings, {"ig_method": "riemann_left", "n_steps": 1}, "n_steps"),
    (AttributionSettings, {"ig_method": "simpson"}, "ig_method"),
    (AttributionSettings, {"nt_samples": 0}, "nt_samples"),
    (AttributionSettings, {"stdevs": -0.1}, "stdevs"),
])
def test_a_bad_value_names_its_key_and_value(cls, values, key):
    with pytest.raises(SettingsError, match=f"^({key}|unknown {key}) "):
        cls.from_mapping(values)


def test_an_unknown_key_is_named_and_ignore_skips_the_workflow_keys():
    with pytest.raises(SettingsError, match="'epoch'"):
        TrainSettings.from_mapping({"epoch": 3})
    s = TrainSettings.from_mapping({"epochs": 3, "size": 64, "priority": 1}, ignore=WORKFLOW_ONLY["train"])
    assert s.epochs == 3
    assert AttackSettings.from_mapping({"attack": "pgd", "eps": [0.1], "targeted": False},
                                       ignore=WORKFLOW_ONLY["attack"]).targeted == "none"


def test_settings_are_frozen_keyword_only_and_round_trip_through_json():
    s = TrainSettings(epochs=2, lr=3e-4, amp=True, layer="layer4")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.epochs = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        TrainSettings(2)  # type: ignore[misc]
    assert TrainSettings.from_json(s.to_json()) == s
    assert ScoreSettings.from_json(ScoreSettings(measures=["topk"], k=20).to_json()) == ScoreSettings(measures=("topk",), k=20)
    assert ScoreSettings(k=20).topk == 20 and isinstance(ScoreSettings(k=20).topk, int)
    assert ScoreSettings(k=0.25).topk == 0.25
    assert json.loads(AttackSettings(attack="mifgsm", decay=0.5).to_json())["decay"] == 0.5
    with pytest.raises(SettingsError, match="JSON"):
        TrainSettings.from_json("{epochs: 3}")


def test_an_attacks_json_holds_its_own_settings_alone():
    """A setting added for one attack (or another attack's value) leaves every other attack's rule argument, and so
    its jobs, as they were: each JSON carries the attack's name and the fields it uses."""
    for name in ATTACKS:
        s = AttackSettings(attack=name)
        d = json.loads(s.to_json())
        assert set(d) == {"attack", *ATTACK_PARAMS[name]}, name
        assert AttackSettings.from_json(s.to_json()) == s
    assert json.loads(AttackSettings(attack="fgsm", c=5.0, steps=3).to_json()) == {"attack": "fgsm", "seed": 0,
                                                                                    "targeted": "none"}


@pytest.mark.parametrize("attack, extra, eps, ok", [
    ("pgd", {}, 0.1, True), ("pgd", {}, 1.5, False), ("pgd", {}, 0, False), ("square", {}, 2.0, False),
    ("pgdl2", {}, 3.0, True), ("cw", {}, 0.5, True), ("deepfool", {}, 40, True), ("cw", {}, 0, False),
    ("apgd", {}, 2.0, False), ("apgd", {"norm": "L2"}, 2.0, True), ("pgdl2", {}, True, False),
])
def test_eps_is_checked_against_the_attacks_ball(attack, extra, eps, ok):
    s = AttackSettings(attack=attack, **extra)
    assert s.eps_norm == ("L2" if attack in ("pgdl2", "cw", "deepfool") or extra else "Linf")
    if ok:
        assert s.check_eps(eps) == eps
    else:
        with pytest.raises(SettingsError, match=r"^eps "):
            s.check_eps(eps)


def _parse(cls, argv, **kw):
    p = argparse.ArgumentParser()
    add_arguments(p, cls, **kw)
    return from_arguments(cls, p.parse_args(argv))


def test_cli_flags_override_the_settings_json():
    base = TrainSettings(epochs=5, lr=1e-4, pixel_noise=0.1, pixel_noise_from=2, amp=False)
    s = _parse(TrainSettings, ["--settings", base.to_json(), "--epochs", "7", "--amp", "auto", "--no-pretrained"])
    assert s == dataclasses.replace(base, epochs=7, amp=None, pretrained=False)
    assert _parse(TrainSettings, []) == TrainSettings()
    assert _parse(TrainSettings, ["--amp", "on"]).amp is True
    a = _parse(AttackSettings, ["--attack", "pgd", "--pgd-steps", "3", "--no-random-start", "--targeted", "next"])
    assert (a.attack, a.steps, a.random_start, a.targeted) == ("pgd", 3, False, "next")
    sc = _parse(ScoreSettings, ["--measures", "spearman", "--k", "20", "--chance-seed", "4", "--ssim", "gaussian"])
    assert sc == ScoreSettings(measures=("spearman",), k=20, chance_seed=4, ssim="gaussian")
    assert _parse(ScoreSettings, ["--measures"]).measures == ()
    with pytest.raises(SettingsError, match="^pixel_noise_from"):
        _parse(TrainSettings, ["--settings", base.to_json(), "--epochs", "1"])


def test_the_schema_names_the_differentiable_cams():
    from advcam.settings import DIFFERENTIABLE_CAMS
    assert tuple(_SCHEMA["definitions"]["differentiable_cam"]["enum"]) == DIFFERENTIABLE_CAMS
