"""The estimator every task shares: fit -> predict -> save -> load, scikit-learn style.

A task subclass says how to read its data and turn it into tensors; building the model
(zoo backbone + new head), the strategy, the training loop, feature caching, metrics and
the run directory live here once.

Long file: the estimator contract (fit, features, calibration, evaluate, save, load) that
every task subclasses; each part reads the fitted state the others write.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..artifacts import (
    atomic_save_tensors,
    atomic_write_bytes,
    atomic_write_json,
    state_dict_tensors,
)
from ..config import FitConfig, settings_over
from ..features import cache_key, cached_features, compute_features, concat_datasets, weights_hash
from ..heads import Head, HeadSpec, TransferModel
from ..imbalance import loop_weights, plan
from ..metrics import classification_metrics, multilabel_metrics
from ..strategies import build_strategy
from ..train import Trainer, default_workers, use_cpu
from ..zoo import create_backbone, rebuild_backbone
from ..zoo.base import Backbone, InputSpec, ZooError, preprocess_from_dict
from ..zoo.local import RUN_CONFIG, RUN_WEIGHTS, read_run_config
from .baselined import BaselineMixin

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# Settings that change nothing a checkpoint holds; a resumed run may differ in them.
_RESUME_NEUTRAL = (
    "num_workers",
    "device",
    "feature_cache",
    "eval_batch_size",
    "calibrate",
)  # calibration comes after the loop


class NotFittedError(RuntimeError):
    pass


class _AtCuts(torch.nn.Module):
    """``base`` whose forward returns the features of every cut point, concatenated: one
    pass serves all the cut variants of a backbone."""

    def __init__(self, base, cuts: list[int]):
        super().__init__()
        self.base = base
        self.cuts = list(cuts)
        self.feature_dim = 0

    def forward(self, x):
        return torch.cat(self.base.features_at_cuts(x, self.cuts), 1)


def resolve_config(est) -> FitConfig:
    """An estimator's settings: its ``config`` (default: the task's ``defaults``), then its
    ``backbone``, ``strategy`` and keyword settings on top."""
    cfg = est.config or FitConfig.from_dict(dict(est.defaults))
    changes = dict(est.params)
    if est.backbone is not None:
        changes["backbone"] = est.backbone
    if est.strategy is not None:
        changes["strategy"] = est.strategy
    unknown = sorted(set(changes) - set(FitConfig.field_names()))
    if unknown:
        raise TypeError(f"unknown setting(s) {', '.join(unknown)}; see FitConfig fields")
    return cfg.replace(**settings_over(changes))


def fit_fingerprint(cfg: FitConfig, train_src, val_src) -> str:
    """What a checkpoint must have been written with for a fit to resume from it: the
    settings (but the ``_RESUME_NEUTRAL`` ones) and the training and validation data."""
    return hashlib.sha256(
        json.dumps(
            [
                {k: v for k, v in cfg.to_dict().items() if k not in _RESUME_NEUTRAL},
                train_src.fingerprint(),
                val_src.fingerprint() if val_src else None,
            ],
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()[:24]


def tta_views(est, tta: str | None) -> list:
    """The test-time views of ``est`` that ``tta`` names ([] for None / ``none``); a clear
    error where its task has none (text, audio, detection)."""
    if tta in (None, "none"):
        return []
    kept = getattr(est, "_kept_baseline", None)
    if kept is not None and kept():
        raise ValueError(
            f"tta={tta}: this run kept its classic baseline "
            f"({est.baseline_.name}), which has no test-time views (drop --tta)"
        )
    hook = getattr(est, "_tta_views", None)
    views = hook(tta) if hook is not None else []
    if not views:
        raise ValueError(
            f"tta={tta}: test-time augmentation is for image models; this is a "
            f"{getattr(est, 'task', type(est).__name__)} model (drop --tta)"
        )
    return views


def _data_summary(source, train_src, val_src, cfg: FitConfig) -> dict:
    """How many items, per class, and patients a fit read (for the run's model card)."""
    labels = np.asarray(source.labels)
    out: dict = {
        "items": len(source),
        "train": len(train_src),
        "validation": len(val_src) if val_src is not None else 0,
    }
    if labels.ndim == 1:
        counts = np.bincount(labels, minlength=len(source.classes))
        out["per_class"] = {str(c): int(n) for c, n in zip(source.classes, counts)}
    groups = getattr(source, "groups", None)
    if groups is not None:
        out["groups"] = len(set(str(g) for g in groups))
        out["group_column"] = cfg.group_column
    return out


def refuse_pool(task: str, unlabeled, sample_weight) -> None:
    """A clear error for ``fit``'s classification extras given to a task without them."""
    for name, value in (("unlabeled", unlabeled), ("sample_weight", sample_weight)):
        if value is not None:
            raise ValueError(
                f"{name}= is for image, text and audio classification; --task {task} cannot take it"
            )


def _with_item_weights(weights: dict, sample_weight, train_idx, n: int) -> dict:
    """The loop's keywords with ``sample_weight`` (one per item of the data) folded into
    the sampler's per-item weights of the training part."""
    w = np.asarray(sample_weight, dtype=np.float64).reshape(-1)
    if len(w) != n or not np.all(np.isfinite(w)) or (w < 0).any() or not w.sum() > 0:
        raise ValueError(
            f"sample_weight: give {n} finite weights >= 0 (one per item), not all 0; got {len(w)}"
        )
    item = torch.as_tensor(w[np.asarray(train_idx)], dtype=torch.float32)
    drawn = weights.get("sample_weights")
    return {**weights, "sample_weights": item if drawn is None else drawn * item}


def _head_only_extension(cfg: FitConfig, ext) -> FitConfig:
    """``--add-classes`` with ``strategy=auto`` on a parent that stored its feature statistics
    extends head-only on the parent's own backbone, so the statistics replay the old classes
    and no old feature drifts (Fashion-MNIST 5+5 from an lp_ft parent, two seeds: better
    overall, old classes +5.8 / +2.8 points over an lp_ft extension; docs/results.md)."""
    from ..feature_replay import STATS_FILE

    if cfg.strategy != "auto" or not cfg.feature_replay:
        return cfg
    if not (Path(ext.parent) / STATS_FILE).is_file():
        return cfg
    log.info(
        "add_classes: strategy auto extends head-only (feature_extract) on %s's backbone: its "
        "stored feature statistics replay the old classes; --strategy lp_ft trains the backbone "
        "too (more new-class accuracy, more forgetting)",
        ext.parent,
    )
    return cfg.replace(strategy="feature_extract")


class TransferEstimator(BaselineMixin):
    """Base of the task estimators. ``__init__`` only stores arguments.

    Any :class:`~headstart.config.FitConfig` field can be passed as a keyword; ``config``
    gives a whole FitConfig (keywords override it).
    """

    task = "base"
    modality: str | None = None  # what the task's backbones read: image, text or audio
    defaults: dict = {}  # the task's own FitConfig defaults (text: MiniLM, its LRs, ...)
    augments: tuple[str, ...] = ("none", "light", "strong")  # the --augment its data takes
    mixes = False  # whether --mix (MixUp / CutMix of the training batches) applies
    preprocess_: InputSpec  # fitted: the input the model was trained on
    fit_seconds_: float | None
    best_: Any  # where the kept weights come from (a detector: its best epoch's row)
    data_origin_: str | None
    fingerprint_: str | None

    def __init__(
        self,
        backbone: str | None = None,
        strategy: str | None = None,
        config: FitConfig | None = None,
        run_dir: str | Path | None = None,
        **params,
    ):
        self.backbone = backbone
        self.strategy = strategy
        self.config = config
        self.run_dir = run_dir
        self.params = params

    def _check_backbone(self, backbone: Backbone) -> None:
        """A clear error for a backbone of another modality than the task's data (an image
        task given a text encoder, ...), before anything reads data with it."""
        got = backbone.meta.modality
        if self.modality and got != self.modality:

            def a(word):
                return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"

            raise ZooError(
                f"{backbone.id} is {a(got)} model; --task {self.task} needs "
                f"{a(self.modality)} backbone (`headstart models --modality "
                f"{self.modality}`)"
            )

    # ------------------------------------------------------------ task hooks
    def _open_labeled(self, X, y, classes, cfg: FitConfig):  # -> source with .labels/.classes
        raise NotImplementedError

    def _open_unlabeled(self, X):
        raise NotImplementedError

    def _input_spec(self, backbone: Backbone, train_source, cfg: FitConfig) -> InputSpec:
        return backbone.preprocess

    def _dataset(
        self, source, preprocess: Any, train: bool, cfg: FitConfig, backbone: Backbone | None = None
    ) -> Dataset:
        """``backbone``: the one the items are for (default: the fitted model's)."""
        raise NotImplementedError

    def _collate(self, backbone: Backbone | None = None):
        """Batches of variable-size items (texts) need their own collate."""
        return None

    def _replay_frozen(self, backbone: Backbone, dataset, frozen_groups: int):
        """``(dataset, collate)`` whose items carry the outputs of ``backbone``'s first
        ``frozen_groups`` layer groups, computed once for a stage that keeps them frozen;
        None (the default): the frozen groups run with every batch."""
        return None

    def _check_augment(self, cfg: FitConfig) -> None:
        """A clear error for an augmentation the task's data cannot take."""
        if cfg.augment not in self.augments:
            raise ValueError(
                f"augment={cfg.augment} is for image classification; --task "
                f"{self.task} takes {' | '.join(self.augments)}"
            )
        if cfg.mix != "none" and not self.mixes:
            raise ValueError(
                f"mix={cfg.mix} mixes image batches; --task {self.task} cannot take it (mix=none)"
            )

    def _tta_views(self, tta: str) -> list:
        """The input specs of the test-time views ``tta`` names, the first one the
        evaluation's own (image: centre, mirror image, corner crops); [] where the task has
        none."""
        return []

    def _after_fit(self, train_src, val_src, cfg: FitConfig) -> None:
        """Task extras once the model and the baseline are trained (text: the joint
        TF-IDF + encoder model of --blend-mode joint)."""

    def _extra_metrics(self, source, metrics: dict, proba: np.ndarray) -> None:
        """Task extras reported beside the metrics on ``source`` (``proba``: the
        network's own probabilities)."""

    def trainer(self, *args, **kwargs) -> Trainer:
        """The training loop of this task's fit (speech recognition: CTC loss and error
        rates, after checking the transcripts fit the clips)."""
        return Trainer(*args, **kwargs)

    @staticmethod
    def _new_head(backbone: Backbone, n_out: int, spec: HeadSpec):
        """The new layers put on ``backbone`` (classification: a linear or MLP head)."""
        return Head(backbone.feature_dim, n_out, spec)

    @staticmethod
    def _new_model(backbone: Backbone, head) -> TransferModel:
        return TransferModel(backbone, head)

    # ------------------------------------------------------------ sklearn API
    def get_params(self, deep: bool = True) -> dict:
        return {
            "backbone": self.backbone,
            "strategy": self.strategy,
            "config": self.config,
            "run_dir": self.run_dir,
            **self.params,
        }

    def set_params(self, **params):
        for key in ("backbone", "strategy", "config", "run_dir"):
            if key in params:
                setattr(self, key, params.pop(key))
        self.params.update(params)
        return self

    def resolved_config(self) -> FitConfig:
        return resolve_config(self)

    # ------------------------------------------------- data and features, a public service
    # rank, advise, study and tune read data and run frozen passes through these methods;
    # the underscored ones they call are the hooks each task overrides.
    def read_labeled(self, X, y=None, classes=None, cfg: FitConfig | None = None):
        """The labelled items of ``X`` (folder / CSV / arrays with ``y``): a source with
        ``.labels``, ``.classes``, ``.subset(indices)`` and ``.fingerprint()``."""
        return self._open_labeled(X, y, classes, cfg or self.resolved_config())

    def read_unlabeled(self, X):
        """Items to predict on or to choose from (``suggest``'s pool): a folder, a CSV
        with a path column, a table of texts, a list of paths or texts, arrays; labels,
        where the data has them, are ignored. Works before ``fit`` too (the settings are
        then the estimator's own)."""
        return self._open_unlabeled(X)

    def split(self, X, y=None, validation=None, cfg: FitConfig | None = None):
        """``(all labelled items, training part, validation part or None)`` as ``fit``
        splits them; ``X`` may be a source that :meth:`read_labeled` returned."""
        return self._split(X, y, validation, cfg or self.resolved_config())

    def input_spec(self, backbone: Backbone, train_src, cfg: FitConfig | None = None):
        """The input ``fit`` would give ``backbone`` on ``train_src`` (image size, text
        length, clip length); a clear error where the backbone does not suit the task."""
        self._check_backbone(backbone)
        return self._input_spec(backbone, train_src, cfg or self.resolved_config())

    def frozen_features(
        self, base: Backbone, variants: dict, preprocess, parts: list, cfg: FitConfig | None = None
    ) -> dict:
        """``{name: [features of each part]}``: the frozen passes of ``variants`` (name ->
        ``base`` or a cut of it) over each source in ``parts``, through the on-disk
        feature cache that ``fit`` shares."""
        return self._parts_features(
            base, variants, preprocess, parts, cfg or self.resolved_config()
        )

    def fit(
        self,
        X,
        y=None,
        *,
        validation=None,
        resume: bool = False,
        callbacks=(),
        unlabeled=None,
        sample_weight=None,
    ):
        """Fit on ``X`` (folder / CSV / arrays + ``y``); hold out a stratified validation
        share unless ``validation`` (same kinds, or ``(X_val, y_val)``) is given.

        ``callbacks``: functions called with each epoch's row (stage, epoch, global_epoch,
        train_loss, val_loss, val_accuracy, ...); an exception they raise ends the fit.
        ``unlabeled``: a pool of unlabelled items (as ``read_unlabeled`` reads them, or
        ``(X_pool, y_pool)`` whose labels only score the pseudo-labels): self-training on
        top of the strategy, kept only where it is at least as good on validation
        (:mod:`headstart.semi`; ``metrics_["semi"]`` says what it did).
        ``sample_weight``: one weight per item of ``X``; the training loop draws items in
        proportion to it (times the class-balancing weights, if any)."""
        if unlabeled is not None:
            from ..semi import self_train

            if self.resolved_config().add_classes:
                raise ValueError(
                    "unlabeled= (--unlabeled) and add_classes=True (--add-classes) do not "
                    "combine yet: add the classes first, then self-train the extended run"
                )

            return self_train(
                self, X, y, unlabeled, validation=validation, resume=resume, callbacks=callbacks
            )
        cfg = self.resolved_config()
        self._check_augment(cfg)
        if cfg.add_classes and cfg.baseline:  # it would see the old classes in exemplars alone
            log.info("add_classes: no classic baseline; the extended network predicts")
            cfg = cfg.replace(baseline=False, blend=False)
        t0 = time.perf_counter()
        self.__dict__.pop("_encoded", None)  # tokenised texts of an earlier fit's tokenizer
        torch.manual_seed(cfg.seed)
        ext, train_idx = None, None  # --add-classes: what this fit adds to its parent run
        if cfg.add_classes:
            from ..incremental import extend_data

            if sample_weight is not None:
                raise ValueError(
                    "sample_weight= and add_classes=True do not combine: the new data is "
                    "joined with the run's exemplars, whose weights are the sampler's own"
                )
            ext, (source, train_src, val_src) = extend_data(self, X, y, validation, cfg)
            if ext.replayed and cfg.imbalance == "auto":  # balanced replay at any ratio
                cfg = cfg.replace(imbalance="sample")
            cfg = _head_only_extension(cfg, ext)
        else:
            source, train_src, val_src, train_idx = self._split_at(X, y, validation, cfg)
        backbone = create_backbone(cfg.backbone, pretrained=True, cut=cfg.cut)
        self._check_backbone(backbone)
        groups = backbone.groups()
        if cfg.strategy == "lora":
            backbone.add_lora(
                {
                    "r": cfg.lora_r,
                    "alpha": cfg.lora_alpha,
                    "dropout": cfg.lora_dropout,
                    "targets": [t.strip() for t in cfg.lora_targets.split(",") if t.strip()],
                }
            )
        preprocess = self._input_spec(backbone, train_src, cfg)
        head = self._new_head(backbone, len(source.classes), HeadSpec(cfg.head_hidden, cfg.dropout))
        if cfg.keep_head:
            self._reuse_head(head, cfg.backbone, list(source.classes))
        if ext is not None:
            from ..incremental import init_head

            init_head(head, backbone.source_head(), len(ext.old_classes), ext.parent)
        model = self._new_model(backbone, head)
        steps = -(-len(train_src) // cfg.batch_size)
        strategy = build_strategy(cfg, len(groups), steps_per_epoch=steps)
        log.info(
            "%s on %s: %d train / %d validation items, %d classes, input %s\n%s",
            cfg.backbone,
            source.origin,
            len(train_src),
            len(val_src) if val_src else 0,
            len(source.classes),
            preprocess.input_size,
            strategy.describe(),
        )
        self.model_, self.classes_, self.preprocess_ = model, list(source.classes), preprocess
        self.config_ = cfg
        self.data_origin_ = str(source.origin)
        self.data_summary_ = _data_summary(source, train_src, val_src, cfg)
        self.multi_label_ = bool(source.labels.ndim == 2)
        synthetic, train_labels = None, train_src.labels  # --feature-replay: (feats, labels)
        if ext is not None:
            from ..feature_replay import replay_for

            synthetic = replay_for(ext, cfg, strategy, backbone, preprocess)
            if synthetic is not None:
                train_labels = np.concatenate([train_labels, synthetic[1]])
                if cfg.imbalance == "auto":  # as the exemplars' replay: balanced at any ratio
                    cfg = cfg.replace(imbalance="sample")
        balance = plan(cfg, train_labels, list(source.classes))
        (log.warning if balance.imbalanced else log.info)("%s", balance.message())
        weights = loop_weights(balance, train_labels)
        if sample_weight is not None:
            weights = _with_item_weights(weights, sample_weight, train_idx, len(source))
        train_set = self._dataset(train_src, preprocess, True, cfg)
        val_set = self._dataset(val_src, preprocess, False, cfg) if val_src else None
        parts = [p for p in (train_src, val_src) if p is not None]
        make_trainer, extra = self.trainer, {}
        if ext is not None:  # the old model's outputs on the training items, then LwF
            from ..incremental import DistillTrainer, IndexedItems, indexed_labels, old_logits

            first = self._parts_features(backbone, {0: backbone}, preprocess, parts, cfg)[0][0]
            for t in [*backbone.parameters(), *backbone.buffers()]:  # the pass may leave
                t.data = t.data.clone()  # inference tensors that a training stage refuses
            if synthetic is not None:  # the old model's outputs on them: distilled too
                first = torch.cat([first, synthetic[0]])
            make_trainer = DistillTrainer
            extra = {"targets": old_logits(backbone.source_head(), first), "ext": ext}
            train_set = IndexedItems(train_set)

        def features(split: str):
            # one frozen pass reads both parts; the second call finds its part cached
            i = 0 if split == "train" else 1
            feats = self._parts_features(
                self.model_.backbone, {0: self.model_.backbone}, self.preprocess_, parts, cfg
            )[0]
            if ext is not None and i == 0:  # each item's position rides with its label
                if synthetic is not None:  # after the items, as their targets are
                    return torch.cat([feats[0], synthetic[0]]), indexed_labels(train_labels)
                return feats[i], indexed_labels(parts[i].labels)
            return feats[i], torch.as_tensor(parts[i].labels)

        fingerprint = fit_fingerprint(cfg, train_src, val_src)
        run_dir = Path(self.run_dir) if self.run_dir else None
        self.fingerprint_ = fingerprint  # saved in config.json: a resume knows it is done
        if resume and self._load_finished(run_dir, strategy, cfg):
            return self
        trainer = make_trainer(
            model,
            groups,
            strategy,
            cfg.replace(monitor=balance.monitor),
            train_set=train_set,
            val_set=val_set,
            features=features,
            run_dir=run_dir,
            fingerprint=fingerprint,
            collate_fn=self._collate(),
            replay=self._replay_frozen,
            callbacks=callbacks,
            **weights,
            **extra,
        )
        state = trainer.run(resume=resume)
        model.eval()
        self.strategy_ = strategy
        self.history_ = state.history
        self.stages_ = state.stage_summaries
        self.best_ = state.best_where
        self.fit_seconds_ = time.perf_counter() - t0
        self.selection_ = state.selection
        self.metrics_ = {
            "fit_seconds": self.fit_seconds_,
            "best": state.best_where,
            "selection": state.selection,
            "imbalance": balance.to_dict(),
        }
        if cfg.time_budget:  # what the budget let each stage that trains the backbone run
            self.metrics_["time_budget"] = {
                "budget": cfg.time_budget,
                "epochs": {strategy.stages[int(k)].name: v for k, v in state.epoch_caps.items()},
            }
        if ext is not None and cfg.align_new:
            from ..incremental import align_new_rows

            ext.align = align_new_rows(self.model_.head, len(ext.old_classes))
            log.info("add_classes: new rows' weights aligned (x %.3f)", ext.align)
        if ext is not None and cfg.balance_new and val_src is not None and len(val_src):
            from ..incremental import balancing_offset, lower_new_rows

            n_old = len(ext.old_classes)
            logits = self._head_logits(self._features(val_src)).numpy()
            ext.offset, before, after = balancing_offset(logits, val_src.labels, n_old)
            lower_new_rows(self.model_.head, n_old, ext.offset)
            log.info(
                "add_classes: new classes' logits lowered by %.2f (validation class-balanced "
                "NLL %.4f -> %.4f on %d items)",
                ext.offset,
                before,
                after,
                len(val_src),
            )
        self.added_classes_ = ext.to_dict() if ext is not None else None
        self._keep_exemplars(train_src, cfg)
        self._keep_feature_stats(train_src, cfg, ext, synthetic)
        self._calibrate(val_src, cfg)
        self._fit_baseline(train_src, cfg, balance)
        self._after_fit(train_src, val_src, cfg)
        self._choose_winner(val_src, cfg, balance)
        self._choose_operating_point(val_src, cfg)
        if val_src is not None:
            self.metrics_["validation"] = self.evaluate(val_src)
        self.is_main_process_ = trainer.accelerator.is_main_process
        if run_dir is not None and self.is_main_process_:  # one writer in a parallel run
            self.save(run_dir)
        return self

    def _keep_exemplars(self, train_src, cfg: FitConfig) -> None:
        """Up to ``exemplars`` training items per class, for ``save`` to store (the replay
        of a later ``--add-classes``); none for multi-label data."""
        from ..incremental import pick_exemplars

        picked = pick_exemplars(train_src.labels, cfg.exemplars, cfg.seed)
        self._exemplar_src = train_src.subset(picked) if len(picked) else None

    def _keep_feature_stats(self, train_src, cfg: FitConfig, ext=None, synthetic=None) -> None:
        """Per-class statistics of the training items' backbone features, for ``save`` to
        store (a later ``--add-classes``' feature replay): free where the features are
        cached (head-only strategies), one pass of the fitted backbone otherwise. An
        extension that replayed its parent's statistics keeps them for the old classes."""
        from ..feature_replay import backbone_fingerprint, carry_parent_classes, class_statistics

        self._feature_stats = None
        if not cfg.feature_stats or self.multi_label_ or len(train_src) < 2:
            return
        labels = np.asarray(train_src.labels)
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            return  # sequences (transcripts): no classes to summarise
        fingerprint = backbone_fingerprint(self.model_.backbone, self.preprocess_)
        stats = class_statistics(self._features(train_src), labels, self.classes_, fingerprint)
        if stats is not None and ext is not None and synthetic is not None:
            stats = carry_parent_classes(stats, synthetic[2], ext.old_classes)
        self._feature_stats = stats

    def _write_exemplar_items(self, source, folder: Path) -> list | None:
        """Store ``source``'s items in ``folder``; their entries for the index (images: a
        file each; text: the texts). None: the task stores none."""
        return None

    def _read_exemplar_items(self, entries: list, folder: Path, classes: list[str]):
        """The labelled source (over ``classes``) of stored exemplar ``entries``."""
        raise ValueError(f"{folder}: --task {self.task} cannot read stored exemplars")

    def _data_classes(self, X, y, cfg: FitConfig) -> list[str]:
        """The class names of labelled data ``X`` (``--add-classes``: which are new)."""
        return list(self._open_labeled(X, y, None, cfg).classes)

    def _join_sources(self, a, b):
        """One source of ``a``'s items then ``b``'s (same classes)."""
        raise ValueError(f"--task {self.task} cannot join stored exemplars to its data")

    def _calibrate(self, val_src, cfg: FitConfig) -> None:
        """Temperature scaling, once training is over: the head's ``temperature`` (1 while
        it trained) fitted on the validation part's logits by NLL; ``metrics_["calibration"]``
        says what it did, or why not."""
        from ..calibration import before_after, temperature_or_reason

        head = self.model_.head
        if not isinstance(getattr(head, "temperature", None), torch.Tensor):
            return  # a head without a temperature (speech recognition's CTC head)
        head.temperature.fill_(1.0)
        reason = (
            "multi-label: each class has its own sigmoid"
            if self.multi_label_
            else "calibrate=False"
            if not cfg.calibrate
            else "no validation part"
            if val_src is None or not len(val_src)
            else None
        )
        if reason is None:
            logits = self._head_logits(self._features(val_src)).double().numpy()
            labels = np.asarray(val_src.labels)
            t, reason = temperature_or_reason(logits, labels)
        if reason:
            self.metrics_["calibration"] = {"temperature": 1.0, "reason": reason}
            log.info("calibration: none, temperature 1 (%s)", reason)
            return
        head.temperature.fill_(t)
        c = before_after(logits, labels, t)
        self.metrics_["calibration"] = {**c, "fitted_on": "validation"}
        log.info(
            "calibration: temperature %.3f fitted on %d validation items; NLL %.4f -> "
            "%.4f, ECE %.4f -> %.4f",
            t,
            c["n"],
            c["nll_before"],
            c["nll_after"],
            c["ece_before"],
            c["ece_after"],
        )

    def _positive(self) -> int | None:
        """The positive class's position for clinical metrics (two classes: the second,
        or ``positive_class``); None for multi-label or more classes without one."""
        from ..clinical import positive_index

        if getattr(self, "multi_label_", False):
            return None
        return positive_index(self.classes_, self.config_.positive_class)

    def _choose_operating_point(self, val_src, cfg: FitConfig) -> None:
        """``operating_point`` (``sensitivity=0.95``, ``youden``, ...): the threshold on the
        positive class's probability, chosen on the validation part's predictions of the
        kept model; ``predict`` and serving apply it (``operating_point_``)."""
        from ..clinical import choose_threshold

        self.operating_point_ = None
        if cfg.operating_point is None:
            return
        pos = self._positive()
        if pos is None:
            raise ValueError(
                f"operating_point={cfg.operating_point}: needs two classes or, for "
                f"{len(self.classes_)} classes, --positive-class (one-vs-rest)"
            )
        rule = cfg.operating_point.strip().lower()
        if val_src is None or not len(val_src):
            if not rule.startswith("threshold="):
                raise ValueError(
                    f"operating_point={cfg.operating_point}: chosen on validation, and this "
                    "fit has none (val_fraction > 0 or a validation set)"
                )
            y, score = np.zeros(0), np.zeros(0)
        else:
            y = np.asarray(val_src.labels) == pos
            score = self.predict_proba(val_src)[:, pos]
        op = choose_threshold(y, score, cfg.operating_point)
        self.operating_point_ = {
            "positive": self.classes_[pos],
            "positive_index": pos,
            **op,
        }
        log.info(
            "operating point %s: %s when p(%s) >= %.4f (validation sensitivity %.3f, "
            "specificity %.3f on %d items)",
            op["rule"],
            self.classes_[pos],
            self.classes_[pos],
            op["threshold"],
            op["validation"]["sensitivity"],
            op["validation"]["specificity"],
            op["n_validation"],
        )

    def _clinical_metrics(self, source, metrics: dict, proba: np.ndarray) -> None:
        """``metrics["clinical"]``: sensitivity, specificity, PPV, NPV, AUROC, AUPRC with
        95% bootstrap intervals (patients resampled when the source has groups) at the
        run's operating point (else 0.5), for two classes or one-vs-rest."""
        from ..clinical import clinical_metrics

        pos = self._positive()
        labels = np.asarray(source.labels)
        if pos is None or labels.ndim != 1 or not len(labels):
            return
        op = getattr(self, "operating_point_", None)
        threshold = op["threshold"] if op else 0.5
        c = clinical_metrics(
            labels == pos,
            np.asarray(proba)[:, pos],
            threshold,
            getattr(source, "groups", None),
            seed=self.config_.seed,
        )
        c["positive"] = self.classes_[pos]
        c["operating_point"] = (
            {k: op[k] for k in ("rule", "threshold", "validation")} if op else None
        )
        metrics["clinical"] = c

    def _thresholded(self, proba: np.ndarray) -> np.ndarray:
        """Class indices: the positive class where its probability reaches the operating
        point's threshold, else the most probable other class (argmax without one)."""
        op = getattr(self, "operating_point_", None)
        if not op or not len(proba):
            return np.asarray(proba).argmax(1)
        pos = op["positive_index"]
        others = np.asarray(proba, dtype=np.float64).copy()
        others[:, pos] = -np.inf
        return np.where(proba[:, pos] >= op["threshold"], pos, others.argmax(1))

    @staticmethod
    def _reuse_head(head: Head, parent: str, classes: list[str]) -> None:
        """Chained transfer: initialise ``head`` from the parent run's head."""
        from safetensors.torch import load_file

        from ..zoo.local import is_run_dir

        if not is_run_dir(parent):
            raise ValueError(f"keep_head needs a run directory as backbone, not {parent!r}")
        config = read_run_config(parent)
        if list(config["classes"]) != classes:
            raise ValueError(
                f"keep_head: {parent} predicts {config['classes']}, this data has "
                f"{classes}; the head can only be kept for the same classes "
                "(drop keep_head for a new head)"
            )
        state = load_file(str(Path(parent) / RUN_WEIGHTS))
        own = {k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")}
        own.pop("temperature", None)  # the parent's calibration: this head trains at T = 1
        try:
            head.load_state_dict(own)
        except RuntimeError as exc:
            raise ValueError(
                f"keep_head: {parent}'s head has another shape (hidden sizes "
                f"{config['head'].get('hidden')}); use the same head_hidden"
            ) from exc
        log.info("chained transfer: head initialised from %s", parent)

    def _load_finished(self, run_dir: Path | None, strategy, cfg: FitConfig) -> bool:
        """Resuming a finished run (its checkpoint has every stage done and its config.json
        was saved by this same fit: same fingerprint) does nothing, as a study skips its
        finished runs: this estimator becomes the saved one, and no file is written."""
        if run_dir is None:
            return False
        try:
            meta = json.loads((run_dir / "checkpoints" / "last" / "state.json").read_text())
            saved = read_run_config(run_dir)
        except (OSError, ValueError, ZooError):
            return False
        loop = meta.get("loop") or {}
        if not (
            meta.get("fingerprint") == saved.get("fingerprint") == self.fingerprint_
            and loop.get("stage", 0) >= len(strategy.stages)
        ):
            return False  # a fit to do or to complete (killed while saving), or refused
        device = "cpu" if use_cpu(cfg) else "cuda" if cfg.device == "auto" else cfg.device
        done = type(self).load(run_dir, device=device)
        self.__dict__.update(
            {k: v for k, v in vars(done).items() if k.endswith("_") and not k.startswith("_")}
        )
        self.config_, self.strategy_ = cfg, strategy  # cfg: the same but for _RESUME_NEUTRAL
        self.history_, self.stages_ = loop["history"], loop["stage_summaries"]
        self.best_, self.fit_seconds_ = loop["best_where"], self.metrics_.get("fit_seconds")
        self.selection_ = loop.get("selection", "")
        self.is_main_process_ = int(os.environ.get("RANK", "0")) == 0
        log.info("%s: run already finished; nothing to do", run_dir)
        return True

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted: call fit() or "
                f"{type(self).__name__}.load(run_dir) first"
            )

    def _split(self, X, y, validation, cfg: FitConfig):
        """(all labeled data, train part, validation part or None), as ``fit`` splits it."""
        return self._split_at(X, y, validation, cfg)[:3]

    def _split_at(self, X, y, validation, cfg: FitConfig):
        """``_split``'s parts, then the positions in ``X`` of the training part's items."""
        from ..data.splits import stratified_split

        source = self._open_labeled(X, y, None, cfg)
        if validation is not None:
            vx, vy = validation if isinstance(validation, tuple) else (validation, None)
            val = self._open_labeled(vx, vy, source.classes, cfg)
            return source, source, val, np.arange(len(source))
        strata = source.labels.argmax(1) if source.labels.ndim == 2 else source.labels
        tr, va = stratified_split(
            strata, cfg.val_fraction, cfg.seed, getattr(source, "groups", None)
        )
        return source, source.subset(tr), (source.subset(va) if len(va) else None), tr

    def _features(self, source) -> torch.Tensor:
        """Backbone features of ``source`` (eval mode), cached by weights + input + data."""
        return self._backbone_features(self.model_.backbone, self.preprocess_, source, self.config_)

    def _backbone_features(
        self, backbone: Backbone, preprocess, source, cfg: FitConfig
    ) -> torch.Tensor:
        """What ``_features`` computes, for any backbone: one part of ``_parts_features``
        (the keys ``rank`` and ``fit`` cache their parts under)."""
        return self._parts_features(backbone, {0: backbone}, preprocess, [source], cfg)[0][0]

    def _feature_key(
        self, backbone: Backbone, preprocess, source, weights: str | None = None
    ) -> str:
        """``weights``: ``weights_hash(backbone)``, when the caller has it already."""
        return cache_key(
            task=self.task,
            arch=backbone.architecture(),
            weights=weights or weights_hash(backbone),
            preprocess=preprocess.to_dict(),
            data=source.fingerprint(),
        )

    def _parts_features(
        self, base: Backbone, variants: dict, preprocess, parts: list, cfg: FitConfig
    ) -> dict:
        """``{name: [features of each part]}`` for ``variants`` (name -> a backbone made
        from ``base``: itself or a cut of it), each part cached under the key ``_features``
        gives it. The uncached ones come from one pass over the parts together (one
        BatchNorm fold, one loader, no small last batch per part), shared by the cut points
        where the family allows it (``features_at_cuts``)."""
        out: dict = {name: [] for name in variants}
        shared = hasattr(base, "features_at_cuts") and len(variants) > 1
        computed: dict = {}  # (name, part index) -> features of the passes run

        def compute(name, i):
            # one pass over part i and the parts after it (the ones before came from cache)
            if (name, i) not in computed:
                rest = parts[i:]
                if shared:
                    feats = self._compute_features(
                        _AtCuts(base, [b.cut for b in variants.values()]),
                        base,
                        preprocess,
                        rest,
                        cfg,
                    )
                    per = dict(
                        zip(variants, feats.split([b.feature_dim for b in variants.values()], 1))
                    )
                else:
                    per = {
                        name: self._compute_features(
                            variants[name], variants[name], preprocess, rest, cfg
                        )
                    }
                for n, f in per.items():
                    for j, chunk in enumerate(f.split([len(p) for p in rest]), start=i):
                        computed[(n, j)] = chunk.contiguous()
            return computed[(name, i)]

        for name, backbone in variants.items():
            weights = weights_hash(backbone)
            for i, part in enumerate(parts):
                pieces = getattr(part, "pieces", None)
                if pieces is not None:  # rows of other sources (self-training): their caches
                    out[name].append(self._pieces_features(backbone, preprocess, pieces, cfg))
                    continue
                key = self._feature_key(backbone, preprocess, part, weights)
                out[name].append(
                    cached_features(key, lambda n=name, i=i: compute(n, i), cfg.feature_cache)
                )
        return out

    def _pieces_features(self, backbone: Backbone, preprocess, pieces, cfg) -> torch.Tensor:
        """Features of a source made of rows of others (``pieces``: ``(source, positions or
        None for all)``): each source's features, cached whole, then the rows taken."""
        feats = []
        for src, rows in pieces:
            f = self._parts_features(backbone, {0: backbone}, preprocess, [src], cfg)[0][0]
            feats.append(f if rows is None else f[torch.as_tensor(rows, dtype=torch.long)])
        return torch.cat(feats)

    def _compute_features(
        self, network, backbone: Backbone, preprocess, source, cfg: FitConfig
    ) -> torch.Tensor:
        """One frozen pass of ``network`` (``backbone`` or a module around it) over
        ``source``, read as ``backbone`` reads its inputs. ``source`` may be a list of
        sources, read in one pass: their features come back concatenated in order."""
        sources = list(source) if isinstance(source, (list, tuple)) else [source]
        workers = cfg.num_workers if cfg.num_workers is not None else default_workers()
        device = next(backbone.parameters()).device
        return compute_features(
            network,
            concat_datasets([self._dataset(s, preprocess, False, cfg, backbone) for s in sources]),
            cfg.eval_batch_size,
            device,
            cfg.channels_last,
            workers,
            desc=f"features {sources[0].origin}",
            collate_fn=self._collate(backbone),
            bucketing=cfg.length_bucketing,
        )

    def predict_proba(self, X, tta: str | None = None) -> np.ndarray:
        """``tta``: average the probabilities over test-time views (images: ``flip`` =
        the evaluation crop and its mirror image, ``flip+crops`` = also the four corner
        crops); None or ``none``: the evaluation crop alone."""
        self._check_fitted()
        views = tta_views(self, tta)
        source = self._open_unlabeled(X)
        if self._kept_baseline():  # the run kept its classic baseline: no network pass
            return self._baseline_proba(source)
        feats = self._features(source)
        proba = self._head_proba(feats)
        if views:
            proba = self._views_proba(source, views, proba)
        return self._output_proba(source, proba, feats)

    def _views_proba(self, source, views: list, first: np.ndarray) -> np.ndarray:
        """The mean of the head's probabilities over ``views`` (input specs; the first one
        ``preprocess_``, whose probabilities ``first`` are), each view's features computed
        and cached like the evaluation's."""
        out = np.asarray(first, dtype=np.float64).copy()
        for pre in views[1:]:
            feats = self._backbone_features(self.model_.backbone, pre, source, self.config_)
            out += self._head_proba(feats)
        return (out / len(views)).astype(np.float32)

    def _output_proba(
        self, source, proba: np.ndarray, feats: torch.Tensor | None = None
    ) -> np.ndarray:
        """What the estimator predicts, from its network's ``proba`` (text: may blend in
        the TF-IDF baseline); ``feats``: the backbone features ``proba`` came from, when the
        caller has them (else an override that needs them looks them up)."""
        return proba

    @torch.inference_mode()
    def _head_logits(self, feats: torch.Tensor) -> torch.Tensor:
        """The head's logits (float32, CPU) from backbone features: divided by its
        temperature, as every prediction is."""
        head = self.model_.head
        head.eval()
        feats = feats.to(next(head.parameters()).device)
        logits = (
            torch.cat([head(chunk) for chunk in feats.split(4096)])
            if len(feats)
            else torch.empty(0, len(self.classes_))
        )
        return logits.float().cpu()

    def _head_proba(self, feats: torch.Tensor, logits: torch.Tensor | None = None) -> np.ndarray:
        """The head's probabilities from backbone features (or from their ``logits``)."""
        logits = self._head_logits(feats) if logits is None else logits
        if getattr(self, "multi_label_", False):
            return torch.sigmoid(logits).numpy()
        return torch.softmax(logits, dim=1).numpy()

    def predict(self, X) -> list:
        """One class per item; for a multi-label model, the list of classes >= 0.5."""
        proba = self.predict_proba(X)
        if getattr(self, "multi_label_", False):
            return [[c for c, p in zip(self.classes_, row) if p >= 0.5] for row in proba]
        return [self.classes_[i] for i in self._thresholded(proba)]

    def evaluate(self, X, y=None, tta: str | None = None) -> dict:
        """Accuracy, macro-F1, AUROC, NLL (``log_loss``), ECE, reliability bins, per-class
        precision/recall, confusion matrix; ``calibration``: the network's own NLL and ECE
        before (T = 1) and after its temperature. ``tta``: of the probabilities averaged
        over test-time views (see :meth:`predict_proba`; then no ``calibration``, and
        ``tta`` names the views)."""
        self._check_fitted()
        views = tta_views(self, tta)
        source = self._open_labeled(X, y, self.classes_, self.config_)
        if getattr(self, "multi_label_", False) and source.labels.ndim == 1:
            source = source.subset(np.arange(len(source)))  # a copy, labels as 0/1 rows
            source.labels = np.eye(len(self.classes_), dtype=np.float32)[source.labels]
        self._baseline_memo: dict = {}  # one source's baseline is read more than once
        try:
            feats = self._features(source)
            logits = self._head_logits(feats)
            own = self._head_proba(feats, logits)
            if views:
                own = self._views_proba(source, views, own)
            transfer = self._output_proba(source, own, feats)
            kept = self._baseline_proba(source) if self._kept_baseline() else transfer
            fn = multilabel_metrics if source.labels.ndim == 2 else classification_metrics
            metrics = fn(source.labels, kept, self.classes_)
            if source.labels.ndim == 1 and not self._kept_baseline():
                calibration = None if views else self._calibration_metrics(logits, source.labels)
                if calibration is not None:
                    metrics["calibration"] = calibration
            self._extra_metrics(source, metrics, own)
            self._clinical_metrics(source, metrics, kept)
            added = getattr(self, "added_classes_", None)
            if added and source.labels.ndim == 1:
                from ..incremental import split_metrics

                n_old = len(added["old_classes"])
                metrics["add_classes"] = split_metrics(source.labels, kept, n_old, self.classes_)
            self._baseline_metrics(source, metrics, transfer)
        finally:
            del self._baseline_memo
        if views:
            metrics["tta"] = {"views": [getattr(p, "view", "centre") for p in views]}
        return metrics

    def _temperature(self) -> float | None:
        """The head's fitted temperature; None for a head without one (CTC) or a
        multi-label model."""
        t = getattr(self.model_.head, "temperature", None)
        if not isinstance(t, torch.Tensor) or getattr(self, "multi_label_", False):
            return None
        return float(t)

    def _calibration_metrics(self, logits: torch.Tensor, labels) -> dict | None:
        """NLL and ECE of the head's probabilities before (T = 1) and after its temperature
        (``logits``: the calibrated ones)."""
        from ..calibration import before_after

        t = self._temperature()
        if t is None or not len(logits):
            return None
        out = before_after(logits.double().numpy() * t, labels, t)
        if t == 1.0:
            fitted = getattr(self, "metrics_", {}).get("calibration")
            reason = fitted.get("reason") if fitted else "the run has no fitted temperature"
            if reason:
                out["reason"] = reason
        return out

    def score(self, X, y=None) -> float:
        return self.evaluate(X, y)["accuracy"]

    # ------------------------------------------------------------ artifacts
    def run_config(self) -> dict:
        from importlib.metadata import PackageNotFoundError, version

        self._check_fitted()
        versions = {}
        for pkg in (
            "headstart",
            "torch",
            "timm",
            "accelerate",
            "safetensors",
            "transformers",
            "peft",
            "scikit-learn",
        ):
            try:
                versions[pkg] = version(pkg)
            except PackageNotFoundError:
                pass
        backbone = self.model_.backbone
        return {
            "format": "headstart-run",
            "format_version": FORMAT_VERSION,
            "task": self.task,
            "classes": self.classes_,
            "multi_label": getattr(self, "multi_label_", False),
            "adapter": backbone.lora,
            "backbone": {
                "id": self.config_.backbone,
                "architecture": backbone.architecture(),
                "meta": backbone.meta.to_dict(),
                "feature_dim": backbone.feature_dim,
            },
            "head": {**self.model_.head.spec.to_dict(), "in_features": backbone.feature_dim},
            "preprocess": self.preprocess_.to_dict(),
            "strategy": self.strategy_.to_dict() if hasattr(self, "strategy_") else None,
            "stages": getattr(self, "stages_", []),
            "metrics": getattr(self, "metrics_", {}),
            "data": {
                "origin": getattr(self, "data_origin_", None),
                **(getattr(self, "data_summary_", None) or {}),
            },
            "fingerprint": getattr(self, "fingerprint_", None),  # of the fit's settings + data
            "winner": getattr(self, "winner_", "transfer"),  # what predicts: network or baseline
            # the decision threshold chosen on validation (clinical), or None
            "operating_point": getattr(self, "operating_point_", None),
            # --add-classes: the parent run, old and new classes, replay, distillation
            "add_classes": getattr(self, "added_classes_", None),
            "exemplars": getattr(self, "exemplars_", None),  # stored in exemplars/
            "feature_stats": getattr(self, "feature_stats_", None),  # feature_stats.safetensors
            "fit_config": self.config_.to_dict(),
            "versions": versions,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def save(self, run_dir: str | Path) -> Path:
        """Weights (safetensors) then config.json, each written atomically."""
        run_dir = Path(run_dir)
        backbone = self.model_.backbone
        assets = backbone.architecture().get("assets")
        if assets:
            backbone.save_assets(run_dir / assets)
        if backbone.lora:
            self._save_adapter(run_dir / "adapter", backbone.lora)
        atomic_save_tensors(
            run_dir / RUN_WEIGHTS, state_dict_tensors(self.model_), metadata={"format": "pt"}
        )
        self._save_baseline(run_dir)
        from ..incremental import write_exemplars

        self.exemplars_ = write_exemplars(self, getattr(self, "_exemplar_src", None), run_dir)
        from ..feature_replay import write_feature_stats

        self.feature_stats_ = write_feature_stats(getattr(self, "_feature_stats", None), run_dir)
        config = self.run_config()
        atomic_write_json(run_dir / RUN_CONFIG, config)
        from ..report.model_card import render_model_card

        atomic_write_bytes(run_dir / "model_card.md", render_model_card(config).encode())
        return run_dir

    def _save_adapter(self, folder: Path, lora: dict) -> None:
        """The LoRA adapter in PEFT's own format (``PeftModel.from_pretrained`` reads it
        onto the source model), and the new head beside it."""
        from peft import LoraConfig

        backbone = self.model_.backbone
        tensors = {
            f"base_model.model.{k.removeprefix('model.').replace('.default', '')}": v
            for k, v in state_dict_tensors(backbone).items()
            if "lora_" in k
        }
        config = LoraConfig(
            r=lora["r"],
            lora_alpha=lora["alpha"],
            lora_dropout=lora["dropout"],
            target_modules=lora["targets"],
            bias="none",
            base_model_name_or_path=self.config_.backbone,
        )
        atomic_save_tensors(
            folder / "adapter_model.safetensors", tensors, metadata={"format": "pt"}
        )
        atomic_write_json(
            folder / "adapter_config.json",
            json.loads(
                json.dumps(
                    config.to_dict(), default=lambda v: sorted(v) if isinstance(v, set) else str(v)
                )
            ),
        )
        atomic_save_tensors(folder / "head.safetensors", state_dict_tensors(self.model_.head))

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "cpu"):
        """A fitted estimator from a run directory; nothing is downloaded."""
        from safetensors.torch import load_file

        run_dir = Path(run_dir)
        config = read_run_config(run_dir)
        if config.get("task") != cls.task:
            raise ValueError(f"{run_dir}: a {config.get('task')!r} model, not {cls.task!r}")
        arch = config["backbone"]["architecture"]
        backbone = rebuild_backbone(arch, run_dir)
        if config.get("adapter"):
            backbone.add_lora(config["adapter"])
        head_cfg = config["head"]
        head = cls._new_head(
            backbone,
            len(config["classes"]),
            HeadSpec(tuple(head_cfg["hidden"]), head_cfg["dropout"]),
        )
        model = cls._new_model(backbone, head)
        model.load_state_dict(load_file(str(run_dir / RUN_WEIGHTS)))
        model.to(device).eval()
        fit_cfg = (
            FitConfig.from_dict(config["fit_config"]) if config.get("fit_config") else FitConfig()
        )
        est = cls(config=fit_cfg, run_dir=run_dir)
        est.model_, est.classes_ = model, list(config["classes"])
        est.preprocess_ = preprocess_from_dict(config["preprocess"])
        est.multi_label_ = bool(config.get("multi_label", False))
        est.config_ = fit_cfg
        est.metrics_ = config.get("metrics", {})
        est.data_origin_ = (config.get("data") or {}).get("origin")
        est.data_summary_ = {k: v for k, v in (config.get("data") or {}).items() if k != "origin"}
        est.stages_ = config.get("stages", [])
        est.fingerprint_ = config.get("fingerprint")
        est.operating_point_ = config.get("operating_point")
        est.added_classes_ = config.get("add_classes")
        est.exemplars_ = config.get("exemplars")
        if est.exemplars_:  # a save elsewhere copies them
            from ..incremental import read_exemplars

            est._exemplar_src = read_exemplars(est, run_dir, est.classes_)
        est.feature_stats_ = config.get("feature_stats")
        if est.feature_stats_:  # a save elsewhere copies them
            from ..feature_replay import read_feature_stats

            est._feature_stats = read_feature_stats(run_dir)
        est._load_baseline(run_dir, config)
        return est
