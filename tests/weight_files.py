"""Small weight files with the real key names of each source format (timm ViT, JAX ViT, HF BERT)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

WIDTH, DEPTH, HIDDEN, VOCAB, POSITIONS = 32, 2, 128, 50, 40


def vit_state(depth: int = DEPTH, grid: int = 4, seed: int = 1) -> dict[str, torch.Tensor]:
    """A timm / jx_vit_base_p16_224-style state dict with random values (real key names)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    sd = {"cls_token": r(1, 1, WIDTH), "pos_embed": r(1, 1 + grid * grid, WIDTH),
          "patch_embed.proj.weight": r(WIDTH, 3, 16, 16), "patch_embed.proj.bias": r(WIDTH),
          "norm.weight": r(WIDTH), "norm.bias": r(WIDTH), "head.weight": r(10, WIDTH), "head.bias": r(10)}
    for i in range(depth):
        b = f"blocks.{i}."
        sd.update({b + "norm1.weight": r(WIDTH), b + "norm1.bias": r(WIDTH),
                   b + "attn.qkv.weight": r(3 * WIDTH, WIDTH), b + "attn.qkv.bias": r(3 * WIDTH),
                   b + "attn.proj.weight": r(WIDTH, WIDTH), b + "attn.proj.bias": r(WIDTH),
                   b + "norm2.weight": r(WIDTH), b + "norm2.bias": r(WIDTH),
                   b + "mlp.fc1.weight": r(HIDDEN, WIDTH), b + "mlp.fc1.bias": r(HIDDEN),
                   b + "mlp.fc2.weight": r(WIDTH, HIDDEN), b + "mlp.fc2.bias": r(WIDTH)})
    return sd


def to_jax(sd: dict[str, torch.Tensor], heads: int = 2) -> dict[str, np.ndarray]:
    """The same weights laid out as the original JAX release (ViT-B_16.npz names and layouts)."""
    hd = WIDTH // heads
    out = {"embedding/kernel": sd["patch_embed.proj.weight"].permute(2, 3, 1, 0),
           "embedding/bias": sd["patch_embed.proj.bias"], "cls": sd["cls_token"],
           "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
           "Transformer/encoder_norm/scale": sd["norm.weight"], "Transformer/encoder_norm/bias": sd["norm.bias"],
           "head/kernel": sd["head.weight"].T, "head/bias": sd["head.bias"]}
    for i in range(DEPTH):
        b, t = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        mha = b + "MultiHeadDotProductAttention_1/"
        for n, (w, bias) in zip(("query", "key", "value"), zip(sd[t + "attn.qkv.weight"].chunk(3),
                                                             sd[t + "attn.qkv.bias"].chunk(3))):
            out[f"{mha}{n}/kernel"] = w.T.reshape(WIDTH, heads, hd)
            out[f"{mha}{n}/bias"] = bias.reshape(heads, hd)
        out[mha + "out/kernel"] = sd[t + "attn.proj.weight"].T.reshape(heads, hd, WIDTH)
        out[mha + "out/bias"] = sd[t + "attn.proj.bias"]
        for jax, ours in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            out[f"{b}{jax}/scale"], out[f"{b}{jax}/bias"] = sd[t + ours + ".weight"], sd[t + ours + ".bias"]
        for r in (0, 1):
            out[f"{b}MlpBlock_3/Dense_{r}/kernel"] = sd[f"{t}mlp.fc{r + 1}.weight"].T
            out[f"{b}MlpBlock_3/Dense_{r}/bias"] = sd[f"{t}mlp.fc{r + 1}.bias"]
    return {k: v.contiguous().numpy() for k, v in out.items()}


def bert_state(depth: int = DEPTH, prefix: str = "", old_names: bool = False, seed: int = 2,
               positions: int = POSITIONS) -> dict[str, torch.Tensor]:
    """A HF BertModel / BertForMaskedLM state dict with random values (real key names)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    w, b = ("gamma", "beta") if old_names else ("weight", "bias")
    sd = {"embeddings.word_embeddings.weight": r(VOCAB, WIDTH),
          "embeddings.position_embeddings.weight": r(positions, WIDTH),
          "embeddings.token_type_embeddings.weight": r(2, WIDTH),
          f"embeddings.LayerNorm.{w}": r(WIDTH), f"embeddings.LayerNorm.{b}": r(WIDTH),
          "embeddings.position_ids": torch.arange(positions)[None],
          "pooler.dense.weight": r(WIDTH, WIDTH), "pooler.dense.bias": r(WIDTH)}
    for i in range(depth):
        layer = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            sd[f"{layer}attention.self.{name}.weight"] = r(WIDTH, WIDTH)
            sd[f"{layer}attention.self.{name}.bias"] = r(WIDTH)
        sd.update({layer + "attention.output.dense.weight": r(WIDTH, WIDTH),
                   layer + "attention.output.dense.bias": r(WIDTH),
                   f"{layer}attention.output.LayerNorm.{w}": r(WIDTH),
                   f"{layer}attention.output.LayerNorm.{b}": r(WIDTH),
                   layer + "intermediate.dense.weight": r(HIDDEN, WIDTH),
                   layer + "intermediate.dense.bias": r(HIDDEN),
                   layer + "output.dense.weight": r(WIDTH, HIDDEN), layer + "output.dense.bias": r(WIDTH),
                   f"{layer}output.LayerNorm.{w}": r(WIDTH), f"{layer}output.LayerNorm.{b}": r(WIDTH)})
    sd = {prefix + k: v for k, v in sd.items()}
    if prefix:  # BertForMaskedLM files carry the MLM head next to the encoder
        sd["cls.predictions.bias"] = r(VOCAB)
        sd["cls.predictions.transform.dense.weight"] = r(WIDTH, WIDTH)
    return sd


def expected_pos(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The official resize_pos_embed written out: square grid -> (rows, cols), bilinear."""
    side = int((pos.shape[1] - 1) ** 0.5)
    patches = pos[0, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=grid, mode="bilinear")
    return torch.cat([pos[:, :1], patches.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)], dim=1)
