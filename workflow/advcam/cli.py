"""``advcam <stage>``: the command-line seam between the workflow's rules and the library.

Each stage reads files, calls the library and writes its outputs atomically (temporary name, then
rename), so a killed job never leaves an output that looks complete. Known input errors end with
``advcam <stage>: error: <message>`` and exit status 2.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from . import __version__

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
    "summarise": "MOD, VID, accuracies per model, attack and ε → CSV",
    "plot": "MOD/accuracy/VID/NISSIM figures from the summaries",
    "gallery": "per-model gallery of clean and adversarial heatmaps, a row per CAM method",
}


def _meta(pairs: list[str] | None) -> dict:
    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise ValueError(f"--meta takes KEY=VALUE, got '{p}'")
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
    from .explainers import CAM_METHODS

    p.add_argument("--cams", nargs="+", metavar="METHOD",
                   help="the CAM method of each heatmap file, in order (default: each file's name, <method>.h5; a "
                        f"single file of another name gets gradcam). Methods: {', '.join(CAM_METHODS)}")
    p.add_argument("--name", help="model name to record in the heatmaps (default: the checkpoint's arch)")
    p.add_argument("--layer", help="override the checkpoint's Grad-CAM layer")
    p.add_argument("--target", choices=["predicted", "label"], default="predicted",
                   help="class each map explains: the predicted one or the true label")
    p.add_argument("--amp", action="store_true",
                   help="bf16 autocast for the Grad-CAM on CUDA (maps moved by 9e-3 to 9e-2 vs fp32 on an H200)")


def _setup_torch(args) -> "torch.device":  # noqa: F821
    """Threads and device from the arguments; the stage then logs :func:`_runtime_line` once it knows its
    precision."""
    import torch

    from .models import pick_device

    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    return pick_device(args.device)


def _log_runtime(dev, precision: str) -> None:
    """The job log's first line (stderr)."""
    import torch

    print(_runtime_line(dev, torch.get_num_threads(), precision), file=sys.stderr, flush=True)


#: what the inference stages (gradient, attack, explain) run in: fp32 so FGSM equals torchattacks and the
#: maps equal pytorch-grad-cam; channels_last is the faster layout on oneDNN CPUs and CUDA
INFERENCE_PRECISION = "fp32 channels_last (inference stages stay fp32 so results equal the reference libraries)"


def _runtime_line(dev, threads: int, precision: str | None = None) -> str:
    """Where and how this stage runs, for the job log: device, torch threads, precision and why, the oneDNN
    ISA cap if one is set and, under SLURM, the job and the GPUs it was allocated (so a cluster run shows
    which jobs got a GPU, and a GPU job that fell back to the CPU)."""
    from .precision import onednn_isa_cap

    line = f"advcam: device {dev}, {threads} torch thread(s)"
    if precision:
        line += f", {precision}"
    cap = onednn_isa_cap()
    if cap and dev.type == "cpu" and f"ONEDNN_MAX_CPU_ISA={cap}" not in line:
        line += f"; ONEDNN_MAX_CPU_ISA={cap}"
    env = os.environ
    if env.get("SLURM_JOB_ID"):
        gpus = env.get("SLURM_JOB_GPUS") or env.get("SLURM_STEP_GPUS") or "none"
        line += f"; SLURM job {env['SLURM_JOB_ID']} on {env.get('SLURMD_NODENAME', '?')}, GPUs allocated: {gpus}"
    if "CUDA_VISIBLE_DEVICES" in env:
        line += f"; CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']}"
    return line


def _load_for_inference(path: str, dev):
    """The checkpoint's model on ``dev`` in eval mode and channels_last, the job log's first line written."""
    import torch

    from .models import load_checkpoint

    model, meta = load_checkpoint(path, dev)
    model.to(memory_format=torch.channels_last)
    _log_runtime(dev, INFERENCE_PRECISION)
    return model, meta


def _require_finite(source, what: str, t) -> None:
    """ValueError naming ``source`` when ``t`` (N,...) holds NaN or inf (see :func:`advcam.heatmaps.require_finite`)."""
    from .heatmaps import require_finite

    require_finite(source, what, t)


def _provenance(args, **extra) -> dict:
    return {"advcam_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra, **_meta(getattr(args, "meta", None))}


def _test_set(data: str):
    import torch

    from .datasets import load_prepared
    from .models import to_tensor_images

    ds = load_prepared(data)
    imgs, labels, idx = ds.subset("test")
    if len(idx) == 0:
        raise ValueError(f"{data}: the test split is empty")
    return ds, to_tensor_images(imgs), torch.as_tensor(labels), idx


# ---------------------------------------------------------------- stages


def cmd_synth(args) -> None:
    from .faces import synthesize

    synthesize(args.out, args.identities, args.images, args.size, args.seed, args.masks, pose=args.pose,
               workers=args.workers)
    print(f"wrote {args.identities}×{args.images} images of {args.size}² to {args.out}")


def cmd_prepare(args) -> None:
    from .datasets import prepare
    from .store import write_json

    rep = prepare(
        args.root, args.out, args.size, args.identities, args.min_images, tuple(args.split), args.seed,
        args.margin, args.skip_broken, progress=not args.no_progress, masks=args.masks,
    )
    if args.report:
        write_json(args.report, rep)
    print(f"{args.out}: {rep['n']} images of {rep['identities']} identities (train {rep['train']}, val {rep['val']}, "
          f"test {rep['test']}; skipped {rep['skipped']})")


def cmd_train(args) -> None:
    import torch

    from .datasets import load_prepared
    from .models import build_model, predict, resolve_layer, save_checkpoint, target_layer_name, timm_name, to_tensor_images
    from .store import write_json
    from .precision import choose_precision, probe_batch_for
    from .train import accuracy, train_model

    dev = _setup_torch(args)
    ds = load_prepared(args.data)
    size = int(ds.images.shape[1])
    torch.manual_seed(args.seed)
    model = build_model(args.arch, len(ds.identities), pretrained=args.pretrained, pretrained_file=args.pretrained_file)
    layer = target_layer_name(args.arch, model, args.layer)
    resolve_layer(model, layer)  # fail before training on a bad layer name
    model.to(dev)
    # the probe draws its own random images: the training's random stream is untouched
    precision = choose_precision(model, dev, size, {"auto": None, "on": True, "off": False}[args.amp],
                                 probe_batch=probe_batch_for(args.batch_size))
    _log_runtime(dev, precision.describe())
    xt, yt, _ = ds.subset("train")
    xv, yv, _ = ds.subset("val")
    xs, ys, _ = ds.subset("test")
    # the training settings, passed to train_model and recorded as they are in train.json
    settings = {
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "optimizer": args.optimizer,
        "weight_decay": args.weight_decay, "warmup_epochs": args.warmup_epochs, "label_smoothing": args.label_smoothing,
        "seed": args.seed, "augment_strength": args.augment, "pixel_noise": args.pixel_noise,
        "pixel_noise_from": args.pixel_noise_from,
    }
    res = train_model(
        model, to_tensor_images(xt), torch.as_tensor(yt), to_tensor_images(xv), torch.as_tensor(yv), **settings,
        precision=precision, progress=not args.no_progress,
    )
    test_acc = accuracy(predict(model, to_tensor_images(xs)), torch.as_tensor(ys))
    meta = {
        "arch": args.arch,
        "timm_name": timm_name(args.arch),
        "num_classes": len(ds.identities),
        "identities": ds.identities,
        "input_size": size,
        "layer": layer,
        "pretrained": bool(args.pretrained or args.pretrained_file),
        "best_epoch": res.best_epoch,
        "val_acc": res.best_val_acc,
        "test_acc": test_acc,
        "data": str(args.data),
        "advcam_version": __version__,
        **_meta(args.meta),
    }
    save_checkpoint(args.out, model, meta)
    report = {
        **meta,
        "device": str(dev),
        **settings,
        "amp": args.amp,
        "precision": precision.as_dict(),
        "seconds": res.seconds,
        "train_images_per_second": res.images_per_second,
        "history": res.history,
    }
    write_json(args.report or Path(args.out).with_name("train.json"), report)
    print(f"{args.arch}: best epoch {res.best_epoch}, val acc {res.best_val_acc:.3f}, test acc {test_acc:.3f}, {res.seconds:.0f}s")


def cmd_gradient(args) -> None:
    from .attacks import gradient_sign
    from .store import write_h5

    dev = _setup_torch(args)
    model, meta = _load_for_inference(args.model, dev)
    _, x, y, idx = _test_set(args.data)
    try:
        gs = gradient_sign(model, x, y, args.batch_size)
    except ValueError as e:
        raise ValueError(f"{args.model}: {e}") from None
    _require_finite(args.model, "logits", gs.logits)
    write_h5(
        args.out,
        {"sign": gs.sign.numpy(), "logits": gs.logits.numpy(), "zero_grad": gs.zero_grad.numpy(), "index": idx, "labels": y.numpy()},
        _provenance(args, model=meta["arch"], stage="gradient", zero_grad_fraction=float(gs.zero_grad.float().mean())),
        compression="gzip",
    )
    print(f"{args.out}: {len(idx)} signs; zero-gradient fraction {float(gs.zero_grad.float().mean()):.4f}")


def _h5_keys(path: str) -> list[str]:
    import h5py

    from .store import StoreError

    try:
        with h5py.File(path, "r") as f:
            return list(f.keys())
    except OSError as e:
        raise StoreError(f"{path}: not a readable HDF5 file ({e})") from e


def _adversarial_inputs(attack: str, sign_file: str | None, adv_file: str | None, n: int, targeted: bool = False):
    """Load what perturb() needs for the attack: the stored perturbation (``delta``) when the attack file
    has one (the iterative and the targeted attacks), else the gradient sign for untargeted FGSM."""
    import torch

    from .store import read_h5

    sign = delta = zero = None
    if adv_file:
        if "delta" in _h5_keys(adv_file):
            return None, torch.as_tensor(read_h5(adv_file, ["delta"])["delta"]), None
    if attack == "fgsm" and not targeted:
        if not sign_file:
            raise ValueError("--sign is required for --attack fgsm")
        d = read_h5(sign_file, ["sign", "zero_grad"])
        sign, zero = torch.as_tensor(d["sign"]), d["zero_grad"]
        if sign.shape[0] != n:
            raise ValueError(f"{sign_file}: has {sign.shape[0]} signs for {n} test images; rerun 'advcam gradient'")
    return sign, delta, zero


def _heatmap_attrs(args, meta, layer, attack, eps, seed, input_size) -> dict:
    return _provenance(
        args, model=args.name or meta["arch"], arch=meta["arch"], layer=layer, attack=attack, eps=eps, seed=seed,
        target_mode=args.target, input_size=int(input_size), amp=bool(args.amp),
        upsample="minmax(relu(bilinear(minmax(relu(raw)), align_corners=False)))", stage="explain",
    )


def cmd_attack(args) -> None:
    import torch

    from .attacks import ATTACKS, ITERATIVE, bim, check_eps, fgsm, mifgsm, pgd, perturb, target_classes
    from .base_cam import CamOutput
    from .explainers import explain_cams
    from .heatmaps import methods_for, write_heatmaps
    from .models import predict
    from .store import read_attrs, read_h5, write_h5

    eps = check_eps(args.eps)
    if args.attack not in ATTACKS:
        raise ValueError(f"unknown attack '{args.attack}': choose one of {', '.join(ATTACKS)}")
    targeted = args.targeted != "none"
    if targeted and args.attack == "noise":
        raise ValueError("--targeted: the noise control has no target class; leave it untargeted")
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if not args.alpha > 0:
        raise ValueError(f"--alpha (the step size) must be > 0, got {args.alpha:g}")
    methods = methods_for(args.heatmaps, args.cams) if args.heatmaps else []
    dev = _setup_torch(args)
    model, meta = _load_for_inference(args.model, dev)
    layer = args.layer or meta["layer"]
    _, x, y, idx = _test_set(args.data)
    source = args.name or meta["arch"]  # the model the adversarial images were crafted on: this one, unless transferred
    transferred = None
    if args.transfer_from:  # the source model's adversarial images, classified and explained by this model
        sa = read_attrs(args.transfer_from)
        if sa.get("attack") != args.attack or float(sa.get("eps", -1)) != eps:
            raise ValueError(f"{args.transfer_from}: holds {sa.get('attack')} at ε={sa.get('eps')}, not {args.attack} at ε={eps:g}")
        if str(sa.get("targeted", "none")) != args.targeted:
            raise ValueError(f"{args.transfer_from}: its attack was targeted '{sa.get('targeted', 'none')}', not '{args.targeted}'")
        src = read_h5(args.transfer_from, ["index", "labels", "attack_target"] if "attack_target" in _h5_keys(args.transfer_from)
                      else ["index", "labels"])
        if not np.array_equal(src["index"], idx):
            raise ValueError(f"{args.transfer_from}: holds other test images than {args.data} (the source and target "
                             "models must share the input size)")
        source = sa.get("model")
        sign, delta, zero = _adversarial_inputs(args.attack, args.sign, args.transfer_from, len(idx), targeted)
        transferred = (sign, delta, torch.as_tensor(src["attack_target"]) if "attack_target" in src else None)
    else:
        sign, _, zero = _adversarial_inputs(args.attack, args.sign, None, len(idx), targeted)
    clean_logits = None
    if args.clean_logits:
        stored = read_h5(args.clean_logits, ["logits", "index"])
        if not np.array_equal(stored["index"], idx):
            raise ValueError(f"{args.clean_logits}: test indices do not match {args.data}")
        clean_logits = torch.as_tensor(stored["logits"])
    if targeted and args.targeted == "least_likely" and clean_logits is None:
        clean_logits = predict(model, x, args.batch_size)
    if transferred is not None:
        goal = transferred[2] if targeted else None
    else:
        goal = (target_classes(args.targeted, y, int(meta["num_classes"]), clean_logits, idx, args.seed)
                if targeted else None)
    extra: dict = {"targeted": args.targeted, "source_model": source}
    preds, deltas = [], []
    cams: dict[str, list] = {m: [] for m in methods}
    gen = torch.Generator().manual_seed(args.seed)
    for s in range(0, x.shape[0], args.batch_size):
        sl = slice(s, s + args.batch_size)
        xb = x[sl].float().div(255)
        tb = None if goal is None else goal[sl]
        if transferred is not None:
            sg, dl = transferred[0], transferred[1]
            xa = perturb(xb, args.attack, eps, idx[sl], None if sg is None else sg[sl], None if dl is None else dl[sl],
                         seed=args.seed)
        elif args.attack in ITERATIVE or targeted:
            if args.attack == "pgd":
                xa = pgd(model, xb, y[sl], eps, args.alpha, args.steps, not args.no_random_start, gen, target=tb)
            elif args.attack == "bim":
                xa = bim(model, xb, y[sl], eps, args.alpha, args.steps, target=tb)
            elif args.attack == "mifgsm":
                xa = mifgsm(model, xb, y[sl], eps, args.alpha, args.steps, args.decay, target=tb)
            else:
                xa = fgsm(model, xb, y[sl], eps, target=tb)
            xa = xa.cpu()
            deltas.append((xa - xb).numpy())
        else:
            xa = perturb(xb, args.attack, eps, idx[sl], None if sign is None else sign[sl], seed=args.seed)
        if methods:
            # one forward (and one logit→layer backward) gives the adversarial prediction and every method's map
            outs = explain_cams(model, layer, xa, methods, None if args.target == "predicted" else y[sl], args.batch_size,
                                amp=args.amp)
            for m, o in outs.items():
                cams[m].append(o)
            preds.append(outs[methods[0]].pred)
        else:
            lg = predict(model, xa, args.batch_size)
            _require_finite(args.model, "logits", lg)
            preds.append(lg.argmax(1))
    clean = (clean_logits if clean_logits is not None else predict(model, x, args.batch_size)).argmax(1)
    pred = torch.cat(preds)
    attack_target = goal if goal is not None else torch.full_like(y, -1)
    out = {"index": idx, "labels": y.numpy(), "pred_clean": clean.numpy(), "pred_adv": pred.numpy(),
           "attack_target": attack_target.numpy()}
    if zero is not None:
        out["zero_grad"] = zero
    if deltas:
        out["delta"] = np.concatenate(deltas).astype(np.float32)
    if args.attack in ITERATIVE:
        extra.update(steps=args.steps, alpha=args.alpha)
        extra.update({"random_start": not args.no_random_start} if args.attack == "pgd" else {})
        extra.update({"decay": args.decay} if args.attack == "mifgsm" else {})
    acc_c = float((clean == y).float().mean())
    acc_a = float((pred == y).float().mean())
    success = float((pred == goal).float().mean()) if goal is not None else float((pred != y).float().mean())
    extra["success_rate"] = success
    write_h5(args.out, out, _provenance(args, model=args.name or meta["arch"], arch=meta["arch"], stage="attack",
                                        attack=args.attack, eps=eps, seed=args.seed,
                                        acc_clean=acc_c, acc_adv=acc_a, **extra))
    if methods:
        write_heatmaps(dict(zip(methods, args.heatmaps)), {m: CamOutput.cat(v) for m, v in cams.items()}, y.numpy(), idx,
                       zero, args.model, {**_heatmap_attrs(args, meta, layer, args.attack, eps, args.seed, x.shape[-1]),
                                          "targeted": args.targeted, "source_model": source},
                       extra={"attack_target": attack_target.numpy()})
    what = f"{args.attack}{'' if not targeted else f' targeted ({args.targeted})'}"
    what += f" from {source}" if args.transfer_from else ""
    print(f"{meta['arch']} {what} ε={eps:g}: accuracy {acc_c:.3f} → {acc_a:.3f}, "
          f"{'target reached' if targeted else 'prediction changed'} for {success:.3f}")


def cmd_explain(args) -> None:
    from .attacks import check_eps, perturb
    from .base_cam import CamOutput
    from .explainers import explain_cams
    from .heatmaps import methods_for, write_heatmaps
    from .store import read_attrs, read_h5

    methods = methods_for(args.out, args.cams)
    dev = _setup_torch(args)
    model, meta = _load_for_inference(args.model, dev)
    layer = args.layer or meta["layer"]
    _, x, y, idx = _test_set(args.data)
    attack, eps, seed, zero = "clean", 0.0, 0, None
    sign = delta = None
    if args.attack_file:
        a = read_attrs(args.attack_file)
        attack, eps, seed = a["attack"], check_eps(a["eps"]), int(a.get("seed", 0))
        sign, delta, zero = _adversarial_inputs(attack, args.sign, args.attack_file, len(idx))
        stored = read_h5(args.attack_file, ["index"])["index"]
        if not np.array_equal(stored, idx):
            raise ValueError(f"{args.attack_file}: test indices do not match {args.data}; rerun the attack stage")
    cams: dict[str, list] = {m: [] for m in methods}
    for s in range(0, x.shape[0], args.batch_size):
        sl = slice(s, s + args.batch_size)
        xb = x[sl].float().div(255)
        if attack != "clean":
            xb = perturb(xb, attack, eps, idx[sl], None if sign is None else sign[sl],
                         None if delta is None else delta[sl], seed=seed)
        outs = explain_cams(model, layer, xb, methods, None if args.target == "predicted" else y[sl], args.batch_size,
                            amp=args.amp)
        for m, o in outs.items():
            cams[m].append(o)
    outs = {m: CamOutput.cat(v) for m, v in cams.items()}
    write_heatmaps(dict(zip(methods, args.out)), outs, y.numpy(), idx, zero, args.model,
                   _heatmap_attrs(args, meta, layer, attack, eps, seed, x.shape[-1]))
    for m, path in zip(methods, args.out):
        o = outs[m]
        print(f"{path}: {len(idx)} {m} maps ({attack}, ε={eps:g}), CAM {tuple(o.raw.shape[1:])}, "
              f"all-zero {int((o.raw.flatten(1).amax(1) == 0).sum())}")


def _topk_count(k: float) -> int | float:
    """--k as topk_intersection takes it: a fraction in (0, 1) stays a float, a whole number ≥ 1 is a count."""
    if 0 < k < 1:
        return float(k)
    if k >= 1 and float(k).is_integer():
        return int(k)
    raise ValueError(f"--k must be a fraction in (0, 1) or a whole number of pixels, got {k:g}")


def cmd_score(args) -> None:
    from .scores import score

    k = _topk_count(args.k)
    dev = _setup_torch(args)
    _log_runtime(dev, f"SSIM in float64 ({args.ssim})")
    df = score(args.clean, args.adv, args.out, args.measures, k, args.ssim == "gaussian", args.data, args.chance_seed, dev)
    for (attack, eps), g in df.groupby(["attack", "eps"], sort=False):
        mods = g.groupby("cam", sort=False)["nissim"].mean()
        print(f"{args.out}: {attack} ε={eps:g}, {len(g) // len(mods)} images; MOD "
              + ", ".join(f"{m} {v:.4f}" for m, v in mods.items()))


def _read_scores(paths: list[str]):
    import pandas as pd

    frames = []
    for p in paths:
        if not Path(p).is_file():
            raise FileNotFoundError(f"score table '{p}' does not exist")
        df = pd.read_csv(p)
        # MOD and VID never average over a missing value silently: a NaN here is a broken score file
        if "nissim" in df and df["nissim"].isna().any():
            bad = df.loc[df["nissim"].isna(), "index"].tolist() if "index" in df else []
            raise ValueError(f"score table '{p}' has {int(df['nissim'].isna().sum())} NaN NISSIM values "
                             f"(test images {bad[:10]}); rerun its score job")
        frames.append(df)
    if not frames:
        raise ValueError("no score tables given")
    return pd.concat(frames, ignore_index=True)


def cmd_sanity(args) -> None:
    from .heatmaps import methods_for
    from .sanity import run_sanity

    methods = methods_for(args.out, args.cams)
    dev = _setup_torch(args)
    _log_runtime(dev, INFERENCE_PRECISION)
    df = run_sanity(args.model, args.data, dict(zip(methods, args.out)), args.images, args.seed, args.target,
                    args.batch_size, dev, args.name)
    for (cam, blocks), g in df.groupby(["cam", "blocks"], sort=False):
        print(f"{args.name or args.model}: {cam} with {blocks} block(s) randomised ({g['block'].iloc[0]}): Spearman "
              f"{g['spearman'].mean():.3f}, NISSIM {g['nissim'].mean():.3f}")


def cmd_summarise(args) -> None:
    import pandas as pd

    from .store import atomic_path
    from .summary import mod_vid, sanity_summary, vid, vid_per_image

    table = _read_scores(args.scores)
    summ = mod_vid(table, confidence=args.confidence, n_resamples=args.resamples, seed=args.seed)
    sanity = None
    if args.sanity:
        for p in args.sanity:
            if not Path(p).is_file():
                raise FileNotFoundError(f"sanity table '{p}' does not exist")
        sanity = sanity_summary(pd.concat([pd.read_csv(p) for p in args.sanity], ignore_index=True), args.sanity_threshold)
        flags = sanity.groupby(["model", "cam"], sort=False)["flag"].first().rename("sanity").reset_index()
        summ = summ.merge(flags, on=["model", "cam"], how="left")
    outs = [(args.out, summ), (args.vid, vid(table)), (args.vid_images, vid_per_image(table)), (args.nissim, table),
            (args.sanity_out, sanity)]
    for path, frame in outs:
        if path and frame is not None:
            with atomic_path(path) as tmp:
                frame.to_csv(tmp, index=False, float_format="%.6g")
    cols = ["model", "cam", "attack", "eps", "n", "mod", "nissim_var", "acc_clean", "acc_adv", "flip_rate", "success_rate"]
    print(summ[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))


def cmd_plot(args) -> None:
    import pandas as pd

    from .plots import plot_accuracy, plot_localisation, plot_mod, plot_nissim, plot_sanity, plot_transfer, plot_vid

    summ = pd.read_csv(args.summary)
    out = Path(args.out_dir)
    if "source_model" in summ:
        for target in sorted(set(summ.loc[summ["source_model"] != summ["model"], "model"])):
            plot_transfer(summ, target, out / f"transfer_{target}")
    plot_mod(summ, out / "mod")
    plot_accuracy(summ, out / "accuracy")
    if "energy_adv_mean" in summ:
        plot_localisation(summ, out / "localisation")
    if args.vid_images:
        plot_vid(pd.read_csv(args.vid_images), out / "vid")
    if args.nissim:
        table = pd.read_csv(args.nissim)
        for attack in sorted(set(table["attack"].unique()) - {"chance"}):
            plot_nissim(table, out / f"nissim_{attack}", attack)
    if args.sanity:
        sanity = pd.read_csv(args.sanity)
        for model in sorted(sanity["model"].unique()):
            plot_sanity(sanity, model, out / f"sanity_{model}")
    print(f"figures written to {out}")


def cmd_gallery(args) -> None:
    from .datasets import load_prepared
    from .heatmaps import method_of
    from .plots import plot_gallery
    from .store import read_attrs, read_h5

    ds = load_prepared(args.data)
    clean = {}
    for f in args.clean:
        clean.setdefault(method_of(read_attrs(f)), f)
    first = read_h5(next(iter(clean.values())), ["pred", "index", "labels"])
    rng = np.random.default_rng(args.seed)
    pick = np.sort(rng.choice(len(first["index"]), size=min(args.n, len(first["index"])), replace=False))
    clean_maps = {m: read_h5(f, ["maps"])["maps"][pick] for m, f in clean.items()}
    adv_maps: dict[str, dict[float, np.ndarray]] = {m: {} for m in clean}
    adv_pred: dict[float, np.ndarray] = {}
    for f in args.adv:
        at = read_attrs(f)
        m, e = method_of(at), float(at["eps"])
        if m not in clean:
            raise ValueError(f"'{f}' holds {m} maps but no clean heatmap file does (they hold {', '.join(clean)})")
        d = read_h5(f, ["maps", "pred", "index"])
        if not np.array_equal(d["index"], first["index"]):
            raise ValueError(f"'{f}' holds other test images than '{clean[m]}'")
        adv_maps[m][e] = d["maps"][pick]
        adv_pred[e] = d["pred"][pick]
    plot_gallery(ds.images[first["index"][pick]], clean_maps, adv_maps, first["pred"][pick], adv_pred, ds.identities,
                 first["labels"][pick], args.out, title=args.title or "")
    print(f"gallery written to {args.out}.png/.pdf")


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    from .scores import LOCALISATION, MEASURES as SCORE_MEASURES

    p = argparse.ArgumentParser(
        prog="advcam",
        description="How adversarial attacks move Grad-CAM explanations (MOD/VID). Stages:\n"
        + "\n".join(f"  {k:<10} {v}" for k, v in STAGES.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"advcam {__version__}")
    sub = p.add_subparsers(dest="stage", metavar="STAGE", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

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
    s.add_argument("--layer", help="Grad-CAM target layer (default: the paper's, else timm feature_info[-1])")
    s.add_argument("--pretrained", action="store_true", help="timm ImageNet weights (needs network or cache)")
    s.add_argument("--pretrained-file", help="local weights file loaded through timm")
    s.add_argument("--epochs", type=int, default=10)
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--lr", type=float, default=1e-3)
    s.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    s.add_argument("--weight-decay", type=float, default=0.05)
    s.add_argument("--warmup-epochs", type=float, default=1.0)
    s.add_argument("--label-smoothing", type=float, default=0.1)
    s.add_argument("--augment", type=float, default=1.0, help="augmentation strength (0 = none)")
    s.add_argument("--pixel-noise", type=float, default=0.0, help="Gaussian training noise: per-image std drawn from U(0, this) ([0,1] scale)")
    s.add_argument("--pixel-noise-from", type=int, default=1, metavar="EPOCH",
                   help="first epoch (1-based) that adds --pixel-noise")
    s.add_argument("--amp", choices=["auto", "on", "off"], default="auto",
                   help="bf16 autocast for training: auto = chosen per machine (CUDA, AMX, or a probe finds it faster); "
                        "on/off force it")
    s.add_argument("--seed", type=int, default=0)
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
    s.add_argument("--attack", required=True, help="fgsm, noise (random-sign control), pgd, bim or mifgsm")
    s.add_argument("--eps", type=float, required=True, help="L∞ radius on the [0,1] pixel scale")
    s.add_argument("--sign", help="gradient sign file (untargeted fgsm)")
    s.add_argument("--seed", type=int, default=0, help="noise signs / PGD random start / random targets")
    s.add_argument("--steps", "--pgd-steps", type=int, default=10, help="iterations of pgd, bim, mifgsm (≥ 1)")
    s.add_argument("--alpha", "--pgd-alpha", type=float, default=2 / 255, help="step size of pgd, bim, mifgsm (> 0)")
    s.add_argument("--decay", type=float, default=1.0, help="mifgsm's momentum decay")
    s.add_argument("--no-random-start", action="store_true", help="pgd starts at the image, not in the ε-ball")
    s.add_argument("--targeted", choices=["none", "next", "least_likely", "random"], default="none",
                   help="step towards a target class per image: the next identity, the least likely one (clean "
                        "logits), or one drawn at random (seeded); never the true label")
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
    s.add_argument("--ssim", choices=["uniform", "gaussian"], default="uniform",
                   help="uniform 7×7 with sample covariance, or Gaussian σ=1.5 with population covariance")
    s.add_argument("--measures", nargs="*", choices=list(SCORE_MEASURES), default=list(SCORE_MEASURES),
                   help="dissimilarity measures besides SSIM/NISSIM, one column each (default: all): "
                        + "; ".join(f"{m}: {what}" for m, what in SCORE_MEASURES.items()))
    s.add_argument("--k", type=float, default=0.1,
                   help="top-k intersection: a fraction of the pixels in (0, 1) or a whole number of pixels")
    s.add_argument("--data", help="the prepared store of the test images: with part masks it adds the localisation "
                                  "columns (" + ", ".join(LOCALISATION) + ")")
    s.add_argument("--chance-seed", type=int,
                   help="add the chance reference (attack 'chance', ε 0): each clean map against the clean map of another "
                        "test image, paired by a derangement drawn with this seed")
    _add_common(s, device=True)
    s.set_defaults(func=cmd_score)

    s = sub.add_parser("sanity", help=STAGES["sanity"], description=STAGES["sanity"], formatter_class=fmt)
    s.add_argument("--model", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--out", required=True, nargs="+", metavar="FILE",
                   help="per-image CSVs, one per CAM method, each named <method>.csv (or give --cams)")
    s.add_argument("--cams", nargs="+", metavar="METHOD", help="the CAM method of each --out file, in order")
    s.add_argument("--images", type=int, default=16, help="test images (a seeded draw)")
    s.add_argument("--seed", type=int, default=0, help="seed of the draw and of the re-initialisation")
    s.add_argument("--target", choices=["predicted", "label"], default="predicted",
                   help="class each map explains (the trained model's prediction, at every step), or the true label")
    s.add_argument("--name", help="model name to record (default: the checkpoint's arch)")
    _add_common(s, device=True)
    s.set_defaults(func=cmd_sanity)

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
    s.add_argument("--sanity-threshold", type=float, default=0.5,
                   help="mean Spearman with the trained maps at or above which a method is flagged as ignoring the head "
                        "(head randomised) or the weights (all randomised)")
    s.set_defaults(func=cmd_summarise)

    s = sub.add_parser("plot", help=STAGES["plot"], description=STAGES["plot"], formatter_class=fmt)
    s.add_argument("--summary", required=True, help="mod_vid.csv")
    s.add_argument("--vid-images", help="per-image VID CSV")
    s.add_argument("--nissim", help="all per-image NISSIM rows")
    s.add_argument("--sanity", help="sanity.csv (advcam summarise --sanity-out): a figure per model")
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
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .datasets import DatasetError
    from .store import StoreError

    try:
        args.func(args)
    except (ValueError, FileNotFoundError, DatasetError, StoreError) as e:
        print(f"advcam {args.stage}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a write or read the stage could not do (disk full, permissions): name the file
        where = f"'{e.filename}': " if e.filename else ""
        print(f"advcam {args.stage}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
