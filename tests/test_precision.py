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


# ---------------------------------------------------------------- a bf16 kernel that computes wrong
def _wrong_in_bf16(encoder: torch.nn.Module) -> torch.nn.Module:
    """``encoder`` with its final norm computing garbage under CPU autocast (as oneDNN's AMX bf16
    convolution did for the convolution stem's last layer)."""
    encoder.norm.register_forward_hook(
        lambda module, args, out: out.flip(-1) if torch.is_autocast_enabled("cpu") else out)
    return encoder


def _tiny() -> torch.nn.Module:
    from ivt.model import IVTEncoder, model_config

    torch.manual_seed(0)
    return IVTEncoder(model_config("tiny", width=96, num_heads=3, stem="conv", vocab_size=300))


def test_a_sound_model_passes_the_bf16_check_and_keeps_bf16():
    from ivt.model import IVTEncoder, model_config

    encoder = _tiny().train()
    state = torch.random.get_rng_state()
    assert runtime.low_precision_error(encoder, torch.bfloat16, CPU) < 0.03
    assert encoder.training and torch.equal(state, torch.random.get_rng_state())
    short = IVTEncoder(model_config("tiny", width=96, num_heads=3, vocab_size=300, max_text_len=8))
    assert runtime.low_precision_error(short, torch.bfloat16, CPU) < 0.03   # texts fit its length
    choice = runtime.PrecisionChoice(torch.bfloat16, "as asked")
    assert runtime.check_low_precision(encoder, choice, CPU, "bf16") is choice


def test_a_wrong_bf16_kernel_makes_auto_use_fp32_and_an_explicit_bf16_fail(monkeypatch):
    encoder = _wrong_in_bf16(_tiny())
    error = runtime.low_precision_error(encoder, torch.bfloat16, CPU)
    assert error > 0.5
    auto = runtime.check_low_precision(encoder, runtime.PrecisionChoice(torch.bfloat16, "native", "training"),
                                       CPU, "auto")
    assert auto.dtype is None and auto.purpose == "training"
    assert f"moves this model's embeddings by {error:.2f}" in auto.reason and auto.reason.endswith("using fp32")
    with pytest.raises(DeviceError, match=r"precision bf16: bf16 autocast moves .* use precision fp32"):
        runtime.check_low_precision(encoder, runtime.PrecisionChoice(torch.bfloat16, "as asked"), CPU, "bf16")
    monkeypatch.setenv(runtime.CPU_PRECISION_ENV, "bf16")   # auto forced to bf16: the user asked for it
    with pytest.raises(DeviceError, match=r"or unset \$IVT_CPU_PRECISION"):
        runtime.check_low_precision(encoder, runtime.PrecisionChoice(torch.bfloat16, "forced"), CPU, "auto")
    monkeypatch.setattr(runtime, "low_precision_error", lambda *a: pytest.fail("fp32 needs no check"))
    fp32 = runtime.PrecisionChoice(None, "as asked")
    assert runtime.check_low_precision(encoder, fp32, CPU, "fp32") is fp32


def test_training_and_loading_check_bf16_on_the_model_they_use(tmp_path, monkeypatch, fresh_probe):
    from helpers import write_toy_pedes
    from ivt import load
    from ivt.config import load_config
    from ivt.train.trainer import Trainer, train

    data = write_toy_pedes(tmp_path / "toy")
    fast = ["model.size=tiny", "model.image_size=[32, 16]", "train.batch_size=8", "train.threads=2",
            "data.vocab_size=200", "data.max_text_len=24", "train.epochs=1", f"data.path={data}"]
    run = train(load_config(None, [*fast, "train.precision=fp32", f"train.out_dir={tmp_path / 'run'}"]))
    seen = []
    monkeypatch.setattr(runtime, "low_precision_error", lambda encoder, dtype, device: seen.append(encoder) or 0.9)
    with pytest.raises(DeviceError, match="moves this model's embeddings by 0.90"):
        Trainer(load_config(None, [*fast, "train.precision=bf16", f"train.out_dir={tmp_path / 'bf16'}"]))
    assert not (tmp_path / "bf16").exists()                    # nothing written before the check
    monkeypatch.setattr(runtime, "cpu_info", lambda: AMX)
    monkeypatch.setattr(runtime, "probe_cpu_precision", lambda purpose: PrecisionProbe(2, 100.0, 400.0, 2.0, 2.0))
    trainer = Trainer(load_config(None, [*fast, "train.precision=auto", f"train.out_dir={tmp_path / 'auto'}"]))
    assert trainer.amp is None and "using fp32" in trainer.precision.reason and seen[-1] is trainer.model
    with pytest.raises(DeviceError, match="use precision fp32"):
        load(run, device="cpu", precision="bf16")
    model = load(run, device="cpu", precision="auto")
    assert model.dtype is None and seen[-1] is model.encoder
