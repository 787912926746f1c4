"""Semi-supervised transfer: self-training on a pool of unlabelled items, on top of any
strategy (``fit(X, y, unlabeled=POOL)``, ``headstart fit DATA --unlabeled POOL``).

1. The usual fit on the labelled items (its validation part held out as always).
2. Each round, the kept model labels the pool; an item becomes a pseudo-label when its
   calibrated confidence reaches its predicted class's threshold (``pseudo_threshold``,
   lowered for classes the model is confident about less often, as FlexMatch does), at
   most a quota per class (the labelled class shares of the pool, growing with the
   rounds), the most confident first; then (``pseudo_balance``) each class cut so that the
   pseudo-labels' class shares follow the pool's estimated ones (the model's mean
   probability over the pool): a class the model favours cannot swamp the rest.
3. A new fit, from the same source model, learns from the labelled items and the
   pseudo-labels (each drawn in proportion to its confidence; a labelled item weighs 1),
   its epochs scaled down to about the labelled fit's optimizer steps (``refit_config``).
   Everything that predicts learns from them: the network, the text model's TF-IDF +
   encoder blend, and the classic baseline where ``strategy=auto`` may keep it (one that is
   only reported beside the network stays the labelled items' own).
4. Never lose: the new model is kept only where its validation score (the monitored
   metric, on the labelled validation part, which no pseudo-label touches) is at least the
   kept model's; a tie keeps the new one, which has learned from more items. Otherwise the
   fit returns the model it had, and ``metrics_["semi"]`` says the pool did not help.

The pool's own labels, where it has any (class subfolders, a label column, or
``unlabeled=(X_pool, y_pool)``), never reach training: the pool is read as unlabelled
items; the labels are read apart, matched by item, and only score the pseudo-labels.
FixMatch-style consistency training (weak/strong views of each pool image) is not here:
it needs the backbone trained on every pool item each epoch, beyond a CPU's budget.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- choosing
@dataclass
class PseudoLabels:
    """The pool items chosen to be pseudo-labelled, most confident first within a class."""

    indices: np.ndarray  # positions in the pool
    labels: np.ndarray  # the predicted class of each
    confidence: np.ndarray  # its probability
    thresholds: np.ndarray  # the bar of each class
    quota: np.ndarray  # the most items taken of each class


def class_thresholds(proba: np.ndarray, threshold: float) -> np.ndarray:
    """Each class's confidence bar: ``threshold`` times FlexMatch's ``b / (2 - b)``, where
    ``b`` is the class's count of items predicted with confidence >= ``threshold`` over the
    largest such count (or over the items below every bar, when more: early on, all bars
    are low); never below halfway between chance (1 / classes) and certainty."""
    proba = np.asarray(proba, dtype=np.float64)
    n, k = proba.shape
    conf, pred = proba.max(1), proba.argmax(1)
    sure = np.bincount(pred[conf >= threshold], minlength=k).astype(np.float64)
    scale = max(sure.max(), n - sure.sum(), 1.0)
    beta = sure / scale
    floor = 0.5 * (1.0 + 1.0 / k)
    return np.maximum(threshold * beta / (2.0 - beta), min(floor, threshold))


def class_quota(train_counts, pool_size: int, share: float) -> np.ndarray:
    """The most pseudo-labels of each class: ``share`` of the pool, split by the labelled
    items' class shares (rounded down, at least 1 for a class with labelled items)."""
    counts = np.asarray(train_counts, dtype=np.float64)
    prior = counts / max(counts.sum(), 1.0)
    return np.where(counts > 0, np.maximum(1, np.floor(share * pool_size * prior)), 0).astype(
        np.int64
    )


def select_pseudo_labels(
    proba: np.ndarray, threshold: float, quota, balance: bool = False
) -> PseudoLabels:
    """The pool items whose predicted class's probability reaches that class's bar
    (:func:`class_thresholds`), at most ``quota[c]`` of class ``c``, the most confident
    first; ``balance``: then at most :func:`balanced_counts` of each."""
    proba = np.asarray(proba, dtype=np.float64)
    quota = np.asarray(quota, dtype=np.int64)
    bars = class_thresholds(proba, threshold)
    conf, pred = proba.max(1), proba.argmax(1)
    chosen = []
    for c in range(proba.shape[1]):
        mine = np.flatnonzero((pred == c) & (conf >= bars[c]))
        chosen.append(mine[np.argsort(-conf[mine], kind="stable")][: quota[c]])
    if balance:
        most = balanced_counts([len(m) for m in chosen], proba.mean(0))
        chosen = [m[:k] for m, k in zip(chosen, most)]
    idx = np.concatenate(chosen).astype(np.int64) if chosen else np.zeros(0, np.int64)
    return PseudoLabels(idx, pred[idx], conf[idx], bars, quota)


def balanced_counts(counts, prior) -> np.ndarray:
    """The most pseudo-labels of each class for their shares to follow ``prior`` (the pool's
    estimated class shares: distribution alignment, as ReMixMatch aligns probabilities):
    the class with the fewest chosen items for its share sets the scale, every other class
    is cut to its share of that scale. A class with none chosen does not set it (it would
    stop self-training altogether)."""
    counts = np.asarray(counts, dtype=np.float64)
    prior = np.maximum(np.asarray(prior, dtype=np.float64), 1e-12)
    has = counts > 0
    if not has.any():
        return counts.astype(np.int64)
    scale = float(np.min(counts[has] / prior[has]))
    return np.minimum(counts, np.floor(scale * prior + 1e-9)).astype(np.int64)


# ---------------------------------------------------------------------- data
def joined(train_src, pool, rows, labels):
    """``train_src`` followed by the ``pool`` items at ``rows`` with ``labels`` (class
    indices into ``train_src.classes``): one labelled source of the same kind, whose
    frozen features are the two sources' cached ones (``pieces``), not a new pass."""
    out = _joined(train_src, pool.subset(rows), labels)
    out.pieces = [(train_src, None), (pool, np.asarray(rows, dtype=np.int64))]
    return out


def _joined(train_src, pool_part, labels):
    if getattr(train_src, "transcripts", None) is not None:
        raise ValueError("unlabeled: self-training is for classification, not transcripts")
    changes: dict = {
        "labels": np.concatenate([np.asarray(train_src.labels), np.asarray(labels, dtype=np.int64)])
    }
    if hasattr(train_src, "texts"):  # row numbers name the origin file's rows: not the pool's
        changes.update(texts=list(train_src.texts) + list(pool_part.texts), rows=[])
    else:
        changes["items"] = list(train_src.items) + list(pool_part.items)
    if getattr(train_src, "groups", None) is not None:  # each pool item a group of its own
        extra = np.asarray([f"pool:{i}" for i in range(len(pool_part))], dtype=object)
        changes["groups"] = np.concatenate([np.asarray(train_src.groups, dtype=object), extra])
    return dataclasses.replace(train_src, **changes)


def read_pool(est, unlabeled):
    """The pool as unlabelled items (its labels, if any, are not read); a missing path or
    an empty pool is a clear error naming it."""
    from .data.images import DataError

    X = unlabeled[0] if isinstance(unlabeled, tuple) else unlabeled
    if isinstance(X, (str, Path)) and not Path(X).exists():
        raise DataError(
            f"{X}: no such file or folder; --unlabeled takes a folder of images or "
            "recordings, a CSV of paths, or a table / text file of texts"
        )
    pool = est.read_unlabeled(X)
    if not len(pool):
        raise DataError(f"{getattr(pool, 'origin', X)}: the unlabelled pool is empty")
    return pool


def pool_truth(est, unlabeled, pool) -> np.ndarray | None:
    """The pool's own labels as class indices (-1: unknown or a class the model does not
    have), only to score the pseudo-labels; None when the pool has none."""
    from .data.splits import item_keys

    X, y = unlabeled if isinstance(unlabeled, tuple) else (unlabeled, None)
    if y is None and not isinstance(X, (str, Path)):
        return None
    try:
        known = est.read_labeled(X, y, cfg=est.config_)
    except (ValueError, KeyError, TypeError) as exc:  # no label column, no class folders
        log.info("unlabelled pool: no labels to score the pseudo-labels by (%s)", exc)
        return None
    if known.labels.ndim != 1:
        return None
    at = {c: i for i, c in enumerate(est.classes_)}
    ours = np.asarray([at.get(c, -1) for c in known.classes])
    labels = ours[np.asarray(known.labels)]
    if y is not None and len(known) == len(pool):  # arrays: the same order
        return labels
    by_key = {k: lab for k, lab in zip(item_keys(known), labels) if k is not None}
    return np.asarray([by_key.get(k, -1) if k else -1 for k in item_keys(pool)], dtype=np.int64)


# ---------------------------------------------------------------------- the fit
def _monitor(est) -> str:
    m = (est.metrics_.get("imbalance") or {}).get("monitor", "accuracy")
    return m if m in ("accuracy", "macro_f1") else "accuracy"


def _adopt(est, other) -> None:
    """``est`` becomes the fitted ``other`` (its fitted attributes; ``est``'s own settings
    and run directory stay)."""
    for k in [k for k in vars(est) if k.endswith("_") and not k.startswith("_")]:
        if k not in vars(other):
            delattr(est, k)
    est.__dict__.update(
        {k: v for k, v in vars(other).items() if k.endswith("_") and not k.startswith("_")}
    )


def self_train(est, X, y, unlabeled, *, validation=None, resume=False, callbacks=()):
    """``est.fit`` with an unlabelled pool (see the module's docstring); returns ``est``
    holding the kept model, ``metrics_["semi"]`` recording the pool, the pseudo-labels of
    each round (per class, their accuracy where the pool's labels are known), the bar, and
    whether the pool model was kept. ``resume`` continues the labelled fit from its
    checkpoints in ``est.run_dir``; the rounds run again."""
    t0 = time.perf_counter()
    cfg = est.resolved_config()
    pool = read_pool(est, unlabeled)  # a bad pool path fails before any work
    source, train_src, val_src = est.split(X, y, validation, cfg)
    if val_src is None or not len(val_src):
        raise ValueError(
            "unlabeled: self-training keeps the pool's model only where it is at least as "
            "good on validation, and this fit has none: give --val (validation=) or "
            "val_fraction > 0"
        )
    if train_src.labels.ndim != 1:
        raise ValueError("unlabeled: self-training is for single-label classification")
    # the labelled fit keeps its checkpoints (and saves) in the run directory, so that
    # ``resume`` continues it; the kept model overwrites that save at the end
    est.fit(train_src, validation=val_src, resume=resume, callbacks=callbacks)
    truth = pool_truth(est, unlabeled, pool)
    monitor = _monitor(est)  # the labelled fit's: every round is compared by it
    rounds = _rounds(est, train_src, val_src, pool, truth, cfg, callbacks, monitor)
    kept = [r for r in rounds if r["kept"]]
    start = rounds[0]["before"] if rounds else None
    est.metrics_["semi"] = {
        "pool": len(pool),
        "pool_origin": str(getattr(pool, "origin", "")),
        "pool_labels_known": truth is not None,
        "threshold": cfg.pseudo_threshold,
        "rounds_asked": cfg.pseudo_rounds,
        "balance": cfg.pseudo_balance,
        "rounds": rounds,
        "kept": bool(kept),
        "pseudo_labels": kept[-1]["pseudo_labels"] if kept else 0,
        "monitor": monitor,
        "validation_without_pool": start,
        "validation_with_pool": kept[-1]["after"] if kept else start,
        "rule": "the pool's model is kept when its validation score is >= the kept "
        "model's (a tie keeps the pool's model)",
        "seconds": time.perf_counter() - t0,
        "line": summary_line(rounds, len(pool), monitor),
    }
    log.info("unlabelled pool: %s", est.metrics_["semi"]["line"])
    if est.run_dir is not None and getattr(est, "is_main_process_", True):
        est.save(est.run_dir)
    return est


def _rounds(est, train_src, val_src, pool, truth, cfg, callbacks, monitor) -> list[dict]:
    """Each round's record; ``est`` ends as the kept model."""
    classes = list(est.classes_)
    counts = np.bincount(np.asarray(train_src.labels), minlength=len(classes))
    best = float(est.metrics_["validation"][monitor])
    # a classic baseline that only stands beside the network in the report (not the text
    # blend, not auto's rival) is not refitted: it stays the one of the labelled items
    carried = None
    if getattr(est, "baseline_", None) is not None and not (cfg.blend or cfg.strategy == "auto"):
        keys = ("baseline_name", "baseline_fit")
        carried = (est.baseline_, {k: est.metrics_[k] for k in keys if k in est.metrics_})
    out: list[dict] = []
    for r in range(1, cfg.pseudo_rounds + 1):
        quota = class_quota(counts, len(pool), r / cfg.pseudo_rounds)
        pl = select_pseudo_labels(
            est.predict_proba(pool), cfg.pseudo_threshold, quota, cfg.pseudo_balance
        )
        row: dict = {
            "round": r,
            "pseudo_labels": int(len(pl.indices)),
            "per_class": {
                c: int(n) for c, n in zip(classes, np.bincount(pl.labels, minlength=len(classes)))
            },
            "thresholds": {c: round(float(t), 4) for c, t in zip(classes, pl.thresholds)},
            "quota": {c: int(q) for c, q in zip(classes, pl.quota)},
            "before": best,
        }
        if truth is not None:
            row.update(_accuracy(truth[pl.indices], pl.labels))
        if not len(pl.indices):
            row.update(after=None, kept=False, why="no pool item reached its class's bar")
            out.append(row)
            break
        data = joined(train_src, pool, pl.indices, pl.labels)
        weights = np.concatenate([np.ones(len(train_src)), pl.confidence])
        refit = refit_config(cfg, len(train_src), len(data))
        if carried is not None:
            refit = refit.replace(baseline=False)
        other = type(est)(config=refit, run_dir=None)
        other.fit(data, validation=val_src, callbacks=callbacks, sample_weight=weights)
        if carried is not None:
            _carry_baseline(other, carried, val_src)
        score = float(other.metrics_["validation"][monitor])
        row.update(after=score, kept=score >= best)
        row["why"] = f"validation {monitor} {best:.4f} -> {score:.4f}: " + (
            "kept the pool's model" if row["kept"] else "kept the model without it"
        )
        log.info("self-training round %d: %d pseudo-labels; %s", r, len(pl.indices), row["why"])
        out.append(row)
        row["refit"] = {k: getattr(refit, k) for k in ("head_epochs", "epochs", "baseline")}
        if row["kept"]:
            _adopt(est, other)
            est.config_ = cfg  # the settings asked for (the refit's are in the round's row)
            best = score
    return out


def refit_config(cfg, labelled: int, items: int):
    """The settings of a refit on ``items`` (labelled + pseudo-labelled) where the labelled
    fit read ``labelled``: epochs scaled by ``labelled / items``, so the refit runs about
    the labelled fit's optimizer steps (60 head epochs of 90 images would be 60 of 5,000),
    but at least 10 head-only epochs and 2 epochs of each stage that trains the backbone
    (never more than the settings say)."""
    scale = labelled / max(items, 1)
    return cfg.replace(
        head_epochs=min(cfg.head_epochs, max(10, round(cfg.head_epochs * scale))),
        epochs=min(cfg.epochs, max(2, round(cfg.epochs * scale))),
    )


def _carry_baseline(other, carried, val_src) -> None:
    """``other`` (fitted without a baseline) gets the labelled fit's baseline, and its
    validation metrics the baseline's lines."""
    other.baseline_, other.winner_ = carried[0], "transfer"
    other.metrics_.update(carried[1])
    other.metrics_["validation"] = other.evaluate(val_src)


def _accuracy(truth: np.ndarray, labels: np.ndarray) -> dict:
    """The pseudo-labels' accuracy against the pool's labels (items whose label is known)."""
    known = truth >= 0
    if not known.any():
        return {"accuracy": None, "scored": 0}
    return {
        "accuracy": float(np.mean(truth[known] == labels[known])),
        "scored": int(known.sum()),
    }


def summary_line(rounds: list[dict], pool: int, monitor: str) -> str:
    """One line: the pool, each round's pseudo-labels (and accuracy), and the verdict."""
    parts = []
    for r in rounds:
        acc = r.get("accuracy")
        acc_s = f", {100 * acc:.1f}% right" if acc is not None else ""
        if r.get("after") is None:
            parts.append(f"round {r['round']}: no pseudo-labels")
        else:
            parts.append(
                f"round {r['round']}: {r['pseudo_labels']} pseudo-labels{acc_s}, validation "
                f"{monitor} {r['before']:.3f} -> {r['after']:.3f} "
                f"({'kept' if r['kept'] else 'not kept'})"
            )
    verdict = (
        "kept the pool's model"
        if any(r["kept"] for r in rounds)
        else "the pool did not help: the model without it is kept"
    )
    return f"{pool} unlabelled items; " + "; ".join(parts) + f"; {verdict}"


__all__ = [
    "PseudoLabels",
    "class_quota",
    "class_thresholds",
    "joined",
    "select_pseudo_labels",
    "self_train",
]
