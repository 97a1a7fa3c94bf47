"""Training data: caption samples, the epoch sampler and
the multi-level alignment (MLA) batch.

A sample is one caption of one image (as in the official code). For each sample the batch holds
up to three texts — word level (attribute phrases), phrase level (the official split heuristic)
and the full sentence — each paired with its own independently augmented view of the image.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ivt.config import AlignConfig
from ivt.data import DataError, PedesDataset, Record
from ivt.data.image_bank import ImageBank
from ivt.text.phrases import sample_phrase, word_level_text
from ivt.train.rng import derive_seed, python_rng

LEVELS = ("word", "phrase", "sentence")
_TEXT, _AUGMENT = 1, 2  # stream tags for derive_seed


@dataclass(frozen=True)
class Sample:
    image: int                 # index into the ImageBank
    pid: int
    caption: str
    attributes: tuple[str, ...]


def build_samples(dataset: PedesDataset, records: Sequence[Record]) -> tuple[list[Path], list[Sample]]:
    """One sample per caption; returns the image paths (bank order) and the samples."""
    paths = [dataset.image_path(r) for r in records]
    samples = [Sample(i, r.pid, c, r.attributes) for i, r in enumerate(records) for c in r.captions]
    return paths, samples


class EpochSampler:
    """Batches of sample indices for an epoch, a pure function of (seed, epoch).

    ``random``: a shuffled permutation cut into batches. ``identity``: batches of P ids x K
    captions (K drawn per id, with replacement when an id has fewer), so every batch has positives.
    The last incomplete batch is dropped so batch statistics stay comparable.
    """

    def __init__(self, pids: Sequence[int], batch_size: int, seed: int, mode: str = "random", k: int = 2) -> None:
        # Values were checked when the config was loaded (ivt.config.validate_config).
        self.pids = torch.as_tensor(list(pids), dtype=torch.long)
        self.batch_size, self.seed, self.mode, self.k = batch_size, seed, mode, k
        if len(self.pids) < batch_size:
            raise DataError(f"the training split has {len(self.pids)} captions, fewer than one batch "
                            f"(train.batch_size={batch_size})")
        self._by_pid: dict[int, torch.Tensor] = {}
        if mode == "identity":
            order = torch.argsort(self.pids, stable=True)
            uniq, counts = torch.unique_consecutive(self.pids[order], return_counts=True)
            for pid, chunk in zip(uniq.tolist(), torch.split(order, counts.tolist())):
                self._by_pid[pid] = chunk

    def __len__(self) -> int:
        if self.mode == "random":
            return len(self.pids) // self.batch_size
        return (len(self._by_pid) * self.k) // self.batch_size

    def epoch(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        if self.mode == "random":
            order = torch.randperm(len(self.pids), generator=g)
        else:
            pids = list(self._by_pid)
            chunks = []
            for p in torch.randperm(len(pids), generator=g).tolist():
                members = self._by_pid[pids[p]]
                if len(members) >= self.k:
                    pick = members[torch.randperm(len(members), generator=g)[: self.k]]
                else:
                    pick = members[torch.randint(len(members), (self.k,), generator=g)]
                chunks.append(pick)
            order = torch.cat(chunks)
        n = len(self) * self.batch_size
        return order[:n].view(-1, self.batch_size).tolist()


def enabled_levels(align: AlignConfig) -> list[str]:
    """The MLA levels switched on (at least one: checked when the config is loaded)."""
    return [name for name in LEVELS if getattr(align, name)]


def level_text(level: str, sample: Sample, rng) -> str:
    """The text of one alignment level for a sample."""
    if level == "sentence":
        return sample.caption
    if level == "phrase":
        return sample_phrase(sample.caption, rng)
    return word_level_text(sample.attributes, sample.caption, rng)


@dataclass
class PairBatch:
    """uint8 images (N, 3, H, W), their texts and identity labels; N = levels x samples.

    ``augment_seeds`` holds one seed per pair for its image augmentation, derived from the
    sample's position in the epoch, so augmentation does not depend on batching or sharding.
    """

    images: torch.Tensor
    texts: list[str]
    labels: torch.Tensor
    augment_seeds: list[int]

    def __len__(self) -> int:
        return len(self.texts)


def make_pair_batch(samples: Sequence[Sample], positions: Sequence[int], bank: ImageBank,
                    levels: Sequence[str], seed: int, epoch: int) -> PairBatch:
    """All (view, text) pairs of the MLA levels for a batch of samples.

    ``positions`` are the samples' positions in the epoch's order: every random choice (the
    phrase, the attribute subset, the augmentation) is derived from (seed, epoch, position,
    level), so a resumed or sharded run draws exactly what an uninterrupted one does.
    """
    images = bank.get([s.image for s in samples])
    texts, seeds = [], []
    for level in levels:
        tag = LEVELS.index(level)
        for sample, pos in zip(samples, positions):
            texts.append(level_text(level, sample, python_rng(seed, _TEXT, epoch, pos, tag)))
            seeds.append(derive_seed(seed, _AUGMENT, epoch, pos, tag))
    labels = torch.tensor([s.pid for s in samples], dtype=torch.long).repeat(len(levels))
    return PairBatch(images.repeat(len(levels), 1, 1, 1), texts, labels, seeds)
