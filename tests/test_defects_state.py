"""Integrity and input handling: damaged or edited files are refused at load (training state,
checkpoint preprocessing, index values), the API refuses inputs that would give silent wrong
results, failed index writes leave no trace, and the server answers 415 for a non-JSON body."""
from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save

import ivt
from helpers import write_toy_pedes
from ivt.cli import main
from ivt.index.build import build_index, image_source

TRAIN = ["model.size=tiny", "model.image_size=[32, 16]", "train.batch_size=8", "train.precision=fp32",
         "train.threads=2", "data.vocab_size=200", "data.max_text_len=24", "train.epochs=1"]
QUERY = "a person in a red shirt, with blue trousers."


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict[str, Path]:
    """A toy dataset, a trained run of it and an index of its test split; tests spoil copies."""
    root = tmp_path_factory.mktemp("defects")
    data = write_toy_pedes(root / "toy")
    run = root / "run"
    assert main(["train", "--set", *TRAIN, f"data.path={data}", "--out", str(run)]) == 0
    index = root / "idx"
    build_index(index, ivt.load(run, device="cpu"), images=image_source(data, split="test"), progress=False)
    return {"data": data, "run": run, "index": index}


@pytest.fixture(scope="module")
def model(base):
    return ivt.load(base["run"], device="cpu")


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# -- 1. the resumable training state is verified -------------------------------------------------


def _resume(run: Path) -> int:
    return main(["train", "--resume", str(run), "--set", "train.epochs=2"])


def test_resume_refuses_a_state_file_with_a_flipped_byte(base, tmp_path, capsys):
    run = shutil.copytree(base["run"], tmp_path / "run")
    state = run / "last.state.safetensors"
    data = bytearray(state.read_bytes())
    data[-40] ^= 0x01                    # inside the tensor data: still a readable safetensors file
    state.write_bytes(bytes(data))
    before = _hashes(run)
    assert _resume(run) == 2
    err = _error(capsys)
    assert f"{state}: its content does not match last.state.json (sha256 differs)" in err
    assert _hashes(run) == before


def test_resume_refuses_a_non_finite_state_naming_file_and_tensor(base, tmp_path, capsys):
    run = shutil.copytree(base["run"], tmp_path / "run")
    state = run / "last.state.safetensors"
    tensors = load_file(str(state))
    name = sorted(k for k in tensors if k.startswith("optim."))[0]
    tensors[name] = torch.full_like(tensors[name], math.nan)
    data = save(tensors)
    state.write_bytes(data)              # consistent: the recorded sha256 matches the NaN state
    info = json.loads((run / "last.state.json").read_text())
    info["tensors_sha256"] = hashlib.sha256(data).hexdigest()
    (run / "last.state.json").write_text(json.dumps(info))
    before = _hashes(run)
    assert _resume(run) == 2
    err = _error(capsys)
    assert f"{state}: tensor {name} holds NaN or infinite values" in err and "cannot be resumed" in err
    assert _hashes(run) == before
