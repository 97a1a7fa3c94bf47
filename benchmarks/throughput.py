"""Throughput of IVT on CPU or CUDA: training pairs/s and inference images/texts per second,
each beside the matmul peak measured in the same run (fp32 and bf16).

    python benchmarks/throughput.py [--device cpu|cuda] [--threads 2] [--seconds 10]
                                    [--sizes tiny,small,base] [--write]

* peak: best time of large square matmuls (fp32 and bf16) -> GFLOP/s per dtype.
* training: exactly what ``ivt train`` runs, :meth:`ivt.train.trainer.Trainer.train_step` on
  batches from :meth:`Trainer.batches` (a SynthPedes draw; the multi-level batch of word,
  phrase and sentence texts, augmentation, tokenisation, BMM token dropping, CMPM, backward,
  clipping, AdamW). Pairs/s counts all levels' pairs.
* inference (base): image / text encoding in eval mode under ``torch.inference_mode()``; several
  batch sizes are tried and the best is reported.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (forward + backward for
training, forward for inference) outside the timed region (the counter slows steps down): for
training, the mean of a few counted steps after the timed ones (BMM changes token counts from
step to step). The CPU flash-attention ops are not in torch's FLOP table; they are added with
torch's own SDPA formulas. Achieved GFLOP/s = FLOPs / timed seconds.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import shutil
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from ivt.model import IVTEncoder, model_config
from ivt.runtime import PURPOSES, autocast, cpu_info, precision_choice
from results_md import write_section

aten = torch.ops.aten
IMAGE_TARGET = 10.0          # base image encoding, images/s
TRAIN_FRACTION_TARGET = 40.0  # % of the matmul peak of the fast precision (bf16 where native)
CUHK_TRAIN_CAPTIONS = 68_126  # CUHK-PEDES train split (11,003 ids, 34,054 images)


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
    """The CPU, as every benchmark names it: model, bf16-relevant ISA flags, torch's capability."""
    return cpu_info().describe()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_peak(dtype: torch.dtype, n: int, repeats: int, device: str = "cpu") -> float:
    """GFLOP/s of the best of ``repeats`` (n x n) @ (n x n) matmuls."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)  # warm-up (oneDNN primitive creation / cuBLAS handles)
    sync(device)
    best = float("inf")
    inner = 20 if device == "cuda" else 1
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b)
        sync(device)
        best = min(best, (time.perf_counter() - t0) / inner)
    return 2.0 * n ** 3 / best / 1e9


class Bench:
    """One measured workload: ``step()`` runs it, ``count_flops(steps)`` counts the FLOPs of
    the steps timed after the last ``mark()`` (without slowing the timed steps down)."""

    def step(self) -> None:
        raise NotImplementedError

    def mark(self) -> None:
        """Called right before the timed steps."""

    def finish(self) -> None:
        """Called right after them (waits for the device)."""

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
    bench.finish()
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
    """``Trainer.train_step`` of a real run of ``size`` on a SynthPedes draw (``batch`` captions
    per step, each at every MLA level)."""

    def __init__(self, size: str, batch: int, dtype: str, device: str, data: Path, out: Path,
                 recipe: Path | None = None, recipe_batch: int | None = None) -> None:
        from ivt.config import load_config
        from ivt.train.trainer import Trainer

        if out.exists():
            shutil.rmtree(out)
        common = [f"train.precision={dtype}", f"train.device={device}", "train.eval_every=0",
                  f"data.path={data}", f"train.out_dir={out}", "train.max_minutes=null"]
        if recipe is not None:  # the recipe as configured, on synthetic data and without weight files
            cfg = load_config(recipe, [*common, "data.tokenizer=null", "model.init_image=null",
                                       "model.init_text=null", "data.max_text_len=64",
                                       *([f"train.batch_size={recipe_batch}"] if recipe_batch else [])])
        else:
            cfg = load_config(None, [f"model.size={size}", f"train.batch_size={batch}", "train.sampler=identity",
                                     "train.k_per_id=2", *common])
        self.trainer = Trainer(cfg)
        self.device = device
        self.batches = self.trainer.batches()  # the trainer's own batches, epoch after epoch
        self.pairs = len(next(self.batches))

    def step(self) -> None:
        self.trainer.train_step(next(self.batches))

    def finish(self) -> None:
        sync(self.device)

    flop_samples = 3

    def count_flops(self, steps: int) -> float:
        """Mean FLOPs of ``flop_samples`` further (counted, untimed) steps, times ``steps``."""
        total = sum(count(self.step) for _ in range(self.flop_samples))
        return steps * total / self.flop_samples


class InferBench(Bench):
    """Encoding one batch of images or (unpadded) texts in eval mode, without autograd."""

    def __init__(self, model: IVTEncoder, modality: str, batch: int, text_len: int,
                 dtype: str) -> None:
        gen = torch.Generator().manual_seed(0)
        self.model, self.modality, self.dtype = model, modality, dtype
        weight = next(model.parameters())
        self.device = weight.device.type
        self.images = torch.randn(batch, 3, *model.config.image_size, generator=gen).to(weight)
        ids, mask = random_texts(batch, text_len, model.config.vocab_size, gen)
        self.ids, self.mask = ids.to(self.device), mask.to(self.device)

    def finish(self) -> None:
        sync(self.device)

    def step(self) -> None:
        # bf16 autocast as ivt runs it, or none for fp32 / bf16 weights ("bf16w")
        amp = torch.bfloat16 if self.dtype == "bf16" else None
        with torch.inference_mode(), autocast(torch.device(self.device), amp):
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


def synth_draw(root: Path, ids: int) -> Path:
    """A SynthPedes draw to train on (reused when present)."""
    from ivt.synth.generate import generate_synthpedes

    if not (root / "reid_raw.json").exists():
        generate_synthpedes(root, ids, seed=0, progress=False)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=10.0, help="timed seconds per measurement")
    ap.add_argument("--sizes", default="tiny,small,base",
                    help="comma list; tiny/small are timed for training (and base on CUDA), base for inference")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--train-batch", type=int, default=64, help="captions per step (x3 MLA levels = pairs)")
    ap.add_argument("--base-recipe", default="configs/cuhk-pedes.yaml",
                    help="recipe for base training on CUDA (default: the paper's; its batch, optimiser, precision)")
    ap.add_argument("--base-batches", default="0",
                    help="captions per step for base training, comma list (0: the recipe's own)")
    ap.add_argument("--ids", type=int, default=200, help="SynthPedes identities for the training draw")
    ap.add_argument("--workdir", default="/tmp/ivt-throughput")
    ap.add_argument("--infer-batches", default="8,16,32", help="batch sizes tried for inference")
    ap.add_argument("--infer-text-len", type=int, default=64)
    ap.add_argument("--peak-n", type=int, default=2048)
    ap.add_argument("--peak-repeats", type=int, default=5)
    ap.add_argument("--write", action="store_true", help="regenerate this device's section of RESULTS.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = args.device
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    work = Path(args.workdir)
    data = synth_draw(work / "synthpedes", args.ids)

    where = (f"CUDA: {torch.cuda.get_device_name()}" if dev == "cuda" else
             f"CPU: {cpu_info().describe()}, {torch.get_num_threads()} threads")
    print(f"torch {torch.__version__}, {where}")
    auto = {p: precision_choice("auto", torch.device(dev), p) for p in PURPOSES}
    for choice in auto.values():
        print(f"  auto -> {choice.describe()}")
    peak = {}
    lines: list[str] = []
    with section(f"matmul peak ({args.peak_n}x{args.peak_n}, best of {args.peak_repeats})"):
        for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            peak[name] = matmul_peak(dt, args.peak_n, args.peak_repeats, dev)
            print(f"  {name}: {peak[name]:8.1f} GFLOP/s", flush=True)

    header = (f"  {'size':<6}{'task':<8}{'dtype':<6}{'batch':>6}{'steps':>6}{'s':>7}"
              f"{'items/s':>10}{'GFLOP/step':>12}{'GFLOP/s':>9}{'% peak':>8}   target")
    rows: list[str] = []
    table: list[str] = []

    def report(size: str, task: str, dtype: str, batch: int, steps: int, secs: float,
               flops: float, target: str = "") -> tuple[float, float]:
        rate = batch * steps / secs
        gflops = flops / secs / 1e9
        frac = 100.0 * gflops / peak[dtype[:4]]
        row = (f"  {size:<6}{task:<8}{dtype:<6}{batch:>6}{steps:>6}{secs:>7.1f}{rate:>10.1f}"
               f"{flops / steps / 1e9:>12.1f}{gflops:>9.1f}{frac:>7.1f}%   {target}")
        rows.append(row)
        unit = "pairs" if task == "train" else "images" if task == "image" else "texts"
        table.append(f"| {size} | {task} | {dtype} | {batch} | {rate:.1f} {unit} | {flops / steps / 1e9:.1f} | "
                     f"{gflops:.1f} | {frac:.1f} % | {target} |")
        print(row, flush=True)
        return rate, frac

    # The training target is a fraction of the peak of this machine's fast precision: bf16 where it is
    # native (CUDA, AVX-512 BF16 / AMX), fp32 on a CPU that only emulates bf16.
    fast = "bf16" if dev == "cuda" or cpu_info().native_bf16 else "fp32"
    train_sizes = [s for s in sizes if s in ("tiny", "small") or (s == "base" and dev == "cuda")]
    train_rates = {}
    if train_sizes:
        with section(f"training: Trainer.train_step (tiny/small: {args.train_batch} captions/step, AdamW, "
                     f"clip 5; base: {args.base_recipe}; x3 MLA levels, BMM 0.2, CMPM)\n{header}"):
            for size, recipe_batch in [(s, int(b)) for s in train_sizes
                                       for b in (args.base_batches.split(",") if s == "base" else ["0"])]:
                for dtype in dtypes:
                    recipe = Path(args.base_recipe) if size == "base" else None
                    bench = TrainBench(size, args.train_batch, dtype, dev, data, work / f"run-{size}-{dtype}",
                                       recipe, recipe_batch or None)
                    # Emulated bf16 (no native support) runs ~100x slower: one warm-up and one timed step.
                    slow = dtype == "bf16" and fast == "fp32"
                    bench.flop_samples = 1 if slow else 3
                    steps, secs, flops = timed(bench, args.seconds, warmup=1 if slow else 2, min_steps=1 if slow else 2)
                    frac = 100.0 * flops / secs / 1e9 / peak[fast]
                    ok = "met" if frac >= TRAIN_FRACTION_TARGET else "below"
                    rate, _ = report(size, "train", dtype, bench.pairs, steps, secs, flops,
                                     f"{frac:.1f} % of {fast} peak (target {TRAIN_FRACTION_TARGET:.0f} %: {ok})")
                    if not recipe_batch:
                        train_rates[(size, dtype)] = rate
                    del bench
    if "base" in sizes:
        torch.manual_seed(0)
        model = IVTEncoder(model_config("base")).eval().to(dev)
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
                    if modality == "image" and dev == "cpu":
                        rate = batch * steps / secs
                        target = f">= {IMAGE_TARGET:.0f} images/s: {'met' if rate >= IMAGE_TARGET else 'below'}"
                    report("base", modality, dtype, batch, steps, secs, flops, target)
    print("\nsummary")
    print(f"  peak fp32 {peak['fp32']:.1f} GFLOP/s, bf16 {peak['bf16']:.1f} GFLOP/s")
    print(header)
    print("\n".join(rows))
    lines.append(f"torch {torch.__version__}; {where}. Matmul peak measured in the same run "
                 f"({args.peak_n}x{args.peak_n}): fp32 {peak['fp32']:.1f}, bf16 {peak['bf16']:.1f} GFLOP/s. "
                 f"`precision: auto` here: " + "; ".join(f"{c.name} for {c.purpose} ({c.reason})"
                                                          for c in auto.values()) + ".")
    for (size, dtype), rate in sorted(train_rates.items()):
        if dtype == "fp32" and (size, "bf16") in train_rates:
            faster = "bf16" if train_rates[(size, "bf16")] > rate else "fp32"
            verdict = "agrees" if faster == auto["training"].name else "DISAGREES"
            lines.append(f"\n{size} training: fp32 {rate:.1f}, bf16 {train_rates[(size, 'bf16')]:.1f} pairs/s: "
                         f"{faster} is faster here and auto {verdict}.")
    lines.append("")
    lines.append("| size | task | dtype | batch | rate | GFLOP/step | GFLOP/s | % of dtype peak | target |")
    lines.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    lines.extend(table)
    base_rate = train_rates.get(("base", "bf16"))
    if base_rate:
        epoch_pairs = CUHK_TRAIN_CAPTIONS * 3
        epoch_s = epoch_pairs / base_rate
        lines.append("")
        lines.append(f"Projected from base bf16 training at {base_rate:.0f} pairs/s on one device: one CUHK-PEDES "
                     f"epoch ({CUHK_TRAIN_CAPTIONS:,} captions x 3 levels) {epoch_s / 60:.1f} min; the paper's 120 "
                     f"epochs {120 * epoch_s / 3600:.1f} h (validation excluded).")
    if args.write:
        # One section per kind of machine: a CPU with native bf16 and one without keep their own figures.
        if dev == "cuda":
            tag, title = "throughput-cuda", "CUDA"
        elif fast == "bf16":
            tag, title = "throughput-cpu-native-bf16", "a CPU with native bf16"
        else:
            tag, title = "throughput-cpu-no-native-bf16", "a CPU without native bf16 (fp32 is the fast path)"
        write_section(tag, "\n".join(lines), f"Throughput on {title} (`benchmarks/throughput.py`)")


if __name__ == "__main__":
    main()
