"""ivt: text-based person retrieval with one transformer for images and text (IVT).

    import ivt
    model = ivt.load("runs/demo")
    scores = model.similarity(["a woman in a red coat"], ["img1.jpg", "img2.jpg"])
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load", "RetrievalModel", "load_official_encoder"]


def __getattr__(name: str):
    # Lazy so that `import ivt` (and the CLI's --help) does not import torch.
    if name in ("load", "RetrievalModel"):
        from ivt import inference

        return getattr(inference, name)
    if name == "load_official_encoder":
        from ivt.model.official import load_official_encoder

        return load_official_encoder
    raise AttributeError(f"module 'ivt' has no attribute {name!r}")
