"""``precision: auto`` follows what this machine measures, not an assumption: fp32 on CPUs without
native bf16 (where bf16 matmuls run ~100x slower), bf16 only where a probe measured it faster."""
from __future__ import annotations

import json

import pytest
import torch

from ivt import runtime
from ivt.errors import DeviceError
from ivt.runtime import CpuInfo, PrecisionProbe, choose_cpu_precision, precision_choice
from ivt.train.trainer import _training_precision

CPU = torch.device("cpu")
AVX2 = CpuInfo("AMD EPYC 7B13", ("avx2",), "AVX2", native_bf16=False)
AMX = CpuInfo("Intel Xeon (Sapphire Rapids)", ("avx2", "avx512f", "avx512_bf16", "amx_bf16"), "AVX512", True)


def test_no_native_bf16_means_fp32_and_the_message_gives_the_rates():
    probe = PrecisionProbe(threads=2, fp32_gflops=168.0, bf16_gflops=1.4)
    for purpose in ("training", "inference"):
        choice = choose_cpu_precision(AVX2, probe, purpose)
        assert choice.dtype is None and choice.name == "fp32"
        assert choice.describe() == (f"precision: fp32 for {purpose} (this CPU has no native bf16: "
                                     f"bf16 matmul 1.4 vs fp32 168.0 GFLOP/s)")


def test_native_bf16_is_chosen_per_purpose_by_the_measured_speedup():
    probe = PrecisionProbe(2, 190.0, 600.0, train_speedup=1.9, infer_speedup=1.05)
    train, infer = (choose_cpu_precision(AMX, probe, p) for p in ("training", "inference"))
    assert train.dtype is torch.bfloat16 and "forward+backward 1.90x" in train.reason
    assert infer.dtype is None and infer.reason.startswith("bf16 is not faster here: bf16 forward 1.05x")
    edge = PrecisionProbe(2, 190.0, 600.0, train_speedup=runtime.BF16_MIN_SPEEDUP)
    assert choose_cpu_precision(AMX, edge, "training").dtype is torch.bfloat16


@pytest.fixture
def fresh_probe(monkeypatch):
    """No cached probe, and no override from the environment."""
    monkeypatch.setattr(runtime, "_PROBES", {})
    monkeypatch.delenv(runtime.CPU_PRECISION_ENV, raising=False)


def test_auto_on_an_avx2_cpu_times_no_slow_bf16_block(monkeypatch, fresh_probe):
    monkeypatch.setattr(runtime, "cpu_info", lambda: AVX2)
    timed = []
    real = runtime._matmul_gflops
    monkeypatch.setattr(runtime, "_matmul_gflops", lambda dtype, n, reps: timed.append((dtype, n, reps))
                        or real(dtype, n, reps))
    monkeypatch.setattr(runtime, "_block_speedup", lambda **kw: pytest.fail("emulated bf16 must not be probed"))
    choice = precision_choice("auto", CPU, "training")
    assert choice.dtype is None and "no native bf16" in choice.reason
    assert timed == [(torch.float32, 256, 5), (torch.bfloat16, 128, 1)]  # one small bf16 matmul, for the message


def test_auto_on_a_native_bf16_cpu_follows_the_probe_and_measures_once(monkeypatch, fresh_probe):
    monkeypatch.setattr(runtime, "cpu_info", lambda: AMX)
    monkeypatch.setattr(runtime, "_matmul_gflops", lambda dtype, n, reps: 100.0)
    speedups = {True: 2.0, False: 0.8}
    calls = []
    monkeypatch.setattr(runtime, "_block_speedup", lambda train: calls.append(train) or speedups[train])
    assert precision_choice("auto", CPU, "training").dtype is torch.bfloat16
    assert precision_choice("auto", CPU, "inference").dtype is None
    for _ in range(3):
        precision_choice("auto", CPU, "training")
        precision_choice("auto", CPU, "inference")
    assert calls == [True, False]  # cached per purpose (and thread count)


def test_the_real_probe_is_short_and_consistent():
    info = runtime.cpu_info()
    probe = runtime.probe_cpu_precision("inference")
    assert probe.fp32_gflops > 1 and probe.bf16_gflops > 0 and probe.threads == torch.get_num_threads()
    assert (probe.infer_speedup > 0) == info.native_bf16
    assert info.capability in info.describe()


def test_explicit_choices_and_the_override(monkeypatch, fresh_probe):
    monkeypatch.setattr(runtime, "probe_cpu_precision", lambda purpose: pytest.fail("explicit: no probe"))
    assert precision_choice("fp32", CPU).dtype is None
    assert precision_choice("bf16", CPU).dtype is torch.bfloat16
    monkeypatch.setenv(runtime.CPU_PRECISION_ENV, "fp32")
    assert precision_choice("auto", CPU, "training").reason == "$IVT_CPU_PRECISION=fp32"
    monkeypatch.setenv(runtime.CPU_PRECISION_ENV, "fp8")
    with pytest.raises(DeviceError, match="IVT_CPU_PRECISION='fp8'"):
        precision_choice("auto", CPU)
    with pytest.raises(DeviceError, match="fp16 needs CUDA"):
        precision_choice("fp16", CPU)
    with pytest.raises(DeviceError, match="unknown precision 'half'"):
        precision_choice("half", CPU)


def test_a_resumed_auto_run_keeps_the_precision_it_started_with(tmp_path, monkeypatch, fresh_probe):
    monkeypatch.setattr(runtime, "cpu_info", lambda: AVX2)  # today's probe would say fp32
    (tmp_path / "last.state.json").write_text(json.dumps({"step": 3, "precision": "bf16"}))
    kept = _training_precision("auto", CPU, tmp_path)
    assert kept.dtype is torch.bfloat16 and kept.reason == "auto, as this run started"
    assert _training_precision("fp32", CPU, tmp_path).dtype is None  # an explicit setting wins
    assert _training_precision("auto", CPU, None).dtype is None       # a new run measures
