"""The hybrid image stem (model.stem=mobilenetv2): torchvision MobileNetV2 files key by key, its errors,
tuning and frozen BatchNorm statistics, and a hybrid run through training, checkpoint and ivt.load."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import ivt
from helpers import MICRO_MODEL, flat_mobilenetv2, trained_toy_run
from helpers import MOBILENETV2_BLOCKS as _BLOCKS
from helpers import bn_tensors as _bn
from ivt.bundled import find_mobilenetv2
from ivt.checkpoint import read_tensors, resolve_checkpoint
from ivt.config import ConfigError, OptimConfig, load_config
from ivt.explain import explain
from ivt.index.build import build_index
from ivt.index.ingest import image_source
from ivt.model import CheckpointError, IVTEncoder, model_config
from ivt.model.config import IMAGENET_MEAN, IMAGENET_STD
from ivt.model.pretrained import init_from_cnn, init_pretrained
from ivt.runtime import low_precision_error
from ivt.train.optim import build_optimizer


def modern_mobilenetv2(flat: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same weights under today's torchvision names (ConvBNReLU groups: conv.0.0, conv.0.1, ...)."""
    moves = {True: {0: "0.0", 1: "0.1", 3: "1.0", 4: "1.1", 6: "2", 7: "3"},   # expanding blocks
             False: {0: "0.0", 1: "0.1", 3: "1", 4: "2"}}                      # features.1 (t = 1)
    out = {}
    for key, value in flat.items():
        parts = key.split(".")
        if len(parts) > 3 and parts[2] == "conv":
            expanding = _BLOCKS[int(parts[1]) - 1][0] != 1
            parts[3] = moves[expanding][int(parts[3])]
        out[".".join(parts)] = value
    return out


def reference_features(sd: dict[str, torch.Tensor], images: torch.Tensor, blocks: int) -> torch.Tensor:
    """MobileNetV2's features.0 .. features.{blocks - 1} computed from the flat file's tensors alone."""
    def bn(x, prefix):
        return F.batch_norm(x, sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"], sd[f"{prefix}.weight"],
                            sd[f"{prefix}.bias"], training=False, eps=1e-5)

    x = F.relu6(bn(F.conv2d(images, sd["features.0.0.weight"], stride=2, padding=1), "features.0.1"))
    for n, (t, inp, out, stride) in enumerate(_BLOCKS[:blocks - 1], start=1):
        y, i, p = x, 0, f"features.{n}.conv"
        if t != 1:
            y, i = F.relu6(bn(F.conv2d(y, sd[f"{p}.0.weight"]), f"{p}.1")), 3
        y = F.relu6(bn(F.conv2d(y, sd[f"{p}.{i}.weight"], stride=stride, padding=1, groups=y.shape[1]), f"{p}.{i + 1}"))
        y = bn(F.conv2d(y, sd[f"{p}.{i + 3}.weight"]), f"{p}.{i + 4}")
        x = x + y if stride == 1 and inp == out else y
    return x


def hybrid(stride: int = 16, tune: str = "all", stem: str = "mobilenetv2") -> IVTEncoder:
    return IVTEncoder(model_config("tiny", stem=stem, patch_size=stride, patch_stride=stride,
                                   width=32, depth=1, num_heads=2, stem_tune=tune))


def torchvision_resnet(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A whole ImageNet ResNet-18 or -50 in torchvision's names (conv1 .. layer4, fc), random values."""
    gen = torch.Generator().manual_seed(seed)
    counts, bottleneck = {"resnet18": ((2, 2, 2, 2), False), "resnet50": ((3, 4, 6, 3), True)}[name]
    sd = {"conv1.weight": torch.randn(64, 3, 7, 7, generator=gen) * 0.1}
    _bn(sd, "bn1", 64, gen)
    inp = 64
    for stage, blocks in enumerate(counts):
        planes = 64 * 2 ** stage
        out = planes * 4 if bottleneck else planes
        for i in range(blocks):
            p = f"layer{stage + 1}.{i}"
            shapes = ([(planes, inp, 1), (planes, planes, 3), (out, planes, 1)] if bottleneck
                      else [(planes, inp, 3), (planes, planes, 3)])
            for j, (o, c, k) in enumerate(shapes, start=1):
                sd[f"{p}.conv{j}.weight"] = torch.randn(o, c, k, k, generator=gen) * (c * k * k) ** -0.5
                _bn(sd, f"{p}.bn{j}", o, gen)
            if i == 0 and (stage > 0 or inp != out):
                sd[f"{p}.downsample.0.weight"] = torch.randn(out, inp, 1, 1, generator=gen) * inp ** -0.5
                _bn(sd, f"{p}.downsample.1", out, gen)
            inp = out
    sd["fc.weight"], sd["fc.bias"] = torch.randn(1000, inp, generator=gen) * 0.01, torch.zeros(1000)
    return sd


@pytest.mark.parametrize("layout", ["flat", "modern"])
@pytest.mark.parametrize("stride", [8, 16])
def test_mobilenetv2_layouts_load_key_by_key(tmp_path, layout, stride):
    flat = flat_mobilenetv2()
    torch.save(flat if layout == "flat" else modern_mobilenetv2(flat), tmp_path / "mnv2.pth")
    enc = hybrid(stride)
    report = init_from_cnn(enc, tmp_path / "mnv2.pth")
    blocks = 7 if stride == 8 else 14
    own = enc.state_dict()
    for key, value in flat.items():
        index = int(key.split(".")[1]) if key.startswith("features.") else 99
        target = f"patch_embed.stem.{key}"
        if index < blocks and not key.endswith("num_batches_tracked"):
            assert torch.equal(own[target], value), key
        else:
            assert target not in own
    assert len(report.used) + len(report.skipped) == len(flat)
    assert {k for k in own if k.startswith("patch_embed.stem.features.")} == set(report.used)
    images = torch.randn(2, 3, 128, 64)
    with torch.no_grad():
        mine = enc.patch_embed.stem.features(images)
        assert torch.allclose(mine, reference_features(flat, images, blocks), atol=1e-4, rtol=1e-4)
        assert mine.shape[-2:] == enc.config.grid_size


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
@pytest.mark.parametrize("stride", [8, 16])
def test_resnet_layouts_load_key_by_key(tmp_path, name, stride):
    sd = torchvision_resnet(name)
    torch.save({"state_dict": sd}, tmp_path / "resnet.pth")
    enc = hybrid(stride, stem=name)
    report = init_from_cnn(enc, tmp_path / "resnet.pth")
    own = enc.state_dict()
    kept = ("conv1.", "bn1.", "layer1.", "layer2.") + (("layer3.",) if stride == 16 else ())
    for key, value in sd.items():
        target = f"patch_embed.stem.{key}"
        if key.startswith(kept) and not key.endswith("num_batches_tracked"):
            assert torch.equal(own[target], value), key
            assert report.used[target] == key
        else:
            assert target not in own and key in report.skipped
    assert {k for k in own if k.startswith("patch_embed.stem.") and ".proj." not in k} == set(report.used)
    with torch.no_grad():
        assert enc.patch_embed(torch.randn(2, 3, 128, 64)).shape == (2, enc.config.num_patches, 32)


@pytest.mark.parametrize("damage, named", [
    (lambda sd: sd.pop("features.3.conv.4.running_var"), "features.3.conv.4.running_var"),
    (lambda sd: sd.update({"features.5.conv.0.weight": torch.zeros(192, 31, 1, 1)}), "features.5.conv.0.weight"),
    (lambda sd: sd.update({"features.2.conv.9.weight": torch.zeros(3)}), "features.2.conv.9.weight"),
])
def test_a_wrong_file_names_the_key_and_loads_nothing(tmp_path, damage, named):
    sd = flat_mobilenetv2()
    damage(sd)
    torch.save(sd, tmp_path / "bad.pth")
    enc = hybrid()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    with pytest.raises(CheckpointError, match="nothing was loaded") as err:
        init_from_cnn(enc, tmp_path / "bad.pth")
    assert named in str(err.value)
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())


def test_a_file_that_is_no_state_dict_is_one_error(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pth")
    (tmp_path / "text.pth").write_text("not weights")
    for name in ("list.pth", "text.pth"):
        with pytest.raises(CheckpointError, match=name):
            init_from_cnn(hybrid(), tmp_path / name)
    with pytest.raises(CheckpointError, match="set model.stem to one of mobilenetv2"):
        init_from_cnn(IVTEncoder(model_config("tiny", width=32, depth=1, num_heads=2)), tmp_path / "list.pth")


@pytest.mark.parametrize("stem, tune", [("mobilenetv2", "frozen"), ("mobilenetv2", "last"), ("mobilenetv2", "all"),
                                        ("resnet18", "last")])
def test_training_steps_change_only_the_tuned_stem(stem, tune):
    torch.manual_seed(0)
    enc = hybrid(8, tune, stem).train()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    optimizer = build_optimizer(OptimConfig(lr=1e-2, stem_lr_factor=0.5), {"encoder": enc})
    cnn = {id(p) for k, p in enc.named_parameters() if k in enc.cnn_stem_parameters()}
    stem_lrs = {g["lr"] for g in optimizer.param_groups for p in g["params"] if id(p) in cnn}
    assert stem_lrs <= {5e-3}
    images, ids = torch.randn(4, 3, 128, 64), torch.randint(1, 100, (4, 8))
    for _ in range(2):
        sim = F.normalize(enc.encode_image(images), dim=-1) @ F.normalize(enc.encode_text(ids), dim=-1).T
        loss = F.cross_entropy(sim / 0.1, torch.arange(4))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    changed = {k for k, v in enc.state_dict().items() if not torch.equal(before[k], v)}
    tuned = {k for k in changed if k.startswith("patch_embed.stem.") and ".proj." not in k}
    assert "patch_embed.stem.proj.weight" in changed and "blocks.0.attn.qkv.weight" in changed
    assert not any(k.endswith(("running_mean", "running_var")) for k in changed)   # statistics stay frozen
    last = (tuple(f"patch_embed.stem.features.{i}." for i in (4, 5, 6)) if stem == "mobilenetv2"
            else ("patch_embed.stem.layer2.",))
    assert enc.cnn_stem_parameters() == {k for k, _ in enc.named_parameters()
                                         if k.startswith("patch_embed.stem.") and ".proj." not in k}
    if tune == "frozen":
        assert not tuned
    elif tune == "last":
        assert tuned and all(k.startswith(last) for k in tuned)
    else:
        assert any(k.startswith("patch_embed.stem.features.0.") for k in tuned)


@pytest.mark.parametrize("override, message", [
    (["model.stem=mobilenetv2", "model.patch_size=12", "model.patch_stride=12"], "8 or 16"),
    (["model.stem=mobilenetv2", "model.image_size=[120, 64]"], "divisible by patch_stride"),
    (["model.stem=mobilenetv2", "model.init=official.pth"], "model.init='official.pth'"),
    (["model.init_stem=mobilenetv2"], "model.init_stem: 'mobilenetv2' fills a CNN stem"),
    (["model.stem=mobilenetv2", "model.stem_tune=last"], "model.stem_tune: 'last'"),
    (["model.stem=mobilenetv2", "model.stem_tune=half"], "model.stem_tune: 'half'"),
    (["optim.stem_lr_factor=0"], "optim.stem_lr_factor"),
    (["model.stem=resnet18", "model.init_stem=mobilenetv2"], "needs a torchvision resnet18 file"),
])
def test_bad_hybrid_settings_are_config_errors(override, message):
    from ivt.train.encoder_from_config import encoder_config_for

    with pytest.raises(ConfigError, match=message) as err:
        cfg = load_config(None, override)
        encoder_config_for(cfg.model, 100, 24)
    assert "\n" not in str(err.value)
    if "model.init=" in override[-1]:
        assert "mobilenetv2" in str(err.value)


def test_hybrid_run_round_trips_with_its_preprocessing(tmp_path):
    init = tmp_path / "mnv2.pth"
    flat = flat_mobilenetv2()
    torch.save(flat, init)
    data, run = trained_toy_run(tmp_path, [*MICRO_MODEL, "model.stem=mobilenetv2", f"model.init_stem={init}",
                                        "model.stem_tune=frozen", "train.batch_size=8", "train.precision=fp32",
                                        "train.threads=1", "data.vocab_size=200", "data.max_text_len=24",
                                        "train.epochs=1", "train.eval_every=0"])
    report = json.loads((run / "init_report.json").read_text())
    assert len(report["files"][0]["used"]) + len(report["files"][0]["skipped"]) == len(flat)
    model = ivt.load(run, device="cpu", precision="fp32")
    assert model.encoder.config.stem == "mobilenetv2" and model.encoder.config.stem_tune == "frozen"
    assert tuple(model.encoder.config.image_mean) == IMAGENET_MEAN
    assert tuple(model.encoder.config.image_std) == IMAGENET_STD
    saved = read_tensors(resolve_checkpoint(run, "best")[0])
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, saved[key]), key
    for key, value in flat.items():   # frozen: the trained stem is the file's, statistics included
        if f"patch_embed.stem.{key}" in saved:
            assert torch.equal(saved[f"patch_embed.stem.{key}"], value), key
    again = IVTEncoder(model.encoder.config).eval()
    again.load_state_dict(saved)
    images = torch.rand(2, 3, 32, 16)
    with torch.no_grad():
        assert torch.equal(model.encoder.eval().encode_image_tokens(images), again.encode_image_tokens(images))
    image = next((data / "imgs" / "test").iterdir())
    explanation = explain(model, image, "a red shirt", samples=8, seed=0)    # the CNN's token grid
    assert explanation.maps[0].relevance.shape == model.encoder.config.grid_size
    assert explanation.pixel_map(0).shape == explanation.pixels.shape[:2]
    build_index(tmp_path / "index", model, images=image_source(data / "imgs" / "test"), progress=False)


def test_the_bundled_mobilenetv2_fits_and_computes_in_bf16():
    try:
        path = find_mobilenetv2()
    except CheckpointError as exc:
        pytest.skip(str(exc))
    enc = hybrid(16)
    report = init_from_cnn(enc, "mobilenetv2")
    assert report.source == str(path) and len(report.used) == 195
    assert len(report.used) + len(report.skipped) == len(torch.load(path, weights_only=True))
    # One BatchNorm channel of this file is 1,556 standard deviations from 0: its convolution runs in fp32.
    assert low_precision_error(enc, torch.bfloat16, torch.device("cpu")) < 0.05


def test_a_vit_fills_a_hybrid_model_but_its_patch_embedding(tmp_path):
    from weight_files import DEPTH, WIDTH, vit_state

    sd = vit_state()
    torch.save(sd, tmp_path / "vit.pth")
    torch.save(flat_mobilenetv2(), tmp_path / "mnv2.pth")
    enc = IVTEncoder(model_config("tiny", image_size=(64, 32), stem="mobilenetv2", width=WIDTH, depth=DEPTH,
                                  num_heads=2))
    vit, cnn = init_pretrained(enc, image=tmp_path / "vit.pth", stem=tmp_path / "mnv2.pth")
    assert vit.skipped["patch_embed.proj.weight"] == "the mobilenetv2 stem replaces the patch embedding"
    assert vit.resized["pos_embed"].endswith("4x4 patch grid -> 4x2, bilinear")
    assert torch.equal(enc.state_dict()["blocks.0.attn.qkv.weight"], sd["blocks.0.attn.qkv.weight"])
    own = enc.state_dict()
    text_side = {k for k in own if k.startswith("embeddings.") or ".mlp_txt." in k}
    assert set(own) - set(vit.used) - set(cnn.used) == {"type_embed", "patch_embed.stem.proj.weight",
                                                        "patch_embed.stem.proj.bias"} | text_side
