"""The `ivt` command end to end: help, synth, data check (good and bad input), train + evaluate."""
from __future__ import annotations

import json

import pytest

from helpers import MICRO_MODEL, write_toy_pedes
from ivt.cli import main


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("synth", "data", "train", "evaluate", "demo"):
        assert command in out


def test_synth_check_and_preview(tmp_path, capsys):
    out = tmp_path / "sp"
    assert main(["synth", "--out", str(out), "--ids", "6", "--seed", "3", "--quiet",
                 "--preview", str(tmp_path / "p.png"), "--preview-count", "4"]) == 0
    assert (out / "reid_raw.json").exists() and (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["data", "check", str(out)]) == 0
    text = capsys.readouterr().out
    assert "train" in text and "test" in text and "OK" in text


def test_data_check_reports_bad_input_with_exit_2(tmp_path, capsys):
    root = write_toy_pedes(tmp_path / "toy")
    entries = json.loads((root / "reid_raw.json").read_text())
    entries[3]["captions"] = []
    (root / "reid_raw.json").write_text(json.dumps(entries))
    before = sorted(p.name for p in root.rglob("*"))
    assert main(["data", "check", str(root)]) == 2
    err = capsys.readouterr().err
    assert "reid_raw.json" in err and "captions" in err and "[3]" in err
    assert sorted(p.name for p in root.rglob("*")) == before


def test_data_check_finds_a_corrupt_image(tmp_path, capsys):
    root = write_toy_pedes(tmp_path / "toy")
    victim = next((root / "imgs" / "test").iterdir())
    victim.write_bytes(b"not a jpeg at all")
    assert main(["data", "check", str(root)]) == 2
    assert victim.name in capsys.readouterr().err
    assert main(["data", "check", str(root), "--no-images"]) == 0


def test_train_evaluate_json_and_bad_config(tmp_path, capsys):
    root = write_toy_pedes(tmp_path / "toy")
    run = tmp_path / "run"
    base = ["train", "--set", f"data.path={root}", *MICRO_MODEL, "train.epochs=1",
            "train.batch_size=8", "data.vocab_size=200", "train.precision=fp32", "--out", str(run)]
    assert main(base) == 0
    out_json = tmp_path / "m.json"
    assert main(["evaluate", "--checkpoint", str(run), "--data", str(root), "--json", str(out_json)]) == 0
    metrics = json.loads(out_json.read_text())
    for key in ("R1", "R5", "R10", "mAP", "mINP", "num_queries", "num_gallery"):
        assert key in metrics
    assert metrics["num_queries"] == 12 and metrics["num_gallery"] == 6
    assert main(["train", "--set", "train.epohcs=3", "--out", str(tmp_path / "x")]) == 2
    assert "unknown config key 'train.epohcs'" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tmp_path / "nope"), "--data", str(root)]) == 2


def test_evaluate_lists_mismatching_keys(tmp_path, capsys):
    root = write_toy_pedes(tmp_path / "toy")
    run = tmp_path / "run"
    assert main(["train", "--set", f"data.path={root}", *MICRO_MODEL, "train.epochs=1",
                 "train.batch_size=8", "data.vocab_size=200", "train.precision=fp32", "--out", str(run)]) == 0
    meta = json.loads((run / "best.json").read_text())
    meta["encoder"]["mlp_ratio"] = 2.0
    (run / "best.json").write_text(json.dumps(meta))
    assert main(["evaluate", "--checkpoint", str(run), "--data", str(root)]) == 2
    err = capsys.readouterr().err
    assert "mlp_vis.fc1.weight" in err and "best.safetensors" in err
