"""Text classification (one label or several per text) on any text encoder of the zoo."""

from __future__ import annotations

from collections import OrderedDict
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ..baselines.text import blend_proba
from ..config import TASK_DEFAULTS, FitConfig
from ..data.text import (
    TextDataset,
    TextSource,
    collate_replayed,
    collate_text,
    encode_texts,
    open_text_source,
    replay_frozen,
    table_path,
)
from ..zoo.base import Backbone, TextPreprocess
from ..zoo.hf_text import HFTextBackbone
from .base import TransferEstimator
from .serving import TextServing

# Defaults for text (all other settings: FitConfig's): config.TASK_DEFAULTS.
TEXT_DEFAULTS = TASK_DEFAULTS["text"]


class TextClassifier(TransferEstimator):
    """Fine-tune a pre-trained text encoder for new classes.

    >>> clf = TextClassifier("packaged:minilm-l6", strategy="lp_ft")
    >>> clf.fit("train.csv")          # columns text,label (or JSONL / Parquet / lists + y)
    >>> clf.predict(["free money!!!", "meeting at 3"])
    >>> clf.evaluate("test.csv")["baseline"]   # TF-IDF + logistic regression, same split
    """

    task = "text"
    modality = "text"
    serving_class = TextServing
    defaults = TEXT_DEFAULTS

    def _open_labeled(self, X, y, classes, cfg: FitConfig) -> TextSource:
        return open_text_source(
            X,
            y,
            classes=classes,
            text_column=cfg.text_column,
            label_column=cfg.label_column,
            label_sep=cfg.label_sep,
            group_column=cfg.group_column,
        )

    def _open_unlabeled(self, X) -> TextSource:
        cfg = getattr(self, "config_", None) or self.resolved_config()  # unfitted: suggest
        if isinstance(X, str) and table_path(X, cfg.text_column) is None:
            X = [X]  # one text, not a file
        return open_text_source(
            X,
            classes=getattr(self, "classes_", None),
            text_column=cfg.text_column,
            labeled=False,
        )

    def _input_spec(self, backbone: Backbone, train_source, cfg: FitConfig) -> TextPreprocess:
        assert isinstance(backbone, HFTextBackbone)  # _check_backbone: a text encoder
        own = backbone.preprocess.max_length
        length = min(cfg.max_length or own, getattr(backbone, "max_positions", 512))
        return TextPreprocess(
            max_length=length,
            truncation=cfg.truncation,
            max_chunks=cfg.max_chunks if cfg.truncation == "chunks" else 1,
        )

    def _dataset(
        self,
        source,
        preprocess: TextPreprocess,
        train: bool,
        cfg: FitConfig,
        backbone: Backbone | None = None,
    ) -> TextDataset:
        tokenizer = self._tokenizer(backbone)
        cache = self.__dict__.setdefault("_encoded", OrderedDict())
        key = (source.fingerprint(), preprocess, id(tokenizer), len(tokenizer))
        if key not in cache:  # tokenise each text once per model (train, val, test)
            cache[key] = encode_texts(tokenizer, source.texts, preprocess)
            while len(cache) > 4:
                cache.popitem(last=False)
        return TextDataset(
            source,
            tokenizer,
            preprocess,
            encoded=cache[key],
            train_chunks=cfg.train_chunks if train else 0,
            seed=cfg.seed,
        )

    def _tokenizer(self, backbone: Backbone | None):
        """The tokenizer of ``backbone`` (default: the fitted model's), a text encoder."""
        encoder = backbone or self.model_.backbone
        assert isinstance(encoder, HFTextBackbone)  # _check_backbone: a text encoder
        return encoder.tokenizer

    def _write_exemplar_items(self, source: TextSource, folder: Path) -> list:
        """The texts themselves, in the index."""
        return [
            {"text": t, "class": source.classes[int(c)]}
            for t, c in zip(source.texts, source.labels)
        ]

    def _read_exemplar_items(self, entries: list, folder: Path, classes: list[str]):
        index = {c: i for i, c in enumerate(classes)}
        return TextSource(
            [e["text"] for e in entries],
            np.array([index[e["class"]] for e in entries], dtype=np.int64),
            list(classes),
            f"{folder} (exemplars)",
        )

    def _join_sources(self, a: TextSource, b: TextSource) -> TextSource:
        return TextSource(
            a.texts + b.texts,
            np.concatenate([a.labels, b.labels]).astype(np.int64),
            a.classes,
            f"{a.origin} + {b.origin}",
        )

    def _pad_id(self, backbone: Backbone | None) -> int:
        pad = self._tokenizer(backbone).pad_token_id
        return int(pad) if pad is not None else 0

    def _collate(self, backbone: Backbone | None = None):
        return partial(collate_text, pad_id=self._pad_id(backbone))

    def _replay_frozen(self, backbone: Backbone, dataset, frozen_groups: int):
        pad = self._pad_id(backbone)
        cfg = self.config_
        replayed = replay_frozen(backbone, dataset, frozen_groups, pad, cfg.eval_batch_size)
        if replayed is None:
            return None
        return replayed, partial(collate_replayed, pad_id=pad, depth=replayed.depth)

    def _new_baseline(self, cfg: FitConfig, train_src, balanced: bool, metric: str):
        from ..baselines import TfidfBaseline

        # class-balanced where the network counters imbalance (imbalance.plan), so the
        # comparison is like with like
        return TfidfBaseline(seed=cfg.seed, class_weight="balanced" if balanced else None)

    def _baseline_inputs(self, source: TextSource, featurizer) -> list[str]:
        return source.texts

    def _after_fit(self, train_src: TextSource, val_src, cfg: FitConfig) -> None:
        self.__dict__.pop("joint_", None)  # an earlier fit's, on other settings
        if getattr(self, "baseline_", None) is None:
            return
        from ..baselines import TfidfBaseline

        weight = self.baseline_.class_weight
        if cfg.blend:
            self.metrics_["blend_mode"] = cfg.blend_mode
        if cfg.blend and cfg.blend_mode == "joint":  # early fusion on the trained encoder
            feats = self._features(train_src).float().numpy()
            self.joint_ = TfidfBaseline(seed=cfg.seed, class_weight=weight).fit(
                train_src.texts, train_src.labels, features=feats
            )

    def save(self, run_dir):
        run_dir = super().save(run_dir)
        if getattr(self, "joint_", None) is not None:
            self.joint_.save(run_dir / "joint")
        return run_dir

    @classmethod
    def load(cls, run_dir, device: str = "cpu"):
        from ..baselines import TfidfBaseline

        est = super().load(run_dir, device=device)
        if (Path(run_dir) / "joint" / "tfidf.json").is_file():
            est.joint_ = TfidfBaseline.load(Path(run_dir) / "joint")
        elif est.config_.blend and est.config_.blend_mode == "joint":
            # a run saved before --blend-mode existed blended by the mean
            est.config_ = est.config_.replace(blend_mode="mean")
        return est

    def _blends(self) -> bool:
        return self.config_.blend and getattr(self, "baseline_", None) is not None

    def _joint(self) -> bool:
        """Blends by one logistic regression on TF-IDF + encoder features (``--blend-mode
        joint``), which needs the encoder's features of every text it predicts."""
        return (
            self._blends()
            and self.config_.blend_mode == "joint"
            and getattr(self, "joint_", None) is not None
        )

    def _output_proba(
        self, source: TextSource, proba: np.ndarray, feats: torch.Tensor | None = None
    ) -> np.ndarray:
        if not self._blends() or len(source) == 0:
            return proba
        if self._joint():
            feats = self._features(source) if feats is None else feats
            return self.joint_.predict_proba(source.texts, feats.float().numpy())
        return blend_proba(proba, self._baseline_proba(source))

    def _extra_metrics(self, source: TextSource, metrics: dict, proba: np.ndarray) -> None:
        """``blend``: the mean of the TF-IDF baseline's and the encoder's probabilities
        (unless that is what the estimator predicts); ``encoder``: the encoder alone (when
        the estimator blends, its own metrics are the blend's). The baseline's own metrics
        and the verdict: BaselineMixin._baseline_metrics."""
        baseline = getattr(self, "baseline_", None)
        if baseline is None or len(source) == 0:
            return
        pb = self._baseline_proba(source)
        if self._blends():
            metrics["encoder"] = self._summary(source, proba)
        if not self._blends() or self._joint():
            metrics["blend"] = self._summary(source, blend_proba(proba, pb))
