"""Training: runs, writes a self-describing run directory, resumes exactly, refuses bad input."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from helpers import write_toy_pedes
from ivt.checkpoint import load_model
from ivt.config import ConfigError, load_config
from ivt.data import DataError
from ivt.errors import RunDirError
from ivt.evaluate.retrieval import evaluate_checkpoint
from ivt.train.trainer import train

FAST = ["model.size=tiny", "model.image_size=[32, 16]", "train.batch_size=8", "train.precision=fp32",
        "train.threads=2", "data.vocab_size=200", "data.max_text_len=24", "train.log_every=1"]


def _cfg(data, out, *extra):
    return load_config(None, FAST + [f"data.path={data}", f"train.out_dir={out}", *extra])


def test_train_writes_run_dir_and_evaluates(tmp_path):
    data = write_toy_pedes(tmp_path / "toy")
    run = train(_cfg(data, tmp_path / "run", "train.epochs=2", "train.eval_every=1"))
    for name in ("config.yaml", "tokenizer.json", "best.safetensors", "best.json", "last.safetensors",
                 "last.json", "last.state.safetensors", "last.state.json", "metrics.jsonl"):
        assert (run / name).exists(), name
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in log if r["kind"] == "eval"]
    assert [r["epoch"] for r in evals] == [1, 2] and all(r["split"] == "val" for r in evals)
    train_log = [r for r in log if r["kind"] == "train"]
    assert [r["step"] for r in train_log] == list(range(1, 9))  # 4 steps per epoch, logged every step
    assert all(math.isfinite(r["loss"]) and r["lr"] > 0 for r in train_log)
    best = json.loads((run / "best.json").read_text())
    assert best["selected_on"] == "val"
    result = evaluate_checkpoint(run, data, split="test", device="cpu")
    assert result["num_queries"] == 3 * 2 * 2 and result["num_gallery"] == 3 * 2
    # The metrics equal a brute-force computation from the embeddings ivt.load gives.
    import ivt
    from ivt.data import load_dataset

    model = ivt.load(run, device="cpu")
    records = load_dataset(data).split("test")
    images = model.encode_images([data / "imgs" / r.image for r in records])
    captions = [(c, r.pid) for r in records for c in r.captions]
    sim = model.encode_texts([c for c, _ in captions]) @ images.T
    gallery_pids = torch.tensor([r.pid for r in records])
    first_hit = [int((gallery_pids[sim[q].argsort(descending=True)] == pid).float().argmax()) + 1
                 for q, (_, pid) in enumerate(captions)]
    assert result["R1"] == pytest.approx(100 * sum(r == 1 for r in first_hit) / len(first_hit), abs=1e-4)
    assert result["R5"] == pytest.approx(100 * sum(r <= 5 for r in first_hit) / len(first_hit), abs=1e-4)
    model, meta = load_model(run, "best")
    assert not model.training and meta["encoder"]["image_size"] == [32, 16]


def test_resume_gives_the_same_weights_as_straight_training(tmp_path):
    data = write_toy_pedes(tmp_path / "toy")
    common = ["train.epochs=2", "train.eval_every=1", "token_drop.ratio=0.3", "model.drop_path=0.1"]
    straight = train(_cfg(data, tmp_path / "a", *common))
    # The same run paused after epoch 1 (4 steps of 4 per epoch), then resumed in a new invocation.
    part = train(_cfg(data, tmp_path / "b", *common, "train.stop_after_steps=4"))
    assert json.loads((part / "last.state.json").read_text())["epoch"] == 1
    resumed = train(load_config(part / "config.yaml", ["train.stop_after_steps=null"]), resume=True)
    a, b = load_file(str(straight / "last.safetensors")), load_file(str(resumed / "last.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # And a pause in the middle of an epoch resumes exactly too.
    mid = train(_cfg(data, tmp_path / "c", *common, "train.stop_after_steps=3"))
    assert json.loads((mid / "last.state.json").read_text())["batch"] == 3
    mid = train(load_config(mid / "config.yaml", ["train.stop_after_steps=null"]), resume=True)
    c = load_file(str(mid / "last.safetensors"))
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_refuses_to_overwrite_an_existing_run(tmp_path):
    data = write_toy_pedes(tmp_path / "toy")
    run = train(_cfg(data, tmp_path / "run", "train.epochs=1", "train.eval_every=0"))
    before = (run / "last.safetensors").read_bytes()
    with pytest.raises(RunDirError, match="--resume"):
        train(_cfg(data, tmp_path / "run", "train.epochs=1"))
    assert (run / "last.safetensors").read_bytes() == before


def test_missing_val_split_is_a_clear_error(tmp_path):
    data = write_toy_pedes(tmp_path / "toy", ids_per_split=(8, 0, 3))
    with pytest.raises(DataError, match="no 'val' split"):
        train(_cfg(data, tmp_path / "run", "train.epochs=1"))
    with pytest.raises(ConfigError, match="never on"):
        train(_cfg(data, tmp_path / "run", "train.eval_split=test"))
    assert not (tmp_path / "run").exists()


def test_two_tower_baseline_trains_and_reloads(tmp_path):
    from ivt.model.two_tower import TwoTowerEncoder

    data = write_toy_pedes(tmp_path / "toy")
    run = train(_cfg(data, tmp_path / "run", "train.epochs=1", "model.arch=two-tower"))
    model, meta = load_model(run, "best")
    assert isinstance(model, TwoTowerEncoder) and meta["arch"] == "two-tower"
    assert evaluate_checkpoint(run, data, device="cpu")["num_gallery"] == 6


def test_train_starts_from_an_official_checkpoint(tmp_path):
    from conftest import fixture_path

    data = write_toy_pedes(tmp_path / "toy")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "person", "shirt", "red", "blue", ",", "."]
    words += [f"[unused{i}]" for i in range(120 - len(words))]  # the fixture's text vocabulary is 120
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    ckpt = fixture_path("official_checkpoint_tiny.pth")
    size = ["model.width=64", "model.depth=2", "model.num_heads=4", "model.image_size=[64, 32]"]
    cfg = _cfg(data, tmp_path / "run", "train.epochs=1", f"model.init={ckpt}", f"data.tokenizer={tmp_path}/vocab.txt",
               *size)
    run = train(cfg)
    model, meta = load_model(run, "last")
    assert meta["encoder"]["width"] == 64 and meta["encoder"]["vocab_size"] == 120
    # The official weights were trained on inputs normalised with mean = std = 0.5: that travels along.
    assert meta["encoder"]["image_mean"] == [0.5] * 3 and meta["encoder"]["image_std"] == [0.5] * 3
    # A tokenizer that does not fit the checkpoint's vocabulary is refused up front.
    bad = _cfg(data, tmp_path / "run2", "train.epochs=1", f"model.init={ckpt}", *size)
    with pytest.raises(ConfigError, match="vocabulary of 120"):
        train(bad)
    # So are a named size and an architecture that contradict the weights (no silent override).
    vocab = f"data.tokenizer={tmp_path}/vocab.txt"
    with pytest.raises(ConfigError, match="width: model.size=tiny has 192, the weights have 64"):
        train(_cfg(data, tmp_path / "run3", f"model.init={ckpt}", vocab, "model.image_size=[64, 32]"))
    with pytest.raises(ConfigError, match="model.arch is 'two-tower'"):
        train(_cfg(data, tmp_path / "run4", f"model.init={ckpt}", vocab, *size, "model.arch=two-tower"))
    assert not any((tmp_path / name).exists() for name in ("run2", "run3", "run4"))


def test_learning_levers_train_and_resume_exactly(tmp_path):
    data = write_toy_pedes(tmp_path / "toy")
    levers = ["train.epochs=2", "train.eval_every=1", "loss.name=infonce", "loss.temperature=0.07",
              "align.word_positives=attributes", "align.shared_view=true", "train.sampler=similar",
              "train.similar_group=2", "model.stem=hmlp", "model.patch_size=8", "model.patch_stride=8"]
    straight = train(_cfg(data, tmp_path / "a", *levers))
    log = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss"] > 0 for r in log if r["kind"] == "train")
    part = train(_cfg(data, tmp_path / "b", *levers, "train.stop_after_steps=3"))
    resumed = train(load_config(part / "config.yaml", ["train.stop_after_steps=null"]), resume=True)
    a, b = load_file(str(straight / "last.safetensors")), load_file(str(resumed / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    model, meta = load_model(straight, "last")
    assert meta["encoder"]["stem"] == "hmlp"


def test_warmup_lasts_its_epochs_of_steps_under_a_time_budget(tmp_path, monkeypatch):
    """A time-budgeted run warms up for optim.warmup_epochs epochs of steps: the cap of 100 epochs
    must not shrink a 1-epoch warmup to 1/100 of the budget (too short a warmup let the demo
    collapse to one embedding for every input)."""
    from ivt.train.trainer import Trainer

    # A slow machine: every step uses a tenth of the time budget (deterministic stand-in for the clock).
    monkeypatch.setattr(Trainer, "progress", lambda self: min(1.0, 0.1 * self.state.step))
    data = write_toy_pedes(tmp_path / "toy")
    run = train(_cfg(data, tmp_path / "run", "train.epochs=100", "train.max_minutes=600", "optim.warmup_epochs=1",
                     "optim.lr=0.001", "optim.min_lr_ratio=0.01", "train.eval_every=0", "train.stop_after_steps=6"))
    lrs = [r["lr"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]
    w = 4 / 400  # the warmup's share of the step budget

    def cosine(progress: float) -> float:
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * max(progress - w, 0) / (1 - w)))

    # 4 steps per epoch: step k (1-based) trains at (k - 1) / 4 of the cosine's rate while warming up.
    ramp = [1e-3, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert lrs == [pytest.approx(1e-3 * r * cosine(0.1 * k)) for k, r in enumerate(ramp)]


@pytest.mark.parametrize("lr", [1e-4, 3.0, 1e5, 5e-324, 0.0, math.inf, -math.inf, math.nan])
def test_the_advice_of_a_diverged_run_is_a_valid_lower_finite_learning_rate(lr):
    from ivt.train.trainer import lr_advice

    advice = lr_advice(lr)
    override = advice.split("--set ")[1].rstrip(")")
    advised = load_config(None, [override]).optim.lr
    assert math.isfinite(advised) and advised > 0 and "inf" not in advice and "nan" not in advice
    if math.isfinite(lr) and lr / 10 > 0:
        assert advice == f"lower optim.lr (e.g. --set optim.lr={lr / 10:g})" and advised < lr
    else:
        assert advice == "set a finite optim.lr > 0 (e.g. --set optim.lr=0.001)"


def _paused_run_files(run, *extra):
    """A run directory as a paused run leaves it, as far as resuming reads before training: its
    configuration and a training state (no training needed to check what a resume may change)."""
    from ivt.config import save_config

    run.mkdir()
    save_config(_cfg(run.parent / "data", run, "model.width=32", *extra), run / "config.yaml")
    (run / "last.state.json").write_text("{}\n")
    return {p.name: p.read_bytes() for p in run.iterdir()}


def test_resume_refuses_settings_that_change_the_run_naming_key_and_both_values(tmp_path, capsys):
    from ivt.cli import main

    run = tmp_path / "run"
    before = _paused_run_files(run)
    assert main(["train", "--resume", str(run), "--set", "model.width=64"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ivt train: error: cannot resume {run} with model.width=64 (the run has 32): a resumed "
                          f"run continues the same run, so only train.max_minutes, train.stop_after_steps")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert main(["train", "--resume", str(run), "--set", "train.batch_size=4", f"data.path={tmp_path}",
                 "--precision", "bf16"]) == 2
    err = capsys.readouterr().err
    for line in ("train.batch_size=4 (the run has 8)", f"data.path={tmp_path} (the run has {tmp_path / 'data'})",
                 "train.precision=bf16 (the run has fp32)"):
        assert f"\n  {line}" in err
    assert main(["train", "--resume", str(run), "--out", str(tmp_path / "elsewhere")]) == 2
    assert f"a resumed run stays in its directory {run}" in capsys.readouterr().err
    other = tmp_path / "other.yaml"
    other.write_text("model:\n  width: 64\n")
    assert main(["train", "--resume", str(run), "--config", str(other)]) == 2
    assert f"--config {other}: a resumed run continues with its own {run / 'config.yaml'}" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"with optim.lr=0.5 \(the run has 0.001\)"):
        train(load_config(run / "config.yaml", ["optim.lr=0.5"]), resume=True)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_resume_accepts_the_settable_keys_and_the_run_own_values(tmp_path, capsys):
    from ivt.cli import build_parser, main
    from ivt.config import RESUME_SETTABLE

    run = tmp_path / "run"
    _paused_run_files(run)
    settable = ["train.max_minutes=30", "train.stop_after_steps=1", "train.log_every=7", "train.threads=1",
                "train.device=cpu", "data.decode_threads=1", "data.cache_images=false"]
    assert sorted(s.split("=")[0] for s in settable) == sorted(RESUME_SETTABLE)
    same = ["model.width=32", "train.batch_size=8", "optim.lr=0.001", "model.image_size=[32, 16]"]
    assert main(["train", "--resume", str(run), "--set", *settable, *same, "--precision", "fp32", "--out",
                 str(run)]) == 2
    err = capsys.readouterr().err   # past the check: the (absent) dataset is what stops it here
    assert "cannot resume" not in err and f"{tmp_path / 'data'}: no such file or directory" in err
    train_help = next(a for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions
                      if a.dest == "resume").help
    assert ", ".join(RESUME_SETTABLE) in train_help
