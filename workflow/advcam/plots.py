"""Figures: MOD and accuracy against ε (with CIs and the noise control), VID and NISSIM distributions,
and a per-model gallery of clean and adversarial heatmaps. Each figure is written as PNG and PDF."""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .store import atomic_path  # noqa: E402

__all__ = ["plot_mod", "plot_accuracy", "plot_vid", "plot_nissim", "plot_gallery", "save"]

STYLE = {"fgsm": "-", "noise": ":", "pgd": "--"}


def save(fig, prefix: str | os.PathLike) -> list[Path]:
    """Write ``prefix.png`` (150 dpi) and ``prefix.pdf`` atomically; closes the figure."""
    out = []
    for ext in ("png", "pdf"):
        p = Path(f"{prefix}.{ext}")
        with atomic_path(p) as tmp:
            fig.savefig(tmp, dpi=150, bbox_inches="tight", format=ext)
        out.append(p)
    plt.close(fig)
    return out


def _colors(models) -> dict:
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(models)}


def plot_mod(summary: pd.DataFrame, prefix: str | os.PathLike) -> list[Path]:
    """MOD (mean NISSIM) against ε per model, 95% bootstrap CI as a band; solid FGSM, dotted noise control.
    ε = 0 is the clean set (MOD 0)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    col = _colors(sorted(summary["model"].unique()))
    for (model, attack), g in summary.groupby(["model", "attack"], sort=True):
        g = g.sort_values("eps")
        e = np.r_[0.0, g["eps"]]
        ax.plot(e, np.r_[0.0, g["mod"]], STYLE.get(attack, "-."), marker="o", ms=3, color=col[model], label=f"{model} · {attack}")
        ax.fill_between(e, np.r_[0.0, g["mod_ci_low"]], np.r_[0.0, g["mod_ci_high"]], color=col[model], alpha=0.15, lw=0)
    ax.set_xlabel("ε (pixel scale [0,1])")
    ax.set_ylabel("MOD = mean NISSIM")
    ax.set_title("Grad-CAM shift under attack (band: 95% bootstrap CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return save(fig, prefix)


def plot_accuracy(summary: pd.DataFrame, prefix: str | os.PathLike) -> list[Path]:
    """Test accuracy against ε per model (ε = 0: clean accuracy); solid FGSM, dotted noise control."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    col = _colors(sorted(summary["model"].unique()))
    for (model, attack), g in summary.groupby(["model", "attack"], sort=True):
        g = g.sort_values("eps")
        ax.plot(np.r_[0.0, g["eps"]], 100 * np.r_[g["acc_clean"].iloc[0], g["acc_adv"]], STYLE.get(attack, "-."),
                marker="o", ms=3, color=col[model], label=f"{model} · {attack}")
    ax.set_xlabel("ε (pixel scale [0,1])")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Accuracy under attack")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return save(fig, prefix)


def plot_vid(per_image: pd.DataFrame, prefix: str | os.PathLike) -> list[Path]:
    """Distribution over test images of VID (per-image std of NISSIM across ε), per model and attack."""
    attacks = sorted(per_image["attack"].unique())
    models = sorted(per_image["model"].unique())
    fig, ax = plt.subplots(figsize=(max(6.4, 1.3 * len(models) * len(attacks)), 4.2))
    data, labels, pos = [], [], []
    for i, m in enumerate(models):
        for j, a in enumerate(attacks):
            v = per_image.loc[(per_image["model"] == m) & (per_image["attack"] == a), "vid"].to_numpy()
            if len(v):
                data.append(v)
                labels.append(f"{m}\n{a}")
                pos.append(i * (len(attacks) + 1) + j)
    if data:
        ax.boxplot(data, positions=pos, widths=0.7, showmeans=True)
        ax.set_xticks(pos, labels, fontsize=7)
    ax.set_ylabel("VID = std of NISSIM across ε (per image)")
    ax.set_title("Variation in dissimilarity")
    ax.grid(alpha=0.3, axis="y")
    return save(fig, prefix)


def plot_nissim(table: pd.DataFrame, prefix: str | os.PathLike, attack: str = "fgsm") -> list[Path]:
    """Per-model distributions of NISSIM at each ε for one attack (violins)."""
    t = table[table["attack"] == attack]
    models = sorted(t["model"].unique())
    fig, axes = plt.subplots(1, max(1, len(models)), figsize=(2.6 * max(1, len(models)), 3.4), sharey=True, squeeze=False)
    for ax, m in zip(axes[0], models):
        g = t[t["model"] == m]
        eps = sorted(g["eps"].unique())
        vals = [g.loc[g["eps"] == e, "nissim"].to_numpy() for e in eps]
        if vals:
            ax.violinplot(vals, showmeans=True)
            ax.set_xticks(range(1, len(eps) + 1), [f"{e:g}" for e in eps], fontsize=7)
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("ε")
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel(f"NISSIM ({attack})")
    return save(fig, prefix)


def plot_gallery(
    images: np.ndarray,
    clean_maps: np.ndarray,
    adv_maps: dict[float, np.ndarray],
    pred_clean: np.ndarray,
    pred_adv: dict[float, np.ndarray],
    names: list[str],
    labels: np.ndarray,
    prefix: str | os.PathLike,
    title: str = "",
) -> list[Path]:
    """Rows of test images: the image, its clean CAM, and its adversarial CAM at each ε, each titled with
    the predicted identity (✓ when it is the true one). images (n,H,W,3) uint8; maps (n,H,W) in [0,1]."""
    eps = sorted(adv_maps)
    n, cols = images.shape[0], 2 + len(eps)
    fig, axes = plt.subplots(n, cols, figsize=(1.6 * cols, 1.7 * n), squeeze=False)

    def tag(p: int, y: int) -> str:
        return f"{names[p]}{' ✓' if p == y else ' ✗'}"

    for i in range(n):
        axes[i][0].imshow(images[i])
        axes[i][0].set_title(f"true {names[labels[i]]}", fontsize=6)
        axes[i][1].imshow(images[i])
        axes[i][1].imshow(clean_maps[i], cmap="jet", alpha=0.45, vmin=0, vmax=1)
        axes[i][1].set_title(f"clean: {tag(pred_clean[i], labels[i])}", fontsize=6)
        for j, e in enumerate(eps):
            ax = axes[i][2 + j]
            ax.imshow(images[i])
            ax.imshow(adv_maps[e][i], cmap="jet", alpha=0.45, vmin=0, vmax=1)
            ax.set_title(f"ε={e:g}: {tag(pred_adv[e][i], labels[i])}", fontsize=6)
        for ax in axes[i]:
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save(fig, prefix)
