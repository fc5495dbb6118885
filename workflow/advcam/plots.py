"""Figures: MOD and accuracy against ε (with CIs, the noise control and the chance level), VID and NISSIM
distributions, localisation on the face parts, the sanity check per model, and a per-model gallery of clean
and adversarial heatmaps; every figure shows the CAM methods side by side. Each figure is written as PNG and
PDF (the gallery as PNG only)."""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .atomic import atomic_path
from .roc import roc_auc, roc_curve
from .settings import ATTACKS, EXPLAINER_NAMES

__all__ = ["plot_mod", "plot_accuracy", "plot_vid", "plot_nissim", "plot_gallery", "plot_transfer", "plot_localisation",
           "plot_sanity", "plot_claims", "plot_roc", "mean_over_runs", "save"]

#: a line style per attack (the chance reference is a dash-dot horizontal line); every attack of the registry has one
STYLE = {"fgsm": "-", "noise": ":", "pgd": "--", "bim": (0, (3, 1, 1, 1)), "mifgsm": (0, (5, 1, 1, 1, 1, 1)),
         "explain": (0, (8, 2)), "dual": (0, (1, 1)), "pgdl2": (0, (4, 2, 1, 2)), "apgd": (0, (6, 1)),
         "square": (0, (2, 2)), "cw": (0, (1, 2, 4, 2)), "deepfool": (0, (3, 3)), "adaptive": (0, (5, 2, 1, 2, 1, 2))}
MARKER = {"fgsm": "o", "pgd": "D", "bim": "s", "mifgsm": "^", "explain": "*", "dual": "x", "pgdl2": "P", "apgd": "v",
          "square": "h", "cw": "<", "deepfool": ">", "adaptive": "p"}
assert set(STYLE) == set(ATTACKS), "every attack of advcam.settings.ATTACKS has a line style"
#: the x-axis of each ball an attack's ε can measure (an L2 radius is on another scale than an L∞ one: own panels)
EPS_LABEL = {"Linf": "ε (L∞, pixel scale [0,1])", "L2": "ε (L2 radius, pixel scale [0,1])"}


def save(fig, prefix: str | os.PathLike, formats: tuple[str, ...] = ("png", "pdf"), tight: bool = True) -> list[Path]:
    """Write ``prefix.png`` (150 dpi) and ``prefix.pdf`` (or the given ``formats``) atomically, cropped to
    the drawn content when ``tight``; closes the figure."""
    out = []
    for ext in formats:
        p = Path(f"{prefix}.{ext}")
        with atomic_path(p) as tmp:
            fig.savefig(tmp, dpi=150, bbox_inches="tight" if tight else None, format=ext)
        out.append(p)
    plt.close(fig)
    return out


def _colors(keys) -> dict:
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(keys)}


def _with_cam(frame: pd.DataFrame, white_box: bool = True, chance: bool = False) -> pd.DataFrame:
    """The frame with a ``cam`` column (Grad-CAM where it has none, as in summaries written before methods
    were an axis); ``white_box``: only the rows of attacks crafted on the model itself (no transfer rows);
    ``chance``: keep the chance-reference rows (attack ``chance``), which are no attack."""
    frame = frame if "cam" in frame.columns else frame.assign(cam="gradcam")
    if white_box and "source_model" in frame.columns:
        frame = frame[frame["source_model"] == frame["model"]]
    if not chance and "attack" in frame.columns:
        frame = frame[frame["attack"] != "chance"]
    return frame


def _norm_mask(frame: pd.DataFrame, norm: str) -> pd.Series:
    """Rows whose ε is in the ``norm`` ball (a frame without a ``norm`` column holds L∞ attacks only)."""
    if "norm" not in frame.columns:
        return pd.Series(norm == "Linf", index=frame.index)
    return frame["norm"] == norm


def _norms(frame: pd.DataFrame) -> list[str]:
    """The balls of the attacks in ``frame``, L∞ first (at least L∞: an empty frame still gets its panel)."""
    return [n for n in EPS_LABEL if _norm_mask(frame, n).any()] or ["Linf"]


def _cam_order(frame: pd.DataFrame) -> list[str]:
    """The CAM methods of ``frame`` in the order of :data:`advcam.settings.EXPLAINER_NAMES` (others after)."""

    present = list(frame["cam"].unique())
    return [m for m in EXPLAINER_NAMES if m in present] + sorted(m for m in present if m not in EXPLAINER_NAMES)


def _panels(n: int, width: float = 3.4, height: float = 2.8, max_cols: int = 3, sharey: bool = True):
    n = max(1, n)
    cols = min(n, max_cols)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), sharey=sharey, squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat[:n]


def plot_mod(summary: pd.DataFrame, prefix: str | os.PathLike, runs: pd.DataFrame | None = None) -> list[Path]:
    """MOD (mean NISSIM) against ε, one panel per model and a line per CAM method (colour) and attack
    (solid FGSM, dotted noise control), 95% bootstrap CI as a band. ε = 0 is the clean set (MOD 0). The
    chance level of each method (MOD between the clean maps of two different test images) is a dash-dotted
    horizontal line with its CI as a band: the upper reference, as the noise control is the lower one.
    With replicates, ``summary`` is the across-replicate table (:func:`advcam.summary.replicate_summary`: the
    mean over training runs, the band its two-level CI) and ``runs`` the per-run MOD table, whose runs are
    drawn as thin lines."""
    n_rep = int(summary["n_replicates"].max()) if "n_replicates" in summary and len(summary) else 1
    chance = _with_cam(summary, chance=True)
    chance = chance[chance["attack"] == "chance"]
    summary = _with_cam(summary)
    models = sorted(summary["model"].unique())
    cams = _cam_order(summary)
    col = _colors(cams)
    panels = [(m, n) for m in models for n in _norms(summary[summary["model"] == m])]
    fig, axes = _panels(len(panels))
    for ax, (model, norm) in zip(axes, panels):
        sm = summary[(summary["model"] == model) & _norm_mask(summary, norm)]
        for (cam, attack), g in sm.groupby(["cam", "attack"], sort=True):
            g = g.sort_values("eps")
            e = np.r_[0.0, g["eps"]]
            ax.plot(e, np.r_[0.0, g["mod"]], linestyle=STYLE.get(attack, "-."), marker=MARKER.get(attack, "o"), ms=2.5, lw=1.1, color=col[cam],
                    label=f"{cam} · {attack}")
            ax.fill_between(e, np.r_[0.0, g["mod_ci_low"]], np.r_[0.0, g["mod_ci_high"]], color=col[cam], alpha=0.12, lw=0)
        if runs is not None and n_rep > 1:
            own = _with_cam(runs)
            own = own[(own["model"] == model) & _norm_mask(own, norm)]
            for (cam, attack, _), g in own.groupby(["cam", "attack", "replicate"], sort=True):
                g = g.sort_values("eps")
                ax.plot(np.r_[0.0, g["eps"]], np.r_[0.0, g["mod"]], linestyle=STYLE.get(attack, "-."), lw=0.5,
                        alpha=0.45, color=col[cam])
        for _, r in chance[(chance["model"] == model) & chance["cam"].isin(cams)].iterrows():
            ax.axhline(r["mod"], color=col[r["cam"]], ls="-.", lw=0.8, label=f"{r['cam']} · chance")
            ax.axhspan(r["mod_ci_low"], r["mod_ci_high"], color=col[r["cam"]], alpha=0.08, lw=0)
        ax.set_title(model if norm == "Linf" else f"{model} · {norm} attacks", fontsize=9)
        ax.set_xlabel(EPS_LABEL[norm], fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("MOD = mean NISSIM", fontsize=8)
    seen: dict = {}
    for ax in axes[:len(panels)]:  # every panel's lines (an L2 panel holds attacks the first one lacks)
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    handles, labels = list(seen.values()), list(seen)
    order = sorted(range(len(labels)), key=lambda i: (cams.index(labels[i].split(" · ")[0]), labels[i]))
    if n_rep > 1 and summary["mod_ci_low"].notna().any():
        band = f"mean of {n_rep} training runs (thin: each run), band: two-level bootstrap CI over runs and images"
    elif n_rep > 1:
        band = f"mean of {n_rep} training runs (thin: each run); no CI: fewer than two usable runs"
    else:
        band = "band: 95% bootstrap CI over test images"
    fig.suptitle(f"Explanation shift under attack per CAM method ({band}; dash-dot: chance)", fontsize=9)
    fig.tight_layout()
    fig.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=7, ncol=min(4, max(1, len(labels))),
               loc="upper center", bbox_to_anchor=(0.5, 0.0), frameon=False)
    return save(fig, prefix)


def plot_accuracy(summary: pd.DataFrame, prefix: str | os.PathLike) -> list[Path]:
    """Test accuracy against ε per model (ε = 0: clean accuracy); solid FGSM, dotted noise control. The
    predictions do not depend on the CAM method: one line per (model, attack)."""
    summary = _with_cam(summary)
    summary = summary[summary["cam"] == _cam_order(summary)[0]]
    norms = _norms(summary)
    fig, axes = plt.subplots(1, len(norms), figsize=(6.4 * len(norms), 4.2), squeeze=False)
    col = _colors(sorted(summary["model"].unique()))
    for ax, norm in zip(axes[0], norms):
        for (model, attack), g in summary[_norm_mask(summary, norm)].groupby(["model", "attack"], sort=True):
            g = g.sort_values("eps")
            ax.plot(np.r_[0.0, g["eps"]], 100 * np.r_[g["acc_clean"].iloc[0], g["acc_adv"]],
                    linestyle=STYLE.get(attack, "-."), marker=MARKER.get(attack, "o"), ms=3, color=col[model],
                    label=f"{model} · {attack}")
        ax.set_xlabel(EPS_LABEL[norm])
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title("Accuracy under attack" + ("" if norm == "Linf" else f" ({norm} attacks)"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    return save(fig, prefix)


def plot_vid(per_image: pd.DataFrame, prefix: str | os.PathLike) -> list[Path]:
    """Distribution over test images of VID (per-image std of NISSIM across ε): a panel per attack, a group
    of boxes per model and a box per CAM method (colour)."""
    per_image = _with_cam(per_image)
    attacks = sorted(per_image["attack"].unique())
    models = sorted(per_image["model"].unique())
    cams = _cam_order(per_image)
    col = _colors(cams)
    width = max(6.4, 0.28 * len(models) * (len(cams) + 1))
    fig, axes = plt.subplots(len(attacks), 1, figsize=(width, 3.2 * len(attacks)), sharey=True, squeeze=False)
    for ax, a in zip(axes[:, 0], attacks):
        t = per_image[per_image["attack"] == a]
        for j, cam in enumerate(cams):
            data, pos = [], []
            for i, m in enumerate(models):
                v = t.loc[(t["model"] == m) & (t["cam"] == cam), "vid"].to_numpy()
                if len(v):
                    data.append(v)
                    pos.append(i * (len(cams) + 1) + j)
            if data:
                b = ax.boxplot(data, positions=pos, widths=0.7, showmeans=True, patch_artist=True,
                               flierprops={"markersize": 2}, meanprops={"markersize": 3})
                for patch in b["boxes"]:
                    patch.set(facecolor=col[cam], alpha=0.55)
                ax.plot([], [], "s", color=col[cam], label=cam)
        centres = [i * (len(cams) + 1) + (len(cams) - 1) / 2 for i in range(len(models))]
        ax.set_xticks(centres, models, fontsize=8)
        ax.set_ylabel(f"VID ({a})", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    axes[0, 0].legend(fontsize=7, ncol=min(5, len(cams)), loc="upper left")
    axes[0, 0].set_title("Variation in dissimilarity: std of NISSIM across ε per image")
    fig.tight_layout()
    return save(fig, prefix)


def plot_nissim(table: pd.DataFrame, prefix: str | os.PathLike, attack: str = "fgsm") -> list[Path]:
    """Distributions of NISSIM at each ε for one attack (violins): a row per CAM method, a column per model."""
    t = _with_cam(table)
    t = t[t["attack"] == attack]
    models = sorted(t["model"].unique())
    cams = _cam_order(t) or ["gradcam"]
    height = 2.4 * len(cams) + 0.6
    # one y range set on every panel: sharey=True links all panels' limits to one another, and updating them
    # cost most of this figure's time with a row per CAM method
    fig, axes = plt.subplots(len(cams), max(1, len(models)), figsize=(2.6 * max(1, len(models)), height), squeeze=False)
    top = float(t["nissim"].max()) if len(t) else 1.0
    top = 1.05 * top if top > 0 else 1.0
    for r, cam in enumerate(cams):
        for ax, m in zip(axes[r], models):
            g = t[(t["model"] == m) & (t["cam"] == cam)]
            eps = sorted(g["eps"].unique())
            vals = [g.loc[g["eps"] == e, "nissim"].to_numpy() for e in eps]
            if vals:
                ax.violinplot(vals, showmeans=True)
                ax.set_xticks(range(1, len(eps) + 1), [f"{e:g}" for e in eps], fontsize=7)
            ax.set_ylim(0, top)
            if ax is not axes[r][0]:
                ax.tick_params(labelleft=False)
            if r == 0:
                ax.set_title(m, fontsize=9)
            if r == len(cams) - 1:
                ax.set_xlabel("ε")
            ax.grid(alpha=0.3, axis="y")
        axes[r][0].set_ylabel(f"NISSIM\n{cam}", fontsize=8)
    fig.suptitle(f"NISSIM per test image under {attack}", fontsize=9, y=1 - 0.1 / height, va="top")
    # fixed margins: a tight layout measures every tick label of every panel
    fig.subplots_adjust(left=0.9 / fig.get_figwidth(), right=0.99, bottom=0.5 / height, top=1 - 0.55 / height,
                        wspace=0.08, hspace=0.25)
    return save(fig, prefix, tight=False)


def plot_transfer(summary: pd.DataFrame, target: str, prefix: str | os.PathLike) -> list[Path]:
    """MOD against ε for one (target) model: its own white-box attacks (solid) against the adversarial images
    of each source model (dashed, a colour per source), a marker per attack, a panel per CAM method; noise-control rows are left out (the noise does
    not depend on the model)."""
    s = _with_cam(summary, white_box=False)
    s = s[(s["model"] == target) & (s["attack"] != "noise")]
    cams = _cam_order(s) or ["gradcam"]
    panels = [(c, n) for c in cams for n in _norms(s)]
    fig, axes = _panels(len(panels), width=3.2, height=2.6, max_cols=4)
    sources = sorted(set(s["source_model"]) - {target})
    col = _colors([target, *sources])
    for ax, (cam, norm) in zip(axes, panels):
        for (source, attack), g in s[(s["cam"] == cam) & _norm_mask(s, norm)].groupby(["source_model", "attack"],
                                                                                       sort=True):
            g = g.sort_values("eps")
            own = source == target
            ax.plot(np.r_[0.0, g["eps"]], np.r_[0.0, g["mod"]], "-" if own else "--", marker=MARKER.get(attack, "o"),
                    ms=3, lw=1.1,
                    color=col[source], label=f"{attack} · {'white-box' if own else 'from ' + source}")
        ax.set_title(cam if norm == "Linf" else f"{cam} · {norm} attacks", fontsize=9)
        ax.set_xlabel(EPS_LABEL[norm], fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"MOD on {target}", fontsize=8)
    for norm in dict.fromkeys(n for _, n in panels):  # a legend on the first panel of each ball
        axes[[n for _, n in panels].index(norm)].legend(fontsize=7)
    fig.suptitle(f"{target}: explanation shift under its own attacks and transferred ones", fontsize=9)
    fig.tight_layout()
    return save(fig, prefix)


def plot_localisation(summary: pd.DataFrame, prefix: str | os.PathLike) -> list[Path]:
    """Localisation on the face parts against ε: a column per model, the energy-based pointing game (share of
    the map's mass on the parts) above and the pointing game (share of maps whose maximum is on them) below; a
    line per CAM method (colour) and attack (line style), ε = 0 the clean maps. The grey dotted line is the
    parts' share of the image, what a map spread evenly scores."""
    s = _with_cam(summary)
    models = sorted(s["model"].unique())
    cams = _cam_order(s)
    col = _colors(cams)
    panels = [(m, n) for m in models for n in _norms(s[s["model"] == m])]
    fig, axes = plt.subplots(2, max(1, len(panels)), figsize=(3.0 * max(1, len(panels)), 5.4), sharey="row", squeeze=False)
    for j, (model, norm) in enumerate(panels):
        sm = s[(s["model"] == model) & _norm_mask(s, norm)]
        for r, (what, label) in enumerate((("energy", "mass on the face parts"), ("point", "maximum on a face part"))):
            ax = axes[r, j]
            for (cam, attack), g in sm.groupby(["cam", "attack"], sort=True):
                g = g.sort_values("eps")
                ax.plot(np.r_[0.0, g["eps"]], np.r_[g[f"{what}_clean_mean"].iloc[0], g[f"{what}_adv_mean"]],
                        linestyle=STYLE.get(attack, "-."), marker=MARKER.get(attack, "o"), ms=2.5, lw=1.1, color=col[cam],
                        label=f"{cam} · {attack}")
            if "mask_frac_mean" in sm and len(sm):
                ax.axhline(float(sm["mask_frac_mean"].iloc[0]), color="0.4", ls=":", lw=1, label="uniform map")
            ax.grid(alpha=0.3)
            if r == 0:
                ax.set_title(model if norm == "Linf" else f"{model} · {norm} attacks", fontsize=9)
            else:
                ax.set_xlabel(EPS_LABEL[norm], fontsize=8)
            if j == 0:
                ax.set_ylabel(label, fontsize=8)
    seen: dict = {}
    for ax in axes[0]:  # every column's lines (an L2 column holds attacks the first one lacks)
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    handles, labels = list(seen.values()), list(seen)
    fig.suptitle("Does the explanation stay on the identity? Localisation against the synthetic part masks", fontsize=9)
    fig.tight_layout()
    fig.legend(handles, labels, fontsize=7, ncol=min(4, max(1, len(labels))), loc="upper center",
               bbox_to_anchor=(0.5, 0.0), frameon=False)
    return save(fig, prefix)


def plot_sanity(sanity: pd.DataFrame, model: str, prefix: str | os.PathLike) -> list[Path]:
    """The cascading randomisation check of one model: Spearman correlation (left) and NISSIM (right) of each
    step's maps with the trained model's, against the blocks randomised from the output down, a line per CAM
    method, its chance level (two different images' trained maps) dash-dotted; the legend gives each method's
    verdict. ``sanity``: :func:`advcam.summary.sanity_summary`."""
    s = sanity[sanity["model"] == model]
    if "replicate" in s and s["replicate"].nunique() > 1:  # the mean over training runs, each run's verdict named
        verdicts = s.groupby("cam")["flag"].agg(lambda v: ", ".join(f"{f} ×{n}" for f, n in v.value_counts().items()))
        keep = ["spearman_mean", "nissim_mean", "spearman_chance", "nissim_chance"]
        s = (s.groupby(["cam", "blocks", "block"], as_index=False)[[c for c in keep if c in s]].mean()
             .assign(flag=lambda d: d["cam"].map(verdicts)))
    cams = _cam_order(s)
    col = _colors(cams)
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.2), squeeze=False)
    steps = s.drop_duplicates("blocks").sort_values("blocks")
    for cam in cams:
        g = s[s["cam"] == cam].sort_values("blocks")
        verdict = g["flag"].iloc[0] if "flag" in g else ""
        for ax, what, ref in zip(axes[0], ("spearman_mean", "nissim_mean"), ("spearman_chance", "nissim_chance")):
            ax.plot(g["blocks"], g[what], marker="o", ms=3, lw=1.1, color=col[cam],
                    label=f"{cam} ({verdict})" if verdict else cam)
            if ref in g and np.isfinite(g[ref].iloc[0]):
                ax.axhline(g[ref].iloc[0], color=col[cam], ls="-.", lw=0.7)
    for ax, label in zip(axes[0], ("Spearman with the trained maps", "NISSIM to the trained maps")):
        ax.set_xticks(steps["blocks"], [f"{b}\n{n}" if b else "trained" for b, n in zip(steps["blocks"], steps["block"])],
                      fontsize=6)
        ax.set_xlabel("blocks re-initialised, output down (the last one named)", fontsize=8)
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylim(-1.05, 1.05)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{model}: sanity check (cascading model-parameter randomisation; dash-dot: two images' maps)", fontsize=9)
    fig.tight_layout()
    return save(fig, prefix)


def mean_over_runs(summ: pd.DataFrame) -> pd.DataFrame:
    """The per-run MOD table averaged over training runs per (model, source_model, cam, attack, eps), for figures
    of a study with several runs but no across-replicate table to draw from; n_replicates counts the runs."""
    keys = [k for k in ("model", "source_model", "cam", "attack", "eps") if k in summ]
    num = [c for c in summ.select_dtypes("number").columns if c not in keys and c != "replicate"]
    out = summ.groupby(keys, as_index=False)[num].mean()
    ci = [c for c in out.columns if c.endswith(("_ci_low", "_ci_high"))]  # a mean of image CIs covers no training
    return out.assign(n_replicates=summ.groupby(keys)["replicate"].nunique().to_numpy(), **{c: np.nan for c in ci})


def plot_claims(claims: pd.DataFrame, prefix: str | os.PathLike) -> list[Path]:
    """The claims as forest plots (:func:`advcam.summary.claims`): a panel per paper claim with a row per (CAM
    method, attack) — the statistic, positive when the claim holds, with its two-level CI, coloured by the
    verdict — and a panel of every pair of models' MOD difference at the largest ε for the first CAM method.
    Skipped claims are named in their panel."""
    colour = {"supported": "tab:green", "contradicted": "tab:red", "inconclusive": "0.45", "skipped": "0.75"}
    panels = [("vgg16_least", "VGG16 shifts least\n(min other MOD − VGG16 MOD, largest ε)"),
              ("wide_gt_deep", "wide shift more than deep as ε grows\n(wide − deep slope of MOD over ε)")]
    pairs = claims[claims["claim"] == "pair"]
    cam0 = pairs["cam"].iloc[0] if len(pairs) else None
    if cam0 is not None:
        pairs = pairs[pairs["cam"] == cam0]
        top = pairs.groupby("attack")["eps"].transform("max")
        pairs = pairs[pairs["eps"] == top]
    n_rows = max([1, len(pairs)] + [int((claims["claim"] == c).sum()) for c, _ in panels])
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 1.2 + 0.28 * n_rows), squeeze=False)
    for ax, (claim, title) in zip(axes[0], panels + [("pair", f"MOD(a) − MOD(b), {cam0}, largest ε")]):
        c = pairs if claim == "pair" else claims[claims["claim"] == claim]
        c = c.reset_index(drop=True)
        labels = ([f"{a} − {b} · {att}" for a, b, att in zip(c["model_a"], c["model_b"], c["attack"])] if claim == "pair"
                  else [f"{cam} · {att}" for cam, att in zip(c["cam"], c["attack"])])
        for i, r in c.iterrows():
            col = colour.get(r["verdict"], "0.45")
            if np.isfinite(r["statistic"]):
                err = np.array([[r["statistic"] - r["ci_low"]], [r["ci_high"] - r["statistic"]]])
                ax.errorbar(r["statistic"], i, xerr=None if np.isnan(err).any() else err, fmt="o", ms=3.5, color=col,
                            capsize=2, lw=1)
            else:
                ax.text(0, i, "skipped", fontsize=6, color=col, va="center", ha="center")
        ax.axvline(0, color="0.3", lw=0.8)
        ax.set_yticks(range(len(c)), labels, fontsize=6)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=8)
        ax.grid(alpha=0.3, axis="x")
    for v, col in colour.items():
        axes[0, 0].plot([], [], "o", color=col, label=v)
    axes[0, 0].legend(fontsize=6, loc="lower right")
    n_rep = int(claims["n_replicates"].max()) if len(claims) else 0
    if claims.empty:
        axes[0, 1].text(0.5, 0.5, "no claim could be tested: no usable training run (see the summarise log)",
                        ha="center", va="center", fontsize=8, transform=axes[0, 1].transAxes)
    fig.suptitle(f"Claims about models across training runs (up to {n_rep} replicates each; bars: two-level "
                 "bootstrap CI; a claim needs 3 replicates a model to be more than inconclusive)", fontsize=8)
    fig.tight_layout()
    return save(fig, prefix)


def plot_roc(per_image: pd.DataFrame, model: str, prefix: str | os.PathLike) -> list[Path]:
    """ROC curves of the detector scores of one model (the detection stage's per-image rows,
    :data:`advcam.stages.detect.DETECTION_COLUMNS`): a panel per attack at its largest ε, a curve per score with its
    AUC in the legend, the clean test images against all their adversarial versions, of the model's first training
    run; the diagonal is a detector that guesses."""
    d = per_image[per_image["model"] == model]
    if d.empty:
        raise ValueError(f"no detection rows of model {model!r}")
    rep = int(d["replicate"].min())
    d = d[d["replicate"] == rep]
    clean = d[d["attack"] == "clean"]
    adv = d[d["attack"] != "clean"]
    attacks = list(dict.fromkeys(adv["attack"]))
    fig, axes = _panels(len(attacks), width=3.0, height=3.0, max_cols=4)
    colours = _colors(list(dict.fromkeys(d["score"])))
    for ax, attack in zip(axes, attacks):
        a = adv[adv["attack"] == attack]
        eps = a["eps"].max()
        a = a[a["eps"] == eps]
        for score, col in colours.items():
            neg = clean.loc[clean["score"] == score, "value"].to_numpy(float)
            pos = a.loc[a["score"] == score, "value"].to_numpy(float)
            if not len(neg) or not len(pos):
                continue
            f, t, _ = roc_curve(neg, pos)
            ax.plot(f, t, color=col, lw=1.3, drawstyle="steps-post", label=f"{score} ({roc_auc(neg, pos):.2f})")
        ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls=":")
        ax.set_title(f"{attack}, ε = {eps:g}", fontsize=8)
        ax.set_xlabel("false-positive rate (clean flagged)", fontsize=7)
        ax.set_ylabel("true-positive rate", fontsize=7)
        ax.legend(fontsize=6, loc="lower right", title="score (AUC)", title_fontsize=6)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{model} r{rep}: detecting adversarial inputs from the input alone", fontsize=9)
    fig.tight_layout()
    return save(fig, prefix)


def plot_gallery(
    images: np.ndarray,
    clean_maps: dict[str, np.ndarray],
    adv_maps: dict[str, dict[float, np.ndarray]],
    pred_clean: np.ndarray,
    pred_adv: dict[float, np.ndarray],
    names: list[str],
    labels: np.ndarray,
    prefix: str | os.PathLike,
    title: str = "",
) -> list[Path]:
    """For each test image a block of rows, one per CAM method: the image, its clean map, and its
    adversarial map at each ε, titled with the predicted identity (✓ when it is the true one; the
    predictions do not depend on the method). images (n,H,W,3) uint8; clean_maps {method: (n,H,W) in [0,1]};
    adv_maps {method: {ε: (n,H,W)}}; pred_adv {ε: (n,)}."""
    methods = list(clean_maps)
    eps = sorted(pred_adv)
    n, cols = images.shape[0], 2 + len(eps)
    rows = n * len(methods)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.7 * rows), squeeze=False)

    def tag(p: int, y: int) -> str:
        return f"{names[p]}{' ✓' if p == y else ' ✗'}"

    for i in range(n):
        for j, m in enumerate(methods):
            ax_row = axes[i * len(methods) + j]
            ax_row[0].imshow(images[i])
            ax_row[0].set_title(f"true {names[labels[i]]}\n{m}" if j == 0 else m, fontsize=6)
            ax_row[1].imshow(images[i])
            ax_row[1].imshow(clean_maps[m][i], cmap="jet", alpha=0.45, vmin=0, vmax=1)
            ax_row[1].set_title(f"clean: {tag(pred_clean[i], labels[i])}", fontsize=6)
            for k, e in enumerate(eps):
                ax = ax_row[2 + k]
                ax.imshow(images[i])
                if e in adv_maps[m]:
                    ax.imshow(adv_maps[m][e][i], cmap="jet", alpha=0.45, vmin=0, vmax=1)
                ax.set_title(f"ε={e:g}: {tag(pred_adv[e][i], labels[i])}", fontsize=6)
            for ax in ax_row:
                ax.axis("off")
    height = 1.7 * rows  # inches
    if title:
        fig.suptitle(title, fontsize=9, y=1 - 0.12 / height, va="top")
    # a grid of images: fixed margins and a PNG only (tight layout and cropping measure every one of the
    # ~80 titles, and a PDF embeds every image again: 7.7 → 4.4 s for 16 rows of 5 here, mostly drawing)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.005, top=1 - 0.55 / height, wspace=0.05, hspace=0.45)
    return save(fig, prefix, formats=("png",), tight=False)


