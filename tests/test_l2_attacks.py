"""PGD-L2, CW and DeepFool equal torchattacks 3.5.1 with the same parameters, on a paper architecture at an odd size
and on a small network whose decisions they flip, on freshly drawn inputs; bad values are named."""
import pytest
import torch
import torchattacks

import advcam
from advcam.l2_attacks import cw, deepfool, l2_norms, pgdl2
from advcam.models import build_model

_cache: dict = {}


class _Net(torch.nn.Module):
    """A small random ReLU CNN on 20² images with a head that varies with x, so every attack succeeds on most images."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                        torch.nn.Conv2d(8, 8, 3, stride=2, padding=1), torch.nn.ReLU())
        self.fc = torch.nn.Linear(8 * 10 * 10, 5)

    def forward(self, x):
        return self.fc(self.body(x).flatten(1))


def model_for(name):
    if name not in _cache:
        with torch.random.fork_rng():
            torch.manual_seed(1)
            _cache[name] = build_model("resnet50", 6).eval() if name == "resnet50" else _Net().eval()
    return _cache[name]


CASES = [("resnet50", 41, 6), ("small", 20, 5)]


def _close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    """The bar of the iterative attacks: at most 1 pixel in 10,000 differs by more than 1e-6."""
    bad = ((ours - ref).abs() > 1e-6).float().mean().item()
    assert bad <= 1e-4, f"{bad:.2e} of the pixels differ by more than 1e-6 (max {(ours - ref).abs().max():.2e})"


def _data(size, classes, n=4):
    return torch.rand(n, 3, size, size), torch.randint(0, classes, (n,))


@pytest.mark.parametrize("name,size,classes", CASES)
def test_pgdl2_matches_torchattacks(name, size, classes, seed):
    model = model_for(name)
    x, y = _data(size, classes)
    ours = pgdl2(model, x, y, eps=1.0, alpha=0.2, steps=4, random_start=False)
    _close(ours, torchattacks.PGDL2(model, eps=1.0, alpha=0.2, steps=4, random_start=False)(x, y))
    torch.manual_seed(seed)  # the global RNG in torchattacks' order: the same draws
    ours = pgdl2(model, x, y, eps=0.5, alpha=0.1, steps=3)
    torch.manual_seed(seed)
    _close(ours, torchattacks.PGDL2(model, eps=0.5, alpha=0.1, steps=3)(x, y))
    assert bool((l2_norms(x, ours) <= 0.5 + 1e-5).all()) and ours.min() >= 0 and ours.max() <= 1
    t = (y + 1) % classes
    ref = torchattacks.PGDL2(model, eps=1.0, alpha=0.2, steps=3, random_start=False)
    ref.set_mode_targeted_by_label(quiet=True)
    _close(pgdl2(model, x, y, 1.0, 0.2, 3, random_start=False, target=t), ref(x, t))


def test_pgdl2_random_start_draws_from_a_generator(seed):
    model = model_for("small")
    x, y = _data(20, 5)
    a = pgdl2(model, x, y, 0.5, 0.1, 2, generator=torch.Generator().manual_seed(seed))
    b = pgdl2(model, x, y, 0.5, 0.1, 2, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(a, b)


@pytest.mark.parametrize("name,size,classes", CASES)
def test_cw_matches_torchattacks(name, size, classes, seed):
    model = model_for(name)
    x, y = _data(size, classes)
    for kw in ({"c": 1.0, "kappa": 0.0, "steps": 20, "lr": 0.01}, {"c": 5.0, "kappa": 0.5, "steps": 10, "lr": 0.05}):
        ours = cw(model, x, y, **kw)
        _close(ours, torchattacks.CW(model, **kw)(x, y))
    t = (y + 1) % classes
    ref = torchattacks.CW(model, c=2.0, steps=10, lr=0.05)
    ref.set_mode_targeted_by_label(quiet=True)
    _close(cw(model, x, y, c=2.0, steps=10, lr=0.05, target=t), ref(x, t))


def test_cw_succeeds_on_the_small_net(seed):
    model = model_for("small")
    x, y = _data(20, 5, n=8)
    with torch.no_grad():
        y = model(x).argmax(1)
    adv = cw(model, x, y, c=10.0, steps=50, lr=0.05)
    with torch.no_grad():
        flipped = model(adv).argmax(1) != y
    assert flipped.float().mean() >= 0.5
    assert bool((l2_norms(x, adv)[~flipped] == 0).all())  # an image never flipped comes back unchanged


@pytest.mark.parametrize("name,size,classes", CASES)
def test_deepfool_matches_torchattacks(name, size, classes, seed):
    model = model_for(name)
    x, y = _data(size, classes, n=5)
    with torch.no_grad():
        y[:3] = model(x[:3]).argmax(1)  # three start correct (they are attacked), the others mostly wrong (left)
    # a random ResNet's decisions barely move: torchattacks' per-image loop would take all 50 steps on every image
    for kw in ({"steps": 50, "overshoot": 0.02}, {"steps": 2, "overshoot": 0.1}) if name == "small" else \
            ({"steps": 3, "overshoot": 0.02},):
        ours = deepfool(model, x, y, **kw)
        _close(ours, torchattacks.DeepFool(model, **kw)(x, y))
    if name == "small":
        with torch.no_grad():
            assert bool((model(deepfool(model, x, y)).argmax(1) != y).float().mean() >= 0.6)


@pytest.mark.parametrize("call, match", [
    (lambda m, x, y: cw(m, x, y, c=0), "c must be > 0"),
    (lambda m, x, y: cw(m, x, y, kappa=-1), "kappa must be >= 0"),
    (lambda m, x, y: cw(m, x, y, steps=0), "steps"),
    (lambda m, x, y: deepfool(m, x, y, steps=0), "steps"),
    (lambda m, x, y: deepfool(m, x, y, overshoot=-0.1), "overshoot"),
    (lambda m, x, y: pgdl2(m, x, y, eps=0), "eps"),
    (lambda m, x, y: pgdl2(m, x, y, alpha=0), "alpha"),
])
def test_bad_values_are_named(call, match):
    with pytest.raises(advcam.InputError, match=match):
        call(model_for("small"), *_data(20, 5, n=1))



def test_channels_last_models_are_attacked_alike(seed):
    """The workflow's stages and the bench run models in channels_last: gradients then have its strides."""
    import copy

    model = model_for("small")
    fast = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x, y = _data(20, 5)
    for attack in (lambda m: pgdl2(m, x, y, 1.0, 0.2, 3, random_start=False), lambda m: cw(m, x, y, steps=5),
                   lambda m: deepfool(m, x, y, steps=3)):
        torch.testing.assert_close(attack(fast), attack(model), atol=1e-5, rtol=0)


def test_clip_l2_is_foolboxs_l2_clip():
    """x + δ·min(1, ε/‖δ‖₂), Foolbox 3's clip_perturbation under its l2 distance, written here in numpy; a
    perturbation already inside the ball comes back bit for bit, and the result stays in [0, 1]."""
    import numpy as np

    g = torch.Generator().manual_seed(7)
    x = torch.rand(6, 3, 9, 11, generator=g)
    adv = (x + torch.randn(6, 3, 9, 11, generator=g) * torch.tensor([0.001, 0.01, 0.05, 0.1, 0.3, 0.0]).view(-1, 1, 1, 1)
           ).clamp(0, 1)
    eps = 1.0
    d = (adv - x).numpy().reshape(6, -1)
    norms = np.maximum(np.linalg.norm(d, axis=1), 1e-12)
    ref = x.numpy() + (d * np.minimum(1.0, eps / norms)[:, None]).reshape(x.shape)
    out = advcam.clip_l2(x, adv, eps)
    assert np.abs(out.numpy() - ref).max() < 1e-6
    inside = norms <= eps
    assert inside.any() and (~inside).any()
    assert torch.equal(out[torch.as_tensor(inside)], adv[torch.as_tensor(inside)])
    assert np.allclose(l2_norms(x, out).numpy(), np.minimum(norms, eps), rtol=1e-5)
    assert out.min() >= 0 and out.max() <= 1
    with pytest.raises(advcam.InputError, match="eps"):
        advcam.clip_l2(x, adv, 0)
