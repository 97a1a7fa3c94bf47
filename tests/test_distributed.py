"""torchrun data parallelism: 2 CPU processes (gloo) with per-rank batch B reach the weights of
1 process with batch 2B, validate to the same numbers, and write only from rank 0."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import MICRO_MODEL, write_toy_pedes
from ivt.config import load_config
from ivt.model.transformer import Attention
from ivt.train.trainer import Trainer, train

COMMON = [*MICRO_MODEL, "train.precision=fp32", "train.threads=1",
          "data.vocab_size=200", "data.max_text_len=24", "train.log_every=1", "train.epochs=2",
          "train.eval_every=1", "train.sampler=identity", "train.k_per_id=2", "token_drop.ratio=0.3",
          "model.drop_path=0.0", "optim.clip_grad=1.0"]


# Weights of 2 processes against 1: the same sums, reduced in another order, so fp32 rounding (2**-24 relative per
# operation) makes them differ by a few 1e-6 of how far each tensor moved in the run (measured: 5e-6 at most on
# an AMD EPYC with avx512_bf16). A real DDP error moves them by a large share of it: with the all-gather
# broken on purpose (each rank's loss sees only its own half of the batch), 50-66 % (test below).
RELATIVE_DRIFT = 1e-3


def _torchrun(args: list[str], nproc: int, entry: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    target = [str(entry)] if entry else ["-m", "ivt"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           *target, "train", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _without_key_bias(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights less the key third of each attention's qkv bias. Its gradient is zero in exact arithmetic
    (q . (k + b) shifts every key's score of a query by the same q . b, which the softmax cancels), so what it
    receives is rounding noise, which AdamW normalises into full-size steps: it moves by lr-sized amounts that
    depend on the reduction order alone, and nothing the model computes depends on it."""
    out = {}
    for name, value in weights.items():
        if name.endswith("attn.qkv.bias"):
            third = value.shape[0] // 3
            out[name + "[q]"], out[name + "[v]"] = value[:third], value[2 * third:]
        else:
            out[name] = value
    return out


def _relative_drift(a: dict, b: dict, init: dict) -> dict[str, float]:
    """Per tensor, |a - b| over |a - init| (L2): how far two runs from one start part, as a share of how far
    the run moved; the key bias, moved by rounding alone, is left out (see _without_key_bias)."""
    a, b, init = map(_without_key_bias, (a, b, init))
    assert a.keys() == b.keys() == init.keys()
    return {k: float((a[k] - b[k]).norm()) / max(float((a[k] - init[k]).norm()), 1e-30) for k in a}


def _initial_weights(cfg_overrides: list[str]) -> dict[str, torch.Tensor]:
    """The weights a new run of these settings starts from (built, not trained)."""
    model = Trainer(load_config(None, cfg_overrides), False).model
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_the_key_bias_gets_no_gradient_in_exact_arithmetic():
    """Why _without_key_bias leaves it out: in float64 its gradient is zero to rounding, the others' are not."""
    torch.manual_seed(0)
    attn = Attention(16, 2).double()
    attn(torch.randn(3, 5, 16, dtype=torch.float64)).square().sum().backward()
    grad = attn.qkv.bias.grad
    assert float(grad[16:32].abs().max()) < 1e-12 * float(grad.abs().max())
    assert float(grad[:16].abs().max()) > 1e-3 and float(grad[32:].abs().max()) > 1e-3


@pytest.mark.parametrize("mask", ["token_drop.ratio=0.3",                      # BMM on: padded texts
                                  "token_drop.ratio=0 loss.i2i_weight=1.0"])     # off: packed; image-image term
def test_two_processes_match_one_process_with_the_global_batch(tmp_path, mask):
    mask = mask.split()
    data = write_toy_pedes(tmp_path / "toy", ids_per_split=(8, 3, 3))
    single = train(load_config(None, COMMON + [*mask, "train.batch_size=8", f"data.path={data}",
                                               f"train.out_dir={tmp_path / 'one'}"]))
    two = tmp_path / "two"
    proc = _torchrun(["--set", *COMMON, *mask, "train.batch_size=4", f"data.path={data}", "--out", str(two)], 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = load_file(str(single / "last.safetensors")), load_file(str(two / "last.safetensors"))
    init = _initial_weights(COMMON + [*mask, "train.batch_size=8", f"data.path={data}",
                                      f"train.out_dir={tmp_path / 'init'}"])
    drift = _relative_drift(a, b, init)
    assert max(drift.values()) < RELATIVE_DRIFT, sorted(drift.items(), key=lambda kv: -kv[1])[:3]
    evals = [[r for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "eval"]
             for d in (single, two)]
    assert [r["epoch"] for r in evals[1]] == [1, 2]
    for x, y in zip(*evals):
        assert all(abs(x[k] - y[k]) < 1e-6 for k in ("R1", "R5", "R10", "mAP", "mINP")), (x, y)
    losses = [[r["loss"] for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())
               if r["kind"] == "train"] for d in (single, two)]
    assert len(losses[0]) == len(losses[1]) and max(abs(x - y) for x, y in zip(*losses)) < 1e-4
    state = json.loads((two / "last.state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == json.loads((single / "last.state.json").read_text())["step"]


def test_resume_under_torchrun_continues_exactly(tmp_path):
    data = write_toy_pedes(tmp_path / "toy", ids_per_split=(8, 3, 3))
    straight = tmp_path / "straight"
    assert _torchrun(["--set", *COMMON, "train.batch_size=4", f"data.path={data}", "--out", str(straight)],
                     2).returncode == 0
    paused = tmp_path / "paused"
    proc = _torchrun(["--set", *COMMON, "train.batch_size=4", "train.stop_after_steps=3", f"data.path={data}",
                      "--out", str(paused)], 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _torchrun(["--resume", str(paused), "--set", "train.stop_after_steps=null"], 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = load_file(str(straight / "last.safetensors")), load_file(str(paused / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Resuming on another number of processes would change the batches: refused with a clear message.
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.run([sys.executable, "-m", "ivt", "train", "--resume", str(paused)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "trained on 2 process(es)" in proc.stderr, proc.stderr


def test_the_weight_comparison_catches_a_broken_all_gather(tmp_path):
    """The comparison above is not blind: 2 processes whose losses each see only their own half of the batch
    (the all-gather replaced by the identity) part from the 1-process run by far more than rounding does."""
    data = write_toy_pedes(tmp_path / "toy", ids_per_split=(8, 3, 3))
    overrides = COMMON + ["train.batch_size=8", f"data.path={data}", "train.eval_every=0"]
    single = train(load_config(None, overrides + [f"train.out_dir={tmp_path / 'one'}"]))
    entry = tmp_path / "no_gather.py"
    entry.write_text("import sys\n\nimport ivt.train.trainer as trainer\nfrom ivt.cli import main\n\n"
                     "trainer.gather_with_grad = lambda x, info: x\ntrainer.gather_labels = lambda x, info: x\n"
                     "sys.exit(main())\n")
    proc = _torchrun(["--set", *COMMON, "train.batch_size=4", f"data.path={data}", "train.eval_every=0",
                      "--out", str(tmp_path / "broken")], 2, entry)
    assert proc.returncode == 0, proc.stderr[-3000:]
    drift = _relative_drift(load_file(str(single / "last.safetensors")),
                            load_file(str(tmp_path / "broken" / "last.safetensors")),
                            _initial_weights(overrides + [f"train.out_dir={tmp_path / 'init'}"]))
    assert max(drift.values()) > 100 * RELATIVE_DRIFT
    assert sum(d > RELATIVE_DRIFT for d in drift.values()) > len(drift) // 2
