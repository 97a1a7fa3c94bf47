"""The training loop: MLA pairs, BMM token dropping, identity-aware loss, validation-based best
checkpoint, exact resume, JSONL metrics. ``train(cfg)`` is what ``ivt train`` runs."""
from __future__ import annotations

import json
import random
import time
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from ivt.checkpoint import load_model, save_checkpoint
from ivt.config import Config, ConfigError, save_config
from ivt.data import DataError, load_dataset
from ivt.evaluate.retrieval import embed_split, split_metrics
from ivt.losses import RetrievalLoss
from ivt.model import IVTEncoder, load_official_encoder, model_config
from ivt.model.two_tower import TwoTowerEncoder
from ivt.runtime import autocast, resolve_device, resolve_precision
from ivt.text.tokenizer import Tokenizer
from ivt.data.image_bank import ImageBank
from ivt.train.data import EpochSampler, build_samples, enabled_levels, make_pair_batch
from ivt.train.optim import WarmupCosine, build_optimizer
from ivt.train.state import load_train_state, save_train_state
from ivt.transforms import TrainAugment

RUN_FILES = ("last.safetensors", "best.safetensors", "last.state.json")


def _prepare_run_dir(cfg: Config, resume: bool) -> Path:
    run_dir = Path(cfg.train.out_dir)
    if resume:
        if not (run_dir / "last.state.json").exists():
            raise FileNotFoundError(f"{run_dir}: nothing to resume (no last.state.json)")
    elif any((run_dir / f).exists() for f in RUN_FILES):
        raise FileExistsError(f"{run_dir} already holds a training run; continue it with --resume {run_dir} "
                              f"or choose another train.out_dir (nothing was changed)")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _build_tokenizer(cfg: Config, run_dir: Path, resume: bool, captions: list[str]) -> Tokenizer:
    if resume:
        return Tokenizer.from_file(run_dir, max_length=cfg.data.max_text_len)
    if cfg.data.tokenizer:
        return Tokenizer.from_file(cfg.data.tokenizer, max_length=cfg.data.max_text_len)
    return Tokenizer.train(captions, vocab_size=cfg.data.vocab_size, max_length=cfg.data.max_text_len)


def build_model(cfg: Config, vocab_size: int) -> IVTEncoder:
    """The encoder of a config: a named size with overrides, optionally from official weights."""
    overrides = {k: v for k, v in (("image_size", cfg.model.image_size), ("patch_stride", cfg.model.patch_stride),
                                   ("drop_path", cfg.model.drop_path), ("dropout", cfg.model.dropout))
                 if v is not None}
    config = model_config(cfg.model.size, vocab_size=vocab_size, **overrides)
    if config.max_text_len < cfg.data.max_text_len:
        config = replace(config, max_text_len=cfg.data.max_text_len)
    if cfg.model.init:
        model = load_official_encoder(cfg.model.init, image_size=config.image_size, patch_size=config.patch_size,
                                      patch_stride=config.patch_stride, num_heads=config.num_heads,
                                      drop_path=config.drop_path, dropout=config.dropout)
        if model.config.vocab_size != vocab_size:
            raise ConfigError(f"model.init {cfg.model.init} has a text vocabulary of {model.config.vocab_size} "
                              f"but the tokenizer has {vocab_size}; set data.tokenizer to the checkpoint's vocab.txt")
        return model
    if cfg.model.arch == "two-tower":
        return TwoTowerEncoder(config)
    if cfg.model.arch != "ivt":
        raise ConfigError(f"model.arch must be 'ivt' or 'two-tower', got {cfg.model.arch!r}")
    return IVTEncoder(config)


class _Log:
    """metrics.jsonl (and TensorBoard when it is installed)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"))
        except Exception:  # TensorBoard is optional; any import problem just disables it
            self.tb = None

    def write(self, record: dict, step: int) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    self.tb.add_scalar(f"{record.get('kind', 'train')}/{k}", v, step)


def train(cfg: Config, resume: bool = False) -> Path:
    """Train (or resume) the run of ``cfg`` in ``cfg.train.out_dir``; returns the run directory."""
    t = cfg.train
    if t.eval_every > 0 and t.eval_split == "test":
        raise ConfigError("train.eval_split=test: the best checkpoint is chosen on validation data, never on "
                          "the test split; use val (or train.eval_every=0 to keep only the last checkpoint)")
    device = resolve_device(t.device)
    amp = resolve_precision(t.precision, device)
    levels = enabled_levels(cfg.align)
    dataset = load_dataset(cfg.data.path, cfg.data.format, image_root=cfg.data.image_root)
    train_records = dataset.split("train")
    if not train_records:
        raise DataError(f"{dataset.annotation}: no 'train' split to train on (present: {', '.join(dataset.splits)})")
    eval_records = dataset.split(t.eval_split) if t.eval_every > 0 else []
    if t.eval_every > 0 and not eval_records:
        raise DataError(f"{dataset.annotation}: no '{t.eval_split}' split for choosing the best checkpoint "
                        f"(present: {', '.join(dataset.splits)}); set train.eval_split to another split or "
                        f"train.eval_every=0")
    run_dir = _prepare_run_dir(cfg, resume)
    if t.threads:
        torch.set_num_threads(t.threads)
    torch.manual_seed(t.seed)
    save_config(cfg, run_dir / "config.yaml")

    paths, samples = build_samples(dataset, train_records)
    tokenizer = _build_tokenizer(cfg, run_dir, resume, [s.caption for s in samples])
    if not resume:
        tokenizer.save(run_dir)
    if resume:
        model, _ = load_model(run_dir, "last", "cpu")
    else:
        model = build_model(cfg, tokenizer.vocab_size)
    model.set_token_drop(cfg.mask.ratio, cfg.mask.mode)
    model.to(device).train()
    loss_fn = RetrievalLoss(cfg.loss.name, cfg.loss.temperature).to(device)
    optimizer = build_optimizer(cfg.optim, {"encoder": model, "loss": loss_fn})
    sampler = EpochSampler([s.pid for s in samples], t.batch_size, t.seed, t.sampler, t.k_per_id)
    steps_per_epoch = len(sampler)
    total_steps = steps_per_epoch * t.epochs
    warmup = cfg.optim.warmup_epochs / max(t.epochs, 1)
    schedule = WarmupCosine(optimizer, warmup, cfg.optim.min_lr_ratio)
    augment = TrainAugment(padding=cfg.augment.padding, flip_p=cfg.augment.flip_p, erase_p=cfg.augment.erase_p)
    aug_rng = torch.Generator().manual_seed(t.seed + 1)
    text_rng = random.Random(t.seed + 2)
    scaler = torch.amp.GradScaler("cuda", enabled=amp is torch.float16)

    counters = {"epoch": 0, "batch": 0, "step": 0, "train_seconds": 0.0, "best_score": None, "best_epoch": None}
    if resume:
        counters.update(load_train_state(run_dir, optimizer=optimizer, extra_modules={"loss": loss_fn},
                                         augment_rng=aug_rng, text_rng=text_rng))
    size = tuple(model.config.image_size)
    bank = ImageBank(paths, size, cache=cfg.data.cache_images, threads=max(cfg.data.num_workers, 2))
    eval_images = None
    if eval_records and cfg.data.cache_images:
        eval_images = ImageBank([dataset.image_path(r) for r in eval_records], size).get(range(len(eval_records)))
    log = _Log(run_dir)
    text_meta = {"text_max_length": tokenizer.max_length}
    budget = t.max_minutes * 60 if t.max_minutes else None

    def progress() -> float:
        frac = counters["step"] / max(total_steps, 1)
        return max(frac, counters["train_seconds"] / budget) if budget else frac

    def evaluate(epoch: int) -> None:
        model.eval()
        emb = embed_split(model, tokenizer, dataset, eval_records, device, amp, images=eval_images)
        m = split_metrics(emb)
        model.train()
        score = (m["R1"], m["mAP"])
        record = {"kind": "eval", "epoch": epoch, "step": counters["step"], "split": t.eval_split,
                  **{k: round(float(m[k]), 4) for k in ("R1", "R5", "R10", "mAP", "mINP")}}
        log.write(record, counters["step"])
        tqdm.write(f"epoch {epoch}: {t.eval_split} R1 {m['R1']:.2f}  R5 {m['R5']:.2f}  mAP {m['mAP']:.2f}")
        best = counters["best_score"]
        if best is None or tuple(score) > tuple(best):
            counters["best_score"], counters["best_epoch"] = list(score), epoch
            save_checkpoint(run_dir, "best", model, {"epoch": epoch, "step": counters["step"],
                                                     "selected_on": t.eval_split, "metrics": record, **text_meta})

    def save_last(epoch: int) -> None:
        save_checkpoint(run_dir, "last", model, {"epoch": epoch, "step": counters["step"], **text_meta})
        save_train_state(run_dir, optimizer=optimizer, extra_modules={"loss": loss_fn}, augment_rng=aug_rng,
                         text_rng=text_rng, counters=counters)

    out_of_time = paused = False
    steps_this_run = 0
    while counters["epoch"] < t.epochs and not out_of_time:
        epoch = counters["epoch"]
        batches = sampler.epoch(epoch)
        bar = tqdm(total=len(batches), initial=counters["batch"], desc=f"epoch {epoch + 1}/{t.epochs}",
                   leave=False, disable=None)
        window_start, window_pairs = time.perf_counter(), 0
        for index in batches[counters["batch"]:]:
            started = time.perf_counter()
            lr = schedule.set_progress(progress())
            pairs = make_pair_batch([samples[i] for i in index], bank, levels, text_rng)
            images = augment(pairs.images, generator=aug_rng).to(device, non_blocking=True)
            ids, mask = tokenizer(pairs.texts)
            labels = pairs.labels.to(device)
            with autocast(device, amp):
                img = model.encode_image(images)
                txt = model.encode_text(ids.to(device), mask.to(device))
            loss = loss_fn(img, txt, labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.optim.clip_grad:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(loss_fn.parameters()),
                                               cfg.optim.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at step {counters['step']}; "
                                         f"lower optim.lr or use precision=fp32")
            counters["step"] += 1
            counters["batch"] += 1
            counters["train_seconds"] += time.perf_counter() - started
            steps_this_run += 1
            window_pairs += len(labels)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if counters["step"] % t.log_every == 0:
                now = time.perf_counter()
                log.write({"kind": "train", "epoch": epoch, "step": counters["step"], "loss": round(loss.item(), 5),
                           "lr": lr, "pairs_per_s": round(window_pairs / (now - window_start), 2)}, counters["step"])
                window_start, window_pairs = now, 0
            if budget and counters["train_seconds"] >= budget:
                out_of_time = True
                break
            if t.stop_after_steps and steps_this_run >= t.stop_after_steps:
                paused = True
                break
        bar.close()
        if paused:
            if counters["batch"] == len(batches):
                counters["epoch"], counters["batch"] = epoch + 1, 0
            save_last(counters["epoch"])
            tqdm.write(f"paused after {steps_this_run} steps; continue with: ivt train --resume {run_dir}")
            return run_dir
        if not out_of_time:
            counters["epoch"], counters["batch"] = epoch + 1, 0
        finished = counters["epoch"]
        if eval_records and (out_of_time or finished % t.eval_every == 0 or finished == t.epochs):
            evaluate(finished if not out_of_time else epoch + counters["batch"] / len(batches))
        save_last(counters["epoch"])
    if not eval_records:
        save_checkpoint(run_dir, "best", model, {"epoch": counters["epoch"], "step": counters["step"],
                                                 "selected_on": None, **text_meta})
    if out_of_time:
        tqdm.write(f"time budget of {t.max_minutes} min reached after {counters['step']} steps")
    return run_dir
