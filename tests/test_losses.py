"""Retrieval losses: the official CMPM reference values, IRRA's SDM, identity awareness."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ivt.losses import RetrievalLoss, cmpm_loss, infonce_loss, sdm_loss

FIXTURE = Path(__file__).parent / "fixtures" / "cmpm_loss_cases.json"
CASES = json.loads(FIXTURE.read_text())["cases"]
LOSSES = {
    "cmpm": lambda i, t, y: cmpm_loss(i, t, y),
    "infonce": lambda i, t, y: infonce_loss(i, t, y, 50.0),
    "sdm": lambda i, t, y: sdm_loss(i, t, y, 50.0),
}


def _case(case: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.tensor(case["image"]), torch.tensor(case["text"]), torch.tensor(case["labels"])


@pytest.mark.parametrize("index", range(len(CASES)))
def test_cmpm_matches_official(index: int) -> None:
    image, text, labels = _case(CASES[index])
    got = cmpm_loss(image, text, labels).item()
    assert got == pytest.approx(CASES[index]["expected_loss"], rel=1e-4)


@pytest.mark.parametrize("index", range(len(CASES)))
def test_retrieval_loss_module_cmpm_matches_official(index: int) -> None:
    image, text, labels = _case(CASES[index])
    got = RetrievalLoss("cmpm")(image.double(), text.double(), labels)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(CASES[index]["expected_loss"], rel=1e-4)


def _irra_sdm(image, text, labels, scale, eps=1e-8):
    """Independent transcription of IRRA's compute_sdm formula, for cross-checking."""
    mask = (labels.view(-1, 1) - labels.view(1, -1) == 0).float()
    image_norm = image / image.norm(dim=1, keepdim=True)
    text_norm = text / text.norm(dim=1, keepdim=True)
    t2i = scale * text_norm @ image_norm.t()
    i2t = t2i.t()
    dist = mask / mask.sum(dim=1)
    i2t_loss = F.softmax(i2t, 1) * (F.log_softmax(i2t, 1) - torch.log(dist + eps))
    t2i_loss = F.softmax(t2i, 1) * (F.log_softmax(t2i, 1) - torch.log(dist + eps))
    return i2t_loss.sum(1).mean() + t2i_loss.sum(1).mean()


@pytest.mark.parametrize("index", range(len(CASES)))
def test_sdm_matches_irra_formula(index: int) -> None:
    image, text, labels = _case(CASES[index])
    expected = _irra_sdm(image.double(), text.double(), labels, 50.0).item()
    assert sdm_loss(image, text, labels, 50.0).item() == pytest.approx(expected, rel=1e-4)


def test_infonce_with_distinct_ids_is_clip_loss() -> None:
    gen = torch.Generator().manual_seed(0)
    image, text = torch.randn(6, 16, generator=gen), torch.randn(6, 16, generator=gen)
    labels = torch.arange(6)
    logits = 20.0 * F.normalize(image, dim=1) @ F.normalize(text, dim=1).t()
    clip = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
    assert infonce_loss(image, text, labels, 20.0).item() == pytest.approx(clip.item(), rel=1e-5)


def test_infonce_soft_targets_cover_all_positives() -> None:
    image = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    scale = 10.0
    logits = scale * image @ image.t()
    target = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    expected = -(target * F.log_softmax(logits, dim=1)).sum(1).mean()
    assert infonce_loss(image, image, labels, scale).item() == pytest.approx(expected.item())


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_equal_finite_differences(name: str) -> None:
    """The losses compute in float32 whatever their inputs, so central differences in float32 with a
    step of 1e-2 on every coordinate, against autograd, to 2 % of the largest gradient."""
    image, text, labels = _case(CASES[1])
    image.requires_grad_(True)
    text.requires_grad_(True)
    LOSSES[name](image, text, labels).backward()
    for which, x, grad in ((0, image, image.grad), (1, text, text.grad)):
        numeric = torch.zeros_like(x)
        with torch.no_grad():
            for idx in range(x.numel()):
                step = torch.zeros(x.numel()).view_as(x)
                step.view(-1)[idx] = 1e-2
                values = []
                for moved in (x + step, x - step):
                    args = (moved, text) if which == 0 else (image, moved)
                    values.append(LOSSES[name](*args, labels))
                numeric.view(-1)[idx] = (values[0] - values[1]) / 2e-2
        assert grad.abs().max() > 1e-3
        torch.testing.assert_close(grad, numeric, atol=0.02 * float(grad.abs().max()), rtol=0)


def test_infonce_of_orthogonal_pairs_has_its_closed_form() -> None:
    """n pairs, each image equal to its text and orthogonal to the others: every row of the logits
    is s on the diagonal and 0 elsewhere, so the loss is log(1 + (n - 1) e^-s) in both directions."""
    n, s = 6, 7.0
    emb = torch.eye(n, 16) * 3.0  # the scale of an embedding does not matter: cosines
    expected = math.log(1 + (n - 1) * math.exp(-s))
    assert infonce_loss(emb, emb.clone(), torch.arange(n), s).item() == pytest.approx(expected, rel=1e-4)
    # a text that points at another person's image: its row and column lose the diagonal term
    swapped = emb.clone()
    swapped[[0, 1]] = swapped[[1, 0]]
    wrong = math.log(math.exp(s) + n - 1)    # rows 0 and 1: -log(e^0 / (e^s + n - 1))
    assert infonce_loss(emb, swapped, torch.arange(n), s).item() == pytest.approx(
        (2 * wrong + (n - 2) * expected) / n, rel=1e-4)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_identity_aware_positive_pairs(name: str) -> None:
    """Samples 0 and 1 share an id: their cross pair is a positive, not a negative."""
    gen = torch.Generator().manual_seed(2)
    labels = torch.tensor([0, 0, 1, 2])
    e_a, e_b = torch.randn(32, generator=gen), torch.randn(32, generator=gen)
    others = torch.randn(2, 32, generator=gen) * 3
    image_same = torch.cat([torch.stack([e_a, e_a]) * 3, others])
    image_diff = torch.cat([torch.stack([e_a, e_b]) * 3, others])
    same = LOSSES[name](image_same, image_same.clone(), labels)
    diff = LOSSES[name](image_diff, image_diff.clone(), labels)
    assert same.item() < diff.item()


def test_module_learnable_temperature_and_clamp() -> None:
    loss = RetrievalLoss("sdm", init_temperature=0.02)
    assert isinstance(loss.log_scale, torch.nn.Parameter)
    assert loss.logit_scale.item() == pytest.approx(50.0, rel=1e-5)
    image, text, labels = _case(CASES[0])
    loss(image, text, labels).backward()
    assert loss.log_scale.grad is not None and torch.isfinite(loss.log_scale.grad)
    hot = RetrievalLoss("infonce", init_temperature=0.001)
    assert hot.logit_scale.item() == pytest.approx(100.0, rel=1e-5)


def test_module_fixed_temperature_is_a_buffer() -> None:
    loss = RetrievalLoss("infonce", init_temperature=0.05, learn_temperature=False)
    assert not list(loss.parameters())
    assert "log_scale" in dict(loss.named_buffers())
    image, text, labels = _case(CASES[0])
    assert loss(image, text, labels).item() == pytest.approx(
        infonce_loss(image, text, labels, 20.0).item(), rel=1e-5
    )
    assert not list(RetrievalLoss("cmpm").parameters())


def test_float32_under_bf16_autocast() -> None:
    image, text, labels = _case(CASES[2])
    reference = cmpm_loss(image, text, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = RetrievalLoss("cmpm")(image.bfloat16(), text.bfloat16(), labels)
    assert got.dtype == torch.float32
    assert math.isfinite(got.item())
    assert got.item() == pytest.approx(reference.item(), rel=0.05)


def test_unknown_name_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="cmpm, infonce, sdm"):
        RetrievalLoss("triplet")


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        cmpm_loss(torch.randn(4, 8), torch.randn(4, 6), torch.arange(4))
    with pytest.raises(ValueError, match="labels"):
        cmpm_loss(torch.randn(4, 8), torch.randn(4, 8), torch.arange(3))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_identity_positives_equal_the_labels_path(name: str) -> None:
    g = torch.Generator().manual_seed(3)
    image, text = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    loss = RetrievalLoss(name, init_temperature=0.05)
    mask = labels[:, None] == labels[None, :]
    assert loss(image, text, labels, positives=mask).item() == pytest.approx(loss(image, text, labels).item(), rel=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_an_extra_positive_is_pulled_closer_not_pushed_away(name: str) -> None:
    # Text 1 ("glasses") also describes image 0. As a negative, a gradient step moves text 1 away
    # from image 0; declared a positive (an asymmetric mask), the step moves it closer.
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 2])
    loss = RetrievalLoss(name, init_temperature=0.1)
    extra = torch.eye(3, dtype=torch.bool)
    extra[0, 1] = True
    toward = {}
    for key, positives in (("negative", None), ("positive", extra)):
        text = torch.tensor([[1.0, 0.1], [0.5, 0.8], [-1.0, 0.1]], requires_grad=True)
        loss(image, text, labels, positives=positives).backward()
        toward[key] = float(-text.grad[1] @ image[0])
    assert toward["negative"] < 0 < toward["positive"]


def test_positives_must_hold_the_diagonal() -> None:
    labels = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="diagonal"):
        infonce_loss(torch.randn(2, 4), torch.randn(2, 4), labels, 10.0, positives=torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        infonce_loss(torch.randn(2, 4), torch.randn(2, 4), labels, 10.0, positives=torch.ones(3, 3, dtype=torch.bool))
