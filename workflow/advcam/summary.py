"""MOD, VID and the accompanying accuracies from the per-image NISSIM table.

The per-image table (one row per model, CAM method, attack, ε and test image) has the columns ``model,
attack, eps, index, label, pred_clean, pred_adv, nissim``, optionally ``cam`` (the CAM method; a table
without it holds Grad-CAM) and ``zero_cam_clean, zero_cam_adv, zero_grad``.

Every summary is also per ``source_model``: the model the adversarial images were crafted on (the
model itself, white-box, unless the row is a transfer).

* **MOD** (model, cam, attack, ε) = mean NISSIM over the test images, with n, std and a percentile
  bootstrap CI.
* **nissim_var** (model, cam, attack, ε) = across-image variance of NISSIM (the paper's prose calls VID
  "the variance of NISSIM"; this is that reading, under its own name).
* **VID** (model, cam, attack) = the paper's formula: for each image, the population standard deviation
  of its NISSIM across the ε levels ε > 0; reported as the mean over images (and its std).
* Other measures present in the table (``spearman``, ``topk``, ``com_shift``, the localisation columns
  ``energy_clean``, ``energy_adv``, ``point_clean``, ``point_adv``, ``mask_frac``, and the perturbation's size
  ``delta_l2``, ``delta_linf``, each image's ‖x′ − x‖ on the [0, 1] scale): their mean over the
  images where they are defined, its bootstrap CI, and the count of images where they are not (NaN: a
  constant map has no ranks, an all-zero map no centre of mass or maximum) — counted, never silently dropped.
* **mod_rel** (model, cam, attack, ε) = (MOD − noise MOD) / (chance MOD − noise MOD), with the noise control
  of the same model, method and ε and the chance rows (attack ``chance``) of the same model and method: 0 =
  the attack moves the maps no more than random noise of its size, 1 = as far as the maps of two unrelated
  test images. NaN where a reference is missing, and for the L2 attacks (``norm`` L2: the noise control is an
  L∞ draw, so no noise row has their ε's size).
* **mod_fgsm_same_success** (model, cam, attack, ε) = FGSM's MOD at the row's success rate, interpolated over
  FGSM's ε (its clean point included): the comparison at equal success, for the dual attack (flip the label,
  keep the map) and every other one; where FGSM reaches a success rate at several ε (it saturates at 1), the
  smallest such ε's MOD. NaN outside FGSM's range.
* The sanity check (:mod:`advcam.sanity`): per (model, cam, randomised blocks) the mean Spearman and NISSIM
  against the trained model's maps (:func:`sanity_summary`) and a verdict per (model, cam)
  (:func:`advcam.sanity.flag`), carried into the MOD table as ``sanity``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import bootstrap

from .errors import InputError
from .references import relative_mod
from .replicates import model_stream, pairwise_claims, paper_claims, percentile_ci, training_flag, two_level_bootstrap
from .sanity import flag

__all__ = ["REQUIRED_COLUMNS", "MEASURE_COLUMNS", "REPLICATE_COLUMNS", "mod_vid", "vid", "vid_per_image", "bootstrap_ci",
           "sanity_summary", "training_flags", "replicate_summary", "claims", "check_table"]

REQUIRED_COLUMNS = ("model", "attack", "eps", "index", "label", "pred_clean", "pred_adv", "nissim")
#: one row of the MOD table per group: a training run (model, replicate) under one attack, ε and CAM method
GROUP = ["model", "replicate", "source_model", "cam", "attack", "eps"]
VID_GROUP = GROUP[:-1]
#: optional per-image measures summarised beside NISSIM when the score table has them
MEASURE_COLUMNS = ("spearman", "topk", "com_shift", "energy_clean", "energy_adv", "point_clean", "point_adv", "mask_frac",
                   "delta_l2", "delta_linf")


def check_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table with ``cam`` (Grad-CAM where it has none) and ``source_model`` (the model itself: white-box)
    columns; ValueError on a missing column or value."""
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(f"NISSIM table lacks column(s) {', '.join(missing)}")
    if table["nissim"].isna().any():
        raise InputError("NISSIM table has missing nissim values")
    if "cam" not in table.columns:
        table = table.assign(cam="gradcam")
    elif table["cam"].isna().any():
        table = table.assign(cam=table["cam"].fillna("gradcam"))
    if "replicate" not in table.columns:  # tables written before replicates: one training run, replicate 0
        table = table.assign(replicate=0)
    elif table["replicate"].isna().any():
        table = table.assign(replicate=table["replicate"].fillna(0).astype(int))
    if "source_model" not in table.columns:
        table = table.assign(source_model=table["model"])
    elif table["source_model"].isna().any():  # rows of tables written before transfer existed: white-box
        table = table.assign(source_model=table["source_model"].fillna(table["model"]))
    return table


def bootstrap_ci(x: np.ndarray, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``x`` (scipy.stats.bootstrap); (nan, nan) for n < 2,
    (v, v) when all values equal v."""

    x = np.asarray(x, float)
    if x.size < 2:
        return float("nan"), float("nan")
    if np.all(x == x[0]):
        return float(x[0]), float(x[0])
    r = bootstrap(
        (x,), np.mean, n_resamples=n_resamples, confidence_level=confidence, method="percentile",
        vectorized=True, rng=np.random.default_rng(seed),
    )
    return float(r.confidence_interval.low), float(r.confidence_interval.high)


def mod_vid(table: pd.DataFrame, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Summary per (model, cam, attack, eps): one tidy row each, sorted.

    Columns: model, source_model (the model whose adversarial images these are: ``model`` itself for a
    white-box row, another for a transfer row), cam, attack, eps, n, mod, mod_std, mod_ci_low, mod_ci_high, nissim_var, nissim_std,
    acc_clean, acc_adv, flip_rate, targeted (the target rule, "none"), success_rate (targeted: the share of
    images classified as their target; untargeted: the share misclassified), n_flipped, mod_flipped,
    mod_unflipped, zero_cam_clean, zero_cam_adv, zero_grad_frac, mod_rel (see the module's docstring); then for
    each measure M of :data:`MEASURE_COLUMNS` in the table: M_mean, M_ci_low, M_ci_high (over the images where
    M is defined) and M_nan (how many it is not). Accuracies and rates are fractions in [0,1]; NISSIM in [0,1].
    Chance rows (attack ``chance``, ε 0) pair each image with another: their "adversarial" prediction and
    accuracy are the partner's.
    """
    table = check_table(table)
    rows = []
    for (model, rep, source, cam, attack, eps), g in table.groupby(GROUP, sort=True):
        x = g["nissim"].to_numpy(float)
        flipped = (g["pred_adv"] != g["pred_clean"]).to_numpy()
        lo, hi = bootstrap_ci(x, confidence, n_resamples, seed)
        rows.append(
            {
                "model": model,
                "replicate": int(rep),
                "source_model": source,
                "cam": cam,
                "attack": attack,
                "eps": float(eps),
                "norm": str(g["norm"].iloc[0]) if "norm" in g else ("none" if attack == "chance" else "Linf"),
                "n": len(x),
                "mod": float(x.mean()),
                "mod_std": float(x.std(ddof=1)) if len(x) > 1 else float("nan"),
                "mod_ci_low": lo,
                "mod_ci_high": hi,
                "nissim_var": float(x.var(ddof=0)),
                "nissim_std": float(x.std(ddof=0)),
                "acc_clean": float((g["pred_clean"] == g["label"]).mean()),
                "acc_adv": float((g["pred_adv"] == g["label"]).mean()),
                "flip_rate": float(flipped.mean()),
                **_success(g),
                "n_flipped": int(flipped.sum()),
                "mod_flipped": float(x[flipped].mean()) if flipped.any() else float("nan"),
                "mod_unflipped": float(x[~flipped].mean()) if (~flipped).any() else float("nan"),
                "zero_cam_clean": int(g["zero_cam_clean"].sum()) if "zero_cam_clean" in g else 0,
                "zero_cam_adv": int(g["zero_cam_adv"].sum()) if "zero_cam_adv" in g else 0,
                "zero_grad_frac": float(g["zero_grad"].mean()) if "zero_grad" in g else float("nan"),
                **_measures(g, confidence, n_resamples, seed),
            }
        )
    return _with_fgsm_at_equal_success(_with_mod_rel(pd.DataFrame(rows)))


def _with_fgsm_at_equal_success(summ: pd.DataFrame) -> pd.DataFrame:
    """``mod_fgsm_same_success`` after ``mod_rel``: FGSM's MOD at the row's success rate, interpolated linearly
    over FGSM's own (success_rate, MOD) points of the same run, source, method and target rule, its clean point
    (the clean set's misclassification rate, MOD 0) included; NaN outside FGSM's range or without FGSM rows.
    An attack that flips as many labels as FGSM with a lower value moves the map less for the same success (the
    dual attack's claim); the explain attack (success: the label kept) gets NaN."""
    out = np.full(len(summ), np.nan)
    if len(summ):
        fg = summ[summ["attack"] == "fgsm"]
        keys = ["model", "replicate", "source_model", "cam", "targeted"]
        points = {}
        for k, g in fg.groupby(keys, sort=False):
            # the clean point: untargeted, the share already misclassified; targeted, the share already on target
            # is unknown here, so targeted curves start at their smallest ε
            clean = [] if k[-1] != "none" else [(1.0 - float(g["acc_clean"].iloc[0]), 0.0, 0.0)]
            pts = sorted(clean + list(zip(g["success_rate"].astype(float), g["eps"].astype(float),
                                          g["mod"].astype(float))))
            # a success rate FGSM reaches at several ε (it saturates at 1) takes the smallest such ε's MOD:
            # FGSM at the least perturbation with that success, not whichever tie np.interp happens to pick
            pts = [p for j, p in enumerate(pts) if j == 0 or p[0] != pts[j - 1][0]]
            points[k] = (np.array([p[0] for p in pts]), np.array([p[2] for p in pts]))
        for i, r in enumerate(summ[keys + ["attack", "success_rate"]].itertuples(index=False)):
            pts = points.get(tuple(r[:5]))
            if pts is None or r.attack in ("explain", "chance") or not pts[0][0] <= r.success_rate <= pts[0][-1]:
                continue
            out[i] = float(np.interp(r.success_rate, *pts))
    summ.insert(summ.columns.get_loc("mod_rel") + 1, "mod_fgsm_same_success", out)
    return summ


def _with_mod_rel(summ: pd.DataFrame) -> pd.DataFrame:
    """``mod_rel`` after ``zero_grad_frac``: (MOD − noise MOD) / (chance MOD − noise MOD) per row, from the
    model's own (white-box) noise rows at the row's ε and its chance rows."""

    if summ.empty:
        return summ.assign(mod_rel=pd.Series(dtype=float))
    own = summ[summ["source_model"] == summ["model"]]
    noise = own[own["attack"] == "noise"].set_index(["model", "replicate", "cam", "eps"])["mod"]
    chance = own[own["attack"] == "chance"].groupby(["model", "replicate", "cam"])["mod"].first()
    n = noise.reindex(pd.MultiIndex.from_frame(summ[["model", "replicate", "cam", "eps"]])).to_numpy()
    c = chance.reindex(pd.MultiIndex.from_frame(summ[["model", "replicate", "cam"]])).to_numpy()
    if "norm" in summ:  # the noise control is an L∞ draw: an L2 attack's ε has no noise row of its size
        n = np.where((summ["norm"] == "L2").to_numpy(), np.nan, n)
    rel = relative_mod(summ["mod"].to_numpy(), n, c)
    rel[(summ["attack"] == "chance").to_numpy()] = 1.0  # its own level, at any noise MOD
    at = summ.columns.get_loc("zero_grad_frac") + 1
    summ.insert(at, "mod_rel", rel)
    return summ


def sanity_summary(per_image: pd.DataFrame, threshold: float = 0.5) -> pd.DataFrame:
    """The sanity check per (model, replicate, cam, blocks): n, block, nissim_mean, spearman_mean (over the images where
    it is defined), spearman_nan (maps that became constant: no ranks), and per (model, cam) the chance level
    on the same images (spearman_chance, nissim_chance: the trained maps of two different images) and the
    verdict ``flag`` (:func:`advcam.sanity.flag` at ``threshold``, NaN Spearman counted as 0) with the two
    correlations it reads, spearman_head and spearman_all; per training run (``replicate``, 0 where the table
    has none). ``per_image``: the rows of
    :func:`advcam.sanity.run_sanity`."""

    missing = [c for c in ("model", "cam", "blocks", "block", "index", "spearman", "nissim") if c not in per_image]
    if missing:
        raise InputError(f"sanity table lacks column(s) {', '.join(missing)}")

    def rank0(v) -> float:
        return float(np.nan_to_num(np.asarray(v, float), nan=0.0).mean())

    if "replicate" not in per_image:
        per_image = per_image.assign(replicate=0)
    rows = []
    for (model, rep, cam, blocks), g in per_image.groupby(["model", "replicate", "cam", "blocks"], sort=True):
        r = g["spearman"].to_numpy(float)
        rows.append({"model": model, "replicate": int(rep), "cam": cam, "blocks": int(blocks), "block": g["block"].iloc[0], "n": len(g),
                     "nissim_mean": float(g["nissim"].mean()),
                     "spearman_mean": float(np.nanmean(r)) if (~np.isnan(r)).any() else float("nan"),
                     "spearman_nan": int(np.isnan(r).sum()), "_rank0": rank0(r)})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    verdicts = []
    for (model, rep, cam), g in out.groupby(["model", "replicate", "cam"], sort=False):
        head = g.loc[g["blocks"] == 1, "_rank0"]
        head = float(head.iloc[0]) if len(head) else float("nan")
        full = float(g.loc[g["blocks"].idxmax(), "_rank0"])
        trained = per_image[(per_image["model"] == model) & (per_image["replicate"] == rep) & (per_image["cam"] == cam)
                            & (per_image["blocks"] == 0)]
        has_chance = "spearman_chance" in trained
        ch = rank0(trained["spearman_chance"]) if has_chance else float("-inf")
        verdicts.append({"model": model, "replicate": int(rep), "cam": cam, "spearman_chance": ch if has_chance else float("nan"),
                         "nissim_chance": float(trained["nissim_chance"].mean()) if has_chance else float("nan"),
                         "spearman_head": head, "spearman_all": full, "flag": flag(head, full, threshold, ch)})
    return out.drop(columns="_rank0").merge(pd.DataFrame(verdicts), on=["model", "replicate", "cam"], how="left")


def _success(g: pd.DataFrame) -> dict:
    """``targeted`` (the target rule, "none" when untargeted) and ``success_rate``: for a targeted attack the
    share of images classified as their target; for the explain attack (keep the label, move the map) the share
    whose prediction stayed the clean one (1 by construction); else the share no longer classified as their label."""
    rule = str(g["targeted"].iloc[0]) if "targeted" in g else "none"
    if str(g["attack"].iloc[0]) == "explain":
        rate = float((g["pred_adv"] == g["pred_clean"]).mean())
    elif rule != "none" and "attack_target" in g:
        rate = float((g["pred_adv"] == g["attack_target"]).mean())
    else:
        rate = float((g["pred_adv"] != g["label"]).mean())
    return {"targeted": rule, "success_rate": rate}


def _measures(g: pd.DataFrame, confidence: float, n_resamples: int, seed: int) -> dict:
    out: dict = {}
    for m in MEASURE_COLUMNS:
        if m not in g:
            continue
        v = g[m].to_numpy(float)
        ok = v[~np.isnan(v)]
        lo, hi = bootstrap_ci(ok, confidence, n_resamples, seed)
        out.update({f"{m}_mean": float(ok.mean()) if ok.size else float("nan"), f"{m}_ci_low": lo, f"{m}_ci_high": hi,
                    f"{m}_nan": int(v.size - ok.size)})
    return out


def vid_per_image(table: pd.DataFrame) -> pd.DataFrame:
    """Per (model, replicate, cam, attack, image): population std of NISSIM across the ε > 0 levels present.

    Columns: model, replicate, source_model, cam, attack, index, vid, n_eps. Images missing an ε of their (model,
    replicate, cam, attack) are an error. An attack run at one ε only (e.g. the default's ``explain``) has no
    variance across ε and no rows here (a spread over one value would read as a VID of 0).
    """
    table = check_table(table)
    t = table[table["eps"] > 0]
    out = []
    for (model, rep, source, cam, attack), g in t.groupby(VID_GROUP, sort=True):
        wide = g.pivot_table(index="index", columns="eps", values="nissim", aggfunc="first")
        if wide.shape[1] < 2:
            continue
        if wide.isna().any().any():
            raise InputError(f"{model} r{rep}/{cam}/{attack} (from {source}): some images lack NISSIM at some epsilon")
        v = wide.to_numpy().std(axis=1, ddof=0)
        out.append(pd.DataFrame({"model": model, "replicate": int(rep), "source_model": source, "cam": cam,
                                 "attack": attack, "index": wide.index.to_numpy(), "vid": v, "n_eps": wide.shape[1]}))
    if not out:
        return pd.DataFrame(columns=["model", "replicate", "source_model", "cam", "attack", "index", "vid", "n_eps"])
    return pd.concat(out, ignore_index=True)


def vid(table: pd.DataFrame) -> pd.DataFrame:
    """VID per (model, replicate, cam, attack): mean (and std, median) over images of the per-image NISSIM std
    across ε.

    Columns: model, replicate, source_model, cam, attack, n, n_eps, eps, vid, vid_std, vid_median.
    """
    table = check_table(table)
    per = vid_per_image(table)
    rows = []
    for (model, rep, source, cam, attack), g in per.groupby(VID_GROUP, sort=True):
        sel = ((table["model"] == model) & (table["replicate"] == rep) & (table["source_model"] == source)
               & (table["cam"] == cam) & (table["attack"] == attack) & (table["eps"] > 0))
        eps = sorted(table.loc[sel, "eps"].unique())
        rows.append(
            {
                "model": model,
                "replicate": int(rep),
                "source_model": source,
                "cam": cam,
                "attack": attack,
                "n": len(g),
                "n_eps": int(g["n_eps"].iloc[0]),
                "eps": " ".join(f"{e:g}" for e in eps),
                "vid": float(g["vid"].mean()),
                "vid_std": float(g["vid"].std(ddof=1)) if len(g) > 1 else float("nan"),
                "vid_median": float(g["vid"].median()),
            }
        )
    return pd.DataFrame(rows, columns=["model", "replicate", "source_model", "cam", "attack", "n", "n_eps", "eps", "vid",
                                       "vid_std", "vid_median"])


def training_flags(table: pd.DataFrame, reports: pd.DataFrame | None = None, min_accuracy: float = 0.0,
                   confidence: float = 0.95) -> pd.DataFrame:
    """One row per training run (model, replicate) of the score ``table``: its clean test accuracy (n, correct,
    acc_clean from the white-box rows' clean predictions, one per test image), n_classes (from ``reports``,
    :func:`read_train_reports`; else the labels the table holds), arch, ``training_flag``
    (:func:`advcam.replicates.training_flag`: ``ok``, ``at chance``, ``below min_accuracy``), and what makes a robust
    model comparable with a standard one: ``adv_train`` and ``robust_acc`` from ``reports`` ("none" and NaN without),
    and ``alignment``, the mean over the run's test images of Etmann et al.'s |⟨x, ∇ₓ y_c⟩| / (‖x‖·‖∇ₓ y_c‖) (the
    table's per-image ``alignment``; NaN where it has none)."""
    table = check_table(table)
    own = table[table["source_model"] == table["model"]]
    rep_info = {} if reports is None else {(r.model, int(r.replicate)): r for r in reports.itertuples()}
    rows = []
    for (model, rep), g in own.groupby(["model", "replicate"], sort=True):
        first = g.drop_duplicates("index")
        n, correct = len(first), int((first["pred_clean"] == first["label"]).sum())
        info = rep_info.get((model, int(rep)))
        n_classes = int(info.num_classes) if info is not None else int(table.loc[table["model"] == model, "label"].nunique())
        rows.append({"model": model, "replicate": int(rep), "arch": info.arch if info is not None else model, "n": n,
                     "correct": correct, "acc_clean": correct / n, "n_classes": n_classes,
                     "training_flag": training_flag(correct, n, n_classes, min_accuracy, confidence),
                     "adv_train": getattr(info, "adv_train", "none") if info is not None else "none",
                     "robust_acc": float(getattr(info, "robust_acc", np.nan)) if info is not None else np.nan,
                     "alignment": float(first["alignment"].mean()) if "alignment" in first else np.nan})
    return pd.DataFrame(rows, columns=["model", "replicate", "arch", "n", "correct", "acc_clean", "n_classes",
                                       "training_flag", "adv_train", "robust_acc", "alignment"])


def _usable(flags: pd.DataFrame) -> set[tuple[str, int]]:
    return {(m, int(r)) for m, r, f in flags[["model", "replicate", "training_flag"]].itertuples(index=False) if f == "ok"}


def _left_out(flags: pd.DataFrame, models=None) -> str:
    """The flagged runs by name, e.g. ``inception_v3/r1 (at chance)``; "" when none."""
    bad = flags[flags["training_flag"] != "ok"]
    if models is not None:
        bad = bad[bad["model"].isin(models)]
    return "; ".join(f"{m}/r{r} ({f})" for m, r, f in bad[["model", "replicate", "training_flag"]].itertuples(index=False))


#: per-run columns of the MOD table carried into the across-replicate table (mean and across-replicate std)
REPLICATE_COLUMNS = ("mod", "nissim_var", "acc_clean", "acc_adv", "flip_rate", "success_rate", "mod_rel",
                     "mod_fgsm_same_success")


def _per_image(g: pd.DataFrame, column: str, reps: list[int]) -> np.ndarray:
    """(R, n) of ``column``: replicate × test image (sorted by index); ValueError when a run lacks an image."""
    wide = g.pivot_table(index="replicate", columns="index", values=column, aggfunc="first", dropna=False)
    wide = wide.reindex(index=reps)
    present = g.groupby("replicate")["index"].nunique().reindex(reps)
    if present.isna().any() or (present != wide.shape[1]).any():
        raise InputError(f"the replicates of {g['model'].iloc[0]} ({g['cam'].iloc[0]}, {g['attack'].iloc[0]} at "
                         f"ε={g['eps'].iloc[0]:g}) were scored on different test images; they must share the split")
    return wide.to_numpy(float)


def replicate_summary(table: pd.DataFrame, summ: pd.DataFrame, flags: pd.DataFrame, confidence: float = 0.95,
                      n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Across training runs, one row per (model, source_model, cam, attack, eps) of the per-image ``table``,
    over the runs ``flags`` (:func:`training_flags`) marks ``ok`` (for a transfer row, both the target's and
    the source's replicate):

    n_replicates, replicates (the ones used), left_out (the flagged ones, by name), n (test images); for each
    column C of :data:`REPLICATE_COLUMNS` in ``summ`` (the per-run MOD table) C = its mean over the replicates
    and C_rep_std their std (ddof 1); two-level bootstrap CIs (:func:`advcam.replicates.two_level_bootstrap`:
    replicates, then the test images they share) of MOD (mod_ci_low/high), of the accuracies and the flip rate
    (acc_clean_ci_low/high, …: the per-image 0/1 outcomes resampled alike) and of mod_rel (the resamples of the
    attack's, the noise control's and the chance rows' MOD, drawn on the same replicates and images, combined
    resample by resample); likewise for each measure M of :data:`MEASURE_COLUMNS` present: M_mean,
    M_mean_rep_std, M_ci_low, M_ci_high; and ci_note, which says why the CIs are NaN (fewer than two usable
    replicates)."""

    table = check_table(table)
    ok = _usable(flags)
    measures = [m for m in MEASURE_COLUMNS if m in table]
    table = table.assign(_acc_clean=(table["pred_clean"] == table["label"]).astype(float),
                         _acc_adv=(table["pred_adv"] == table["label"]).astype(float),
                         _flip_rate=(table["pred_adv"] != table["pred_clean"]).astype(float))
    keys = ["model", "source_model", "cam", "attack", "eps"]
    rows, mod_dists = [], {}
    for (model, source, cam, attack, eps), g in table.groupby(keys, sort=True):
        all_reps = sorted(int(r) for r in g["replicate"].unique())
        reps = [r for r in all_reps if (model, r) in ok and (source, r) in ok]
        left = [r for r in all_reps if r not in reps]
        s = summ[(summ["model"] == model) & (summ["source_model"] == source) & (summ["cam"] == cam)
                 & (summ["attack"] == attack) & (summ["eps"] == eps) & summ["replicate"].isin(reps)]
        row = {"model": model, "source_model": source, "cam": cam, "attack": attack, "eps": float(eps),
               "norm": str(g["norm"].iloc[0]) if "norm" in g else ("none" if attack == "chance" else "Linf"),
               "n_replicates": len(reps), "replicates": " ".join(map(str, reps)),
               "left_out": _left_out(flags[flags["replicate"].isin(left)], {model, source}),
               "n": int(g[g["replicate"].isin(reps)].groupby("replicate")["index"].nunique().max()) if reps else 0}
        for c in REPLICATE_COLUMNS:
            if c in s:
                v = s[c].to_numpy(float)
                row[c] = float(v.mean()) if v.size else float("nan")
                row[f"{c}_rep_std"] = float(v.std(ddof=1)) if v.size > 1 else float("nan")
        g = g[g["replicate"].isin(reps)]
        stream = model_stream(model)

        def ci(col):
            """The two-level CI of the mean of ``col`` (and its resamples), NaN below two usable replicates."""
            if len(reps) < 2:
                return (float("nan"), float("nan")), None
            dist = two_level_bootstrap(_per_image(g, col, reps), n_resamples, seed, stream)
            return percentile_ci(dist, confidence), dist

        (lo, hi), dist = ci("nissim")
        row.update({"mod_ci_low": lo, "mod_ci_high": hi})
        mod_dists[(model, source, cam, attack, float(eps))] = (tuple(reps), dist)
        for c in ("acc_clean", "acc_adv", "flip_rate"):
            (lo, hi), _ = ci(f"_{c}")
            row.update({f"{c}_ci_low": lo, f"{c}_ci_high": hi})
        for m in measures:
            (lo, hi), _ = ci(m)
            per = s[f"{m}_mean"].to_numpy(float) if f"{m}_mean" in s else np.array([])
            row.update({f"{m}_mean": float(np.nanmean(per)) if per.size else float("nan"),
                        f"{m}_mean_rep_std": float(np.nanstd(per, ddof=1)) if per.size > 1 else float("nan"),
                        f"{m}_ci_low": lo, f"{m}_ci_high": hi})
        row["ci_note"] = ("" if len(reps) >= 2 else
                          "no usable replicate" if not reps else
                          "one usable replicate: no interval covers training (mod_vid.csv has the image-only CI)")
        rows.append(row)
    out = pd.DataFrame(rows)
    lo, hi = [], []
    for r in rows:  # mod_rel's CI: the same resamples of the model's own noise control (same ε) and chance rows
        reps, dist = mod_dists[(r["model"], r["source_model"], r["cam"], r["attack"], r["eps"])]
        noise = mod_dists.get((r["model"], r["model"], r["cam"], "noise", r["eps"]))
        chance = next((v for k, v in mod_dists.items() if k[:4] == (r["model"], r["model"], r["cam"], "chance")), None)
        if dist is None or r["attack"] == "chance" or r["norm"] == "L2" or not noise or not chance or {noise[0], chance[0]} != {reps}:
            lo.append(float("nan"))
            hi.append(float("nan"))
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            c = percentile_ci(relative_mod(dist, noise[1], chance[1]), confidence)
        lo.append(c[0])
        hi.append(c[1])
    if len(out) and "mod_rel" in out:
        out.insert(out.columns.get_loc("mod_rel_rep_std") + 1, "mod_rel_ci_low", lo)
        out.insert(out.columns.get_loc("mod_rel_ci_low") + 1, "mod_rel_ci_high", hi)
    return out


CLAIM_COLUMNS = ["claim", "cam", "attack", "eps", "model_a", "model_b", "statistic", "ci_low", "ci_high", "order_share",
                 "n_replicates", "verdict", "definition", "note", "left_out"]


def claims(table: pd.DataFrame, flags: pd.DataFrame, confidence: float = 0.95, n_resamples: int = 2000,
           seed: int = 0) -> tuple[pd.DataFrame, list[str]]:
    """The model claims (:func:`advcam.replicates.pairwise_claims` and :func:`~advcam.replicates.paper_claims`)
    from the white-box rows of the per-image ``table`` (no chance rows), over the training runs ``flags`` marks
    ``ok``; every row names the runs left out (``left_out``). Returns (table, notes): the notes say which
    claims were skipped and which runs were left out."""
    table = check_table(table)
    ok = _usable(flags)
    own = table[(table["source_model"] == table["model"]) & (table["attack"] != "chance")]
    groups = {}
    for (model, cam, attack, eps), g in own.groupby(["model", "cam", "attack", "eps"], sort=True):
        reps = sorted(int(r) for r in g["replicate"].unique() if (model, int(r)) in ok)
        if reps:
            groups[(model, cam, attack, float(eps))] = _per_image(g[g["replicate"].isin(reps)], "nissim", reps)
    archs = dict(zip(flags["model"], flags["arch"]))
    if not groups:
        return pd.DataFrame(columns=CLAIM_COLUMNS), ["no usable training run: no claim can be tested"] + (
            [f"left out of the claims: {_left_out(flags)}"] if _left_out(flags) else [])
    rows = pairwise_claims(groups, confidence, n_resamples, seed)
    paper, notes = paper_claims(groups, archs, confidence, n_resamples, seed)
    left = _left_out(flags)
    if left:
        notes.append(f"left out of the claims: {left}")
    out = pd.DataFrame(paper + rows).reindex(columns=CLAIM_COLUMNS)
    out["note"] = out["note"].fillna("")
    out["left_out"] = left
    return out, notes


