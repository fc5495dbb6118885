"""advcam: how adversarial attacks move Grad-CAM explanations (MOD/VID, Chakraborty et al., CVPRW 2022)."""
from __future__ import annotations

__version__ = "0.1.0"

from .attacks import apply_sign, bim, fgsm, gradient_sign, mifgsm, pgd, random_sign  # noqa: E402
from .base_cam import explain, gradcam, upsample_cam  # noqa: E402
from .explainers import CAM_METHODS, cam, cams  # noqa: E402
from .localisation import energy_in_mask, pointing_game  # noqa: E402
from .models import PAPER_MODELS, build_model, load_checkpoint, save_checkpoint  # noqa: E402
from .references import derangement, relative_mod  # noqa: E402
from .sanity import cascading_randomisation, randomisation_blocks  # noqa: E402
from .similarity import com_shift, nissim, spearman, ssim, topk_intersection  # noqa: E402

__all__ = [
    "__version__",
    "CAM_METHODS",
    "PAPER_MODELS",
    "apply_sign",
    "bim",
    "build_model",
    "cam",
    "cams",
    "cascading_randomisation",
    "com_shift",
    "derangement",
    "energy_in_mask",
    "explain",
    "fgsm",
    "gradcam",
    "gradient_sign",
    "load_checkpoint",
    "mifgsm",
    "mod_vid",
    "nissim",
    "pgd",
    "pointing_game",
    "randomisation_blocks",
    "random_sign",
    "relative_mod",
    "save_checkpoint",
    "spearman",
    "ssim",
    "topk_intersection",
    "upsample_cam",
]


def __getattr__(name: str):  # lazy: pandas/scipy only when the summary is used
    if name == "mod_vid":
        from .summary import mod_vid

        return mod_vid
    raise AttributeError(name)
