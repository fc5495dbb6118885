import pytest
import torch
import torchattacks

import advcam
from advcam.attacks import EpsilonError, apply_sign, check_eps, gradient_sign, perturb, random_sign
from advcam.models import Normalized, build_model

_cache: dict = {}


def model_for(arch, size):
    if arch not in _cache:
        torch.manual_seed(1)
        _cache[arch] = build_model(arch, 6).eval()
    return _cache[arch]


@pytest.mark.parametrize("arch,size", [("resnet50", 48), ("inception_v3", 80), ("xception", 72)])
def test_fgsm_matches_torchattacks(arch, size, seed):
    model = model_for(arch, size)
    x = torch.rand(4, 3, size, size)
    y = torch.randint(0, 6, (4,))
    for eps in (0.01, 0.05, 0.1):
        ours = advcam.fgsm(model, x, y, eps)
        ref = torchattacks.FGSM(model, eps=eps)(x, y)
        assert torch.equal(ours, ref)


def test_sign_once_then_every_eps(seed):
    model = model_for("resnet50", 48)
    x = torch.rand(5, 3, 48, 48)
    y = torch.randint(0, 6, (5,))
    gs = gradient_sign(model, x, y, batch_size=2)
    assert gs.sign.dtype == torch.int8 and gs.sign.shape == x.shape
    for eps in (0.0, 0.01, 0.075):
        assert torch.equal(apply_sign(x, gs.sign, eps), torchattacks.FGSM(model, eps=eps)(x, y))
    assert torch.equal(apply_sign(x, gs.sign, 0.0), x)


def test_pgd_matches_torchattacks(seed):
    model = model_for("resnet50", 48)
    x = torch.rand(3, 3, 48, 48)
    y = torch.randint(0, 6, (3,))
    ours = advcam.pgd(model, x, y, 0.03, alpha=0.01, steps=3, random_start=False)
    ref = torchattacks.PGD(model, eps=0.03, alpha=0.01, steps=3, random_start=False)(x, y)
    assert torch.allclose(ours, ref, atol=1e-6)
    torch.manual_seed(seed)
    ours = advcam.pgd(model, x, y, 0.03, alpha=0.01, steps=2, random_start=True)
    torch.manual_seed(seed)
    ref = torchattacks.PGD(model, eps=0.03, alpha=0.01, steps=2, random_start=True)(x, y)
    assert torch.allclose(ours, ref, atol=1e-6)
    assert (ours - x).abs().max() <= 0.03 + 1e-6


def test_parameters_untouched(seed):
    model = model_for("resnet50", 48)
    x = torch.rand(2, 3, 48, 48)
    advcam.fgsm(model, x, torch.tensor([0, 1]), 0.01)
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_zero_gradient_is_detected():
    lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3))
    with torch.no_grad():
        lin[1].weight.zero_()
        lin[1].bias.copy_(torch.tensor([500.0, 0.0, 0.0]))  # saturated softmax for class 0
    model = Normalized(lin, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)).eval()
    x = torch.rand(3, 3, 4, 4)
    with torch.no_grad():
        lin[1].weight[0, 0] = 1.0  # image-dependent logit, still saturated
    gs = gradient_sign(model, x, torch.tensor([0, 0, 1]))
    assert gs.zero_grad.tolist() == [True, True, False]
    assert torch.equal(apply_sign(x, gs.sign, 0.1)[:2], x[:2])


def test_noise_sign_deterministic_and_batch_free():
    a = random_sign((3, 8, 8), [0, 1, 2, 3], seed=5)
    b = torch.cat([random_sign((3, 8, 8), [0, 1], 5), random_sign((3, 8, 8), [2, 3], 5)])
    assert torch.equal(a, b)
    assert set(a.unique().tolist()) == {-1, 1}
    assert not torch.equal(a, random_sign((3, 8, 8), [0, 1, 2, 3], seed=6))
    x = torch.full((4, 3, 8, 8), 0.5)
    adv = perturb(x, "noise", 0.1, indices=[0, 1, 2, 3], seed=5)
    assert torch.allclose((adv - x).abs(), torch.full_like(x, 0.1))


@pytest.mark.parametrize("eps", [-0.01, 1.5, float("nan"), "abc"])
def test_eps_out_of_range(eps):
    with pytest.raises(EpsilonError, match="epsilon"):
        check_eps(eps)


def test_unknown_attack():
    with pytest.raises(ValueError, match="unknown attack 'cw'"):
        perturb(torch.rand(1, 3, 4, 4), "cw", 0.1)
