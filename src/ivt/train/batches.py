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
from ivt.text.phrases import sample_phrase, word_level_attributes, word_level_text
from ivt.train.rng import derive_seed, python_rng

LEVELS = ("word", "phrase", "sentence")
_TEXT, _AUGMENT = 1, 2  # stream tags for derive_seed

#: Formats whose official loader falls back to the phrase heuristic for a caption with an empty
#: ``att`` (CUHK-PEDES); elsewhere the word level comes from comma clauses (ICFG-PEDES, RSTPReid).
PHRASE_FALLBACK_FORMATS = ("ivt-cuhk",)


@dataclass(frozen=True)
class Sample:
    image: int                 # index into the ImageBank
    pid: int
    caption: str
    attributes: tuple[str, ...]  # this caption's own attribute phrases (else its image's)
    word_fallback: str = "clauses"  # word-level text without attributes (see word_level_text)


def build_samples(dataset: PedesDataset, records: Sequence[Record]) -> tuple[list[Path], list[Sample]]:
    """One sample per caption; returns the image paths (bank order) and the samples."""
    paths = [dataset.image_path(r) for r in records]
    fallback = "phrases" if dataset.format in PHRASE_FALLBACK_FORMATS else "clauses"
    samples = [Sample(i, r.pid, c, r.attributes_of(j), fallback)
               for i, r in enumerate(records) for j, c in enumerate(r.captions)]
    return paths, samples


class EpochSampler:
    """Batches of sample indices for an epoch, a pure function of (seed, epoch).

    ``random``: a shuffled permutation cut into batches. ``identity``: batches of P ids x K
    captions (K drawn per id, with replacement when an id has fewer), so every batch has positives;
    an epoch shows every id once. ``identity-all``: the official ``RandomIdentitySampler``, where an
    epoch shows every caption once (see :meth:`_all_chunks`). ``similar``: as ``identity``, but the
    ids come in groups of ``group`` look-alikes (a random anchor and the unused ids whose attribute
    sets overlap it most, by Jaccard index), so a batch holds hard negatives: people who differ in
    one or two attributes; ``attributes`` (one set per sample) is needed for it. The last
    incomplete batch is dropped so batch statistics stay comparable.
    """

    def __init__(self, pids: Sequence[int], batch_size: int, seed: int, mode: str = "random", k: int = 2,
                 attributes: Sequence[Sequence[str]] | None = None, group: int = 4) -> None:
        # Values were checked when the config was loaded (ivt.config.validate_config).
        self.pids = torch.as_tensor(list(pids), dtype=torch.long)
        self.batch_size, self.seed, self.mode, self.k, self.group = batch_size, seed, mode, k, group
        if len(self.pids) < batch_size:
            raise DataError(f"the training split has {len(self.pids)} captions, fewer than one batch "
                            f"(train.batch_size={batch_size})")
        self._by_pid: dict[int, torch.Tensor] = {}
        self._similarity: torch.Tensor | None = None
        if mode != "random":
            order = torch.argsort(self.pids, stable=True)
            uniq, counts = torch.unique_consecutive(self.pids[order], return_counts=True)
            for pid, chunk in zip(uniq.tolist(), torch.split(order, counts.tolist())):
                self._by_pid[pid] = chunk
        if mode == "similar":
            if attributes is None or len(attributes) != len(self.pids):
                raise DataError("train.sampler=similar needs the attributes of every training sample")
            self._similarity = _jaccard([{a for i in self._by_pid[p].tolist() for a in attributes[i]}
                                         for p in self._by_pid])

    def __len__(self) -> int:
        if self.mode == "random":
            return len(self.pids) // self.batch_size
        if self.mode == "identity-all":
            chunks = sum(max(len(m), self.k) // self.k for m in self._by_pid.values())
            return chunks // (self.batch_size // self.k)
        return (len(self._by_pid) * self.k) // self.batch_size

    def epoch(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        if self.mode == "random":
            order = torch.randperm(len(self.pids), generator=g)
        elif self.mode == "identity-all":
            order = torch.cat(self._all_chunks(g))
        else:
            pids = list(self._by_pid)
            chunks = []
            perm = torch.randperm(len(pids), generator=g)
            if self._similarity is not None:
                perm = _similar_groups(self._similarity, perm, self.group)
            for p in perm.tolist():
                members = self._by_pid[pids[p]]
                if len(members) >= self.k:
                    pick = members[torch.randperm(len(members), generator=g)[: self.k]]
                else:
                    pick = members[torch.randint(len(members), (self.k,), generator=g)]
                chunks.append(pick)
            order = torch.cat(chunks)
        n = len(self) * self.batch_size
        return order[:n].view(-1, self.batch_size).tolist()

    def _all_chunks(self, g: torch.Generator) -> list[torch.Tensor]:
        """Chunks of K captions in batch order, as the official ``RandomIdentitySampler``.

        Each id's captions are shuffled and cut into chunks of K (an id with fewer is drawn with
        replacement, a remainder is dropped); each batch takes the next chunk of P = batch / K
        distinct ids picked at random among those with chunks left. Where the official loop stops
        (fewer than P ids left), the remaining chunks still fill batches, so that every epoch has
        ``len(self)`` steps.
        """
        queues: dict[int, list[torch.Tensor]] = {}
        for pid, members in self._by_pid.items():
            if len(members) < self.k:
                members = members[torch.randint(len(members), (self.k,), generator=g)]
            else:
                members = members[torch.randperm(len(members), generator=g)]
            queues[pid] = list(members[: len(members) // self.k * self.k].split(self.k))
        per_batch = self.batch_size // self.k
        available = list(queues)
        chunks: list[torch.Tensor] = []
        while len(available) >= per_batch:
            picks = sorted(torch.randperm(len(available), generator=g)[:per_batch].tolist(), reverse=True)
            chosen = [available[i] for i in picks]
            chunks.extend(queues[pid].pop(0) for pid in chosen)
            for i, pid in zip(picks, chosen):  # descending positions: swap-removal stays valid
                if not queues[pid]:
                    available[i] = available[-1]
                    available.pop()
        rest = [c for pid in available for c in queues[pid]]
        chunks.extend(rest[i] for i in torch.randperm(len(rest), generator=g).tolist())
        return chunks


def _jaccard(sets: list[set[str]]) -> torch.Tensor:
    """(n, n) Jaccard index of attribute sets (1 on the diagonal, 0 between empty sets)."""
    vocab = {a: i for i, a in enumerate(sorted(set().union(*sets)))}
    hot = torch.zeros(len(sets), max(len(vocab), 1))
    for row, attrs in enumerate(sets):
        hot[row, [vocab[a] for a in attrs]] = 1.0
    inter = hot @ hot.t()
    sizes = hot.sum(1)
    union = sizes[:, None] + sizes[None, :] - inter
    sim = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))
    sim.fill_diagonal_(1.0)
    return sim


def _similar_groups(similarity: torch.Tensor, perm: torch.Tensor, group: int) -> torch.Tensor:
    """``perm`` reordered into groups: each unused anchor (in ``perm`` order) followed by the
    ``group - 1`` unused ids most similar to it."""
    used = torch.zeros(len(perm), dtype=torch.bool)
    out = []
    for anchor in perm.tolist():
        if used[anchor]:
            continue
        used[anchor] = True
        scores = similarity[anchor].masked_fill(used, -1.0)
        take = min(group - 1, int((~used).sum()))
        mates = torch.topk(scores, take).indices if take > 0 else torch.empty(0, dtype=torch.long)
        used[mates] = True
        out.append(anchor)
        out.extend(mates.tolist())
    return torch.tensor(out, dtype=torch.long)


def enabled_levels(align: AlignConfig) -> list[str]:
    """The MLA levels switched on (at least one: checked when the config is loaded)."""
    return [name for name in LEVELS if getattr(align, name)]


def level_text(level: str, sample: Sample, rng) -> tuple[str, frozenset[str] | None]:
    """The text of one alignment level for a sample, and for a word-level text made of attribute
    phrases the set of those phrases (None otherwise)."""
    if level == "sentence":
        return sample.caption, None
    if level == "phrase":
        return sample_phrase(sample.caption, rng), None
    attrs = word_level_attributes(sample.attributes, rng)
    if attrs:
        return ",".join(attrs), frozenset(attrs)
    return word_level_text((), sample.caption, rng, sample.word_fallback), None


@dataclass
class PairTexts:
    """The texts of a batch's pairs (level-major: all samples of the first level, then the next)
    with what decides which images each text matches."""

    texts: list[str]
    labels: torch.Tensor
    levels: list[str]                            # the level of each text
    text_attributes: list[frozenset[str] | None]  # a word-level text's attribute phrases
    image_attributes: list[frozenset[str]]        # the attribute phrases of each pair's image
    augment_seeds: list[int]

    def by_level(self) -> list[list[str]]:
        """The texts cut into runs of one alignment level (each is tokenised to its own length)."""
        runs: list[list[str]] = []
        for i, text in enumerate(self.texts):
            if i == 0 or self.levels[i] != self.levels[i - 1]:
                runs.append([])
            runs[-1].append(text)
        return runs


def pair_texts(samples: Sequence[Sample], positions: Sequence[int], levels: Sequence[str], seed: int,
               epoch: int) -> PairTexts:
    """The texts of all (view, text) pairs of the MLA levels for a batch of samples.

    ``positions`` are the samples' positions in the epoch's order: every random choice (the
    phrase, the attribute subset, the augmentation) is derived from (seed, epoch, position,
    level), so a resumed or sharded run draws exactly what an uninterrupted one does.
    """
    texts, seeds, text_attrs, text_levels = [], [], [], []
    for level in levels:
        tag = LEVELS.index(level)
        for sample, pos in zip(samples, positions):
            text, attrs = level_text(level, sample, python_rng(seed, _TEXT, epoch, pos, tag))
            texts.append(text)
            text_attrs.append(attrs)
            text_levels.append(level)
            seeds.append(derive_seed(seed, _AUGMENT, epoch, pos, tag))
    labels = torch.tensor([s.pid for s in samples], dtype=torch.long).repeat(len(levels))
    image_attrs = [frozenset(s.attributes) for s in samples] * len(levels)
    return PairTexts(texts, labels, text_levels, text_attrs, image_attrs, seeds)


def concat_pairs(parts: Sequence[PairTexts]) -> PairTexts:
    """The pairs of several batches one after the other (the shards of a global batch)."""
    return PairTexts([t for p in parts for t in p.texts], torch.cat([p.labels for p in parts]),
                     [v for p in parts for v in p.levels], [a for p in parts for a in p.text_attributes],
                     [a for p in parts for a in p.image_attributes], [s for p in parts for s in p.augment_seeds])


def attribute_positives(pairs: PairTexts) -> torch.Tensor:
    """(N, N) bool matrix, rows images and columns texts: same identity, or the text is a
    word-level list of attribute phrases that the image's attributes all include."""
    labels = pairs.labels
    mask = labels[:, None] == labels[None, :]
    for j, attrs in enumerate(pairs.text_attributes):
        if attrs:
            mask[:, j] |= torch.tensor([attrs <= image for image in pairs.image_attributes])
    return mask


@dataclass
class PairBatch:
    """uint8 images (N, 3, H, W) and the texts they pair with (N = levels x samples).

    ``augment_seeds`` holds one seed per image for its augmentation, derived from the sample's
    position in the epoch, so augmentation does not depend on batching or sharding. With a shared
    view (see :func:`make_pair_batch`) ``images`` and ``augment_seeds`` hold one entry per sample.
    """

    images: torch.Tensor
    pairs: PairTexts
    augment_seeds: list[int]
    positives: torch.Tensor | None = None  # (N, N) image x text matches, when not by identity alone

    def __len__(self) -> int:
        return len(self.pairs.texts)


def make_pair_batch(samples: Sequence[Sample], positions: Sequence[int], bank: ImageBank,
                    levels: Sequence[str], seed: int, epoch: int, shared_view: bool = False) -> PairBatch:
    """All (view, text) pairs of the MLA levels for a batch of samples (see :func:`pair_texts`).

    With ``shared_view`` the batch holds one augmented view per sample (the first level's), which
    every level's text is paired with: ``images`` and ``augment_seeds`` then have one entry per
    sample, not per pair, and the trainer encodes each image once.
    """
    images = bank.get([s.image for s in samples])
    pairs = pair_texts(samples, positions, levels, seed, epoch)
    if shared_view:
        return PairBatch(images, pairs, pairs.augment_seeds[:len(samples)])
    return PairBatch(images.repeat(len(levels), 1, 1, 1), pairs, pairs.augment_seeds)
