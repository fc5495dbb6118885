"""Every CAM method equals the pytorch-grad-cam class of the same name, on the paper's architectures at
odd input sizes, for the predicted class and for given targets, on freshly drawn inputs."""
import copy

import numpy as np
import pytest
import torch
from pytorch_grad_cam import (
    AblationCAM,
    EigenCAM,
    EigenGradCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_with_sign_correction

import advcam
import advcam.base_cam as base_cam
from advcam.explainers import CAM_METHODS, GRADIENT_METHODS, cams_batch, principal_projection
from advcam.models import PAPER_MODELS, build_model

PGC = {
    "gradcam": GradCAM, "hirescam": HiResCAM, "gradcam_elementwise": GradCAMElementWise,
    "gradcampp": GradCAMPlusPlus, "xgradcam": XGradCAM, "layercam": LayerCAM, "eigencam": EigenCAM,
    "eigengradcam": EigenGradCAM, "scorecam": ScoreCAM, "ablationcam": AblationCAM,
}
# odd sizes, each the smallest-ish that gives a CAM of at least 2x2
SIZES = {"vgg16": 45, "resnet50": 67, "inception_v3": 139, "xception": 71}
_models: dict = {}


def model_for(arch):
    if arch not in _models:
        with torch.random.fork_rng():  # the weights are fixed; the inputs stay freshly drawn
            torch.manual_seed(0)
            _models[arch] = build_model(arch, 5).eval()
    return _models[arch]


class SignCorrectedEigenCAM(EigenCAM):
    """pgc's EigenCAM with pgc's own sign correction (pgc issue #364: the SVD leaves the sign to chance)."""

    def get_cam_image(self, input_tensor, target_layer, target_category, activations, grads, eigen_smooth):
        return get_2d_projection_with_sign_correction(activations)


class SignCorrectedEigenGradCAM(EigenGradCAM):
    """pgc's EigenGradCAM with the same correction."""

    def get_cam_image(self, input_tensor, target_layer, target_category, activations, grads, eigen_smooth):
        return get_2d_projection_with_sign_correction(grads * activations)


def reference(method, model, layer, x, targets):
    cls = {"eigencam": SignCorrectedEigenCAM, "eigengradcam": SignCorrectedEigenGradCAM}.get(method, PGC[method])
    with cls(model=model, target_layers=[model.net.get_submodule(layer)]) as c:
        if method == "scorecam":
            c.batch_size = 64
        return c(input_tensor=x, targets=targets)


class _PinnedReLU(torch.nn.Module):
    """ReLU with the on/off pattern of another pass: x · mask."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.mask = mask

    def forward(self, x):
        return x * self.mask.to(x.dtype)


class _PinnedMaxPool(torch.nn.Module):
    """Max pooling that takes the elements another pass picked (flat indices per channel, as max_pool2d gives)."""

    def __init__(self, indices: torch.Tensor):
        super().__init__()
        self.indices = indices

    def forward(self, x):
        return x.flatten(2).gather(2, self.indices.flatten(2)).view(self.indices.shape)


def model64_pinned(arch, x):
    """The same weights in float64, held to the branch the fp32 forward of ``x`` took: every ``nn.ReLU``
    module keeps the fp32 pass's on/off pattern and every ``nn.MaxPool2d`` its picks. How far our own fp32
    map lies from this model's is that map's rounding error. Unpinned, a unit within rounding of a kink can
    land on the other side in float64: a random VGG16's ``pre_logits.act2`` held a unit at 2.7e-6 that was on
    in fp32 and off in float64 (seed 1070777803), which moved ∂y/∂A — and so Grad-CAM — by 1.4e-2, while
    ours and pgc's fp32 maps agreed to 2e-7. Kinks before the CAM layer move A only continuously (by the
    unit's own size); after it they switch gradient paths, which is why every kink is pinned. Functional
    pools (``F.max_pool2d`` inside timm's Inception blocks) are not modules and stay unpinned: they lie before
    the CAM layer."""
    model = model_for(arch)
    pins: dict[str, torch.nn.Module] = {}
    handles = []

    def pin(name: str, module: torch.nn.Module) -> None:
        # one pattern per module: a module called twice in one forward would need one per call
        assert name not in pins, f"{arch}: {name} runs twice in one forward"
        pins[name] = module

    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ReLU):
            handles.append(mod.register_forward_hook(
                lambda _m, _i, out, name=name: pin(name, _PinnedReLU(out.detach() > 0))))
        elif isinstance(mod, torch.nn.MaxPool2d):
            def pool_hook(m, inp, _out, name=name):
                _, idx = torch.nn.functional.max_pool2d(
                    inp[0].detach(), m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, return_indices=True)
                pin(name, _PinnedMaxPool(idx))
            handles.append(mod.register_forward_hook(pool_hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    pinned = copy.deepcopy(model).double()
    for name, module in pins.items():
        pinned.set_submodule(name, module)
    return pinned


def _tolerance(model64, layer, x, methods, target, ours, raw) -> dict:
    """Per method and image, what two fp32 implementations may differ by: 1e-5, plus three times our fp32 map's
    distance from ``model64``'s (:func:`model64_pinned` of ``x``: the same branch at every kink) for the gradient
    methods. A randomly initialised network can give a map that is a small difference of large terms
    (xception's XGradCAM: a raw maximum of 1e-7 against terms of 1.6e-4),
    where min-max normalisation lifts float32 rounding to 2e-5; pgc rounds differently, not wrongly. The
    perturbation methods' float64 rerun would cost K forwards again: their bound is 1e-5 plus 4e-6 per unit of
    κ = max / (max − min) of our raw map, the factor by which min-max normalisation lifts a relative rounding
    error. A random VGG16's ScoreCAM is nearly flat (raw 0.498–0.516, κ 28.5) and differed from pgc by 1.4e-5
    (seed 204722629; pgc's map 1.2e-5 from the float64 one, ours 2.3e-6); over 8 draws error / κ ≤ 5e-7."""
    tol = {m: np.full(x.shape[0], 1e-5) for m in methods}
    for m in ("scorecam", "ablationcam"):
        if m in methods:
            r = raw[m].flatten(1).double()
            span = r.amax(1) - r.amin(1)
            # a constant raw map (e.g. all zero: every weight negative) normalises to zeros in both
            kappa = torch.where(span > 0, r.amax(1) / span.clamp_min(1e-300), 1.0).numpy()
            tol[m] = 1e-5 + 4e-6 * kappa
    exact = [m for m in methods if m not in ("scorecam", "ablationcam")]
    if exact:
        ours64, _, _ = cams_batch(model64, layer, x.double(), exact, target=target)
        for m in exact:
            dev = (ours[m].double() - ours64[m].double()).abs().flatten(1).amax(1).numpy()
            tol[m] = 1e-5 + 3 * dev
    return tol


def _compare(arch, methods, n):
    model = model_for(arch)
    layer = PAPER_MODELS[arch].layer
    s = SIZES[arch]
    x = torch.rand(n, 3, s, s)
    y = torch.randint(0, 5, (n,))
    # one batch: cams_batch is what advcam.cams runs per batch, and gives the raw maps the tolerance reads
    ours, raw, _ = cams_batch(model, layer, x, methods)
    ours_y, raw_y, _ = cams_batch(model, layer, x, methods, target=y)
    # the predicted classes of the fp32 model, so the float64 rerun explains the same ones
    pred = model(x).argmax(1)
    if not {"scorecam", "ablationcam"} & set(methods):  # (their K forwards again would cost a minute)
        public = advcam.cams(model, layer, x, methods, target=y)
        assert all(torch.equal(public[m], ours_y[m]) for m in methods)
    # one pinned float64 copy serves both targets: the branch is the forward's, whatever class is explained
    exact = set(methods) - {"scorecam", "ablationcam"}
    model64 = model64_pinned(arch, x) if exact else None
    tol = _tolerance(model64, layer, x, methods, pred, ours, raw)
    tol_y = _tolerance(model64, layer, x, methods, y, ours_y, raw_y)
    for m in methods:
        assert ours[m].shape == (n, s, s) and ours[m].dtype == torch.float32
        assert ours[m].min() >= 0 and ours[m].max() <= 1
        ref = reference(m, model, layer, x, None)
        err = np.abs(ours[m].numpy() - ref).max(axis=(1, 2))
        assert (err < tol[m]).all() and (tol[m] < 1e-3).all(), (arch, m, "predicted", err, tol[m])
        ref_y = reference(m, model, layer, x, [ClassifierOutputTarget(int(c)) for c in y])
        err = np.abs(ours_y[m].numpy() - ref_y).max(axis=(1, 2))
        assert (err < tol_y[m]).all() and (tol_y[m] < 1e-3).all(), (arch, m, "given targets", err, tol_y[m])


@pytest.mark.parametrize("arch", list(SIZES))
def test_pass_methods_match_pytorch_grad_cam(arch, seed):
    _compare(arch, [m for m in CAM_METHODS if m not in ("scorecam", "ablationcam")], 3)


@pytest.mark.parametrize("arch", ["vgg16", "resnet50"])
def test_perturbation_methods_match_pytorch_grad_cam(arch, seed):
    # K forwards per image (512 for VGG16, 2048 for ResNet50's layer4): one image, small input
    _compare(arch, ["scorecam", "ablationcam"], 1)


def test_cam_is_cams(seed):
    model = model_for("resnet50")
    x = torch.rand(2, 3, 67, 67)
    one = advcam.cam(model, "layer4", x, method="layercam")
    assert torch.equal(one, advcam.cams(model, "layer4", x, ["layercam", "gradcam"])["layercam"])


def test_every_gradient_method_from_one_forward_and_one_backward(seed, monkeypatch):
    """One layer pass per batch serves all gradient methods; a forward-only request asks for no gradient."""
    calls = []
    real = base_cam.layer_pass

    def counting(*a, **k):
        calls.append(k.get("need_grad", True))
        return real(*a, **k)

    import advcam.explainers as ex

    monkeypatch.setattr(ex, "layer_pass", counting)
    model = model_for("resnet50")
    for p in model.parameters():  # pgc's references ran full backwards on this shared model
        p.grad = None
    x = torch.rand(5, 3, 67, 67)
    advcam.cams(model, "layer4", x, list(GRADIENT_METHODS) + ["eigencam"], batch_size=4)
    assert calls == [True, True]  # two batches, one pass each
    calls.clear()
    advcam.cams(model, "layer4", x, ["eigencam"], batch_size=8)
    assert calls == [False]
    assert all(p.grad is None for p in model.parameters())
    assert not model.net.layer4._forward_hooks


def test_all_zero_map_stays_zero_for_every_method(seed):
    """A layer whose activations are all zero gives all-zero maps, whatever the method."""
    torch.manual_seed(0)
    model = build_model("resnet18", 3).eval()
    with torch.no_grad():
        # layer4's last block is relu(bn2(conv2(...)) + identity): a -1e4 shift makes every output 0
        model.net.layer4[-1].bn2.weight.zero_()
        model.net.layer4[-1].bn2.bias.fill_(-1e4)
        model.net.fc.bias.copy_(torch.tensor([0.5, -0.3, 0.2]))  # AblationCAM divides by the logit
    x = torch.rand(2, 3, 64, 64)
    out = advcam.cams(model, "layer4", x, list(CAM_METHODS))
    for m, maps in out.items():
        assert torch.count_nonzero(maps) == 0, m


def test_principal_projection_matches_pgc_sign_corrected(seed):
    z = torch.randn(4, 37, 5, 3)
    ours = principal_projection(z).numpy()
    ref = get_2d_projection_with_sign_correction(z.numpy())
    assert np.abs(ours - ref).max() < 1e-4 * np.abs(ref).max()


def test_bad_inputs_name_what_is_wrong():
    model = model_for("resnet50")
    x = torch.rand(1, 3, 67, 67)
    with pytest.raises(ValueError, match=r"unknown explainer 'gradcam\+\+'.*gradcampp.*ablationcam.*saliency.*guided_gradcam"):
        advcam.cams(model, "layer4", x, ["gradcam", "gradcam++"])
    with pytest.raises(ValueError, match="unknown explainer 'score'"):
        advcam.cam(model, "layer4", x, method="score")
    with pytest.raises(TypeError, match="CAM layer 'fc' must output a 4-D tensor"):
        advcam.cam(model, "fc", x)
    assert not model.net.fc._forward_hooks


@pytest.mark.parametrize("arch", list(SIZES))
def test_network_after_the_layer_gives_the_logits(arch, seed):
    """The cut network maps the layer's activations to the model's logits, so AblationCAM recomputes
    nothing before the layer."""
    from advcam.base_cam import layer_pass
    from advcam.explainers import network_after

    model = model_for(arch)
    layer = PAPER_MODELS[arch].layer
    x = torch.rand(2, 3, SIZES[arch], SIZES[arch])
    tail = network_after(model, layer)
    assert tail is not None
    lp = layer_pass(model, layer, x, need_grad=False)
    with torch.no_grad():
        assert torch.allclose(tail(lp.acts), lp.logits, atol=1e-5, rtol=1e-5)


def test_ablationcam_without_a_cut_reruns_the_whole_network(seed, monkeypatch):
    """Where the graph cannot be cut at the layer, the layer's output is replaced in a full forward: the
    same maps."""
    import advcam.explainers as ex

    model = model_for("vgg16")
    x = torch.rand(1, 3, SIZES["vgg16"], SIZES["vgg16"])
    cut = advcam.cam(model, "features.29", x, method="ablationcam")
    monkeypatch.setattr(ex, "network_after", lambda *a: None)
    whole = advcam.cam(model, "features.29", x, method="ablationcam")
    assert (cut - whole).abs().max() < 1e-5
    assert not model.net.features[29]._forward_hooks


def test_a_model_in_train_mode_is_explained_in_eval_mode_and_left_in_train_mode(seed):
    """Every pass, ScoreCAM's masked forwards included, runs in eval mode (batch-norm running statistics,
    as pgc sets it); the batch-norm statistics are untouched and the model's mode is given back."""
    model = model_for("resnet50")
    x = torch.rand(1, 3, SIZES["resnet50"], SIZES["resnet50"])
    expected = advcam.cams(model, "layer4", x, ["scorecam", "ablationcam", "gradcam"], batch_size=256)
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    model.train()
    try:
        got = advcam.cams(model, "layer4", x, ["scorecam", "ablationcam", "gradcam"], batch_size=256)
        assert model.training
    finally:
        model.eval()
    for m in expected:
        assert torch.equal(got[m], expected[m]), m
    for k, v in model.state_dict().items():
        if "running" in k:
            assert torch.equal(v, stats[k]), k


# ---------------------------------------------------------------- the differentiable form (create_graph=True)

DIFF_METHODS = list(advcam.explainers.DIFFERENTIABLE_METHODS)


@pytest.mark.parametrize("arch", ["vgg16", "resnet50"])
def test_differentiable_maps_equal_the_plain_ones(arch, seed):
    torch.manual_seed(seed)
    model = model_for(arch)
    layer = PAPER_MODELS[arch].layer
    x = torch.rand(3, 3, SIZES[arch], SIZES[arch])
    plain = advcam.cams(model, layer, x, DIFF_METHODS)
    for p in model.parameters():  # the cached model may hold gradients from another test's full backward
        p.grad = None
    xg = x.clone().requires_grad_(True)
    diff = advcam.cams(model, layer, xg, DIFF_METHODS, create_graph=True)
    for m in DIFF_METHODS:
        assert diff[m].requires_grad, m
        torch.testing.assert_close(diff[m], plain[m], atol=1e-6, rtol=0, msg=m)
    (g,) = torch.autograd.grad(sum(v.sum() for v in diff.values()), xg)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())  # no parameter gradient


class _SmallNet(torch.nn.Module):
    """conv → ReLU → conv → ReLU (the CAM layer) → pool → linear: small enough for gradcheck in float64."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.a1 = torch.nn.ReLU()
        self.c2 = torch.nn.Conv2d(4, 5, 3, stride=2, padding=1)
        self.a2 = torch.nn.ReLU()
        self.fc = torch.nn.Linear(5, 3)

    def forward(self, x):
        a = self.a2(self.c2(self.a1(self.c1(x))))
        return self.fc(a.mean((2, 3)) + a.amax((2, 3)))  # a head that makes ∂y/∂A depend on A


@pytest.mark.parametrize("method", DIFF_METHODS)
def test_input_gradients_pass_gradcheck_in_float64(method, seed):
    torch.manual_seed(seed)
    net = advcam.models.relu_beta(_SmallNet(), 5.0).double().eval()  # smooth: finite differences see no kink
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([1])

    def f(inp):
        return advcam.cams(net, "a2", inp, [method], target, create_graph=True)[method]

    assert f(x).dtype == torch.float64
    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-5, rtol=1e-3)


def test_relu_beta_is_a_smooth_copy_that_tends_to_the_relu_model(seed):
    torch.manual_seed(seed)
    model = model_for("resnet50")
    layer = PAPER_MODELS["resnet50"].layer
    before = {k: v.clone() for k, v in model.state_dict().items()}
    smooth = advcam.models.relu_beta(model, 1e5)  # maps move ~30/β: 3e-3 at 1e4, 3e-4 at 1e5
    assert not any(isinstance(m, torch.nn.ReLU) for m in smooth.modules())
    assert sum(isinstance(m, torch.nn.ReLU) for m in model.modules()) > 0  # the original keeps its ReLUs
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    x = torch.rand(2, 3, SIZES["resnet50"], SIZES["resnet50"])
    ours, theirs = advcam.cams(smooth, layer, x, DIFF_METHODS), advcam.cams(model, layer, x, DIFF_METHODS)
    for m in DIFF_METHODS:
        torch.testing.assert_close(ours[m], theirs[m], atol=1e-3, rtol=0, msg=m)
    with pytest.raises(advcam.InputError, match="beta"):
        advcam.models.relu_beta(model, 0)


def test_methods_without_a_differentiable_form_are_named():
    model = model_for("resnet50")
    x = torch.rand(1, 3, SIZES["resnet50"], SIZES["resnet50"])
    for m in ("scorecam", "ablationcam"):
        with pytest.raises(advcam.InputError, match=f"'{m}' has no differentiable form"):
            advcam.cams(model, "layer4", x, [m], create_graph=True)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/statm"), reason="reads /proc")
def test_memory_stays_flat_over_a_thousand_calls(seed):
    """pytorch-grad-cam's most reported defect (its issues #88, #132, #195, #483): memory that grows per call."""
    torch.manual_seed(seed)
    net = _SmallNet().eval()
    x = torch.rand(2, 3, 16, 16)
    for create_graph in (False, True):
        def call():
            xg = x.clone().requires_grad_(create_graph)
            maps = advcam.cams(net, "a2", xg, ["gradcam", "eigencam"], create_graph=create_graph)
            if create_graph:
                torch.autograd.grad(maps["gradcam"].sum() + maps["eigencam"].sum(), xg)
        for _ in range(50):  # warm the allocator
            call()
        start = _rss()
        for _ in range(1000):
            call()
        assert _rss() < 1.05 * start, f"create_graph={create_graph}: RSS {start} → {_rss()} bytes"
