"""The training precision is chosen from the machine: forced on/off, CUDA, AMX, no native bf16, and the CPU
micro-benchmark — each capability mocked, nothing timed for real (the probe's timings are replaced)."""
import json
import multiprocessing
import time

import pytest
import torch

import advcam.precision as precision
from advcam.cli import main
from advcam.models import build_model
from advcam.precision import Precision, choose_precision, time_training_step


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Each test starts with an empty probe cache (verdicts are cached per machine and workload)."""
    monkeypatch.setenv("ADVCAM_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model("resnet18", 4)


def _machine(monkeypatch, amx=False, bf16=True, timings=None, cap=None):
    """Mock the CPU: AMX tiles, oneDNN's native bf16, the ISA cap and the probe's seconds per image by
    configuration; returns the list of probed configurations (amp, channels_last)."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: bf16)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    if cap is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    calls = []

    def fake(model, x, amp, channels_last, reps=2, give_up_after=None):
        calls.append((amp, channels_last))
        key = ("bf16" if amp else "fp32") + ("_cl" if channels_last else "")
        return timings[key]

    monkeypatch.setattr(precision, "time_training_step", fake)
    return calls


@pytest.mark.parametrize("amp", [True, False])
def test_forced_choice_is_taken_without_probing(model, monkeypatch, amp):
    calls = _machine(monkeypatch, amx=not amp, bf16=not amp, timings={})
    p = choose_precision(model, "cpu", 32, amp=amp)
    assert p.amp is amp and p.channels_last and calls == []
    assert "forced" in p.reason and p.describe().startswith("bf16" if amp else "fp32")


def test_auto_with_amx_is_bf16_without_probing(model, monkeypatch):
    calls = _machine(monkeypatch, amx=True, timings={})
    p = choose_precision(model, "cpu", 32)
    assert p.amp and p.channels_last and "AMX" in p.reason and calls == []


def test_an_isa_cap_below_amx_hides_amx(model, monkeypatch):
    calls = _machine(monkeypatch, amx=True, timings={"fp32": 1.0, "fp32_cl": 0.8, "bf16_cl": 1.2},
                     cap="AVX512_CORE_BF16")
    p = choose_precision(model, "cpu", 32)
    assert not p.amp and len(calls) == 3
    assert "1.50x slower" in p.reason


@pytest.mark.parametrize("fp32, fp32_cl, cl", [(0.215, 0.229, False), (0.122, 0.104, True)])
def test_auto_without_native_bf16_never_times_bf16_and_probes_the_layout(model, monkeypatch, fp32, fp32_cl, cl):
    calls = _machine(monkeypatch, bf16=False, timings={"fp32": fp32, "fp32_cl": fp32_cl}, cap="AVX2")
    p = choose_precision(model, "cpu", 32)
    assert not p.amp and p.channels_last is cl and all(not amp for amp, _ in calls) and len(calls) == 2
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in p.reason and "emulate" in p.reason
    assert ("channels_last" if cl else "contiguous") + f" measured {max(fp32, fp32_cl) / min(fp32, fp32_cl):.2f}x faster" in p.reason
    assert "bf16_cl" not in p.as_dict()["probe_ms_per_image"]


def test_auto_without_amx_takes_bf16_when_the_probe_finds_it_faster(model, monkeypatch):
    _machine(monkeypatch, timings={"fp32": 0.112, "fp32_cl": 0.092, "bf16_cl": 0.052})
    p = choose_precision(model, "cpu", 32)
    assert p.amp and p.channels_last
    assert p.reason == "no AMX; bf16 measured 1.77x faster than fp32"
    assert p.as_dict()["probe_ms_per_image"] == {"fp32": 112.0, "fp32_cl": 92.0, "bf16_cl": 52.0}


def test_auto_without_amx_keeps_fp32_when_bf16_is_slower(model, monkeypatch):
    _machine(monkeypatch, timings={"fp32": 0.092, "fp32_cl": 0.081, "bf16_cl": 0.119})
    p = choose_precision(model, "cpu", 32)
    assert not p.amp and p.channels_last and p.name == "fp32 channels_last"
    assert p.reason == "no AMX; bf16 measured 1.47x slower than fp32, channels_last fastest"


def test_a_near_tie_stays_fp32_and_the_layout_follows_the_probe(model, monkeypatch):
    _machine(monkeypatch, timings={"fp32": 0.100, "fp32_cl": 0.110, "bf16_cl": 0.095})
    p = choose_precision(model, "cpu", 32)
    assert not p.amp and not p.channels_last and p.name == "fp32"
    assert "under the 1.1x margin" in p.reason


def test_cuda_choice(model, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert choose_precision(model, "cuda", 32) == Precision(True, True, "CUDA with bf16")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert not choose_precision(model, "cuda", 32).amp


def test_probe_leaves_the_model_as_it_was(model):
    """The real micro-benchmark (untimed assertions): weights, batch-norm statistics, gradients and the
    train/eval mode are unchanged, and it returns a positive time per image."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    x = torch.rand(2, 3, 32, 32)
    assert time_training_step(model, x, amp=False, channels_last=True, reps=1) > 0
    assert model.training and all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_train_log_and_report_record_the_choice(tiny_store, tmp_path, monkeypatch, capsys):
    _machine(monkeypatch, timings={"fp32": 0.092, "fp32_cl": 0.081, "bf16_cl": 0.119})
    out = tmp_path / "model.pt"
    assert main(["train", "--data", str(tiny_store), "--arch", "resnet18", "--out", str(out), "--epochs", "1",
                 "--batch-size", "8", "--device", "cpu", "--no-progress"]) == 0
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith("advcam: device cpu") and "fp32 channels_last (no AMX; bf16 measured 1.47x slower" in first
    report = json.loads((tmp_path / "train.json").read_text())
    assert report["amp"] is None  # the recipe's setting: chosen per machine (the CLI's --amp auto)
    assert report["precision"]["amp"] is False and report["precision"]["channels_last"] is True
    assert "1.47x slower" in report["precision"]["reason"]
    assert main(["train", "--data", str(tiny_store), "--arch", "resnet18", "--out", str(out), "--epochs", "1",
                 "--batch-size", "8", "--device", "cpu", "--amp", "on", "--no-progress"]) == 0
    assert "bf16 channels_last (forced: amp on)" in capsys.readouterr().err.splitlines()[0]
    assert json.loads((tmp_path / "train.json").read_text())["precision"]["amp"] is True


def test_a_probe_verdict_is_reused_for_the_same_workload(model, monkeypatch):
    calls = _machine(monkeypatch, timings={"fp32": 0.112, "fp32_cl": 0.092, "bf16_cl": 0.052})
    first = choose_precision(model, "cpu", 32)
    assert first.amp and len(calls) == 3 and precision.cache_file().is_file()
    # timings that would now say fp32: the cached verdict stands, and says where it came from
    calls = _machine(monkeypatch, timings={"fp32": 0.092, "fp32_cl": 0.081, "bf16_cl": 0.119})
    again = choose_precision(model, "cpu", 32)
    assert again.amp and calls == [] and "reused from" in again.reason and again.timings == first.timings
    # another input size is another workload: probed anew
    assert not choose_precision(model, "cpu", 48).amp and len(calls) == 3


def _probe_in_child(model, fast_layout, queue):
    """One job of a study starting its training: the probe finds ``fast_layout`` faster (0.6 s a step, so
    the other job starts while it times) and reports what it chose and whether it measured."""
    layout = {"fp32": 0.2 if fast_layout == "contiguous" else 0.3, "fp32_cl": 0.2 if fast_layout == "channels_last" else 0.3}
    measured = []

    def fake(model, x, amp, channels_last, reps=2, give_up_after=None):
        measured.append(1)
        time.sleep(0.3)
        return layout["fp32_cl" if channels_last else "fp32"]

    precision.time_training_step = fake
    p = choose_precision(model, "cpu", 32)
    queue.put((fast_layout, p.channels_last, bool(measured)))


def test_jobs_starting_together_make_one_probe_and_one_choice(model, monkeypatch):
    """Two replicates' trainings start at once with no verdict cached, and each one's timings alone would pick
    another layout: they must still train alike — one probes, the other waits for the lock and reuses its
    verdict. (Without the lock both measure and choose apart, as two VGG16 replicates did under an AVX2 cap.)"""
    _machine(monkeypatch, bf16=False, timings={}, cap="AVX2")
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    jobs = [ctx.Process(target=_probe_in_child, args=(model, layout, queue)) for layout in ("contiguous", "channels_last")]
    for j in jobs:
        j.start()
    results = [queue.get(timeout=60) for _ in jobs]
    for j in jobs:
        j.join(timeout=60)
        assert j.exitcode == 0
    assert len({cl for _, cl, _ in results}) == 1, results
    assert sum(measured for _, _, measured in results) == 1, results
    assert len(json.loads(precision.cache_file().read_text())) == 1
