"""Typed run configuration: dataclasses loaded from YAML with dotted ``key=value`` overrides.

Every run writes its resolved configuration (``config.yaml``) next to its outputs, so a run
directory alone says how it was made.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml


class ConfigError(ValueError):
    """A configuration key or value that does not exist or does not fit."""


@dataclass
class DataConfig:
    path: str = "data/synthpedes"          # dataset root or annotation file
    format: str = "auto"                   # see `ivt data check --help`
    image_root: str | None = None          # default: <root>/imgs
    tokenizer: str | None = None           # vocab.txt / tokenizer.json; None: train one on train captions
    vocab_size: int = 2000                 # when training a tokenizer
    max_text_len: int = 64
    cache_images: bool = True              # decode + resize every image once, keep uint8 in memory
    num_workers: int = 0                   # DataLoader workers when not caching


@dataclass
class ModelConfig:
    size: str = "tiny"                     # tiny | small | base
    arch: str = "ivt"                      # ivt (one shared encoder) | two-tower (ablation baseline)
    image_size: list[int] | None = None    # [H, W]; None: the size's default
    patch_stride: int | None = None
    drop_path: float | None = None
    dropout: float | None = None
    init: str | None = None                # official IVT checkpoint (.pth/.safetensors) to start from
    init_image: str | None = None          # ImageNet ViT (.pth/.npz/.safetensors): image side + shared layers
    init_text: str | None = None           # BERT-style weights (file, HF directory, or "minilm"): text side
    text_dropout: float | None = None      # dropout after the text embeddings; None: model.dropout (paper: 0.1)


@dataclass
class AugmentConfig:
    padding: int = 10
    flip_p: float = 0.5
    erase_p: float = 0.5


@dataclass
class AlignConfig:
    """Multi-level alignment: which text levels are paired with the image."""

    sentence: bool = True
    phrase: bool = True
    word: bool = True


@dataclass
class MaskConfig:
    """Bidirectional mask modeling: random token dropping on both modalities."""

    ratio: float = 0.2                     # drop a random fraction in [0, ratio]; 0 disables
    mode: str = "batch"                    # batch (official) | sample


@dataclass
class LossConfig:
    name: str = "cmpm"                     # cmpm | infonce | sdm
    temperature: float = 0.02              # initial temperature for infonce / sdm


@dataclass
class OptimConfig:
    name: str = "adamw"                    # adamw | sgd (paper)
    lr: float = 1e-3
    weight_decay: float = 0.05
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    clip_grad: float | None = 5.0
    bias_lr_factor: float = 1.0            # biases learn this many times faster (paper: 2)
    decay_all: bool = False                # weight decay on every parameter (paper), not only on matrices
    warmup_start: float | None = None      # warmup starts at this x lr (paper: 0.01); None: from ~0
    schedule: str = "step"                 # step (cosine per step) | epoch (paper: lr set once per epoch)


@dataclass
class TrainConfig:
    out_dir: str = "runs/demo"
    epochs: int = 10
    batch_size: int = 64
    sampler: str = "random"                # random | identity (K captions per id)
    k_per_id: int = 2
    seed: int = 0
    device: str = "auto"                   # auto | cpu | cuda
    precision: str = "auto"                # auto (bf16 on CPU, fp16 AMP on CUDA) | fp32 | bf16 | fp16
    threads: int | None = None             # torch CPU threads; None: torch's default
    eval_every: int = 1                    # epochs between validation runs (0: never)
    eval_split: str = "val"
    max_minutes: float | None = None       # time budget: the LR schedule ends with it, training stops
    stop_after_steps: int | None = None    # pause after N steps this invocation (resume later: --resume)
    log_every: int = 20


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _check_value(value: Any, tp: Any, key: str) -> Any:
    """Coerce/verify ``value`` against the annotation ``tp``; raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_check_value(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {tp}")


def _update(obj: Any, values: dict, prefix: str = "") -> None:
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name not in names:
            raise ConfigError(f"unknown config key '{key}'; valid keys here: {', '.join(prefix + n for n in names)}")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a mapping of its fields, got {value!r}")
            _update(current, value, f"{key}.")
        else:
            setattr(obj, name, _check_value(value, hints[name], key))


def config_from_dict(values: dict | None) -> Config:
    """A Config from nested dicts; unknown keys and wrong types raise ConfigError."""
    cfg = Config()
    _update(cfg, values or {})
    return cfg


def parse_override(text: str) -> dict:
    """``"train.epochs=3"`` -> ``{"train": {"epochs": 3}}`` (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value (e.g. train.epochs=3)")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override '{text}': malformed key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML ({exc})") from exc
    out: dict = value
    for part in reversed(parts):
        out = {part: out}
    return out


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for k, v in extra.items():
        merged[k] = _merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults <- YAML file <- dotted overrides, validated."""
    values: dict = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file not found: {p}")
        try:
            values = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML ({exc})") from exc
        if not isinstance(values, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections (data, model, train, ...)")
    for text in overrides:
        values = _merge(values, parse_override(text))
    try:
        return config_from_dict(values)
    except ConfigError as exc:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{exc}") from None


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved configuration as YAML (atomically)."""
    p = Path(path)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    tmp.replace(p)
    return p
