"""Side-by-side benchmark of advcam's hot stages against the libraries a user would otherwise use and
against the floor the hardware allows, all measured in one run on the same inputs.

    python -m bench                       # CPU: small sizes, a few minutes
    python -m bench --device cuda         # GPU: native sizes (224/299), batch 64

Prints a markdown table of throughputs and ratios and writes it (plus JSON) under bench/results/.
Only ratios measured side by side mean anything: the machines are shared and noisy.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

import advcam  # noqa: E402
from advcam.attacks import apply_sign, gradient_sign  # noqa: E402
from advcam.explainers import explain_cams  # noqa: E402
from advcam.models import PAPER_MODELS, build_model, frozen_parameters  # noqa: E402
from advcam.precision import choose_precision, cpu_model, onednn_isa_cap  # noqa: E402
from advcam.similarity import ssim  # noqa: E402
from advcam.settings import TrainSettings  # noqa: E402
from advcam.train import train_model  # noqa: E402


def explain(model, layer, x, **kw):
    """Grad-CAM as the workflow's explain and attack stages run it: explain_cams with the one method."""
    return explain_cams(model, layer, x, ["gradcam"], **kw)["gradcam"]

CPU_SIZES = {"resnet50": 128, "vgg16": 64, "inception_v3": 171, "xception": 112}
GPU_SIZES = {"resnet50": 224, "vgg16": 224, "inception_v3": 299, "xception": 299}


def cpu_class() -> str:
    """The CPU's model name and the ISA oneDNN runs at (and the cap, when ONEDNN_MAX_CPU_ISA sets one)."""
    model = cpu_model()
    amx = "AMX" if torch.cpu._is_amx_tile_supported() else "no AMX"
    cap = onednn_isa_cap()
    return f"{model}, {torch.backends.cpu.get_cpu_capability()} ({amx}){f', ONEDNN_MAX_CPU_ISA={cap}' if cap else ''}"


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, dev, warmup: int = 1, iters: int = 3) -> float:
    """Seconds per call of ``fn``: the fastest of ``iters`` calls after ``warmup`` calls (the least-disturbed
    run on a shared machine; every row, ours, the references and the floors, is timed the same way)."""
    for _ in range(warmup):
        fn()
    sync(dev)
    ts = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        sync(dev)
        ts.append(time.perf_counter() - t)
    return min(ts)


def _skimage_pair(args):
    from skimage.metrics import structural_similarity

    a, b = args
    return structural_similarity(a, b, data_range=1.0)


def _skimage_chunk(pairs):
    return [_skimage_pair(p) for p in pairs]


class Bench:
    def __init__(self, dev: torch.device, batch: int, sizes: dict, eps: list[float], iters: int):
        self.dev, self.batch, self.sizes, self.eps, self.iters = dev, batch, sizes, eps, iters
        self.rows: list[dict] = []
        self.forward_floor: dict[str, float] = {}  # arch → seconds of a bare forward of one batch (gradcam stage)

    def row(self, stage, model, what, seconds, n, unit="img/s", **extra):
        r = {"stage": stage, "model": model, "what": what, "seconds": seconds, "throughput": n / seconds, "unit": unit, **extra}
        self.rows.append(r)
        print(f"  {stage:<10} {model:<13} {what:<34} {n / seconds:>10.4g} {unit}", flush=True)
        return r

    def data(self, arch):
        s = self.sizes[arch]
        g = torch.Generator().manual_seed(0)
        x = torch.rand(self.batch, 3, s, s, generator=g).to(self.dev)
        y = torch.randint(0, 10, (self.batch,), generator=g).to(self.dev)
        return x, y

    def model(self, arch):
        """The model as the attack/explain stages run it: eval mode, channels_last, on the device."""
        torch.manual_seed(0)
        return build_model(arch, 10).to(self.dev).eval().to(memory_format=torch.channels_last)

    # ---------------------------------------------------------------- stages
    def gradcam(self, arch, m, x, y):
        from pytorch_grad_cam import GradCAM

        layer = PAPER_MODELS[arch].layer
        n = x.shape[0]
        it = self.iters

        def floor():
            # the least any Grad-CAM needs: one inference forward, no autograd recording at all
            with torch.no_grad():
                m(x)

        def ours():
            explain(m, layer, x, batch_size=n, out_device=None)

        def ours_host():
            explain(m, layer, x, batch_size=n)

        def forward_frozen():
            with frozen_parameters(m), torch.enable_grad():
                m(x)

        cam = GradCAM(model=m, target_layers=[m.net.get_submodule(layer)])

        def ref():
            cam(input_tensor=x, targets=None)

        t_nograd = timed(floor, self.dev, iters=it)
        t_ours = timed(ours, self.dev, iters=it)
        t_host = timed(ours_host, self.dev, iters=it)
        t_frozen = timed(forward_frozen, self.dev, iters=it)
        t_ref = timed(ref, self.dev, iters=it)
        cam.activations_and_grads.release()
        # frozen parameters and an input that needs no grad record nothing either, and for some models
        # (xception's depthwise convolutions on the CPU) that path is the faster one: the floor is the faster
        t_floor = min(t_nograd, t_frozen)
        self.forward_floor[arch] = t_floor
        self.row("gradcam", arch, "bare forward, fastest of no-grad / frozen (floor)", t_floor, n)
        self.row("gradcam", arch, "  no-grad forward", t_nograd, n)
        self.row("gradcam", arch, "advcam explain", t_ours, n, vs_floor=t_floor / t_ours, vs_ref=t_ref / t_ours)
        self.row("gradcam", arch, "advcam explain + copy to host", t_host, n, vs_floor=t_floor / t_host, vs_ref=t_ref / t_host)
        self.row("gradcam", arch, "  part: forward, parameters frozen", t_frozen, n)
        self.row("gradcam", arch, "pytorch-grad-cam GradCAM", t_ref, n)
        if self.dev.type == "cuda":
            xs = x[: min(n, 16)]
            fp32 = explain(m, layer, xs).maps
            bf16 = explain(m, layer, xs, amp=True).maps
            self.rows.append({"stage": "gradcam", "model": arch, "what": "bf16 max |Δmap| vs fp32",
                              "value": float((fp32 - bf16).abs().max())})
            t_bf16 = timed(lambda: explain(m, layer, x, batch_size=n, amp=True, out_device=None), self.dev, iters=it)
            self.row("gradcam", arch, "advcam explain bf16", t_bf16, n, vs_floor=t_floor / t_bf16,
                     max_abs_diff_vs_fp32=float((fp32 - bf16).abs().max()))

    def cams(self, arch, m, x, y, perturbation: bool = False):
        """Every CAM method: ours one at a time and all gradient methods from one pass, against the
        pytorch-grad-cam class of the same name at the same batch (and, with ``perturbation``, ScoreCAM
        and AblationCAM on two images at pgc's default batch sizes)."""
        import pytorch_grad_cam as pgc

        from advcam.explainers import CAM_METHODS, GRADIENT_METHODS, cams_batch

        classes = {"gradcam": pgc.GradCAM, "hirescam": pgc.HiResCAM, "gradcam_elementwise": pgc.GradCAMElementWise,
                   "gradcampp": pgc.GradCAMPlusPlus, "xgradcam": pgc.XGradCAM, "layercam": pgc.LayerCAM,
                   "eigencam": pgc.EigenCAM, "eigengradcam": pgc.EigenGradCAM, "scorecam": pgc.ScoreCAM,
                   "ablationcam": pgc.AblationCAM}
        layer = PAPER_MODELS[arch].layer
        n, it = x.shape[0], self.iters
        pass_methods = list(GRADIENT_METHODS) + ["eigencam"]
        t_one = timed(lambda: cams_batch(m, layer, x, ["gradcam"]), self.dev, iters=it)
        t_all = timed(lambda: cams_batch(m, layer, x, pass_methods), self.dev, iters=it)
        self.row("cams", arch, "advcam gradcam alone", t_one, n)
        self.row("cams", arch, f"advcam all {len(pass_methods)} pass methods at once", t_all, n,
                 ours_over_gradcam=t_all / t_one, target="≤ 1.3x gradcam")
        methods = [c for c in CAM_METHODS if perturbation or c in pass_methods]
        for meth in methods:
            xs = x if meth in pass_methods else x[:2]
            k = len(xs)
            ref = classes[meth](model=m, target_layers=[m.net.get_submodule(layer)])
            # K forwards per image: one timed call, no warm-up (the first of thousands of forwards is noise)
            reps = dict(warmup=0, iters=1) if k < n else dict(iters=it)
            t_ours = timed(lambda: cams_batch(m, layer, xs, [meth], batch_size=64), self.dev, **reps)
            t_ref = timed(lambda: ref(input_tensor=xs, targets=None), self.dev, **reps)
            ref.activations_and_grads.release()
            self.row("cams", arch, f"advcam {meth}", t_ours, k, vs_ref=t_ref / t_ours,
                     **({"target": "≥ 3x pgc (CPU), ≥ 8x (GPU)"} if meth in GRADIENT_METHODS else
                        {"target": "≥ 5x pgc (GPU)"} if meth in ("scorecam", "ablationcam") else {}))
            self.row("cams", arch, f"  pytorch-grad-cam {classes[meth].__name__}", t_ref, k)

    def attributions(self, arch, m, x, y, n_steps: int = 16, nt_samples: int = 4):
        """Every gradient attribution, ours (``advcam.attribution``) against Captum's class of the same name at the
        same batch: ``2N`` rows per pass for integrated_gradients and smoothgrad (Captum's ``internal_batch_size``
        and ``nt_samples_batch_size``), the N images for the others; the floor is the forward+backward passes to
        the input the method needs (``advcam.attributions.input_gradients`` on the same rows)."""
        from captum.attr import (GuidedBackprop, GuidedGradCam, InputXGradient, IntegratedGradients, NoiseTunnel,
                                 Saliency)

        from advcam.attributions import ATTRIBUTION_METHODS, input_gradients

        layer = PAPER_MODELS[arch].layer
        n, it, rows = x.shape[0], self.iters, 2 * x.shape[0]
        t = m(x).argmax(1).detach()
        big = torch.cat([x] * (rows // n))
        t_pass = timed(lambda: input_gradients(m, big, torch.cat([t] * (rows // n))), self.dev, iters=it)
        t_one = timed(lambda: input_gradients(m, x, t), self.dev, iters=it)
        passes = {"integrated_gradients": n_steps * n / rows, "smoothgrad": nt_samples * n / rows}
        refs = {
            "saliency": lambda: Saliency(m).attribute(x, target=t),
            "inputxgradient": lambda: InputXGradient(m).attribute(x, target=t),
            "integrated_gradients": lambda: IntegratedGradients(m).attribute(x, target=t, n_steps=n_steps,
                                                                              internal_batch_size=rows),
            "smoothgrad": lambda: NoiseTunnel(Saliency(m)).attribute(x, nt_type="smoothgrad", target=t,
                                                                     nt_samples=nt_samples, stdevs=0.15,
                                                                     nt_samples_batch_size=rows // n),
            "guided_backprop": lambda: GuidedBackprop(m).attribute(x, target=t),
            "guided_gradcam": lambda: GuidedGradCam(m, m.net.get_submodule(layer)).attribute(x, target=t),
        }
        for meth in ATTRIBUTION_METHODS:
            kw = {"integrated_gradients": dict(n_steps=n_steps, batch_size=rows),
                  "smoothgrad": dict(nt_samples=nt_samples, stdevs=0.15, batch_size=rows),
                  "guided_gradcam": dict(layer=layer)}.get(meth, {})
            t_ours = timed(lambda: advcam.attribution(m, x, meth, t, **kw), self.dev, iters=it)
            t_ref = timed(refs[meth], self.dev, iters=it)
            floor = t_pass * passes[meth] if meth in passes else t_one
            self.row("attributions", arch, f"advcam {meth}", t_ours, n, vs_ref=t_ref / t_ours, ours_over_floor=t_ours / floor,
                     **({"target": "≥ 2x Captum (CPU)"} if meth == "integrated_gradients" else {}))
            self.row("attributions", arch, f"  Captum {meth}", t_ref, n)

    def fgsm(self, arch, m, x, y):
        import torchattacks

        n, E = x.shape[0], len(self.eps)
        it = self.iters

        def floor():
            with frozen_parameters(m), torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                torch.autograd.grad(torch.nn.functional.cross_entropy(m(xg), y, reduction="sum"), xg)

        def ours_one():
            gs = gradient_sign(m, x, y, batch_size=n, out_device=None)
            apply_sign(x, gs.sign, self.eps[-1])

        def ours_all():
            gs = gradient_sign(m, x, y, batch_size=n, out_device=None)
            for e in self.eps:
                apply_sign(x, gs.sign, e)

        atks = {e: torchattacks.FGSM(m, eps=e) for e in self.eps}

        def ref_one():
            atks[self.eps[-1]](x, y)

        def ref_all():
            for e in self.eps:
                atks[e](x, y)

        t_floor = timed(floor, self.dev, iters=it)
        t1, tr1 = timed(ours_one, self.dev, iters=it), timed(ref_one, self.dev, iters=it)
        tE, trE = timed(ours_all, self.dev, iters=it), timed(ref_all, self.dev, iters=it)
        self.row("fgsm", arch, "fwd+bwd to input (floor)", t_floor, n)
        self.row("fgsm", arch, "advcam, one ε", t1, n, vs_floor=t_floor / t1, vs_ref=tr1 / t1)
        self.row("fgsm", arch, "torchattacks FGSM, one ε", tr1, n)
        self.row("fgsm", arch, f"advcam, {E} ε (one gradient)", tE, n * E, unit="img·ε/s", vs_ref=trE / tE, target=0.9 * E)
        self.row("fgsm", arch, f"torchattacks FGSM × {E} ε", trE, n * E, unit="img·ε/s")

    def iterative(self, arch, m, x, y, steps: int = 5, eps: float = 0.03, alpha: float = 0.01):
        """BIM, MI-FGSM, PGD (untargeted, and BIM targeted) against torchattacks at equal batch and steps, and
        against the floor: a bare loop of ``steps`` forward + input-backward passes (parameters frozen, as ours)."""
        import torchattacks

        n, it = x.shape[0], self.iters
        t = (y + 1) % 10

        def floor():
            adv = x.detach()
            with frozen_parameters(m), torch.enable_grad():
                for _ in range(steps):
                    xg = adv.requires_grad_(True)
                    (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(m(xg), y, reduction="sum"), xg)
                    adv = (adv.detach() + alpha * g.sign()).clamp_(0, 1)

        t_floor = timed(floor, self.dev, iters=it)
        self.row("iterative", arch, f"{steps} × fwd+bwd to input (floor)", t_floor, n)
        cases = [
            ("bim", lambda: advcam.bim(m, x, y, eps, alpha, steps), torchattacks.BIM(m, eps, alpha, steps)),
            ("mifgsm", lambda: advcam.mifgsm(m, x, y, eps, alpha, steps), torchattacks.MIFGSM(m, eps, alpha, steps)),
            ("pgd", lambda: advcam.pgd(m, x, y, eps, alpha, steps, random_start=False),
             torchattacks.PGD(m, eps, alpha, steps, random_start=False)),
        ]
        targeted = torchattacks.BIM(m, eps, alpha, steps)
        targeted.set_mode_targeted_by_label(quiet=True)
        cases.append(("bim targeted", lambda: advcam.bim(m, x, y, eps, alpha, steps, target=t), targeted))
        for name, ours, ref in cases:
            label = y if "targeted" not in name else t
            t_ours = timed(ours, self.dev, iters=it)
            t_ref = timed(lambda: ref(x, label), self.dev, iters=it)
            self.row("iterative", arch, f"advcam {name}, {steps} steps", t_ours, n, vs_floor=t_floor / t_ours,
                     vs_ref=t_ref / t_ours, target="≥ 0.9 × floor, ≥ 1 × torchattacks")
            self.row("iterative", arch, f"torchattacks {name}", t_ref, n)

    def l2(self, arch, m, x, y, steps: int = 5):
        """PGD-L2, CW, DeepFool, APGD and Square against torchattacks at equal batch and steps, and against the
        floor: the same passes bare. The attacks stop early (CW on its cost, DeepFool and Square per image once
        fooled, APGD on the images left), so each floor replays the forwards the attack made — their batch sizes,
        recorded by a hook — each followed by its backward passes (one to the input; DeepFool's C, its Jacobian;
        Square none)."""
        import copy

        import torchattacks

        from advcam.autoattack import apgd, square
        from advcam.l2_attacks import cw, deepfool, pgdl2

        n, it = x.shape[0], self.iters
        # torchattacks' PGDL2 views the gradient (a channels_last model's has other strides and fails there; ours
        # run on either): every row of this stage uses a contiguous copy
        m = copy.deepcopy(m).to(memory_format=torch.contiguous_format)
        c = int(m(x[:1]).shape[1])

        def record(fn) -> list[tuple[int, bool]]:
            """(batch size, grad enabled) of every forward of ``m`` that ``fn`` makes."""
            calls: list[tuple[int, bool]] = []
            h = m.register_forward_pre_hook(lambda _m, a: calls.append((a[0].shape[0], torch.is_grad_enabled())))
            try:
                fn()
            finally:
                h.remove()
            return calls

        def replay(calls, backwards: int):
            with frozen_parameters(m):
                for b, grad in calls:
                    with torch.set_grad_enabled(grad):
                        xg = x[:b].detach().requires_grad_(grad)
                        out = m(xg)
                        for j in range(backwards if grad else 0):
                            torch.autograd.grad(out[:, j].sum(), xg, retain_graph=j + 1 < backwards)

        yc = m(x).argmax(1).detach()  # the attacks that stop once fooled attack correctly classified images
        cases = [
            ("pgdl2", 1, lambda: pgdl2(m, x, y, 1.0, 0.2, steps, random_start=False),
             lambda: torchattacks.PGDL2(m, 1.0, 0.2, steps, random_start=False)(x, y)),
            ("cw", 1, lambda: cw(m, x, y, steps=steps), lambda: torchattacks.CW(m, steps=steps)(x, y)),
            ("deepfool", c, lambda: deepfool(m, x, yc, steps=steps),
             lambda: torchattacks.DeepFool(m, steps=steps)(x, yc)),
            ("apgd", 1, lambda: apgd(m, x, yc, eps=8 / 255, steps=steps),
             lambda: torchattacks.APGD(m, eps=8 / 255, steps=steps)(x, yc)),
            ("square", 0, lambda: square(m, x, yc, n_queries=10 * steps),
             lambda: torchattacks.Square(m, n_queries=10 * steps)(x, yc)),
        ]
        for name, backwards, ours, ref in cases:
            calls = record(ours)
            t_floor = timed(lambda: replay(calls, backwards), self.dev, iters=it)
            what = f"{10 * steps} queries" if name == "square" else f"{steps} steps"
            self.row("l2", arch, f"{name}: its {len(calls)} forwards (+{backwards} bwd each), bare (floor)", t_floor, n)
            t_ours = timed(ours, self.dev, iters=it)
            t_ref = timed(ref, self.dev, iters=it)
            self.row("l2", arch, f"advcam {name}, {what}", t_ours, n, vs_floor=t_floor / t_ours, vs_ref=t_ref / t_ours,
                     target="≥ 0.9 × floor, ≥ 1 × torchattacks")
            self.row("l2", arch, f"torchattacks {name}", t_ref, n)

    def explanation(self, arch, m, x, y, steps: int = 5, eps: float = 0.03, alpha: float = 0.01):
        """The attacks on the explanation against a minimal loop of the same passes (the clean Grad-CAM, ``steps``
        differentiable Grad-CAM steps — forward, logit→layer backward with a graph, then → input — and one plain
        Grad-CAM of the result to judge it), and one differentiable step's cost as a ratio to one Grad-CAM (no reference library
        has these attacks)."""
        from advcam.explainers import differentiable_cams
        from advcam.explanation_attacks import dual_attack, explain_attack, map_dissimilarity

        n, it, layer = x.shape[0], self.iters, PAPER_MODELS[arch].layer
        clean = explain(m, layer, x, out_device=None).maps

        def diff_step(adv, sign):
            xg = adv.detach().requires_grad_(True)
            with frozen_parameters(m), torch.enable_grad():
                maps, logits = differentiable_cams(m, layer, xg, ["gradcam"])
                loss = map_dissimilarity(maps["gradcam"], clean).sum()
                if sign < 0:
                    loss = loss - torch.nn.functional.cross_entropy(logits, y, reduction="sum")
                (g,) = torch.autograd.grad(loss, xg)
            return (x + (adv.detach() + sign * alpha * g.sign() - x).clamp(-eps, eps)).clamp(0, 1)

        def floor(sign):
            explain(m, layer, x, out_device=None)  # the clean map the attack compares with
            adv = x
            for _ in range(steps):
                adv = diff_step(adv, sign)
            explain(m, layer, adv, out_device=None)

        t_cam = timed(lambda: explain(m, layer, x, out_device=None), self.dev, iters=it)
        t_step = timed(lambda: diff_step(x, 1), self.dev, iters=it)
        self.row("explanation", arch, "one differentiable Grad-CAM step", t_step, n, ours_over_gradcam=t_step / t_cam)
        for name, sign, ours in (
            ("explain", 1, lambda: explain_attack(m, layer, x, y, eps, alpha, steps, random_start=False)),
            ("dual", -1, lambda: dual_attack(m, layer, x, y, eps, alpha, steps, lam=1.0)),
        ):
            t_floor = timed(lambda: floor(sign), self.dev, iters=it)
            self.row("explanation", arch, f"{steps} differentiable steps + 2 Grad-CAMs (floor)", t_floor, n)
            t_ours = timed(ours, self.dev, iters=it)
            self.row("explanation", arch, f"advcam {name}, {steps} steps", t_ours, n, vs_floor=t_floor / t_ours,
                     target="≥ 0.9 × floor")

    def pipeline(self, arch, m, x, y):
        """Gradient, E attacks, clean + E adversarial CAMs, scoring E pairs per image."""
        from pytorch_grad_cam import GradCAM
        import torchattacks

        layer = PAPER_MODELS[arch].layer
        n, E = x.shape[0], len(self.eps)
        it = max(1, self.iters - 1)

        def grad_floor():
            with frozen_parameters(m), torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                torch.autograd.grad(torch.nn.functional.cross_entropy(m(xg), y, reduction="sum"), xg)

        def fwd():
            with torch.no_grad():
                m(x)

        def ours():
            gs = gradient_sign(m, x, y, batch_size=n, out_device=None)
            clean = explain(m, layer, x, batch_size=n, out_device=None).maps
            for e in self.eps:
                adv = explain(m, layer, apply_sign(x, gs.sign, e), batch_size=n, out_device=None)
                ssim(clean, adv.maps)

        cam = GradCAM(model=m, target_layers=[m.net.get_submodule(layer)])

        def ref():
            from skimage.metrics import structural_similarity

            clean = cam(input_tensor=x, targets=None)
            for e in self.eps:
                xa = torchattacks.FGSM(m, eps=e)(x, y)
                adv = cam(input_tensor=xa, targets=None)
                [structural_similarity(a, b, data_range=1.0) for a, b in zip(clean, adv)]

        # one gradient plus 1 + E bare forwards, each at its fastest (the forward as in the gradcam stage)
        t_fwd = self.forward_floor.get(arch) or timed(fwd, self.dev, iters=it)
        t_floor = timed(grad_floor, self.dev, iters=it) + (1 + E) * t_fwd
        t_ours = timed(ours, self.dev, iters=it)
        t_ref = timed(ref, self.dev, warmup=0, iters=1)
        cam.activations_and_grads.release()
        self.row("pipeline", arch, f"1 fwd+bwd + {1 + E} fwd (floor)", t_floor, n)
        self.row("pipeline", arch, f"advcam ({E} ε)", t_ours, n, ours_over_floor=t_ours / t_floor, vs_ref=t_ref / t_ours)
        self.row("pipeline", arch, "pytorch-grad-cam+torchattacks+skimage", t_ref, n)

    def train(self, arch):
        s = self.sizes[arch]
        bs = self.batch
        steps = 6 if self.dev.type == "cpu" else 40
        torch.manual_seed(0)
        m = build_model(arch, 10).to(self.dev)
        n = bs * steps
        g = torch.Generator().manual_seed(0)
        x8 = torch.randint(0, 256, (n, 3, s, s), dtype=torch.uint8, generator=g)
        y = torch.randint(0, 10, (n,), generator=g)
        empty = torch.empty(0, 3, s, s, dtype=torch.uint8)
        # precision and layout as the train stage picks them on this machine (the CPU probe runs here)
        prec = choose_precision(m, self.dev, s)
        amp, fmt = prec.amp, prec.memory_format()
        once = TrainSettings(epochs=1, batch_size=bs, warmup_epochs=0)
        train_model(m, x8[: bs * 2], y[: bs * 2], empty, torch.empty(0, dtype=torch.long), once, precision=prec,
                    progress=False)  # warm-up
        # the training loop itself (without the final copy of the weights), fastest of two runs
        t_ours = min(train_model(m, x8, y, empty, torch.empty(0, dtype=torch.long), once, precision=prec,
                                 progress=False).history[0]["seconds"] for _ in range(2))
        # the same step (same precision, layout and fused optimizer) on one batch already on the device
        m = m.to(memory_format=fmt).train()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.05, fused=True)
        xb = (x8[:bs].to(self.dev).float() / 255).contiguous(memory_format=fmt)
        yb = y[:bs].to(self.dev)

        def step():
            with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=amp):
                out = m(xb)
            loss = torch.nn.functional.cross_entropy(out.float(), yb, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def loop():
            for _ in range(steps):
                step()

        t_dev = timed(loop, self.dev, warmup=1, iters=2)
        self.row("train", arch, f"step on a batch already on device, {prec.name} (floor)", t_dev, n)
        self.row("train", arch, "advcam train_model (data path incl.)", t_ours, n, vs_floor=t_dev / t_ours, target=0.9,
                 precision=prec.describe())

    def ssim(self, n_pairs: int, size: int):
        rng = np.random.default_rng(0)
        a = rng.random((n_pairs, size, size)).astype(np.float32)
        b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1).astype(np.float32)
        ta, tb = torch.from_numpy(a).to(self.dev), torch.from_numpy(b).to(self.dev)
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        pairs = list(zip(a64, b64))
        t_ours = timed(lambda: ssim(ta, tb), self.dev, iters=self.iters)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        t_ours1 = timed(lambda: ssim(ta.cpu(), tb.cpu()), torch.device("cpu"), iters=self.iters)
        torch.set_num_threads(threads)
        t_ref = timed(lambda: _skimage_chunk(pairs), torch.device("cpu"), warmup=0, iters=1)
        cores = os.cpu_count() or 1
        chunks = [pairs[i::cores] for i in range(cores)]
        with mp.get_context("fork").Pool(cores) as pool:
            t_pool = timed(lambda: pool.map(_skimage_chunk, chunks), torch.device("cpu"), warmup=1, iters=1)
        u = "pairs/s"
        self.row("ssim", f"{size}²", f"advcam ssim on {self.dev.type}", t_ours, n_pairs, unit=u, vs_ref=t_ref / t_ours,
                 vs_pool=t_pool / t_ours)
        self.row("ssim", f"{size}²", "advcam ssim, CPU, 1 thread", t_ours1, n_pairs, unit=u, vs_ref=t_ref / t_ours1)
        self.row("ssim", f"{size}²", "skimage loop, 1 process", t_ref, n_pairs, unit=u)
        self.row("ssim", f"{size}²", f"skimage, {cores} processes", t_pool, n_pairs, unit=u)


#: a stage may beat its floor by at most this factor (timing noise); beyond it the floor is not a floor
FLOOR_SLACK = 1.1


def floor_violations(rows: list[dict]) -> list[str]:
    """Rows whose stage ran faster than its floor by more than ``FLOOR_SLACK``: each such floor is wrong
    (it does more than the least work) or was measured differently from the stage."""
    bad = []
    for r in rows:
        speedup = r.get("vs_floor", 1 / r["ours_over_floor"] if "ours_over_floor" in r else None)
        if speedup is not None and speedup > FLOOR_SLACK:
            bad.append(f"{r['stage']} {r['model']} '{r['what']}' runs {speedup:.2f}x faster than its floor")
    return bad


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", "| stage | model | what | throughput | ratios |", "|---|---|---|---|---|"]
    for r in rows:
        if "throughput" not in r:
            lines.append(f"| {r['stage']} | {r['model']} | {r['what']} | {r['value']:.2e} | |")
            continue
        ratios = []
        for k, label in (("vs_floor", "× floor"), ("ours_over_floor", "time / floor"), ("vs_ref", "× reference"),
                         ("ours_over_gradcam", "time / gradcam alone"),
                         ("vs_pool", "× skimage all cores"), ("target", "target")):
            if k in r:
                ratios.append(f"{r[k]}" if isinstance(r[k], str) else f"{r[k]:.2f} {label}")
        tp = f"{r['throughput']:,.1f}" if r["throughput"] >= 10 else f"{r['throughput']:.3g}"
        lines.append(f"| {r['stage']} | {r['model']} | {r['what']} | {tp} {r['unit']} | {'; '.join(ratios)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: 64 on GPU, 8 on CPU)")
    p.add_argument("--models", nargs="+", default=None, help="subset of resnet50 vgg16 inception_v3 xception")
    p.add_argument("--stages", nargs="+",
                   default=["gradcam", "cams", "fgsm", "iterative", "l2", "explanation", "ssim", "train", "pipeline"],
                   help="gradcam cams cams_perturbation attributions fgsm iterative l2 explanation ssim train pipeline "
                        "(attributions: the six gradient attributions against Captum's; l2: PGD-L2, CW, "
                        "DeepFool, APGD, Square; explanation: the "
                        "keep-label and dual attacks on the map; cams_perturbation: ScoreCAM and "
                        "AblationCAM, K forwards per image: minutes on a CPU)")
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--out", default=None, help="output prefix (default: bench/results/<device>-<date>)")
    args = p.parse_args(argv)
    dev = advcam.models.pick_device(args.device)
    gpu = dev.type == "cuda"
    if gpu:
        # TF32 tensor-core math for fp32 convolutions and matmuls, as the reference figures were measured
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cuda.matmul.allow_tf32 = True
    sizes = GPU_SIZES if gpu else CPU_SIZES
    batch = args.batch or (64 if gpu else 8)
    iters = args.iters or 5  # fastest of 5: fewer let noise on a shared 2-core machine flip the floor check
    models = args.models or list(sizes)
    b = Bench(dev, batch, sizes, [0.01, 0.05, 0.075, 0.1], iters)
    name = torch.cuda.get_device_name(dev) if gpu else cpu_class()
    import timm

    versions = {"torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version(), "advcam": advcam.__version__}
    from importlib.metadata import PackageNotFoundError, version

    for mod, dist in (("pytorch_grad_cam", "grad-cam"), ("torchattacks", "torchattacks"), ("skimage", "scikit-image"),
                      ("captum", "captum")):
        try:
            versions[mod] = version(dist)
        except PackageNotFoundError:
            versions[mod] = "missing"
    print(f"device {name}; batch {batch}; fp32; {versions}", flush=True)
    t_start = time.perf_counter()
    for arch in models:
        x, y = b.data(arch)
        m = b.model(arch)
        if "gradcam" in args.stages:
            b.gradcam(arch, m, x, y)
        if "cams" in args.stages or "cams_perturbation" in args.stages:
            b.cams(arch, m, x, y, perturbation="cams_perturbation" in args.stages)
        if "attributions" in args.stages:
            b.attributions(arch, m, x, y)
        if "fgsm" in args.stages:
            b.fgsm(arch, m, x, y)
        if "iterative" in args.stages:
            b.iterative(arch, m, x, y)
        if "l2" in args.stages:
            b.l2(arch, m, x, y)
        if "explanation" in args.stages:
            b.explanation(arch, m, x, y)
        if "pipeline" in args.stages:
            b.pipeline(arch, m, x, y)
        del m
        if "train" in args.stages:
            b.train(arch)
        if gpu:
            torch.cuda.empty_cache()
    if "ssim" in args.stages:
        b.ssim(256 if gpu else 64, 224 if gpu else 128)
    date = time.strftime("%Y-%m-%d")
    header = (f"## advcam bench — {name} ({dev.type}), {date}\n\nbatch {batch}, fp32 unless stated"
              f"{' (TF32 tensor cores allowed)' if gpu else ''}, sizes "
              f"{ {k: sizes[k] for k in models} }, ε = {b.eps}; versions: {versions}; "
              f"{os.cpu_count()} CPU cores; {time.perf_counter() - t_start:.0f} s")
    bad = floor_violations(b.rows)
    if bad:
        header += "\n\n**FLOOR CHECK FAILED** (a stage beat its floor by more than " + f"{FLOOR_SLACK}x): " + "; ".join(bad)
    md = markdown(b.rows, header)
    print("\n" + md)
    out = Path(args.out or Path(__file__).parent / "results" / f"{'gpu' if gpu else 'cpu'}-{date}")
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.md").write_text(md)
    Path(f"{out}.json").write_text(json.dumps({"device": name, "batch": batch, "sizes": sizes, "versions": versions,
                                               "rows": b.rows}, indent=2, default=float))
    if bad:
        print("\nFLOOR CHECK FAILED:\n  " + "\n  ".join(bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
