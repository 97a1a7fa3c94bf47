"""Typed run configuration: dataclasses loaded from YAML with dotted ``key=value`` overrides.

Every run writes its resolved configuration (``config.yaml``) next to its outputs, so a run
directory alone says how it was made.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from ivt.devices import PRECISIONS, check_device
from ivt.errors import ConfigError, DeviceError
from ivt.files import atomic_write

# The enumerated settings of training (the modules that implement them import these). The model's
# own choices (sizes, architectures, stems, pools, token-drop modes) belong to the model library,
# which defines them; validation reads them from there (see _choices).
LOSSES = ("cmpm", "infonce", "sdm")
OPTIMIZERS = ("adamw", "sgd")
SAMPLERS = ("random", "identity", "identity-all", "similar")
SCHEDULES = ("step", "epoch")
WORD_POSITIVES = ("identity", "attributes")

#: The demo's training recipe, the one place it is written; shipped inside the package, so ``ivt demo``
#: and the benchmarks find it from any directory and from an installed (non-editable) package.
DEMO_CONFIG = Path(__file__).resolve().parent / "recipes" / "demo.yaml"

#: A decimal number as YAML 1.2 writes it. PyYAML reads YAML 1.1, where ``1e-4`` and ``5E-3``
#: (no dot, or no signed exponent) are strings; a float field accepts them as numbers.
_FLOAT_TEXT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")


@dataclass
class DataConfig:
    path: str = "data/synthpedes"          # dataset root or annotation file
    format: str = "auto"                   # see `ivt data check --help`
    image_root: str | None = None          # default: <root>/imgs
    tokenizer: str | None = None           # vocab.txt / tokenizer.json; None: train one on train captions
    vocab_size: int = 2000                 # when training a tokenizer
    max_text_len: int = 64
    cache_images: bool = True              # decode + resize every image once, keep uint8 in memory
    decode_threads: int = 2                # threads that decode + resize images (Pillow releases the GIL)


@dataclass
class ModelConfig:
    size: str = "tiny"                     # tiny | small | base
    arch: str = "ivt"                      # ivt (one shared encoder) | two-tower (ablation baseline)
    width: int | None = None               # overrides of the named size (None: the size's value)
    depth: int | None = None
    num_heads: int | None = None
    image_size: list[int] | None = None    # [H, W]; None: the size's default
    patch_size: int | None = None
    patch_stride: int | None = None
    stem: str | None = None                # patch (one conv, the paper) | conv | hmlp | mobilenetv2 | resnet18|50
    #                                        the last three: hybrid, an ImageNet CNN at stride patch_stride (8, 16)
    init_stem: str | None = None           # a CNN stem's ImageNet weights: torchvision file, or "mobilenetv2" (bundled)
    stem_tune: str | None = None           # which CNN stem parameters learn: all | last (stage) | frozen; None: all
    pool: str | None = None                # embedding: cls (output token 0, the paper) | mean (of real tokens)
    itm: bool = False                      # image-text matching head: re-rank with a joint image-text pass
    itm_layers: int = 1                    # the last blocks that also run jointly over an image and a text
    drop_path: float | None = None
    dropout: float | None = None
    init: str | None = None                # official IVT checkpoint (.pth/.safetensors) to start from
    image_mean: list[float] | None = None  # per-channel normalisation; None: the size's default
    image_std: list[float] | None = None   # (ImageNet for tiny/small, 0.5 for base and official weights)
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
    # Positives of a word-level text: the same identity only, or also every image whose attributes
    # include all of the text's (a short text such as "glasses" describes many people).
    word_positives: str = "identity"
    # One augmented view per sample shared by all levels' texts (the image is encoded once per
    # sample instead of once per level: about a third less compute per step), or one per level.
    shared_view: bool = False


@dataclass
class TokenDropConfig:
    """Token dropping on both modalities (the paper's bidirectional mask modeling, BMM)."""

    ratio: float = 0.2                     # drop a random fraction in [0, ratio]; 0 disables
    mode: str = "batch"                    # batch (official) | sample


@dataclass
class LossConfig:
    name: str = "cmpm"                     # cmpm | infonce | sdm
    temperature: float = 0.02              # initial temperature for infonce / sdm
    learn_temperature: bool = True         # infonce / sdm: learn the temperature (else keep it fixed)
    itm_weight: float = 1.0                # weight of the image-text matching loss (with model.itm)
    itm_pairs: int = 0                     # captions per step (per rank) the matching loss scores; 0: all
    itm_from: float = 0.0                  # the matching loss from this fraction of the run on (0: throughout)
    i2i_weight: float = 0.0                # weight of the image-image identity loss (find a person by a photo)


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
    stem_lr_factor: float = 0.1            # a pretrained CNN stem (model.stem=mobilenetv2) learns at this x the rate
    decay_all: bool = False                # weight decay on every parameter (paper), not only on matrices
    warmup_start: float | None = None      # warmup starts at this x lr (paper: 0.01); None: from ~0
    schedule: str = "step"                 # step (cosine per step) | epoch (paper: lr set once per epoch)


@dataclass
class TrainConfig:
    out_dir: str = "runs/demo"
    epochs: int = 10
    batch_size: int = 64
    sampler: str = "random"                # random | identity (K captions per id) | similar (identity, with
    k_per_id: int = 2                      #   groups of ids that share most attributes: hard negatives)
    similar_group: int = 4                 # similar: ids per group of look-alikes
    seed: int = 0
    device: str = "auto"                   # auto | cpu | cuda | cuda:N
    precision: str = "auto"                # auto (bf16 on CPU, fp16 AMP on CUDA) | fp32 | bf16 | fp16
    threads: int | None = None             # torch CPU threads; None: torch's default
    eval_every: int = 1                    # epochs between validation runs (0: never)
    eval_split: str = "val"
    max_minutes: float | None = None       # time budget: the LR schedule ends with it, training stops
    stop_after_steps: int | None = None    # pause after N steps this invocation (resume later: --resume)
    log_every: int = 20
    pack_texts: bool = True                # pack a batch's texts into rows without padding while BMM
                                           #   is off (same numbers, fewer tokens; ivt.model.packing)


@dataclass
class SynthConfig:
    """The SynthPedes draw `ivt demo` trains on (generated when ``data.path`` holds another)."""

    ids: int = 600                         # identities (70/15/15 % train/val/test)
    images_per_id: list[int] = field(default_factory=lambda: [2, 5])  # [min, max] images of each identity
    workers: int = 2                       # processes rendering it


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    token_drop: TokenDropConfig = field(default_factory=TokenDropConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)


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
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
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
                raise ConfigError(_not_a_section(key, current, value))
            _update(current, value, f"{key}.")
        else:
            setattr(obj, name, _check_value(value, hints[name], key))


def _not_a_section(key: str, section: Any, value: Any) -> str:
    """The message for a section given a value (``train=null`` would reset every train.* key)."""
    shown = "null" if value is None else repr(value)
    first = dataclasses.fields(section)[0].name
    return (f"{key}: a section of settings, not a value (got {shown}); set its keys (e.g. {key}.{first}) "
            f"or leave the section out")


def _check_sections(values: dict, obj: Any, prefix: str = "") -> None:
    """Refuse a section given as anything but a mapping, before it is merged with later overrides
    (a ``train=null`` followed by ``train.epochs=3`` would silently reset the rest of train.*)."""
    for name, value in values.items():
        current = getattr(obj, name, None) if isinstance(name, str) else None
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(_not_a_section(f"{prefix}{name}", current, value))
            _check_sections(value, current, f"{prefix}{name}.")


#: Sections renamed since runs were first saved: a saved config.yaml or an old recipe still loads.
RENAMED_SECTIONS = {"mask": "token_drop"}


def config_from_dict(values: dict | None) -> Config:
    """A Config from nested dicts; unknown keys, wrong types and bad values raise ConfigError."""
    values = _renamed(values or {})
    cfg = Config()
    _update(cfg, values)
    validate_config(cfg)
    return cfg


def _renamed(values: dict) -> dict:
    """``values`` with old section names replaced by the new ones (ConfigError when both appear)."""
    values = dict(values)
    for old, new in RENAMED_SECTIONS.items():
        if old in values:
            if new in values:
                raise ConfigError(f"'{old}' is the old name of '{new}'; give only '{new}'")
            values[new] = values.pop(old)
    return values


def _choices() -> dict[str, tuple[str, ...]]:
    """Every enumerated key and its allowed values. The model's own choices come from the model
    library, imported here rather than at module level so that the CLI starts without torch."""
    from ivt.model.config import MODEL_SIZES, POOLS, STEM_TUNES, STEMS
    from ivt.model.factory import ARCHS
    from ivt.model.token_drop import TOKEN_DROP_MODES

    return {"model.size": tuple(MODEL_SIZES), "model.arch": ARCHS, "loss.name": LOSSES, "optim.name": OPTIMIZERS,
            "token_drop.mode": TOKEN_DROP_MODES, "train.sampler": SAMPLERS, "train.precision": PRECISIONS,
            "optim.schedule": SCHEDULES, "align.word_positives": WORD_POSITIVES,
            "model.stem": (None, *STEMS), "model.pool": (None, *POOLS), "model.stem_tune": (None, *STEM_TUNES)}


def _longest_text() -> int:
    """The most text positions of a model size (BERT's 512): a bound on ``data.max_text_len``, whose
    position embeddings a model allocates whole."""
    from ivt.model.config import MODEL_SIZES

    return max(int(size["max_text_len"]) for size in MODEL_SIZES.values())


def _non_finite(cfg: Config) -> list[str]:
    """The one finiteness rule: every number of the configuration, alone or in a list, is finite
    (no key means "none" by inf; those that may be absent take null)."""
    problems = []
    for section in dataclasses.fields(cfg):
        values = getattr(cfg, section.name)
        for f in dataclasses.fields(values):
            value = getattr(values, f.name)
            numbers = value if isinstance(value, list) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
                what = "finite numbers" if isinstance(value, list) else "a finite number"
                problems.append(f"{section.name}.{f.name}: {value!r} must be {what}")
    return problems


def _get(cfg: Config, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def _stem_problems(model: ModelConfig) -> list[str]:
    """A CNN stem (model.stem=mobilenetv2) and its keys: weights only it can take, never from model.init."""
    from ivt.bundled import MOBILENETV2_NAMES
    from ivt.model.config import CNN_STEMS

    cnn = model.stem in CNN_STEMS
    problems = []
    if cnn and model.init:
        problems.append(f"model.stem: {model.stem!r} cannot be filled by model.init={model.init!r} (official IVT "
                        f"weights have the patch stem); drop model.init or use model.stem=patch")
    if model.init_stem and not cnn:
        problems.append(f"model.init_stem: {model.init_stem!r} fills a CNN stem; model.stem is "
                        f"{model.stem or 'patch'!r} (use model.stem={CNN_STEMS[0]})")
    if cnn and model.stem != "mobilenetv2" and str(model.init_stem).lower() in MOBILENETV2_NAMES \
            and not Path(model.init_stem).exists():
        problems.append(f"model.init_stem: {model.init_stem!r} names the bundled MobileNetV2 weights; model.stem "
                        f"{model.stem!r} needs a torchvision {model.stem} file (or use model.stem=mobilenetv2)")
    if model.stem_tune in ("last", "frozen") and not (cnn and model.init_stem):
        problems.append(f"model.stem_tune: {model.stem_tune!r} keeps pretrained CNN weights fixed; it needs "
                        f"model.stem={CNN_STEMS[0]} with model.init_stem")
    if cnn and model.arch != "ivt":
        problems.append(f"model.stem: {model.stem!r} is a stem of the shared IVT encoder; model.arch is {model.arch!r}")
    return problems


def validate_config(cfg: Config) -> None:
    """Check enumerated fields and ranges, so a bad value fails at load time, before any output.

    Raises one :class:`ConfigError` listing every problem (key, value, what is allowed).
    """
    problems = _non_finite(cfg)
    problems += [f"{key}: {_get(cfg, key)!r} is not one of {', '.join(c for c in choices if c is not None)}"
                for key, choices in _choices().items() if _get(cfg, key) not in choices]
    max_text_len = _longest_text()
    try:
        check_device(cfg.train.device)
    except DeviceError as exc:
        problems.append(f"train.device: {exc}")
    checks = [
        ("optim.lr", cfg.optim.lr >= 0, ">= 0"),
        ("optim.weight_decay", cfg.optim.weight_decay >= 0, ">= 0"),
        ("optim.momentum", 0 <= cfg.optim.momentum < 1, "in [0, 1)"),
        ("optim.warmup_epochs", cfg.optim.warmup_epochs >= 0, ">= 0"),
        ("optim.min_lr_ratio", 0 <= cfg.optim.min_lr_ratio <= 1, "in [0, 1]"),
        ("optim.clip_grad", cfg.optim.clip_grad is None or cfg.optim.clip_grad > 0, "> 0 (or null to disable)"),
        ("loss.temperature", cfg.loss.temperature > 0, "> 0"),
        ("token_drop.ratio", 0 <= cfg.token_drop.ratio < 1, "in [0, 1)"),
        ("augment.padding", cfg.augment.padding >= 0, ">= 0"),
        ("augment.flip_p", 0 <= cfg.augment.flip_p <= 1, "in [0, 1]"),
        ("augment.erase_p", 0 <= cfg.augment.erase_p <= 1, "in [0, 1]"),
        ("train.epochs", cfg.train.epochs >= 1, ">= 1"),
        ("train.batch_size", cfg.train.batch_size >= 2, ">= 2"),
        ("train.k_per_id", cfg.train.k_per_id >= 1, ">= 1"),
        ("train.eval_every", cfg.train.eval_every >= 0, ">= 0 (0: never)"),
        ("train.log_every", cfg.train.log_every >= 1, ">= 1"),
        ("train.max_minutes", cfg.train.max_minutes is None or cfg.train.max_minutes > 0, "> 0 (or null)"),
        ("train.stop_after_steps", cfg.train.stop_after_steps is None or cfg.train.stop_after_steps >= 1,
         ">= 1 (or null)"),
        ("train.threads", cfg.train.threads is None or cfg.train.threads >= 1, ">= 1 (or null)"),
        ("data.max_text_len", 3 <= cfg.data.max_text_len <= max_text_len,
         f"from 3 to {max_text_len} ([CLS], a token, [SEP]; at most the text positions of the largest model "
         f"size, BERT's)"),
        ("data.vocab_size", cfg.data.vocab_size >= 10, ">= 10"),
        ("data.decode_threads", cfg.data.decode_threads >= 1, ">= 1"),
        ("synth.ids", cfg.synth.ids >= 3, ">= 3"),
        ("synth.workers", cfg.synth.workers >= 1, ">= 1"),
        ("synth.images_per_id", len(cfg.synth.images_per_id) == 2  # a list of ints: the loader checked
         and 1 <= cfg.synth.images_per_id[0] <= cfg.synth.images_per_id[1], "[min, max] with 1 <= min <= max"),
        ("train.similar_group", cfg.train.similar_group >= 1, ">= 1"),
        ("model.patch_size", cfg.model.patch_size is None or cfg.model.patch_size >= 1, ">= 1"),
        ("model.patch_stride", cfg.model.patch_stride is None or cfg.model.patch_stride >= 1, ">= 1"),
        ("model.width", cfg.model.width is None or cfg.model.width >= 1, ">= 1"),
        ("model.depth", cfg.model.depth is None or cfg.model.depth >= 1, ">= 1"),
        ("model.num_heads", cfg.model.num_heads is None or cfg.model.num_heads >= 1, ">= 1"),
        ("model.dropout", cfg.model.dropout is None or 0 <= cfg.model.dropout < 1, "in [0, 1)"),
        ("model.drop_path", cfg.model.drop_path is None or 0 <= cfg.model.drop_path < 1, "in [0, 1)"),
        ("model.text_dropout", cfg.model.text_dropout is None or 0 <= cfg.model.text_dropout < 1, "in [0, 1)"),
        ("optim.bias_lr_factor", cfg.optim.bias_lr_factor > 0, "> 0"),
        ("optim.stem_lr_factor", cfg.optim.stem_lr_factor > 0, "> 0"),
        ("loss.itm_weight", cfg.loss.itm_weight >= 0, ">= 0"),
        ("loss.itm_pairs", cfg.loss.itm_pairs >= 0, ">= 0 (0: every caption of the batch)"),
        ("loss.itm_from", 0 <= cfg.loss.itm_from < 1, "in [0, 1) (a fraction of the run; 0: from the start)"),
        ("loss.i2i_weight", cfg.loss.i2i_weight >= 0, ">= 0"),
        ("model.itm_layers", cfg.model.itm_layers >= 1, ">= 1"),
        ("optim.warmup_start", cfg.optim.warmup_start is None or 0 <= cfg.optim.warmup_start <= 1,
         "in [0, 1] (or null)"),
    ]
    done = {problem.split(":")[0] for problem in problems}  # keys already reported (non-finite: once)
    problems += [f"{key}: {_get(cfg, key)!r} must be {rule}" for key, ok, rule in checks
                 if not ok and key not in done]
    if cfg.model.image_size is not None and (len(cfg.model.image_size) != 2 or min(cfg.model.image_size) < 1):
        problems.append(f"model.image_size: {cfg.model.image_size!r} must be [height, width], both >= 1")
    for key in ("model.image_mean", "model.image_std"):
        value = _get(cfg, key)
        if value is not None and key not in done and (len(value) != 3 or (key.endswith("std") and min(value) <= 0)):
            problems.append(f"model.{key.split('.')[1]}: {value!r} must be 3 numbers (std > 0)")
    if cfg.train.sampler != "random" and cfg.train.k_per_id >= 1 and cfg.train.batch_size % cfg.train.k_per_id:
        problems.append(f"train.batch_size: {cfg.train.batch_size} must be a multiple of train.k_per_id "
                        f"({cfg.train.k_per_id}) with train.sampler={cfg.train.sampler}")
    if cfg.model.init and (cfg.model.init_image or cfg.model.init_text):
        problems.append("model.init already holds every weight of the encoder; drop model.init_image / "
                        "model.init_text (they initialise a model trained from ImageNet / BERT weights)")
    problems += _stem_problems(cfg.model)
    if cfg.model.itm and cfg.model.arch != "ivt":
        problems.append(f"model.itm runs IVT's shared blocks over an image and a text together; model.arch is "
                        f"{cfg.model.arch!r}")
    if cfg.model.itm and cfg.model.init:
        problems.append("model.itm adds a matching head that official checkpoints (model.init) do not have; "
                        "train it from model.init_image / model.init_text or from scratch")
    if cfg.model.itm and not cfg.align.sentence:
        problems.append("model.itm matches images with their captions: it needs align.sentence=true")
    if (cfg.model.init_image or cfg.model.init_text) and cfg.model.arch != "ivt":
        problems.append(f"model.init_image / model.init_text fill the shared IVT encoder; model.arch is "
                        f"{cfg.model.arch!r}")
    if not (cfg.align.word or cfg.align.phrase or cfg.align.sentence):
        problems.append("align: at least one of align.word, align.phrase, align.sentence must be true")
    if cfg.train.eval_every > 0 and cfg.train.eval_split == "test":
        problems.append("train.eval_split: the best checkpoint is chosen on validation data, never on the test "
                        "split; use val (or train.eval_every=0 to keep only the last checkpoint)")
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems) if len(problems) > 1
                          else problems[0])


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
        raise ConfigError(f"override '{text}': value is not valid YAML ({_yaml_problem(exc)})") from None
    out: dict = value
    for part in reversed(parts):
        out = {part: out}
    return out


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's several-line report as one line: where (line, column, 1-based) and what."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
    context = getattr(exc, "context", None)
    what = f"{problem} ({' '.join(context.split())})" if context else problem
    return f"line {mark.line + 1}, column {mark.column + 1}: {what}" if mark is not None else what


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
            raise ConfigError(f"{p}: not valid YAML: {_yaml_problem(exc)}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections (data, model, train, ...)")
        try:
            _check_sections(_renamed(values), Config())
        except ConfigError as exc:
            raise ConfigError(f"{p}: {exc}") from None
    values = _renamed(values)
    for text in overrides:
        override = _renamed(parse_override(text))
        _check_sections(override, Config())
        values = _merge(values, override)
    try:
        return config_from_dict(values)
    except ConfigError as exc:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{exc}") from None


#: What ``ivt train --resume`` may change: where the run computes, when it logs or pauses, and its time
#: budget. The first change no weight the run ends with. The time budget is the one setting of what the run
#: does that may change: a budget's schedule follows measured seconds, which no rerun repeats, so a budgeted
#: run never continued to the same weights anyway, and giving a run more (or less) time is what a user resumes
#: for; the schedule then follows the new budget from the resumed step on. Every other key is what the run
#: is: the epochs set the learning-rate schedule, validation (train.eval_every, train.eval_split) picks the
#: best checkpoint. ``train.out_dir`` is where the run is (``--resume`` names it), not a setting of it.
RESUME_SETTABLE = ("train.max_minutes", "train.stop_after_steps", "train.log_every", "train.device",
                   "train.threads", "data.decode_threads", "data.cache_images")


def yaml_text(value: Any) -> str:
    """``value`` as it is written after ``--set key=`` (``null``, ``[32, 16]``, ``data/x``)."""
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 20).removesuffix("...\n").strip()


def check_resume_config(run: Config, given: Config, run_dir: str | Path) -> None:
    """Refuse to continue the run whose configuration is ``run`` with ``given`` when they differ in a
    key other than :data:`RESUME_SETTABLE`: a ConfigError naming each key, the value given and the run's.
    A key set to the run's own value is no change."""
    ran, asked = config_to_dict(run), config_to_dict(given)
    changed = [f"{section}.{key}={yaml_text(value)} (the run has {yaml_text(ran[section][key])})"
               for section, values in asked.items() for key, value in values.items()
               if value != ran[section][key] and f"{section}.{key}" not in (*RESUME_SETTABLE, "train.out_dir")]
    if not changed:
        return
    rule = (f"a resumed run continues the same run, so only {', '.join(RESUME_SETTABLE)} may change (start a new "
            f"run to change the rest; nothing was changed)")
    if len(changed) == 1:
        raise ConfigError(f"cannot resume {run_dir} with {changed[0]}: {rule}")
    raise ConfigError(f"cannot resume {run_dir} with these settings: {rule}\n  " + "\n  ".join(changed))


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved configuration as YAML (atomically)."""
    p = Path(path)
    atomic_write(p, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    return p
