"""The summarise stage: per-image score tables in; MOD, VID, replicates and claims tables out."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..atomic import atomic_path
from ..roc import detection_summary
from ..errors import InputError
from ..summary import (
    check_table,
    claims,
    mod_vid,
    replicate_summary,
    sanity_summary,
    training_flags,
    vid,
    vid_per_image,
)

__all__ = ["read_scores", "read_train_reports", "summarise"]


def _read_table(path: str | os.PathLike, what: str) -> pd.DataFrame:
    """The CSV at ``path``; FileNotFoundError naming it as a ``what`` table when it does not exist."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} table '{path}' does not exist")
    return pd.read_csv(path)


def read_scores(paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """The per-image score tables at ``paths`` (the score stage's CSVs) in one table. FileNotFoundError
    naming a missing table, ValueError naming one with NaN NISSIM values (a broken score file: MOD and VID
    never average over a missing value silently)."""
    frames = []
    for p in paths:
        df = _read_table(p, "score")
        if "nissim" in df and df["nissim"].isna().any():
            bad = df.loc[df["nissim"].isna(), "index"].tolist() if "index" in df else []
            raise InputError(f"score table '{p}' has {int(df['nissim'].isna().sum())} NaN NISSIM values "
                             f"(test images {bad[:10]}); rerun its score job")
        frames.append(df)
    if not frames:
        raise InputError("no score tables given")
    return pd.concat(frames, ignore_index=True)


def read_train_reports(paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """model, replicate, arch, num_classes, test_acc, adv_train (``none``, or e.g. ``pgd eps=0.0314 steps=7``) and
    robust_acc (accuracy under PGD at the training ε; NaN for a standard model) of each train.json at ``paths`` (the
    train stage's reports; ``model`` is the study's name for the model, its arch where the report has none)."""

    rows = []
    for p in paths:
        if not Path(p).is_file():
            raise FileNotFoundError(f"train report '{p}' does not exist")
        r = json.loads(Path(p).read_text())
        at = r.get("adv_train")
        rows.append({"model": r.get("model") or r["arch"], "replicate": int(r.get("replicate", 0)), "arch": r["arch"],
                     "num_classes": int(r["num_classes"]), "test_acc": float(r.get("test_acc", float("nan"))),
                     "adv_train": "none" if not at else f"{at['attack']} eps={at['eps']:.4g} steps={at['steps']}",
                     "robust_acc": float(r.get("robust_acc", float("nan")))})
    return pd.DataFrame(rows, columns=["model", "replicate", "arch", "num_classes", "test_acc", "adv_train", "robust_acc"])


def summarise(
    scores: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    vid_out: str | os.PathLike | None = None,
    vid_images_out: str | os.PathLike | None = None,
    nissim_out: str | os.PathLike | None = None,
    sanity: Sequence[str | os.PathLike] | None = None,
    sanity_out: str | os.PathLike | None = None,
    sanity_threshold: float = 0.5,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
    train_reports: Sequence[str | os.PathLike] | None = None,
    min_accuracy: float = 0.0,
    replicates_out: str | os.PathLike | None = None,
    claims_out: str | os.PathLike | None = None,
    detection: Sequence[str | os.PathLike] | None = None,
    detection_out: str | os.PathLike | None = None,
    fpr: float = 0.05,
) -> pd.DataFrame:
    """The summarise stage: the score tables at ``scores`` → :func:`mod_vid` at ``out``, one row per training
    run (with its ``training_flag``, :func:`training_flags` from the ``train_reports`` and ``min_accuracy``, and
    the sanity verdict per run and method as column ``sanity`` when per-image ``sanity`` tables are given), and,
    where a path is given, :func:`vid` at ``vid_out``, :func:`vid_per_image` at ``vid_images_out``, all
    per-image rows at ``nissim_out``, :func:`sanity_summary` at ``sanity_out``, :func:`replicate_summary` at
    ``replicates_out``, :func:`claims` at ``claims_out`` and :func:`advcam.detection.detection_summary` of the
    per-image ``detection`` tables (at ``fpr``, with each run's flag) at ``detection_out``; each computed before the first is written, each
    written atomically. The runs left out and the claims skipped are printed. Returns the MOD table."""

    if not 0 <= min_accuracy <= 1:
        raise InputError(f"min_accuracy {min_accuracy:g} must lie in [0, 1]")
    table = check_table(read_scores(scores))
    reports = read_train_reports(train_reports) if train_reports else None
    flags = training_flags(table, reports, min_accuracy, confidence)
    # every summary carries each run's flag and what tells a robust model from a standard one
    flag_of = flags[["model", "replicate", "training_flag", "adv_train", "robust_acc", "alignment"]]
    summ = mod_vid(table, confidence=confidence, n_resamples=n_resamples, seed=seed).merge(
        flag_of, on=["model", "replicate"], how="left")
    sanity_table = None
    if sanity:
        per_image = pd.concat([_read_table(p, "sanity") for p in sanity], ignore_index=True)
        sanity_table = sanity_summary(per_image, sanity_threshold).merge(flag_of, on=["model", "replicate"], how="left")
        flags_s = (sanity_table.groupby(["model", "replicate", "cam"], sort=False)["flag"].first().rename("sanity")
                   .reset_index())
        summ = summ.merge(flags_s, on=["model", "replicate", "cam"], how="left")
    for m, r, f, a in flags[["model", "replicate", "training_flag", "acc_clean"]].itertuples(index=False):
        if f != "ok":
            print(f"summarise: {m}/r{r} flagged '{f}' (clean accuracy {a:.3f}): left out of replicates and claims")
    # only the tables asked for, each computed before the first is written (a failing one leaves none behind)
    outs = [(out, summ)]
    outs += [(vid_out, vid(table).merge(flag_of, on=["model", "replicate"], how="left"))] if vid_out else []
    outs += [(vid_images_out, vid_per_image(table))] if vid_images_out else []
    outs += [(nissim_out, table)] if nissim_out else []
    outs += [(sanity_out, sanity_table)] if sanity_out and sanity_table is not None else []
    if replicates_out:
        outs.append((replicates_out, replicate_summary(table, summ, flags, confidence, n_resamples, seed)))
    if claims_out:
        claim_table, notes = claims(table, flags, confidence, n_resamples, seed)
        for note in notes:
            print(f"summarise: {note}")
        outs.append((claims_out, claim_table))
    if detection_out:
        if not detection:
            raise InputError("--detection-out needs the per-image detection tables (--detection)")
        det = pd.concat([_read_table(p, "detection") for p in detection], ignore_index=True)
        outs.append((detection_out, detection_summary(det, fpr, confidence, n_resamples, seed).merge(
            flag_of, on=["model", "replicate"], how="left")))
    for path, frame in outs:
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False, float_format="%.6g")
    return summ
