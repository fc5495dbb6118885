"""``advcam <stage>``: the command-line seam between the workflow's rules and the library.

Each command parses its arguments and calls one stage function of :mod:`advcam.stages`
(``train.run_training``, ``attack.run_gradient``/``run_attack``, ``explain.run_explain``, ``score.score``,
``sanity.run_sanity``, ``summarise.summarise``, ``plot.plot_study``/``gallery``): it reads files, calls the
library and writes its outputs atomically (temporary name, then rename), so a killed job
never leaves an output that looks complete. Input errors (:class:`~advcam.errors.AdvcamError`, and
files that cannot be read or written) end with ``advcam <stage>: error: <message>`` and exit status 2; anything
else is a bug and shows its traceback (``ADVCAM_DEBUG=1``: every error does).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from ._version import __version__
from .errors import AdvcamError, InputError
from .settings import (
    ATTACKS,
    EXPLAINER_NAMES,
    AttackSettings,
    AttributionSettings,
    CamSettings,
    DetectionSettings,
    ScoreSettings,
    TrainSettings,
    add_arguments,
    from_arguments,
)

if TYPE_CHECKING:
    import torch

STAGES = {
    "synth": "render synthetic face identities to an image tree",
    "prepare": "index an identity-per-folder tree, split, crop, resize → HDF5 store",
    "train": "fine-tune a timm model on a prepared store → checkpoint + train.json",
    "gradient": "FGSM input-gradient sign of every test image (once per model)",
    "attack": "adversarial test set for one attack and ε → predictions",
    "explain": "CAM heatmaps (one file per method) of the clean or adversarial test set → HDF5",
    "score": "NISSIM and other measures of each clean/adversarial heatmap pair, per method, attack and ε → per-image CSV",
    "sanity": "cascading model-parameter randomisation: CAMs of a few test images as the blocks are re-initialised "
              "from the output down, each compared with the trained model's → per-image CSV",
    "detect": "detector scores from the input alone (self-consistency, CAM disagreement, max softmax, feature "
              "squeezing) of the clean test images and their adversarial versions → per-image CSV",
    "summarise": "MOD, VID, accuracies per model, attack and ε → CSV",
    "plot": "MOD/accuracy/VID/NISSIM figures from the summaries",
    "gallery": "per-model gallery of clean and adversarial heatmaps, a row per CAM method",
    "estimate": "a study's jobs and predicted compute per stage, before it runs (core-seconds from a measured cost table, "
                "or GPU-s from a bench table); --calibrate measures the table from a finished study",
}


def _meta(pairs: list[str] | None) -> dict:
    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise InputError(f"--meta takes KEY=VALUE, got '{p}'")
        k, v = p.split("=", 1)
        out[k] = v
    return out


def _add_common(p: argparse.ArgumentParser, device: bool = False) -> None:
    p.add_argument("--meta", action="append", metavar="KEY=VALUE", help="provenance attribute to record (repeatable)")
    if device:
        p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, … (default: auto)")
        p.add_argument("--batch-size", type=int, default=64, help="images per batch (default: 64)")
        p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")


def _add_cam_options(p: argparse.ArgumentParser) -> None:
    """Options of the stages that write CAM heatmaps (attack --heatmaps, explain)."""
    p.add_argument("--cams", nargs="+", metavar="METHOD",
                   help="the explainer of each heatmap file, in order (default: each file's name, <method>.h5; a "
                        f"single file of another name gets gradcam). Methods: {', '.join(EXPLAINER_NAMES)}")
    p.add_argument("--name", help="model name to record in the heatmaps (default: the checkpoint's arch)")
    p.add_argument("--layer", help="override the checkpoint's Grad-CAM layer")
    p.add_argument("--target", choices=["predicted", "label"], default="predicted",
                   help="class each map explains: the predicted one or the true label")
    p.add_argument("--amp", action="store_true",
                   help="bf16 autocast for the Grad-CAM on CUDA (maps moved by 9e-3 to 9e-2 vs fp32 on an H200)")
    _add_attribution_option(p)


def _add_attribution_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--attribution", metavar="JSON",
                   help="the gradient attributions' settings as a JSON object (advcam.settings.AttributionSettings: "
                        "n_steps, ig_method, nt_samples, stdevs, seed; default: its defaults)")


def _attribution_settings(args) -> AttributionSettings:
    """The attribution settings of a command with :func:`_add_attribution_option` (SettingsError naming a bad one)."""
    return AttributionSettings.from_json(args.attribution, "--attribution") if args.attribution else AttributionSettings()


def _cam_settings(args) -> CamSettings:
    """The CAM settings of a command with :func:`_add_cam_options` and ``--batch-size``."""
    return CamSettings(target=args.target, batch_size=args.batch_size, amp=args.amp)


def _setup_torch(args) -> torch.device:
    from .stages.runtime import setup_torch

    return setup_torch(args.device, getattr(args, "threads", 0))


# ---------------------------------------------------------------- stages
# Each command imports its own stage inside the function, and only the CLI does so: a job then pays for the
# modules its stage needs (the score job never imports timm, ``advcam --help`` imports no stage at all).


def cmd_synth(args) -> None:
    from .faces import synthesize

    synthesize(args.out, args.identities, args.images, args.size, args.seed, args.masks, pose=args.pose,
               workers=args.workers)
    print(f"wrote {args.identities}×{args.images} images of {args.size}² to {args.out}")


def cmd_prepare(args) -> None:
    from .datasets import prepare
    from .io.store import write_json

    rep = prepare(
        args.root, args.out, args.size, args.identities, args.min_images, tuple(args.split), args.seed,
        args.margin, args.skip_broken, progress=not args.no_progress, masks=args.masks,
    )
    if args.report:
        write_json(args.report, rep)
    print(f"{args.out}: {rep['n']} images of {rep['identities']} identities (train {rep['train']}, val {rep['val']}, "
          f"test {rep['test']}; skipped {rep['skipped']})")


def cmd_train(args) -> None:
    from .stages.train import run_training

    settings = from_arguments(TrainSettings, args)
    res, info = run_training(args.data, args.out, args.arch, settings, replicate=args.replicate, name=args.name,
                             report=args.report, device=_setup_torch(args), progress=not args.no_progress,
                             meta=_meta(args.meta))
    print(f"{args.arch} replicate {args.replicate}: best epoch {res.best_epoch}, val acc {res.best_val_acc:.3f}, test acc {info['test_acc']:.3f}, "
          f"{res.seconds:.0f}s")


def cmd_gradient(args) -> None:
    from .stages.attack import run_gradient

    gs = run_gradient(args.model, args.data, args.out, batch_size=args.batch_size, device=_setup_torch(args),
                      meta=_meta(args.meta))
    print(f"{args.out}: {gs.sign.shape[0]} signs; zero-gradient fraction {float(gs.zero_grad.float().mean()):.4f}")


def cmd_attack(args) -> None:
    from .io.heatmap_file import methods_for
    from .stages.attack import run_attack

    settings = from_arguments(AttackSettings, args)
    heatmaps = dict(zip(methods_for(args.heatmaps, args.cams), args.heatmaps)) if args.heatmaps else None
    a = run_attack(
        args.model, args.data, args.out, settings, args.eps, cam=_cam_settings(args), attribution=_attribution_settings(args),
        sign_file=args.sign,
        transfer_from=args.transfer_from, clean_logits_file=args.clean_logits, heatmaps=heatmaps, layer=args.layer,
        name=args.name, device=_setup_torch(args), meta=_meta(args.meta),
    )
    targeted = settings.targeted != "none"
    what = f"{settings.attack}{'' if not targeted else f' targeted ({settings.targeted})'}"
    what += f" from {a['source_model']}" if args.transfer_from else ""
    print(f"{a['arch']} {what} ε={a['eps']:g} ({a['norm']}): accuracy {a['acc_clean']:.3f} → {a['acc_adv']:.3f}, "
          f"{'target reached' if targeted else 'prediction kept' if settings.attack == 'explain' else 'prediction changed'}"
          f" for {a['success_rate']:.3f}; mean ‖δ‖₂ {a['delta_l2_mean']:.4g}, max ‖δ‖∞ {a['delta_linf_max']:.4g}")


def cmd_explain(args) -> None:
    from .io.heatmap_file import methods_for
    from .stages.explain import run_explain

    out = dict(zip(methods_for(args.out, args.cams), args.out))
    outs = run_explain(args.model, args.data, out, cam=_cam_settings(args), attribution=_attribution_settings(args),
                       attack_file=args.attack_file,
                       sign_file=args.sign, layer=args.layer, name=args.name, device=_setup_torch(args),
                       meta=_meta(args.meta))
    for m, path in out.items():
        o = outs[m]
        print(f"{path}: {o.raw.shape[0]} {m} maps of {args.attack_file or 'the clean test set'}, "
              f"raw map {tuple(o.raw.shape[1:])}, all-zero {int((o.raw.flatten(1).amax(1) == 0).sum())}")


def cmd_score(args) -> None:
    from .stages.runtime import log_runtime
    from .stages.score import score

    settings = from_arguments(ScoreSettings, args)
    dev = _setup_torch(args)
    log_runtime(dev, f"SSIM in float64 ({settings.ssim})")
    df = score(args.clean, args.adv, args.out, settings, data=args.data, device=dev)
    for (attack, eps), g in df.groupby(["attack", "eps"], sort=False):
        mods = g.groupby("cam", sort=False)["nissim"].mean()
        print(f"{args.out}: {attack} ε={eps:g}, {len(g) // len(mods)} images; MOD "
              + ", ".join(f"{m} {v:.4f}" for m, v in mods.items()))


def cmd_sanity(args) -> None:
    from .io.heatmap_file import methods_for
    from .stages.sanity import run_sanity

    out = dict(zip(methods_for(args.out, args.cams), args.out))
    df = run_sanity(args.model, args.data, out, images=args.images, seed=args.seed, target_mode=args.target,
                    batch_size=args.batch_size, device=_setup_torch(args), name=args.name, attribution=_attribution_settings(args))
    for (cam, blocks), g in df.groupby(["cam", "blocks"], sort=False):
        print(f"{args.name or args.model}: {cam} with {blocks} block(s) randomised ({g['block'].iloc[0]}): Spearman "
              f"{g['spearman'].mean():.3f}, NISSIM {g['nissim'].mean():.3f}")


def cmd_detect(args) -> None:
    from .stages.detect import run_detect
    from .stages.runtime import log_runtime

    settings = from_arguments(DetectionSettings, args)
    df = run_detect(args.model, args.data, args.out, settings, attack_files=args.attacks or (), sign_file=args.sign,
                    ssim=args.ssim, batch_size=args.batch_size, device=_setup_torch(args), name=args.name)
    means = df.groupby(["attack", "eps", "score"], sort=False)["value"].mean()
    for (attack, eps), g in means.groupby(level=[0, 1], sort=False):
        print(f"{args.out}: {attack} ε={eps:g}, mean score " + ", ".join(f"{k[2]} {v:.4f}" for k, v in g.items()))


def cmd_summarise(args) -> None:
    from .stages.summarise import summarise

    summ = summarise(args.scores, args.out, vid_out=args.vid, vid_images_out=args.vid_images, nissim_out=args.nissim,
                     sanity=args.sanity, sanity_out=args.sanity_out, sanity_threshold=args.sanity_threshold,
                     confidence=args.confidence, n_resamples=args.resamples, seed=args.seed,
                     train_reports=args.train_reports, min_accuracy=args.min_accuracy, replicates_out=args.replicates,
                     claims_out=args.claims, detection=args.detection, detection_out=args.detection_out,
                     fpr=args.fpr)
    cols = ["model", "replicate", "cam", "attack", "eps", "n", "mod", "nissim_var", "acc_clean", "acc_adv", "flip_rate", "success_rate"]
    print(summ[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))


def cmd_plot(args) -> None:
    from .stages.plot import plot_study

    files = plot_study(args.summary, args.out_dir, vid_images=args.vid_images, nissim=args.nissim, sanity=args.sanity,
                       replicates=args.replicates, claims=args.claims, detection=args.detection)
    print(f"{len(files)} figure files written to {args.out_dir}")


def cmd_gallery(args) -> None:
    from .stages.plot import gallery

    gallery(args.data, args.clean, args.adv, args.out, n=args.n, seed=args.seed, title=args.title or "")
    print(f"gallery written to {args.out}.png")


# ---------------------------------------------------------------- parser


class _DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults in the help, less the noise: not where the help already says its default ("(default"),
    and not for an option without one (None) or a flag (False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "(default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from .measures import LOCALISATION  # imports torch: only for the score help

    p = argparse.ArgumentParser(
        prog="advcam",
        description="How adversarial attacks move Grad-CAM explanations (MOD/VID). Stages:\n"
        + "\n".join(f"  {k:<10} {v}" for k, v in STAGES.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"advcam {__version__}")
    sub = p.add_subparsers(dest="stage", metavar="STAGE", required=True)
    fmt = _DefaultsHelp

    s = sub.add_parser("synth", help=STAGES["synth"], description=STAGES["synth"], formatter_class=fmt)
    s.add_argument("--out", required=True, help="root folder of the tree (replaced when complete)")
    s.add_argument("--identities", type=int, default=10, help="number of identities (≥2)")
    s.add_argument("--images", type=int, default=40, help="images per identity")
    s.add_argument("--size", type=int, default=128, help="image side in pixels")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--masks", action="store_true", help="also write <nnnn>.mask.png part masks")
    s.add_argument("--workers", type=int, default=1, help="processes rendering identities side by side")
    s.add_argument("--pose", type=float, default=1.0,
                   help="pose variation per image: 0 = aligned faces, 1 = rotated ±7°, scaled 0.93-1.04, shifted ±3.5%%")
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("prepare", help=STAGES["prepare"], description=STAGES["prepare"], formatter_class=fmt)
    s.add_argument("--root", required=True, help="image tree root/<identity>/<image> (VGGFace2 layout)")
    s.add_argument("--out", required=True, help="HDF5 store to write")
    s.add_argument("--size", type=int, required=True, help="square side in pixels")
    s.add_argument("--identities", type=int, default=None, help="how many identities (default: all eligible)")
    s.add_argument("--min-images", type=int, default=10, help="minimum images an identity needs")
    s.add_argument("--split", type=float, nargs=3, default=[0.8, 0.1, 0.1], metavar=("TRAIN", "VAL", "TEST"))
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--margin", type=float, default=0.3, help="margin around VGGFace2 loose boxes (fraction)")
    s.add_argument("--skip-broken", action="store_true", help="skip (and count) unreadable images instead of failing")
    s.add_argument("--report", help="JSON report of counts")
    s.add_argument("--masks", action="store_true",
                   help="carry each image's part mask (<name>.mask.png beside it, 0 = background) into the store, for "
                        "the localisation measures; a missing one is an error")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_prepare)

    s = sub.add_parser("train", help=STAGES["train"], description=STAGES["train"], formatter_class=fmt)
    s.add_argument("--data", required=True, help="prepared HDF5 store")
    s.add_argument("--arch", required=True, help="paper alias (vgg16, resnet50, resnet101, inception_v3, xception) or timm name")
    s.add_argument("--out", required=True, help="checkpoint path (model.pt)")
    s.add_argument("--report", help="train.json path (default: beside the checkpoint)")
    add_arguments(s, TrainSettings)
    s.add_argument("--replicate", type=int, default=0,
                   help="which training run of this model (0, 1, ...): replicate r > 0 trains with a seed derived from "
                        "(--seed, r) on the same split; 0 trains with --seed itself")
    s.add_argument("--name", help="the study's name for the model, recorded in the checkpoint (default: --arch)")
    s.add_argument("--device", default="auto")
    s.add_argument("--threads", type=int, default=0)
    s.add_argument("--meta", action="append", metavar="KEY=VALUE")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("gradient", help=STAGES["gradient"], description=STAGES["gradient"], formatter_class=fmt)
    s.add_argument("--model", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--out", required=True)
    _add_common(s, device=True)
    s.set_defaults(func=cmd_gradient)

    s = sub.add_parser("attack", help=STAGES["attack"], description=STAGES["attack"], formatter_class=fmt)
    s.add_argument("--model", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--attack", required=True, metavar="ATTACK", help=f"one of {', '.join(ATTACKS)} (noise: the random-sign "
                                                                     "control)")
    s.add_argument("--eps", type=float, required=True, help="radius on the [0,1] pixel scale: L∞ in (0, 1], or L2 (> 0) for pgdl2, cw, deepfool and apgd --norm L2 "
                        "(cw and deepfool: their perturbation clipped to it)")
    s.add_argument("--sign", help="gradient sign file (untargeted fgsm)")
    add_arguments(s, AttackSettings, skip=("attack",))
    s.add_argument("--out", required=True, help="attack file: predictions (and PGD's perturbation)")
    s.add_argument("--clean-logits", help="file with the clean test logits ('advcam gradient' output) to reuse")
    s.add_argument("--transfer-from", metavar="ATTACK_FILE",
                   help="transfer: classify and explain another model's adversarial images (its attack file of the same "
                        "attack and ε; for untargeted FGSM also give its --sign), instead of attacking this model")
    s.add_argument("--heatmaps", nargs="+", metavar="FILE",
                   help="also write the adversarial CAMs, one file per method (same forward pass as the predictions)")
    _add_cam_options(s)
    _add_common(s, device=True)
    s.set_defaults(func=cmd_attack)

    s = sub.add_parser("explain", help=STAGES["explain"], description=STAGES["explain"], formatter_class=fmt)
    s.add_argument("--model", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--out", required=True, nargs="+", metavar="FILE", help="heatmap files, one per CAM method")
    s.add_argument("--attack-file", help="output of 'advcam attack' (omit for the clean set)")
    s.add_argument("--sign", help="gradient sign file (fgsm)")
    _add_cam_options(s)
    _add_common(s, device=True)
    s.set_defaults(func=cmd_explain)

    s = sub.add_parser("score", help=STAGES["score"], description=STAGES["score"], formatter_class=fmt)
    s.add_argument("--clean", required=True, nargs="+", metavar="FILE",
                   help="clean heatmap files of one model (advcam explain), one per CAM method")
    s.add_argument("--adv", required=True, nargs="+", metavar="FILE",
                   help="adversarial heatmap files of the same model, one per CAM method for each attack and ε (grouped by the "
                        "attack, ε and source model each records and paired with --clean by its method)")
    s.add_argument("--out", required=True, help="per-image CSV")
    add_arguments(s, ScoreSettings)
    s.add_argument("--data", help="the prepared store of the test images: with part masks it adds the localisation "
                                  "columns (" + ", ".join(LOCALISATION) + ")")
    _add_common(s, device=True)
    s.set_defaults(func=cmd_score)

    s = sub.add_parser("sanity", help=STAGES["sanity"], description=STAGES["sanity"], formatter_class=fmt)
    s.add_argument("--model", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--out", required=True, nargs="+", metavar="FILE",
                   help="per-image CSVs, one per CAM method, each named <method>.csv (or give --cams)")
    s.add_argument("--cams", nargs="+", metavar="METHOD", help="the explainer of each --out file, in order")
    _add_attribution_option(s)
    s.add_argument("--images", type=int, default=16, help="test images (a seeded draw)")
    s.add_argument("--seed", type=int, default=0, help="seed of the draw and of the re-initialisation")
    s.add_argument("--target", choices=["predicted", "label"], default="predicted",
                   help="class each map explains (the trained model's prediction, at every step), or the true label")
    s.add_argument("--name", help="model name to record (default: the checkpoint's arch)")
    _add_common(s, device=True)
    s.set_defaults(func=cmd_sanity)

    s = sub.add_parser("detect", help=STAGES["detect"], description=STAGES["detect"], formatter_class=fmt)
    s.add_argument("--model", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--out", required=True, help="per-image CSV: a row per input (clean, and each attack and ε) and score")
    s.add_argument("--attacks", nargs="*", metavar="ATTACK_FILE",
                   help="attack files of this model (advcam attack): their adversarial images are the positives")
    s.add_argument("--sign", help="gradient sign file (untargeted fgsm)")
    s.add_argument("--ssim", choices=["uniform", "gaussian"], default="uniform",
                   help="the SSIM window of the NISSIM scores (the study's)")
    s.add_argument("--name", help="model name to record (default: the checkpoint's arch)")
    add_arguments(s, DetectionSettings)
    _add_common(s, device=True)
    s.set_defaults(func=cmd_detect)

    s = sub.add_parser("summarise", help=STAGES["summarise"], description=STAGES["summarise"], formatter_class=fmt)
    s.add_argument("scores", nargs="+", help="per-image CSVs (advcam score)")
    s.add_argument("--out", required=True, help="mod_vid.csv: one row per model, attack, ε")
    s.add_argument("--vid", help="vid.csv: one row per model, attack")
    s.add_argument("--vid-images", help="per-image VID CSV")
    s.add_argument("--nissim", help="all per-image rows in one CSV")
    s.add_argument("--confidence", type=float, default=0.95)
    s.add_argument("--resamples", type=int, default=2000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--sanity", nargs="+", metavar="FILE", help="per-image sanity tables (advcam sanity): adds the sanity "
                                                              "verdict per model and method to the MOD table")
    s.add_argument("--sanity-out", help="sanity.csv: one row per model, method and number of randomised blocks")
    s.add_argument("--train-reports", nargs="+", metavar="FILE",
                   help="train.json of every training run (architecture and class count of each; default: the table's "
                        "labels give the class count and the model's name its architecture)")
    s.add_argument("--min-accuracy", type=float, default=0.0,
                   help="clean test accuracy in [0, 1] below which a run is flagged (a run not clearly above chance "
                        "always is); flagged runs are left out of --replicates and --claims, by name")
    s.add_argument("--replicates", help="replicates.csv: across training runs, per model, attack, ε, with two-level "
                                        "bootstrap CIs (replicates, then test images)")
    s.add_argument("--claims", help="claims.csv: MOD differences of every pair of models and the paper's two claims, "
                                    "each with its two-level CI and a verdict")
    s.add_argument("--detection", nargs="+", metavar="FILE",
                   help="per-image detection tables (advcam detect) to summarise into --detection-out")
    s.add_argument("--detection-out", help="detection.csv: ROC-AUC with its bootstrap CI and the TPR at --fpr of every "
                                           "score, per model, run, attack and ε")
    s.add_argument("--fpr", type=float, default=0.05, help="the false-positive rate at which detection's TPR is read")
    s.add_argument("--sanity-threshold", type=float, default=0.5,
                   help="mean Spearman with the trained maps at or above which a method is flagged as ignoring the head "
                        "(head randomised) or the weights (all randomised)")
    s.set_defaults(func=cmd_summarise)

    s = sub.add_parser("plot", help=STAGES["plot"], description=STAGES["plot"], formatter_class=fmt)
    s.add_argument("--summary", required=True, help="mod_vid.csv")
    s.add_argument("--vid-images", help="per-image VID CSV")
    s.add_argument("--nissim", help="all per-image NISSIM rows")
    s.add_argument("--sanity", help="sanity.csv (advcam summarise --sanity-out): a figure per model")
    s.add_argument("--replicates", help="replicates.csv (advcam summarise --replicates): with several training runs the "
                                        "MOD, accuracy, localisation and transfer figures show their mean and two-level CI")
    s.add_argument("--claims", help="claims.csv (advcam summarise --claims): plots claims.png")
    s.add_argument("--detection", nargs="+", metavar="FILE",
                   help="per-image detection tables (advcam detect): a ROC figure per model, roc_<model>.png")
    s.add_argument("--out-dir", required=True)
    s.set_defaults(func=cmd_plot)

    s = sub.add_parser("gallery", help=STAGES["gallery"], description=STAGES["gallery"], formatter_class=fmt)
    s.add_argument("--data", required=True)
    s.add_argument("--clean", required=True, nargs="+", metavar="FILE", help="clean heatmap files, one per CAM method (a row each)")
    s.add_argument("--adv", nargs="+", required=True, metavar="FILE", help="adversarial heatmap files, one per method and ε")
    s.add_argument("--out", required=True, help="output prefix (.png and .pdf are written)")
    s.add_argument("--n", type=int, default=6, help="number of test images")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--title")
    s.set_defaults(func=cmd_gallery)

    s = sub.add_parser("estimate", help=STAGES["estimate"], description=STAGES["estimate"], formatter_class=fmt)
    s.add_argument("--configfile", help="the study, as for snakemake (default: the repository's config.yaml)")
    s.add_argument("--costs", help="cost table CSV (default: the one shipped, measured on a 2-core AMD EPYC)")
    s.add_argument("--gpu-bench", metavar="JSON",
                   help="a `python -m bench --device cuda` table (bench/results/gpu-*.json): the model stages' work "
                        "in GPU-s on that device")
    s.add_argument("--cores", type=int, default=2, help="cores of the ideal-packing bound (default: 2)")
    s.add_argument("--check", metavar="BENCHMARKS",
                   help="a finished run's results/benchmarks: print its measured core-seconds (wall × threads) per stage beside the "
                        "prediction, exit 2 when a stage lies outside --tolerance")
    s.add_argument("--tolerance", type=float, default=0.25, help="of --check, as a fraction (default: 0.25)")
    s.add_argument("--calibrate", metavar="BENCHMARKS",
                   help="measure the cost table from this finished run of --configfile (and this machine's start-up "
                        "per stage); writes --out")
    s.add_argument("--out", help="the cost table --calibrate writes (CSV)")
    s.add_argument("--source", help="what --calibrate records as the table's source (e.g. the CPU and date)")
    s.set_defaults(func=cmd_estimate)
    return p


def cmd_estimate(args) -> None:
    from .stages.estimate import run_calibrate, run_estimate

    if args.calibrate:
        if not args.out:
            raise InputError("--calibrate needs --out, the cost table to write")
        table = run_calibrate(args.configfile, args.calibrate, args.out, source=args.source or "")
        print(f"cost table of {len(table.c)} (stage, architecture) costs written to {args.out}")
        return
    text, ok = run_estimate(args.configfile, costs=args.costs, gpu_bench=args.gpu_bench, check=args.check,
                            cores=args.cores, tolerance=args.tolerance)
    print(text)
    if args.check and not ok:
        raise InputError(f"a stage's prediction lies outside ±{args.tolerance:.0%} of {args.check}")


def main(argv: list[str] | None = None) -> int:
    """Run one stage. An :class:`~advcam.errors.AdvcamError` (a file, key or value at fault) or an OSError (a file
    that cannot be read or written) prints as one line, ``advcam <stage>: error: …``, and returns 2; anything else
    is a bug and raises with its traceback. ``ADVCAM_DEBUG=1`` raises every error with its traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if os.environ.get("ADVCAM_DEBUG", "") not in ("", "0"):
        args.func(args)
        return 0
    try:
        args.func(args)
    except AdvcamError as e:
        print(f"advcam {args.stage}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a write or read the stage could not do (missing file, disk full, permissions): name the file
        where = f"'{e.filename}': " if e.filename else ""
        print(f"advcam {args.stage}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
