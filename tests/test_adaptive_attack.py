"""The adaptive attacker of the detection track: its differentiable detector scores equal the detector's own
(advcam.detection, and skimage's SSIM), the attack equals a hand-written loop of the same passes, keeps its
promises (within ε, in [0,1], the successful iterate with the lowest score), and names bad values."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity

import advcam
from advcam.adaptive_attack import adaptive_attack, detector_score
from advcam.attacks import random_sign
from advcam.detection import detection_scores, noise_seed
from advcam.errors import InputError
from advcam.explainers import differentiable_cams
from advcam.settings import DetectionSettings
from test_explanation_attacks import small


@pytest.fixture(scope="module")
def net():
    return small()  # the explanation attacks' small random ReLU CNN on 24² images (CAM layer "act")


def _nissim_sk(a, b):
    return torch.tensor([(1 - structural_similarity(u, v, data_range=1.0)) / 2
                         for u, v in zip(a.detach().double().numpy(), b.detach().double().numpy())])


def test_detector_scores_equal_the_detectors_and_carry_the_graph(net, rng):
    x = torch.from_numpy(rng.random((5, 3, 24, 24)).astype(np.float32))
    idx = np.arange(5) + 40
    ref = detection_scores(net, "act", x, idx, DetectionSettings(pair=("gradcam", "layercam"), method="gradcampp",
                                                                 draws=2, eps_d=0.05, seed=3))
    signs = torch.stack([random_sign((3, 24, 24), idx, noise_seed(3, d)) for d in range(2)])
    for graph in (False, True):
        xg = x.clone().requires_grad_(graph)
        d, logits = detector_score(net, "act", xg, "disagreement", pair=("gradcam", "layercam"), create_graph=graph)
        np.testing.assert_allclose(d.detach().numpy(), ref["disagreement"], atol=1e-6)
        s, _ = detector_score(net, "act", xg, "self_consistency", method="gradcampp", eps_d=0.05, signs=signs,
                              create_graph=graph)
        np.testing.assert_allclose(s.detach().numpy(), ref["self_consistency"], atol=1e-6)
        np.testing.assert_array_equal(logits.detach().argmax(1).numpy(), ref["pred"])
        assert d.requires_grad == s.requires_grad == graph
    (g,) = torch.autograd.grad(d.sum() + s.sum(), xg)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


@pytest.mark.parametrize("score, targeted", [("disagreement", False), ("self_consistency", True)])
def test_adaptive_attack_equals_the_minimal_loop(net, seed, score, targeted):
    torch.manual_seed(seed)
    eps, alpha, steps, lam = 0.1, 0.03, 4, 3.0
    x = torch.rand(8, 3, 24, 24)
    with torch.no_grad():
        logits = net(x)
    y = logits.argmax(1)  # every image starts correct
    target = logits.argsort(1)[:, -2] if targeted else None
    ours = adaptive_attack(net, "act", x, y, eps, alpha, steps, lam, score, method="layercam", pair=("gradcam", "eigencam"),
                           eps_d=0.05, draws=2, generator=torch.Generator().manual_seed(seed), target=target)
    # the textbook loop: the attacker's draws from the same generator, a differentiable pass per step
    gen = torch.Generator().manual_seed(seed)

    def draw():
        return None if score == "disagreement" else \
            torch.randint(0, 2, (2, *x.shape), generator=gen, dtype=torch.int8) * 2 - 1

    def value(z, signs):
        if score == "disagreement":
            maps, lg = differentiable_cams(net, "act", z, ["gradcam", "eigencam"])
            return (1 - advcam.ssim(maps["gradcam"], maps["eigencam"])) / 2, lg
        maps, lg = differentiable_cams(net, "act", z, ["layercam"])
        t = lg.argmax(1).detach()
        total = 0
        for s in signs:
            noisy, _ = differentiable_cams(net, "act", (z + 0.05 * s.float()).clamp(0, 1), ["layercam"], t)
            total = total + (1 - advcam.ssim(maps["layercam"], noisy["layercam"])) / 2
        return total / len(signs), lg

    clean = value(x.clone().requires_grad_(True), draw())[0].detach()
    adv, best, best_v = x.clone(), x.clone(), torch.full((8,), np.inf, dtype=torch.float64)
    for i in range(steps + 1):
        signs = draw()
        xg = adv.clone().requires_grad_(True)
        v, lg = value(xg, signs)
        pred = lg.argmax(1)
        won = (pred == target) if targeted else (pred != y)
        take = won & (v.detach() < best_v)
        best[take], best_v[take] = adv[take], v.detach()[take]
        if i == steps:
            break
        ce = F.cross_entropy(lg, target if targeted else y, reduction="none")
        obj = (ce if targeted else -ce) + lam * (v - clean).clamp_min(0)
        (g,) = torch.autograd.grad(obj.sum(), xg)
        adv = (x + (adv - alpha * g.sign() - x).clamp(-eps, eps)).clamp(0, 1)
    won = torch.isfinite(best_v)
    assert won.any()
    torch.testing.assert_close(ours[won], best[won], atol=1e-6, rtol=0)
    torch.testing.assert_close(ours[~won], adv[~won], atol=1e-6, rtol=0)  # never won: the last iterate
    assert (ours - x).abs().max() <= eps + 1e-6 and ours.min() >= 0 and ours.max() <= 1


@pytest.mark.parametrize("kwargs, message", [
    ({"score": "max_softmax"}, "score 'max_softmax'"),
    ({"lam": -1}, "lam"),
    ({"draws": 0, "score": "self_consistency"}, "draws must be an integer >= 1, got 0"),
    ({"pair": ("gradcam", "gradcam")}, "pair"),
    ({"pair": ("gradcam", "scorecam")}, "'scorecam' has no differentiable form"),
    ({"steps": 0}, "steps"),
])
def test_bad_values_are_named(net, kwargs, message):
    x = torch.rand(2, 3, 24, 24)
    with pytest.raises(InputError, match=message):
        adaptive_attack(net, "act", x, torch.zeros(2, dtype=torch.long), 0.05, **kwargs)
