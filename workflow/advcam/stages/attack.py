"""The gradient and attack stages: files in, :mod:`advcam.attacks` in between, files out.

* gradient: the FGSM input-gradient sign of every test image, once per model (every ε is then a cheap step);
* attack: the adversarial test set of one attack and ε, classified (and, when asked, explained in the same
  forward pass) by the model; or, for transfer, another model's adversarial images classified and
  explained by this one. The attack file stores the predictions and, for the iterative and targeted
  attacks, the perturbation itself (``delta``), which the explain stage and transfer targets re-apply.
"""
from __future__ import annotations

import os
from typing import Mapping

import numpy as np
import torch

from ..attack_registry import REGISTRY, craft
from ..attacks import GradientSign, gradient_sign, perturb, target_classes
from ..base_cam import CamOutput
from ..batching import batches
from ..errors import InputError
from ..explainers import explain_cams
from ..io.attack_file import h5_keys, stored_perturbation
from ..io.heatmap_file import heatmap_attrs, require_finite, write_heatmaps
from ..io.store import provenance, read_attrs, read_h5, write_h5
from ..models import predict
from ..settings import ATTACK_PARAMS, AttackSettings, AttributionSettings, CamSettings, SettingsError
from .runtime import load_for_inference, replicate_of, test_set

__all__ = ["run_gradient", "run_attack"]


def run_gradient(model_path: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike, *, batch_size: int = 64,
                 device: str | torch.device = "cpu", meta: Mapping[str, str] | None = None) -> GradientSign:
    """The gradient stage: the sign of ∇ₓ CE of every test image of the store ``data`` under the checkpoint
    ``model_path``, written to ``out`` (sign (N,3,H,W) int8, logits (N,C), zero_grad (N,) bool, index, labels)."""

    model, info = load_for_inference(model_path, torch.device(device))
    _, x, y, idx = test_set(data)
    try:
        gs = gradient_sign(model, x, y, batch_size)
    except InputError as e:
        raise InputError(f"{model_path}: {e}") from None
    require_finite(model_path, "logits", gs.logits)
    write_h5(
        out,
        {"sign": gs.sign.numpy(), "logits": gs.logits.numpy(), "zero_grad": gs.zero_grad.numpy(), "index": idx,
         "labels": y.numpy()},
        provenance(meta, model=info["arch"], replicate=replicate_of(info), stage="gradient", zero_grad_fraction=float(gs.zero_grad.float().mean())),
        compression="gzip",
    )
    return gs


def run_attack(
    model_path: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    settings: AttackSettings,
    eps: float,
    *,
    cam: CamSettings = CamSettings(),
    attribution: AttributionSettings = AttributionSettings(),
    sign_file: str | os.PathLike | None = None,
    transfer_from: str | os.PathLike | None = None,
    clean_logits_file: str | os.PathLike | None = None,
    heatmaps: Mapping[str, str | os.PathLike] | None = None,
    layer: str | None = None,
    name: str | None = None,
    device: str | torch.device = "cpu",
    meta: Mapping[str, str] | None = None,
) -> dict:
    """The attack stage: ``settings.attack`` at radius ``eps`` ([0,1] pixel scale; L∞, or L2 for the L2 attacks:
    ``settings.eps_norm``) on the test images of ``data``, classified by the checkpoint ``model_path``; the attack
    file ``out`` gets index, labels, pred_clean, pred_adv, attack_target (-1 when untargeted), zero_grad (FGSM,
    noise), delta (the iterative and the targeted attacks) and delta_l2, delta_linf (N,) (each image's ‖x′ − x‖,
    also in the adversarial heatmap files). ``settings``: the attack's steps, alpha, decay, random start, target rule and seed
    (:class:`advcam.settings.AttackSettings`). ``sign_file``: the gradient stage's output (untargeted FGSM).
    ``transfer_from``: another model's attack file of the same attack and ε, whose images this model classifies
    (and explains) instead of attacking it. ``clean_logits_file``: the gradient file, whose clean logits are
    reused. ``heatmaps``: {CAM method: path} to also write the adversarial maps (:mod:`advcam.io.heatmap_file`),
    made in the same forward pass as the predictions, of ``layer`` (default: the checkpoint's), for the class
    and with the batch size and precision of ``cam`` (any explainer: ``attribution`` holds the gradient attributions'
    parameters). Returns the attack file's attributes (acc_clean, acc_adv,
    success_rate, …)."""

    try:
        eps = settings.check_eps(eps)
    except SettingsError as e:
        raise InputError(f"--eps: {e}") from None
    attack, targeted, seed, batch_size = settings.attack, settings.targeted, settings.seed, cam.batch_size
    is_targeted = targeted != "none"
    methods = list(heatmaps or {})
    model, info = load_for_inference(model_path, torch.device(device))
    layer = layer or info["layer"]
    _, x, y, idx = test_set(data)
    source = name or info["arch"]  # the model the adversarial images were crafted on: this one, unless transferred
    transferred = None
    if transfer_from:  # the source model's adversarial images, classified and explained by this model
        sa = read_attrs(transfer_from)
        if sa.get("attack") != attack or float(sa.get("eps", -1)) != eps:
            raise InputError(f"{transfer_from}: holds {sa.get('attack')} at ε={sa.get('eps')}, not {attack} at ε={eps:g}")
        if str(sa.get("targeted", "none")) != targeted:
            raise InputError(f"{transfer_from}: its attack was targeted '{sa.get('targeted', 'none')}', not '{targeted}'")
        src = read_h5(transfer_from, ["index", "labels", "attack_target"] if "attack_target" in h5_keys(transfer_from)
                      else ["index", "labels"])
        if not np.array_equal(src["index"], idx):
            raise InputError(f"{transfer_from}: holds other test images than {data} (the source and target "
                             "models must share the input size)")
        source = sa.get("model")
        sign, delta, zero = stored_perturbation(attack, sign_file, transfer_from, len(idx), is_targeted)
        transferred = (sign, delta, torch.as_tensor(src["attack_target"]) if "attack_target" in src else None)
    else:
        sign, _, zero = stored_perturbation(attack, sign_file, None, len(idx), is_targeted)
    clean_logits = None
    if clean_logits_file:
        stored = read_h5(clean_logits_file, ["logits", "index"])
        if not np.array_equal(stored["index"], idx):
            raise InputError(f"{clean_logits_file}: test indices do not match {data}")
        clean_logits = torch.as_tensor(stored["logits"])
    if is_targeted and targeted == "least_likely" and clean_logits is None:
        clean_logits = predict(model, x, batch_size)
    if transferred is not None:
        goal = transferred[2] if is_targeted else None
    else:
        goal = (target_classes(targeted, y, int(info["num_classes"]), clean_logits, idx, seed)
                if is_targeted else None)
    extra: dict = {"targeted": targeted, "source_model": source}
    preds, deltas, l2, linf = [], [], [], []
    cams: dict[str, list] = {m: [] for m in methods}
    gen = torch.Generator().manual_seed(seed)
    for sl, xb in batches(x, batch_size):  # on the CPU: each attack and the CAMs move their batch
        tb = None if goal is None else goal[sl]
        if transferred is not None:
            sg, dl = transferred[0], transferred[1]
            xa = perturb(xb, attack, eps, idx[sl], None if sg is None else sg[sl], None if dl is None else dl[sl],
                         seed=seed)
        elif REGISTRY[attack].stores_delta or is_targeted:
            xa = craft(model, xb, y[sl], eps, settings, gen, tb, layer=layer,
                       explain_label=cam.target == "label").cpu()
            deltas.append((xa - xb).numpy())
        else:
            xa = perturb(xb, attack, eps, idx[sl], None if sign is None else sign[sl], seed=seed)
        d = (xa - xb).flatten(1)
        l2.append(d.norm(dim=1).numpy())
        linf.append(d.abs().amax(dim=1).numpy())
        if methods:
            # one forward (and one logit→layer backward) gives the adversarial prediction and every method's map
            outs = explain_cams(model, layer, xa, methods, None if cam.target == "predicted" else y[sl], batch_size,
                                amp=cam.amp, attribution=attribution, index=idx[sl],
                                name=name or info["arch"])
            for m, o in outs.items():
                cams[m].append(o)
            preds.append(outs[methods[0]].pred)
        else:
            lg = predict(model, xa, batch_size)
            require_finite(model_path, "logits", lg)
            preds.append(lg.argmax(1))
    clean = (clean_logits if clean_logits is not None else predict(model, x, batch_size)).argmax(1)
    pred = torch.cat(preds)
    attack_target = goal if goal is not None else torch.full_like(y, -1)
    record = {"index": idx, "labels": y.numpy(), "pred_clean": clean.numpy(), "pred_adv": pred.numpy(),
              "attack_target": attack_target.numpy()}
    if zero is not None:
        record["zero_grad"] = zero
    if deltas:
        record["delta"] = np.concatenate(deltas).astype(np.float32)
    # the attack's own settings (seed and target rule are recorded for every attack), the ball of its ε and the
    # size of the perturbation each image got (L2 and L∞ on the [0, 1] pixel scale: the images as classified)
    for p in ATTACK_PARAMS[attack]:
        if p not in ("targeted", "seed"):
            v = getattr(settings, p)
            extra[p] = "none" if v is None else v
    norms = {"delta_l2": np.concatenate(l2).astype(np.float32), "delta_linf": np.concatenate(linf).astype(np.float32)}
    record.update(norms)
    extra.update(norm=settings.eps_norm, delta_l2_mean=float(norms["delta_l2"].mean()),
                 delta_linf_max=float(norms["delta_linf"].max(initial=0.0)))
    if attack == "explain":  # keep the label: the share whose prediction stayed (1 by construction)
        extra["success_rate"] = float((pred == clean).float().mean())
    else:
        extra["success_rate"] = (float((pred == goal).float().mean()) if goal is not None
                                 else float((pred != y).float().mean()))
    attrs = provenance(meta, model=name or info["arch"], replicate=replicate_of(info), arch=info["arch"], stage="attack", attack=attack, eps=eps,
                       seed=seed, acc_clean=float((clean == y).float().mean()), acc_adv=float((pred == y).float().mean()),
                       **extra)
    write_h5(out, record, attrs)
    if methods:
        write_heatmaps(dict(heatmaps), {m: CamOutput.cat(v) for m, v in cams.items()}, y.numpy(), idx, zero, model_path,
                       {**heatmap_attrs(name or info["arch"], info["arch"], layer, attack, eps, seed, cam.target,
                                        x.shape[-1], cam.amp, meta, replicate_of(info)),
                        "targeted": targeted, "source_model": source, "norm": settings.eps_norm},
                       extra={"attack_target": attack_target.numpy(), **norms})
    return attrs
