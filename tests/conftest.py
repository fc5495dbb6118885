"""Shared fixtures: fresh random inputs each run (seeded per test from the clock unless ADVCAM_TEST_SEED
is set, and printed on failure) and a tiny synthetic dataset built by the project itself."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time

import numpy as np
import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))

# One probe cache for the whole session, shared by the workflow runs it starts (local and SLURM jobs inherit
# the environment): every run then makes the same precision choice, so their outputs can be compared byte
# for byte, and the developer's own cache is left alone.
if "ADVCAM_CACHE_DIR" not in os.environ:
    os.environ["ADVCAM_CACHE_DIR"] = tempfile.mkdtemp(prefix="advcam-test-cache-")
    atexit.register(shutil.rmtree, os.environ["ADVCAM_CACHE_DIR"], ignore_errors=True)  # one per session, not left behind


@pytest.fixture
def seed(request) -> int:
    s = int(os.environ.get("ADVCAM_TEST_SEED", time.time_ns() % 2**31))
    request.node.user_properties.append(("seed", s))
    torch.manual_seed(s)
    return s


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    out = yield
    rep = out.get_result()
    if rep.failed:
        seeds = [v for k, v in item.user_properties if k == "seed"]
        if seeds:
            rep.sections.append(("seed", f"reproduce with ADVCAM_TEST_SEED={seeds[0]}"))


@pytest.fixture
def rng(seed) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.fixture(scope="session")
def tiny_tree(tmp_path_factory):
    from advcam.faces import synthesize

    root = tmp_path_factory.mktemp("faces") / "synth"
    synthesize(root, identities=4, images_per_identity=12, size=48, seed=3, masks=True)
    return root


@pytest.fixture(scope="session")
def tiny_store(tiny_tree, tmp_path_factory):
    from advcam.datasets import prepare

    out = tmp_path_factory.mktemp("store") / "48.h5"
    prepare(tiny_tree, out, size=48, identities=4, min_images=10, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_masked_store(tiny_tree, tmp_path_factory):
    """The tiny tree prepared with its part masks carried into the store."""
    from advcam.datasets import prepare

    out = tmp_path_factory.mktemp("store") / "48-masks.h5"
    prepare(tiny_tree, out, size=48, identities=4, min_images=10, seed=0, masks=True)
    return out


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """configs/smoke.yaml run to the end on this machine (``snakemake --cores 2``); its workdir. Shared by the
    workflow tests and the cluster test, which compares its SLURM run against this one."""
    from workflow_run import REPO, snakemake

    wd = tmp_path_factory.mktemp("smoke")
    run = snakemake(wd, config=REPO / "configs/smoke.yaml")
    (wd / "wall_seconds.txt").write_text(f"{run.seconds:.1f}\n")
    return wd
