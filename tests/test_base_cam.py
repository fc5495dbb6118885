"""Grad-CAM through the one CAM path (advcam.gradcam = cam(method="gradcam")) against pytorch-grad-cam 1.5, and
what advcam.base_cam shares with every method: the logit-to-layer pass, its hooks, the map's upsampling."""
import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

import advcam
from advcam.base_cam import upsample_cam
from advcam.explainers import explain_cams
from advcam.models import PAPER_MODELS, UnknownLayerError, build_model

SIZES = {"vgg16": 64, "resnet50": 64, "resnet101": 64, "inception_v3": 107, "xception": 96}
_cache: dict = {}


def explain(model, layer, x, **kw):
    """Grad-CAM through the workflow's path: :func:`explain_cams` with the one method."""
    return explain_cams(model, layer, x, ["gradcam"], **kw)["gradcam"]


def model_for(arch):
    if arch not in _cache:
        torch.manual_seed(0)
        _cache[arch] = build_model(arch, 7).eval()
    return _cache[arch]


def reference(model, layer, x, targets):
    with GradCAM(model=model, target_layers=[model.net.get_submodule(layer)]) as cam:
        return cam(input_tensor=x, targets=targets)


@pytest.mark.parametrize("arch", list(SIZES))
def test_matches_pytorch_grad_cam(arch, seed):
    model = model_for(arch)
    layer = PAPER_MODELS[arch].layer
    x = torch.rand(3, 3, SIZES[arch], SIZES[arch])
    y = torch.randint(0, 7, (3,))
    ours = advcam.gradcam(model, layer, x)
    assert ours.shape == (3, SIZES[arch], SIZES[arch])
    assert ours.min() >= 0 and ours.max() <= 1
    assert np.abs(ours.numpy() - reference(model, layer, x, None)).max() < 1e-5
    ours_true = advcam.gradcam(model, layer, x, target=y)
    ref_true = reference(model, layer, x, [ClassifierOutputTarget(int(c)) for c in y])
    assert np.abs(ours_true.numpy() - ref_true).max() < 1e-5


def test_only_logit_to_layer_backward_and_hooks_removed(seed):
    model = model_for("resnet50")
    for p in model.parameters():
        p.grad = None
    flags = [p.requires_grad for p in model.parameters()]
    x = torch.rand(2, 3, 64, 64)
    out = explain(model, "layer4", x, out_device=None)
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert not model.net.layer4._forward_hooks
    # nothing upstream of layer4 was recorded: the stored activation is a leaf
    assert out.raw.shape == (2, 2, 2) and out.logits.shape == (2, 7)


def test_hook_removed_on_error():
    model = model_for("resnet50")
    with pytest.raises(ValueError):
        explain(model, "layer4", torch.rand(2, 3, 64, 64), target=torch.tensor([0, 99]))
    assert not model.net.layer4._forward_hooks


def test_raw_cam_rebuilds_map_exactly(seed):
    model = model_for("vgg16")
    out = explain(model, "features.29", torch.rand(5, 3, 64, 64), batch_size=2)
    assert out.raw.shape == (5, 4, 4)
    assert torch.equal(upsample_cam(out.raw, (64, 64)), out.maps)


def test_all_zero_cam_stays_zero():
    raw = torch.zeros(2, 4, 4)
    raw[1, 1, 2] = 3.0
    m = upsample_cam(raw, (16, 16))
    assert torch.equal(m[0], torch.zeros(16, 16))
    assert m[1].max() == pytest.approx(1.0, abs=1e-6)


def test_batching_is_invariant(seed):
    model = model_for("resnet50")
    x = torch.rand(5, 3, 64, 64)
    a = explain(model, "layer4", x, batch_size=5).maps
    b = explain(model, "layer4", x, batch_size=2).maps
    assert torch.allclose(a, b, atol=1e-5)


def test_uint8_input_equals_float():
    model = model_for("resnet50")
    x8 = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    assert torch.equal(explain(model, "layer4", x8).maps, explain(model, "layer4", x8.float() / 255).maps)


def test_unknown_layer():
    with pytest.raises(UnknownLayerError, match="layer5"):
        advcam.gradcam(model_for("resnet50"), "layer5", torch.rand(1, 3, 64, 64))
