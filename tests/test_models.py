import pytest
import timm
import torch

from advcam.io.checkpoint import load_checkpoint, save_checkpoint
from advcam.models import (
    PAPER_MODELS, UnknownLayerError, UnknownModelError, WholeInputConv2d, build_model, gemm_whole_input_convs,
    resolve_layer, target_layer_name,
)


@pytest.mark.parametrize("arch,mean", [("resnet50", (0.485, 0.456, 0.406)), ("xception", (0.5, 0.5, 0.5)),
                                       ("inception_v3", (0.5, 0.5, 0.5))])
def test_normalisation_inside(arch, mean):
    m = build_model(arch, 3)
    assert torch.allclose(m.mean.flatten(), torch.tensor(mean))
    x = torch.rand(2, 3, 80, 80)
    m.eval()
    with torch.no_grad():
        ref = m.net((x - m.mean) / m.std)
        assert torch.equal(m(x), ref)
    assert m(x).shape == (2, 3)


@pytest.mark.parametrize("arch", list(PAPER_MODELS))
def test_paper_layers_exist(arch):
    m = build_model(arch, 2)
    layer = target_layer_name(arch, m)
    assert layer == PAPER_MODELS[arch].layer
    resolve_layer(m, layer)


def test_any_timm_model_gets_feature_info_layer():
    m = build_model("resnet18", 4)
    assert target_layer_name("resnet18", m) == "layer4"
    assert target_layer_name("resnet18", m, override="layer3") == "layer3"


def test_unknown_model_suggests():
    with pytest.raises(UnknownModelError, match="resnet5"):
        build_model("resnet5O", 3)


def test_unknown_layer_lists_close_names():
    m = build_model("resnet18", 2)
    with pytest.raises(UnknownLayerError, match="layer4"):
        resolve_layer(m, "layer44")


def test_checkpoint_roundtrip_weights_only(tmp_path):
    m = build_model("resnet18", 5).eval()
    path = tmp_path / "m" / "model.pt"
    save_checkpoint(path, m, {"arch": "resnet18", "num_classes": 5, "layer": "layer4", "input_size": 32})
    raw = torch.load(path, weights_only=True)
    assert raw["meta"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    m2, meta = load_checkpoint(path)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))
    assert meta["layer"] == "layer4"
    assert not list(tmp_path.glob("m/.*tmp*"))


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")


def test_pretrained_file_through_timm(tmp_path):
    src = timm.create_model("resnet18", num_classes=1000)
    f = tmp_path / "resnet18.pth"
    torch.save(src.state_dict(), f)
    m = build_model("resnet18", 4, pretrained_file=f)
    assert torch.equal(m.net.conv1.weight, src.conv1.weight)
    assert m.net.fc.out_features == 4  # classifier of another size is dropped and re-initialised
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_model("resnet18", 4, pretrained_file=tmp_path / "missing.pth")


def test_scratch_vgg_gets_fan_in_init_and_normalised_nets_keep_timms():
    torch.manual_seed(0)
    vgg = build_model("vgg16", 6).net
    for name, m in vgg.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
            want = (2 / fan_in) ** 0.5
            assert abs(m.weight.std().item() / want - 1) < 0.1, name
            assert torch.count_nonzero(m.bias) == 0, name
    # a network with batch norm is left exactly as timm built it
    torch.manual_seed(1)
    ours = build_model("resnet18", 6).net.state_dict()
    torch.manual_seed(1)
    ref = timm.create_model("resnet18", num_classes=6).state_dict()
    assert all(torch.equal(ours[k], ref[k]) for k in ref)


@pytest.mark.parametrize("channels_last", [False, True])
def test_a_kernel_over_its_whole_input_is_the_same_convolution(channels_last):
    """WholeInputConv2d (timm's VGG head fc1: a 7x7 kernel on the 7x7 pooled map) computes that case as a
    matrix product: outputs and every gradient equal F.conv2d's; other input sizes take the convolution."""
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, ()).item()))
    conv = torch.nn.Conv2d(16, 8, kernel_size=5)
    ref_w, ref_b = conv.weight.detach().clone().requires_grad_(), conv.bias.detach().clone().requires_grad_()
    gemm_whole_input_convs(conv)
    assert isinstance(conv, WholeInputConv2d) and set(conv.state_dict()) == {"weight", "bias"}
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    conv = conv.to(memory_format=fmt)
    for side in (5, 9):  # 5: the kernel covers the input → matrix product; 9: an ordinary 5x5 output
        x = torch.randn(3, 16, side, side).contiguous(memory_format=fmt).requires_grad_()
        x_ref = x.detach().clone().requires_grad_()
        y, y_ref = conv(x), torch.nn.functional.conv2d(x_ref, ref_w, ref_b)
        assert y.shape == y_ref.shape
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
        g = torch.randn_like(y_ref)
        y.backward(g)
        y_ref.backward(g)
        torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(conv.weight.grad, ref_w.grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(conv.bias.grad, ref_b.grad, rtol=1e-5, atol=1e-5)
        conv.zero_grad(set_to_none=True)
        ref_w.grad = ref_b.grad = None


def test_only_vggs_head_is_a_whole_input_convolution_at_the_default_size():
    vgg = build_model("vgg16", 3)
    assert [n for n, m in vgg.named_modules() if isinstance(m, WholeInputConv2d)] == ["net.pre_logits.fc1"]
    # a padded or 1x1 convolution is never converted (a ResNet has none to convert)
    assert not any(isinstance(m, WholeInputConv2d) for m in build_model("resnet50", 3).modules())
