"""The plot and gallery stages: summaries and heatmap files in, figures out."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..datasets import load_prepared
from ..errors import InputError
from ..io.heatmap_file import method_of
from ..io.store import read_attrs, read_h5
from ..plots import (
    mean_over_runs,
    plot_accuracy,
    plot_claims,
    plot_gallery,
    plot_localisation,
    plot_mod,
    plot_nissim,
    plot_roc,
    plot_sanity,
    plot_transfer,
    plot_vid,
)

__all__ = ["plot_study", "gallery"]


def plot_study(
    summary: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    vid_images: str | os.PathLike | None = None,
    nissim: str | os.PathLike | None = None,
    sanity: str | os.PathLike | None = None,
    replicates: str | os.PathLike | None = None,
    claims: str | os.PathLike | None = None,
    detection: list[str | os.PathLike] | None = None,
) -> list[Path]:
    """The plot stage: every figure of a study into ``out_dir`` from its summaries — MOD and accuracy against
    ε (``summary``, the MOD table), localisation when the table has it, one transfer figure per target model,
    and where given the VID violins (``vid_images``), the NISSIM violins per attack (``nissim``, all per-image
    rows, every training run pooled), the sanity check per model (``sanity``, the sanity summary) and the claims
    (``claims``, :func:`plot_claims`), and a ROC figure per model of the per-image ``detection`` tables
    (:func:`plot_roc`, ``roc_<model>``). With ``replicates`` (the across-replicate table) and more than one training
    run, the MOD, accuracy, localisation and transfer figures show the mean over runs with its two-level CI.
    Returns the files written."""
    summ = pd.read_csv(summary)
    out = Path(out_dir)
    files: list[Path] = []
    study = summ
    if "replicate" in summ and summ["replicate"].nunique() > 1:
        reps = pd.read_csv(replicates) if replicates else None
        # the across-replicate table where two runs or more are usable, else the plain mean over runs (every run flagged)
        study = reps if reps is not None and len(reps) and reps["n_replicates"].max() > 1 else mean_over_runs(summ)
    if "source_model" in study:
        for target in sorted(set(study.loc[study["source_model"] != study["model"], "model"])):
            files += plot_transfer(study, target, out / f"transfer_{target}")
    files += plot_mod(study, out / "mod", runs=summ)
    files += plot_accuracy(study, out / "accuracy")
    if "energy_adv_mean" in study:
        files += plot_localisation(study, out / "localisation")
    if claims:
        files += plot_claims(pd.read_csv(claims), out / "claims")
    if vid_images:
        files += plot_vid(pd.read_csv(vid_images), out / "vid")
    if nissim:
        table = pd.read_csv(nissim)
        for attack in sorted(set(table["attack"].unique()) - {"chance"}):
            files += plot_nissim(table, out / f"nissim_{attack}", attack)
    if detection:
        det = pd.concat([pd.read_csv(f) for f in detection], ignore_index=True)
        for model in sorted(det["model"].unique()):
            files += plot_roc(det, model, out / f"roc_{model}")
    if sanity:
        sanity_table = pd.read_csv(sanity)
        for model in sorted(sanity_table["model"].unique()):
            files += plot_sanity(sanity_table, model, out / f"sanity_{model}")
    return files


def gallery(
    data: str | os.PathLike,
    clean: list[str | os.PathLike],
    adv: list[str | os.PathLike],
    prefix: str | os.PathLike,
    *,
    n: int = 6,
    seed: int = 0,
    title: str = "",
) -> list[Path]:
    """The gallery stage: :func:`plot_gallery` of ``n`` test images (a seeded draw) of the prepared store
    ``data``, from one model's clean heatmap files (``clean``, one per CAM method) and adversarial ones
    (``adv``, one per method and ε). ValueError naming a file whose method has no clean file, or which holds
    other test images."""

    ds = load_prepared(data)
    clean_files = {}
    for f in clean:
        clean_files.setdefault(method_of(read_attrs(f)), f)
    first = read_h5(next(iter(clean_files.values())), ["pred", "index", "labels"])
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(first["index"]), size=min(n, len(first["index"])), replace=False))
    clean_maps = {m: read_h5(f, ["maps"])["maps"][pick] for m, f in clean_files.items()}
    adv_maps: dict[str, dict[float, np.ndarray]] = {m: {} for m in clean_files}
    adv_pred: dict[float, np.ndarray] = {}
    for f in adv:
        at = read_attrs(f)
        m, e = method_of(at), float(at["eps"])
        if m not in clean_files:
            raise InputError(f"'{f}' holds {m} maps but no clean heatmap file does (they hold {', '.join(clean_files)})")
        d = read_h5(f, ["maps", "pred", "index"])
        if not np.array_equal(d["index"], first["index"]):
            raise InputError(f"'{f}' holds other test images than '{clean_files[m]}'")
        adv_maps[m][e] = d["maps"][pick]
        adv_pred[e] = d["pred"][pick]
    return plot_gallery(ds.images[first["index"][pick]], clean_maps, adv_maps, first["pred"][pick], adv_pred,
                        ds.identities, first["labels"][pick], prefix, title=title)
