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
from ivt.train.trainer import train

COMMON = [*MICRO_MODEL, "train.precision=fp32", "train.threads=1",
          "data.vocab_size=200", "data.max_text_len=24", "train.log_every=1", "train.epochs=2",
          "train.eval_every=1", "train.sampler=identity", "train.k_per_id=2", "token_drop.ratio=0.3",
          "model.drop_path=0.0", "optim.clip_grad=1.0"]


def _torchrun(args: list[str], nproc: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "ivt", "train", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


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
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-4, worst
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
