"""ImageNet appearance features (ivt.model.appearance): the whole torchvision MobileNetV2 trunk
read key by key, checked against a functional reference, and its errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from helpers import MOBILENETV2_BLOCKS as _BLOCKS
from helpers import flat_mobilenetv2
from ivt.model import CheckpointError
from ivt.model.appearance import LAST_CHANNELS, appearance_features, load_mobilenetv2_features


def _bn(x: torch.Tensor, sd: dict, prefix: str) -> torch.Tensor:
    return F.batch_norm(x, sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"], sd[f"{prefix}.weight"],
                        sd[f"{prefix}.bias"], training=False, eps=1e-5)


def reference(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """torchvision's MobileNetV2.features then the spatial mean, written out with functional ops."""
    x = F.relu6(_bn(F.conv2d(x, sd["features.0.0.weight"], stride=2, padding=1), sd, "features.0.1"))
    for n, (t, inp, out, stride) in enumerate(_BLOCKS, start=1):
        y, i = x, 0
        if t != 1:
            y = F.relu6(_bn(F.conv2d(y, sd[f"features.{n}.conv.0.weight"]), sd, f"features.{n}.conv.1"))
            i = 3
        w = sd[f"features.{n}.conv.{i}.weight"]
        y = F.relu6(_bn(F.conv2d(y, w, stride=stride, padding=1, groups=w.shape[0]), sd, f"features.{n}.conv.{i + 1}"))
        y = _bn(F.conv2d(y, sd[f"features.{n}.conv.{i + 3}.weight"]), sd, f"features.{n}.conv.{i + 4}")
        x = x + y if stride == 1 and inp == out else y
    x = F.relu6(_bn(F.conv2d(x, sd["features.18.0.weight"]), sd, "features.18.1"))
    return x.mean(dim=(2, 3))


def test_the_trunk_reads_every_features_key_and_computes_torchvision_s_mobilenetv2(tmp_path):
    sd = flat_mobilenetv2(seed=3)
    torch.save(sd, tmp_path / "mnv2.pt")
    model = load_mobilenetv2_features(tmp_path / "mnv2.pt")
    assert set(model.state_dict()) == {k for k in sd if k.startswith("features.") and "num_batches" not in k}
    x = torch.randn(2, 3, 96, 64, generator=torch.Generator().manual_seed(0))
    got, want = model(x), reference(sd, x)
    assert got.shape == (2, LAST_CHANNELS)
    # 53 fp32 layers: rounding grows with depth, far below the values' size.
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
    assert not any(p.requires_grad for p in model.parameters())


def test_features_are_unit_vectors_of_squashed_crops(tmp_path):
    torch.save(flat_mobilenetv2(seed=1), tmp_path / "mnv2.pt")
    model = load_mobilenetv2_features(tmp_path / "mnv2.pt")
    crops = [Image.new("RGB", (40, 90), (200, 30, 30)), Image.new("RGB", (70, 150), (20, 20, 200))]
    out = appearance_features(model, crops, size=64)
    assert out.shape == (2, LAST_CHANNELS)
    assert torch.allclose(out.norm(dim=-1), torch.ones(2), atol=1e-5)
    # A crop's size does not matter, only what it shows: the same colour at another size is the same vector.
    again = appearance_features(model, [Image.new("RGB", (33, 61), (200, 30, 30))], size=64)
    assert torch.allclose(again[0], out[0], atol=1e-5)
    # Squashed to size x size, scaled to [0, 1], ImageNet-normalised, then the trunk: as DeepSORT's embedder.
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    pixels = torch.stack([torch.full((64, 64), v / 255) for v in (20, 20, 200)])
    want = F.normalize(reference(flat_mobilenetv2(seed=1), ((pixels - mean[:, None, None]) / std[:, None, None])[None]))
    assert torch.allclose(out[1], want[0], atol=1e-5)


@pytest.mark.parametrize("damage, named", [
    (lambda sd: sd.pop("features.17.conv.3.weight"), "features.17.conv.3.weight"),
    (lambda sd: sd.update({"features.18.1.running_var": torch.ones(640)}), "features.18.1.running_var"),
])
def test_a_wrong_file_is_one_line_naming_the_key(tmp_path, damage, named):
    sd = flat_mobilenetv2()
    damage(sd)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as err:
        load_mobilenetv2_features(tmp_path / "bad.pt")
    assert named in str(err.value) and "\n" not in str(err.value)


def test_a_file_that_is_no_state_dict_is_refused(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_mobilenetv2_features(tmp_path / "junk.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="list"):
        load_mobilenetv2_features(tmp_path / "list.pt")
