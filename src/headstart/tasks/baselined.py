"""The classic baseline every classification estimator fits beside its network: fitting it
on the training part, scoring it, the verdict against transfer, and ``--strategy auto``'s
choice between the two (a mixin of :class:`~headstart.tasks.base.TransferEstimator`).

A task says what its baseline is (``_new_baseline``) and how its items reach the baseline's
featurizer (``_baseline_item``: a PIL image, a waveform; text reads the texts themselves);
the rest is here once.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..config import FitConfig

log = logging.getLogger(__name__)


def _score(labels: np.ndarray, proba: np.ndarray, metric: str) -> float:
    from ..baselines.classic import score_predictions

    return score_predictions(np.asarray(labels), np.asarray(proba).argmax(1), metric)


def _metric(balance) -> str:
    """What the baseline is chosen and compared by: the fit's monitored metric (loss:
    accuracy, which a classifier without calibrated probabilities can be ranked by)."""
    return balance.monitor if balance.monitor in ("accuracy", "macro_f1") else "accuracy"


def _nll(labels: np.ndarray, proba: np.ndarray) -> float:
    """Mean cross-entropy of single-label probabilities (clipped at 1e-7, as a k-NN's
    hard 0/1 rows need)."""
    p = np.asarray(proba, dtype=np.float64)[np.arange(len(labels)), np.asarray(labels)]
    return float(-np.mean(np.log(np.clip(p, 1e-7, 1.0))))


def baseline_only(cls, cfg, train_src):
    """An estimator of class ``cls`` holding only the classic baseline fitted on
    ``train_src`` (``study`` and ``advise`` weigh transfer against it; no network)."""
    from ..imbalance import plan

    est = cls(config=cfg)
    est.config_, est.classes_, est.metrics_ = cfg, list(train_src.classes), {}
    est.multi_label_ = False
    est._fit_baseline(
        train_src, cfg.replace(baseline=True), plan(cfg, train_src.labels, list(train_src.classes))
    )
    if getattr(est, "baseline_", None) is None:
        raise ValueError(f"--task {est.task} has no classic baseline")
    return est


def baseline_cv(cls, cfg, source, folds: int = 5) -> tuple[str, float]:
    """(name, cross-validated accuracy) of the task's classic baseline on ``source``:
    stratified folds, as ``rank``'s probes are scored (``advise`` puts the two side by
    side on the same items)."""
    from ..data.splits import stratified_folds

    y = np.asarray(source.labels)
    k = int(min(folds, np.bincount(y)[np.bincount(y) > 0].min()))
    if k < 2:
        raise ValueError("cross-validation needs at least 2 items of every class")
    scores, name = [], ""
    for tr, te in stratified_folds(y, k, cfg.seed, getattr(source, "groups", None)):
        est = baseline_only(cls, cfg, source.subset(tr))
        name = est.baseline_.name
        scores.append(_score(y[te], est._baseline_proba(source.subset(te)), "accuracy"))
    # the name of the last fold's choice; the classic grid may choose per fold
    return name, float(np.mean(scores))


class BaselineMixin:
    """What ``fit``, ``evaluate``, ``predict_proba``, ``save`` and ``load`` do with the
    classic baseline (``baseline_``) and the kept model (``winner_``)."""

    # what the estimator that mixes this in (TransferEstimator) has
    task: str
    classes_: list[str]
    config_: FitConfig
    metrics_: dict[str, Any]
    _features: Callable[..., Any]  # (source) -> features
    _head_proba: Callable[..., np.ndarray]  # (features) -> the head's probabilities
    _output_proba: Callable[..., np.ndarray]  # (source, head probabilities) -> the output's

    # ------------------------------------------------------------ task hooks
    def _new_baseline(self, cfg, train_src, balanced: bool, metric: str):
        """The task's unfitted classic baseline; None: the task has none."""
        return None

    def _baseline_item(self, source, i: int, featurizer):
        """Item ``i`` of ``source`` as ``featurizer`` reads it (a PIL image; a waveform at
        the featurizer's rate)."""
        raise NotImplementedError

    def _baseline_inputs(self, source, featurizer) -> object:
        """What the baseline's ``fit`` / ``predict_proba`` take for ``source``: one vector
        per item (text: the texts)."""
        if not len(source):
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack(
            [featurizer(self._baseline_item(source, i, featurizer)) for i in range(len(source))]
        )

    # ------------------------------------------------------------ fitting
    def _fit_baseline(self, train_src, cfg, balance) -> None:
        """Fit the classic baseline on the training part (the validation part stays
        unseen by it, as by the network's weights)."""
        self.__dict__.pop("baseline_", None)
        self.winner_ = "transfer"
        if not cfg.baseline:
            return
        if train_src.labels.ndim == 2 and self.task != "text":
            self.metrics_["baseline_skipped"] = "multi-label: no classic baseline for it yet"
            return
        baseline = self._new_baseline(cfg, train_src, balance.method != "none", _metric(balance))
        if baseline is None:
            return
        featurizers = getattr(baseline, "featurizers", None)
        if featurizers is None:  # TF-IDF reads the texts
            baseline.fit(self._baseline_inputs(train_src, None), train_src.labels)
        else:
            baseline.fit(
                [self._baseline_inputs(train_src, f) for f in featurizers],
                train_src.labels,
                n_classes=len(self.classes_),
                groups=getattr(train_src, "groups", None),
            )
        self.baseline_ = baseline
        self.metrics_["baseline_name"] = baseline.name
        self.metrics_["baseline_fit"] = baseline.summary()

    def _choose_winner(self, val_src, cfg, balance) -> None:
        """``--strategy auto``: the network and the classic baseline compete on the
        validation part by the rule that picks among a fit's epochs (:func:`choose.choose`):
        the monitored metric, where differences within the set's noise are ties that the
        lower validation loss decides; exact ties keep the network (calibrated
        probabilities, an ONNX export). The network's score is the epoch it was selected
        by, so the comparison leans to transfer."""
        from ..choose import Candidate, choose

        if cfg.strategy != "auto" or getattr(self, "baseline_", None) is None:
            return
        if val_src is None or not len(val_src) or val_src.labels.ndim == 2:
            why = (
                "no validation part to compare on"
                if val_src is None or not len(val_src)
                else "multi-label"
            )
            self.metrics_["winner"] = {"kept": "transfer", "why": f"kept the network: {why}"}
            return
        metric = _metric(balance)
        labels = np.asarray(val_src.labels)
        own = self._head_proba(self._features(val_src))
        net_p = self._output_proba(val_src, own)
        base_p = self._baseline_proba(val_src)
        net = Candidate("the network", _score(labels, net_p, metric), _nll(labels, net_p), 1)
        base = Candidate(
            f"the classic baseline ({self.baseline_.name})",
            _score(labels, base_p, metric),
            _nll(labels, base_p),
            0,
        )
        win, why = choose([net, base], len(labels), metric)
        self.winner_ = "transfer" if win is net else "baseline"
        log.info("strategy auto: %s", why)
        self.metrics_["winner"] = {
            "kept": self.winner_,
            "metric": metric,
            "n": len(labels),
            "transfer": net.to_dict(),
            "baseline": base.to_dict(),
            "why": why,
        }

    # ------------------------------------------------------------ using it
    def _kept_baseline(self) -> bool:
        return (
            getattr(self, "winner_", "transfer") == "baseline"
            and getattr(self, "baseline_", None) is not None
        )

    def baseline_proba(self, source) -> np.ndarray:
        """The fitted classic baseline's class probabilities on ``source``."""
        return self._baseline_proba(source)

    def _baseline_proba(self, source) -> np.ndarray:
        """The baseline's probabilities on ``source`` (memoised within one ``evaluate``)."""
        memo = self.__dict__.get("_baseline_memo")
        if memo is not None and id(source) in memo:
            return memo[id(source)]
        b = self.baseline_
        proba = b.predict_proba(self._baseline_inputs(source, getattr(b, "featurizer_", None)))
        if memo is not None:
            memo[id(source)] = proba
        return proba

    def _summary(self, source, proba: np.ndarray) -> dict:
        """Accuracy, macro-F1, AUROC and n of ``proba`` on labelled ``source`` (the short
        metrics shown beside a model's own)."""
        from ..metrics import classification_metrics, multilabel_metrics

        fn = multilabel_metrics if source.labels.ndim == 2 else classification_metrics
        m = fn(source.labels, proba, self.classes_)
        return {k: m[k] for k in ("accuracy", "macro_f1", "auroc", "n") if k in m}

    def _baseline_metrics(self, source, metrics: dict, transfer: np.ndarray) -> None:
        """``baseline``: its metrics; ``transfer``: the network's, when the baseline is the
        kept model (then the top-level metrics are the baseline's); ``verdict``: transfer
        against the baseline on these items, paired."""
        from ..baselines import verdict

        if getattr(self, "baseline_", None) is None or not len(source):
            return
        pb = self._baseline_proba(source)
        metrics["baseline"] = {**self._summary(source, pb), "name": self.baseline_.name}
        if self._kept_baseline():
            metrics["transfer"] = self._summary(source, transfer)
        if source.labels.ndim == 1:
            metrics["verdict"] = verdict(
                source.labels, transfer, pb, self.config_.backbone, self.baseline_.name
            )

    # ------------------------------------------------------------ artifacts
    def _save_baseline(self, run_dir: Path) -> None:
        folder = Path(run_dir) / "baseline"
        if getattr(self, "baseline_", None) is not None:
            self.baseline_.save(folder)
        elif folder.is_dir():  # an earlier fit's, into the same directory
            shutil.rmtree(folder)

    def _load_baseline(self, run_dir: Path, config: dict) -> None:
        from ..baselines import load_baseline

        baseline = load_baseline(Path(run_dir) / "baseline")
        if baseline is not None:
            self.baseline_ = baseline
        self.winner_ = config.get("winner", "transfer")
        if self.winner_ == "baseline" and baseline is None:
            raise ValueError(
                f"{run_dir}: this run kept its classic baseline, but "
                f"{Path(run_dir) / 'baseline'} is missing; copy the whole run "
                "directory"
            )
