"""The paper's optimiser and schedule, value by value (official make_optimizer + timm CosineLRScheduler)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ivt.config import ConfigError, OptimConfig
from ivt.model import IVTEncoder, model_config
from ivt.train.optim import (
    EpochWarmupCosine,
    WarmupCosine,
    build_optimizer,
    build_schedule,
    param_groups,
)

LR = 0.005
PAPER = OptimConfig(name="sgd", lr=LR, momentum=0.9, weight_decay=1e-4, decay_all=True, bias_lr_factor=2.0,
                    warmup_epochs=5, warmup_start=0.01, min_lr_ratio=0.002, schedule="epoch", clip_grad=None)


@pytest.fixture(scope="module")
def model() -> IVTEncoder:
    torch.manual_seed(0)
    return IVTEncoder(model_config("tiny", width=32, depth=2, num_heads=2, vocab_size=40, max_text_len=16,
                                   image_size=(32, 16)))


def timm_lr(t: int, base: float) -> float:
    """timm CosineLRScheduler(t_initial=120, lr_min=0.002 lr, warmup_t=5, warmup_lr_init=0.01 lr)._get_lr(t)."""
    init, floor = 0.01 * LR, 0.002 * LR
    if t < 5:
        return init + t * (base - init) / 5
    if t >= 120:
        return floor
    return floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * t / 120))


def lr_of(optimizer: torch.optim.Optimizer, param: nn.Parameter) -> float:
    return next(g["lr"] for g in optimizer.param_groups if any(p is param for p in g["params"]))


def test_paper_sgd_groups(model):
    opt = build_optimizer(PAPER, {"encoder": model})
    assert isinstance(opt, torch.optim.SGD)
    assert all(g["momentum"] == 0.9 and not g["nesterov"] and g["dampening"] == 0 for g in opt.param_groups)
    assert all(g["weight_decay"] == 1e-4 for g in opt.param_groups)  # on every parameter, norms and tokens too
    grouped = [p for g in opt.param_groups for p in g["params"]]
    assert len(grouped) == len(list(model.parameters()))
    for name, p in model.named_parameters():
        assert lr_of(opt, p) == pytest.approx(2 * LR if name.endswith(".bias") else LR), name
    assert lr_of(opt, model.pos_embed) == LR and lr_of(opt, model.blocks[0].norm1.weight) == LR


def test_default_groups_unchanged(model):
    groups = param_groups({"encoder": model}, 0.05)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0] and all("lr_scale" not in g for g in groups)
    decayed = {id(p) for p in groups[0]["params"]}
    for name, p in model.named_parameters():
        wanted = p.ndim >= 2 and name not in model.no_weight_decay() and not name.endswith(".bias")
        assert (id(p) in decayed) == wanted, name


def test_paper_schedule_value_by_value(model):
    opt = build_optimizer(PAPER, {"encoder": model})
    sched = build_schedule(PAPER, opt, epochs=120, steps_per_epoch=7)
    assert isinstance(sched, EpochWarmupCosine)
    weight, bias = model.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.bias
    # The first epoch already runs at official epoch 1: 0.01 lr + (base - 0.01 lr) / 5, per group.
    assert lr_of(opt, weight) == pytest.approx(0.01 * LR + (LR - 0.01 * LR) / 5)
    assert lr_of(opt, bias) == pytest.approx(0.01 * LR + (2 * LR - 0.01 * LR) / 5)
    for t in (0, 1, 4, 5, 6, 60, 119, 120):
        want = sched.lrs_at(t)
        assert want[0] == pytest.approx(timm_lr(t, LR)) and want[-1] == pytest.approx(timm_lr(t, 2 * LR)), t
    assert sched.lrs_at(0)[0] == pytest.approx(5e-5)
    assert sched.lrs_at(5)[0] == pytest.approx(1e-5 + 0.5 * (LR - 1e-5) * (1 + math.cos(math.pi / 24)))
    assert sched.lrs_at(120) == [pytest.approx(1e-5)] * len(opt.param_groups)  # 0.002 x lr, biases too


def test_paper_schedule_changes_once_per_epoch(model):
    opt = build_optimizer(PAPER, {"encoder": model})
    sched = build_schedule(PAPER, opt, epochs=120, steps_per_epoch=7)
    steps = 7  # per epoch
    weight, bias = model.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.bias
    seen: dict[int, set] = {}
    for step in range(120 * steps):
        sched.set_progress(step / (120 * steps))
        seen.setdefault(step // steps, set()).add((lr_of(opt, weight), lr_of(opt, bias)))
    assert all(len(v) == 1 for v in seen.values())
    # Our epoch e trains at the official epoch e + 1 (scheduler.step(epoch) runs before each epoch).
    for epoch in range(120):
        (w, b), = seen[epoch]
        assert (w, b) == (pytest.approx(timm_lr(epoch + 1, LR)), pytest.approx(timm_lr(epoch + 1, 2 * LR)))
    (w5, b5), = seen[5]
    assert b5 > 2 * w5 * 0.99  # biases keep (about) twice the rate after the warmup
    (w119, b119), = seen[119]
    assert w119 == b119 == pytest.approx(1e-5)
    sched.set_progress(1.0)
    assert lr_of(opt, weight) == pytest.approx(1e-5)


def test_step_schedule_warmup_start(model):
    cfg = OptimConfig(lr=1e-3, warmup_epochs=2, warmup_start=0.01, min_lr_ratio=0.01)
    opt = build_optimizer(cfg, {"encoder": model})
    sched = build_schedule(cfg, opt, epochs=10, steps_per_epoch=5)  # warmup: 10 of 50 steps
    assert isinstance(sched, WarmupCosine)
    assert sched.set_progress(0.0) == pytest.approx(1e-5)
    assert sched.set_progress(0.1) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)
    assert sched.set_progress(0.2) == pytest.approx(1e-3) and sched.set_progress(1.0) == pytest.approx(1e-5)
    legacy = WarmupCosine(opt, 10, 50, 0.01)  # without warmup_start: from 0 (floored), as before
    assert legacy.factor(0.0) == pytest.approx(1e-3) and legacy.factor(0.1) == pytest.approx(0.5)


def test_warmup_counts_steps_under_a_time_budget(model):
    """With a time budget the cosine follows the budget, but the warmup still lasts its epochs of
    steps: a cap of 150 epochs must not shrink a 2-epoch warmup to 2/150 of the budget."""
    cfg = OptimConfig(lr=1e-3, warmup_epochs=2, min_lr_ratio=0.01)
    opt = build_optimizer(cfg, {"encoder": model})
    sched = build_schedule(cfg, opt, epochs=150, steps_per_epoch=60)  # warmup: 120 steps of 9,000
    w = 120 / 9000

    def cosine(progress: float) -> float:
        t = (progress - w) / (1 - w)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t))

    # Step 60 of a budget that ends near step 600: progress 0.1 by time, halfway through the warmup.
    assert sched.set_progress(0.1, step=60) == pytest.approx(1e-3 * 0.5 * cosine(0.1))
    assert sched.set_progress(0.3, step=180) == pytest.approx(1e-3 * cosine(0.3))  # after the warmup
    assert sched.set_progress(1.0, step=90) == pytest.approx(1e-3 * 0.75 * 0.01)  # budget ended in warmup
    # Without a time budget (progress = step / total) it is warmup then cosine, as before.
    assert sched.set_progress(60 / 9000, step=60) == pytest.approx(0.5e-3)
    assert sched.set_progress(0.5, step=4500) == pytest.approx(1e-3 * cosine(0.5))


def test_unknown_schedule(model):
    opt = build_optimizer(OptimConfig(), {"encoder": model})
    with pytest.raises(ConfigError, match="optim.schedule"):
        build_schedule(OptimConfig(schedule="weekly"), opt, 3, steps_per_epoch=4)
