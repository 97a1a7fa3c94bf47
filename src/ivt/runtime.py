"""Device, precision and thread settings shared by training, evaluation and search."""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager

import torch

from ivt.devices import PRECISIONS, check_device
from ivt.errors import DeviceError

log = logging.getLogger("ivt")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; asking for CUDA without one is an error."""
    if check_device(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device '{name}' requested but CUDA is not available (use --device cpu or auto)")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise DeviceError(f"device '{name}' requested but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(name)


@dataclass(frozen=True)
class CpuInfo:
    """What decides bf16 speed on this CPU: its name, the ISA flags that matter and what torch makes of them."""

    model: str
    flags: tuple[str, ...]  # of avx2, avx512f, avx512_bf16, amx_bf16 (Linux /proc/cpuinfo)
    capability: str         # torch.backends.cpu.get_cpu_capability(): DEFAULT, AVX2, AVX512, ...
    native_bf16: bool       # oneDNN has bf16 kernels here (AVX-512 BF16 / AMX); without them bf16 is emulated

    def describe(self) -> str:
        flags = ", ".join(self.flags) or "none of avx2/avx512f/avx512_bf16/amx_bf16"
        return f"{self.model} ({flags}; torch {self.capability})"


_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This machine's CPU (read once)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
        found = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        model = found.group(1).strip() if found else model
        line = re.search(r"^flags\s*:(.*)$", text, re.M)
        flags = set(line.group(1).split()) if line else set()
    except OSError:  # not Linux: the torch capability still tells the vector ISA
        pass
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = "avx512_bf16" in flags or "amx_bf16" in flags
    return CpuInfo(model, tuple(f for f in _CPU_FLAGS if f in flags), torch.backends.cpu.get_cpu_capability(), native)


@dataclass(frozen=True)
class PrecisionProbe:
    """Measured on this CPU at the current thread count: matmul rates (GFLOP/s) and how much faster a
    transformer MLP block runs under bf16 autocast than in fp32 (fp32 time / bf16 time; 0 = not measured)."""

    threads: int
    fp32_gflops: float
    bf16_gflops: float
    train_speedup: float = 0.0  # forward + backward
    infer_speedup: float = 0.0  # forward, no grad


def _best_seconds(fn: Callable[[], object], reps: int) -> float:
    fn()  # warm-up: first-call allocation and kernel selection
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _matmul_gflops(dtype: torch.dtype, n: int, reps: int) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    return 2 * n**3 / _best_seconds(lambda: a @ b, reps) / 1e9


def _block_speedup(train: bool, tokens: int = 512, width: int = 192, reps: int = 7) -> float:
    """fp32 time / bf16-autocast time of LayerNorm -> Linear -> GELU -> Linear at the tiny model's width:
    the shape and mix (casts, norms, matmuls) of real steps, not only the matmul peak. The two are timed
    in alternation and each keeps its best time, so a burst of load on a shared machine hits both."""
    gen = torch.Generator().manual_seed(0)
    block = torch.nn.Sequential(torch.nn.LayerNorm(width), torch.nn.Linear(width, 4 * width), torch.nn.GELU(),
                                torch.nn.Linear(4 * width, width))
    x = torch.randn(tokens, width, generator=gen)

    def run(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if train:
                block(x.requires_grad_(True)).float().square().mean().backward()
            else:
                with torch.no_grad():
                    block(x)

    best = {False: float("inf"), True: float("inf")}
    for i in range(reps + 2):  # two rounds of warm-up: first-call allocation and oneDNN kernel selection
        for bf16 in (False, True):
            start = time.perf_counter()
            run(bf16)
            if i >= 2:
                best[bf16] = min(best[bf16], time.perf_counter() - start)
    return best[False] / best[True]


_PROBES: dict[tuple[int, str], PrecisionProbe] = {}


def probe_cpu_precision(purpose: str = "inference") -> PrecisionProbe:
    """Measure (once per process, thread count and purpose) how fast bf16 runs here against fp32.

    Tens of milliseconds where bf16 is native. Where it is not (AVX2-only CPUs: oneDNN emulates bf16,
    about 100x slower than fp32) only one small bf16 matmul is timed, for the message: the block probe
    would itself take seconds there.
    """
    threads = torch.get_num_threads()
    key = (threads, purpose)
    if key not in _PROBES:
        with torch.random.fork_rng(devices=[]):  # the probe's random inputs leave the caller's seed alone
            fp32 = _matmul_gflops(torch.float32, 256, 5)
            native = cpu_info().native_bf16
            bf16 = _matmul_gflops(torch.bfloat16, 256 if native else 128, 5 if native else 1)
            speedup = _block_speedup(train=purpose == "training") if native else 0.0
        _PROBES[key] = PrecisionProbe(threads, fp32, bf16, *((speedup, 0.0) if purpose == "training"
                                                            else (0.0, speedup)))
    return _PROBES[key]


#: bf16 must beat fp32 by this factor in the probe: a probe within noise of fp32 keeps fp32's exactness.
BF16_MIN_SPEEDUP = 1.15
PURPOSES = ("training", "inference")


@dataclass(frozen=True)
class PrecisionChoice:
    """The autocast dtype (None = fp32) picked for ``purpose`` on ``device``, and why."""

    dtype: torch.dtype | None
    reason: str
    purpose: str = "inference"

    @property
    def name(self) -> str:
        return precision_name(self.dtype)

    def describe(self) -> str:
        return f"precision: {self.name} for {self.purpose} ({self.reason})"


def precision_name(dtype: torch.dtype | None) -> str:
    """``fp32`` / ``bf16`` / ``fp16``: the names the configs and the CLI use."""
    return {None: "fp32", torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def choose_cpu_precision(info: CpuInfo, probe: PrecisionProbe, purpose: str) -> PrecisionChoice:
    """``auto`` on CPU: bf16 only where this CPU runs it natively and the probe measured it faster."""
    rates = f"bf16 matmul {probe.bf16_gflops:.1f} vs fp32 {probe.fp32_gflops:.1f} GFLOP/s"
    if not info.native_bf16:
        return PrecisionChoice(None, f"this CPU has no native bf16: {rates}", purpose)
    speedup = probe.train_speedup if purpose == "training" else probe.infer_speedup
    what = "forward+backward" if purpose == "training" else "forward"
    measured = f"bf16 {what} {speedup:.2f}x fp32's speed in a {probe.threads}-thread probe; {rates}"
    if speedup >= BF16_MIN_SPEEDUP:
        return PrecisionChoice(torch.bfloat16, f"this CPU runs bf16 natively: {measured}", purpose)
    return PrecisionChoice(None, f"bf16 is not faster here: {measured}", purpose)


#: Overrides what ``auto`` picks on CPU (fp32 or bf16), e.g. to run as on a CPU without native bf16.
CPU_PRECISION_ENV = "IVT_CPU_PRECISION"


def precision_choice(precision: str, device: torch.device, purpose: str = "inference") -> PrecisionChoice:
    """What ``precision`` (auto, fp32, bf16, fp16) means on ``device`` for ``purpose`` (training or
    inference, which can differ on CPU). ``auto``: on CUDA bf16 where supported, else fp16; on CPU
    by :func:`choose_cpu_precision` (or ``$IVT_CPU_PRECISION``)."""
    if precision not in PRECISIONS:
        raise DeviceError(f"unknown precision '{precision}': use one of {', '.join(PRECISIONS)}")
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
    if precision == "fp32":
        return PrecisionChoice(None, "as asked", purpose)
    if precision == "bf16":
        return PrecisionChoice(torch.bfloat16, "as asked", purpose)
    if precision == "fp16":
        if device.type != "cuda":
            raise DeviceError("precision fp16 needs CUDA; on CPU use bf16 or fp32")
        return PrecisionChoice(torch.float16, "as asked", purpose)
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return PrecisionChoice(torch.bfloat16, "auto on a CUDA device with bf16", purpose)
        return PrecisionChoice(torch.float16, "auto on a CUDA device without bf16", purpose)
    forced = os.environ.get(CPU_PRECISION_ENV, "")
    if forced:
        if forced not in ("fp32", "bf16"):
            raise DeviceError(f"${CPU_PRECISION_ENV}={forced!r}: use fp32 or bf16 (or unset it to measure)")
        return PrecisionChoice(torch.bfloat16 if forced == "bf16" else None, f"${CPU_PRECISION_ENV}={forced}",
                               purpose)
    return choose_cpu_precision(cpu_info(), probe_cpu_precision(purpose), purpose)


#: How far a low-precision autocast may move an encoder's embeddings from fp32's (relative L2 error
#: over a probe batch). bf16 rounding alone gives about 0.005-0.01 on the models here; a wrong
#: kernel gives errors near 1 (oneDNN's AMX bf16 convolution once gave 1.3).
LOW_PRECISION_TOLERANCE = 0.1


def low_precision_error(encoder: torch.nn.Module, dtype: torch.dtype, device: torch.device) -> float:
    """Relative L2 error of ``encoder``'s image and text embeddings under ``dtype`` autocast
    against fp32, on a fixed random batch (2 images at the model's size, 2 texts of up to 24
    tokens):
    the larger of the two. The encoder is put in eval mode for it (no dropout or token dropping)
    and left as it was; the caller's random state is untouched."""
    config = encoder.config
    was_training = encoder.training
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(2, config.in_chans, *config.image_size, generator=gen).to(device)
    length = min(24, config.max_text_len)
    ids = torch.randint(1, config.vocab_size, (2, length), generator=gen).to(device)
    mask = torch.ones_like(ids)
    mask[1, 2 * length // 3:] = 0                      # one padded text: the masked path too
    encoder.eval()
    try:
        with torch.no_grad():
            errors = []
            for encode, inputs in ((encoder.encode_image, (images,)), (encoder.encode_text, (ids, mask))):
                reference = encode(*inputs).float()
                with autocast(device, dtype):
                    low = encode(*inputs).float()
                errors.append(((low - reference).norm() / reference.norm().clamp_min(1e-12)).item())
    finally:
        encoder.train(was_training)
    return max(errors)


def check_low_precision(encoder: torch.nn.Module, choice: PrecisionChoice, device: torch.device,
                        asked: str) -> PrecisionChoice:
    """``choice`` once ``encoder`` is seen to compute right in it on this CPU, else what to use.

    A CPU's bf16 kernels can be wrong for some shapes (oneDNN's AMX convolution with kernel =
    stride at some channel counts: training then never learns, search returns noise, and nothing
    fails). So a bf16 choice on CPU is checked once against fp32 on a probe batch
    (:func:`low_precision_error`). Beyond :data:`LOW_PRECISION_TOLERANCE`: ``auto`` (``asked``)
    falls back to fp32 and says why; an explicit bf16 is a :class:`DeviceError` naming the error.
    CUDA's kernels are not checked (a few ms here, but no such fault is known there).
    """
    if choice.dtype is None or device.type != "cpu":
        return choice
    error = low_precision_error(encoder, choice.dtype, device)
    if error <= LOW_PRECISION_TOLERANCE:
        return choice
    what = (f"{choice.name} autocast moves this model's embeddings by {error:.2f} (relative L2 error against "
            f"fp32; rounding alone gives about 0.01) on this CPU ({cpu_info().describe()}): one of its "
            f"{choice.name} kernels computes wrong values for this model's shapes")
    if asked == "auto" and not os.environ.get(CPU_PRECISION_ENV):
        return PrecisionChoice(None, f"{what}; using fp32", choice.purpose)
    raise DeviceError(f"precision {choice.name}: {what}; use precision fp32 (--precision fp32, train.precision=fp32"
                      f"{f', or unset ${CPU_PRECISION_ENV}' if os.environ.get(CPU_PRECISION_ENV) else ''})")


_ANNOUNCED: set[tuple[str, str, str]] = set()


def resolve_precision(precision: str, device: torch.device, purpose: str = "inference",
                      encoder: torch.nn.Module | None = None) -> torch.dtype | None:
    """The autocast dtype (None = fp32) of :func:`precision_choice`, checked on ``encoder`` when
    given (:func:`check_low_precision`); the choice and its reason are logged once per process
    (logger ``ivt``: the CLI prints it on stderr)."""
    choice = precision_choice(precision, device, purpose)
    if encoder is not None:
        choice = check_low_precision(encoder, choice, device, precision)
    key = (device.type, purpose, choice.name)
    if key not in _ANNOUNCED:
        _ANNOUNCED.add(key)
        log.info(choice.describe())
    return choice.dtype


def autocast(device: torch.device, dtype: torch.dtype | None) -> ContextManager:
    """Autocast context for ``dtype``, or a no-op for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(tensor: torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    """``tensor`` on ``device``; CPU -> CUDA goes through pinned memory without blocking, so the
    host does not wait for the GPU queue to drain (a pageable copy would)."""
    if device is None or torch.device(device) == tensor.device:
        return tensor
    if tensor.device.type == "cpu" and torch.device(device).type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def training_attention(device: torch.device) -> ContextManager:
    """Attention backends for training: on CUDA, everything but cuDNN's.

    BMM changes the sequence length at every step, and cuDNN attention builds a new execution plan
    for every new shape (measured on an H200: about 1.8 ms of host time per call, which made the
    step host-bound); flash and memory-efficient attention need no per-shape plan.
    """
    if device.type != "cuda":
        return contextlib.nullcontext()
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3: its default backends do not include cuDNN attention
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
