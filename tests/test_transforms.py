"""Image loading and batch augmentation."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ivt.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    ImageError,
    TrainAugment,
    load_image,
)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

H, W = 48, 24


def _normalise(images: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    mean_t = torch.tensor(mean).view(-1, 3, 1, 1)
    std_t = torch.tensor(std).view(-1, 3, 1, 1)
    return (images.float() / 255.0 - mean_t) / std_t


def _batch(b: int = 4, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (b, 3, H, W), generator=gen, dtype=torch.uint8)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _seeds(n: int, base: int = 0) -> list[int]:
    """One augmentation seed per image, as the trainer gives them."""
    return [1000 * base + i for i in range(n)]


@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "person.png"
    Image.fromarray(rng.integers(0, 256, (70, 30, 3), dtype=np.uint8)).save(path)
    return path


def test_load_image_resizes_bicubic_to_hw(image_file: Path) -> None:
    img = load_image(image_file, (H, W))
    assert img.dtype == torch.uint8 and img.shape == (3, H, W)
    expected = np.array(Image.open(image_file).convert("RGB").resize((W, H), Image.BICUBIC))
    assert torch.equal(img, torch.from_numpy(expected).permute(2, 0, 1))


def test_load_image_converts_grayscale(tmp_path: Path) -> None:
    path = tmp_path / "gray.jpg"
    Image.fromarray(np.full((20, 10), 128, dtype=np.uint8), mode="L").save(path)
    assert load_image(path, (H, W)).shape == (3, H, W)


def test_corrupt_file_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken_image.jpg"
    path.write_bytes(b"this is not a jpeg")
    with pytest.raises(ImageError, match="broken_image.jpg"):
        load_image(path, (H, W))


def test_truncated_file_error_names_the_file(tmp_path: Path, image_file: Path) -> None:
    path = tmp_path / "cut.png"
    path.write_bytes(image_file.read_bytes()[:200])
    with pytest.raises(ImageError, match="cut.png"):
        load_image(path, (H, W))


def test_missing_file_error_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="nowhere.png"):
        load_image(tmp_path / "nowhere.png", (H, W))


def test_eval_equals_resize_and_normalise(image_file: Path) -> None:
    img = load_image(image_file, (H, W))
    out = EvalTransform()(img)
    assert out.dtype == torch.float32 and out.shape == (3, H, W)
    assert torch.allclose(out, _normalise(img)[0], atol=1e-5)
    batch = torch.stack([img, img.flip(-1)])
    out_batch = EvalTransform()(batch)
    assert out_batch.shape == (2, 3, H, W)
    assert torch.equal(out_batch, EvalTransform()(batch))


def test_eval_clip_statistics() -> None:
    batch = _batch()
    out = EvalTransform(mean=CLIP_MEAN, std=CLIP_STD)(batch)
    assert torch.allclose(out, _normalise(batch, CLIP_MEAN, CLIP_STD), atol=1e-5)


def test_train_shapes_and_dtype() -> None:
    out = TrainAugment()(_batch(5), _seeds(5))
    assert out.shape == (5, 3, H, W) and out.dtype == torch.float32
    single = TrainAugment()(_batch(1)[0], _seeds(1))
    assert single.shape == (3, H, W)


def test_all_off_equals_eval() -> None:
    batch = _batch()
    out = TrainAugment(padding=0, flip_p=0.0, erase_p=0.0)(batch, _seeds(len(batch)))
    assert torch.equal(out, EvalTransform()(batch))


def test_flip_always_flips() -> None:
    batch = _batch()
    out = TrainAugment(padding=0, flip_p=1.0, erase_p=0.0)(batch, _seeds(len(batch)))
    assert torch.allclose(out, _normalise(batch.flip(-1)), atol=1e-5)


def test_flip_half_of_the_time() -> None:
    batch = _batch(200)
    out = TrainAugment(padding=0, flip_p=0.5, erase_p=0.0).crop_and_flip(batch, _gen(3))
    flipped = sum(torch.equal(o, b.flip(-1)) for o, b in zip(out, batch))
    unchanged = sum(torch.equal(o, b) for o, b in zip(out, batch))
    assert flipped + unchanged == 200 and 70 < flipped < 130


def test_crop_is_a_window_of_the_padded_image() -> None:
    pad = 10
    batch = _batch(16)
    out = TrainAugment(padding=pad, flip_p=0.0, erase_p=0.0).crop_and_flip(batch, _gen(1))
    padded = torch.nn.functional.pad(batch, (pad,) * 4)
    offsets = set()
    for o, p in zip(out, padded):
        matches = [
            (t, left)
            for t in range(2 * pad + 1)
            for left in range(2 * pad + 1)
            if torch.equal(o, p[:, t:t + H, left:left + W])
        ]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 1


def _erased_box(out: torch.Tensor, ref: torch.Tensor) -> tuple[int, int, int, int] | None:
    changed = ~torch.isclose(out, ref, atol=1e-5).all(dim=0)
    if not changed.any():
        return None
    rows = changed.any(dim=1).nonzero().flatten()
    cols = changed.any(dim=0).nonzero().flatten()
    return int(rows[0]), int(cols[0]), int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


@pytest.mark.parametrize("fill", ["pixel", "zero"])
def test_erasing_is_a_rectangle_within_area_bounds(fill: str) -> None:
    batch = _batch(64)
    aug = TrainAugment(padding=0, flip_p=0.0, erase_p=1.0, erase_fill=fill)
    out = aug(batch, _seeds(64, 2))
    ref = _normalise(batch)
    erased = 0
    for o, r in zip(out, ref):
        box = _erased_box(o, r)
        if box is None:
            continue
        erased += 1
        top, left, h, w = box
        assert h < H and w < W
        area = h * w / (H * W)
        assert 0.01 <= area <= 0.4
        region = o[:, top:top + h, left:left + w]
        if fill == "zero":
            assert torch.count_nonzero(region) == 0
        else:
            assert not torch.isclose(region, r[:, top:top + h, left:left + w]).all()
        outside = torch.ones(H, W, dtype=torch.bool)
        outside[top:top + h, left:left + w] = False
        assert torch.allclose(o[:, outside], r[:, outside], atol=1e-5)
    assert erased >= 60


def test_erase_boxes_respect_ranges() -> None:
    aug = TrainAugment(erase_p=1.0)
    boxes = aug.erase_boxes(2000, 384, 128, _gen(4))
    top, left, h, w = boxes.unbind(1)
    assert (h > 0).all() and (w > 0).all()
    assert (top >= 0).all() and (top + h <= 384).all()
    assert (left >= 0).all() and (left + w <= 128).all()
    area = (h * w).double() / (384 * 128)
    assert area.min() >= 0.018 and area.max() <= 0.34
    aspect = h.double() / w.double()
    assert aspect.min() >= 0.28 and aspect.max() <= 3.5


def test_erase_probability() -> None:
    boxes = TrainAugment(erase_p=0.5).erase_boxes(1000, 384, 128, _gen(5))
    assert 400 < int((boxes[:, 2] > 0).sum()) < 600
    assert int((TrainAugment(erase_p=0.0).erase_boxes(50, H, W, _gen())[:, 2] > 0).sum()) == 0


def test_seeded_augmentation_is_deterministic_per_image() -> None:
    batch = _batch(8)
    aug = TrainAugment()
    a = aug(batch, _seeds(8, 42))
    b = aug(batch, _seeds(8, 42))
    c = aug(batch, _seeds(8, 43))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # an image's augmentation is its seed's alone: the same in any batch, at any position
    alone = aug(batch[5:6], _seeds(8, 42)[5:6])
    assert torch.equal(alone[0], a[5])
    with pytest.raises(ValueError, match="got 7 seeds for 8 images"):
        aug(batch, _seeds(7))


def test_input_is_not_modified() -> None:
    batch = _batch()
    before = batch.clone()
    TrainAugment(erase_p=1.0)(batch, _seeds(len(batch)))
    EvalTransform()(batch)
    assert torch.equal(batch, before)


def test_rejects_float_input_and_bad_config() -> None:
    with pytest.raises(TypeError, match="uint8"):
        EvalTransform()(torch.zeros(3, H, W))
    with pytest.raises(ValueError, match="flip_p"):
        TrainAugment(flip_p=1.5)
    with pytest.raises(ValueError, match="erase_fill"):
        TrainAugment(erase_fill="noise")
