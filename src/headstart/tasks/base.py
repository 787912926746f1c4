"""The estimator every task shares: fit -> predict -> save -> load, scikit-learn style.

A task subclass says how to read its data and turn it into tensors; building the model
(zoo backbone + new head), the strategy, the training loop, feature caching, metrics and
the run directory live here once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..artifacts import atomic_save_tensors, atomic_write_json, state_dict_tensors
from ..config import FitConfig
from ..features import cache_key, cached_features, compute_features, weights_hash
from ..heads import Head, HeadSpec, TransferModel
from ..metrics import classification_metrics
from ..strategies import build_strategy
from ..train import Trainer, default_workers
from ..zoo import create_backbone
from ..zoo.base import Backbone, PreprocessConfig
from ..zoo.local import RUN_CONFIG, RUN_WEIGHTS, read_run_config

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# Settings that change nothing a checkpoint holds; a resumed run may differ in them.
_RESUME_NEUTRAL = ("num_workers", "device", "feature_cache", "eval_batch_size")


class NotFittedError(RuntimeError):
    pass


class TransferEstimator:
    """Base of the task estimators. ``__init__`` only stores arguments.

    Any :class:`~headstart.config.FitConfig` field can be passed as a keyword; ``config``
    gives a whole FitConfig (keywords override it).
    """

    task = "base"

    def __init__(self, backbone: str | None = None, strategy: str | None = None,
                 config: FitConfig | None = None, run_dir: str | Path | None = None, **params):
        self.backbone = backbone
        self.strategy = strategy
        self.config = config
        self.run_dir = run_dir
        self.params = params

    # ------------------------------------------------------------ task hooks
    def _open_labeled(self, X, y, classes, cfg: FitConfig):  # -> source with .labels/.classes
        raise NotImplementedError

    def _open_unlabeled(self, X):
        raise NotImplementedError

    def _input_spec(self, backbone: Backbone, train_source, cfg: FitConfig) -> PreprocessConfig:
        return backbone.preprocess

    def _dataset(self, source, preprocess: PreprocessConfig, train: bool,
                 cfg: FitConfig) -> Dataset:
        raise NotImplementedError

    # ------------------------------------------------------------ sklearn API
    def get_params(self, deep: bool = True) -> dict:
        return {"backbone": self.backbone, "strategy": self.strategy, "config": self.config,
                "run_dir": self.run_dir, **self.params}

    def set_params(self, **params):
        for key in ("backbone", "strategy", "config", "run_dir"):
            if key in params:
                setattr(self, key, params.pop(key))
        self.params.update(params)
        return self

    def resolved_config(self) -> FitConfig:
        cfg = self.config or FitConfig()
        changes = dict(self.params)
        if self.backbone is not None:
            changes["backbone"] = self.backbone
        if self.strategy is not None:
            changes["strategy"] = self.strategy
        unknown = sorted(set(changes) - set(FitConfig.field_names()))
        if unknown:
            raise TypeError(f"unknown setting(s) {', '.join(unknown)}; see FitConfig fields")
        return cfg.replace(**changes)

    def fit(self, X, y=None, *, validation=None, resume: bool = False):
        """Fit on ``X`` (folder / CSV / arrays + ``y``); hold out a stratified validation
        share unless ``validation`` (same kinds, or ``(X_val, y_val)``) is given."""
        from ..data.images import stratified_split

        cfg = self.resolved_config()
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed)
        source = self._open_labeled(X, y, None, cfg)
        if validation is not None:
            vx, vy = validation if isinstance(validation, tuple) else (validation, None)
            train_src, val_src = source, self._open_labeled(vx, vy, source.classes, cfg)
        else:
            tr, va = stratified_split(source.labels, cfg.val_fraction, cfg.seed)
            train_src, val_src = source.subset(tr), (source.subset(va) if len(va) else None)
        backbone = create_backbone(cfg.backbone, pretrained=True, cut=cfg.cut)
        preprocess = self._input_spec(backbone, train_src, cfg)
        head = Head(backbone.feature_dim, len(source.classes), HeadSpec(cfg.head_hidden,
                                                                        cfg.dropout))
        model = TransferModel(backbone, head)
        groups = backbone.groups()
        strategy = build_strategy(cfg, len(groups))
        log.info("%s on %s: %d train / %d validation items, %d classes, input %s\n%s",
                 cfg.backbone, source.origin, len(train_src), len(val_src) if val_src else 0,
                 len(source.classes), preprocess.input_size, strategy.describe())
        self.model_, self.classes_, self.preprocess_ = model, list(source.classes), preprocess
        self.config_ = cfg
        train_set = self._dataset(train_src, preprocess, True, cfg)
        val_set = self._dataset(val_src, preprocess, False, cfg) if val_src else None
        sources = {"train": train_src, "val": val_src}

        def features(split: str):
            src = sources[split]
            return self._features(src), torch.as_tensor(src.labels)

        fingerprint = hashlib.sha256(json.dumps(
            [{k: v for k, v in cfg.to_dict().items() if k not in _RESUME_NEUTRAL},
             train_src.fingerprint(), val_src.fingerprint() if val_src else None],
            sort_keys=True, default=str).encode()).hexdigest()[:24]
        run_dir = Path(self.run_dir) if self.run_dir else None
        trainer = Trainer(model, groups, strategy, cfg, train_set=train_set, val_set=val_set,
                          features=features, run_dir=run_dir, fingerprint=fingerprint)
        state = trainer.run(resume=resume)
        model.eval()
        self.strategy_ = strategy
        self.history_ = state.history
        self.stages_ = state.stage_summaries
        self.best_ = state.best_where
        self.fit_seconds_ = time.perf_counter() - t0
        self.metrics_ = {"fit_seconds": self.fit_seconds_, "best": state.best_where}
        if val_src is not None:
            self.metrics_["validation"] = self.evaluate(val_src)
        if run_dir is not None:
            self.save(run_dir)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted: call fit() or "
                                 f"{type(self).__name__}.load(run_dir) first")

    def _features(self, source) -> torch.Tensor:
        """Backbone features of ``source`` (eval mode), cached by weights + input + data."""
        cfg = self.config_
        backbone = self.model_.backbone
        device = next(self.model_.parameters()).device
        key = cache_key(task=self.task, arch=backbone.architecture(),
                        weights=weights_hash(backbone), preprocess=self.preprocess_.to_dict(),
                        data=source.fingerprint())
        workers = cfg.num_workers if cfg.num_workers is not None else default_workers()
        return cached_features(key, lambda: compute_features(
            backbone, self._dataset(source, self.preprocess_, False, cfg), cfg.eval_batch_size,
            device, cfg.channels_last, workers, desc=f"features {source.origin}"),
            cfg.feature_cache)

    @torch.inference_mode()
    def predict_proba(self, X) -> np.ndarray:
        self._check_fitted()
        source = self._open_unlabeled(X)
        head = self.model_.head
        head.eval()
        feats = self._features(source).to(next(head.parameters()).device)
        logits = torch.cat([head(chunk) for chunk in feats.split(4096)]) if len(feats) else \
            torch.empty(0, len(self.classes_))
        return torch.softmax(logits.float(), dim=1).cpu().numpy()

    def predict(self, X) -> list[str]:
        proba = self.predict_proba(X)
        return [self.classes_[i] for i in proba.argmax(1)]

    def evaluate(self, X, y=None) -> dict:
        """Accuracy, macro-F1, AUROC, per-class precision/recall, confusion matrix."""
        self._check_fitted()
        source = self._open_labeled(X, y, self.classes_, self.config_)
        proba = self.predict_proba(source)
        return classification_metrics(source.labels, proba, self.classes_)

    def score(self, X, y=None) -> float:
        return self.evaluate(X, y)["accuracy"]

    # ------------------------------------------------------------ artifacts
    def run_config(self) -> dict:
        from importlib.metadata import PackageNotFoundError, version

        self._check_fitted()
        versions = {}
        for pkg in ("headstart", "torch", "timm", "accelerate", "safetensors", "transformers"):
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
            "backbone": {"id": self.config_.backbone, "architecture": backbone.architecture(),
                         "meta": backbone.meta.to_dict(), "feature_dim": backbone.feature_dim},
            "head": {**self.model_.head.spec.to_dict(), "in_features": backbone.feature_dim},
            "preprocess": self.preprocess_.to_dict(),
            "strategy": self.strategy_.to_dict() if hasattr(self, "strategy_") else None,
            "stages": getattr(self, "stages_", []),
            "metrics": getattr(self, "metrics_", {}),
            "fit_config": self.config_.to_dict(),
            "versions": versions,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def save(self, run_dir: str | Path) -> Path:
        """Weights (safetensors) then config.json, each written atomically."""
        run_dir = Path(run_dir)
        atomic_save_tensors(run_dir / RUN_WEIGHTS,
                            state_dict_tensors(self.model_), metadata={"format": "pt"})
        atomic_write_json(run_dir / RUN_CONFIG, self.run_config())
        return run_dir

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "cpu"):
        """A fitted estimator from a run directory; nothing is downloaded."""
        from safetensors.torch import load_file

        run_dir = Path(run_dir)
        config = read_run_config(run_dir)
        if config.get("task") != cls.task:
            raise ValueError(f"{run_dir}: a {config.get('task')!r} model, not {cls.task!r}")
        arch = config["backbone"]["architecture"]
        backbone = create_backbone(arch["id"], pretrained=False, cut=int(arch.get("cut", 0)))
        head_cfg = config["head"]
        head = Head(head_cfg["in_features"], len(config["classes"]),
                    HeadSpec(tuple(head_cfg["hidden"]), head_cfg["dropout"]))
        model = TransferModel(backbone, head)
        model.load_state_dict(load_file(str(run_dir / RUN_WEIGHTS)))
        model.to(device).eval()
        fit_cfg = FitConfig.from_dict(config["fit_config"]) if config.get("fit_config") \
            else FitConfig()
        est = cls(config=fit_cfg, run_dir=run_dir)
        est.model_, est.classes_ = model, list(config["classes"])
        est.preprocess_ = PreprocessConfig.from_dict(config["preprocess"])
        est.config_ = fit_cfg
        est.metrics_ = config.get("metrics", {})
        est.stages_ = config.get("stages", [])
        return est
