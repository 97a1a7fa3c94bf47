"""`ivt import-official`: official checkpoints become run directories that load and evaluate."""
from __future__ import annotations

import hashlib
import json
import re
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import ivt
from conftest import fixture_path
from helpers import write_toy_pedes
from ivt.checkpoint import load_model, load_tokenizer
from ivt.cli import main
from ivt.config import load_config
from ivt.importing import export_official
from ivt.model import IVTEncoder, model_config
from ivt.text.tokenizer import Tokenizer

#: The official models' preprocessing (mean = std = 0.5, bilinear resizes): what an import assumes.
OFFICIAL_PREPROCESSING = {"image_mean": (0.5, 0.5, 0.5), "image_std": (0.5, 0.5, 0.5), "eval_interpolation": "bilinear"}
WORDS = ["a", "man", "woman", "in", "red", "blue", "coat", "shirt", "black", "pants", "with", "bag", "."]


def write_vocab(path, size: int):
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    tokens += [f"w{i}" for i in range(size - len(tokens))]
    path.write_text("\n".join(tokens) + "\n")
    return path


@pytest.fixture
def model() -> IVTEncoder:
    torch.manual_seed(0)
    config = model_config("tiny", image_size=(64, 32), patch_stride=16, width=64, depth=2, num_heads=4,
                          vocab_size=60, max_text_len=40, **OFFICIAL_PREPROCESSING)
    return IVTEncoder(config).eval()


def run_import(ckpt, out, vocab, *extra) -> int:
    return main(["import-official", str(ckpt), "--out", str(out), "--image-size", "64x32", "--heads", "4",
                 "--vocab", str(vocab), *extra])


def test_round_trip_gives_identical_embeddings_through_ivt_load(tmp_path, model):
    ckpt = export_official(model, tmp_path / "official.pth")
    vocab = write_vocab(tmp_path / "vocab.txt", 60)
    assert run_import(ckpt, tmp_path / "run", vocab) == 0
    retrieval = ivt.load(tmp_path / "run", device="cpu", precision="fp32")
    pixels = torch.randint(0, 256, (3, 3, 64, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    texts = ["a man in a red coat.", "a woman with a blue bag", "black pants"]
    with torch.no_grad():
        # The official preprocessing: (x / 255 - 0.5) / 0.5.
        want_img = F.normalize(model.encode_image(pixels.float() / 255 * 2 - 1), dim=-1)
        ids, mask = Tokenizer.from_file(vocab, max_length=40)(texts)
        want_txt = F.normalize(model.encode_text(ids, mask), dim=-1)
    torch.testing.assert_close(retrieval.encode_images(pixels), want_img, rtol=0, atol=1e-6)
    assert torch.equal(retrieval.encode_texts(texts), want_txt)
    assert retrieval.config.image_mean == retrieval.config.image_std == (0.5, 0.5, 0.5)
    assert retrieval.config.eval_interpolation == "bilinear"
    loaded, meta = load_model(tmp_path / "run")
    tokenizer = load_tokenizer(tmp_path / "run", meta)
    images = torch.randn(3, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    texts = ["a man in a red coat.", "a woman with a blue bag", "black pants"]
    ids, mask = tokenizer(texts)
    want_ids, want_mask = Tokenizer.from_file(vocab, max_length=40)(texts)
    assert torch.equal(ids, want_ids) and torch.equal(mask, want_mask)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), model.encode_image(images))
        assert torch.equal(loaded.encode_text(ids, mask), model.encode_text(ids, mask))
    assert meta["encoder"]["patch_stride"] == 16  # inferred from the position embedding
    assert meta["imported_from"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    cfg = load_config(tmp_path / "run" / "config.yaml")
    assert (cfg.model.patch_stride, cfg.model.image_size, cfg.data.max_text_len) == (16, [64, 32], 40)
    weights = load_file(str(tmp_path / "run" / "best.safetensors"))
    assert weights.keys() == model.state_dict().keys()


def test_imported_run_evaluates(tmp_path, model, capsys):
    ckpt = export_official(model, tmp_path / "official.pth")
    assert run_import(ckpt, tmp_path / "run", write_vocab(tmp_path / "vocab.txt", 60)) == 0
    data = write_toy_pedes(tmp_path / "toy", ids_per_split=(2, 2, 3))
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run"), "--data", str(data), "--split", "test",
                 "--device", "cpu", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["num_queries"] == 3 * 2 * 2 and result["num_gallery"] == 6 and result["R10"] == 100.0


def test_official_fixture_reproduces_the_official_outputs(tmp_path):
    assert run_import(fixture_path("official_checkpoint_tiny.pth"), tmp_path / "run",
                      write_vocab(tmp_path / "vocab.txt", 120)) == 0
    loaded, _ = load_model(tmp_path / "run")
    io = load_file(str(fixture_path("official_encoder_tiny_io.safetensors")))
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image_tokens(io["image"]), io["image_tokens"], atol=1e-5, rtol=0)
        torch.testing.assert_close(loaded.encode_text_tokens(io["input_ids"], io["attention_mask"]),
                                   io["text_tokens"], atol=1e-5, rtol=0)


def test_bad_input_is_one_message_and_nothing_is_written(tmp_path, model, capsys):
    ckpt = export_official(model, tmp_path / "official.pth")
    vocab = write_vocab(tmp_path / "vocab.txt", 60)
    cases = [
        ((tmp_path / "missing.pth", tmp_path / "a", vocab), "official checkpoint not found"),
        ((ckpt, tmp_path / "b", vocab, "--patch-stride", "12"), "gives a 5x2 grid = 11 positions; strides that fit"),
        ((ckpt, tmp_path / "c", write_vocab(tmp_path / "small.txt", 50)), "has 50 entries but"),
    ]
    for args, message in cases:
        rc = run_import(*args)
        err = capsys.readouterr().err
        assert rc == 2 and message in err and err.count("\n") == 1, err
    assert not any((tmp_path / d).exists() for d in "abc")
    assert run_import(ckpt, tmp_path / "run", vocab) == 0
    before = (tmp_path / "run" / "best.json").read_text()
    assert run_import(ckpt, tmp_path / "run", vocab) == 2
    assert "already exists and is not an empty directory" in capsys.readouterr().err
    assert (tmp_path / "run" / "best.json").read_text() == before
    with pytest.raises(SystemExit) as exit_info:
        main(["import-official", str(ckpt), "--out", str(tmp_path / "d"), "--image-size", "big"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("option, value, message", [
    ("--patch-stride", "0", "must be an integer from 1 to 16, got '0'"),
    ("--patch-stride", "-4", "must be an integer from 1 to 16, got '-4'"),
    ("--patch-stride", "17", "must be an integer from 1 to 16, got '17'"),
    ("--heads", "0", "must be an integer >= 1, got '0'"),
    ("--heads", "-2", "must be an integer >= 1, got '-2'"),
])
def test_numeric_options_out_of_range_are_usage_errors_naming_the_option(tmp_path, capsys, option, value, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["import-official", str(tmp_path / "x.pth"), "--out", str(tmp_path / "run"), option, value])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.strip().splitlines()[-1].endswith(f"argument {option}: {message}")
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_a_patch_stride_below_one_is_a_checkpoint_error_in_the_library_too(tmp_path, model):
    from ivt.errors import CheckpointError
    from ivt.importing import import_official

    ckpt = export_official(model, tmp_path / "official.pth")
    with pytest.raises(CheckpointError, match=r"^patch_stride must be from 1 to the patch size 16, got 0$"):
        import_official(ckpt, tmp_path / "run", image_size=(64, 32), patch_stride=0, num_heads=4,
                        vocab=write_vocab(tmp_path / "vocab.txt", 60))
    assert not (tmp_path / "run").exists()


def test_import_leaves_a_directory_it_did_not_create_alone_and_no_staging_behind(tmp_path, model, monkeypatch):
    import ivt.importing as importing

    ckpt = export_official(model, tmp_path / "official.pth")
    vocab = write_vocab(tmp_path / "vocab.txt", 60)
    for name in (".run.importing", "run.importing"):   # someone's own folders, named like a staging dir
        (tmp_path / name).mkdir()
        (tmp_path / name / "mine.txt").write_text("keep")
    before = sorted(p.name for p in tmp_path.iterdir())

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(importing, "save_checkpoint", broken)
    with pytest.raises(OSError, match="disk full"):
        run_import(ckpt, tmp_path / "run", vocab)
    assert sorted(p.name for p in tmp_path.iterdir()) == before   # its staging directory removed, no run
    monkeypatch.undo()
    assert run_import(ckpt, tmp_path / "run", vocab) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "run"])
    assert all((tmp_path / name / "mine.txt").read_text() == "keep" for name in (".run.importing", "run.importing"))
    assert (tmp_path / "run" / "best.safetensors").is_file()



#: EncoderConfig fields that only training uses: an official checkpoint does not carry them.
TRAINING_ONLY = ("dropout", "text_dropout", "attn_dropout", "drop_path", "token_drop", "token_drop_mode")


@pytest.mark.parametrize("overrides", [
    dict(patch_stride=12, width=48, depth=1, num_heads=3, mlp_ratio=2.0, max_text_len=24),
    dict(patch_stride=8, width=32, depth=2, num_heads=2, qkv_bias=False),
])
def test_an_exported_model_imports_back_as_the_same_model(tmp_path, overrides):
    torch.manual_seed(1)
    model = IVTEncoder(model_config("tiny", image_size=(64, 32), vocab_size=60, **OFFICIAL_PREPROCESSING,
                                    **overrides)).eval()
    ckpt = export_official(model, tmp_path / "official.pth")
    assert run_import(ckpt, tmp_path / "run", write_vocab(tmp_path / "vocab.txt", 60), "--heads",
                      str(overrides["num_heads"]), "--patch-stride", str(overrides["patch_stride"])) == 0
    loaded, _ = load_model(tmp_path / "run")
    want, got = model.config.to_dict(), loaded.config.to_dict()
    assert {k: v for k, v in got.items() if k not in TRAINING_ONLY} == {
        k: v for k, v in want.items() if k not in TRAINING_ONLY}
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


def test_export_refuses_a_model_the_official_layout_cannot_hold_before_writing(tmp_path):
    from ivt.config import DEMO_CONFIG
    from ivt.errors import CheckpointError
    from ivt.train.encoder_from_config import build_encoder

    cfg = load_config(DEMO_CONFIG)
    demo = build_encoder(cfg.model, vocab_size=60, max_text_len=cfg.data.max_text_len)
    out = tmp_path / "official.pth"
    with pytest.raises(CheckpointError) as info:
        export_official(demo, out)
    message = str(info.value)
    assert message.startswith("cannot export this model as an official IVT checkpoint (import-official would "
                              "read another model): ")
    for said in ("stem 'mobilenetv2' (official: 'patch')", "pool 'mean' (official: 'cls')",
                 "image_mean (0.485, 0.456, 0.406) (official: (0.5, 0.5, 0.5))",
                 "eval_interpolation 'bicubic' (official: 'bilinear')"):
        assert said in message
    assert message.endswith("; nothing was written") and not out.exists()
    torch.manual_seed(0)
    for overrides, said in [(dict(itm=True), "itm True (official: False)"),
                            (dict(patch_size=8, patch_stride=8), "patch_size 8 (official: 16)"),
                            (dict(ln_eps=1e-5), "ln_eps 1e-05 (official: 1e-06)")]:
        model = IVTEncoder(model_config("tiny", image_size=(64, 32), width=32, depth=1, num_heads=2, vocab_size=60,
                                        **OFFICIAL_PREPROCESSING, **overrides))
        with pytest.raises(CheckpointError, match=re.escape(said)):
            export_official(model, out)
        assert not out.exists()
    wrapper = SimpleNamespace(encoder=model, config=model.config)   # as ivt.load returns: not the module itself
    with pytest.raises(CheckpointError, match=r"SimpleNamespace is not an IVT encoder module \(the encoder of "):
        export_official(wrapper, out)
    assert not out.exists()
