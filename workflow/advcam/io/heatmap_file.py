"""Heatmap files: what the explain and attack stages write and the score and gallery stages read.

One HDF5 file per (model, test set, CAM method); the workflow names it after the method
(``heatmaps/{model}/clean/{cam}.h5``, ``heatmaps/{model}/{attack}/{eps}/{cam}.h5``), so that adding a
method to a study only adds files and removing one touches none. Datasets:

* ``maps`` (N,H,W) float32 in [0,1]: the normalised map at input size (all zero when ``raw`` is);
* ``raw`` (N,h,w) float32 ≥ 0: the method's map at the layer's resolution (``upsample_cam(raw)`` = ``maps``);
* ``logits`` (N,C) float32, ``pred`` and ``target`` (N,) int64 (the explained class), ``labels``, ``index``
  (N,) (position in the prepared store), ``zero_cam`` (N,) bool, and for FGSM/noise ``zero_grad`` (N,) bool; the
  clean files also ``alignment`` (N,) float32, each image's gradient–image alignment (Etmann et al. 2019).

File attributes: ``cam`` (the method), ``model``, ``replicate`` (the training run), ``arch``, ``layer``, ``attack``, ``eps``, ``seed``,
``target_mode``, ``input_size``, ``cam_size``, ``amp`` and provenance.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from ..errors import InputError
from ..settings import EXPLAINER_NAMES as METHODS
from ..settings import check_methods
from .store import provenance, read_attrs, read_h5, write_h5

__all__ = ["HeatmapPair", "methods_for", "require_finite", "heatmap_record", "heatmap_attrs", "write_heatmaps", "read_pairs",
           "method_of"]


def require_finite(source: Any, what: str, t) -> None:
    """ValueError naming ``source`` (the model or input file) when ``t`` (N,...) holds NaN or inf."""

    bad = ~torch.isfinite(torch.as_tensor(t).float()).flatten(1).all(1)
    if bool(bad.any()):
        first = bad.nonzero().flatten()[:5].tolist()
        raise InputError(f"{source}: {what} hold NaN or infinite values for {int(bad.sum())} of {len(bad)} test images "
                         f"(positions {first}{' …' if int(bad.sum()) > 5 else ''})")


def methods_for(paths: Sequence[str | os.PathLike], cams: Sequence[str] | None = None) -> list[str]:
    """The CAM method of each output file: ``cams`` when given (one per file), else each file's stem
    (``…/gradcampp.h5`` → gradcampp); a single file whose stem names no method gets Grad-CAM, the
    paper's. ValueError naming the file or the method at fault."""

    paths = [Path(p) for p in paths]
    if cams:
        names = check_methods(cams)
        if len(names) != len(cams) or len(names) != len(paths):
            raise InputError(f"give one CAM method per output file, without repeats: {len(paths)} file(s), "
                             f"methods {' '.join(cams)}")
        return names
    if len(paths) == 1 and paths[0].stem not in METHODS:
        return ["gradcam"]
    names = []
    for p in paths:
        if p.stem not in METHODS:
            raise InputError(f"'{p}': cannot tell its CAM method from the name; name each file <method>.h5 with "
                             f"<method> one of {', '.join(METHODS)}, or pass --cams")
        names.append(p.stem)
    if len(set(names)) != len(names):
        raise InputError(f"two output files for one CAM method: {' '.join(map(str, paths))}")
    return names


def heatmap_record(out, labels, index, zero_grad, source: Any) -> dict[str, np.ndarray]:
    """The datasets of one heatmap file from a :class:`~advcam.base_cam.CamOutput` on the CPU; ValueError
    naming ``source`` when anything is not finite."""
    for what, t in (("logits", out.logits), ("raw maps", out.raw), ("maps", out.maps)):
        require_finite(source, what, t)
    rec = {
        "maps": out.maps.numpy(), "raw": out.raw.numpy(), "logits": out.logits.numpy(), "pred": out.pred.numpy(),
        "target": out.target.numpy(), "labels": np.asarray(labels), "index": np.asarray(index),
        "zero_cam": (out.raw.flatten(1).amax(1) == 0).numpy(),
    }
    if zero_grad is not None:
        rec["zero_grad"] = np.asarray(zero_grad)
    return rec


def write_heatmaps(
    paths: Mapping[str, str | os.PathLike],
    outs: Mapping[str, Any],
    labels,
    index,
    zero_grad,
    source: Any,
    attrs: Mapping[str, Any],
    extra: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Write each method's result ``outs[method]`` (a CamOutput on the CPU) to ``paths[method]``, each file
    atomically and with ``attrs`` plus ``cam`` and ``cam_size``. All results are checked before the first
    file is written, so a NaN leaves no file of the set behind. ``extra``: more datasets for every file
    (e.g. ``attack_target``, each image's target class of a targeted attack, −1 when untargeted)."""

    recs = {m: {**heatmap_record(outs[m], labels, index, zero_grad, source), **(extra or {})} for m in paths}
    for m, path in paths.items():
        write_h5(path, recs[m], {**attrs, "cam": m, "cam_size": list(recs[m]["raw"].shape[1:])})


#: how ``maps`` is made from ``raw``, recorded in every heatmap file
UPSAMPLE = "minmax(relu(bilinear(minmax(relu(raw)), align_corners=False)))"


def heatmap_attrs(name: str, arch: str, layer: str, attack: str, eps: float, seed: int, target_mode: str,
                  input_size: int, amp: bool, meta: Mapping[str, str] | None = None, replicate: int = 0) -> dict[str, Any]:
    """The attributes of a heatmap file (besides ``cam`` and ``cam_size``, which :func:`write_heatmaps` adds):
    the model's name and architecture, the CAM layer, the attack, ε and seed that made the images ("clean",
    0, 0 for the clean set), the explained class (``target_mode``), the input side in pixels, bf16 autocast
    or not, the model's training replicate, and provenance with the user's ``meta`` pairs."""

    return provenance(
        meta, model=name, replicate=int(replicate), arch=arch, layer=layer, attack=attack, eps=eps, seed=seed, target_mode=target_mode,
        input_size=int(input_size), amp=bool(amp), upsample=UPSAMPLE, stage="explain",
    )


def method_of(attrs: Mapping[str, Any]) -> str:
    """The CAM method recorded in a heatmap file's attributes (files written before methods were an axis
    hold Grad-CAM)."""
    return str(attrs.get("cam", "gradcam"))


@dataclass
class HeatmapPair:
    """The clean and adversarial heatmap files of one model and CAM method, read: datasets and attributes
    of each, and the paths they came from."""

    method: str
    clean: dict
    adv: dict
    clean_attrs: dict
    adv_attrs: dict
    clean_path: str
    adv_path: str


def read_pairs(
    clean: Sequence[str | os.PathLike], adv: Sequence[str | os.PathLike], names: Sequence[str] | None = None
) -> Iterator[HeatmapPair]:
    """Read clean and adversarial heatmap files of one model and pair them by the CAM method each records.

    ``adv`` may hold several attacks and ε: the files are grouped by what made them — (attack, ε, source
    model, targeting), as each records — and each group is paired with ``clean``, in the order of ``clean``;
    groups come in the order they first appear. Each clean file is read once; one group's adversarial maps
    are in memory at a time. ``names``: which datasets to read (default all). ValueError naming the files
    when a method has no partner or two files of a group hold one method, the images differ, or the two
    were explained differently (target mode or layer)."""

    groups: dict[tuple, list[tuple[str, dict]]] = {}
    for p in adv:
        at = read_attrs(p)
        key = (at.get("attack"), at.get("eps"), at.get("source_model") or at.get("model"), at.get("targeted", "none"))
        groups.setdefault(key, []).append((str(p), at))
    clean_read: dict[str, tuple[dict, dict]] = {}
    for group in groups.values():
        if len(clean) != len(group):
            raise InputError(f"{len(clean)} clean heatmap file(s) for {len(group)} adversarial one(s): give one of "
                             "each per CAM method")
        a_by = {}
        for p, at in group:
            m = method_of(at)
            if m in a_by:
                raise InputError(f"'{a_by[m][0]}' and '{p}' both hold {m} maps")
            a_by[m] = (p, at)
        for p in clean:
            if str(p) not in clean_read:
                clean_read[str(p)] = (read_attrs(p), read_h5(p, names))
            ca, c = clean_read[str(p)]
            m = method_of(ca)
            if m not in a_by:
                raise InputError(f"'{p}' holds {m} maps but no adversarial file does (they hold {', '.join(a_by)})")
            q, aa = a_by[m]
            a = read_h5(q, names)
            if not np.array_equal(c["index"], a["index"]):
                raise InputError(f"{p} and {q} hold different test images")
            if ca.get("target_mode") != aa.get("target_mode") or ca.get("layer") != aa.get("layer"):
                raise InputError(f"{p} and {q} were explained differently (target mode or layer)")
            yield HeatmapPair(m, c, a, ca, aa, str(p), str(q))
