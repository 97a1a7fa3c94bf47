"""Kill -9 at random moments of training (some inside checkpoint writes), resume, and end with
exactly the weights of an uninterrupted run; no checkpoint file is ever torn."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from helpers import MICRO_MODEL, write_toy_pedes
from ivt.config import load_config
from ivt.files import file_sha256
from ivt.train.trainer import train

ARGS = [*MICRO_MODEL, "train.batch_size=8", "train.precision=fp32",
        "train.threads=1", "data.vocab_size=200", "data.max_text_len=24", "train.log_every=1", "train.epochs=8",
        "train.eval_every=1", "token_drop.ratio=0.3", "model.drop_path=0.1", "augment.erase_p=0.5"]
MIN_KILLS = 6       # 3 inside checkpoint writes, 3 at random moments: each costs a process start (~2 s)


def _lines(path: Path) -> int:
    return len(path.read_bytes().splitlines()) if path.exists() else 0


def _check_files_whole(run: Path) -> bool:
    """Every committed file parses; returns whether a commit was in flight (journal present)."""
    for name in ("last.safetensors", "best.safetensors", "last.state.safetensors"):
        if (run / name).exists():
            load_file(str(run / name))  # raises on a torn file
    for name in ("last.json", "best.json", "last.state.json", "config.yaml"):
        if (run / name).exists() and name.endswith(".json"):
            json.loads((run / name).read_text())
    in_flight = (run / "commit.json").exists()
    if not in_flight:
        for name in ("last", "best"):
            if (run / f"{name}.json").exists():
                meta = json.loads((run / f"{name}.json").read_text())
                assert meta["weights_sha256"] == file_sha256(run / f"{name}.safetensors"), name
    return in_flight


def test_kill_9_at_random_moments_then_resume_gives_identical_weights(tmp_path):
    data = write_toy_pedes(tmp_path / "toy")
    reference = train(load_config(None, ARGS + [f"data.path={data}", f"train.out_dir={tmp_path / 'ref'}"]))
    run = tmp_path / "run"
    env = {**os.environ, "IVT_FAULT_INJECT_DELAY": "0.03", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    rng = random.Random(0)
    kills = kills_in_write = attempts = 0
    while True:
        attempts += 1
        assert attempts < 60, "training never finished"
        resumable = (run / "last.state.json").exists() or (run / "commit.json").exists()
        cmd = [sys.executable, "-m", "ivt", "train"] + (["--resume", str(run)] if resumable else
                                                        ["--set", *ARGS, f"data.path={data}", "--out", str(run)])
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # Even kills land inside a checkpoint write (a .tmp file or the journal is on disk); odd
        # ones at a random moment after the process has made progress (a new metrics line).
        target_write = kills < MIN_KILLS and kills % 2 == 0
        target_random = kills < MIN_KILLS and not target_write
        lines_at_start = _lines(run / "metrics.jsonl")
        deadline = None
        while proc.poll() is None:
            if target_write and (any(run.glob("*.tmp")) or (run / "commit.json").exists()):
                break
            if target_random:
                if deadline is None and _lines(run / "metrics.jsonl") > lines_at_start:
                    deadline = time.monotonic() + rng.uniform(0.0, 0.6)
                if deadline is not None and time.monotonic() > deadline:
                    break
            time.sleep(0.002)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            torn = any(run.glob("*.tmp")) or (run / "commit.json").exists()
            kills_in_write += torn
            _check_files_whole(run)
            continue
        err = proc.stderr.read().decode()
        assert proc.returncode == 0, err
        break
    assert kills >= MIN_KILLS and kills_in_write >= MIN_KILLS // 3, (kills, kills_in_write)
    assert not _check_files_whole(run)
    a, b = load_file(str(reference / "last.safetensors")), load_file(str(run / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ref_best, got_best = (json.loads((d / "best.json").read_text()) for d in (reference, run))
    assert ref_best["epoch"] == got_best["epoch"] and ref_best["metrics"] == got_best["metrics"]
    print(f"kill -9: {kills} kills ({kills_in_write} during a checkpoint write) over {attempts} starts; "
          f"final weights identical")
