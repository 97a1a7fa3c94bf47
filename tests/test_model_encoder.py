"""IVTEncoder behaviour, token dropping (BMM) and configuration."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from ivt.model import MODEL_SIZES, EncoderConfig, IVTEncoder, TokenDrop, drop_tokens, model_config

MICRO = dict(image_size=(32, 16), patch_size=8, patch_stride=8, width=32, depth=2, num_heads=2,
             vocab_size=50, max_text_len=16)


@pytest.fixture(scope="module")
def micro() -> IVTEncoder:
    torch.manual_seed(0)
    return IVTEncoder(EncoderConfig(**MICRO)).eval()


# ---------------------------------------------------------------- config
def test_named_sizes() -> None:
    assert set(MODEL_SIZES) == {"tiny", "small", "base"}
    base = model_config("base")
    assert (base.width, base.depth, base.num_heads, base.image_size) == (768, 12, 12, (384, 128))
    assert base.grid_size == (31, 10) and base.num_patches == 310
    assert model_config("base", patch_stride=16).grid_size == (24, 8)
    assert model_config("tiny").grid_size == (8, 4)


@pytest.mark.parametrize("kwargs, match", [
    (dict(width=100, num_heads=12), "not divisible by num_heads"),
    (dict(patch_stride=20), "patch_stride 20 > patch_size 16"),
    (dict(image_size=(8, 128)), "smaller than patch_size"),
    (dict(drop_path=1.5), "drop_path"),
    (dict(stem="resnet"), "stem must be one of"),
    (dict(stem="conv", patch_size=10, patch_stride=10), "divisible by 4"),
    (dict(stem="hmlp", patch_stride=8), "patch_stride == patch_size"),
])
def test_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EncoderConfig(**kwargs)


def test_model_config_errors_list_valid_names() -> None:
    with pytest.raises(ValueError, match="tiny"):
        model_config("huge")
    with pytest.raises(ValueError, match="patch_stride"):
        model_config("tiny", stride=3)
    cfg = model_config("small", depth=2)
    assert EncoderConfig.from_dict(cfg.to_dict()) == cfg


# ---------------------------------------------------------------- stems
@pytest.mark.parametrize("stride", [16, 12, 8])
def test_patch_embedding_as_matrix_product_equals_the_convolution(stride: int) -> None:
    from ivt.model.encoder import PatchEmbed

    torch.manual_seed(0)
    embed = PatchEmbed(model_config("tiny", image_size=(70, 38), patch_stride=stride))
    images = torch.randn(2, 3, 70, 38)
    reference = F.conv2d(images, embed.proj.weight, embed.proj.bias, stride).flatten(2).transpose(1, 2)
    assert torch.allclose(embed(images), reference, atol=1e-5)


@pytest.mark.parametrize("stem, patch", [("conv", 16), ("hmlp", 16), ("hmlp", 8)])
def test_stems_keep_the_token_grid(stem: str, patch: int) -> None:
    torch.manual_seed(0)
    config = EncoderConfig(**{**MICRO, "image_size": (64, 32), "patch_size": patch, "patch_stride": patch,
                              "stem": stem})
    model = IVTEncoder(config)
    tokens = model.encode_image_tokens(torch.randn(2, 3, 64, 32))
    assert tokens.shape == (2, 1 + config.num_patches, config.width)
    assert config.num_patches == (64 // patch) * (32 // patch)
    model.encode_image(torch.randn(2, 3, 64, 32)).sum().backward()
    assert all(p.grad is not None for p in model.patch_embed.parameters())


@pytest.mark.parametrize("cin, kernel, stride, channels_last", [
    (24, 4, 4, True), (16, 4, 4, False), (8, 8, 8, True), (3, 16, 12, False), (24, 4, 3, True)])
def test_patch_conv_is_the_convolution_forward_and_backward(cin: int, kernel: int, stride: int,
                                                            channels_last: bool) -> None:
    from ivt.model.stem import PatchConv2d

    torch.manual_seed(0)
    conv = PatchConv2d(cin, 20, kernel, stride)
    images = torch.randn(2, cin, 8 * kernel + 3, 4 * kernel + 1)   # borders that fill no stride
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    images.requires_grad_(True)
    ours = conv(images)
    reference = F.conv2d(images, conv.weight, conv.bias, stride)
    assert ours.shape == reference.shape
    assert torch.allclose(ours, reference, atol=1e-5)
    grad = torch.randn_like(reference)
    mine = torch.autograd.grad(ours, (images, conv.weight, conv.bias), grad)
    theirs = torch.autograd.grad(reference, (images, conv.weight, conv.bias), grad)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(mine, theirs))


@pytest.mark.parametrize("stem", ["conv", "patch", "hmlp"])
def test_stems_in_bf16_agree_with_fp32(stem: str) -> None:
    """bf16 autocast must give the fp32 tokens to bf16's precision: oneDNN's AMX bf16 convolution
    returned wrong values for the convolution stem's last layer (relative error 1.3), which
    stopped training in bf16 on such CPUs; this fails there if a stem goes back to it."""
    torch.manual_seed(0)
    config = model_config("tiny", width=96, num_heads=3, stem=stem)
    embed = IVTEncoder(config).patch_embed
    images = torch.randn(4, 3, *config.image_size)
    with torch.no_grad():
        reference = embed(images)
        with torch.autocast("cpu", torch.bfloat16):
            low = embed(images).float()
    assert (low - reference).norm() / reference.norm() < 0.02


def test_hmlp_stem_sees_each_patch_through_its_own_pixels_only() -> None:
    from ivt.model.stem import HMLPStem

    torch.manual_seed(0)
    stem = HMLPStem(EncoderConfig(**{**MICRO, "image_size": (32, 16), "patch_size": 8, "patch_stride": 8,
                                     "stem": "hmlp"}))
    images = torch.randn(1, 3, 32, 16)
    changed = images.clone()
    changed[0, :, 8:16, 0:8] += 1.0  # the pixels of patch (row 1, column 0) = token 2
    diff = (stem(changed) - stem(images)).abs().sum(-1)[0]
    assert diff[2] > 0 and torch.all(diff[torch.arange(len(diff)) != 2] == 0)


# ---------------------------------------------------------------- masking
def test_drop_tokens_counts_order_and_cls() -> None:
    x = torch.arange(2 * 20, dtype=torch.float32).reshape(2, 20, 1).expand(2, 20, 3).contiguous()
    mask = torch.ones(2, 20, dtype=torch.long)
    counts = set()
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        for mode in ("batch", "sample"):
            out, out_mask, index = drop_tokens(x, mask, 0.3, mode, gen)
            kept = out.shape[1]
            assert 20 - int(0.3 * 20) <= kept <= 20
            counts.add(kept)
            assert out_mask.shape == (2, kept) and index.shape == (2, kept)
            assert (index[:, 0] == 0).all()
            assert (index[:, 1:] > index[:, :-1]).all()  # original order, no repeats
            torch.testing.assert_close(out, torch.gather(x, 1, index[..., None].expand(-1, -1, 3)))
    assert counts == set(range(14, 21))  # every count in [L - int(r L), L] occurs


def test_drop_tokens_batch_vs_sample_and_determinism() -> None:
    x = torch.randn(4, 30, 8)
    batch = drop_tokens(x, None, 0.5, "batch", torch.Generator().manual_seed(1))
    assert batch.mask is None
    assert (batch.index == batch.index[:1]).all()
    again = drop_tokens(x, None, 0.5, "batch", torch.Generator().manual_seed(1))
    assert torch.equal(batch.index, again.index) and torch.equal(batch.tokens, again.tokens)
    gen = torch.Generator().manual_seed(2)
    samples = [drop_tokens(x, None, 0.5, "sample", gen) for _ in range(10)]
    assert any(s.index.shape[1] < 30 and not (s.index == s.index[:1]).all() for s in samples)


def test_drop_tokens_zero_ratio_and_errors() -> None:
    x = torch.randn(2, 5, 4)
    out = drop_tokens(x, None, 0.0)
    assert torch.equal(out.tokens, x)
    with pytest.raises(ValueError, match="mode"):
        drop_tokens(x, None, 0.1, "per-token")
    with pytest.raises(ValueError, match="ratio"):
        drop_tokens(x, None, 1.0)


# ---------------------------------------------------------------- encoder
def _text(batch: int = 3, length: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, 50, (batch, length))
    return ids, torch.ones(batch, length, dtype=torch.long)


def test_outputs_and_their_pooling(micro: IVTEncoder) -> None:
    images = torch.randn(2, 3, 32, 16)
    ids, mask = _text()
    with torch.no_grad():
        image_tokens = micro.encode_image_tokens(images)
        text_tokens = micro.encode_text_tokens(ids, mask)
        assert image_tokens.shape == (2, 1 + 8, 32) and text_tokens.shape == (3, 10, 32)
        # pool "cls": the embedding is output token 0, of a final LayerNorm (unit weight, zero bias)
        torch.testing.assert_close(micro.encode_image(images), image_tokens[:, 0])
        torch.testing.assert_close(micro.encode_text(ids, mask), text_tokens[:, 0])
        torch.testing.assert_close(text_tokens.mean(-1), torch.zeros(3, 10), atol=1e-5, rtol=0)
        torch.testing.assert_close(text_tokens.var(-1, unbiased=False), torch.ones(3, 10), atol=1e-3, rtol=0)
        # each sample is encoded on its own: a batch of two equals two batches of one
        torch.testing.assert_close(micro.encode_image(images[1:]), micro.encode_image(images)[1:])


def test_padding_does_not_change_real_tokens(micro: IVTEncoder) -> None:
    ids, mask = _text(2, 6)
    padded = torch.cat([ids, torch.zeros(2, 5, dtype=torch.long)], dim=1)
    pmask = torch.cat([mask, torch.zeros(2, 5, dtype=torch.long)], dim=1)
    with torch.no_grad():
        ref = micro.encode_text_tokens(ids, mask)
        out = micro.encode_text_tokens(padded, pmask)
        unmasked = micro.encode_text(padded, None)
    torch.testing.assert_close(out[:, :6], ref, atol=1e-5, rtol=0)
    assert not torch.allclose(unmasked, ref[:, 0], atol=1e-3)


def test_mean_pooling_averages_the_real_tokens_only() -> None:
    torch.manual_seed(0)
    model = IVTEncoder(EncoderConfig(**{**MICRO, "pool": "mean"})).eval()
    ids, mask = _text(2, 6)
    padded = torch.cat([ids, torch.zeros(2, 5, dtype=torch.long)], dim=1)
    pmask = torch.cat([mask, torch.zeros(2, 5, dtype=torch.long)], dim=1)
    images = torch.randn(2, 3, 32, 16)
    with torch.no_grad():
        tokens = model.encode_text_tokens(ids, mask)
        torch.testing.assert_close(model.encode_text(ids, mask), tokens.mean(dim=1))
        torch.testing.assert_close(model.encode_text(padded, pmask), tokens.mean(dim=1), atol=1e-5, rtol=0)
        torch.testing.assert_close(model.encode_image(images), model.encode_image_tokens(images).mean(dim=1))
        assert not torch.allclose(model.encode_text(ids, mask), tokens[:, 0], atol=1e-3)
    # Under BMM the pool follows the kept tokens: padding stays out of the mean.
    model.train()
    lengths = torch.tensor([[1] * 11, [1] * 4 + [0] * 7])
    long_ids = torch.cat([ids, ids[:, :5]], dim=1) * lengths
    model.token_drop = TokenDrop(0.5, "sample")
    model.token_drop.generator.manual_seed(1)
    torch.manual_seed(2)  # drop-path
    tokens, kept, _ = model._encode_text(long_ids, lengths)
    assert tokens.shape[1] < 11 and kept is not None and (kept == 0).any()
    model.token_drop.generator.manual_seed(1)
    torch.manual_seed(2)
    weights = kept.unsqueeze(-1).float()
    torch.testing.assert_close(model.encode_text(long_ids, lengths), (tokens * weights).sum(1) / weights.sum(1))
    with pytest.raises(ValueError, match="pool must be one of"):
        EncoderConfig(**{**MICRO, "pool": "max"})


def test_input_errors(micro: IVTEncoder) -> None:
    with pytest.raises(ValueError, match="max_text_len 16"):
        micro.encode_text(*_text(1, 17))
    with pytest.raises(ValueError, match="expected images of shape"):
        micro.encode_image(torch.randn(1, 3, 64, 16))
    with pytest.raises(ValueError, match="attention_mask shape"):
        micro.encode_text(torch.ones(2, 4, dtype=torch.long), torch.ones(2, 5))


def test_token_drop_only_in_training() -> None:
    torch.manual_seed(0)
    model = IVTEncoder(EncoderConfig(**MICRO, drop_path=0.0, token_drop=0.5, token_drop_mode="sample"))
    assert isinstance(model.token_drop, TokenDrop) and model.token_drop.ratio == 0.5
    images = torch.randn(2, 3, 32, 16)
    model.eval()
    with torch.no_grad():
        assert model.encode_image_tokens(images).shape[1] == 9
    model.train()
    model.token_drop.generator.manual_seed(3)
    with torch.no_grad():
        lengths = [model.encode_image_tokens(images).shape[1] for _ in range(20)]
        # explanations encode chosen patches without the layer, even in training mode
        assert model.encode_image_subset(images, torch.arange(8).expand(2, -1)).shape[1] == 9
    # 9 tokens, ratio 0.5: int(0.5 * 9) = 4 at most dropped, each count 0..4 equally likely
    assert set(lengths) <= {5, 6, 7, 8, 9} and len(set(lengths)) >= 3
    model.token_drop = TokenDrop(0.5, "batch")
    model.token_drop.generator.manual_seed(7)
    a = model.encode_image_tokens(images)
    model.token_drop.generator.manual_seed(7)
    torch.testing.assert_close(model.encode_image_tokens(images), a)
    with pytest.raises(ValueError, match="token-drop ratio"):
        EncoderConfig(**MICRO, token_drop=1.0)
    with pytest.raises(ValueError, match="token-drop mode"):
        EncoderConfig(**MICRO, token_drop_mode="per-token")


def test_training_step_backward() -> None:
    torch.manual_seed(0)
    model = IVTEncoder(EncoderConfig(**MICRO, dropout=0.1, attn_dropout=0.1, token_drop=0.2)).train()
    ids, mask = _text(4, 12)
    mask[0, 8:] = 0
    img = model.encode_image(torch.randn(4, 3, 32, 16))
    txt = model.encode_text(ids, mask)
    loss = (torch.nn.functional.normalize(img, dim=-1)
            @ torch.nn.functional.normalize(txt, dim=-1).T).diag().mean()
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for name in ("patch_embed.proj.weight", "embeddings.word_embeddings.weight",
                 "blocks.0.mlp_vis.fc1.weight", "blocks.1.mlp_txt.fc2.weight", "norm.weight"):
        assert grads[name] is not None and torch.isfinite(grads[name]).all(), name
    assert grads["embeddings.word_embeddings.weight"][0].abs().sum() == 0  # [PAD] row frozen


def test_bf16_autocast_cpu(micro: IVTEncoder) -> None:
    images = torch.randn(2, 3, 32, 16)
    ids, mask = _text()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        img = micro.encode_image(images)
        txt = micro.encode_text(ids, mask)
    ref = micro.encode_image(images).detach()
    assert torch.isfinite(img.float()).all() and torch.isfinite(txt.float()).all()
    torch.testing.assert_close(img.float(), ref, atol=0.1, rtol=0.05)


def test_state_dict_names_match_official_layout(micro: IVTEncoder) -> None:
    keys = set(micro.state_dict())
    assert {"cls_token", "pos_embed", "type_embed", "patch_embed.proj.weight",
            "embeddings.LayerNorm.weight", "blocks.1.mlp_txt.fc2.bias", "norm.bias"} <= keys
    assert "embeddings.position_ids" not in keys
    assert micro.type_embed.shape == micro.pos_embed.shape == (1, 9, 32)


def test_meta_device_construction() -> None:
    with torch.device("meta"):
        model = IVTEncoder(model_config("base"))
    assert sum(p.numel() for p in model.parameters()) == 166_631_424


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_amp(micro: IVTEncoder, dtype: torch.dtype) -> None:
    model = IVTEncoder(replace(micro.config, token_drop=0.2)).cuda().train()
    model.load_state_dict(micro.state_dict())
    ids, mask = _text(4, 12)
    mask[1, 5:] = 0
    with torch.autocast("cuda", dtype=dtype):
        img = model.encode_image(torch.randn(4, 3, 32, 16, device="cuda"))
        txt = model.encode_text(ids.cuda(), mask.cuda())
        loss = (img.float() * txt.float()).sum()
    loss.backward()
    assert torch.isfinite(model.blocks[0].attn.qkv.weight.grad).all()
    model.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype):
        out = model.encode_text(ids.cuda(), mask.cuda()).float().cpu()
    torch.testing.assert_close(out, micro.encode_text(ids, mask), atol=0.1, rtol=0.05)


def test_explicit_bf16_training_attention_matches_sdpa():
    import torch.nn.functional as F

    from ivt.model.transformer import _explicit_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8, generator=g) for _ in range(3))
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    mask[1, ..., 5:] = False
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    got = _explicit_attention(q, k, v, mask, 0.0)
    assert torch.allclose(got, want, atol=1e-5)
