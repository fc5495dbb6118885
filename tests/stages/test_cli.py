"""The stages through their commands and their functions: each command writes what its stage function writes,
bad inputs exit 2 with one line naming the file or value, a bug shows its traceback, nothing half-written stays."""
import json
import re
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from advcam.cli import STAGES, main


def run(*args):
    return main([str(a) for a in args])


def test_help_lists_stages():
    out = subprocess.run([sys.executable, "-m", "advcam.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for stage in STAGES:
        assert stage in out


@pytest.mark.parametrize("stage", list(STAGES))
def test_stage_help(stage, capsys):
    with pytest.raises(SystemExit) as e:
        main([stage, "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "--" in out
    # a default is said once, and only where there is one
    assert "(default: None)" not in out and "(default: False)" not in out
    assert not re.search(r"\(default: [^()]*\) \(default:", out), out


@pytest.fixture(scope="module")
def trained(tiny_store, tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    model = d / "models" / "resnet50" / "model.pt"
    assert run("train", "--data", tiny_store, "--arch", "resnet50", "--out", model, "--epochs", "2",
               "--batch-size", "8", "--pixel-noise", "0.05", "--pixel-noise-from", "2", "--no-progress") == 0
    return d, model


def test_a_replicate_trains_with_its_own_seed_on_the_same_split(tiny_store, trained, tmp_path, capsys):
    """Replicate 1 of the trained model: the same split and settings, a seed derived from (seed, 1), other weights;
    the checkpoint, train.json and the heatmaps made from it record the replicate. The job log (stderr) gets a
    line per finished epoch, the numbers train.json records."""
    from advcam.train import replicate_seed

    d, model = trained
    r1 = tmp_path / "r1" / "model.pt"
    capsys.readouterr()
    assert run("train", "--data", tiny_store, "--arch", "resnet50", "--out", r1, "--epochs", "2", "--batch-size", "8",
               "--pixel-noise", "0.05", "--pixel-noise-from", "2", "--no-progress", "--replicate", "1",
               "--name", "resnet50") == 0
    err = capsys.readouterr().err
    history = json.loads((tmp_path / "r1" / "train.json").read_text())["history"]
    for rec in history:
        assert (f"epoch {rec['epoch']}/2: train loss {rec['train_loss']:.3f}, train acc {rec['train_acc']:.1%}, "
                f"val acc {rec['val_acc']:.1%}") in err, err
    a, b = torch.load(model, weights_only=True), torch.load(r1, weights_only=True)
    assert a["meta"]["replicate"] == 0 and a["meta"]["train_seed"] == 0 == replicate_seed(0, 0)
    assert b["meta"]["replicate"] == 1 and b["meta"]["train_seed"] == replicate_seed(0, 1) != 0
    assert b["meta"]["model"] == "resnet50" and b["meta"]["config_seed"] == 0
    assert a["meta"]["identities"] == b["meta"]["identities"]
    assert any(not torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"] if k.endswith("weight"))
    report = json.loads((tmp_path / "r1" / "train.json").read_text())
    assert report["replicate"] == 1 and report["seed"] == replicate_seed(0, 1)
    hm = tmp_path / "r1" / "clean.h5"
    assert run("explain", "--model", r1, "--data", tiny_store, "--out", hm) == 0
    with h5py.File(hm) as f:
        assert f.attrs["replicate"] == 1
    assert len({replicate_seed(s, r) for s in range(20) for r in range(20)}) == 400  # no two (seed, r) share a stream


def test_pipeline_in_process(tiny_store, trained, capsys):
    d, model = trained
    meta = torch.load(model, weights_only=True)["meta"]
    assert meta["layer"] == "layer4" and meta["num_classes"] == 4
    report = json.loads((d / "models/resnet50/train.json").read_text())
    assert report["pixel_noise"] == 0.05 and report["pixel_noise_from"] == 2 and report["batch_size"] == 8
    sign = d / "att" / "fgsm_sign.h5"
    assert run("gradient", "--model", model, "--data", tiny_store, "--out", sign) == 0
    assert run("explain", "--model", model, "--data", tiny_store, "--out", d / "hm" / "clean.h5") == 0
    scores = []
    for attack in ("fgsm", "noise", "pgd"):
        for eps in (0.02, 0.1):
            a = d / "att" / attack / f"{eps}.h5"
            assert run("attack", "--model", model, "--data", tiny_store, "--attack", attack, "--eps", eps, "--sign", sign,
                       "--pgd-steps", "2", "--out", a) == 0
            h = d / "hm" / attack / f"{eps}.h5"
            assert run("explain", "--model", model, "--data", tiny_store, "--attack-file", a, "--sign", sign, "--out", h) == 0
            s = d / "sc" / attack / f"{eps}.csv"
            assert run("score", "--clean", d / "hm" / "clean.h5", "--adv", h, "--out", s) == 0
            scores.append(s)
    with h5py.File(d / "hm" / "fgsm" / "0.1.h5") as f:
        assert f["maps"].shape == (4, 48, 48) and f["raw"].shape[1:] == (2, 2)
        assert f.attrs["attack"] == "fgsm" and f.attrs["eps"] == 0.1 and f.attrs["layer"] == "layer4"
        assert f.attrs["target_mode"] == "predicted"
    sc = pd.read_csv(scores[1])
    assert {"ssim", "nissim", "spearman", "topk", "topk_k", "com_shift"} <= set(sc.columns)
    assert sc["topk_k"].eq(round(0.1 * 48 * 48)).all() and sc["topk"].between(0, 1).all()
    only = d / "sc" / "only.csv"
    assert run("score", "--clean", d / "hm" / "clean.h5", "--adv", d / "hm" / "fgsm" / "0.1.h5", "--out", only,
               "--measures", "spearman", "--k", "30") == 0
    assert "spearman" in pd.read_csv(only) and "topk" not in pd.read_csv(only)
    assert run("score", "--clean", d / "hm" / "clean.h5", "--adv", d / "hm" / "fgsm" / "0.1.h5", "--out", only,
               "--k", "2.5") == 2
    # one job scores every attack and ε of the model (as the workflow runs it): the rows of the separate tables
    together = d / "sc" / "all.csv"
    assert run("score", "--clean", d / "hm" / "clean.h5", "--adv",
               *[d / "hm" / a / f"{e}.h5" for a in ("fgsm", "noise", "pgd") for e in (0.02, 0.1)], "--out", together) == 0
    pd.testing.assert_frame_equal(pd.read_csv(together), pd.concat([pd.read_csv(p) for p in scores], ignore_index=True))
    summ = d / "summary" / "mod_vid.csv"
    assert run("summarise", *scores, "--out", summ, "--vid", d / "summary" / "vid.csv",
               "--vid-images", d / "summary" / "vid_images.csv", "--nissim", d / "summary" / "nissim.csv") == 0
    t = pd.read_csv(summ)
    assert len(t) == 6 and set(t["attack"]) == {"fgsm", "noise", "pgd"}
    assert t["mod"].between(0, 1).all() and t["n"].eq(4).all()
    assert len(pd.read_csv(d / "summary" / "vid.csv")) == 3
    assert run("plot", "--summary", summ, "--vid-images", d / "summary" / "vid_images.csv",
               "--nissim", d / "summary" / "nissim.csv", "--out-dir", d / "plots") == 0
    assert run("gallery", "--data", tiny_store, "--clean", d / "hm" / "clean.h5", "--adv", d / "hm" / "fgsm" / "0.02.h5",
               d / "hm" / "fgsm" / "0.1.h5", "--n", "3", "--out", d / "plots" / "gallery") == 0
    for name in ("mod", "accuracy", "vid", "nissim_fgsm", "gallery"):
        assert (d / "plots" / f"{name}.png").stat().st_size > 1000
    # an attack job that writes its heatmaps gives what a separate explain of its attack file gives
    both = d / "att" / "fgsm" / "both.h5"
    assert run("attack", "--model", model, "--data", tiny_store, "--attack", "fgsm", "--eps", "0.1", "--sign", sign,
               "--out", both, "--heatmaps", d / "hm" / "both.h5") == 0
    with h5py.File(d / "hm" / "both.h5") as f1, h5py.File(d / "hm" / "fgsm" / "0.1.h5") as f2:
        assert np.allclose(f1["maps"][()], f2["maps"][()], atol=1e-6)
        assert np.array_equal(f1["pred"][()], f2["pred"][()]) and f1.attrs["eps"] == 0.1
    # the noise control at the same ε re-derives the same perturbation in attack and explain
    with h5py.File(d / "att" / "noise" / "0.1.h5") as fa, h5py.File(d / "hm" / "noise" / "0.1.h5") as fh:
        assert np.array_equal(fa["pred_adv"][()], fh["pred"][()])


def test_stage_functions_write_what_their_commands_write(tiny_store, trained, tmp_path):
    """The seam: each command parses its arguments and calls one stage function; called from Python with plain
    values the functions write the same files."""
    from advcam.settings import AttackSettings
    from advcam.stages.attack import run_attack, run_gradient
    from advcam.stages.explain import run_explain
    from advcam.stages.summarise import summarise

    _, model = trained
    cli, py = tmp_path / "cli", tmp_path / "py"
    assert run("gradient", "--model", model, "--data", tiny_store, "--out", cli / "sign.h5") == 0
    gs = run_gradient(model, tiny_store, py / "sign.h5")
    assert run("attack", "--model", model, "--data", tiny_store, "--attack", "fgsm", "--eps", "0.1",
               "--sign", cli / "sign.h5", "--out", cli / "fgsm.h5", "--heatmaps", cli / "adv" / "gradcam.h5") == 0
    attrs = run_attack(model, tiny_store, py / "fgsm.h5", AttackSettings(attack="fgsm"), 0.1, sign_file=py / "sign.h5",
                       heatmaps={"gradcam": py / "adv" / "gradcam.h5"})
    assert run("explain", "--model", model, "--data", tiny_store, "--out", cli / "clean" / "gradcam.h5",
               cli / "clean" / "eigencam.h5") == 0
    outs = run_explain(model, tiny_store, {"gradcam": py / "clean" / "gradcam.h5", "eigencam": py / "clean" / "eigencam.h5"})
    assert gs.sign.shape[0] == 4 and set(outs) == {"gradcam", "eigencam"} and 0 <= attrs["acc_adv"] <= 1
    for rel in ("sign.h5", "fgsm.h5", "adv/gradcam.h5", "clean/gradcam.h5", "clean/eigencam.h5"):
        with h5py.File(cli / rel) as a, h5py.File(py / rel) as b:
            assert set(a) == set(b), rel
            for k in a:
                np.testing.assert_array_equal(a[k][()], b[k][()], err_msg=f"{rel}:{k}")
            assert {k: str(v) for k, v in a.attrs.items() if k != "created"} == \
                   {k: str(v) for k, v in b.attrs.items() if k != "created"}, rel
    for d in (cli, py):
        assert run("score", "--clean", d / "clean" / "gradcam.h5", "--adv", d / "adv" / "gradcam.h5",
                   "--out", d / "scores.csv") == 0
    assert run("summarise", cli / "scores.csv", "--out", cli / "mod_vid.csv", "--resamples", "100") == 0
    summ = summarise([py / "scores.csv"], py / "mod_vid.csv", n_resamples=100)
    pd.testing.assert_frame_equal(pd.read_csv(cli / "mod_vid.csv"), pd.read_csv(py / "mod_vid.csv"))
    assert summ["mod"].between(0, 1).all()


def test_cam_methods_one_file_each(tiny_store, trained, tmp_path, capsys):
    """explain and attack write one file per method, named after it, each equal to advcam.cam of that method;
    score pairs them by the method each records, whatever the order; the gallery shows a row per method."""
    import advcam
    from advcam.datasets import load_prepared
    from advcam.io.checkpoint import load_checkpoint
    from advcam.models import to_tensor_images

    d, model = trained
    methods = ["gradcam", "gradcampp", "eigencam", "layercam"]
    clean = [tmp_path / "hm" / "clean" / f"{m}.h5" for m in methods]
    assert run("explain", "--model", model, "--data", tiny_store, "--out", *clean) == 0
    sign = tmp_path / "sign.h5"
    assert run("gradient", "--model", model, "--data", tiny_store, "--out", sign) == 0
    adv = [tmp_path / "hm" / "fgsm" / "0.1" / f"{m}.h5" for m in methods]
    assert run("attack", "--model", model, "--data", tiny_store, "--attack", "fgsm", "--eps", "0.1", "--sign", sign,
               "--out", tmp_path / "att.h5", "--heatmaps", *adv) == 0
    net, meta = load_checkpoint(model, "cpu")
    net.to(memory_format=torch.channels_last)  # as the stages run it (the layout moves gradcampp's sums by ~1e-4)
    ds = load_prepared(tiny_store)
    with h5py.File(clean[0]) as f:
        idx = f["index"][()]
    x = to_tensor_images(ds.images[idx])
    ref = advcam.cams(net, meta["layer"], x, methods)
    preds = set()
    for m, path in zip(methods, clean):
        with h5py.File(path) as f:
            assert f.attrs["cam"] == m and f["maps"].shape == (4, 48, 48)
            assert np.abs(f["maps"][()] - ref[m].numpy()).max() < 1e-5, m
    for m, path in zip(methods, adv):
        with h5py.File(path) as f:
            assert f.attrs["cam"] == m and f.attrs["attack"] == "fgsm"
            preds.add(tuple(f["pred"][()]))
    assert len(preds) == 1  # one forward gave every method's map and the prediction
    scores = tmp_path / "sc.csv"
    assert run("score", "--clean", *clean, "--adv", *reversed(adv), "--out", scores) == 0
    t = pd.read_csv(scores)
    assert list(t["cam"].unique()) == methods and len(t) == 4 * len(methods)
    single = tmp_path / "single.csv"
    assert run("score", "--clean", clean[1], "--adv", adv[1], "--out", single) == 0
    one = pd.read_csv(single)
    assert np.array_equal(one["nissim"], t.loc[t["cam"] == "gradcampp", "nissim"])
    assert run("summarise", scores, "--out", tmp_path / "s.csv") == 0
    summ = pd.read_csv(tmp_path / "s.csv")
    assert sorted(summ["cam"]) == sorted(methods) and summ["acc_adv"].nunique() == 1
    assert run("gallery", "--data", tiny_store, "--clean", *clean, "--adv", *adv, "--n", "2",
               "--out", tmp_path / "gallery") == 0
    assert (tmp_path / "gallery.png").stat().st_size > 1000
    capsys.readouterr()
    # a file name that names no method, a method without a partner, a method named twice: named errors
    assert run("explain", "--model", model, "--data", tiny_store, "--out", clean[0], tmp_path / "maps.h5") == 2
    assert "maps.h5': cannot tell its CAM method" in capsys.readouterr().err
    assert run("explain", "--model", model, "--data", tiny_store, "--out", tmp_path / "a.h5", "--cams", "gradcam", "lime") == 2
    assert "unknown explainer 'lime'" in capsys.readouterr().err
    assert run("score", "--clean", clean[0], clean[2], "--adv", adv[0], adv[1], "--out", tmp_path / "x.csv") == 2
    assert "holds eigencam maps but no adversarial file does" in capsys.readouterr().err
    assert run("score", "--clean", clean[0], clean[1], "--adv", adv[0], adv[0], "--out", tmp_path / "x.csv") == 2
    assert "both hold gradcam maps" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "a.h5").exists() and not (tmp_path / "maps.h5").exists()
    # --cams names the methods of files named otherwise
    named = [tmp_path / "first.h5", tmp_path / "second.h5"]
    assert run("explain", "--model", model, "--data", tiny_store, "--out", *named, "--cams", "xgradcam", "hirescam") == 0
    with h5py.File(named[1]) as f:
        assert f.attrs["cam"] == "hirescam"


def test_iterative_and_targeted_attacks_through_the_stages(tiny_store, trained, tmp_path, capsys):
    """bim, mifgsm and targeted attacks: the attack file keeps the perturbation and each image's target, the
    heatmaps a separate explain of the attack file gives are the attack job's, the summary reports success."""
    import advcam
    from advcam.attacks import target_classes
    from advcam.datasets import load_prepared
    from advcam.io.checkpoint import load_checkpoint
    from advcam.models import to_tensor_images

    d, model = trained
    clean = tmp_path / "clean" / "gradcam.h5"
    assert run("explain", "--model", model, "--data", tiny_store, "--out", clean) == 0
    net, meta = load_checkpoint(model, "cpu")
    net.to(memory_format=torch.channels_last)
    ds = load_prepared(tiny_store)
    with h5py.File(clean) as f:
        idx, y = f["index"][()], torch.as_tensor(f["labels"][()])
    x = to_tensor_images(ds.images[idx]).float().div(255)
    scores = []
    for attack, extra, targeted in (("bim", ["--steps", "3", "--alpha", "0.01"], "none"),
                                    ("mifgsm", ["--steps", "2", "--alpha", "0.02", "--decay", "0.5"], "next"),
                                    ("fgsm", [], "random")):
        att, hm = tmp_path / attack / "att.h5", tmp_path / attack / "gradcam.h5"
        assert run("attack", "--model", model, "--data", tiny_store, "--attack", attack, "--eps", "0.05", *extra,
                   "--targeted", targeted, "--seed", "4", "--out", att, "--heatmaps", hm) == 0
        goal = None if targeted == "none" else target_classes(targeted, y, 4, indices=idx, seed=4)
        ref = {"bim": lambda: advcam.bim(net, x, y, 0.05, 0.01, 3),
               "mifgsm": lambda: advcam.mifgsm(net, x, y, 0.05, 0.02, 2, decay=0.5, target=goal),
               "fgsm": lambda: advcam.fgsm(net, x, y, 0.05, target=goal)}[attack]()
        with h5py.File(att) as f:
            assert np.abs(f["delta"][()] - (ref - x).numpy()).max() < 1e-6
            assert np.array_equal(f["attack_target"][()], -np.ones(4) if goal is None else goal.numpy())
            assert f.attrs["targeted"] == targeted
        again = tmp_path / attack / "again.h5"
        assert run("explain", "--model", model, "--data", tiny_store, "--attack-file", att, "--out", again) == 0
        with h5py.File(hm) as f1, h5py.File(again) as f2:
            assert np.array_equal(f1["pred"][()], f2["pred"][()]) and np.allclose(f1["maps"][()], f2["maps"][()], atol=1e-6)
        s = tmp_path / attack / "score.csv"
        assert run("score", "--clean", clean, "--adv", hm, "--out", s) == 0
        scores.append(s)
        # transfer: another model classifies and explains these adversarial images; here the model itself,
        # which must then give back its own white-box predictions and maps
        moved, moved_hm = tmp_path / attack / "from.h5", tmp_path / attack / "from" / "gradcam.h5"
        assert run("attack", "--model", model, "--data", tiny_store, "--attack", attack, "--eps", "0.05",
                   "--targeted", targeted, "--transfer-from", att, "--out", moved, "--heatmaps", moved_hm) == 0
        with h5py.File(hm) as f1, h5py.File(moved_hm) as f2:
            assert np.array_equal(f1["pred"][()], f2["pred"][()]) and np.allclose(f1["maps"][()], f2["maps"][()], atol=1e-6)
            assert np.array_equal(f1["attack_target"][()], f2["attack_target"][()])
    assert run("summarise", *scores, "--out", tmp_path / "s.csv") == 0
    summ = pd.read_csv(tmp_path / "s.csv").set_index("attack")
    assert summ.loc["bim", "targeted"] == "none" and summ.loc["mifgsm", "targeted"] == "next"
    assert summ["success_rate"].between(0, 1).all()
    capsys.readouterr()
    assert run("attack", "--model", model, "--data", tiny_store, "--attack", "bim", "--eps", "0.05", "--steps", "0",
               "--out", tmp_path / "x.h5") == 2
    assert "error: steps 0: must be >= 1" in capsys.readouterr().err
    assert run("attack", "--model", model, "--data", tiny_store, "--attack", "mifgsm", "--eps", "0.05", "--alpha", "0",
               "--out", tmp_path / "x.h5") == 2
    assert "error: alpha 0.0: must be > 0" in capsys.readouterr().err
    assert run("attack", "--model", model, "--data", tiny_store, "--attack", "noise", "--eps", "0.05", "--targeted",
               "next", "--out", tmp_path / "x.h5") == 2
    assert "the noise control has no target class" in capsys.readouterr().err
    assert run("attack", "--model", model, "--data", tiny_store, "--attack", "bim", "--eps", "0.1",
               "--transfer-from", tmp_path / "bim" / "att.h5", "--out", tmp_path / "x.h5") == 2
    assert "holds bim at ε=0.05, not bim at ε=0.1" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()


def test_strong_attacks_through_the_stages(tiny_store, trained, tmp_path, capsys):
    """pgdl2, apgd (L2), square, cw and deepfool as attack jobs: the stored perturbation is the library's (cw and
    deepfool's clipped to the L2 ball of ε), within its ball, re-applied alike by explain and transfer; the summary
    has each attack's ball and mean ‖δ‖₂, no mod_rel for the L2 ones (the noise control is L∞), and the figures
    draw the L2 attacks in panels of their own."""
    import advcam
    from advcam.datasets import load_prepared
    from advcam.io.checkpoint import load_checkpoint
    from advcam.models import to_tensor_images
    from advcam.plots import plot_accuracy, plot_mod

    d, model = trained
    clean = tmp_path / "clean" / "gradcam.h5"
    assert run("explain", "--model", model, "--data", tiny_store, "--out", clean) == 0
    net, _ = load_checkpoint(model, "cpu")
    net.to(memory_format=torch.channels_last)
    ds = load_prepared(tiny_store)
    with h5py.File(clean) as f:
        idx, y = f["index"][()], torch.as_tensor(f["labels"][()])
    x = to_tensor_images(ds.images[idx]).float().div(255)
    gen = lambda: torch.Generator().manual_seed(4)  # noqa: E731  (the stage's generator, seeded per job)
    cases = {  # attack: (eps, flags, the library's result, ball)
        "pgdl2": (2.0, ["--steps", "2", "--alpha", "0.8"], lambda: advcam.pgdl2(net, x, y, 2.0, 0.8, 2, True, gen()), "L2"),
        "apgd": (1.5, ["--norm", "L2", "--steps", "3", "--loss", "dlr"],
                 lambda: advcam.apgd(net, x, y, "L2", 1.5, 3, 1, 4, "dlr"), "L2"),
        "square": (0.05, ["--n-queries", "6", "--loss", "ce"],
                   lambda: advcam.square(net, x, y, eps=0.05, n_queries=6, loss="ce", seed=4), "Linf"),
        "cw": (0.1, ["--steps", "10", "--lr", "0.1", "--c", "100"],
               lambda: advcam.clip_l2(x, advcam.cw(net, x, y, 100.0, 0.0, 10, 0.1), 0.1), "L2"),
        "deepfool": (0.01, ["--steps", "3"], lambda: advcam.clip_l2(x, advcam.deepfool(net, x, y, 3), 0.01), "L2"),
    }
    scores = []
    for attack, (eps, extra, ref, ball) in cases.items():
        att, hm = tmp_path / attack / "att.h5", tmp_path / attack / "gradcam.h5"
        assert run("attack", "--model", model, "--data", tiny_store, "--attack", attack, "--eps", str(eps), *extra,
                   "--seed", "4", "--out", att, "--heatmaps", hm) == 0
        assert f"({ball})" in capsys.readouterr().out
        with h5py.File(att) as f:
            delta, l2, linf = f["delta"][()], f["delta_l2"][()], f["delta_linf"][()]
            assert f.attrs["norm"] == ball
            assert np.abs(delta - (ref() - x).numpy()).max() < 1e-6, attack
        assert np.allclose(l2, np.linalg.norm(delta.reshape(len(delta), -1), axis=1), rtol=1e-5)
        assert (l2 if ball == "L2" else linf).max() <= eps * (1 + 1e-5), attack
        if attack == "deepfool":  # the clip bit: the minimum-norm perturbation of an image it moved is longer than ε
            raw = advcam.l2_norms(x, advcam.deepfool(net, x, y, 3)).numpy()
            assert raw.max() > eps and np.allclose(l2, np.minimum(raw, eps), rtol=1e-5), (raw, l2)
        again = tmp_path / attack / "again.h5"
        assert run("explain", "--model", model, "--data", tiny_store, "--attack-file", att, "--out", again) == 0
        moved, moved_hm = tmp_path / attack / "from.h5", tmp_path / attack / "from" / "gradcam.h5"
        assert run("attack", "--model", model, "--data", tiny_store, "--attack", attack, "--eps", str(eps), *extra,
                   "--transfer-from", att, "--out", moved, "--heatmaps", moved_hm) == 0
        with h5py.File(hm) as f1, h5py.File(again) as f2, h5py.File(moved_hm) as f3:
            for f in (f2, f3):
                assert np.array_equal(f1["pred"][()], f["pred"][()]) and np.allclose(f1["maps"][()], f["maps"][()],
                                                                                     atol=1e-6)
            assert np.array_equal(f1["delta_l2"][()], f3["delta_l2"][()])
        s = tmp_path / attack / "score.csv"
        assert run("score", "--clean", clean, "--adv", hm, "--out", s) == 0
        scores.append(s)
    noise_hm = tmp_path / "noise" / "gradcam.h5"
    assert run("attack", "--model", model, "--data", tiny_store, "--attack", "noise", "--eps", "0.05",
               "--out", tmp_path / "noise" / "att.h5", "--heatmaps", noise_hm) == 0
    assert run("score", "--clean", clean, "--adv", noise_hm, "--out", tmp_path / "noise.csv") == 0
    assert run("summarise", *scores, tmp_path / "noise.csv", "--out", tmp_path / "s.csv") == 0
    summ = pd.read_csv(tmp_path / "s.csv").set_index("attack")
    assert dict(summ["norm"]) == {"pgdl2": "L2", "apgd": "L2", "square": "Linf", "cw": "L2", "deepfool": "L2",
                                  "noise": "Linf"}
    assert np.isclose(summ.loc["noise", "delta_linf_mean"], 0.05, atol=1e-6)
    assert (summ.loc[["pgdl2", "apgd", "cw", "deepfool"], "delta_l2_mean"] <= summ.loc[["pgdl2", "apgd", "cw",
                                                                                        "deepfool"], "eps"] + 1e-5).all()
    assert summ.loc[["pgdl2", "apgd", "cw", "deepfool"], "mod_rel"].isna().all()
    for fn in (plot_mod, plot_accuracy):
        assert all(p.stat().st_size > 0 for p in fn(summ.reset_index(), tmp_path / fn.__name__))
    capsys.readouterr()
    assert run("attack", "--model", model, "--data", tiny_store, "--attack", "square", "--eps", "2",
               "--out", tmp_path / "x.h5") == 2
    assert "eps 2.0: square's eps is an L∞ radius" in capsys.readouterr().err
    assert run("attack", "--model", model, "--data", tiny_store, "--attack", "cw", "--eps", "1", "--kappa", "-1",
               "--out", tmp_path / "x.h5") == 2
    assert "error: kappa -1.0: must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()


def test_bad_inputs_exit_2(tiny_store, trained, tmp_path, capsys):
    _, model = trained
    assert run("attack", "--model", model, "--data", tiny_store, "--attack", "noise", "--eps", "1.5", "--out", tmp_path / "a.h5") == 2
    assert "--eps: eps 1.5: noise's eps is an L∞ radius" in capsys.readouterr().err
    assert run("attack", "--model", model, "--data", tiny_store, "--attack", "fab", "--eps", "0.1", "--out", tmp_path / "a.h5") == 2
    assert "unknown attack 'fab'" in capsys.readouterr().err
    assert run("train", "--data", tiny_store, "--arch", "resnet5O", "--out", tmp_path / "m.pt", "--no-progress") == 2
    assert "unknown model 'resnet5O'" in capsys.readouterr().err
    assert run("train", "--data", tiny_store, "--arch", "resnet50", "--layer", "layer9", "--out", tmp_path / "m.pt") == 2
    assert "layer 'layer9' does not exist" in capsys.readouterr().err
    assert run("prepare", "--root", tmp_path / "missing", "--out", tmp_path / "d.h5", "--size", "32") == 2
    assert "missing' does not exist" in capsys.readouterr().err
    assert run("explain", "--model", tmp_path / "none.pt", "--data", tiny_store, "--out", tmp_path / "h.h5") == 2
    assert "none.pt' does not exist" in capsys.readouterr().err
    assert not any(tmp_path.glob("*.h5")) and not (tmp_path / "m.pt").exists()


class _Boom:
    """Unpickling this would run a shell command: a weights-only load must refuse it."""

    def __reduce__(self):
        return (__import__("os").system, ("touch pwned-by-checkpoint",))


def test_foreign_or_broken_checkpoints_are_named_errors(tiny_store, trained, tmp_path, capsys, monkeypatch):
    _, model = trained
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "meta": _Boom()}, evil)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(model.read_bytes()[:5000])
    foreign = tmp_path / "foreign.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), foreign)
    wrong = tmp_path / "wrong.pt"
    ck = torch.load(model, weights_only=True)
    ck["meta"]["arch"] = "resnet18"
    torch.save(ck, wrong)
    for path, why in ((evil, "not a weights-only advcam checkpoint"), (truncated, "not a weights-only advcam checkpoint"),
                      (foreign, "not an advcam checkpoint"), (wrong, "do not fit resnet18")):
        assert run("explain", "--model", path, "--data", tiny_store, "--out", tmp_path / "h.h5") == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("advcam explain: error: checkpoint") and path.name in err[-1] and why in err[-1], err
        assert "Traceback" not in "\n".join(err)
    assert not (tmp_path / "pwned-by-checkpoint").exists() and not (tmp_path / "h.h5").exists()


def test_diverging_training_stops_and_writes_no_checkpoint(tiny_store, tmp_path, capsys):
    out = tmp_path / "m" / "model.pt"
    assert run("train", "--data", tiny_store, "--arch", "resnet18", "--out", out, "--epochs", "2", "--batch-size", "8",
               "--lr", "1e12", "--amp", "off", "--no-progress") == 2
    err = capsys.readouterr().err
    assert re.search(r"training diverged: the loss is (nan|inf) at epoch 1, step [2-9] of", err), err
    assert "lower the learning rate" in err
    assert not out.exists() and not (tmp_path / "m" / "train.json").exists()


def test_a_model_with_nan_weights_stops_the_stage_naming_it(tiny_store, trained, tmp_path, capsys):
    _, model = trained
    ck = torch.load(model, weights_only=True)
    ck["state_dict"] = {k: v.float().fill_(float("nan")) if k.endswith("fc.weight") else v for k, v in ck["state_dict"].items()}
    bad = tmp_path / "nan.pt"
    torch.save(ck, bad)
    assert run("explain", "--model", bad, "--data", tiny_store, "--out", tmp_path / "h.h5") == 2
    assert f"{bad}: logits hold NaN or infinite values for 4 of 4 test images" in capsys.readouterr().err
    assert run("gradient", "--model", bad, "--data", tiny_store, "--out", tmp_path / "s.h5") == 2
    assert f"{bad}: the input gradient holds NaN or infinite values for test images [0, 1, 2, 3]" in capsys.readouterr().err
    assert not any(tmp_path.glob("*.h5"))
    # a heatmap file with a NaN map stops the score job, naming that file
    clean, broken = tmp_path / "maps" / "clean.h5", tmp_path / "maps" / "broken.h5"
    assert run("explain", "--model", model, "--data", tiny_store, "--out", clean) == 0
    broken.write_bytes(clean.read_bytes())
    with h5py.File(broken, "r+") as f:
        maps = f["maps"][()]
        maps[2, 5, 5] = np.nan
        f["maps"][...] = maps
    assert run("score", "--clean", clean, "--adv", broken, "--out", tmp_path / "s.csv") == 2
    assert f"{broken}: heatmaps hold NaN or infinite values for 1 of 4 test images (positions [2])" in capsys.readouterr().err
    assert not (tmp_path / "s.csv").exists()


def test_a_failing_write_names_the_path_and_leaves_nothing(tiny_store, trained, tmp_path, capsys, monkeypatch):
    """ENOSPC injected at the rename and inside the HDF5 write: exit 2, the path named, no output and no
    temporary file left."""
    import errno

    import advcam.atomic as atomic
    import advcam.io.store as store

    _, model = trained
    out = tmp_path / "hm" / "clean.h5"

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(atomic.os, "replace", no_space)
        assert run("explain", "--model", model, "--data", tiny_store, "--out", out) == 2
    err = capsys.readouterr().err
    assert f"cannot write '{out}': No space left on device; nothing was written" in err and "Traceback" not in err
    with monkeypatch.context() as m:
        m.setattr(store.h5py.File, "create_dataset", no_space)
        assert run("explain", "--model", model, "--data", tiny_store, "--out", out) == 2
    assert f"cannot write '{out}'" in capsys.readouterr().err
    assert list((tmp_path / "hm").iterdir()) == []


def test_a_full_disk_leaves_no_output(tiny_store, trained, tmp_path, capsys):
    """The same on a real 16 KiB tmpfs (needs root and mount; skipped elsewhere): the heatmap file does not fit."""
    _, model = trained
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        out = disk / "clean.h5"
        assert run("explain", "--model", model, "--data", tiny_store, "--out", out) == 2
        err = capsys.readouterr().err
        assert f"cannot write '{out}'" in err and "Traceback" not in err
        assert list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_summary_refuses_nan_scores(tmp_path, capsys):
    bad = tmp_path / "s.csv"
    pd.DataFrame({"model": "m", "attack": "fgsm", "eps": 0.1, "index": [0, 1, 2], "label": 0, "pred_clean": 0,
                  "pred_adv": 1, "ssim": [0.5, np.nan, 0.4], "nissim": [0.25, np.nan, 0.3]}).to_csv(bad, index=False)
    assert run("summarise", bad, "--out", tmp_path / "mod.csv") == 2
    assert f"score table '{bad}' has 1 NaN NISSIM values (test images [1])" in capsys.readouterr().err
    assert not (tmp_path / "mod.csv").exists()


def test_a_bug_shows_its_traceback_and_input_errors_one_line(tiny_store, trained, tmp_path, capsys, monkeypatch):
    """An AdvcamError is the user's: one line, exit 2. Anything else escaping a stage (here a ValueError raised
    inside torch's territory, as a bug in a library would) is a bug and propagates with its traceback, not as a
    one-line input error. ADVCAM_DEBUG=1 raises the input errors too."""
    import advcam.stages.explain as explain_stage

    _, model = trained

    def broken(*a, **k):
        raise ValueError("an internal shape mismatch")

    with monkeypatch.context() as m:
        m.setattr(explain_stage, "explain_cams", broken)
        with pytest.raises(ValueError, match="internal shape mismatch"):
            run("explain", "--model", model, "--data", tiny_store, "--out", tmp_path / "h.h5")
    assert not (tmp_path / "h.h5").exists()
    bad = ("attack", "--model", model, "--data", tiny_store, "--attack", "fab", "--eps", "0.1", "--out", tmp_path / "a.h5")
    assert run(*bad) == 2
    err = capsys.readouterr().err
    assert "advcam attack: error: unknown attack 'fab'" in err and "Traceback" not in err
    monkeypatch.setenv("ADVCAM_DEBUG", "1")
    from advcam.errors import AdvcamError

    with pytest.raises(AdvcamError, match="unknown attack 'fab'"):
        run(*bad)


def test_every_error_class_is_an_advcam_error():
    """The package's error classes share one base (and stay ValueErrors, so code that caught those still works)."""
    import inspect

    from advcam import atomic, attacks, datasets, models, similarity, train
    from advcam.errors import AdvcamError
    from advcam.io import checkpoint, store

    found = [c for mod in (atomic, attacks, datasets, models, similarity, train, checkpoint, store)
             for _, c in inspect.getmembers(mod, inspect.isclass)
             if issubclass(c, Exception) and c.__module__ == mod.__name__]
    assert len(found) >= 10
    for c in found:
        assert issubclass(c, AdvcamError) and issubclass(c, ValueError), c


def test_detection_through_the_stages(tiny_store, trained, tmp_path, capsys):
    """advcam detect scores the clean test images and each attack file's images (rebuilt from the FGSM sign, the
    noise seed or the stored delta) as the library scores the same images; summarise judges them as scikit-learn
    does; bad settings exit 2 naming the value, and nothing is written."""
    from sklearn.metrics import roc_auc_score

    import advcam
    from advcam.detection import detection_scores
    from advcam.io.checkpoint import load_checkpoint
    from advcam.settings import DetectionSettings
    from advcam.stages.runtime import test_set

    _, model = trained
    sign = tmp_path / "sign.h5"
    assert run("gradient", "--model", model, "--data", tiny_store, "--out", sign) == 0
    files = {}
    for attack, extra in (("fgsm", ["--sign", sign]), ("noise", ["--seed", "3"]), ("bim", ["--steps", "2"])):
        files[attack] = tmp_path / f"{attack}.h5"
        assert run("attack", "--model", model, "--data", tiny_store, "--attack", attack, "--eps", "0.05", *extra,
                   "--out", files[attack]) == 0
    out = tmp_path / "det" / "scores.csv"
    assert run("detect", "--model", model, "--data", tiny_store, "--attacks", *files.values(), "--sign", sign,
               "--out", out, "--draws", "2", "--pair", "gradcam", "eigencam", "--name", "resnet50") == 0
    df = pd.read_csv(out)
    assert set(df["attack"]) == {"clean", "fgsm", "noise", "bim"} and set(df["score"]) == {
        "self_consistency", "disagreement", "max_softmax", "squeeze"}
    assert set(df.loc[df["score"] == "disagreement", "cam"]) == {"gradcam+eigencam"}
    net, meta = load_checkpoint(model, "cpu")
    net.to(memory_format=torch.channels_last)
    _, x, labels, idx = test_set(tiny_store)
    x = x.float().div(255)
    st = DetectionSettings(draws=2, pair=("gradcam", "eigencam"))
    with h5py.File(files["bim"]) as f:
        x_bim = (x + torch.as_tensor(f["delta"][()])).clamp(0, 1)
    for attack, images in (("clean", x), ("fgsm", advcam.fgsm(net, x, torch.as_tensor(labels), 0.05)), ("bim", x_bim)):
        ref = detection_scores(net, meta["layer"], images, idx, st)
        got = df[df["attack"] == attack]
        for score in st.scores:
            np.testing.assert_allclose(got.loc[got["score"] == score, "value"].to_numpy(), ref[score], atol=2e-5,
                                       err_msg=f"{attack} {score}")
        assert np.array_equal(got.loc[got["score"] == "squeeze", "pred"].to_numpy(), ref["pred"])
    # the summary: one row per attack, score and positives; the AUC is scikit-learn's
    scores = tmp_path / "score.csv"
    clean_hm, adv_hm = tmp_path / "clean" / "gradcam.h5", tmp_path / "adv" / "gradcam.h5"
    assert run("explain", "--model", model, "--data", tiny_store, "--out", clean_hm) == 0
    assert run("explain", "--model", model, "--data", tiny_store, "--attack-file", files["fgsm"], "--sign", sign,
               "--out", adv_hm) == 0
    assert run("score", "--clean", clean_hm, "--adv", adv_hm, "--out", scores) == 0
    summ = tmp_path / "detection.csv"
    assert run("summarise", scores, "--out", tmp_path / "mod.csv", "--detection", out, "--detection-out", summ,
               "--fpr", "0.1", "--resamples", "200") == 0
    det = pd.read_csv(summ)
    assert len(det) == 3 * 4 * 2 and set(det["positives"]) == {"all", "flipped"} and det["fpr"].eq(0.1).all()
    assert "training_flag" in det
    row = det[(det["attack"] == "fgsm") & (det["score"] == "max_softmax") & (det["positives"] == "all")].iloc[0]
    neg = df[(df["attack"] == "clean") & (df["score"] == "max_softmax")]["value"].to_numpy()
    pos = df[(df["attack"] == "fgsm") & (df["score"] == "max_softmax")]["value"].to_numpy()
    assert row["auc"] == pytest.approx(roc_auc_score(np.r_[np.zeros(len(neg)), np.ones(len(pos))], np.r_[neg, pos]))
    assert row["auc_ci_low"] <= row["auc"] <= row["auc_ci_high"] and row["n_clean"] == row["n_adv"] == len(idx)
    assert run("plot", "--summary", tmp_path / "mod.csv", "--detection", out, "--out-dir", tmp_path / "plots") == 0
    assert (tmp_path / "plots" / "roc_resnet50.png").stat().st_size > 1000
    # bad settings: one line naming the value, nothing written
    capsys.readouterr()
    bad = tmp_path / "bad.csv"
    for flags, message in ((["--draws", "0"], "draws 0: must be >= 1"), (["--eps-d", "0"], "eps_d 0.0: must be > 0"),
                           (["--scores", "entropy"], "invalid choice: 'entropy'")):
        with pytest.raises(SystemExit) if "choice" in message else _no_raise():
            assert run("detect", "--model", model, "--data", tiny_store, "--out", bad, *flags) == 2
        assert message in capsys.readouterr().err
    assert not bad.exists()


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_attributions_through_the_stages(tiny_store, trained, tmp_path, capsys):
    """Gradient attributions are explainers of the explain, attack and score stages like the CAMs: a file each, the
    raw map at the input's size, the same maps as the library's, smoothgrad's noise shared by the clean and the
    adversarial run (the noise control at a tiny ε barely moves it), the clean files' alignment in the score rows."""
    import advcam
    from advcam.datasets import load_prepared
    from advcam.models import to_tensor_images
    from advcam.stages.runtime import load_for_inference

    d, model = trained
    methods = ["gradcam", "saliency", "smoothgrad", "guided_gradcam"]
    settings = '{"nt_samples": 2, "stdevs": 0.1, "seed": 3}'
    clean = [tmp_path / "clean" / f"{m}.h5" for m in methods]
    assert run("explain", "--model", model, "--data", tiny_store, "--out", *clean, "--attribution", settings) == 0
    with h5py.File(clean[1]) as f:
        assert f["raw"].shape == f["maps"].shape and f.attrs["cam"] == "saliency"
        maps, align = f["maps"][()], f["alignment"][()]
    assert ((align > 0) & (align <= 1)).all()
    net, _ = load_for_inference(model, torch.device("cpu"))
    _, x, _, _ = (lambda ds: (None, *ds.subset("test")))(load_prepared(tiny_store))
    xs = to_tensor_images(x).float() / 255
    np.testing.assert_allclose(maps, advcam.cams(net, "layer4", xs, ["saliency"])["saliency"].numpy(), atol=1e-5)
    adv = [tmp_path / "noise" / f"{m}.h5" for m in methods]
    assert run("attack", "--model", model, "--data", tiny_store, "--attack", "noise", "--eps", "0.001",
               "--out", tmp_path / "noise.h5", "--heatmaps", *adv, "--attribution", settings) == 0
    scores = tmp_path / "sc.csv"
    assert run("score", "--clean", *clean, "--adv", *adv, "--out", scores) == 0
    t = pd.read_csv(scores)
    assert set(t["cam"]) == set(methods) and t["alignment"].between(0, 1).all()
    assert t.loc[t["cam"] == "smoothgrad", "nissim"].max() < 0.05  # the same draws for clean and adversarial
    capsys.readouterr()
    assert run("explain", "--model", model, "--data", tiny_store, "--out", clean[2], "--attribution",
               '{"nt_samples": 0}') == 2
    assert "nt_samples 0: must be >= 1" in capsys.readouterr().err
    assert run("explain", "--model", model, "--data", tiny_store, "--out", clean[2], "--attribution", "[1]") == 2
    assert "--attribution must be a JSON object, got '[1]'" in capsys.readouterr().err


def test_adversarial_training_through_the_train_stage(tiny_store, tmp_path, capsys):
    out = tmp_path / "at" / "model.pt"
    assert run("train", "--data", tiny_store, "--arch", "resnet18", "--out", out, "--epochs", "1", "--batch-size", "8",
               "--adv-train", '{"attack": "pgd", "eps": 0.03, "steps": 2}', "--no-progress") == 0
    rep = json.loads((tmp_path / "at" / "train.json").read_text())
    assert rep["adv_train"] == {"attack": "pgd", "eps": 0.03, "steps": 2, "alpha": pytest.approx(0.0375)}
    assert rep["robust_eps"] == 0.03 and 0 <= rep["robust_acc"] <= rep["test_acc"] + 1e-9
    assert "robust accuracy under PGD at the training eps 0.03" in capsys.readouterr().out
    assert run("train", "--data", tiny_store, "--arch", "resnet18", "--out", out, "--epochs", "1",
               "--adv-train", '{"attack": "fgsm_rs", "eps": 0.03, "steps": 3}', "--no-progress") == 2
    assert "adv_train: steps 3: fgsm_rs takes exactly one step" in capsys.readouterr().err
    assert run("train", "--data", tiny_store, "--arch", "resnet18", "--out", out, "--epochs", "1",
               "--adv-train", "{oops", "--no-progress") == 2
    assert "not a JSON object" in capsys.readouterr().err
