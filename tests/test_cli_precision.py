"""Every command that runs a model takes ``--precision`` and hands it to the model it loads; an
index records the precision it was encoded with, and a search may use another."""
from __future__ import annotations

import json

import pytest
import torch

import ivt
from helpers import MICRO_MODEL
from ivt.cli import main
from ivt.index.store import read_index
from search_helpers import free_port, tiny_trained_run


@pytest.fixture(scope="module")
def run_and_data(tmp_path_factory):
    return tiny_trained_run(tmp_path_factory.mktemp("precision"))


@pytest.fixture
def loads(monkeypatch):
    """The precision of every ``ivt.load`` a command makes (the dtype of the model it got)."""
    seen: list[torch.dtype | None] = []
    real = ivt.load

    def recording(*args, **kwargs):
        model = real(*args, **kwargs)
        seen.append(model.dtype)
        return model

    monkeypatch.setattr(ivt, "load", recording)
    monkeypatch.setattr("ivt.evaluate.retrieval.load", recording)
    return seen


def test_index_search_explain_serve_and_evaluate_take_precision(run_and_data, tmp_path, loads, monkeypatch, capsys):
    run, data = run_and_data
    idx = tmp_path / "idx"
    assert main(["index", "build", "--checkpoint", str(run), "--images", str(data), "--split", "test",
                 "--out", str(idx), "--quiet", "--precision", "bf16"]) == 0
    assert read_index(idx).manifest["model"]["precision"] == "bf16"
    assert main(["index", "add", "--index", str(idx), "--images", str(data), "--split", "val", "--quiet",
                 "--precision", "fp32"]) == 0
    capsys.readouterr()
    assert main(["search", "--index", str(idx), "a person", "--json", "--precision", "fp32"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] > 0
    image = next((data / "imgs").rglob("*.jpg"))
    assert main(["explain", "a person", "--checkpoint", str(run), "--image", str(image), "--samples", "4",
                 "--out", str(tmp_path / "e.png"), "--precision", "bf16"]) == 0
    monkeypatch.setattr("uvicorn.Server.run", lambda server, sockets=None: None)
    assert main(["serve", "--index", str(idx), "--precision", "fp32", "--port", str(free_port())]) == 0
    assert main(["evaluate", "--checkpoint", str(run), "--data", str(data), "--precision", "bf16"]) == 0
    assert loads == [torch.bfloat16, None, None, torch.bfloat16, None, torch.bfloat16]


def test_train_records_the_precision_it_was_given(run_and_data, tmp_path):
    _, data = run_and_data
    out = tmp_path / "run"
    assert main(["train", "--set", *MICRO_MODEL, "train.batch_size=8",
                 "train.threads=2", "data.vocab_size=200", "data.max_text_len=24", "train.epochs=1",
                 "train.eval_every=0", f"data.path={data}", "--out", str(out), "--precision", "bf16"]) == 0
    last = json.loads((out / "last.json").read_text())
    assert last["precision"] == "bf16" and last["precision_reason"] == "as asked"
    assert json.loads((out / "last.state.json").read_text())["precision"] == "bf16"


@pytest.mark.parametrize("argv", [["search", "x", "--index", "i", "--precision", "half"],
                                  ["index", "build", "--checkpoint", "c", "--out", "o", "--precision", "fp8"],
                                  ["demo", "--precision", "int8"]])
def test_an_unknown_precision_is_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and "--precision: invalid choice" in capsys.readouterr().err


def test_every_model_command_accepts_cuda_n_and_refuses_nonsense(capsys):
    from ivt.cli import build_parser

    parser = build_parser()
    for argv in (["search", "x", "--index", "i"], ["index", "build", "--checkpoint", "c", "--out", "o"],
                 ["index", "add", "--index", "i"], ["explain", "x", "--checkpoint", "c", "--image", "i"],
                 ["serve", "--index", "i"], ["evaluate", "--checkpoint", "c", "--data", "d"]):
        assert parser.parse_args([*argv, "--device", "cuda:1"]).device == "cuda:1"
        with pytest.raises(SystemExit):
            parser.parse_args([*argv, "--device", "gpu0"])
    assert "invalid device 'gpu0'" in capsys.readouterr().err
