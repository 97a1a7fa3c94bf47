"""The trainer, in named steps (as open_clip's): setup, ``train_step``, the epoch loop, and
validation + checkpointing. ``train(cfg)`` is what ``ivt train`` runs.

- Setup (:meth:`Trainer.__init__`): data, tokenizer, model, loss, optimiser, schedule; nothing is
  written before every input has been checked.
- :meth:`Trainer.train_step`: one optimisation step on a multi-level (MLA) batch: augmentation,
  tokenisation, forward with BMM token dropping, the identity-aware loss over the embeddings of
  all ranks, backward, clipping, optimiser step. It returns device tensors: the host reads them
  back only at log points, so the loop never waits for the device in between.
- :meth:`Trainer.fit`: epochs of steps, pausing (``train.stop_after_steps``) or stopping at the
  time budget; validation runs exactly once per due epoch whatever the pause point.
- :meth:`Trainer.end_epoch` / :meth:`Trainer.save`: validation on the held-out split, ``best`` /
  ``last`` checkpoints and the resumable state, committed together (crash-safe).
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ivt.checkpoint import checkpoint_files, commit_files, load_model, read_json, recover_run_dir
from ivt.config import Config, OptimConfig, check_resume_config, load_config, save_config
from ivt.data import DataError, load_dataset
from ivt.data.image_bank import ImageBank
from ivt.errors import RunDirError, TrainingDivergedError
from ivt.evaluate.metrics import METRIC_KEYS
from ivt.evaluate.rerank import CHOOSE_K, choose_weight_on
from ivt.evaluate.retrieval import embed_split, split_images, split_metrics
from ivt.inference import RetrievalModel
from ivt.losses import RetrievalLoss, image_image_loss
from ivt.model.packing import pack_texts
from ivt.model.pretrained import format_reports, init_pretrained, text_vocab_for, write_init_report
from ivt.runtime import (
    PrecisionChoice,
    autocast,
    check_low_precision,
    precision_choice,
    resolve_device,
    to_device,
    training_attention,
)
from ivt.text.tokenizer import Tokenizer
from ivt.train.batches import (
    EpochSampler,
    PairBatch,
    attribute_positives,
    build_samples,
    concat_pairs,
    enabled_levels,
    make_pair_batch,
    pair_texts,
)
from ivt.train.distributed import (
    DistInfo,
    barrier,
    broadcast_flag,
    gather_labels,
    gather_with_grad,
    init_distributed,
    shutdown_distributed,
)
from ivt.train.encoder_from_config import build_encoder
from ivt.train.optim import build_optimizer, build_schedule
from ivt.train.pair_encoder import ItmRequest, PairEncoder
from ivt.train.rng import derive_seed, reseed_token_drop, torch_generator
from ivt.train.state import STATE_JSON, TrainState, load_train_state, train_state_files
from ivt.transforms import TrainAugment

RUN_FILES = ("last.safetensors", "best.safetensors", "last.state.json")
_DROPOUT, _TOKEN_DROP, _ITM = 3, 4, 5  # stream tags for derive_seed


class _Log:
    """metrics.jsonl (and TensorBoard when it is installed); silent on ranks other than 0."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"))
            except ImportError:  # TensorBoard is optional
                self.tb = None

    def write(self, record: dict, step: int) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    self.tb.add_scalar(f"{record.get('kind', 'train')}/{k}", v, step)


def _check_run_dir(run_dir: Path, resume: bool) -> None:
    if resume:
        if not (run_dir / "config.yaml").exists():
            raise RunDirError(f"{run_dir}: not a run directory (no config.yaml); nothing to resume")
        if not (run_dir / "last.state.json").exists() and not (run_dir / "commit.json").exists():
            raise RunDirError(f"{run_dir}: nothing to resume (no last.state.json)")
    elif any((run_dir / f).exists() for f in RUN_FILES):
        raise RunDirError(f"{run_dir} already holds a training run; continue it with --resume {run_dir} "
                          f"or choose another train.out_dir (nothing was changed)")


def format_epoch(epoch: float) -> str:
    """``12`` for a whole epoch, ``48.92`` for a fraction (never 48.92307692307692)."""
    return str(int(epoch)) if float(epoch).is_integer() else f"{epoch:.2f}"


def _training_precision(precision: str, device: torch.device, resume_dir: Path | None) -> PrecisionChoice:
    """``train.precision`` on ``device``. A resumed ``auto`` run keeps the precision it started with
    (recorded in its state), so a re-measured probe near the threshold cannot change its numbers."""
    if precision == "auto" and resume_dir is not None and (resume_dir / STATE_JSON).exists():
        recorded = read_json(resume_dir / STATE_JSON).get("precision")
        if recorded in ("fp32", "bf16", "fp16"):
            choice = precision_choice(recorded, device, "training")
            return PrecisionChoice(choice.dtype, "auto, as this run started", "training")
    return precision_choice(precision, device, "training")


def lr_advice(lr: float) -> str:
    """What to set after a run diverged at learning rate ``lr``: a tenth of it, or (for 0, a value too
    small to divide, inf or nan) the default; always an override that loads."""
    if math.isfinite(lr) and lr / 10 > 0:
        return f"lower optim.lr (e.g. --set optim.lr={lr / 10:g})"
    return f"set a finite optim.lr > 0 (e.g. --set optim.lr={OptimConfig.lr:g})"


class Trainer:
    """One training run of ``cfg`` (or its continuation with ``resume=True``)."""

    def __init__(self, cfg: Config, resume: bool = False) -> None:
        self.cfg = cfg
        _check_run_dir(Path(cfg.train.out_dir), resume)
        if resume:  # before anything is read or recovered: a resumed run is the same run
            check_resume_config(load_config(Path(cfg.train.out_dir) / "config.yaml"), cfg, cfg.train.out_dir)
        self.dist, device_name = init_distributed(cfg.train.device)
        self.device = resolve_device(device_name)
        train_records = self._setup_data()
        self._setup_run(resume)
        paths, self.samples = build_samples(self.dataset, train_records)
        init_reports = self._setup_model(resume)
        self._setup_optimisation()
        self.state = self._restore(resume)
        self._setup_images(paths, train_records)
        self.log = _Log(self.run_dir, self.dist.is_main)
        self.budget = cfg.train.max_minutes * 60 if cfg.train.max_minutes else None
        if self.dist.is_main:
            self._write_run_files(resume, init_reports)

    def _setup_data(self) -> list:
        """The dataset, its training records (returned) and the validation records, checked."""
        cfg, t = self.cfg, self.cfg.train
        self.levels = enabled_levels(cfg.align)
        self.dataset = load_dataset(cfg.data.path, cfg.data.format, image_root=cfg.data.image_root)
        train_records = self.dataset.split("train")
        if not train_records:
            raise DataError(f"{self.dataset.annotation}: no 'train' split to train on "
                            f"(present: {', '.join(self.dataset.splits)})")
        self.eval_records = self.dataset.split(t.eval_split) if t.eval_every > 0 else []
        if t.eval_every > 0 and not self.eval_records:
            raise DataError(f"{self.dataset.annotation}: no '{t.eval_split}' split for choosing the best checkpoint "
                            f"(present: {', '.join(self.dataset.splits)}); set train.eval_split to another split "
                            f"or train.eval_every=0")
        return train_records

    def _setup_run(self, resume: bool) -> None:
        """The run directory (recovered after a crash), threads, precision and seed."""
        t = self.cfg.train
        self.run_dir = Path(t.out_dir)
        if resume and self.dist.is_main:
            for line in recover_run_dir(self.run_dir):
                tqdm.write(f"{self.run_dir}: {line}")
        barrier(self.dist)
        if t.threads:
            torch.set_num_threads(t.threads)
        self.precision = _training_precision(t.precision, self.device, self.run_dir if resume else None)
        self.amp = self.precision.dtype
        torch.manual_seed(t.seed)

    def _setup_model(self, resume: bool) -> list:
        """The tokenizer and the encoder (the run's own when resuming), on the device, wrapped for
        DDP; returns the reports of pretrained weights loaded into a new encoder."""
        cfg, t = self.cfg, self.cfg.train
        init_reports = []
        if resume:
            self.tokenizer = Tokenizer.from_file(self.run_dir, max_length=cfg.data.max_text_len)
            model, _ = load_model(self.run_dir, "last", "cpu", overrides={
                "token_drop": cfg.token_drop.ratio, "token_drop_mode": cfg.token_drop.mode})
        else:
            vocab = cfg.data.tokenizer or text_vocab_for(cfg.model.init_text)
            self.tokenizer = (Tokenizer.from_file(vocab, max_length=cfg.data.max_text_len) if vocab else
                              Tokenizer.train([s.caption for s in self.samples], vocab_size=cfg.data.vocab_size,
                                              max_length=cfg.data.max_text_len))
            model = build_encoder(cfg.model, self.tokenizer.vocab_size, cfg.data.max_text_len, cfg.token_drop)
            init_reports = init_pretrained(model, cfg.model.init_image, cfg.model.init_text, cfg.model.init_stem)
        self.model = model
        self.model.to(self.device).train()
        self.precision = check_low_precision(self.model, self.precision, self.device, cfg.train.precision)
        self.amp = self.precision.dtype
        self.pair_encoder: nn.Module = PairEncoder(self.model)
        # Packing changes no number (tests/test_packing.py), only the padding computed; BMM drops
        # tokens of padded rows, so with it on the texts stay padded.
        self.pack_texts = t.pack_texts and cfg.token_drop.ratio == 0
        # Image-text matching pairs the captions (the sentence level) with images and hard negatives.
        self.itm_level = self.levels.index("sentence") if cfg.model.itm else None
        self._matching_on = False
        # The matching head's re-ranking weight, chosen at each validation (a resumed run's last).
        self.rerank_weight = json.loads((self.run_dir / "last.json").read_text()).get("rerank_weight") \
            if resume and cfg.model.itm else None
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.pair_encoder = nn.parallel.DistributedDataParallel(
                self.pair_encoder, device_ids=ids,   # the head waits unused until loss.itm_from
                find_unused_parameters=cfg.model.arch == "two-tower" or bool(cfg.model.itm and cfg.loss.itm_from))
        return init_reports

    def _setup_optimisation(self) -> None:
        """Loss, optimiser, sampler, schedule, augmentation and the fp16 gradient scaler."""
        cfg, t = self.cfg, self.cfg.train
        self.loss_fn = RetrievalLoss(cfg.loss.name, cfg.loss.temperature, cfg.loss.learn_temperature).to(self.device)
        self.optimizer = build_optimizer(cfg.optim, {"encoder": self.model, "loss": self.loss_fn})
        self.global_batch = t.batch_size * self.dist.world_size
        self.sampler = EpochSampler([s.pid for s in self.samples], self.global_batch, t.seed, t.sampler, t.k_per_id,
                                    attributes=[s.attributes for s in self.samples], group=t.similar_group)
        self.total_steps = len(self.sampler) * t.epochs
        self.schedule = build_schedule(cfg.optim, self.optimizer, t.epochs, len(self.sampler))
        config = self.model.config
        self.augment = TrainAugment(padding=cfg.augment.padding, flip_p=cfg.augment.flip_p,
                                    erase_p=cfg.augment.erase_p, mean=config.image_mean, std=config.image_std)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp is torch.float16)

    def _restore(self, resume: bool) -> TrainState:
        """A new run's state, or the saved one (optimiser and loss restored with it)."""
        fresh = TrainState(world_size=self.dist.world_size, precision=self.precision.name)
        if not resume:
            return fresh
        state = load_train_state(self.run_dir, optimizer=self.optimizer, extra_modules={"loss": self.loss_fn})
        if state.world_size != self.dist.world_size:
            raise RunDirError(f"{self.run_dir} was trained on {state.world_size} process(es); resume it "
                              f"on as many (now {self.dist.world_size}) so batches stay the same")
        state = dataclasses.replace(state, precision=self.precision.name)
        if state.batch >= len(self.sampler):  # saved by versions that rolled epochs over later
            state.epoch, state.batch = state.epoch + 1, 0
        return state

    def _setup_images(self, paths: list, train_records: list) -> None:
        """The training images (decoded once when cached) and, on rank 0, the validation images."""
        cfg, config = self.cfg, self.model.config
        self.bank = ImageBank(paths, tuple(config.image_size), cache=cfg.data.cache_images,
                              threads=cfg.data.decode_threads,
                              entries=[self.dataset.describe_entry(r) for r in train_records])
        self.eval_images = None
        if self.eval_records and cfg.data.cache_images and self.dist.is_main:
            self.eval_images = ImageBank([self.dataset.image_path(r) for r in self.eval_records],
                                         tuple(config.image_size), threads=cfg.data.decode_threads,
                                         interpolation=config.eval_interpolation,
                                         entries=[self.dataset.describe_entry(r) for r in self.eval_records],
                                         ).get(range(len(self.eval_records)))

    def _write_run_files(self, resume: bool, init_reports: list) -> None:
        """Say the precision; write the resolved config, and for a new run its tokenizer and the
        report of pretrained weights (nothing is written before every input was checked)."""
        tqdm.write(self.precision.describe())
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, self.run_dir / "config.yaml")
        if not resume:
            self.tokenizer.save(self.run_dir)
            if init_reports:
                write_init_report(self.run_dir, init_reports, self.model)
                tqdm.write(format_reports(init_reports, self.model))

    # -- one step -------------------------------------------------------------------------
    def make_batch(self, epoch: int, batch_index: int, indices: list[int]) -> PairBatch:
        """This rank's share of global batch ``batch_index`` of ``epoch`` (``indices``: all of it)."""
        b = self.cfg.train.batch_size
        lo = self.dist.rank * b
        mine = indices[lo:lo + b]
        positions = [batch_index * self.global_batch + lo + j for j in range(len(mine))]
        batch = make_pair_batch([self.samples[i] for i in mine], positions, self.bank, self.levels,
                                self.cfg.train.seed, epoch, shared_view=self.cfg.align.shared_view)
        if self.cfg.align.word_positives == "attributes" and "word" in self.levels:
            batch.positives = self.global_positives(epoch, batch_index, indices)
        return batch

    def global_positives(self, epoch: int, batch_index: int, indices: list[int]) -> torch.Tensor:
        """Image x text positives of the whole global batch, in the order the loss gathers it
        (rank by rank, each rank's pairs level by level); a pure function of the batch."""
        b, ranks = self.cfg.train.batch_size, []
        for r in range(self.dist.world_size):
            chunk = indices[r * b:(r + 1) * b]
            positions = [batch_index * self.global_batch + r * b + j for j in range(len(chunk))]
            ranks.append(pair_texts([self.samples[i] for i in chunk], positions, self.levels,
                                    self.cfg.train.seed, epoch))
        return attribute_positives(concat_pairs(ranks))

    def batches(self) -> Iterator[PairBatch]:
        """This rank's batches from where the run stands (``state.epoch``, ``state.batch``) to the
        end of the last epoch: the one source of batches, for :meth:`fit` and the benchmarks."""
        epoch, start = self.state.epoch, self.state.batch
        while epoch < self.cfg.train.epochs:
            order = self.sampler.epoch(epoch)
            for index in range(start, len(order)):
                yield self.make_batch(epoch, index, order[index])
            epoch, start = epoch + 1, 0

    def train_step(self, batch: PairBatch) -> dict[str, torch.Tensor]:
        """One optimisation step, and the run's position advanced past ``batch`` (to the next
        epoch after its last batch); returns device tensors (``loss``, and ``grad_norm`` with
        clipping)."""
        seed, step = self.cfg.train.seed, self.state.step
        # Dropout / drop-path and BMM draws are functions of (seed, step): exact resume for free.
        torch.manual_seed(derive_seed(seed, _DROPOUT, step, self.dist.rank))
        reseed_token_drop(self.model, seed, _TOKEN_DROP, step)
        images = self.augment(batch.images, seeds=batch.augment_seeds, device=self.device)
        chunks = [self.tokenizer(run) for run in batch.pairs.by_level()]
        texts = (pack_texts(chunks).to(self.device) if self.pack_texts else
                 [tuple(to_device(t, self.device) for t in chunk) for chunk in chunks])
        labels = to_device(batch.pairs.labels, self.device)
        itm = None
        if self.itm_level is not None and self._matching_due():
            per_level = len(batch.pairs.texts) // len(self.levels)
            rows = slice(self.itm_level * per_level, (self.itm_level + 1) * per_level)
            scale = self.loss_fn.logit_scale
            itm = ItmRequest(self.itm_level, per_level, batch.pairs.labels[rows], torch_generator(seed, _ITM, step),
                             float(scale.detach()) if scale is not None else 1 / 0.07, self.dist,
                             self.cfg.loss.itm_pairs)
        with autocast(self.device, self.amp), training_attention(self.device):
            img, txt, matching = self.pair_encoder(images, texts, itm)
        views = img
        if len(img) != len(txt):  # one shared view per sample: pair it with every level's text
            img = img.repeat(len(txt) // len(img), 1)
        loss = self.loss_fn(gather_with_grad(img, self.dist), gather_with_grad(txt, self.dist),
                            gather_labels(labels, self.dist), positives=batch.positives)
        out = {}
        if self.cfg.loss.i2i_weight:
            scale = self.loss_fn.logit_scale
            same = image_image_loss(gather_with_grad(views, self.dist), gather_labels(labels[:len(views)], self.dist),
                                    scale if scale is not None else 1 / 0.07)
            out["i2i_loss"] = same.detach()
            loss = loss + self.cfg.loss.i2i_weight * same
        if matching is not None:
            out["itm_loss"] = matching.detach()
            loss = loss + self.cfg.loss.itm_weight * matching
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        out["loss"] = loss.detach()
        if self.cfg.optim.clip_grad:
            self.scaler.unscale_(self.optimizer)
            params = list(self.model.parameters()) + list(self.loss_fn.parameters())
            out["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.clip_grad).detach()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.state.step += 1
        self.state.batch += 1
        if self.state.batch == len(self.sampler):
            self.state.epoch, self.state.batch = self.state.epoch + 1, 0
        return out

    def _matching_due(self) -> bool:
        """Whether steps add the matching loss: from ``loss.itm_from`` of the run on, so that the
        dual encoder trains at full speed first (the same answer on every rank; once on, on)."""
        if not self._matching_on:
            due = self.progress() >= self.cfg.loss.itm_from
            self._matching_on = broadcast_flag(due, self.dist, self.device) if self.cfg.loss.itm_from else True
        return self._matching_on

    # -- the loop -------------------------------------------------------------------------
    def progress(self) -> float:
        """Fraction of the run done: steps, or the time budget when that is further along."""
        frac = self.state.step / max(self.total_steps, 1)
        return max(frac, self.state.train_seconds / self.budget) if self.budget else frac

    def _due(self, epoch: int) -> bool:
        every = self.cfg.train.eval_every
        return bool(self.eval_records) and every > 0 and (epoch % every == 0 or epoch == self.cfg.train.epochs)

    def fit(self) -> Path:
        """Train until the last epoch, the time budget or the pause point; returns the run dir."""
        t, c = self.cfg.train, self.state
        # A run stopped between an epoch's last step and its validation validates first.
        if c.batch == 0 and c.epoch > 0 and self._due(c.epoch) and c.evaluated_epoch != c.epoch:
            self.end_epoch(c.epoch)
        steps_this_run = 0
        out_of_time = False
        per_epoch = len(self.sampler)
        batches = self.batches()
        while c.epoch < t.epochs:
            epoch = c.epoch
            bar = tqdm(total=per_epoch, initial=c.batch, desc=f"epoch {epoch + 1}/{t.epochs}", leave=False,
                       disable=None if self.dist.is_main else True)
            window_start, window_pairs = time.perf_counter(), 0
            loss_sum, loss_count = None, 0
            paused = False
            while c.epoch == epoch:
                started = time.perf_counter()
                lr = self.schedule.set_progress(self.progress(), c.step)
                batch = next(batches)
                metrics = self.train_step(batch)
                loss_sum = metrics["loss"] if loss_sum is None else loss_sum + metrics["loss"]
                loss_count += 1
                c.train_seconds += time.perf_counter() - started
                steps_this_run += 1
                window_pairs += len(batch) * self.dist.world_size
                bar.update(1)
                if c.step % t.log_every == 0:
                    mean_loss = (loss_sum / loss_count).item()  # the one host sync per log window
                    self._check_loss(mean_loss)
                    now = time.perf_counter()
                    record = {"kind": "train", "epoch": epoch, "step": c.step, "loss": round(mean_loss, 5),
                              "lr": lr, "pairs_per_s": round(window_pairs / (now - window_start), 2)}
                    for key in ("grad_norm", "itm_loss", "i2i_loss"):
                        if key in metrics:
                            record[key] = round(float(metrics[key]), 4)
                    self.log.write(record, c.step)
                    bar.set_postfix(loss=f"{mean_loss:.3f}")
                    window_start, window_pairs, loss_sum, loss_count = now, 0, None, 0
                if self.budget is not None:
                    out_of_time = broadcast_flag(c.train_seconds >= self.budget, self.dist, self.device)
                    if out_of_time:
                        break
                if t.stop_after_steps and steps_this_run >= t.stop_after_steps:
                    paused = True
                    break
            bar.close()
            if loss_count:  # steps since the last log point: never commit weights of a diverged loss
                self._check_loss((loss_sum / loss_count).item())
            self._check_weights()
            if out_of_time:
                fraction = c.epoch if c.batch == 0 else round(epoch + c.batch / per_epoch, 2)
                self.end_epoch(fraction, validate=bool(self.eval_records))
                if self.dist.is_main:
                    tqdm.write(f"time budget of {t.max_minutes:g} min reached after {c.step} steps "
                               f"(epoch {format_epoch(fraction)})")
                break
            if c.epoch > epoch:
                self.end_epoch(c.epoch)
            elif paused:
                self.save()
            if paused:
                if self.dist.is_main:
                    tqdm.write(f"paused after {steps_this_run} steps; continue with: ivt train --resume {self.run_dir}")
                return self.run_dir
        if not self.eval_records:
            self.save(best_meta={"selected_on": None})
        return self.run_dir

    def _check_loss(self, mean_loss: float) -> None:
        """Stop at a non-finite loss (see :meth:`_diverged`)."""
        if not math.isfinite(mean_loss):
            self._diverged(f"the loss became {mean_loss}")

    def _check_weights(self) -> None:
        """Stop before validating or saving weights that are no longer finite: a huge step can
        leave a finite loss and weights at inf/nan (one host sync per epoch or pause)."""
        params = [p for module in (self.model, self.loss_fn) for p in module.parameters()]
        if params and not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
            self._diverged("the weights became inf/nan")

    def _diverged(self, what: str) -> None:
        """Raise the user error of a diverged run before anything is saved: the run directory keeps
        the checkpoints it had (the last commit, which ``--resume`` would continue from)."""
        c = self.state
        saved = ("its checkpoints are unchanged" if (self.run_dir / "last.json").is_file()
                 else "no checkpoint was written")
        fp32 = "" if self.amp is None else " or train.precision=fp32"
        raise TrainingDivergedError(
            f"training diverged: {what} by step {c.step} (epoch {max(1, c.epoch + bool(c.batch))}) with "
            f"optim.lr={self.cfg.optim.lr:g}; {lr_advice(self.cfg.optim.lr)}{fp32} and train again; "
            f"{self.run_dir}: {saved}")

    # -- validation and checkpoints ------------------------------------------------------
    def validate(self, epoch: float) -> dict:
        """Retrieval metrics on the validation split (rank 0 embeds the whole split, so the numbers
        do not depend on the number of ranks)."""
        t = self.cfg.train
        live = RetrievalModel(self.model, self.tokenizer, {}, device=self.device, dtype=self.amp)
        images = self.eval_images
        if images is None and self.cfg.model.itm:
            images = split_images(live, self.dataset, self.eval_records)
        emb = embed_split(live, self.dataset, self.eval_records, images=images)
        if not (bool(torch.isfinite(emb.image).all()) and bool(torch.isfinite(emb.text).all())):
            self.model.train()
            self._diverged("the validation embeddings became inf/nan")
        m = split_metrics(emb)
        record = {"kind": "eval", "epoch": epoch, "step": self.state.step, "split": t.eval_split,
                  **{k: round(float(m[k]), 4) for k in METRIC_KEYS}}
        said = ""
        if self.cfg.model.itm:   # how much the matching head counts when re-ranking, chosen here
            w, by_weight = choose_weight_on(live, emb.captions, emb.text_pids, emb.text, images, emb.image_pids,
                                            emb.image)
            self.rerank_weight = w
            record.update(rerank_weight=w, rerank_R1=round(by_weight[w], 4))
            said = f"  (top {CHOOSE_K} re-ranked: R1 {by_weight[w]:.2f} at weight {w:g})"
        self.model.train()
        self.log.write(record, self.state.step)
        tqdm.write(f"epoch {format_epoch(epoch)}: {t.eval_split} R1 {m['R1']:.2f}  R5 {m['R5']:.2f}  "
                   f"mAP {m['mAP']:.2f}{said}")
        return record

    def end_epoch(self, epoch: float, validate: bool | None = None) -> None:
        """Validate when due (once per epoch), then commit ``last`` (and ``best`` if it improved)."""
        c = self.state
        if validate is None:
            validate = self._due(int(epoch)) and c.evaluated_epoch != epoch
        best_meta = None
        if validate and self.dist.is_main:
            record = self.validate(epoch)
            c.evaluated_epoch = epoch
            score = [record["R1"], record["mAP"]]
            if c.best_score is None or score > c.best_score:
                c.best_score, c.best_epoch = score, epoch
                best_meta = {"epoch": epoch, "selected_on": self.cfg.train.eval_split, "metrics": record}
        self.save(best_meta)

    def save(self, best_meta: dict | None = None) -> None:
        """Commit ``last`` weights + resumable state (+ ``best`` when given) in one crash-safe write."""
        if self.dist.is_main:
            c = self.state
            meta = {"epoch": c.epoch, "step": c.step, "text_max_length": self.tokenizer.max_length,
                    "precision": self.precision.name, "precision_reason": self.precision.reason,
                    **({"rerank_weight": self.rerank_weight} if self.rerank_weight is not None else {})}
            files = checkpoint_files("last", self.model, meta)
            if best_meta is not None:
                files.update(checkpoint_files("best", self.model, {**meta, **best_meta}))
            files.update(train_state_files(optimizer=self.optimizer, extra_modules={"loss": self.loss_fn},
                                           state=c))
            commit_files(self.run_dir, files)
        barrier(self.dist)


def train(cfg: Config, resume: bool = False) -> Path:
    """Train (or resume) the run of ``cfg`` in ``cfg.train.out_dir``; returns the run directory."""
    try:
        return Trainer(cfg, resume).fit()
    finally:
        shutdown_distributed()


__all__ = ["Trainer", "train", "format_epoch", "DistInfo"]
