"""Seconds per training step of the paper recipe at the base size, on one CUDA GPU.

    python benchmarks/paper_step.py [--steps 20]

One step as the official training loop does it: 28 captions (7 ids x 4; RSTPReid: 48) at three
MLA levels = 84 (144) image views of 384x128 and as many texts padded to the longest, BMM token
dropping up to 20 %, CMPM loss, fp16 autocast with a grad scaler, SGD with the paper's groups.
Inputs are synthetic (shapes are what matters for speed). Prints seconds per step and the peak
GPU memory per setting; multiply by the steps of an epoch to get the epoch time.
"""
from __future__ import annotations

import argparse
import time

import torch

from ivt.config import OptimConfig
from ivt.losses import RetrievalLoss
from ivt.model import IVTEncoder, model_config
from ivt.train.optim import build_optimizer

PAPER = OptimConfig(name="sgd", lr=0.005, weight_decay=1e-4, decay_all=True, bias_lr_factor=2.0)
#: (name, patch stride, captions per batch, text length: the longest caption of a batch, in tokens)
SETTINGS = (("CUHK-PEDES", 12, 28, 96), ("ICFG-PEDES", 12, 28, 128), ("RSTPReid", 16, 48, 96))


def step_seconds(stride: int, batch: int, length: int, steps: int) -> tuple[float, float]:
    """(seconds per step, peak GiB) of the paper's training step on synthetic inputs."""
    torch.manual_seed(0)
    model = IVTEncoder(model_config("base", patch_stride=stride, vocab_size=30522, text_dropout=0.1)).cuda()
    model.set_token_drop(0.2, "batch")
    model.train()
    loss_fn = RetrievalLoss("cmpm").cuda()
    optimizer = build_optimizer(PAPER, {"encoder": model, "loss": loss_fn})
    scaler = torch.amp.GradScaler("cuda")
    n = 3 * batch
    images = torch.randn(n, 3, 384, 128, device="cuda")
    ids = torch.randint(1000, 30000, (n, length), device="cuda")
    mask = torch.ones_like(ids)
    labels = torch.arange(batch // 4, device="cuda").repeat_interleave(4).repeat(3)
    torch.cuda.reset_peak_memory_stats()
    for i in range(steps + 5):
        if i == 5:
            torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.float16):
            loss = loss_fn(model.encode_image(images), model.encode_text(ids, mask), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps, torch.cuda.max_memory_allocated() / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    for name, stride, batch, length in SETTINGS:
        seconds, peak = step_seconds(stride, batch, length, args.steps)
        print(f"{name}: stride {stride}, {batch} captions x 3 levels, text {length}: "
              f"{seconds:.3f} s/step, peak {peak:.1f} GiB")


if __name__ == "__main__":
    main()
