"""The attacks on the explanation equal a minimal hand-written loop of the same passes, keep their promises (within
ε, in [0,1], the label kept or flipped, the chosen iterate), and name bad values; their dissimilarity is
differentiable SSIM equal to skimage's."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity

import advcam
from advcam.explainers import differentiable_cams
from advcam.explanation_attacks import dual_attack, explain_attack, map_dissimilarity
from advcam.models import build_model, relu_beta

_models: dict = {}


def resnet():
    if "r" not in _models:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            _models["r"] = build_model("resnet50", 4).eval()
    return _models["r"]


class _Net(torch.nn.Module):
    """A small random ReLU CNN on 24² images whose decisions an ε = 0.1 attack can flip (a random ResNet's logits
    barely vary)."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                        torch.nn.Conv2d(8, 16, 3, stride=2, padding=1))
        self.act = torch.nn.ReLU()
        self.fc = torch.nn.Linear(16 * 12 * 12, 4)

    def forward(self, x):
        return self.fc(self.act(self.body(x)).flatten(1))  # a head without pooling: logits that vary with x


def small():
    if "s" not in _models:
        with torch.random.fork_rng():
            torch.manual_seed(1)
            _models["s"] = _Net().eval()
    return _models["s"]


def _reference(model, layer, x, y, eps, alpha, steps, start, sign, objective, better, beta=None):
    """The textbook loop: each step one differentiable CAM, the objective's gradient sign, the projection; each
    iterate judged on the model's own map and prediction; ``better(pred, d, best_d)`` chooses."""
    grad_model = model if beta is None else relu_beta(model, beta)
    clean = advcam.cam(model, layer, x)
    best, best_d = None, None
    adv = start.clone()
    for i in range(steps + 1):
        with torch.no_grad():
            pred = model(adv).argmax(1)
        d = 1 - torch.tensor([structural_similarity(a.numpy(), b.numpy(), data_range=1.0)
                              for a, b in zip(advcam.cam(model, layer, adv).double(), clean.double())])
        if best is None:
            best, best_d = adv.clone(), torch.where(better(pred, d, torch.full_like(d, np.nan)), d, np.nan)
        else:
            take = better(pred, d, best_d)
            best[take], best_d[take] = adv[take], d[take]
        if i == steps:
            break
        xg = adv.clone().requires_grad_(True)
        maps, logits = differentiable_cams(grad_model, layer, xg, ["gradcam"])
        (g,) = torch.autograd.grad(objective(maps["gradcam"], clean, logits).sum(), xg)
        adv = (x + (adv + sign * alpha * g.sign() - x).clamp(-eps, eps)).clamp(0, 1)
    return best, best_d


def test_dissimilarity_is_one_minus_skimage_ssim_and_differentiable(rng):
    a = torch.tensor(rng.random((3, 20, 20)))
    b = torch.tensor(rng.random((3, 20, 20)))
    ref = [1 - structural_similarity(p, q, data_range=1.0) for p, q in zip(a.numpy(), b.numpy())]
    np.testing.assert_allclose(map_dissimilarity(a, b).numpy(), ref, atol=1e-6)
    ag = a[:1].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: map_dissimilarity(t, b[:1]), (ag,), eps=1e-6, atol=1e-5)
    assert torch.autograd.gradcheck(lambda t: map_dissimilarity(t, b[:1], gaussian=True), (ag,), eps=1e-6, atol=1e-5)


def test_explain_attack_equals_the_minimal_loop_and_keeps_every_label(seed):
    torch.manual_seed(seed)
    model, eps, alpha, steps = resnet(), 0.05, 0.01, 4
    x = torch.rand(4, 3, 67, 67)
    y = torch.randint(0, 4, (4,))
    ours = explain_attack(model, "layer4", x, y, eps, alpha, steps, generator=torch.Generator().manual_seed(seed))
    noise = torch.empty(x.shape).uniform_(-eps, eps, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        keep = model(x).argmax(1)

    def better(pred, d, best_d):
        return (pred == keep) & ~(d <= best_d)  # nan (nothing kept yet) compares false

    ref, ref_d = _reference(model, "layer4", x, y, eps, alpha, steps, (x + noise).clamp(0, 1), +1,
                            lambda m, c, lg: 1 - advcam.ssim(m, c), better)
    kept = ~torch.isnan(ref_d)
    assert kept.any()
    torch.testing.assert_close(ours[kept], ref[kept], atol=1e-6, rtol=0)
    torch.testing.assert_close(ours[~kept], x[~kept], atol=0, rtol=0)  # no iterate kept the label: x itself
    with torch.no_grad():
        assert torch.equal(model(ours).argmax(1), keep)  # flip rate 0
    assert (ours - x).abs().max() <= eps + 1e-6 and ours.min() >= 0 and ours.max() <= 1
    d = map_dissimilarity(advcam.cam(model, "layer4", ours), advcam.cam(model, "layer4", x))
    assert bool((d[kept] > 0.05).all())  # it moved the map


@pytest.mark.parametrize("targeted", [False, True])
def test_dual_attack_equals_the_minimal_loop(seed, targeted):
    torch.manual_seed(seed)
    model, eps, alpha, steps, lam = small(), 0.1, 0.03, 5, 2.0
    x = torch.rand(8, 3, 24, 24)
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)  # the clean prediction as the label: every image starts correct
    target = logits.argsort(1)[:, -2] if targeted else None  # the runner-up class: reachable on a random net
    ours = dual_attack(model, "act", x, y, eps, alpha, steps, lam, target=target)

    def objective(m, c, lg):
        ce = F.cross_entropy(lg, target if targeted else y, reduction="none")
        return (ce if targeted else -ce) + lam * (1 - advcam.ssim(m, c))

    def better(pred, d, best_d):
        won = (pred == target) if targeted else (pred != y)
        return won & ~(d >= best_d)

    ref, ref_d = _reference(model, "act", x, y, eps, alpha, steps, x, -1, objective, better)
    won = ~torch.isnan(ref_d)
    assert won.any()
    torch.testing.assert_close(ours[won], ref[won], atol=1e-6, rtol=0)
    with torch.no_grad():
        pred = model(ours[won]).argmax(1)
    assert bool((pred == target[won]).all() if targeted else (pred != y[won]).all())
    assert (ours - x).abs().max() <= eps + 1e-6


def test_relu_beta_attack_is_judged_on_the_relu_model(seed):
    torch.manual_seed(seed)
    model = resnet()
    x = torch.rand(3, 3, 67, 67)
    y = torch.zeros(3, dtype=torch.long)
    adv = explain_attack(model, "layer4", x, y, 0.03, 0.01, 2, relu_beta=10.0,
                         generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        assert torch.equal(model(adv).argmax(1), model(x).argmax(1))
    assert any(isinstance(m, torch.nn.ReLU) for m in model.modules())  # the model keeps its ReLUs


@pytest.mark.parametrize("kwargs, match", [
    ({"lam": -1.0}, "lam"),
    ({"steps": 0}, "steps"),
    ({"method": "scorecam"}, "scorecam"),
    ({"relu_beta": 0}, "relu_beta"),
    ({"eps": 2.0}, "epsilon"),
])
def test_bad_values_are_named(kwargs, match):
    model = resnet()
    x = torch.rand(1, 3, 67, 67)
    args = {"eps": 0.03, **kwargs}
    with pytest.raises(advcam.InputError, match=match):
        dual_attack(model, "layer4", x, torch.zeros(1, dtype=torch.long), **args)
