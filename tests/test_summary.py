import numpy as np
import pandas as pd
import pytest

import advcam
from advcam.summary import bootstrap_ci, mod_vid, vid, vid_per_image


def _table():
    # 3 images, model m, attack fgsm at ε 0.1 and 0.2
    rows = []
    nis = {0.1: [0.1, 0.2, 0.3], 0.2: [0.3, 0.2, 0.5]}
    pred_adv = {0.1: [0, 2, 2], 0.2: [1, 2, 0]}
    for e in (0.1, 0.2):
        for i in range(3):
            rows.append(dict(model="m", attack="fgsm", eps=e, index=i, label=i, pred_clean=[0, 1, 1][i],
                             pred_adv=pred_adv[e][i], nissim=nis[e][i], zero_cam_clean=False, zero_cam_adv=i == 2,
                             zero_grad=False))
    return pd.DataFrame(rows)


def test_mod_hand_computed():
    s = advcam.mod_vid(_table())
    r = s[s["eps"] == 0.1].iloc[0]
    assert r["n"] == 3
    assert r["mod"] == pytest.approx(0.2)
    assert r["nissim_var"] == pytest.approx(np.var([0.1, 0.2, 0.3]))
    assert r["acc_clean"] == pytest.approx(2 / 3)  # labels 0,1,2 vs preds 0,1,1
    assert r["acc_adv"] == pytest.approx(2 / 3)  # preds 0,2,2 against labels 0,1,2
    assert r["flip_rate"] == pytest.approx(2 / 3)  # image 1 and 2 flipped (1→2, 1→2)
    assert r["mod_flipped"] == pytest.approx(0.25) and r["mod_unflipped"] == pytest.approx(0.1)
    assert r["zero_cam_adv"] == 1
    assert r["mod_ci_low"] <= r["mod"] <= r["mod_ci_high"]


def test_vid_is_population_std_across_eps():
    per = vid_per_image(_table())
    assert per["vid"].to_numpy() == pytest.approx([0.1, 0.0, 0.1])  # std of {0.1,0.3}, {0.2,0.2}, {0.3,0.5}
    v = vid(_table()).iloc[0]
    assert v["vid"] == pytest.approx(0.2 / 3) and v["n_eps"] == 2 and v["eps"] == "0.1 0.2"


def test_vid_leaves_out_an_attack_at_one_eps():
    t = _table()
    one = t[t["eps"] != t["eps"].max()].assign(attack="explain")
    assert "explain" not in set(vid_per_image(pd.concat([t, one]))["attack"])
    assert "explain" not in set(vid(pd.concat([t, one]))["attack"])


def test_vid_rejects_missing_eps():
    t = _table().drop(index=5)
    with pytest.raises(ValueError, match="lack NISSIM"):
        vid_per_image(t)


def test_bootstrap_ci_covers_mean(rng):
    x = rng.random(200)
    lo, hi = bootstrap_ci(x)
    assert lo < x.mean() < hi and hi - lo < 0.2
    assert bootstrap_ci(np.array([0.3])) != bootstrap_ci(np.array([0.3]))  # (nan, nan)
    assert bootstrap_ci(np.full(5, 0.25)) == (0.25, 0.25)


def test_missing_column():
    with pytest.raises(ValueError, match="nissim"):
        advcam.mod_vid(_table().drop(columns="nissim"))


def test_measures_are_summarised_and_nans_counted(rng):
    n = 40
    t = pd.DataFrame({
        "model": "m", "attack": "fgsm", "eps": 0.1, "index": np.arange(n), "label": 0, "pred_clean": 0, "pred_adv": 0,
        "nissim": rng.random(n), "spearman": rng.uniform(-1, 1, n), "topk": rng.random(n), "com_shift": rng.random(n) * 9,
    })
    t.loc[3, "com_shift"] = np.nan  # an all-zero map
    s = mod_vid(t).iloc[0]
    assert s["spearman_mean"] == pytest.approx(t["spearman"].mean()) and s["spearman_nan"] == 0
    assert s["topk_ci_low"] <= s["topk_mean"] <= s["topk_ci_high"]
    assert s["com_shift_nan"] == 1 and s["com_shift_mean"] == pytest.approx(t["com_shift"].drop(3).mean())
    # without measure columns nothing is added
    assert not any(c.startswith("spearman") for c in mod_vid(t.drop(columns=["spearman", "topk", "com_shift"])).columns)


def test_each_cam_method_is_summarised_on_its_own():
    a = _table().assign(cam="gradcam")
    b = _table().assign(cam="eigencam", nissim=lambda t: t["nissim"] / 2)
    s = mod_vid(pd.concat([a, b], ignore_index=True))
    assert list(s.columns[:6]) == ["model", "replicate", "source_model", "cam", "attack", "eps"] and len(s) == 4
    assert (s["replicate"] == 0).all()  # a table without the column: one training run, replicate 0
    g = s[(s["cam"] == "gradcam") & (s["eps"] == 0.1)].iloc[0]
    e = s[(s["cam"] == "eigencam") & (s["eps"] == 0.1)].iloc[0]
    assert g["mod"] == pytest.approx(0.2) and e["mod"] == pytest.approx(0.1)
    assert g["acc_adv"] == e["acc_adv"] and g["n"] == e["n"] == 3  # never pooled across methods
    v = vid(pd.concat([a, b], ignore_index=True)).set_index("cam")
    assert v.loc["gradcam", "vid"] == pytest.approx(0.2 / 3) and v.loc["eigencam", "vid"] == pytest.approx(0.1 / 3)
    # a table written before methods were an axis holds Grad-CAM
    assert set(mod_vid(_table())["cam"]) == {"gradcam"} and set(vid_per_image(_table())["cam"]) == {"gradcam"}


def test_success_rate_of_targeted_and_untargeted_attacks():
    t = _table()
    s = mod_vid(t)
    r = s[s["eps"] == 0.1].iloc[0]
    assert r["targeted"] == "none" and r["success_rate"] == pytest.approx(1 / 3)  # pred_adv 0,2,2 vs labels 0,1,2
    t = t.assign(targeted="next", attack_target=[1, 2, 0] * 2)
    r = mod_vid(t).query("eps == 0.1").iloc[0]
    assert r["targeted"] == "next" and r["success_rate"] == pytest.approx(1 / 3)  # only image 1 reached its target (2)


def test_training_runs_are_summarised_apart():
    t = pd.concat([_table(), _table().assign(replicate=1, nissim=lambda t: t["nissim"] / 2)], ignore_index=True)
    s = mod_vid(t).query("eps == 0.1").set_index("replicate")
    assert s.loc[0, "mod"] == pytest.approx(0.2) and s.loc[1, "mod"] == pytest.approx(0.1) and (s["n"] == 3).all()
    v = vid(t).set_index("replicate")
    assert v.loc[0, "vid"] == pytest.approx(0.2 / 3) and v.loc[1, "vid"] == pytest.approx(0.1 / 3)


def test_transferred_rows_are_summarised_apart_from_white_box_ones():
    own = _table()
    moved = _table().assign(source_model="other", nissim=lambda t: t["nissim"] / 4)
    s = mod_vid(pd.concat([own, moved], ignore_index=True)).query("eps == 0.1").set_index("source_model")
    assert s.loc["m", "mod"] == pytest.approx(0.2) and s.loc["other", "mod"] == pytest.approx(0.05)
    v = vid(pd.concat([own, moved], ignore_index=True)).set_index("source_model")
    assert v.loc["m", "vid"] == pytest.approx(0.2 / 3) and v.loc["other", "vid"] == pytest.approx(0.05 / 3)


def test_fgsms_mod_at_equal_success_is_interpolated_over_its_eps(rng):
    """mod_fgsm_same_success: np.interp of the row's success rate over FGSM's (success, MOD) points, the clean
    point (misclassified share, 0) first; NaN beyond FGSM's reach and for the explain attack."""
    n = 40
    labels = rng.integers(0, 5, n)
    rows = []
    flips = {("fgsm", 0.05): 10, ("fgsm", 0.1): 30, ("dual", 0.05): 20, ("dual", 0.1): 36, ("explain", 0.1): 0}
    for (attack, e), k in flips.items():
        pred = labels.copy()
        pred[:k] = (labels[:k] + 1) % 5
        for i in range(n):
            rows.append(dict(model="m", cam="gradcam", attack=attack, eps=e, index=i, label=labels[i],
                             pred_clean=labels[i] if i != n - 1 else (labels[i] + 1) % 5, pred_adv=pred[i],
                             nissim=float(rng.uniform(0, 0.6))))
    s = mod_vid(pd.DataFrame(rows)).set_index(["attack", "eps"])
    f = s.loc["fgsm"]
    xs = [1 / n, f.loc[0.05, "success_rate"], f.loc[0.1, "success_rate"]]  # one clean image already misclassified
    ys = [0.0, f.loc[0.05, "mod"], f.loc[0.1, "mod"]]
    assert s.loc[("dual", 0.05), "mod_fgsm_same_success"] == pytest.approx(np.interp(0.5, xs, ys))
    assert np.isnan(s.loc[("dual", 0.1), "mod_fgsm_same_success"])  # 90% success: FGSM reaches 75% at most
    assert np.isnan(s.loc[("explain", 0.1), "mod_fgsm_same_success"])
    assert s.loc[("fgsm", 0.1), "mod_fgsm_same_success"] == pytest.approx(f.loc[0.1, "mod"])


@pytest.mark.parametrize("lo_small, lo_large", [(0.5, 0.1), (0.1, 0.5)])
def test_fgsms_mod_at_a_saturated_success_is_its_smallest_eps(rng, lo_small, lo_large):
    """FGSM flipping every image at two ε: an attack at 100% success is compared with the smaller ε's MOD,
    whichever of the two MODs is larger."""
    n = 20
    labels = rng.integers(0, 5, n)
    rows = []
    for attack, e, lo in [("fgsm", 0.05, lo_small), ("fgsm", 0.1, lo_large), ("cw", 2.0, 0.2)]:
        for i in range(n):
            rows.append(dict(model="m", cam="gradcam", attack=attack, eps=e, index=i, label=labels[i],
                             pred_clean=labels[i], pred_adv=(labels[i] + 1) % 5,
                             nissim=float(rng.uniform(lo, lo + 0.1))))
    s = mod_vid(pd.DataFrame(rows)).set_index(["attack", "eps"])
    assert s.loc[("cw", 2.0), "mod_fgsm_same_success"] == pytest.approx(s.loc[("fgsm", 0.05), "mod"])
