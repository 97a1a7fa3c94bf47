"""Are the explanation maps faithful? Masking the patches a map ranks highest must lower the
text-image similarity more than masking as many random patches.

    python benchmarks/explain.py [--run runs/demo] [--data data/synthpedes] [--images 100] [--write]

For each test image of SynthPedes and its first caption, :func:`ivt.explain.explain` maps the
whole caption and each content phrase; then the top 25 % of patches of each map are masked, and,
separately, 16 random draws of 25 % of the patches. Two kinds of masking:

* ``tokens``: the patches are dropped from the encoder's input (what the maps are computed with);
* ``pixels``: the patches' pixels are set to the mean colour and the whole image is encoded, a
  check that does not share the maps' own mechanism.

The same is measured for a randomly initialised model of the same size as a control: the gap
measures whether a map tracks its model, trained or not; what the trained model's maps show
(garments, bags) is the "see finer" part. Also the time of one explanation (64 samples), for
the run's model and for a ``base``-size model (random weights, timing only).
"""
from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: the cores are shared with other jobs.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import ivt
from ivt.data import load_dataset
from ivt.explain import explain, faithfulness
from ivt.runtime import autocast
from results_md import write_section

FRACTION = 0.25
DRAWS = 16


@torch.inference_mode()
def pixel_masked_similarity(model, image, text_emb: torch.Tensor, patches: list[list[int]]) -> torch.Tensor:
    """Cosines (R,) of one text with the image whose listed patches are set to the mean colour."""
    x = model.transform(model.preprocess(image)[None])
    gw = model.config.grid_size[1]
    p, s = model.config.patch_size, model.config.patch_stride
    batch = x.repeat(len(patches), 1, 1, 1)
    for row, drop in enumerate(patches):
        for index in drop:
            r, c = divmod(int(index), gw)
            batch[row, :, r * s:r * s + p, c * s:c * s + p] = 0.0      # 0 = the mean after normalising
    with autocast(model.device, model.dtype):
        emb = model.encoder.encode_image(batch.to(model.device)).float()
    return F.normalize(emb, dim=-1).cpu() @ text_emb


def measure(model, dataset, records, seed: int = 0) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {k: [] for k in (
        "full", "tok_top", "tok_rand", "pix_top", "pix_rand", "is_phrase")}
    num = model.config.num_patches
    count = max(1, round(FRACTION * num))
    rng = torch.Generator().manual_seed(seed)
    for record in records:
        image = dataset.image_path(record)
        result = explain(model, image, record.captions[0], seed=seed)
        for i, check in enumerate(faithfulness(model, image, result, FRACTION, DRAWS, seed)):
            text_emb = model.encode_texts([check.phrase])[0]
            random_rows = [torch.randperm(num, generator=rng)[:count].tolist() for _ in range(DRAWS)]
            top = [result.maps[i].ranking()[:count].tolist()]
            out["full"].append(check.full)
            out["tok_top"].append(check.without_top)
            out["tok_rand"].append(check.without_random)
            out["pix_top"].append(float(pixel_masked_similarity(model, image, text_emb, top)[0]))
            out["pix_rand"].append(float(pixel_masked_similarity(model, image, text_emb, random_rows).mean()))
            out["is_phrase"].append(float(i > 0))
    return out


def summarise(name: str, m: dict[str, list[float]]) -> list[str]:
    arr = {k: np.array(v) for k, v in m.items()}
    lines = []
    for subset, mask in (("whole caption", arr["is_phrase"] == 0), ("phrases", arr["is_phrase"] == 1)):
        for kind in ("tok", "pix"):
            top, rand, full = arr[f"{kind}_top"][mask], arr[f"{kind}_rand"][mask], arr["full"][mask]
            gap = rand - top
            label = "tokens dropped" if kind == "tok" else "pixels masked"
            lines.append(f"| {name} | {subset} ({mask.sum()}) | {label} | {full.mean():.3f} | {top.mean():.3f} | "
                         f"{rand.mean():.3f} | **{gap.mean():.3f}** ± {gap.std(ddof=1) / np.sqrt(len(gap)):.3f} | "
                         f"{100 * np.mean(gap > 0):.0f} % |")
    return lines


def timing(model, image, text: str, repeats: int = 3) -> float:
    """Seconds of one explanation: the best of ``repeats`` after a warm-up (shared cores)."""
    explain(model, image, text, samples=64)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        explain(model, image, text, samples=64)
        times.append(time.perf_counter() - start)
    return min(times)


def random_copy(run: Path, tmp: Path, size: str | None = None) -> Path:
    """A run directory with the run's tokenizer and a randomly initialised encoder (of ``size``,
    or of the run's own configuration)."""
    from ivt.checkpoint import load_model, save_checkpoint
    from ivt.model import model_config
    from ivt.model.factory import create_encoder
    from ivt.text.tokenizer import Tokenizer

    encoder, meta = load_model(run, "best")
    config = encoder.config if size is None else model_config(size, vocab_size=encoder.config.vocab_size)
    torch.manual_seed(0)
    fresh = create_encoder(config)
    out = tmp / (size or "random")
    out.mkdir()
    Tokenizer.from_file(run).save(out / "tokenizer.json")
    save_checkpoint(out, "best", fresh, {"text_max_length": meta.get("text_max_length", 64)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"))
    parser.add_argument("--data", type=Path, default=Path("data/synthpedes"))
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = load_dataset(args.data)
    records = dataset.split("test")[: args.images]
    trained = ivt.load(args.run)
    rows = summarise("trained (demo run)", measure(trained, dataset, records))
    with tempfile.TemporaryDirectory() as tmp:
        control = ivt.load(random_copy(args.run, Path(tmp)))
        rows += summarise("random init (control)", measure(control, dataset, records))
        image, text = dataset.image_path(records[0]), records[0].captions[0]
        times = [(f"{trained.config.width}-wide run model ({trained.config.num_patches} patches)",
                  timing(trained, image, text))]
        base = ivt.load(random_copy(args.run, Path(tmp), "base"))
        times.append((f"base ({base.config.num_patches} patches, random weights)", timing(base, image, text)))
    lines = [f"{len(records)} SynthPedes test images, first caption each; masks of {int(FRACTION * 100)} % of "
             f"the patches, {DRAWS} random draws; similarities are cosines; gap = similarity without random "
             f"patches - without the map's top patches (> 0: the map found what matters; ± = standard error).", "",
             "| model | texts | masking | intact | without top | without random | gap | maps with gap > 0 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |", *rows, "",
             "Time of one explanation (64 masked encodings, all phrases together; best of 3), this CPU: "
             + "; ".join(f"{name} {seconds:.2f} s" for name, seconds in times) + "."]
    text_out = "\n".join(lines)
    print(text_out)
    if args.write:
        write_section("explain", text_out, "Explanation faithfulness (`benchmarks/explain.py`)")


if __name__ == "__main__":
    main()
