"""Official-weights import: outputs match the reference, checkpoints and manifests load."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import ivt
from ivt.model import (
    CheckpointError,
    IVTEncoder,
    encoder_state_shapes,
    load_official_encoder,
    load_state_dict_strict,
    model_config,
)

LOCAL = Path(__file__).resolve().parent / "fixtures"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


def fixture(name: str) -> Path:
    for folder in (LOCAL, SHARED):
        if (folder / name).is_file():
            return folder / name
    pytest.skip(f"fixture {name} not found in {LOCAL} or {SHARED}")


def tiny_kwargs() -> dict:
    cfg = json.loads(fixture("official_encoder_tiny.json").read_text())
    return dict(image_size=tuple(cfg["img_size"]), patch_size=cfg["patch_size"],
                patch_stride=cfg["stride_size"], num_heads=cfg["num_heads"])


@pytest.fixture(scope="module")
def tiny() -> IVTEncoder:
    return load_official_encoder(fixture("official_encoder_tiny.safetensors"), **tiny_kwargs())


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(str(fixture("official_encoder_tiny_io.safetensors")))


def test_config_inferred_from_shapes(tiny: IVTEncoder) -> None:
    cfg = json.loads(fixture("official_encoder_tiny.json").read_text())
    c = tiny.config
    assert (c.width, c.depth, c.num_heads, c.mlp_ratio) == (
        cfg["embed_dim"], cfg["depth"], cfg["num_heads"], cfg["mlp_ratio"])
    assert c.qkv_bias is cfg["qkv_bias"]
    assert (c.vocab_size, c.max_text_len, c.type_vocab_size) == (
        cfg["text_vocab_size"], cfg["text_max_positions"], cfg["text_type_vocab_size"])
    assert c.ln_eps == cfg["layer_norm_eps"] and c.text_ln_eps == cfg["text_layer_norm_eps"]
    assert not tiny.training


def test_reproduces_official_image_tokens(tiny: IVTEncoder, io: dict) -> None:
    with torch.no_grad():
        out = tiny.encode_image_tokens(io["image"])
        emb = tiny.encode_image(io["image"])
    torch.testing.assert_close(out, io["image_tokens"], atol=1e-5, rtol=0)
    torch.testing.assert_close(emb, io["image_tokens"][:, 0], atol=1e-5, rtol=0)


def test_reproduces_official_text_tokens(tiny: IVTEncoder, io: dict) -> None:
    with torch.no_grad():
        out = tiny.encode_text_tokens(io["input_ids"], io["attention_mask"])
        emb = tiny.encode_text(io["input_ids"], io["attention_mask"])
    torch.testing.assert_close(out, io["text_tokens"], atol=1e-5, rtol=0)
    torch.testing.assert_close(emb, io["text_tokens"][:, 0], atol=1e-5, rtol=0)


def test_pth_checkpoint_gives_same_encoder(tiny: IVTEncoder) -> None:
    other = ivt.load_official_encoder(fixture("official_checkpoint_tiny.pth"), **tiny_kwargs())
    assert other.config == tiny.config
    ref = tiny.state_dict()
    got = other.state_dict()
    assert got.keys() == ref.keys()
    for key, value in ref.items():
        assert torch.equal(got[key], value), key


def test_dict_input_and_stride_inference(tiny: IVTEncoder) -> None:
    raw = load_file(str(fixture("official_encoder_tiny.safetensors")))
    kwargs = tiny_kwargs()
    kwargs.pop("patch_stride")
    model = load_official_encoder({f"module.encoder_vl.{k}": v for k, v in raw.items()}, **kwargs)
    assert model.config.patch_stride == 16
    model.pos_embed.data.zero_()
    assert raw["pos_embed"].abs().sum() > 0  # the encoder does not alias the caller's tensors


def _manifest_state(variant: dict) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in variant["keys"].items()}


@pytest.mark.parametrize("name", ["cuhk_pedes_and_icfg_pedes_stride12", "rstpreid_stride16"])
def test_base_manifest_accepted(name: str) -> None:
    variant = json.loads(fixture("official_checkpoint_base_manifest.json").read_text())
    variant = variant["variants"][name]
    model = load_official_encoder(_manifest_state(variant))  # paper defaults, stride inferred
    assert model.config.patch_stride == variant["patch_stride"]
    assert sum(p.numel() for p in model.parameters()) == variant["num_parameters"]
    stride = variant["patch_stride"]
    ours = encoder_state_shapes(model_config("base", patch_stride=stride))
    official = {k.removeprefix("encoder_vl."): tuple(s) for k, s in variant["keys"].items()}
    official.pop("embeddings.position_ids")
    assert ours == official


def test_shape_mismatch_lists_keys() -> None:
    raw = load_file(str(fixture("official_encoder_tiny.safetensors")))
    raw["blocks.1.mlp_txt.fc2.bias"] = torch.zeros(65)
    raw["norm.weight"] = torch.zeros(3)
    del raw["blocks.0.attn.proj.bias"]
    with pytest.raises(CheckpointError) as err:
        load_official_encoder(raw, **tiny_kwargs())
    msg = str(err.value)
    assert "blocks.1.mlp_txt.fc2.bias: expected (64), found (65)" in msg
    assert "norm.weight: expected (64), found (3)" in msg
    assert "missing keys (1)" in msg and "blocks.0.attn.proj.bias" in msg


def test_unexpected_keys_rejected_unless_not_strict() -> None:
    raw = load_file(str(fixture("official_encoder_tiny.safetensors")))
    raw["module.head.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match="(?s)unexpected keys.*head.weight"):
        load_official_encoder(raw, **tiny_kwargs())
    with pytest.warns(UserWarning, match="head.weight"):
        load_official_encoder(raw, strict=False, **tiny_kwargs())


def test_wrong_stride_is_a_clear_error() -> None:
    kwargs = tiny_kwargs()
    kwargs["patch_stride"] = 8
    with pytest.raises(CheckpointError, match=r"pos_embed has 9 positions.*stride 8.*7x3"):
        load_official_encoder(fixture("official_encoder_tiny.safetensors"), **kwargs)


def test_wrong_heads_is_a_clear_error() -> None:
    kwargs = tiny_kwargs()
    kwargs["num_heads"] = 5
    with pytest.raises(CheckpointError, match="not divisible by num_heads"):
        load_official_encoder(fixture("official_encoder_tiny.safetensors"), **kwargs)


def test_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "x.pth"
    torch.save({"epoch": 3}, path)
    with pytest.raises(CheckpointError, match="no state dict found"):
        load_official_encoder(path)
    with pytest.raises(FileNotFoundError):
        load_official_encoder(tmp_path / "missing.safetensors")


def test_load_state_dict_strict_roundtrip_and_errors() -> None:
    cfg = model_config("tiny", depth=1, width=32, num_heads=2)
    src, dst = IVTEncoder(cfg), IVTEncoder(cfg)
    load_state_dict_strict(dst, src.state_dict(), "roundtrip")
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(),
                                                 dst.state_dict().values()))
    bad = dict(src.state_dict())
    bad["pos_embed"] = torch.zeros(1, 3, 32)
    bad["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"(?s)my.ckpt.*unexpected keys.*extra.weight"
                                              r".*pos_embed: expected \(1, 33, 32\)"):
        load_state_dict_strict(dst, bad, "my.ckpt")
