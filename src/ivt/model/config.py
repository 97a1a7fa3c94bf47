"""Encoder configuration and the named model sizes."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ivt.model.token_drop import check_token_drop

__all__ = ["EncoderConfig", "MODEL_SIZES", "model_config", "IMAGENET_MEAN", "IMAGENET_STD", "HALF",
           "INTERPOLATIONS", "POOLS", "STEMS", "CNN_STEMS", "STEM_TUNES"]

CNN_STEMS = ("mobilenetv2", "resnet18", "resnet50")              # hybrid stems: the early stages of an ImageNet CNN
STEMS = ("patch", "conv", "hmlp", *CNN_STEMS)  # see ivt.model.stem
STEM_TUNES = ("all", "last", "frozen")    # which parameters of a CNN stem learn
POOLS = ("cls", "mean")
INTERPOLATIONS = ("bicubic", "bilinear")  # image resizing at evaluation

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)  # the official IVT weights were trained with mean = std = 0.5


@dataclass
class EncoderConfig:
    """Hyper-parameters of the unified image/text encoder (IVT).

    ``image_size`` is (height, width). Patches are cut by a convolution with kernel
    ``patch_size`` and stride ``patch_stride`` (stride < patch gives overlapping patches; as in
    the official code, border pixels that do not fill a last stride are ignored, e.g. 384x128
    with stride 12 gives a 31x10 grid). ``stem`` ``"conv"`` or ``"hmlp"`` replaces that one
    convolution by a small stem with the same token grid (see :mod:`ivt.model.stem`): each token
    sees its pixels through a few nonlinear layers, which a from-scratch model learns faster.
    A CNN stem (``mobilenetv2``, ``resnet18``, ``resnet50``: the ViT paper's hybrid) has patch_size = patch_stride = its
    feature stride (8 or 16), so the grid is the image size / stride as for the other stems.
    """

    image_size: tuple[int, int] = (384, 128)
    patch_size: int = 16
    patch_stride: int = 16
    stem: str = "patch"
    stem_tune: str = "all"                # a CNN stem's learning parameters: all | last (stage) | frozen
    pool: str = "cls"                     # retrieval embedding: output token 0 | mean of the real tokens
    in_chans: int = 3
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    ln_eps: float = 1e-6
    vocab_size: int = 30522
    max_text_len: int = 512
    type_vocab_size: int = 2
    text_ln_eps: float = 1e-12
    dropout: float = 0.0
    text_dropout: float | None = None   # after the text embeddings; None: ``dropout`` (paper: 0.1, vision 0)
    attn_dropout: float = 0.0
    drop_path: float = 0.1
    token_drop: float = 0.0               # BMM: drop up to this fraction of the tokens in training
    token_drop_mode: str = "batch"        # see ivt.model.token_drop
    # Image-text matching (re-ranking): the last ``itm_layers`` blocks also run once over an image's
    # and a text's tokens together, and a 2-way head on the fused first token scores the pair.
    itm: bool = False
    itm_layers: int = 1
    # Preprocessing travels with the model, so a checkpoint is always fed what it was trained on.
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD
    eval_interpolation: str = "bicubic"   # resize at evaluation/inference (the paper: bilinear)

    def __post_init__(self) -> None:
        self.image_size = tuple(int(s) for s in self.image_size)  # type: ignore[assignment]
        self.image_mean = tuple(float(v) for v in self.image_mean)  # type: ignore[assignment]
        self.image_std = tuple(float(v) for v in self.image_std)  # type: ignore[assignment]
        self.validate()

    def validate(self) -> None:
        """Raise ValueError when the hyper-parameters are inconsistent."""
        errors: list[str] = []
        if len(self.image_size) != 2 or min(self.image_size) <= 0:
            errors.append(f"image_size must be (height, width) > 0, got {self.image_size}")
        for name in ("patch_size", "patch_stride", "width", "depth", "num_heads", "in_chans",
                     "vocab_size", "max_text_len", "type_vocab_size"):
            if int(getattr(self, name)) <= 0:
                errors.append(f"{name} must be > 0, got {getattr(self, name)}")
        if self.num_heads > 0 and self.width % self.num_heads != 0:
            errors.append(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        if self.stem not in STEMS:
            errors.append(f"stem must be one of {STEMS}, got {self.stem!r}")
        elif self.stem == "conv" and (self.patch_size % 4 or self.patch_stride % 4):
            errors.append(f"stem 'conv' needs patch_size and patch_stride divisible by 4, got "
                          f"{self.patch_size} and {self.patch_stride}")
        elif self.stem == "hmlp" and (self.patch_stride != self.patch_size or self.patch_size not in (4, 8, 16, 32)):
            errors.append(f"stem 'hmlp' needs patch_stride == patch_size in 4, 8, 16, 32, got "
                          f"{self.patch_size} and {self.patch_stride}")
        elif self.stem in CNN_STEMS and (self.patch_stride != self.patch_size or self.patch_size not in (8, 16)
                                         or self.in_chans != 3):
            errors.append(f"stem {self.stem!r} needs patch_size == patch_stride, 8 or 16 (the CNN's feature "
                          f"stride), and 3 channels; got {self.patch_size}, {self.patch_stride}, {self.in_chans}")
        elif self.stem in CNN_STEMS and any(size % self.patch_stride for size in self.image_size):
            errors.append(f"stem {self.stem!r} needs an image_size divisible by patch_stride "
                          f"{self.patch_stride}, got {self.image_size}")
        if self.stem_tune not in STEM_TUNES:
            errors.append(f"stem_tune must be one of {STEM_TUNES}, got {self.stem_tune!r}")
        if self.pool not in POOLS:
            errors.append(f"pool must be one of {POOLS}, got {self.pool!r}")
        if self.patch_stride > self.patch_size:
            errors.append(
                f"patch_stride {self.patch_stride} > patch_size {self.patch_size} would skip pixels")
        if len(self.image_size) == 2 and self.patch_size > 0 and self.patch_stride > 0:
            for side, size in zip(("height", "width"), self.image_size):
                if size < self.patch_size:
                    errors.append(f"image {side} {size} is smaller than patch_size {self.patch_size}")
        if not 1 <= int(self.itm_layers) <= max(int(self.depth), 1):
            errors.append(f"itm_layers must be from 1 to depth ({self.depth}), got {self.itm_layers}")
        if self.mlp_ratio <= 0:
            errors.append(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        for name in ("dropout", "attn_dropout", "drop_path"):
            if not 0.0 <= float(getattr(self, name)) < 1.0:
                errors.append(f"{name} must be in [0, 1), got {getattr(self, name)}")
        try:
            check_token_drop(float(self.token_drop), self.token_drop_mode)
        except ValueError as exc:
            errors.append(str(exc))
        if self.text_dropout is not None and not 0.0 <= float(self.text_dropout) < 1.0:
            errors.append(f"text_dropout must be in [0, 1) or None, got {self.text_dropout}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std, default=0) <= 0:
            errors.append(f"image_mean/image_std need 3 values each, std > 0; got {self.image_mean}, "
                          f"{self.image_std}")
        if self.eval_interpolation not in INTERPOLATIONS:
            errors.append(f"eval_interpolation must be one of {INTERPOLATIONS}, got {self.eval_interpolation!r}")
        if errors:
            raise ValueError("invalid EncoderConfig: " + "; ".join(errors))

    @property
    def grid_size(self) -> tuple[int, int]:
        """Number of patches along (height, width)."""
        h, w = self.image_size
        return ((h - self.patch_size) // self.patch_stride + 1,
                (w - self.patch_size) // self.patch_stride + 1)

    @property
    def num_patches(self) -> int:
        gh, gw = self.grid_size
        return gh * gw

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.width * self.mlp_ratio)

    def preprocessing(self) -> dict[str, Any]:
        """What an image goes through before the encoder (size, resize, normalisation), as plain
        data: a model gives other embeddings when any of it changes, so it is verified with the
        weights and compared when embeddings of two models would be mixed."""
        return {"image_size": list(self.image_size), "image_mean": list(self.image_mean),
                "image_std": list(self.image_std), "eval_interpolation": self.eval_interpolation}

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (for checkpoints and YAML)."""
        d = dataclasses.asdict(self)
        d["image_size"] = list(self.image_size)
        d["image_mean"] = list(self.image_mean)
        d["image_std"] = list(self.image_std)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderConfig:
        """Inverse of :meth:`to_dict`; unknown keys -> ValueError."""
        _check_keys(data)
        return cls(**data)


_FIELDS = tuple(f.name for f in dataclasses.fields(EncoderConfig))


def _check_keys(data: dict[str, Any]) -> None:
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ValueError(f"unknown EncoderConfig field(s) {unknown}; valid: {list(_FIELDS)}")


MODEL_SIZES: dict[str, dict[str, Any]] = {
    # Fast on CPU: for demos and tests.
    "tiny": dict(image_size=(128, 64), patch_size=16, patch_stride=16, width=192, depth=4,
                 num_heads=4, max_text_len=128),
    "small": dict(image_size=(256, 128), patch_size=16, patch_stride=16, width=384, depth=6,
                  num_heads=6, max_text_len=512),
    # Paper (ViT-B/16 + BERT embeddings). CUHK-PEDES / ICFG-PEDES use stride 12;
    # RSTPReid checkpoints use stride 16 (model_config("base", patch_stride=16)).
    "base": dict(image_size=(384, 128), patch_size=16, patch_stride=12, width=768, depth=12,
                 num_heads=12, vocab_size=30522, max_text_len=512, image_mean=HALF, image_std=HALF,
                 eval_interpolation="bilinear"),
}


def model_config(name: str, **overrides: Any) -> EncoderConfig:
    """Config of a named size (``tiny``, ``small``, ``base``) with optional field overrides."""
    if name not in MODEL_SIZES:
        raise ValueError(f"unknown model size {name!r}; valid: {sorted(MODEL_SIZES)}")
    _check_keys(overrides)
    return EncoderConfig(**{**MODEL_SIZES[name], **overrides})
