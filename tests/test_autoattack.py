"""AutoAttack's APGD (L∞ and L2, losses ce and dlr, restarts) and Square (L∞) equal torchattacks 3.5.1 with the same
parameters and seed, on a paper architecture at an odd size and on a small network they fool, on fresh inputs."""
import pytest
import torch
import torchattacks

import advcam
from advcam.autoattack import apgd, dlr_loss, square
from advcam.l2_attacks import l2_norms

from test_l2_attacks import CASES, _close, _data, model_for


# ---------------------------------------------------------------- AutoAttack's APGD (L∞ and L2) and Square (L∞)


@pytest.mark.parametrize("name,size,classes", CASES)
@pytest.mark.parametrize("norm,eps", [("Linf", 8 / 255), ("L2", 0.5)])
def test_apgd_matches_torchattacks(name, size, classes, norm, eps, seed):
    model = model_for(name)
    x, y = _data(size, classes, n=6)
    with torch.no_grad():
        y[:4] = model(x[:4]).argmax(1)  # most start correct: the attack has work to do
    cases = ({"steps": 10, "n_restarts": 1, "loss": "ce"}, {"steps": 12, "n_restarts": 2, "loss": "dlr"})
    for kw in cases if name == "small" else ({"steps": 8, "n_restarts": 2, "loss": "dlr"},):  # the ResNet: CI time
        kw = {**kw, "seed": seed % 1000}
        ours = apgd(model, x, y, norm=norm, eps=eps, **kw)
        ref = torchattacks.APGD(model, norm=norm, eps=eps, **kw)(x, y)
        _close(ours, ref)
    if norm == "Linf":
        assert (ours - x).abs().max() <= eps + 1e-6
    else:
        assert bool((l2_norms(x, ours) <= eps + 1e-5).all())


def test_apgd_is_seeded_and_leaves_the_global_rng_alone(seed):
    model = model_for("small")
    x, y = _data(20, 5)
    state = torch.random.get_rng_state()
    a, b = apgd(model, x, y, seed=3), apgd(model, x, y, seed=3)
    assert torch.equal(a, b) and torch.equal(torch.random.get_rng_state(), state)


def test_dlr_loss_matches_torchattacks(seed):
    z = torch.randn(7, 5)
    y = torch.randint(0, 5, (7,))
    ref = torchattacks.APGD(model_for("small")).dlr_loss(z, y)
    torch.testing.assert_close(dlr_loss(z, y), ref)


@pytest.mark.parametrize("kwargs, match", [({"norm": "L1"}, "norm"), ({"loss": "cw"}, "loss"), ({"eps": 0}, "eps"),
                                           ({"n_restarts": 0}, "n_restarts"), ({"rho": 1.5}, "rho")])
def test_apgd_bad_values_are_named(kwargs, match):
    with pytest.raises(advcam.InputError, match=match):
        apgd(model_for("small"), *_data(20, 5, n=1), **kwargs)


@pytest.mark.parametrize("name,size,classes", CASES)
def test_square_matches_torchattacks(name, size, classes, seed):
    model = model_for(name)
    x, y = _data(size, classes, n=6)
    with torch.no_grad():
        y[:4] = model(x[:4]).argmax(1)
    cases = ({"n_queries": 60, "p_init": 0.8, "loss": "margin"}, {"n_queries": 40, "p_init": 0.3, "loss": "ce",
                                                                  "n_restarts": 2})
    for kw in cases if name == "small" else ({"n_queries": 25, "p_init": 0.3, "loss": "ce", "n_restarts": 2},):
        kw = {**kw, "eps": 8 / 255, "seed": seed % 1000}
        ours = square(model, x, y, **kw)
        _close(ours, torchattacks.Square(model, **kw)(x, y))
    assert (ours - x).abs().max() <= 8 / 255 + 1e-6
    t = (y + 1) % classes
    ref = torchattacks.Square(model, n_queries=15, seed=1)
    ref.set_mode_targeted_by_label(quiet=True)
    _close(square(model, x, y, n_queries=15, seed=1, target=t), ref(x, t))


def test_square_fools_the_small_net_without_gradients(seed):
    model = model_for("small")
    x, y = _data(20, 5, n=8)
    with torch.no_grad():
        y = model(x).argmax(1)
        adv = square(model, x, y, eps=16 / 255, n_queries=200, seed=seed % 1000)
        assert (model(adv).argmax(1) != y).float().mean() >= 0.5


@pytest.mark.parametrize("kwargs, match", [({"norm": "L2"}, "norm"), ({"n_queries": 0}, "n_queries"),
                                           ({"p_init": 0}, "p_init"), ({"loss": "dlr"}, "loss")])
def test_square_bad_values_are_named(kwargs, match):
    with pytest.raises(advcam.InputError, match=match):
        square(model_for("small"), *_data(20, 5, n=1), **kwargs)
