"""The one training loop, on HF Accelerate, shared by every task.

Per stage of a strategy: set what trains (``strategies.configure_stage``), AdamW with
per-group learning rates, warmup + cosine (or one-cycle) schedule, label-smoothed
cross-entropy, validation every epoch, early stopping on the monitored metric, the best
weights kept, and a resumable checkpoint after every epoch. Stages that train only the
head run on cached backbone features.

Determinism: the shuffling of epoch ``e`` of stage ``s`` comes from a generator seeded by
(seed, s, e), augmentation from (seed, epoch, item), and torch's global generator (dropout,
SpecAugment) is reseeded from (seed, s, e) at the start of every epoch (and checkpointed);
so a run killed at any point and resumed ends with the same weights as one that was never
interrupted, and a fit does not depend on what ran before it in the process.

Long file: one class, the loop; its storage and FSDP halves are already in checkpoints.py and
sharding.py, and what is left shares the stage's state from start to end.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset
from tqdm.auto import tqdm

from ..artifacts import (
    load_checkpoint,
    optimizer_from_flat,
)
from ..config import FitConfig, parse_duration
from ..features import length_sorted_batches, sharded_passes, to_device
from ..heads import TransferModel, supervised_contrastive_loss
from ..mixing import batch_mixer
from ..strategies import Stage, Strategy, configure_stage, set_bn_mode
from ..zoo.base import LayerGroup
from .checkpoints import CheckpointMismatch, CheckpointStore, LoopState
from .ema import WeightEma
from .samplers import BucketBatchSampler, EpochSampler, ShardedBatchSampler
from .sharding import FsdpSharding

log = logging.getLogger(__name__)


def warmup_length(total_steps: int, warmup: float, min_steps: int = 0) -> int:
    """Warm-up steps of a stage: ``warmup`` of its steps, at least ``min_steps`` (at most
    half the stage)."""
    return max(int(round(warmup * total_steps)), min(int(min_steps), total_steps // 2))


def make_scheduler(optimizer, kind: str, total_steps: int, warmup: float, min_warmup: int = 0):
    total_steps = max(1, total_steps)
    warm = warmup_length(total_steps, warmup, min_warmup)
    if kind == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=total_steps,
            pct_start=max(warm / total_steps, 1e-3),
            anneal_strategy="cos",
        )

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if kind == "constant":
            return 1.0
        progress = (step - warm) / max(1, total_steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Trainer(CheckpointStore, FsdpSharding):
    """Runs a strategy's stages on a TransferModel.

    ``features(split)`` returns cached ``(features, labels)`` for "train"/"val" and is
    called only for head-only stages (None: a task without cached features, detection,
    trains them on the whole model with the backbone frozen); ``train_set``/``val_set``
    yield ``(input, label)``. A task overrides ``loss`` and ``evaluate_loader``; a loss may
    return a dict of named terms: their sum trains, and each term's epoch mean is logged.
    """

    max_grad_norm: float | None = None  # clip the gradients' norm to this (None: no clipping)

    def __init__(
        self,
        model: nn.Module,
        groups: list[LayerGroup],
        strategy: Strategy,
        cfg: FitConfig,
        *,
        train_set: Dataset,
        val_set: Dataset | None,
        features,
        run_dir: str | Path | None = None,
        accelerator=None,
        collate_fn=None,
        fingerprint: str = "",
        callbacks=(),
        class_weights: torch.Tensor | None = None,
        sample_weights: torch.Tensor | None = None,
        replay=None,
    ):
        from accelerate import Accelerator

        # a TransferModel, or a task's model with the same .backbone / .head (detection's)
        self.model: Any = model
        self.groups = groups
        self.strategy = strategy
        if cfg.monitor == "auto":  # fit resolves it from the training labels (imbalance.plan)
            cfg = cfg.replace(monitor="accuracy")
        self.cfg = cfg
        self.train_set = train_set
        self.val_set = val_set
        self.features = features
        self.run_dir = Path(run_dir) if run_dir else None
        self.collate_fn = collate_fn
        # replay(backbone, dataset, frozen_groups) -> (dataset, collate) | None: the dataset
        # with the frozen first groups' outputs computed once (text encoders), for stages
        # that train only later groups
        self.replay = replay
        self.fingerprint = fingerprint
        self.callbacks = list(callbacks)  # each called with every epoch's row, in order
        if accelerator is None:
            # Accelerate keeps one state per process and refuses another precision later
            # (a notebook's fp32 fit, then a bf16 one; tune and study fit many times): each
            # fit starts that state afresh. The process group (PartialState) stays.
            from accelerate.state import AcceleratorState

            AcceleratorState._reset_state(reset_partial_state=False)
        self.accelerator = accelerator or Accelerator(
            cpu=use_cpu(cfg), mixed_precision=cfg.precision
        )
        self.device = self.accelerator.device
        self.fsdp = self.accelerator.num_processes > 1 and (
            cfg.parallel == "fsdp" or self.accelerator.distributed_type.value == "FSDP"
        )
        if cfg.parallel == "fsdp" and self.accelerator.num_processes == 1:
            log.warning(
                "parallel fsdp: one process, nothing to shard; training as usual "
                "(launch with torchrun / accelerate launch to shard)"
            )
        if self.fsdp and cfg.precision == "fp16":
            raise ValueError(
                "parallel fsdp with precision fp16 is not supported (its loss "
                "scaler is not shard-aware): use --precision bf16 or no"
            )
        self._mesh: Any = None  # FSDP's device mesh, made on first use
        self._live: tuple[TransferModel, list[LayerGroup]] | None = (
            None  # FSDP: (sharded copy of the model, its layer groups) while it trains
        )
        self.num_workers = cfg.num_workers if cfg.num_workers is not None else default_workers()
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        # class imbalance (headstart.imbalance): per-class loss weights, or per-item
        # sampling weights of the training items (the cached features' order is theirs)
        self.class_weights = class_weights.to(self.device) if class_weights is not None else None
        self.sample_weights = sample_weights
        self._stored: dict[str, dict[str, torch.Tensor]] = {}  # without a run directory
        self._estimated = False  # this stage's remaining time has been logged
        self._warm_epochs = 0  # the running stage's warm-up, in whole epochs
        self.budget = parse_duration(cfg.time_budget) if cfg.time_budget else None
        self._started, self._seconds_before = time.perf_counter(), 0.0
        self._tb: Any = None  # the TensorBoard writer, opened with the first epoch
        # names of the parameters some stage trains: checkpoints hold these and the buffers;
        # every other tensor is the built model's, unchanged by training (a feature-extract
        # fit of a 90 MB MiniLM wrote 90 MB twice per head epoch, 6x the fit's own time)
        self._trained: set[str] = set()
        self._fixed_sums: dict[str, tuple[float, float]] = {}
        self._names: set[str] | None = None
        self._ema: WeightEma | None = None  # --ema: the weight average of the running stage
        self._ema_resume: tuple[dict, int] | None = None  # a checkpoint's (shadow, updates)

    # ---------------------------------------------------------------- public
    def run(self, resume: bool = False) -> LoopState:
        state = LoopState()
        self._started = time.perf_counter()
        ckpt = self._checkpoint_dir()
        loaded = load_checkpoint(ckpt) if (resume and ckpt) else None
        if resume and not loaded:  # said, not a silent start from scratch
            log.warning(
                "no checkpoint in %s; starting a new fit", ckpt or "memory: resume needs a run_dir"
            )
        opt_state = None
        if loaded:
            tensors, meta = loaded
            if meta.get("fingerprint") != self.fingerprint:
                raise CheckpointMismatch(
                    f"{ckpt}: this checkpoint belongs to a run with other settings or data; "
                    "resume with the same config and data, or start a new run directory"
                )
            state = LoopState(**meta["loop"])
            weights = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
            self._trained = set(weights) & self._param_names()
            self._check_fixed(meta.get("fixed"), ckpt)
            self._load_weights(weights, ckpt)
            torch.set_rng_state(tensors["rng.torch"])
            shadow = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
            if shadow:
                self._ema_resume = (shadow, int(meta.get("ema_updates", 0)))
            opt_state = (tensors, meta) if meta.get("optimizer") else None
            log.info("resuming from %s: stage %d, epoch %d", ckpt, state.stage, state.epoch)
        self.model.to(self.device)
        if self.cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self._seconds_before = sum(r["seconds"] for r in state.history)  # of a resumed run
        for s in range(state.stage, len(self.strategy.stages)):
            self._run_stage(s, state, opt_state)
            opt_state = None
            state.stage, state.epoch, state.bad_epochs = s + 1, 0, 0
            self._save(state, optimizer=None, scheduler=None)
        self._restore_kept(state)
        if self.accelerator.num_processes > 1:
            self._check_replicas()
        if self._tb is not None:
            self._tb.close()
        return state

    def _check_replicas(self) -> None:
        """Data-parallel: every process must end with the same weights (gradients were
        averaged at each step and every process picked the same best epoch)."""
        total = torch.stack([p.detach().double().sum() for p in self.model.parameters()])
        sums = self.accelerator.gather(total.sum().reshape(1).to(self.device))
        if not bool((sums == sums[0]).all()):
            raise RuntimeError(
                f"data-parallel processes ended with different weights "
                f"(checksums {sums.tolist()}); please report this"
            )
        log.info(
            "data-parallel fit over %d processes (%s%s): identical weights on every process",
            self.accelerator.num_processes,
            self.accelerator.state.distributed_type.value,
            ", FSDP" if self.fsdp else "",
        )

    # ---------------------------------------------------------------- stages
    def _run_stage(self, s: int, state: LoopState, opt_state) -> None:
        stage = self.strategy.stages[s]
        starting = state.epoch == 0 and state.kept is not None
        if starting:  # from what the earlier stages keep (the probe's best epoch, not its last)
            self._restore_kept(state)
        params, summary = configure_stage(
            self.model.backbone, self.model.head, self.groups, stage, self.cfg.weight_decay
        )
        self._trained.update(
            n for n, p in self.model.named_parameters(remove_duplicate=False) if p.requires_grad
        )
        if starting:  # the candidate this stage must beat, with the weights it will train
            assert state.kept is not None  # "starting" is defined by it
            self._store(self._changeable_tensors(), "start", state.kept["where"])
        if len(state.stage_summaries) <= s:
            state.stage_summaries.append(summary)
        module: nn.Module = self.model.head if self._on_features(stage) else self.model
        sharded = self.fsdp and not self._on_features(stage)
        if sharded:  # train a sharded copy; self.model gets its full weights every epoch
            module, params = self._shard(params)
        train_loader, val_loader = self._loaders(stage)
        self._start_ema(stage, state, sharded)
        if str(s) in state.epoch_caps:  # --time-budget chose this stage's epochs
            stage = replace(stage, epochs=state.epoch_caps[str(s)])
        optimizer = torch.optim.AdamW(params, lr=stage.lr, weight_decay=self.cfg.weight_decay)
        raw_optimizer = optimizer
        steps = stage.epochs * len(train_loader)
        scheduler = make_scheduler(
            optimizer, self.cfg.schedule, steps, self.cfg.warmup, self.cfg.warmup_steps
        )
        # early stopping waits for the warm-up to end: on a few-shot set an epoch is one
        # step, and a stage stopped while its rate still climbs has hardly trained
        warm = warmup_length(steps, self.cfg.warmup, self.cfg.warmup_steps)
        self._warm_epochs = math.ceil(warm / max(1, len(train_loader)))
        if opt_state is not None and state.epoch > 0:
            tensors, meta = opt_state
            full = optimizer_from_flat(tensors, meta["optimizer"])
            optimizer.load_state_dict(
                self._shard_optimizer_state(optimizer, full) if sharded else full
            )
            scheduler.load_state_dict(meta["scheduler"])
        if sharded:
            prepared = module
        else:
            prepared, optimizer = self.accelerator.prepare(module, optimizer)
        if state.epoch == 0:  # each stage picks its own best epoch; choose.py compares them
            state.best, state.best_where, state.bad_epochs = None, "", 0
        state.val_items = len(val_loader.dataset) if val_loader is not None else 0
        first_epoch, self._estimated = state.epoch, False
        for epoch in itertools.count(state.epoch):
            if epoch >= stage.epochs:
                break
            t0 = time.perf_counter()
            train_loss = self._train_epoch(
                prepared, stage, s, epoch, train_loader, optimizer, scheduler
            )
            row = {
                "stage": stage.name,
                "epoch": epoch + 1,
                "global_epoch": len(state.history) + 1,
                "train_loss": train_loss,
                **self.loss_terms,
                "train_items": self.items_seen,
                "lr": scheduler.get_last_lr()[-1],
            }
            if sharded:
                self._gather_full(prepared)
            if val_loader is not None:
                row.update(self.evaluate_loader(prepared, val_loader))
            row["seconds"] = time.perf_counter() - t0
            if self.budget and epoch == 0 and not self._on_features(stage):
                cap = self._budget_epochs(s, stage, row["seconds"])
                state.epoch_caps[str(s)] = cap
                if cap < stage.epochs:  # the rest of the schedule, compressed into cap epochs
                    stage = replace(stage, epochs=cap)
                    scheduler = make_scheduler(
                        raw_optimizer,
                        self.cfg.schedule,
                        cap * len(train_loader),
                        self.cfg.warmup,
                        self.cfg.warmup_steps,
                    )
                    for _ in range(len(train_loader)):
                        scheduler.step()
            if epoch + 1 < stage.epochs and epoch == first_epoch:
                sooner = (
                    "; early stopping may end the stage sooner"
                    if (self.cfg.early_stopping and not self._on_features(stage))
                    else ""
                )
                say_time_left(
                    stage.name,
                    row["seconds"] * (stage.epochs - epoch - 1),
                    f"{stage.epochs - epoch - 1} more epoch(s) at "
                    f"{row['seconds']:.1f} s each, validation included{sooner}",
                )
            state.history.append(row)
            state.epoch = epoch + 1
            stop = self._track_best(state, row, stage)
            self._log_epoch(row)
            for callback in self.callbacks:  # may raise to stop the fit (tune's pruning)
                callback(row)
            self._save(state, optimizer, scheduler)
            if stop:
                log.info(
                    "stage %s: early stop after epoch %d (%d epochs without improvement)",
                    stage.name,
                    epoch + 1,
                    state.bad_epochs,
                )
                break
        if sharded:
            self._live = None
            self.model.to(self.device)
        self._settle_stage(s, state, val_loader)
        self.accelerator.free_memory()

    def _budget_epochs(self, s: int, stage: Stage, epoch_seconds: float) -> int:
        """``time_budget``: how many epochs of stage ``s`` fit in what is left of it, after
        its first epoch took ``epoch_seconds``; later stages that train backbone layers get
        their share by their planned epochs."""
        assert self.budget is not None  # called only with a time budget
        elapsed = self._seconds_before + time.perf_counter() - self._started
        later = sum(t.epochs for t in self.strategy.stages[s + 1 :] if not self._on_features(t))
        share = stage.epochs / (stage.epochs + later)
        left = (self.budget - elapsed) * share
        cap = max(1, min(stage.epochs, 1 + int(left // max(epoch_seconds, 1e-9))))
        if cap < stage.epochs:
            log.warning(
                "time budget %s: stage %s runs %d of its %d epochs (%.1f s each, "
                "%s of the budget left for it; the LR schedule is compressed to fit)",
                format_duration(self.budget),
                stage.name,
                cap,
                stage.epochs,
                epoch_seconds,
                format_duration(max(left, 0)),
            )
        else:
            log.info(
                "time budget %s: stage %s fits its %d epochs",
                format_duration(self.budget),
                stage.name,
                stage.epochs,
            )
        return cap

    def _on_features(self, stage: Stage) -> bool:
        """Whether ``stage`` trains the head alone on cached backbone features."""
        return stage.head_only and self.features is not None

    def _loaders(self, stage: Stage):
        cfg = self.cfg
        train: Any
        val: Any
        batches: Sampler
        if self._on_features(stage):
            with sharded_passes():  # every process runs these passes: each computes a share
                x, y = self.features("train")
                val = TensorDataset(*self.features("val")) if self.val_set is not None else None
            train = TensorDataset(x, y)
            workers, collate = 0, None
        else:
            train, val, workers, collate = (
                self.train_set,
                self.val_set,
                self.num_workers,
                self.collate_fn,
            )
            replayed = self._replayed(stage)
            if replayed is not None:
                (train, collate), val = replayed
                workers = 0  # the states are in this process's memory
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        bucket = cfg.length_bucketing and getattr(train, "lengths", None) is not None
        if bucket:
            batches = BucketBatchSampler(
                train.lengths,
                cfg.batch_size,
                cfg.seed,
                rank,
                world,
                drop_last=len(train) > cfg.batch_size * world,
                weights=self.sample_weights,
            )
            train_loader = DataLoader(
                train, batch_sampler=batches, num_workers=workers, collate_fn=collate
            )
        elif world > 1:  # data-parallel: every item once per epoch, same steps everywhere
            batches = ShardedBatchSampler(
                len(train), cfg.batch_size, cfg.seed, rank, world, weights=self.sample_weights
            )
            train_loader = DataLoader(
                train, batch_sampler=batches, num_workers=workers, collate_fn=collate
            )
        else:
            sampler = EpochSampler(len(train), cfg.seed, rank, world, self.sample_weights)
            drop_last = len(sampler) > cfg.batch_size
            train_loader = DataLoader(
                train,
                batch_size=cfg.batch_size,
                sampler=sampler,
                num_workers=workers,
                drop_last=drop_last,
                collate_fn=collate,
            )
        val_loader = None
        if val is not None and len(val):
            if bucket and getattr(val, "lengths", None) is not None:
                val_loader = DataLoader(
                    val,
                    num_workers=workers,
                    collate_fn=collate,
                    batch_sampler=length_sorted_batches(val.lengths, cfg.eval_batch_size),
                )
            else:
                val_loader = DataLoader(
                    val,
                    batch_size=cfg.eval_batch_size,
                    shuffle=False,
                    num_workers=workers,
                    collate_fn=collate,
                )
        return train_loader, val_loader

    def _replayed(self, stage: Stage):
        """((train set, collate), val set) with the stage's frozen first groups computed
        once, or None: the groups all train, adapters sit inside them, the model is shared
        out over processes, a batch mixer changes inputs, or the task cannot replay."""
        frozen = min(stage.trainable_indices(len(self.groups)), default=0)
        if (
            self.replay is None
            or frozen == 0
            or stage.adapters
            or self.accelerator.num_processes > 1
            or self.cfg.mix != "none"
        ):
            return None
        train = self.replay(self.model.backbone, self.train_set, frozen)
        if train is None:
            return None
        val = None
        if self.val_set is not None:
            val = self.replay(self.model.backbone, self.val_set, frozen)
            if val is None:
                return None
            val = val[0]
        log.info(
            "stage %s: the %d frozen layer groups' outputs are computed once, not each step",
            stage.name,
            frozen,
        )
        return train, val

    def _train_epoch(
        self, module, stage: Stage, s: int, epoch: int, loader, optimizer, scheduler
    ) -> float:
        sampler = (
            loader.batch_sampler
            if isinstance(loader.batch_sampler, (BucketBatchSampler, ShardedBatchSampler))
            else loader.sampler
        )
        sampler.set_epoch(s * 100_000 + epoch)
        if hasattr(loader.dataset, "set_epoch"):
            loader.dataset.set_epoch(s * 100_000 + epoch)
        # What the epoch draws from torch's global generator (dropout, SpecAugment masks)
        # depends on (seed, stage, epoch) only, not on what ran before in this process: a
        # fit whose probe features came from the cache (no loader drew a seed) then trains
        # exactly like one that computed them, and a resumed epoch like the original.
        torch.manual_seed(
            int(np.random.SeedSequence([self.cfg.seed, s, epoch, 17]).generate_state(1)[0])
        )
        module.train()
        if not self._on_features(stage):
            model, groups = self._live or (self.model, self.groups)
            set_bn_mode(model.backbone, groups, stage)
        total, count = 0.0, 0
        terms: dict[str, float] = {}  # a named loss's epoch sums
        mixer = None if self._on_features(stage) else batch_mixer(self.cfg, s, epoch)  # --mix
        bar = tqdm(
            loader, desc=f"{stage.name} {epoch + 1}/{stage.epochs}", leave=False, disable=None
        )
        t0, steps, estimate_at = time.perf_counter(), len(loader), None
        if not self._estimated:  # the stage's first epoch in this process: say how long
            estimate_at = min(3, steps)
        for i, (x, y) in enumerate(bar, start=1):
            x, y = self._to_device(x), y.to(self.device)
            if mixer is not None:
                x, mixed_loss = mixer(x, y)
            with self.accelerator.autocast():
                if mixer is not None:
                    loss = mixed_loss(self.loss, module(x))
                elif (
                    self.cfg.contrastive
                    and not self._on_features(stage)
                    and not y.dtype.is_floating_point
                ):
                    logits, feats = module(x, return_features=True)
                    ce = self.loss(logits, y)
                    sup = self.cfg.contrastive * supervised_contrastive_loss(
                        feats, self.item_labels(y)
                    )
                    loss = {**ce, "contrastive": sup} if isinstance(ce, dict) else ce + sup
                else:
                    loss = self.loss(module(x), y)
            if isinstance(loss, dict):  # named terms (detection): their sum trains
                for k, v in loss.items():
                    terms[k] = terms.get(k, 0.0) + float(v.detach()) * len(y)
                loss = sum(loss.values())
            self.accelerator.backward(loss)
            if self.max_grad_norm:
                self.accelerator.clip_grad_norm_(module.parameters(), self.max_grad_norm)
            optimizer.step()
            if self._ema is not None:
                self._ema.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            total += float(loss.detach()) * len(y)
            count += len(y)
            if i == estimate_at:
                self._estimated = True
                per_step = (time.perf_counter() - t0) / i
                left = per_step * ((stage.epochs - epoch) * steps - i)
                say_time_left(
                    stage.name,
                    left,
                    f"{stage.epochs - epoch} epoch(s) of {steps} "
                    f"steps at {per_step:.2f} s per step, validation not counted",
                )
        names = sorted(terms)
        if self.accelerator.num_processes > 1:  # the epoch's loss over every process's items
            sums = self.accelerator.reduce(
                torch.tensor(
                    [total, float(count), *(terms[k] for k in names)],
                    dtype=torch.float64,
                    device=self.device,
                ),
                "sum",
            )
            total, count = float(sums[0]), int(sums[1])
            terms = {k: float(v) for k, v in zip(names, sums[2:])}
        self.items_seen = count
        self.loss_terms = {k: terms[k] / max(count, 1) for k in names}
        return total / max(count, 1)

    def _to_device(self, x):
        return to_device(x, self.device, self.cfg.channels_last)

    def item_labels(self, y: torch.Tensor) -> torch.Tensor:
        """The class labels of a training batch's targets (a loss whose targets carry more,
        as ``--add-classes``' item positions, says how to read them)."""
        return y

    def loss(self, logits: Any, y: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        """Cross-entropy (label-smoothed); binary cross-entropy per class for multi-label
        targets (0/1 rows), with the same smoothing towards 0.5."""
        if y.dtype.is_floating_point:
            eps = self.cfg.label_smoothing
            return nn.functional.binary_cross_entropy_with_logits(
                logits.float(), y * (1 - eps) + 0.5 * eps
            )
        if self.class_weights is not None:
            # each item's smoothed cross-entropy times its own class's weight, over the
            # batch's weights. (CrossEntropyLoss(weight=...) also weighs the smoothing term of
            # each class by that class's weight: with spam weighted 10x, every ham item's
            # target leant a third of the way to spam, and the probe called 1 ham in 4 spam.)
            per_item = nn.functional.cross_entropy(
                logits.float(), y, reduction="none", label_smoothing=self.cfg.label_smoothing
            )
            w = self.class_weights[y]
            return (w * per_item).sum() / w.sum()
        return self.criterion(logits, y)

    @torch.inference_mode()
    def predict_logits(self, module, loader) -> tuple[torch.Tensor, torch.Tensor]:
        was = module.training
        module.eval()
        logits, labels = [], []
        for x, y in loader:
            with self.accelerator.autocast():
                logits.append(module(self._to_device(x)).float().cpu())
            labels.append(y)
        module.train(was)
        return torch.cat(logits), torch.cat(labels)

    def evaluate_loader(self, module, loader) -> dict:
        from sklearn.metrics import f1_score

        logits, y = self.predict_logits(module, loader)
        if y.dtype.is_floating_point:  # multi-label: 0.5 threshold per class
            pred = (logits > 0).float()
            return {
                "val_loss": float(nn.functional.binary_cross_entropy_with_logits(logits, y)),
                "val_accuracy": float((pred == y).all(1).float().mean()),
                "val_macro_f1": float(
                    f1_score(y.numpy(), pred.numpy(), average="macro", zero_division=0)
                ),
            }
        pred = logits.argmax(1)
        return {
            "val_loss": float(nn.functional.cross_entropy(logits, y)),
            "val_accuracy": float((pred == y).float().mean()),
            "val_macro_f1": float(
                f1_score(y.numpy(), pred.numpy(), average="macro", zero_division=0)
            ),
        }

    # ---------------------------------------------------------------- bookkeeping
    def _track_best(self, state: LoopState, row: dict, stage: Stage) -> bool:
        """Update the best weights; True when the stage should stop early."""
        if "val_loss" not in row:
            self._keep_best(state)  # no validation: the latest weights are the result
            return False
        current = [self._score(row), -row["val_loss"]]
        if state.best is None or current > state.best:
            state.best, state.best_where = current, f"{stage.name} epoch {row['epoch']}"
            state.bad_epochs = 0
            self._keep_best(state)
            return False
        state.bad_epochs += 1
        # a head-only stage on cached features costs little per epoch: it runs its whole
        # schedule (stopped while its rate is still near the peak, the probe is unfinished)
        return (
            bool(self.cfg.early_stopping)
            and not self._on_features(stage)
            and state.bad_epochs >= self.cfg.early_stopping
            and row["epoch"] >= self._warm_epochs + self.cfg.early_stopping
        )

    def _score(self, row: dict) -> float:
        """The monitored validation metric of an epoch's row, higher is better."""
        return -row["val_loss"] if self.cfg.monitor == "loss" else row[f"val_{self.cfg.monitor}"]

    def _keep_best(self, state: LoopState) -> None:
        self._store(self._changeable_tensors(), "best", state.best_where)

    def _restore_kept(self, state: LoopState) -> None:
        weights, kept = self._stored_weights("kept"), state.kept
        if weights is not None and kept is not None:
            self._load_weights(weights, f"the kept weights ({kept['where']})")
            state.best_where = kept["where"]

    def _settle_stage(self, s: int, state: LoopState, val_loader) -> None:
        """At a stage's end: the weights the fit keeps so far, by the rule of
        :mod:`headstart.choose`, among the earlier stages' choice, this stage's best epoch
        and (``wise_ft``, after a stage that trained backbone layers from an earlier
        stage's result) mixes of the two; with ``--ema``, also the stage's weight average."""
        from ..choose import Candidate, choose, interpolate

        stage = self.strategy.stages[s]
        if state.best is None:  # no validation: the latest weights are the result
            where = f"{stage.name} epoch {state.epoch} (the last; no validation set)"
            state.kept = Candidate(where, 0.0, 0.0, s).to_dict()
            state.selection = f"kept {where}"
            self._store(self._changeable_tensors(), "kept", where)
            return
        best = Candidate(state.best_where, state.best[0], -state.best[1], order=2 * s + 1)
        averaged = self._ema_candidate(s, stage, val_loader)
        if self.cfg.keep == "last_stage" or (state.kept is None and averaged is None):
            state.kept, state.selection = best.to_dict(), f"kept {best.where}"
            self._store(self._weights("best"), "kept", best.where)
            return
        end = self._weights("best")
        mixes = {}
        if averaged is not None:
            mixes[averaged[0].where] = averaged[1]
        if state.kept is None:  # a first stage: its best epoch against its weight average
            assert averaged is not None
            win, state.selection = choose([best, averaged[0]], state.val_items, self.cfg.monitor)
            log.info("stage %s: %s", stage.name, state.selection)
            weights = end if win is best else averaged[1]
            state.kept = win.to_dict()
            self._load_weights(weights, win.where)
            self._store(weights, "kept", win.where)
            return
        earlier = Candidate(**state.kept)
        candidates = [earlier, best] + ([averaged[0]] if averaged is not None else [])
        # "start", not "kept": a resume after a crash between writing the winner and the
        # checkpoint settles the stage again from the same weights
        start = self._weights("start")
        if self.cfg.wise_ft and not stage.head_only and val_loader is not None:
            for alpha in (0.25, 0.5, 0.75):
                weights = interpolate(start, end, alpha)
                self._load_weights(weights, f"the WiSE-FT mix {alpha:g}")
                row = self.evaluate_loader(self.model, val_loader)
                where, score = f"wise-ft {alpha:g}", self._score(row)
                mixes[where] = weights
                candidates.append(Candidate(where, score, row["val_loss"], order=2 * s + alpha))
                log.info(
                    "%s: validation %s %.4f, loss %.4f",
                    where,
                    self.cfg.monitor,
                    score,
                    row["val_loss"],
                )
        win, state.selection = choose(candidates, state.val_items, self.cfg.monitor)
        if any(w.startswith("wise-ft") for w in mixes):
            state.selection += (
                f" (wise-ft A: the weights A of the way from {earlier.where} to {best.where})"
            )
        log.info("stage %s: %s", stage.name, state.selection)
        weights = start if win is earlier else end if win is best else mixes[win.where]
        if win.where.startswith("wise-ft"):
            win = replace(win, where=f"{win.where} of {earlier.where} -> {best.where}")
        state.kept = win.to_dict()
        self._load_weights(weights, win.where)
        self._store(weights, "kept", win.where)

    def _start_ema(self, stage: Stage, state: LoopState, sharded: bool) -> None:
        """``--ema``: a weight average for a stage that trains backbone layers (from the
        checkpoint's shadow when a resume starts inside the stage)."""
        resume, self._ema_resume, self._ema = self._ema_resume, None, None
        if not self.cfg.ema or stage.head_only:
            return
        if sharded:  # each process holds a shard of the weights, not the whole of them
            log.warning("ema: not kept under FSDP sharding; training without a weight average")
            return
        shadow, updates = resume if (resume is not None and state.epoch > 0) else (None, 0)
        self._ema = WeightEma(self.model, self.cfg.ema, shadow, updates)

    def _ema_candidate(self, s: int, stage: Stage, val_loader):
        """(candidate, weights) of the stage's weight average, scored on validation; None
        without ``--ema`` or validation."""
        from ..choose import Candidate

        ema, self._ema = self._ema, None
        if ema is None or val_loader is None or not ema.updates or self.cfg.keep == "last_stage":
            return None
        weights = {**self._changeable_tensors(), **ema.state()}
        self._load_weights(weights, "the weight average (ema)")
        row = self.evaluate_loader(self.model, val_loader)
        where = f"ema {ema.decay:g} of {stage.name} ({ema.updates} steps)"
        log.info(
            "%s: validation %s %.4f, loss %.4f",
            where,
            self.cfg.monitor,
            self._score(row),
            row["val_loss"],
        )
        return Candidate(where, self._score(row), row["val_loss"], order=2 * s + 0.9), weights

    def _log_epoch(self, row: dict) -> None:
        parts = [
            f"{k} {v:.4f}"
            for k, v in row.items()
            if isinstance(v, float) and k not in ("lr", "seconds")
        ]
        log.info(
            "%s epoch %d: %s (%.1fs)", row["stage"], row["epoch"], ", ".join(parts), row["seconds"]
        )
        if self.run_dir is None or not self.accelerator.is_main_process:
            return
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        for k, v in row.items():
            if isinstance(v, float):
                self._tb.add_scalar(k, v, row["global_epoch"])
        self._tb.flush()


def say_time_left(stage: str, seconds: float, how: str) -> None:
    """Log a stage's estimated remaining time (once it is worth saying: 10 s or more)."""
    if seconds >= 10:
        log.info("stage %s: about %s left (%s)", stage, format_duration(seconds), how)


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def use_cpu(cfg: FitConfig) -> bool:
    """Accelerate's ``cpu`` flag for a fit's ``device`` setting."""
    return cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())


def launched_processes() -> int:
    """How many processes a launcher (torchrun, accelerate launch) started: 1 without one."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


def default_workers() -> int:
    import os

    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ) or 1
    return 0 if cores <= 2 else min(4, cores - 1)
