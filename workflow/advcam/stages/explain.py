"""The explain stage: CAM heatmaps of the clean or adversarial test set, one file per method."""
from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np
import torch

from ..adversarial_training import alignment
from ..attacks import perturb
from ..base_cam import CamOutput
from ..batching import batches
from ..errors import InputError
from ..explainers import explain_cams
from ..io.attack_file import stored_perturbation
from ..io.heatmap_file import heatmap_attrs, write_heatmaps
from ..io.store import read_attrs, read_h5
from ..models import model_device
from ..settings import AttributionSettings, CamSettings
from .runtime import load_for_inference, replicate_of, test_set

__all__ = ["run_explain"]


def run_explain(
    model_path: str | os.PathLike,
    data: str | os.PathLike,
    out: Mapping[str, str | os.PathLike],
    *,
    cam: CamSettings = CamSettings(),
    attribution: AttributionSettings = AttributionSettings(),
    attack_file: str | os.PathLike | None = None,
    sign_file: str | os.PathLike | None = None,
    layer: str | None = None,
    name: str | None = None,
    device: Any = "cpu",
    meta: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The explain stage: CAM maps of the test images of the store ``data`` under the checkpoint
    ``model_path``, one heatmap file per method (``out``: {CAM method: path}). Clean images, or with
    ``attack_file`` (the attack stage's output; ``sign_file``, the gradient stage's, for untargeted FGSM) the
    same adversarial images the attack stage classified. ``layer`` defaults to the checkpoint's;
    ``cam``: the class each map explains, images per batch, bf16 autocast on CUDA; ``attribution``: the gradient
    attributions' parameters (for those among ``out``'s methods). The clean files also hold ``alignment`` (N,),
    Etmann et al.'s |⟨x, ∇ₓ y_c⟩| / (‖x‖·‖∇ₓ y_c‖) of each image for its predicted class
    (:func:`advcam.adversarial_training.alignment`). Returns {method: CamOutput} (on the CPU)."""
    target_mode, amp, batch_size = cam.target, cam.amp, cam.batch_size
    methods = list(out)
    model, info = load_for_inference(model_path, torch.device(device))
    layer = layer or info["layer"]
    _, x, y, idx = test_set(data)
    attack, eps, seed, zero = "clean", 0.0, 0, None
    sign = delta = None
    if attack_file:
        a = read_attrs(attack_file)
        attack, eps, seed = a["attack"], float(a["eps"]), int(a.get("seed", 0))  # perturb checks ε where it is used
        sign, delta, zero = stored_perturbation(attack, sign_file, attack_file, len(idx))
        stored = read_h5(attack_file, ["index"])["index"]
        if not np.array_equal(stored, idx):
            raise InputError(f"{attack_file}: test indices do not match {data}; rerun the attack stage")
    cams: dict[str, list] = {m: [] for m in methods}
    align: list[np.ndarray] = []
    for sl, xb in batches(x, batch_size):  # on the CPU: explain_cams moves each batch
        if attack != "clean":
            xb = perturb(xb, attack, eps, idx[sl], None if sign is None else sign[sl],
                         None if delta is None else delta[sl], seed=seed)
        outs = explain_cams(model, layer, xb, methods, None if target_mode == "predicted" else y[sl], batch_size, amp=amp,
                            attribution=attribution, index=idx[sl], name=name or info["arch"])
        for m, o in outs.items():
            cams[m].append(o)
        if attack == "clean":  # one more forward and backward: how each clean image aligns with its saliency
            align.append(alignment(model, xb.to(model_device(model))).cpu().numpy())
    outs = {m: CamOutput.cat(v) for m, v in cams.items()}
    extra = {"alignment": np.concatenate(align).astype(np.float32)} if align else None
    write_heatmaps(out, outs, y.numpy(), idx, zero, model_path,
                   heatmap_attrs(name or info["arch"], info["arch"], layer, attack, eps, seed, target_mode, x.shape[-1],
                                 amp, meta, replicate_of(info)), extra)
    return outs
