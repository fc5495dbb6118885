"""The detection stage: the detector scores of every clean test image and of its adversarial versions, from the
input alone (:mod:`advcam.detection`), one table per training run."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..atomic import atomic_path
from ..attacks import perturb
from ..batching import batches
from ..detection import detection_scores
from ..errors import InputError
from ..io.attack_file import stored_perturbation
from ..io.store import read_attrs, read_h5
from ..settings import DetectionSettings
from .runtime import load_for_inference, replicate_of, test_set

__all__ = ["run_detect", "DETECTION_COLUMNS"]

#: the per-image table's columns, one row per (input, score)
DETECTION_COLUMNS = ["model", "replicate", "attack", "eps", "norm", "targeted", "index", "label", "pred_clean", "pred",
                     "flipped", "score", "cam", "value"]


def _score_cams(settings: DetectionSettings) -> dict[str, str]:
    """The CAM method(s) behind each score, as the summary names them ("none" for the scores without a map)."""
    return {"self_consistency": settings.method, "disagreement": "+".join(settings.pair), "max_softmax": "none",
            "squeeze": "none"}


def run_detect(
    model_path: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    settings: DetectionSettings,
    *,
    attack_files: Sequence[str | os.PathLike] = (),
    sign_file: str | os.PathLike | None = None,
    ssim: str = "uniform",
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    name: str | None = None,
) -> pd.DataFrame:
    """The detection stage: ``settings.scores`` of the clean test images of the store ``data`` (attack "clean",
    ε 0) and of their adversarial versions in each of ``attack_files`` (the attack stage's files of this model:
    each image rebuilt from its stored perturbation, or from ``sign_file``'s FGSM sign, or from the noise seed),
    under the checkpoint ``model_path``. The maps explain each input's predicted class: a defender has no label.
    Written atomically to ``out`` as a CSV of :data:`DETECTION_COLUMNS`, one row per input and score (``flipped``:
    the model's prediction of the input differs from its clean prediction; ``value``: higher means more likely
    adversarial); ``ssim``: the study's SSIM window. Returns the table."""

    if ssim not in ("uniform", "gaussian"):
        raise InputError(f"--ssim {ssim!r}: choose uniform or gaussian")
    model, info = load_for_inference(model_path, torch.device(device))
    _, x, y, idx = test_set(data)
    layer, who, rep = info["layer"], name or info["arch"], replicate_of(info)
    cams = _score_cams(settings)

    def score(images_of, attack: str, eps: float, norm: str, targeted: str, clean_pred=None) -> tuple[pd.DataFrame, np.ndarray]:
        parts = []
        for sl, xb in batches(x, batch_size):
            parts.append(detection_scores(model, layer, images_of(sl, xb), idx[sl], settings, batch_size=batch_size,
                                          gaussian=ssim == "gaussian"))
        got = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        pred = got.pop("pred")
        base = clean_pred if clean_pred is not None else pred
        frames = [pd.DataFrame({"model": who, "replicate": rep, "attack": attack, "eps": eps, "norm": norm,
                                "targeted": targeted, "index": idx, "label": y.numpy(), "pred_clean": base,
                                "pred": pred, "flipped": pred != base, "score": s, "cam": cams[s], "value": v})
                  for s, v in got.items()]
        return pd.concat(frames, ignore_index=True), pred

    clean, clean_pred = score(lambda sl, xb: xb, "clean", 0.0, "none", "none")
    frames = [clean]
    for f in attack_files:
        a = read_attrs(f)
        attack, eps, targeted = str(a.get("attack")), float(a.get("eps", "nan")), str(a.get("targeted", "none"))
        if str(a.get("source_model", who)) != who and a.get("source_model") is not None:
            raise InputError(f"{f}: holds {a.get('source_model')}'s images (a transfer file), not {who}'s own attack")
        if not np.array_equal(read_h5(f, ["index"])["index"], idx):
            raise InputError(f"{f}: holds other test images than {data}")
        sign, delta, _ = stored_perturbation(attack, sign_file, f, len(idx), targeted != "none")
        seed = int(a.get("seed", 0))

        def images_of(sl, xb, attack=attack, eps=eps, sign=sign, delta=delta, seed=seed):
            return perturb(xb, attack, eps, idx[sl], None if sign is None else sign[sl],
                           None if delta is None else delta[sl], seed=seed)

        frames.append(score(images_of, attack, eps, str(a.get("norm", "Linf")), targeted, clean_pred)[0])
    table = pd.concat(frames, ignore_index=True)[DETECTION_COLUMNS]
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.9g")
    return table
