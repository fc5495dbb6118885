"""advcam.detection: the squeezers equal Xu et al.'s numpy/scipy calls, the detector scores equal a hand computation
from the study's own CAMs and SSIM, and the judging of a detector equals scikit-learn (AUC, ROC, the TPR read at an
FPR) and a plain numpy loop over bootstrap resamples — on inputs drawn fresh."""
import numpy as np
import pandas as pd
import pytest
import scipy.ndimage
import torch
from sklearn.metrics import roc_auc_score, roc_curve as sk_roc_curve
from skimage.metrics import structural_similarity

import advcam
from advcam.attacks import random_sign
from advcam.detection import (
    auc_bootstrap,
    detection_scores,
    max_softmax_score,
    median_filter,
    noise_seed,
    roc_auc,
    roc_curve,
    self_consistency_score,
    softmax_l1,
    squeeze_bits,
    squeeze_score,
    tpr_at_fpr,
)
from advcam.errors import InputError
from advcam.settings import DetectionSettings, SettingsError
from test_explanation_attacks import small


@pytest.fixture(scope="module")
def net():
    return small()  # the explanation attacks' small random ReLU CNN on 24² images (CAM layer "act")


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
def test_median_filter_equals_scipy_reflect(rng, size):
    x = rng.random((2, 3, 13, 10)).astype(np.float32)
    ours = median_filter(torch.from_numpy(x), size).numpy()
    ref = scipy.ndimage.median_filter(x, size=(1, 1, size, size), mode="reflect")
    np.testing.assert_array_equal(ours, ref)


def test_squeeze_bits_is_xu_et_al_rint(rng):
    x = rng.random((2, 3, 8, 8)).astype(np.float32)
    for bits in (1, 3, 5, 8):
        ref = np.rint(x * (2 ** bits - 1)) / (2 ** bits - 1)
        np.testing.assert_allclose(squeeze_bits(torch.from_numpy(x), bits).numpy(), ref, atol=1e-7)
    with pytest.raises(InputError, match="bits 9"):
        squeeze_bits(torch.from_numpy(x), 9)
    with pytest.raises(InputError, match="median 0"):
        median_filter(torch.from_numpy(x), 0)


def _softmax(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_softmax_scores_equal_numpy(rng):
    a, b = rng.normal(size=(6, 5)) * 3, rng.normal(size=(6, 5)) * 3
    np.testing.assert_allclose(max_softmax_score(torch.from_numpy(a)).numpy(), 1 - _softmax(a).max(1), atol=1e-12)
    np.testing.assert_allclose(softmax_l1(torch.from_numpy(a), torch.from_numpy(b)).numpy(),
                               np.abs(_softmax(a) - _softmax(b)).sum(1), atol=1e-12)


def test_squeeze_score_is_the_larger_l1_of_the_two_squeezers(net, rng):
    x = torch.from_numpy(rng.random((4, 3, 24, 24)).astype(np.float32))
    with torch.no_grad():
        p = _softmax(net(x).numpy())
        pb = _softmax(net(torch.from_numpy(np.rint(x.numpy() * 15) / 15).float()).numpy())
        pm = _softmax(net(torch.from_numpy(scipy.ndimage.median_filter(x.numpy(), size=(1, 1, 3, 3),
                                                                       mode="reflect"))).numpy())
    ref = np.maximum(np.abs(p - pb).sum(1), np.abs(p - pm).sum(1))
    np.testing.assert_allclose(squeeze_score(net, x, bits=4, median=3).numpy(), ref, atol=1e-5)


def _nissim_sk(a, b):
    return np.array([(1 - structural_similarity(u, v, data_range=1.0)) / 2
                     for u, v in zip(a.double().numpy(), b.double().numpy())])


def test_self_consistency_is_the_mean_nissim_over_seeded_noise_draws(net, rng):
    x = torch.from_numpy(rng.random((5, 3, 24, 24)).astype(np.float32))
    idx = np.array([3, 9, 11, 20, 21])
    ours = self_consistency_score(net, "act", x, idx, method="layercam", eps_d=0.1, draws=2, seed=7).numpy()
    clean = advcam.cam(net, "act", x, "layercam")
    target = net(x).argmax(1)
    ref = np.zeros(5)
    for d in range(2):
        s = random_sign((3, 24, 24), idx, noise_seed(7, d)).float()
        ref += _nissim_sk(clean, advcam.cam(net, "act", (x + 0.1 * s).clamp(0, 1), "layercam", target))
    np.testing.assert_allclose(ours, ref / 2, atol=1e-6)
    # an image's draws depend on its test index and the seed, not on its batch
    one = self_consistency_score(net, "act", x[2:3], idx[2:3], method="layercam", eps_d=0.1, draws=2, seed=7)
    np.testing.assert_allclose(one.numpy(), ours[2:3], atol=1e-6)  # float32 convolutions of another batch size
    # the defender's signs are not the noise control's (random_sign with the attack's seed)
    assert not torch.equal(random_sign((3, 24, 24), idx, noise_seed(0, 0)), random_sign((3, 24, 24), idx, 0))


def test_detection_scores_share_one_pass_and_equal_each_score(net, rng):
    x = torch.from_numpy(rng.integers(0, 256, (7, 3, 24, 24), dtype=np.uint8))
    xf = x.float() / 255
    idx = np.arange(7) + 100
    st = DetectionSettings(pair=("gradcam", "eigencam"), method="gradcampp", draws=1, eps_d=0.05, bits=4, median=3)
    out = detection_scores(net, "act", x, idx, st, batch_size=3)
    assert set(out) == {"self_consistency", "disagreement", "max_softmax", "squeeze", "pred"}
    with torch.no_grad():
        logits = net(xf)
    np.testing.assert_array_equal(out["pred"], logits.argmax(1).numpy())
    np.testing.assert_allclose(out["max_softmax"], 1 - _softmax(logits.numpy()).max(1), atol=1e-6)
    m = advcam.cams(net, "act", xf, ["gradcam", "eigencam"])
    np.testing.assert_allclose(out["disagreement"], _nissim_sk(m["gradcam"], m["eigencam"]), atol=1e-6)
    np.testing.assert_allclose(out["squeeze"], squeeze_score(net, xf, 4, 3).numpy(), atol=1e-6)
    ref = self_consistency_score(net, "act", xf, idx, method="gradcampp", eps_d=0.05, draws=1, seed=0)
    np.testing.assert_allclose(out["self_consistency"], ref.numpy(), atol=1e-6)
    only = detection_scores(net, "act", x, idx, DetectionSettings(scores=("max_softmax",)), batch_size=4)
    assert set(only) == {"max_softmax", "pred"}
    np.testing.assert_allclose(only["max_softmax"], out["max_softmax"], atol=1e-6)


def test_auc_roc_and_tpr_equal_scikit_learn_with_ties(rng):
    for _ in range(5):
        n, m = rng.integers(5, 40, 2)
        neg, pos = rng.integers(0, 8, n).astype(float), rng.integers(2, 10, m).astype(float)
        y = np.r_[np.zeros(n), np.ones(m)]
        s = np.r_[neg, pos]
        assert roc_auc(neg, pos) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        f, t, thr = roc_curve(neg, pos)
        fs, ts, ths = sk_roc_curve(y, s, drop_intermediate=False)
        np.testing.assert_allclose(f, fs)
        np.testing.assert_allclose(t, ts)
        np.testing.assert_array_equal(thr[1:], ths[1:])
        for fpr in (0.0, 0.05, 0.2):
            assert tpr_at_fpr(neg, pos, fpr) == pytest.approx(ts[fs <= fpr].max())
    with pytest.raises(InputError, match="NaN"):
        roc_auc([0.1, np.nan], [0.2])
    with pytest.raises(InputError, match="negatives and positives"):
        roc_auc([], [0.2])


def test_auc_bootstrap_equals_a_loop_over_resamples(rng, seed):
    n, b = 23, 50
    neg = rng.integers(0, 6, n).astype(float)
    pos = rng.integers(1, 8, n).astype(float)
    flipped = rng.random(n) < 0.6
    ours = auc_bootstrap(neg, pos, flipped, n_resamples=b, seed=seed)
    idx = np.random.default_rng(seed).integers(0, n, (b, n))  # advcam.replicates.image_counts' draws
    ref = []
    for row in idx:
        p = pos[row][flipped[row]]
        ref.append(np.nan if not len(p) else roc_auc_score(np.r_[np.zeros(n), np.ones(len(p))], np.r_[neg[row], p]))
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    assert np.allclose(auc_bootstrap(neg, pos, None, b, seed),
                       [roc_auc_score(np.r_[np.zeros(n), np.ones(n)], np.r_[neg[r], pos[r]]) for r in idx])


@pytest.mark.parametrize("values, key", [
    ({"scores": ["entropy"]}, "scores"),
    ({"eps_d": 0}, "eps_d"),
    ({"eps_d": 1.5}, "eps_d"),
    ({"draws": 0}, "draws"),
    ({"pair": ["gradcam", "gradcam"]}, "pair"),
    ({"pair": ["gradcam", "saliency"]}, "pair"),
    ({"method": "saliency"}, "method"),
    ({"bits": 0}, "bits"),
    ({"fpr": 1}, "fpr"),
])
def test_bad_detection_settings_are_named(values, key):
    with pytest.raises(SettingsError, match=rf"^{key} "):
        DetectionSettings.from_mapping(values)


def test_detection_summary_pairs_each_attack_with_its_runs_clean_images(rng):
    from advcam.detection import detection_summary

    n, rows = 12, []
    flips = rng.random(n) < 0.5
    for rep in (0, 1):
        for attack, eps, shift in (("clean", 0.0, 0.0), ("fgsm", 0.1, 0.5), ("explain", 0.1, 0.2)):
            v = rng.random(n) + shift
            for i in range(n):
                rows.append(dict(model="m", replicate=rep, attack=attack, eps=eps, norm="Linf", targeted="none",
                                 index=10 + i, label=0, pred_clean=0, pred=int(attack == "fgsm" and flips[i]),
                                 flipped=bool(attack == "fgsm" and flips[i]), score="squeeze", cam="none",
                                 value=v[i]))
    table = pd.DataFrame(rows)
    out = detection_summary(table, fpr=0.1, n_resamples=300, seed=1)
    assert len(out) == 2 * 2 * 2  # runs × attacks × positives
    for rep in (0, 1):
        t = table[table["replicate"] == rep]
        neg = t.loc[t["attack"] == "clean", "value"].to_numpy()
        pos = t.loc[t["attack"] == "fgsm", "value"].to_numpy()
        row = out[(out["replicate"] == rep) & (out["attack"] == "fgsm")].set_index("positives")
        y = lambda k: np.r_[np.zeros(n), np.ones(k)]  # noqa: E731
        assert row.loc["all", "auc"] == pytest.approx(roc_auc_score(y(n), np.r_[neg, pos]))
        assert row.loc["flipped", "auc"] == pytest.approx(roc_auc_score(y(flips.sum()), np.r_[neg, pos[flips]]))
        assert row.loc["flipped", "n_adv"] == flips.sum() and row.loc["all", "n_clean"] == n
        assert row.loc["all", "tpr_at_fpr"] == pytest.approx(tpr_at_fpr(neg, pos, 0.1))
        kept = out[(out["replicate"] == rep) & (out["attack"] == "explain")].set_index("positives")
        assert kept.loc["flipped", "n_adv"] == 0 and np.isnan(kept.loc["flipped", "auc"])  # nothing flipped
    broken = table[~((table["attack"] == "clean") & (table["index"] == 10) & (table["replicate"] == 1))]
    with pytest.raises(InputError, match=r"m/r1 fgsm ε=0.1 squeeze: the clean and adversarial rows hold other"):
        detection_summary(broken, n_resamples=100)
