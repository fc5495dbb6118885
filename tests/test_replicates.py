"""Across training runs: the two-level bootstrap against a plain numpy loop, its reduction to the image bootstrap,
the training-run flag against scipy's binomial interval, and the claims and their verdicts on drawn tables."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from advcam.replicates import (image_counts, mod_slope, model_stream, order_share, paper_claims, pairwise_claims,
                               percentile_ci, training_flag, two_level_bootstrap, verdict)
from advcam.summary import bootstrap_ci, claims, mod_vid, replicate_summary, training_flags


def loop_reference(v: np.ndarray, n_resamples: int, seed: int, stream: int) -> np.ndarray:
    """The two-level bootstrap written out resample by resample with plain numpy: draw R replicates, draw n
    images (one draw for all drawn replicates: they share the test set), mean over drawn replicates of each
    one's nanmean over the drawn images."""
    r, n = v.shape
    imgs = np.random.default_rng(seed).integers(0, n, (n_resamples, n))
    reps = np.random.default_rng((seed, stream)).integers(0, r, (n_resamples, r))
    out = np.empty(n_resamples)
    for b in range(n_resamples):
        means = []
        for j in reps[b]:
            x = v[j, imgs[b]]
            means.append(np.nan if np.isnan(x).all() else np.nanmean(x))
        out[b] = np.mean(means)
    return out


@pytest.mark.parametrize("shape", [(3, 40), (5, 17), (2, 9), (1, 30)])
def test_two_level_bootstrap_equals_a_numpy_loop(rng, shape):
    v = rng.random(shape)
    seed, stream = int(rng.integers(0, 2**31)), int(rng.integers(0, 2**31))
    got = two_level_bootstrap(v, 300, seed, stream)
    np.testing.assert_allclose(got, loop_reference(v, 300, seed, stream), rtol=0, atol=1e-12)


def test_two_level_bootstrap_skips_undefined_images(rng):
    v = rng.random((3, 25))
    v[rng.random(v.shape) < 0.2] = np.nan  # e.g. Spearman of a constant map
    seed = int(rng.integers(0, 2**31))
    got = two_level_bootstrap(v, 200, seed, 7)
    ref = loop_reference(v, 200, seed, 7)
    assert np.array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_allclose(got[~np.isnan(got)], ref[~np.isnan(ref)], rtol=0, atol=1e-12)


@pytest.mark.parametrize("r", [1, 2, 4])
def test_identical_replicates_reduce_to_the_image_bootstrap(rng, r):
    """R runs with identical weights score identically: the interval is then exactly the image bootstrap of one
    run (advcam.summary.bootstrap_ci, scipy.stats.bootstrap with the same seed)."""
    x = rng.random(int(rng.integers(10, 80)))
    seed = int(rng.integers(0, 2**31))
    stats = two_level_bootstrap(np.tile(x, (r, 1)), 2000, seed, model_stream("resnet50"))
    lo, hi = percentile_ci(stats, 0.95)
    ref = bootstrap_ci(x, 0.95, 2000, seed)
    np.testing.assert_allclose((lo, hi), ref, rtol=0, atol=1e-12)


def test_replicate_variation_widens_the_interval(rng):
    """Runs that differ (an offset per replicate) widen the CI beyond the image bootstrap of their pooled mean."""
    x = rng.random(60) * 0.2
    v = x[None, :] + np.array([0.0, 0.1, 0.2, 0.3])[:, None]
    lo, hi = percentile_ci(two_level_bootstrap(v, 2000, 1, 2))
    ilo, ihi = bootstrap_ci(v.mean(0), 0.95, 2000, 1)
    assert hi - lo > 3 * (ihi - ilo)
    assert lo < v.mean() < hi


def test_image_counts_draw_each_resample_n_times():
    c = image_counts(13, 50, 3)
    assert c.shape == (50, 13) and np.all(c.sum(1) == 13)
    idx = np.random.default_rng(3).integers(0, 13, (50, 13))
    assert np.array_equal(c[4], np.bincount(idx[4], minlength=13))


@pytest.mark.parametrize("correct,n,classes,min_acc,expected", [
    (16, 72, 6, 0.0, "at chance"),      # 22%: the exact interval reaches 1/6
    (30, 72, 6, 0.0, "ok"),             # 42%: clearly above chance
    (60, 72, 6, 0.9, "below min_accuracy"),
    (72, 72, 6, 0.9, "ok"),
    (2, 4, 4, 0.0, "at chance"),        # 50% of 4 images: too few to tell
])
def test_training_flag(correct, n, classes, min_acc, expected):
    assert training_flag(correct, n, classes, min_acc) == expected
    low = binomtest(correct, n).proportion_ci(0.95, method="exact").low
    assert (expected == "at chance") == (low <= 1 / classes)


def test_training_flag_rejects_a_min_accuracy_out_of_range():
    with pytest.raises(ValueError, match="min_accuracy 1.5"):
        training_flag(10, 20, 4, 1.5)


def test_order_share_and_slope_against_brute_force(rng):
    a, b = rng.random(4), rng.random(3)
    b[0] = a[1]  # a tie counts one half
    brute = np.mean([1.0 if x > y else 0.5 if x == y else 0.0 for x in a for y in b])
    assert order_share(a, b) == pytest.approx(brute, abs=1e-15)
    eps = np.array([0.01, 0.05, 0.1])
    m = rng.random(3)
    ls = np.linalg.lstsq(eps[:, None], m, rcond=None)[0][0]  # a line through the clean point (0, 0)
    assert mod_slope(eps, m) == pytest.approx(ls, rel=1e-12)


def test_verdicts():
    assert verdict(0.01, 0.2, 3) == "supported"
    assert verdict(-0.2, -0.01, 5) == "contradicted"
    assert verdict(-0.01, 0.2, 3) == "inconclusive"
    assert verdict(0.01, 0.2, 2) == "inconclusive"  # fewer than 3 replicates
    assert verdict(float("nan"), float("nan"), 3) == "inconclusive"


def _groups(rng, mods: dict[str, list[float]], n=40, eps=(0.05, 0.1), spread=0.02):
    """{(model, gradcam, fgsm, eps): (R, n)} with each replicate's per-image NISSIM around mods[model][r] · eps/0.1."""
    base = rng.random(n) * 0.05
    return {(m, "gradcam", "fgsm", e): np.array([mu * e / 0.1 + base + rng.normal(0, spread, n) for mu in reps])
            for m, reps in mods.items() for e in eps}


def test_pairwise_claims_verdicts(rng):
    g = _groups(rng, {"a": [0.5, 0.52, 0.49], "b": [0.2, 0.21, 0.19], "c": [0.2, 0.6]})
    rows = {(r["model_a"], r["model_b"], r["eps"]): r for r in pairwise_claims(g, n_resamples=500)}
    ab = rows[("a", "b", 0.1)]
    assert ab["verdict"] == "supported" and ab["ci_low"] > 0 and ab["order_share"] == 1.0
    assert ab["statistic"] == pytest.approx(np.mean([0.5, 0.52, 0.49]) - 0.2, abs=0.02)
    assert rows[("a", "c", 0.1)]["verdict"] == "inconclusive"  # c has 2 replicates
    assert rows[("b", "c", 0.1)]["n_replicates"] == 2


def test_paper_claims(rng):
    archs = {"vgg16": "vgg16", "resnet50": "resnet50", "inception_v3": "inception_v3", "xception": "xception"}
    g = _groups(rng, {"vgg16": [0.1, 0.11, 0.12], "resnet50": [0.3, 0.31, 0.29], "inception_v3": [0.5, 0.5, 0.52],
                      "xception": [0.45, 0.44, 0.46]})
    rows, notes = paper_claims(g, archs, n_resamples=500)
    by = {r["claim"]: r for r in rows}
    assert not notes
    assert by["vgg16_least"]["verdict"] == "supported" and by["vgg16_least"]["statistic"] > 0
    assert by["wide_gt_deep"]["verdict"] == "supported"
    # the reverse order contradicts both
    g = _groups(rng, {"vgg16": [0.6, 0.61, 0.6], "resnet50": [0.5, 0.5, 0.51], "xception": [0.1, 0.1, 0.12]})
    by = {r["claim"]: r for r in paper_claims(g, archs, n_resamples=500)[0]}
    assert by["vgg16_least"]["verdict"] == "contradicted" and by["wide_gt_deep"]["verdict"] == "contradicted"
    # a study without VGG16 or without a wide model cannot test them: skipped, and said
    rows, notes = paper_claims({k: v for k, v in g.items() if k[0] != "xception"}, archs, n_resamples=100)
    by = {r["claim"]: r for r in rows}
    assert by["wide_gt_deep"]["verdict"] == "skipped" and any("wide_gt_deep" in n and "skipped" in n for n in notes)
    rows, notes = paper_claims({k: v for k, v in g.items() if k[0] != "vgg16"}, archs, n_resamples=100)
    assert {r["claim"]: r for r in rows}["vgg16_least"]["verdict"] == "skipped"


def _table(rng, runs: dict[tuple[str, int], float], n=30, accuracy=None) -> pd.DataFrame:
    """A per-image score table: FGSM at two ε and the noise control, per (model, replicate) run around MOD mu."""
    frames = []
    labels = np.arange(n) % 3
    for (model, r), mu in runs.items():
        acc = (accuracy or {}).get((model, r), 1.0)
        pred = np.where(np.arange(n) < acc * n, labels, (labels + 1) % 3)
        for attack, eps, scale in (("fgsm", 0.05, 0.5), ("fgsm", 0.1, 1.0), ("noise", 0.1, 0.1), ("chance", 0.0, 1.5)):
            frames.append(pd.DataFrame({
                "model": model, "replicate": r, "source_model": model, "cam": "gradcam", "attack": attack, "eps": eps,
                "index": np.arange(n), "label": labels, "pred_clean": pred, "pred_adv": (pred + 1) % 3,
                "nissim": np.clip(mu * scale + rng.normal(0, 0.02, n), 0, 1), "spearman": rng.random(n)}))
    return pd.concat(frames, ignore_index=True)


def test_replicate_summary_covers_usable_runs_and_names_the_flagged(rng):
    t = _table(rng, {("resnet50", 0): 0.3, ("resnet50", 1): 0.35, ("resnet50", 2): 0.32, ("vgg16", 0): 0.2},
               accuracy={("resnet50", 2): 0.3})  # 30% of 3 classes: at chance
    flags = training_flags(t)
    assert dict(zip(flags["replicate"][flags["model"] == "resnet50"], flags["training_flag"][flags["model"] == "resnet50"])) \
        == {0: "ok", 1: "ok", 2: "at chance"}
    summ = mod_vid(t, n_resamples=200)
    rep = replicate_summary(t, summ, flags, n_resamples=500)
    r = rep[(rep["model"] == "resnet50") & (rep["attack"] == "fgsm") & (rep["eps"] == 0.1)].iloc[0]
    assert r["n_replicates"] == 2 and r["replicates"] == "0 1" and r["left_out"] == "resnet50/r2 (at chance)"
    per_run = summ[(summ["model"] == "resnet50") & (summ["attack"] == "fgsm") & (summ["eps"] == 0.1)]
    assert r["mod"] == pytest.approx(per_run.loc[per_run["replicate"] < 2, "mod"].mean(), abs=1e-12)
    assert r["mod_rep_std"] == pytest.approx(per_run.loc[per_run["replicate"] < 2, "mod"].std(ddof=1), abs=1e-12)
    assert r["mod_ci_low"] < r["mod"] < r["mod_ci_high"] and r["ci_note"] == ""
    assert np.isfinite(r["spearman_ci_low"]) and r["acc_adv_ci_low"] <= r["acc_adv"] <= r["acc_adv_ci_high"]
    assert r["mod_rel_ci_low"] < r["mod_rel"] < r["mod_rel_ci_high"]
    noise = rep[(rep["model"] == "resnet50") & (rep["attack"] == "noise")].iloc[0]
    assert noise["mod_rel"] == 0 and noise["mod_rel_ci_low"] == 0 == noise["mod_rel_ci_high"]
    v = rep[(rep["model"] == "vgg16") & (rep["attack"] == "fgsm") & (rep["eps"] == 0.1)].iloc[0]
    assert v["n_replicates"] == 1 and np.isnan(v["mod_ci_low"]) and "one usable replicate" in v["ci_note"]


def test_claims_leave_flagged_runs_out_by_name(rng):
    runs = {(m, r): mu for m, mu in (("resnet50", 0.3), ("vgg16", 0.1)) for r in range(3)}
    t = _table(rng, runs, accuracy={("vgg16", 1): 0.2})
    flags = training_flags(t)
    table, notes = claims(t, flags, n_resamples=300)
    pair = table[(table["claim"] == "pair") & (table["attack"] == "fgsm") & (table["eps"] == 0.1)].iloc[0]
    assert (pair["model_a"], pair["model_b"]) == ("resnet50", "vgg16") and pair["n_replicates"] == 2
    assert pair["verdict"] == "inconclusive"  # vgg16 has 2 usable runs
    assert (table["left_out"] == "vgg16/r1 (at chance)").all()
    assert any("vgg16/r1" in n for n in notes)
    assert (table.loc[table["claim"] == "wide_gt_deep", "verdict"] == "skipped").all()


def test_summarise_stage_across_replicates(rng, tmp_path, capsys):
    """`advcam summarise` with train reports: per-run rows with their flag, replicates.csv over the usable runs,
    claims.csv, and the flagged run named in the log."""
    import json

    from advcam.cli import main

    runs = {(m, r): mu for m, mu in (("vgg16", 0.1), ("resnet50", 0.3), ("xception", 0.5)) for r in range(3)}
    t = _table(rng, runs, n=40, accuracy={("xception", 2): 0.3})
    scores, reports = [], []
    for (m, r), g in t.groupby(["model", "replicate"]):
        p = tmp_path / m / f"r{r}"
        p.mkdir(parents=True)
        g.to_csv(p / "white_box.csv", index=False)
        (p / "train.json").write_text(json.dumps({"model": m, "replicate": int(r), "arch": m, "num_classes": 3}))
        scores.append(p / "white_box.csv")
        reports.append(p / "train.json")
    out = {k: tmp_path / f"{k}.csv" for k in ("mod", "rep", "claims")}
    assert main(["summarise", *map(str, scores), "--out", str(out["mod"]), "--train-reports", *map(str, reports),
                 "--min-accuracy", "0.5", "--replicates", str(out["rep"]), "--claims", str(out["claims"]),
                 "--resamples", "300"]) == 0
    log = capsys.readouterr().out
    assert "xception/r2 flagged 'at chance'" in log and "left out of the claims: xception/r2 (at chance)" in log
    mod = pd.read_csv(out["mod"])
    assert set(mod.loc[mod["training_flag"] != "ok", "model"] + mod.loc[mod["training_flag"] != "ok", "replicate"].astype(str)) \
        == {"xception2"}
    rep = pd.read_csv(out["rep"])
    x = rep[(rep["model"] == "xception") & (rep["attack"] == "fgsm") & (rep["eps"] == 0.1)].iloc[0]
    assert x["n_replicates"] == 2 and x["left_out"] == "xception/r2 (at chance)"
    c = pd.read_csv(out["claims"])
    fg = c[(c["attack"] == "fgsm") & (c["cam"] == "gradcam")]
    paper = fg[fg["claim"] != "pair"]  # both involve xception, which has 2 usable runs: not enough to claim
    assert paper["verdict"].tolist() == ["inconclusive", "inconclusive"] and paper["n_replicates"].tolist() == [2, 2]
    assert (paper["statistic"] > 0).all()
    pair = fg[(fg["claim"] == "pair") & (fg["model_a"] == "resnet50") & (fg["model_b"] == "vgg16") & (fg["eps"] == 0.1)]
    assert pair["verdict"].tolist() == ["supported"] and pair["order_share"].tolist() == [1.0]
    # out of range: named, nothing written
    bad = tmp_path / "bad.csv"
    assert main(["summarise", str(scores[0]), "--out", str(bad), "--min-accuracy", "1.5"]) == 2
    assert "min_accuracy 1.5" in capsys.readouterr().err and not bad.exists()
