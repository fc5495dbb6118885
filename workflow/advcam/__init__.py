"""advcam: how adversarial attacks move Grad-CAM explanations (MOD/VID, Chakraborty et al., CVPRW 2022).

The public API is read lazily (PEP 562): ``import advcam`` imports nothing heavy, and ``advcam.fgsm`` imports
:mod:`advcam.attacks` (and torch) the first time it is used, so a stage job or ``advcam --help`` pays only for
the modules it uses.
"""
from __future__ import annotations

import importlib

from ._version import __version__

#: public name → the module that defines it
_EXPORTS = {
    **dict.fromkeys(["apply_sign", "bim", "fgsm", "gradient_sign", "mifgsm", "pgd", "random_sign"], "attacks"),
    "upsample_cam": "base_cam",
    **dict.fromkeys(["ATTRIBUTION_METHODS", "attribution", "attribution_map"], "attributions"),
    **dict.fromkeys(["CAM_METHODS", "cam", "cams", "explain_cams", "gradcam"], "explainers"),
    **dict.fromkeys(["energy_in_mask", "pointing_game"], "localisation"),
    **dict.fromkeys(["PAPER_MODELS", "build_model", "relu_beta"], "models"),
    **dict.fromkeys(["dual_attack", "explain_attack"], "explanation_attacks"),
    **dict.fromkeys(["clip_l2", "cw", "deepfool", "l2_norms", "pgdl2"], "l2_attacks"),
    **dict.fromkeys(["apgd", "square"], "autoattack"),
    **dict.fromkeys(["load_checkpoint", "save_checkpoint"], "io.checkpoint"),
    **dict.fromkeys(["derangement", "relative_mod"], "references"),
    **dict.fromkeys(["cascading_randomisation", "randomisation_blocks"], "sanity"),
    **dict.fromkeys(["com_shift", "nissim", "spearman", "ssim", "topk_intersection"], "similarity"),
    "mod_vid": "summary",
    **dict.fromkeys(["AdvcamError", "InputError"], "errors"),
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'advcam' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
