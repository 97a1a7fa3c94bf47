"""CPU throughput of the IVT encoder: training pairs/s and inference images/texts per second,
each beside the matmul peak measured in the same run (fp32 and bf16 autocast).

    python benchmarks/throughput.py [--threads 2] [--seconds 10] [--sizes tiny,small,base]

* peak: best time of large square matmuls (fp32 and bf16) -> GFLOP/s per dtype.
* training (tiny, small): one trainer-like step = encode B images and B texts in train mode with
  BMM (token dropping) ratio 0.2, CMPM loss, backward, AdamW step.
* inference (base): image / text encoding in eval mode under ``torch.inference_mode()``; several
  batch sizes are tried and the best is reported.

FLOPs of the timed steps are counted with ``torch.utils.flop_counter.FlopCounterMode``
(forward + backward for training, forward for inference), outside the timed region: the counter
costs ~50 ms per step (20 % of a tiny step). BMM makes every training step's token count
different, so the timed steps are replayed with the same token-drop generator state on a
meta-device copy of the model (shapes only). The CPU flash-attention ops are not in torch's FLOP
table; they are added with torch's own SDPA formulas. Achieved GFLOP/s = FLOPs / timed seconds.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import platform
import time
from typing import Callable, Iterator

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from ivt.losses import RetrievalLoss
from ivt.model import IVTEncoder, model_config

aten = torch.ops.aten
IMAGE_TARGET = 10.0          # base image encoding, images/s
TRAIN_FRACTION_TARGET = 40.0  # % of the bf16 matmul peak


def _cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward(grad_out_shape, query_shape, key_shape, value_shape, *args,
                       out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape,
                                                 value_shape)


# FlopCounterMode wraps custom entries itself (tensors -> shapes).
CPU_SDPA_FLOPS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward,
}


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (platform fallback)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def autocast(dtype: str) -> contextlib.AbstractContextManager:
    """bf16 CPU autocast, or nothing for fp32."""
    if dtype == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def matmul_peak(dtype: torch.dtype, n: int, repeats: int) -> float:
    """GFLOP/s of the best of ``repeats`` (n x n) @ (n x n) matmuls."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    torch.mm(a, b)  # warm-up (oneDNN primitive creation)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best / 1e9


class Bench:
    """One measured workload: ``step()`` runs it, ``count_flops(steps)`` counts the FLOPs of
    the steps timed after the last ``mark()`` (without slowing the timed steps down)."""

    def step(self) -> None:
        raise NotImplementedError

    def mark(self) -> None:
        """Called right before the timed steps."""

    def count_flops(self, steps: int) -> float:
        raise NotImplementedError


def count(fn: Callable[[], None]) -> float:
    """FLOPs of ``fn()`` by FlopCounterMode (CPU flash-attention formulas added)."""
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOPS) as counter:
        fn()
    return float(counter.get_total_flops())


def timed(bench: Bench, seconds: float, warmup: int, min_steps: int = 1) -> tuple[int, float, float]:
    """Warm up, then run steps until ``seconds`` pass (at least ``min_steps``).

    Returns (steps, elapsed seconds, FLOPs of the timed steps).
    """
    for _ in range(warmup):
        bench.step()
    bench.mark()
    steps, t0 = 0, time.perf_counter()
    while steps < min_steps or time.perf_counter() - t0 < seconds:
        bench.step()
        steps += 1
    elapsed = time.perf_counter() - t0
    return steps, elapsed, bench.count_flops(steps)


def random_texts(batch: int, length: int, vocab: int, gen: torch.Generator,
                 min_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (padding = 0) and a 1/0 mask with lengths in [min_len, length]."""
    min_len = length if min_len is None else min_len
    lengths = torch.randint(min_len, length + 1, (batch,), generator=gen)
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    ids = torch.randint(1, vocab, (batch, length), generator=gen) * mask
    return ids, mask


class TrainBench(Bench):
    """A full training step of ``size``: encode images and texts in train mode with BMM 0.2,
    CMPM loss, backward, AdamW step (fresh model and optimizer)."""

    def __init__(self, size: str, batch: int, text_len: int, vocab: int | None,
                 dtype: str) -> None:
        torch.manual_seed(0)
        self.config = model_config(size, **({} if vocab is None else {"vocab_size": vocab}))
        self.dtype = dtype
        self.gen = torch.Generator().manual_seed(0)
        self.model = IVTEncoder(self.config)
        self.model.set_token_drop(0.2, "batch", generator=self.gen)
        self.model.train()
        self.criterion = RetrievalLoss("cmpm")
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.05)
        self.images = torch.randn(batch, 3, *self.config.image_size, generator=self.gen)
        self.ids, self.mask = random_texts(batch, text_len, self.config.vocab_size, self.gen,
                                           min_len=text_len // 2)
        self.labels = torch.arange(batch) // 2  # two pairs per identity
        self.state = self.gen.get_state()

    def loss_backward(self, model: IVTEncoder, images: torch.Tensor, ids: torch.Tensor,
                      mask: torch.Tensor, labels: torch.Tensor) -> None:
        with autocast(self.dtype):
            loss = self.criterion(model.encode_image(images), model.encode_text(ids, mask), labels)
        loss.backward()

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.loss_backward(self.model, self.images, self.ids, self.mask, self.labels)
        self.optimizer.step()

    def mark(self) -> None:
        self.state = self.gen.get_state()

    def count_flops(self, steps: int) -> float:
        """Replay the timed steps' token drops on a meta-device copy (shapes only, no compute)."""
        with torch.device("meta"):
            model = IVTEncoder(self.config)
        gen = torch.Generator()
        gen.set_state(self.state)
        model.set_token_drop(0.2, "batch", generator=gen)
        model.train()
        meta = [t.to("meta") for t in (self.images, self.ids, self.mask, self.labels)]
        return sum(count(lambda: self.loss_backward(model, *meta)) for _ in range(steps))


class InferBench(Bench):
    """Encoding one batch of images or (unpadded) texts in eval mode, without autograd."""

    def __init__(self, model: IVTEncoder, modality: str, batch: int, text_len: int,
                 dtype: str) -> None:
        gen = torch.Generator().manual_seed(0)
        self.model, self.modality, self.dtype = model, modality, dtype
        self.images = torch.randn(batch, 3, *model.config.image_size, generator=gen)
        self.images = self.images.to(next(model.parameters()).dtype)
        self.ids, self.mask = random_texts(batch, text_len, model.config.vocab_size, gen)

    def step(self) -> None:
        with torch.inference_mode(), autocast(self.dtype):
            if self.modality == "image":
                self.model.encode_image(self.images)
            else:
                self.model.encode_text(self.ids, self.mask)

    def count_flops(self, steps: int) -> float:
        return steps * count(self.step)  # every step has the same shapes


@contextlib.contextmanager
def section(title: str) -> Iterator[None]:
    print(f"\n{title}", flush=True)
    yield


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=10.0, help="timed seconds per measurement")
    ap.add_argument("--sizes", default="tiny,small,base",
                    help="comma list; tiny/small are timed for training, base for inference")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--train-batch", type=int, default=64)
    ap.add_argument("--train-text-len", type=int, default=40)
    ap.add_argument("--vocab", default="2000",
                    help="training vocabulary size, or 'default' for the size's own")
    ap.add_argument("--infer-batches", default="8,16,32", help="batch sizes tried for inference")
    ap.add_argument("--infer-text-len", type=int, default=64)
    ap.add_argument("--peak-n", type=int, default=2048)
    ap.add_argument("--peak-repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    vocab = None if args.vocab == "default" else int(args.vocab)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU: {cpu_model()}, "
          f"ISA: {torch.backends.cpu.get_cpu_capability()}")
    peak = {}
    with section(f"matmul peak ({args.peak_n}x{args.peak_n}, best of {args.peak_repeats})"):
        for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            peak[name] = matmul_peak(dt, args.peak_n, args.peak_repeats)
            print(f"  {name}: {peak[name]:8.1f} GFLOP/s", flush=True)

    header = (f"  {'size':<6}{'task':<8}{'dtype':<6}{'batch':>6}{'steps':>6}{'s':>7}"
              f"{'items/s':>10}{'GFLOP/step':>12}{'GFLOP/s':>9}{'% peak':>8}   target")
    rows: list[str] = []

    def report(size: str, task: str, dtype: str, batch: int, steps: int, secs: float,
               flops: float, target: str = "", extra: str = "") -> tuple[float, float]:
        rate = batch * steps / secs
        gflops = flops / secs / 1e9
        frac = 100.0 * gflops / peak[dtype[:4]]
        row = (f"  {size:<6}{task:<8}{dtype:<6}{batch:>6}{steps:>6}{secs:>7.1f}{rate:>10.1f}"
               f"{flops / steps / 1e9:>12.1f}{gflops:>9.1f}{frac:>7.1f}%   {target}{extra}")
        rows.append(row)
        print(row, flush=True)
        return rate, frac

    train_sizes = [s for s in sizes if s in ("tiny", "small")]
    if train_sizes:
        with section(f"training (pairs/s; B={args.train_batch}, text len {args.train_text_len}, "
                     f"vocab {args.vocab}, BMM 0.2, CMPM, AdamW)\n{header}"):
            for size in train_sizes:
                for dtype in dtypes:
                    bench = TrainBench(size, args.train_batch, args.train_text_len, vocab,
                                       dtype)
                    steps, secs, flops = timed(bench, args.seconds, warmup=2, min_steps=2)
                    frac = 100.0 * flops / secs / 1e9 / peak["bf16"]
                    ok = "ok" if frac >= TRAIN_FRACTION_TARGET else "BELOW"
                    report(size, "train", dtype, args.train_batch, steps, secs, flops,
                           f">= {TRAIN_FRACTION_TARGET:.0f}% of bf16 peak: {frac:.1f}% {ok}")
    if "base" in sizes:
        torch.manual_seed(0)
        model = IVTEncoder(model_config("base")).eval()
        cfg = model.config
        batches = [int(b) for b in args.infer_batches.split(",")]
        per_batch = args.seconds / len(batches)
        with section(f"inference base ({cfg.image_size[0]}x{cfg.image_size[1]}, patch "
                     f"{cfg.patch_size} stride {cfg.patch_stride}: {1 + cfg.num_patches} tokens; "
                     f"texts {args.infer_text_len} tokens; best of batches {batches}, "
                     f"{per_batch:.1f} s each)\n{header}"):
            # "bf16w": weights stored in bf16 (no autocast, so no per-call weight casts).
            bf16_model = copy.deepcopy(model).to(torch.bfloat16) if "bf16" in dtypes else None
            for modality in ("image", "text"):
                for dtype in dtypes + (["bf16w"] if bf16_model is not None else []):
                    best = None
                    for batch in batches:
                        bench = InferBench(bf16_model if dtype == "bf16w" else model, modality, batch,
                                           args.infer_text_len, dtype)
                        res = timed(bench, per_batch, warmup=1, min_steps=1)
                        if best is None or batch * res[0] / res[1] > best[0] * best[1] / best[2]:
                            best = (batch, *res)
                    batch, steps, secs, flops = best
                    target = ""
                    if modality == "image":
                        rate = batch * steps / secs
                        ok = "ok" if rate >= IMAGE_TARGET else "BELOW"
                        target = f">= {IMAGE_TARGET:.0f} images/s {ok}"
                    report("base", modality, dtype, batch, steps, secs, flops, target)
    print("\nsummary")
    print(f"  peak fp32 {peak['fp32']:.1f} GFLOP/s, bf16 {peak['bf16']:.1f} GFLOP/s")
    print(header)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
