"""CUDA paths, run where a GPU exists (the lent device machine); skipped on CPU-only CI."""
import numpy as np
import pytest
import torch

import advcam
from advcam.attacks import apply_sign, gradient_sign
from advcam.explainers import explain_cams
from advcam.models import PAPER_MODELS, build_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(autouse=True)
def exact_fp32():
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.parametrize("arch,size", [("resnet50", 224), ("vgg16", 224), ("inception_v3", 299), ("xception", 299)])
def test_gradcam_cuda_matches_pytorch_grad_cam(arch, size, seed):
    from pytorch_grad_cam import GradCAM

    torch.manual_seed(0)
    m = build_model(arch, 10).cuda().eval()
    layer = PAPER_MODELS[arch].layer
    x = torch.rand(8, 3, size, size, device="cuda")
    ours = explain_cams(m, layer, x, ["gradcam"])["gradcam"].maps.numpy()
    with GradCAM(model=m, target_layers=[m.net.get_submodule(layer)]) as cam:
        ref = cam(input_tensor=x, targets=None)
    assert np.abs(ours - ref).max() < 1e-4
    cpu = explain_cams(m.cpu(), layer, x.cpu(), ["gradcam"])["gradcam"].maps.numpy()
    assert np.abs(ours - cpu).max() < 1e-3


def test_fgsm_cuda_matches_torchattacks(seed):
    import torchattacks

    torch.manual_seed(0)
    m = build_model("resnet50", 10).cuda().eval()
    x = torch.rand(16, 3, 224, 224, device="cuda")
    y = torch.randint(0, 10, (16,), device="cuda")
    gs = gradient_sign(m, x, y)
    for eps in (0.01, 0.1):
        ref = torchattacks.FGSM(m, eps=eps)(x, y)
        ours = apply_sign(x, gs.sign.cuda(), eps)
        # a gradient element whose sign rounding differs between summed and averaged losses is allowed
        assert (ours != ref).float().mean() < 1e-4


def test_ssim_cuda_matches_skimage(rng):
    from skimage.metrics import structural_similarity

    a = rng.random((16, 224, 224))
    b = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1)
    ours = advcam.ssim(torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()).cpu().numpy()
    ref = [structural_similarity(p, q, data_range=1.0) for p, q in zip(a, b)]
    assert np.abs(ours - ref).max() < 1e-6


def test_train_bf16_channels_last_on_cuda(tiny_store):
    from advcam.datasets import load_prepared
    from advcam.models import to_tensor_images
    from advcam.settings import TrainSettings
    from advcam.train import train_model

    ds = load_prepared(tiny_store)
    (xt, yt, _), (xv, yv, _) = ds.subset("train"), ds.subset("val")
    torch.manual_seed(0)
    m = build_model("resnet50", 4).cuda()
    r = train_model(m, to_tensor_images(xt), torch.as_tensor(yt), to_tensor_images(xv), torch.as_tensor(yv),
                    TrainSettings(epochs=3, batch_size=8), progress=False)
    assert r.history[-1]["train_loss"] < r.history[0]["train_loss"]
    assert all(v.device.type == "cpu" for v in r.state_dict.values())


def test_cli_on_cuda(tiny_store, tmp_path):
    from advcam.cli import main

    model = tmp_path / "m.pt"
    assert main(["train", "--data", str(tiny_store), "--arch", "resnet50", "--out", str(model), "--epochs", "1",
                 "--batch-size", "8", "--device", "cuda", "--no-progress"]) == 0
    sign = tmp_path / "s.h5"
    assert main(["gradient", "--model", str(model), "--data", str(tiny_store), "--out", str(sign), "--device", "cuda"]) == 0
    assert main(["attack", "--model", str(model), "--data", str(tiny_store), "--attack", "fgsm", "--eps", "0.05",
                 "--sign", str(sign), "--out", str(tmp_path / "a.h5"), "--heatmaps", str(tmp_path / "h.h5"),
                 "--device", "cuda", "--amp"]) == 0


def test_cuda_memory_stays_flat_over_a_thousand_cam_calls(seed):
    """The differentiable-CAM issue's bar on the GPU: 1,000 calls of ``cams`` and of its differentiable form (with
    the backward to x) grow CUDA allocated memory by under 5% (pytorch-grad-cam's issues #88, #132, #195, #483)."""
    torch.manual_seed(seed)
    m = build_model("resnet50", 10).cuda().eval()
    x = torch.rand(4, 3, 64, 64, device="cuda")
    for create_graph in (False, True):
        def call():
            xg = x.clone().requires_grad_(create_graph)
            maps = advcam.cams(m, "layer4", xg, ["gradcam", "eigencam"], create_graph=create_graph)
            if create_graph:
                torch.autograd.grad(maps["gradcam"].sum() + maps["eigencam"].sum(), xg)
        for _ in range(50):  # warm the caching allocator
            call()
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated()
        for _ in range(1000):
            call()
        torch.cuda.synchronize()
        assert torch.cuda.memory_allocated() < 1.05 * start, (create_graph, start, torch.cuda.memory_allocated())
