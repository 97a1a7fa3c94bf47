"""IVTEncoder: one transformer that encodes image patches and text tokens."""
from __future__ import annotations

import torch
from torch import nn

from ivt.model.config import CNN_STEMS, EncoderConfig
from ivt.model.packing import PackedTexts
from ivt.model.stem import HMLPStem, MobileNetV2Stem, PatchConv2d, ResNetStem, conv_stem
from ivt.model.token_drop import TokenDrop
from ivt.model.transformer import Block, Modality, key_padding_to_attn_mask

__all__ = ["IVTEncoder", "PatchEmbed", "TextEmbeddings"]

PAD_TOKEN_ID = 0  # BERT [PAD]


class PatchEmbed(nn.Module):
    """Image -> patch tokens with a convolution (kernel = patch, stride = stride; computed as a
    matrix product, :class:`~ivt.model.stem.PatchConv2d`), or another stem with the same token grid
    (``config.stem``: see :mod:`ivt.model.stem`)."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.image_size = tuple(config.image_size)
        self.in_chans = config.in_chans
        self.use_stem = config.stem != "patch"
        if config.stem == "conv":
            self.stem = conv_stem(config)
        elif config.stem == "hmlp":
            self.stem = HMLPStem(config)
        elif config.stem == "mobilenetv2":
            self.stem = MobileNetV2Stem(config)
        elif config.stem in CNN_STEMS:
            self.stem = ResNetStem(config)
        else:
            self.proj = PatchConv2d(config.in_chans, config.width, config.patch_size, config.patch_stride)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, P, C)."""
        if images.dim() != 4 or tuple(images.shape[-2:]) != self.image_size:
            raise ValueError(
                f"expected images of shape (B, {self.in_chans}, {self.image_size[0]}, "
                f"{self.image_size[1]}), got {tuple(images.shape)}")
        if self.use_stem and isinstance(self.stem, (HMLPStem, MobileNetV2Stem, ResNetStem)):
            return self.stem(images)
        if self.use_stem:
            # Channels-last input: the convolution stem's step on CPU (bf16, batch 64 of 128x64)
            # fell from 54 to 39 ms forward + backward; the numbers are the same convolutions'.
            x = self.stem(images.contiguous(memory_format=torch.channels_last))
            return x.permute(0, 2, 3, 1).flatten(1, 2)  # (B, C, gh, gw) -> (B, gh * gw, C)
        return self.proj.tokens(images)


class TextEmbeddings(nn.Module):
    """BERT-style embeddings: word + position + token-type(0), then LayerNorm and dropout."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.max_len = config.max_text_len
        self.word_embeddings = nn.Embedding(config.vocab_size, config.width,
                                            padding_idx=PAD_TOKEN_ID)
        self.position_embeddings = nn.Embedding(config.max_text_len, config.width)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.width)
        self.LayerNorm = nn.LayerNorm(config.width, eps=config.text_ln_eps)
        self.dropout = nn.Dropout(config.dropout if config.text_dropout is None else config.text_dropout)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) token ids -> (B, L, C); ``positions`` (B, L) when the tokens are not at 0..L-1
        (packed texts), else each row is one text from position 0."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (B, L), got shape {tuple(input_ids.shape)}")
        if positions is None:
            length = input_ids.shape[1]
            if length > self.max_len:
                raise ValueError(
                    f"text length {length} exceeds max_text_len {self.max_len}; truncate the tokens")
            pos = self.position_embeddings(torch.arange(length, device=input_ids.device))[None]
        else:
            # Only rows wider than max_len can hold a text that is too long; looking at the
            # positions is a host sync on a GPU, so the usual rows (<= max_len) skip it.
            longest = int(positions.max()) + 1 if positions.shape[1] > self.max_len else 0
            if longest > self.max_len:
                raise ValueError(
                    f"text length {longest} exceeds max_text_len {self.max_len}; truncate the tokens")
            pos = self.position_embeddings(positions)
        x = self.word_embeddings(input_ids) + pos + self.token_type_embeddings.weight[0]
        return self.dropout(self.LayerNorm(x))


class IVTEncoder(nn.Module):
    """Unified image/text transformer of IVT (parameter names follow the official code).

    Its :class:`~ivt.model.token_drop.TokenDrop` layer (BMM, ``config.token_drop``) drops tokens
    of either modality before the blocks, in training mode only.
    """

    def __init__(self, config: EncoderConfig | None = None) -> None:
        super().__init__()
        self.config = config = config if config is not None else EncoderConfig()
        width = config.width
        self.patch_embed = PatchEmbed(config)
        num_positions = 1 + config.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_positions, width))
        self.type_embed = nn.Parameter(torch.zeros(1, num_positions, width))
        self.pos_drop = nn.Dropout(config.dropout)
        self.embeddings = TextEmbeddings(config)
        last = max(config.depth - 1, 1)
        rates = [config.drop_path * i / last for i in range(config.depth)]  # linear decay rule
        self.blocks = nn.ModuleList(
            Block(width, config.num_heads, mlp_ratio=config.mlp_ratio, qkv_bias=config.qkv_bias,
                  drop=config.dropout, attn_drop=config.attn_dropout, drop_path=rate,
                  eps=config.ln_eps)
            for rate in rates)
        self.norm = nn.LayerNorm(width, eps=config.ln_eps)
        self.token_drop = TokenDrop(config.token_drop, config.token_drop_mode)  # type: ignore[arg-type]
        self.itm_head = nn.Linear(width, 2) if config.itm else None
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """From-scratch init: xavier-uniform linears (timm's "jax" ViT scheme), zero biases, LN
        ones, trunc-normal .02 cls/position tokens and BERT-style N(0, .02) embeddings.

        Xavier rather than N(0, .02) linears matters here: with .02 the [CLS] output barely depends
        on the other tokens at init, every caption embeds to nearly the same vector, and the
        contrastive loss collapses the image side too (measured: no progress in 60 steps on one
        batch, versus CMPM 26.6 -> 14.4 with xavier). Pretrained weights replace all of this.
        """
        for tensor in (self.cls_token, self.pos_embed, self.type_embed):
            nn.init.trunc_normal_(tensor, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
                if module.padding_idx is not None:
                    module.weight[module.padding_idx].zero_()

    def no_weight_decay(self) -> set[str]:
        """Parameter names usually excluded from weight decay."""
        return {"cls_token", "pos_embed", "type_embed"}

    def cnn_stem_parameters(self) -> set[str]:
        """Names of the pretrained CNN stem's parameters (hybrid stems), which train at
        ``optim.stem_lr_factor`` x the rate; empty for the other stems."""
        if self.config.stem not in CNN_STEMS:
            return set()
        return {f"patch_embed.stem.{name}" for name, _ in self.patch_embed.stem.named_parameters()
                if not name.startswith("proj.")}

    @property
    def itm_split(self) -> int:
        """The index of the first block that also runs jointly for image-text matching."""
        return self.config.depth - self.config.itm_layers

    def _run_blocks(self, x: torch.Tensor, mask: torch.Tensor | None, modality: Modality,
                    drop: bool = True) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Run the blocks; returns the output tokens, their key-padding mask (both shortened when
        the token-drop layer drops tokens; ``drop=False`` skips it) and the tokens that entered
        block :attr:`itm_split` (what a joint image-text pass starts from; no extra cost)."""
        if drop:
            x, mask = self.token_drop(x, mask)
        attn_mask = key_padding_to_attn_mask(mask)
        states = x
        for i, block in enumerate(self.blocks):
            if i == self.itm_split:
                states = x
            x = block(x, attn_mask, modality)
        return self.norm(x), mask, states

    def pool(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Output tokens (B, L, C) -> retrieval embedding (B, C) by ``config.pool``: ``"cls"`` is
        token 0 (the paper); ``"mean"`` averages the real tokens (``mask`` 1 = real)."""
        if self.config.pool == "cls":
            return tokens[:, 0]
        if mask is None:
            return tokens.mean(dim=1)
        weights = mask.to(tokens.dtype).unsqueeze(-1)
        return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)

    def embed_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 1+P, C) input tokens (cls + patches, positions added)."""
        x = self.patch_embed(images)
        cls = self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1) + self.pos_embed + self.type_embed
        return self.pos_drop(x)

    def encode_image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """All output tokens (B, 1+P, C) of a batch of images (fewer under BMM in training)."""
        return self._run_blocks(self.embed_image(images), None, "image")[0]

    def encode_image_subset(self, images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Output tokens (B, 1+K, C) when only the patches ``keep`` (B, K), indices into the P
        patches, are encoded; [CLS] always is. The others are dropped as BMM drops tokens in
        training, so no pixel is invented: this measures what a region contributes (ivt.explain).
        ``images`` may be a single image (1, 3, H, W) shared by all B subsets."""
        x = self.embed_image(images)
        if x.shape[0] == 1 and keep.shape[0] > 1:
            x = x.expand(keep.shape[0], -1, -1)
        index = torch.cat([torch.zeros_like(keep[:, :1]), keep + 1], dim=1)
        x = torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        return self._run_blocks(x, None, "image", drop=False)[0]

    def encode_text_tokens(self, input_ids: torch.Tensor,
                           attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """All output tokens (B, L, C) of token ids; ``attention_mask`` 1 = real, 0 = padding."""
        return self._encode_text(input_ids, attention_mask)[0]

    def _encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != input_ids "
                             f"shape {tuple(input_ids.shape)}")
        x = self.embeddings(input_ids)
        return self._run_blocks(x, attention_mask, "text")

    def encode_packed_text(self, packed: PackedTexts) -> torch.Tensor:
        """Retrieval embeddings (N, C) of packed texts (:mod:`ivt.model.packing`), equal to
        :meth:`encode_text` of the same texts padded. BMM does not apply: token dropping works on
        padded rows, so a packed batch is encoded whole."""
        return self._encode_packed(packed)[0]

    def encode_packed_text_with_states(self, packed: PackedTexts) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`encode_text_with_states` of packed texts: the states come back padded, one row per
        text (N, L, C), with their mask (N, L)."""
        embeddings, states = self._encode_packed(packed)
        return (embeddings, *packed.unpack(states))

    def _encode_packed(self, packed: PackedTexts) -> tuple[torch.Tensor, torch.Tensor]:
        if self.token_drop.active:
            raise ValueError("packed texts cannot be encoded with BMM token dropping on "
                             f"(ratio {self.token_drop.ratio}); pad the texts instead")
        x = self.embeddings(packed.input_ids, packed.positions)
        attn_mask = packed.attn_mask()
        states = x
        for i, block in enumerate(self.blocks):
            if i == self.itm_split:
                states = x
            x = block(x, attn_mask, "text")
        tokens = self.norm(x).flatten(0, 1)
        return self._pool_packed(packed, tokens), states

    def _pool_packed(self, packed: PackedTexts, tokens: torch.Tensor) -> torch.Tensor:
        if self.config.pool == "cls":
            return tokens[packed.starts]
        real = packed.segments.flatten() >= 0
        sums = tokens.new_zeros(packed.num_texts, tokens.shape[-1]).index_add(
            0, packed.segments.flatten()[real], tokens[real])
        return sums / packed.lengths.to(sums.dtype).unsqueeze(-1)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Retrieval embedding (B, C), pooled by ``config.pool`` (not normalised)."""
        return self.pool(self.encode_image_tokens(images))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Retrieval embedding (B, C), pooled by ``config.pool`` over the real tokens (not
        normalised)."""
        tokens, mask, _ = self._encode_text(input_ids, attention_mask)
        return self.pool(tokens, mask)

    # -- image-text matching (re-ranking) ---------------------------------------------------
    def encode_image_with_states(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The retrieval embedding (B, C) and the tokens entering the joint blocks (B, 1+P, C),
        from one pass: what a gallery caches for re-ranking."""
        tokens, _, states = self._run_blocks(self.embed_image(images), None, "image")
        return self.pool(tokens), states

    def encode_text_with_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The retrieval embedding (B, C), the tokens entering the joint blocks (B, L, C) and their
        key-padding mask (B, L), from one pass."""
        tokens, mask, states = self._encode_text(input_ids, attention_mask)
        if mask is None:
            mask = torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)
        return self.pool(tokens, mask), states, mask

    def itm_logits(self, image_states: torch.Tensor, text_states: torch.Tensor,
                   text_mask: torch.Tensor) -> torch.Tensor:
        """(N, 2) float32 logits (no match, match) of N image-text pairs: the last
        ``config.itm_layers`` blocks over ``[image tokens; text tokens]`` at once (every text
        token attends to every image token and back, padding never; each token through its own
        modality's feed-forward), the final norm, and the ITM head on the fused first token.
        A batch of one image (or text) is paired with every text (or image)."""
        if self.itm_head is None:
            raise ValueError("this model has no image-text matching head (trained without model.itm); "
                             "it cannot re-rank")
        n = max(image_states.shape[0], text_states.shape[0])
        image_states = image_states.expand(n, -1, -1)
        text_states, text_mask = text_states.expand(n, -1, -1), text_mask.expand(n, -1)
        split = image_states.shape[1]
        x = torch.cat([image_states, text_states.to(image_states.dtype)], dim=1)
        mask = torch.cat([torch.ones(n, split, dtype=torch.bool, device=x.device), text_mask.bool()], dim=1)
        attn_mask = key_padding_to_attn_mask(mask)
        for block in self.blocks[self.itm_split:]:
            x = block.forward_joint(x, attn_mask, split)
        return self.itm_head(self.norm(x[:, 0])).float()

    @staticmethod
    def itm_score(logits: torch.Tensor) -> torch.Tensor:
        """The ranking score of ITM logits: log-odds of a match."""
        return logits[:, 1] - logits[:, 0]
