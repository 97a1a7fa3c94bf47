"""Identity-aware cross-modal retrieval losses on (B, C) image and text embeddings.

Every loss treats all same-identity pairs in the batch as positives (a person has several images
and captions). All of them are computed in float32 with autocast disabled, because log-softmax over
scaled similarities is unstable in bf16/fp16.

``logit_scale`` arguments of :func:`infonce_loss` and :func:`sdm_loss` are the *multiplier* applied
to cosine similarities, i.e. ``1 / temperature`` (the convention of IRRA's ``compute_sdm`` and
open_clip's ``ClipLoss``). :class:`RetrievalLoss` stores its logarithm as the learnable parameter
and passes ``exp`` of it, clamped to at most 100 as CLIP does.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ivt.config import LOSSES as LOSS_NAMES

MAX_LOGIT_SCALE = 100.0


@contextmanager
def _float32(device: torch.device) -> Iterator[None]:
    """Disable autocast on ``device`` so that matmuls inside run in the inputs' float32."""
    try:
        ctx = torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:
        yield
        return
    with ctx:
        yield


def _check_inputs(image_emb: Tensor, text_emb: Tensor, labels: Tensor) -> None:
    if image_emb.dim() != 2 or text_emb.dim() != 2:
        raise ValueError(
            f"embeddings must be (B, C); got image {tuple(image_emb.shape)}, "
            f"text {tuple(text_emb.shape)}"
        )
    if image_emb.shape != text_emb.shape:
        raise ValueError(
            f"image and text embeddings differ in shape: {tuple(image_emb.shape)} "
            f"vs {tuple(text_emb.shape)}"
        )
    if labels.shape != (image_emb.shape[0],):
        raise ValueError(f"labels must be ({image_emb.shape[0]},); got {tuple(labels.shape)}")


def identity_mask(labels: Tensor) -> Tensor:
    """(B, B) float mask, 1 where samples i and j share an identity (the diagonal included)."""
    labels = labels.reshape(-1)
    return (labels[:, None] == labels[None, :]).float()


def _positives(labels: Tensor, positives: Tensor | None, device: torch.device) -> Tensor:
    """(B, B) float mask, rows images and columns texts: the given ``positives`` (which must hold
    the diagonal), or the identity mask of ``labels``."""
    if positives is None:
        return identity_mask(labels.to(device))
    n = labels.shape[0]
    if positives.shape != (n, n):
        raise ValueError(f"positives must be ({n}, {n}), got {tuple(positives.shape)}")
    if not bool(positives.diagonal().all()):
        raise ValueError("positives must hold the diagonal (every image matches its own text)")
    return positives.to(device=device, dtype=torch.float32)


def cmpm_loss(image_emb: Tensor, text_emb: Tensor, labels: Tensor, eps: float = 1e-8,
              positives: Tensor | None = None) -> Tensor:
    """Cross-modal projection matching (Zhang & Lu 2018) exactly as the official IVT code has it.

    Each side is projected on the *normalised* other side (its own side stays unnormalised), and
    the softmax over projections is pulled towards the identity mask divided by its row L2 norm
    (not a probability distribution: the official code divides by ``norm(dim=1)``, which
    broadcasts over columns; the mask is symmetric, so column j is divided by sqrt(#positives of
    j)). Returns ``mean_i sum_j i2t + mean_i sum_j t2i``. ``positives`` (rows images, columns
    texts) replaces the identity mask; each direction's column j is divided by its column norm,
    which is the official rule for a symmetric mask.
    """
    _check_inputs(image_emb, text_emb, labels)
    with _float32(image_emb.device):
        image = image_emb.float()
        text = text_emb.float()
        mask = _positives(labels, positives, image.device)
        image_norm = image / image.norm(dim=1, keepdim=True)
        text_norm = text / text.norm(dim=1, keepdim=True)
        image_proj_text = image @ text_norm.t()
        text_proj_image = text @ image_norm.t()
        i2t_target = torch.log(mask / mask.norm(dim=0, keepdim=True) + eps)
        t2i_target = torch.log(mask.t() / mask.t().norm(dim=0, keepdim=True) + eps)
        return _kl_rows(image_proj_text, i2t_target) + _kl_rows(text_proj_image, t2i_target)


def _kl_rows(logits: Tensor, log_target: Tensor) -> Tensor:
    """Mean over rows of sum_j softmax(logits) * (log_softmax(logits) - log_target)."""
    return (F.softmax(logits, dim=1) * (F.log_softmax(logits, dim=1) - log_target)).sum(1).mean()


def _cosine_logits(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor | float) -> Tensor:
    """(B, B) image-to-text logits: scaled cosine similarities, in float32."""
    image = F.normalize(image_emb.float(), dim=1)
    text = F.normalize(text_emb.float(), dim=1)
    scale = torch.as_tensor(logit_scale, dtype=torch.float32, device=image.device)
    return scale * (image @ text.t())


def infonce_loss(
    image_emb: Tensor, text_emb: Tensor, labels: Tensor, logit_scale: Tensor | float,
    positives: Tensor | None = None,
) -> Tensor:
    """Symmetric identity-aware InfoNCE on L2-normalised embeddings.

    Logits are ``logit_scale * cos`` (``logit_scale`` = 1 / temperature). The target of each row
    is uniform over that row's same-identity columns, so with one caption per identity this is
    CLIP's loss; the result is the mean of the image-to-text and text-to-image cross-entropies.
    ``positives`` (rows images, columns texts) replaces the identity mask.
    """
    _check_inputs(image_emb, text_emb, labels)
    with _float32(image_emb.device):
        logits = _cosine_logits(image_emb, text_emb, logit_scale)
        mask = _positives(labels, positives, logits.device)
        i2t = -(mask / mask.sum(dim=1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
        t2i = -(mask.t() / mask.t().sum(dim=1, keepdim=True) * F.log_softmax(logits.t(), dim=1)).sum(dim=1).mean()
        return 0.5 * (i2t + t2i)


def image_image_loss(image_emb: Tensor, labels: Tensor, logit_scale: Tensor | float) -> Tensor:
    """Identity-aware InfoNCE among the images of a batch, each image's target uniform over the
    *other* images of its identity (itself never a candidate): two photos of one person are pulled
    together and away from everyone else's, which the cross-modal losses only do through the texts
    (RaSa and others add such an image-image term). Images whose identity has no other image in
    the batch are not anchors. The identity sampler (``train.k_per_id``) gives each identity several
    images per batch. Returns 0 (with a gradient path) when no image has a partner.
    """
    if image_emb.dim() != 2 or labels.reshape(-1).shape[0] != image_emb.shape[0]:
        raise ValueError(f"image_image_loss: need (B, D) embeddings and B labels, got {tuple(image_emb.shape)} "
                         f"and {tuple(labels.shape)}")
    with _float32(image_emb.device):
        x = F.normalize(image_emb.float(), dim=1)
        scale = torch.as_tensor(logit_scale, dtype=torch.float32, device=x.device)
        own = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
        logits = (scale * (x @ x.t())).masked_fill(own, float("-inf"))
        mask = identity_mask(labels.to(x.device)).masked_fill(own, 0.0)
        anchors = mask.sum(dim=1) > 0
        if not bool(anchors.any()):
            return logits.masked_fill(own, 0.0).sum() * 0.0
        log_p = F.log_softmax(logits[anchors], dim=1).masked_fill(own[anchors], 0.0)
        target = mask[anchors] / mask[anchors].sum(dim=1, keepdim=True)
        return -(target * log_p).sum(dim=1).mean()


def sdm_loss(
    image_emb: Tensor,
    text_emb: Tensor,
    labels: Tensor,
    logit_scale: Tensor | float,
    eps: float = 1e-8,
    positives: Tensor | None = None,
) -> Tensor:
    """Similarity distribution matching (IRRA): KL(softmax(scaled cos) || label distribution).

    ``logit_scale`` multiplies the cosine similarities (IRRA passes 1 / temperature). The label
    distribution of each row is the identity mask normalised to sum 1; the image-to-text and
    text-to-image terms are summed, as in IRRA. ``positives`` (rows images, columns texts)
    replaces the identity mask.
    """
    _check_inputs(image_emb, text_emb, labels)
    with _float32(image_emb.device):
        i2t_logits = _cosine_logits(image_emb, text_emb, logit_scale)
        mask = _positives(labels, positives, i2t_logits.device)
        i2t_target = torch.log(mask / mask.sum(dim=1, keepdim=True) + eps)
        t2i_target = torch.log(mask.t() / mask.t().sum(dim=1, keepdim=True) + eps)
        return _kl_rows(i2t_logits, i2t_target) + _kl_rows(i2t_logits.t(), t2i_target)


class RetrievalLoss(nn.Module):
    """The configured retrieval loss, holding the (optionally learnable) logit scale.

    ``name`` is one of ``"cmpm"`` (the paper's loss; no temperature), ``"infonce"`` or ``"sdm"``.
    For the latter two the module stores ``log(1 / init_temperature)`` as ``log_scale`` (a
    parameter when ``learn_temperature``, else a buffer) and uses ``min(exp(log_scale), 100)``.
    """

    def __init__(
        self, name: str = "cmpm", init_temperature: float = 0.02, learn_temperature: bool = True
    ) -> None:
        super().__init__()
        if name not in LOSS_NAMES:
            raise ValueError(f"unknown retrieval loss {name!r}; valid: {', '.join(LOSS_NAMES)}")
        if init_temperature <= 0:
            raise ValueError(f"init_temperature must be positive, got {init_temperature}")
        self.name = name
        self.learn_temperature = learn_temperature
        log_scale = torch.tensor(math.log(1.0 / init_temperature), dtype=torch.float32)
        if name == "cmpm":
            self.log_scale = None
        elif learn_temperature:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    @property
    def logit_scale(self) -> Tensor | None:
        """Current multiplier ``1 / temperature`` (clamped to 100), or None for CMPM."""
        if self.log_scale is None:
            return None
        return self.log_scale.float().clamp(max=math.log(MAX_LOGIT_SCALE)).exp()

    def forward(self, image_emb: Tensor, text_emb: Tensor, labels: Tensor,
                positives: Tensor | None = None) -> Tensor:
        """Scalar float32 loss for one batch of paired embeddings (``positives``: optional (B, B)
        image x text match mask replacing the identity mask of ``labels``)."""
        if self.name == "cmpm":
            return cmpm_loss(image_emb, text_emb, labels, positives=positives)
        scale = self.logit_scale
        if self.name == "infonce":
            return infonce_loss(image_emb, text_emb, labels, scale, positives=positives)
        return sdm_loss(image_emb, text_emb, labels, scale, positives=positives)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, learn_temperature={self.learn_temperature}"


def hard_negatives(image_emb: Tensor, text_emb: Tensor, labels: Tensor, generator: torch.Generator,
                   scale: float = 1 / 0.07) -> tuple[Tensor, Tensor]:
    """For every pair of a batch, a hard negative text for its image and a hard negative image for
    its text (ALBEF's sampling): drawn with probability softmax(scale * cosine) over the other
    identities' items, never the same identity. Returns CPU indices (B,), (B,); a row whose every
    item shares its identity gets -1. The draw uses ``generator`` (CPU) only, so a run resumed or
    sharded over processes draws what an uninterrupted single process does."""
    with torch.no_grad():
        sim = (F.normalize(image_emb.detach().float(), dim=1) @ F.normalize(text_emb.detach().float(), dim=1).t())
        sim, labels = sim.cpu(), labels.cpu()
        same = labels[:, None] == labels[None, :]
        out = []
        for scores in (sim, sim.t()):
            weights = torch.softmax(scale * scores, dim=1).masked_fill(same, 0.0)
            empty = weights.sum(1) == 0
            weights[empty] = 1.0                       # any row will do; reported as -1 below
            picked = torch.multinomial(weights, 1, generator=generator).squeeze(1)
            out.append(picked.masked_fill(empty, -1))
        return out[0], out[1]


def itm_loss(logits: Tensor, num_positives: int) -> Tensor:
    """Cross-entropy of ITM logits whose first ``num_positives`` rows are matching pairs and the
    rest hard negatives (float32)."""
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    target[:num_positives] = 1
    return F.cross_entropy(logits.float(), target)
