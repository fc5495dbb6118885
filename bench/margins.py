"""The default's quality bars, run by run: how far each training run of a finished study clears them.

    python -m bench.margins results/summary/mod_vid.csv [more mod_vid.csv ...] [--label as-found ...]
    python -m bench.margins results/replicates [...]      (a study's folder: its summary/mod_vid.csv)

Per (model, replicate) of each MOD table (white-box rows): clean test accuracy (bar ≥ 90%), the accuracy FGSM
costs at the study's largest ε (bar ≥ 50 points), the accuracy the noise control costs there (bar ≤ 15
points), and the smallest MOD(FGSM) − MOD(noise) over every CAM method and ε (bar > 0); then, per model, the
worst of its runs (the smallest margin to each bar) and whether every run passes. Several tables (one per CPU
class, say) get a column each with ``--label``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

BARS = {"clean": 0.90, "fgsm_cost": 0.50, "noise_cost": 0.15}


def margins(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per training run: clean, fgsm_cost, noise_cost (fractions), min_gap (smallest MOD(FGSM) −
    MOD(noise) over methods and ε), and passes (every bar met)."""
    s = summary[(summary["source_model"] == summary["model"]) & summary["attack"].isin(["fgsm", "noise"])]
    if "replicate" not in s:
        s = s.assign(replicate=0)
    rows = []
    for (model, rep), g in s.groupby(["model", "replicate"], sort=True):
        top = g["eps"].max()
        first = g[g["cam"] == g["cam"].iloc[0]]
        at = first[first["eps"] == top].set_index("attack")
        clean = float(first["acc_clean"].iloc[0])
        wide = g.pivot_table(index=["cam", "eps"], columns="attack", values="mod")
        rows.append({"model": model, "replicate": int(rep), "clean": clean,
                     "fgsm_cost": clean - float(at.loc["fgsm", "acc_adv"]),
                     "noise_cost": clean - float(at.loc["noise", "acc_adv"]),
                     "min_gap": float((wide["fgsm"] - wide["noise"]).min()), "eps": float(top),
                     "cams": int(g["cam"].nunique())})
    out = pd.DataFrame(rows)
    out["passes"] = ((out["clean"] >= BARS["clean"]) & (out["fgsm_cost"] >= BARS["fgsm_cost"])
                     & (out["noise_cost"] <= BARS["noise_cost"]) & (out["min_gap"] > 0))
    return out


def worst(runs: pd.DataFrame) -> pd.DataFrame:
    """Per model, the worst run on each bar: lowest clean accuracy and FGSM cost, highest noise cost, smallest gap."""
    return runs.groupby("model").agg(runs=("replicate", "count"), clean=("clean", "min"), fgsm_cost=("fgsm_cost", "min"),
                                     noise_cost=("noise_cost", "max"), min_gap=("min_gap", "min"),
                                     all_pass=("passes", "all")).reset_index()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tables", nargs="+", help="mod_vid.csv of each finished study, or the study's results folder")
    p.add_argument("--label", nargs="*", help="a name per table (e.g. the CPU class it ran on)")
    args = p.parse_args(argv)
    labels = args.label or [str(t) for t in args.tables]
    if len(labels) != len(args.tables):
        p.error("give one --label per table")
    paths = [Path(t) / "summary" / "mod_vid.csv" if Path(t).is_dir() else Path(t) for t in args.tables]
    for path in paths:
        if not path.is_file():
            p.error(f"'{path}' does not exist (a finished study's summary/mod_vid.csv, or its results folder)")
    for label, path in zip(labels, paths):
        runs = margins(pd.read_csv(path))
        print(f"## {label}: {path}\n")
        print(runs.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        print("\nworst run per model (bars: clean >= 0.90, FGSM cost >= 0.50, noise cost <= 0.15, gap > 0):\n")
        print(worst(runs).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
